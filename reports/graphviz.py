"""Graphviz DOT for an attribution graph: rows are stages, columns are token positions.

The DOT text is written by hand rather than through the ``graphviz`` package so that the file
is the same with or without the ``dot`` binary, and so that every string from the graph that
reaches it goes through one escaping function (``dot_escape``; the stage names, our own fixed
text, sit in one HTML-like label and go through ``html.escape``). Rendering to SVG/PDF/PNG
needs the binary (Debian package ``graphviz``); without it ``render`` still writes the ``.dot``
file and ``dot_missing_message`` says how to finish by hand (DESIGN.md section 6).

A pruned graph still has far too much for one picture (thousands of edges, most nodes at the
last position), so the drawing shows a budget of it (``select``): the most influential heads,
features and error nodes, every logit, the embeddings those read from, and the strongest
edges among them; the caption says how much of how much, and the HTML report lists the rest.
Node labels are short (``H913`` over ``→' Julia'@4``, ``F1235`` over ``' F'``); the full label
is in the tooltip.

Layout (``layout``), bottom to top: the embeddings (which double as the token axis), then for
each block its Lorsa row and its transcoder row, and the logits on top; columns are only the
positions something is drawn at. A (stage, position) cell with many nodes stacks them into
several rows, as many as keep the picture about as wide as tall, ordered by where their
neighbours are. Positions are computed here and pinned, so Graphviz (the ``neato`` engine,
named in the file, which ``dot -T...`` obeys) only routes edges around the nodes.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np

from circuits.graph import KINDS, Graph
from toy_models.files import write_text_atomic

# Node look per kind: shape and fill tell kinds apart in print, where tooltips are gone.
KIND_STYLE: dict[str, dict[str, str]] = {
    "embedding": {"shape": "box", "style": "filled", "fillcolor": "#eeeeee"},
    "lorsa": {"shape": "box", "style": "filled,diagonals", "fillcolor": "#fdd49e"},
    "transcoder": {"shape": "box", "style": "rounded,filled", "fillcolor": "#c6dbef"},
    "error": {"shape": "diamond", "style": "filled", "fillcolor": "#d9d9d9", "fontcolor": "gray33"},
    "logit": {"shape": "house", "style": "filled", "fillcolor": "#c7e9c0"},
}
POSITIVE_COLOR = "#2166ac"  # blue: the source pushes the target up
NEGATIVE_COLOR = "#b2182b"  # red: the source pushes the target down
QK_COLOR = "#7b3294"  # purple dashed: what made a Lorsa head attend, not what it read
AXIS_STYLE = {"shape": "plaintext", "fontcolor": "#777777"}  # stage names, bare tokens
MIN_PENWIDTH, MAX_PENWIDTH = 0.4, 5.0
MAX_LABEL_CHARS = 48  # longer text is cut in the drawing; the tooltip keeps all of it
LINE_CHARS = 14  # a node label is at most two lines of about this many characters
LOGIT_CHARS = 18  # logits are few and say which tokens: their lines may be a little longer
FONT_SIZE = 10

# What a default drawing shows: the most influential heads, features and errors (logits
# always; embeddings where a drawn edge leaves them) and a few edges per node, strongest first.
MAX_NODES = 60
EDGES_PER_NODE = 2

# Layout, in inches: the stage-name column and the caption, gaps between nodes of one cell,
# between position columns, between the rows of one stage and between stages; the
# width/height the wrapping of big cells aims for; how many ordering sweeps run.
LABEL_COLUMN_IN, CAPTION_IN = 1.1, 0.6
NODE_GAP_IN, COLUMN_GAP_IN, ROW_GAP_IN, STAGE_GAP_IN = 0.12, 0.3, 0.26, 0.45
TARGET_ASPECT = 1.2
SWEEPS = 4
# Routing edges around nodes (splines=true) costs Graphviz about nodes^2 x edges; above this
# it draws curved edges instead, which may cross nodes but take a fraction of a second. The
# default budget stays well under it (about 1e6: under a second on this graph size).
ROUTE_BUDGET = 2_500_000

DOT_MISSING_MESSAGE = (
    "Graphviz `dot` not found: install it (apt-get install graphviz) and run: "
    "dot -Tsvg FILE.dot -o FILE.svg"
)

_FORMAT = re.compile(r"[a-z0-9_]+(:[a-z0-9_]+)*")  # dot's -T values, e.g. svg, png:cairo


# ------------------------------------------------------------------------------------ escaping
def dot_escape(text: str) -> str:
    """``text`` as the inside of a DOT double-quoted label or tooltip, shown literally.

    Backslashes are doubled (else ``\\N`` would print the node name), quotes escaped, newlines
    become DOT's centred line break, ``&`` becomes ``&amp;`` (Graphviz decodes HTML entities in
    labels, so a literal ``&lt;`` would otherwise print as ``<``) and other control characters
    are dropped because Graphviz rejects or garbles them.
    """
    out = []
    for ch in text.replace("\r\n", "\n"):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "&":
            out.append("&amp;")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cs"):
            continue
        else:
            out.append(ch)
    return "".join(out)


def _q(text: str) -> str:
    return f'"{dot_escape(text)}"'


def _attrs(**attrs: str | float) -> str:
    parts = []
    for name, value in attrs.items():
        if isinstance(value, float):
            value = f"{value:.3f}"
        parts.append(f"{name}={_q(str(value))}")
    return "[" + ", ".join(parts) + "]"


def _shorten(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------- selections
@dataclass(frozen=True)
class Edge:
    """One direct effect ``weight`` of node ``source`` on node ``target`` (node indices)."""

    source: int
    target: int
    weight: float


@dataclass(frozen=True)
class QKEdge:
    """The strongest query-side (``side == "q"``) or key-side (``"k"``) node behind a Lorsa
    head's attention score; ``value`` is that node's QK pair term (or marginal)."""

    source: int
    target: int
    side: str
    value: float


@dataclass(frozen=True)
class Selection:
    """What one drawing shows: ``nodes`` (indices, stage order), ``edges`` (strongest first)
    and ``qk`` edges, out of the graph's ``n_nodes`` nodes and ``n_edges`` nonzero edges."""

    nodes: list[int]
    edges: list[Edge]
    qk: list[QKEdge]
    n_nodes: int
    n_edges: int
    ranked_by: str  # what chose the heads, features and errors: "influence" or "|activation|"
    trimmed: bool  # whether the budget left out any head, feature, error or edge


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


