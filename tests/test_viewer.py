"""The interactive graph.html viewer: its data (no browser), then the page in a real headless
Chromium driven over the DevTools pipe (``reports.browser``): real mouse clicks and hovers,
typing in the search box, the budget and edge controls, pins and supernodes in the URL.

The browser tests skip only when no Chromium is installed; ``.ci/run`` installs it."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pytest
import torch
from conftest import benchmark
from report_graphs import NASTY, make_big_graph, make_graph, name_sides

from circuits.graph import GlobalRecord, Graph, QKPair, QKReason
from reports import layout
from reports.browser import Browser, find_chromium
from reports.html import write_html
from reports.labels import node_label, short_label_lines
from reports.mechanisms import (
    LEGEND_ID,
    PAIRS_SHOWN,
    block_lines,
    predicting_heading,
    root_block,
)
from reports.viewer import check_dashboards, check_q_params, script_json, viewer_data

DASHBOARDS = {
    "0_5": {  # L0 Lorsa head 5: a head reading the key two tokens back
        "concept": {"label": "second mention of a name", "f1": 0.83},
        "frequency": 0.0125,
        "histogram": {"edges": [0.0, 1.0, 2.0, 3.0], "counts": [40, 12, 3]},
        "logits": {"promoted": [[" Mary", 1.9], [NASTY, 1.1]], "suppressed": [[" the", -1.2]]},
        "examples": [
            {
                "group": "top",
                "tokens": ["<|bos|>", "Mary", " met", " Tom", ".", " Mary"],
                "at": 5,
                "activation": 3.25,
                "acts": [0, 0, 0, 0, 0.5, 3.25],
                "keys": [[1, 2.5], [3, 0.25]],
            },
            {"group": "q 0.50-0.75", "tokens": ["a", "b"], "at": 0, "activation": 1.0},
        ],
    }
}


# ------------------------------------------------------------------------- data, no browser
def test_script_json_cannot_close_its_element_and_round_trips():
    hostile = "</script><script>alert(1)</script> <!-- --> \u2028 \x00\x07\x1b\x7f\x85 & é"
    data = {"a": hostile, "b": [1.5, None, "<"], hostile: 2}
    text = script_json(data)
    lowered = text.lower()
    assert "</script" not in lowered and "<!--" not in lowered and "<" not in text
    assert not any(ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F for ch in text)
    assert "\u2028" not in text and "é" in text  # other text stays readable
    assert json.loads(text) == data
    with pytest.raises(ValueError):
        script_json({"x": float("nan")})


def test_viewer_data_holds_every_node_and_edge_and_the_default_view():
    graph = make_graph()
    data = viewer_data(graph)
    assert [n["id"] for n in data["nodes"]] == graph.ids
    assert [n["label"] for n in data["nodes"]] == [node_label(graph, i) for i in range(13)]
    by_id = {n["id"]: n for n in data["nodes"]}
    assert by_id["0_5_2"]["unit"] == "0_5" and by_id["E_4_1"]["unit"] == "E_4"
    assert by_id["0_5_2"]["attends"] == 1 and by_id["1_3_3"]["promotes"] == ["digits"]
    # the head's share of its activation from that key, under SPREAD_SHARE: in its box too
    assert by_id["0_5_2"]["key_share"] == pytest.approx(0.4)
    assert by_id["0_5_2"]["lines"][1].startswith("40%→")
    assert "key_share" not in by_id["1_3_3"]
    assert by_id["5_11_3"]["logit"] == {"token": "9", "negative": None, "probability": 0.7}
    assert by_id["0_5_2"]["qk"][0]["pairs"][0] == ["E_6_2", "E_4_1", 2.0]
    links = data["links"]
    assert len(links["source"]) == 12  # the explicit zero is no edge
    ends = zip(links["source"], links["target"], strict=True)
    assert {(graph.ids[s], graph.ids[t]) for s, t in ends} == {
        (graph.ids[e.source], graph.ids[e.target]) for e in layout.strongest_edges(graph)
    }
    view = data["view"]
    selection = layout.select(graph)
    assert view["selected"] == [graph.ids[i] for i in selection.nodes]
    assert view["budget"] == 7 and view["rankedBy"] == "influence"
    # the kinds whose activation the panel leaves out, as graph.json and the node table do
    assert view["noActivation"] == ["bias", "embedding", "error"]
    # A budget that binds: the page starts with as many heads, features and errors as
    # select keeps, and edges down to the weakest it draws.
    tight = layout.select(graph, max_nodes=3, max_edges=2)
    view = viewer_data(graph, tight)["view"]
    assert view["budget"] == 3
    assert view["edgeMin"] == 1.5  # the weaker of the two strongest of three edges
    assert data["qParams"]["pinnedIds"] == [] and data["qParams"]["supernodes"] == []


def test_q_params_and_dashboards_are_checked():
    graph = make_graph()
    q = check_q_params(graph, {"pinnedIds": ["3_9_3"], "supernodes": [["g", "1_3_3", "1_17_1"]]})
    assert q["pinnedIds"] == ["3_9_3"] and q["supernodes"] == [["g", "1_3_3", "1_17_1"]]
    for bad, match in [
        ({"pinnedIds": ["nope"]}, "pinnedIds.*nope"),
        ({"pinnedIds": "3_9_3"}, "pinnedIds"),
        ({"supernodes": [["g", "1_3_3"]]}, "two ids"),
        ({"supernodes": [["a", "1_3_3", "3_9_3"], ["b", "3_9_3", "E_4_1"]]}, "'3_9_3'"),
        ({"clickedId": "x"}, "clickedId"),
        ({"supernodes": [["g", "1_3_3", "1_3_3"]]}, "two different ids"),
        ({"supernodes": [["  ", "1_3_3", "1_17_1"]]}, "non-empty and unique"),
        ({"supernodes": [["g", "1_3_3", "1_17_1"], ["g", "3_9_3", "E_4_1"]]}, "unique"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_q_params(graph, bad)
    assert check_dashboards(DASHBOARDS)["0_5"]["examples"][0]["keys"] == [[1, 2.5], [3, 0.25]]
    for edit, match in [
        (lambda d: d.update(colour=1), "0_5: colour is not a dashboard field"),
        (lambda d: d.update(frequency=2), "frequency"),
        (lambda d: d["histogram"].update(counts=[1]), "histogram"),
        # the page's own check, not the feature files' alone (a review: edges that fell passed)
        (lambda d: d["histogram"].update(edges=[0.0, 2.0, 1.0, 3.0]), "histogram edges must rise"),
        (lambda d: d["histogram"].update(counts=[1, -1, 2]), "histogram counts must be >= 0"),
        (lambda d: d["examples"][0].update(at=6), r"examples\[0\].at"),
        (lambda d: d["examples"][0].update(keys=[[9, 1.0]]), r"examples\[0\].keys"),
        (lambda d: d["examples"][1].update(acts=[1.0]), r"examples\[1\].acts"),
        (lambda d: d["logits"].update(promoted=[["x"]]), "logits.promoted"),
        (lambda d: d["concept"].update(chance="low"), "concept.chance"),
        (lambda d: d["concept"].update(at_chance=1), "concept.at_chance"),
        (lambda d: d["concept"].update(at_chance=True), "needs the chance F1"),
        (lambda d: d["concept"].update(chance=0.8), r"must say whether F1 < 1.5 x chance"),
        (lambda d: d["concept"].update(chance=0.1, at_chance=True), "must say whether"),
    ]:
        broken = json.loads(json.dumps(DASHBOARDS))
        edit(broken["0_5"])
        with pytest.raises(ValueError, match=match):
            check_dashboards(broken)


# ------------------------------------------------------------------------------ the browser
def shipped_run(prompt: str):
    """The shipped default (its replacement set and tokenizer), ``prompt``'s tokens as the
    trace encodes them, and its clean run with constants as nodes."""
    from circuits.attribution import run_prompt
    from replacement.model import load_pretrained
    from toy_models.tokenizer import encode_prompt

    replacement, tokenizer = load_pretrained("default")
    tokens = torch.tensor(encode_prompt(tokenizer, prompt, replacement.model.trained_positions))
    return replacement, tokenizer, tokens, run_prompt(replacement, tokens, "local", constants=True)


def open_page(browser: Browser, path: Path, hash_: str = "") -> None:
    url = path.resolve().as_uri() + hash_
    browser.load("about:blank")  # a new document even when only the hash differs
    browser.load(url)
    error = browser.evaluate("document.getElementById('viewer').dataset.error || ''")
    assert error == "" and browser.evaluate("document.getElementById('viewer').dataset.ready")


def js(value) -> str:
    return json.dumps(value)


def centre(browser: Browser, selector: str) -> tuple[float, float]:
    """The viewport centre of the element ``selector`` (scrolled into view first)."""
    box = browser.evaluate(
        f"(() => {{ const e = document.querySelector({js(selector)}); if (!e) return null;"
        " e.scrollIntoView({block: 'center', inline: 'center'});"
        " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    assert box is not None, f"nothing matches {selector}"
    return box[0], box[1]


def node_sel(node_id: str) -> str:
    return f'#viewer svg g.node[data-id="{node_id}"]'


def click_node(browser: Browser, node_id: str, modifiers: int = 0) -> None:
    browser.click(*centre(browser, node_sel(node_id)), modifiers=modifiers)


def panel_text(browser: Browser) -> str:
    return browser.evaluate("document.querySelector('#viewer .panel').innerText")


def url_state(browser: Browser) -> dict[str, str]:
    fragment = browser.evaluate("location.hash").lstrip("#")
    return {k: v[0] for k, v in parse_qs(fragment, keep_blank_values=True).items()}


def drawn(browser: Browser) -> list[str]:
    return browser.evaluate(
        "[...document.querySelectorAll('#viewer svg g.node[data-id]')].map(g => g.dataset.id)"
    )


def drawn_edges(browser: Browser) -> list[tuple[str, str, bool]]:
    """(source, target, drawn as a token's strongest under the threshold) of each value edge."""
    return [tuple(x) for x in browser.evaluate(
        "[...document.querySelectorAll('#viewer svg path.edge')]"
        ".map(p => [p.dataset.s, p.dataset.t, p.classList.contains('token')])")]  # fmt: skip


def boxes(browser: Browser) -> dict[str, list[float]]:
    """Each drawn node's centre in the SVG's own units."""
    return browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#viewer svg g.node[data-id]')]"
        ".map(g => [g.dataset.id, [g.transform.baseVal[0].matrix.e,"
        " g.transform.baseVal[0].matrix.f]]))"
    )


@pytest.fixture
def small_page(tmp_path) -> tuple[Graph, Path]:
    graph = make_graph()
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    return graph, path


def test_page_draws_the_default_selection_by_stage_and_position(browser, small_page):
    graph, path = small_page
    open_page(browser, path)
    selection = layout.select(graph)
    assert sorted(drawn(browser)) == sorted(graph.ids[i] for i in selection.nodes)
    assert sorted((s, t) for s, t, _ in drawn_edges(browser)) == sorted(
        (graph.ids[e.source], graph.ids[e.target]) for e in selection.edges
    )
    qk = browser.evaluate(
        "[...document.querySelectorAll('#viewer svg g.qk-edge')]"
        ".map(g => [g.dataset.s, g.dataset.t, g.dataset.side])"
    )
    assert sorted(map(tuple, qk)) == sorted(
        (graph.ids[e.source], graph.ids[e.target], e.side) for e in selection.qk
    )
    # Stages are rows, bottom to top; positions are columns, left to right.
    xy = boxes(browser)
    stage = dict(zip(graph.ids, graph.stage.tolist(), strict=True))
    pos = dict(zip(graph.ids, graph.pos.tolist(), strict=True))
    for a in xy:
        for b in xy:
            if stage[a] < stage[b]:
                assert xy[a][1] > xy[b][1], (a, b)
            if stage[a] == stage[b] and pos[a] < pos[b]:
                assert xy[a][0] < xy[b][0], (a, b)
    # The first view holds the whole height of the drawing where the window has room: the
    # canvas is as tall as the drawing (at a fixed 76% of the window, a reviewer found the
    # prompt's tokens cut off at first).
    canvas, svg, bottom, room = browser.evaluate(
        "[document.querySelector('#viewer .canvas').clientHeight,"
        " document.querySelector('#viewer .canvas svg').getBoundingClientRect().height,"
        " document.querySelector('#viewer .canvas').getBoundingClientRect().bottom"
        "   + window.scrollY,"
        " window.innerHeight]"
    )
    assert svg <= canvas and canvas - svg <= 30
    assert bottom <= room or canvas == 420  # within the first screen, controls above it
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    assert "Drawing 12 of 13 nodes" in status and "ranked by influence" in status
    # the edge count's whole counts every token's edges (a token is drawn only with an edge
    # over the threshold): "among them" alone read as among the drawn nodes (a review)
    assert re.search(r"\d+ of \d+ edges among them and every token \(", status), status
    # The table's grey rows follow the drawing.
    grey = browser.evaluate(
        "[...document.querySelectorAll('tr.undrawn td[id]')].map(td => td.id.slice(5))"
    )
    assert grey == ["E_0_0"]


def test_clicking_a_node_shows_its_panel_and_edges_navigate(browser, small_page):
    graph, path = small_page
    open_page(browser, path)
    click_node(browser, "0_5_2")
    text = panel_text(browser)
    assert node_label(graph, graph.ids.index("0_5_2")) in text
    assert "Lorsa head" in text and "L0 Lorsa" in text
    assert "\nactivation\n" in text  # a head's; a token's is 1 by convention, not shown:
    click_node(browser, "E_4_1")  # graph.json writes none (a review)
    assert "\nactivation\n" not in panel_text(browser)
    click_node(browser, "0_5_2")
    assert (
        "Reads key 1 'Ġ\"q\"': its activation comes from there most (attention 0.5; it brings "
        "40% of its activation)"
    ) in text
    assert "key 1 'Ġ\"q\"' · attention 0.8 · score +3 (rest +0.4)" in text
    e62, e41 = (node_label(graph, graph.ids.index(n)) for n in ("E_6_2", "E_4_1"))
    assert f"{e62} × {e41}: +2" in text and f"bias × {e41}: +0.6" in text
    incoming = browser.evaluate(
        "[...document.querySelectorAll('#viewer .panel table.edges')[0].rows]"
        ".map(r => r.cells[0].querySelector('.noderef').textContent + ' ' + r.cells[1].textContent)"
    )
    assert incoming == [f"{e41} +1.5", f"{e62} +0.5"]
    assert "No unit dashboards in this page's data" in text
    assert browser.evaluate("document.querySelector(" + js(node_sel("0_5_2")) + ").classList"
                            ".contains('selected')")  # fmt: skip
    assert url_state(browser)["clickedId"] == "0_5_2"
    # An outgoing edge is a link: clicking it shows the node at its other end.
    out_link = "#viewer .panel table.edges:nth-of-type(2) .noderef"
    browser.click(*centre(browser, out_link))
    text = panel_text(browser)
    assert text.startswith(node_label(graph, graph.ids.index("1_3_3")))
    assert url_state(browser)["clickedId"] == "1_3_3"
    assert browser.evaluate("viewer.data.qParams.clickedId") == "1_3_3"
    # A QK pair names a pruned node (1_99_3): shown by its label, not a link.
    click_node(browser, "2_2_3")
    assert "L0 feature 99 @3 × L0 feature 17 @1 -> " in panel_text(browser)
    assert browser.evaluate("document.querySelectorAll('#viewer .panel .noderef.absent').length")


def test_close_unselects_and_brings_the_overview_back(browser, weekday_trace):
    """A review: nothing unselected a node or supernode, so the panel's overview (the mechanism
    summary) was out of reach after the first click, but by editing the URL."""
    *_, path = weekday_trace
    open_page(browser, path)
    overview = panel_text(browser)
    assert overview.startswith("Click a node") and "Mechanisms" in overview
    for box in ("#viewer svg g.node[data-id]", "#viewer svg g.node[data-group]"):
        browser.click(*centre(browser, box))
        assert not panel_text(browser).startswith("Click a node") and url_state(browser)
        browser.evaluate("document.querySelector('#viewer .panel button.close').click()")
        assert panel_text(browser) == overview
        assert url_state(browser) == {}
        assert browser.evaluate("document.querySelectorAll('#viewer svg .selected').length") == 0


def test_the_static_drawings_note_names_the_grey_rows_the_viewer_greys(browser, tmp_path):
    """A review: the note over the static drawing said the table's grey rows were the nodes
    the static drawing leaves out (227 of a trace's rows), where the viewer greys those its own
    drawing leaves out (91)."""
    graph = make_graph()
    path = tmp_path / "graph.html"
    shown = [graph.ids.index("3_9_3"), graph.ids.index("1_-1_3")]
    write_html(graph, path, None, dataclasses.replace(layout.select(graph), nodes=shown))
    open_page(browser, path)
    grey = browser.evaluate(
        "[...document.querySelectorAll('tr.undrawn td[id]')].map(td => td.id.slice(5))"
    )
    assert grey == ["E_0_0"]  # the viewer's drawing, not the static one's 11
    note = browser.evaluate(
        "[...document.querySelectorAll('p')].map(p => p.textContent)"
        ".find(t => t.startsWith('The static drawing shows'))"
    )
    assert note.startswith("The static drawing shows 2 of 13 nodes")
    assert "grey rows of the node table are the nodes the interactive drawing leaves out" in note


def test_a_link_of_the_node_table_selects_its_node_in_the_viewer(browser, small_page):
    graph, path = small_page
    open_page(browser, path)
    browser.click(*centre(browser, 'table.nodes a[href="#node-0_5_2"]'))
    assert url_state(browser)["clickedId"] == "0_5_2"  # the viewer's state, not #node-0_5_2
    assert panel_text(browser).startswith(node_label(graph, graph.ids.index("0_5_2")))


def test_hover_highlights_the_paths_through_a_node(browser, small_page):
    graph, path = small_page
    open_page(browser, path)
    browser.move(*centre(browser, node_sel("1_3_3")))
    assert browser.evaluate("document.querySelector('#viewer svg').classList.contains('hovering')")
    lit = browser.evaluate(
        "[...document.querySelectorAll('#viewer svg path.edge.hl, #viewer svg g.qk-edge.hl')]"
        ".map(p => p.dataset.s + '>' + p.dataset.t)"
    )
    selection = layout.select(graph)
    edges = [(graph.ids[e.source], graph.ids[e.target]) for e in selection.edges]
    edges += [(graph.ids[e.source], graph.ids[e.target]) for e in selection.qk]

    def reach(start, forward):
        seen, stack, found = {start}, [start], set()
        while stack:
            x = stack.pop()
            for s, t in edges:
                a, b = (s, t) if forward else (t, s)
                if a == x:
                    found.add(f"{s}>{t}")
                    if b not in seen:
                        seen.add(b)
                        stack.append(b)
        return found

    expected = reach("1_3_3", True) | reach("1_3_3", False)
    assert set(lit) == expected and 0 < len(expected) < len(edges)
    assert "E_9_3>1_3_3" in expected and "3_9_3>5_7_3" in expected  # up and down
    lit_nodes = browser.evaluate(
        "[...document.querySelectorAll('#viewer svg g.node.hl')].map(g => g.dataset.id)"
    )
    assert "1_3_3" in lit_nodes and "1_17_1" not in lit_nodes  # 1_17_1 is off its paths
    browser.move(2, 2)  # off the drawing
    assert not browser.evaluate(
        "document.querySelector('#viewer svg').classList.contains('hovering')"
    )


def test_search_finds_nodes_by_label_and_by_token(browser, small_page):
    graph, path = small_page
    open_page(browser, path)
    browser.click(*centre(browser, "#viewer input[type=search]"))
    browser.type_text("digits")  # the token 1_3_3 promotes
    matched = browser.evaluate(
        "[...document.querySelectorAll('#viewer svg g.node.match')].map(g => g.dataset.id)"
    )
    assert matched == ["1_3_3"]
    count = browser.evaluate(
        "document.querySelector('#viewer input[type=search] + span').textContent"
    )
    assert count == "1 found, 1 drawn"
    results = browser.evaluate(
        "[...document.querySelectorAll('#viewer .results button')].map(b => b.textContent)"
    )
    assert results == [node_label(graph, graph.ids.index("1_3_3"))]
    browser.evaluate("(() => { const s = document.querySelector('#viewer input[type=search]');"
                     " s.select(); })()")  # fmt: skip
    browser.type_text("&x")  # the prompt token at position 3: every node there
    matched = set(
        browser.evaluate(
            "[...document.querySelectorAll('#viewer svg g.node.match')].map(g => g.dataset.id)"
        )
    )
    at_3 = {name for name, p in zip(graph.ids, graph.pos.tolist(), strict=True) if p == 3}
    assert matched == at_3 & set(drawn(browser))
    # A result is a link to its node's panel.
    browser.click(*centre(browser, "#viewer .results button"))
    assert "kind" in panel_text(browser)


