"""Graphviz and HTML reports on small hand-built graphs (no model, milliseconds each)."""

from __future__ import annotations

import dataclasses
import html
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import torch
from report_graphs import NASTY, make_big_graph, make_graph

from circuits.graph import Graph, LogitRecord
from circuits.neuronpedia import to_json
from reports import graphviz as gv
from reports import labels, layout
from reports.html import box_text, write_html

HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz `dot` is not installed")


@pytest.fixture
def graph() -> Graph:
    return make_graph()


def drawn_edges(dot: str) -> list[tuple[str, str, str]]:
    """(source, target, attribute text) of every visible solid edge statement."""
    found = re.findall(r'^  "([^"]+)" -> "([^"]+)" \[(.*)\];$', dot, flags=re.M)
    return [e for e in found if 'style="invis"' not in e[2] and 'style="dashed"' not in e[2]]


def qk_drawn(dot: str) -> set[tuple[str, str, str]]:
    found = re.findall(r'^  "([^"]+)" -> "([^"]+)" \[(.*)\];$', dot, flags=re.M)
    return {
        (a, b, re.search(r'label="(\w)"', attrs).group(1))
        for a, b, attrs in found
        if 'style="dashed"' in attrs
    }


# ----------------------------------------------------------------------------------------- DOT
def test_dot_escape_makes_any_text_a_literal_label():
    assert gv.dot_escape('a"b\\c\nd&e\x00f\tg') == 'a\\"b\\\\c\\nd&amp;ef g'
    assert gv.dot_escape("Ġ ☃ <|bos|>") == "Ġ ☃ <|bos|>"
    # a right-to-left override would draw the rest of the label backwards: shown, not obeyed
    assert gv.dot_escape("ab\u202ecd") == "ab<U+202E>cd"


def test_html_escape_shows_bidirectional_controls():
    from reports.html import escape

    assert escape("x\u2066y\u202e<") == "x&lt;U+2066&gt;y&lt;U+202E&gt;&lt;"
    assert escape("plain Ġ ☃") == "plain Ġ ☃"


def drawn_nodes(dot: str) -> dict[str, str]:
    """Node id -> attribute text of every graph node statement (not the axis labels)."""
    found = re.findall(r'^  "([^"]+)" \[(.*)\];$', dot, flags=re.M)
    return {name: attrs for name, attrs in found if 'shape="plaintext"' not in attrs}


def attr(attrs: str, name: str) -> str:
    return re.search(rf'(?<![a-z]){name}="((?:[^"\\]|\\.)*)"', attrs).group(1)


def positions(dot: str) -> dict[str, tuple[float, float]]:
    return {
        name: tuple(float(v) for v in attr(attrs, "pos").rstrip("!").split(","))
        for name, attrs in drawn_nodes(dot).items()
    }


def test_dot_has_every_connected_node_and_every_nonzero_edge(graph):
    dot = gv.to_dot(graph)
    # Everything fits the default budget; only E_0_0 is left out, whose one edge is a zero.
    assert set(drawn_nodes(dot)) == set(graph.ids) - {"E_0_0"}
    edges = {(a, b) for a, b, _ in drawn_edges(dot)}
    coo = graph.edges.tocoo()
    expected = {
        (graph.ids[s], graph.ids[t])
        for t, s, w in zip(coo.row, coo.col, coo.data, strict=True)
        if w != 0
    }
    assert edges == expected and len(drawn_edges(dot)) == len(expected) == 12
    # Quotes balance on every line: no label text can end a string early.
    for line in dot.splitlines():
        assert len(re.findall(r'(?<!\\)(?:\\\\)*"', line)) % 2 == 0, line
    assert dot.startswith("digraph") and 'layout="neato"' in dot
    assert all(attr(a, "pos").endswith("!") for a in drawn_nodes(dot).values())  # pinned
    assert "12 of 13 nodes, 12 of 12 edges\\n" in dot  # nothing trimmed: no "top nodes by"


def test_dot_escapes_labels_and_tooltips(graph):
    dot = gv.to_dot(graph)
    nodes = drawn_nodes(dot)
    full = labels.node_label(graph, graph.ids.index("1_17_1"))
    escaped = gv.dot_escape(full)
    assert "\n" not in escaped and NASTY not in dot and repr(NASTY) not in dot
    # the full label, its backslashes doubled once more: Graphviz reads a tooltip twice
    assert gv.dot_escape(full.replace("\\", "\\\\")) in attr(nodes["1_17_1"], "tooltip")
    assert attr(nodes["1_17_1"], "label") == gv.dot_escape('F17\n↑\'say "hi" \\\\N…')
    assert attr(nodes["E_4_1"], "label") == "'Ġ\\\"q\\\"'@1"  # token string with a quote
    assert attr(nodes["E_9_3"], "label") == "'&amp;x'@3"
    assert re.search(r"label=<<TABLE[^\n]*>L0 transcoder</TD>", dot)  # the stage names


