"""Grow a global (prompt-independent) circuit from one unit: upstream through each target's
mean input per occurrence, downstream through expected attribution per unit of activity.

    python -m circuits.global_graph --model default --start lorsa:1:318
    python -m circuits.global_graph --model default --start logit:" Thursday" --budget 30
    python -m circuits.global_graph --model default --start token:" Monday" --downstream
    python -m circuits.global_graph --model default --start lorsa:2:40 --qk-circuit

``--start`` names a unit: ``lorsa:LAYER:HEAD``, ``transcoder:LAYER:FEATURE``,
``logit:TOKEN`` or ``token:TOKEN`` (a token's embedding; grow it ``--downstream``).
Corpus statistics (the summed exact local edges and QK terms of ``--rows`` held-out rows,
``circuits.gathering``) are gathered once into ``--stats`` (resumable, with a progress bar)
and reused; a larger ``--rows`` gathers them again over more rows. Every Lorsa head of the
graph gets its QK group's expected QK attribution, drawn as q/k edges (``--no-qk``: value
edges only). The same graph is grown from each half of the sample, and how many of its top
edges the halves share is printed (the split-half reliability: low means gather more rows),
after the start's own edges with the share of its total (every partner's) that they hold.
``--qk-circuit`` writes a Lorsa head's QK circuit instead (``circuits.global_weights.
qk_circuit``): what its QK group's query side and key side read through the weights (the
``--pairs`` largest query-unit x key-unit terms of ``W_Q W_K^T``, weights alone) and each of
those units' ``--writers`` strongest inputs on the sample; it has no value edges into the head,
so its printout says what its pairs cover and how far the halves bear out its writer edges.
Writes, like ``circuits.trace``, ``graph.json``, ``graph.safetensors``, ``graph.dot``/``.svg``
and ``graph.html`` (``reports.outputs``).

Arguments are parsed and checked before anything heavy (torch, a model) is imported.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from toy_models.cli import (
    ArgumentParser,
    UserError,
    file_arg,
    path_arg,
    path_text,
    run_cli,
    whole_numbers,
)
from toy_models.files import check_writable_dir, check_writable_file, earlier_set
from toy_models.tokenizer import BOS, NEVER_PREDICTED, single_token

from .nodes import Kind
from .trace import (
    DEFAULT_FORMAT,
    GLOBAL_GRAPH,
    GRAPH_MARK,
    OUTPUT_NAMES,
    check_not_an_output,
    check_staging,
    check_writable,
    parse_formats,
    unrendered_status,
)

START_FORMS = "lorsa:L:HEAD, transcoder:L:FEATURE, logit:TOKEN or token:TOKEN"
N_STRONGEST = 8  # edges printed after a graph is grown
START_EDGES = "start_edges"  # = circuits.graph.START_EDGES (not imported: start-up)
RELIABILITY = "reliability"  # = circuits.graph.RELIABILITY (not imported: start-up)
DEFAULT_STATS_DIR = Path("runs/global-stats")  # = circuits.statistics (not imported: start-up)
MAX_ROWS = 1 << 20  # = circuits.statistics_file.MAX_ROWS (rows are held in memory)
BUDGET, PER_NODE = 40, 8  # a grown graph's defaults
QK_PAIRS, QK_WRITERS = 12, 2  # --qk-circuit's: = circuits.global_weights.qk_circuit's


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m circuits.global_graph",
        description="A global circuit around one unit of the replacement model (Lorsa heads and "
        "transcoder features reading the original model's activations, what each dictionary "
        "misses as error units: local mode, as a trace's default): exact local edges summed "
        "over a corpus sample, grown best-first to a budget and, upstream, pruned by "
        "influence like local graphs (downstream, its page ranks units by their reach from "
        "the start). Upstream (the default) an edge is the mean input per "
        "occurrence of its target; --downstream, the expected attribution per unit of its "
        "source's activity.",
    )
    parser.add_argument("--model", default="default", help="toy model: zoo name or directory")
    parser.add_argument(
        "--replacement", type=path_text, help="replacement set (default: shipped with --model)"
    )
    parser.add_argument("--start", required=True, metavar="UNIT", help=START_FORMS)
    parser.add_argument("--downstream", action="store_true",
                        help="grow towards what the unit drives (default: its inputs)")  # fmt: skip
    parser.add_argument("--budget", type=int,
                        help="units the graph holds, the start included (default 40): a grown "
                        "unit none of whose candidates joined gets its best end unit (a token "
                        "or error upstream, a logit downstream), counted in it; --qk adds each "
                        "Lorsa head's query and key units beyond it")  # fmt: skip
    parser.add_argument("--per-node", type=int, help="candidates per unit (default 8)")
    parser.add_argument("--qk-circuit", action="store_true",
                        help="with --start lorsa:L:HEAD, the head's QK circuit instead of a grown "
                        "graph: the --pairs largest query-unit x key-unit terms of its QK "
                        "group's W_Q W_K^T (weights alone) and each of those units' --writers "
                        "strongest inputs on the sample (--budget, --per-node, --downstream, "
                        "--no-prune and --no-qk are a grown graph's)")  # fmt: skip
    parser.add_argument("--pairs", type=int,
                        help=f"--qk-circuit: query x key pairs (default {QK_PAIRS})")  # fmt: skip
    parser.add_argument("--writers", type=int,
                        help=f"--qk-circuit: inputs drawn per pair unit (default {QK_WRITERS}; "
                        "0: none)")  # fmt: skip
    parser.add_argument("--no-prune", action="store_true",
                        help="keep every grown unit (ranked by influence on the start all the "
                        "same)")  # fmt: skip
    parser.add_argument("--qk", action=argparse.BooleanOptionalAction, default=True,
                        help="give every Lorsa head its QK group's expected QK attribution, "
                        "drawn as q/k edges (default: on)")  # fmt: skip
    parser.add_argument("--stats", type=file_arg,
                        help="statistics file (default: runs/global-stats/MODEL-KEY"
                        ".safetensors, KEY from the model, replacement set and tokenizer; "
                        "gathered when missing)")  # fmt: skip
    parser.add_argument("--rows", type=int,
                        help="corpus rows for statistics (default: those of --stats, or 128 "
                        "when gathering); more than the file holds gathers them again")  # fmt: skip
    parser.add_argument(
        "--out", type=path_arg, default=Path("runs/global"), help="output directory"
    )
    parser.add_argument("--format", help=f"renders among svg,pdf,png (need `dot`; default "
                        f"{DEFAULT_FORMAT}; named here, a render not drawn exits 1 once the "
                        "rest is written)")  # fmt: skip
    return parser.parse_args(argv)


@dataclass(frozen=True)
class StartSpec:
    """A ``--start`` unit as written: its kind name, and a layer and index or a token's text."""

    written: str  # the argument itself, for messages
    kind: str  # "lorsa", "transcoder", "logit" or "token"
    layer: int = 0
    index: int = 0
    text: str = ""