def test_the_search_count_counts_found_nodes_drawn_inside_a_supernode(browser, small_page):
    """A review: the count said how many boxes the search lit, so 9 heads found inside one
    supernode read "10 found, 1 drawn" above a list giving 9 of them as drawn. It counts what
    was found and is drawn, and names the boxes where they are fewer."""
    graph, path = small_page
    open_page(browser, path)
    browser.evaluate("viewer.group(['1_3_3', '3_9_3'], 'pair')")
    browser.click(*centre(browser, "#viewer input[type=search]"))
    browser.type_text("feature")  # 1_17_1 alone, 1_3_3 and 3_9_3 inside 'pair'
    count = "document.querySelector('#viewer input[type=search] + span').textContent"
    assert browser.evaluate(count) == "3 found, 3 drawn in 2 boxes"
    results = browser.evaluate(
        "[...document.querySelectorAll('#viewer .results button')].map(b => b.textContent)"
    )
    assert len(results) == 3 and not any("not drawn" in r for r in results)
    browser.evaluate("document.querySelector('#viewer input[type=search]').select()")
    browser.type_text("pair")  # the supernode itself: one found, one drawn, one box
    assert browser.evaluate(count) == "1 found, 1 drawn"
    set_control(browser, "#viewer input[type=number]", 1, "change")  # the supernode alone
    browser.evaluate("document.querySelector('#viewer input[type=search]').select()")
    browser.type_text("feature")
    assert browser.evaluate(count) == "3 found, 2 drawn in 1 box"


def test_search_matches_across_sub_tokens_and_byte_tokens(browser, tmp_path):
    """A review: the search matched each token's own text, so a word the tokenizer split
    (' b' 'ak' 'er') or a character split into its bytes ('<0xC3>' '<0xA9>') found nothing.
    The query is also matched in the prompt's text as its tokens read back: every node at a
    position it covers is found, as a token's own text finds the nodes at its position, and
    the results name the tokens that make it up."""
    graph = dataclasses.replace(
        make_graph(), token_strings=["<|bos|>", " caf", "<0xC3>", "<0xA9>"], prompt=" café"
    )
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path)
    matched = "[...document.querySelectorAll('#viewer svg g.node.match')].map(g => g.dataset.id)"
    cases = (
        ("É", {2, 3}, "'<0xC3>' '<0xA9>' @2–3"),
        ("Café", {1, 2, 3}, "' caf' '<0xC3>' '<0xA9>' @1–3"),
        ("afé", {1, 2, 3}, "' caf' '<0xC3>' '<0xA9>' @1–3"),
    )
    for query, positions, tokens in cases:
        browser.evaluate(
            "(() => { const s = document.querySelector('#viewer input[type=search]');"
            f" s.value = {js(query)}; s.dispatchEvent(new Event('input')); }})()"
        )
        at = {i for i, p in zip(graph.ids, graph.pos.tolist(), strict=True) if p in positions}
        assert set(browser.evaluate(matched)) == at & set(drawn(browser)), query
        found = browser.evaluate("document.querySelector('#viewer input[type=search] + span')"
                                 ".textContent")  # fmt: skip
        assert found.startswith(f"{len(at)} found"), (query, found)
        note = browser.evaluate("document.querySelector('#viewer .results .spans').textContent")
        assert note.startswith("in the prompt across tokens: " + tokens), note


def press_enter(browser: Browser, selector: str) -> None:
    """Focus ``selector`` and press Enter there, as a keyboard does."""
    browser.evaluate(f"document.querySelector({js(selector)}).focus()")
    for kind in ("keyDown", "keyUp"):
        text = {"text": "\r"} if kind == "keyDown" else {}
        browser.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                     windowsVirtualKeyCode=13, **text)  # fmt: skip


def test_enter_opens_the_first_search_result_and_groups_from_the_name_box(browser, small_page):
    """A review: Enter in the search box did nothing, nor in the supernode name box. In the
    search box it opens the first result (a supernode's before a node's), as a click on it
    would; in the name box it does what the Group button does, and says why where it cannot."""
    graph, path = small_page
    open_page(browser, path)
    search = "#viewer input[type=search]"
    browser.click(*centre(browser, search))
    browser.type_text("digits")  # the token 1_3_3 promotes
    press_enter(browser, search)
    assert panel_text(browser).startswith(node_label(graph, graph.ids.index("1_3_3")))
    assert url_state(browser)["clickedId"] == "1_3_3"
    assert browser.evaluate("document.activeElement.type") == "search"  # to search on
    browser.evaluate(f"document.querySelector({js(search)}).select()")
    browser.type_text("no such thing")
    press_enter(browser, search)
    assert url_state(browser)["clickedId"] == "1_3_3"
    message = browser.evaluate("document.querySelector('#viewer .message').textContent")
    assert message == "Nothing found for 'no such thing'."
    # the name box: nothing picked, nothing grouped, and said; two picked, a supernode
    name = "#viewer input[aria-label='supernode name']"
    browser.click(*centre(browser, name))
    browser.type_text("mine")
    press_enter(browser, name)
    assert browser.evaluate("viewer.supernodes()") == []
    message = browser.evaluate("document.querySelector('#viewer .message').textContent")
    assert message.startswith("Nothing to group: pick two nodes or more")
    click_node(browser, "1_3_3", modifiers=2)
    click_node(browser, "2_2_3", modifiers=2)
    press_enter(browser, name)
    assert browser.evaluate("viewer.supernodes()") == ["mine"]
    assert panel_text(browser).startswith("mine\nsupernode of 2 nodes")
    assert browser.evaluate(f"document.querySelector({js(name)}).value") == ""
    # a supernode found by its name comes first, and Enter opens it
    browser.evaluate(f"document.querySelector({js(search)}).select()")
    browser.type_text("mine")
    press_enter(browser, search)
    assert url_state(browser)["clickedGroup"] == "mine"


def set_control(browser: Browser, selector: str, value, event: str) -> None:
    browser.evaluate(
        f"(() => {{ const e = document.querySelector({js(selector)}); e.value = {js(str(value))};"
        f" e.dispatchEvent(new Event({js(event)}, {{bubbles: true}})); }})()"
    )


def test_budget_and_edge_threshold_redraw(browser, small_page):
    graph, path = small_page
    open_page(browser, path)
    set_control(browser, "#viewer input[type=number]", 2, "change")
    expected = layout.select(graph, max_nodes=2, max_edges=None)
    inner = [i for i in expected.nodes if graph.kinds[i] in ("lorsa", "transcoder", "error")]
    assert len(inner) == 2
    assert sorted(drawn(browser)) == sorted(graph.ids[i] for i in expected.nodes)
    assert url_state(browser)["nodes"] == "2"
    grey = browser.evaluate("document.querySelectorAll('tr.undrawn').length")
    assert grey == graph.n_nodes - len(expected.nodes)
    # The box shows the budget in use: past the end it is clamped and written back, and an
    # empty box or a non-number changes nothing (a reviewer's "1000" stayed in the box, and
    # "abc" set the budget to 0).
    most = browser.evaluate("+document.querySelector('#viewer input[type=number]').max")
    for typed, budget in ((1000, most), (1000, most), ("abc", most), ("", most), (-4, 0)):
        set_control(browser, "#viewer input[type=number]", typed, "change")
        assert browser.evaluate("viewer.state.budget") == budget, typed
        shown = browser.evaluate("document.querySelector('#viewer input[type=number]').value")
        assert shown == str(budget), (typed, shown)
    set_control(browser, "#viewer input[type=number]", 2, "change")
    # A high edge threshold keeps only the strong edges.
    set_control(browser, "#viewer input[type=number]", 7, "change")
    before = browser.evaluate("document.querySelectorAll('#viewer svg path.edge').length")
    set_control(browser, "#viewer input[aria-label='edge threshold']", 900, "input")
    threshold = browser.evaluate("viewer.state.edgeMin")
    weights = browser.evaluate(
        "[...document.querySelectorAll('#viewer svg path.edge:not(.token)')].map(p => +p.dataset.w)"
    )
    assert 0 < len(weights) < before and all(abs(w) >= threshold for w in weights)
    assert float(url_state(browser)["edgeMin"]) == threshold
    # under it only the tokens' strongest edges, one each (every token here outranks the heads)
    under = browser.evaluate(
        "[...document.querySelectorAll('#viewer svg path.edge.token')].map(p => p.dataset.s)"
    )
    assert under and len(set(under)) == len(under) and all(s.startswith("E_") for s in under)


def test_the_edge_threshold_can_be_typed_beside_its_slider(browser, small_page):
    """A review: the edge threshold could be set with the slider or the URL alone. A box
    beside the slider takes a number (Enter, or leaving the box), the two kept in step; a
    non-number, a negative or nothing is refused with the page's note, the box showing the
    threshold in use again."""
    graph, path = small_page
    open_page(browser, path)
    box, slider = (
        "#viewer input[aria-label='edge threshold value']",
        "#viewer input[aria-label='edge threshold']",
    )
    value = f"document.querySelector({js(box)}).value"
    message = "document.querySelector('#viewer .message').textContent"
    assert float(browser.evaluate(value)) == browser.evaluate("viewer.state.edgeMin")
    browser.click(*centre(browser, box))
    browser.evaluate(f"document.querySelector({js(box)}).select()")
    browser.type_text("1.2")
    press_enter(browser, box)
    assert browser.evaluate("viewer.state.edgeMin") == 1.2
    assert url_state(browser)["edgeMin"] == "1.2" and browser.evaluate(value) == "1.2"
    weights = [abs(w) for *_, w in browser.evaluate("viewer.edges()")]
    tokens = browser.evaluate("document.querySelectorAll('#viewer svg path.edge.token').length")
    assert weights and sum(w < 1.2 for w in weights) == tokens  # only tokens' strongest under it
    notch = browser.evaluate(f"+document.querySelector({js(slider)}).value")
    assert 0 < notch < 1000
    # the slider moves the box with it
    set_control(browser, slider, notch + 100, "input")
    moved = browser.evaluate("viewer.state.edgeMin")
    shown = "String(viewer.state.edgeMin)"  # 4 digits, as the slider's steps
    assert moved > 1.2 and browser.evaluate(value) == browser.evaluate(shown)
    for typed in ("abc", "-0.5", "", "1e999", "0x"):
        browser.evaluate(f"document.querySelector({js(box)}).select()")
        if typed:
            browser.type_text(typed)
        else:
            browser.evaluate(
                f"(() => {{ const b = document.querySelector({js(box)}); b.value = '';"
                " b.dispatchEvent(new Event('input', {bubbles: true})); })()"
            )
        press_enter(browser, box)
        assert browser.evaluate("viewer.state.edgeMin") == moved, typed
        assert browser.evaluate(value) == browser.evaluate(shown), typed
        assert browser.evaluate(message).startswith(f"Edge threshold '{typed}' refused"), typed
    # leaving the box applies what it holds, as Enter does
    browser.evaluate(f"document.querySelector({js(box)}).select()")
    browser.type_text("0")
    browser.click(*centre(browser, "#viewer input[type=search]"))
    assert browser.evaluate("viewer.state.edgeMin") == 0
    assert browser.evaluate(f"+document.querySelector({js(slider)}).value") == 0
    first = browser.evaluate("viewer.data.view.edgeMin")
    assert url_state(browser).get("edgeMin") == (None if first == 0 else "0")


def test_a_graph_kept_whole_draws_every_edge(browser, tmp_path):
    """Hundreds of thousands of edges drawn at once (a graph pruned with thresholds 1 and the
    edge threshold at 0): the page draws them, with no stack overflow on the largest weight."""
    graph = make_big_graph(units=200, fan_in=500, influence=False)
    assert graph.n_edges > 150_000
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path, "#nodes=100000&edgeMin=0")
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    assert f"Drawing {graph.n_nodes} of {graph.n_nodes} nodes" in status, status


def test_a_graph_without_heads_or_features_says_so_at_its_budget(browser, tmp_path):
    """Found by the fourth fuzz pass: a graph pruned down to tokens and targets showed "Nodes 0
    of 0" while it drew them; the label says there are no heads or features to rank."""
    graph = make_graph()
    keep = [i for i, k in enumerate(graph.kinds) if k in ("embedding", "logit")]
    graph = graph.subgraph(torch.tensor(keep))
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path)
    toolbar = browser.evaluate("document.querySelector('#viewer .toolbar').innerText")
    assert "of 0 (no heads or features)" in toolbar
    expected = layout.select(graph, max_nodes=0, max_edges=None)
    assert expected.nodes and sorted(drawn(browser)) == sorted(graph.ids[i] for i in expected.nodes)


def test_a_head_or_feature_target_stays_drawn_at_any_budget(browser, tmp_path):
    graph = make_graph()
    inner = [i for i, k in enumerate(graph.kinds) if k in ("lorsa", "transcoder")]
    low = min(inner, key=lambda i: float(graph.influence[i]))
    graph.target_weight[low] = 0.5  # traced from it (``--target-node``)
    # a token a downstream global graph starts from is a target too, though no edge enters it
    token = graph.kinds.index("embedding")
    graph.target_weight[token] = 0.5
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path)
    set_control(browser, "#viewer input[type=number]", 0, "change")
    expected = layout.select(graph, max_nodes=0, max_edges=None)
    assert low in expected.nodes and token in expected.nodes
    assert sorted(drawn(browser)) == sorted(graph.ids[i] for i in expected.nodes)


def test_pins_and_supernodes_live_in_the_url_and_qparams(browser, small_page):
    graph, path = small_page
    open_page(browser, path, "#nodes=4&pinnedIds=3_9_3")  # a state from the URL
    assert "3_9_3" in drawn(browser) and "2_2_3" not in drawn(browser)
    # Find an undrawn node by search, open it, pin it: it is drawn.
    browser.click(*centre(browser, "#viewer input[type=search]"))
    browser.type_text("2_2_3")
    browser.click(*centre(browser, "#viewer .results button"))
    assert "Not drawn at this budget" in panel_text(browser)
    browser.click(*centre(browser, "#viewer .panel button.pin"))
    assert "2_2_3" in drawn(browser)
    assert url_state(browser)["pinnedIds"] == "3_9_3,2_2_3"
    assert browser.evaluate("viewer.data.qParams.pinnedIds") == ["3_9_3", "2_2_3"]
    # Group two drawn nodes (ctrl-click picks them) into a named supernode.
    click_node(browser, "1_3_3", modifiers=2)
    click_node(browser, "2_2_3", modifiers=2)
    browser.click(*centre(browser, "#viewer input[aria-label='supernode name']"))
    browser.type_text("my <group>")
    browser.click(*centre(browser, "#viewer button.group"))
    assert "1_3_3" not in drawn(browser) and "2_2_3" not in drawn(browser)
    assert browser.evaluate("viewer.supernodes()") == ["my <group>"]
    group = ["my <group>", "1_3_3", "2_2_3"]
    assert json.loads(url_state(browser)["supernodes"]) == [group]
    assert browser.evaluate("viewer.data.qParams.supernodes") == [group]
    assert panel_text(browser).startswith("my <group>\nsupernode of 2 nodes")
    # Edges of the supernode are sums over its members: 3.0 + 1.25 into 3_9_3.
    summed = {(s, t): w for s, t, w in browser.evaluate("viewer.edges()")}
    assert summed[("supernode:my <group>", "3_9_3")] == pytest.approx(4.25)
    assert summed[("0_5_2", "supernode:my <group>")] == pytest.approx(1.0)
    # The URL alone gives the same picture back.
    url = browser.evaluate("location.href")
    open_page(browser, path, "#" + url.split("#", 1)[1])
    assert browser.evaluate("viewer.supernodes()") == ["my <group>"]
    assert browser.evaluate("viewer.data.qParams.pinnedIds") == ["3_9_3", "2_2_3"]
    # Ungroup from the supernode's panel.
    browser.click(*centre(browser, '#viewer svg g.node[data-group="0"]'))
    browser.click(*centre(browser, "#viewer .panel button.ungroup"))
    assert "1_3_3" in drawn(browser) and browser.evaluate("viewer.data.qParams.supernodes") == []
    assert "supernodes" not in url_state(browser)
    # Names stay unique: a name already taken, or none typed, gets the first free number.
    for pair, typed in (
        (("1_3_3", "2_2_3"), "g"),
        (("0_5_2", "E_4_1"), "g"),
        (("E_9_3", "3_9_3"), ""),
    ):
        for node in pair:
            click_node(browser, node, modifiers=2)
        browser.click(*centre(browser, "#viewer input[aria-label='supernode name']"))
        browser.type_text(typed)
        browser.click(*centre(browser, "#viewer button.group"))
    assert browser.evaluate("viewer.supernodes()") == ["g", "g 1", "group 1"]
    # A new supernode takes its members from the ones they were in; one left with fewer than
    # two dissolves (the URL and qParams never hold a supernode the page would refuse).
    browser.evaluate("viewer.group(['0_5_2', 'E_9_3', '3_9_3'], 'three')")
    assert browser.evaluate("viewer.supernodes()") == ["g", "three"]
    browser.evaluate("viewer.group(['E_9_3', '3_9_3'], 'three')")
    assert sorted(browser.evaluate("viewer.supernodes()")) == ["g", "three"]
    assert [g[0] for g in browser.evaluate("viewer.data.qParams.supernodes")] == ["g", "three"]


def test_a_supernodes_panel_sums_its_edges_by_drawn_item_with_the_members_split(
    browser, small_page
):
    """A review: a supernode's panel listed its edges per neighbouring node, so an edge to
    another supernode came as its members' parts, none of them the drawn edge's number. Each
    row is now a drawn item, a node or another supernode (its link opens that supernode), with
    the sum the drawing shows, and opens its split by this supernode's members."""
    graph, path = small_page
    open_page(browser, path)
    browser.evaluate("viewer.group(['1_3_3', '2_2_3'], 'a'); viewer.group(['E_9_3', '3_9_3'], 'b')")
    drawn_w = {(s, t): w for s, t, w in browser.evaluate("viewer.edges()")}
    total = drawn_w[("supernode:a", "supernode:b")]
    browser.click(*centre(browser, '#viewer svg g.node[data-group="0"]'))
    assert panel_text(browser).startswith("a\nsupernode of 2 nodes")
    rows = browser.evaluate(
        "[...document.querySelectorAll('#viewer .panel table.edges')[1].rows]"
        ".filter((r) => !r.hidden).map((r) => [r.cells[0].textContent, r.cells[1].textContent])"
    )
    assert [r[0] for r in rows].count("supernode b") == 1, rows
    labels = {node_label(graph, graph.id_to_index[i]) for i in ("3_9_3", "E_9_3")}
    assert not any(r[0] in labels for r in rows), rows  # b's members are not listed apart
    value = next(float(r[1].replace("−", "-")) for r in rows if r[0] == "supernode b")
    assert value == pytest.approx(total, rel=1e-3, abs=1e-3)
    # the split by members, behind the row's toggle, adds up to it
    split = browser.evaluate(
        "(() => { const t = document.querySelectorAll('#viewer .panel table.edges')[1];"
        " const row = [...t.rows].find((r) => r.cells[0].textContent === 'supernode b');"
        " row.querySelector('button.split-toggle').click();"
        " const next = row.nextElementSibling; return {hidden: next.hidden, items:"
        " [...next.querySelectorAll('li')].map((li) => [li.querySelector('.noderef').title,"
        " li.querySelector('span.pos, span.neg').textContent])}; })()"
    )
    assert not split["hidden"] and len(split["items"]) == 2, split
    parts = [float(w.replace("−", "-")) for _, w in split["items"]]
    assert sum(parts) == pytest.approx(total, rel=1e-2, abs=1e-2)
    assert {t.rsplit("(id ", 1)[1].rstrip(")") for t, _ in split["items"]} == {"1_3_3", "2_2_3"}
    # the other supernode's link opens its panel
    browser.evaluate("document.querySelector('#viewer .panel .supernode-ref').click()")
    assert panel_text(browser).startswith("b\nsupernode of 2 nodes")


def test_a_nodes_panel_sums_a_neighbouring_supernodes_edges_as_one_row(browser, small_page):
    """A review: a supernode's panel summed its edges by drawn item, while a node's panel still
    listed a neighbouring supernode's members one by one. Its edges to a supernode are now one
    row, the drawn edge's sum, a link opening that supernode, with the split by its members
    behind a toggle (the supernode panel's own code); edges to nodes read as before."""
    graph, path = small_page
    open_page(browser, path)
    browser.evaluate("viewer.group(['1_3_3', '2_2_3'], 'b')")
    drawn_w = {(s, t): w for s, t, w in browser.evaluate("viewer.edges()")}
    click_node(browser, "3_9_3")
    rows = browser.evaluate(
        "[...document.querySelectorAll('#viewer .panel table.edges')[0].rows]"
        ".filter((r) => !r.hidden).map((r) => [r.cells[0].textContent, r.cells[1].textContent,"
        " !!r.querySelector('button.split-toggle')])"
    )
    labels = {node_label(graph, graph.id_to_index[i]) for i in ("1_3_3", "2_2_3")}
    assert not any(r[0] in labels for r in rows), rows  # b's members are not listed apart
    assert [r[0] for r in rows] == ["supernode b", node_label(graph, graph.id_to_index["1_-1_3"])]
    value = float(rows[0][1].replace("−", "-"))
    assert value == pytest.approx(drawn_w[("supernode:b", "3_9_3")], abs=1e-3)
    assert value == pytest.approx(4.25, abs=1e-3)
    assert rows[0][2] and not rows[1][2]  # a node's edge to a node has nothing to split
    split = browser.evaluate(
        "(() => { const t = document.querySelectorAll('#viewer .panel table.edges')[0];"
        " const row = [...t.rows].find((r) => r.cells[0].textContent === 'supernode b');"
        " row.querySelector('button.split-toggle').click();"
        " const next = row.nextElementSibling; return {hidden: next.hidden, items:"
        " [...next.querySelectorAll('li')].map((li) => [li.querySelector('.noderef').title,"
        " li.querySelector('span.pos, span.neg').textContent])}; })()"
    )
    assert not split["hidden"], split
    got = {
        t.rsplit("(id ", 1)[1].rstrip(")"): float(w.replace("−", "-")) for t, w in split["items"]
    }
    assert got == pytest.approx({"1_3_3": 3.0, "2_2_3": 1.25}, abs=1e-3)
    # the same on the outgoing side, and the supernode's row opens its panel
    click_node(browser, "E_9_3")
    out = browser.evaluate(
        "[...[...document.querySelectorAll('#viewer .panel table.edges')].at(-1).rows]"
        ".filter((r) => !r.hidden)"
        ".map((r) => r.cells[0].textContent + ' ' + r.cells[1].textContent)"
    )
    assert out == ["supernode b -0.25"], out
    browser.evaluate("document.querySelector('#viewer .panel .supernode-ref').click()")
    assert panel_text(browser).startswith("b\nsupernode of 2 nodes")


