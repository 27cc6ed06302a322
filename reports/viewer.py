"""The interactive viewer's data: one JSON object per graph, embedded safely in the page.

``viewer_data`` gathers what the page's script (``reports/viewer/viewer.js``) draws and shows:
every node with its readable labels (``reports.labels``) and structured fields, every edge as
parallel arrays, the QK records of Lorsa heads with ``refs`` (below), the default view
(``reports.layout.select``'s budget, so the first picture is the one the Graphviz drawing
shows), unit dashboards when there are any, and circuit-tracer's ``qParams`` (``pinnedIds``,
``supernodes``, ``clickedId``) from which the page starts and which it keeps in step with the
URL; with a mechanism summary and no ``qParams`` given, its groups are the first supernodes
(``summary_supernodes``), those whose ablation check is flagged drawn with a mark.

``refs`` gives every node a QK record names that the graph does not hold (pruning dropped it;
a QK reason's or contrast's side named as a unit, without a position) its structured fields
and a label in ``reports.labels``'s words, so that the panel names it as readably as the nodes
it has: ``{"kind", "stage", "layer", "index", "pos" (None for a unit), "label", "short"}``.

``script_json`` writes the object so that it can sit inside ``<script type="application/json">``:
no string from the graph can close the element or open a comment (``<``, ``>`` and ``&`` are
written as ``\\u`` escapes, as are U+2028/2029 and every control character), and the text
holds no NaN (not JSON).

Dashboards (``dashboards``, keyed by unit id, ``circuits.nodes.unit_id``: ``{sublayer}_{index}``)
are built elsewhere from corpus data; the viewer shows the one of a clicked node's unit when
present. One dashboard is a dict; every key is optional::

    {
      "concept": {"label": "second mention of a name", "f1": 0.83,
                  "chance": 0.02, "at_chance": false},  # optional: F1 by firing rate alone
      "frequency": 0.012,                      # fraction of tokens the unit fires on
      "histogram": {"edges": [0, 0.5, 1.0], "counts": [120, 7]},  # activations when firing
      "logits": {"promoted": [[" Mary", 1.9], ...], "suppressed": [[" the", -1.2], ...]},
      "examples": [{
          "group": "top",                      # or a quantile's name: "q 0.50-0.75"
          "tokens": ["<|bos|>", "Mary", " met", ...],  # the window's token texts
          "at": 5,                             # index (in tokens) of the activating token
          "activation": 3.2,
          "acts": [0, 0, 0.4, ...],            # optional: activation at every window token
          "keys": [[2, 1.7], [4, 0.3]],        # optional, Lorsa heads: z-pattern, the part of
      }],                                      # the activation each key token carried
    }

``check_dashboards`` validates that shape and names the unit and field it refuses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from circuits.concepts import AT_CHANCE, DOCUMENT_CONCEPTS, at_chance
from circuits.graph import Graph, NamedSide, QKAttribution
from circuits.groups import spread_percent
from circuits.mechanism_file import TargetRecord
from circuits.neuronpedia import checked_supernodes
from circuits.nodes import CONVENTION_ACTIVATION, Kind, block_of, logit_stage, unit_id
from toy_models.records import is_finite_number

from .labels import fields_label, node_labels, short_label_lines, stage_name
from .layout import (
    ACTIVATION,
    EDGES_PER_NODE,
    INFLUENCE,
    INNER_KINDS,
    MAX_NODES,
    QK_MIN_SHARE,
    TOKEN_EDGE_NOTE,
    Selection,
    node_scores,
    placeholder,
    select,
)

ASSETS = Path(__file__).with_name("viewer")
SIGNIFICANT = 6  # digits kept of each float (float32 values need no more)
PANEL_PAIRS = 8  # a head's own QK record: the unit pairs its panel lists (the heading says so)
# A node's row in the page's node table has the element id this and the node's id
# (``reports.html.node_anchor``); the node links of the table and the mechanism summary point
# there, and the script finds rows and links by it.
NODE_ANCHOR = "node-"
# A supernode box's line, in characters: the page cuts a longer one there with "…"
# (viewer.js, ``data.view.boxChars``), so ``_box_fit`` puts a line's last word (a number, a
# "(weak)") on a line of its own rather than let it be cut, and a "reads" line is fitted by
# cutting its token instead (``_read_line``; cut there a reader saw "reads ' thanked'@20 +0.…")
BOX_CHARS = 24


def _num(value: float | None) -> float | None:
    """A float for JSON: ``SIGNIFICANT`` digits, None for NaN and infinities."""
    if value is None:
        return None
    value = float(value)
    return float(f"{value:.{SIGNIFICANT}g}") if math.isfinite(value) else None


def _float32(value: float) -> float | None:
    """An edge weight (the graph's float32) for JSON as the shortest decimal that reads back
    as the same float32 (None for NaN and infinities): the page's threshold ``|w| >= edgeMin``
    then compares the graph's own values, as the static drawing's cut does. Rounded to
    ``SIGNIFICANT`` digits, an edge under the cut but equal to it to 6 digits was drawn on the
    page alone (a note's Left)."""
    value = np.float32(value)
    return float(str(value)) if np.isfinite(value) else None


def _qk_record(graph: Graph, a: QKAttribution) -> dict:
    # Every pair and marginal the record has (the QK pass keeps a few): the drawing's QK edges
    # go to the strongest drawn node among them, as reports.layout.qk_edges does.
    pairs = sorted(a.pairs, key=lambda p: -abs(p.value))
    key_token = graph.token_strings[a.key] if 0 <= a.key < len(graph.token_strings) else ""
    return {
        "layer": a.layer,
        "qkHead": a.qk_head,
        "key": a.key,
        "keyToken": key_token,
        "attention": _num(a.attention),
        "score": _num(a.score),
        "rest": _num(a.rest),
        "pairs": [[p.query, p.key, _num(p.value)] for p in pairs],
        "queryMarginals": [[n, _num(v)] for n, v in a.query_marginals],
        "keyMarginals": [[n, _num(v)] for n, v in a.key_marginals],
        "contrast": _num(a.contrast),
        "contrastPairs": [[p.query, p.key, _num(p.value)] for p in a.contrast_pairs],
        "reason": None if a.reason is None else _reason(a.reason),
        # its sources through the graph, per side largest first: the QK edges' (layout.qk_edges)
        "sources": [
            {
                "side": x.side[0],
                "members": x.members,
                "value": _num(x.value),
                "kind": x.kind,
                "layer": x.layer,
                "pos": x.pos,
                "attends": x.attends,
            }
            for x in a.sources
        ],
    }


def _reason(r) -> dict:
    """A ``QKReason`` for the panel: the named parts, the specific pairs (ids) under the
    heading every page gives them (``reports.mechanisms.unit_pairs``: none where they leave out
    most of the specific terms' magnitude) and the share they leave out."""
    from .mechanisms import unit_pairs

    heading, pairs = unit_pairs(r, PANEL_PAIRS)
    return {
        "meanQueryMeanKey": _num(r.mean_query_mean_key),
        "queryVsMeanKey": _num(r.query_vs_mean_key),
        "meanQueryVsKey": _num(r.mean_query_vs_key),
        "specific": _num(r.specific),
        "restShare": _num(r.rest_share),
        "units": heading or None,
        "pairs": [[p.query, p.key, _num(p.value)] for p in pairs],
    }


def _fields_of(graph: Graph, side: NamedSide) -> dict | None:
    """The fields and labels of a node (or, without a position, a unit) that a QK record
    names and ``graph`` does not hold (``QKAttribution.named``: pruning drops most of them);
    None for a kind a Lorsa layer does not read."""
    if side.kind not in (Kind.EMBEDDING, Kind.LORSA, Kind.TRANSCODER, Kind.ERROR, Kind.BIAS):
        return None
    label, short = _ref_label(graph, side.kind, side.stage, side.index, side.pos)
    return {"kind": side.kind.label, "stage": side.stage, "layer": block_of(side.stage),
            "index": side.index, "pos": side.pos, "label": label, "short": short}  # fmt: skip


def _ref_label(graph: Graph, kind: Kind, stage: int, index: int, pos: int | None):
    """(label, short label) of a node the graph does not hold: ``reports.labels.fields_label``
    (a unit, ``pos`` None, without a position) and the short text a drawn node of its kind
    has."""
    label = fields_label(graph, kind, stage, index, pos)
    if kind == Kind.EMBEDDING:  # a unit's short text is its token's, as a global graph draws it
        text = graph.token_text.get(index)
        unit = pos is None or not graph.positional
        short = repr(text) if unit and text is not None else label
    elif kind == Kind.BIAS:
        short = "position vector" if stage == 0 else "bias"
    else:
        short = {Kind.ERROR: "err", Kind.LORSA: f"H{index}"}.get(kind, f"F{index}")
    return label, short


def qk_refs(graph: Graph) -> dict[str, dict]:
    """``refs`` (module docstring): the fields and label of every node or unit id the graph's
    QK records name that is not one of its nodes."""
    known = graph.id_to_index
    refs: dict[str, dict] = {}
    for a in graph.qk:
        for name, side in a.named.items():
            if name not in known and name not in refs:
                fields = _fields_of(graph, side)
                if fields is not None:
                    refs[name] = fields
    return refs


def _reason_panel(r, summary, said: dict | None = None) -> dict:
    """A summary's ``QKReasonRecord`` as the panel lists it under a group or a head target:
    whole (a head's panel shows it alone), with ``said`` (``reports.mechanisms.reason_repeats``:
    where the summary's list gave it before), which that list reads to point there."""
    from circuits.mechanism_file import SIDES

    from .mechanisms import (
        PAIRS_SHOWN,
        ref_text,
        root_block,
        side_from_text,
        token_checks_block,
        unit_pairs,
    )

    heading, pairs = unit_pairs(r, PAIRS_SHOWN)
    return {"qkHead": r.qk_head, "key": r.key, "keyToken": r.key_token, "score": _num(r.score),
            "alwaysOn": _num(r.always_on),
            "specific": _num(r.specific), "restShare": _num(r.rest_share),
            "units": heading or None,
            "pairs": [[ref_text(p.query), ref_text(p.key), _num(p.value)] for p in pairs],
            "sources": [text for side in SIDES if (text := side_from_text(r, side))],
            "roots": root_block(r, PAIRS_SHOWN) if r.root_pairs else None,
            "tokenChecks": token_checks_block(r, summary) if r.token_checks else None,
            "said": said or None}  # fmt: skip


def mechanisms_data(summary, graph: Graph) -> dict | None:
    """A ``circuits.mechanism_file.MechanismSummary`` for the panel: targets with their exact
    parts, paths by group key, and each group with its members present in this graph (checked
    first, as its file would be and as this graph's: ``reports.mechanisms.summary_for``)."""
    if summary is None:
        return None
    from .mechanisms import (
        ATTENTION_AFTER,
        TOKEN_SHARES,
        attention_check_text,
        carried_text,
        check_texts,
        flagged_text,
        group_title,
        legend_blocks,
        member_concepts_text,
        moved_text,
        own_attention_block,
        own_token_text,
        predicting_heading,
        probability_text,
        qk_sources_block,
        qk_sources_blocks,
        reads_text,
        reason_repeats,
        rival_text,
        sources_said,
        spread_text,
        stronger_text,
        summary_for,
        why_blocks,
        writes_qk_text,
    )

    summary = summary_for(summary, graph)
    known = graph.id_to_index
    min_f1 = summary.settings.get("member_min_f1", 0.0)
    by_node = {t.node: t for t in summary.targets}
    # said once, as the printout and the report say them: a later target sharing a group
    # points to the first, a source's group line to the target it is given under
    whys, qk_blocks = why_blocks(summary), qk_sources_blocks(summary)
    said, repeats = sources_said(summary), reason_repeats(summary)
    return {
        # the printout's legend, by what each block defines: the panel's words defined
        "legend": [{"name": k, "lines": b} for k, b in legend_blocks(summary).items()],
        "targets": [
            {"node": t.node, "token": t.token, "negative": t.negative, "value": _num(t.value),
             "probability": _num(t.probability), "tokens": _num(t.tokens),
             "constants": _num(t.constants), "errors": _num(t.errors),
             "rival": rival_text(t) or None,  # as the text says it (its negative: no margin)
             # "(p=0.718; the model's 0.981)", as the text prints it (sparse mode's two)
             "probabilityText": probability_text(t),
             "predicting": t.predicting_group, "next": t.head_groups[1:], "kind": t.kind,
             "predictingLabel": None if t.predicting_group is None else
                 predicting_heading(summary.group(t.predicting_group), t, summary.tolerance),
             "spread": (spread_text(summary.group(t.predicting_group), t.node) or None)
             if t.predicting_group else None,
             "byPosition": [{"pos": x.pos, "token": x.token, "flow": _num(x.flow)}
                            for x in t.tokens_by_position[:TOKEN_SHARES]],
             "morePositions": max(0, len(t.tokens_by_position) - TOKEN_SHARES),
             "moved": moved_text(t) or None,
             "own": (own_token_text(t, summary.group(t.predicting_group).pos) or None)
             if t.predicting_group else None,
             "reads": reads_text(t, summary.tokens) or None,
             "ownAttention": own_attention_block(t, summary.tokens) or None,
             "flagged": (flagged_text(summary.group(t.predicting_group), t, summary.tolerance)
                         or None)
             if t.predicting_group else None,
             "why": whys.get(t.node),
             "stronger": (stronger_text(summary.group(t.predicting_group), t, summary)
                          or None) if t.predicting_group else None,
             "qkSources": qk_blocks.get(t.node),
             # a head target's own: what makes it attend the key it reads
             "ownQkSources": qk_sources_block(summary, t.node),
             "qk": [_reason_panel(r, summary) for r in t.qk]}
            for t in summary.targets
        ],
        "paths": [{"target": p.target, "groups": p.groups, "flow": _num(p.flow)}
                  for p in summary.paths],
        "groups": [
            {"key": g.key, "name": g.name, "kind": g.kind,
             "supernode": f"{g.key} {g.name}",  # its name as a supernode
             # as the printout titles it (a feature group without a concept: its members'
             # concept, or what its flow reads and promotes), and its members' concepts
             "title": group_title(g),
             "memberConcepts": member_concepts_text(g, min_f1) or None,
             "members": [m for m in g.members if m in known],
             "flow": {k: _num(v) for k, v in g.flow.items()}, "concept": g.concept,
             "brings": {t.node: carried_text(g, t.node) for t in summary.targets
                        if g.carried.get(t.node)},
             "qk": [_reason_panel(r, summary, repeats.get((g.key, i)))
                    for i, r in enumerate(g.qk)],
             "checks": [[c.target, _num(c.predicted), _num(c.frozen), _num(c.free), c.flagged,
                         *check_texts(c, by_node.get(c.target), summary.tolerance)]
                        for c in g.checks],
             "writesQk": writes_qk_text(g, summary, said) or None,
             "box": _box_lines(g, summary), "size": len(g.members),
             "attention": f"{ATTENTION_AFTER}: " + "; ".join(
                 attention_check_text(a, summary) for a in g.attention_checks)
             if g.attention_checks else None}
            for g in summary.groups
        ],
    }  # fmt: skip


def _box_lines(g, summary) -> list[str]:
    """A summary group's box as a supernode, from its fields: its key, block, size and place,
    then what it reads (a head group's key token) or its concept (a feature group without
    one: its members' concept with their share of its flow and F1, or the token its flow
    reads most, ``reports.mechanisms.group_title`` in short), then for a QK source the
    attention its ablation leaves the head whose score it writes (``AttentionCheck``): its
    flagged check is what a QK source is for, not a warning."""
    from .mechanisms import (
        HALVES,
        _percent,
        attention_change,
        described,
        majority_concept,
    )

    size = len(g.members)
    what = {"lorsa": "head", "transcoder": "feature"}.get(g.kind, "node")
    lines = [
        f"{g.key} L{g.layer} {size} {what}{'s' if size != 1 else ''}"
        + ("" if g.pos is None else f" @{g.pos}")
    ]
    if g.attends is not None:
        # where the key brings under SPREAD_SHARE of the activation: its share first
        lines.append((spread_percent(g.key_share) or "") + f"→{g.attends_token!r}@{g.attends}")
    elif g.concept:
        lines.append(g.concept)
    elif described(g):  # a short form of its title (the panel and the tooltip give it whole)
        if (top := majority_concept(g)) is not None:
            low = f"F1 {top.f1_low:.2f}" if top.f1_high - top.f1_low < 0.005 else \
                f"F1 ≥{top.f1_low:.2f}"  # fmt: skip
            lines += [top.concept, f"members {_percent(top.share)}, {low}"]
        elif g.reads:
            lines.append(_read_line(g.reads[0]))  # signed: it may be against
        elif g.promotes:
            lines.append(f"↑{g.promotes[0]!r}")
    heads = [t for t in summary.targets if isinstance(summary.qk_subject(t.node), TargetRecord)]
    places = [(t.layer, t.pos) for t in heads]
    for w in g.writes_qk:  # two short lines: the viewer fits each to a box's width
        whose = w.group  # a head group's key; a head target's block and place where several
        t = summary.qk_subject(w.group)
        if isinstance(t, TargetRecord):  # (a reviewer's two head targets' boxes read "writes
            # target's query" twice)
            whose = "target" if len(heads) == 1 else f"target L{t.layer} @{t.pos}"
            if places.count((t.layer, t.pos)) > 1:  # the same block and place: by its order
                whose = f"head target {heads.index(t) + 1}"
        a = summary.attention_after(g, w.group)
        # a source whose ablation through its side leaves over half the attention is weak, as
        # the text says (qk_sources_sides): the box says so too (a reviewer read "writes g0's
        # query" over an induction head's query side whose source left 0.99 -> 0.62, the
        # query's own token doing the work)
        alone = None if a is None else a.mean_side(w.side)
        weak = alone is not None and alone > a.mean_before * HALVES
        writes = f"writes {whose}'s {w.side}"  # a long one is cut as a name is, not split
        lines += _box_fit(f"{writes} (weak)") if weak else [writes]
        if a is not None:  # through the side it writes, where measured: what chose it (the
            # panel's text gives both); a box holds no more (a reviewer read "…")
            after = a.mean_free if alone is None else alone
            change = attention_change(a.mean_before, after, arrow="→")
            lines += _box_fit(f"{whose} attends {change}")
    return lines


def _box_fit(line: str) -> list[str]:
    """``line`` as a box's lines: a line longer than ``BOX_CHARS`` breaks before its last word,
    which the page would cut (a reviewer's head target's source box read "target attends
    0.53→0.0…" for 0.53→0.005; "reads ' Wednesday'@6 +1…", "writes target's query (…")."""
    head, _, last = line.rpartition(" ")
    return [head, last] if len(line) > BOX_CHARS and head else [line]


def _read_line(x) -> str:
    """``reads ' is'@8 +7.55`` (``reports.mechanisms.read_text``) in ``BOX_CHARS`` at most: a
    long token is cut, with "…" inside its quotes, its position and signed part kept whole."""
    from .mechanisms import read_text

    line, keep = f"reads {read_text(x)}", len(x.token)
    while len(line) > BOX_CHARS and keep > 1:  # (a repr's escapes make its length uneven)
        keep -= 1
        line = f"reads {read_text(dataclasses.replace(x, token=x.token[:keep] + '…'))}"
    return line


def _node(graph: Graph, i: int, label: str, arrays: dict) -> dict:
    kind = Kind(arrays["kind"][i])
    stage, pos, index = arrays["stage"][i], arrays["pos"][i], arrays["index"][i]
    negative = None
    if kind == Kind.LOGIT:
        record = graph.logit_record(i)
        negative = record.negative
    node = {
        "id": graph.ids[i],
        "unit": unit_id(kind, stage, index, negative=negative),
        "kind": kind.label,
        "stage": stage,
        "layer": arrays["layer"][i],
        "pos": pos,
        "index": index,
        "label": label,
        "lines": short_label_lines(graph, i),
        "activation": _num(arrays["activation"][i]),
        "influence": None if graph.influence is None else _num(arrays["influence"][i]),
    }
    if arrays["score"] is not None:  # a downstream global graph's reach, a QK circuit's
        node["score"] = _num(arrays["score"][i])  # shares (``layout.node_scores``)
    if kind != Kind.LOGIT and arrays["target"][i]:
        node["target"] = True  # a head, feature or token the graph starts from: always drawn
    if kind in (Kind.LORSA, Kind.TRANSCODER, Kind.LOGIT):
        node["value"] = _num(arrays["value"][i])
        node["bias"] = _num(arrays["bias"][i])
    if graph.occurrences is not None:
        node["occurrences"] = _num(graph.occurrences[i])
    key = graph.read_key(i)
    if key is not None:
        node["attends"] = key
        node["attention"] = _num(graph.attention[i])
        share = graph.read_share(i)
        if share is not None:
            node["key_share"] = _num(share)
    promoted = [graph.token(t) for t in arrays["promotes"][i] if t >= 0]
    if promoted:
        node["promotes"] = promoted
    if kind == Kind.LOGIT:
        node["logit"] = {
            "token": graph.token(record.token),
            "negative": None if negative is None else graph.token(negative),
            "probability": _num(record.probability),
        }
    qk = graph.qk_for(i)
    if qk:
        node["qk"] = [_qk_record(graph, a) for a in qk]  # the key it reads first
    return node


def default_view(graph: Graph, selection: Selection) -> dict:
    """The budget and edge threshold that make the page's first picture ``selection``: as
    many heads, features and errors as it keeps, edges down to its weakest one. (The page
    counts a supernode as one box of its budget, the rest going to the nodes outside every
    supernode: with supernodes it starts from the budget that draws what this one draws.)"""
    kinds = graph.kinds
    n_inner = sum(k in INNER_KINDS for k in kinds)
    # the QK sources drawn beyond the budget come with the heads they explain
    budget = sum(kinds[i] in INNER_KINDS for i in selection.nodes) - len(selection.behind)
    if not selection.trimmed:
        budget = n_inner
    # Edges among the nodes the selection could draw (every embedding is a candidate there).
    candidates = np.zeros(graph.n_nodes, dtype=bool)
    candidates[selection.nodes] = True
    candidates[graph.kind.numpy() == Kind.EMBEDDING] = True
    coo = graph.edges.tocoo()
    among = int(np.count_nonzero(candidates[coo.row] & candidates[coo.col] & (coo.data != 0)))
    # the edges over the threshold: a prompt's influential tokens' edges below it are drawn
    # by the page's own rule (viewer.js, tokenEdges), as by the selection's
    extra = set(selection.token_edges)
    over = [e for e in selection.edges if e not in extra]
    weakest = min((abs(e.weight) for e in over), default=0.0)
    edge_min = weakest if len(over) < among else 0.0
    return {
        "budget": budget,
        "edgeMin": _float32(edge_min),
        "maxNodes": MAX_NODES,
        "edgesPerNode": EDGES_PER_NODE,
        "qkMinShare": QK_MIN_SHARE,
        "boxChars": BOX_CHARS,
        # kinds whose activation is 1 by convention: the panel shows none (circuits.nodes)
        "noActivation": sorted(k.label for k in CONVENTION_ACTIVATION),
        "innerKinds": list(INNER_KINDS),
        "nodeAnchor": NODE_ANCHOR,
        "tokenEdgeNote": TOKEN_EDGE_NOTE,
        "rankedBy": selection.ranked_by,
        "selected": [graph.ids[i] for i in selection.nodes],
    }


Q_PARAMS = ("pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos")  # circuit-tracer's
LINK_TYPES = ("input", "output", "either", "both")  # its front end's link filters


def check_q_params(graph: Graph, q_params: Mapping | None) -> dict:
    """circuit-tracer's ``qParams`` with this graph's ids only: ``pinnedIds`` (ids),
    ``supernodes`` (``[name, id, id, ...]`` lists of at least two members), ``clickedId`` (an
    id or ""), ``linkType`` (one of ``LINK_TYPES``, kept for circuit-tracer's front end: this
    viewer draws every link) and ``sg_pos`` (a string, kept likewise). ``q_params`` is a
    mapping or None; a key not among ``Q_PARAMS`` (a misspelt ``pinnedId`` would otherwise
    pin nothing, silently) or a value of the wrong type is refused in one line naming it.
    (The page reads the URL's state leniently instead: what it cannot use it ignores with a
    note, since a reader cannot fix a link.)"""
    q = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    if q_params is None:
        return q
    if not isinstance(q_params, Mapping):
        raise TypeError(f"q_params must be a mapping (circuit-tracer's qParams) or None, got "
                        f"{type(q_params).__name__}")  # fmt: skip
    unknown = [k for k in q_params if k not in Q_PARAMS]
    if unknown:
        raise ValueError(f"qParams: unknown key {unknown[0]!r:.60} (the keys are "
                         f"{', '.join(Q_PARAMS)})")  # fmt: skip
    known = graph.id_to_index
    pinned = q_params.get("pinnedIds", [])
    if not isinstance(pinned, list) or not all(isinstance(p, str) for p in pinned):
        raise ValueError("qParams.pinnedIds must be a list of node ids")
    unknown = [p for p in pinned if p not in known]
    if unknown:
        raise ValueError(f"qParams.pinnedIds: no node {unknown[0][:60]!r} in the graph")
    q["pinnedIds"] = list(dict.fromkeys(pinned))
    q["supernodes"] = checked_supernodes(graph, q_params.get("supernodes", []))
    clicked = q_params.get("clickedId", "")
    if not isinstance(clicked, str):
        raise ValueError(f"qParams.clickedId must be a node id or \"\", got "
                         f"{type(clicked).__name__}")  # fmt: skip
    if clicked and clicked not in known:
        raise ValueError(f"qParams.clickedId: no node {clicked[:60]!r} in the graph")
    q["clickedId"] = clicked
    link_type = q_params.get("linkType", "both")
    if not isinstance(link_type, str) or link_type not in LINK_TYPES:
        raise ValueError(f"qParams.linkType: {link_type!r:.60}, not one of "
                         f"{', '.join(LINK_TYPES)}")  # fmt: skip
    q["linkType"] = link_type
    sg_pos = q_params.get("sg_pos", "")
    if not isinstance(sg_pos, str):
        raise ValueError(f"qParams.sg_pos must be a string (supernode positions), got "
                         f"{type(sg_pos).__name__}")  # fmt: skip
    q["sg_pos"] = sg_pos
    return q


# ---------------------------------------------------------------------------------- dashboards
def _check_dashboard(unit: str, d: Mapping) -> dict:
    def fail(field: str, what: str) -> None:
        raise ValueError(f"dashboard of {unit}: {field} {what}")

    out: dict = {}
    if not isinstance(d, Mapping):
        fail("(the dashboard)", "must be a dict")
    unknown = set(d) - {"concept", "frequency", "histogram", "logits", "examples"}
    if unknown:
        fail(sorted(unknown)[0], "is not a dashboard field")
    if d.get("concept") is not None:
        c = d["concept"]
        if not isinstance(c, Mapping) or not isinstance(c.get("label"), str):
            fail("concept", "must be {label: str, f1: number}")
        for field in ("f1", "chance"):
            if c.get(field) is not None and not is_finite_number(c[field]):
                fail(f"concept.{field}", "must be a number")
        if not isinstance(c.get("at_chance", False), bool):
            fail("concept.at_chance", "must be true or false")
        if c.get("at_chance") and c.get("chance") is None:
            fail("concept.at_chance", "needs the chance F1 it is measured against")
        if None not in (c.get("f1"), c.get("chance")) and c.get("at_chance", False) != bool(
            at_chance(c["f1"], c["chance"])
        ):
            fail("concept.at_chance", f"must say whether F1 < {AT_CHANCE} x chance")
        out["concept"] = {"label": c["label"], "f1": _num(c.get("f1"))}
        if c.get("chance") is not None:
            out["concept"] |= {"chance": _num(c["chance"]), "at_chance": c.get("at_chance", False)}
    if d.get("frequency") is not None:
        if not is_finite_number(d["frequency"]) or not 0 <= d["frequency"] <= 1:
            fail("frequency", "must be a fraction in [0, 1]")
        out["frequency"] = _num(d["frequency"])
    if d.get("histogram") is not None:
        h = d["histogram"]
        edges, counts = (h.get("edges"), h.get("counts")) if isinstance(h, Mapping) else (0, 0)
        if (
            not isinstance(edges, list)
            or not isinstance(counts, list)
            or len(edges) != len(counts) + 1
            or not all(map(is_finite_number, edges + counts))
        ):
            fail("histogram", "must be {edges: n+1 numbers, counts: n numbers}")
        # strictly: a page (and the feature files' ``equal_bins``) spreads each bin over its
        # width, a zero-width one dividing by 0; counts of firings are never negative
        if edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            fail("histogram", "edges must rise (every bin wider than 0) from 0 or more")
        if any(c < 0 for c in counts):
            fail("histogram", "counts must be >= 0")
        out["histogram"] = {"edges": [_num(x) for x in edges], "counts": [_num(x) for x in counts]}
    if d.get("logits") is not None:
        lg = d["logits"]
        if not isinstance(lg, Mapping):
            fail("logits", "must be {promoted: [[token, value]], suppressed: [...]}")
        out["logits"] = {}
        for side in ("promoted", "suppressed"):
            rows = lg.get(side, [])
            if not isinstance(rows, list) or not all(
                isinstance(r, list | tuple) and len(r) == 2 and isinstance(r[0], str)
                and is_finite_number(r[1])
                for r in rows
            ):  # fmt: skip
                fail(f"logits.{side}", "must be a list of [token text, value]")
            out["logits"][side] = [[r[0], _num(r[1])] for r in rows]
    if d.get("examples") is not None:
        if not isinstance(d["examples"], list):
            fail("examples", "must be a list")
        out["examples"] = [_check_example(fail, k, e) for k, e in enumerate(d["examples"])]
    return out


def _check_example(fail, k: int, e) -> dict:
    name = f"examples[{k}]"
    if not isinstance(e, Mapping):
        fail(name, "must be a dict")
    tokens = e.get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        fail(f"{name}.tokens", "must be a non-empty list of token texts")
    at = e.get("at")
    if not isinstance(at, int) or isinstance(at, bool) or not 0 <= at < len(tokens):
        fail(f"{name}.at", f"must index tokens (0..{len(tokens) - 1})")
    out = {"group": str(e.get("group", "top")), "tokens": tokens, "at": at}
    if e.get("activation") is not None:
        if not is_finite_number(e["activation"]):
            fail(f"{name}.activation", "must be a number")
        out["activation"] = _num(e["activation"])
    if e.get("acts") is not None:
        acts = e["acts"]
        numbers = isinstance(acts, list) and all(map(is_finite_number, acts))
        if not numbers or len(acts) != len(tokens):
            fail(f"{name}.acts", "must be one number per token")
        out["acts"] = [_num(a) for a in acts]
    if e.get("keys") is not None:
        keys = e["keys"]
        if not isinstance(keys, list) or not all(
            isinstance(r, list | tuple) and len(r) == 2 and isinstance(r[0], int)
            and 0 <= r[0] < len(tokens) and is_finite_number(r[1])
            for r in keys
        ):  # fmt: skip
            fail(f"{name}.keys", "must be a list of [token index, value]")
        out["keys"] = [[r[0], _num(r[1])] for r in keys]
    return out


def check_dashboards(dashboards: Mapping[str, Mapping] | None) -> dict:
    """``dashboards`` validated and normalised (module docstring); {} for None."""
    if not dashboards:
        return {}
    if not isinstance(dashboards, Mapping):
        raise ValueError("dashboards must be a dict keyed by unit id")
    out = {}
    for unit, d in dashboards.items():
        if not isinstance(unit, str):
            raise ValueError(f"dashboards are keyed by unit id (a string), got {unit!r}")
        out[unit] = _check_dashboard(unit, d)
    return out


# ------------------------------------------------------------------------------------ the data
def viewer_data(
    graph: Graph,
    selection: Selection | None = None,
    *,
    dashboards: Mapping[str, Mapping] | None = None,
    q_params: Mapping | None = None,
    title: str = "",
    mechanisms=None,
) -> dict:
    """Everything the page's script needs about ``graph`` (module docstring). ``selection``
    is the default view (``select(graph)`` when None); ``mechanisms`` a mechanism summary
    (``mechanisms_data``)."""
    if selection is None:
        selection = select(graph)
    labels = node_labels(graph)
    arrays = {
        "kind": graph.kind.tolist(),
        "target": graph.is_target.tolist(),
        "stage": graph.stage.tolist(),
        "pos": graph.pos.tolist(),
        "index": graph.index.tolist(),
        "layer": graph.layer.tolist(),
        "activation": graph.activation.tolist(),
        "value": graph.value.tolist(),
        "bias": graph.bias.tolist(),
        "promotes": graph.promotes.tolist(),
        "influence": None if graph.influence is None else graph.influence.tolist(),
    }
    scores, ranked_by = node_scores(graph)  # the page ranks by it (viewer.js, score)
    arrays["score"] = None if ranked_by in (INFLUENCE, ACTIVATION) else scores
    nodes = [_node(graph, i, labels[i], arrays) for i in range(graph.n_nodes)]
    coo = graph.edges.tocoo()
    keep = coo.data != 0
    links = {
        "source": coo.col[keep].tolist(),
        "target": coo.row[keep].tolist(),
        "weight": [_float32(w) for w in coo.data[keep].tolist()],
    }
    n_positions = len(graph.token_strings)
    n_stages = logit_stage(graph.n_layers) + 1
    settings = dict(graph.settings)
    metadata = {
        "title": title,
        "prompt": graph.prompt,
        "promptTokens": graph.token_strings,
        "tokenIds": list(graph.tokens),
        "positional": graph.positional,
        "qkFromWeights": graph.qk_from_weights,
        # how a global graph was made (``GlobalRecord.to_dict``); None: a prompt's graph
        "global": None if graph.global_record is None else graph.global_record.to_dict(),
        "mode": graph.mode,
        "model": graph.model.get("name", ""),
        # sparse mode: the model's own most likely next token and its probability
        "modelTop": _model_top(graph),
        "nLayers": graph.n_layers,
        "stageNames": [stage_name(s, graph.n_layers) for s in range(n_stages)],
        "documentConcepts": sorted(DOCUMENT_CONCEPTS),
        "axis": [placeholder(graph, p) for p in range(n_positions)] if graph.positional else [],
        "scores": settings.get("scores") if isinstance(settings.get("scores"), dict) else None,
        "nodeThreshold": _num(settings["node_threshold"])
        if is_finite_number(settings.get("node_threshold"))
        else None,
    }
    summary = mechanisms_data(mechanisms, graph)
    if q_params is None:
        q_params = start_q_params(summary)
    return {
        "metadata": metadata,
        "qParams": check_q_params(graph, q_params),
        "view": default_view(graph, selection),
        "nodes": nodes,
        "links": links,
        "dashboards": check_dashboards(dashboards),
        "mechanisms": summary,
        "refs": qk_refs(graph),
    }


def _model_top(graph: Graph) -> list | None:
    """A sparse graph's model's own top token (text) and its probability (``Graph.model_top``),
    for the status line; None elsewhere."""
    top = graph.model_top
    return None if top is None else [graph.token(top[0]), _num(top[1])]


def start_q_params(summary: dict | None) -> dict | None:
    """The ``qParams`` a page (and its ``graph.json``) starts from where none are given: a
    mechanism summary's groups as supernodes (``summary_supernodes``; ``summary`` is
    ``mechanisms_data``'s), or none without one."""
    return None if summary is None else {"supernodes": summary_supernodes(summary)}


def summary_supernodes(summary: dict) -> list[list[str]]:
    """The page's first supernodes where none are given: the mechanism summary's head and
    feature groups (``mechanisms_data``'s, their members in this graph), each of two members
    or more, named by key and name (``g3 L0 14 heads @10 -> 'ak'@9``): the page draws the
    groups the summary reads and checks, as its text names them. Groups share no node."""
    return [[g["supernode"], *g["members"]] for g in summary["groups"]
            if g["kind"] in ("lorsa", "transcoder") and len(g["members"]) >= 2]  # fmt: skip


_UNSAFE = re.compile("[<>&\u2028\u2029\x00-\x1f\x7f-\x9f]")


def script_json(data: dict) -> str:
    """``data`` as JSON text safe inside ``<script type="application/json">`` (module
    docstring); ``JSON.parse`` of the element's text gives ``data`` back."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def assets() -> tuple[str, str]:
    """The viewer's stylesheet and script (``reports/viewer/``), checked to be inlinable."""
    css = (ASSETS / "viewer.css").read_text(encoding="utf-8")
    js = (ASSETS / "viewer.js").read_text(encoding="utf-8")
    for name, text in (("viewer.css", css), ("viewer.js", js)):
        lowered = text.lower()
        if "</script" in lowered or "</style" in lowered or "<!--" in lowered:
            raise ValueError(f"{name} cannot be inlined: it closes its element or opens a comment")
    return css, js
