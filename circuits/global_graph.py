"""Grow a global (prompt-independent) circuit from one unit, through expected attribution.

    python -m circuits.global_graph --model default --start lorsa:1:318
    python -m circuits.global_graph --model default --start logit:" Thursday" --budget 30
    python -m circuits.global_graph --model default --start token:" Monday" --downstream

``--start`` names a unit: ``lorsa:LAYER:HEAD``, ``transcoder:LAYER:FEATURE``,
``logit:TOKEN`` or ``token:TOKEN`` (a token's embedding; grow it ``--downstream``).
Corpus statistics (the summed exact local edges of ``--rows`` held-out rows) are gathered
once into ``--stats`` (resumable, with a progress bar) and reused. Writes, like
``circuits.trace``, ``graph.json``, ``graph.pt``, ``graph.dot``/``.svg`` and ``graph.html``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from toy_models.cli import UserError, run_cli


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m circuits.global_graph",
        description="A global circuit around one unit of the fully sparsified model: expected "
        "attribution (exact local edges summed over a corpus sample, per unit of the source's "
        "activity), grown best-first to a budget and pruned by influence like local graphs.",
    )
    parser.add_argument("--model", default="default", help="toy model: zoo name or directory")
    parser.add_argument("--replacement", help="replacement set (default: shipped with --model)")
    parser.add_argument(
        "--start", required=True, metavar="UNIT",
        help="lorsa:L:HEAD, transcoder:L:FEATURE, logit:TOKEN or token:TOKEN",
    )  # fmt: skip
    parser.add_argument("--downstream", action="store_true",
                        help="grow towards what the unit drives (default: its inputs)")  # fmt: skip
    parser.add_argument("--budget", type=int, default=40, help="units to grow to")
    parser.add_argument("--per-node", type=int, default=8, help="candidates per unit")
    parser.add_argument("--no-prune", action="store_true", help="keep every grown unit")
    parser.add_argument("--stats", type=Path, help="statistics file (default: runs/global-stats/"
                        "MODEL.safetensors; gathered when missing)")  # fmt: skip
    parser.add_argument("--rows", type=int, default=128, help="corpus rows for statistics")
    parser.add_argument("--out", type=Path, default=Path("runs/global"), help="output directory")
    parser.add_argument("--format", default="svg", help="renders among svg,pdf,png (need `dot`)")
    return parser.parse_args(argv)


def parse_unit(spec: str, units, tokenizer) -> int:
    """A ``--start`` spec as a unit index, or a UserError that says what is wrong."""
    from toy_models.tokenizer import single_token

    kind, _, rest = spec.partition(":")
    try:
        if kind in ("lorsa", "transcoder"):
            layer, index = (int(x) for x in rest.split(":"))
            return units.unit(kind, layer, index)
        if kind in ("logit", "token"):
            token = single_token(tokenizer, rest)
            return units.unit("logit" if kind == "logit" else "embedding", 0, token)
    except ValueError as exc:
        raise UserError(f"--start {spec!r}: {exc}") from None
    raise UserError(
        f"--start {spec!r}: expected lorsa:L:HEAD, transcoder:L:FEATURE, logit:TOKEN or token:TOKEN"
    )


def main(argv: list[str] | None = None) -> int:
    import torch

    with torch.no_grad():
        return _global_graph(parse_args(argv))


def _global_graph(args: argparse.Namespace) -> int:
    from replacement.model import load_pretrained

    from .global_weights import Units, global_graph, statistics_for
    from .prune import prune_graph
    from .trace import check_writable, parse_formats, write_outputs

    formats = parse_formats(args.format)
    if min(args.budget, args.per_node, args.rows) <= 0:
        raise UserError("--budget, --per-node and --rows must be positive")
    check_writable(args.out)
    replacement, tokenizer = load_pretrained(args.model, args.replacement)
    units = Units.of(replacement)
    start = parse_unit(args.start, units, tokenizer)
    kind = units.describe(start)[0]
    if kind == "embedding" and not args.downstream:
        raise UserError("a token's embedding has no inputs: grow it with --downstream")
    if kind == "logit" and args.downstream:
        raise UserError("a logit has no outputs: grow it upstream (without --downstream)")

    stats = statistics_for(replacement, tokenizer, args.model, args.stats, args.rows)

    t0 = time.perf_counter()
    graph = global_graph(
        replacement, stats, start, budget=args.budget, per_node=args.per_node,
        upstream=not args.downstream, tokenizer=tokenizer,
    )  # fmt: skip
    graph.model["name"] = args.model
    if not (args.no_prune or args.downstream):
        graph = prune_graph(graph)
    seconds = time.perf_counter() - t0
    graph.settings["seconds"] = round(seconds, 4)
    written = write_outputs(graph, None, args.out, formats)
    print(
        f"{graph.settings['start']}: {graph.n_nodes} units, {graph.n_edges} edges "
        f"({graph.settings['direction']}, {seconds:.2f} s; statistics over "
        f"{stats.meta['rows_done']} rows of {stats.meta['n_ctx']} tokens)"
    )
    strongest = graph.edges.tocoo()
    order = abs(strongest.data).argsort()[::-1][:8]
    for j in order:
        s, t = strongest.col[j], strongest.row[j]
        print(f"  {strongest.data[j]:+.3f}  {graph.labels[s]}  ->  {graph.labels[t]}")
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
