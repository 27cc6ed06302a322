"""The mechanism figure: a prompt's mechanism summary drawn as one small Graphviz picture.

``graph.dot`` draws the pruned graph node by node (60 heads and features, hundreds of edges);
a reader looking for the mechanism has to find it there. This draws what the summary found
(``circuits.mechanism_file.MechanismSummary``), at group level, as a paper's circuit figure
would: the groups on the summary's top paths from each target down to the tokens, each
target's predicting head group and the head groups the summary names as writing its QK score
(or a head target's), the head groups that moved the token their why line names to their key,
and nothing else (the caption says how many groups of the summary are
left out; every one is in ``mechanisms.json``, the printout and the page).

- A box is a group: its title as the printout gives it (``reports.mechanisms.group_title``: a
  head group's name says the key it reads, a feature group without a concept says what its
  flow reads and promotes), its exact flow into each target, and its ablation's measured
  change, attention frozen and free, one line per target (``FLAGGED``, the line in red, where
  the check is flagged: the linear graph is not to be trusted there; the box is drawn as any
  other's, as the page's viewer draws it, since red borders drew the eye from the predicting
  heads). The predicting head group has a thick border and says what it is to which target
  (``reports.mechanisms.predicting_role``: predicting heads, heads at the key a head target
  reads, ...) and why it attends there: the term of its QK score the printout's ``why it
  attends there`` names (``reports.mechanisms.why_term``). A QK source has a purple border
  (its check is flagged where it acts through attention, which is what it is there for: its
  line is not red, its dashed edge says what it does). A target's box gives its value,
  probability and exact split into tokens, constants and errors (the printout's ``parts:``),
  a head target's its own such term.
- A solid edge is a hop of a top path: the summed direct edges from one group into the next
  (``PathRecord.hops``, in the units of the one entered), blue raising, red lowering, as wide
  as the largest |flow| of the top paths through it; a hop on several paths is drawn once.
- A dashed purple edge is a QK source (``GroupRecord.writes_qk``): the head group ablated
  changes where the predicting heads (or a head target: ``--target-node lorsa:...``, whose
  own QK score the summary splits) attend, through their query (``q``) or key (``k``) side
  alone, from the attention before to after (``AttentionCheck.mean_side``,
  ``MechanismSummary.attention_after``).
- A dotted green edge is a mover (``QKReasonRecord.moved_by``, ``reports.mechanisms.why_moved``):
  where the why term is a token moved to the key (induction: the token before the key), the
  head groups at the key bringing most of that token's position to the key side, each with
  what it brings (``Mover``), into the heads whose score it is; a mover that is no group of
  the summary is drawn from its fields, dashed, without flow or check. The box's why lines
  give what every head at the key brings from there.

Rows are the model's stages, bottom to top (tokens, then each block's heads and features),
as in ``graph.dot``; everything is read from the summary's records, never from its text.
"""

from __future__ import annotations

import unicodedata
from dataclasses import replace
from html import escape
from itertools import count

from circuits.mechanism_file import GroupRecord, MechanismSummary, MovedBy, Mover, TargetRecord
from circuits.nodes import EMBEDDING_STAGE, Kind, block_of, lorsa_stage, stage_of

from .graphviz import (
    AXIS_STYLE,
    KIND_STYLE,
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
    QK_COLOR,
    _attrs,
    _q,
    show_bidi,
)
from .labels import shorten, stage_name
from .mechanisms import (
    FEATURE_TARGET,
    HEAD_TARGET,
    NO_MOVER,
    NOT_BORNE_OUT,
    PREDICTING,
    _signed,
    any_query_text,
    attention_change,
    group_title,
    predicting_role,
    probability_text,
    sparse_words,
    why_checks,
    why_moved,
    why_term,
)

