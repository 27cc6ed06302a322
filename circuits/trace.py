"""Trace one prompt: attribution graph, pruning, QK attribution, files and a report.

    python -m circuits.trace --prompt "Monday, Tuesday, Wednesday," --out runs/trace

Writes into ``--out``: ``graph.json`` (circuit-tracer/Neuronpedia schema, pruned graph),
``graph.safetensors`` (the pruned ``Graph``; ``--save-full`` adds the unpruned one),
``graph.dot`` and, when Graphviz's ``dot`` is installed, ``graph.svg`` (``--format`` picks
more), ``graph.html`` (``reports.outputs``), ``mechanisms.json``, the mechanism summary it
also prints (``circuits.mechanisms``), drawn as ``mechanism.dot`` and its renders
(``reports.mechanism_figure``), and with dashboards circuit-tracer's feature files and
viewer index (``reports.feature_files``). Every file is written atomically.

The command lines (this one and ``circuits.global_graph``) are the only places in
``circuits`` that call ``reports``, to write files; the library modules never do. Nothing
heavy (torch, a model) is imported before the arguments are parsed and checked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
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
from toy_models.files import (
    STAGING_DIR,
    STAGING_MARK,
    check_outside_saved_work,
    earlier_set,
    resolved,
    staging_in_the_way,
)

FORMATS = ("svg", "pdf", "png")  # = reports.graphviz.RENDER_FORMATS (not imported: start-up)
DEFAULT_FORMAT = "svg"
MAX_PROMPT_CHARS = 100_000  # far more than n_ctx tokens; refused before tokenizing
# graph.json holds a record per edge (about 100 bytes): beyond this the file runs to 100 MB
# and more, no viewer draws it, and writing a whole 128-token graph's 1e8 edges ran out of
# memory. ``--save-full`` keeps every edge in the compact safetensors file.
MAX_KEPT_EDGES = 1_000_000
UNSURE = 0.1  # the top logit's probability under which the summary says the model is unsure
DASHBOARD_ROWS = 192  # = circuits.dashboards.DEFAULT_ROWS (not imported: start-up)
MAX_LOGITS, LOGIT_PROBABILITY = 10, 0.95  # = circuits.attribution.attribute's defaults
MECHANISMS_FILE = "mechanisms.json"
# What a run writes, replaces or removes in --out besides its graph.* files (not imported:
# start-up): reports.outputs.FULL_GRAPH_FILE, the summary, reports.feature_files.FEATURES_DIR
# and STAGING_DIR (where the set is written before it is moved into place).
OUTPUT_FILES = ("full_graph.safetensors", MECHANISMS_FILE)
OUTPUT_DIRS = ("features", STAGING_DIR)
# = reports.outputs.GRAPH_SET (not imported: start-up): what --out is checked against before
# any work (``toy_models.files.earlier_set``), here and in circuits.global_graph
GRAPH_MARK = "graph.json"
# = reports.outputs.GRAPH_WRITERS: the commands that write that set, each refusing the other's
TRACE, GLOBAL_GRAPH = "circuits.trace", "circuits.global_graph"
OUTPUT_NAMES = frozenset(
    (GRAPH_MARK, "graph.safetensors", "graph.dot", "graph.html", "graph-metadata.json",
     *OUTPUT_FILES, *(d for d in OUTPUT_DIRS if not d.startswith(".")), "mechanism.dot",
     *(f"{stem}.{fmt}" for stem in ("graph", "mechanism") for fmt in FORMATS))
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m circuits.trace",
        description="Exact attribution graph of one prompt through a fully sparsified model: "
        "Lorsa heads and transcoder features, edges through frozen attention patterns, "
        "QK attribution of the heads that matter, pruned by influence.",
    )
    parser.add_argument("--prompt", required=True, help="the text to trace (BOS is prepended)")
    parser.add_argument("--model", default="default", help="toy model: zoo name or directory")
    parser.add_argument(
        "--replacement",
        type=path_text,
        help="replacement set directory (default: the one shipped with --model)",
    )
    parser.add_argument("--out", type=path_arg, default=Path("runs/trace"), help="output directory")
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
    targets.add_argument("--vs-runner-up", action="store_true",
                         help="explain each --target (with none named, the top token alone, "
                         "not the default top logits) minus the most likely other token (the "
                         "margin over the runner-up) instead of the logit itself")  # fmt: skip
    targets.add_argument("--max-logits", type=int,
                         help=f"with no target named: at most this many top logits (default "
                         f"{MAX_LOGITS})")  # fmt: skip
    targets.add_argument("--logit-probability", type=float,
                         help="with no target named: top logits until their probabilities sum "
                         f"to this (default {LOGIT_PROBABILITY})")  # fmt: skip
    prune = parser.add_argument_group("pruning (circuit-tracer's definitions)")
    prune.add_argument("--node-threshold", type=float, default=0.8)
    prune.add_argument("--edge-threshold", type=float, default=0.98)
    prune.add_argument("--max-nodes", type=int, help="cap on heads, features and errors kept")
    qk = parser.add_argument_group("QK attribution")
    qk.add_argument("--qk", action=argparse.BooleanOptionalAction, default=True,
                    help="split kept heads' attention scores into query x key pairs")  # fmt: skip
    qk.add_argument("--key-mass", type=float,
                    help="also trace every key with at least this attention weight")  # fmt: skip
    mech = parser.add_argument_group("reading the graph (circuits.mechanisms)")
    mech.add_argument("--constants", action=argparse.BooleanOptionalAction, default=True,
                      help="decoder biases as nodes (one per sublayer and position), so the "
                      "graph shows how much of each target is constant")  # fmt: skip
    mech.add_argument("--mechanisms", action=argparse.BooleanOptionalAction, default=True,
                      help="print a mechanism summary (head and feature groups, top paths, "
                      "QK reasons) and write mechanisms.json")  # fmt: skip
    mech.add_argument("--checks", action=argparse.BooleanOptionalAction,
                      help="check each summary group by ablation, attention frozen and free "
                      "(the model rerun, errors recomputed too), against the graph's linear "
                      "prediction, and choose each head's QK sources by ablation (on with the "
                      "summary; --no-checks chooses them by linear share, so the pruned graph, "
                      "which keeps the sources, can hold other nodes)")  # fmt: skip
    files = parser.add_argument_group("files")
    files.add_argument("--format",
                       help=f"renders among {','.join(FORMATS)} (need `dot`; default "
                       f"{DEFAULT_FORMAT}, skipped with a note where `dot` is missing or fails; "
                       "named here, a render not drawn exits 1 once the rest is written); "
                       "\"\" for none (graph.html draws the graph itself)")  # fmt: skip
    files.add_argument("--graph-file", choices=("safetensors",), default="safetensors",
                       help="graph file format: tensors + a JSON header, no pickle")  # fmt: skip
    files.add_argument("--save-full", action="store_true",
                       help="also save the unpruned graph (large: every edge)")  # fmt: skip
    dash = parser.add_argument_group("unit dashboards (circuits.dashboards)")
    dash.add_argument("--dashboards", action=argparse.BooleanOptionalAction, default=True,
                      help="show each head's and feature's corpus dashboard and concept label "
                      "in the report; built on first use (about a minute) and reused")  # fmt: skip
    dash.add_argument("--dashboard-rows", type=int,
                      help=f"rows a first build reads (default {DASHBOARD_ROWS}; a finished "
                      "--dashboards-file is used with the rows it has)")  # fmt: skip
    dash.add_argument("--dashboards-file", type=file_arg,
                      help="the dashboards file (default runs/dashboards/<model>-<mode>-"
                      "<key>.safetensors, key: the replacement set's identity and the "
                      "rows)")  # fmt: skip
    dash.add_argument("--feature-files", action=argparse.BooleanOptionalAction, default=True,
                      help="on by default: with dashboards, also write circuit-tracer's "
                      "feature files (features/<model>-<mode>/<n>.json) and viewer index "
                      "(graph-metadata.json) beside graph.json, so circuit_tracer.frontend."
                      "local_server.serve(OUT) opens the graph with them "
                      "(reports.feature_files)")  # fmt: skip
    dash.set_defaults(feature_files=None)
    args = parser.parse_args(argv)
    # Refused here, where it is still known whether it was given; on by default after
    if args.feature_files and not args.dashboards:
        raise UserError("--feature-files writes the dashboards' feature files that "
                        "--no-dashboards turns off: drop one")  # fmt: skip
    args.feature_files = True if args.feature_files is None else args.feature_files
    return args


def parse_formats(text: str | None) -> list[str]:
    """``--format``'s comma-separated renders, refusing unknown ones, one named twice and an
    empty one between commas (None, not given: the default; ``""`` alone: none). A fuzz pass
    found ``svg,svg`` drawn twice ("wrote graph.svg" twice) and ``,`` drawing nothing."""
    text = DEFAULT_FORMAT if text is None else text
    if not text.strip():
        return []
    formats = [f.strip() for f in text.split(",")]
    if "" in formats:
        raise UserError(f"--format {text!r}: an empty name between commas; \"\" alone draws "
                        "none")  # fmt: skip
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"--format: unknown {unknown}; choose among {', '.join(FORMATS)}")
    twice = sorted({f for f in formats if formats.count(f) > 1})
    if twice:
        raise UserError(f"--format: {', '.join(twice)} named twice")
    return formats


def _check_args(args: argparse.Namespace) -> list[str]:
    formats = parse_formats(args.format)
    for name in ("node_threshold", "edge_threshold", "logit_probability"):
        value = getattr(args, name)
        if value is not None and not 0 < value <= 1:
            raise UserError(f"--{name.replace('_', '-')} must be in (0, 1], got {value}")
    # a flag another flag makes moot is a request that would be silently dropped
    target_flag = next((flag for flag, given in (
        ("--target", args.target), ("--target-diff", args.target_diff),
        ("--target-node", args.target_node), ("--vs-runner-up", args.vs_runner_up),
    ) if given), None)  # fmt: skip
    for flag, value in (("--max-logits", args.max_logits),
                        ("--logit-probability", args.logit_probability)):  # fmt: skip
        if value is not None and target_flag is not None:
            raise UserError(f"{flag} chooses the top logits traced when no target is given; "
                            f"with {target_flag} it is unused: drop one")  # fmt: skip
    if args.key_mass is not None and not args.qk:
        raise UserError("--key-mass sets the QK attribution that --no-qk turns off: drop one")
    if args.dashboards_file is not None and not args.dashboards:
        raise UserError("--dashboards-file names the dashboards --no-dashboards turns off: "
                        "drop one")  # fmt: skip
    if args.checks is not None and not args.mechanisms:  # named as given (a reviewer's)
        flag = "--checks" if args.checks else "--no-checks"
        raise UserError(f"{flag} sets the summary's ablation checks that --no-mechanisms "
                        "turns off: drop one")  # fmt: skip
    if args.dashboard_rows is not None and not args.dashboards:
        raise UserError("--dashboard-rows sets the dashboards --no-dashboards turns off: "
                        "drop one")  # fmt: skip
    # the defaults of the flags above, once it is known whether they were given
    args.checks = args.mechanisms if args.checks is None else args.checks
    args.dashboard_rows = DASHBOARD_ROWS if args.dashboard_rows is None else args.dashboard_rows
    args.max_logits_named = args.max_logits is not None  # checked on the vocabulary: _trace
    args.max_logits = MAX_LOGITS if args.max_logits is None else args.max_logits
    if args.logit_probability is None:
        args.logit_probability = LOGIT_PROBABILITY
    if args.key_mass is not None and not 0 < args.key_mass <= 1:
        raise UserError(f"--key-mass must be in (0, 1], got {args.key_mass}")
    if args.max_logits <= 0 or (args.max_nodes is not None and args.max_nodes <= 0):
        raise UserError("--max-logits and --max-nodes must be positive")
    if args.vs_runner_up and not args.target and (args.target_diff or args.target_node):
        raise UserError(
            "--vs-runner-up turns logit targets (--target, or the default top token) into "
            "margins; --target-diff and --target-node are not logits"
        )
    named = [("--target", repr(t)) for t in args.target] + [
        ("--target-diff", f"{a!r} {b!r}") for a, b in args.target_diff
    ] + [("--target-node", spec) for spec in args.target_node]  # fmt: skip
    for spec in args.target_node:  # the syntax now, before the model loads (seconds)
        node_spec(spec)
    twice = next((n for i, n in enumerate(named) if n in named[:i]), None)
    if twice is not None:  # the same node twice, weighted twice
        raise UserError(f"{twice[0]} {twice[1]} is given twice: name each target once")
    if any(a == b for a, b in args.target_diff):
        raise UserError("--target-diff of a token with itself is zero: name two different tokens")
    from toy_models.tokenizer import BOS, NEVER_PREDICTED, check_prompt_text  # light

    try:  # the text's own faults now, before the model loads (seconds)
        check_prompt_text(args.prompt)
    except ValueError as exc:
        raise UserError(str(exc)) from None

    tokens = [("--target", (t,)) for t in args.target]
    tokens += [("--target-diff", tuple(d)) for d in args.target_diff]
    for flag, texts in tokens:
        if BOS in texts:
            raise UserError(f"{flag} {' '.join(map(repr, texts))}: {NEVER_PREDICTED}; name "
                            "another token")  # fmt: skip
    from toy_models.zoo import check_tokens  # the tokenizer alone, before the model loads

    check_tokens(args.model, [(f"{flag} {' '.join(map(repr, texts))}", text)
                              for flag, texts in tokens for text in texts])  # fmt: skip
    if len(args.prompt) > MAX_PROMPT_CHARS:
        raise UserError(
            f"--prompt has {len(args.prompt)} characters; the model reads at most its context "
            f"length in tokens (prompts over {MAX_PROMPT_CHARS} characters are refused)"
        )
    from .dashboard_cli import MAX_ROWS as MAX_DASHBOARD_ROWS  # light: argparse only

    if not 1 <= args.dashboard_rows <= MAX_DASHBOARD_ROWS:
        raise UserError(
            f"--dashboard-rows must be in 1..{MAX_DASHBOARD_ROWS}, got {args.dashboard_rows}"
        )
    if args.dashboards_file is not None:
        if args.dashboards_file.exists() and not args.dashboards_file.is_file():
            raise UserError(f"--dashboards-file {args.dashboards_file}: not a file")
        if args.dashboards_file.is_symlink() and not args.dashboards_file.exists():
            # it would be built, and a build is written only when done: refused now, not
            # after minutes of work (a fuzz pass)
            raise UserError(f"--dashboards-file {args.dashboards_file}: a symbolic link that "
                            "leads nowhere or in a loop; name a new or regular file")  # fmt: skip
        if args.dashboards and not args.dashboards_file.exists():
            check_writable(args.dashboards_file.parent, "--dashboards-file's folder")
        if args.dashboards:
            check_not_an_output(args.dashboards_file, args.out, "--dashboards-file")
    check_writable(args.out)
    # a model, another tool's graph.json, a global graph's set: now
    earlier_set(args.out, GRAPH_MARK, OUTPUT_NAMES, TRACE)
    check_staging(args.out)
    return formats


def check_staging(out: Path) -> None:
    """Refuse now what stands where the run stages its set (``--out/.writing``) unless a run
    left it (``toy_models.files.staging_in_the_way``), here and in circuits.global_graph."""
    reason = staging_in_the_way(out / OUTPUT_DIRS[1], STAGING_MARK)
    if reason:
        raise UserError(f"--out {out}: {out / OUTPUT_DIRS[1]} is {reason}")


def check_not_an_output(path: Path, out: Path, flag: str) -> None:
    """Refuse an input file (or one to build) that writing the run's outputs into ``out``
    would replace or remove: ``graph.*`` there, ``OUTPUT_FILES``, anything in
    ``OUTPUT_DIRS``."""
    path, out = resolved(path, flag), resolved(out, "--out")
    inside = any(out / d in path.parents for d in OUTPUT_DIRS) or (
        path.parent == out and (path.name.startswith("graph") or path.name in OUTPUT_FILES)
    )
    if inside:
        raise UserError(f"{flag} {path}: the run writes its outputs over it in --out {out}; "
                        "keep it outside them")  # fmt: skip


def check_writable(out: Path, flag: str = "--out") -> None:
    """Fail before any work if the directory ``out`` could not be created or written (nothing
    is created here: a refused run leaves no trace); ``flag`` names it in the message."""
    if out.is_symlink() and not out.exists():
        raise UserError(f"{flag} {out}: a dangling symbolic link")
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: exists and is not a directory")
    existing = out.absolute()
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        raise UserError(f"{flag} {out}: {existing} is a dangling symbolic link")
    if not existing.is_dir():
        raise UserError(f"{flag} {out}: {existing} is not a directory")
    real = existing.resolve()
    if real.parts[:2] in (("/", "proc"), ("/", "sys")):
        raise UserError(f"{flag} {out}: {real} is a kernel file system, not for files")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: {existing} is not writable")
    check_outside_saved_work(out, flag)


def _targets(args, tokenizer, last_logits=None):
    """The targets the arguments name (None: the default top logits); with
    ``--vs-runner-up``, logit targets become differences with the most likely other token
    (``last_logits``: the prompt's logits at the last position)."""
    from toy_models.tokenizer import single_token

    from .attribution import LogitDiffTarget, LogitTarget, NodeTarget, repeated_target
    from .mechanisms import runner_up

    targets = [LogitTarget(single_token(tokenizer, t)) for t in args.target]
    if args.vs_runner_up and last_logits is not None:
        if not targets and not args.target_diff and not args.target_node:
            targets = [LogitTarget(int(last_logits.argsort(descending=True)[0]))]
        targets = [LogitDiffTarget(t.token, runner_up(last_logits, t.token)) for t in targets]
    targets += [
        LogitDiffTarget(single_token(tokenizer, a), single_token(tokenizer, b))
        for a, b in args.target_diff
    ]
    targets += [NodeTarget(*node_spec(spec)) for spec in args.target_node]
    repeated = repeated_target(targets)
    if repeated is not None:  # said here in the user's terms, not as the library's record
        made = " (--vs-runner-up makes each --target its margin over the runner-up)" \
            if args.vs_runner_up else ""  # fmt: skip
        if isinstance(repeated, LogitDiffTarget):
            made += " (a difference and its reverse are one target)"
        raise UserError(f"{_target_words(repeated, tokenizer)} is named twice{made}: name each "
                        "target once")  # fmt: skip
    return targets or None


def _target_words(target, tokenizer) -> str:
    """A target as the arguments name it: a logit's token, a difference's two, a node's spec."""
    from toy_models.tokenizer import token_text

    from .attribution import LogitDiffTarget, LogitTarget

    if isinstance(target, LogitTarget):
        return f"the target {token_text(tokenizer, target.token)!r}"
    if isinstance(target, LogitDiffTarget):
        positive, negative = (token_text(tokenizer, x) for x in (target.positive, target.negative))
        return f"the difference {positive!r} - {negative!r}"
    return f"the node {target.kind}:{target.layer}:{target.pos}:{target.index}"


def node_spec(spec: str) -> tuple[str, int, int, int]:
    """``--target-node``'s KIND:LAYER:POS:INDEX read (the syntax and the kind, as
    ``circuits.nodes.target_kind`` takes it: whether the model has that node is checked once it
    is loaded)."""
    from .nodes import TARGET_KINDS, target_kind  # light: an enum

    parts = spec.split(":")
    if len(parts) != 4:
        raise UserError(f"--target-node {spec!r}: expected KIND:LAYER:POS:INDEX")
    numbers = whole_numbers(parts[1:])
    if numbers is None:  # a reviewer's position of -1 was told only the form
        raise UserError(f"--target-node {spec!r}: LAYER, POS and INDEX are whole numbers "
                        "from 0, in digits (KIND:LAYER:POS:INDEX)")  # fmt: skip
    try:
        target_kind(parts[0])
    except ValueError:
        kinds = ", ".join(k.label for k in TARGET_KINDS)
        raise UserError(f"--target-node {spec!r}: the kind must be one of {kinds}") from None
    return parts[0], *numbers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    formats = _check_args(args)  # everything checked before torch or a model is imported
    import torch

    with torch.no_grad():  # a context, not a global switch: main() is also called in-process
        return _trace(args, formats)


def qk_step(replacement, graph, run, key_mass=None, sides=None, heads=None) -> list:
    """The trace's QK step (``benchmarks/attribution.py`` times this very call): every head
    the pruned ``graph`` keeps (or ``heads``), with the contrast split and the QK reason
    (``graph.qk``). ``sides`` (optional): a dict of each layer's ``QKSides``, shared with
    ``sources_step``."""
    from .qk import qk_attribution

    heads = graph.is_kind("lorsa").nonzero().squeeze(1) if heads is None else heads
    return qk_attribution(replacement, graph, heads, key_mass=key_mass, contrast=True,
                          reason=True, run=run, sides=sides)  # fmt: skip


def cap_room(graph) -> int | None:
    """How many more heads, features and errors (``circuits.prune.CAPPED_KINDS``) the trace
    may add to the pruned ``graph`` under its ``--max-nodes`` cap (None: no cap); the steps
    that bring nodes back after pruning (``sources_step``, ``summary_groups_step``) hold it."""
    from .prune import CAPPED_KINDS

    cap = graph.settings.get("max_nodes")
    return None if cap is None else max(0, cap - int(graph.is_kind(*CAPPED_KINDS).sum()))


def sources_step(replacement, graph, run, full, scored=None, key_mass=None, sides=None):
    """The trace's step after ``qk_step`` (``benchmarks/attribution.py`` times it apart): each
    QK record's sources through the full graph ``full`` (``qk_sources``), which the drawing's
    QK edges come from; returns the graph. When pruning dropped the strongest member of a
    record's largest source group on either side (the heads behind an attention pattern have
    little influence of their own on the targets: an induction key's previous-token heads),
    the graph is pruned again from ``full`` with the same settings, keeping them
    (``prune_graph(keep=)``; ``scored``: the full graph's ``influence_scores``), and the heads
    that pruning adds get their records (``qk_step``'s) and sources; that graph is returned."""
    from .qk import qk_sources

    records = graph.qk
    qk_sources(replacement, full, records, run, sides=sides)
    dropped = list(
        dict.fromkeys(  # in the records' order: the first ones' first under a cap
            full.id_to_index[x.members[0]]
            for a in records
            for side in ("query", "key")
            for x in [next((x for x in a.sources if x.side == side), None)]
            if x is not None and x.members[0] not in graph.id_to_index
        )
    )
    room = cap_room(graph)
    if room is not None:  # a --max-nodes cap holds here too (a review: 7 kept under a cap of 5)
        dropped = dropped[:room]
    if not dropped:
        return graph
    return _pruned_keeping(replacement, graph, run, full, scored, key_mass, sorted(dropped),
                           qk=True, sides=sides)  # fmt: skip


def _pruned_keeping(replacement, graph, run, full, scored, key_mass, keep, qk, sides=None):
    """``full`` pruned again with ``graph``'s settings, keeping ``keep`` (indices of ``full``;
    ``prune_graph(keep=)``), with ``graph``'s QK records of the heads still there and, when
    ``qk``, records (``qk_step``) and sources (``qk_sources``) for the heads that have none at
    the key they read; without ``qk`` it has none."""
    from .prune import prune_graph
    from .qk import qk_sources

    s = graph.settings
    kept = prune_graph(full, s["node_threshold"], s["edge_threshold"], s["max_nodes"],
                       scored=scored, keep=keep)  # fmt: skip
    if not qk:
        return kept
    heads = kept.is_kind("lorsa").nonzero().squeeze(1).tolist()
    where = {i: (int(kept.layer[i]), kept.qk_head(i), int(kept.pos[i])) for i in heads}
    had = {(a.layer, a.qk_head, a.query, a.key) for a in graph.qk}
    new = [i for i in heads if (*where[i], kept.read_key(i)) not in had]  # no record at its key
    added = qk_step(replacement, kept, run, key_mass, sides, heads=new) if new else []
    qk_sources(replacement, full, added, run, sides=sides)
    present = set(where.values())
    kept.qk = [a for a in graph.qk if (a.layer, a.qk_head, a.query) in present] + added
    return kept


def summary_groups_step(replacement, graph, run, full, summary, scored, key_mass, qk):
    """The trace's step after the summary: where pruning dropped members of a target's
    predicting head group or of its QK sources (``GroupRecord.writes_qk``: heads whose value
    flow into the target can be small, all their effect through the attention they shape),
    or of a head target's own QK sources, the graph is pruned again from ``full`` with the
    same settings keeping them and every node it had (``prune_graph(keep=)``), so that the
    page draws these groups whole (as the summary's supernodes,
    ``reports.viewer.summary_supernodes``); heads it adds get QK records and sources when
    ``qk`` (``qk_step``, ``qk_sources``), and the summary's ``in_pruned`` follow. A
    ``--max-nodes`` cap holds: a group that would pass it stays out. Returns the graph (the
    same one when nothing was added)."""
    named = []
    for t in summary.targets:
        # a head target's own QK sources (``--target-node``), which the printout names under
        # it as it names a predicting group's (a review: a head target's query-side source,
        # L0 13 heads, was printed with none of its members on the page)
        named += [g.key for g, _ in summary.qk_sources(t.node)]
        if t.predicting_group is not None:
            named.append(t.predicting_group)
            named += [g.key for g, _ in summary.qk_sources(t.predicting_group)]
    s = graph.settings
    room = cap_room(graph)  # a --max-nodes cap holds: a group that would pass it stays out
    dropped = []
    for key in dict.fromkeys(named):
        missing = [full.id_to_index[m] for m in summary.group(key).members
                   if m not in graph.id_to_index]  # fmt: skip
        if room is not None and len(missing) > room:
            continue
        dropped += missing
        room = None if room is None else room - len(missing)
    if not dropped:
        return graph
    had = {full.id_to_index[x] for x in graph.ids}
    kept = _pruned_keeping(replacement, graph, run, full, scored, key_mass,
                           sorted(had | set(dropped)), qk)  # fmt: skip
    if "scores" in s:  # set by the trace on the graph after pruning
        kept.settings["scores"] = s["scores"]
    for g in summary.groups:
        g.in_pruned = [m for m in g.members if m in kept.id_to_index]
    return kept


def _check_kept_edges(graph) -> None:
    """Refuse a pruned graph too large for ``graph.json`` (one record per edge, for people)."""
    if graph.n_edges > MAX_KEPT_EDGES:
        raise UserError(
            f"the pruned graph keeps {graph.n_edges:,} edges, more than graph.json takes "
            f"({MAX_KEPT_EDGES:,}): lower --node-threshold or --edge-threshold, or cap "
            "--max-nodes (the default keeps about 10,000)"
        )


def _trace(args: argparse.Namespace, formats: list[str]) -> int:
    from replacement.model import load_pretrained
    from reports.mechanisms import format_summary
    from reports.outputs import write_graph_outputs
    from toy_models.tokenizer import encode_prompt

    from .attribution import attribute, run_prompt
    from .mechanism_file import save_summary
    from .mechanisms import summarize
    from .prune import influence_scores, prune_graph

    replacement, tokenizer = load_pretrained(args.model, args.replacement)
    d_vocab = replacement.cfg.d_vocab  # a review's --max-logits 100000 explained 312 targets,
    if args.max_logits_named and args.max_logits > d_vocab:  # as if it were a vocabulary's
        raise UserError(f"--max-logits {args.max_logits} is more than the model's {d_vocab} "
                        f"tokens: give at most {d_vocab} (the top logits stop first where "
                        "their probabilities reach --logit-probability)")  # fmt: skip
    # not n_ctx: the last position of the context never trains (``trained_positions``)
    tokens = encode_prompt(tokenizer, args.prompt, replacement.model.trained_positions)
    targets = _targets(args, tokenizer)

    t0 = time.perf_counter()
    _check_replacement_runs(replacement, tokens)
    run = run_prompt(replacement, tokens, args.mode, constants=args.constants)
    if args.vs_runner_up:
        targets = _targets(args, tokenizer, run.logits[-1])
    full = attribute(
        replacement, tokens, mode=args.mode, targets=targets, max_logits=args.max_logits,
        logit_probability=args.logit_probability, tokenizer=tokenizer, prompt=args.prompt,
        run=run,
    )  # fmt: skip
    full.model["name"] = args.model
    t_attr = time.perf_counter()
    scored = influence_scores(full)  # full-graph influence, once: scores and pruning share it
    graph = prune_graph(
        full, args.node_threshold, args.edge_threshold, args.max_nodes, scored=scored
    )
    t_prune = time.perf_counter()
    _check_kept_edges(graph)
    if args.qk:
        sides: dict = {}  # each layer's QKSides, built once for both steps
        qk_step(replacement, graph, run, args.key_mass, sides)
    t_qk = time.perf_counter()
    if args.qk:
        graph = sources_step(replacement, graph, run, full, scored, args.key_mass, sides)
        del sides
        _check_kept_edges(graph)  # the second pruning keeps a few more nodes
    t_sources = time.perf_counter()
    timings = {"attribution": t_attr - t0, "pruning": t_prune - t_attr, "qk": t_qk - t_prune,
               "qk_sources": t_sources - t_qk}  # fmt: skip
    graph.settings["scores"] = scored.scores
    dash, dash_path = _dashboards_file(args, replacement, tokenizer)
    concepts = dash.summary_concepts() if dash is not None and args.mechanisms else {}
    mechanisms = None
    if args.mechanisms:
        t_mech = time.perf_counter()
        mechanisms = summarize(replacement, full, run, pruned=graph, concepts=concepts,
                               check=args.checks, tokenizer=tokenizer)  # fmt: skip
        timings["mechanisms"] = time.perf_counter() - t_mech
        graph = summary_groups_step(replacement, graph, run, full, mechanisms, scored,
                                    args.key_mass, args.qk)  # fmt: skip
        _check_kept_edges(graph)
    dashboards, labels = dashboard_views(dash, dash_path, tokenizer, graph)

    def write_summary(directory: Path) -> list[Path]:
        if mechanisms is None:  # an earlier run's summary is removed with the set
            return []
        save_summary(mechanisms, directory / MECHANISMS_FILE)
        return [directory / MECHANISMS_FILE]

    try:
        written = write_graph_outputs(
            graph, args.out, formats, full if args.save_full else None, dashboards=dashboards,
            feature_files=args.feature_files, mechanisms=mechanisms, also=write_summary,
            by=TRACE,
        )  # fmt: skip
    except OSError as exc:  # a WriteError names the file; any other names at least --out
        if exc.filename is None:
            raise UserError(f"--out {args.out}: could not write ({exc.strerror or exc})") from None
        raise

    untrained = graph.untrained_note()
    if untrained and mechanisms is None:  # else the summary's heading says it
        print(f"note: {untrained}", file=sys.stderr)
    unlike = sparse_note(replacement, run, tokenizer)
    if unlike:
        print(f"note: {unlike}", file=sys.stderr)
    named = bool(args.target or args.target_diff or args.target_node)
    # --vs-runner-up with none named takes the top token alone (``_targets``): the two
    # settings chose nothing (a review read "the top 1 logit by probability, holding 0.826: the
    # fewest reaching --logit-probability 0.95" there)
    chosen = None if named else RUNNER_UP_ALONE if args.vs_runner_up else (
        args.max_logits, args.logit_probability)  # fmt: skip
    print(summary(full, graph, scored.scores, timings, labels, automatic=not named,
                  chosen_by=chosen))  # fmt: skip
    if mechanisms is not None:
        print(format_summary(mechanisms))
    for note in written.notes:
        print(note, file=sys.stderr)
    for path in written.paths:
        print(f"wrote {path}")
    return unrendered_status(args.format, written.unrendered)


RUNNER_UP_ALONE = "vs-runner-up"  # ``summary``'s ``chosen_by`` where --vs-runner-up chose


def chosen_words(records, max_logits: int, logit_probability: float) -> str:
    """How many top logits the targets are and which setting stopped them (``records``:
    ``Graph.logit_targets``, by probability): a review's ``--max-logits 100000`` explained 312
    targets, a 520 KB printout, with nothing saying how many or why. Empty for the one top
    logit that holds ``logit_probability`` alone (a prediction, the common case)."""
    n, held = len(records), sum(r.probability for r in records)
    if n == 0 or (n == 1 and held >= logit_probability):
        return ""
    what = f"the top {n} logit{'s' * (n != 1)} by probability, holding {held:.3g}: "
    reaching = f"the fewest reaching --logit-probability {logit_probability:g}"
    if n < max_logits:
        return f"{what}{reaching} (--max-logits {max_logits} allows more)"
    if held < logit_probability:
        return (f"{what}--max-logits {max_logits} stops there, short of --logit-probability "
                f"{logit_probability:g}")  # fmt: skip
    return f"{what}{reaching}, as many as --max-logits {max_logits} allows"


def unrendered_status(asked: str | None, unrendered: list[str]) -> int:
    """A command's exit status once its set is written: 1 where the user named the renders
    (``--format``) and some were not drawn (said once more, last), 0 otherwise (the default
    render is skipped with a note: the page draws the graph itself)."""
    if asked is None or not unrendered:
        return 0
    print(f"error: --format {asked}: {', '.join(unrendered)} not drawn (the note above says "
          "why); every other file is written", file=sys.stderr)  # fmt: skip
    return 1


def sparse_note(replacement, run, tokenizer) -> str:
    """In sparse mode (no error nodes) the graph explains the replacement's prediction, and
    the probabilities the trace prints are the replacement's (but those said to be the
    model's), which can be far from the
    model's even where both rank the same token first (a reviewer's ``Zorg, Blip, Zorg,``:
    ' Z' p 0.753 sparse, 0.200 in the model): a line giving both, and the model's own top
    token where it differs; empty in local mode, whose error nodes make it the model's."""
    from toy_models.tokenizer import token_text

    from .attribution import model_next

    model = model_next(replacement, run)
    if model is None:
        return ""
    ours = run.logits[-1].softmax(-1)
    a, b = int(ours.argmax()), int(model.argmax())
    top = (f"{token_text(tokenizer, a)!r} (p {float(ours[a]):.3g}; the model gives it "
           f"{float(model[a]):.3g})")  # fmt: skip
    if a == b:
        said = f"the replacement and the model both predict {top}"
    else:
        said = (f"the replacement predicts {top} where the model predicts "
                f"{token_text(tokenizer, b)!r} (p {float(model[b]):.3g})")  # fmt: skip
    return (
        f"in sparse mode {said}: the graph explains the replacement's prediction and the "
        "probabilities printed are the replacement's, except those said to be the model's "
        "(--mode local, with error nodes, explains the model's)"
    )


def _dashboards_file(args, replacement, tokenizer) -> tuple:
    """The dashboards file (``circuits.dashboards``) and its path, built on first use; (None,
    None) with ``--no-dashboards``. A refused file at the default path (another model, other
    rows, an older format) is built again; a refused ``--dashboards-file`` is an error."""
    if not args.dashboards:
        return None, None
    from .dashboard_pass import build
    from .dashboards import NotDashboards, default_path

    path = args.dashboards_file or default_path(
        args.model, args.mode, replacement, tokenizer, args.dashboard_rows
    )
    settings = {"rows": args.dashboard_rows, "mode": args.mode, "progress": None}
    # nothing to read, nor to remove and build again; a link that leads nowhere (dangling, in
    # a loop) was built for a minute and then refused as a link (a review): lexists
    if os.path.lexists(path) and not path.is_file():
        raise UserError(f"dashboards file {path}: exists and is not a file (a directory, a "
                        "FIFO or a link that leads nowhere); move it away (or pass "
                        "--dashboards-file or --no-dashboards)")  # fmt: skip
    # The default file, to be built: its folder must hold files, known before the pass
    # (a --dashboards-file's folder is checked with the arguments).
    if args.dashboards_file is None and not path.exists():
        check_writable(path.parent, "dashboards folder")
    try:
        dash = _given_file(args, path, replacement, tokenizer)
        if dash is None:
            dash = _built(path, build(replacement, tokenizer, path, **settings))
    except ValueError as exc:
        if args.dashboards_file is not None:
            raise UserError(_refused(exc)) from None
        # No dashboards file at all (``NotDashboards``: not a safetensors file with their
        # header) is someone's own file, never removed (a fuzz pass's notes were deleted and
        # an 18 MB build put in their place)
        if isinstance(exc, NotDashboards):
            raise UserError(f"{exc}: it is at the default dashboards path of this model and is "
                            "left as it is; move it away, or pass --dashboards-file or "
                            "--no-dashboards") from None  # fmt: skip
        # The default path is bound to this replacement set and these rows (``default_path``):
        # a dashboards file refused there is damaged or of an older format, not another set's
        # work.
        print(f"{exc}; building it again", file=sys.stderr)
        path.unlink(missing_ok=True)  # another trace may have removed it first
        dash = _built(path, build(replacement, tokenizer, path, **settings))
    return dash, path


def _built(path: Path, dash):
    """``dash``, which ``build`` made, resumed or found finished at ``path``, named in one line
    on stderr (a reviewer found an 18 MB file written with nothing saying where)."""
    print(f"unit dashboards: {path} ({dash.meta['rows_done']} rows)", file=sys.stderr)
    return dash


def dashboard_views(dash, path, tokenizer, graph) -> tuple[dict | None, dict]:
    """The dashboards of the graph's heads and features (viewer schema) from the dashboards
    file ``dash`` (at ``path``) and their concept labels by unit id; (None, {}) without one.
    A global graph's page uses them too (``circuits.global_graph``)."""
    if dash is None:
        return None, {}
    from .nodes import block_of

    units = [(kind, block_of(stage), index) for kind, stage, index in graph.units()]
    try:
        views = dash.for_viewer(tokenizer, units)
    except ValueError as exc:  # what the file's checks let through and cannot be shown
        raise UserError(_refused(ValueError(f"dashboards file {path}: {exc}"))) from None
    labels = {u: d["concept"] for u, d in views.items() if "concept" in d}
    return views, labels


def _refused(exc: ValueError) -> str:
    """Why the ``--dashboards-file`` cannot be used, and the way out."""
    from .dashboard_pass import OtherSettings
    from .dashboards import NotDashboards

    if isinstance(exc, NotDashboards):  # no one's dashboards: never to be removed on our word
        return f"{exc}; pass a dashboards file as --dashboards-file, or --no-dashboards"
    if isinstance(exc, OtherSettings) and "mode" in exc.differing:
        mode = exc.found["mode"]
        return (f"--dashboards-file {exc.path}: built in {mode} mode, not {exc.wanted['mode']}; "
                f"trace with --mode {mode}, or pass another file or --no-dashboards")  # fmt: skip
    if isinstance(exc, OtherSettings) and exc.differing == ["rows"]:
        rows = exc.found["rows"]
        return (f"--dashboards-file {exc.path}: an unfinished build of {rows} rows; pass "
                f"--dashboard-rows {rows} to finish it, or remove it")  # fmt: skip
    return (f"{exc}: remove it to build it there again, or pass another --dashboards-file or "
            "--no-dashboards")  # fmt: skip


def _given_file(args, path: Path, replacement, tokenizer):
    """The finished dashboards file the user named with ``--dashboards-file``, for this
    replacement set and mode, whatever rows it was built with (``--dashboard-rows`` is what a
    build reads); None where it is to be built, resumed, or refused by ``build``."""
    from .dashboards import read_file

    if args.dashboards_file is None or not path.is_file():
        return None
    dash = read_file(path, replacement, tokenizer)
    return dash if dash.finished and dash.meta["mode"] == args.mode else None


def _check_replacement_runs(replacement, tokens) -> None:
    """Refuse a model or a replacement set whose weights load (finite) but overflow in use on
    this prompt: the original model's logits, or the fully sparsified ones, are not finite. In
    local mode the error nodes would absorb the overflow and every edge of the graph would be
    enormous and meaningless; in sparse mode the note on what the model predicts read "p nan"
    (a fuzz pass: the model's MLP weights scaled by 1e30, exit 0)."""
    import torch

    with torch.no_grad():
        tokens = torch.as_tensor(tokens)[None]
        model = replacement.model(tokens)
        sparse = replacement(tokens, mode="sparse")
    if not torch.isfinite(model).all():
        raise UserError("the model's weights overflow on this prompt (its logits are not "
                        "finite); nothing written")  # fmt: skip
    if not torch.isfinite(sparse).all():
        raise UserError("the replacement set's weights overflow on this prompt (its fully "
                        "sparsified logits are not finite); nothing written")  # fmt: skip


def summary(
    full, graph, scores, timings, labels=None, automatic: bool = False, chosen_by=None
) -> str:
    """A few lines: what the model predicts, how big the graph is, how good, how fast.
    ``chosen_by``: (--max-logits, --logit-probability) where they chose the targets, which a
    line under them says how (``chosen_words``); ``RUNNER_UP_ALONE`` where --vs-runner-up
    with no target named took the top token alone, which the line says instead.
    ``automatic``: the targets are the top logits (none named), so the first is the model's
    most likely token: under ``UNSURE`` the lines say the model is unsure (a reviewer read ten
    targets of p 0.02-0.04, each explained at length, with nothing saying none was a
    prediction); in sparse mode the replacement is, whose probabilities the targets hold (the
    sparse note gives the model's own: a reviewer read "the model is unsure ... p 0.082" where
    the model gave its top token 0.276)."""
    from reports.labels import node_label
    from reports.mechanisms import fitted

    from .interventions import target_nodes
    from .nodes import Kind

    targets = target_nodes(graph)  # the logits, then a head or feature traced from
    named = [node_label(graph, i) + ("" if graph.kind[i] == Kind.LOGIT else
                                     f" (pre-activation {float(graph.value[i]):.4g})")
             for i in targets]  # fmt: skip
    # several: one a line (ten on one line ran to 230 characters: a review)
    one = len(named) == 1
    lines = [f"targets: {named[0]}"] if one else ["targets:", *(f"  {x}" for x in named)]
    records = graph.logit_targets
    if chosen_by == RUNNER_UP_ALONE:
        lines.append("  (--vs-runner-up with no target named: the most likely token alone, "
                     "less the most likely other)")  # fmt: skip
    elif chosen_by is not None and (words := chosen_words(records, *chosen_by)):
        lines.append(f"  ({words})")
    top = max((r.probability for r in records), default=None)
    if automatic and top is not None and top < UNSURE:
        held = sum(r.probability for r in records)
        both = f" and the {len(records)} targets hold {held:.2g}" if len(records) > 1 else ""
        who = "the replacement" if graph.mode == "sparse" else "the model"
        lines.append(f"  ({who} is unsure here: its most likely next token has p {top:.2g}"
                     f"{both}; the graph explains a weak preference, not a prediction {who} "
                     "makes)")  # fmt: skip
    closure = full.settings["closure_error"]
    lines += [
        f"graph: {full.n_nodes} nodes, {full.n_edges} edges -> pruned to {graph.n_nodes} nodes "
        f"({_count_kinds(graph)}), {graph.n_edges} edges; {len(graph.qk)} QK attributions",
        # the closure error a line of its own (on one line: 173 characters, a review)
        f"scores: replacement {scores['replacement']:.3f}, completeness "
        f"{scores['completeness']:.3f}",
        f"  closure error (a target's incoming edges + bias against its value) max "
        f"{closure['max_abs']:.2e}, relative to the target's |value| max "
        f"{closure['max_rel_value']:.2e}",
        "seconds: " + json.dumps({k: round(v, 3) for k, v in timings.items()}),
    ]
    return "\n".join(x for line in lines + _influential(graph, labels) for x in fitted(line))


def _influential(graph, labels) -> list[str]:
    """The most influential heads and features, a line each (where long, its concept on the
    line under it: ``reports.mechanisms.fitted``)."""
    from reports.labels import node_label

    # A target has no influence on itself (its own influence is 0 by definition): leave it out.
    inner = (graph.is_kind("lorsa", "transcoder") & ~graph.is_target).nonzero().squeeze(1)
    top = inner[graph.influence[inner].argsort(descending=True, stable=True)[:5]].tolist()
    if not top:
        return ["most influential: none (the pruned graph keeps no head or feature besides the "
                "targets)"]  # fmt: skip
    return [
        "most influential heads and features (influence on the targets, either sign: the "
        "mechanism summary's groups give signed flows):"
    ] + [
        f"  {graph.ids[i]:>14}  {float(graph.influence[i]):.3f}  {node_label(graph, i)}"
        + _concept(graph, i, labels or {})
        for i in top
    ]


def _concept(graph, i: int, labels: dict) -> str:
    from reports.labels import concept_text

    from .nodes import unit_id

    concept = labels.get(unit_id(int(graph.kind[i]), int(graph.stage[i]), int(graph.index[i])))
    return "" if concept is None else f"  [concept: {concept_text(concept)}]"


def _count_kinds(graph) -> str:
    counts = Counter(graph.kinds)
    return ", ".join(f"{counts[k]} {k}" for k in sorted(counts))


if __name__ == "__main__":
    run_cli(main)