def test_a_supernode_shows_its_selected_member_is_picked_whole_and_stays_selected(
    browser, small_page
):
    """Found by a review of the page: a node chosen in the panel but drawn inside a supernode
    marked nothing; ctrl-click on a supernode did nothing; a selected supernode was lost on
    reload; the summary's groups could only be dissolved one by one."""
    graph, path = small_page
    open_page(browser, path)
    browser.evaluate("viewer.group(['1_3_3', '2_2_3'], 'pair')")
    selected = ("[...document.querySelectorAll('#viewer svg g.node.selected')]"
                ".map(g => g.dataset.group ?? g.dataset.id)")  # fmt: skip
    # a member chosen by a link in another node's panel: the supernode holding it is marked
    click_node(browser, "3_9_3")
    browser.evaluate("[...document.querySelectorAll('#viewer .panel .noderef')]"
                     ".find(b => b.title.includes('(id 1_3_3)')).click()")  # fmt: skip
    assert panel_text(browser).startswith(node_label(graph, graph.id_to_index["1_3_3"]))
    assert browser.evaluate(selected) == ["0"]
    # ctrl-click on the supernode picks its two members; with a third they make a new group
    browser.click(*centre(browser, '#viewer svg g.node[data-group="0"]'), modifiers=2)
    assert browser.evaluate("document.querySelector('#viewer button.group').textContent") == (
        "Group 2 picked"
    )
    click_node(browser, "0_5_2", modifiers=2)
    browser.click(*centre(browser, "#viewer button.group"))
    assert browser.evaluate("viewer.supernodes()") == ["group 1"]
    assert browser.evaluate("viewer.data.qParams.supernodes") == [
        ["group 1", "1_3_3", "2_2_3", "0_5_2"]
    ]
    # the new supernode is selected, and the URL keeps it selected
    assert url_state(browser)["clickedGroup"] == "group 1"
    open_page(browser, path, "#" + browser.evaluate("location.href").split("#", 1)[1])
    assert panel_text(browser).startswith("group 1\nsupernode of 3 nodes")
    assert browser.evaluate(selected) == ["0"]
    # a supernode named in the URL that the page does not have is said to be ignored
    open_page(browser, path, "#clickedGroup=nope")
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    assert 'no supernode "nope"' in status
    # "Ungroup all" dissolves every supernode at once
    browser.evaluate("viewer.group(['1_3_3', '2_2_3'], 'a'); viewer.group(['E_9_3', '3_9_3'], 'b')")
    assert browser.evaluate("viewer.supernodes()") == ["a", "b"]
    browser.click(*centre(browser, "#viewer button.ungroup-all"))
    assert browser.evaluate("viewer.supernodes()") == [] and "1_3_3" in drawn(browser)
    assert browser.evaluate("document.querySelector('#viewer button.ungroup-all').disabled")


def test_a_narrow_window_puts_the_panel_under_the_drawing_and_examples_wrap(tmp_path):
    """At 700 px the side panel left the drawing 224 px, and a dashboard example ran out of
    the panel with its marked token out of view (a review)."""
    graph = make_graph()
    path = tmp_path / "graph.html"
    tokens = ["<|bos|>", *[" word"] * 60, " Mary"]
    long = {**DASHBOARDS["0_5"], "examples": [{"group": "top", "tokens": tokens, "at": 61,
            "activation": 3.25, "acts": [0.0] * 61 + [3.25]}]}  # fmt: skip
    write_html(graph, path, None, dashboards={**DASHBOARDS, "0_5": long})
    with Browser(width=700, height=900) as narrow:
        open_page(narrow, path)
        click_node(narrow, "0_5_2")
        canvas, panel = narrow.evaluate(
            "['.canvas', '.panel'].map(s => { const r = document.querySelector('#viewer ' + s)"
            ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })"
        )
        assert canvas[2] > 600 and panel[1] >= canvas[1] + canvas[3] - 1  # under it, full width
        overflow, mark = narrow.evaluate(
            "(() => { const p = document.querySelector('#viewer .panel');"
            " const m = p.querySelector('.example mark').getBoundingClientRect();"
            " const r = p.getBoundingClientRect();"
            " return [p.scrollWidth - p.clientWidth, m.right <= r.right]; })()"
        )
        assert overflow == 0 and mark


def test_keyboard_pins_keep_the_focus_and_ctrl_p_is_not_a_pin(browser, small_page):
    """A review: `p` pinned a focused node but the redraw dropped the focus (a second `p` fell
    on the page), and ctrl-p (print) pinned it too."""
    graph, path = small_page
    open_page(browser, path)
    node = "3_9_3"

    def press(key: str, ctrl: bool = False) -> None:
        browser.evaluate(
            f"document.querySelector({js(node_sel(node))}).focus();"
            f" document.activeElement.dispatchEvent(new KeyboardEvent('keydown', {{key: {js(key)},"
            f" ctrlKey: {js(ctrl)}, bubbles: true}}))"
        )

    pinned = "viewer.data.qParams.pinnedIds"
    press("p")
    assert browser.evaluate(pinned) == [node]
    assert browser.evaluate("document.activeElement.dataset.id") == node
    browser.evaluate(  # the second press on the same focus, without focusing it again
        "document.activeElement.dispatchEvent(new KeyboardEvent('keydown', {key: 'p',"
        " bubbles: true}))"
    )
    assert browser.evaluate(pinned) == []
    press("p", ctrl=True)
    assert browser.evaluate(pinned) == []


def test_a_button_pressed_from_the_keyboard_hands_its_focus_on(browser, small_page):
    """A review: Pin, Pick and Ungroup in the panel, Group and Clear pins in the toolbar and
    a pin of the left-out list each redrew or disabled the focused button and dropped the
    focus on the page, so the next Tab started again from the top."""
    graph, path = small_page
    open_page(browser, path)

    def key(name: str, code: str, vk: int, text: str) -> None:
        down = {"text": text} if text else {}
        browser.send("Input.dispatchKeyEvent", type="keyDown", key=name, code=code,
                     windowsVirtualKeyCode=vk, **down)  # fmt: skip
        browser.send("Input.dispatchKeyEvent", type="keyUp", key=name, code=code,
                     windowsVirtualKeyCode=vk)  # fmt: skip

    def press(selector: str) -> str:
        """Tab from the drawing's first box to the first element ``selector`` names and press
        Enter there: the focused element's class and text after."""
        browser.evaluate("document.querySelector('#viewer svg g.node').focus()")
        for _ in range(80):
            if browser.evaluate(f"document.activeElement.matches({js(selector)})"):
                break
            key("Tab", "Tab", 9, "")
        else:
            raise AssertionError(f"Tab never reached {selector}")
        key("Enter", "Enter", 13, "\r")
        return browser.evaluate(
            "(() => { const a = document.activeElement; return a === document.body ? 'body'"
            " : (a.getAttribute('class') || '') + ' ' + a.textContent; })()"
        )

    click_node(browser, "3_9_3")
    assert press("#viewer .panel button.pin").startswith("pin Unpin")
    assert press("#viewer .panel button.pin").startswith("pin Pin")
    assert press("#viewer .panel button.pick").startswith("pick Unpick")
    browser.evaluate("viewer.state.picks.add(viewer.data.nodes.findIndex(n => n.id === '2_2_3'))")
    browser.evaluate("viewer.update()")
    assert press("#viewer button.group").startswith("node")  # the new supernode's box
    assert browser.evaluate("document.activeElement.dataset.group") == "0"
    assert press("#viewer .panel button.ungroup").startswith("node")
    click_node(browser, "5_11_3")  # a logit, drawn at any budget
    browser.evaluate("document.querySelector('#viewer .panel button.pin').click()")
    assert press("#viewer button.clear-pins").startswith("node")
    browser.evaluate("viewer.state.budget = 0; viewer.update()")
    browser.evaluate("document.querySelector('#viewer .left-out-toggle').click()")
    assert press("#viewer .left-out button.draw").startswith("draw pin")


def test_a_stacked_drawing_takes_no_more_height_than_it_needs(tmp_path):
    """Below the breakpoint the canvas was 65% of the window whatever the drawing (a short
    global graph left 130 px blank above the panel)."""
    graph = make_graph()
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    with Browser(width=700, height=1200) as narrow:
        open_page(narrow, path)
        canvas, drawing = narrow.evaluate(
            "[document.querySelector('#viewer .canvas').clientHeight,"
            " document.querySelector('#viewer svg').getBoundingClientRect().height]"
        )
        assert drawing <= canvas <= drawing + 30 and canvas < 0.65 * 1200


def test_a_urls_node_in_two_supernodes_is_said_to_stay_in_the_first(browser, small_page):
    """A review: a URL's node in two supernodes left the second silently, where the page notes
    every other thing of a URL it ignores (graph.json's qParams refuse it)."""
    graph, path = small_page
    open_page(browser, path, '#supernodes=[["x","1_3_3","2_2_3"],["y","2_2_3","0_5_2","E_4_1"]]')
    groups = browser.evaluate(
        "viewer.state.groups.map(g => [g.name, ...g.members.map(i => viewer.data.nodes[i].id)])"
    )
    assert groups == [["x", "1_3_3", "2_2_3"], ["y", "0_5_2", "E_4_1"]]
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    assert "ignored from the URL: 2_2_3 in two supernodes: kept in the first" in status


def test_a_hash_pasted_by_hand_is_the_whole_state(browser, small_page):
    graph, path = small_page
    open_page(browser, path, '#pinnedIds=E_0_0&supernodes=[["g","1_3_3","2_2_3"]]')
    assert "E_0_0" in drawn(browser) and browser.evaluate("viewer.supernodes()") == ["g"]
    browser.evaluate("location.hash = 'nodes=2'")
    browser.evaluate("new Promise(r => setTimeout(r, 50))")  # hashchange is dispatched async
    expected = layout.select(graph, max_nodes=2, max_edges=None)
    assert sorted(drawn(browser)) == sorted(graph.ids[i] for i in expected.nodes)
    assert browser.evaluate("viewer.supernodes()") == []
    assert browser.evaluate("viewer.data.qParams.pinnedIds") == []
    # What a pasted hash holds that the page cannot use is reported, as on first load; numbers
    # are read whole or not at all, and a long id is cut short in the note.
    long_id = "A" * 5000
    for fragment, notes in (
        ("nodes=5abc&edgeMin=1e999", ["nodes=5abc: not a whole number",
                                      "edgeMin=1e999: not a finite number"]),
        (f"pinnedIds={long_id},E_0_0&nodes=-3", ["no node AAAA", "nodes=-3"]),
        ('supernodes=[["x","1_3_3","2_2_3"],["x","E_0_0","E_4_1"],["y","E_9_3"]]',
         ['supernode "x": empty or repeated name', 'supernode "y": fewer than two nodes']),
    ):  # fmt: skip
        browser.evaluate(f"location.hash = {js(fragment)}")
        browser.evaluate("new Promise(r => setTimeout(r, 50))")
        status = browser.evaluate("document.querySelector('#viewer .status').textContent")
        assert "ignored from the URL" in status and all(n in status for n in notes), status
        assert long_id not in status
    assert browser.evaluate("viewer.supernodes()") == ["x"]
    assert browser.evaluate("document.documentElement.scrollWidth") <= 1400
    browser.evaluate("location.hash = 'nodes=2'")
    browser.evaluate("new Promise(r => setTimeout(r, 50))")
    # Tab reaches the nodes; Enter opens one's panel.
    browser.evaluate(f"document.querySelector({js(node_sel('0_5_2'))}).focus()")
    browser.send("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter",
                 windowsVirtualKeyCode=13)  # fmt: skip
    assert panel_text(browser).startswith(node_label(graph, graph.ids.index("0_5_2")))


@pytest.mark.parametrize(
    "q_params, error, match",
    [
        ({"supernodes": 5}, ValueError, "qParams.supernodes must be a list"),
        ({"supernodes": {"a": 1}}, ValueError, "qParams.supernodes must be a list"),
        ({"clickedId": [1]}, ValueError, "qParams.clickedId must be a node id"),
        ({"clickedId": 5}, ValueError, "qParams.clickedId must be a node id"),
        (["x"], TypeError, "q_params must be a mapping"),
        ("x", TypeError, "q_params must be a mapping"),
        ("", TypeError, "q_params must be a mapping"),
        ({"pinnedId": ["E_0_0"]}, ValueError, "qParams: unknown key 'pinnedId'"),
        ({"linkType": 5}, ValueError, "qParams.linkType: 5, not one of"),
        ({"linkType": "all"}, ValueError, "qParams.linkType: 'all', not one of"),
        ({"sg_pos": [1, 2]}, ValueError, "qParams.sg_pos must be a string"),
    ],
)
def test_q_params_of_the_wrong_type_are_refused_in_one_line(tmp_path, q_params, error, match):
    """Found by a fuzz pass: a number for supernodes or a list for clickedId raised a
    TypeError from inside, a list or a string for q_params an AttributeError; a misspelt key
    pinned nothing, silently."""
    graph = make_graph()
    with pytest.raises(error, match=re.escape(match)):
        write_html(graph, tmp_path / "graph.html", None, q_params=q_params)
    assert not (tmp_path / "graph.html").exists()
    kept = {"linkType": "input", "sg_pos": "1 2", "clickedId": "E_0_0"}  # circuit-tracer's
    assert check_q_params(graph, kept) == {"pinnedIds": [], "supernodes": [], **kept}
    assert check_q_params(graph, {}) == check_q_params(graph, None)


def test_page_starts_from_the_q_params_it_was_written_with(browser, tmp_path):
    graph = make_graph()
    path = tmp_path / "graph.html"
    q = {"pinnedIds": ["E_0_0"], "supernodes": [["heads", "0_5_2", "2_2_3"]]}
    write_html(graph, path, None, q_params=q)
    open_page(browser, path)
    assert "E_0_0" in drawn(browser) and browser.evaluate("viewer.supernodes()") == ["heads"]
    # the page's own state is no part of its URL (a reviewer's first click wrote all of a
    # summary's 11 supernodes into it); what differs from it is, an empty list saying "none"
    assert url_state(browser) == {}
    browser.evaluate("document.querySelector('#viewer button.clear-pins').click()")
    assert url_state(browser) == {"pinnedIds": ""}
    browser.evaluate("document.querySelector('#viewer button.ungroup-all').click()")
    # every box was drawn (6 of 6), and so is every node ungrouped (7 of 7, not the page's 6)
    assert url_state(browser) == {"pinnedIds": "", "supernodes": "[]", "nodes": "7"}
    assert browser.evaluate("viewer.supernodes()") == []
    saved = browser.evaluate("document.querySelector('#viewer pre.qparams').textContent")
    saved = json.loads(saved)
    assert saved["pinnedIds"] == [] and saved["supernodes"] == []


def test_a_page_clicking_a_node_from_its_q_params_keeps_none_clicked_in_its_url(browser, tmp_path):
    """A review: a page written with qParams.clickedId, its node unselected (a supernode
    clicked, then ungrouped), wrote no clickedId into its URL, so the URL's reload selected
    the qParams' node again; and a hash pasted in place meant none clicked where the same
    hash opened meant the qParams' node."""
    graph = make_graph()
    path = tmp_path / "graph.html"
    q = {"clickedId": "3_9_3", "supernodes": [["heads", "0_5_2", "2_2_3"]]}
    write_html(graph, path, None, q_params=q)
    open_page(browser, path)
    assert browser.evaluate("viewer.data.qParams.clickedId") == "3_9_3"
    browser.click(*centre(browser, '#viewer svg g.node[data-group="0"]'))
    browser.evaluate("document.querySelector('#viewer .panel button.ungroup').click()")
    assert panel_text(browser).startswith("Click a node")
    url = browser.evaluate("location.href")
    open_page(browser, Path(path), "#" + url.split("#", 1)[1])
    assert panel_text(browser).startswith("Click a node")
    assert browser.evaluate("viewer.data.qParams.clickedId") == ""
    # the same hash pasted in place and opened: one state (the qParams' node clicked)
    open_page(browser, path)
    browser.evaluate("location.hash = 'nodes=2'")
    browser.evaluate("new Promise(r => setTimeout(r, 50))")
    pasted = panel_text(browser)
    open_page(browser, path, "#nodes=2")
    assert pasted == panel_text(browser)
    assert pasted.startswith(node_label(graph, graph.ids.index("3_9_3")))


def test_dashboards_show_concept_examples_keys_and_logits(browser, tmp_path):
    graph = make_graph()
    path = tmp_path / "graph.html"
    write_html(graph, path, None, dashboards=DASHBOARDS)
    open_page(browser, path)
    click_node(browser, "0_5_2")
    text = panel_text(browser)
    assert "Concept: second mention of a name (F1 0.83)" in text
    assert "Fires on 1.25% of tokens" in text
    assert "promotes: ' Mary' +1.9" in text and "suppresses: ' the' -1.2" in text
    marks = browser.evaluate(
        "[...document.querySelectorAll('#viewer .panel .example mark')].map(m => m.textContent)"
    )
    assert marks == [" Mary", "a"]  # the activating token of each example
    keys = browser.evaluate(
        "[...document.querySelectorAll('#viewer .panel .example .key')].map(k => k.textContent)"
    )
    assert keys == ["Mary", " Tom"]  # the z-pattern's keys
    assert browser.evaluate("document.querySelectorAll('#viewer .panel svg.hist rect').length") == 3
    assert "examples: top" in text and "examples: q 0.50-0.75" in text
    # the search finds a unit by its concept label (here only the head 0_5 at position 2)
    browser.click(*centre(browser, "#viewer input[type=search]"))
    browser.type_text("second mention")
    matched = browser.evaluate(
        "[...document.querySelectorAll('#viewer svg g.node.match')].map(g => g.dataset.id)"
    )
    assert matched == [n for n in graph.ids if n.startswith("0_5_")] == ["0_5_2"]
    assert "At chance" not in text
    click_node(browser, "1_3_3")  # a unit without a dashboard
    assert "No dashboard for unit 1_3 in this page's data." in panel_text(browser)
    # a token, an error or a logit is no unit: no dashboard section, and none said missing (a
    # review read "No dashboard for unit 9_273-363" under a logit difference's panel)
    for node in ("E_4_1", "0_-1_2", "5_11_3"):
        click_node(browser, node)
        assert "ashboard" not in panel_text(browser)
    dense = json.loads(json.dumps(DASHBOARDS))  # a label that the firing rate alone explains
    dense["0_5"]["concept"] |= {"chance": 0.8, "at_chance": True}
    write_html(graph, path, None, dashboards=dense)
    open_page(browser, path)
    click_node(browser, "0_5_2")
    assert "At chance: a unit firing as often at random would get F1 0.8" in panel_text(browser)
    assert "The kind of document" not in panel_text(browser)
    family = json.loads(json.dumps(DASHBOARDS))  # the kind of document it fires in
    family["0_5"]["concept"] |= {"label": "family: names"}
    write_html(graph, path, None, dashboards=family)
    open_page(browser, path)
    click_node(browser, "0_5_2")
    assert "The kind of document the unit fires in, not what it reads" in panel_text(browser)
    never = {"1_3": {"frequency": 0.0, "examples": []}}  # fired on the prompt only
    write_html(graph, path, None, dashboards={**DASHBOARDS, **never})
    open_page(browser, path)
    click_node(browser, "1_3_3")
    text = panel_text(browser)
    assert "Never fired on the dashboards' tokens" in text and "Fires on" not in text


def test_global_graph_is_laid_out_by_stage_only(browser, tmp_path):
    local = make_graph()
    graph = dataclasses.replace(local, positional=False, pos=torch.zeros_like(local.pos))
    path = tmp_path / "graph.html"
    write_html(graph, path, None, title="Global circuit")
    open_page(browser, path)
    ids = drawn(browser)
    assert len(ids) >= 10
    assert browser.evaluate("document.querySelectorAll('#viewer svg text.axis').length") == 0
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    assert "global graph" in status
    xy = boxes(browser)
    stage = dict(zip(graph.ids, graph.stage.tolist(), strict=True))
    for a in xy:
        for b in xy:
            if stage[a] < stage[b]:
                assert xy[a][1] > xy[b][1]
    click_node(browser, graph.ids[7])  # 1_3_0: a feature unit
    assert "(global: a unit)" in panel_text(browser)
    # A unit's QK record reads as an expected score lift, with each side's strongest units.
    graph.qk = [dataclasses.replace(a, query=0) for a in local.qk]
    write_html(graph, path, None, title="Global circuit")
    open_page(browser, path)
    click_node(browser, "0_5_0")
    text = panel_text(browser)
    assert "QK: what its group attends with" in text and "L0 QK 2" in text
    block = browser.evaluate("document.querySelector('.qk').textContent")
    assert "expected QK attribution per firing" in block and "query side:" in block
    assert "key 1" not in block and "attention 0" not in block  # no positions here


