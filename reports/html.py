"""One self-contained HTML page per attribution graph: an interactive viewer, the prompt, the
scores, the node table and the Graphviz drawing when there is one.

The page loads nothing from the network, so it can be mailed, archived or opened from a run
directory years later. Its viewer (``reports/viewer/``: a script and a stylesheet written
here, inlined) draws the pruned graph itself from one JSON blob (``reports.viewer``), laid
out by stage and position, so the picture needs no Graphviz: click a node for its panel
(edges, QK records, dashboard), hover for its paths, change the node budget and the edge
threshold, search, pin and group nodes (kept in the URL and in the blob's ``qParams``). The
table below it carries every node's numbers without any script, and greys out the rows of
the nodes the drawing leaves out (the script keeps them in step with its controls). The
Graphviz SVG, when ``dot`` made one, follows as a static drawing of the default budget.
Every string from the graph goes through ``escape`` (``html.escape``, control characters
shown as ``\\xNN`` escapes) or, inside the JSON blob, ``reports.viewer.script_json``.
"""

from __future__ import annotations

import html
import json
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from circuits.graph import QK_BIAS, Graph, QKAttribution, checked_count, checked_graph
from circuits.nodes import CONVENTION_ACTIVATION, KINDS, Kind
from toy_models.files import write_text_atomic

from .graphviz import show_bidi
from .labels import fields_label, node_labels
from .layout import ACTIVATION, INFLUENCE, Selection, check_selection, node_scores, select
from .mechanisms import CSS as MECHANISMS_CSS
from .mechanisms import mechanisms_html, summary_for
from .viewer import NODE_ANCHOR, assets, script_json, viewer_data

TABLE_OPEN_NODES = 200  # the node table starts open up to this many nodes

CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 0.8em 1.5em 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 0.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
.tokens { display: flex; flex-wrap: wrap; gap: 4px; }
.tok { border: 1px solid #999; border-radius: 3px; padding: 2px 5px; background: #f7f7f7;
       font-family: Menlo, Consolas, monospace; white-space: pre; }
