"""What one drawing of a graph shows and where: selection and layout (no DOT here).

A pruned graph still has far too much for one picture (thousands of edges, most nodes at the
last position), so a drawing shows a budget of it (``select``): the most influential heads,
features and error nodes, every target (the logits, or a head or feature the graph was
traced from), the embeddings those read from, and the strongest edges among them. The
``Selection`` is passed on to whoever needs to know what was drawn (the DOT writer, the HTML
report).

Layout (``layout``), bottom to top: the embeddings (which double as the token axis), then for
each block its Lorsa row and its transcoder row, and the logits on top; columns are only the
positions something is drawn at. A (stage, position) cell with many nodes stacks them into
several rows, as many as keep the picture about as wide as tall, ordered by where their
neighbours are. Positions are computed here and pinned, so Graphviz only routes edges.
The page's viewer lays out its own drawing by these rules (viewer.js, ``layout``), in its own
measures: pixels and the browser's font, where this layout has inches and Helvetica's widths.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from circuits.graph import QK_BIAS, Graph, checked_count, checked_graph
from circuits.nodes import Kind
from circuits.prune import influence, reach

from .labels import at_position, prompt_token, short_label_lines

FONT_SIZE = 10

# What a default drawing shows: the most influential heads, features and errors (logits
# always; embeddings where a drawn edge leaves them) and a few edges per node, strongest first.
MAX_NODES = 60
EDGES_PER_NODE = 2
# A QK edge read from a record's unit pairs (no sources through the graph: a block-0 head, a
# global graph's QK group) is drawn when it carries at least this share of the head's score:
# a global graph's top token pair holds 0.2-2% of a head's lift, and drawing it brought in
# tokens of influence 0 as if they made the attention (a review; qk_edges).
QK_MIN_SHARE = 0.05
INNER_KINDS = ("lorsa", "transcoder", "error", "bias")  # what the node budget ranks
# An influential token's one strongest edge drawn under the threshold (``token_edges``): its
# tooltip's words, in the SVG (reports.graphviz) and on the page (its data's view)
TOKEN_EDGE_NOTE = (
    " (under the threshold: the token's strongest edge, drawn as it outranks a drawn head or "
    "feature)"
)

# Layout, in inches: the stage-name column and the caption, gaps between nodes of one cell,
# between position columns, between the rows of one stage and between stages; the
# width/height the wrapping of big cells aims for; how many ordering sweeps run.
LABEL_COLUMN_IN, CAPTION_IN = 1.1, 0.6
NODE_GAP_IN, COLUMN_GAP_IN, ROW_GAP_IN, STAGE_GAP_IN = 0.12, 0.3, 0.26, 0.45
TARGET_ASPECT = 1.2
SWEEPS = 4


# --------------------------------------------------------------------------------- selections
@dataclass(frozen=True)
class Edge:
    """One direct effect ``weight`` of node ``source`` on node ``target`` (node indices)."""

    source: int
    target: int
    weight: float


@dataclass(frozen=True)
class QKEdge:
    """What a Lorsa head's attention score comes from on its query (``side == "q"``) or key
    (``"k"``) side. From a record's ``sources`` (``circuits.qk.qk_sources``): the largest
    source group through the graph other than a token, drawn from its strongest member,
    ``value`` the group's total and ``members`` its size (the previous-token heads at an
    induction key: each carries a little, the group most), and the side's own token too
    where it leads the side. Without sources: the strongest node of the record's
    pairs, ``value`` its marginal (its terms with every node of the other side, summed), or
    the pair's term where the record lists none (``pair_term``), ``members`` 1."""

    source: int
    target: int
    side: str
    value: float
    members: int = 1
    pair_term: bool = False


@dataclass(frozen=True)
class Selection:
    """What one drawing shows: ``nodes`` (indices, stage order), ``edges`` (strongest first)
    and ``qk`` edges, out of the graph's ``n_nodes`` nodes and ``n_edges`` nonzero edges."""

    nodes: list[int]
    edges: list[Edge]
    qk: list[QKEdge]
    n_nodes: int
    n_edges: int
    ranked_by: str  # what chose the heads, features and errors: ``node_scores``' name
    trimmed: bool  # whether the budget left out any head, feature, error or edge
    behind: tuple[int, ...] = ()  # nodes drawn beyond the budget as drawn heads' QK sources
    # edges drawn below the threshold: each influential token's strongest edge (a prompt's;
    # ``token_edges``), also in ``edges``
    token_edges: tuple[Edge, ...] = ()