def test_a_qk_circuits_pairs_read_as_from_the_weights(browser, tmp_path):
    """A review: the page of ``qk_circuit``'s graph (the heads report's induction circuit)
    called its record's pairs, from W_Q W_K^T alone, an "expected QK attribution per firing"
    with a "score lift" of +0. They read as what they are, on the viewer and the page."""
    local = make_graph()
    graph = dataclasses.replace(local, positional=False, pos=torch.zeros_like(local.pos))
    graph.qk = [dataclasses.replace(a, query=0) for a in local.qk]
    graph.global_record = GlobalRecord("qk_circuit")  # how ``qk_circuit`` makes it
    path = tmp_path / "graph.html"
    write_html(graph, path, None, title="QK circuit")
    page = path.read_text(encoding="utf-8")
    assert "L0 QK 2: from the weights alone" in page  # the page's own table of QK records
    assert "expected QK attribution per firing, score lift" not in page
    open_page(browser, path)
    click_node(browser, "0_5_0")
    block = browser.evaluate("document.querySelector('.qk').textContent")
    assert "from the weights alone" in block and "L0 QK 2" in block
    assert "per firing" not in block and "score lift" not in block


def test_a_downstream_global_graph_draws_and_tells_its_units_by_reach_from_the_start(
    browser, tmp_path
):
    """A reviewer found a downstream global graph (never pruned: no influence) drawn by its
    units' |activation|. Grown from token E_4_1, its units rank by their reach from it, from
    the page's data (``layout.node_scores``): E_4_1's |edges| 1.5 and 2.0 split its reach
    3:4 between 0_5_2 and 1_17_1, which pass it on whole to 1_3_3 and 2_2_3; both meet in
    3_9_3 (reach 1). At a budget of 3 the page draws 3_9_3, 1_17_1 and 2_2_3 (1_17_1 before
    1_3_3: 4/7 against 3/7), where |activation| (rising with the index here) drew 1_-1_3, an
    error no path from the token reaches; the status line and a unit's panel name it."""
    local = make_graph(influence=False)
    graph = dataclasses.replace(local, positional=False, pos=torch.zeros_like(local.pos),
                                target_weight=torch.zeros(local.n_nodes),
                                global_record=GlobalRecord("downstream"))  # fmt: skip
    graph.target_weight[local.ids.index("E_4_1")] = 1.0
    path = tmp_path / "graph.html"
    write_html(graph, path, None, title="Global circuit")
    open_page(browser, path)
    set_control(browser, "#viewer input[type=number]", 3, "change")
    name = dict(zip(graph.ids, local.ids, strict=True))  # a unit's id has no position
    kinds = dict(zip(graph.ids, graph.kinds, strict=True))
    inner = {name[d] for d in drawn(browser) if kinds[d] in layout.INNER_KINDS}
    assert {"3_9_3", "1_17_1", "2_2_3"} <= inner and "1_-1_3" not in inner, inner
    expected = layout.select(graph, max_nodes=3, max_edges=None)
    assert sorted(drawn(browser)) == sorted(graph.ids[i] for i in expected.nodes)
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    assert "ranked by reach from the start" in status, status
    click_node(browser, graph.ids[local.ids.index("1_17_1")])
    assert "\nactivation\n1.25\nreach from the start\n0.5714\n" in panel_text(browser)


def test_a_wide_global_graph_starts_at_its_middle_a_prompts_at_its_right(tmp_path):
    """In a narrow window the canvas scrolls: a prompt's graph starts at its right (the last
    position, the logits), a global graph, which has no positions, at its middle (it started
    at its right too, its stages' names and left half out of view; a review)."""
    big = make_big_graph()
    graphs = {"global": dataclasses.replace(big, positional=False, pos=torch.zeros_like(big.pos)),
              "prompt": big}  # fmt: skip
    # the panel goes under the drawing (500 px tall: at 800 cells wrap to fit the global graph)
    with Browser(width=480, height=500) as narrow:
        for name, graph in graphs.items():
            path = tmp_path / f"{name}.html"
            write_html(graph, path, None)
            open_page(narrow, path)
            left, width, shown = narrow.evaluate(
                "(() => { const c = document.querySelector('#viewer .canvas');"
                " return [c.scrollLeft, c.scrollWidth, c.clientWidth]; })()"
            )
            assert width > shown + 50, name  # it scrolls
            want = (width - shown) / 2 if name == "global" else width - shown
            # (a vertical scrollbar that comes after the scroll is set moves the middle by
            # half its width)
            assert abs(left - want) <= 10 if name == "global" else left == want, (left, want)


def test_text_from_the_graph_is_never_markup(browser, tmp_path):
    graph = make_graph()
    graph.prompt = "</script><script>window.pwned = 1</script><!-- <img src=x onerror=pwned=2>"
    graph.token_strings = ["<|bos|>", "</script>", "<!--", "<img src=x onerror=window.pwned=3>"]
    graph.token_text[100] = "</SCRIPT><b>bold</b>\x07ab\u202ecd"
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    text = path.read_text(encoding="utf-8")
    assert text.lower().count("</script") == 2  # the blob's and the viewer's own
    open_page(browser, path)
    assert browser.evaluate("typeof window.pwned") == "undefined"
    assert browser.evaluate("document.querySelectorAll('img, #viewer b').length") == 0
    click_node(browser, "E_9_3")
    assert "'<img src=x onerror=window.pwned=3>'@3" in panel_text(browser)
    click_node(browser, "1_17_1")
    panel = panel_text(browser)
    assert "</SCRIPT><b>bold</b>\\x07" in panel  # control characters as \xNN, as in the table
    # a right-to-left override (it would draw what follows backwards) as its code point
    assert "ab<U+202E>cd" in panel and "\u202e" not in panel


def test_a_dashboard_example_shows_its_newlines(browser, tmp_path):
    """A newline token in an example shows as ↵ before its line break: an activating newline
    was an empty box between two words, read as a space (a layer-0 head's top example on a
    trace of mine, "second▯fourth"), and a line break alone looks like the panel's wrapping."""
    dashboards = json.loads(json.dumps(DASHBOARDS))
    dashboards["0_5"]["examples"] = [
        {"group": "top", "tokens": ["<|bos|>", "second", "\n", "fourth", ".\n\n", "\t"],
         "at": 2, "activation": 2.5, "acts": [0, 0, 2.5, 0, 0, 0], "keys": [[4, 1.0]]},
    ]  # fmt: skip
    path = tmp_path / "graph.html"
    write_html(make_graph(), path, None, dashboards=dashboards)
    open_page(browser, path)
    click_node(browser, "0_5_2")
    shown = browser.evaluate(
        "[...document.querySelectorAll('#viewer .panel .example > *')].map(e => e.textContent)"
    )
    assert shown == ["2.5", "<|bos|>", "second", "↵\n", "fourth", ".↵\n↵\n", "⇥"]
    mark = "document.querySelector('#viewer .panel .example mark')"
    assert browser.evaluate(f"getComputedStyle({mark}).whiteSpace") == "pre-wrap"


def test_the_panel_writes_a_token_as_the_labels_do(browser, tmp_path):
    """A token in the panel reads as in the boxes, the table and the printed summary (Python's
    repr): a newline as '\\n', where it was a line break that the page shows as a space (a
    researcher's target '\\n', p 0.988, headed the Mechanisms panel as "' ' = 15.41"), a
    backslash doubled, a token holding a quote in the other quotes."""
    graph = make_graph()
    graph.token_strings = ["<|bos|>", "\n", "a\\b", "it's"]
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path)
    for node, pos in (("E_4_1", 1), ("E_6_2", 2), ("E_9_3", 3)):
        click_node(browser, node)
        assert f"\n{pos} {graph.token_strings[pos]!r}\n" in panel_text(browser), node


def test_a_real_trace_opens_and_explains_its_logit(browser, tmp_path):
    from circuits.attribution import attribute
    from circuits.prune import prune_graph
    from circuits.qk import qk_attribution
    from replacement.model import load_pretrained

    replacement, tokenizer = load_pretrained("default")
    tokens = tokenizer.encode("Monday, Tuesday, Wednesday,").ids
    graph = prune_graph(attribute(replacement, tokens, tokenizer=tokenizer))
    qk_attribution(replacement, graph)
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path)
    selection = layout.select(graph)
    assert sorted(drawn(browser)) == sorted(graph.ids[i] for i in selection.nodes)
    logit = int(graph.is_kind("logit").nonzero()[0])
    click_node(browser, graph.ids[logit])
    text = panel_text(browser)
    assert text.startswith(node_label(graph, logit)) and "Top incoming edges" in text
    head = next(i for i in selection.nodes if graph.qk_for(i))
    click_node(browser, graph.ids[head])
    text = panel_text(browser)
    assert "QK: why it attends the key it reads" in text and re.search(r"score [+-]\d", text)


def checked_weekday_page(tmp_path: Path, names: list[str]):
    """The shipped model's ``Monday, Tuesday, Wednesday,`` with ``names`` as logit targets:
    its mechanism summary with the ablation checks, and the page of its pruned graph."""
    from circuits.attribution import LogitTarget, attribute, run_prompt
    from circuits.mechanisms import summarize
    from circuits.prune import prune_graph
    from replacement.model import load_pretrained
    from toy_models.tokenizer import single_token

    replacement, tokenizer = load_pretrained("default")
    tokens = torch.tensor(tokenizer.encode("Monday, Tuesday, Wednesday,").ids)
    targets = [LogitTarget(single_token(tokenizer, t)) for t in names]
    run = run_prompt(replacement, tokens, "local", constants=True)
    full = attribute(replacement, tokens, targets=targets, tokenizer=tokenizer, run=run)
    summary = summarize(replacement, full, run)
    path = tmp_path / "graph.html"
    write_html(prune_graph(full), path, None, mechanisms=summary)
    return summary, path


def test_mechanisms_panel_names_the_target_of_each_flow_and_check(browser, tmp_path):
    """With several targets, each group's flows and ablation checks in the panel say which
    target they are for (one bare number per target could not be read)."""
    names = [" Thursday", " Friday"]
    summary, path = checked_weekday_page(tmp_path, names)
    open_page(browser, path)
    text = panel_text(browser)
    checks = [line for line in text.splitlines() if line.startswith("ablate")]
    assert len(checks) == sum(len(g.checks) for g in summary.groups) > 0
    assert all(any(line.startswith(f"ablate '{n}': predicted") for n in names) for line in checks)
    # and the target token's probability before and after each ablation, frozen and free
    c = summary.groups[0].checks[0]
    t = next(t for t in summary.targets if t.node == c.target)
    p = t.probability
    from reports.mechanisms import after_text, check_texts

    frozen, free, _ = check_texts(c, t)  # with the token now most likely, where it changed
    assert frozen.startswith(after_text(p, c.probability_frozen)[:-1])
    assert free.startswith(after_text(p, c.probability_free)[:-1])
    assert (
        f"ablate '{t.token}': predicted {c.predicted:+.3g}, frozen {c.frozen:+.3g}"
        f"{frozen}, free {c.free:+.3g}{free}"
    ) in text
    flows = [line for line in text.splitlines() if " · flow " in line]
    assert flows and all(f"'{names[0]}' " in line and f"'{names[1]}' " in line for line in flows)
    # each target names its predicting heads, then the other head groups there by flow, each
    # group by its key and name
    lines = text.splitlines()
    starts = [next(j for j, x in enumerate(lines) if x.startswith(f"'{t.token}' = "))
              for t in summary.targets] + [len(lines)]  # fmt: skip
    for k, t in enumerate(summary.targets):
        section = "\n".join(lines[starts[k] : starts[k + 1]])
        g = summary.group(t.predicting_group)
        assert f"{predicting_heading(g, t)}: {g.key} {g.name}, flow " in section
        assert t.head_groups[1:] and "next head groups there, by flow: " in section
        assert all(f"{o} {summary.group(o).name} " in section for o in t.head_groups[1:])


def test_a_summary_supernodes_panel_gives_its_checks(browser, tmp_path):
    """A review: a box marked "⚑ check flagged", its tooltip saying "the panel says how",
    opened a panel that said nothing of the check (the summary's own panel is gone once a box
    is clicked); a QK source's box ("g0 attends 0.74→0.36") likewise."""
    summary, path = checked_weekday_page(tmp_path, [" Thursday"])
    open_page(browser, path)
    boxes = browser.evaluate(
        "[...document.querySelectorAll('#viewer svg g.node[data-group]')]"
        ".map(b => [b.dataset.group, b.querySelector('text').textContent,"
        " b.classList.contains('flagged')])"
    )
    assert any(mark for *_, mark in boxes) and len(boxes) > 2  # L2 24 heads @7, flagged
    for k, key, mark in boxes:
        group = summary.group(key.split()[0])
        browser.click(*centre(browser, f'#viewer svg g.node[data-group="{k}"]'))
        text = panel_text(browser)
        checks = [line for line in text.splitlines() if line.startswith("ablate: predicted")]
        assert len(checks) == len(group.checks) > 0, (key, text[:400])
        assert ("[FLAGGED" in text) == mark == any(c.flagged for c in group.checks)


def legend_words(browser: Browser, where: str) -> str:
    """The words of the folded legend under ``where`` in the panel, opened (closed, the page
    shows its heading alone)."""
    sel = js(f"#viewer .panel {where} details.legend")
    assert browser.evaluate(f"!document.querySelector({sel}).open")
    text = browser.evaluate(
        f"(() => {{ const d = document.querySelector({sel}); d.open = true;"
        " return [...d.children].slice(1).map(e => e.innerText).join(' '); })()"
    )
    return " ".join(text.split())


def report_legend_words(browser: Browser) -> str:
    """The words of the report's legend (the Mechanisms section's, under the viewer) as the
    page shows them, its heading aside."""
    text = browser.evaluate(
        f"[...document.getElementById({js(LEGEND_ID)}).children].slice(1)"
        ".map(e => e.innerText).join(' ')"
    )
    return " ".join(text.split())


def test_the_panel_defines_the_summarys_words_as_the_printouts_legend_does(
    browser, tmp_path, weekday_trace
):
    """A review: the panel gave "always-on", "specific by roots", "against the means", "weak",
    "brings" and the ablate lines' marks with no definition, where the printout ends with a
    legend. The overview, a head's panel under its group's QK reason and a summary
    supernode's panel under its checks fold the printout's legend (one source:
    ``legend_blocks``), and a QK reason's and a check's line give their block as a tooltip.
    The report's Mechanisms section, under the viewer, ends with the same legend (it had prose
    of its own)."""
    from reports.mechanisms import QK_LEGEND, legend_blocks, legend_lines

    def printed(summary) -> str:  # the printout's legend, unwrapped
        return " ".join(" ".join(legend_lines(summary)[1:]).split())

    # a summary with ablation checks: the overview, then a summary supernode's panel
    summary, path = checked_weekday_page(tmp_path, [" Thursday"])
    assert "checks" in legend_blocks(summary)
    open_page(browser, path)
    assert "Legend: what the summary's words mean" in panel_text(browser)
    assert legend_words(browser, "") == printed(summary)
    assert report_legend_words(browser) == printed(summary)  # the report's, under the viewer
    tips = browser.evaluate(
        "[...document.querySelectorAll('#viewer .panel .mech-groups > li > div')]"
        ".filter(e => e.textContent.startsWith('ablate')).map(e => e.title)"
    )
    checks = " ".join(legend_blocks(summary)["checks"])
    assert tips and all(" ".join(t.split("\n")[:-1]) == checks for t in tips)
    box = browser.evaluate("document.querySelector('#viewer svg g.node[data-group]').dataset.group")
    browser.click(*centre(browser, f'#viewer svg g.node[data-group="{box}"]'))
    assert "ablate: predicted" in panel_text(browser)
    assert legend_words(browser, "") == printed(summary)
    # a QK reason: a head of a group with one, in its panel (no checks in this summary)
    _, graph, summary, path = weekday_trace
    assert "qk" in legend_blocks(summary) and "checks" not in legend_blocks(summary)
    g = next(g for g in summary.groups if g.kind == "lorsa" and g.qk
             and any(m in graph.id_to_index for m in g.members))  # fmt: skip
    head = next(graph.id_to_index[m] for m in g.members if m in graph.id_to_index
                and graph.qk_for(graph.id_to_index[m]))  # fmt: skip
    open_page(browser, path)
    show_in_panel(browser, head)
    words = legend_words(browser, "")
    assert words == printed(summary) and "always-on: " in words and "'weak': " in words
    assert report_legend_words(browser) == words  # (no checks: none of their words)
    tip = browser.evaluate(
        "document.querySelector('#viewer .panel .summary-reason > div + div').title"
    )
    assert tip.split("\n")[:-1] == list(QK_LEGEND)
    # a head outside every group shows no summary reason and no legend
    other = next(i for i in graph.is_kind("lorsa").nonzero().squeeze(1).tolist()
                 if graph.ids[i] not in {m for x in summary.groups for m in x.members}
                 and graph.qk_for(i))  # fmt: skip
    show_in_panel(browser, other)
    assert browser.evaluate("document.querySelector('#viewer .panel details.legend')") is None


def test_the_first_view_leads_with_the_predicting_path(browser, tmp_path, weekday_trace):
    """A review: on a first view the flagged supernodes (5 of 10 boxes in red dashes on
    ``Thursday then Friday then``) and the tangle of dashed q/k edges drew the eye from the
    predicting heads and the top paths. A flagged check is its box's red last line (a badge),
    the box itself drawn as any supernode; the predicting group's box is outlined thicker and
    the edges of the summary's top paths drawn at full strength over the rest; q/k edges are
    faint until their head is hovered or clicked. Nothing is hidden: tooltips, panel and legend
    still say each."""
    summary, path = checked_weekday_page(tmp_path, [" Thursday"])
    open_page(browser, path)
    style = (
        "((e) => { const s = getComputedStyle(e);"
        " return {stroke: s.stroke, dash: s.strokeDasharray,"
        " width: parseFloat(s.strokeWidth), opacity: parseFloat(s.strokeOpacity),"
        " fill: s.fill, fillOpacity: parseFloat(s.fillOpacity)}; })"
    )
    boxes = browser.evaluate(
        f"(() => {{ const st = {style};"
        " return [...document.querySelectorAll('#viewer svg g.node[data-group]')].map((g) => ({"
        " flagged: g.classList.contains('flagged'), predicting: g.classList.contains('predicting'),"
        " shape: st(g.querySelector('.shape')),"
        " last: [...g.querySelectorAll('text')].at(-1).textContent,"
        " lastFill: st([...g.querySelectorAll('text')].at(-1)).fill,"
        " title: g.querySelector('title').textContent})); })()"
    )
    flagged = [b for b in boxes if b["flagged"]]
    plain = [b for b in boxes if not b["flagged"] and not b["predicting"]]
    assert flagged and plain, boxes
    for b in flagged:  # the box as any supernode's; the mark is its red last line
        assert b["shape"]["stroke"] != "rgb(203, 24, 29)" and b["shape"]["dash"] == "none", b
        assert b["last"] == "\u2691 check flagged" and b["lastFill"] == "rgb(203, 24, 29)", b
        assert "its ablation check is flagged (the panel says how)" in b["title"]
    # the predicting group's box, outlined thicker than every other supernode's
    predicting = [b for b in boxes if b["predicting"]]
    assert len(predicting) == 1, boxes
    assert predicting[0]["shape"]["width"] > max(b["shape"]["width"] for b in plain)
    assert "the predicting heads of the mechanism summary" in predicting[0]["title"]
    # the top paths' edges: each step, group to group (the last to its target), between drawn
    # items holding their members, at full strength over every other edge
    expected = browser.evaluate(
        "(() => { const v = viewer, nodes = v.data.nodes, key = new Map();"
        " for (const g of document.querySelectorAll('#viewer svg g.node')) {"
        "  if (g.dataset.id) key.set(g.dataset.id, g.dataset.id);"
        "  else { const s = v.state.groups[+g.dataset.group];"
        "   for (const i of s.members) key.set(nodes[i].id, 'supernode:' + s.name); } }"
        " const m = v.data.mechanisms, members = new Map(m.groups.map((g) => [g.key, g.members]));"
        " const keys = (ids) => [...new Set(ids.map((id) => key.get(id)).filter((k) => k))];"
        " const out = new Set();"
        " for (const p of m.paths) {"
        "  const stops = [...p.groups.map((k) => members.get(k)), [p.target]];"
        "  for (let j = 1; j < stops.length; j++) for (const a of keys(stops[j - 1]))"
        "   for (const b of keys(stops[j])) out.add(a + '>' + b); }"
        " return v.edges().map(([s, t]) => s + '>' + t).filter((x) => out.has(x)); })()"
    )
    edges = browser.evaluate(
        f"(() => {{ const st = {style};"
        " return [...document.querySelectorAll('#viewer svg path.edge')].map((p) => ({"
        " key: p.dataset.s + '>' + p.dataset.t, on: p.classList.contains('on-path'),"
        " opacity: st(p).opacity, title: p.querySelector('title').textContent})); })()"
    )
    on = [e for e in edges if e["on"]]
    assert on and sorted(e["key"] for e in on) == sorted(expected), (on, expected)
    assert min(e["opacity"] for e in on) > max(e["opacity"] for e in edges if not e["on"])
    assert all("on a top path of the mechanism summary" in e["title"] for e in on)
    # a page with no summary keeps its edges as they were
    plain = tmp_path / "plain.html"
    write_html(make_graph(), plain, None)
    open_page(browser, plain)
    opacities = browser.evaluate(
        f"[...document.querySelectorAll('#viewer svg path.edge')].map((p) => ({style})(p).opacity)"
    )
    assert opacities and all(x == pytest.approx(0.65) for x in opacities), opacities
    # q/k edges faint, their letters readable, until their head is selected (a trace's page:
    # the checked one has no q/k edges)
    open_page(browser, weekday_trace[-1])
    edges = browser.evaluate(
        f"[...document.querySelectorAll('#viewer svg path.edge')].map((p) => ({style})(p))"
    )
    qk = (
        f"(() => {{ const st = {style};"
        " return [...document.querySelectorAll('#viewer svg g.qk-edge')].map((g) => ({"
        " t: g.dataset.t, s: g.dataset.s, path: st(g.querySelector('path')).opacity,"
        " letter: st(g.querySelector('.qk-label')).fillOpacity})); })()"
    )
    first = browser.evaluate(qk)
    assert first and all(e["path"] < min(x["opacity"] for x in edges) for e in first), first
    assert all(0.5 <= e["letter"] < 1 for e in first), first
    head = first[0]["t"]
    target = browser.evaluate(
        "(() => { const g = [...document.querySelectorAll('#viewer svg g.node')].find((g) =>"
        " (g.dataset.id || 'supernode:' + viewer.state.groups[+g.dataset.group].name)"
        f" === {js(head)});"
        " return g.dataset.id ? {id: g.dataset.id} : {group: g.dataset.group}; })()"
    )
    sel = (
        node_sel(target["id"])
        if "id" in target
        else (f'#viewer svg g.node[data-group="{target["group"]}"]')
    )
    browser.click(*centre(browser, sel))
    browser.move(1, 1)  # no box hovered: the selection alone
    after = browser.evaluate(qk)
    for e in after:
        mine = head in (e["t"], e["s"])
        assert (e["path"] >= 0.9 and e["letter"] == 1) if mine else e["path"] < 0.5, e
    # the legend says each
    help_ = browser.evaluate("document.querySelector('#viewer details.help summary').title")
    assert "predicting heads and top paths" in help_ and "\u2691 check flagged" in help_
    assert "faint until its head is hovered or clicked" in help_


