"""The head taxonomy (reports.heads) on a model, against the targets of the head-taxonomy issue.

    python benchmarks/heads.py [--model default]

Targets: every family found (>= 1 labelled head), and for each family, its test (zeroing its
heads; for attention sinks, taking away their attention to BOS) raises its task's loss >= 5x
as much as the same test on as many random heads from the same layers (and by >= 0.01
nats); successor heads must also pass the OV test (the successor among the family's top
promoted tokens for >= half the items). Where a family fails, the report's account says where
the model computes its task instead (layer ablations of heads vs features, direct effects),
and ``threshold_sweep`` the family labelled and tested again at other score thresholds
(``reports.heads.threshold_sweep``: whether it exists just past its threshold or at none).
Runs the analysis with ``python -m reports.heads``'s default settings (the figures that command
writes), timed apart from start-up (imports and loading), then two checks of the analysis
itself:

- robustness of each ratio: each family's test vs random heads again with another seed and
  three times the random draws (random controls are heavy-tailed: one critical head in a draw
  dominates its mean);
- group testing vs exhaustive ablation: every head active on the cheapest task
  (``repeat_second_copy``) ablated alone, to see whether group testing (which never splits a
  chunk of heads below the threshold) missed a head above it.

Also times the command line's start-up in fresh processes: ``--help`` and an argument error,
neither of which may import torch (``cli_startup_seconds``).

Writes benchmarks/results/heads_{model}.json.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from toy_models.cli import ArgumentParser, path_arg, path_text, run_cli  # noqa: E402

RESULTS = Path(__file__).parent / "results"
RESULT_KEYS = frozenset({"model", "targets", "families"})  # an earlier results file's
CHECK_TASK = "repeat_second_copy"


def cli_startup() -> dict[str, float]:
    """Wall seconds of ``python -m reports.heads --help`` and of an argument error, each in a
    fresh process."""
    seconds = {}
    for name, args, code in (("help", ["--help"], 0), ("bad_argument", ["--docs", "0"], 2)):
        t0 = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "reports.heads", *args], capture_output=True, cwd=ROOT
        )
        seconds[name] = time.perf_counter() - t0
        if run.returncode != code:
            raise RuntimeError(f"reports.heads {' '.join(args)} exited {run.returncode}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/heads.py", description=__doc__)
    parser.add_argument("--model", default="default", help="toy model (zoo name or directory)")
    parser.add_argument("--replacement", type=path_text,
                        help="replacement set (default: shipped with --model)")  # fmt: skip
    parser.add_argument(
        "--report", type=path_arg, help="keep the report files (heads.json, heads.md, plots) there"
    )
    args = parser.parse_args(argv)
    if args.report is not None:
        from toy_models.files import check_writable_dir

        check_writable_dir(args.report, "--report")  # before, not after, the analysis
    from toy_models.files import check_writable_file
    from toy_models.zoo import resolve_model_dir

    resolve_model_dir(args.model)  # an unknown model: now, not after the start-up runs
    path = RESULTS / f"heads_{Path(args.model).name}.json"
    check_writable_file(path, "results file", RESULT_KEYS)  # before the analysis, not after
    startup = cli_startup()

    t0 = time.perf_counter()
    import torch

    from replacement.model import load_pretrained
    from reports import heads as H
    from toy_models.files import write_json_atomic

    torch.set_grad_enabled(False)
    replacement, tokenizer = load_pretrained(args.model, args.replacement)
    seconds = {"startup": time.perf_counter() - t0}

    t0 = time.perf_counter()
    settings = H.Settings()
    results, scores, probes = H.analyse(replacement, tokenizer, settings, progress=False)
    results["model"], results["replacement"] = args.model, args.replacement or "shipped"
    seconds["analysis"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        H.write_report(results, args.report or Path(tmp))
    seconds["report_files"] = time.perf_counter() - t0
    seconds["cli_equivalent_total"] = sum(seconds.values())
    seconds |= {f"analysis_{k}": v for k, v in results["seconds"].items()}

    t0 = time.perf_counter()
    labelled = H.labels(scores)
    corpus = H.corpus_batches(replacement, probes)
    batches = H.task_batches(replacement, probes, corpus)
    clean = {t: H.task_loss(replacement, b, {}) for t, b in batches.items() if b}
    robust = {}
    for f in H.HEAD_FAMILIES:
        test = H.TEST_OF[f]
        a = H.family_ablation(
            replacement, batches, clean, labelled[f], H.TASK_OF[f], 3 * settings.draws, seed=1,
            test=test, corpus=corpus, every_task=test == "mask_bos",
        )  # fmt: skip
        robust[f] = {k: a.get(k) for k in ("increase", "random_mean", "ratio", "matched_ratio")}
        robust[f]["meets_target"] = bool(a.get("meets_target"))
    seconds["robustness_check"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    subset = {c: docs[: settings.truth_docs] for c, docs in probes.items()}
    check = H.task_batches(replacement, subset)[CHECK_TASK]
    base = H.task_loss(replacement, check, {})
    exhaustive = {
        (l, h): H.task_loss(replacement, check, {l: [h]}) - base
        for l, hs in enumerate(H.active_heads(check))
        for h in hs
    }
    found_exhaustive = {lh for lh, e in exhaustive.items() if e >= H.TRUTH_DELTA}
    found_groups = {(t["layer"], t["head"]) for t in results["truth"][CHECK_TASK]["true_heads"]}
    seconds["exhaustive_check"] = time.perf_counter() - t0

    families = {}
    for f in H.HEAD_FAMILIES:
        fam, a, d = results["families"][f], results["ablation"][f], results["detectors"][f]
        families[f] = {
            "test": fam["test"],
            "heads": fam["total"],
            "per_layer": fam["counts_per_layer"],
            "layers": fam["layers"],
            "top_heads": [f"L{h['layer']}H{h['head']} {h['score']:.2f}" for h in fam["heads"][:5]],
            "task": a["task"],
            "ablation_increase": a.get("increase"),
            "random_mean": a.get("random_mean"),
            "ratio": a.get("ratio"),
            "matched_random_mean": a.get("matched_random_mean"),
            "matched_ratio": a.get("matched_ratio"),
            "robustness_seed1_3x_draws": robust[f],
            "other_tasks": a.get("other_tasks"),
            "precision": d["precision"],
            "recall": d["recall"],
            "true_heads_by_label": d["true_heads_by_label"],
            "met": results["met"][f],
        }
        if not results["met"][f]:
            families[f]["task_account"] = results["account"].get(a["task"])
            # labelled and tested again at other thresholds: past its threshold, or at none?
            families[f]["threshold_sweep"] = results["threshold_sweeps"].get(f)
    families["attention_sink"]["every_task"] = results["ablation"]["attention_sink"].get(
        "every_task"
    )
    families["successor"]["ov_test"] = results["successor_ov"]
    # the same OV test on the heads that carry the task alone (the account when it fails)
    families["successor"]["ov_test_on_task_carriers"] = results.get("successor_ov_truth")
    targets = {
        f"found_{f}": {"value": families[f]["heads"], "threshold": 1, "met": results["found"][f]}
        for f in H.HEAD_FAMILIES
    } | {
        f"ablation_ratio>=5_{f}": {
            "value": families[f]["ratio"],
            "threshold": H.RATIO_TARGET,
            "met": bool(results["ablation"][f].get("meets_target")),
            "met_in_robustness_check": robust[f]["meets_target"],
        }
        for f in H.HEAD_FAMILIES
    }
    ov = results["successor_ov"]
    targets["successor_ov_in_top"] = {
        "value": ov.get("in_top"),
        "threshold": H.SUCCESSOR_OV_TARGET,
        "met": bool(ov.get("meets_target")),
    }
    report = {
        "model": args.model,
        "replacement": args.replacement or "shipped",
        "settings": results["settings"],
        "targets": targets,
        "families": families,
        "met": results["met"],
        "clean_loss": results["clean_loss"],
        "group_testing_vs_exhaustive": {
            "task": CHECK_TASK,
            "heads_ablated_alone_exhaustively": len(exhaustive),
            "heads_above_threshold_exhaustive": len(found_exhaustive),
            "heads_above_threshold_group_testing": len(found_groups),
            "missed_by_group_testing": sorted(
                f"L{l}H{h}" for l, h in found_exhaustive - found_groups
            ),
            "forward_passes_group_testing": results["truth"][CHECK_TASK]["forward_passes"],
            "note": "the exhaustive pass uses the same documents; group testing is exact on the "
            "heads it reaches, so any difference is a head hidden in a chunk below threshold",
        },
        "seconds": seconds,
        "cli_startup_seconds": startup,
    }
    for name, t in targets.items():
        value = "n/a" if t["value"] is None else f"{t['value']:.4g}"
        print(f"{name:40s} {value:>10s}  {'met' if t['met'] else 'NOT met'}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    print("cli start-up: " + ", ".join(f"{k} {v:.2f} s" for k, v in startup.items()))
    write_json_atomic(path, report)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