def check_selection(graph: Graph, selection: Selection) -> None:
    """Refuse, in one line, a ``selection`` made on another graph: its node indices would be
    drawn onto this graph's nodes (the counts it records tell most graphs apart)."""
    n_edges = int(np.count_nonzero(graph.edges.data))  # as ``select`` counts them
    if (selection.n_nodes, selection.n_edges) != (graph.n_nodes, n_edges):
        raise ValueError(f"the selection is of another graph ({selection.n_nodes} nodes, "
                         f"{selection.n_edges} edges; this one has {graph.n_nodes} and "
                         f"{n_edges}): make it with select(graph)")  # fmt: skip


def strongest_edges(graph: Graph, max_edges: int | None = None) -> list[Edge]:
    """The nonzero edges of ``graph``, strongest ``|weight|`` first, at most ``max_edges``."""
    if max_edges is not None and max_edges < 0:
        raise ValueError(f"max_edges must be >= 0, got {max_edges}")
    coo = graph.edges.tocoo()
    keep = coo.data != 0
    rows, cols, data = coo.row[keep], coo.col[keep], coo.data[keep]
    order = np.lexsort((cols, rows, -np.abs(data)))  # ties: stable by (target, source)
    if max_edges is not None:
        order = order[:max_edges]
    return [Edge(int(cols[k]), int(rows[k]), float(data[k])) for k in order]


def _top_qk_node(a, side: str, id_to_index: dict[str, int]) -> tuple[int, float, bool] | None:
    """The present node with the largest |pair term| on ``side`` of attribution ``a``, valued
    by its own total over every node of the other side (its marginal; a review found a pair's
    query and key edges both showing the pair's one term), or by that pair's term where the
    record lists no marginal of the node (the third field then True).

    Pairs come first because they are what the score is made of, and only pairs raising it:
    a pair lowering the score is no reason the head attends (a reviewer found a global graph's
    head whose strongest pair with a drawn node lowered its score, drawn as its q/k link); the
    marginals are a fallback for when every listed pair has that side on a pruned node or the
    bias.
    """
    marginals = a.query_marginals if side == "query" else a.key_marginals
    totals = {node: float(value) for node, value in marginals if node is not None}
    pairs = sorted((p for p in a.pairs if p.value > 0), key=lambda p: -p.value)
    for p in pairs:
        node = p.query if side == "query" else p.key
        if node is not None and node in id_to_index:
            if node in totals:
                return id_to_index[node], totals[node], False
            return id_to_index[node], float(p.value), True
    for node, value in sorted(marginals, key=lambda m: -abs(m[1])):
        if node is not None and node in id_to_index:
            return id_to_index[node], float(value), False
    return None


def _top_qk_sources(a, side: str, id_to_index: dict[str, int]) -> list[tuple[int, float, int]]:
    """The largest of ``a.sources`` on ``side`` that is not a token, with a member in
    ``id_to_index`` (its strongest such member, the group's total and its size), and before it
    the side's own token where that leads the side (an induction head's current token at its
    query): the heads and features behind a head's attention are drawn whatever the token
    brings."""
    mine = [x for x in a.sources if x.side == side]

    def drawn(x) -> tuple[int, float, int] | None:
        member = next((id_to_index[m] for m in x.members if m in id_to_index), None)
        return None if member is None else (member, float(x.value), len(x.members))

    token = drawn(mine[0]) if mine and mine[0].kind == "embedding" else None
    other = next((d for x in mine if x.kind != "embedding" and (d := drawn(x))), None)
    return [top for top in (token, other) if top is not None]