def parse_start(spec: str) -> StartSpec:
    """``--start``'s form, checked without the model (or a UserError saying what is wrong).
    A BOS logit is refused here too: BOS only begins a row, so it never occurs as the next
    token and its graph is empty whatever the statistics, which said so only after gathering
    them (over a minute on first use); every path to a start unit passes here."""
    kind, _, rest = spec.partition(":")
    if kind in ("lorsa", "transcoder"):
        numbers = whole_numbers(rest.split(":"))
        if numbers is not None and len(numbers) == 2:
            return StartSpec(spec, kind, *numbers)
    elif kind == "logit" and rest == BOS:
        raise UserError(f"--start {spec!r}: {NEVER_PREDICTED}: its logit has no global graph; "
                        "name another token")  # fmt: skip
    elif kind in ("logit", "token"):
        return StartSpec(spec, kind, text=rest)
    raise UserError(f"--start {spec!r}: expected {START_FORMS}")


def resolve_start(spec: StartSpec, units, tokenizer) -> int:
    """The unit ``spec`` names in this model, or a UserError."""
    try:
        if spec.kind in ("lorsa", "transcoder"):
            return units.unit(Kind.parse(spec.kind), spec.layer, spec.index)
        token = single_token(tokenizer, spec.text, "token")
        return units.unit(Kind.LOGIT if spec.kind == "logit" else Kind.EMBEDDING, 0, token)
    except ValueError as exc:
        raise UserError(f"--start {spec.written!r}: {exc}") from None