def _top_qk_node(a, side: str, id_to_index: dict[str, int]) -> tuple[int, float] | None:
    """The present node with the largest |pair term| on ``side`` of attribution ``a``.

    Pairs come first because they are what the score is made of; the marginals are a fallback
    for when every listed pair has that side on a pruned node or the bias.
    """
    pairs = sorted(a.pairs, key=lambda p: -abs(p.value))
    for p in pairs:
        node = p.query if side == "query" else p.key
        if node is not None and node in id_to_index:
            return id_to_index[node], float(p.value)
    marginals = a.query_marginals if side == "query" else a.key_marginals
    for node, value in sorted(marginals, key=lambda m: -abs(m[1])):
        if node is not None and node in id_to_index:
            return id_to_index[node], float(value)
    return None


def qk_edges(graph: Graph, nodes: Iterable[int] | None = None) -> list[QKEdge]:
    """For every Lorsa node with QK attributions, its top query-side and key-side nodes.

    With ``nodes`` only those nodes count as present: heads outside it get no QK edges, and
    a side whose top node is outside it falls back to its strongest node inside it.
    """
    id_to_index = graph.id_to_index
    present = set(range(graph.n_nodes)) if nodes is None else set(nodes)
    id_to_index = {name: i for name, i in id_to_index.items() if i in present}
    lorsa = KINDS.index("lorsa")
    edges: dict[tuple[int, int, str], QKEdge] = {}
    for target in (graph.kind == lorsa).nonzero().squeeze(1).tolist():
        if target not in present:
            continue
        for a in graph.qk_for(target):
            for side in ("query", "key"):
                top = _top_qk_node(a, side, id_to_index)
                if top is None or top[0] == target:
                    continue
                key = (top[0], target, side[0])
                if key not in edges or abs(top[1]) > abs(edges[key].value):
                    edges[key] = QKEdge(top[0], target, side[0], top[1])
    return list(edges.values())