LINE_CHARS = 30  # a box's name is wrapped at spaces to lines of about this many characters
WHY_CHARS = 40  # and its "why it attends there" to lines of this many
TARGETS_NAMED = 3  # a group predicting more targets than this names the first ones
TARGETS_DRAWN = 3  # the figure draws a summary's first targets, this many at most
# What a box says a target's predicting group is (``reports.mechanisms.predicting_role``), in a
# few words: the printout's heading without its parenthesis
ROLE_WORDS = {
    PREDICTING: "predicting heads",
    NOT_BORNE_OUT: "largest linear mover, its ablation the other way",
    HEAD_TARGET: "heads at the key it reads",
    FEATURE_TARGET: "heads moving most into it",
    NO_MOVER: "largest head group there, moving nothing from another token",
}
CAPTION_CHARS = 110  # and the caption's lines to this many
# The SVG's element ids start with this (Graphviz's own are ``graph0``, ``node1``...): the page
# holds this drawing and ``graph.svg``, whose ids must not meet
ID_PREFIX = "mechanism_"
MIN_PENWIDTH, MAX_PENWIDTH = 0.8, 6.0
FLAGGED_COLOR = "#b2182b"  # a flagged check's line (the page's viewer: its box's red badge)
QK_SOURCE_COLOR = "#3f007d"  # a QK source's border, as the viewer outlines its box
MOVED_COLOR = "#1b7837"  # a mover's dotted edge: the heads at the key that moved its token there


def _wrap(text: str, width: int = LINE_CHARS) -> list[str]:
    """``text`` cut at spaces into lines of about ``width`` characters (a longer word stays
    whole on its own line), never at a space just after a lone quote: a token's leading space
    (``-> ' Wednesday'@6`` read ``-> '`` over ``Wednesday'@6``)."""
    words: list[str] = []
    for word in text.split(" "):
        if words and words[-1] in ("'", '"'):
            words[-1] += " " + word
        else:
            words.append(word)
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def head_targets(summary: MechanismSummary) -> set[str]:
    """The head targets with a QK reason of their own (their node ids): a QK source can write
    their score as it writes a head group's (``MechanismSummary.qk_subject``)."""
    return {t.node for t in summary.targets if summary.qk_subject(t.node) is t}


def drawn_groups(summary: MechanismSummary) -> list[GroupRecord]:
    """The groups the figure draws, in the summary's order: those on a top path, each target's
    predicting head group, and the QK sources of the head groups among them and of the head
    targets."""
    keys = {k for p in summary.paths for k in p.groups}
    keys |= {t.predicting_group for t in summary.targets if t.predicting_group is not None}
    heads = keys | head_targets(summary)
    keys |= {g.key for g in summary.groups for w in g.writes_qk if w.group in heads}
    keys |= {m.key for _, _, m in movers(summary) if m.key is not None}
    return [g for g in summary.groups if g.key in keys]


def movers(summary: MechanismSummary) -> list[tuple[str, MovedBy, Mover]]:
    """The head groups at the key that moved the token each predicting head group's (or head
    target's) why term names there (``reports.mechanisms.why_moved``), each with the figure's
    name of the box it moved it for and what it moved: an induction head's previous-token
    heads, whose value flow into the target is small and whose box no path draws."""
    subjects = [(f"group:{k}", summary.group(k)) for k in
                dict.fromkeys(t.predicting_group for t in summary.targets
                              if t.predicting_group is not None)]  # fmt: skip
    subjects += [(f"target:{t.node}", t) for t in summary.targets
                 if t.node in head_targets(summary)]  # fmt: skip
    out = []
    for name, record in subjects:
        why = why_term(record)
        moved = why_moved(why) if why is not None else None
        out += [(name, moved, m) for m in (moved.movers if moved is not None else [])]
    return out


def _stage(g: GroupRecord) -> int:
    """The stage a group's row is drawn in (its kind and block; a group of constants or errors,
    which a path never holds, is drawn with its block's heads)."""
    kind = Kind.parse(g.kind)
    if kind == Kind.EMBEDDING or g.layer is None:
        return EMBEDDING_STAGE
    if kind in (Kind.LORSA, Kind.TRANSCODER):
        return stage_of(kind, g.layer)
    return lorsa_stage(g.layer)