def parse_unit(spec: str, units, tokenizer) -> int:
    """A ``--start`` spec as a unit index, or a UserError that says what is wrong."""
    return resolve_start(parse_start(spec), units, tokenizer)


def _check_args(args: argparse.Namespace) -> tuple[StartSpec, list[str]]:
    formats = parse_formats(args.format)
    _check_kind_options(args)
    if min(args.budget, args.per_node) <= 0 or (args.rows is not None and args.rows <= 0):
        raise UserError("--budget, --per-node and --rows must be positive")
    if args.pairs <= 0 or args.writers < 0:
        raise UserError("--pairs must be positive and --writers 0 or more")
    if args.rows is not None and args.rows > MAX_ROWS:
        raise UserError(f"--rows must be at most {MAX_ROWS}, got {args.rows}")
    start = parse_start(args.start)
    if args.qk_circuit and start.kind != "lorsa":
        raise UserError(f"--start {args.start!r}: --qk-circuit is a Lorsa head's: name one as "
                        "lorsa:L:HEAD")  # fmt: skip
    if start.kind in ("logit", "token"):  # a text that is no token: said before the direction
        from toy_models.zoo import check_tokens

        check_tokens(args.model, [(f"--start {start.written!r}", start.text)], "token")
    if start.kind == "token" and not args.downstream:
        raise UserError(f"--start {args.start!r}: a token's embedding has no inputs: grow it "
                        "with --downstream")  # fmt: skip
    if start.kind == "logit" and args.downstream:
        raise UserError(f"--start {args.start!r}: a logit has no outputs: grow it upstream "
                        "(without --downstream)")  # fmt: skip
    if args.stats is None:  # the default file is named by the model's identity, once loaded
        check_writable_dir(DEFAULT_STATS_DIR, "--stats (default)")
    else:
        if not args.stats.is_file():  # it will be gathered into: fail now, not after
            check_writable_file(args.stats, "--stats")
        check_not_an_output(args.stats, args.out, "--stats")
    check_writable(args.out)
    # a model, another tool's graph.json, a trace's set: now
    earlier_set(args.out, GRAPH_MARK, OUTPUT_NAMES, GLOBAL_GRAPH)
    check_staging(args.out)
    return start, formats


def _check_kind_options(args: argparse.Namespace) -> None:
    """Refuse the options of the kind of graph not asked for (a grown graph's with
    ``--qk-circuit``, the QK circuit's without it), then fill in the defaults."""
    grown = [flag for flag, given in (("--budget", args.budget is not None),
                                      ("--per-node", args.per_node is not None),
                                      ("--downstream", args.downstream),
                                      ("--no-prune", args.no_prune),
                                      ("--no-qk", not args.qk)) if given]  # fmt: skip
    qk = [flag for flag, value in (("--pairs", args.pairs), ("--writers", args.writers))
          if value is not None]  # fmt: skip
    if args.qk_circuit and grown:
        raise UserError(f"{', '.join(grown)}: a grown graph's, not --qk-circuit's (its options: "
                        "--pairs, --writers)")  # fmt: skip
    if not args.qk_circuit and qk:
        raise UserError(f"{', '.join(qk)}: --qk-circuit's (a head's QK circuit); a grown graph "
                        "takes --budget and --per-node")  # fmt: skip
    args.budget = BUDGET if args.budget is None else args.budget
    args.per_node = PER_NODE if args.per_node is None else args.per_node
    args.pairs = QK_PAIRS if args.pairs is None else args.pairs
    args.writers = QK_WRITERS if args.writers is None else args.writers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start, formats = _check_args(args)
    import torch

    with torch.no_grad():  # a context, not a global switch: main() is also called in-process
        return _global_graph(args, start, formats)