def _node_scores(graph: Graph) -> tuple[list[float], str]:
    """What ranks nodes for the drawing: influence when known, else |activation|."""
    if graph.influence is not None:
        values, name = graph.influence.tolist(), "influence"
    else:
        values, name = graph.activation.abs().tolist(), "|activation|"
    return [-math.inf if math.isnan(v) else v for v in values], name


def select(
    graph: Graph,
    *,
    max_nodes: int | None = MAX_NODES,
    max_edges: int | str | None = "auto",
) -> Selection:
    """The nodes and edges one readable drawing of ``graph`` shows.

    Heads, features and error nodes: the ``max_nodes`` highest by influence (|activation|
    when the graph has no influence), all of them when ``max_nodes`` is None or not binding.
    Logits: always all. Embeddings: only those a drawn edge (solid or QK) leaves. Edges: the
    strongest nonzero ones among those nodes, at most ``max_edges``; ``"auto"`` allows
    ``EDGES_PER_NODE`` per node that can be drawn, None every one. QK edges are not counted.
    """
    if max_nodes is not None and max_nodes < 0:
        raise ValueError(f"max_nodes must be >= 0, got {max_nodes}")
    if isinstance(max_edges, str) and max_edges != "auto":
        raise ValueError(f"max_edges must be an int, None or 'auto', got {max_edges!r}")
    if isinstance(max_edges, int) and max_edges < 0:
        raise ValueError(f"max_edges must be >= 0, got {max_edges}")
    kinds = graph.kinds
    scores, ranked_by = _node_scores(graph)
    inner = [i for i, k in enumerate(kinds) if k in ("lorsa", "transcoder", "error")]
    trimmed = max_nodes is not None and len(inner) > max_nodes
    if trimmed:
        inner = sorted(inner, key=lambda i: (-scores[i], i))[:max_nodes]
    logits = [i for i, k in enumerate(kinds) if k == "logit"]
    embeddings = [i for i, k in enumerate(kinds) if k == "embedding"]
    candidates = set(inner) | set(logits) | set(embeddings)

    every = strongest_edges(graph)
    among = [e for e in every if e.source in candidates and e.target in candidates]
    if max_edges == "auto":
        sources = {e.source for e in among if kinds[e.source] == "embedding"}
        max_edges = EDGES_PER_NODE * (len(inner) + len(logits) + len(sources))
    edges = among if max_edges is None else among[:max_edges]
    trimmed = trimmed or len(edges) < len(every)
    qk = qk_edges(graph, candidates)
    connected = {e.source for e in edges} | {e.source for e in qk}
    nodes = sorted([*inner, *logits, *(i for i in embeddings if i in connected)])
    return Selection(nodes, edges, qk, graph.n_nodes, len(every), ranked_by, trimmed)


# ------------------------------------------------------------------------------------ labels
_REPR = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""  # a Python string literal, as labels quote
_ATTENDS = re.compile(rf"attends ({_REPR})@(\d+)\s*$")
_PROMOTES = re.compile(rf"-> ({_REPR})")
_EMBEDDING = re.compile(rf"^({_REPR})@(\d+)$")
_LOGIT_VALUE = re.compile(r"^(.*?) ((?:p=|= ).*)$")  # the token(s), then probability or value


def _fit(text: str, limit: int = LINE_CHARS) -> str:
    return _shorten(text, max(limit, 2))


def _token(graph: Graph, pos: int) -> str | None:
    return repr(graph.token_strings[pos]) if 0 <= pos < len(graph.token_strings) else None


def _at(token: str, pos: int) -> str:
    """``'tok'@pos`` in at most ``LINE_CHARS`` characters, cutting the token, never the pos."""
    suffix = f"@{pos}"
    return _fit(token, LINE_CHARS - len(suffix)) + suffix