def _stage_name(stage: int) -> str:
    """A row's name (``reports.labels.stage_name``; no group is at the logits' stage, so any
    number of blocks past the group's names it)."""
    return "tokens" if stage == EMBEDDING_STAGE else stage_name(stage, block_of(stage) + 1)


def _named(names: list[str]) -> str:
    shown = ", ".join(shorten(n, 16) for n in names[:TARGETS_NAMED])
    more = len(names) - TARGETS_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def _role_lines(g: GroupRecord, summary: MechanismSummary, several: bool) -> list[str]:
    """What ``g`` is to the targets that name it their predicting group (``ROLE_WORDS``), and
    of which, where there are several targets; a difference's direction as the printout's."""
    roles: dict[str, list[str]] = {}
    for t in summary.targets:
        if t.predicting_group == g.key:
            role = ROLE_WORDS[predicting_role(g, t, summary.tolerance)]
            if t.negative is not None and role != ROLE_WORDS[NO_MOVER]:
                role += f", toward {t.token if t.direction > 0 else t.negative!r}"
            roles.setdefault(role, []).append(t.label)
    return [line for role, labels in roles.items()
            for line in _wrap(role + (f" of {_named(labels)}" if several else ""),
                              WHY_CHARS)]  # fmt: skip


def _why_lines(record: GroupRecord | TargetRecord, summary: MechanismSummary) -> list[str]:
    """The record's ``why it attends there`` in a few lines: the term of its first QK reason
    that the printout names (``reports.mechanisms.why_term``), the constants' or errors' sum
    beside it where that raises the score more, then what making its tokens the mean token did
    to the attention (``why_checks``: whether the term is causal, as the printout says)."""
    why = why_term(record)
    if why is None:
        return []
    text = (f"why it attends there: {why.place}{why.query} x {why.key} {_signed(why.value)} "
            f"(QK {why.reason.qk_head}'s {why.term}")  # fmt: skip
    text += "".join(f"; the {part[:-1]} terms bring more, {_signed(v)}" for part, v in why.larger)
    text += any_query_text(why, summary) + ")"
    lines = _wrap(text, WHY_CHARS)
    if (moved := why_moved(why)) is not None:  # the movers' dotted edges say which heads
        lines += _wrap(f"{moved.token!r}@{moved.pos} moved there: {_signed(moved.total)} of "
                       f"the key side from @{moved.pos}, by the dotted edges' heads most",
                       WHY_CHARS)  # fmt: skip
    if checks := why_checks(why, summary):
        lines += _wrap("made the mean token: " + ", ".join(checks), WHY_CHARS)
    return lines


def _group_lines(
    g: GroupRecord, summary: MechanismSummary, several: bool
) -> list[tuple[str, bool]]:
    """A group's box, line by line, each with whether it is drawn red: a flagged check's,
    except a QK source's (acting through attention is what it is there for)."""
    lines = [(x, False) for x in _wrap(shorten(group_title(g), 4 * LINE_CHARS))]
    if Kind.parse(g.kind) == Kind.EMBEDDING:
        return lines
    lines += [(x, False) for x in _role_lines(g, summary, several)]
    if any(t.predicting_group == g.key for t in summary.targets):
        lines += [(x, False) for x in _why_lines(g, summary)]
    checks = {c.target: c for c in g.checks}
    # one line per target, in the targets' order (a file's flows are keyed in another): its
    # flow, then its ablation check, red where flagged (not a QK source's)
    for t in summary.targets:
        if t.node not in g.flow and t.node not in checks:
            continue
        parts, red = [f"flow {_signed(g.flow[t.node])}"] if t.node in g.flow else [], False
        if (c := checks.get(t.node)) is not None:
            mark = "  FLAGGED" if c.flagged else ""
            parts.append(f"ablated: frozen {_signed(c.frozen)}, free {_signed(c.free)}{mark}")
            red = c.flagged and not g.writes_qk
        lines.append(((f"{shorten(t.label, 16)}: " if several else "") + "; ".join(parts), red))
    return lines