def _global_graph(args: argparse.Namespace, spec: StartSpec, formats: list[str]) -> int:
    from replacement.model import load_pretrained

    from .gathering import statistics_for
    from .global_weights import global_graph, split_half, with_qk_side
    from .prune import prune_graph
    from .units import Units

    replacement, tokenizer = load_pretrained(args.model, args.replacement)
    replacement.group_size  # noqa: B018 (a set whose layers differ: refused before the work)
    units = Units.of(replacement)
    start = resolve_start(spec, units, tokenizer)
    sizes = ((("--pairs", args.pairs), ("--writers", args.writers)) if args.qk_circuit
             else (("--budget", args.budget), ("--per-node", args.per_node)))  # fmt: skip
    for flag, value in sizes:
        if value > units.total:  # a graph, or a unit's candidates, never holds more (a fuzz
            # pass's --budget 10**21 started gathering, and the graph would have recorded it)
            raise UserError(f"{flag} {value}: more than the model's {units.total} units")
    stats = statistics_for(replacement, tokenizer, args.model, args.stats, args.rows)
    if args.qk_circuit:
        return _qk_circuit_graph(args, replacement, tokenizer, stats, spec, formats)
    upstream = not args.downstream
    if float(stats.unit_count[start]) == 0:  # its graph would be empty, its reliability moot
        what = "never occurs as the next token" if spec.kind == "logit" else "never fires"
        raise UserError(
            f"--start {spec.written!r} {what} in the {stats.meta['rows_done']} rows of "
            f"{stats.meta['n_ctx']} tokens the statistics hold: its global graph is empty "
            "(a rare unit may show with more rows: --rows N)"
        )

    def grow(sample):
        graph = global_graph(
            replacement, sample, start, budget=args.budget, per_node=args.per_node,
            upstream=upstream, tokenizer=tokenizer,
        )  # fmt: skip
        return prune_graph(graph) if upstream and not args.no_prune else graph

    t0 = time.perf_counter()
    graph = grow(stats)
    if args.qk:
        graph = with_qk_side(replacement, stats, graph, tokenizer)
    graph.model["name"] = args.model
    seconds = time.perf_counter() - t0
    reliability = split_half(grow, stats)
    # what the graph keeps of the start's own total, in its settings (the page's summary)
    coverage = graph.settings[START_EDGES] = start_coverage(graph, stats, start)
    fired = int(stats.unit_count[start])
    # and how far its sample bears it out: the split-half overlap and the start's firings, as
    # printed (a page or graph.json read later said neither)
    written, labels = _write(args, replacement, tokenizer, graph, formats, reliability,
                             start_firings=fired)  # fmt: skip
    print(
        f"{labels[int(graph.target_weight.argmax())]}: {graph.n_nodes} units, "
        f"{graph.n_edges} edges ({graph.direction}, {seconds:.2f} s; statistics "
        f"over {stats.meta['rows_done']} rows of {stats.meta['n_ctx']} tokens); edges: "
        f"{graph.global_record.edge_weights}"
    )  # (upstream and downstream weights are not the same measure: said with them)
    for line in _start_lines(graph, labels, coverage):
        print(line)
    _print_strongest(graph, labels)
    for line in _qk_lines(graph, labels):
        print(line)
    print(reliability_line(reliability, graph.n_edges))
    if fired < FEW_FIRINGS:  # the halves compare the graph's strongest edges, mostly not its own
        print(f"note: the start occurs {fired} times in the sample: its own edges rest on so "
              "few whatever the overlap says; gather more with --rows")  # fmt: skip
    return _said_written(args, written)


