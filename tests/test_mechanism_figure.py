"""The mechanism figure (``reports.mechanism_figure``): the summary's groups, paths and QK
sources drawn by Graphviz, read back from ``dot -Tjson`` (what Graphviz itself made of it)."""

from __future__ import annotations

import copy
import dataclasses
import html
import json
import re
import shutil
import subprocess

import pytest

from circuits.attribution import NodeTarget, attribute, run_prompt
from circuits.mechanism_file import MechanismSummary
from circuits.mechanisms import summarize
from circuits.prune import prune_graph
from reports import outputs
from reports.labels import shorten
from reports.mechanism_figure import (
    FLAGGED_COLOR,
    ID_PREFIX,
    QK_SOURCE_COLOR,
    ROLE_WORDS,
    TARGETS_DRAWN,
    _caption,
    _wrap,
    drawn_groups,
    mechanism_dot,
)
from reports.mechanisms import (
    attention_change,
    predicting_role,
    probability_text,
    sparse_words,
    why_checks,
    why_term,
    why_text,
)
from reports.outputs import write_graph_outputs

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is missing")


@pytest.fixture
def traced(replacement, tokens):
    """A local trace of the seeded random replacement model and its summary."""
    run = run_prompt(replacement, tokens, "local", constants=True)
    graph = attribute(replacement, tokens, max_logits=2, run=run)
    return graph, summarize(replacement, graph, run, max_groups=6)


@pytest.fixture
def head_traced(replacement, tokens):
    """A summary whose target is a layer-1 head reading another position (``--target-node
    lorsa:...``): its own QK score has sources of its own."""
    run = run_prompt(replacement, tokens, "local", constants=True)
    full = attribute(replacement, tokens, max_logits=1, run=run)
    heads = [i for i in full.is_kind("lorsa").nonzero().squeeze(1).tolist()
             if full.layer[i] == 1 and full.read_key(i) not in (None, full.pos[i])]  # fmt: skip
    node = max(heads, key=lambda i: float(full.activation[i]))
    target = NodeTarget("lorsa", int(full.layer[node]), int(full.pos[node]),
                        int(full.index[node]))  # fmt: skip
    graph = attribute(replacement, tokens, run=run, targets=[target])
    return summarize(replacement, graph, run, max_groups=6)