def _html_text(text: str) -> str:
    """``text`` inside a Graphviz HTML-like label, shown literally: its newlines as line
    breaks, a backslash as itself, other control characters dropped (as ``dot_escape`` drops
    them), bidirectional controls as their code points."""
    kept = "".join(ch for ch in show_bidi(text) if ch == "\n" or unicodedata.category(ch)
                   not in ("Cc", "Cs"))  # fmt: skip
    # (a backslash doubled: Graphviz reads ``\N`` in an HTML-like label as the node's name,
    # even written as an entity)
    return "<BR/>".join(escape(part).replace("\\", "\\\\") for part in kept.split("\n"))


def _html_label(lines: list[tuple[str, bool]]) -> str:
    """A box's lines as an HTML-like label (only a box with a red line needs one)."""
    return "<BR/>".join(f'<FONT COLOR="{FLAGGED_COLOR}">{_html_text(x)}</FONT>' if red
                        else _html_text(x) for x, red in lines)  # fmt: skip


def _target_label(t: TargetRecord, summary: MechanismSummary) -> str:
    what = f"logit {shorten(t.label, 40)}" if t.kind == "logit" else shorten(t.label, 60)
    lines = _wrap(what)
    # its probability as the printout gives it (``probability_text``): a difference's is its
    # first token's, named (a bare "(p 0.982)" under ' Thursday' - ' Friday' read as the
    # difference's), the model's beside the replacement's in sparse mode, a head's or
    # feature's value a pre-activation
    lines += _wrap(f"value {_signed(t.value)} {probability_text(t)}")
    # its exact split, as the printout's "parts:" line: how much the figure's groups, all
    # rooted in tokens, can explain, and how much is constant or the replacement's error
    # (a no-break space in each pair: a line never parts a name from its number; a pair a
    # line, as a line of two made ten targets' row 13% wider)
    parts = [("tokens", t.tokens), ("constants", t.constants), ("errors", t.errors)]
    lines += _wrap("= " + ", ".join(f"{name}\u00a0{_signed(v)}" for name, v in parts), 20)
    if t.node in head_targets(summary):  # a head target: why it attends the key it reads
        lines += _why_lines(t, summary)
    return "\n".join(lines)


def _caption(summary: MechanismSummary, drawn: list[GroupRecord], n_targets: int | None = None
             ) -> str:  # fmt: skip
    """The figure's title: the prompt, the printout's notes, what is drawn of how much (its
    groups and tokens; ``n_targets``: the summary's targets where the figure draws fewer) and
    how to read it."""
    inner = [g for g in summary.groups if Kind.parse(g.kind) != Kind.EMBEDDING]
    inner_drawn = [g for g in drawn if Kind.parse(g.kind) != Kind.EMBEDDING]
    tokens = len(drawn) - len(inner_drawn)
    left = len(inner) - len(inner_drawn)
    shown = f"{len(inner_drawn)} group{'s' * (len(inner_drawn) != 1)}"
    shown += f" and {tokens} token{'s' * (tokens != 1)}" if tokens else ""
    shown += f"; {left} more groups in mechanisms.json" if left else "; every group of the summary"
    if n_targets is not None and n_targets > len(summary.targets):
        shown += (f"; its first {len(summary.targets)} of {n_targets} targets, the others in "
                  "the printout and mechanisms.json")  # fmt: skip
    # the printout's notes on what the numbers are of: the replacement's in sparse mode, no
    # learned mechanism at untrained tokens' positions
    notes = [sparse_words(summary)] if summary.mode == "sparse" else []
    notes += [f"note: {untrained}"] if (untrained := summary.untrained_note()) else []
    said = [
        shorten(summary.prompt.replace("\n", "\\n"), 120),
        *notes,
        f"the mechanism summary's top paths, predicting heads and QK sources ({shown})",
        "box: a group, its exact flow into the target and its ablation's change (attention "
        "frozen / free)"
        + (", a line per target" if len(summary.targets) > 1 else "")
        + ", a flagged check's line red (FLAGGED: the linear graph not to be trusted there); "
        "thick border: a target's predicting heads (what they are to it, why they attend "
        "there); purple border: a QK source (its check flagged where it acts through "
        "attention, as it is there to)",
        "edges: the summed direct edges from group to group (in the units of the one entered), "
        "blue +, red −, wide as the top paths through them; dashed purple: a QK source, the "
        "attention of the heads it points to through its query (q) or key (k) side, before -> "
        "after its ablation"
        + (
            "; dotted green: heads at the key that moved the token the why line names there, "
            "what they bring from its position to the key side of the QK score"
            if movers(summary)
            else ""
        ),
    ]
    return "\n".join(line for text in said for line in _wrap(text, CAPTION_CHARS))