def _qk_circuit_graph(args, replacement, tokenizer, stats, spec: StartSpec, formats) -> int:
    """``--qk-circuit``: the head's QK circuit (``circuits.global_weights.qk_circuit``), written
    as a grown graph is, and printed with what is true of it: its pairs (weights alone, what
    they cover), its writer edges (mean inputs on the sample) and how far the halves of the
    sample bear those out; it has no value edges into the head, so no share of its own."""

    from .global_weights import qk_circuit, split_half

    def build(sample):
        return qk_circuit(replacement, sample, spec.layer, [spec.index], k=args.pairs,
                          writers=args.writers, tokenizer=tokenizer)  # fmt: skip

    t0 = time.perf_counter()
    graph = build(stats)
    graph.model["name"] = args.model
    seconds = time.perf_counter() - t0
    reliability = split_half(build, stats)
    of = "the pair units' input edges (the pairs are the weights': the same in each half)"
    written, labels = _write(args, replacement, tokenizer, graph, formats, reliability, of=of)
    print(
        f"{labels[int(graph.target_weight.argmax())]}: QK circuit, {graph.n_nodes} units, "
        f"{graph.n_edges} edges ({seconds:.2f} s; statistics over {stats.meta['rows_done']} "
        f"rows of {stats.meta['n_ctx']} tokens); QK pairs: weights alone; edges: "
        f"{graph.global_record.edge_weights}"
    )
    for line in qk_circuit_lines(graph, stats.units):
        print(line)
    _print_strongest(graph, labels)
    for line in _qk_lines(graph, labels):
        print(line)
    print(qk_reliability_line(reliability, graph.n_edges))
    return _said_written(args, written)


def _write(args, replacement, tokenizer, graph, formats, reliability: dict, **extra):
    """Record the split-half ``reliability`` (with ``extra``) in the graph's settings (NaN,
    no edges to compare: None), refuse statistics that overflow in use, and write the
    outputs; returns what was written and the nodes' labels."""
    from reports.labels import node_labels
    from reports.outputs import write_graph_outputs

    from .statistics import default_stats_path

    overlap = reliability["overlap"]
    graph.settings[RELIABILITY] = {
        **reliability, "overlap": None if math.isnan(overlap) else overlap, **extra,
    }  # fmt: skip
    _check_finite(graph, args.stats or default_stats_path(args.model, replacement, tokenizer))
    views = _unit_dashboards(args.model, replacement, tokenizer, graph)
    written = write_graph_outputs(graph, args.out, formats, dashboards=views, feature_files=False,
                                  by=GLOBAL_GRAPH)  # fmt: skip
    return written, node_labels(graph)


def _said_written(args, written) -> int:
    """The outputs' notes (stderr) and paths, and the exit status (a render not drawn)."""
    for note in written.notes:
        print(note, file=sys.stderr)
    for path in written.paths:
        print(f"wrote {path}")
    return unrendered_status(args.format, written.unrendered)


def qk_circuit_lines(graph, units) -> list[str]:
    """What a QK circuit's printout says in place of a grown graph's start coverage (which
    would read 0: no value edge enters its head): which pairs it lists out of how many (every
    unit below the head's layer on each side, weights alone: no sample), and what its value
    edges are (the pair units' strongest inputs on the sample, not the head's)."""
    from .nodes import lorsa_stage

    made = graph.settings["qk_circuit"]
    (record,) = graph.qk
    below = units.start(lorsa_stage(made["layer"]))
    lines = [
        f"its QK pairs: the {len(record.pairs)} largest by |weight| of the {below * below:,} "
        f"query-unit x key-unit terms of L{made['layer']} QK {made['qk_head']}'s W_Q W_K^T "
        f"(the {below:,} units below block {made['layer']} on each side), summing to "
        f"{record.score:+.3f}: weights alone, the same for any sample, no prompt's score"
    ]
    writers = graph.edges.nnz
    lines.append(
        f"its value edges: {writers}, each pair unit's strongest inputs (mean input on the "
        "sample; a token has none); none enters the head: its value side is a grown graph's "
        "(without --qk-circuit)"
    )
    return lines