def qk_edges(
    graph: Graph, nodes: Iterable[int] | None = None, sources: Iterable[int] | None = None
) -> list[QKEdge]:
    """For every Lorsa node with a QK attribution at the key it reads (``Graph.qk_for``'s
    first), one QK edge per side: from the record's largest source group (``sources``, which
    the trace computes) with a member present, else from its top query-side and key-side
    nodes by pair term, where that node's value is at least ``QK_MIN_SHARE`` of the score.

    With ``nodes`` only those nodes count as present: heads outside it get no QK edges, and
    a side whose top node is outside it falls back to its strongest node inside it. A source
    group may be drawn from any node of ``sources`` (default: ``nodes``): ``select`` passes
    every node of the graph, so that the heads behind a drawn head's attention are drawn with
    it, however small each one's own influence on the targets.
    """
    present = set(range(graph.n_nodes)) if nodes is None else set(nodes)
    reach = present if sources is None else set(sources)
    id_to_index = {name: i for name, i in graph.id_to_index.items() if i in present}
    source_index = {name: i for name, i in graph.id_to_index.items() if i in reach}
    edges: dict[tuple[int, int, str], QKEdge] = {}
    for target in (graph.kind == Kind.LORSA).nonzero().squeeze(1).tolist():
        if target not in present:
            continue
        for a in graph.qk_for(target)[:1]:
            if graph.positional and a.key != graph.read_key(target):
                continue  # no record at the key it reads (a hand-made list); a global
                # graph's heads read no key: their record is their QK group's
            for side in ("query", "key"):
                if a.sources:
                    tops = _top_qk_sources(a, side, source_index)
                else:
                    top = _top_qk_node(a, side, id_to_index)
                    big = top is not None and abs(top[1]) >= QK_MIN_SHARE * abs(a.score)
                    tops = [(top[0], top[1], 1, top[2])] if big else []
                for top in tops:
                    if top[0] == target:
                        continue
                    key = (top[0], target, side[0])
                    if key not in edges or abs(top[1]) > abs(edges[key].value):
                        edges[key] = QKEdge(top[0], target, side[0], *top[1:])
    return list(edges.values())


INFLUENCE, ACTIVATION = "influence", "|activation|"
REACH = "reach from the start"  # a downstream global graph's (never pruned: no influence)
QK_SHARE = "share of the QK pairs' |weight|"  # a QK circuit's (its pairs: weights alone)


def node_scores(graph: Graph) -> tuple[list[float], str]:
    """What ranks nodes for the drawing and the node table, and its name: in a QK circuit's
    graph (``Graph.qk_from_weights``), each unit's share of its pairs' |weight|
    (``qk_shares``; it ranked its units by their mean activation when active, which says
    nothing of the QK circuit); else influence when known (a pruned graph's, an upstream
    global graph's, pruned or not: ``circuits.global_weights.global_graph``); in a downstream
    global graph (``Graph.direction``, its ``global_record``'s), which is never pruned, each
    unit's reach from the start (``circuits.prune.reach``: the share of the start's |effect|
    that flows through it; a reviewer found such a page ranking units by their mean
    activation when active, which says nothing of the start and compares heads with features
    in different units); else |activation|."""
    if graph.qk_from_weights:
        values, name = qk_shares(graph).tolist(), QK_SHARE
    elif graph.influence is not None:
        values, name = graph.influence.tolist(), INFLUENCE
    elif graph.direction == "downstream":  # its ``global_record``'s
        weights = graph.target_weight.double().numpy()
        values, name = reach(graph.edges, graph.stage.numpy(), weights).tolist(), REACH
    else:
        values, name = graph.activation.abs().tolist(), ACTIVATION
    return [-math.inf if math.isnan(v) else v for v in values], name


def qk_shares(graph: Graph) -> np.ndarray:
    """A QK circuit's ranking (``circuits.global_weights.qk_circuit``: its QK record's pairs
    are query-unit x key-unit weights of its heads' QK group, its edges its pair units'
    strongest writers' mean inputs): each unit's share of the pairs' total |weight| that the
    pairs it takes part in hold, on either side (a pair of a unit with itself counted once),
    plus the share it writes: each unit's share split among the writers the graph holds in
    proportion to their |mean input| into it (``circuits.prune.influence`` with the shares as
    the weights), so a writer's is the share that flows through it. The heads the circuit is
    of (its targets) hold it whole: 1. A share is at most 1 for a pair unit, which may write
    another too."""
    at = graph.id_to_index
    share = np.zeros(graph.n_nodes)
    total = sum(abs(p.value) for a in graph.qk for p in a.pairs)
    for p in (p for a in graph.qk for p in a.pairs) if total > 0 else ():
        for node in {p.query, p.key} - {None, QK_BIAS}:  # a unit with itself: once
            if node in at:
                share[at[node]] += abs(p.value) / total
    share += influence(graph.edges, graph.stage.numpy(), share)
    share[graph.is_target.numpy()] = 1.0
    return share


