"""Lorsa against a TopK attention-output SAE of the same width and K (the Lorsa paper's baseline).

    python benchmarks/attn_sae_baseline.py [--model default] [--replacement DIR] [--steps N]
        [--out benchmarks/results/attn_sae_baseline.json] [--work runs/error-analysis]

Trains, for every layer, a TopK SAE on ``hook_attn_out`` (input = target) with as many latents
as the Lorsa layer has OV heads and the same K, with the same recipe as the replacement layers
(``replacement.train``: normalisation, K annealing, AuxK, learning-rate schedule, one shared
activation stream) and, unless ``--steps`` says otherwise, as many steps as the set records.
Then compares, on the same held-out rows, each layer's FVU and the loss recovered when it alone
is spliced in. Writes benchmarks/results/attn_sae_baseline.json, or
``--out`` (a candidate replacement set's comparison, kept beside the shipped one's). Target
(issue 12): Lorsa FVU <= the SAE's in every layer. The SAEs are kept under ``--work``
(``sae_train_s``: their training time when they were trained) and reused by
``benchmarks/dashboards.py`` and ``benchmarks/error_analysis.py`` with the same settings.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toy_models.cli import (  # noqa: E402
    ArgumentParser,
    UserError,
    file_arg,
    path_arg,
    path_text,
    positive_int,
    run_cli,
)

RESULTS = Path(__file__).parent / "results"
# The keys of the JSON object written to the results file: a file there without them is
# not an earlier run's results, and is refused rather than replaced.
RESULT_KEYS = frozenset({"model", "replacement", "sae", "layers", "target"})


def kept_saes(model, tokenizer, n_latents: int, top_k: int, steps: int, work: Path):
    """One TopK SAE per layer on the attention output, trained as the replacement layers are
    (the recipe lives in ``replacement.attn_sae``, shared with ``replacement.ablations``), or
    read from ``work`` where an earlier run with the same model and settings kept them (the
    error analysis and the concept-F1 baseline read the same SAEs). Returns them as a list."""
    from replacement.attn_sae import kept_attn_saes

    layers = list(range(model.cfg.n_layers))
    saes, seconds = kept_attn_saes(model, tokenizer, layers, n_latents, top_k, steps, work)
    return [saes[l] for l in layers], seconds


def compare(replacement, saes, tokenizer, n_batches: int) -> list[dict]:
    """Per layer: FVU and loss recovered (spliced alone) of the Lorsa layer and of the SAE."""
    import torch

    from replacement.evaluate import (
        heldout_batches,
        loss_recovered,
        mean_outputs,
        next_token_stats,
        reconstruction_stats,
    )

    model = replacement.model
    batches = heldout_batches(model, tokenizer, n_batches)
    lorsa_rec = reconstruction_stats(replacement, batches)["lorsa"]
    lorsa_loss = loss_recovered(replacement, batches)["spliced_alone"]["lorsa"]
    means = mean_outputs(model, batches)
    rows = []
    with torch.no_grad():
        for l, sae in enumerate(saes):
            name = f"blocks.{l}.hook_attn_out"
            residual = variance = l0 = 0.0
            ys = []
            ce = {"sae": [], "ablated": [], "clean": []}
            for tokens in batches:
                _, cache = model.run_with_cache(tokens, names_filter=lambda n, name=name: n == name)
                y = cache[name]
                f = sae.encode(y)
                residual += (sae.decode(f) - y).pow(2).sum().item()
                ys.append(y.flatten(0, 1))
                l0 += (f != 0).sum().item()
                clean = model(tokens)
                spliced = model.run_with_hooks(
                    tokens, fwd_hooks=[(name, lambda y, hook, sae=sae: sae(y))]
                )
                ablated = model.run_with_hooks(
                    tokens, fwd_hooks=[(name, lambda y, hook, name=name: means[name].expand_as(y))]
                )
                ce["clean"].append(next_token_stats(clean, tokens)["ce"])
                ce["sae"].append(next_token_stats(spliced, tokens)["ce"])
                ce["ablated"].append(next_token_stats(ablated, tokens)["ce"])
            y = torch.cat(ys)
            variance = (y - y.mean(0)).pow(2).sum().item()
            mean = {k: sum(v) / len(v) for k, v in ce.items()}
            sae_fvu = residual / variance
            rows.append(
                {
                    "layer": l,
                    "lorsa_fvu": lorsa_rec[l]["fvu"],
                    "sae_fvu": sae_fvu,
                    "fvu_ratio_lorsa_over_sae": lorsa_rec[l]["fvu"] / sae_fvu,
                    "lorsa_l0": lorsa_rec[l]["l0"],
                    "sae_l0": l0 / sum(t.numel() for t in batches),
                    "lorsa_loss_recovered": lorsa_loss[l]["loss_recovered"],
                    "sae_loss_recovered": (mean["ablated"] - mean["sae"])
                    / (mean["ablated"] - mean["clean"]),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/attn_sae_baseline.py", description=__doc__)
    parser.add_argument("--model", default="default", help="toy model (zoo name or directory)")
    parser.add_argument(
        "--replacement",
        type=path_text,
        default="replacement/zoo/default",
        help="replacement set directory",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        help="SAE training steps (default: as many as the replacement set was trained for)",
    )
    parser.add_argument(
        "--batches", type=positive_int, default=8, help="held-out batches of 16 rows"
    )
    parser.add_argument(
        "--out", type=file_arg, default=RESULTS / "attn_sae_baseline.json", help="JSON written"
    )
    parser.add_argument(
        "--work",
        type=path_arg,
        default=Path("runs/error-analysis"),
        help="where the SAEs are kept and reused (runs/error-analysis)",
    )
    args = parser.parse_args(argv)
    from toy_models.files import check_writable_dir, check_writable_file, write_json_atomic

    check_writable_file(args.out, "--out", RESULT_KEYS)  # before, not after, the SAEs' training
    check_writable_dir(args.work, "--work")
    from replacement.model import ReplacementModel
    from toy_models.zoo import load_pretrained

    model, tokenizer = load_pretrained(args.model)
    replacement = ReplacementModel.load(args.replacement, model)
    lorsa_cfg = replacement.lorsas[0].cfg
    if args.steps is None:
        args.steps = replacement.trained_steps()
        if args.steps is None:
            raise UserError(f"{args.replacement}: the set records no training steps; give --steps")
    saes, elapsed = kept_saes(
        model, tokenizer, lorsa_cfg.n_ov_heads, lorsa_cfg.top_k, args.steps, args.work
    )
    rows = compare(replacement, saes, tokenizer, args.batches)
    worst = max(r["fvu_ratio_lorsa_over_sae"] for r in rows)
    report = {
        "model": args.model,
        "replacement": args.replacement,
        "sae": {"n_latents": lorsa_cfg.n_ov_heads, "top_k": lorsa_cfg.top_k, "steps": args.steps},
        "sae_train_s": elapsed,
        "layers": rows,
        "target": {"max_fvu_ratio": 1.0, "worst_ratio": worst, "met": worst <= 1.0},
    }
    for r in rows:
        print(
            f"layer {r['layer']}: FVU Lorsa {r['lorsa_fvu']:.4f} vs SAE {r['sae_fvu']:.4f} "
            f"(ratio {r['fvu_ratio_lorsa_over_sae']:.2f}); loss recovered spliced alone "
            f"Lorsa {r['lorsa_loss_recovered']:.1%} vs SAE {r['sae_loss_recovered']:.1%}"
        )
    write_json_atomic(args.out, report)
    print(f"worst Lorsa/SAE FVU ratio {worst:.2f} (target <= 1) -> {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