def test_short_labels_from_fields():
    g = make_graph()
    g.token_text |= {101: " F", 102: "'s", 11: " Julia", 200: " Veafruviand", 201: " Tom"}
    g.attends[g.ids.index("2_2_3")] = 1
    g.logit_targets[1] = LogitRecord(200, 201, 0.1)
    g.value[g.ids.index("5_7_3")] = 2.554
    g.index[g.ids.index("5_7_3")] = 200
    del g.ids  # the second logit became a difference: ids are derived again
    g.logit_targets[0].probability = 0.997
    short = {node: labels.short_label(g, i) for i, node in enumerate(g.ids)}
    # the key it reads (Graph.attends), as the full label and its first QK record say
    # (0_5_2's key brings 40% of its activation, under SPREAD_SHARE: said before the arrow)
    assert short["0_5_2"] == "H5\n40%→'Ġ\"q\"'@1" and short["2_2_3"] == "H2\n40%→'Ġ\"q\"'@1"
    assert " reads 'Ġ\"q\"'@1" in labels.node_label(g, g.ids.index("0_5_2"))
    assert g.qk_for(g.ids.index("0_5_2"))[0].key == 1
    g.attends[g.ids.index("0_5_2")] = 2  # another key: the label follows it, not the record
    assert labels.short_label(g, g.ids.index("0_5_2")) == "H5\n40%→'a\\\\b'@2"
    assert short["1_3_3"] == "F3\n↑' F'" and short["3_9_3"] == 'F9\n↑"\'s"'
    assert short["1_-1_3"] == "err" and short["E_0_0"] == "'<|bos|>'@0"
    assert short["5_11_3"] == "' Julia'\np=0.997"
    assert short["5_200-201_3"] == "' Veafruviand' - …\n= 2.554"
    # the full label gives a difference's two probabilities where the record has them (a review
    # found the page's node giving none), and the model's in sparse mode
    diff = g.ids.index("5_200-201_3")
    assert labels.node_label(g, diff) == "logit ' Veafruviand' - ' Tom' = 2.554"
    g.logit_targets[1] = LogitRecord(200, 201, 0.1, None, 0.0025)
    assert labels.node_label(g, diff).endswith("= 2.554 (p 0.100, 0.003)")
    g.logit_targets[1] = LogitRecord(200, 201, 0.1, 0.137, 0.0025, 0.024)
    assert labels.node_label(g, diff).endswith("= 2.554 (p 0.100, 0.003; model 0.137, 0.024)")
    assert labels.short_label(g, diff) == short["5_200-201_3"]  # the box keeps its value
    assert short["1_17_1"] == 'F17\n↑\'say "hi" \\\\N…'  # a long token, cut
    for text in short.values():
        assert text.count("\n") <= 1
        assert all(len(line) <= labels.LOGIT_CHARS for line in text.split("\n")), text


def test_layout_rows_by_stage_columns_by_position(graph):
    xy = positions(gv.to_dot(graph))
    stage = dict(zip(graph.ids, graph.stage.tolist(), strict=True))
    for a in xy:
        for b in xy:
            if stage[a] < stage[b]:
                assert xy[a][1] < xy[b][1], (a, b)  # bottom to top
    # Left to right by position, within a stage and across stages.
    assert xy["1_17_1"][0] < xy["1_3_3"][0] and xy["1_17_1"][0] < xy["1_-1_3"][0]
    assert xy["E_4_1"][0] == pytest.approx(xy["1_17_1"][0])  # one node over its token
    assert xy["E_4_1"][0] < xy["E_6_2"][0] < xy["E_9_3"][0]
    # The stage names run top down in one plaintext node.
    names = re.findall(r">([^<>]+)</TD>", gv.to_dot(graph))
    assert names == [
        "logits",
        "L1 transcoder",
        "L1 Lorsa",
        "L0 transcoder",
        "L0 Lorsa",
        "embeddings",
    ]


def test_edge_colour_follows_sign_and_width_follows_strength(graph):
    edges = {(a, b): attrs for a, b, attrs in drawn_edges(gv.to_dot(graph))}
    assert f'color="{gv.POSITIVE_COLOR}"' in edges[("1_3_3", "3_9_3")]
    assert f'color="{gv.NEGATIVE_COLOR}"' in edges[("3_9_3", "5_7_3")]
    widths = {k: float(re.search(r'penwidth="([\d.]+)"', v).group(1)) for k, v in edges.items()}
    assert widths[("3_9_3", "5_7_3")] == pytest.approx(gv.MAX_PENWIDTH)  # |-4| is the largest
    assert widths[("1_3_3", "3_9_3")] == pytest.approx(
        gv.MIN_PENWIDTH + (gv.MAX_PENWIDTH - gv.MIN_PENWIDTH) * 3 / 4, abs=1e-3
    )
    assert min(widths.values()) >= gv.MIN_PENWIDTH


def test_max_edges_keeps_the_strongest(graph):
    kept = {(a, b) for a, b, _ in drawn_edges(gv.to_dot(graph, max_edges=3))}
    assert kept == {("3_9_3", "5_7_3"), ("1_3_3", "3_9_3"), ("3_9_3", "5_11_3")}
    # Widths are relative to what is drawn: the strongest kept edge is the widest.
    only = drawn_edges(gv.to_dot(graph, max_edges=1))
    assert len(only) == 1 and f'penwidth="{gv.MAX_PENWIDTH:.3f}"' in only[0][2]
    none = gv.to_dot(graph, max_edges=0)
    assert drawn_edges(none) == [] and "0 of 12 edges (top nodes by influence" in none
    # Embeddings stay only where a QK edge still leaves them; heads, features, logits stay.
    assert {n for n in drawn_nodes(none) if n.startswith("E_")} == {"E_4_1", "E_6_2"}
    assert len(drawn_nodes(none)) == 9 + 2
    assert len(drawn_edges(gv.to_dot(graph, max_edges=100))) == 12
    assert len(drawn_edges(gv.to_dot(graph, max_edges=None))) == 12
    for bad in (-1, "all"):
        with pytest.raises(ValueError, match="max_edges"):
            gv.to_dot(graph, max_edges=bad)
    with pytest.raises(ValueError, match="max_nodes"):
        gv.to_dot(graph, max_nodes=-1)


def test_qk_edges_are_dashed_and_skip_bias_and_pruned_nodes(graph):
    dot = gv.to_dot(graph)
    assert qk_drawn(dot) == {
        ("E_6_2", "0_5_2", "q"),
        ("E_4_1", "0_5_2", "k"),
        ("1_3_3", "2_2_3", "q"),  # "1_99_3" is not in the graph, the bias is never drawn
        ("1_17_1", "2_2_3", "k"),
    }
    for line in dot.splitlines():
        if 'style="dashed"' in line:
            assert f'color="{gv.QK_FAINT}"' in line and 'constraint="false"' in line
    # Each side's edge carries its node's own total (its marginal), not the one pair's term
    # on both (a review: +2 and +2 for the pair E_6_2 x E_4_1); a node the record holds no
    # total of keeps the pair's term, said to be one.
    values = {(graph.ids[e.source], e.side): (e.value, e.pair_term) for e in layout.qk_edges(graph)}
    assert values["E_6_2", "q"] == (pytest.approx(2.2), False)
    assert values["E_4_1", "k"] == (pytest.approx(2.6), False)
    assert values["1_3_3", "q"] == (pytest.approx(1.0), False)
    record = graph.qk[0]
    record.key_marginals = []
    (edge,) = [e for e in layout.qk_edges(graph) if graph.ids[e.source] == "E_4_1"]
    assert (edge.value, edge.pair_term) == (pytest.approx(2.0), True)
    assert "one pair's term" in gv.to_dot(graph)
    record.key_marginals = [("E_4_1", 2.6)]
    # A node left out of the drawing counts as pruned: the side falls back to a drawn node.
    qk = layout.qk_edges(graph, [i for i, n in enumerate(graph.ids) if n != "1_3_3"])
    assert {(graph.ids[e.source], graph.ids[e.target], e.side) for e in qk} == {
        ("E_6_2", "0_5_2", "q"),
        ("E_4_1", "0_5_2", "k"),
        ("1_17_1", "2_2_3", "k"),  # no drawn node left on the query side of head 2
    }
    # No QK records: no QK edges.
    graph.qk = []
    assert qk_drawn(gv.to_dot(graph)) == set()