def select(
    graph: Graph,
    *,
    max_nodes: int | None = MAX_NODES,
    max_edges: int | str | None = "auto",
) -> Selection:
    """The nodes and edges one readable drawing of ``graph`` shows.

    Heads, features and error nodes: the ``max_nodes`` highest by influence (|activation|
    when the graph has no influence), all of them when ``max_nodes`` is None or not binding,
    and the QK source each drawn head's record names on each side (``qk_edges``).
    Logits: always all. Embeddings: only those a drawn edge (solid or QK) leaves. Edges: the
    strongest nonzero ones among those nodes, at most ``max_edges``; ``"auto"`` allows
    ``EDGES_PER_NODE`` per node that can be drawn (and every edge tied with the weakest of
    them, as the page's threshold draws them), and in a global graph reaches further down
    for the strongest edge of every token at least as influential as the median drawn head,
    feature or error (``_influential_tokens``: a review found ' Tuesday', influence 0.15, left
    out of ' Thursday''s graph) and in a prompt's adds, under the threshold, the strongest edge
    of every token at least as influential as the least drawn one (``token_edges``), None every
    one. QK edges are not counted.
    """
    checked_graph(graph)
    if max_nodes is not None:
        max_nodes = checked_count(max_nodes, "max_nodes", least=0)
    if isinstance(max_edges, str) and max_edges != "auto":
        raise ValueError(f"max_edges must be an int, None or 'auto', got {max_edges!r}")
    if max_edges is not None and max_edges != "auto":
        max_edges = checked_count(max_edges, "max_edges", least=0)
    kinds = graph.kinds
    scores, ranked_by = node_scores(graph)
    inner = [i for i, k in enumerate(kinds) if k in INNER_KINDS]
    trimmed = max_nodes is not None and len(inner) > max_nodes
    if trimmed:
        inner = sorted(inner, key=lambda i: (-scores[i], i))[:max_nodes]
    # Every target is drawn: the logits, and a head or feature the graph was traced from.
    logits = graph.is_target.nonzero().squeeze(1).tolist()
    embeddings = [i for i, k in enumerate(kinds) if k == "embedding"]
    candidates = set(inner) | set(logits) | set(embeddings)
    # The QK sources of the drawn heads are drawn too, beyond the budget: the heads behind an
    # attention pattern (previous-token heads at an induction key) have little influence of
    # their own on the targets.
    qk = qk_edges(graph, candidates, sources=range(graph.n_nodes))
    behind = {e.source for e in qk if kinds[e.source] in INNER_KINDS} - candidates
    candidates |= behind
    # the heads drawn as sources get their own QK edges, from what is drawn already
    qk += [e for e in qk_edges(graph, candidates) if e.target in behind]

    every = strongest_edges(graph)
    among = [e for e in every if e.source in candidates and e.target in candidates]
    extra: list[Edge] = []
    if max_edges == "auto":
        sources = {e.source for e in among if kinds[e.source] == "embedding"}
        max_edges = EDGES_PER_NODE * (len(inner) + len(behind) + len(logits) + len(sources))
        floor = min((abs(e.weight) for e in _influential_tokens(graph, among, inner, scores)),
                    default=math.inf)  # fmt: skip
        max_edges = max(max_edges, sum(abs(e.weight) >= floor for e in among))
        if 0 < max_edges < len(among):  # every edge tied with the weakest kept: the page's
            tied = abs(among[max_edges - 1].weight)  # threshold (|w| >= edgeMin) keeps them all
            max_edges = sum(abs(e.weight) >= tied for e in among)
        extra = token_edges(graph, among, max_edges, inner, scores)
    # strongest first, as ``among``: the token edges all come after the first ``max_edges``
    edges = among if max_edges is None else among[:max_edges] + extra
    trimmed = trimmed or len(edges) < len(every)
    connected = {e.source for e in edges} | {e.source for e in qk}
    nodes = sorted({*inner, *behind, *logits, *(i for i in embeddings if i in connected)})
    return Selection(nodes, edges, qk, graph.n_nodes, len(every), ranked_by, trimmed,
                     tuple(sorted(behind)), tuple(extra))  # fmt: skip