.prompt { white-space: pre-wrap; }
.tok sub { color: #888; font-family: Helvetica, Arial, sans-serif; margin-right: 3px; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; text-align: left; }
th { background: #eee; }
td.num { text-align: right; font-family: Menlo, Consolas, monospace; }
.pos { color: #2166ac; } .neg { color: #b2182b; }
.graph { overflow: auto; border: 1px solid #ddd; padding: 4px; max-height: 90vh; }
.graph.fit svg { max-width: 100%; height: auto; }
.note { background: #fff8dc; border: 1px solid #e0c97f; padding: 6px; }
.kind-embedding { background: #eeeeee; } .kind-lorsa { background: #fdd49e; }
.kind-transcoder { background: #c6dbef; } .kind-error { background: #d9d9d9; }
.kind-bias { background: #f0f0f0; }
.kind-logit { background: #c7e9c0; }
.qk { font-size: 0.95em; }
tr.undrawn td { color: #888; }
"""


def escape(text: str) -> str:
    """``html.escape``, with control characters (which HTML forbids) written as ``\\xNN`` and
    bidirectional controls as their code point (``graphviz.show_bidi``)."""
    text = show_bidi(text)
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in text):
        text = "".join(
            f"\\x{ord(ch):02x}" if unicodedata.category(ch) == "Cc" and ch not in "\n\t" else ch
            for ch in text
        )
    return html.escape(text)


def node_anchor(node_id: str) -> str:
    """The element id of node ``node_id``'s row in the node table, escaped (a link to the row
    is ``#`` and this; ``reports.viewer.NODE_ANCHOR``)."""
    return NODE_ANCHOR + escape(node_id)


def write_html(
    graph: Graph,
    path: str | Path,
    svg_text: str | None = None,
    selection: Selection | None = None,
    *,
    top_edges: int = 5,
    title: str | None = None,
    dashboards: Mapping[str, Mapping] | None = None,
    q_params: Mapping | None = None,
    mechanisms=None,
    figure_svg: str | None = None,
) -> None:
    """Write the report page of ``graph`` to ``path`` atomically.

    ``svg_text`` is the Graphviz drawing (``dot -Tsvg`` output), shown as a static picture
    below the viewer, or None when Graphviz was missing (the page then says how to render the
    ``.dot`` file; the viewer draws the graph either way). ``selection`` is the default view
    (``reports.layout.select``; its budget when None): the viewer starts from it and the table
    greys out the other nodes. ``top_edges`` bounds the incoming and outgoing edges (and QK
    pairs) listed per node in the table. ``dashboards`` (by unit id) and ``q_params``
    (circuit-tracer's pinned ids and supernodes) go to the viewer (``reports.viewer``).
    ``mechanisms`` (a ``circuits.mechanism_file.MechanismSummary``) adds its section
    (``reports.mechanisms``) and goes to the viewer's panel; ``figure_svg``, its figure
    (``reports.mechanism_figure``, drawn by ``dot``), opens that section.
    """
    page = html_page(
        graph, svg_text, selection, top_edges=top_edges, title=title, dashboards=dashboards,
        q_params=q_params, mechanisms=mechanisms, figure_svg=figure_svg,
    )  # fmt: skip
    write_text_atomic(Path(path), page)


def html_page(
    graph: Graph,
    svg_text: str | None = None,
    selection: Selection | None = None,
    *,
    top_edges: int = 5,
    title: str | None = None,
    dashboards: Mapping[str, Mapping] | None = None,
    q_params: Mapping | None = None,
    mechanisms=None,
    figure_svg: str | None = None,
) -> str:
    """The text of the page ``write_html`` writes."""
    checked_graph(graph)
    top_edges = checked_count(top_edges, "top_edges", least=0)
    if selection is None:
        selection = select(graph)
    check_selection(graph, selection)
    if mechanisms is not None:
        mechanisms = summary_for(mechanisms, graph)
    drawing = _drawing_html(svg_text)  # refuses text that is not an SVG before any work
    if figure_svg is not None and mechanisms is None:
        raise ValueError("figure_svg is the mechanism summary's figure: pass the summary too")
    figure = "" if figure_svg is None else _figure_html(figure_svg)
    drawn = set(selection.nodes)
    labels = node_labels(graph)
    if title is None:
        title = _default_title(graph)
    data = viewer_data(
        graph, selection, dashboards=dashboards, q_params=q_params, title=title,
        mechanisms=mechanisms,
    )  # fmt: skip
    viewer_css, viewer_js = assets()
    table_open = " open" if graph.n_nodes <= TABLE_OPEN_NODES else ""
    untrained = graph.untrained_note()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}\n{MECHANISMS_CSS}\n{viewer_css}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        *([f'<p class="note">Note: {escape(untrained)}.</p>'] if untrained else []),
        '<div id="viewer" class="viewer">',
        '<p class="note">The interactive drawing needs JavaScript; the node table below lists '
        "every node without it.</p>",
        "</div>",
        # The viewer's data and script come before the long parts of the page, so the picture
        # is drawn before the table and the static drawing are parsed.
        f'<script type="application/json" id="graph-data">{script_json(data)}</script>',
        f"<script>{viewer_js}</script>",
        "<h2>Prompt</h2>" if graph.positional else "<h2>Global graph</h2>",
        _prompt_html(graph) if graph.positional else _global_html(graph),
        *(
            [
                "<h2>Mechanisms</h2>",
                figure,
                mechanisms_html(mechanisms, set(graph.ids), untrained=untrained is None),
            ]
            if mechanisms is not None
            else []
        ),
        "<h2>Summary</h2>",
        _summary_html(graph),
        "<h2>Static drawing</h2>",
        _drawn_note_html(graph, drawn),
        drawing,
        "<h2>Nodes</h2>",
        f'<details class="node-table"{table_open}><summary>every node, {_node_order_words(graph)}'
        f" ({graph.n_nodes})</summary>",
        _node_table_html(graph, labels, top_edges, drawn),
        "</details>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _default_title(graph: Graph) -> str:
    """A prompt's graph is titled by its prompt; a global graph by where it grew from (its
    target weight's node) and which way (a reviewer's global page read "Attribution graph")."""

    def clipped(text: str) -> str:
        return text if len(text) <= 80 else text[:79] + "…"

    if graph.positional or not graph.n_nodes:  # its newlines and tabs drawn, as in the boxes
        prompt = graph.prompt.translate(BOX_MARKS)  # (a heading shows them as spaces)
        return "Attribution graph" + (f": {clipped(prompt)}" if prompt else "")
    direction = graph.direction  # None: a QK circuit, which grows from no one unit
    if direction is None or not bool(graph.target_weight.any()):
        return "Global graph"
    from circuits.groups import node_name  # its words without the label's firing counts

    start = int(graph.target_weight.argmax())
    return f"Global graph, {direction} of {clipped(node_name(graph, start))}"


# ---------------------------------------------------------------------------------- sections
# A token box draws a newline and a tab as these (a bare line break draws nothing, so a
# newline's box was as blank as a space's); the box's tooltip gives the token's exact text.
BOX_MARKS = str.maketrans({"\n": "\u21b5", "\t": "\u21e5"})


def box_text(token: str) -> str:
    """A token's text for a box (``.tok``), escaped, a newline and a tab drawn (``BOX_MARKS``),
    and a token of spaces alone as ``␣`` each: its box was blank, read as an empty token (a
    trace of `` arrived``, which this tokenizer splits `` `` ``ar`` ...); a space inside a
    token's text stays one."""
    if token and not token.strip(" "):
        return "\u2423" * len(token)
    return escape(token.translate(BOX_MARKS))


def _prompt_html(graph: Graph) -> str:
    boxes = [
        f'<span class="tok" title="token id {escape(str(tok))}: {escape(repr(text))}"><sub>{p}'
        f"</sub>{box_text(text)}</span>"
        for p, (tok, text) in enumerate(zip(graph.tokens, graph.token_strings, strict=False))
    ]
    prompt = f'<p class="prompt">{escape(graph.prompt)}</p>'
    return f'{prompt}\n<div class="tokens">{"".join(boxes)}</div>' if boxes else prompt


def _global_html(graph: Graph) -> str:
    """What a global graph's edges are, under its heading (a reviewer found the page saying it
    only in its summary table's ``edge_weights`` row): the weight its record says
    (``GlobalRecord.edge_weights``) and, for a graph grown downstream, that an edge into a
    logit is summed where its token comes next, so it weighs how often the token follows too
    (L3 F528, which promotes ' twelfth', had a larger edge into 'th')."""
    record = graph.global_record
    if record is None:
        return _prompt_html(graph)
    text = (f"No prompt: each edge is the {record.edge_weights}, from exact local edges summed "
            "over a corpus sample.")  # fmt: skip
    if record.direction == "downstream":
        text += (" An edge into a logit is summed where its token comes next, so it weighs how "
                 "often that token follows as well as how much the unit raises it.")  # fmt: skip
    if record.qk_from_weights:  # circuits.global_weights.qk_circuit's pairs
        text += (" Its q/k pairs come from the weights alone, (P d_q) W_Q W_K^T (P d_k) / "
                 "sqrt(d_qk) for a query-side and a key-side unit: what the heads look for, "
                 "not weighed by how often the two units occur together.")  # fmt: skip
    return f"<p>{escape(text)}</p>"


def _format_setting(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 300 else text[:299] + "…"


def _global_words(graph: Graph) -> dict[str, str]:
    """A grown global graph's ``start_edges`` and ``reliability`` settings in the printout's
    words (``circuits.global_graph``), for its summary rows: the page showed their raw JSON
    (``{"edges": 12, "kept": 25.669317, "reachable": 79.324753, "reachable_share": 0.8048,
    ...}``: a review), words the printout says and the page did not; a QK circuit's
    ``reliability`` in its own printout's words; empty for any other graph."""
    from circuits.global_graph import coverage_words, qk_reliability_line, reliability_line
    from circuits.graph import RELIABILITY, START_EDGES

    if graph.global_record is None:
        return {}
    if graph.qk_from_weights:  # a QK circuit: its own split-half line (its page showed the
        r = graph.settings.get(RELIABILITY)  # record's JSON, "compared", "of" and all)
        return {RELIABILITY: qk_reliability_line(r, graph.n_edges)} if isinstance(r, dict) else {}
    words = {}
    if isinstance(c := graph.settings.get(START_EDGES), dict):
        words[START_EDGES] = coverage_words(c, graph.direction == "upstream")
    if isinstance(r := graph.settings.get(RELIABILITY), dict):
        words[RELIABILITY] = reliability_line(r, graph.n_edges)
    return words


def _summary_html(graph: Graph) -> str:
    kinds = graph.kinds
    counts = ", ".join(f"{kinds.count(k)} {k}" for k in KINDS if kinds.count(k))
    rows: list[tuple[str, str]] = [
        ("nodes", f"{graph.n_nodes} ({counts})" if counts else str(graph.n_nodes)),
        ("edges", str(graph.n_edges)),
        ("blocks", str(graph.n_layers)),
    ]
    if graph.model.get("name"):
        rows.append(("model", str(graph.model["name"])))
    if graph.untrained_positions:
        rows.append(("untrained-token positions", ", ".join(map(str, graph.untrained_positions))))
    rows.append(("mode", graph.mode if graph.positional else "global (units)"))
    settings = dict(graph.settings)
    scores = settings.pop("scores", None)
    if isinstance(scores, dict):
        rows.extend((f"{name} score", _format_setting(v)) for name, v in scores.items())
    elif scores is not None:
        rows.append(("scores", _format_setting(scores)))
    record = graph.global_record
    if record is not None:  # how it was made, in the rows its settings gave before format 9
        grown = {} if record.direction is None else {"direction": record.direction}
        settings |= grown | {"edge_weights": record.edge_weights}
    if graph.node_targets is not None:  # the order given, in the row its setting gave before
        settings["node_targets"] = [graph.ids[i] for i in graph.given_targets()]
    words = _global_words(graph)
    rows.extend((str(k), words.get(k) or _format_setting(v))
                for k, v in sorted(settings.items(), key=str))  # fmt: skip
    body = "\n".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="summary">\n{body}\n</table>'


def _svg_element(svg_text: str) -> str:
    """The ``<svg>`` element of ``dot -Tsvg`` output: the XML declaration and DOCTYPE ``dot``
    writes before it do not belong inside HTML."""
    start = svg_text.find("<svg")
    if start < 0:
        raise ValueError("svg_text holds no <svg> element")
    return svg_text[start:].strip()


def _figure_html(svg_text: str) -> str:
    return (
        "<details open><summary>Mechanism figure (the summary's groups; also "
        "<code>mechanism.svg</code>, at full size)</summary>"
        # fitted to the page's width (a three-target figure, 1860 px, scrolled sideways):
        # the figure is one picture to take in at once, the node-level drawing is not
        f'\n<div class="graph fit">\n{_svg_element(svg_text)}\n</div>\n</details>'
    )


def _drawing_html(svg_text: str | None) -> str:
    if svg_text is None:
        return (
            '<p class="note">No drawing from Graphviz: <code>dot</code> was missing or failed '
            "when this page was written (the viewer above needs no Graphviz). For a static "
            "picture, install it (<code>apt-get install graphviz</code>) and render the "
            "<code>.dot</code> file next to this page with "
            "<code>dot -Tsvg FILE.dot -o FILE.svg</code>.</p>"
        )
    return (
        "<details><summary>Graphviz drawing of the default budget (no script needed)</summary>"
        f'\n<div class="graph">\n{_svg_element(svg_text)}\n</div>\n</details>'
    )


def _drawn_note_html(graph: Graph, drawn: set[int]) -> str:
    """What the static drawing (``selection``) leaves out. The interactive viewer above draws
    its own budget with the summary's supernodes expanded, so its count is another (a reviewer
    read this line as the viewer's: 79 of 276 under a viewer drawing 201). The node table's
    grey rows are the static drawing's only without scripts: the viewer greys those its own
    drawing leaves out (a review: this line said the static drawing's, 227 rows, over the
    viewer's 91 grey rows)."""
    shown = len(drawn)
    if shown == graph.n_nodes:
        return ""
    return (
        f"<p>The static drawing shows {shown} of {graph.n_nodes} nodes (the interactive one "
        "above draws its own budget, its supernodes' members too); the grey rows of the node "
        "table are the nodes the interactive drawing leaves out (without scripts, those the "
        "static drawing leaves out).</p>"
    )


def _node_order_words(graph: Graph) -> str:
    """How ``_node_order`` sorts, as the node table's heading says it: a graph ranked by
    |activation| (an unpruned upstream one) is listed in stage order, which the heading
    called "most influential first" (a review)."""
    name = node_scores(graph)[1]
    return {INFLUENCE: "most influential first", ACTIVATION: "in stage order"}.get(
        name, f"highest {name} first"
    )


def _node_order(graph: Graph) -> list[int]:
    """Highest first by ``node_scores`` (influence, a downstream global graph's reach from
    its start, a QK circuit's shares); by |activation|, the graph's stage order."""
    scores, name = node_scores(graph)
    if name == ACTIVATION:
        return list(range(graph.n_nodes))
    return sorted(range(graph.n_nodes), key=lambda i: (-scores[i], i))


def _top(indices: np.ndarray, weights: np.ndarray, k: int) -> list[tuple[int, float]]:
    order = np.lexsort((indices, -np.abs(weights)))[:k]
    return [(int(indices[j]), float(weights[j])) for j in order if weights[j] != 0]


def _node_link(graph: Graph, labels: list[str], i: int) -> str:
    node = graph.ids[i]
    return f'<a href="#{node_anchor(node)}" title="{escape(labels[i])}">{escape(node)}</a>'


def _edge_list(graph: Graph, labels: list[str], edges: list[tuple[int, float]]) -> str:
    return "<br>".join(
        f'{_node_link(graph, labels, j)} <span class="{"pos" if w > 0 else "neg"}">'
        f"({w:+.3g})</span>"
        for j, w in edges
    )


def _qk_node_name(graph: Graph, labels: list[str], node: str | None, a: QKAttribution) -> str:
    """A QK term's side: a link to the graph's node, else the label its record's fields give
    (``QKAttribution.named``: a node pruning dropped, a unit), never its bare id."""
    if node is None or node == QK_BIAS:
        return "bias"
    index = graph.id_to_index.get(node)
    if index is not None:
        return _node_link(graph, labels, index)
    side = a.named[node]
    return escape(fields_label(graph, side.kind, side.stage, side.index, side.pos))


def _qk_html(graph: Graph, labels: list[str], attributions: list[QKAttribution], top: int) -> str:
    """Per key the head was traced to: where, how much attention, and the largest terms of
    the score as query-side node x key-side node (a node the graph does not hold by the label
    its fields give)."""
    blocks = []
    for a in sorted(attributions, key=lambda a: -a.attention):
        key_token = graph.token_strings[a.key] if 0 <= a.key < len(graph.token_strings) else ""
        pairs = sorted(a.pairs, key=lambda p: -abs(p.value))[:top]
        name = lambda node, a=a: _qk_node_name(graph, labels, node, a)  # noqa: E731
        pair_lines = "".join(
            f"<li>{name(p.query)} &times; {name(p.key)}: "
            f'<span class="{"pos" if p.value > 0 else "neg"}">{p.value:+.3g}</span></li>'
            for p in pairs
        )
        contrast = ""
        if a.contrast is not None:  # what makes this key stand out: key side as units
            lines = "".join(
                f"<li>{name(p.query)} &times; {name(p.key)}: "
                f'<span class="{"pos" if p.value > 0 else "neg"}">{p.value:+.3g}</span></li>'
                for p in a.contrast_pairs[:top]
            )
            contrast = f"<div>vs the mean key: {a.contrast:+.3g} (key side as units)</div>" + (
                f"<ul>{lines}</ul>" if lines else ""
            )
        if graph.positional:
            where = (
                f'key pos {a.key} <span class="tok">{box_text(key_token)}</span>, '
                f"attention {a.attention:.3g}, score {a.score:+.3g} (rest {a.rest:+.3g})"
            )
        elif graph.qk_from_weights:
            where = (
                f"L{a.layer} QK {a.qk_head}: from the weights alone (W_Q W_K^T between the units' "
                f"write vectors, no prompt or corpus), its {len(a.pairs)} strongest pairs, sum "
                f"{a.score:+.3g}"
            )
        else:  # a global graph's record: no positions, an expected score lift per firing
            where = (
                f"L{a.layer} QK {a.qk_head}: expected QK attribution per firing, score lift "
                f"{a.score:+.3g} (rest {a.rest:+.3g})"
            )
            contrast += _marginals_html(a, name, top)
        blocks.append(
            f'<div class="qk">{where}'
            + (f"<ul>{pair_lines}</ul>" if pair_lines else "")
            + contrast
            + "</div>"
        )
    return "".join(blocks)


def _marginals_html(a: QKAttribution, name, top: int) -> str:
    """Each side's strongest units over every partner (``None`` is the bias)."""
    parts = []
    for side, marginals in (("query side", a.query_marginals), ("key side", a.key_marginals)):
        lines = "".join(
            f"<li>{name(node)}: "
            f'<span class="{"pos" if value > 0 else "neg"}">{value:+.3g}</span></li>'
            for node, value in sorted(marginals, key=lambda m: -abs(m[1]))[:top]
        )
        if lines:
            parts.append(f"<div>{side}:</div><ul>{lines}</ul>")
    return "".join(parts)


def _node_table_html(
    graph: Graph, labels: list[str], top_edges: int, drawn: set[int] | None = None
) -> str:
    scores, ranked_by = node_scores(graph)
    has_score = ranked_by != ACTIVATION  # activation has its own column
    csr = graph.edges.tocsr()
    csc = graph.edges.tocsc()
    layers = graph.layer.tolist()
    kinds = graph.kinds
    head = ["id", "kind", "layer", "pos", "label", "activation"]
    if has_score:
        head.append(ranked_by)
    head += ["top incoming", "top outgoing", "QK"]
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for i in _node_order(graph):
        pos = int(graph.pos[i])
        token = graph.token_strings[pos] if 0 <= pos < len(graph.token_strings) else ""
        span_in = slice(csr.indptr[i], csr.indptr[i + 1])  # row i: sources of i
        span_out = slice(csc.indptr[i], csc.indptr[i + 1])  # column i: targets of i
        incoming = _top(csr.indices[span_in], csr.data[span_in], top_edges)
        outgoing = _top(csc.indices[span_out], csc.data[span_out], top_edges)
        cells = [
            f'<td id="{node_anchor(graph.ids[i])}"><code>{escape(graph.ids[i])}</code></td>',
            f'<td class="kind-{kinds[i]}">{kinds[i]}</td>',
            f'<td class="num">{layers[i]}</td>',
            f'<td class="num" title="{escape(token)}">{pos}</td>',
            f"<td>{escape(labels[i])}</td>",
            # none for a kind whose activation is a convention (graph.json's and the panel's)
            '<td class="num"></td>'
            if Kind(int(graph.kind[i])) in CONVENTION_ACTIVATION
            else f'<td class="num">{float(graph.activation[i]):.4g}</td>',
        ]
        if has_score:
            cells.append(f'<td class="num">{scores[i]:.4g}</td>')
        cells += [
            f"<td>{_edge_list(graph, labels, incoming)}</td>",
            f"<td>{_edge_list(graph, labels, outgoing)}</td>",
            f"<td>{_qk_html(graph, labels, graph.qk_for(i), top_edges)}</td>",
        ]
        undrawn = drawn is not None and i not in drawn
        rows.append(('<tr class="undrawn">' if undrawn else "<tr>") + "".join(cells) + "</tr>")
    return '<table class="nodes">\n' + "\n".join(rows) + "\n</table>"