def test_dot_of_an_empty_graph_is_valid():
    g = make_graph().subgraph(torch.zeros(13, dtype=torch.bool))
    dot = gv.to_dot(g)
    assert drawn_edges(dot) == [] and drawn_nodes(dot) == {} and "0 of 0 nodes" in dot
    if HAS_DOT:
        subprocess.run(["dot", "-Tsvg"], input=dot, text=True, check=True, capture_output=True)


@needs_dot
def test_dot_parses_and_svg_shows_labels_literally(graph):
    proc = subprocess.run(
        ["dot", "-Tsvg"], input=gv.to_dot(graph), text=True, capture_output=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    svg = proc.stdout
    # Graphviz writes the node name as each node's <title>.
    for name in set(graph.ids) - {"E_0_0"}:
        assert f"<title>{name.replace('-', '&#45;')}</title>" in svg, name
    assert ">↑&#39;say &quot;hi&quot; \\\\N…</text>" in svg  # the short label, literally
    assert "line2 Ġ ☃ &lt;|bos|&gt;&#39;&#10;" in svg  # the full label, in the tooltip
    # ... with its backslashes: Graphviz reads a tooltip's escapes twice (one was lost)
    tooltip = "&#45;&gt; &#39;say &quot;hi&quot; \\\\N &lt;b&gt; &amp; &amp;lt; co\\nline2"
    assert f'xlink:title="1_17_1 (transcoder, layer 0, pos 1)&#10;L0 feature 17 @1 {tooltip}' in svg
    assert svg.count('stroke-dasharray="5,2"') >= 4  # the QK edges


# ------------------------------------------------------------------------------ budget, layout
@pytest.fixture
def big() -> Graph:
    return make_big_graph()


def inner(graph: Graph, names) -> list[str]:
    kinds = dict(zip(graph.ids, graph.kinds, strict=True))
    return sorted(n for n in names if kinds[n] in ("lorsa", "transcoder", "error"))


def test_budget_keeps_the_most_influential_every_logit_and_used_embeddings(big):
    dot = gv.to_dot(big, max_nodes=10)
    nodes, edges = drawn_nodes(dot), drawn_edges(dot)
    ranked = sorted(inner(big, big.ids), key=lambda n: -float(big.influence[big.ids.index(n)]))
    assert inner(big, nodes) == sorted(ranked[:10])
    assert {"5_7_20", "5_9_20"} <= set(nodes)  # every logit, however low its influence
    sources = {a for a, _, _ in edges}
    embeddings = {n for n in nodes if n.startswith("E_")}
    assert embeddings and embeddings <= sources  # no embedding without a drawn edge
    assert all(a in nodes and b in nodes for a, b, _ in edges)
    # Edges: the strongest among the candidates, EDGES_PER_NODE per possible node.
    s = layout.select(big, max_nodes=10, max_edges=7)
    keep = {big.ids.index(n) for n in ranked[:10]} | {
        i for i, k in enumerate(big.kinds) if k in ("logit", "embedding")
    }
    among = [e for e in layout.strongest_edges(big) if e.source in keep and e.target in keep]
    pool = sorted((abs(e.weight) for e in among), reverse=True)
    assert [abs(e.weight) for e in s.edges] == pool[:7]
    n_emb_sources = len({e.source for e in layout.select(big, max_nodes=10, max_edges=None).edges
                         if big.kinds[e.source] == "embedding"})  # fmt: skip
    assert len(edges) == min(len(pool), layout.EDGES_PER_NODE * (10 + 2 + n_emb_sources))


def test_a_head_or_feature_target_is_drawn_however_low_its_influence(big):
    ranked = sorted(inner(big, big.ids), key=lambda n: -float(big.influence[big.ids.index(n)]))
    lowest = big.ids.index(ranked[-1])
    assert big.ids[lowest] not in {big.ids[i] for i in layout.select(big, max_nodes=10).nodes}
    big.target_weight[lowest] = 0.5  # traced from it (``--target-node``), beside the logits
    assert lowest in layout.select(big, max_nodes=10).nodes
    assert ranked[-1] in drawn_nodes(gv.to_dot(big, max_nodes=10))
    from reports.viewer import viewer_data

    data = viewer_data(big)
    flagged = [n["id"] for n in data["nodes"] if n.get("target")]
    assert flagged == [big.ids[lowest]]


def test_default_budget_and_caption_counts(big):
    dot = gv.to_dot(big)
    nodes, edges = drawn_nodes(dot), drawn_edges(dot)
    assert len(inner(big, nodes)) == layout.MAX_NODES
    assert len(edges) <= layout.EDGES_PER_NODE * len(nodes)
    caption = attr(re.search(r"^  graph \[(.*)\];$", dot, flags=re.M).group(1), "label")
    assert (
        f"\\n{len(nodes)} of {big.n_nodes} nodes, {len(edges)} of {big.n_edges} edges "
        "(top nodes by influence, strongest edges; all in the HTML table)\\n"
    ) in caption
    assert 'splines="true"' in dot  # small enough to route edges around nodes

    # Without influence the ranking falls back to |activation|.
    plain = make_big_graph(influence=False)
    nodes = drawn_nodes(gv.to_dot(plain, max_nodes=5))
    ranked = sorted(
        inner(plain, plain.ids), key=lambda n: -float(plain.activation[plain.ids.index(n)])
    )
    assert inner(plain, nodes) == sorted(ranked[:5])
    assert "top nodes by |activation|" in gv.to_dot(plain)

    # No budget: every head, feature and error, every edge; too big to route, so curved.
    everything = gv.to_dot(big, max_nodes=None, max_edges=None)
    assert len(drawn_edges(everything)) == big.n_edges
    assert inner(big, drawn_nodes(everything)) == inner(big, big.ids)
    assert 'splines="curved"' in everything


def test_layout_stacks_big_cells_and_keeps_the_drawing_square(big):
    dot = gv.to_dot(big)
    xy, nodes = positions(dot), drawn_nodes(dot)
    size = {n: (float(attr(a, "width")), float(attr(a, "height"))) for n, a in nodes.items()}
    # The last position holds ~60 nodes: they stack instead of making rows 20 nodes long.
    by_row: dict[float, list[str]] = {}
    for n, (_, y) in xy.items():
        by_row.setdefault(y, []).append(n)
    assert max(len(r) for r in by_row.values() if not r[0].startswith("E_")) < 12
    xs, ys = [x for x, _ in xy.values()], [y for _, y in xy.values()]
    aspect = (max(xs) - min(xs) + 1.5) / (max(ys) - min(ys) + 1.0)
    assert 0.6 < aspect < 2.2, aspect
    for row in by_row.values():  # no two nodes of one row overlap
        row.sort(key=lambda n: xy[n][0])
        for a, b in zip(row, row[1:], strict=False):
            assert xy[b][0] - xy[a][0] >= (size[a][0] + size[b][0]) / 2, (a, b)
    # Columns only where something is drawn: no width for positions with nothing.
    small = gv.to_dot(big, max_nodes=5, max_edges=8)
    used = {big.pos[big.ids.index(n)].item() for n in drawn_nodes(small)}
    lay = layout.layout(big, layout.select(big, max_nodes=5, max_edges=8))
    assert set(lay.columns) == used and len(used) < 10
    xs = sorted(x for x, _ in positions(small).values())
    assert xs[-1] - xs[0] < 3 * len(used)  # inches: no gaps for the positions in between


@needs_dot
def test_dot_draws_the_default_budget_cleanly(big):
    """How fast is a benchmark (``benchmarks/trace_limits.py``); here only that it draws."""
    proc = subprocess.run(["dot", "-Tsvg"], input=gv.to_dot(big), text=True, capture_output=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


# -------------------------------------------------------------------------------------- render
def test_render_writes_dot_and_every_format(tmp_path, graph):
    if not HAS_DOT:
        pytest.skip("Graphviz `dot` is not installed")
    stem = tmp_path / "out" / "graph.v2"
    paths = gv.render(gv.to_dot(graph), stem)
    assert [p.name for p in paths] == [f"graph.v2.{x}" for x in ("dot", "svg", "pdf", "png")]
    assert paths[1].read_text(encoding="utf-8").lstrip().startswith("<?xml")
    assert paths[2].read_bytes().startswith(b"%PDF")
    assert paths[3].read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in stem.parent.iterdir()) == sorted(p.name for p in paths)


def test_render_without_dot_writes_only_the_dot_file(tmp_path, monkeypatch, graph):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert not gv.dot_available()
    text = gv.to_dot(graph)
    paths = gv.render(text, tmp_path / "g")
    assert paths == [tmp_path / "g.dot"]
    assert [p.name for p in tmp_path.iterdir()] == ["g.dot"]
    assert paths[0].read_text(encoding="utf-8") == text
    message = gv.dot_missing_message(paths[0])
    assert "apt-get install graphviz" in message and f"dot -Tsvg {tmp_path / 'g'}.dot" in message
    assert "FILE" in gv.DOT_MISSING_MESSAGE


def test_dot_reads_the_text_as_utf8_whatever_the_locale(tmp_path):
    """``dot`` reads the DOT text on stdin; under a C locale a text-mode pipe would have sent
    '?' for every non-ASCII character (the legend's minus sign, arrows, names)."""
    if not shutil.which("dot"):
        pytest.skip("Graphviz `dot` is not installed")
    import os
    import sys

    script = (  # ASCII source: the label's characters are escapes the child decodes
        "import sys\n"
        "from reports import graphviz as gv\n"
        "gv.render('digraph { a [label=\"\\u2212 \\u2192 \\u00e9\"] }', sys.argv[1], ['svg'])\n"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "g")], env=env, check=True)
    assert "\u2212 \u2192 \u00e9" in (tmp_path / "g.svg").read_text(encoding="utf-8")