def token_edges(
    graph: Graph, among: list[Edge], n_drawn: int, inner: list[int], scores: list[float]
) -> list[Edge]:
    """In a prompt's graph, the strongest edge of ``among`` (strongest first) leaving each
    token at least as influential as the least influential of the ``inner`` nodes drawn,
    where none of the first ``n_drawn`` edges (those over the threshold) leaves it: drawn
    below the threshold, one edge per token, so that no token is hidden behind a head or
    feature it outranks (a review found a token of influence 0.022 left out beside a drawn
    head of 0.0099). Lowering the threshold to reach them instead took a 29-token drawing
    from 174 to 694 edges. None without influence, and none in a global graph, whose
    threshold reaches down to its influential tokens (``_influential_tokens``). The page
    draws the same (viewer.js, ``tokenEdges``)."""
    if not graph.positional or graph.influence is None or not inner:
        return []
    drawn = {e.source for e in among[:n_drawn]}
    return _strongest_token_edges(graph, among[n_drawn:], min(scores[i] for i in inner), scores,
                                  skip=drawn)  # fmt: skip


def _influential_tokens(
    graph: Graph, among: list[Edge], inner: list[int], scores: list[float]
) -> list[Edge]:
    """The strongest edge of ``among`` (strongest first) leaving each embedding whose
    influence is at least the median of the ``inner`` nodes drawn, in a global graph (none
    without influence). A global graph's edge is a mean over its target's occurrences, so the
    edges of different targets are in different units, while influence is normalised per
    target; a prompt's edges are one pass's attributions, where a drawing of 60 heads could
    fall from 174 to 694 edges for one token's weak edge (a trial on a 29-token prompt)."""
    if graph.positional or graph.influence is None or not inner:
        return []
    return _strongest_token_edges(graph, among, float(np.median([scores[i] for i in inner])),
                                  scores)  # fmt: skip


def _strongest_token_edges(
    graph: Graph,
    edges: list[Edge],
    bar: float,
    scores: list[float],
    skip: frozenset[int] | set[int] = frozenset(),
) -> list[Edge]:
    """The first edge of ``edges`` (strongest first) leaving each embedding not in ``skip``
    whose influence is positive and at least ``bar``, in that order."""
    kinds = graph.kinds
    first: dict[int, Edge] = {}
    for e in edges:
        source = e.source
        if kinds[source] == "embedding" and source not in skip and source not in first \
                and scores[source] > 0 and scores[source] >= bar:  # fmt: skip
            first[source] = e
    return list(first.values())


# ------------------------------------------------------------------------------------ layout
# Helvetica's advance widths (1/1000 em) of printable ASCII, from its AFM; other characters
# count as a full em. Fontconfig usually resolves Helvetica to the metric-compatible Liberation
# Sans, but some renderers fall back to DejaVu Sans, up to 14% wider: ``TEXT_SLACK`` covers it.
_HELVETICA = (
    "278 278 355 556 556 889 667 191 333 333 389 584 278 333 278 278 556 556 556 556 556 556 556 "
    "556 556 556 278 278 584 584 584 556 1015 667 667 722 722 667 611 778 722 278 500 667 556 "
    "833 722 778 667 778 722 667 611 722 667 944 667 667 611 278 278 278 469 556 333 556 556 500 "
    "556 556 278 556 556 222 222 500 222 833 556 556 556 556 333 500 278 556 500 722 500 500 500 "
    "334 260 334 584"
)
TEXT_SLACK = 1.14
_CHAR_WIDTH = dict(zip(map(chr, range(32, 127)), map(int, _HELVETICA.split()), strict=True))


