"""Build unit dashboards and concept labels for a replacement model (``circuits.dashboards``).

    python -m circuits.dashboard_cli --model default --rows 256

Writes ``--out`` (default ``circuits.dashboards.default_path``: the file ``circuits.trace``
builds and reads, ``runs/dashboards/<model>-<mode>-<key>.safetensors``) and prints the
coverage and the best-F1 distribution as JSON. Interrupted, it resumes from its last
checkpoint when run again with the same settings; a finished file is only loaded and
summarised. Nothing heavy is imported before the arguments are checked.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toy_models.cli import ArgumentParser, UserError, file_arg, path_text, run_cli, seed_arg

MODES = ("local", "sparse")  # = replacement.model.MODES (not imported: start-up)
# Rows of a dashboards pass: rows x n_ctx must stay below 2**31 (``dashboard_pass``), which
# this keeps for any context up to 2048 tokens, checked before a model is loaded.
MAX_ROWS = 1 << 20
DEFAULT_ROWS = 192  # = circuits.dashboards.DEFAULT_ROWS
DEFAULT_DIR = Path("runs/dashboards")  # = circuits.dashboards.DEFAULT_DIR


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m circuits.dashboard_cli",
        description="One streaming, resumable, seeded pass over held-out corpus rows: for every "
        "Lorsa head and transcoder feature its frequency, activation histogram, top and "
        "quantile examples (with z-patterns for heads), logit effects and best-F1 "
        "ground-truth concept.",
    )
    parser.add_argument("--model", default="default", help="toy model: zoo name or directory")
    parser.add_argument(
        "--replacement", type=path_text, help="replacement set directory (default: shipped)"
    )
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS,
                        help=f"held-out documents to read (default {DEFAULT_ROWS}, about a "
                        "minute on two cores; more rows let rare units fire)")  # fmt: skip
    parser.add_argument("--seed", type=seed_arg, default=0, help="corpus and sampling seed")
    parser.add_argument("--mode", choices=MODES, default="local",
                        help="activations of the local (default) or the sparse model")  # fmt: skip
    parser.add_argument("--out", type=file_arg, help="the dashboards file to write")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> Path | None:
    if not 1 <= args.rows <= MAX_ROWS:
        raise UserError(f"--rows must be in 1..{MAX_ROWS}, got {args.rows}")
    from .trace import check_writable

    if args.out is None:  # named once the replacement set is loaded (its identity)
        check_writable(DEFAULT_DIR)
        return None
    from toy_models.files import check_writable_file

    # a directory, a link (one leading nowhere was refused only when the build was done: a
    # fuzz pass), a device, saved work (a set's replacement.json, a cache's manifest...), a
    # folder that cannot hold files: all refused before any work
    check_writable_file(args.out, "--out")
    return args.out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = check_args(args)  # everything checked before torch or a model is imported
    from replacement.model import load_pretrained

    from .dashboard_pass import build
    from .dashboards import NotDashboards, default_path, summary

    replacement, tokenizer = load_pretrained(args.model, args.replacement)
    if out is None:
        out = default_path(args.model, args.mode, replacement, tokenizer, args.rows, args.seed)
    try:
        dash = build(replacement, tokenizer, out, rows=args.rows, seed=args.seed,
                     mode=args.mode, progress=not args.quiet)  # fmt: skip
    except NotDashboards as exc:  # someone's file: said what to do (a fault pass: it was not)
        raise UserError(f"{exc}; it is left as it is: choose another --out, or move it "
                        "away") from None  # fmt: skip
    print(json.dumps(summary(dash, out), indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