def test_render_reports_the_first_line_of_a_dot_failure(tmp_path, monkeypatch):
    fake = tmp_path / "fake-dot"
    fake.write_text("#!/bin/sh\necho 'Error: syntax error in line 1' >&2\necho more >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(gv, "dot_binary", lambda: str(fake))
    with pytest.raises(gv.RenderError, match=r"^dot -Tsvg failed: Error: syntax error in line 1$"):
        gv.render("digraph {", tmp_path / "bad", formats=("svg",))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("bad")] == ["bad.dot"]
    with pytest.raises(ValueError, match="format"):
        gv.render("digraph {}", tmp_path / "bad", formats=("svg -o /x",))
    # Found by the fourth fuzz pass: Graphviz 2.43 crashes on some large graphs, opening its
    # message with a bare "**"; the line that says something is shown, with the signal.
    fake.write_text("#!/bin/sh\necho '**' >&2\necho 'Gts:ERROR:cdt.c:887: assertion failed' >&2"
                    "\nkill -ABRT $$\n")  # fmt: skip
    with pytest.raises(gv.RenderError) as info:
        gv.render("digraph {}", tmp_path / "crash", formats=("svg",))
    assert str(info.value) == "dot -Tsvg failed: crashed (signal 6): Gts:ERROR:cdt.c:887: " \
        "assertion failed"  # fmt: skip
    assert info.value.crashed
    # a dot that never answers is killed after DOT_SECONDS (a review: it held the trace, its
    # work done, until the reviewer's own timeout), and says so; nothing half-written stays
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    monkeypatch.setattr(gv, "DOT_SECONDS", 1)
    with pytest.raises(gv.RenderError, match=r"^dot -Tsvg failed: no answer in 1 s \(killed\)$"):
        gv.render("digraph {}", tmp_path / "wedged", formats=("svg",))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("wedged")] == ["wedged.dot"]