def text_width(text: str, fontsize: float = FONT_SIZE) -> float:
    """The drawn width of one line of ``text`` in inches (Helvetica metrics)."""
    return sum(_CHAR_WIDTH.get(ch, 1000) for ch in text) * fontsize / 72000


def node_size(kind: str, lines: list[str]) -> tuple[float, float]:
    """Width and height (inches) of the node shape that holds the text ``lines``, by kind."""
    text_w = max(text_width(line) for line in lines) * TEXT_SLACK
    text_h = len(lines) * FONT_SIZE * 1.2 / 72
    if kind == "axis":  # bare text
        w, h = text_w + 0.04, text_h
    elif kind == "error":  # a diamond around it
        w, h = text_w * 2 + 0.1, text_h * 2 + 0.04
    elif kind == "logit":  # a house: the roof needs height
        w, h = text_w + 0.2, text_h * 1.45 + 0.1
    else:
        w, h = text_w + 0.16, text_h + 0.1
    return round(max(w, 0.45), 2), round(max(h, 0.3), 2)


@dataclass
class Layout:
    """Where the drawing puts things (inches, y up): each node's centre, size and short label,
    the centre x of each position's column, and each stage's vertical band and row centres."""

    xy: dict[int, tuple[float, float]]
    size: dict[int, tuple[float, float]]
    labels: dict[int, str]
    columns: dict[int, float]
    bands: dict[int, tuple[float, float]]  # stage -> (bottom, top)
    row_y: dict[tuple[int, int], float]  # (stage, row within it) -> centre y
    wrap: int


def _cells(graph: Graph, nodes: list[int], scores: list[float]) -> dict[int, dict[int, list]]:
    """stage -> position -> the drawn nodes there, most important first; the embeddings
    stage is always there when anything is drawn, since it is also the token axis."""
    stages, positions = graph.stage.tolist(), graph.pos.tolist()
    cells: dict[int, dict[int, list[int]]] = {0: {}} if nodes else {}
    for i in sorted(nodes, key=lambda i: (stages[i], positions[i], -scores[i], i)):
        cells.setdefault(stages[i], {}).setdefault(positions[i], []).append(i)
    return cells


