"""Unit dashboards on the default model: build time, file size, coverage, best-F1 distribution.

    python benchmarks/dashboards.py [--model default] [--rows 192] [--sae-steps N]

Builds ``circuits.dashboards`` from scratch into a temporary file (start-up, i.e. imports and
loading the model, timed apart from the pass) and writes
benchmarks/results/dashboards_<model>.json.

Beside the Lorsa heads' and transcoder features' best-F1 concept labels, the same measure for
the attention-output SAE baseline (``replacement.attn_sae``: per layer, as many latents as the
Lorsa layer has OV heads, the same K, the replacement recipe for as many steps as the set was
trained, or ``--sae-steps``; the SAEs that ``benchmarks/error_analysis.py`` keeps under
``--work`` with the same settings are reused, else trained and kept there) on the same held-out
rows: the seed paper finds Lorsa heads on par with SAE latents. ``--sae-steps 0`` skips it.
Each kind's summary also gives the share of labels at chance (``circuits.concepts.at_chance``:
F1 that the unit's firing rate alone would give) and the mean best-F1 of the other units.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from circuits.dashboard_cli import MAX_ROWS  # noqa: E402  (light: argparse only)
from toy_models.cli import MAX_STEPS, ArgumentParser, UserError, int_in, path_arg, run_cli  # noqa: E402

RESULTS = Path(__file__).parent / "results"
RESULT_KEYS = frozenset({"model", "build_seconds", "best_f1"})  # an earlier results file's


def sae_f1(replacement, tokenizer, dash, args) -> dict:
    """Best-F1 concept labels of the attention-output SAE latents (all layers) on the rows the
    dashboards were built from."""
    from collections import Counter

    import torch

    from circuits.concepts import CONCEPTS, corpus_rows, f1_summary, units_best_f1
    from circuits.dashboards import MIN_FIRES
    from replacement.attn_sae import kept_attn_saes
    from replacement.model import hook_name

    model = replacement.model
    layers = list(range(model.cfg.n_layers))
    lorsa = replacement.lorsas[0].cfg
    saes, train_s = kept_attn_saes(
        model, tokenizer, layers, lorsa.n_ov_heads, lorsa.top_k, args.sae_steps, args.work
    )
    names = [hook_name(l, "hook_attn_out") for l in layers]

    def activations(tokens):
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        return torch.cat([saes[l].encode(cache[n]) for l, n in zip(layers, names, strict=True)], -1)

    meta = dash.meta
    rows = corpus_rows(tokenizer, meta["n_ctx"], meta["seed"], 0, meta["rows"])
    t0 = time.perf_counter()
    index, f1, fires, chance = units_best_f1(activations, rows)
    enough = fires >= MIN_FIRES  # as the dashboards' report counts Lorsa heads
    summary = f1_summary(f1[enough], chance[enough])
    fired = index[enough].tolist()
    summary["top_labels"] = dict(Counter(CONCEPTS[i] for i in fired).most_common(5))
    return {
        "layers": layers,
        "latents_per_layer": lorsa.n_ov_heads,
        "k": lorsa.top_k,
        "steps": args.sae_steps,
        "train_seconds": round(train_s, 1),
        "f1_seconds": round(time.perf_counter() - t0, 1),
        "fired": round(float((fires > 0).double().mean()), 4),
        "min_fires": MIN_FIRES,
        "best_f1": summary,
    }


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--rows", type=int_in(1, MAX_ROWS), default=192,
                        help="dashboard rows (as circuits.dashboard_cli bounds them)")  # fmt: skip
    parser.add_argument(
        "--sae-steps",
        type=int_in(0, MAX_STEPS),  # a training config's bound
        help="SAE training steps (default: as many as the replacement set; 0: no SAE baseline)",
    )
    parser.add_argument("--work", type=path_arg, default=Path("runs/error-analysis"))
    args = parser.parse_args(argv)
    from toy_models.files import check_writable_dir, check_writable_file, write_json_atomic

    check_writable_dir(args.work, "--work")  # before, not after, the SAE training
    out = RESULTS / f"dashboards_{Path(args.model).name}.json"  # a model folder: by its name
    check_writable_file(out, "results file", RESULT_KEYS)
    t0 = time.perf_counter()
    import torch

    from circuits.dashboard_pass import build
    from circuits.dashboards import summary
    from replacement.model import load_pretrained

    replacement, tokenizer = load_pretrained(args.model)
    if args.sae_steps is None:
        args.sae_steps = replacement.trained_steps()
        if args.sae_steps is None:
            raise UserError(
                f"--model {args.model}: its set records no training steps; give --sae-steps"
            )
    startup = time.perf_counter() - t0
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboards.safetensors"
        t1 = time.perf_counter()
        dash = build(replacement, tokenizer, path, rows=args.rows)
        seconds = time.perf_counter() - t1
        result = {
            "model": args.model,
            "startup_seconds": round(startup, 2),
            "build_seconds": round(seconds, 2),
            "torch_threads": torch.get_num_threads(),
            **summary(dash, path),
        }
    if args.sae_steps > 0:
        result["attn_sae_baseline_f1"] = sae_f1(replacement, tokenizer, dash, args)
        ours = result["best_f1"]["lorsa"].get("mean")
        theirs = result["attn_sae_baseline_f1"]["best_f1"].get("mean")
        print(f"mean best-F1: Lorsa heads {ours}, attention-SAE latents {theirs}")
    write_json_atomic(out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    run_cli(main)