def test_a_drawing_graphviz_crashes_routing_is_drawn_with_curved_edges(tmp_path, monkeypatch):
    """Debian's Graphviz 2.43 aborts routing the README's own example around its nodes (a
    reviewer: no SVG after the main command): the set is drawn again with curved edges, and a
    note says so. A `dot` that crashes on routed edges alone stands in for it."""
    from reports.outputs import write_graph_outputs

    fake = tmp_path / "fake-dot"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "text = sys.stdin.read()\n"
        "if 'splines=true' in text or 'splines=\"true\"' in text:\n"
        "    print('Gts:ERROR:cdt.c:887: assertion failed', file=sys.stderr, flush=True)\n"
        "    os.abort()\n"
        "out = sys.argv[sys.argv.index('-o') + 1]\n"
        "open(out, 'w').write('<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>')\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(gv, "dot_binary", lambda: str(fake))
    graph = make_graph()
    assert 'splines="true"' in gv.to_dot(graph) or "splines=true" in gv.to_dot(graph)
    written = write_graph_outputs(graph, tmp_path / "out", ["svg"])
    assert tmp_path / "out" / "graph.svg" in written.paths
    assert any(n.startswith("Graphviz crashed routing the edges around the nodes (crashed "
                            "(signal 6)") and n.endswith("drawn with curved edges instead")
               for n in written.notes), written.notes  # fmt: skip
    assert "curved" in (tmp_path / "out" / "graph.dot").read_text()


def test_a_drawing_graphviz_crashes_routing_once_is_routed_on_a_second_try(tmp_path, monkeypatch):
    """Graphviz 2.43's crash routing a drawing comes and goes from run to run of the same
    file (6 of 20 runs of the README's induction trace): one crash drew every such trace's
    edges curved. A `dot` that crashes on its first run alone stands in for it: the drawing is
    routed, no note."""
    from reports.outputs import write_graph_outputs

    fake, runs = tmp_path / "fake-dot", tmp_path / "runs"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "text = sys.stdin.read()\n"
        f"runs = {str(runs)!r}\n"
        "n = int(open(runs).read()) if os.path.exists(runs) else 0\n"
        "open(runs, 'w').write(str(n + 1))\n"
        "if n == 0:\n"
        "    os.abort()\n"
        "out = sys.argv[sys.argv.index('-o') + 1]\n"
        "open(out, 'w').write('<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>')\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(gv, "dot_binary", lambda: str(fake))
    written = write_graph_outputs(make_graph(), tmp_path / "out", ["svg"])
    assert tmp_path / "out" / "graph.svg" in written.paths
    assert not any("crashed" in n for n in written.notes), written.notes
    assert runs.read_text() == "2"
    assert "curved" not in (tmp_path / "out" / "graph.dot").read_text()


# ---------------------------------------------------------------------------------------- HTML
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source", "area", "base"}