def _n_rows(by_pos: dict[int, list[int]], wrap: int) -> int:
    """How many rows a stage takes: its fullest cell's, wrapped."""
    return max((-(-len(m) // wrap) for m in by_pos.values()), default=1)


def _across(cells: dict[int, dict[int, list[int]]], p: int, wrap: int) -> int:
    """How many node slots wide position ``p``'s column is: its widest cell's, wrapped."""
    return max([1, *(min(len(by_pos.get(p, ())), wrap) for by_pos in cells.values())])


def _extent(
    cells: dict[int, dict[int, list[int]]],
    slot: dict[int, float],
    row_h: dict[int, float],
    wrap: int,
) -> tuple[float, float]:
    """The drawing's width and height (inches) when cells wrap after ``wrap`` nodes."""
    width = LABEL_COLUMN_IN + sum(_across(cells, p, wrap) * slot[p] + COLUMN_GAP_IN for p in slot)
    height = CAPTION_IN + sum(
        _n_rows(by_pos, wrap) * (row_h[s] + ROW_GAP_IN) - ROW_GAP_IN + STAGE_GAP_IN
        for s, by_pos in cells.items()
    )
    return width, height


def _wrap_width(
    cells: dict[int, dict[int, list[int]]], slot: dict[int, float], row_h: dict[int, float]
) -> int:
    """How many nodes of one (stage, position) cell sit side by side before the cell wraps
    into another row: the width whose drawing comes closest to ``TARGET_ASPECT``."""
    biggest = max((len(m) for by_pos in cells.values() for m in by_pos.values()), default=1)
    best, best_cost = biggest, math.inf
    for wrap in range(biggest, 0, -1):  # ties go to the wider: fewer rows
        width, height = _extent(cells, slot, row_h, wrap)
        cost = abs(math.log(width / height / TARGET_ASPECT))
        if cost < best_cost - 1e-9:
            best, best_cost = wrap, cost
    return best


def placeholder(graph: Graph, pos: int) -> str:
    """The token axis where no embedding is drawn: ``'tok'@pos`` in grey, no box."""
    return at_position(prompt_token(graph, pos), pos)


def layout(graph: Graph, selection: Selection) -> Layout:
    """Rows are stages bottom to top, columns the positions something is drawn at; a cell
    (stage, position) with more than ``wrap`` nodes stacks into several rows, ``wrap`` chosen
    so that the drawing is about ``TARGET_ASPECT`` times as wide as tall. Within a cell, nodes
    are ordered by the mean x of their drawn neighbours (``SWEEPS`` sweeps, alternately up and
    down) and dealt round-robin over its rows, which keeps edges short and few crossings."""
    scores, _ = node_scores(graph)
    kinds = graph.kinds
    lines = {i: short_label_lines(graph, i) for i in selection.nodes}
    labels = {i: "\n".join(lines[i]) for i in selection.nodes}
    size = {i: node_size(kinds[i], lines[i]) for i in selection.nodes}
    cells = _cells(graph, selection.nodes, scores)
    used = sorted({p for by_pos in cells.values() for p in by_pos})
    for p in used:  # token placeholders stand where no embedding is drawn
        if p not in cells[0]:
            size[-1 - p] = node_size("axis", [placeholder(graph, p)])
    at = {p: [-1 - p, *(i for by_pos in cells.values() for i in by_pos.get(p, ()))] for p in used}
    slot = {p: NODE_GAP_IN + max(size[i][0] for i in at[p] if i in size) for p in used}
    row_h = {
        s: max((size[i][1] for m in by_pos.values() for i in m), default=0.3)
        for s, by_pos in cells.items()
    }
    wrap = _wrap_width(cells, slot, row_h)

    columns, x = {}, LABEL_COLUMN_IN
    for p in used:
        across = _across(cells, p, wrap)
        columns[p] = x + across * slot[p] / 2
        x += across * slot[p] + COLUMN_GAP_IN
    bands: dict[int, tuple[float, float]] = {}
    row_y: dict[tuple[int, int], float] = {}
    n_rows = {s: _n_rows(by_pos, wrap) for s, by_pos in cells.items()}
    top = 0.0
    for s in cells:
        bottom = top
        top += STAGE_GAP_IN / 2
        for r in range(n_rows[s]):
            row_y[s, r] = top + row_h[s] / 2
            top += row_h[s] + (ROW_GAP_IN if r + 1 < n_rows[s] else 0)
        top += STAGE_GAP_IN / 2
        bands[s] = (bottom, top)

    xy: dict[int, tuple[float, float]] = {}

    def place(s: int, p: int, members: list[int]) -> None:
        # Deal the ordered members round-robin over the cell's rows, so every row keeps the
        # left-to-right order and spans about the same width.
        rows_here = n_rows[s]
        counts = [len(members[r::rows_here]) for r in range(rows_here)]
        for k, i in enumerate(members):
            r, slot_k = k % rows_here, k // rows_here
            xy[i] = (columns[p] + (slot_k - (counts[r] - 1) / 2) * slot[p], row_y[s, r])

    for s, by_pos in cells.items():
        for p, members in by_pos.items():
            place(s, p, members)
    below: dict[int, list[int]] = {i: [] for i in selection.nodes}
    above: dict[int, list[int]] = {i: [] for i in selection.nodes}
    for e in [*selection.edges, *selection.qk]:
        above[e.source].append(e.target)
        below[e.target].append(e.source)
    for sweep in range(SWEEPS):
        up = sweep % 2 == 0
        neighbours = below if up else above
        for s in sorted(cells, reverse=not up):
            for p, members in cells[s].items():
                key = {i: _mean_x(xy, neighbours[i], xy[i][0]) for i in members}
                members.sort(key=lambda i: key[i])
                place(s, p, members)
    for p in used:
        if p not in cells[0]:
            xy[-1 - p] = (columns[p], row_y[0, 0])
    return Layout(xy, size, labels, columns, bands, row_y, wrap)


def _mean_x(xy: dict[int, tuple[float, float]], nodes: list[int], default: float) -> float:
    return sum(xy[j][0] for j in nodes) / len(nodes) if nodes else default
