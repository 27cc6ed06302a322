"""Graphviz and HTML reports on small hand-built graphs (no model, milliseconds each)."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from circuits.graph import KINDS, Graph, QKAttribution, QKPair, node_id
from reports import graphviz as gv
from reports.html import write_html

HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz `dot` is not installed")

NASTY = 'say "hi" \\N <b> & &lt; co\nline2 Ġ ☃ <|bos|>'
TOKENS = [0, 4, 6, 9]
TOKEN_STRINGS = ["<|bos|>", 'Ġ"q"', "a\\b", "&x"]


def make_graph(*, influence: bool = True) -> Graph:
    """Two blocks, four positions, every node kind, signed edges and two QK attributions.

    ``(kind, stage, pos, index, label)`` rows, already in stage order as ``Graph`` requires.
    """
    n_layers = 2
    rows = [(("embedding", 0, p, -1, s)) for p, s in enumerate(TOKEN_STRINGS)]
    rows += [
        ("lorsa", 1, 2, 5, "L0 head 5: copy previous"),
        ("error", 1, 2, -1, "attn error"),
        ("transcoder", 2, 1, 17, NASTY),
        ("transcoder", 2, 3, 3, "digits"),
        ("error", 2, 3, -1, "mlp error"),
        ("lorsa", 3, 3, 2, "L1 head 2: induction"),
        ("transcoder", 4, 3, 9, "say 9"),
        ("logit", 5, 3, 11, "logit '9'"),
        ("logit", 5, 3, 7, "logit '7'"),
    ]
    ids = [
        node_id(k, s, p, i, token=TOKENS[p] if k == "embedding" else None) for k, s, p, i, _ in rows
    ]
    n = len(rows)
    col = {name: j for j, name in enumerate(ids)}
    # (source, target, weight): the strongest is negative, so colours and widths both matter.
    edge_list = [
        ("E_6_2", "0_5_2", 0.5),
        ("E_4_1", "0_5_2", 1.5),
        ("E_4_1", "1_17_1", 2.0),
        ("E_9_3", "1_3_3", -0.25),
        ("0_5_2", "1_3_3", 1.0),
        ("0_-1_2", "1_3_3", 0.1),
        ("1_17_1", "2_2_3", 0.75),
        ("1_3_3", "3_9_3", 3.0),
        ("1_-1_3", "3_9_3", -0.5),
        ("2_2_3", "3_9_3", 1.25),
        ("3_9_3", "5_11_3", 2.5),
        ("3_9_3", "5_7_3", -4.0),
        ("E_0_0", "5_7_3", 0.0),  # an explicit zero: not an edge worth drawing
    ]
    t = [col[b] for _, b, _ in edge_list]
    s = [col[a] for a, _, _ in edge_list]
    w = [x for _, _, x in edge_list]
    edges = sp.csr_array((np.array(w, np.float32), (t, s)), shape=(n, n))
    qk = [
        # L0 head 5 is QK head 2 (group size 2): query at 2, key at 1.
        QKAttribution(
            layer=0,
            qk_head=2,
            query=2,
            key=1,
            attention=0.8,
            score=3.0,
            pairs=[QKPair("E_6_2", "E_4_1", 2.0), QKPair(None, "E_4_1", 0.6)],
            query_marginals=[("E_6_2", 2.2)],
            key_marginals=[("E_4_1", 2.6)],
            rest=0.4,
        ),
        # L1 head 2 is QK head 1. The largest pair's query side was pruned away (not in the
        # graph) and the second's key side is the bias, so each side needs a later pair.
        QKAttribution(
            layer=1,
            qk_head=1,
            query=3,
            key=1,
            attention=0.6,
            score=-1.0,
            pairs=[
                QKPair("1_99_3", "1_17_1", -4.0),
                QKPair("1_3_3", None, 1.5),
                QKPair(None, None, 0.2),
            ],
            query_marginals=[("1_99_3", -3.0), ("1_3_3", 1.0)],
            key_marginals=[("1_17_1", -2.0)],
            rest=1.3,
        ),
    ]
    return Graph(
        prompt='0 "4" a\\b &x',
        tokens=TOKENS,
        token_strings=TOKEN_STRINGS,
        n_layers=n_layers,
        kind=torch.tensor([KINDS.index(k) for k, *_ in rows]),
        stage=torch.tensor([r[1] for r in rows]),
        pos=torch.tensor([r[2] for r in rows]),
        index=torch.tensor([r[3] for r in rows]),
        activation=torch.linspace(0.5, 2.0, n),
        value=torch.full((n,), float("nan")),
        bias=torch.zeros(n),
        target_weight=torch.tensor([0.0] * (n - 2) + [0.7, 0.3]),
        edges=edges,
        labels=[r[4] for r in rows],
        ids=ids,
        qk=qk,
        influence=torch.linspace(0.1, 1.3, n).flip(0) if influence else None,
        model={"name": "toy <tiny>"},
        settings={
            "mode": "local",
            "lorsa_group_size": 2,
            "scores": {"replacement": 0.75, "completeness": 0.9},
            "node_threshold": 0.8,
        },
    )


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


def test_dot_has_every_node_and_every_nonzero_edge(graph):
    dot = gv.to_dot(graph)
    for name in graph.ids:
        assert re.search(rf'^    "{re.escape(name)}" \[', dot, flags=re.M), name
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
    assert dot.startswith("digraph") and 'rankdir="BT"' in dot
    assert dot.count("rank=same") == 1 + len(set(graph.stage.tolist()))


def test_dot_escapes_labels_and_tooltips(graph):
    dot = gv.to_dot(graph)
    escaped = gv.dot_escape(NASTY)
    assert f'label="{escaped}"' in dot
    assert "\n" not in escaped and NASTY not in dot
    assert '"E_4_1" [label="Ġ\\"q\\""' in dot  # token string with a quote


def test_dot_orders_rows_by_stage_and_nodes_by_position(graph):
    dot = gv.to_dot(graph)
    rows = re.findall(r'^  "(row:[^"]+)"( -> "row:[^"]+")+', dot, flags=re.M)
    chain = re.search(r'^  "row:tokens"(?: -> "row:\d+")+', dot, flags=re.M).group(0)
    assert re.findall(r"row:(\w+)", chain) == ["tokens", "0", "1", "2", "3", "4", "5"]
    assert rows  # the chain is a single statement
    stage2 = re.search(r'^    "row:2" -> .*$', dot, flags=re.M).group(0)
    assert stage2.index('"1_17_1"') < stage2.index('"1_3_3"') < stage2.index('"1_-1_3"')


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
    assert drawn_edges(gv.to_dot(graph, max_edges=0)) == []
    assert len(drawn_edges(gv.to_dot(graph, max_edges=100))) == 12
    with pytest.raises(ValueError, match="max_edges"):
        gv.to_dot(graph, max_edges=-1)


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
            assert f'color="{gv.QK_COLOR}"' in line and 'constraint="false"' in line
    # No QK head size in the settings: no QK edges (qk_for cannot map heads).
    graph.settings.pop("lorsa_group_size")
    assert qk_drawn(gv.to_dot(graph)) == set()


def test_dot_of_an_empty_graph_is_valid():
    g = make_graph().subgraph(torch.zeros(13, dtype=torch.bool))
    dot = gv.to_dot(g)
    assert drawn_edges(dot) == [] and '"row:tokens"' in dot
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
    for name in graph.ids:
        assert f"<title>{name.replace('-', '&#45;')}</title>" in svg, name
    assert "say &quot;hi&quot; \\N &lt;b&gt; &amp; &amp;lt; co</text>" in svg
    assert "line2 Ġ ☃ &lt;|bos|&gt;</text>" in svg
    assert svg.count('stroke-dasharray="5,2"') >= 4  # the QK edges


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


def test_render_reports_the_first_line_of_a_dot_failure(tmp_path, monkeypatch):
    fake = tmp_path / "fake-dot"
    fake.write_text("#!/bin/sh\necho 'Error: syntax error in line 1' >&2\necho more >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(gv, "dot_binary", lambda: str(fake))
    with pytest.raises(RuntimeError, match=r"failed: Error: syntax error in line 1$"):
        gv.render("digraph {", tmp_path / "bad", formats=("svg",))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("bad")] == ["bad.dot"]
    with pytest.raises(ValueError, match="format"):
        gv.render("digraph {}", tmp_path / "bad", formats=("svg -o /x",))


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
    assert "<script" not in text and "src=" not in text and "<link" not in text
    body = "".join(parsed.text)
    assert NASTY in body and '0 "4" a\\b &x' in body and "toy <tiny>" in body
    assert "replacement score" in body and "0.75" in body and "completeness score" in body
    assert NASTY not in text  # only the escaped form is in the markup

    header, *nodes = [r for r in parsed.rows if len(r) >= 9]  # the node table
    assert header[:7] == ["id", "kind", "layer", "pos", "label", "activation", "influence"]
    assert [r[0] for r in nodes] == list(graph.ids)  # influence falls along the node order
    by_id = {r[0]: dict(zip(header, r, strict=True)) for r in nodes}
    # Incoming to 3_9_3: 3.0, 1.25, -0.5 -> the top two; outgoing from 3_9_3: -4.0 then 2.5.
    assert by_id["3_9_3"]["top incoming"] == "1_3_3 (+3)2_2_3 (+1.25)"
    assert by_id["3_9_3"]["top outgoing"] == "5_7_3 (-4)5_11_3 (+2.5)"
    assert by_id["E_0_0"]["top outgoing"] == ""  # the explicit zero is not listed
    qk = by_id["2_2_3"]["QK"]
    assert "key pos 1" in qk and "attention 0.6" in qk
    assert "1_99_3 × 1_17_1: -4" in qk and "1_3_3 × bias: +1.5" in qk
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
    with pytest.raises(ValueError, match="svg"):
        write_html(graph, path, "not a drawing")