class StrictParser(HTMLParser):
    """Fails on any tag closed out of order or left open (SVG's ``<x/>`` is fine)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse_html(text: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    return parser


def svg_of(graph: Graph) -> str:
    if HAS_DOT:
        return subprocess.run(
            ["dot", "-Tsvg"], input=gv.to_dot(graph), text=True, capture_output=True, check=True
        ).stdout
    # What dot writes, in miniature: a declaration, a doctype, then the drawing.
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n<!DOCTYPE svg>\n'
        '<svg width="10pt" height="10pt"><g class="graph"><title>x</title>'
        '<polygon points="0,0 1,1"/></g></svg>\n'
    )


def test_html_page_is_well_formed_and_lists_every_node(tmp_path, graph):
    path = tmp_path / "graph.html"
    write_html(graph, path, svg_of(graph), top_edges=2)
    text = path.read_text(encoding="utf-8")
    assert not path.with_name("graph.html.tmp").exists()
    parsed = parse_html(text)
    assert "<svg" in text and "<?xml" not in text and "<!DOCTYPE svg" not in text
    # Self-contained: the scripts are inline, nothing is fetched (no src, link, import, url()).
    assert re.findall(r"<script[^>]*>", text) == [
        '<script type="application/json" id="graph-data">',
        "<script>",
    ]
    for fetch in ("src=", "<link", "@import", "url(", "fetch(", "XMLHttpRequest"):
        assert fetch not in text, fetch
    body = "".join(parsed.text)
    assert repr(NASTY) in body and 'Ġ"q"a\\b&x' in body and "toy <tiny>" in body
    assert "replacement score" in body and "0.75" in body and "completeness score" in body
    assert NASTY not in text  # only the escaped form is in the markup

    header, *nodes = [r for r in parsed.rows if len(r) >= 9]  # the node table
    assert header[:7] == ["id", "kind", "layer", "pos", "label", "activation", "influence"]
    assert [r[0] for r in nodes] == list(graph.ids)  # influence falls along the node order
    assert "every node, most influential first" in text
    by_id = {r[0]: dict(zip(header, r, strict=True)) for r in nodes}
    # Incoming to 3_9_3: 3.0, 1.25, -0.5 -> the top two; outgoing from 3_9_3: -4.0 then 2.5.
    assert by_id["3_9_3"]["top incoming"] == "1_3_3 (+3)2_2_3 (+1.25)"
    assert by_id["3_9_3"]["top outgoing"] == "5_7_3 (-4)5_11_3 (+2.5)"
    assert by_id["E_0_0"]["top outgoing"] == ""  # the explicit zero is not listed
    # a token's, an error's or a constant's activation is 1 by convention: no number, as in
    # graph.json and the page's panel (a review read "activation 1" for a token here)
    kinds = dict(zip(graph.ids, graph.kinds, strict=True))
    for name, row in by_id.items():
        if kinds[name] in ("embedding", "error", "bias"):
            assert row["activation"] == "", name
    assert by_id["E_4_1"]["activation"] == "" and by_id["0_-1_2"]["activation"] == ""
    assert by_id["0_5_2"]["activation"] == f"{float(graph.activation[4]):.4g}"
    assert by_id["5_11_3"]["activation"] == f"{float(graph.activation[11]):.4g}"  # a logit's
    qk = by_id["2_2_3"]["QK"]
    assert "key pos 1" in qk and "attention 0.6" in qk
    # a pruned side by the label its record's fields give, not its bare id (1_99_3)
    assert "L0 feature 99 @3 × 1_17_1: -4" in qk and "1_3_3 × bias: +1.5" in qk
    assert "bias × bias" not in qk  # top_edges=2 pairs
    assert by_id["0_5_2"]["QK"].startswith('key pos 1 Ġ"q", attention 0.8')
    assert by_id["1_3_3"]["QK"] == ""
    for name in graph.ids:
        assert f'id="node-{name}"' in text


def test_html_without_svg_or_influence(tmp_path):
    graph = make_graph(influence=False)
    path = tmp_path / "g.html"
    write_html(graph, path, None, title="My <circuit>")
    text = path.read_text(encoding="utf-8")
    parsed = parse_html(text)
    assert "<title>My &lt;circuit&gt;</title>" in text
    assert "dot -Tsvg FILE.dot -o FILE.svg" in "".join(parsed.text) and "<svg" not in text
    rows = [r for r in parsed.rows if len(r) >= 9]
    assert "influence" not in rows[0]
    assert [r[0] for r in rows[1:]] == list(graph.ids)  # stage order
    # and said so: "most influential first" headed a downstream global graph's stage order
    assert "every node, in stage order (" in text and "most influential first (" not in text
    with pytest.raises(ValueError, match="svg"):
        write_html(graph, path, "not a drawing")


def test_html_greys_out_the_nodes_the_drawing_leaves_out(tmp_path, graph):
    path = tmp_path / "g.html"
    svg = '<svg width="10pt" height="10pt"></svg>'
    drawn = layout.select(graph, max_nodes=None)
    shown = [graph.ids.index("3_9_3"), graph.ids.index("1_-1_3")]
    write_html(graph, path, svg, dataclasses.replace(drawn, nodes=shown))
    text = path.read_text(encoding="utf-8")
    parse_html(text)
    undrawn = set(re.findall(r'<tr class="undrawn"><td id="node-([^"]+)"', text))
    assert undrawn == set(graph.ids) - {"3_9_3", "1_-1_3"}
    assert "The static drawing shows 2 of 13 nodes" in text
    # Without a selection the page starts from the default budget (``layout.select``): that
    # leaves out only E_0_0, whose one edge is a zero.
    write_html(graph, path, svg_of(graph))
    text = path.read_text(encoding="utf-8")
    assert re.findall(r'<tr class="undrawn"><td id="node-([^"]+)"', text) == ["E_0_0"]
    if HAS_DOT:  # the real drawing leaves out only E_0_0, whose one edge is a zero
        write_html(graph, path, svg_of(graph), layout.select(graph))
        text = path.read_text(encoding="utf-8")
        assert re.findall(r'<tr class="undrawn"><td id="node-([^"]+)"', text) == ["E_0_0"]
        assert "The static drawing shows 12 of 13 nodes" in text


def test_html_has_no_raw_control_characters(tmp_path):
    graph = make_graph()
    graph.prompt = "bell\x07 escape\x1b[31m nul\x00 tab\tok"
    graph.token_strings = ["<|bos|>", "\x07", "\x1b", "\x00"]
    graph.token_text[100] = "feature \x08 text"
    path = tmp_path / "g.html"
    write_html(graph, path, None)
    text = path.read_text(encoding="utf-8")
    parse_html(text)
    assert not any(ord(ch) < 32 and ch not in "\n\t" for ch in text)
    assert "bell\\x07 escape\\x1b[31m nul\\x00" in text


def test_a_selection_of_another_graph_is_refused(tmp_path):
    """Found by a fuzz pass: ``write_html`` and ``to_dot`` drew another graph's selection (its
    node indices and edges) onto this graph's nodes."""
    from reports.graphviz import to_dot
    from reports.layout import select

    graph, other = make_graph(), make_big_graph()
    for draw in (lambda: to_dot(graph, select(other)),
                 lambda: write_html(graph, tmp_path / "x.html", None, select(other))):  # fmt: skip
        with pytest.raises(ValueError, match="the selection is of another graph"):
            draw()
    assert not (tmp_path / "x.html").exists()
    assert to_dot(graph, select(graph))


def test_labels_never_read_a_node_from_the_end(tmp_path):
    """Found by a fuzz pass: node_label(graph, -127) was node 0's label. Paths may be text."""
    from circuits.graph_file import load_graph, save_graph
    from reports.labels import node_label, short_label

    graph = make_graph()
    for label in (node_label, short_label):
        for bad in (-1, graph.n_nodes, True):
            with pytest.raises(ValueError, match="node (-1|True|\\d+) is outside|must be an int"):
                label(graph, bad)
    save_graph(graph, str(tmp_path / "g.safetensors"))  # a str path (was an AttributeError)
    assert load_graph(str(tmp_path / "g.safetensors")).ids == graph.ids