def mechanism_dot(summary: MechanismSummary) -> str:
    """The DOT text of the mechanism figure of ``summary`` (module docstring), for Graphviz's
    ``dot`` engine: one row per stage, bottom to top, the targets on top; every element's SVG
    id starts with ``ID_PREFIX``. Of a summary of more than ``TARGETS_DRAWN`` targets (a
    default trace of an unsure prompt explains its ten most likely tokens), the first ones are
    drawn, the caption says so: ten made a figure 2700-3900 points wide."""
    n_targets = len(summary.targets)
    if n_targets > TARGETS_DRAWN:
        kept = {t.node for t in summary.targets[:TARGETS_DRAWN]}
        summary = replace(summary, targets=summary.targets[:TARGETS_DRAWN],
                          paths=[p for p in summary.paths if p.target in kept])  # fmt: skip
    drawn = drawn_groups(summary)
    keys = {g.key for g in drawn}
    predicting = {t.predicting_group for t in summary.targets}
    several = len(summary.targets) > 1
    ids = count()
    lines = [
        "digraph mechanism {",
        "  graph "
        + _attrs(
            id=f"{ID_PREFIX}graph",
            rankdir="BT",
            ranksep="0.45",
            nodesep="0.25",
            newrank="true",
            label=_caption(summary, drawn, n_targets),
            labelloc="t",
            fontname="Helvetica",
            fontsize="11",
            pad="0.2",
        )
        + ";",  # fmt: skip
        "  node " + _attrs(fontname="Helvetica", fontsize="10", penwidth="0.8") + ";",
        "  edge " + _attrs(arrowsize="0.6", fontname="Helvetica", fontsize="9") + ";",
    ]

    def node(name: str, html: str | None = None, **attrs) -> str:
        text = _attrs(id=f"{ID_PREFIX}{next(ids)}", **attrs)
        if html is not None:  # an HTML-like label goes unquoted, in <>
            text = f"{text[:-1]}, label=<{html}>]"
        return f"    {_q(name)} {text};"

    def edge(a: str, b: str, **attrs) -> str:
        return f"  {_q(a)} -> {_q(b)} {_attrs(id=f'{ID_PREFIX}{next(ids)}', **attrs)};"

    # one row per stage, its name first; the names are chained by invisible edges, so the rows
    # stand in the model's order whatever edges the figure has (a QK source is on no path)
    by_stage: dict[int, list[GroupRecord]] = {}
    for g in drawn:
        by_stage.setdefault(_stage(g), []).append(g)
    # a mover that is no group of the summary: a box of its fields, without checks
    outside: dict[int, list[Mover]] = {}
    for _, _, m in movers(summary):
        if m.key is None and m not in outside.get(lorsa_stage(m.group.layer), []):
            outside.setdefault(lorsa_stage(m.group.layer), []).append(m)
    rows = []
    for stage in sorted(set(by_stage) | set(outside)):
        rows.append(f"stage:{stage}")
        lines += ["  { rank=same;", node(rows[-1], label=_stage_name(stage), **AXIS_STYLE)]
        for m in outside.get(stage, []):
            text = _wrap(shorten(m.group.name, 4 * LINE_CHARS)) + _wrap(
                "not among the summary's groups: no flow or check here"
            )
            lines.append(node(_mover_node(m), label="\n".join(text),
                              tooltip=f"{m.group.name}: in no record of the summary but this",
                              **{**KIND_STYLE["lorsa"], "style": "filled,dashed"}))  # fmt: skip
        for g in sorted(by_stage.get(stage, []), key=lambda g: (g.pos is None, g.pos or 0)):
            box = _group_lines(g, summary, several)
            label = ({"html": _html_label(box)} if any(red for _, red in box)
                     else {"label": "\n".join(x for x, _ in box)})  # fmt: skip
            source = bool(g.writes_qk)
            lines.append(node(
                f"group:{g.key}", **label,
                tooltip=f"{g.key}: {g.name} ({len(g.members)} members)",
                **KIND_STYLE.get(g.kind, KIND_STYLE["lorsa"]),
                **({"color": QK_SOURCE_COLOR} if source else {}),
                penwidth="3" if g.key in predicting else "1.6" if source else "0.8",
            ))  # fmt: skip
        lines.append("  }")
    rows.append("stage:targets")
    lines += ["  { rank=same;", node(rows[-1], label="targets", **AXIS_STYLE)]
    for t in summary.targets:
        lines.append(node(f"target:{t.node}", label=_target_label(t, summary), tooltip=t.node,
                          **KIND_STYLE["logit"]))  # fmt: skip
    lines.append("  }")
    lines += [edge(a, b, style="invis") for a, b in zip(rows, rows[1:], strict=False)]

    # A hop's summed edge is in the units of the group it enters (a feature's pre-activation,
    # a head's, the logit), so hops are not comparable with each other: its width is the
    # largest |flow| (target units) of the top paths through it
    hops: dict[tuple[str, str], tuple[float, float]] = {}
    for p in summary.paths:
        chain = [f"group:{k}" for k in p.groups] + [f"target:{p.target}"]
        for a, b, hop in zip(chain[:-1], chain[1:], p.hops, strict=True):
            widest = max(abs(p.flow), hops.get((a, b), (hop, 0.0))[1])
            hops[(a, b)] = (hop, widest)  # the same summed edge on every path through it
    strongest = max((w for _, w in hops.values()), default=0.0) or 1.0
    for (a, b), (hop, widest) in hops.items():
        pen = MIN_PENWIDTH + (MAX_PENWIDTH - MIN_PENWIDTH) * widest / strongest
        lines.append(edge(a, b, color=POSITIVE_COLOR if hop > 0 else NEGATIVE_COLOR,
                          penwidth=pen, label=_signed(hop),
                          tooltip=f"summed direct edges {_signed(hop)}; the largest top path "
                                  f"through it carries {widest:.3g} of its target"))  # fmt: skip

    heads = head_targets(summary)
    for g in drawn:
        for w in g.writes_qk:
            if w.group in keys:
                into = f"group:{w.group}"
            elif w.group in heads:  # a head target's own QK score
                into = f"target:{w.group}"
            else:
                continue
            label = w.side[0]
            after = summary.attention_after(g, w.group)
            alone = after.mean_side(w.side) if after is not None else None
            if alone is not None:
                label += " " + attention_change(after.mean_before, alone)
            lines.append(edge(f"group:{g.key}", into, color=QK_COLOR,
                              fontcolor=QK_COLOR, style="dashed", label=label,
                              constraint="false",
                              tooltip=f"writes the {w.side} side of {w.group}'s QK {w.qk_head} "
                                      f"score ({_signed(w.value)})"))  # fmt: skip
    for into, moved, m in movers(summary):
        label = f"moves {moved.token!r}@{moved.pos} to the key: {_signed(m.group.value)}"
        lines.append(edge(_mover_node(m), into, color=MOVED_COLOR, fontcolor=MOVED_COLOR,
                          style="dotted", penwidth="1.6", label="\n".join(_wrap(label, 24)),
                          constraint="false",
                          tooltip=f"brings {moved.token!r}@{moved.pos} to the key side of "
                                  f"the QK score it points to: {_signed(m.group.value)} of "
                                  f"{_signed(moved.total)} from there by every head at the "
                                  "key"))  # fmt: skip
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mover_node(m: Mover) -> str:
    """A mover's box: the summary group's where it is one, else its own (by its fields)."""
    if m.key is not None:
        return f"group:{m.key}"
    return f"mover:{m.group.layer}:{m.group.pos}:{m.group.name}"
