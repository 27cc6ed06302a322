"""Trace one prompt: attribution graph, pruning, QK attribution, files and a report.

    python -m circuits.trace --prompt "Monday, Tuesday, Wednesday," --out runs/trace

Writes into ``--out``: ``graph.json`` (circuit-tracer/Neuronpedia schema, pruned graph),
``graph.pt`` or ``graph.safetensors`` (the pruned ``Graph``; ``--save-full`` adds the unpruned
one), ``graph.dot`` and, when Graphviz's ``dot`` is installed, ``graph.svg`` (``--format``
picks more), and ``graph.html``. Every file is written atomically.

This command line is the one place in ``circuits`` that calls ``reports`` (imported when
files are written); the library modules never do, so data still flows one way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from toy_models.cli import UserError, run_cli

FORMATS = ("svg", "pdf", "png")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m circuits.trace",
        description="Exact attribution graph of one prompt through a fully sparsified model: "
        "Lorsa heads and transcoder features, edges through frozen attention patterns, "
        "QK attribution of the heads that matter, pruned by influence.",
    )
    parser.add_argument("--prompt", required=True, help="the text to trace (BOS is prepended)")
    parser.add_argument("--model", default="default", help="toy model: zoo name or directory")
    parser.add_argument(
        "--replacement", help="replacement set directory (default: the one shipped with --model)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/trace"), help="output directory")
    parser.add_argument("--mode", choices=("local", "sparse"), default="local",
                        help="local: explain the original model, with error nodes (default); "
                        "sparse: explain the fully sparsified model, no errors")  # fmt: skip
    targets = parser.add_argument_group(
        "targets (default: top logits at the last position, weighted by probability)"
    )
    targets.add_argument("--target", action="append", default=[], metavar="TOKEN",
                         help='a next token to explain, e.g. " Julia" (repeatable)')  # fmt: skip
    targets.add_argument("--target-diff", nargs=2, action="append", default=[],
                         metavar=("A", "B"), help="explain logit(A) - logit(B)")  # fmt: skip
    targets.add_argument("--target-node", action="append", default=[], metavar="KIND:L:POS:I",
                         help="a head or feature: lorsa:2:15:417, transcoder:1:7:88")  # fmt: skip
    targets.add_argument("--max-logits", type=int, default=10)
    targets.add_argument("--logit-probability", type=float, default=0.95)
    prune = parser.add_argument_group("pruning (circuit-tracer's definitions)")
    prune.add_argument("--node-threshold", type=float, default=0.8)
    prune.add_argument("--edge-threshold", type=float, default=0.98)
    prune.add_argument("--max-nodes", type=int, help="cap on heads, features and errors kept")
    qk = parser.add_argument_group("QK attribution")
    qk.add_argument("--qk", action=argparse.BooleanOptionalAction, default=True,
                    help="split kept heads' attention scores into query x key pairs")  # fmt: skip
    qk.add_argument("--key-mass", type=float,
                    help="also trace every key with at least this attention weight")  # fmt: skip
    files = parser.add_argument_group("files")
    files.add_argument("--format", default="svg",
                       help=f"renders among {','.join(FORMATS)} (need `dot`)")  # fmt: skip
    files.add_argument("--graph-file", choices=("pt", "safetensors"), default="pt")
    files.add_argument("--save-full", action="store_true",
                       help="also save the unpruned graph (large: every edge)")  # fmt: skip
    return parser.parse_args(argv)


def parse_formats(text: str) -> list[str]:
    """``--format``'s comma-separated renders, refusing unknown ones."""
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"--format: unknown {unknown}; choose among {', '.join(FORMATS)}")
    return formats


def _check_args(args: argparse.Namespace) -> list[str]:
    formats = parse_formats(args.format)
    for name in ("node_threshold", "edge_threshold", "logit_probability"):
        value = getattr(args, name)
        if not 0 < value <= 1:
            raise UserError(f"--{name.replace('_', '-')} must be in (0, 1], got {value}")
    if args.key_mass is not None and not 0 < args.key_mass <= 1:
        raise UserError(f"--key-mass must be in (0, 1], got {args.key_mass}")
    if args.max_logits <= 0 or (args.max_nodes is not None and args.max_nodes <= 0):
        raise UserError("--max-logits and --max-nodes must be positive")
    check_writable(args.out)
    return formats