def test_a_logit_differences_json_label_gives_its_positive_tokens_probability():
    """A difference has no probability of its own: its circuit-tracer ``clerp`` and
    ``token_prob`` give its positive token's (the token in ``feature``), and the label says
    whose, while keeping the "(p=<number>)" that circuit-tracer's page parses."""
    g = make_graph()
    g.token_text |= {11: " Julia", 200: " Monday", 201: " Saturday"}
    g.logit_targets[1] = LogitRecord(200, 201, 0.9967)
    g.value[g.ids.index("5_7_3")] = 7.374
    g.index[g.ids.index("5_7_3")] = 200
    del g.ids  # the second logit became a difference: ids are derived again
    g.logit_targets[0].probability = 0.997
    nodes = {n["node_id"]: n for n in to_json(g, labels.node_labels(g))["nodes"]}
    single, diff = nodes["5_11_3"], nodes["5_200-201_3"]
    assert single["clerp"] == "Output ' Julia' (p=0.997)" and single["token_prob"] == 0.997
    assert diff["clerp"] == "Output ' Monday' - ' Saturday' = 7.374; ' Monday' (p=0.997)"
    assert diff["feature"] == 200 and diff["token_prob"] == pytest.approx(0.9967)
    for node in (single, diff):  # what circuit-tracer's page reads: d.clerp.split('(p=')...
        parsed = float(node["clerp"].split("(p=")[1].split(")")[0])
        assert parsed == pytest.approx(node["token_prob"], abs=5e-4)
    # a sparse graph's probability is the replacement's: the model's follows, after the ")"
    g.logit_targets[0].model_probability = 0.2
    sparse = {n["node_id"]: n for n in to_json(g, labels.node_labels(g))["nodes"]}["5_11_3"]
    assert sparse["clerp"] == "Output ' Julia' (p=0.997) model p=0.200"
    assert float(sparse["clerp"].split("(p=")[1].split(")")[0]) == 0.997
    # a difference's negative token's probability after the ")", and the model's for both;
    # a probability under 0.001 is not rounded to zero (a review read "model p=0.000")
    g.logit_targets[1] = LogitRecord(200, 201, 0.9967, 0.00015, 0.0025, 0.5)
    diff = {n["node_id"]: n for n in to_json(g, labels.node_labels(g))["nodes"]}["5_200-201_3"]
    assert diff["clerp"] == ("Output ' Monday' - ' Saturday' = 7.374; ' Monday' (p=0.997), "
                             "' Saturday' p=0.003 model p=0.00015 for ' Monday', 0.500 for "
                             "' Saturday'")  # fmt: skip
    assert float(diff["clerp"].split("(p=")[1].split(")")[0]) == 0.997


