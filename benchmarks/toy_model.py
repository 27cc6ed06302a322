"""Train a zoo model from scratch with the project's command, evaluate it, check the targets.

    python benchmarks/toy_model.py                        # train `default` into runs/bench-default
    python benchmarks/toy_model.py --skip-train --model default   # evaluate the shipped model

Writes benchmarks/results/toy_model_{config}.json: the wall-clock time of
``python -m toy_models.train`` (corpus generation and tokenizer training included), the
training throughput it reports, the full evaluation, and each target of the foundation issue
with the measured value and whether it is met.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toy_models.cli import run_cli  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def targets(results: dict, train_wall_s: float | None) -> dict:
    ind, add = results["induction"], results["addition"]
    three_digit = add["by_digits"].get("3", add["by_digits"].get(3))
    checks = {
        "train_minutes<=20": (train_wall_s and train_wall_s / 60, lambda v: v <= 20),
        "addition_exact_match>=0.95": (add["exact_match"], lambda v: v >= 0.95),
        "addition_3digit_exact_match>=0.95": (three_digit, lambda v: v >= 0.95),
        "induction_loss_ratio<=0.15": (ind["loss_ratio"], lambda v: v <= 0.15),
        "induction_head_score>=0.5": (ind["best_induction_head"]["score"], lambda v: v >= 0.5),
        "previous_token_head_score>=0.5": (
            ind["best_previous_token_head"]["score"],
            lambda v: v >= 0.5,
        ),
        "successor_accuracy>=0.95": (results["successor"]["accuracy"], lambda v: v >= 0.95),
        "subtoken_induction_accuracy>=0.80": (
            results["subtoken_induction"]["accuracy"],
            lambda v: v >= 0.80,
        ),
        "bos_attention_mass_layer>=1>=0.5": (
            results["attention_sink"]["best_head_layer_ge_1"]["score"],
            lambda v: v >= 0.5,
        ),
    }
    return {
        name: {"value": value, "met": None if value is None else bool(ok(value))}
        for name, (value, ok) in checks.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/toy_model.py", description=__doc__)
    parser.add_argument("--config", default="default", help="zoo config to train (default)")
    parser.add_argument("--out", type=Path, help="run directory (runs/bench-CONFIG)")
    parser.add_argument("--skip-train", action="store_true", help="only evaluate --model")
    parser.add_argument("--model", help="model to evaluate with --skip-train (zoo name or dir)")
    parser.add_argument("--docs", type=int, default=200, help="held-out documents per family")
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / f"bench-{args.config}"
    train_wall_s = train_meta = None
    if not args.skip_train:
        cmd = [sys.executable, "-m", "toy_models.train", "--config", args.config, "--out", str(out)]
        if (out / "checkpoint").exists():
            cmd.append("--resume")
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        train_wall_s = time.perf_counter() - start
        train_meta = json.loads((out / "config.json").read_text())
    from toy_models.evaluate import evaluate, summary
    from toy_models.files import write_json_atomic
    from toy_models.zoo import load_pretrained

    model, tokenizer = load_pretrained(args.model if args.skip_train else str(out))
    results = evaluate(model, tokenizer, args.docs)
    results = json.loads(json.dumps(results))  # int keys become strings, as in the file
    print(summary(results))
    report = {
        "config": args.config,
        "model": args.model if args.skip_train else str(out),
        "train_wall_s": train_wall_s,
        "train_tokens_per_s": None if train_meta is None else train_meta["train_tokens_per_s"],
        "train_steps": None if train_meta is None else train_meta["train"]["steps"],
        "docs_per_family": args.docs,
        "evaluation": results,
        "targets": targets(results, train_wall_s),
    }
    RESULTS.mkdir(exist_ok=True)
    # an evaluation alone must not overwrite the record of a timed training run
    suffix = "_eval" if args.skip_train else ""
    path = RESULTS / f"toy_model_{args.config}{suffix}.json"
    write_json_atomic(path, report)
    for name, t in report["targets"].items():
        value = "n/a" if t["value"] is None else f"{t['value']:.4g}"
        verdict = {True: "met", False: "NOT met", None: ""}[t["met"]]
        print(f"{name:38s} {value:>10s}  {verdict}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