def test_the_heads_behind_an_induction_key_are_drawn_with_their_qk_edge(browser, tmp_path):
    """On an induction prompt of no template, what the induction heads' key side comes from
    most through the graph (``qk_sources``) is the group of layer-0 heads at the key reading
    the token before it (ground truth: previous-token heads). Each carries a little, too
    little influence on the logit to make the drawing's budget, so the drawing brings the
    group's strongest member in beyond the budget with a QK edge into the induction heads:
    in the SVG's selection (``reports.layout.select``) and on the page, whose panel lists the
    group under the head's QK record."""
    from circuits.attribution import attribute
    from circuits.prune import prune_graph
    from circuits.trace import qk_step, sources_step

    prompt = "My sister plays violin on stage and my sister plays"
    replacement, tokenizer, tokens, run = shipped_run(prompt)
    full = attribute(replacement, tokens, tokenizer=tokenizer, run=run, prompt=prompt)
    graph = prune_graph(full)
    qk_step(replacement, graph, run)
    graph = sources_step(replacement, graph, run, full)
    key = graph.token_strings.index(" v")  # the first token of ' violin', which is predicted
    q = len(tokens) - 1
    induction = [i for i in graph.is_kind("lorsa").nonzero().squeeze(1).tolist()
                 if int(graph.layer[i]) == 2 and int(graph.pos[i]) == q
                 and graph.read_key(i) == key]  # fmt: skip
    assert len(induction) >= 10
    for i in induction:  # the largest source other than the key's own token (which no
        # head moves there; listed too, and drawn when it leads the side)
        top = next(x for x in graph.qk_for(i)[0].sources
                   if x.side == "key" and x.kind != "embedding")  # fmt: skip
        assert (top.kind, top.layer, top.pos, top.attends) == ("lorsa", 0, key, key - 1)
        assert len(top.members) >= 8 and top.value > 0
    # pruning drops them (their influence on the logit is small); the trace keeps the
    # strongest of each kept head's largest source group, so every induction head draws its
    # key side from its own largest group (a review found 3 of them with no key edge at all)
    at_query = [i for i in graph.is_kind("lorsa").nonzero().squeeze(1).tolist()
                if int(graph.layer[i]) == 2 and int(graph.pos[i]) == q]  # fmt: skip
    assert all(
        next(x for x in graph.qk_for(i)[0].sources if x.side == side).members[0]
        in graph.id_to_index
        for i in at_query
        for side in ("query", "key")
    )
    selection = layout.select(graph)
    members = {graph.id_to_index[m] for m in top.members if m in graph.id_to_index}
    behind = members & set(selection.behind)
    assert behind, "a previous-token head is drawn beyond the budget"
    assert {(e.source, e.side) for e in selection.qk if e.target in induction} >= {
        (b, "k") for b in behind}  # fmt: skip
    keyed = {e.target for e in selection.qk if e.side == "k"}
    assert all(i in keyed for i in induction if i in selection.nodes)
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path)
    assert sorted(drawn(browser)) == sorted(graph.ids[i] for i in selection.nodes)
    # the page draws the selection's QK edges, those of the heads drawn as sources included
    # (a review found the page drawing theirs and the SVG not)
    page_qk = browser.evaluate("[...document.querySelectorAll('#viewer svg g.qk-edge')]"
                               ".map(g => [g.dataset.s, g.dataset.t, g.dataset.side])")  # fmt: skip
    assert sorted(map(tuple, page_qk)) == sorted(
        (graph.ids[e.source], graph.ids[e.target], e.side) for e in selection.qk
    )
    assert any(e.target in behind for e in selection.qk)  # the previous-token head's own
    click_node(browser, graph.ids[induction[0]])
    text = panel_text(browser)
    assert "key side from, through the graph:" in text
    assert f"L0 {len(top.members)} heads @{key} reading @{key - 1} 'ays'" in text
    # the induction heads as a supernode: its panel sums their QK sources by group (side,
    # kind, layer, position, key read) over the members, as each head's record lists them
    group = ["induction", *(graph.ids[i] for i in induction)]
    open_page(browser, path, "#supernodes=" + json.dumps([group]))
    browser.click(*centre(browser, '#viewer svg g.node[data-group="0"]'))
    text = panel_text(browser)
    summed: dict = {}
    qk_heads = {}  # heads sharing a QK head at one query and key share its record: once each
    for i in induction:
        rec = graph.qk_for(i)[0]
        qk_heads.setdefault((rec.layer, rec.qk_head, int(graph.pos[i]), rec.key), rec)
    for rec in qk_heads.values():
        for x in rec.sources:
            at = (x.side, x.kind, x.layer, x.pos, x.attends)
            value, members = summed.get(at, (0.0, set()))
            summed[at] = (value + x.value, members | set(x.members))
    side, kind, layer, pos, attends = max((at for at in summed if at[0] == "key"
                                           and at[1] != "embedding"),
                                          key=lambda at: abs(summed[at][0]))  # fmt: skip
    value, members = summed[(side, kind, layer, pos, attends)]
    assert (kind, layer, pos, attends) == ("lorsa", 0, key, key - 1)
    lines = text.splitlines()
    at = lines.index("key side from:")
    n = len(qk_heads)
    assert 1 < n < len(induction)  # some share a QK head
    assert f"summed over the {n} QK heads of its {len(induction)} member heads with QK" in text
    # the key's own token first where it leads (largest |sum|), then the previous-token heads
    token = summed[("key", "embedding", -1, key, None)][0]
    assert abs(token) > abs(value)
    assert lines[at + 1].startswith(f"its own token ' v'@{key} {token:+.3g} ({n} of them): "), (
        lines[at + 1]
    )
    assert lines[at + 2].startswith(
        f"L0 {len(members)} heads @{key} reading @{key - 1} 'ays' {value:+.3g} ({n} of them): "
    ), lines[at + 2]


# ------------------------------------------------------------------------- readability review
ID_TEXT = re.compile(r"^(E|\d+)_(-?\d+|bias|pos)(-\d+)?(_\d+)?$")  # a node or unit id, not a label


def noderefs(browser: Browser) -> list[dict]:
    """Every node reference in the panel: its text, whether it is a link, its tooltip."""
    return browser.evaluate(
        "[...document.querySelectorAll('#viewer .panel .noderef')].map(e => ({text:"
        " e.textContent, link: e.tagName === 'BUTTON', title: e.title}))"
    )


def show_in_panel(browser: Browser, node: int) -> str:
    """Node ``node``'s panel, drawn or not (as a search result opens it)."""
    browser.evaluate(f"viewer.state.clicked = {{node: {node}}}; viewer.update()")
    return panel_text(browser)


@pytest.fixture(scope="module")
def weekday_trace(tmp_path_factory):
    """A real trace of the shipped model as ``python -m circuits.trace`` makes it (pruned, QK
    records with their reasons and sources, the mechanism summary; no ablation checks), its
    full graph and its page."""
    from circuits.attribution import attribute
    from circuits.mechanisms import summarize
    from circuits.prune import influence_scores, prune_graph
    from circuits.trace import qk_step, sources_step

    prompt = "Monday, Tuesday, Wednesday,"
    replacement, tokenizer, tokens, run = shipped_run(prompt)
    full = attribute(replacement, tokens, tokenizer=tokenizer, run=run, prompt=prompt)
    scored = influence_scores(full)
    graph = prune_graph(full, scored=scored)
    sides: dict = {}
    qk_step(replacement, graph, run, None, sides)
    graph = sources_step(replacement, graph, run, full, scored, None, sides)
    summary = summarize(replacement, full, run, pruned=graph, check=False)
    path = tmp_path_factory.mktemp("weekday") / "graph.html"
    write_html(graph, path, None, mechanisms=summary)
    return full, graph, summary, path


def test_mechanisms_panel_names_every_group_key(browser, weekday_trace):
    """A review found the summary reading "predicting heads ...: g0 (next by flow: g1, g2)":
    keys without what they are. Every key the panel shows comes with its group's name, as the
    printed summary writes it ("g0 L0 19 heads @7 -> ' Wednesday'@6"), the predicting group
    and the next ones by flow on lines of their own, and each path step is one element."""
    _, graph, summary, path = weekday_trace
    open_page(browser, path)
    text = panel_text(browser)
    names = {g.key: g.name for g in summary.groups}
    (t,) = summary.targets
    g = summary.group(t.predicting_group)
    heading = predicting_heading(g, t)
    assert f"{heading}: {g.key} {g.name}, flow +" in text, text
    assert len(t.head_groups) > 1
    line = next(x for x in text.splitlines() if x.startswith("next head groups there, by flow: "))
    assert line.count(";") == len(t.head_groups) - 2
    for k in t.head_groups[1:]:
        assert f"{k} {names[k]} " in line
    assert "next by flow: g" not in text and "undefined" not in text
    # the line after the predicting heads says why they attend there, as the printout does
    from reports.mechanisms import why_block

    why = why_block(g, summary)  # the term, then its token checks under it
    shown = [x for x in text.splitlines() if x.strip()]
    at = next(i for i, x in enumerate(shown) if x.startswith(f"{heading}: "))
    at = shown.index(why[0], at + 1)
    assert why and at <= next(i for i, x in enumerate(shown) if x.startswith(f"{heading}: ")) + 3
    assert shown[at : at + len(why)] == why  # after a flagged check, if any
    # each key is a chip that says what it is: its name beside it and in its tooltip
    chips = browser.evaluate(
        "[...document.querySelectorAll('#viewer .panel .group-ref')].map(e => e.textContent)"
    )
    assert chips and all(c.split(" ", 1)[1] == names[c.split(" ", 1)[0]] for c in chips)
    browser.evaluate("document.querySelector('#viewer .panel p.predicting .group-ref').click()")
    assert browser.evaluate(
        "document.querySelector('#viewer .panel .mech-groups > li.flash').textContent"
    ).startswith(f"{g.key} {g.name} · flow")
    # paths: every step is a chip "key name", steps joined by arrows outside the chips
    paths = [p for p in summary.paths if p.target == t.node]
    shown = browser.evaluate(
        "[...document.querySelectorAll('#viewer .panel ul.paths > li')].map(li =>"
        " [...li.querySelectorAll('.group-ref')].map(e => e.textContent))"
    )
    assert shown == [[f"{k} {names[k]}" for k in p.groups] for p in paths]
    assert "top paths, token to target:" in text
    # a path's root (a token) has no entry of its own: its chip shows its node (a review
    # found it did nothing)
    root = summary.group(paths[0].groups[0])
    node = next(m for m in root.members if m in graph.id_to_index)
    browser.evaluate("document.querySelector('#viewer .panel ul.paths > li .group-ref').click()")
    assert browser.evaluate("document.querySelector('#viewer .panel .id').textContent").startswith(
        node + " "
    )


def test_a_heads_panel_gives_its_groups_reason_from_the_summary(browser, weekday_trace):
    """A reviewer found a head's panel leading its QK record with a dense feature and the
    constants, where the printout gives the reason by tokens with its token checks: a head of
    a summary group shows the group's QK reason for its QK head, as the summary panel does."""
    _, graph, summary, path = weekday_trace
    g = next(g for g in summary.groups if g.kind == "lorsa" and g.qk
             and any(m in graph.id_to_index for m in g.members))  # fmt: skip
    r = g.qk[0]
    head = next(graph.id_to_index[m] for m in g.members if m in graph.id_to_index
                and graph.qk_for(graph.id_to_index[m])
                and graph.qk_for(graph.id_to_index[m])[0].qk_head == r.qk_head)  # fmt: skip
    open_page(browser, path)
    text = show_in_panel(browser, head)
    heading = f"In the mechanism summary, group {g.key} {g.name}:"
    assert heading in text, text
    after = text.split(heading, 1)[1]
    assert after.lstrip().startswith(f"QK {r.qk_head} → {r.key_token!r}@{r.key}: score ")
    # its heading, then a block per list of terms, a term a line
    roots = [x.strip() for x in block_lines(root_block(r, PAIRS_SHOWN), "")]
    assert [x for x in after.splitlines() if x.strip()][1 : 1 + len(roots)] == roots
    other = next(i for i in graph.is_kind("lorsa").nonzero().squeeze(1).tolist()
                 if graph.ids[i] not in {m for x in summary.groups for m in x.members}
                 and graph.qk_for(i))  # fmt: skip
    assert "In the mechanism summary" not in show_in_panel(browser, other)
    # a member whose QK head the group's reasons leave out gets them, saying so
    qk_heads = {x.qk_head for x in g.qk}
    elsewhere = [graph.id_to_index[m] for m in g.members if m in graph.id_to_index
                 and graph.qk_for(graph.id_to_index[m])
                 and graph.qk_for(graph.id_to_index[m])[0].qk_head not in qk_heads]  # fmt: skip
    if elsewhere:
        own = graph.qk_for(elsewhere[0])[0].qk_head
        assert (
            f"{g.key} {g.name} (for its QK {', '.join(str(x.qk_head) for x in g.qk)}; "
            f"this head's QK {own} is below):" in show_in_panel(browser, elsewhere[0])
        )


def test_a_head_targets_panel_says_where_it_reads_and_why(browser, tmp_path):
    """A head target reads its inputs at its key: the panel says so and gives its own QK
    reason there, as the printed summary does (``TargetRecord.reads``, ``.qk``)."""
    from circuits.attribution import NodeTarget, attribute
    from circuits.mechanisms import summarize
    from reports.mechanisms import reads_text

    prompt = "The cat sat on the mat. The dog sat on the"
    replacement, tokenizer, tokens, run = shipped_run(prompt)
    target = NodeTarget("lorsa", 2, len(tokens) - 1, 573)  # an induction head reading ' m'
    full = attribute(replacement, tokens, tokenizer=tokenizer, run=run, prompt=prompt,
                     targets=[target])  # fmt: skip
    summary = summarize(replacement, full, run, check=False)
    (t,) = summary.targets
    assert t.reads is not None and t.qk and full.token_strings[t.reads] == " m"
    path = tmp_path / "graph.html"
    write_html(full, path, None, mechanisms=summary)
    open_page(browser, path)
    text = panel_text(browser)
    assert reads_text(t, summary.tokens) in text
    r = t.qk[0]
    assert f"QK {r.qk_head} → ' m'@{t.reads}: score " in text
    lines = [x.strip() for x in text.splitlines()]  # its induction reason, tokens first:
    assert lines[lines.index("moved to the key:") + 1].startswith("token ' the'@")  # a term a line
    assert summary.group(t.predicting_group).pos == t.reads


def test_qk_terms_name_nodes_by_label_in_the_graph_or_not(browser, tmp_path):
    """A review found a head's QK terms as raw ids ("1_1859_15 × 1_1859_7 +5.04"). Every node
    a QK record names reads as its label: a link when the graph holds it, else a label made
    from the fields the page data holds for it (``refs``: kind, layer, index, position),
    units without a position (a QK reason's side absent at its position, the contrast's key
    units) named as units."""
    graph = make_graph()
    a = graph.qk[0]
    graph.qk[0] = dataclasses.replace(
        a,
        contrast=0.7,
        contrast_pairs=[QKPair("E_6_2", "1_17", 0.5), QKPair("0_-1_2", "bias", 0.1)],
        reason=QKReason(
            mean_query_mean_key=0.5, query_vs_mean_key=-0.2, mean_query_vs_key=0.4,
            specific=2.3, pairs=[QKPair("E_6_2", "E_4_1", 1.5), QKPair("E_6_2", "E_9", -0.3),
                                 QKPair("0_-1_2", "2_bias_1", 0.2)],
            rest=0.9, rest_share=0.2, query_units=[], key_units=[],
        ),
    )  # fmt: skip
    name_sides(graph)
    label = {name: node_label(graph, i) for i, name in enumerate(graph.ids)}
    data = viewer_data(graph)
    refs = data["refs"]
    assert refs["1_99_3"] == {"kind": "transcoder", "stage": 2, "layer": 0, "index": 99,
                              "pos": 3, "label": "L0 feature 99 @3", "short": "F99"}  # fmt: skip
    assert refs["E_9"]["label"] == "token '&x'" and refs["E_9"]["pos"] is None
    assert refs["1_17"]["label"] == "L0 feature 17" and refs["2_bias_1"]["kind"] == "bias"
    assert "E_6_2" not in refs  # in the graph: the page has its node
    assert viewer_data(dataclasses.replace(graph, token_text={}))["refs"]["E_9"]["label"] == (
        "token id 9"  # no text for it in the graph: not a made-up token '<9>'
    )
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path)
    click_node(browser, "0_5_2")
    text = panel_text(browser)
    e62, e41 = label["E_6_2"], label["E_4_1"]
    assert f"{e62} × {e41}: +2" in text and f"bias × {e41}: +0.6" in text
    # absent at the key: its mean acts
    assert f"{e62} × minus the mean's token '&x' (not at this position): -0.3" in text
    assert "L0 attn error @2 × L1 attn bias @1 (constant): +0.2" in text
    assert f"{e62} × L0 feature 17: +0.5" in text and "L0 attn error @2 × bias: +0.1" in text
    refs_shown = noderefs(browser)
    assert not [r for r in refs_shown if ID_TEXT.match(r["text"])], refs_shown
    link = next(r for r in refs_shown if r["text"] == e62)
    assert link["link"] and "E_6_2" in link["title"]  # the id stays in reach, in the tooltip
    # the edge tables name the node at the other end by its label, as links
    incoming = browser.evaluate(
        "[...document.querySelectorAll('#viewer .panel table.edges')[0].rows]"
        ".map(r => r.cells[0].textContent + ' ' + r.cells[1].textContent)"
    )
    assert incoming == [f"{e41} +1.5", f"{e62} +0.5"]
    # a pair whose query side pruning dropped: a label, not a link, the id in its tooltip
    click_node(browser, "2_2_3")
    assert 'L0 feature 99 @3 × L0 feature 17 @1 -> \'say "hi"' in panel_text(browser)
    absent = [r for r in noderefs(browser) if not r["link"]]
    assert [r["text"] for r in absent] == ["L0 feature 99 @3"]
    assert all("1_99_3" in r["title"] and "not in this pruned graph" in r["title"] for r in absent)


def test_a_real_heads_qk_terms_read_as_labels(browser, weekday_trace):
    """On a real trace most nodes a QK record names were pruned away: each reads as the
    beginning of the label it has in the full graph (what the page cannot know, such as the
    key a pruned head reads, is left out), never as its id."""
    full, graph, _, path = weekday_trace
    open_page(browser, path)

    def pruned(i: int) -> int:
        named = {n for a in graph.qk_for(i) for n in a.names()}
        return sum(n in full.id_to_index and n not in graph.id_to_index for n in named)

    heads = sorted((i for i in range(graph.n_nodes) if graph.qk_for(i)), key=pruned)[-4:]
    assert pruned(heads[0]) > 0
    checked = 0
    for i in heads:
        show_in_panel(browser, i)
        refs_shown = noderefs(browser)
        assert refs_shown and not [r for r in refs_shown if ID_TEXT.match(r["text"])]
        for r in refs_shown:
            if r["link"]:
                continue
            # the tooltip: "label: not in this pruned graph (id ...)"; the text the label or,
            # among a source group's members, the short text the drawing would show ("H103")
            name = re.search(r"\(id (\S+)\)", r["title"]).group(1)
            if name not in full.id_to_index:
                continue  # a unit (no position): named as one
            text = r["title"].split(": not in this pruned graph")[0]
            assert node_label(full, full.id_to_index[name]).startswith(text), r
            assert r["text"] == text or r["text"] in short_label_lines(full, full.id_to_index[name])
            checked += 1
    assert checked >= 10