def short_label(graph: Graph, i: int) -> str:
    """The label drawn in node ``i``: at most two lines of about ``LINE_CHARS`` characters.

    Global graphs (units, no positions): embedding ``'tok'``, Lorsa head ``H{index}`` over its
    QK group. Embedding ``'tok'@pos``; Lorsa head ``H{index}`` over ``→'tok'@key``, its strongest
    key (most attention among its QK attributions, else parsed from the label); transcoder feature
    ``F{index}`` over the first token its label says it promotes; error ``err``; logit the
    label without its ``logit`` prefix. Labels in another form are cut to fit; the tooltip and
    the HTML table keep the full label.
    """
    kind = KINDS[int(graph.kind[i])]
    label = graph.labels[i] if i < len(graph.labels) else ""
    pos, index = int(graph.pos[i]), int(graph.index[i])
    if graph.settings.get("global"):  # units, not positions: say what, not where
        if kind == "embedding":
            return _fit(label.removeprefix("token ").split(" (")[0])
        if kind == "lorsa":
            group = graph.settings.get("lorsa_group_size") or 1
            return f"H{index}\nQK {index // group}"
    if kind == "embedding":
        match = _EMBEDDING.match(label)
        token = match.group(1) if match else _token(graph, pos)
        return _at(token, pos) if token is not None else _fit(label or graph.ids[i])
    if kind == "error":
        return "err"
    if kind == "logit":  # "' Julia' p=0.997", "' Mary' - ' Tom' = 2.554"
        text = label.removeprefix("logit ") or graph.ids[i]
        if len(text) <= LINE_CHARS:
            return text
        match = _LOGIT_VALUE.match(text)
        if not match:
            return _fit(text, LOGIT_CHARS)
        return f"{_fit(match.group(1), LOGIT_CHARS)}\n{_fit(match.group(2), LOGIT_CHARS)}"
    first = f"H{index}" if kind == "lorsa" else f"F{index}"
    second = ""
    if kind == "lorsa":
        attributions = graph.qk_for(i)
        match = _ATTENDS.search(label)
        if attributions:
            key = max(attributions, key=lambda a: a.attention).key
            token = _token(graph, key)
            second = "→" + _at(token, key) if token is not None else f"→@{key}"
        elif match:
            second = "→" + _at(match.group(1), int(match.group(2)))
    else:
        match = _PROMOTES.search(label)
        if match:
            second = _fit(match.group(1))
    if not second and label:
        second = _fit(label)
    return f"{first}\n{_fit(second, LINE_CHARS + 1)}" if second else first


def _node_tooltip(graph: Graph, i: int) -> str:
    lines = [
        f"{graph.ids[i]} ({KINDS[int(graph.kind[i])]}, layer {int(graph.layer[i])}, "
        f"pos {int(graph.pos[i])})",
        graph.labels[i] if i < len(graph.labels) else "",
        f"activation {float(graph.activation[i]):.4g}",
    ]
    if graph.influence is not None:
        lines.append(f"influence {float(graph.influence[i]):.4g}")
    return "\n".join(line for line in lines if line)


def caption(graph: Graph, selection: Selection) -> str:
    """The drawing's title: prompt, what is drawn out of what, and how to read it."""
    s = selection
    shown = f"{len(s.nodes)} of {s.n_nodes} nodes, {len(s.edges)} of {s.n_edges} edges"
    if s.trimmed:
        shown += f" (top nodes by {s.ranked_by}, strongest edges; all in the HTML table)"
    legend = (
        "H head →its strongest key, F feature + top promoted token, err error; "
        "edges blue +, red −, dashed purple QK (q query, k key side)"
    )
    return "\n".join([_shorten(graph.prompt, 120), shown, legend])


# ---------------------------------------------------------------------------------------- DOT
def stage_name(stage: int, n_layers: int) -> str:
    """The row label of ``stage``: which sublayer of which block its nodes belong to."""
    if stage == 0:
        return "embeddings"
    if stage == 2 * n_layers + 1:
        return "logits"
    block = (stage - 1) // 2
    return f"L{block} Lorsa" if stage % 2 else f"L{block} transcoder"


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


def node_size(kind: str, label: str) -> tuple[float, float]:
    """Width and height (inches) of the node shape that holds ``label``, by kind."""
    lines = label.split("\n")
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


def _placeholder(graph: Graph, pos: int) -> str:
    """The token axis where no embedding is drawn: ``'tok'@pos`` in grey, no box."""
    token = _token(graph, pos)
    return _at(token, pos) if token is not None else f"@{pos}"


