"""Lorsa architecture ablations as curves, from one cached activation set (issue 13, item 2).

    python benchmarks/lorsa_ablations.py --layers 1,2 --steps 500 --rows 2048   # the full sweep
    python benchmarks/lorsa_ablations.py --quick                                # a smoke run

For each chosen layer, short single-layer runs (``replacement.ablations``) along three axes,
every other setting at the config's shapes (default: 1024 OV heads, 16 QK heads, d_qk 16, K 32):

- K in ``--ks``, each with an attention-output TopK SAE of the same width and K beside it
  (the fidelity-sparsity curve of both);
- the number of QK heads in ``--qk-heads`` (QK sharing, same number of OV heads);
- the QK rank in ``--d-qk`` (below, at and above the head dimension; QK starts from the
  original heads' best rank-d_qk approximation), plus one control at the base rank with a
  random QK start.

Every run trains ``--steps`` steps of the replacement recipe on the same ``--rows`` cached
training rows, and is measured on ``--heldout-rows`` cached held-out rows (the rows
``replacement.evaluate`` reads first): FVU, L0, dead fraction, and CE/KL/loss recovered with that
layer alone spliced in. Caches, per-run records and weights go to ``--work`` (rerun the same
command to resume). Writes ``--json`` (default benchmarks/results/lorsa_ablations_{model}.json)
and the report (markdown + PNG curves, ``reports.ablations``) to ``--report``.

Budget: 17 runs per layer (4 Lorsa K + 4 SAE + 4 more QK-head counts + 4 more ranks + 1
control). One step of all 17 costs about 2.7 s on one core (measured: a Lorsa step of the
default shapes 0.17 s, 0.24-0.37 s at 64 QK heads or d_qk 64, an SAE step 0.055 s), so the
defaults (2 layers, 500 steps) take 30-45 min on 2 idle cores (depending on what the second
thread buys) plus about 4 min for the caches (2048 + 256 rows of 2 layers: 1.2 GB under
``--work``) and the evaluations; every run's seconds are in the JSON. ``--layers``,
``--steps`` and ``--rows`` set the budget; ``--quick`` is a smoke run (a few steps, a few rows,
two points an axis, the first layer): it checks the machinery, its figures mean nothing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from reports.results_cli import add_results_args, results_paths  # noqa: E402
from toy_models.cli import (  # noqa: E402
    ArgumentParser,
    UserError,
    path_arg,
    refuse_repeats,
    run_cli,
)

RESULTS = Path(__file__).parent / "results"
# The keys of the JSON object written to the results file: a file there without them is
# not an earlier run's results, and is refused rather than replaced.
RESULT_KEYS = frozenset({"model", "model_sha256", "settings", "seconds"})
HELDOUT_SEED = 4242  # replacement.evaluate.EVAL_SEED: the held-out rows evaluate reads first
QUICK = {"steps": 6, "rows": 48, "heldout_rows": 16}


def int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        given = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated integers, got {text!r}") from None
    refuse_repeats(flag, text, given)  # one given twice was one point of the curve
    values = tuple(sorted(given))
    if not values or min(values) <= 0:
        raise UserError(f"{flag} must be positive integers, got {text!r}")
    return values


def parse_args(argv):
    parser = ArgumentParser(
        prog="python benchmarks/lorsa_ablations.py",
        description="Lorsa ablations as curves (K with an attention-output SAE beside it, QK "
        "heads, QK rank) from cached activations; JSON, markdown and PNG curves.",
    )
    parser.add_argument("--model", default="default", help="toy model: zoo name or directory")
    parser.add_argument(
        "--config",
        default="default",
        help="replacement config whose shapes and recipe are the base",
    )
    parser.add_argument("--layers", default="1,2", help="layers to ablate (default 1,2)")
    parser.add_argument("--steps", type=int, default=500, help="training steps per run (500)")
    parser.add_argument("--rows", type=int, default=2048, help="cached training rows (2048)")
    parser.add_argument(
        "--heldout-rows", type=int, default=256, help="cached held-out rows measured (256)"
    )
    parser.add_argument("--ks", default="8,16,32,64", help="TopK values (Lorsa and SAE)")
    parser.add_argument("--qk-heads", default="4,8,16,32,64", help="numbers of QK heads")
    parser.add_argument("--d-qk", default="4,8,16,32,64", help="QK ranks")
    parser.add_argument("--no-control", action="store_true", help="skip the random-QK control run")
    parser.add_argument(
        "--work", type=path_arg, default=Path("runs/ablations"), help="caches, records, weights"
    )
    add_results_args(parser, QUICK)
    return parser.parse_args(argv)


def settings(args) -> dict:
    """Checked settings, before torch is imported."""
    from replacement.train import CONFIGS, SHAPES, check_config, parse_layers

    check_config(args.config)
    base = SHAPES[args.config]
    layers = parse_layers(args.layers)
    if layers is None:
        raise UserError("--layers must name layers, such as 1 or 1,2 (not 'all')")
    s = {
        "layers": layers,
        "steps": args.steps,
        "rows": args.rows,
        "heldout_rows": args.heldout_rows,
        "ks": int_list("--ks", args.ks),
        "qk_heads": int_list("--qk-heads", args.qk_heads),
        "d_qks": int_list("--d-qk", args.d_qk),
    }
    if args.quick:  # two points an axis around the base, the first layer, a few steps
        s.update(QUICK, layers=layers[:1])
        s["ks"] = tuple(sorted({max(1, base.lorsa_top_k // 2), base.lorsa_top_k}))
        s["qk_heads"] = tuple(sorted({max(1, base.n_qk_heads // 2), base.n_qk_heads}))
        s["d_qks"] = tuple(sorted({max(1, base.d_qk // 4), base.d_qk}))
    for flag, key in (("--steps", "steps"), ("--rows", "rows"), ("--heldout-rows", "heldout_rows")):
        if s[key] <= 0:
            raise UserError(f"{flag} must be positive, got {s[key]}")
    bad_k = [k for k in s["ks"] if k > base.n_ov_heads]
    if bad_k:
        raise UserError(
            f"--ks {bad_k} exceed the {base.n_ov_heads} OV heads of config {args.config!r}"
        )
    bad_qk = [h for h in s["qk_heads"] if base.n_ov_heads % h]
    if bad_qk:
        raise UserError(f"--qk-heads {bad_qk} do not divide the {base.n_ov_heads} OV heads")
    s["config"] = args.config
    s["train"] = CONFIGS[args.config]
    s["base"] = base
    return s


def build_caches(model, tokenizer, work: Path, s: dict, quiet: bool):
    """The training and held-out activation caches (built once, reused and resumed)."""
    from replacement.activation_cache import ActivationCache, build_cache

    layers = "-".join(map(str, s["layers"]))
    batch = 16 if s["rows"] >= 16 else 1
    caches = {}
    for name, split, seed, rows in (
        ("train", "train", s["train"].seed, s["rows"]),
        ("heldout", "heldout", HELDOUT_SEED, s["heldout_rows"]),
    ):
        directory = work / f"acts-{name}-r{rows}-l{layers}"
        chunk = max(batch, min(256, rows) // batch * batch)
        build_cache(
            model, tokenizer, directory, rows, layers=s["layers"], split=split, seed=seed,
            chunk_rows=chunk, forward_batch=batch, quiet=quiet,
        )  # fmt: skip
        caches[name] = ActivationCache(directory, model)
    return caches


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings(args)
    from toy_models.files import check_writable_dir
    from toy_models.zoo import resolve_model_dir

    resolve_model_dir(args.model)  # an unknown name fails before the heavy imports
    out_json, report_dir = results_paths(args, "lorsa_ablations", RESULTS, RESULT_KEYS)
    t0 = time.perf_counter()
    from dataclasses import asdict, replace

    from replacement.ablations import SweepAxes, run_sweep, sweep_variants
    from reports.ablations import summary_lines, write_ablation_report
    from toy_models.checkpoint import fingerprint
    from toy_models.files import write_json_atomic
    from toy_models.zoo import load_pretrained

    model, tokenizer = load_pretrained(args.model)
    model.requires_grad_(False)
    bad = [l for l in s["layers"] if not 0 <= l < model.cfg.n_layers]
    if bad:
        raise UserError(f"--layers {bad} out of range: the model has {model.cfg.n_layers} layers")
    sha = fingerprint(model)
    work = args.work / sha[:12]
    check_writable_dir(work, "--work")
    t_load = time.perf_counter()
    caches = build_caches(model, tokenizer, work, s, args.quiet)
    t_caches = time.perf_counter()
    cfg = replace(s["train"], steps=s["steps"])
    axes = sweep_variants(
        s["base"], SweepAxes(s["ks"], s["qk_heads"], s["d_qks"], not args.no_control)
    )
    sweep = run_sweep(
        model, caches["train"], caches["heldout"], s["layers"], axes, cfg, work / "runs",
        quiet=args.quiet,
    )  # fmt: skip
    t_end = time.perf_counter()
    results = {
        "model": args.model,
        "model_sha256": sha,
        "quick": args.quick,
        "d_head": model.cfg.d_head,
        "n_heads": model.cfg.n_heads,
        "settings": {
            "config": s["config"],
            "layers": s["layers"],
            "steps": s["steps"],
            "rows": s["rows"],
            "heldout_rows": s["heldout_rows"],
            "batch_size": cfg.batch_size,
            "base_shapes": asdict(s["base"]),
            "train": asdict(cfg),
            "train_cache_id": caches["train"].plan.cache_id(),
            "heldout_cache_id": caches["heldout"].plan.cache_id(),
        },
        **sweep,
        "seconds": {
            "load": round(t_load - t0, 1),
            "caches": round(t_caches - t_load, 1),
            "runs": round(t_end - t_caches, 1),
            "train_in_runs": round(
                sum(
                    r["train_s"]
                    for layer in sweep["layers"].values()
                    for r in layer["runs"].values()
                ),
                1,
            ),
            "total": round(t_end - t0, 1),
        },
    }
    write_json_atomic(out_json, results)
    written = write_ablation_report(results, report_dir)
    print("\n".join(summary_lines(results)))
    for path in [out_json, *written]:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