def drawn(dot_text: str) -> dict:
    """Graphviz's layout of ``dot_text`` (``dot -Tjson``): nodes by name (attributes and
    position), edges as (tail name, head name, attributes)."""
    proc = subprocess.run(["dot", "-Tjson"], input=dot_text, text=True, capture_output=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    laid = json.loads(proc.stdout)
    objects = laid.get("objects", [])
    names = [o["name"] for o in objects]
    edges = [(names[e["tail"]], names[e["head"]], e) for e in laid.get("edges", [])]
    return {"nodes": {o["name"]: o for o in objects}, "edges": edges,
            "caption": laid.get("label", "")}  # fmt: skip


@needs_dot
def test_the_figure_draws_the_paths_predicting_heads_and_qk_sources(traced):
    _, summary = traced
    keys = {k for p in summary.paths for k in p.groups}
    keys |= {t.predicting_group for t in summary.targets} - {None}
    keys |= {g.key for g in summary.groups for w in g.writes_qk if w.group in keys}
    assert [g.key for g in drawn_groups(summary)] == [g.key for g in summary.groups
                                                      if g.key in keys]  # fmt: skip
    assert summary.paths and keys < {g.key for g in summary.groups} | {None}
    fig = drawn(mechanism_dot(summary))
    nodes = fig["nodes"]
    boxes = {name for name in nodes if name.startswith(("group:", "target:"))}
    assert boxes == {f"group:{k}" for k in keys} | {f"target:{t.node}" for t in summary.targets}
    # each hop of each path is one edge, labelled with its summed edge, drawn once
    hops = {}
    for p in summary.paths:
        chain = [f"group:{k}" for k in p.groups] + [f"target:{p.target}"]
        hops.update(zip(zip(chain[:-1], chain[1:], strict=True), p.hops, strict=True))
    solid = {(a, b): e for a, b, e in fig["edges"] if e.get("style") not in ("invis", "dashed")}
    assert set(solid) == set(hops)
    for pair, hop in hops.items():
        assert solid[pair]["label"] == f"{hop:+.3g}"
        assert solid[pair]["color"] == ("#2166ac" if hop > 0 else "#b2182b")
    # every QK source of a drawn head group, dashed, from the source to the heads, its side
    qk = [(a, b, e["label"]) for a, b, e in fig["edges"] if e.get("style") == "dashed"]
    expected = [(f"group:{g.key}", f"group:{w.group}", w.side[0]) for g in summary.groups
                for w in g.writes_qk if g.key in keys and w.group in keys]  # fmt: skip
    assert sorted((a, b, label.split(" ")[0]) for a, b, label in qk) == sorted(expected)
    # a flagged check's line is red (a QK source's is not), the predicting heads have a thick
    # border, a QK source a purple one
    for g in drawn_groups(summary):
        box = nodes[f"group:{g.key}"]
        assert box.get("color") != FLAGGED_COLOR
        lines = re.split(r"<BR/>|\\n", box["label"])
        for c in g.checks:
            (line,) = [x for x in lines if f"frozen {c.frozen:+.3g}, free {c.free:+.3g}" in x]
            red = line.startswith(f'<FONT COLOR="{FLAGGED_COLOR}">')
            assert red == (c.flagged and not g.writes_qk), line
        if g.key in {t.predicting_group for t in summary.targets}:
            assert box["penwidth"] == "3"
        elif g.writes_qk:
            assert box.get("color") == QK_SOURCE_COLOR
    # rows in the model's order, bottom to top, the targets above every group
    height = {name: float(o["pos"].split(",")[1]) for name, o in nodes.items() if "pos" in o}
    stage = {f"group:{g.key}": (0 if g.kind == "embedding" else
                                2 * g.layer + (1 if g.kind == "lorsa" else 2))
             for g in drawn_groups(summary)}  # fmt: skip
    for a in stage:
        for b in stage:
            if stage[a] < stage[b]:
                assert height[a] < height[b], (a, b)
        for t in summary.targets:
            assert height[a] < height[f"target:{t.node}"]


@needs_dot
def test_the_figures_svg_ids_are_its_own_and_hostile_names_stay_text(traced):
    _, summary = traced
    hostile = copy.deepcopy(summary)
    g = drawn_groups(hostile)[0]
    g.name = 'say "hi" \\N <b>&amp;</b>\u202e\nline2'
    svg = subprocess.run(["dot", "-Tsvg"], input=mechanism_dot(hostile), text=True,
                         capture_output=True, timeout=60, check=True).stdout  # fmt: skip
    ids = re.findall(r' id="([^"]*)"', svg)
    assert ids and len(ids) == len(set(ids))
    # (Graphviz's own ids, ``graph0``, ``node1``, would meet graph.svg's on the page; it
    # names a tooltip's link ``a_`` + its element's id)
    assert all(re.fullmatch(f"(a_)?{ID_PREFIX}\\w+", i) for i in ids), ids
    shown = "say &quot;hi&quot; \\N &lt;b&gt;&amp;amp;&lt;/b&gt;&lt;U+202E&gt;"
    assert f'xlink:title="g0: {shown}&#10;line2 (' in svg  # the tooltip, as written
    lines = re.findall(r"<text[^>]*>([^<]*)</text>", svg[svg.index('xlink:title="g0: ') :])
    assert lines[:3] == ["say &quot;hi&quot; \\N", "&lt;b&gt;&amp;amp;&lt;/b&gt;&lt;U+202E&gt;",
                         "line2"]  # the box's lines, cut at spaces and the newline  # fmt: skip
    assert "<b>" not in svg


@needs_dot
def test_a_trace_writes_the_figure_beside_the_graph_and_the_page_shows_it(tmp_path, traced):
    graph, summary = traced
    pruned = prune_graph(graph)
    written = write_graph_outputs(pruned, tmp_path, ["svg"], mechanisms=summary)
    assert {tmp_path / "mechanism.dot", tmp_path / "mechanism.svg"} <= set(written.paths)
    assert (tmp_path / "mechanism.dot").read_text() == mechanism_dot(summary)
    page = (tmp_path / "graph.html").read_text()
    assert page.count(f'id="{ID_PREFIX}graph"') == 1
    ids = re.findall(r' id="([^"]*)"', page)
    assert len(ids) == len(set(ids))  # graph.svg's Graphviz ids and the figure's never meet
    # a run without a summary leaves no figure of the last one behind
    write_graph_outputs(pruned, tmp_path, ["svg"])
    assert not list(tmp_path.glob("mechanism.*"))
    assert ID_PREFIX + "graph" not in (tmp_path / "graph.html").read_text()


def test_a_failing_figure_costs_the_figure_alone(tmp_path, traced, monkeypatch):
    graph, summary = traced
    monkeypatch.setattr(outputs, "mechanism_dot", lambda s: "digraph { this is not dot")
    monkeypatch.setattr(outputs, "dot_available", lambda: True)
    real = outputs.render

    def render(text, stem, formats=()):
        if str(stem).endswith("mechanism") and formats:
            raise outputs.RenderError("svg", "syntax error in line 1")
        return real(text, stem, [f for f in formats if shutil.which("dot")])

    monkeypatch.setattr(outputs, "render", render)
    written = write_graph_outputs(prune_graph(graph), tmp_path, ["svg"], mechanisms=summary)
    assert any(n.startswith("mechanism figure failed, written without it") for n in written.notes)
    assert (tmp_path / "mechanism.dot").exists() and not (tmp_path / "mechanism.svg").exists()
    for name in ("graph.json", "graph.safetensors", "graph.html", "graph.dot"):
        assert (tmp_path / name).exists(), name
    assert ID_PREFIX + "graph" not in (tmp_path / "graph.html").read_text()


def test_a_box_name_is_cut_at_spaces_never_inside_a_tokens_quotes():
    assert _wrap("L0 19 heads @7 -> ' Wednesday'@6") == ["L0 19 heads @7 ->", "' Wednesday'@6"]
    name = "L2 head 617 @34 -> ' m'@16 [next token: name: repeated mention, F1 0.56]"
    assert _wrap(name) == ["L2 head 617 @34 -> ' m'@16", "[next token: name: repeated",
                           "mention, F1 0.56]"]  # fmt: skip
    assert _wrap("x" * 40 + " y") == ["x" * 40, "y"]  # a longer word whole, on its own line


@needs_dot
def test_a_flagged_group_is_marked_by_a_red_line_as_the_viewer_marks_it(traced):
    """The page's viewer marks a group whose check is flagged by a red line on a box drawn as
    any other's (red-dashed boxes drew the eye from the predicting heads), and a QK source by
    its border, its flagged check being how it acts; the figure drew both with a red border.
    Now the flagged check's line is red, the border the kind's own; a QK source's border is
    purple and its check's line not red; the caption says so. A hostile name in a box with a
    red line (an HTML-like label) stays text."""
    _, summary = traced
    edited = copy.deepcopy(summary)
    drawn_ = [g for g in drawn_groups(edited) if g.checks]
    plain = next(g for g in drawn_ if not g.writes_qk)
    for c in plain.checks:
        c.flagged = True
    plain.name = 'say "hi" \\N <b>&amp;</b>\u202e\nline2'
    sources = [g for g in drawn_ if g.writes_qk]
    for g in sources:
        g.checks[0].flagged = True
    fig = drawn(mechanism_dot(edited))
    box = fig["nodes"][f"group:{plain.key}"]
    assert box.get("color") is None and box["penwidth"] in ("0.8", "3"), box
    assert f'<FONT COLOR="{FLAGGED_COLOR}">' in box["label"] and "FLAGGED</FONT>" in box["label"]
    for g in sources:
        box = fig["nodes"][f"group:{g.key}"]
        assert "<FONT" not in box["label"] and "FLAGGED" in box["label"]
        assert box.get("color") == QK_SOURCE_COLOR or box["penwidth"] == "3"
    caption = _caption(edited, drawn_groups(edited)).replace("\n", " ")
    assert "a flagged check's line red" in caption and "red: a flagged check" not in caption
    svg = subprocess.run(["dot", "-Tsvg"], input=mechanism_dot(edited), text=True,
                         capture_output=True, timeout=60, check=True).stdout  # fmt: skip
    assert "<b>" not in svg
    at = svg.index(f'xlink:title="{plain.key}: ')
    lines = re.findall(r"<text[^>]*>([^<]*)</text>", svg[at:])
    assert lines[:3] == ["say &quot;hi&quot; \\N", "&lt;b&gt;&amp;amp;&lt;/b&gt;&lt;U+202E&gt;",
                         "line2"], lines  # fmt: skip
    assert re.search(f'<text[^>]*fill="{FLAGGED_COLOR}"[^>]*>[^<]*ablated', svg[at:])


@needs_dot
def test_a_head_targets_qk_sources_are_drawn_into_it(head_traced):
    """A head target's figure drew none of the groups that write its own QK score, the why of a
    head target (on an induction head's --target-node, the printout's key-side source 'L0 9
    heads @6 -> ' lamp'@6 ... attention 0.87 -> 0.003' and its query-side source were missing:
    their writes name the target's node, not a group)."""
    summary = head_traced
    (t,) = summary.targets
    sources = [(g, w) for g in summary.groups for w in g.writes_qk if w.group == t.node]
    assert t.kind == "lorsa" and t.qk and sources
    fig = drawn(mechanism_dot(summary))
    dashed = {(a, b): e for a, b, e in fig["edges"] if e.get("style") == "dashed"}
    for g, w in sources:
        assert g in drawn_groups(summary) and f"group:{g.key}" in fig["nodes"]
        label = dashed[(f"group:{g.key}", f"target:{t.node}")]["label"]
        after = summary.attention_after(g, t.node)
        assert label == f"{w.side[0]} " + attention_change(after.mean_before,
                                                           after.mean_side(w.side))  # fmt: skip


def box_lines(box: dict) -> list[str]:
    """A box's lines as text: a plain label's, or an HTML-like one's (a box with a red line),
    its tags taken off and its entities read."""
    label = box["label"]
    if "<BR/>" not in label and not label.startswith("<"):
        return label.split("\\n")
    return [html.unescape(re.sub(r"</?FONT[^>]*>", "", x)) for x in label.split("<BR/>")]


def _text(box: dict) -> str:
    """A box's label as one line (its lines are cut at spaces)."""
    return " ".join(box_lines(box))


@needs_dot
def test_the_predicting_heads_say_what_they_are_and_why_they_attend_there(traced, head_traced):
    """The figure marked each target's predicting heads by a thick border alone: with several
    targets it did not say whose, and the printout's "why it attends there" line, the
    mechanism's QK half (on an induction prompt: token ' stone'@14 at the query x token
    ' stone'@5 moved to the key @6 +13.9), was in no box. Both read the same term
    (``reports.mechanisms.why_term``)."""
    _, summary = traced
    fig = drawn(mechanism_dot(summary))
    predicting = {t.predicting_group for t in summary.targets} - {None}
    assert predicting and len(summary.targets) > 1
    for g in drawn_groups(summary):
        text = _text(fig["nodes"][f"group:{g.key}"])
        if g.key not in predicting:
            assert "why it attends there" not in text and "predicting" not in text
            continue
        roles = {ROLE_WORDS[predicting_role(g, t)] for t in summary.targets
                 if t.predicting_group == g.key}  # fmt: skip
        for role in roles:
            labels = [t.label for t in summary.targets if t.predicting_group == g.key
                      and ROLE_WORDS[predicting_role(g, t)] == role]  # fmt: skip
            assert f"{role} of {', '.join(labels)}" in text
        why = why_term(g)
        assert why is not None
        said = f"{why.place}{why.query} x {why.key} {why.value:+.3g}"
        assert f"why it attends there: {said} (QK {why.reason.qk_head}'s {why.term}" in text
        assert said in why_text(g, summary)  # the printout's line names the same term
    # ... and what making its tokens the mean token did, as the printout's next line (the
    # fixture's term is an error pair, which names no token: made to name a checked one)
    edited = copy.deepcopy(summary)
    g = edited.group(sorted(predicting)[0])
    pair = why_term(g).pair
    pair.query.kind, pair.query.pos = "embedding", g.qk[0].token_checks[0].pos
    checks = why_checks(why_term(g), edited)
    assert checks and not why_checks(why_term(summary.group(g.key)), summary)
    text = _text(drawn(mechanism_dot(edited))["nodes"][f"group:{g.key}"])
    assert f"made the mean token: {', '.join(checks)}" in text
    # a head target's box: its own QK reason's term, and the errors' sum that raises it more
    (t,) = head_traced.targets
    why = why_term(t)
    assert why is not None and why.larger
    text = _text(drawn(mechanism_dot(head_traced))["nodes"][f"target:{t.node}"])
    assert f"why it attends there: {why.place}{why.query} x {why.key} {why.value:+.3g}" in text
    for part, value in why.larger:
        assert f"the {part[:-1]} terms bring more, {value:+.3g}" in text


@needs_dot
def test_a_box_gives_each_target_one_line_in_the_targets_order(traced):
    """With several targets a box gave each two lines, a flow line and an ablation line: on a
    default trace's ten top logits a group's box held 20 lines of numbers (the figure 1708
    points high for a 27-token prompt). Each target now has one line, in the targets' order
    also for a summary read from its file (whose flows are keyed in another order)."""
    _, summary = traced
    assert len(summary.targets) > 1
    read = MechanismSummary.from_dict(json.loads(json.dumps(summary.to_dict(), sort_keys=True)))
    for s in (summary, read):
        nodes = drawn(mechanism_dot(s))["nodes"]
        for g in drawn_groups(s):
            if g.kind == "embedding":
                continue
            lines = box_lines(nodes[f"group:{g.key}"])
            checks = {c.target: c for c in g.checks}
            want = []
            for t in s.targets:
                line = f"{shorten(t.label, 16)}: flow {g.flow[t.node]:+.3g}"
                if (c := checks.get(t.node)) is not None:
                    line += f"; ablated: frozen {c.frozen:+.3g}, free {c.free:+.3g}"
                    line += "  FLAGGED" if c.flagged else ""
                want.append(line)
            assert lines[-len(want) :] == want, (g.key, lines)
            assert not any("flow" in line for line in lines[: -len(want)])


@needs_dot
def test_the_figure_says_what_its_probabilities_are_of(traced, head_traced):
    """A difference's box read 'logit ' Thursday' - ' Friday' / value +4.29 (p 0.982)', the
    first token's probability as if the difference's; a sparse summary's probabilities are the
    replacement's (the model's own beside them in the printout), and positions holding
    untrained tokens show no learned mechanism: the printout says both, the figure said
    neither. Its boxes and caption now say them as the printout does."""
    _, summary = traced
    odd = copy.deepcopy(summary)
    t = odd.targets[0]
    t.negative, t.negative_probability, t.model_probability = "<9>", 0.125, 0.5
    odd.mode, odd.untrained_positions = "sparse", [1]
    fig = drawn(mechanism_dot(odd))
    assert probability_text(t) in _text(fig["nodes"][f"target:{t.node}"])
    assert "for '<9>'" in probability_text(t) and "the model's 0.5" in probability_text(t)
    caption = fig["caption"].replace("\\n", " ")
    assert sparse_words(odd) in caption and odd.untrained_note() in caption
    caption = drawn(mechanism_dot(summary))["caption"].replace("\\n", " ")
    assert sparse_words(summary) not in caption and "never saw" not in caption
    (h,) = head_traced.targets  # a head's value is its pre-activation
    assert "(pre-activation)" in _text(
        drawn(mechanism_dot(head_traced))["nodes"][f"target:{h.node}"]
    )


@needs_dot
def test_a_targets_box_gives_its_exact_split(traced):
    """The printout's first line under a target splits it exactly into tokens, constants and
    errors (' lamp' = 14.2: tokens +22.1, constants -8.58, errors +0.746): how much of it the
    figure's paths, which all start at tokens, can carry, and how much is the replacement's
    error. The figure gave the value alone."""
    _, summary = traced
    nodes = drawn(mechanism_dot(summary))["nodes"]
    for t in summary.targets:
        text = _text(nodes[f"target:{t.node}"]).replace("\u00a0", " ")
        assert (f"= tokens {t.tokens:+.3g}, constants {t.constants:+.3g}, errors "
                f"{t.errors:+.3g}") in text  # fmt: skip
        assert t.tokens + t.constants + t.errors == pytest.approx(t.value, abs=1e-3)


@needs_dot
def test_a_summary_of_many_targets_draws_its_first_ones_and_says_so(replacement, tokens):
    """A default trace of an unsure prompt explains its ten most likely tokens: a box gave each
    its line and the figure ran 2700-3900 points wide. The first ``TARGETS_DRAWN`` are drawn,
    with their paths and groups; the caption says how many of how many (and counts the groups
    apart from the tokens: its "N groups" held the token boxes, its "M more" did not)."""
    run = run_prompt(replacement, tokens, "local", constants=True)
    graph = attribute(replacement, tokens, max_logits=TARGETS_DRAWN + 2, run=run)
    summary = summarize(replacement, graph, run, max_groups=6, check=False)
    assert len(summary.targets) > TARGETS_DRAWN
    first = summary.targets[:TARGETS_DRAWN]
    fig = drawn(mechanism_dot(summary))
    nodes = fig["nodes"]
    assert {n for n in nodes if n.startswith("target:")} == {f"target:{t.node}" for t in first}
    shown = dataclasses.replace(summary, targets=first,
                                paths=[p for p in summary.paths if p.target in
                                       {t.node for t in first}])  # fmt: skip
    assert {n for n in nodes if n.startswith("group:")} == {
        f"group:{g.key}" for g in drawn_groups(shown)}  # fmt: skip
    for g in drawn_groups(shown):  # a line per drawn target, none for the others
        text = " ".join(box_lines(nodes[f"group:{g.key}"]))
        assert not any(f"{shorten(t.label, 16)}: flow" in text
                       for t in summary.targets[TARGETS_DRAWN:]
                       if t.label not in {u.label for u in first})  # fmt: skip
    caption = fig["caption"].replace("\\n", " ")
    assert f"its first {TARGETS_DRAWN} of {len(summary.targets)} targets" in caption
    tokens_drawn = sum(g.kind == "embedding" for g in drawn_groups(shown))
    inner = len(drawn_groups(shown)) - tokens_drawn
    assert f"({inner} groups and {tokens_drawn} token" in caption


@needs_dot
def test_the_pages_figure_fits_the_pages_width(tmp_path, traced, browser):
    """The page showed the figure at its natural size in a scroll box: a three-target figure,
    about 1860 px wide, scrolled sideways in a 1400 px window. It is one picture to take in at
    once: scaled to the section's width (``mechanism.svg`` keeps its full size)."""
    graph, summary = traced
    wide = subprocess.run(["dot", "-Tsvg"], input=mechanism_dot(summary), text=True,
                          capture_output=True, timeout=60, check=True).stdout  # fmt: skip
    natural = float(re.search(r'<svg width="([0-9.]+)pt"', wide).group(1)) * 4 / 3
    # (the random model's figure is small: made wider than the window, as a real one can be)
    wide = re.sub(r'<svg width="[0-9.]+pt"', '<svg width="2400pt"', wide, count=1)
    path = tmp_path / "graph.html"
    from reports.html import write_html

    write_html(prune_graph(graph), path, None, mechanisms=summary, figure_svg=wide)
    browser.load(path)
    box, svg, scroll = browser.evaluate(
        "(() => { const d = document.getElementById('mechanism_graph').closest('div.graph');"
        " return [d.clientWidth, d.querySelector('svg').getBoundingClientRect().width,"
        " d.scrollWidth]; })()"
    )
    assert natural > 0 and svg <= box and scroll <= box + 1, (box, svg, scroll)


@needs_dot
def test_the_figure_links_a_moved_token_to_the_heads_at_the_key_that_moved_it(traced):
    """Where the predicting heads' why term is a token moved to their key, the head groups at
    the key that moved it are drawn (a summary group's box, or one of its fields where it is
    none), each with a dotted edge into the predicting heads saying what it brings from the
    token's position to the key side, the number the printout's why line gives. A reviewer's
    induction figure drew the heads at the key reading the key's own token as the key
    side's source, never the previous-token heads moving ' seven'@15 to @16."""
    from circuits.mechanism_file import MovedBy, Mover, RootPair, SourceShare
    from reports.mechanism_figure import MOVED_COLOR
    from reports.mechanisms import why_block, why_text

    _, summary = traced
    summary = copy.deepcopy(summary)
    g = summary.group(summary.targets[0].predicting_group)
    r = g.qk[0]
    assert r.key >= 2
    p = r.key - 1
    query = SourceShare(f"token {summary.tokens[r.query]!r}@{r.query}", "embedding", None,
                        r.query, None, None, 0.0)  # fmt: skip
    moved = SourceShare(f"token {summary.tokens[p]!r}@{p}", "embedding", None, p, None, None, 0)
    r.own_pairs, r.position_pairs = [], []
    r.moved_pairs = [RootPair(query, moved, 5.0)]
    inside = next(x for x in summary.groups if x not in drawn_groups(summary))
    outside = SourceShare(f"L0 3 heads @{r.key} -> x@{p}", "lorsa", 0, r.key, p, None, 0.25)
    r.moved_by = [MovedBy(p, summary.tokens[p], 1.5, [
        Mover(SourceShare(inside.name, "lorsa", 0, r.key, p, None, 0.75), inside.key),
        Mover(outside),
    ])]  # fmt: skip
    assert inside in drawn_groups(summary)
    fig = drawn(mechanism_dot(summary))
    nodes = fig["nodes"]
    (out_box,) = [n for n in nodes if n.startswith("mover:")]
    assert nodes[out_box]["label"].replace("\\n", " ").startswith(outside.name)
    assert "dashed" in nodes[out_box]["style"]
    dotted = sorted((a, b, e["label"].replace("\\n", " "), e["color"])
                    for a, b, e in fig["edges"] if e.get("style") == "dotted")  # fmt: skip
    token = f"{summary.tokens[p]!r}@{p}"
    assert dotted == sorted([
        (f"group:{inside.key}", f"group:{g.key}", f"moves {token} to the key: +0.75",
         MOVED_COLOR),
        (out_box, f"group:{g.key}", f"moves {token} to the key: +0.25", MOVED_COLOR),
    ])  # fmt: skip
    # the box says what every head at the key brings, the caption what the edges are
    box = " ".join(re.split(r"<BR/>|\\n", nodes[f"group:{g.key}"]["label"]))
    assert f"{token} moved there: +1.5 of the key side from @{p}, by the dotted" in box
    assert "dotted green: heads at the key that moved" in fig["caption"].replace("\\n", " ")
    # the printout's why line names the same groups with the same numbers: in its block a
    # mover a line, in its one-line form as before
    assert [f"{token} moved to the key @{r.key} (every head there brings +1.5 from @{p}) by:",
            f"{inside.key} {inside.name} (+0.75 of the key side)",
            f"{outside.name} (+0.25 of the key side)"] in why_block(g, summary)  # fmt: skip
    assert (f"{token} moved to the key @{r.key} by {inside.key} {inside.name} (+0.75 of the key "
            f"side), {outside.name} (+0.25 of the key side); every head there brings +1.5 from "
            f"@{p}") in why_text(g, summary)  # fmt: skip
    # a why term that is no moved token draws none
    r.own_pairs = [RootPair(query, moved, 9.0)]
    assert not [e for *_, e in drawn(mechanism_dot(summary))["edges"] if e.get("style") == "dotted"]


@needs_dot
def test_the_figure_writes_a_number_as_the_printout_does(traced):
    """The figure's numbers are the printout's (``reports.mechanisms._signed``): a flow that is
    float rounding reads 0 in both (the figure wrote +1e-13 where the printout wrote 0)."""
    from reports.mechanisms import format_summary

    _, summary = traced
    summary = copy.deepcopy(summary)
    g = next(x for x in drawn_groups(summary) if x.kind == "transcoder")
    t = summary.targets[0]
    g.flow[t.node] = 1e-13
    label = drawn(mechanism_dot(summary))["nodes"][f"group:{g.key}"]["label"]
    lines = re.split(r"<BR/>|\\n", label)
    assert any("flow 0;" in x for x in lines) and "1e-13" not in label, lines
    (said,) = [x for x in format_summary(summary).splitlines() if x.startswith(f"    {g.key} ")]
    assert f": flow {t.label} 0, " in said or ": flow 0 " in said, said