def test_global_graph_counts_agree_and_say_what_they_count(browser, tmp_path):
    """A review found a global graph's toolbar saying "Nodes 14 of 14" beside "Drawing 40 of
    40 nodes": the first counts the heads and features the budget ranks, the second every
    drawn node, tokens included. The toolbar names what its number counts, and the status
    line splits the drawn nodes into the budget's kinds, tokens and targets, which add up."""
    local = make_graph()
    graph = dataclasses.replace(local, positional=False, pos=torch.zeros_like(local.pos))
    path = tmp_path / "graph.html"
    write_html(graph, path, None, title="Global circuit")
    open_page(browser, path)
    toolbar = browser.evaluate("document.querySelector('#viewer .toolbar').innerText")
    assert "of 7 heads, features and errors" in toolbar and "Nodes" not in toolbar
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    n = len(drawn(browser))
    assert (
        f"Drawing {n} of 13 nodes: 7 of 7 heads, features and errors, {n - 9} of 4 tokens, "
        "2 of 2 logits · "
    ) in status, status
    # a budget below what is drawn: the pinned node beyond it is counted and said
    set_control(browser, "#viewer input[type=number]", 2, "change")
    low = min(
        (i for i, k in enumerate(graph.kinds) if k in ("lorsa", "transcoder")),
        key=lambda i: float(graph.influence[i]),
    )
    browser.evaluate(f"viewer.state.pinned.add({low}); viewer.update()")
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    inner = [d for d in drawn(browser) if graph.kinds[graph.ids.index(d)] not in
             ("embedding", "logit")]  # fmt: skip
    assert f": {len(inner)} of 7 heads, features and errors (the top 2 and " in status, status
    assert "Drawing 14 of 13" not in status
    # a local graph: the same words
    path = tmp_path / "local.html"
    write_html(local, path, None)
    open_page(browser, path)
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    assert "Drawing 12 of 13 nodes: 7 of 7 heads, features and errors, 3 of 4 tokens, " in status


def test_a_sparse_graphs_page_says_its_probabilities_are_the_replacements(browser, tmp_path):
    """A reviewer read ' Thursday' p=0.811 in a sparse page's box and panels, with the model at
    0.982 and the caveat only in the static section below the fold: the status line says it,
    and a local graph's does not."""
    for mode in ("sparse", "local"):
        graph = make_graph()
        graph.mode = mode
        if mode == "sparse":  # and the model's own top token (a review's sparse trace explained
            # a near-tie the model did not have: only stderr said it put '0' first)
            top = next(iter(graph.token_text)) if graph.token_text else 5
            graph.model["model_top"] = [top, 0.233]
        path = tmp_path / f"{mode}.html"
        write_html(graph, path, None)
        open_page(browser, path)
        status = browser.evaluate("document.querySelector('#viewer .status').textContent")
        says = "its probabilities are the replacement's, except those said to be the model's"
        assert (says in status) == (mode == "sparse"), status
        first = f"the model itself puts {graph.token(top)!r} first (p=0.233)"
        assert (first in status) == (mode == "sparse"), status


def test_a_sparse_logits_box_shows_the_models_probability_whole(browser, tmp_path):
    """A review: a sparse page's logit box read "p=0.753 (model 0.…", the model's number cut
    off at the line's 18 characters. It has a line of its own, the token and p sharing one
    where they fit; each line's text lies inside its box."""
    graph = make_graph()
    graph.mode = "sparse"
    graph.logit_targets = [
        dataclasses.replace(r, model_probability=p)
        for r, p in zip(graph.logit_targets, (0.2, 2.1e-07), strict=True)
    ]
    assert short_label_lines(graph, graph.ids.index("5_11_3")) == ["'9' p=0.700", "(model 0.200)"]
    # a long token: token, p and the model's, a line each
    graph.token_text[7] = " Wednesdays"
    assert short_label_lines(graph, graph.ids.index("5_7_3")) == [
        "' Wednesdays'",
        "p=0.300",
        "(model 2.1e-07)",
    ]
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path)
    for node in ("5_11_3", "5_7_3"):
        texts, box = browser.evaluate(
            f"(() => {{ const g = document.querySelector({js(node_sel(node))});"
            " const b = g.querySelector('.shape').getBBox();"
            " return [[...g.querySelectorAll('text')].map(t => { const r = t.getBBox();"
            " return [t.textContent, r.x, r.y, r.width, r.height]; }),"
            " [b.x, b.y, b.width, b.height]];"
            " })()"
        )
        assert any("(model " in t[0] and t[0].endswith(")") for t in texts), texts
        for _, x, y, w, h in texts:
            assert box[0] <= x and x + w <= box[0] + box[2], (node, texts, box)
            assert box[1] <= y and y + h <= box[1] + box[3] + 0.5, (node, texts, box)


# ------------------------------------------------------------- a review of the page: five findings
def test_a_heads_qk_sources_say_features_are_not_summed_and_where_they_are(browser, weekday_trace):
    """A review found a head's "query side from, through the graph" listing a token and two
    head groups where the summary's line named "L0 32 features @15 +12.5": a record's sources
    count each feature alone and keep each side's largest few, so many small features go
    unlisted. The page holds no per-head sum of them: the panel says so, and where the sums
    are (the summary's lines above where it shows them for this QK head, else the section
    below), as does a supernode's summed list."""
    _, graph, summary, path = weekday_trace
    open_page(browser, path)
    note = "Features are not summed here as heads are (each counts alone)"
    heads = [i for i in range(graph.n_nodes) if graph.qk_for(i) and graph.qk_for(i)[0].sources]
    assert heads
    reasons = {(m, r.qk_head) for g in summary.groups for r in g.qk if r.query_sources
               or r.key_sources for m in g.members}  # fmt: skip
    checked = set()
    for i in heads:
        above = (graph.ids[i], graph.qk_for(i)[0].qk_head) in reasons
        if above in checked:
            continue
        text = show_in_panel(browser, i)
        after = text.split("key side from, through the graph:", 1)[1]
        assert note in after.split("largest terms of the whole score", 1)[0], text
        where = "lines above sum them" if above else "the Mechanisms section below"
        assert where in after, (graph.ids[i], above)
        checked.add(above)
    assert checked == {True, False}
    # a supernode of heads sums its members' sources: the same note under its lists
    members = [graph.ids[i] for i in heads[:3]]
    browser.evaluate(f"viewer.group({js(members)}, 'heads')")
    assert note in panel_text(browser).split("key side from:", 1)[-1]


def test_a_block_0_qk_edge_gives_each_side_its_own_value(browser, tmp_path):
    """A review found a block-0 head's two QK edges (no sources: its sides hold tokens and
    constants) each showing the largest pair's term, the same number for the query and the
    key side. Each side shows its node's own total over the other side (the record's
    marginal), and where the record lists none, the pair's term, said to be one."""
    graph = make_graph()
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path)
    edges = (
        "[...document.querySelectorAll('#viewer svg g.qk-edge[data-t=\"0_5_2\"]')].map(g =>"
        " ({s: g.dataset.s, side: g.dataset.side, title: g.querySelector('title').textContent}))"
    )
    qk = browser.evaluate(edges)
    by_side = {e["side"]: e for e in qk}
    assert by_side["q"]["s"] == "E_6_2" and by_side["k"]["s"] == "E_4_1"  # the pair's two sides
    assert by_side["q"]["title"].endswith("+2.2 (its terms with every key-side node, summed)")
    assert by_side["k"]["title"].endswith("+2.6 (its terms with every query-side node, summed)")
    # the record holds no total of the key side's node: the pair's term, named as one
    graph.qk[0] = dataclasses.replace(graph.qk[0], key_marginals=[])
    write_html(graph, path, None)
    open_page(browser, path)
    qk = browser.evaluate(edges)
    key = next(e for e in qk if e["side"] == "k")
    e62 = node_label(graph, graph.ids.index("E_6_2"))
    assert key["title"].endswith(
        f"+2 (one pair's term, with {e62} on the query side; the record holds no total of this "
        "node)"
    ), key


def test_p_on_a_supernode_says_why_it_is_not_pinned(browser, small_page):
    """A review: `p` on a focused supernode did nothing and said nothing. A supernode is drawn
    whole at any budget, so there is nothing to pin: one line says so, and goes at the next
    redraw."""
    graph, path = small_page
    open_page(browser, path)
    browser.evaluate("viewer.group(['1_3_3', '2_2_3'], 'pair')")
    message = "document.querySelector('#viewer .message').textContent"
    assert browser.evaluate(message) == ""
    browser.evaluate(
        "document.querySelector('#viewer svg g.node[data-group=\"0\"]').focus();"
        " document.activeElement.dispatchEvent(new KeyboardEvent('keydown', {key: 'p',"
        " bubbles: true}))"
    )
    text = browser.evaluate(message)
    assert text.startswith("Supernode 'pair' is not pinned: a supernode is always drawn"), text
    assert browser.evaluate("viewer.data.qParams.pinnedIds") == []
    assert browser.evaluate("document.querySelector('#viewer .message').offsetHeight") > 0
    set_control(browser, "#viewer input[type=number]", 2, "change")
    assert browser.evaluate(message) == ""


def test_notes_about_the_url_say_how_many_were_left_out(browser, small_page):
    """A review: the notes on what the URL held that the page ignores were cut to three,
    silently; the line says how many more there were."""
    graph, path = small_page
    open_page(browser, path, "#pinnedIds=a1,a2,a3,a4,a5,3_9_3&clickedId=zz")
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    assert "ignored from the URL: no node a1; no node a2; no node a3; ... and 3 more" in status
    assert "a4" not in status  # each left-out note is counted, not shown
    open_page(browser, path, "#pinnedIds=a1,a2,a3")
    # (the line's text, before its button listing the nodes left out)
    status = browser.evaluate("document.querySelector('#viewer .status-text').textContent")
    assert status.endswith("ignored from the URL: no node a1; no node a2; no node a3"), status
    # a budget beyond the page is drawn at the most and said to be (it was clamped silently)
    most = browser.evaluate("Number(document.querySelector('#viewer input[type=number]').max)")
    open_page(browser, path, "#nodes=99999")
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    assert f"nodes=99999: more than the page has, {most} drawn" in status
    assert browser.evaluate("viewer.state.budget") == most


def test_grouping_and_ungrouping_at_the_full_budget_draws_every_node_again(browser, small_page):
    """A review: with every node drawn, grouping two nodes clamped the budget to the fewer
    boxes (6 of 6) and ungrouping them left it there (6 of 7): a node drawn before was gone.
    A budget at its most stays at its most; below it, it stays as it was."""
    graph, path = small_page
    open_page(browser, path)
    every = sorted(drawn(browser))
    assert browser.evaluate("viewer.state.budget") == 7 and len(every) == 12
    for undo in ("#viewer .panel button.ungroup", "#viewer button.ungroup-all"):
        browser.evaluate("viewer.group(['3_9_3', '2_2_3'], 'pair')")
        assert browser.evaluate("viewer.state.budget") == 6  # every box: one fewer
        browser.evaluate(f"document.querySelector({js(undo)}).click()")
        assert browser.evaluate("viewer.state.budget") == 7
        assert sorted(drawn(browser)) == every
    set_control(browser, "#viewer input[type=number]", 3, "change")
    three = sorted(drawn(browser))
    browser.evaluate("viewer.group(['3_9_3', '2_2_3'], 'pair')")
    browser.evaluate("document.querySelector('#viewer .panel button.ungroup').click()")
    assert browser.evaluate("viewer.state.budget") == 3 and sorted(drawn(browser)) == three


def test_the_budget_counts_a_supernode_as_one_box(browser, small_page):
    """A review: with a summary's supernodes drawn the budget did little (budget 20 to 30
    added 2 boxes; the status read "the top 0 and 127 more"): the top-ranked nodes were the
    supernodes' members, drawn inside them whatever the budget. A supernode now counts as one
    box, the rest of the budget goes to the nodes outside every supernode, and each step of
    the budget adds one box; the page starts with the picture it was written with."""
    graph, path = small_page
    # the two highest-ranked heads and features as a supernode (influence falls with the index)
    q = {"supernodes": [["top", "0_5_2", "0_-1_2"]]}
    write_html(graph, path, None, q_params=q)
    open_page(browser, path)
    inner = ("lorsa", "transcoder", "error")
    assert browser.evaluate("viewer.state.budget") == 6  # the page's 7 of 7: 1 box + 5 outside
    assert url_state(browser) == {}
    toolbar = browser.evaluate("document.querySelector('#viewer .toolbar').innerText")
    assert "of 6: 1 supernode (one each) + 5 heads, features and errors outside them" in toolbar
    assert browser.evaluate("document.querySelector('#viewer input[type=number]').max") == "6"
    ranked = ["1_17_1", "1_3_3", "1_-1_3", "2_2_3", "3_9_3"]  # outside it, by influence
    for budget in range(0, 7):
        set_control(browser, "#viewer input[type=number]", budget, "change")
        singles = [d for d in drawn(browser) if graph.kinds[graph.ids.index(d)] in inner]
        assert browser.evaluate("viewer.supernodes()") == ["top"]
        assert sorted(singles) == sorted(ranked[: max(0, budget - 1)]), budget
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    assert "(the budget's 6: 1 supernode holding 2, one box each, and the top 5 outside them)" in (
        status
    )
    set_control(browser, "#viewer input[type=number]", 0, "change")
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    assert "past the budget's 0, as supernodes are always drawn" in status
    # a budget past the end is the end: every supernode and node outside them
    set_control(browser, "#viewer input[type=number]", 1000, "change")
    assert browser.evaluate("viewer.state.budget") == 6


def test_a_supernode_of_tokens_or_logits_takes_no_box_of_the_budget(browser, small_page):
    """A review: grouping a name's sub-tokens into a supernode took a head out of the drawing
    (the status line: "the budget's 33: 1 supernode holding 0, one box each, and the top 32
    outside them"). Tokens and logits are drawn beside the budget; so is a supernode of them
    alone. One holding a head, feature, error or constant counts as one box, as before."""
    graph, path = small_page
    open_page(browser, path, "#nodes=3")
    inner = ("lorsa", "transcoder", "error")

    def singles():
        return sorted(d for d in drawn(browser) if graph.kinds[graph.ids.index(d)] in inner)

    top3 = singles()
    assert len(top3) == 3
    toolbar = "document.querySelector('#viewer .toolbar').innerText"
    status = "document.querySelector('#viewer .status').textContent"
    browser.evaluate("viewer.group(['E_4_1', 'E_6_2'], 'name')")  # two tokens
    assert browser.evaluate("viewer.supernodes()") == ["name"] and singles() == top3
    assert browser.evaluate("viewer.state.budget") == 3 and url_state(browser)["nodes"] == "3"
    assert "of 7 heads, features and errors" in browser.evaluate(toolbar)
    assert "supernode holding 0" not in browser.evaluate(status)
    assert "(2 of them in 1 supernode)" in browser.evaluate(status)
    browser.evaluate("viewer.group(['5_11_3', '5_7_3'], 'logits')")  # two logits
    assert browser.evaluate("viewer.supernodes()") == ["name", "logits"] and singles() == top3
    # a supernode with a head in it is one box of the budget
    browser.evaluate("viewer.group(['E_9_3', '1_3_3'], 'mixed')")
    assert browser.evaluate("viewer.state.budget") == 3
    assert len(singles()) == 2 and "1_3_3" not in singles()
    assert "of 7: 1 supernode (one each) + 6 heads, features and errors outside them" in (
        browser.evaluate(toolbar)
    )
    assert "1 supernode holding 1, one box each, and the top 2 outside them" in (
        browser.evaluate(status)
    )
    # the URL gives the same picture back
    url = browser.evaluate("location.href")
    open_page(browser, path, "#" + url.split("#", 1)[1])
    assert browser.evaluate("viewer.supernodes()") == ["name", "logits", "mixed"]
    assert len(singles()) == 2 and browser.evaluate("viewer.state.budget") == 3


def test_a_global_graphs_first_view_draws_its_influential_tokens_not_tiny_qk_partners(
    monkeypatch,
):
    """A review of a global graph (upstream of ' Thursday'): the default edge threshold hid
    ' Tuesday' (influence 0.15: its edges, means into targets of their own units, were weak)
    while tokens of influence 0 were drawn for QK edges holding 0.2-2% of their heads' lifts.
    Now a token at least as influential as the median drawn head or feature keeps its
    strongest edge in a global graph, and a QK edge read from a record's pairs needs
    ``QK_MIN_SHARE`` of the head's score."""
    monkeypatch.setattr(layout, "EDGES_PER_NODE", 0)  # the threshold is the tokens' alone
    local = make_graph()
    graph = dataclasses.replace(local, positional=False, pos=torch.zeros_like(local.pos))
    edges = {(graph.ids[e.source], graph.ids[e.target]) for e in layout.select(graph).edges}
    # E_9_0 (influence 0.775, above the median 0.475) has one edge, the graph's weakest
    assert ("E_9_0", "1_3_0") in edges and ("E_4_0", "1_17_0") in edges
    # a prompt's graph: no threshold lowered, only each influential token's strongest edge
    prompt = layout.select(local)
    assert set(prompt.edges) == set(prompt.token_edges)
    assert {(local.ids[e.source], local.ids[e.target]) for e in prompt.edges} == {
        ("E_4_1", "1_17_1"),
        ("E_6_2", "0_5_2"),
        ("E_9_3", "1_3_3"),
    }
    view = viewer_data(graph)["view"]
    assert view["edgeMin"] == 0.25 and view["qkMinShare"] == layout.QK_MIN_SHARE
    # a block-0 head's record (pairs, no sources): its top query node E_6_2 brings 2.2 of a
    # score of 3, then of 100
    qk = {(local.ids[e.source], local.ids[e.target]) for e in layout.select(local).qk}
    assert ("E_6_2", "0_5_2") in qk
    local.qk = [dataclasses.replace(a, score=100.0) if a.layer == 0 else a for a in local.qk]
    qk = {(local.ids[e.source], local.ids[e.target]) for e in layout.select(local).qk}
    assert not any(t == "0_5_2" for _, t in qk)


def weak_token_graph() -> tuple[Graph, int]:
    """A big prompt graph whose token E_3_3 (influence 0.94, above every drawn head's) has only
    edges a thousand times weaker than the drawing's threshold."""
    graph = make_big_graph()
    j = graph.ids.index("E_3_3")
    edges = graph.edges.tocsc()
    edges[:, [j]] = edges[:, [j]] * 1e-3
    graph.edges = edges.tocsr()
    return graph, j


def test_a_prompts_influential_token_is_drawn_with_its_strongest_edge_alone():
    """A review of prompt traces: a token of influence 0.022 was left out while the least
    influential drawn head had 0.0099, its edges being under the threshold. Lowering the
    threshold to reach it took a 29-token drawing from 174 edges to 694, so a prompt's
    selection adds each such token's strongest edge alone, below the threshold."""
    graph, j = weak_token_graph()
    s = layout.select(graph)
    inner = [i for i in s.nodes if graph.kinds[i] in layout.INNER_KINDS]
    assert graph.influence[j] > min(graph.influence[i] for i in inner)
    assert j in s.nodes
    ((edge,),) = [[e for e in s.edges if e.source == j]]  # one edge, its strongest
    to_drawn = [e for e in layout.strongest_edges(graph) if e.source == j and e.target in s.nodes]
    assert edge == to_drawn[0]  # its strongest to what is drawn
    over = [e for e in s.edges if e != edge]
    assert s.token_edges == (edge,) and len(over) == 166  # the others as without it
    assert abs(edge.weight) < 0.01 < min(abs(e.weight) for e in over)
    # the page's threshold stays at the weakest edge over it, not the token's
    view = viewer_data(graph, selection=s)["view"]
    assert view["edgeMin"] == pytest.approx(min(abs(e.weight) for e in over), rel=1e-4)


def test_the_svg_draws_a_prompts_influential_tokens_weak_edge_dotted():
    """The static drawing drew the token's edge under the threshold like those over it (its
    caption alone counted it): it is dotted, said in its tooltip and the legend, as the page
    draws it; a drawing without one says nothing of dots."""
    from reports.graphviz import TOKEN_EDGE_NOTE, to_dot

    graph, j = weak_token_graph()
    dot = to_dot(graph)
    dotted = [line for line in dot.splitlines() if 'style="dotted"' in line]
    assert len(dotted) == 1 and dotted[0].lstrip().startswith('"E_3_3" ->'), dotted
    assert TOKEN_EDGE_NOTE in dotted[0]
    assert "dotted under the threshold" in dot
    plain = to_dot(make_big_graph())
    assert "dotted" not in plain and TOKEN_EDGE_NOTE not in plain


def test_a_token_edges_note_under_the_threshold_is_written_once():
    """Found in review: the SVG's tooltip sentence for a token's edge under the threshold was
    a copy of the page script's, each free to change alone; the page reads it from its data
    (view.tokenEdgeNote, reports.layout.TOKEN_EDGE_NOTE), the script holds no copy."""
    from reports import viewer
    from reports.viewer import default_view

    graph, _ = weak_token_graph()
    view = default_view(graph, layout.select(graph))
    assert view["tokenEdgeNote"] == layout.TOKEN_EDGE_NOTE
    script = (Path(viewer.__file__).with_name("viewer") / "viewer.js").read_text()
    assert "drawn as it outranks" not in script


