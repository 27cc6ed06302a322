"""Graphviz DOT for an attribution graph, and rendering it with the ``dot`` binary.

The DOT text is written by hand rather than through the ``graphviz`` package so that the file
is the same with or without the ``dot`` binary, and so that every string from the graph that
reaches it goes through one escaping function (``dot_escape``; the stage names, our own fixed
text, sit in one HTML-like label and go through ``html.escape``). Rendering to SVG/PDF/PNG
needs the binary (Debian package ``graphviz``); without it ``render`` still writes the ``.dot``
file and ``dot_missing_message`` says how to finish by hand (DESIGN.md section 6).

What is drawn and where comes from ``reports.layout`` (``select``, ``layout``): node labels
are short (``H913`` over ``→' Julia'@4``, ``F1235`` over ``' F'``), the full label
(``reports.labels``) is in the tooltip, and the caption says how much of how much is drawn.
Positions are pinned, so Graphviz (the ``neato`` engine, named in the file, which
``dot -T...`` obeys) only routes edges around the nodes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from collections.abc import Iterable
from html import escape
from pathlib import Path

from circuits.graph import Graph, checked_graph
from toy_models.files import replace_atomic, write_text_atomic

from .labels import node_label, shorten, stage_name
from .layout import (
    ACTIVATION,
    FONT_SIZE,
    LABEL_COLUMN_IN,
    MAX_NODES,
    TOKEN_EDGE_NOTE,
    Layout,
    Selection,
    check_selection,
    layout,
    node_scores,
    placeholder,
    select,
)

# Node look per kind: shape and fill tell kinds apart in print, where tooltips are gone.
KIND_STYLE: dict[str, dict[str, str]] = {
    "embedding": {"shape": "box", "style": "filled", "fillcolor": "#eeeeee"},
    "lorsa": {"shape": "box", "style": "filled,diagonals", "fillcolor": "#fdd49e"},
    "transcoder": {"shape": "box", "style": "rounded,filled", "fillcolor": "#c6dbef"},
    "error": {"shape": "diamond", "style": "filled", "fillcolor": "#d9d9d9", "fontcolor": "gray33"},
    "bias": {"shape": "octagon", "style": "filled", "fillcolor": "#f0f0f0", "fontcolor": "gray33"},
    "logit": {"shape": "house", "style": "filled", "fillcolor": "#c7e9c0"},
}
POSITIVE_COLOR = "#2166ac"  # blue: the source pushes the target up
NEGATIVE_COLOR = "#b2182b"  # red: the source pushes the target down
QK_COLOR = "#7b3294"  # purple dashed: what made a Lorsa head attend, not what it read
# In the full drawing the q/k edges are faint, as the page's viewer keeps them (its lines at
# opacity 0.3, letters at 0.55): drawn at full strength, dozens of dashed purple lines crossed
# the signed edges that carry the flow (38 of them on 'Monday, Tuesday, Wednesday,').
QK_FAINT = QK_COLOR + "4d"  # #RRGGBBAA: alpha 0.3
QK_LETTER = QK_COLOR + "8c"  # alpha 0.55
AXIS_STYLE = {"shape": "plaintext", "fontcolor": "#777777"}  # stage names, bare tokens
MIN_PENWIDTH, MAX_PENWIDTH = 0.4, 5.0
# Routing edges around nodes (splines=true) costs Graphviz about nodes^2 x edges; above this
# it draws curved edges instead, which may cross nodes but take a fraction of a second. The
# default budget stays well under it (about 1e6: under a second on this graph size).
ROUTE_BUDGET = 2_500_000

RENDER_FORMATS = ("svg", "pdf", "png")  # what the CLIs offer (``circuits.trace.FORMATS``)

DOT_MISSING_MESSAGE = (
    "Graphviz `dot` not found: install it (apt-get install graphviz) and run: "
    "dot -Tsvg FILE.dot -o FILE.svg"
)

_FORMAT = re.compile(r"[a-z0-9_]+(:[a-z0-9_]+)*")  # validates dot's -T values: svg, png:cairo


# ------------------------------------------------------------------------------------ escaping
# Bidirectional controls: a token holding one would reorder the text around it in a drawing or a
# page (a label read backwards); they are shown as their code point instead.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                          "\u2066\u2067\u2068\u2069")  # fmt: skip


def show_bidi(text: str) -> str:
    """``text`` with every bidirectional control written as ``<U+202E>``."""
    if not BIDI_CONTROLS.intersection(text):
        return text
    return "".join(f"<U+{ord(ch):04X}>" if ch in BIDI_CONTROLS else ch for ch in text)


def dot_escape(text: str) -> str:
    """``text`` as the inside of a DOT double-quoted label or tooltip, shown literally.

    Backslashes are doubled (else ``\\N`` would print the node name), quotes escaped, newlines
    become DOT's centred line break, ``&`` becomes ``&amp;`` (Graphviz decodes HTML entities in
    labels, so a literal ``&lt;`` would otherwise print as ``<``) and other control characters
    are dropped because Graphviz rejects or garbles them.
    """
    out = []
    for ch in show_bidi(text).replace("\r\n", "\n"):
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
        value = str(value)
        if name == "tooltip":
            # Graphviz reads a tooltip's escapes twice: a label's ``\\N`` shows ``\N``, a
            # tooltip's named the node (a name ``say \N`` read ``say group:g0``)
            value = value.replace("\\", "\\\\")
        parts.append(f"{name}={_q(value)}")
    return "[" + ", ".join(parts) + "]"


def _node_tooltip(graph: Graph, i: int, scores: list[float], ranked_by: str) -> str:
    """``scores``, ``ranked_by``: ``node_scores``' (its |activation| is on a line already)."""
    lines = [
        f"{graph.ids[i]} ({graph.kinds[i]}, layer {int(graph.layer[i])}, pos {int(graph.pos[i])})",
        node_label(graph, i),
        f"activation {float(graph.activation[i]):.4g}",
    ]
    if ranked_by != ACTIVATION:
        lines.append(f"{ranked_by} {scores[i]:.4g}")
    return "\n".join(line for line in lines if line)


