"""Graphviz DOT for an attribution graph: rows are stages, columns are token positions.

The DOT text is written by hand rather than through the ``graphviz`` package so that the file
is the same with or without the ``dot`` binary, and so that every string that reaches it goes
through one escaping function (``dot_escape``). Rendering to SVG/PDF/PNG needs the binary
(Debian package ``graphviz``); without it ``render`` still writes the ``.dot`` file and
``dot_missing_message`` says how to finish by hand (DESIGN.md section 6).

Layout, bottom to top (``rankdir=BT``): a header row of token positions, the embeddings, then
for each block its Lorsa row and its transcoder row, and the logits on top. Each row is one
``rank=same`` subgraph led by a row label and chained left to right in position order by
invisible edges; invisible edges also run up each column, so nodes at one position roughly
line up over their token.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from circuits.graph import KINDS, Graph
from toy_models.files import write_text_atomic

# Node look per kind: shape and fill tell kinds apart in print, where tooltips are gone.
KIND_STYLE: dict[str, dict[str, str]] = {
    "embedding": {"shape": "box", "style": "filled", "fillcolor": "#eeeeee"},
    "lorsa": {"shape": "ellipse", "style": "filled", "fillcolor": "#fdd49e"},
    "transcoder": {"shape": "box", "style": "rounded,filled", "fillcolor": "#c6dbef"},
    "error": {"shape": "diamond", "style": "filled", "fillcolor": "#d9d9d9", "fontcolor": "gray33"},
    "logit": {"shape": "house", "style": "filled", "fillcolor": "#c7e9c0"},
}
POSITIVE_COLOR = "#2166ac"  # blue: the source pushes the target up
NEGATIVE_COLOR = "#b2182b"  # red: the source pushes the target down
QK_COLOR = "#7b3294"  # purple dashed: what made a Lorsa head attend, not what it read
ROW_LABEL_STYLE = {"shape": "plaintext", "fontcolor": "#777777"}  # row and column headers
MIN_PENWIDTH, MAX_PENWIDTH = 0.4, 5.0
MAX_LABEL_CHARS = 48  # longer labels are cut in the drawing; the tooltip keeps all of it

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


def qk_edges(graph: Graph) -> list[QKEdge]:
    """For every Lorsa node with QK attributions, its top query-side and key-side nodes."""
    id_to_index = graph.id_to_index
    lorsa = KINDS.index("lorsa")
    edges: dict[tuple[int, int, str], QKEdge] = {}
    for target in (graph.kind == lorsa).nonzero().squeeze(1).tolist():
        for a in graph.qk_for(target):
            for side in ("query", "key"):
                top = _top_qk_node(a, side, id_to_index)
                if top is None or top[0] == target:
                    continue
                key = (top[0], target, side[0])
                if key not in edges or abs(top[1]) > abs(edges[key].value):
                    edges[key] = QKEdge(top[0], target, side[0], top[1])
    return list(edges.values())


# ---------------------------------------------------------------------------------------- DOT
def stage_name(stage: int, n_layers: int) -> str:
    """The row label of ``stage``: which sublayer of which block its nodes belong to."""
    if stage == 0:
        return "embeddings"
    if stage == 2 * n_layers + 1:
        return "logits"
    block = (stage - 1) // 2
    return f"L{block} Lorsa" if stage % 2 else f"L{block} transcoder"


def _node_label(graph: Graph, i: int) -> str:
    label = graph.labels[i] if i < len(graph.labels) else ""
    if not label and KINDS[int(graph.kind[i])] == "embedding":
        pos = int(graph.pos[i])
        label = graph.token_strings[pos] if pos < len(graph.token_strings) else ""
    return label or graph.ids[i]


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


def _token_header(graph: Graph, pos: int) -> str:
    token = graph.token_strings[pos] if pos < len(graph.token_strings) else ""
    return f"{pos}\n{_shorten(token, 16)}"


def to_dot(graph: Graph, *, max_edges: int | None = None) -> str:
    """The DOT text of ``graph``: typed nodes, signed edges and dashed QK edges.

    ``max_edges`` keeps only the strongest direct-effect edges (QK edges are not counted);
    pen widths are relative to the strongest edge drawn.
    """
    n = graph.n_nodes
    stages = graph.stage.tolist()
    positions = graph.pos.tolist()
    kinds = graph.kinds
    n_pos = max([len(graph.token_strings), *(p + 1 for p in positions)], default=0)

    lines = [
        "digraph attribution {",
        "  graph "
        + _attrs(
            rankdir="BT",
            label=_shorten(graph.prompt, 200),
            labelloc="t",
            fontname="Helvetica",
            nodesep="0.15",
            ranksep="0.45",
        )
        + ";",
        "  node " + _attrs(fontname="Helvetica", fontsize="10", penwidth="0.6") + ";",
        "  edge " + _attrs(arrowsize="0.5") + ";",
    ]

    # Rows: a header of positions, then one rank per stage in stage order, each chained left to
    # right (row label first, then nodes by position) so the drawing reads like the prompt.
    by_stage: dict[int, list[int]] = {}
    for i in sorted(range(n), key=lambda i: (stages[i], positions[i], i)):
        by_stage.setdefault(stages[i], []).append(i)
    header = [f"pos:{p}" for p in range(n_pos)]
    lines.append("  { rank=same;")
    lines.append(f'    "row:tokens" {_attrs(label="tokens", **ROW_LABEL_STYLE)};')
    for p, name in enumerate(header):
        attrs = _attrs(label=_token_header(graph, p), **ROW_LABEL_STYLE)
        lines.append(f"    {_q(name)} {attrs};")
    lines.append(_invisible_chain(["row:tokens", *header], indent="    "))
    lines.append("  }")
    for stage, members in by_stage.items():
        row = f"row:{stage}"
        lines.append("  { rank=same;")
        label = stage_name(stage, graph.n_layers)
        lines.append(f"    {_q(row)} {_attrs(label=label, **ROW_LABEL_STYLE)};")
        for i in members:
            style = KIND_STYLE[kinds[i]]
            attrs = _attrs(
                label=_shorten(_node_label(graph, i)), tooltip=_node_tooltip(graph, i), **style
            )
            lines.append(f"    {_q(graph.ids[i])} {attrs};")
        lines.append(_invisible_chain([row, *(graph.ids[i] for i in members)], indent="    "))
        lines.append("  }")

    # Rows in stage order even where no real edge joins them, and columns over their tokens.
    lines.append(_invisible_chain(["row:tokens", *(f"row:{s}" for s in by_stage)], indent="  "))
    columns: dict[int, list[str]] = {p: [header[p]] for p in range(n_pos)}
    for members in by_stage.values():
        seen = set()
        for i in members:
            if positions[i] not in seen:
                seen.add(positions[i])
                columns[positions[i]].append(graph.ids[i])
    for column in columns.values():
        if len(column) > 1:
            lines.append(_invisible_chain(column, indent="  ", weight="2"))

    edges = strongest_edges(graph, max_edges)
    strongest = max((abs(e.weight) for e in edges), default=0.0)
    for e in edges:
        width = MIN_PENWIDTH + (MAX_PENWIDTH - MIN_PENWIDTH) * abs(e.weight) / strongest
        src, tgt = graph.ids[e.source], graph.ids[e.target]
        attrs = _attrs(
            color=POSITIVE_COLOR if e.weight > 0 else NEGATIVE_COLOR,
            penwidth=width,
            tooltip=f"{src} -> {tgt}: {e.weight:+.4g}",
        )
        lines.append(f"  {_q(src)} -> {_q(tgt)} {attrs};")

    for e in qk_edges(graph):
        src, tgt = graph.ids[e.source], graph.ids[e.target]
        attrs = _attrs(
            color=QK_COLOR,
            fontcolor=QK_COLOR,
            style="dashed",
            constraint="false",
            label=e.side,
            fontsize="8",
            penwidth="1.0",
            tooltip=f"QK {'query' if e.side == 'q' else 'key'} side {src} -> {tgt}: {e.value:+.4g}",
        )
        lines.append(f"  {_q(src)} -> {_q(tgt)} {attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _invisible_chain(names: Sequence[str], *, indent: str, weight: str | None = None) -> str:
    if len(names) < 2:
        return ""
    extra = {"weight": weight} if weight else {}
    return f"{indent}{' -> '.join(_q(name) for name in names)} {_attrs(style='invis', **extra)};"


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