def check_writable(out: Path) -> None:
    """Fail before any work if ``out`` could not be created or written (nothing is created
    here: a refused run leaves no trace)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {existing} is not writable")


def _targets(args, tokenizer):
    from toy_models.tokenizer import single_token

    from .attribution import LogitDiffTarget, LogitTarget, NodeTarget

    targets = [LogitTarget(single_token(tokenizer, t)) for t in args.target]
    targets += [
        LogitDiffTarget(single_token(tokenizer, a), single_token(tokenizer, b))
        for a, b in args.target_diff
    ]
    for spec in args.target_node:
        parts = spec.split(":")
        try:
            kind, layer, pos, index = parts[0], *(int(p) for p in parts[1:])
        except (ValueError, TypeError):
            raise UserError(f"--target-node {spec!r}: expected KIND:LAYER:POS:INDEX") from None
        targets.append(NodeTarget(kind, layer, pos, index))
    return targets or None


def main(argv: list[str] | None = None) -> int:
    import torch

    with torch.no_grad():  # a context, not a global switch: main() is also called in-process
        return _trace(parse_args(argv))


def _trace(args: argparse.Namespace) -> int:
    formats = _check_args(args)
    from replacement.model import load_pretrained
    from toy_models.tokenizer import encode_prompt

    from .attribution import attribute
    from .prune import graph_scores, prune_graph
    from .qk import qk_attribution

    replacement, tokenizer = load_pretrained(args.model, args.replacement)
    tokens = encode_prompt(tokenizer, args.prompt, replacement.cfg.n_ctx)
    targets = _targets(args, tokenizer)

    t0 = time.perf_counter()
    full = attribute(
        replacement, tokens, mode=args.mode, targets=targets, max_logits=args.max_logits,
        logit_probability=args.logit_probability, tokenizer=tokenizer, prompt=args.prompt,
    )  # fmt: skip
    full.model["name"] = args.model
    t_attr = time.perf_counter()
    scores = graph_scores(full)
    graph = prune_graph(full, args.node_threshold, args.edge_threshold, args.max_nodes)
    t_prune = time.perf_counter()
    if args.qk:
        heads = graph.is_kind("lorsa").nonzero().squeeze(1)
        qk_attribution(replacement, graph, heads, key_mass=args.key_mass, contrast=True)
    t_qk = time.perf_counter()
    timings = {"attribution": t_attr - t0, "pruning": t_prune - t_attr, "qk": t_qk - t_prune}
    graph.settings |= {"scores": scores, "seconds": {k: round(v, 4) for k, v in timings.items()}}
    saved_full = full if args.save_full else None
    written = write_outputs(graph, saved_full, args.out, formats, args.graph_file)

    print(summary(full, graph, scores, timings, tokenizer))
    for path in written:
        print(f"wrote {path}")
    return 0


def write_outputs(graph, full, out: Path, formats: list[str], graph_file: str = "pt") -> list[Path]:
    """Write ``graph`` (and the unpruned ``full``, if given) as JSON and ``graph_file`` ("pt"
    or "safetensors"), DOT, the ``formats`` renders and HTML into ``out``."""
    from reports.graphviz import dot_available, dot_missing_message, render, to_dot
    from reports.html import write_html
    from toy_models.files import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    suffix = "." + graph_file
    written = [out / "graph.json", out / f"graph{suffix}"]
    write_json_atomic(written[0], graph.to_json(slug=out.name or "graph"))
    graph.save(written[1])
    if full is not None:
        written.append(out / f"full_graph{suffix}")
        full.save(written[-1])
    rendered = render(to_dot(graph), out / "graph", formats if dot_available() else ())
    written += rendered
    svg = out / "graph.svg"
    write_html(graph, out / "graph.html", svg.read_text() if svg in rendered else None)
    written.append(out / "graph.html")
    if formats and not dot_available():
        print(dot_missing_message(out / "graph.dot"), file=sys.stderr)
    return written


def summary(full, graph, scores, timings, tokenizer) -> str:
    """A few lines: what the model predicts, how big the graph is, how good, how fast."""
    logits = graph.is_kind("logit").nonzero().squeeze(1).tolist()
    lines = ["targets: " + ", ".join(graph.labels[i] for i in logits)]
    closure = full.settings["closure_error"]
    lines += [
        f"graph: {full.n_nodes} nodes, {full.n_edges} edges -> pruned to {graph.n_nodes} nodes "
        f"({_count_kinds(graph)}), {graph.n_edges} edges; {len(graph.qk)} QK attributions",
        f"scores: replacement {scores['replacement']:.3f}, completeness "
        f"{scores['completeness']:.3f}; closure error max {closure['max_abs']:.2e} "
        f"(relative to |value| {closure['max_rel_value']:.2e})",
        "seconds: " + json.dumps({k: round(v, 3) for k, v in timings.items()}),
    ]
    top = sorted(
        (i for i in range(graph.n_nodes) if graph.kinds[i] in ("lorsa", "transcoder")),
        key=lambda i: -float(graph.influence[i]),
    )[:5]
    lines += ["most influential:"] + [
        f"  {graph.ids[i]:>14}  {float(graph.influence[i]):.3f}  {graph.labels[i]}" for i in top
    ]
    return "\n".join(lines)


def _count_kinds(graph) -> str:
    kinds = graph.kinds
    return ", ".join(f"{kinds.count(k)} {k}" for k in sorted(set(kinds)))


if __name__ == "__main__":
    run_cli(main)