def test_a_grouped_view_and_odd_counts_are_refused_in_one_line(tmp_path, graph):
    """Found by a fuzz pass: a GroupedGraph where a Graph is expected (and a Graph given to
    top_paths) failed with an AttributeError deep inside; float budgets failed in a slice,
    max_nodes=nan drew everything, a string of formats was read as one format per letter, and
    to_json took non-string labels and feature_number(1.5, 3) gave 15.0."""
    from circuits.flows import top_paths
    from circuits.groups import auto_groups
    from circuits.neuronpedia import feature_number

    view = auto_groups(graph)
    path = tmp_path / "x.html"
    for call in (lambda: to_json(view, labels.node_labels(graph)),
                 lambda: labels.node_labels(view), lambda: gv.to_dot(view),
                 lambda: gv.to_dot(view, layout.select(graph)),
                 lambda: write_html(view, path)):  # fmt: skip
        with pytest.raises(TypeError, match=r"graph must be a circuits\.graph\.Graph, got a "
                           r"GroupedGraph \(a grouped view: pass its \.graph\)"):  # fmt: skip
            call()
    with pytest.raises(TypeError, match="view must be a circuits.groups.GroupedGraph, got a Graph"):
        top_paths(graph, graph.n_nodes - 1)
    for call, message in (
        (lambda: layout.select(graph, max_nodes=2.5), "max_nodes must be a non-negative integer"),
        (lambda: layout.select(graph, max_edges=2.5), "max_edges must be a non-negative integer"),
        (lambda: gv.to_dot(graph, max_nodes=float("nan")), "max_nodes must be a non-negative"),
        (lambda: write_html(graph, path, top_edges=2.5), "top_edges must be a non-negative"),
        (lambda: write_html(graph, path, top_edges=None), "top_edges must be a non-negative"),
        (lambda: gv.render("digraph {}", tmp_path / "r", "svg"), "formats must be a list"),
        (lambda: to_json(graph, list(range(graph.n_nodes))), "labels must be strings"),
        (lambda: feature_number(1.5, 3), "sublayer must be a non-negative integer, got 1.5"),
        (lambda: feature_number(0, -1), "index must be a non-negative integer, got -1"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            call()
    assert not path.exists() and not list(tmp_path.glob("r*"))
    assert layout.select(graph, max_nodes=2, max_edges=3).n_nodes == graph.n_nodes
    assert feature_number(2, 1) == 7


def test_a_small_probability_keeps_its_figures():
    """A reviewer's: ``--target ' Julia'`` printed ``p=0.000``, hiding the number a
    contrastive target's reader needs."""
    from circuits.graph import probability_words as probability

    assert [probability(p) for p in (0.9914, 0.0012, 2.13e-07, 0.0)] == [
        "0.991", "0.001", "2.1e-07", "0.000"
    ]  # fmt: skip


def test_a_graph_set_written_by_one_command_is_refused_by_the_other(tmp_path, graph):
    """A reviewer ran `circuits.global_graph --out` into a trace's folder: the trace's
    `mechanisms.json` and feature files were removed, each with a note, exit 0. The set record
    says which command wrote it, and the other one refuses that folder before any work, in one
    line, leaving it as it was; a rerun of the same command replaces its set as before."""
    from reports.outputs import GRAPH_SET, GRAPH_WRITERS, write_graph_outputs
    from toy_models.files import WriteError, earlier_set, set_record_name

    trace, global_graph = GRAPH_WRITERS
    out = tmp_path / "traced"

    def summary(directory):  # as the trace's `also` adds its summary to the set
        (directory / "mechanisms.json").write_text("{}")
        return [directory / "mechanisms.json"]

    write_graph_outputs(graph, out, [], by=trace, also=summary)
    record = out / set_record_name(GRAPH_SET.mark)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert '"by": "circuits.trace"' in record.read_text()
    calls = (
        lambda: earlier_set(out, GRAPH_SET.mark, GRAPH_SET.names, global_graph),
        lambda: write_graph_outputs(graph, out, [], by=global_graph),
    )
    refused = ("holds a set that circuits.trace wrote, which circuits.global_graph would "
               "replace; choose another --out")  # fmt: skip
    for call in calls:
        with pytest.raises(WriteError, match=refused):
            call()
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert "graph.json" in earlier_set(out, GRAPH_SET.mark, GRAPH_SET.names, trace)
    write_graph_outputs(graph, out, [], by=trace)  # its own command's rerun: replaced
    # a record written before commands were recorded is either command's to replace
    other = tmp_path / "older"
    write_graph_outputs(graph, other, [])
    assert '"by"' not in (other / set_record_name(GRAPH_SET.mark)).read_text()
    write_graph_outputs(graph, other, [], by=global_graph)
    with pytest.raises(ValueError, match="by must be one of"):
        write_graph_outputs(graph, tmp_path / "x", [], by="someone")


def test_error_findings_skip_groups_without_tokens_and_rare_roles():
    """A review: a family with no tokens (group FVU NaN, as ``check_results`` allows) listed
    first won ``max`` and was printed as the worst family; no role above 0.5% of the tokens
    raised. Neither is named now; the rest of the finding stays."""
    from reports.errors import ROLES, findings

    nan = float("nan")
    roles = len(ROLES)
    layer = {
        "by_role": {"fvu": 0.25, "error_share": [0.5] + [0.5 / (roles - 1)] * (roles - 1),
                    "token_share": [0.1] + [0.9 / (roles - 1)] * (roles - 1)},
        "by_family": {"group_fvu": [nan, 0.3, 0.9]},
        "concentration": {"tokens_for_half": 0.125},
    }  # fmt: skip
    results = {"by_kind": {"lorsa": {"1": layer}}, "families": ["names", "addition", "repeat"],
               "lorsa_vs_sae": {}}  # fmt: skip
    (line,) = findings(results)
    assert line == (f"lorsa layer 1: FVU 0.2500; most error-dense role '{ROLES[0]}' (5.0x its "
                    "token share); worst family 'repeat' (group FVU 0.900); 12.5% of tokens "
                    "carry half the error.")  # fmt: skip
    layer["by_role"]["token_share"] = [0.001] * roles
    layer["by_family"]["group_fvu"] = [nan, nan, nan]
    (line,) = findings(results)
    assert line == "lorsa layer 1: FVU 0.2500; 12.5% of tokens carry half the error."


def test_an_error_results_count_too_large_is_refused_in_a_short_line():
    """A fuzz pass: a count of 10**400 was refused with the 401-digit number echoed whole. A
    count is at most 2**53 (exact in a float), and the refusal shows the value cut short."""
    import json
    from pathlib import Path

    from reports.errors import check_results

    d = json.loads(Path("benchmarks/results/error_analysis_default.json").read_text())
    check_results(json.loads(json.dumps(d)))
    d["by_kind"]["lorsa"]["0"]["dense_tokens"][0]["count"] = 10**400
    with pytest.raises(ValueError, match=r"dense_tokens\[0\]\.count: expected a number in") as e:
        check_results(d)
    assert len(str(e.value)) < 200


def test_the_prompts_token_boxes_tell_a_newline_from_a_space(tmp_path):
    """A newline token's box shows ↵ (a tab's ⇥), its exact text in the tooltip: the box held a
    bare line break, which draws nothing, so on a prompt of mine ('...=83\\nLeo: ...') the
    newline's box was as blank as a space's; the prompt above the boxes keeps its lines."""
    graph = make_graph()
    graph.prompt = "a\nb\tc d"
    graph.token_strings = ["<|bos|>", "\n", "\t", " "]
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    text = path.read_text(encoding="utf-8")
    boxes = re.findall(r'<span class="tok" title="([^"]*)"><sub>\d+</sub>([^<]*)</span>', text)
    # a token of spaces alone as ␣ (its box was blank); spaces inside a token's text stay
    assert [box for _, box in boxes] == ["&lt;|bos|&gt;", "↵", "⇥", "␣"]
    assert [box_text(t) for t in ("  ", " p", "a b", "")] == ["␣␣", " p", "a b", ""]
    titles = [html.unescape(title) for title, _ in boxes]
    assert titles[1:] == ["token id 4: '\\n'", "token id 6: '\\t'", "token id 9: ' '"]
    assert '<p class="prompt">a\nb\tc d</p>' in text and ".prompt { white-space: pre-wrap" in text
    assert 'key pos 1 <span class="tok">↵</span>' in text  # a QK record's key, in such a box
    # the heading and the window's title draw them too (an h1 shows a line break as a space)
    assert "<h1>Attribution graph: a↵b⇥c d</h1>" in text
    assert "<title>Attribution graph: a↵b⇥c d</title>" in text


def test_qk_edges_are_faint_as_the_viewer_draws_them(graph, tmp_path):
    """The page's viewer keeps q/k edges faint (lines at opacity 0.3, letters 0.55) beside the
    signed edges; the static drawing drew them at full strength (38 dashed purple lines on
    the weekday list), and its legend said "dashed purple QK". Now faint, said in the legend;
    a drawing whose QK pairs are its subject (the induction circuit) keeps them strong."""
    dot = gv.to_dot(graph)
    dashed = [line for line in dot.splitlines() if 'style="dashed"' in line]
    assert dashed and all(f'color="{gv.QK_FAINT}"' in line
                          and f'fontcolor="{gv.QK_LETTER}"' in line for line in dashed)  # fmt: skip
    assert gv.QK_FAINT == gv.QK_COLOR + "4d" and gv.QK_LETTER == gv.QK_COLOR + "8c"
    assert "faint dashed purple QK (q query, k key side)" in dot
    strong = gv.to_dot(graph, faint_qk=False)
    assert all(f'color="{gv.QK_COLOR}"' in line
               for line in strong.splitlines() if 'style="dashed"' in line)  # fmt: skip
    assert "faint" not in strong
    if not gv.dot_available():
        return
    svg = subprocess.run(["dot", "-Tsvg"], input=dot, text=True, capture_output=True,
                         timeout=60, check=True).stdout  # fmt: skip
    paths = re.findall(r'<path [^>]*stroke-dasharray="5,2"[^>]*>', svg)
    assert paths and all('stroke-opacity="0.301961"' in p for p in paths), paths[:2]
