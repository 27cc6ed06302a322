"""Quality of a replacement set against the targets of the replacement issue (and issue 12's
stricter loss recovered and training budget, named as such).

    python benchmarks/replacement.py --replacement runs/replacement-default [--model default]

Runs ``replacement.evaluate`` on held-out rows and writes benchmarks/results/replacement_{name}.json
with every figure and, per target, the measured value and whether it is met. Training time and
throughput come from the set's own record (``replacement.json`` meta).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replacement.evaluate import MAX_BATCHES, MAX_DOCS  # noqa: E402  (light: no torch)
from toy_models.cli import ArgumentParser, UserError, int_in, path_text, run_cli  # noqa: E402

RESULTS = Path(__file__).parent / "results"
RESULT_KEYS = frozenset({"model", "replacement", "evaluation", "targets"})  # an earlier file's


def targets(r: dict, meta: dict) -> dict:
    rec, loss = r["reconstruction"], r["loss"]
    fam_o, fam_s = r["families"]["original"], r["families"]["sparse"]
    checks = {
        "lorsa_fvu<=0.10_every_layer": (max(l["fvu"] for l in rec["lorsa"]), 0.10, "<="),
        "transcoder_fvu<=0.10_every_layer": (max(l["fvu"] for l in rec["transcoder"]), 0.10, "<="),
        "l0<=32_every_layer": (max(l["l0"] for k in rec for l in rec[k]), 32, "<="),
        "dead_fraction<=0.05_every_layer": (
            max(l["dead_fraction"] for k in rec for l in rec[k]),
            0.05,
            "<=",
        ),
        "spliced_alone_loss_recovered>=0.95_every_layer": (
            min(
                l["loss_recovered"] for k in loss["spliced_alone"] for l in loss["spliced_alone"][k]
            ),
            0.95,
            ">=",
        ),
        "all_layers_loss_recovered>=0.85": (loss["all_layers"]["loss_recovered"], 0.85, ">="),
        "all_layers_loss_recovered>=0.99 (issue 12)": (
            loss["all_layers"]["loss_recovered"],
            0.99,
            ">=",
        ),
        "sparse_addition_kept>=0.80": (fam_s["addition"] / max(fam_o["addition"], 1e-9), 0.8, ">="),
        # induction kept: the share of the second copy's loss reduction that survives
        "sparse_induction_kept>=0.80": (
            (1 - fam_s["induction_loss_ratio"]) / (1 - fam_o["induction_loss_ratio"]),
            0.8,
            ">=",
        ),
        "build_minutes<=60": (meta.get("train_elapsed_s", float("nan")) / 60, 60, "<="),
        "build_minutes<=45 (issue 12)": (meta.get("train_elapsed_s", float("nan")) / 60, 45, "<="),
    }
    return {
        name: {"value": v, "threshold": t, "met": bool(v <= t if op == "<=" else v >= t)}
        for name, (v, t, op) in checks.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/replacement.py", description=__doc__)
    parser.add_argument("--model", default="default", help="toy model (zoo name or directory)")
    parser.add_argument("--replacement", type=path_text, required=True,
                        help="replacement set directory")  # fmt: skip
    parser.add_argument("--batches", type=int_in(1, MAX_BATCHES), default=8,
                        help="held-out batches of 16 rows")  # fmt: skip
    parser.add_argument("--docs", type=int_in(1, MAX_DOCS), default=100,
                        help="documents per family (probes)")  # fmt: skip
    args = parser.parse_args(argv)
    from replacement.train import SET_FILE  # (light: names, no torch)
    from toy_models.zoo import resolve_model_dir

    resolve_model_dir(args.model)  # an unknown model and a folder that holds no set: now,
    if not (Path(args.replacement) / SET_FILE).is_file():  # not after the model's load
        raise UserError(f"--replacement {args.replacement}: no {SET_FILE} there")
    from toy_models.files import check_writable_file

    path = RESULTS / f"replacement_{Path(args.replacement).name}.json"
    check_writable_file(path, "results file", RESULT_KEYS)  # before the evaluation
    from replacement.evaluate import evaluate_replacement, summary_lines
    from replacement.model import ReplacementModel
    from toy_models.files import write_json_atomic
    from toy_models.zoo import load_pretrained

    model, tokenizer = load_pretrained(args.model)
    replacement = ReplacementModel.load(args.replacement, model)
    results = evaluate_replacement(replacement, tokenizer, args.batches, args.docs)
    print("\n".join(summary_lines(results)))
    report = {
        "model": args.model,
        "replacement": args.replacement,
        "train_meta": replacement.meta,
        "evaluation": results,
        "targets": targets(results, replacement.meta),
    }
    for name, t in report["targets"].items():
        print(f"{name:48s} {t['value']:10.4g}  {'met' if t['met'] else 'NOT met'}")
    write_json_atomic(path, json.loads(json.dumps(report)))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