def caption(graph: Graph, selection: Selection, faint_qk: bool = True) -> str:
    """The drawing's title: prompt, what is drawn out of what, and how to read it."""
    s = selection
    faint = "faint " if faint_qk else ""
    shown = f"{len(s.nodes)} of {s.n_nodes} nodes, {len(s.edges)} of {s.n_edges} edges"
    if s.trimmed:
        n = len(s.token_edges)  # drawn under the others (layout.token_edges)
        whose = "token's" if n == 1 else "tokens'"
        under = f" and {n} influential {whose} strongest" if n else ""
        shown += f" (top nodes by {s.ranked_by}, strongest edges{under}; all in the HTML table)"
    if graph.positional:
        legend = (
            "H head →the key it reads, F feature + top promoted token, err error; "
            f"edges blue +, red −, {faint}dashed purple QK (q query, k key side)"
        )
        if s.token_edges:
            legend += ", dotted under the threshold"
    else:
        legend = "units: H head over its QK group, F feature + top promoted token, err error; "
        qk = f", {faint}dashed purple QK pairs" if selection.qk else ""
        legend += "edges blue +, red −" + qk
    return "\n".join([shorten(graph.prompt, 120), shown, legend])


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
    selection: Selection | None = None,
    *,
    max_nodes: int | None = MAX_NODES,
    max_edges: int | str | None = "auto",
    route: bool = True,
    faint_qk: bool = True,
) -> str:
    """The DOT text of a readable drawing of ``graph``: typed nodes with short labels, signed
    edges and dashed QK edges, limited to ``selection`` (default: what ``select`` keeps with
    the two budgets below; the caption says how much).

    ``max_nodes`` bounds the heads, features and errors (None: all), ``max_edges`` the solid
    edges (``"auto"``: ``EDGES_PER_NODE`` per node; None: all; QK edges are not counted).
    Pen widths are relative to the strongest edge drawn. ``layout`` places every node (``pos``
    pinned with ``!``), so Graphviz only routes the edges around them: the file asks for the
    ``neato`` engine, which ``dot -T...`` obeys. ``route``: let Graphviz route the edges
    around the nodes where the drawing is small enough (``ROUTE_BUDGET``); off, they are drawn
    as curves, as a large drawing's are (Graphviz 2.43 crashes routing some small ones).
    ``faint_qk``: the q/k edges faint (``QK_FAINT``), as the page's viewer draws them beside
    the signed edges; off, at full strength, for a drawing whose QK pairs are its subject (the
    head taxonomy's induction circuit).
    """
    if selection is not None:
        check_selection(checked_graph(graph), selection)
    s = selection or select(graph, max_nodes=max_nodes, max_edges=max_edges)
    lay: Layout = layout(graph, s)
    kinds = graph.kinds
    routed = route and len(lay.xy) ** 2 * (len(s.edges) + len(s.qk)) <= ROUTE_BUDGET
    lines = [
        "digraph attribution {",
        "  graph "
        + _attrs(
            layout="neato",
            splines="true" if routed else "curved",
            outputorder="edgesfirst",
            label=caption(graph, s, faint_qk),
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
            attrs = _attrs(label=placeholder(graph, p), pos=_pos(*lay.xy[-1 - p]), **AXIS_STYLE)
            lines.append(f"  {_q(f'pos:{p}')} {attrs};")

    scores, ranked_by = node_scores(graph)
    for i in s.nodes:
        (x, y), (w, h) = lay.xy[i], lay.size[i]
        attrs = _attrs(
            label=lay.labels[i],
            tooltip=_node_tooltip(graph, i, scores, ranked_by),
            **KIND_STYLE[kinds[i]],
            fixedsize="shape",
            width=f"{w:.2f}",
            height=f"{h:.2f}",
            pos=_pos(x, y),
        )
        lines.append(f"  {_q(graph.ids[i])} {attrs};")

    strongest = max((abs(e.weight) for e in s.edges), default=0.0)
    under = set(s.token_edges)  # under the threshold: dotted, as the page draws them
    for e in s.edges:
        pen = MIN_PENWIDTH + (MAX_PENWIDTH - MIN_PENWIDTH) * abs(e.weight) / strongest
        src, tgt = graph.ids[e.source], graph.ids[e.target]
        attrs = _attrs(
            color=POSITIVE_COLOR if e.weight > 0 else NEGATIVE_COLOR,
            penwidth=pen,
            tooltip=f"{src} -> {tgt}: {e.weight:+.4g}" + (TOKEN_EDGE_NOTE if e in under else ""),
            **({"style": "dotted"} if e in under else {}),
        )
        lines.append(f"  {_q(src)} -> {_q(tgt)} {attrs};")

    for e in s.qk:
        src, tgt = graph.ids[e.source], graph.ids[e.target]
        attrs = _attrs(
            color=QK_FAINT if faint_qk else QK_COLOR,
            fontcolor=QK_LETTER if faint_qk else QK_COLOR,
            style="dashed",
            constraint="false",  # for dot, should the file be laid out again: not a rank edge
            label=e.side,
            fontsize="8",
            penwidth="0.8",
            tooltip=f"QK {'query' if e.side == 'q' else 'key'} side {src} -> {tgt}: {e.value:+.4g}"
            + (
                f" in all, from the {e.members} nodes of its group (this one its strongest drawn)"
                if e.members > 1
                else " (one pair's term: the record holds no total of this node)"
                if e.pair_term
                else ""
            ),
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


# A drawing is capped (``reports.layout.select``): ``dot`` draws one in seconds, so a ``dot``
# silent this long is wedged, and the rest of the set is written without its drawing.
DOT_SECONDS = 120


class RenderError(RuntimeError):
    """``dot`` failed to draw a format: which one, and what it said (``_failure``)."""

    def __init__(self, fmt: str, detail: str, crashed: bool = False):
        super().__init__(f"dot -T{fmt} failed: {detail}")
        self.fmt, self.detail, self.crashed = fmt, detail, crashed


def _failure(returncode: int, stderr: str) -> str:
    """What a failing ``dot`` said, in one line: its first line that says something (Graphviz
    2.43 opens a crash with a bare ``**``), and the signal that killed it, if one did."""
    lines = [line.strip() for line in stderr.splitlines()]
    said = next((line for line in lines if any(c.isalnum() for c in line)), "")
    if returncode < 0:
        crash = f"crashed (signal {-returncode})"
        return f"{crash}: {said}" if said else crash
    return said or f"exit status {returncode}"


def render(
    dot_text: str, out_stem: str | Path, formats: Iterable[str] = ("svg", "pdf", "png")
) -> list[Path]:
    """Write ``out_stem.dot`` and, when ``dot`` is installed, ``out_stem.{format}`` for each
    format; every file is written atomically. Returns the paths written, ``.dot`` first.

    Without ``dot`` only the ``.dot`` path is returned, so the caller can tell and print
    ``dot_missing_message``. A failing ``dot`` raises ``RenderError``: the format and its first
    meaningful error line, with the signal if it crashed (``dot`` reads the text on stdin, so
    the line names ``<stdin>``, never a staged path).
    """
    if isinstance(formats, str):  # list("svg") would be three formats, "s", "v" and "g"
        raise ValueError(f"formats must be a list of format names, e.g. [{formats!r}], not "
                         "a string")  # fmt: skip
    formats = list(formats)
    for fmt in formats:
        if not isinstance(fmt, str) or not _FORMAT.fullmatch(fmt):
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

        def run_dot(tmp: Path, fmt: str = fmt) -> None:
            try:
                proc = subprocess.run(
                    [binary, f"-T{fmt}", "-o", str(tmp)],
                    input=dot_text,
                    capture_output=True,
                    encoding="utf-8",  # as the .dot file is written, whatever the locale
                    errors="replace",
                    timeout=DOT_SECONDS,
                )
            except subprocess.TimeoutExpired:  # a wedged dot held the whole trace (a review)
                raise RenderError(fmt, f"no answer in {DOT_SECONDS} s (killed)") from None
            if proc.returncode != 0:
                raise RenderError(fmt, _failure(proc.returncode, proc.stderr),
                                  crashed=proc.returncode < 0)  # fmt: skip

        path = _beside(out_stem, fmt.split(":")[0])
        replace_atomic(path, run_dot)
        written.append(path)
    return written