def _print_strongest(graph, labels: list[str]) -> None:
    """The graph's ``N_STRONGEST`` strongest edges, the rest counted."""
    strongest = graph.edges.tocoo()
    if len(strongest.data):
        print("strongest edges of the graph:")
    for j in abs(strongest.data).argsort()[::-1][:N_STRONGEST]:
        s, t = strongest.col[j], strongest.row[j]
        print(f"  {strongest.data[j]:+.3f}  {labels[s]}  ->  {labels[t]}")
    if len(strongest.data) > N_STRONGEST:
        print(_weaker_line(len(strongest.data) - N_STRONGEST))


def qk_reliability_line(r: dict, edges: int) -> str:
    """A QK circuit's split-half line (the printout's, and the page's summary row: ``r`` the
    graph's ``reliability`` setting): its pairs are the weights' (the same in each half), so
    the halves compare its value edges, the pair units' inputs, alone."""
    head = (f"split-half reliability of the pair units' inputs ({r['rows'][0]} + {r['rows'][1]} "
            "rows; the pairs are the weights', the same in each half)")  # fmt: skip
    if not r["compared"]:
        more = ("the graph has none (--writers 0, or every pair unit a token)" if not edges
                else "a half's graph has none; gather more with --rows")  # fmt: skip
        return f"{head}: nothing to compare: {more}"
    return (f"{head}: {r['shared']} of the top {r['compared']} edges shared by the graphs of "
            f"the even and the odd rows ({r['overlap']:.2f}); below ~0.5, gather more with "
            "--rows")  # fmt: skip


def _check_finite(graph, stats_path: Path) -> None:
    """Refuse statistics whose values are finite but overflow in use: the graph drawn from
    them holds NaN or an infinity (activations, edges, a target's value, the QK records or
    the settings). A fuzz pass's re-signed statistics (QK pairs or a head's activity near
    float32's largest) were refused only by the graph writer, naming its staging file
    (".writing/graph.safetensors: not saved, field activation"), not the statistics."""
    import json

    import torch

    values = graph.value[~torch.isnan(graph.value)]  # NaN: a node that is no target
    tensors = [graph.activation, graph.bias, graph.target_weight, values,
               torch.as_tensor(graph.edges.data)]  # fmt: skip
    tensors += [t for t in (graph.influence, graph.occurrences) if t is not None]
    finite = all(bool(torch.isfinite(t).all()) for t in tensors)
    try:
        json.dumps([graph.settings, [a.to_dict() for a in graph.qk]], allow_nan=False)
    except ValueError:
        finite = False
    if not finite:
        raise UserError(f"the statistics {stats_path} overflow in use (the global graph drawn "
                        "from them holds NaN or an infinity); nothing written: remove them to "
                        "gather again, or pass another --stats")  # fmt: skip


def start_coverage(graph, stats, start: int) -> dict:
    """How much of the start's own total the grown graph keeps: its value edges into the start
    (upstream) or out of it (downstream: ``graph.direction``), their sum of |weight|
    (``kept``), the same over every partner the statistics keep (``reachable``: they keep
    each unit's strongest partners only) and over every partner, kept or not (``total``: the
    sum of |mean input| into it, ``Statistics.input_total``, or of |expected attribution|
    from it, ``output_total``), with ``share`` = kept / total and ``reachable_share`` (None
    for a total of 0; at most 1). A reviewer read the strongest edges of a graph grown from a
    layer-2 head, none of them the head's, and a graph showing a sixth of its input with
    nothing saying so. Units joined only as QK partners bring no value edge and are not counted."""
    upstream = _upstream(graph)
    weights = _own_edges(graph)[1]
    total = stats.input_total(start) if upstream else stats.output_total(start)
    kept = float(abs(weights).sum())
    reachable = float((stats.mean_input(start) if upstream else stats.expected_from(start))[1]
                      .abs().sum())  # fmt: skip

    def share(x: float) -> float | None:
        return None if total <= 0 else round(min(x / total, 1.0), 4)

    return {"edges": len(weights), "kept": round(kept, 6), "reachable": round(reachable, 6),
            "total": round(total, 6), "share": share(kept),
            "reachable_share": share(reachable)}  # fmt: skip