def test_the_page_draws_a_prompts_influential_tokens_strongest_edge_as_the_selection(
    browser, tmp_path
):
    """The page's first view is the selection's, the token's weak edge included (viewer.js
    tokenEdges), said on the status line and not listed as left out; the rule follows the
    budget: with the budget at 5 the least drawn head outranks the token no longer."""
    graph, j = weak_token_graph()
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path)
    s = layout.select(graph)
    assert sorted(drawn(browser)) == sorted(graph.ids[i] for i in s.nodes)
    assert sorted(drawn_edges(browser)) == sorted(
        (graph.ids[e.source], graph.ids[e.target], e in s.token_edges) for e in s.edges
    )
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    assert "and 1 influential token's strongest under it, dotted" in status, status
    # drawn apart from the edges over the threshold, as the SVG draws it (a note's Left)
    dashes = browser.evaluate(
        "[...document.querySelectorAll('#viewer svg path.edge')].map((p) => "
        "[p.classList.contains('token'), getComputedStyle(p).strokeDasharray])"
    )
    assert {tuple(d) for d in dashes} == {(True, "2px, 2px"), (False, "none")}, dashes
    notes = browser.evaluate(  # its tooltip says why, in the SVG's words
        "[...document.querySelectorAll('#viewer svg path.edge')].map((p) => "
        "[p.classList.contains('token'), p.querySelector('title').textContent])"
    )
    assert {(token, text.endswith(layout.TOKEN_EDGE_NOTE)) for token, text in notes} == {
        (True, True), (False, False)}, notes  # fmt: skip
    browser.click(*centre(browser, "#viewer .status .left-out-toggle"))
    left_out = browser.evaluate("document.querySelector('#viewer .left-out').innerText")
    assert "no drawn edge leaves" not in left_out, left_out  # the token is drawn
    set_control(browser, "#viewer input[type=number]", 5, "change")
    ranked = sorted(
        (float(graph.influence[i]) for i, k in enumerate(graph.kinds) if k in layout.INNER_KINDS),
        reverse=True,
    )
    assert ranked[4] > graph.influence[j] > ranked[60]  # the least drawn: 0.968 > 0.942
    assert "E_3_3" not in drawn(browser)


def test_a_supernodes_weak_member_does_not_lower_the_bar_for_tokens(browser, tmp_path):
    """A summary's groups are drawn whole, members of next to no influence with them: counted
    one by one, they lowered the bar of tokenEdges until 17 tokens of a 28-token trace were
    drawn under the threshold (3 without supernodes). A supernode counts as the box it is,
    by its most influential member, as the budget ranks it."""
    graph, j = weak_token_graph()
    ranked = sorted(
        (i for i, k in enumerate(graph.kinds) if k in layout.INNER_KINDS),
        key=lambda i: -float(graph.influence[i]),
    )
    graph.influence[j] = float(graph.influence[ranked[59]]) - 1e-3  # just under the bar
    weak = ranked[-1]  # the least influential head or feature of all
    assert graph.influence[weak] < graph.influence[j]
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path)
    assert "E_3_3" not in drawn(browser)
    group = json.dumps([["both", graph.ids[ranked[0]], graph.ids[weak]]])
    open_page(browser, path, "#supernodes=" + group)
    assert browser.evaluate("viewer.supernodes()") == ["both"]
    assert "E_3_3" not in drawn(browser)


def test_the_page_draws_no_qk_edge_of_a_tiny_share_of_the_score(browser, tmp_path):
    """The page's QK edges follow the same rule (viewer.js topQK)."""
    graph = make_graph()
    path = tmp_path / "graph.html"
    sides = "[...document.querySelectorAll('#viewer svg g.qk-edge')].map(g => g.dataset.t)"
    write_html(graph, path, None)
    open_page(browser, path)
    assert "0_5_2" in browser.evaluate(sides)
    graph.qk = [dataclasses.replace(a, score=100.0) if a.layer == 0 else a for a in graph.qk]
    write_html(graph, path, None)
    open_page(browser, path)
    assert "0_5_2" not in browser.evaluate(sides)


def test_the_status_line_lists_what_is_left_out_and_why(browser, small_page):
    """A review: "Drawing N of M nodes" did not say which nodes were left out or why. A
    button on the status line lists them by reason (past the budget, by rank; tokens whose
    strongest edge to the drawing is under the threshold, or that have none), each a link
    to its panel with a button that draws it."""
    graph, path = small_page
    open_page(browser, path, "#nodes=5")
    toggle = "#viewer .status .left-out-toggle"
    assert browser.evaluate(f"document.querySelector({js(toggle)}).textContent").endswith(
        "which 3 are left out, and why"
    )  # 2_2_3 and 3_9_3 past the budget of 5, and the token E_0_0 (its one edge is 0)
    assert browser.evaluate("document.querySelector('#viewer .left-out').hidden")
    browser.click(*centre(browser, toggle))
    text = browser.evaluate("document.querySelector('#viewer .left-out').innerText")
    assert "past the budget of 5" in text, text
    assert "#6 by influence 0.325" in text and "#7 by influence 0.25" in text, text
    assert "no drawn edge leaves" in text and "no edge to a drawn node" in text, text
    # a left-out head or feature is drawn by its pin button
    browser.evaluate(
        "[...document.querySelectorAll('#viewer .left-out li')]"
        ".find(li => li.textContent.includes('#7')).querySelector('button.draw').click()"
    )
    assert "3_9_3" in drawn(browser)
    assert "which 2 are left out" in browser.evaluate(
        f"document.querySelector({js(toggle)}).textContent"
    )
    # a token whose strongest edge is under the threshold: its button lowers the threshold
    # (a token less influential than every drawn head and feature: one more influential is
    # drawn with its strongest edge whatever the threshold)
    graph.influence[graph.ids.index("E_9_3")] = 0.05
    write_html(graph, path, None)
    open_page(browser, path, "#edgeMin=1.6")
    assert "E_4_1" in drawn(browser) and "E_9_3" not in drawn(browser)
    browser.click(*centre(browser, toggle))
    text = browser.evaluate("document.querySelector('#viewer .left-out').innerText")
    assert "its strongest edge to what is drawn" in text and "edges ≥ 0.25" in text, text
    browser.evaluate(
        "[...document.querySelectorAll('#viewer .left-out button.draw')]"
        ".find(b => b.textContent === 'edges ≥ 0.25').click()"
    )
    assert "E_9_3" in drawn(browser) and browser.evaluate("viewer.state.edgeMin") == 0.25


def test_a_left_out_tokens_edge_is_the_one_the_drawing_sums_into_a_supernode(browser, tmp_path):
    """A review: a token's strongest edge to a drawn head inside a supernode was named, but
    the drawing sums a token's edges into a supernode, smaller there: its button set a
    threshold that drew nothing. The edge named is the drawn item's sum, and its button draws
    the token."""
    graph = make_graph()
    edges = graph.edges.tolil()
    a, b, c, e = (graph.ids.index(x) for x in ("0_5_2", "1_17_1", "1_3_3", "E_4_1"))
    assert edges[a, e] == 1.5 and edges[b, e] == 2.0 and edges[c, e] == 0
    # into a supernode of three: a sum whose last bit depends on the order it is added in
    # (0.1 + 0.2 - 0.4 in the file's order, -0.4 + 0.2 + 0.1 by size: the next review found
    # the button's sum added by size, its threshold a bit above the drawing's)
    edges[a, e], edges[b, e], edges[c, e] = 0.1, 0.2, -0.4
    graph.edges = edges.tocsr()
    graph.qk = []  # (the token is a QK partner of 0_5_2, drawn through that edge otherwise)
    graph.influence[e] = 0.05  # (outranking a drawn head, it is drawn with its strongest edge)
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    group = json.dumps([["both", "0_5_2", "1_17_1", "1_3_3"]])
    open_page(browser, path, "#edgeMin=0.5&supernodes=" + group)
    assert "E_4_1" not in drawn(browser)
    browser.click(*centre(browser, "#viewer .status .left-out-toggle"))
    find = (
        "[...document.querySelectorAll('#viewer .left-out li')].find(li => li.textContent"
        ".includes('@1 '))"
    )  # the token at position 1, E_4_1
    line = browser.evaluate(f"{find}.textContent")
    assert "its strongest edge to what is drawn, to both, -0.1" in line, line
    browser.evaluate(f"{find}.querySelector('button.draw').click()")
    assert "E_4_1" in drawn(browser)
    assert browser.evaluate("viewer.state.edgeMin") == pytest.approx(0.1, abs=1e-12)


@pytest.mark.parametrize("size", [(1400, 900), (1280, 720), (1920, 1080)])
def test_a_graphs_first_view_shows_it_whole_from_logits_to_tokens(tmp_path, size):
    """A review: at 1400x900 the first view of a 29-token trace scrolled both ways (its
    canvas measured the room under the controls before the status line was written, 31 px
    past the window; a 1682 px drawing at zoom 0.8 in a 924 px canvas). The drawing's stage
    names take their own width, the panel narrows with the window, big cells wrap to fit the
    room and the text may shrink to MIN_ZOOM 0.7 (7.7 px): the canvas ends inside the window
    and a small graph's every row, tokens included, is in it (10 positions here; a longer
    graph: test_a_long_graphs_first_view_fits_a_small_window)."""
    if find_chromium() is None:
        pytest.skip("chromium is not installed")
    graph = make_big_graph(n_pos=10, units=6)
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    with Browser(width=size[0], height=size[1]) as b:
        open_page(b, path)
        got = b.evaluate(
            "(() => { const c = document.querySelector('#viewer .canvas').getBoundingClientRect();"
            " const s = document.querySelector('#viewer svg'); const n = [...s.querySelectorAll"
            "('g.node')].map(g => g.getBoundingClientRect());"
            " return {bottom: c.bottom, win: innerHeight, top: Math.min(...n.map(r => r.top)),"
            " low: Math.max(...n.map(r => r.bottom)), ctop: c.top, cw: c.width,"
            " w: s.width.baseVal.value,"
            " zoom: s.width.baseVal.value / s.viewBox.baseVal.width}; })()"
        )
    assert got["bottom"] <= got["win"], got
    assert got["ctop"] <= got["top"] and got["low"] <= got["bottom"], got
    assert got["w"] <= got["cw"] and got["zoom"] >= 0.7 - 1e-6, got


def test_a_cells_boxes_are_spaced_by_their_own_widths_not_the_columns_widest(browser, small_page):
    """A review: every box of a position's column was spaced at the column's widest box, so one
    wide supernode spread its position's other boxes at its width (three boxes took 408 px at
    one position of a real trace, which scrolled at 1400x900; here the two logits beside the
    supernode's position went to two rows to fit). Each row of a cell now packs its boxes by
    their own widths: the two logits sit side by side, a gap apart."""
    graph, path = small_page
    name = "a supernode with a long name to make its box wide"
    write_html(graph, path, None, q_params={"supernodes": [[name, "1_3_3", "1_-1_3"]]})
    open_page(browser, path)
    got = browser.evaluate(
        "(() => { const w = (g) => g.getBBox().width, x = (g) => g.transform.baseVal[0].matrix.e;"
        " const s = document.querySelector('#viewer svg g.node[data-group=\"0\"]');"
        " const l = ['5_11_3', '5_7_3'].map((id) => document.querySelector("
        '`#viewer svg g.node[data-id="${id}"]`));'
        " return {wide: w(s), a: w(l[0]), b: w(l[1]), gap: Math.abs(x(l[0]) - x(l[1])),"
        " dy: l[0].transform.baseVal[0].matrix.f - l[1].transform.baseVal[0].matrix.f}; })()"
    )
    assert got["wide"] > max(got["a"], got["b"]) + 20, got  # the supernode is the wide one
    assert (
        got["dy"] == 0 and (got["a"] + got["b"]) / 2 < got["gap"] <= (got["a"] + got["b"]) / 2 + 12
    ), got


FIRST_VIEW = """(async () => {
  const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
  await frame(); await frame();
  const c = document.querySelector('#viewer .canvas'), s = c.querySelector('svg');
  const r = c.getBoundingClientRect(), boxes = [...s.querySelectorAll('g.node')].map((g) => {
    const b = g.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; });
  const names = [...s.querySelectorAll('text.stage-name')].map((t) => {
    const b = t.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; });
  return {w: s.width.baseVal.value, h: s.height.baseVal.value, cw: c.clientWidth,
    ch: c.clientHeight, top: r.top, bottom: r.bottom, win: innerHeight, boxes, names,
    zoom: s.width.baseVal.value / s.viewBox.baseVal.width, viewBox: s.getAttribute('viewBox')};
})()"""


def overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5


def assert_first_view_fits(got: dict) -> None:
    """The drawing, at a zoom of 0.7 or more, needs no scrolling: within the canvas, the
    canvas within the window; no two boxes overlap, nor a box a stage name."""
    assert got["w"] <= got["cw"] and got["h"] <= got["ch"], got
    assert got["bottom"] <= got["win"] and got["zoom"] >= 0.7 - 1e-3, got
    boxes = got["boxes"]
    for j, a in enumerate(boxes):
        assert not any(overlaps(a, b) for b in boxes[j + 1 :]), a
        assert not any(overlaps(a, n) for n in got["names"]), a


@pytest.fixture(scope="module")
def long_page(tmp_path_factory) -> Path:
    """A graph as wide as a long real trace: 19 of its 20 positions drawn, ten logits."""
    path = tmp_path_factory.mktemp("long") / "graph.html"
    write_html(make_big_graph(n_pos=20, units=32, logits=10), path, None)
    return path


@pytest.mark.parametrize("size", [(1400, 900), (1280, 720)])
def test_a_long_graphs_first_view_fits_a_small_window(long_page, size):
    """A review: the first view of a 29-token trace scrolled by 391x247 px at 1280x720, a
    101-token one by 262x111 (and at 1400x900); this graph by 595x351 at 1280x720. A stage's
    cells may reach over the positions it leaves empty, tokens take turns on two rows, the
    logits lie in rows over the whole width, each row is as tall as its own boxes, the help
    is behind a toggle: it fits, at zoom 0.7 or more, with no box over another."""
    if find_chromium() is None:
        pytest.skip("chromium is not installed")
    with Browser(width=size[0], height=size[1]) as b:
        open_page(b, long_page)
        got = b.evaluate(FIRST_VIEW)
        assert len(got["boxes"]) == 89  # 60 heads, features and errors, 19 tokens, 10 logits
        assert_first_view_fits(got)


def test_resizing_the_window_lays_the_first_view_out_again(long_page):
    """A review: a page's rows were wrapped for the window it was opened in, so a page
    opened at 1920x1080 and narrowed to 1280x720 kept its wide layout and scrolled. A new
    size lays it out again (as a page opened at that size), unless the reader zoomed."""
    if find_chromium() is None:
        pytest.skip("chromium is not installed")
    with Browser(width=1280, height=720) as b:
        open_page(b, long_page)
        small = b.evaluate(FIRST_VIEW)
    with Browser(width=1920, height=1080) as b:
        open_page(b, long_page)
        wide = b.evaluate(FIRST_VIEW)
        assert wide["viewBox"] != small["viewBox"]
        b.send("Emulation.setDeviceMetricsOverride", width=1280, height=720,
               deviceScaleFactor=1, mobile=False)  # fmt: skip
        b.evaluate("new Promise((r) => setTimeout(r, 400))")
        got = b.evaluate(FIRST_VIEW)
        assert got["viewBox"] == small["viewBox"]
        assert_first_view_fits(got)
        b.evaluate("document.querySelector('#viewer button[title=\"zoom in\"]').click()")
        zoomed = b.evaluate(FIRST_VIEW)
        b.send("Emulation.setDeviceMetricsOverride", width=1920, height=1080,
               deviceScaleFactor=1, mobile=False)  # fmt: skip
        b.evaluate("new Promise((r) => setTimeout(r, 400))")
        kept = b.evaluate(FIRST_VIEW)  # the reader's zoom and layout stay
        assert kept["viewBox"] == small["viewBox"] and kept["w"] == zoomed["w"]


def test_fit_shows_a_110_token_traces_whole_drawing(tmp_path):
    """A review: a 110-token trace scrolled sideways at every zoom the page chose, "fit"
    included, which fitted the first view (text at 0.7 or more): 1882 px of a real trace off a
    1400x900 window. The first view keeps its zoom of 0.7 and scrolls; "fit" shows the whole
    drawing (at 0.4 there), and keeps it whole when the window changes, no box over another.
    The tokens take three or four lanes where two leave the drawing wider than the room at
    0.7 (4070 px of that trace in two, 2447 in four)."""
    if find_chromium() is None:
        pytest.skip("chromium is not installed")
    path = tmp_path / "graph.html"
    write_html(make_big_graph(n_pos=110, units=32, logits=10), path, None)
    fit = "document.querySelector('#viewer button[title^=\"fit\"]').click()"
    with Browser(width=1280, height=720) as b:
        open_page(b, path)
        first = b.evaluate(FIRST_VIEW)
        assert first["zoom"] >= 0.7 - 1e-3 and first["w"] > first["cw"], first
        b.evaluate(fit)
        for size in ((1280, 720), (1400, 900)):
            if size != (1280, 720):
                b.send("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1],
                       deviceScaleFactor=1, mobile=False)  # fmt: skip
                b.evaluate("new Promise((r) => setTimeout(r, 400))")
            got = b.evaluate(FIRST_VIEW)
            assert got["w"] <= got["cw"] and got["h"] <= got["ch"], (size, got)
            assert got["bottom"] <= got["win"] and got["zoom"] > 0.3, (size, got)
            boxes = got["boxes"]
            assert len(boxes) > 100
            for j, a in enumerate(boxes):
                assert not any(overlaps(a, c) for c in boxes[j + 1 :]), (size, a)
        note = b.evaluate("document.querySelector('#viewer .zoom-note').textContent")
        assert "scrolls" not in note and note.endswith("%"), note


def test_zooming_keeps_the_point_at_the_canvas_centre(browser, long_page):
    """A review: + and − kept the canvas's scroll offsets, so the drawing grew from its top
    left corner and a 110-token trace's first view, scrolled to its last position, slid to
    an empty stretch at the first +. The point at the canvas's centre stays there."""
    open_page(browser, long_page)
    centre_at = (
        "(() => { const c = document.querySelector('#viewer .canvas');"
        " return [(c.scrollLeft + c.clientWidth / 2) / c.scrollWidth,"
        " (c.scrollTop + c.clientHeight / 2) / c.scrollHeight]; })()"
    )
    before = browser.evaluate(centre_at)
    for title in ("zoom in", "zoom in", "zoom out"):
        browser.evaluate(f"document.querySelector('#viewer button[title=\"{title}\"]').click()")
        x, y = browser.evaluate(centre_at)
        assert abs(x - before[0]) < 0.01 and abs(y - before[1]) < 0.01, (title, before, x, y)
    assert browser.evaluate("document.querySelector('#viewer .canvas').scrollLeft") > 0


def test_the_help_is_one_toggle_whose_opening_refits_the_drawing(long_page):
    """How to use the page and read a box took two lines above every first view (36 of a
    1280x720 window's px): it is behind a toggle, the whole text in its tooltip, and
    opening it lays the drawing out again in the room left."""
    if find_chromium() is None:
        pytest.skip("chromium is not installed")
    with Browser(width=1280, height=720) as b:
        open_page(b, long_page)
        toolbar = b.evaluate("document.querySelector('#viewer .toolbar').innerText")
        assert "keys and boxes" in toolbar and "ctrl/shift-click" not in toolbar
        title = b.evaluate("document.querySelector('#viewer .help summary').title")
        assert "ctrl/shift-click (space): pick for a supernode" in title and "p: pin" in title
        closed = b.evaluate(FIRST_VIEW)
        b.evaluate("document.querySelector('#viewer .help summary').click()")
        b.evaluate("new Promise((r) => setTimeout(r, 100))")
        toolbar = b.evaluate("document.querySelector('#viewer .toolbar').innerText")
        assert "↑the token it promotes most" in toolbar
        opened = b.evaluate(FIRST_VIEW)
        assert opened["top"] > closed["top"] + 10  # the help's line is above the canvas
        assert_first_view_fits(opened)


def test_search_results_above_the_canvas_keep_it_in_the_window(long_page):
    """The search's results take lines above the canvas: the drawing is fitted again to the
    room left (the canvas reached below the window; here the drawing then scrolls, at zoom
    0.7), and again when they go."""
    if find_chromium() is None:
        pytest.skip("chromium is not installed")
    with Browser(width=1280, height=720) as b:
        open_page(b, long_page)
        before = b.evaluate(FIRST_VIEW)
        search = "document.querySelector('#viewer input[type=search]')"
        for query in ("t1", ""):
            b.evaluate(f"(() => {{ const s = {search}; s.value = {js(query)};"
                       " s.dispatchEvent(new Event('input')); })()")  # fmt: skip
            got = b.evaluate(FIRST_VIEW)
            assert got["bottom"] <= got["win"], got["bottom"]
            if query:
                assert got["top"] > before["top"] + 20, got["top"]  # the results' lines
        assert got["top"] == before["top"] and got["viewBox"] == before["viewBox"]
        assert_first_view_fits(got)