def layout(graph: Graph, selection: Selection) -> Layout:
    """Rows are stages bottom to top, columns the positions something is drawn at; a cell
    (stage, position) with more than ``wrap`` nodes stacks into several rows, ``wrap`` chosen
    so that the drawing is about ``TARGET_ASPECT`` times as wide as tall. Within a cell, nodes
    are ordered by the mean x of their drawn neighbours (``SWEEPS`` sweeps, alternately up and
    down) and dealt round-robin over its rows, which keeps edges short and few crossings."""
    scores, _ = _node_scores(graph)
    kinds = graph.kinds
    labels = {i: short_label(graph, i) for i in selection.nodes}
    size = {i: node_size(kinds[i], labels[i]) for i in selection.nodes}
    cells = _cells(graph, selection.nodes, scores)
    used = sorted({p for by_pos in cells.values() for p in by_pos})
    for p in used:  # token placeholders stand where no embedding is drawn
        if p not in cells[0]:
            size[-1 - p] = node_size("axis", _placeholder(graph, p))
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


def _row_labels(graph: Graph, lay: Layout) -> str:
    """One plaintext node holding every stage name, each centred on its band: one node, not
    one per row, because every node is an obstacle the edge router must think about."""
    bottom, top = min(b for b, _ in lay.bands.values()), max(t for _, t in lay.bands.values())
    width = round(LABEL_COLUMN_IN * 72 - 6)
    cells = "".join(
        f'<TR><TD FIXEDSIZE="TRUE" WIDTH="{width}" HEIGHT="{round((t - b) * 72)}" ALIGN="RIGHT">'
        f"{escape(stage_name(s, graph.n_layers))}</TD></TR>"
        for s, (b, t) in sorted(lay.bands.items(), reverse=True)  # HTML rows run top down
    )
    table = f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0">{cells}</TABLE>'
    pos = _pos(LABEL_COLUMN_IN / 2, (bottom + top) / 2)
    style = _attrs(margin="0", pos=pos, **AXIS_STYLE)[1:-1]
    return f'  "rows" [{style}, label=<{table}>];'


