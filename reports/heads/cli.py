"""The command line: ``python -m reports.heads``. Arguments are parsed and checked (the
model's name, ``--out``'s writability) before torch or a model is imported."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from toy_models.cli import ArgumentParser, UserError, path_arg, path_text, seed_arg
from toy_models.files import check_writable_dir, earlier_set
from toy_models.zoo import resolve_model_dir

from .config import Settings

MAX_DRAWS = 1000  # each draw ablates a random head set on every task: 100x the default is hours


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m reports.heads",
        description="Label Lorsa heads as previous-token, local-context, duplicate-token, "
        "induction, subtoken induction, successor, attention-sink and arithmetic heads "
        "(operand a/b digit of each place, carry) from their per-key contributions on "
        "held-out probes, and test each family causally against random heads: zeroing for "
        "heads that write, BOS masking for sinks, and an OV test for successor heads; "
        "single-head tests give precision/recall, and layer ablations say where each task is "
        "computed.",
    )
    parser.add_argument("--model", default="default", help="toy model: zoo name or directory")
    parser.add_argument(
        "--replacement",
        type=path_text,
        help="replacement set directory (default: the one shipped with --model)",
    )
    parser.add_argument("--out", type=path_arg, default=Path("runs/heads"), help="output directory")
    parser.add_argument(
        "--docs",
        type=int,
        default=Settings.docs,
        help="held-out documents per corpus family (default %(default)s)",
    )
    parser.add_argument(
        "--truth-docs",
        type=int,
        help=f"of those, how many the single-head tests use (default {Settings.truth_docs}, "
        "or --docs when fewer; they cost most of the time)",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=Settings.draws,
        help="random head sets per control (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=seed_arg, default=Settings.seed, help="seeds the random draws"
    )
    parser.add_argument(
        "--no-truth",
        action="store_true",
        help="skip the single-head tests (no precision/recall)",
    )
    parser.add_argument(
        "--no-induction-circuit",
        action="store_true",
        help="skip the Graphviz picture of the global induction circuit (its first run "
        "gathers corpus statistics with circuits.gathering: under a minute, once)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad values, an unknown model and an ``--out`` that cannot be written, before any
    work. ``--out`` is created (to prove it can hold files) only once the rest has passed."""
    if not 1 <= args.docs <= 10_000:
        raise UserError(f"--docs must be between 1 and 10000, got {args.docs}")
    if args.truth_docs is not None and args.no_truth:  # a request silently dropped
        raise UserError("--truth-docs sizes the single-head tests that --no-truth skips: "
                        "drop one")  # fmt: skip
    if args.truth_docs is None:  # the default, capped by the documents asked for
        args.truth_docs = min(Settings.truth_docs, args.docs)
    if not 1 <= args.truth_docs <= args.docs:
        raise UserError(f"--truth-docs must be between 1 and --docs ({args.docs}), "
                        f"got {args.truth_docs}")  # fmt: skip
    if not 1 <= args.draws <= MAX_DRAWS:
        raise UserError(f"--draws must be between 1 and {MAX_DRAWS}, got {args.draws}")
    resolve_model_dir(args.model)
    from replacement.train import SET_FILE
    from toy_models.checkpoint import CONFIG_FILE

    for marker, what in ((SET_FILE, "a replacement set"), (CONFIG_FILE, "a model")):
        if (args.out / marker).is_file():  # the report's files would land among its own
            raise UserError(f"--out {args.out}: holds {what} ({marker}); write the report "
                            "elsewhere")  # fmt: skip
    check_writable_dir(args.out)
    from .report import REPORT_SET  # torch, after the cheap checks: main imports it next anyway

    earlier_set(args.out, REPORT_SET.mark, REPORT_SET.names)  # another tool's heads.json: now


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    from replacement.model import load_pretrained
    from reports.outputs import STAGING_DIR, write_set

    from .analysis import analyse
    from .circuit import circuit_statistics, induction_circuit
    from .report import REPORT_SET, summary, write_report

    t0 = time.perf_counter()
    replacement, tokenizer = load_pretrained(args.model, args.replacement)
    stats = None
    if not args.no_induction_circuit:  # a statistics file it cannot use: refused before work
        stats = circuit_statistics(replacement, tokenizer, args.model)
    settings = Settings(
        docs=args.docs, truth_docs=args.truth_docs, draws=args.draws, seed=args.seed,
        truth=not args.no_truth,
    )  # fmt: skip
    t1 = time.perf_counter()
    results, _, _ = analyse(replacement, tokenizer, settings, progress=not args.quiet)
    results["model"] = args.model
    results["replacement"] = args.replacement or "shipped"
    results["seconds"] = {
        "load": t1 - t0,
        **results["seconds"],
        "total": time.perf_counter() - t0,  # the report files and the circuit not included
    }
    print(summary(results))
    print("seconds: " + json.dumps({k: round(v, 1) for k, v in results["seconds"].items()}))

    def fill(stage: Path) -> list[Path]:
        written = write_report(results, stage)
        if stats is not None:
            written += induction_circuit(replacement, tokenizer, results, args.model, stage,
                                         stats)  # fmt: skip
        return written

    # one set, as the trace's: an earlier run's circuit (or plot) is never left beside this one
    written, notes = write_set(args.out, REPORT_SET, fill)
    for note in notes:
        print(note, file=sys.stderr)
    for path in written:
        print(f"wrote {args.out / path.relative_to(args.out / STAGING_DIR)}")
    return 0