def _upstream(graph) -> bool:
    """Whether a grown graph grew upstream (its ``global_record``), refused in one line for
    any other graph (a prompt's or a QK circuit's has no start to grow from)."""
    if graph.direction is None:
        raise ValueError("not a grown global graph: it has no start and no direction")
    return graph.direction == "upstream"


def _own_edges(graph):
    """The start's (the graph's target's) value edges: its sources upstream, its targets
    downstream, as (node indices, weights)."""
    i = int(graph.target_weight.argmax())
    edges = graph.edges.tocsr() if _upstream(graph) else graph.edges.T.tocsr()  # [target, source]
    lo, hi = int(edges.indptr[i]), int(edges.indptr[i + 1])
    return edges.indices[lo:hi], edges.data[lo:hi]


def _start_lines(graph, labels: list[str], c: dict) -> list[str]:
    """The start's own value edges in the graph (its inputs upstream, its outputs downstream),
    largest first, headed by how much of its total they hold (``c``: ``start_coverage``)."""
    upstream = _upstream(graph)
    others, weights = _own_edges(graph)
    head = coverage_words(c, upstream)
    arrow = "<-" if upstream else "->"
    more = len(weights) - N_STRONGEST  # said, not cut silently (a reviewer counted 8 of 9)
    return [head] + [f"  {weights[j]:+.3f}  {arrow} {labels[int(others[j])]}"
                     for j in abs(weights).argsort()[::-1][:N_STRONGEST]] + \
        [_weaker_line(more)] * (more > 0)  # fmt: skip


def coverage_words(c: dict, upstream: bool) -> str:
    """How much of the start's total its own value edges in the graph hold (``c``:
    ``start_coverage``, the graph's ``start_edges`` setting): the printout's line over them,
    and the page's summary row (which showed the record's raw JSON, "kept", "reachable_share"
    and all: a review)."""
    what = "inputs (mean input)" if upstream else "outputs (expected attribution)"
    if c["share"] is None:
        return f"its own {what}: none in the statistics (a total of 0)"
    return (f"its own {what} drawn as value edges: {c['edges']}, sum of |weight| "
            f"{c['kept']:.3g} of its {c['total']:.3g} over every partner ({c['share']:.0%}; "
            f"the statistics keep {c['reachable_share']:.0%} of it, each unit's strongest "
            "partners)")  # fmt: skip


def _weaker_line(more: int) -> str:
    """The line counting the edges a printout leaves out past its ``N_STRONGEST``."""
    return f"  ... and {more} weaker (graph.json has every edge)"


def _unit_dashboards(model: str, replacement, tokenizer, graph) -> dict | None:
    """The units' dashboards for the page (viewer schema), from the finished local-mode file a
    trace of this model built at the default path (the statistics are local mode's too); None,
    said in a note, where there is none or it cannot be used: the page is whole without them,
    and building them is the trace's first run's work, not this command's (a reviewer found the
    global page bare beside a dashboards file)."""
    from .dashboards import default_path, read_file
    from .trace import DASHBOARD_ROWS, dashboard_views

    path = default_path(model, "local", replacement, tokenizer, DASHBOARD_ROWS)
    why = f"there is none at {path} (a first `python -m circuits.trace --model {model}` builds it)"
    if path.is_file():
        try:
            dash = read_file(path, replacement, tokenizer)
            why = "" if dash.finished else f"{path} is an unfinished build"
        except ValueError as exc:
            why = str(exc)
        if not why:
            try:
                return dashboard_views(dash, path, tokenizer, graph)[0]
            except UserError as exc:
                why = str(exc)
    print(f"note: the page has no unit dashboards: {why}", file=sys.stderr)
    return None


