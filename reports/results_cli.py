"""The command line shared by the reports that render a benchmark's results file
(``reports.errors``, ``reports.ablations``): read the JSON, make the report in memory, write it.

The file is untrusted: a results file of another shape is one line naming it, and nothing is
written until the whole report has been made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from toy_models.cli import ArgumentParser, UserError, file_arg, path_arg
from toy_models.records import parse_json


def add_results_args(parser: ArgumentParser, quick: dict) -> None:
    """The options of a benchmark whose results file these reports render
    (``benchmarks/error_analysis.py``, ``benchmarks/lorsa_ablations.py``): ``--json``,
    ``--report``, ``--quick`` (``quick``: the settings it sets) and ``--quiet``."""
    parser.add_argument(
        "--json", type=file_arg, help="results file (default in benchmarks/results)"
    )
    parser.add_argument("--report", type=path_arg, help="report directory (default beside --json)")
    parser.add_argument("--quick", action="store_true", help="smoke run: " + str(quick))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def results_paths(args, stem: str, results: Path, keys: frozenset[str]) -> tuple[Path, Path]:
    """The results file and report directory of a benchmark run (``add_results_args``), both
    refused now if they cannot be written: ``--json`` (default ``results/{stem}_{model}.json``,
    ``_quick`` before the suffix for a smoke run; ``keys``: those of its JSON object) and
    ``--report`` (default the results file's stem)."""
    from toy_models.files import check_writable_dir, check_writable_file

    name = Path(args.model).name if Path(args.model).is_dir() else args.model
    suffix = "_quick" if args.quick else ""
    out_json = args.json or results / f"{stem}_{name}{suffix}.json"
    report_dir = args.report or out_json.with_suffix("")
    check_writable_file(out_json, "--json", keys)
    check_writable_dir(report_dir, "--report")
    return out_json, report_dir


def render_results(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    default_json: Path,
    benchmark: str,
    what: str,
    write: Callable[[dict, Path], list[Path]],
) -> int:
    """Parse ``--json`` and ``--out``, then ``write(results, out)``; ``benchmark`` is the
    script that makes the file, ``what`` the kind of result (for the messages)."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--json", type=path_arg, default=default_json, help="results file")
    parser.add_argument("--out", type=path_arg, help="report directory (default: the JSON's stem)")
    args = parser.parse_args(argv)
    if not args.json.exists():
        raise UserError(f"--json {args.json}: no such file (run python {benchmark} first)")
    if not args.json.is_file():
        raise UserError(f"--json {args.json}: not a regular file (a results file of {benchmark})")
    from toy_models.files import check_writable_dir

    out = args.out or args.json.with_suffix("")
    if args.out is None and out == args.json:  # no suffix: the default would be the file itself
        raise UserError(f"--json {args.json}: has no suffix, so the report directory (its stem "
                        "by default) would be the file itself: pass --out")  # fmt: skip
    check_writable_dir(out, "--out" if args.out else "the report directory")
    try:
        results = parse_json(args.json.read_text(encoding="utf-8"))
        written = write(results, out)
    except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        # nothing written yet (ArithmeticError: a number too large for a figure)
        # the message, not its repr (``ValueError('...')`` with escaped quotes read as a crash)
        problem = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        raise UserError(f"--json {args.json}: not {what} ({problem})") from None
    for path in written:
        print(f"wrote {path}")
    return 0


def write_results_report(
    results: dict,
    out: Path,
    names: tuple[str, str],
    *,
    check: Callable[[dict], Any],
    markdown: Callable[[dict], str],
    figure: Callable[[dict], Any],
) -> list[Path]:
    """The report of ``results`` (``check`` makes its record), ``names`` its markdown file and
    its PNG, written into ``out`` (created) as one set (``reports.outputs
    .write_report_files``); returns their paths. Both are made in memory before any write."""
    from toy_models.files import write_png_atomic, write_text_atomic

    from .outputs import write_report_files

    checked = asdict(check(results))  # drawn from the checked record: its numbers typed as
    # the record says (an integer 10**30 for a float overflowed in matplotlib)
    md, png = names

    def fill(stage: Path) -> list[Path]:
        text, fig = markdown(checked), figure(checked)  # every figure read before any write
        write_png_atomic(fig, stage / png, dpi=100)
        write_text_atomic(stage / md, text)
        return [stage / md, stage / png]

    return write_report_files(out, names, fill)


if __name__ == "__main__":  # a library: its commands are reports.errors and reports.ablations
    import sys

    print("error: reports.results_cli is not a command: use python -m reports.errors or "
          "python -m reports.ablations", file=sys.stderr)  # fmt: skip
    sys.exit(2)