def to_dot(
    graph: Graph,
    *,
    max_nodes: int | None = MAX_NODES,
    max_edges: int | str | None = "auto",
) -> str:
    """The DOT text of a readable drawing of ``graph``: typed nodes with short labels, signed
    edges and dashed QK edges, limited to what ``select`` keeps (the caption says how much).

    ``max_nodes`` bounds the heads, features and errors (None: all), ``max_edges`` the solid
    edges (``"auto"``: ``EDGES_PER_NODE`` per node; None: all; QK edges are not counted).
    Pen widths are relative to the strongest edge drawn. ``layout`` places every node (``pos``
    pinned with ``!``), so Graphviz only routes the edges around them: the file asks for the
    ``neato`` engine, which ``dot -T...`` obeys.
    """
    s = select(graph, max_nodes=max_nodes, max_edges=max_edges)
    lay = layout(graph, s)
    kinds = graph.kinds
    routed = len(lay.xy) ** 2 * (len(s.edges) + len(s.qk)) <= ROUTE_BUDGET
    lines = [
        "digraph attribution {",
        "  graph "
        + _attrs(
            layout="neato",
            splines="true" if routed else "curved",
            outputorder="edgesfirst",
            label=caption(graph, s),
            labelloc="t",
            fontname="Helvetica",
            fontsize="12",
            pad="0.2",
        )
        + ";",
        "  node " + _attrs(fontname="Helvetica", fontsize=str(FONT_SIZE), penwidth="0.6") + ";",
        "  edge " + _attrs(arrowsize="0.5", fontname="Helvetica") + ";",
    ]
    if s.nodes:
        lines.append(_row_labels(graph, lay))
    for p in lay.columns:
        if -1 - p in lay.xy:
            attrs = _attrs(label=_placeholder(graph, p), pos=_pos(*lay.xy[-1 - p]), **AXIS_STYLE)
            lines.append(f"  {_q(f'pos:{p}')} {attrs};")

    for i in s.nodes:
        (x, y), (w, h) = lay.xy[i], lay.size[i]
        attrs = _attrs(
            label=lay.labels[i],
            tooltip=_node_tooltip(graph, i),
            **KIND_STYLE[kinds[i]],
            fixedsize="shape",
            width=f"{w:.2f}",
            height=f"{h:.2f}",
            pos=_pos(x, y),
        )
        lines.append(f"  {_q(graph.ids[i])} {attrs};")

    strongest = max((abs(e.weight) for e in s.edges), default=0.0)
    for e in s.edges:
        pen = MIN_PENWIDTH + (MAX_PENWIDTH - MIN_PENWIDTH) * abs(e.weight) / strongest
        src, tgt = graph.ids[e.source], graph.ids[e.target]
        attrs = _attrs(
            color=POSITIVE_COLOR if e.weight > 0 else NEGATIVE_COLOR,
            penwidth=pen,
            tooltip=f"{src} -> {tgt}: {e.weight:+.4g}",
        )
        lines.append(f"  {_q(src)} -> {_q(tgt)} {attrs};")

    for e in s.qk:
        src, tgt = graph.ids[e.source], graph.ids[e.target]
        attrs = _attrs(
            color=QK_COLOR,
            fontcolor=QK_COLOR,
            style="dashed",
            constraint="false",  # for dot, should the file be laid out again: not a rank edge
            label=e.side,
            fontsize="8",
            penwidth="0.8",
            tooltip=f"QK {'query' if e.side == 'q' else 'key'} side {src} -> {tgt}: {e.value:+.4g}",
        )
        lines.append(f"  {_q(src)} -> {_q(tgt)} {attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _pos(x: float, y: float) -> str:
    """A pinned position for neato, which reads ``pos`` in inches."""
    return f"{x:.3f},{y:.3f}!"


# ------------------------------------------------------------------------------------ render
def dot_binary() -> str | None:
    """The path of Graphviz's ``dot``, or None when it is not installed."""
    return shutil.which("dot")


def dot_available() -> bool:
    return dot_binary() is not None


def dot_missing_message(dot_path: str | Path | None = None) -> str:
    """``DOT_MISSING_MESSAGE`` with ``FILE`` replaced by the stem of ``dot_path`` if given."""
    if dot_path is None:
        return DOT_MISSING_MESSAGE
    stem = str(dot_path)[: -len(".dot")] if str(dot_path).endswith(".dot") else str(dot_path)
    return DOT_MISSING_MESSAGE.replace("FILE", stem)


def _beside(stem: Path, suffix: str) -> Path:
    # Not with_suffix: a stem like "graph.v2" must keep its ".v2".
    return stem.with_name(f"{stem.name}.{suffix}")


def render(
    dot_text: str, out_stem: str | Path, formats: Iterable[str] = ("svg", "pdf", "png")
) -> list[Path]:
    """Write ``out_stem.dot`` and, when ``dot`` is installed, ``out_stem.{format}`` for each
    format; every file is written atomically. Returns the paths written, ``.dot`` first.

    Without ``dot`` only the ``.dot`` path is returned, so the caller can tell and print
    ``dot_missing_message``. A failing ``dot`` raises RuntimeError with its first error line.
    """
    formats = list(formats)
    for fmt in formats:
        if not _FORMAT.fullmatch(fmt):
            raise ValueError(f"not a Graphviz output format: {fmt!r}")
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    dot_path = _beside(out_stem, "dot")
    write_text_atomic(dot_path, dot_text)
    written = [dot_path]
    if not dot_available():
        return written
    binary = dot_binary() or "dot"
    for fmt in formats:
        path = _beside(out_stem, fmt.split(":")[0])
        tmp = path.with_name(path.name + ".tmp")
        proc = subprocess.run(
            [binary, f"-T{fmt}", str(dot_path), "-o", str(tmp)],
            capture_output=True,
            text=True,
            errors="replace",
        )
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            stderr = proc.stderr.strip().splitlines()
            first = stderr[0] if stderr else f"exit status {proc.returncode}"
            raise RuntimeError(f"dot -T{fmt} {dot_path} failed: {first}")
        tmp.replace(path)
        written.append(path)
    return written