def side_words(graph, a, node: str) -> str:
    """A QK pair's side in words from the fields its record gives (``QKAttribution.named``),
    for a side that is no node of the graph (a head added as a partner brings its group's
    pairs, whose units may be absent: printed as a bare id before)."""
    from .nodes import node_words

    side = a.named.get(node)
    if side is None:
        return node
    token = graph.token_text.get(side.index) if side.kind == Kind.EMBEDDING else None
    # said to be outside: a graph node's label beside it carries what it promotes and how
    # often it fires, which this one's does not (a review: two units of one line read unlike)
    return f"{node_words(side.kind, side.stage, side.index, token=token)} (not in the graph)"


def _qk_lines(graph, labels: list[str]) -> list[str]:
    """Per QK group of the graph: its score lift and the listed pair raising it most (the one
    drawn, ``with_qk_side``, where it raises it at all), per firing, with the share
    of the lift the pair holds and what the listed pairs leave out (``rest``): a relation such
    as induction's (this token after that one) is spread over many token-specific pairs, none
    of which holds much of it."""
    at = graph.id_to_index
    lines = []
    for a in graph.qk:
        name = f"L{a.layer} QK {a.qk_head}"
        if not a.pairs:
            lines.append(f"  {name}: no QK pairs gathered")
            continue
        p = max(a.pairs, key=lambda p: p.value)  # the pair raising it most, the one drawn
        query = labels[at[p.query]] if p.query in at else side_words(graph, a, p.query)
        key = labels[at[p.key]] if p.key in at else side_words(graph, a, p.key)
        # signed: a pair that lowers the score holds a negative share (a reviewer read
        # `-0.181 (2.2% of the lift ...)`)
        if graph.qk_from_weights:  # a QK circuit's: weights alone, no score of any firing
            # (its pairs' sum is said above it, ``qk_circuit_lines``; a share of it misleads
            # where pairs of both signs cancel: +0.202 was -93.8% of a sum of -0.215)
            what = ("the pair raising its score most by the weights" if p.value > 0
                    else "every pair listed lowers its score; the least")  # fmt: skip
            lines.append(f"  {name}, {what}: q {query}  x  k {key}  {p.value:+.3f}")
            continue
        share = f"{p.value / a.score:+.1%} of the lift; " if a.score else ""
        lines.append(f"  {name} (score lift {a.score:+.3f} per firing): q {query}  x  k {key}"
                     f"  {p.value:+.3f} ({share}the {len(a.pairs)} largest pairs "
                     f"{a.score - a.rest:+.3f}, rest {a.rest:+.3f})")  # fmt: skip
    return lines


FEW_FIRINGS = 50  # a start unit firing fewer times in the sample is said to rest on few


def reliability_line(r: dict, edges: int) -> str:
    """The split-half line (the printout's, and the page's summary row: ``r`` the graph's
    ``reliability`` setting); ``edges``: the whole sample's graph's value edges. Where that
    graph has none either (``--budget 1`` holds the start alone), the halves' having none says
    nothing of the sample, and more rows would not give them any (a review: a head firing
    1140 times was told to gather more)."""
    head = f"split-half reliability ({r['rows'][0]} + {r['rows'][1]} rows)"
    if not r["compared"] and not edges:
        return f"{head}: nothing to compare: the graph has no value edges (grow it: --budget)"
    if not r["compared"]:
        return f"{head}: a half's graph has no edges; gather more with --rows"
    return (
        f"{head}: {r['shared']} of the top {r['compared']} edges shared by the graphs of the "
        f"even and the odd rows ({r['overlap']:.2f}; {r['units_shared']} units in both); "
        "below ~0.5, gather more with --rows"
    )


if __name__ == "__main__":
    run_cli(main)