@pytest.mark.parametrize("size", [(1920, 1080), (1280, 720)])
def test_a_short_prompts_logits_lie_inside_the_drawing(tmp_path, size):
    """The logits lie in rows over the whole drawing, but the drawing's width came from the
    positions alone: at 1920x1080 three tokens' graph with ten logits put them in one row
    past the drawing's right edge (the last one cut off, over the stage name). A row of them,
    as the wrap lays it, widens the drawing, as their column did."""
    if find_chromium() is None:
        pytest.skip("chromium is not installed")
    path = tmp_path / "graph.html"
    write_html(make_big_graph(n_pos=3, units=8, logits=10), path, None)
    with Browser(width=size[0], height=size[1]) as b:
        open_page(b, path)
        got = b.evaluate(FIRST_VIEW)
        svg = b.evaluate("(() => { const r = document.querySelector('#viewer .canvas svg')"
                         ".getBoundingClientRect(); return [r.left, r.right]; })()")  # fmt: skip
        assert len(got["boxes"]) == 49  # 36 heads, features and errors, 3 tokens, 10 logits
        for box in got["boxes"]:
            assert svg[0] - 0.5 <= box[0] and box[2] <= svg[1] + 0.5, (box, svg)
        assert_first_view_fits(got)


def test_a_token_held_for_a_qk_edge_under_the_drawn_share_is_said_so(browser, tmp_path):
    """A review: a global graph's token kept for its QK pair, whose q/k term is under
    ``QK_MIN_SHARE`` of the head's score, was listed as left out with "no edge to a drawn
    node", and an edge threshold of 0 did not draw it. The list says which head's q/k edge it
    is and that its share is under the one a q/k edge is drawn at."""
    graph = make_graph()
    graph.qk = [dataclasses.replace(a, score=100.0) if a.layer == 0 else a for a in graph.qk]
    j = graph.ids.index("E_6_2")  # its value edges gone: its q/k edge alone holds it
    edges = graph.edges.tolil()
    edges[:, j] = 0
    edges = edges.tocsr()
    edges.eliminate_zeros()
    graph = graph.subgraph(list(range(graph.n_nodes)), edges=edges)
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path, "#edgeMin=0")
    assert "E_6_2" not in drawn(browser)
    browser.evaluate("document.querySelector('#viewer .status .left-out-toggle').click()")
    text = browser.evaluate("document.querySelector('#viewer .left-out').innerText")
    assert "no value edge to a drawn node; its q edge to H5" in text, text
    assert "of the head's +100, is under the 5% of it a q/k edge is drawn at" in text, text


def test_a_pair_lowering_the_score_is_never_the_drawn_qk_edge(browser, tmp_path):
    """A review: a q/k edge was read from the record's largest pair by size, whatever its sign,
    so a global graph holding a unit whose strongest pair lowers the head's score drew it as
    the head's q/k link (the README: a pair lowering the score is never drawn). The static
    selection and the page both take the pair raising the score most."""
    from circuits.graph import QKPair

    graph = make_graph()
    head = graph.ids.index("0_5_2")
    lowering = QKPair("E_0_0", "E_4_1", -2.5)  # larger than the raising pair, on a drawn token
    graph.qk = [dataclasses.replace(a, pairs=[lowering, *a.pairs],
                                    query_marginals=[*a.query_marginals, ("E_0_0", -2.5)])
                if a.layer == 0 and a.key == 1 else a for a in graph.qk]  # fmt: skip
    q = [e for e in layout.qk_edges(graph) if e.target == head and e.side == "q"]
    assert [graph.ids[e.source] for e in q] == ["E_6_2"] and q[0].value == 2.2
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path)
    sides = browser.evaluate(
        "[...document.querySelectorAll('#viewer svg g.qk-edge')]"
        ".filter(g => g.dataset.t === '0_5_2').map(g => g.dataset.side + ' ' + g.dataset.s)"
    )
    assert "q E_6_2" in sides and "q E_0_0" not in sides, sides


def test_every_qk_label_lies_on_its_edge_clear_of_every_box(browser, weekday_trace):
    """A review: a QK edge's q or k sat at its edge's middle, under a box about half the
    time (41 of 83 on a 29-token trace; here 8 of 25 at 1400x900), so q could not be told
    from k but by the tooltip. Each letter now lies where no box and no other letter meets it,
    on its edge or touching it (benchmarks/qk_labels.py measures the same)."""
    *_, path = weekday_trace
    open_page(browser, path)
    got = browser.evaluate(benchmark("qk_labels").MEASURE)
    assert got["labels"] > 10, got
    assert got["covered"] == 0 and got["meeting_another"] == 0, got
    assert got["farthest_from_edge_px"] <= 8 * got["zoom"] + 1, got
    # each letter is the side its edge feeds
    sides = browser.evaluate(
        "[...document.querySelectorAll('#viewer svg g.qk-edge')]"
        ".map(g => [g.dataset.side, g.querySelector('.qk-label').textContent])"
    )
    assert all(side == text for side, text in sides)


def test_qk_letters_are_as_large_as_a_boxs_text_and_bold(browser, weekday_trace):
    """A review: the q and k on QK edges were 9 px, 6.3 px on screen at the first view's zoom
    of 0.7, where a q could hardly be told from a k. They are as large as a box's text, bold,
    and still lie clear of every box and every other letter (the test above)."""
    *_, path = weekday_trace
    open_page(browser, path)
    got = browser.evaluate(
        "(() => { const s = (e) => getComputedStyle(e);"
        " const v = document.getElementById('viewer');"
        " const q = v.querySelector('svg .qk-label'), t = v.querySelector('svg g.node text');"
        " return {q: parseFloat(s(q).fontSize), t: parseFloat(s(t).fontSize),"
        " weight: Number(s(q).fontWeight), h: q.getBoundingClientRect().height,"
        " th: t.getBoundingClientRect().height}; })()"
    )
    assert got["q"] >= got["t"] and got["weight"] >= 700, got
    assert got["h"] >= got["th"] - 0.5, got  # on screen, at the page's zoom


def test_a_supernode_the_reader_names_shows_that_name_and_the_summary_in_its_panel(
    browser, weekday_trace
):
    """A review: a supernode the reader named, holding exactly a summary group's members,
    showed the summary's box text, the reader's name nowhere on the drawing. Its box shows the
    name and which summary group it is; its panel gives the summary's box and checks; one named
    as the summary names it keeps the summary's box; the search finds both by the key."""
    _, graph, summary, path = weekday_trace
    present = set(graph.ids)
    g = next(g for g in summary.groups if sum(m in present for m in g.members) >= 2)
    members = [m for m in g.members if m in present]
    open_page(browser, path)
    box_text = (
        "(name => [...[...document.querySelectorAll('#viewer svg g.node[data-group]')]"
        ".find(b => b.querySelector('title').textContent.startsWith(name + ' (supernode'))"
        ".querySelectorAll('text')].map(t => t.textContent))"
    )
    own = browser.evaluate(f"{box_text}({js(f'{g.key} {g.name}')})")
    assert own[0].startswith(g.key + " L"), own  # the summary's box
    browser.evaluate(f"viewer.group({js(members)}, 'my inducers')")
    mine = browser.evaluate(f"{box_text}('my inducers')")
    assert mine == ["my inducers", f"{len(members)} nodes · {g.key}"], mine
    text = panel_text(browser)
    assert text.startswith(f"my inducers\nsupernode of {len(members)} nodes\n"), text
    facts = [line for line in own if not line.endswith(" of them drawn")]  # (the box's own)
    assert "\nthe mechanism summary's group: " + " · ".join(facts) + "\n" in text, text
    title = browser.evaluate(
        "[...document.querySelectorAll('#viewer svg g.node[data-group] title')]"
        ".map(t => t.textContent).find(t => t.startsWith('my inducers'))"
    )
    assert f"the mechanism summary's {g.key} {g.name}" in title, title
    browser.click(*centre(browser, "#viewer input[type=search]"))
    browser.type_text(g.key + " ")
    results = browser.evaluate(
        "[...document.querySelectorAll('#viewer .results button')].map(b => b.textContent)"
    )
    assert "supernode my inducers" in results, results
    # named back as the summary names it, it is the summary's box again
    browser.evaluate(f"viewer.group({js(members)}, {js(f'{g.key} {g.name}')})")
    assert browser.evaluate(f"{box_text}({js(f'{g.key} {g.name}')})") == own


def test_a_url_selects_a_summary_supernode_by_its_key(browser, weekday_trace):
    """A review: ``#clickedGroup=g0`` was refused ("no supernode g0") where the search box takes
    ``g0``: the URL names a summary group's supernode by its key too (the group whose members
    it holds exactly, read from the summary's fields, not from the name)."""
    _, graph, summary, path = weekday_trace
    present = set(graph.ids)
    g = next(g for g in summary.groups if sum(m in present for m in g.members) >= 2)
    open_page(browser, path, f"#clickedGroup={g.key}")
    status = browser.evaluate("document.querySelector('#viewer .status').textContent")
    assert "no supernode" not in status, status
    assert panel_text(browser).startswith(f"{g.key} {g.name}\nsupernode of"), panel_text(browser)


def test_an_edge_tied_with_the_weakest_drawn_is_drawn_by_the_selection_and_the_page(
    browser, tmp_path
):
    """The static drawing kept the strongest N edges where the page keeps every edge at or
    over the weakest of them: an edge tied with it was drawn on the page alone (a note's
    Left). The selection keeps the ties too, and the page draws exactly its edges."""
    graph = make_big_graph()
    s = layout.select(graph)
    every = layout.select(graph, max_edges=None).edges  # the candidates' edges, strongest first
    n = len(s.edges) - len(s.token_edges)
    assert every[:n] == [e for e in s.edges if e not in s.token_edges]
    weakest, next_ = every[n - 1], every[n]
    assert abs(next_.weight) < abs(weakest.weight)
    edges = graph.edges.tolil()
    edges[next_.target, next_.source] = abs(weakest.weight) * (1 if next_.weight > 0 else -1)
    graph.edges = edges.tocsr()
    tied = layout.select(graph)
    kept = {(e.source, e.target) for e in tied.edges}
    assert (next_.source, next_.target) in kept and len(kept) == len(s.edges) + 1
    path = tmp_path / "graph.html"
    write_html(graph, path, None)
    open_page(browser, path)
    assert sorted(drawn_edges(browser)) == sorted(
        (graph.ids[e.source], graph.ids[e.target], e in tied.token_edges) for e in tied.edges
    )


def test_an_edge_just_under_the_weakest_drawn_stays_under_the_pages_threshold(tmp_path):
    """The page's weights and threshold were rounded to 6 significant digits: an edge under
    the static drawing's cut but equal to it to 6 digits passed the page's ``|w| >= edgeMin``
    and was drawn on the page alone (a note's Left). Both are written as the shortest decimals
    that read back as the same float32, so the page compares the graph's own values."""
    graph = make_big_graph()
    s = layout.select(graph)
    every = layout.select(graph, max_edges=None).edges
    n = len(s.edges) - len(s.token_edges)
    weakest, next_ = every[n - 1], every[n]
    under = np.nextafter(np.float32(abs(weakest.weight)), np.float32(0))  # one float32 below
    edges = graph.edges.tolil()
    edges[next_.target, next_.source] = under * (1 if next_.weight > 0 else -1)
    graph.edges = edges.tocsr()
    assert f"{under:.6g}" == f"{abs(weakest.weight):.6g}"  # a tie at 6 digits
    near = layout.select(graph)
    assert (next_.source, next_.target) not in {(e.source, e.target) for e in near.edges}
    data = viewer_data(graph, selection=near)
    links = data["links"]
    at = [k for k in range(len(links["source"]))
          if (links["source"][k], links["target"][k]) == (next_.source, next_.target)]  # fmt: skip
    (k,) = at
    assert abs(links["weight"][k]) < data["view"]["edgeMin"]
    assert np.float32(links["weight"][k]) == np.float32(under)  # reads back exactly


def test_a_weak_qk_sources_box_says_it_is_weak():
    """A QK source's box says "writes g0's query" over the attention its ablation leaves
    through that side; where that is over half the attention (the text's "weak": no head
    group tested halves it), the box says "(weak)" too: a reviewer read "writes g0's query"
    over an induction head's query-side source that left 0.99 -> 0.62, the query's own
    token doing the work, which only the panel's text said."""
    from types import SimpleNamespace

    from reports.viewer import _box_lines

    def source(alone: float):
        w = SimpleNamespace(group="g0", side="query")
        g = SimpleNamespace(key="g3", kind="lorsa", layer=1, pos=34, members=[1, 2],
                            attends=24, attends_token=":", key_share=0.9, concept=None,
                            writes_qk=[w])  # fmt: skip
        a = SimpleNamespace(mean_before=0.99, mean_free=0.6, mean_side=lambda side: alone)
        summary = SimpleNamespace(targets=[], qk_subject=lambda key: None,
                                  attention_after=lambda g, key: a)  # fmt: skip
        return _box_lines(g, summary)

    assert source(0.62)[2:] == ["writes g0's query (weak)", "g0 attends 0.99→0.62"]
    assert source(0.25)[2:] == ["writes g0's query", "g0 attends 0.99→0.25"]


def test_a_box_line_the_page_would_cut_breaks_before_its_number():
    """The page cuts a supernode box's line at ``BOX_CHARS`` with "…" (viewer.js): a reviewer's
    head target (``--target-node lorsa:2:24:610``) had its key side's source box read "target
    attends 0.53→0.0…" for 0.53→0.005. A longer line breaks before its last word (the number,
    the "(weak)"), so no number is cut; lines that fit are kept as they are."""
    from types import SimpleNamespace

    from circuits.mechanism_file import TargetRecord
    from reports.viewer import BOX_CHARS, _box_lines

    target = object.__new__(TargetRecord)
    target.node, target.qk = "4_610_24", [SimpleNamespace(layer=2, query=24)]  # its place

    def source(alone: float, before: float = 0.53):
        w = SimpleNamespace(group="4_610_24", side="key")
        g = SimpleNamespace(key="g2", kind="lorsa", layer=0, pos=12, members=[1, 2],
                            attends=11, attends_token=" quiet", key_share=0.9, concept=None,
                            writes_qk=[w])  # fmt: skip
        a = SimpleNamespace(mean_before=before, mean_free=alone, mean_side=lambda side: alone)
        summary = SimpleNamespace(targets=[target], qk_subject=lambda key: target,
                                  attention_after=lambda g, key: a)  # fmt: skip
        return _box_lines(g, summary)

    assert source(0.005)[2:] == ["writes target's key", "target attends", "0.53→0.005"]
    assert source(0.4)[2:] == ["writes target's key", "(weak)", "target attends 0.53→0.40"]
    assert all(len(line) <= BOX_CHARS for line in source(0.005) + source(0.4))


def test_a_feature_group_without_a_concept_is_titled_as_the_printout_titles_it():
    """The printout titles a feature group without a concept of its own by its members'
    concept or by what its flow reads and promotes (``reports.mechanisms.group_title``); the
    page's boxes read ``g3 L0 28 features @7`` alone. A box says it in short, from the
    record's fields: the members' concept with their share of its flow and F1, else the token
    its flow reads most, else the token it promotes most; a group with a concept, a head group
    or a file without members' concepts keeps its box."""
    from types import SimpleNamespace

    from circuits.mechanism_file import MemberConcept, TokenShare
    from reports.viewer import _box_lines

    summary = SimpleNamespace(targets=[], qk_subject=lambda key: None)

    def box(**fields):
        g = SimpleNamespace(
            key="g3",
            kind="transcoder",
            layer=0,
            pos=7,
            members=[1, 2],
            attends=None,
            attends_token=None,
            concept=None,
            writes_qk=[],
            member_concepts=[],
            no_concept_share=1.0,
            promotes=["four"],
            reads=[TokenShare(6, " Wednesday", 12.5), TokenShare(4, " Tue", 2.4)],
        )
        for name, value in fields.items():
            setattr(g, name, value)
        return _box_lines(g, summary)

    head = "g3 L0 2 features @7"
    # a line fits the box's BOX_CHARS by its token, its number whole (the page cut this one
    # to "reads ' Wednesday'@6 +1…", and a sparse trace's to "reads ' thanked'@20 +0.…")
    assert box() == [head, "reads ' Wednes…'@6 +12.5"]
    assert box(reads=[TokenShare(6, " Tue", 2.4)])[1:] == ["reads ' Tue'@6 +2.4"]
    tab = box(reads=[TokenShare(120, "\t" * 30, -10.25)])[1]
    assert tab == "reads '\\t\\t…'@120 -10.2" and len(tab) <= 24  # viewer.BOX_CHARS
    # signed: the token read most may run against the group's flow (a reviewer's box of a
    # group of flow +0.863 read "reads 'n'@16", whose part is -0.877)
    assert box(reads=[TokenShare(16, "n", -0.877)])[1:] == ["reads 'n'@16 -0.877"]
    assert box(reads=[]) == [head, "↑'four'"]
    assert box(reads=[], promotes=[]) == [head]
    weekdays = MemberConcept("next token: weekdays item", 0.53, 5, 0.31, 0.45)
    assert box(member_concepts=[weekdays], no_concept_share=0.4) == [
        head,
        "next token: weekdays item",
        "members 53%, F1 ≥0.31",
    ]
    one = MemberConcept("x", 0.5, 1, 0.4, 0.4)
    assert box(member_concepts=[one], no_concept_share=0.5) == [head, "x", "members 50%, F1 0.40"]
    below = MemberConcept("x", 0.49, 1, 0.4, 0.4)  # under half: what its flow reads
    assert box(member_concepts=[below], no_concept_share=0.51)[1:] == ["reads ' Wednes…'@6 +12.5"]
    assert box(concept="successor: weekdays item") == [head, "successor: weekdays item"]
    assert box(no_concept_share=None) == [head]  # a file written before members' concepts
    assert box(kind="lorsa")[1:] == []  # a head group's name says the key it reads


def test_the_pages_summary_groups_say_what_the_printout_titles_them(browser, weekday_trace):
    """On the weekday list the printout reads ``L0 28 features @7 {no concept: reads '
    Wednesday'@6, ...}`` where the page said ``L0 28 features @7`` alone: its box says what
    its flow reads, its tooltip, its supernode's panel and the mechanisms panel its title
    whole and its members' concepts; the supernode keeps its name (the URL's state)."""
    from reports.mechanisms import described, group_title, member_concepts_text, read_text

    _, graph, summary, path = weekday_trace
    present = set(graph.ids)
    g = next(g for g in summary.groups if described(g) and g.reads
             and sum(m in present for m in g.members) >= 2)  # fmt: skip
    title = group_title(g)
    assert title.startswith(f"{g.name} {{no concept: reads {g.reads[0].token!r}@")
    open_page(browser, path)
    name = f"{g.key} {g.name}"
    found = browser.evaluate(
        "[...document.querySelectorAll('#viewer svg g.node[data-group]')].map(b =>"
        " [b.querySelector('title').textContent, [...b.querySelectorAll('text')]"
        ".map(t => t.textContent)]).find(([t]) => t.startsWith(" + js(name + " (supernode") + "))"
    )
    assert found, name
    tooltip, lines = found
    line = lines[1]  # what its flow reads, the number whole (the token cut to fit)
    assert line.startswith("reads ") and line.endswith(read_text(g.reads[0]).rsplit("@", 1)[1])
    assert "…'@" in line or line == f"reads {read_text(g.reads[0])}", lines
    assert title in tooltip, tooltip
    members = member_concepts_text(g, summary.settings.get("member_min_f1", 0.0))
    text = panel_text(browser)
    assert f"{g.key} {title} · flow" in text, text
    assert members and members in text
    # its supernode's panel: its name (the URL's), then its title and members' concepts
    k = browser.evaluate(f"viewer.state.groups.findIndex(x => x.name === {js(name)})")
    assert k >= 0
    browser.evaluate(f"viewer.state.clicked = {{group: {k}}}; viewer.update()")
    text = panel_text(browser)
    assert text.startswith(f"{name}\nsupernode of "), text
    assert f"\n{g.key} {title}\n{members}\n" in text, text


def test_a_search_for_a_token_finds_its_units_not_the_constants_at_its_position(
    browser, weekday_trace
):
    """A review: searching the prompt's text found every node at a position the query covers,
    the position vector and the blocks' bias nodes there among them (kind "bias"): a search
    for ' Wednesday' lit its position vector and biases beside the heads and features that
    read it. Constants are found by their own text ("position vector", "L0 attn bias"), not
    by the token at their position."""
    from reports.labels import node_label

    _, graph, _, path = weekday_trace
    open_page(browser, path)
    kind = {name: graph.kinds[i] for i, name in enumerate(graph.ids)}

    def search(query: str) -> tuple[set[str], int]:
        browser.evaluate(
            "(() => { const s = document.querySelector('#viewer input[type=search]');"
            f" s.value = {js(query)}; s.dispatchEvent(new Event('input')); }})()"
        )
        matched = browser.evaluate(
            "[...document.querySelectorAll('#viewer svg g.node.match')].map(g => g.dataset.id)"
        )
        count = browser.evaluate(
            "document.querySelector('#viewer input[type=search] + span').textContent"
        )
        return {m for m in matched if m}, int(count.split(" found")[0])

    shown = set(drawn(browser))
    pos = graph.token_strings.index(" Wednesday")
    at = {n for i, n in enumerate(graph.ids) if int(graph.pos[i]) == pos}
    constants = {n for n in at if kind[n] == "bias"} & shown
    assert constants, "the page draws a constant at the token's position"
    matched, _ = search("Wednesday")
    assert not matched & constants, matched & constants
    assert {n for n in at & shown if kind[n] in ("embedding", "lorsa", "transcoder")} <= matched
    # a constant by its own text: every one whose label says it, and nothing else
    for query in ("position vector", "L0 attn bias"):
        want = {n for i, n in enumerate(graph.ids) if query in node_label(graph, i)}
        assert want and all(kind[n] == "bias" for n in want), query
        matched, count = search(query)
        assert count == len(want) and matched == want & shown, (query, matched)
