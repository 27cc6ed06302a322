"""The mechanism summary (``circuits.mechanism_file.MechanismSummary``) shown to people: as text
and as a section of the HTML report.

The text (``format_summary``) is what ``python -m circuits.trace`` prints; ``ref_text`` and
``root_text`` put a node reference and a QK reason's root pairs in words, here and in the
viewer's panel (``reports.viewer``). The HTML section: per target its exact parts (tokens,
constants, errors), the predicting head group and the top group-level paths; per group its
flow, where its heads attend and why (the QK reason with both sides' always-on parts named),
its concept label, and the ablation checks (the graph's prediction beside the effect measured
with attention frozen and free, flagged rows marked; ``free_words`` says what free
recomputes). Rendered from the record's fields only;
every string of the HTML goes through ``escape``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from circuits.graph import checked_count, probability_words
from circuits.mechanism_file import (
    CLOSURE,
    ROOT_PARTS,
    SIDES,
    TIE,
    AttentionCheck,
    EffectCheck,
    GroupRecord,
    MechanismSummary,
    MemberConcept,
    MovedBy,
    Mover,
    NodeRef,
    QKReasonRecord,
    QKSourceRole,
    RootPair,
    TargetRecord,
    TokenCheck,
    TokenShare,
    checked_summary,
    direction_of,
)
from circuits.mechanisms import RATIO, TOLERANCE, named_token_terms, off_by_ratio
from circuits.nodes import Kind, node_words

# a probability change under this share of p is none: relative, since a target the reader
# names may be unlikely (a review: --target ' Saturday' at p 0.0024, its predicting group's
# ablation -3.9 frozen with p 0.0024 -> 0.0043, read "ok" under an absolute floor of 0.005)
P_SHARE = 0.05
PAIRS_SHOWN = 3  # a reason's unit pairs and root terms of each list on every summary page
LITTLE = 0.05  # an attention change below this in a token check is "little change"
PROMOTED_SHOWN = 3  # a group's promoted tokens on its printed line (the page lists them all)
# a group without a concept of its own is titled by its members' when the members carrying
# that one concept bring at least this share of its |flow| (``GroupRecord.member_concepts``)
MEMBERS_MAJORITY = 0.5

ROUNDING = 1e-9  # a part this small against the whole it is part of is float rounding
TOKEN_SHARES = 4  # positions named in a target's token part (text and the viewer's panel)
PREDICTING = "predicting heads (the largest mover from another position)"
# the same group where its ablation moves the target the other way, frozen and free (a
# reviewer's case: the heading kept "predicting" over a check that said the opposite)
NOT_BORNE_OUT = (
    "largest linear mover from another position (its ablation moves the target the other way: "
    "not what the model does here)"
)
# What a logit target's numbers are of (DESIGN.md; circuit-tracer's): a reviewer's own hooks read
# the raw logit, 11.66 where the summary said 15.5, and one check's sign flipped.
DEMEANED_WORDS = (
    "a logit target's value, flows and changes are of its logit less the mean "
    "logit over the vocabulary; a difference's of the two logits' difference"
)
HEAD_TARGET = "heads at the key it reads (the largest mover from another position)"
# A feature target predicts nothing either: its inputs are read at its own position, where these
# heads write (a reviewer read "predicting heads" above a layer-2 feature's pre-activation).
FEATURE_TARGET = "heads moving most into it (the largest mover from another position)"
NO_MOVER = (
    "no head group there moves a flow the target's way from another token (BOS and the "
    "position itself aside); the largest"
)
# Before ``qk_sources_sides``: its candidates are head groups (a feature group at the query or
# the key, the MLP there, can take the attention lower still: it rewrites that position whole)
# What picks a side's source is an ablation, not its share of the score: of the head groups
# raising the side most, the one whose ablation lowers the attention most through that side
# (a reviewer read "written most by" over a group 4th of 4 by score and +0.018 of -0.77)
QK_SOURCES_WHAT = "what makes it attend there"
# how a side's source was chosen: the lines under QK_SOURCES_WHAT (one heading of both ran to
# 193 characters: a review)
_CHOSEN = "each side's source: the one whose ablation lowers its attention most through that side"
QK_SOURCES = (
    "candidates: the head groups raising each side of its QK score most and those at that "
    "side's position",
    _CHOSEN,
)
# the same for files written before the groups at a side's position were tested
QK_SOURCES_RAISERS = ("candidates: the head groups raising each side of its QK score most", _CHOSEN)
# without checks nothing was ablated: a side's source is its largest raiser (a reviewer read
# "whose ablation lowers its attention most" on a --no-checks summary)
QK_SOURCES_UNCHECKED = (
    "each side's source: the head group raising it most by its linear share; none ablated: "
    "a summary without checks",
)


def qk_sources_heading(summary: MechanismSummary) -> list[str]:
    """The QK sources block's heading and the lines saying what chose them, as the summary's
    settings say."""
    if summary.settings.get("checks") is False:
        chosen = QK_SOURCES_UNCHECKED
    else:
        at_position = summary.settings.get("qk_sources_at_position")
        chosen = QK_SOURCES if at_position else QK_SOURCES_RAISERS
    return [f"{QK_SOURCES_WHAT}:", *chosen]


ATTENTION_AFTER = "with it ablated (attention free)"  # before a group's ``attention_checks``


# Above this share of the specific part's magnitude left out, a QK reason's unit pairs are not
# listed (a layer-2 head's specific part spreads over thousands of unit pairs: its largest few
# leave out 98-100% and read as noise; the split by roots above them holds it).
SPREAD_OUT = 0.9


def unit_pairs(r: QKReasonRecord, top: int) -> tuple[str, list]:
    """A QK reason's unit pairs as every page lists them (the printout, the report, the
    viewer): the ``top`` largest, or none where they leave out more than ``SPREAD_OUT``, and a
    heading saying what share of the specific terms' total magnitude the pairs shown leave
    out (a reviewer found the share of all the record's pairs printed over the first three:
    32% where those leave out 51%)."""
    if not r.pairs:
        return "", []
    shown = r.pairs[:top]
    left = r.rest_share  # of the pairs the record holds; of those shown, from the same total
    if len(shown) < len(r.pairs) and r.rest_share < 1:
        total = sum(abs(p.value) for p in r.pairs) / (1 - r.rest_share)
        left = 1 - sum(abs(p.value) for p in shown) / total if total > 0 else 1.0
    # (99.6%, not "100%", which read as "they hold nothing": a review)
    share = f"{left:.0%}" if left < 0.995 else f"{min(left, 0.999):.1%}" if left < 1 else "all"
    share += " of the terms' total magnitude"
    if left > SPREAD_OUT:  # a few pairs would say nothing
        return (f"specific by units at the two positions: spread over many pairs (the "
                f"{len(shown)} largest leave out {share}; in mechanisms.json)", [])  # fmt: skip
    # each unit's own vector: a token is its embedding alone here, where the split by roots
    # gives it with all it reaches (a reviewer met one pair at +1.09 there and +0.818 here)
    # (what "own vector" means is in the legends: QK_LEGEND; here it ran to 205 characters)
    return (f"specific by units at the two positions, each unit's own vector (the pairs below "
            f"leave out {share}):", shown)  # fmt: skip


def summary_for(summary: MechanismSummary, graph) -> MechanismSummary:
    """``summary`` checked as its file would be (``checked_summary``) and as a summary of
    ``graph``'s prompt: the same tokens, mode and model, and its targets among the graph's
    nodes. A summary of another prompt would show its groups, paths and checks beside this
    graph, with any member whose id the graph also has marked as drawn."""
    summary = checked_summary(summary)
    model = str(graph.model.get("name", "")) if graph.positional else ""
    problem = (
        "a global graph has no prompt" if not graph.positional
        else "other tokens" if summary.tokens != graph.token_strings
        else f"mode {summary.mode!r}, the graph's is {graph.mode!r}"
        if summary.mode != graph.mode
        else f"model {summary.model!r}, the graph's is {model!r}"
        if summary.model and model and summary.model != model
        else "targets the graph does not hold"
        if any(t.node not in graph.id_to_index for t in summary.targets)
        else _target_mismatch(summary, graph)
    )  # fmt: skip
    if problem:
        raise ValueError(f"the mechanism summary is not this graph's ({problem}): pass the "
                         "summary of the same trace")  # fmt: skip
    return summary


def _target_mismatch(summary: MechanismSummary, graph) -> str | None:
    """How a summary's target differs from the graph's node of its id, or None: its kind, its
    logit's token (and a difference's second token) and its value (a fuzz pass swapped two
    targets' tokens in a mechanisms.json, and the page named each target's flows and checks
    under the other's token)."""
    for t in summary.targets:
        i = graph.id_to_index[t.node]
        kind = graph.kinds[i]
        if t.kind != kind:
            return f"target {t.node} is a {kind}, not a {t.kind}"
        if kind == "logit":
            record = graph.logit_record(i)
            negative = None if record.negative is None else graph.token(record.negative)
            if (t.token, t.negative) != (graph.token(record.token), negative):
                return f"target {t.node} is the logit of {graph.token(record.token)!r}" + (
                    f" minus {negative!r}" if negative is not None else ""
                )
        value = float(graph.value[i])
        if not math.isclose(t.value, value, rel_tol=CLOSURE, abs_tol=CLOSURE):
            return f"target {t.node} has the value {value:.6g}, not {t.value:.6g}"
    return None


def predicting_heading(g: GroupRecord, t: TargetRecord, tolerance: float = TOLERANCE) -> str:
    """``PREDICTING`` when the predicting group moves something into target ``t`` from
    another position (its key is neither BOS nor its own position, its flow in the target's
    direction, ``TargetRecord.direction``: what
    ``circuits.mechanisms`` looks for first), else ``NO_MOVER`` (the fallback it took). A head
    or feature target predicts nothing: its group is the largest mover at the key a head reads
    (``HEAD_TARGET``), or into a feature at its own position (``FEATURE_TARGET``). Where the
    group's ablation moves the target the other way with attention frozen and free
    (``against_both``), the heading says its flow is linear credit the ablations do not bear
    out (``NOT_BORNE_OUT``) rather than "predicting"."""
    heading = predicting_role(g, t, tolerance)
    if heading == NO_MOVER or t.kind != "logit":
        return heading
    if t.negative is not None:  # a difference's direction names its token (a reviewer read
        # "predicting" for a group pushing toward the negative, the model's answer)
        return f"{heading}, toward {t.token if t.direction > 0 else t.negative!r}"
    return heading


def predicting_role(g: GroupRecord, t: TargetRecord, tolerance: float = TOLERANCE) -> str:
    """Which of ``PREDICTING``, ``NOT_BORNE_OUT``, ``HEAD_TARGET``, ``FEATURE_TARGET`` and
    ``NO_MOVER`` target ``t``'s predicting group ``g`` is (``predicting_heading`` without a
    difference's direction): what the printout calls it and the mechanism figure says of it."""
    moves = g.attends not in (None, 0, g.pos) and g.flow.get(t.node, 0.0) * t.direction > 0
    if not moves:
        return NO_MOVER
    if t.kind == "lorsa":
        return HEAD_TARGET
    if t.kind == "transcoder":
        return FEATURE_TARGET
    return NOT_BORNE_OUT if against_both(g, t, tolerance) else PREDICTING


def against_both(g: GroupRecord, t: TargetRecord, tolerance: float = TOLERANCE) -> bool:
    """Whether group ``g``'s ablation check on target ``t`` moves it the other way from the
    prediction with attention frozen and free, each by at least ``tolerance`` (the other way,
    not "not at all"): its flow is linear credit the model does not bear out."""
    c = next((c for c in g.checks if c.target == t.node), None)
    return c is not None and not (c.agree_frozen or c.agree_free) and \
        min(abs(c.frozen), abs(c.free)) >= tolerance  # fmt: skip


SPREAD = 0.5  # below this share of its flow from the key it is named for, a group reads more
ALSO = 0.25  # another key bringing this share of a group's flow or more is named beside it


def spread_text(g: GroupRecord, node: str) -> str:
    """For a head group named for one key (``attends``) whose flow into target ``node`` comes
    mostly from other keys (its ``carried`` shares), how little that key brings: its name
    says less than it seems (a reviewer's "largest mover" read ' blue' at attention 0.16, and
    an "all commas" group was named for one comma); else, where other keys bring ``ALSO`` of
    the flow or more, those (a name's heads reading both its mentions: a reviewer found the
    second, 39% of the flow, named nowhere near the group). Empty otherwise."""
    flow = g.flow.get(node, 0.0)
    way = direction_of(flow)  # shares of the group's own flow, whichever its sign
    named = next((x for x in g.carried.get(node, []) if x.pos == g.attends), None)
    if g.attends is None or flow == 0 or named is None:
        return ""
    if way * named.flow < SPREAD * way * flow:
        return (f"{named.token!r}@{named.pos} brings {_signed(named.flow)} of it: the rest comes "
                "from other keys")  # fmt: skip
    also = [x for x in g.carried[node]
            if x.pos != g.attends and way * x.flow >= ALSO * way * flow]  # fmt: skip
    if not also:
        return ""
    return ("it reads " + ", ".join(f"{x.token!r}@{x.pos} too ({_signed(x.flow)})" for x in also)
            + f" beside {named.token!r}@{named.pos} ({_signed(named.flow)})")  # fmt: skip


def _signed(x: float | None, whole: float = 0.0) -> str:
    """``x`` signed to 3 digits; ``0`` where it is float rounding against ``whole`` (a sum of
    parts that are exactly zero in exact arithmetic comes out as 1e-16, not 0)."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return "0" if abs(x) <= ROUNDING * max(abs(whole), 1e-3) else f"{x:+.3g}"


def token_shares_text(t: TargetRecord, top: int = TOKEN_SHARES) -> str:
    """The positions whose tokens carry most of a target's token part, as
    `` (' Wednesday'@6 +15.2, ','@7 +8.1, ...)``; empty when there is no such split."""
    if not t.tokens_by_position:
        return ""
    return f" ({positions_text(t.tokens_by_position, top)})"


def positions_text(shares: list[TokenShare], top: int = TOKEN_SHARES) -> str:
    """Flows by position as ``' Wednesday'@4 +13.8, ' tomorrow'@7 +7.3, 3 more``."""
    shown = [f"{x.token!r}@{x.pos} {_signed(x.flow)}" for x in shares[:top]]
    more = len(shares) - top
    return ", ".join(shown) + (f", {more} more" if more > 0 else "")


def probability_text(t: TargetRecord) -> str:
    """``(p=0.997)`` for a logit; a difference has none of its own, so the probability of its
    positive token, named; ``(pre-activation)`` for a head or feature. In sparse mode the
    probability is the replacement's, and the model's follows: ``(p=0.753; the model's
    0.200)``, for each of a difference's tokens where the record has both."""
    if t.probability is None:
        return "(pre-activation)"
    of = f" for {t.token!r}" if t.negative is not None else ""
    if t.negative is not None and t.negative_probability is not None:  # (older files: none)
        of += f", {probability_words(t.negative_probability)} for {t.negative!r}"
    theirs = t.model_probability
    model = "" if theirs is None else f"; the model's {probability_words(theirs)}"
    negative = t.model_negative_probability
    if theirs is not None and negative is not None:  # both tokens', named
        model = (f"; the model's {probability_words(theirs)} for {t.token!r}, "
                 f"{probability_words(negative)} for {t.negative!r}")  # fmt: skip
    return f"(p={probability_words(t.probability)}{of}{model})"


def after_text(
    before: float | None,
    after: float | None,
    token: str | None = None,
    margin: tuple[str, float] | None = None,
    top: tuple[str, float] | None = None,
    negative: tuple[str, float, float] | None = None,
) -> str:
    """`` (p 0.98 -> 0.0002)``: a logit target's token probability before and after an
    ablation (``EffectCheck.probability_*``), or nothing for a head or feature target; a
    difference's positive ``token`` named (`` (p(' 9') 0.38 -> 0.022)``), as it is not the
    target's own. A demeaned logit can rise while its token's probability falls; this shows
    which happened. ``margin``: the runner-up and the change of the margin over it, where the
    runner-up is a contender (`` (p 0.92 -> 0.0003; margin over ' May' -1.81)``). ``top``: the
    most likely token after, where the ablation changed it (``EffectCheck.top_*``: `` (p 0.469
    -> 2.95e-21; ' ' now most likely, p 1)``). ``negative``: a difference's second token, its
    probability before and after (`` (p(' four') 0.0016 -> 6.3e-05, p(' one') 0.0084 ->
    5.8e-05)``: the difference can hold while both fall)."""
    if before is None or after is None:
        return ""
    of = "" if token is None else f"({token!r})"
    other = "" if negative is None else (
        f", p({negative[0]!r}) {_p(negative[1])} -> {_p(negative[2])}")  # fmt: skip
    over = "" if margin is None else f"; margin over {margin[0]!r} {_signed(margin[1])}"
    now = "" if top is None else f"; {top[0]!r} now most likely, p {_p(top[1])}"
    return f" (p{of} {_p(before)} -> {_p(after)}{other}{over}{now})"


def mark_text(c: EffectCheck, target: TargetRecord | None, tolerance: float = TOLERANCE) -> str:
    """A check's verdict (``check_verdict``) as printed: ``ok; notes`` or ``FLAGGED: flags;
    notes``."""
    flags, notes = check_verdict(c, target, tolerance)
    if not c.flagged:
        return "; ".join(["ok"] + notes)
    return "; ".join(["FLAGGED" + (": " + "; ".join(flags) if flags else "")] + notes)


def check_verdict(
    c: EffectCheck, target: TargetRecord | None, tolerance: float = TOLERANCE
) -> tuple[list[str], list[str]]:
    """A check's verdict and why, as (flags, notes): for ``FLAGGED``, each measurement that has the
    other sign or is more than ``RATIO`` times off (``frozen other sign``, ``free 0.21x``).
    For a logit target (not a difference, whose token's probability follows a third token
    too), where its token's probability moved the other way than its demeaned logit (the
    logit is demeaned: it can rise while every other logit rises more) by a visible amount
    (``P_SHARE`` of p): said beside the sign it contradicts, and as a note after the
    verdict where the measurement passed, so a reader does not take a flag on the logit for the
    group not mattering, nor an ok for the probability agreeing. ``tolerance``: the summary's
    (``MechanismSummary.tolerance``): a measurement and a prediction both below it agree."""
    before = None if target is None or target.negative is not None else target.probability
    flags, notes = [], []
    for name, measured, agree, ratio, after in (
        ("frozen", c.frozen, c.agree_frozen, c.ratio_frozen, c.probability_frozen),
        ("free", c.free, c.agree_free, c.ratio_free, c.probability_free),
    ):
        moved = None if before is None or after is None else after - before
        if moved is not None and abs(moved) < P_SHARE * before:
            moved = None  # too small to read either way
        apart = moved is not None and c.predicted != 0 and (moved > 0) != (c.predicted > 0)
        off = off_by_ratio(c.predicted, measured, tolerance)
        why = ""
        if name == "free" and c.free_ln_held is not None and (not agree or off):
            why = _free_words(c, tolerance)
        if not agree:
            with_p = "" if apart or moved is None else ", its probability as predicted"
            flags.append(f"{name} other sign{with_p}{why}")
        elif off:
            flags.append(f"{name} {_ratio_text(ratio)}x"
                         + (", its probability the other way" * apart) + why)  # fmt: skip
        elif apart:
            notes.append(f"{name}: its probability the other way")
        if name == "free" and agree and not off and ok_through_attention(c, tolerance):
            held = _signed(c.free_attention_held)
            notes.append(f"free: through attention (with it held: {held})")
    return flags, notes


def _p(p: float) -> str:
    """A probability to 3 significant digits, never rounded up to 1 or down to 0 (0.996, not
    1; 4.9e-06, not 0)."""
    text = f"{p:.3g}"
    return text if 0 < float(text) < 1 or p in (0.0, 1.0) else f"{p:.6g}"


def own_token_text(t: TargetRecord, pos: int | None) -> str:
    """When the token at the target's own position ``pos`` carries the largest positive part
    of the target's token flow (``tokens_by_position``), a line saying so: nothing moves it
    there (a list's item is the query token itself: ``Tuesday Wednesday Thursday`` ->
    `` Friday``), so the predicting heads, the largest movers from other positions, are not
    where most of it comes from; else empty."""
    top = None if pos is None else t.current_token_share(pos)
    if top is None:
        return ""
    who, where = ("the current token", "the target's own position") if t.reads is None else \
        ("the token", "the key the head reads")  # fmt: skip
    return (f"{who} {top.token!r}@{pos} carries its largest part by position "
            f"({_signed(top.flow)}; all tokens {_signed(t.tokens)}), at {where}: no head moves "
            "it there (heads reading it there, and the features, pass it on)")  # fmt: skip


def reads_text(t: TargetRecord, tokens: list[str]) -> str:
    """For a head target, where its inputs come from: the key it reads, whose head groups the
    summary ranks; empty for logits and features."""
    if t.reads is None:
        return ""
    there = (
        "the head groups ranked below by flow are those there"
        if t.head_groups
        else (
            "no head group below it writes there (block 0 reads the tokens and position vectors "
            "directly)"
        )
    )  # a reviewer's layer-0 head target promised groups, then printed none
    return (f"it reads its inputs at its key {tokens[t.reads]!r}@{t.reads} (through its "
            f"frozen pattern): {there}; why it attends that key (the heads at its query act "
            "through this):")  # fmt: skip


OWN_ATTENTION_SHOWN = 5  # the groups whose ablation moves a head target's attention most


def own_attention_block(t: TargetRecord, tokens: list[str]) -> list[str]:
    """A head target's own attention to the key it reads, and with each checked group ablated
    (attention free), as a block (``block_lines``: one line of it ran to 586 characters), a
    line per group, the largest moves first, each with the attention through the query's and
    through the keys' vectors alone as after the ablation: ``its own attention to ' m'@7 0.73;
    with a group ablated (attention free): g3 0.0002 (query side alone 0.72, key side alone
    0.0003), g0 0.02 (...)``. The heads at its key can act through this attention, not through
    their value flow; the note on which groups are checked its last line. Empty for other
    targets and unchecked summaries."""
    if t.own_attention is None or not t.own_attention_free or t.reads is None:
        return []
    moved = sorted(t.own_attention_free.items(), key=lambda kv: -abs(kv[1] - t.own_attention))

    def after(key: str, a: float) -> str:  # with each side alone where measured
        sides = t.own_attention_sides.get(key)
        if sides is None:
            return f"{key} {attention_text(a)}"
        q, k = (attention_text(x) for x in sides)
        return f"{key} {attention_text(a)} (query side alone {q}, key side alone {k})"

    shown = [after(k, a) for k, a in moved[:OWN_ATTENTION_SHOWN]]
    more = [f"{len(moved) - OWN_ATTENTION_SHOWN} more"] * (len(moved) > OWN_ATTENTION_SHOWN)
    return [f"its own attention to {tokens[t.reads]!r}@{t.reads} {attention_text(t.own_attention)}"
            "; with a checked group ablated (attention free):", *shown, *more,
            "(the summary's checked groups: those its value flows through most, and any others "
            "it holds; a group at its query acts on it through this attention alone, and is "
            "checked only where it is in the summary for another reason)"]  # fmt: skip


def own_attention_text(t: TargetRecord, tokens: list[str]) -> str:
    """``own_attention_block`` in one line; empty where it is."""
    if not (block := own_attention_block(t, tokens)):
        return ""
    return f"{block[0]} {', '.join(block[1:-1])} {block[-1]}"


def check_texts(
    c: EffectCheck, t: TargetRecord | None, tolerance: float = TOLERANCE
) -> tuple[str, str, str]:
    """What every view of a check prints beside its numbers: the target token's probability
    before and after it with attention frozen and free (``after_text``; nothing for a head or
    feature target, or a target the summary does not hold), and its mark (``mark_text``, at
    the summary's ``tolerance``)."""
    before = None if t is None else t.probability
    token = None if t is None or t.negative is None else t.token  # a difference's first token
    contender = (t is not None and token is None and t.runner_up is not None
                 and c.margin_free is not None
                 and (t.runner_up_probability or 0) >= MARGIN_SHOWN)  # fmt: skip
    frozen, free = (None, None)
    if contender:
        frozen, free = (t.runner_up, c.margin_frozen), (t.runner_up, c.margin_free)
    tops = [
        None if top is None else (top, p)
        for top, p in (
            (c.top_frozen, c.top_frozen_probability),
            (c.top_free, c.top_free_probability),
        )
    ]
    negatives = [None, None]  # a difference's second token, where the summary holds it
    if t is not None and t.negative is not None and t.negative_probability is not None:
        after = (c.negative_probability_frozen, c.negative_probability_free)
        negatives = [None if p is None else (t.negative, t.negative_probability, p) for p in after]
    return (after_text(before, c.probability_frozen, token, frozen, tops[0], negatives[0]),
            after_text(before, c.probability_free, token, free, tops[1], negatives[1]),
            mark_text(c, t, tolerance))  # fmt: skip


def flagged_text(g: GroupRecord, t: TargetRecord, tolerance: float = TOLERANCE) -> str:
    """When the ablation check of group ``g`` on target ``t`` is flagged, what it measured, to
    stand beside the line that names ``g`` (the predicting group): the graph's word on it is
    not to be trusted there; else empty."""
    block = flagged_block(g, t, tolerance)
    if not block:
        return ""
    heading, *measured = block
    return f"{heading.removesuffix(':')}: " + ", ".join(measured)


def flagged_block(g: GroupRecord, t: TargetRecord, tolerance: float = TOLERANCE) -> list:
    """``flagged_text`` as a block (``block_lines``): ``its ablation check is FLAGGED (its
    verdict's clauses):``, then the prediction and each measurement a line (one line of them
    ran to 370 characters: a review); empty where the check is not flagged."""
    c = next((c for c in g.checks if c.target == t.node and c.flagged), None)
    if c is None:
        return []
    frozen, free, _ = check_texts(c, t, tolerance)
    flags, notes = check_verdict(c, t, tolerance)
    # both reruns the other way: the flow that made it the predicting group is linear credit
    # the model does not bear out (a reviewer's "predicting heads" raised the target ablated)
    against = "" if not against_both(g, t, tolerance) else (
        ". Ablated, it moves the target the other way with attention frozen and free: its "
        "flow is not what the model does here")  # fmt: skip
    why = "; ".join(flags + notes)
    return [
        f"its ablation check is FLAGGED{f' ({why})' if why else ''}:",
        f"predicted {_signed(c.predicted)}", f"frozen attention {_signed(c.frozen)}{frozen}",
        f"free {_signed(c.free)}{free}{against}",
    ]  # fmt: skip


STRONGER = 2.0  # another head group there whose free ablation moves the target this many
# times the predicting group's is named beside it (the words say "over twice")


def stronger_text(g: GroupRecord, t: TargetRecord, summary: MechanismSummary) -> str:
    """The other checked head groups at the predicting group ``g``'s place (its block's and
    every other block's heads at that position, whatever their flow's sign) whose ablation,
    attention free, moves target ``t`` over ``STRONGER`` times as much as ``g``'s, either way
    (and more than the tolerance), largest first: ranked by value flow, ``g`` can matter less
    than groups acting through attention (a reviewer's head target: its named group -0.72
    ablated, the previous-token heads at its key -5.09); empty where none does or ``g`` is
    unchecked."""
    own = next((c for c in g.checks if c.target == t.node), None)
    if own is None:
        return ""
    stronger = []
    for other in summary.groups:
        c = next((c for c in other.checks if c.target == t.node), None)
        if other.kind == "lorsa" and other.pos == g.pos and other.key != g.key \
                and c is not None and abs(c.free) > summary.tolerance \
                and abs(c.free) > STRONGER * abs(own.free):  # fmt: skip
            stronger.append((other, c.free))
    if not stronger:
        return ""
    stronger.sort(key=lambda x: -abs(x[1]))
    said = "; ".join(f"{o.key} {o.name} {_signed(free)}" for o, free in stronger)
    return (f"head groups there whose ablation (attention free) moves it over twice as much as "
            f"this one's {_signed(own.free)}, either way: {said}")  # fmt: skip


# A check prints the change of its target's margin over the runner-up where the runner-up has
# at least this probability (``check_texts``): a contender, whose margin is the question.
MARGIN_SHOWN = 0.02

LN_CLAUSES = (
    '"from the final LayerNorm" where free disagrees and agrees with the final LayerNorm\'s '
    'scale held at its clean value ("from the LayerNorms": only with every LayerNorm scale '
    "held): the model's rescaling undoes the group's effect, not other heads",
    '"through attention" where free disagrees and agrees with the attention patterns held, or '
    "agrees and they held it does not, or is too large and they held take most of it away: the "
    "group acts through the attention of heads it feeds",
    '"also with ... held": no rerun holding them agrees with the prediction and closes half '
    "its gap to the free measurement (their values beside it)",
    '"margin over" the change of the margin over the most likely other token, where that '
    f"has p >= {MARGIN_SHOWN}",
)


def _held_agrees(
    c: EffectCheck, value: float | None, agree: bool | None, tolerance: float = TOLERANCE
) -> bool:
    """Whether a free measurement (``value``, its sign agreement ``agree``: the model's own, or
    a rerun with part of it held) agrees with the prediction, in sign and within ``RATIO`` in
    size, or both are below the summary's ``tolerance`` (as a check's own flag reads them);
    False where the summary has no such rerun."""
    return value is not None and agree and not off_by_ratio(c.predicted, value, tolerance)


def ok_through_attention(c: EffectCheck, tolerance: float = TOLERANCE) -> bool:
    """Whether a free measurement that agrees with the prediction does so through attention:
    with the patterns held, the group's effect has the other sign or is under 1 / ``RATIO``
    of the prediction (its value paths alone do not give it)."""
    if c.free_attention_held is None or max(abs(c.predicted), abs(c.free)) < tolerance:
        return False
    if not _held_agrees(c, c.free, c.agree_free, tolerance):  # flagged: ``free_cause`` says why
        return False
    return not _held_agrees(c, c.free_attention_held, c.agree_free_attention_held, tolerance)


def _ratio_text(ratio: float) -> str:
    """A flagged ratio (beyond ``RATIO`` either way) in two significant figures, or as many
    more as keep it off the limit it passed (a reviewer read "3x" for 3.02)."""
    for digits in range(2, 7):
        text = f"{ratio:.{digits}g}"
        if float(text) != RATIO and float(f"{1 / float(text):.{digits}g}") != RATIO:
            return text
    return text


# A rerun with part of the model held names the cause of a flagged free measurement only
# where it removes at least this share of the free measurement's distance from the prediction
# (a ratio's distance, in log scale, where the free measurement has the prediction's sign): a
# rerun that agrees by a hair (-6.99 against a prediction of -20.9, free -6.57: 0.334x against
# 0.314x across the 3x line) closes 5% of it and explains nothing (a reviewer's).
GAP_CLOSED = 0.5


def _undoes(c: EffectCheck, value: float | None, agree: bool | None, tolerance: float) -> bool:
    """Whether a rerun with part of the model held (``value``, ``agree``) undoes the flagged
    free measurement: it agrees with the prediction (``_held_agrees``) and leaves at most
    1 - ``GAP_CLOSED`` of the free measurement's distance from it: in ratio (log scale) where
    the free measurement has the prediction's sign and is only off in size, else in value."""
    if not _held_agrees(c, value, agree, tolerance):
        return False
    if max(abs(value), abs(c.predicted)) < tolerance:
        return True
    if c.agree_free and c.free != 0 and value != 0:
        off_free = abs(math.log(abs(c.free / c.predicted)))
        return abs(math.log(abs(value / c.predicted))) <= (1 - GAP_CLOSED) * off_free
    return abs(value - c.predicted) <= (1 - GAP_CLOSED) * abs(c.free - c.predicted)


def free_cause(c: EffectCheck, tolerance: float = TOLERANCE) -> str | None:
    """What undoes a flagged free measurement, from the reruns with parts of the model held
    (the first that agrees with the prediction and closes at least ``GAP_CLOSED`` of the gap,
    ``_undoes``): ``"final LayerNorm"`` (its scale alone held), ``"LayerNorms"`` (every scale
    held), ``"attention"`` (the patterns held), or None (none does, or a summary written
    before them; or the free measurement is not flagged). ``tolerance``: the summary's
    (``MechanismSummary.tolerance``)."""
    if _held_agrees(c, c.free, c.agree_free, tolerance):
        return None
    if _undoes(c, c.free_final_ln_held, c.agree_free_final_ln_held, tolerance):
        return "final LayerNorm"
    if _undoes(c, c.free_ln_held, c.agree_free_ln_held, tolerance):
        return "LayerNorms"
    if _undoes(c, c.free_attention_held, c.agree_free_attention_held, tolerance):
        return "attention"
    # free has the prediction's sign and is too large, and holding the patterns takes most of
    # it away (the other sign, or under 1 / RATIO): the excess goes through attention even where
    # the held rerun falls short of the prediction (a reviewer's predicted -0.622, free -3.41,
    # held -0.009, the heads' attention 0.96 -> 0.02, read "also with ... held")
    held = c.free_attention_held
    if c.agree_free and abs(c.free) > abs(c.predicted) and held is not None \
            and (held * c.free <= 0 or abs(held) < abs(c.free) / RATIO):  # fmt: skip
        return "attention"
    return None


def _free_words(c: EffectCheck, tolerance: float) -> str:
    """Why a free measurement is flagged (``free_cause``), with the rerun that says it."""
    cause = free_cause(c, tolerance)
    if cause == "final LayerNorm":
        return f", from the final LayerNorm (held: {_signed(c.free_final_ln_held)})"
    if cause == "LayerNorms" and c.free_final_ln_held is None:  # a head or feature target
        # (the final LayerNorm comes after it), or a summary before that rerun
        return f", from the LayerNorms (all held: {_signed(c.free_ln_held)})"
    if cause == "LayerNorms":
        return (f", from the LayerNorms (all held: {_signed(c.free_ln_held)}; the final one "
                f"alone: {_signed(c.free_final_ln_held)})")  # fmt: skip
    if cause == "attention":
        return f", through attention (with it held: {_signed(c.free_attention_held)})"
    # none undoes it: the reruns' values, so the reader sees how near each came (a reviewer
    # found one at 2.7x beside a free 3.4x, within the 3x line but not half the gap closed)
    held = [(what, value) for what, value in (("LayerNorms", c.free_ln_held),
                                              ("final LayerNorm", c.free_final_ln_held),
                                              ("attention", c.free_attention_held))
            if value is not None]  # fmt: skip
    what = "the LayerNorms held" if c.free_attention_held is None else \
        "the LayerNorms or the attention held"  # fmt: skip
    values = "; ".join(f"{name}: {_signed(value)}" for name, value in held)
    return f", also with {what} ({values})" if values else f", also with {what}"


def frozen_words(mode: str) -> str:
    """What a check's *frozen* rerun holds, for the legends: the graph's own setting (in local
    mode its error nodes too; a sparse graph has none)."""
    if mode == "local":
        return "attention frozen (LayerNorm too, and the errors held: as the graph holds them)"
    return "attention frozen (LayerNorm too: as the graph holds them)"


def free_words(mode: str) -> str:
    """What a check's *free* rerun recomputes, for the legends: in local mode the errors too,
    so that it is the original model less the group (``EffectCheck``)."""
    if mode == "local":
        return ("free (attention, LayerNorm and the errors recomputed: the original model "
                "less the group)")  # fmt: skip
    return "free (attention and LayerNorm recomputed)"


def moved_text(t: TargetRecord) -> str:
    """What the heads at a target's position bring from each key position (its
    ``moved_by_position``), in one line; empty when no head there carries flow."""
    if not t.moved_by_position:
        return ""
    return (f"the heads there bring {_signed(t.heads_flow)}, by key: "
            f"{positions_text(t.moved_by_position)}; their constant terms "
            f"{_signed(t.heads_own, t.heads_flow)}")  # fmt: skip


def carried_text(g: GroupRecord, node: str) -> str:
    """Where a head group's flow into target ``node`` comes from, by key (``carried``), and
    its heads' constant terms (``carried_own``): the parts of its flow there."""
    shares = g.carried.get(node, [])
    if not shares:
        return ""
    flow = g.flow.get(node, 0.0)
    return (f"brings {positions_text(shares)}; constant terms "
            f"{_signed(g.carried_own.get(node, 0.0), flow)}")  # fmt: skip


def constant_source(name: str) -> str:
    """A ``constants_by_source`` name as printed: ``own`` (every node's own bias term, the
    constant in its pre-activation) in words (a reviewer could not decode "own -0.805")."""
    return "the nodes' own biases" if name == "own" else name


def rival_text(t: TargetRecord) -> str:
    """The target's most likely other token (``runner_up``) as the target line gives it:
    ``runner-up ' May' p=0.03, margin +2.1`` (``top token`` where it leads the target), or for
    a difference whose own negative it is, that, without the margin (the target itself):
    ``top token: its negative '3' p=0.985``; for another difference the margin is said to be
    its first token's (``runner-up 'Th' p=0.003, margin of ' Thursday' over it +6.23``); empty
    where there is none."""
    if t.runner_up is None:
        return ""
    rival = probability_words(t.runner_up_probability)
    if t.runner_up_is_negative:
        return f"{rival_word(t)}: its negative {t.runner_up!r} p={rival}"
    if t.negative is not None:  # the margin is the first token's, not the difference's
        return (f"{rival_word(t)} {t.runner_up!r} p={rival}, margin of {t.token!r} over it "
                f"{_signed(t.margin)}")  # fmt: skip
    return f"{rival_word(t)} {t.runner_up!r} p={rival}, margin {_signed(t.margin)}"


def rival_word(t: TargetRecord) -> str:
    """What a target's ``runner_up`` (the most likely other token) is to it: the runner-up
    where the target leads, the top token where it does not (a reviewer read "runner-up
    ' Sunday' p=0.477" on a target of p 0.2)."""
    return "runner-up" if t.margin is None or t.margin >= 0 else "top token"


def ref_text(ref: NodeRef | None) -> str:
    """A node reference in words (for people), in ``circuits.nodes.node_words``'s wording
    with what the summary knows of it: the key a head reads, a unit's concept or the token it
    promotes, a feature's main input."""
    if ref is None or ref.kind == "qk bias":
        return "bias"
    if not ref.present:  # a unit of the mean vector, not of this position: the deviation
        # from the mean holds minus its share (a reviewer read "no token 'arch' here" on a
        # block-0 query side as a unit of the query)
        if ref.kind == "embedding":
            return f"minus the mean's token {ref.token!r} (not at this position)"
        what = {"lorsa": "head", "transcoder": "feature"}.get(ref.kind, ref.kind)
        index = f" {ref.index}" if ref.kind in ("lorsa", "transcoder") else ""
        layer = f"L{ref.layer} " if ref.layer is not None and ref.layer >= 0 else ""
        return f"minus the mean's {layer}{what}{index} (not at this position)"
    kind = Kind.parse(ref.kind)
    text = node_words(kind, ref.stage, ref.index, ref.pos, token=ref.token)
    if kind not in (Kind.LORSA, Kind.TRANSCODER):
        return text
    if ref.kind == "lorsa" and ref.attends is not None and ref.attends >= 0:
        text += f" reads @{ref.attends}"
    if ref.concept:
        text += f" [{ref.concept}]"
    elif ref.promotes:
        text += f" -> {ref.promotes[0]!r}"
    if ref.main_input is not None and ref.kind == "transcoder":
        mi = ref.main_input
        if mi["kind"] == "lorsa":
            text += f" (from L{mi['layer']} head @{mi['pos']} reading @{mi['attends']})"
    return text


def side_name(x) -> str:
    """A QK pair side's name, the position vectors as one group (what a side's positions
    hold) where the side names no position."""
    return "position vectors" if x.is_position and x.pos is None else x.name


def rerun_words(summary: MechanismSummary) -> str:
    """What a token check reran: the model (local mode) or the replacement (sparse)."""
    return "the model rerun" if summary.mode == "local" else "the replacement rerun"


def root_block(r: QKReasonRecord, top: int) -> list[str]:
    """A QK reason's root pairs as a block (``block_lines``): its heading, the exact split of
    ``specific``, its token part split again into what the key holds itself, what heads at the
    key moved there and what the means take away (``token_parts``); then one line per list of
    largest terms: against what the key holds itself (``own_pairs``: its token, its errors),
    against tokens moved to the key (``moved_pairs``), and with a position vector, of the
    specific part itself (what sets this key apart from the others: ``position_pairs``), query
    side first, a moved one written ``token 'ays'@8 -> @9``: it reaches the key at 9 through
    the heads there. Without that split (a hand-made record): the largest terms of
    ``root_pairs``. (One line of all of it ran to 660 characters: a review.)"""
    whole = sum(abs(x) for x in r.root_parts.values())
    split = []
    for part in ROOT_PARTS:
        if part not in r.root_parts:  # a hand-made record may leave a part out
            continue
        text = f"{part} {_signed(r.root_parts[part], whole)}"
        if part == "tokens" and r.token_parts:
            parts = r.token_parts
            text += (f" = the key's own {_signed(parts['key_own'], whole)} + moved to the key "
                     f"{_signed(parts['moved'], whole)} + against the means "
                     f"{_signed(parts['means'], whole)}")  # fmt: skip
        split.append(text)

    def terms(pairs, held: bool = True) -> list[str]:  # held: each side is what the own
        return [  # vectors hold, so a key side at another position was moved to the key
            f"{side_name(p.query)} x {side_name(p.key)}"
            + (f" -> @{r.key}" if held and p.key.pos is not None and p.key.pos != r.key else "")
            + f" {_signed(p.value)}"
            for p in pairs[:top]
        ]

    heading = f"specific by roots ({', '.join(split)}):"
    if r.own_pairs or r.moved_pairs:  # each term against the key's own vector
        # "own vector": its pairs name every root there, errors too, which the header counts
        # under errors rather than the tokens' "the key's own" (a reviewer read them as tokens)
        lists = [("the key's own vector", r.own_pairs), ("moved to the key", r.moved_pairs),
                 ("by position, apart from the other keys", r.position_pairs)]  # fmt: skip
        # each list a block of its own, a term a line (a list on one line ran to 192
        # characters: a review)
        return [heading, *([f"{name}:", *terms(pairs)] for name, pairs in lists if pairs)]
    return [heading, *terms(r.root_pairs, held=False)]


def root_text(r: QKReasonRecord, top: int) -> str:
    """``root_block`` in one line (its heading, then its lists, each its name and its terms,
    joined by "; ")."""
    heading, *rest = root_block(r, top)
    return f"{heading} {'; '.join(_joined(x) for x in rest)}"


def _joined(item: str | list) -> str:
    """A block's line, or a nested block in one line: its heading, then its lines joined by
    "; "."""
    if isinstance(item, str):
        return item
    return " ".join([item[0], "; ".join(_joined(x) for x in item[1:])][: 1 + (len(item) > 1)])


def token_checks_block(r: QKReasonRecord, summary: MechanismSummary) -> list[str]:
    """The tokens a reason's root terms name, each replaced by the mean token and the model
    (in sparse mode the replacement) rerun (``TokenCheck``), as a block (``block_lines``): the
    heading, then one line per token, the ones that move the head's attention to its key most
    first, each with the sum of the printed terms that name it and the verdict
    (``token_verdict``): ``each named token made the mean token, the model rerun: attention to
    '1'@9 0.98 ->`` then ``'='@13 4.8e-06 (terms +15.5: as they say)``, ``'+'@2 0.97 (terms
    +10.9: little change)`` (a term whose token changes nothing named a kind of token, or a
    position, not that token)."""
    terms = named_token_terms(r)
    rerun = rerun_words(summary)

    def one(c) -> str:
        total = terms.get(c.pos, 0.0)
        verdict = token_verdict(r, c, total, summary.tokens)
        return f"{c.token!r}@{c.pos} {attention_text(c.attention)} (terms {total:+.3g}: {verdict})"

    checks = sorted(r.token_checks, key=lambda c: -abs(c.attention - r.attention))
    return [f"each named token made the mean token, {rerun}: attention to {r.key_token!r}@{r.key} "
            f"{r.attention:.2f} ->", *(one(c) for c in checks)]  # fmt: skip


def token_checks_text(r: QKReasonRecord, summary: MechanismSummary) -> str:
    """``token_checks_block`` in one line (its heading, then its lines joined by ", ")."""
    heading, *rest = token_checks_block(r, summary)
    return f"{heading} {', '.join(rest)}"


def token_verdict(r: QKReasonRecord, c: TokenCheck, total: float, tokens: list[str]) -> str:
    """Whether a token check bears out terms summing to ``total``: the attention moved as they
    say (terms > 0: it falls without the token) at least half as far as their size alone
    moves it (``attention_without``: ``as they say``), by less (``in part``: a reviewer read
    "as they say" on terms of +27.3 and 0.77 -> 0.64), ``the other way``, or by less than
    ``LITTLE`` (``little change``); and where the attention moved as they say but the key's
    own ``specific`` part did not (another key gained: a reviewer's ``'='@6`` on ``21+14=35;
    40+26=``, whose terms of +3.22 read "in part" while the part they split rose), that, with
    the key that gained most; and where it moved more than ``RATIO`` times as far as the terms'
    size alone moves it (``attention_without``), that (``further than their size``)."""
    change = c.attention - r.attention
    if abs(change) < LITTLE:
        return "little change"
    if (change < 0) != (total > 0):
        return "the other way"
    if (c.specific - r.specific) * total >= 0:
        rival = "" if c.rival is None else (
            f": {tokens[c.rival]!r}@{c.rival} gained, {attention_text(c.rival_before)} -> "
            f"{attention_text(c.rival_attention)}")  # fmt: skip
        return (f"the attention as they say, this key's specific part not "
                f"({r.specific:+.3g} -> {c.specific:+.3g}){rival}")  # fmt: skip
    # how far the terms alone move it (the key's score less them, the other keys' as they
    # were): a move RATIO times further is not theirs (a reviewer's terms of -0.0348 read
    # "as they say" beside 0.68 -> 0.89, where they alone give 0.688)
    alone = attention_without(r.attention, total)
    implied = alone - r.attention
    if abs(change) > RATIO * abs(implied) and abs(change - implied) >= LITTLE:
        return (f"the way they say, but further than their size alone moves it "
                f"({attention_text(alone)})")  # fmt: skip
    # at least half as far as their size alone moves it: borne out (a reviewer read "in
    # part" on 0.52 -> 0.49 where the terms alone give 0.48: measured against half of the
    # room to move, small terms could never be borne out)
    return "as they say" if abs(change) >= abs(implied) / 2 else "in part"


WHY_THERE = "why it attends there"


@dataclass
class WhyTerm:
    """The term a predicting head group's ``why it attends there`` names (``why_term``): its
    first QK reason ``reason``, the pair ``pair`` of ``kind`` (``own``, ``moved`` or
    ``position``) with the largest raising value, each side as a reader meets it (``query``,
    ``key``: ``token ' harbor'@12 at the query``, ``token ' harbor'@5 moved to the key @6``),
    and the errors' or constants' summed terms that raise the score more (``larger``: then the
    pair is the largest token or position term, not the score's largest). ``any_query``: the
    reason's ``mean_query_vs_key`` (what the mean query finds at this key against the other
    keys) where it sets the key apart more than the specific part does, else None: the key
    then draws any query, and the pair, a term of the specific part, is not why this one
    attends there."""

    reason: QKReasonRecord
    kind: str
    pair: RootPair
    query: str
    key: str
    larger: list[tuple[str, float]]
    any_query: float | None = None

    @property
    def value(self) -> float:
        return self.pair.value

    @property
    def term(self) -> str:
        """What the pair is among the terms: the score's largest, or, where a summed part
        brings more (``larger``), the largest of the terms listed one by one, which are
        between tokens, errors and position vectors (``own_pairs`` and ``moved_pairs`` may
        hold an error root: a pair with one is no token or position term)."""
        if not self.larger:
            return "largest score term"
        sides = (self.pair.query.kind, self.pair.key.kind)
        return ("largest token, error or position term" if "error" in sides
                else "largest token or position term")  # fmt: skip

    @property
    def place(self) -> str:
        """What a position pair is read as: where things are, apart from the other keys."""
        return "by position, apart from the other keys: " if self.kind == "position" else ""


def why_term(g: GroupRecord | TargetRecord | None) -> WhyTerm | None:
    """The term ``why_text`` names, read from the record's first QK reason: its largest raising
    term of ``own_pairs``, ``moved_pairs`` and ``position_pairs`` (what the query holds against
    what the key holds); None where the reason has no such split or no raising term. The one
    place that chooses it: the printout, the page and the mechanism figure read it here."""
    if g is None or not g.qk:
        return None
    r = g.qk[0]
    lists = [("own", r.own_pairs[:1]), ("moved", r.moved_pairs[:1]),
             ("position", r.position_pairs[:1])]  # fmt: skip
    found = [(p.value, kind, p) for kind, pairs in lists for p in pairs if p.value > 0]
    if not found:
        return None
    _, kind, p = max(found, key=lambda x: x[0])
    # a token at another position reaches the query through heads there (an operand head's
    # query holds the '=' before it): "moved to the query", as a key's is "moved to the key"
    moved = p.query.pos is not None and p.query.pos != r.query
    query = f"{side_name(p.query)} " + (
        f"moved to the query @{r.query}" if moved else "at the query"
    )
    if kind == "moved":
        key = f"{side_name(p.key)} moved to the key @{r.key}"
    elif kind == "own":
        key = f"the key's own {side_name(p.key)}"
    else:
        key = f"{side_name(p.key)} at the key"
    # the pairs above hold tokens and position vectors; the errors' and constants' terms are
    # only summed (``root_parts``): where one of those sums raises the score more than the
    # term named, that term is not the score's largest (a reviewer's --no-constants trace,
    # whose position vectors are constants: "largest score term" +0.292 of +2.75, the
    # constants +2.5)
    larger = [(part, value) for part in ("constants", "errors")
              for value in [r.root_parts.get(part, 0.0)] if value > p.value]  # fmt: skip
    # what sets the key apart from the other keys for this query is the mean query's term at
    # it plus the specific part (the other two always-on terms are the same at every key):
    # where the first is the larger, any query attends there (a reviewer's sparse "one two
    # three five six": QK 12 reads 'one'@1 0.58 with the specific part -0.029 and mean q x k
    # +1.94; every query of the prompt gave 'one'@1 0.56-0.66, while the line named only
    # "token ' six'@5 at the query x the key's own token 'one'@1 +0.703")
    any_query = r.mean_query_vs_key if r.mean_query_vs_key > max(r.specific, 0.0) else None
    return WhyTerm(r, kind, p, query, key, larger, any_query)


def any_query_text(why: WhyTerm, summary: MechanismSummary) -> str:
    """``why.any_query`` in words, for the printout and the figure: the key draws any query
    more than the specific part this term belongs to sets it apart. Empty where None, and on a
    prompt of one query after BOS, whose mean query is that query (``circuits.qk``'s
    ``reference_queries``): its specific part is 0 and says nothing of other queries."""
    if why.any_query is None or len(summary.tokens) <= 2:
        return ""
    return (f"; the key stands out more for any query: mean q x k {_signed(why.any_query)}, the "
            f"specific part {_signed(why.reason.specific)}")  # fmt: skip


def why_text(g: GroupRecord | None, summary: MechanismSummary) -> str:
    """``why_block`` in one line: its heading and term, then its other lines joined by "; "
    (the movers by ", ", as ``moved_by_text``)."""
    block = why_block(g, summary)
    if not block:
        return ""
    heading, term, *rest = block
    why = why_term(g)
    rest = [moved_by_text(why) if isinstance(x, list) else x for x in rest]
    return "; ".join([f"{heading} {term}", *rest])


def why_block(g: GroupRecord | None, summary: MechanismSummary) -> list[str]:
    """The predicting head group's QK reason beside its name, as a block (``block_lines``):
    the term ``why_term`` chooses, out of the specific part, then what the token checks of
    the tokens it names did (``token_checks``, verdict as ``token_verdict``; one line of both
    ran to 400 characters): ``why it attends there (QK 9's largest score term, of the
    specific part +10.1): token ' harbor'@12 at the query x token ' harbor'@5 moved to the
    key @6 +16.1``, ``made the mean token, the model rerun: ' harbor'@12 0.98 -> 5e-05 (as
    they say), ...``. A reviewer found the induction match, the query's token against the
    token a previous-token head moved to the key, only in the group's lines far below,
    inside a line of 900 characters, under a "what makes it attend there" that named a weak
    group first. Where the reason's constant or error terms (``root_parts``) raise the score
    more, the term is called the largest token or position term (token, error or position
    term where one side is an error) and that sum follows it.
    Empty where the reason has no such split or no raising term."""
    why = why_term(g)
    if why is None:
        return []
    heading, clauses = _why_clauses(why, summary)
    # the heading, then the term and each clause after it a line (one line of them ran to 270
    # characters: a review), the movers a line each
    lines: list = [heading, *clauses]
    if moved := moved_by_block(why):
        lines.append(moved)
    if shown := why_checks(why, summary):
        lines.append(f"made the mean token, {rerun_words(summary)}: " + ", ".join(shown))
    return lines


def _why_clauses(why: WhyTerm, summary: MechanismSummary) -> tuple[str, list[str]]:
    """A why line's heading (``why it attends there (QK 9's largest score term, of the
    specific part +10.1):``) and its clauses: the term, then the error or constant terms that
    bring more and what any query finds at the key, where they are said."""
    r, p = why.reason, why.pair
    heading = (f"{WHY_THERE} (QK {r.qk_head}'s {why.term}, of the specific part "
               f"{_signed(r.specific)}):")  # fmt: skip
    clauses = [f"{why.place}{why.query} x {why.key} {_signed(p.value)}"]
    for part, value in why.larger:
        folded = (" (the position vectors among them: --no-constants folds them in)"
                  if part == "constants" and summary.settings.get("constants") is False
                  else "")  # fmt: skip
        clauses.append(f"the {part[:-1]} terms bring more, {_signed(value)}{folded}")
    if any_query := any_query_text(why, summary):
        clauses.append(any_query.removeprefix("; "))
    return heading, clauses


def why_moved(why: WhyTerm) -> MovedBy | None:
    """The head groups at the key that moved the token a ``why_term`` names on its key side
    there (``QKReasonRecord.moved_by``), where the term is a moved one: the printout's why
    line and the mechanism figure name them from here."""
    if why.kind != "moved":
        return None
    return next((x for x in why.reason.moved_by if x.pos == why.pair.key.pos), None)


def mover_name(m: Mover) -> str:
    """A mover as the printout names a group: its summary key first where it is one."""
    return (f"{m.key} " if m.key is not None else "") + m.group.name


def moved_by_text(why: WhyTerm) -> str:
    """``' seven'@15 moved to the key @16 by g9 L0 8 heads @16 -> ' seven'@15 (+0.886 of the
    key side), ...; every head there brings +1.43 from @15``: the heads at the key that
    moved the why term's token there (``why_moved``), each with what it brings from the
    token's position to the key side; empty where the term is no moved one."""
    parts = _moved_parts(why)
    if parts is None:
        return ""
    moved, who, total = parts
    return f"{moved} by {', '.join(who)}; {total}"


def moved_by_block(why: WhyTerm | None) -> list[str]:
    """``moved_by_text`` as a block (``block_lines``): ``' seven'@15 moved to the key @16
    (every head there brings +1.43 from @15) by:``, then each mover a line (a line of two ran
    to 208 characters: a review); empty where the term is no moved one."""
    parts = _moved_parts(why)
    if parts is None:
        return []
    moved, who, total = parts
    return [f"{moved} ({total}) by:", *who]


def _moved_parts(why: WhyTerm | None) -> tuple[str, list[str], str] | None:
    """What ``moved_by_text`` says: the token moved to the key, each mover, what every head
    there brings; None where the term is no moved one."""
    moved = None if why is None else why_moved(why)
    if moved is None:
        return None
    who = [f"{mover_name(m)} ({_signed(m.group.value)} of the key side)" for m in moved.movers]
    return (f"{moved.token!r}@{moved.pos} moved to the key @{why.reason.key}",
            who or ["no head group raising the key side"],
            f"every head there brings {_signed(moved.total)} from @{moved.pos}")  # fmt: skip


def why_checks(why: WhyTerm, summary: MechanismSummary) -> list[str]:
    """The token checks of the tokens a ``why_term`` names, each as ``' harbor'@12 0.98 ->
    5e-05 (as they say)`` (verdict as ``token_verdict``): whether making each the mean token
    moves the attention as the term says. The why line and the mechanism figure give them."""
    r, p = why.reason, why.pair
    named = [x.pos for x in (p.query, p.key) if x.kind == "embedding" and x.pos is not None]
    checks = {c.pos: c for c in r.token_checks}
    terms = named_token_terms(r)
    out = []
    for pos in dict.fromkeys(named):
        if pos not in checks:
            continue
        total = terms.get(pos, 0.0)
        # the verdict weighs every printed term naming the token: where they sum the other way
        # from the one named here, the sum is said (a reviewer read "+0.0709 ... ' a'@11 0.18
        # -> 0.23 (as they say)", the attention rising as the token's terms of -0.318 say)
        against = (f"its terms {_signed(total)} in all, the other way from this one: "
                   if (total > 0) != (p.value > 0) else "")  # fmt: skip
        verdict = token_verdict(r, checks[pos], total, summary.tokens)
        out.append(f"{checks[pos].token!r}@{pos} "
                   f"{attention_change(r.attention, checks[pos].attention)} "
                   f"({against}{verdict})")  # fmt: skip
    return out


def why_blocks(summary: MechanismSummary) -> dict[str, list[str]]:
    """Each target's ``why_block`` (by target node), said once: a later target sharing the
    predicting group points to the first (``'5'``'s repeated ``'6'``'s, as the QK sources
    once did: ``qk_sources_blocks``)."""
    out, said_for = {}, {}
    for t in summary.targets:
        if t.predicting_group is None:
            continue
        if t.predicting_group in said_for:
            out[t.node] = [f"{WHY_THERE}: as under {said_for[t.predicting_group]} above"]
        elif block := why_block(summary.group(t.predicting_group), summary):
            out[t.node] = block
            said_for[t.predicting_group] = t.label
    return out


def attention_without(attention: float, terms: float) -> float:
    """A key's attention once ``terms`` are taken from its score and every other key's score
    stays: the softmax shifted at that key alone (NaN for terms that are no number)."""
    if not math.isfinite(terms):
        return math.nan
    shift = math.exp(-max(-50.0, min(50.0, terms)))
    return attention * shift / (1 - attention + attention * shift)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def apart(a: float, b: float, figures: int = 3) -> tuple[str, str]:
    """``a`` and ``b`` signed with ``figures`` significant figures, or with more where those
    print two different numbers alike (up to 9: ``13.2001`` and ``13.2`` print ``+13.2001``
    and ``+13.2``)."""
    for n in range(figures, 10):
        x, y = f"{a:+.{n}g}", f"{b:+.{n}g}"
        if x != y or a == b:
            break
    return x, y


def _role_text(w: QKSourceRole, g: GroupRecord, summary: MechanismSummary) -> str:
    """``_role_parts`` in one text, joined by ", "."""
    return ", ".join(_role_parts(w, g, summary))


def _role_parts(w: QKSourceRole, g: GroupRecord, summary: MechanismSummary) -> list[str]:
    """A ``QKSourceRole``'s score (the first part), then where the group sits when not at the
    side's own position (it reaches it through later heads), its rank among the head groups
    ablated to choose it and how far the testing went."""
    head = summary.qk_subject(w.group)
    parts = [f"{w.value:+.3g}"]
    r = next((r for r in head.qk if r.qk_head == w.qk_head), None)
    if r is not None:  # beside the side's whole and its largest root (what no head moves)
        total = r.query_at if w.side == "query" else r.key_at
        roots = (r.query_sources if w.side == "query" else r.key_sources).get("roots", [])
        top = next((x for x in roots if x.value > 0), None)
        value, whole = apart(w.value, total)  # a reviewer read "+13.2 of the side's +13.2
        parts[0] = f"{value} of the side's {whole}"  # (more than the whole: ...)"
        if w.value > 0 > total:  # a reviewer read "+3.81 of the side's -4.09" as a share
            parts[0] += " (the side as a whole lowers the score; this group raises it)"
        elif 0 < total < w.value:  # a reviewer read "+16.4 of the side's +12.6" as wrong
            parts[0] += " (more than the whole: other parts pull against it)"
        if top is not None:  # what no head moves: a token's own embedding, a constant
            parts[0] += f", the side's largest root {top.name} {top.value:+.3g}"
    at = head.pos if w.side == "query" else head.attends
    if g.pos is not None and at is not None and g.pos != at:  # beside its score, before the
        # others tested (after "17 other head groups at the side's position tested too" a
        # reviewer read the 17 as sitting where this one does)
        parts.append(f"at @{g.pos}, not the {w.side} @{at}: through later heads there")
    placed = w.at_position or 0  # the other groups at the side's position, tested after
    raising = w.raisers_tested
    # files before the thirty-second session tested those there that do not raise it alone
    every = summary.settings.get("qk_sources_every_placed", False)
    there = (f"other head group{'s' * (placed != 1)} at the side's position" if every else
             f"head group{'s' * (placed != 1)} at the side's position that "
             f"do{'es' * (placed == 1)} not raise it")  # fmt: skip
    besides = f"; {placed} {there} tested too"
    if w.rank > raising:  # one of those: its linear share is no reason, its ablation is
        such = f"{placed} other groups there" if placed > 1 else "the 1 other group there"
        others = f"beside the {raising} raising it most" if raising else "(none raises it)"
        share = "not raising it by its linear share" if w.value <= 0 else \
            "raising it less by its linear share than the raisers tested"  # fmt: skip
        parts += [
            f"at the side's position, {share}",
            f"of {such} tested {others}, its ablation lowers the attention most",
        ]
    elif raising > 1 and w.rank == 1:
        parts.append(f"the largest of {raising} raising the side tested" + besides * (placed > 0))
    elif raising > 1:
        parts.append(f"{_ordinal(w.rank)} by score of {raising} raising the side tested, whose "
                     "ablation lowers the attention most" + besides * (placed > 0))  # fmt: skip
    elif placed:
        parts.append(f"the one raising the side{besides}")
    # a reviewer found untested groups lowering it more than the last tested: more are tested
    # while the last one wins, up to a bound, which this says where it stopped the testing
    if raising > 1 and w.rank == raising and w.raisers is None:  # an earlier file
        parts[-1] += " (the last tested: a group lower by score may lower it more)"
    elif raising > 1 and w.rank == raising and raising < w.raisers:
        parts[-1] += (f" (the last tested, where testing stops; {w.raisers - raising} more "
                      "raise the side, one of which may lower it more)")  # fmt: skip
    if w.tie_name is not None:
        # (named as the lower by less than TIE: "neither is singled out" beside the name it
        # gave read as a contradiction to a reviewer)
        parts.append(f"a near tie: about as low (within {TIE}) with {w.tie_name} ablated "
                     f"instead, {attention_text(w.tie_attention)}; named as the lower, but the "
                     "ablations barely tell the two apart")  # fmt: skip
    return parts


def score_text(summary: MechanismSummary, key: str, qk_head: int) -> str:
    """The QK score a ``QKSourceRole`` splits, as a reader meets it: ``g0's QK 9 score`` for a
    head group (its key), ``the QK 8 score of the target L2 head 573 @15 -> ' m'@7`` for a
    head target (its node)."""
    head = summary.qk_subject(key)
    if isinstance(head, TargetRecord):
        return f"the QK {qk_head} score of the target {head.label}"
    return f"{key}'s QK {qk_head} score"


def writes_qk_text(
    g: GroupRecord, summary: MechanismSummary, said: dict[str, str] | None = None
) -> str:
    """What a group's ``writes_qk`` says: the QK sides it writes, e.g. ``writes the key side
    of g0's QK 9 score (+12.5)``; empty when none. ``said`` (``sources_said``): the head groups
    whose sources were given under a target above, where this points instead of saying the
    score and choice again."""
    return "; ".join(writes_qk_lines(g, summary, said))


def writes_qk_lines(
    g: GroupRecord, summary: MechanismSummary, said: dict[str, str] | None = None
) -> list[str]:
    """``writes_qk_text``'s sides, one a line (the printout's: two on one line ran to 223
    characters, a review)."""
    said = said or {}
    return [
        f"writes the {w.side} side of {score_text(summary, w.group, w.qk_head)} "
        + (f"(its share and how it was chosen: as under target {said[w.group]} above)"
           if w.group in said
           else f"({_role_text(w, g, summary)})")
        for w in g.writes_qk
    ]  # fmt: skip


HEADS_NAMED = 3  # QK heads named in an attention check's text


def weights_text(n: int, summary: MechanismSummary, key: str) -> str:
    """How head group ``key``'s attention is one number: its ``n`` QK heads weighted by their
    share of its |flow| into the target it is weighed by (``MechanismSummary.weighed_by``),
    which is named where the summary has several (with ``--target-diff`` a group's attention
    read 0.53 where the logit's summary read 0.54: a reviewer); empty for one QK head."""
    if n < 2:
        return ""
    t = summary.weighed_by(key)
    into = ""
    if len(summary.targets) > 1 and t is not None:
        which = "the first target" if t is summary.targets[0] else "the target it predicts"
        into = f" into {which}, {t.label}"
    return f"{n} QK heads by flow{into}"


def attention_checks_block(g: GroupRecord, summary: MechanismSummary) -> list[str]:
    """A group's ``attention_checks`` as a block (``block_lines``): ``ATTENTION_AFTER``, then
    a line per check (one line of both ran to 190 characters); empty without any."""
    texts = [attention_check_text(a, summary) for a in g.attention_checks]
    return [f"{ATTENTION_AFTER}:", *texts] if texts else []


def attention_check_text(a: AttentionCheck, summary: MechanismSummary) -> str:
    """An ``AttentionCheck`` in words: the group's attention (its QK heads weighted by flow,
    ``weights_text``) before and after, then its largest QK heads': ``g0's attention @21 ->
    'in'@10 0.8 -> 0.01 (6 QK heads by flow; QK 9 0.89 -> 0.009, QK 6 0.77 -> 0.003, ...)``."""
    heads = ", ".join(f"QK {h} {attention_change(b, f)}"
                      for h, b, f in list(zip(a.qk_heads, a.before, a.free,
                                              strict=True))[:HEADS_NAMED])  # fmt: skip
    more = ", ..." if len(a.qk_heads) > HEADS_NAMED else ""
    weighed = weights_text(len(a.qk_heads), summary, a.group)
    weighed += "; " if weighed else ""
    tokens = summary.tokens
    return (f"{a.group}'s attention @{a.query} -> {tokens[a.key]!r}@{a.key} "
            f"{attention_change(a.mean_before, a.mean_free)} "
            f"({weighed}{heads}{more})")  # fmt: skip


HALVES = 0.5  # a QK source is weak where its ablation leaves more than this of the attention


def qk_sources_sides(summary: MechanismSummary, key: str) -> list[str]:
    """``qk_sources_side_blocks``, each side in one line: ``query side of QK 9 g1 L0 12 heads
    @21 -> 'ak'@21 [weak ...] (+8.24 of the side's +13.6, ...), ablated, through its query
    side alone: ...``."""
    out = [f"{name}" + (f" [{_joined(verdict)}]" if verdict else "")
           + f" ({', '.join([score, *chosen])})" + (f", {_joined(tested)}" if tested else "")
           for name, verdict, score, chosen, tested in _source_sides(summary, key)]  # fmt: skip
    return out + _sourceless_sides(summary, key)


def qk_sources_side_blocks(summary: MechanismSummary, key: str) -> list[str | list[str]]:
    """The groups that write head group (or head target) ``key``'s QK score, a block each
    (``block_lines``; ``_source_sides``): the side and the group's name; a source whose
    ablation does not halve the attention through that side says so next (``_weak_block``),
    before the measurements it rests on; then the score it brings (``writes``), how it was
    chosen, and what its ablation did to the attention (``with it ablated``: a line of its own
    starting "ablate" would read as a check's). Then each side without one, said to
    have none (a line). (One line of a side ran to 660 characters: a review.)"""
    out: list[str | list] = [
        [name, *[verdict] * bool(verdict), f"writes {score}", *_chosen_lines(chosen),
         *([[f"with it {tested[0]}", *tested[1:]]] if tested else [])]
        for name, verdict, score, chosen, tested in _source_sides(summary, key)
    ]  # fmt: skip
    return out + _sourceless_sides(summary, key)


def _chosen_lines(chosen: list[str]) -> list[str | list[str]]:
    """How a QK source was chosen (``_role_parts`` after its score) as a source's block gives
    it: one line, or a block where it has several parts (one line ran to 176 characters)."""
    if len(chosen) > 1:
        return [["chosen:", *chosen]]
    return [f"chosen: {x}" for x in chosen]


def _source_sides(summary: MechanismSummary, key: str) -> list[tuple]:
    """The groups that write head group (or head target) ``key``'s QK score (their
    ``writes_qk``), each as (name: the side and the group, verdict: ``_weak_block`` or None,
    score: what it brings to the side, chosen: how it was chosen (``_role_parts``), tested:
    where measured, the group's attention after it is ablated, with the side's vectors alone
    as after it (the others clean; what the choice reads), or None): what makes the group
    attend where it does, tested. A source whose ablation does not halve it has a verdict."""
    out = []
    sources = sorted(summary.qk_sources(key), key=lambda x: SIDES.index(x[1].side))
    for g, w in sources:
        after = summary.attention_after(g, key)
        tested = verdict = None
        if after is not None:
            weighed = [f"its {x}" for x in [weights_text(len(after.qk_heads), summary, after.group)]
                       if x]  # fmt: skip
            both = attention_change(after.mean_before, after.mean_free)
            alone = after.mean_side(w.side)
            if alone is None:  # a file written before the sides were measured alone
                tested = [f"ablated: attention {both}" + "".join(f" ({x})" for x in weighed)]
            else:  # the side's own first: what chose it (a reviewer read 0.18 -> 0.04 where
                # the key side alone gave 0.18 -> 0.16); its measurements under the heading
                # (one line ran to 197 characters)
                tested = [f"ablated, through its {w.side} side alone:",
                          f"{_named_head_text(after, w.qk_head, w.side)}attention "
                          f"{attention_change(after.mean_before, alone)} "
                          f"({'; '.join([f'both sides {both}', *weighed])})"]  # fmt: skip
                if alone > after.mean_before * HALVES:  # (a reviewer read 0.97 -> 0.90 as
                    # what makes it attend, where every layer-0 feature at the query, no
                    # candidate, took it to 0.0003)
                    verdict = _weak_block(summary, key, w.side, alone)
        # the verdict beside the name, before the measurements it rests on (a reviewer read
        # "weak", or the group that really carries the side, last in 600-700 characters)
        score, *chosen = _role_parts(w, g, summary)
        out.append((f"{w.side} side of QK {w.qk_head} {g.key} {g.name}", verdict, score, chosen,
                    tested))  # fmt: skip
    return out


def _sourceless_sides(summary: MechanismSummary, key: str) -> list[str]:
    """Where a side of ``key``'s QK score has a source, each side without one, said to have
    none (a reviewer read the key side's silence)."""
    named = {w.side for _, w in summary.qk_sources(key)}
    if not named:
        return []
    return [f"{side} side: {_no_source_words(summary, 'it')}" for side in SIDES
            if side not in named]  # fmt: skip


def _named_head_text(after: AttentionCheck, qk_head: int, side: str) -> str:
    """Where a head group has several QK heads, the named one's own attention through
    ``side`` alone, before the group's weighted mean (``QK 6's attention 0.85 -> 0.057, the
    group's ``): a reviewer read the group's 0.82 under "QK 6", whose own was 0.85; empty for
    a group of one QK head, whose mean is its own."""
    alone = after.query_side if side == "query" else after.key_side
    if len(after.qk_heads) < 2 or qk_head not in after.qk_heads:
        return ""
    i = after.qk_heads.index(qk_head)
    # the named head's own attention may not fall where the group's does (a review: ``Z Y X W
    # V`` in sparse mode, "query side of QK 9" with QK 9's 0.51 -> 0.63 and QK 12's 0.27 ->
    # 0.04 under it): say so, lest the source read as this head's
    # (and the fall is at its other QK heads only where the group's own falls: a source may
    # be the lowest of ablations that all raise it)
    rises = ""
    if alone[i] >= after.before[i]:
        falls = after.mean_side(side) < after.mean_before
        rises = " (it does not fall" + (": the fall is at the group's other QK heads" * falls) + ")"
    return (f"QK {qk_head}'s attention {attention_change(after.before[i], alone[i])}{rises}, "
            "the group's ")  # fmt: skip


def _weak_block(summary: MechanismSummary, key: str, side: str, alone: float) -> list[str]:
    """A block (``block_lines``; one line ran to 201 characters), beside a QK source of head
    group (or head target) ``key``'s ``side`` whose ablation does not halve that attention
    through the side (``alone``): that no head group tested does (the source is the lowest of
    them), and the checked group of any kind (features too, which are no candidates, or a
    head group that was none) whose ablation halves it and lowers it most, or, where none
    does, that the side is no one group's doing.

    On the key side a group written after the key cannot change the key's own vector (its
    position is later: causal); the keys' vectors as after its ablation take the attention
    through a later key, which its ablation makes compete (a review: `Sum: 52+34= 8`, the
    operand head's key side "taken 0.97 -> 0.07" by the layer-0 features at the query
    itself, whose ablation left the key's score as it was and raised the query's own key's
    from -3.8 to +6.8). Such a group is said to act so, and never named as the side's."""
    found, later = [], []
    for g in summary.groups:
        a = summary.attention_after(g, key)
        low = None if a is None else a.mean_side(side)
        if low is not None and low <= a.mean_before * HALVES and low < alone:
            after_key = side == "key" and g.pos is not None and g.pos > a.key
            (later if after_key else found).append((low, g, a))
    # read on the group's attention (its QK heads' mean), which the line's measurements give
    # after a named QK head's own (a review found a head halved beside "weak")
    words, none = "weak (the group's attention):", "no head group tested halves it"
    if found:
        low, g, a = min(found, key=lambda x: x[0])
        return [words, none, f"of the summary's checked groups, {g.key} {g.name} takes it "
                f"through this side {attention_change(a.mean_before, low)}"]  # fmt: skip
    nobody = ("this side is no one group's doing (its position's own token and features, or "
              "many groups at once)")  # fmt: skip
    if not later:
        return [words, f"{none}, nor any group the summary checks", nobody]
    low, g, a = min(later, key=lambda x: x[0])
    return [words, f"{none}, nor any group the summary checks at or before the key", nobody,
            f"of the summary's checked groups after the key, {g.key} {g.name} takes it "
            f"{attention_change(a.mean_before, low)} through the keys from @{g.pos} on",
            "not the key's own vector: its ablation makes a later key compete"]  # fmt: skip


def _no_source_words(summary: MechanismSummary, what: str) -> str:
    """Why a QK side (``what``: "it", "its query or key side") has no head group writing it:
    none raises it, and where the summary has checks, none that does lowers the attention when
    ablated."""
    checked = summary.settings.get("checks")  # (absent from files before it)
    if checked is False or (checked is None and not any(x.checks for x in summary.groups)):
        return f"no head group raises {what}"
    most = summary.settings.get("qk_sources_most")  # (absent from files before it)
    if summary.settings.get("qk_sources_at_position"):  # (with ``most``: checked on load)
        return (f"no head group raising {what} or at its position lowers its attention when "
                f"ablated (up to the {most} raising it most and every one at its position, "
                "each ablated)")  # fmt: skip
    words = f"no head group raises {what} and lowers its attention when ablated"
    return words if most is None else f"{words} (up to the {most} raising it most, each ablated)"


def no_sources_text(g: GroupRecord | TargetRecord, summary: MechanismSummary) -> str:
    """For a predicting head group (or a head target) with QK reasons and no QK source, why:
    in block 0 nothing
    but the tokens and the position vectors writes its query and key; above it, no head group
    raises either side and, where the summary has checks, lowers its attention when ablated.
    Empty where it has sources or no reason, or the summary was written before QK sources
    were looked for (its ``settings`` have no ``qk_sources``)."""
    if not g.qk or "qk_sources" not in summary.settings:
        return ""
    if isinstance(g, TargetRecord) and not summary.settings.get("qk_sources_head_targets"):
        return ""  # a file written before a head target's own sources were looked for
    if g.pos == 0:  # (a reviewer read "no head group lowers its attention" at attention 1)
        return ("its QK score: at the first position it has one key to attend, with attention "
                "1 whatever its score")  # fmt: skip
    if g.layer == 0:
        return ("its QK score: block 0 reads the tokens and position vectors alone (no head "
                "writes its query or key)")  # fmt: skip
    return f"its QK score: {_no_source_words(summary, 'its query or key side')}"


def qk_sources_block(summary: MechanismSummary, key: str | None) -> list[str] | None:
    """Head group (or head target) ``key``'s QK sources as every view prints them: its heading,
    then one line per side (``qk_sources_sides``: one line of both was 900 characters to a
    reviewer), or one line saying why it has none (``no_sources_text``: a viewer panel left
    it out, a review found); None where there is nothing to say."""
    if key is None or (head := summary.qk_subject(key)) is None:
        return None
    if sources := qk_sources_side_blocks(summary, key):
        return [*qk_sources_heading(summary), *sources]
    return [text] if (text := no_sources_text(head, summary)) else None


def qk_sources_blocks(summary: MechanismSummary) -> dict[str, list[str]]:
    """Each target's predicting group's QK sources (``qk_sources_block``, by target node),
    said once: a later target sharing the group points to the first (ten targets printed the
    same long line ten times); the short line of a group without sources is said each
    time."""
    out, said_for = {}, {}
    for t in summary.targets:
        if t.predicting_group in said_for:
            out[t.node] = [f"{QK_SOURCES_WHAT}: as under {said_for[t.predicting_group]} above"]
        elif block := qk_sources_block(summary, t.predicting_group):
            out[t.node] = block
            if summary.qk_sources(t.predicting_group):
                said_for[t.predicting_group] = t.label
    return out


def block_lines(block: list | None, indent: str) -> list[str]:
    """A block (``qk_sources_block``, ``root_block``, ``why_block``...: a heading, then its
    lines, each a text or a block of its own) as printed lines: its first at ``indent``, the
    rest two spaces further in, a nested block's lines further still."""
    if not block:
        return []
    out = [f"{indent}{block[0]}"]
    for item in block[1:]:
        out += block_lines(item, indent + "  ") if isinstance(item, list) else [f"{indent}  {item}"]
    return out


PRINT_WIDTH = 150  # the printout's lines: a longer one is broken (``fitted``)
# where a long printed line breaks, the first of these that fits: between clauses, between
# columns (a unit's label and its concept), between a list's items, before a parenthesis,
# then at any space
BREAKS = ("; ", "  ", ", ", " (", " ")


def fitted(
    line: str, width: int = PRINT_WIDTH, more: str | None = None, breaks: tuple = BREAKS
) -> list[str]:
    """A printed line as lines of at most ``width`` characters: broken at the last place
    within the width of the first of ``breaks`` that leaves a first line of a third of the
    width or more (after a ";" or ",", before a space's text), the rest on lines ``more``
    in (default: four spaces further in than the line); a part no break fits (a single word
    longer than the width) stays whole. Breaks outside parentheses and brackets come first
    (a review read parentheses opened on one line and closed on the next): a bracketed part
    that runs past the width goes whole onto the next line where that line holds it (the
    first line shorter then), and is broken inside, at its least depth, only where it alone
    is over the width. The blocks (``block_lines``) keep most lines short; this breaks what
    they leave long (a review found lines of 151-370 characters)."""
    more = line[: len(line) - len(line.lstrip())] + "    " if more is None else more
    out, rest, open_ = [], line, 0
    while len(rest) > width:
        depth = _bracket_depths(rest, open_)
        cut = _break_at(rest, width, len(more), breaks, depth)
        if cut is None:
            break
        out.append(rest[:cut].rstrip())
        rest, open_ = more + rest[cut:].lstrip(), depth[cut]  # still open on the next line
    return [*out, rest]


def _break_at(rest: str, width: int, indent: int, breaks: tuple, depth: list[int]) -> int | None:
    """Where ``fitted`` cuts ``rest`` (the first line is ``rest[:cut]``), or None: the last
    break within the width of the first kind of ``breaks`` among those outside brackets.
    Where a bracketed part runs past the width, a break before it if the next line holds it
    whole (with what sticks to its end), else one inside it, at its least depth. A break is
    past ``indent``, so the rest shrinks. ``depth``: ``_bracket_depths`` of ``rest``."""
    found = _breaks(rest, max(width // 3, indent + 1), width, breaks, depth)
    if not found:
        return None
    opener = -1  # the outermost bracketed part open at the width: where it opens
    if depth[width] > 0:
        opener = max((i for i in range(width) if depth[i] == 0 < depth[i + 1]), default=-1)
    outside = [x for x in found if x[0] == 0]
    if depth[width] == 0 and outside:
        return _last(outside)
    if opener >= 0:
        closer = next((i for i in range(opener, len(rest)) if depth[i + 1] == 0), len(rest))
        stuck = len(rest[closer:].split(" ")[0])  # its closer and what follows it unbroken
        before = outside or [
            x for x in _breaks(rest, indent + 1, opener, breaks, depth) if x[0] == 0
        ]
        for cut in [_last(before), max(c for _, _, c in before)] if before else []:
            if indent + len(rest[cut:closer].lstrip()) + stuck <= width:
                return cut  # its kind's last, else the last of any kind
    inside = [x for x in found if x[2] > opener] or found
    least = min(d for d, _, _ in inside)
    return _last([x for x in inside if x[0] == least])


def _breaks(rest: str, start: int, end: int, breaks: tuple, depth: list[int]) -> list[tuple]:
    """Every break of ``rest`` at ``start`` or after whose line ends by ``end``: (its bracket
    depth, its kind's place in ``breaks``, where the line ends)."""
    out = []
    for kind, b in enumerate(breaks):
        keep = len(b.split(" ")[0])  # its text before its first space ends the line
        for at in range(start, end - keep + 1):
            if rest.startswith(b, at):
                out.append((depth[at + keep], kind, at + keep))
    return out


def _last(found: list[tuple]) -> int:
    """The last of ``found`` (``_breaks``) of the first kind among them."""
    kind = min(k for _, k, _ in found)
    return max(cut for _, k, cut in found if k == kind)


def _bracket_depths(text: str, open_: int = 0) -> list[int]:
    """How many parentheses and brackets are open before each position of ``text`` (one
    more entry than characters), ``open_`` at its start (a line's rest after a break inside
    brackets): a closer with none open counts for nothing, and brackets in
    a quoted token (``'('@4``, a repr: a quote after a character that is no letter or digit,
    to the same quote unescaped) count for nothing."""
    out, depth, quote, escaped = [open_], open_, None, False
    for i, c in enumerate(text):
        if quote is not None:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = None
        elif c in "'\"" and (i == 0 or not text[i - 1].isalnum()):
            quote = c
        elif c in "([":
            depth += 1
        elif c in ")]" and depth:
            depth -= 1
        out.append(depth)
    return out


def block_html(block: list | None, tag: str = "p", cls: str = "") -> str:
    """A block (``block_lines``) as HTML: its first line (a ``tag``, of class ``cls`` where
    given), the rest a list under it, a nested block a list item with its own list."""
    if not block:
        return ""
    attr = f' class="{cls}"' if cls else ""
    return f"<{tag}{attr}>{_esc(block[0])}</{tag}>" + _items_html(block[1:])


def _items_html(items: list) -> str:
    def one(x) -> str:
        return _esc(x) if isinstance(x, str) else _esc(x[0]) + _items_html(x[1:])

    return f"<ul>{''.join(f'<li>{one(x)}</li>' for x in items)}</ul>" if items else ""


def attention_text(a: float) -> str:
    """An attention weight: two decimals, or one significant digit below 0.01 (never 0.00)."""
    return f"{a:.2f}" if a >= 0.01 or a == 0 else f"{a:.1g}"


def attention_change(before: float, after: float, arrow: str = " -> ") -> str:
    """``0.84 -> 0.26``: an attention before and after an ablation, with three significant
    figures where two decimals would print a change as none (``0.0579 -> 0.0569``: a checked
    group's ablation that barely moves the attention)."""
    a, b = attention_text(before), attention_text(after)
    if a == b and before != after:
        a, b = f"{before:.3g}", f"{after:.3g}"
    return f"{a}{arrow}{b}"


def reason_lines(
    r: QKReasonRecord, max_pairs: int, indent: str, summary: MechanismSummary,
    said: dict[str, str] | None = None,
) -> list[str]:  # fmt: skip
    """``reason_block`` as printed lines, its heading at ``indent``."""
    return block_lines(reason_block(r, max_pairs, summary, said), indent)


def reason_block(
    r: QKReasonRecord, max_pairs: int, summary: MechanismSummary,
    said: dict[str, str] | None = None,
) -> list:  # fmt: skip
    """A QK reason as a block (``block_lines``): the score's always-on and specific parts,
    the specific part by roots (``root_block``) and its token checks (``token_checks_block``),
    by units at the two positions, and where each side comes from. ``said``
    (``reason_repeats``): where the same reason was given above, by part ("reason": the
    score, units and sides; "roots"; "checks"), each a group key: those parts point there
    ("as under g0 above": two head groups sharing a QK head printed its reason twice)."""
    said = said or {}
    head = f"QK {r.qk_head} reads {r.key_token!r}@{r.key} (attention {r.attention:.2f})"
    if "reason" in said:
        block: list = [f"{head}: as under {said['reason']} above"]
    else:
        block = [
            f"{head}: score {r.score:+.3g} = always-on {r.always_on:+.3g} "
            f"(mean q x mean k {r.mean_query_mean_key:+.3g}, q x mean k "
            f"{r.query_vs_mean_key:+.3g}, mean q x k {r.mean_query_vs_key:+.3g}) + specific "
            f"{r.specific:+.3g}"
        ]
    block += reason_parts(r, max_pairs, summary, said)
    if "reason" in said:
        return block
    heading, pairs = unit_pairs(r, max_pairs)
    if heading:
        units = [f"{p.value:+.3g}  {ref_text(p.query)}  x  {ref_text(p.key)}" for p in pairs]
        block.append([heading, *units] if units else heading)
    block += [x if len(x) > 1 else x[0] for side in SIDES if (x := side_from_block(r, side))]
    return block


def reason_parts(
    r: QKReasonRecord, max_pairs: int, summary: MechanismSummary, said: dict[str, str]
) -> list[list]:
    """The blocks a QK reason gives after its score, the printout's (``reason_block``) and the
    report's (``_reason_html``): its split by roots (``root_block``) and its token checks
    (``token_checks_block``), each one given above (``said``) a pointer there instead, and
    none that was given with the whole reason it belongs to."""
    out = []
    for part, has, whole, words in (
        ("roots", r.root_pairs, lambda: root_block(r, max_pairs), "specific by roots"),
        ("checks", r.token_checks, lambda: token_checks_block(r, summary),
         "each named token made the mean token"),
    ):  # fmt: skip
        if not has or said.get(part) == said.get("reason", ""):
            continue
        out.append([f"{words}: as under {said[part]} above"] if part in said else whole())
    return out


def _same_reason(a: QKReasonRecord, b: QKReasonRecord) -> bool:
    """Whether two reasons give the same score, units and sides (one QK head's at one query
    and key, under two head groups)."""
    fields = ("layer", "qk_head", "query", "key", "attention", "score", "mean_query_mean_key",
              "query_vs_mean_key", "mean_query_vs_key", "specific", "rest", "rest_share",
              "pairs", "query_at", "key_at", "query_sources", "key_sources")  # fmt: skip
    return all(getattr(a, f) == getattr(b, f) for f in fields)


ROOT_FIELDS = ("root_pairs", "root_parts", "token_parts", "own_pairs", "moved_pairs",
               "position_pairs")  # fmt: skip


def reason_repeats(summary: MechanismSummary) -> dict[tuple[str, int], dict[str, str]]:
    """The groups' QK reasons given before under another group, in the summary's order (the
    printout's, the report's, the panel's), by (group key, index in its ``qk``): where each
    part was given first (``reason_block``'s ``said``): "reason" (score, units, sides),
    "roots" and "checks" where this one has them and they are the same there."""
    first: dict[tuple, tuple[str, QKReasonRecord]] = {}  # (layer, qk head, query, key)
    parts: dict[tuple, dict[str, tuple[str, QKReasonRecord]]] = {}
    out = {}
    for g in summary.groups:
        for i, r in enumerate(g.qk):
            place = (r.layer, r.qk_head, r.query, r.key)
            if place not in first or not _same_reason(first[place][1], r):
                first[place] = (g.key, r)
                parts[place] = {}
                said = None
            else:
                said = {"reason": first[place][0]}
            known = parts[place]
            for part, fields in (("roots", ROOT_FIELDS), ("checks", ("token_checks",))):
                if not getattr(r, fields[0]):
                    continue
                earlier = known[part][1] if part in known else None
                if earlier is not None and all(
                    getattr(earlier, f) == getattr(r, f) for f in fields
                ):
                    if said is not None:
                        said[part] = known[part][0]
                else:
                    known[part] = (g.key, r)
            if said is not None:
                out[(g.key, i)] = said
    return out


def sources_said(summary: MechanismSummary) -> dict[str, str]:
    """The head groups (and head targets) whose QK sources every view gives under a target
    (``qk_sources_block``), each with the first such target's label: a source group's own
    line below points there rather than say its score and choice again."""
    out: dict[str, str] = {}
    for t in summary.targets:
        if reads_text(t, summary.tokens) and summary.qk_sources(t.node):
            out.setdefault(t.node, t.label)
        if t.predicting_group and summary.qk_sources(t.predicting_group):
            out.setdefault(t.predicting_group, t.label)
    return out


SOURCE_KINDS = ("roots", "heads", "features")  # a QK side's source lists (``SourceShare``)
LOWERING = 0.25  # a side's largest lowering source is named at this share of its largest raiser


def side_from_block(r: QKReasonRecord, side: str) -> list[str]:
    """Where one side of a QK reason comes from, a block (``block_lines``): its total, the
    largest raising source of each kind (root, head group, feature group; a reviewer found the
    largest, 30 features at the query, never named), largest first, then on a line of its own
    the largest lowering one where the side is below zero or it is at least ``LOWERING`` of the
    largest raiser (a side of -4.02 was listed by its raisers alone); empty where it has
    none."""
    sources = r.query_sources if side == "query" else r.key_sources
    total = r.query_at if side == "query" else r.key_at
    lists = [sources.get(c, []) for c in SOURCE_KINDS]
    raisers = sorted((x for xs in lists for x in xs[:1] if x.value > 0), key=lambda x: -x.value)
    lowering = [next((x for x in xs if x.value < 0), None) for xs in lists]
    lowest = min((x for x in lowering if x is not None), key=lambda x: x.value, default=None)
    below = total is not None and total < 0
    if lowest is not None and not (below or not raisers
                                   or -lowest.value >= LOWERING * raisers[0].value):  # fmt: skip
        lowest = None
    if not raisers and lowest is None:
        return []
    head = f"{side} side from" + ("" if total is None else f" ({total:+.3g} in all)") + ": "
    parts = [f"{x.name} {x.value:+.3g}" for x in raisers]
    lowered = [] if lowest is None else [f"lowered most by {lowest.name} {lowest.value:+.3g}"]
    if not parts:
        return [head + lowered[0]]
    return [head + "; ".join(parts), *lowered]


def side_from_text(r: QKReasonRecord, side: str) -> str:
    """``side_from_block`` in one line (joined by "; "); empty where it has none."""
    return "; ".join(side_from_block(r, side))


# A sparse graph (no error nodes) explains the replacement, whose probabilities can be far from
# the model's even where both rank the same token first (a reviewer's ' Z': 0.753 and 0.200).
# (a head's or a feature's target has no probability: "the probabilities", not its targets')
SPARSE_WORDS = ("sparse mode: the graph, the probabilities shown and the checks are the "
                "replacement's, except those said to be the model's, and can differ from the "
                "model's; --mode local explains the model's own prediction")  # fmt: skip


def sparse_words(summary: MechanismSummary) -> str:
    """``SPARSE_WORDS`` with the model's own most likely next token where the summary has it
    (``MechanismSummary.model_top``): a reviewer's sparse summary explained a near-tie of '9'
    and '8' where the model put '0' first, which only the trace's stderr said."""
    if summary.model_top is None:
        return SPARSE_WORDS
    return (f"{SPARSE_WORDS}; the model itself puts {summary.model_top!r} first "
            f"(p={probability_words(summary.model_top_probability)})")  # fmt: skip


# where the printout's and the report's definitions are, said where each used to stand
LEGEND_AT_END = "the legend at the end"
# at the head all the same (a reviewer's hooks read the raw logit, and one check's sign flipped)
DEMEANED_SHORT = "a logit's numbers are less the mean logit"
DIFFERENCE_SHORT = "a difference's numbers are of the two logits' difference"


def demeaned_short(summary: MechanismSummary) -> str:
    """What the summary's targets' numbers are of, for its head: a logit's less the mean logit,
    a difference's of the two logits (a reviewer's ``--vs-runner-up`` summary of ``'4' - '3'``
    alone was headed "a logit's numbers are less the mean logit"), both where it has both;
    empty where it has neither (head and feature targets)."""
    kinds = {t.negative is not None for t in summary.targets if t.kind == "logit"}
    return "; ".join(([DEMEANED_SHORT] if False in kinds else [])
                     + ([DIFFERENCE_SHORT] if True in kinds else []))  # fmt: skip


LEGEND_ID = "mechanisms-legend"  # the report's legend (its blocks), which its pointer links to
FLOWS_CLAUSES = (
    "exact flows: each group's total linear contribution to the target, through the graph's "
    "frozen attention and errors; what zeroing it does is its ablation check",
    DEMEANED_WORDS,
)
# The words of a group's lines and its QK reasons, said once (a reviewer new to the tool could
# not decode "always-on", "specific by roots", "against the means")
GROUPS_LEGEND = (
    "groups: heads at one block and query position reading one key (named '-> key'; "
    "'(brings 12%)' where that key brings under half their activation), or features at one "
    "block and position (with one concept label, where one fits); 'promotes': the "
    "tokens its writes raise most; 'brings': its flow split by the key position each part "
    "comes from",
)
QK_LEGEND = (
    "QK reasons (each 'QK h reads ...' line and the lines under it): a QK head's "
    "attention score at the key its group reads, split exactly",
    "always-on: what any query or key of the prompt shares: the mean query x the mean key "
    "(mean q x mean k), this query x the mean key (q x mean k), the mean query x this key "
    "(mean q x k); the means are over the prompt's queries after BOS and over the query's "
    "keys, and hold the biases and dense features",
    "specific: the rest, what this query and this key hold beyond the means: what sets this "
    "key apart from the others for this query (mean q x k sets a key apart for any query: "
    "where it is the larger, the why line says so)",
    "specific by roots: the specific part split by what each side traces back to (tokens, "
    "position vectors, errors, constants); the key's own: what the key position's token holds "
    "itself; moved to the key ('a'@5 -> @6): a token that heads at the key copied there; "
    "against the means: what the mean query and mean key take away from the token terms",
    "specific by units at the two positions: the same part split by the heads and features at "
    "the query and at the key, each unit's own vector (a token: its embedding alone, not what "
    "it reaches through other units); 'minus the mean's token '0' (not at this position)': a "
    "unit of the mean query or mean key that this query or key does not hold, which its "
    "deviation from that mean holds with a minus sign",
    "query side from, key side from: what writes each side's vector, by root, head group and "
    "feature group",
    "each named token made the mean token: that token's embedding replaced by the mean token's "
    "and the model rerun; 'as they say': the attention moved the way the terms naming the "
    "token say, at least half as far as their size alone moves it; 'in part': less far; "
    "'the other way': against them; 'little change': by less than "
    f"{LITTLE:g}; 'further than their size alone moves it (0.87)': the way they say, over "
    f"{RATIO:g}x as far as their size alone moves it (to the attention in brackets); 'this "
    "key's specific part not (+1.3 -> +1.4)': the attention moved as they say but the key's own "
    "specific part did not, another key took it (the one named as gained)",
    "what makes it attend there: the head groups whose ablation lowers the attention most "
    "through one side (query or key) alone; 'weak': that ablation does not halve it",
)
LEGEND_WIDTH = 110  # the printout's legend is prose: wrapped at this width
PROSE_BREAKS = (" ",)  # where ``fitted`` breaks the legend: any space (its lines are sentences)


def checks_legend_text(summary: MechanismSummary) -> str:
    """What an ablation check's line says and what its marks mean (``checks_legend_block`` in
    one text); empty where no group has checks."""
    block = checks_legend_block(summary)
    return " ".join(block[:3]) + "; " + "; ".join(block[3:]) if block else ""


def checks_legend_block(summary: MechanismSummary) -> list[str]:
    """What an ablation check's line says and what its marks mean (the printout's legend, as
    a block: ``block_lines``); empty where no group has checks."""
    if not any(g.checks for g in summary.groups):
        return []
    probability = ""
    if any(t.probability is not None for t in summary.targets):
        both = any(t.negative_probability is not None for t in summary.targets)
        whose = "both tokens'" if both else "its first token's"
        probability = (", with the target token's probability before and after (for a "
                       f"difference, {whose})")  # fmt: skip
    return [
        # (the report's words were its own: one source now, the report's column named)
        "the ablate lines (the report's ablation column): the group zeroed; the change of the "
        "target predicted by the linear graph and measured with",
        f"{frozen_words(summary.mode)} and",
        f"{free_words(summary.mode)}{probability}",
        f"FLAGGED where a measured change has the other sign or is over {RATIO:g}x off "
        "('free 0.05x': the change measured free is 0.05 times the predicted one): there the "
        "linear graph is not to be trusted",
        *LN_CLAUSES,
    ]


def legend_blocks(summary: MechanismSummary) -> dict[str, list[str]]:
    """The definitions of the summary's words, by what they define (flows, groups, where the
    summary has them QK reasons and ablation checks), each a block (``block_lines``): the
    printout's legend (``legend_lines``), the viewer panel's (``reports.viewer``, which
    had none: a review read "always-on", "against the means", "weak" there undefined) and the
    report's (``mechanisms_html``, which had prose of its own)."""
    blocks = {"flows": list(FLOWS_CLAUSES), "groups": list(GROUPS_LEGEND)}
    if any(g.qk for g in summary.groups) or any(t.qk for t in summary.targets):
        blocks["qk"] = list(QK_LEGEND)
    if any(g.checks for g in summary.groups):
        blocks["checks"] = checks_legend_block(summary)
    return blocks


def legend_lines(summary: MechanismSummary, width: int = LEGEND_WIDTH) -> list[str]:
    """The printout's legend: its heading, then each definition (``legend_blocks``) as a block
    whose lines are wrapped at ``width`` (the legends were a 318- and a 1,156-character line:
    a review) by the printout's one rule (``fitted``: outside brackets where it can; textwrap
    broke inside parentheses: "(named '-> key'; '(brings 12%)' where that key" / "brings under
    half their activation)"),
    at any space (``PROSE_BREAKS``: prose, not lists of terms)."""
    out = ["legend:"]
    for line in (x for b in legend_blocks(summary).values() for x in block_lines(b, "  ")):
        out += fitted(line, width, breaks=PROSE_BREAKS)
    return out


def _percent(share: float) -> str:
    """A share in whole percent, rounded down (49.6% never reads as half); below 1%, ``<1%``."""
    if 0 < share < 0.01:
        return "<1%"
    return f"{math.floor(share * 100 + 1e-6)}%"


def _f1_range(low: float, high: float) -> str:
    return f"F1 {low:.2f}" + (f"-{high:.2f}" if high - low >= 0.005 else "")


def described(g: GroupRecord) -> bool:
    """Whether ``group_title`` describes the group beyond its name: a feature group without a
    concept of its own whose members' concepts the summary gave."""
    return g.concept is None and g.kind == "transcoder" and g.no_concept_share is not None


def majority_concept(g: GroupRecord) -> MemberConcept | None:
    """The members' concept a group without one is titled by (``group_title``): the largest,
    where the members carrying it bring at least ``MEMBERS_MAJORITY`` of its |flow|."""
    top = g.member_concepts[0] if described(g) and g.member_concepts else None
    return top if top is not None and top.share >= MEMBERS_MAJORITY else None


def read_text(x: TokenShare) -> str:
    """One token a feature group's flow reads, with its signed part: ``' home'@7 +7.55``."""
    return f"{x.token!r}@{x.pos} {_signed(x.flow)}"


def group_title(g: GroupRecord, describe: bool = True) -> str:
    """A group's name as the summary prints it: with a concept of its own, its name (which
    gives it); without, its members' concept when the members carrying it bring at least
    ``MEMBERS_MAJORITY`` of its |flow| (``[members: <concept>, 62% of flow, F1 0.42-0.50]``:
    the share and the F1s its support rests on); else, for features, what its flow reads and
    promotes, marked as no concept (``{no concept: reads ' is'@8, promotes ' Thursday'}``;
    ``describe`` False: not, where the line says it beside the name). A head group's name says
    the key it reads: its members' concepts are printed under it, not in its name."""
    if not described(g):
        return g.name  # (None: a group the summary gave no members' concepts, an older file)
    if (top := majority_concept(g)) is not None:
        return (f"{g.name} [members: {top.concept}, {_percent(top.share)} of flow, "
                f"{_f1_range(top.f1_low, top.f1_high)}]")  # fmt: skip
    if not describe or not (g.reads or g.promotes):
        return g.name
    words = []
    if g.reads:
        # signed: a token whose part runs against the group's flow is named first where it is
        # the largest (a reviewer's g13 of flow +0.863 read "reads 'n'@16", whose part -0.877)
        words.append("reads " + ", ".join(read_text(x) for x in g.reads[:2]))
    if g.promotes:
        words.append("promotes " + ", ".join(map(repr, g.promotes[:2])))
    return f"{g.name} {{no concept: {', '.join(words)}}}"


def member_concepts_blocks(g: GroupRecord, min_f1: float) -> list[list]:
    """The concepts a group without one has among its members, by share of its |flow|, as a
    block (``block_lines``: a heading, a line per concept, ``... 45% (14 members, F1
    0.42-0.50)``, then the share of none), and what its flow reads (feature groups) as
    another; none for a group with a concept or none of these. (One line of both ran to 309
    characters.)"""
    blocks: list[list] = []
    if g.member_concepts:
        blocks.append([
            "members' concepts by share of its |flow|:",
            *(f"{c.concept} {_percent(c.share)} ({c.members} member"
              f"{'s' if c.members > 1 else ''}, {_f1_range(c.f1_low, c.f1_high)})"
              for c in g.member_concepts),
            f"none (or F1 below {min_f1:.2g}) {_percent(g.no_concept_share or 0.0)}",
        ])  # fmt: skip
    elif g.no_concept_share is not None and g.kind == "transcoder":  # (what its title says)
        blocks.append([f"no member has a concept of F1 {min_f1:.2g} or more"])
    if g.reads:
        blocks.append(["its flow reads " + ", ".join(map(read_text, g.reads))])
    return blocks


def member_concepts_text(g: GroupRecord, min_f1: float) -> str:
    """``member_concepts_blocks`` in one line (the report's table, the viewer's panel):
    ``members' concepts by share of its |flow|: ... 45% (14 members, F1 0.42-0.50), ...;
    none (or F1 below 0.3) 30%; its flow reads ...``; empty where there are none."""
    said = []
    for block in member_concepts_blocks(g, min_f1):
        head, rest = block[0], block[1:]
        said.append(head if not rest else f"{head} {', '.join(rest[:-1])}; {rest[-1]}")
    return "; ".join(said)


def format_summary(
    summary: MechanismSummary, max_pairs: int = PAIRS_SHOWN, every_check: bool = False
) -> str:
    """The summary as text (what ``python -m circuits.trace`` prints). A group's ablation
    checks are printed for the first target, and for the other targets counted in one line
    (how many agree in sign and how many are flagged; each is in the record, and
    ``every_check`` prints them all). A summary edited by hand is checked first, as its file
    would be (``checked_summary``)."""
    summary = checked_summary(summary)
    max_pairs = checked_count(max_pairs, "max_pairs", least=0)
    what = demeaned_short(summary)
    lines = [f"mechanisms ({what + '; ' if what else ''}how to read them: {LEGEND_AT_END}):"]
    if summary.mode == "sparse":
        lines.append(f"  ({sparse_words(summary)})")
    if untrained := summary.untrained_note():
        lines.append(f"  (note: {untrained})")
    names = {g.key: g for g in summary.groups}
    labels = {t.node: t.label for t in summary.targets}
    several = len(labels) > 1  # then each flow and check names its target

    def per_target(node: str) -> str:
        return f"{labels.get(node, node)} " if several else ""

    def short(key: str) -> str:
        return f"{key} {group_title(names[key])}"

    qk_blocks = qk_sources_blocks(summary)
    whys = why_blocks(summary)
    for t in summary.targets:
        head = f"target {t.label} = {t.value:.3g} {probability_text(t)}"
        if rival := rival_text(t):
            head += f"; {rival}"
        lines.append(head)
        consts = ", ".join(f"{constant_source(name)} {_signed(v)}"
                           for name, v in t.constants_by_source[:4])  # fmt: skip
        more = len(t.constants_by_source) - 4
        consts += f", {more} more" if more > 0 else ""
        consts = f" ({consts})" if consts else ""
        lines += block_lines([f"parts: tokens {_signed(t.tokens)}{token_shares_text(t)},",
                              f"constants {_signed(t.constants)}{consts}, errors "
                              f"{_signed(t.errors)}"], "  ")  # fmt: skip
        if reads := reads_text(t, summary.tokens):
            lines.append(f"  {reads}")
            lines += block_lines(own_attention_block(t, summary.tokens), "  ")
            for r in t.qk:
                lines += reason_lines(r, max_pairs, "    ", summary)
            lines += block_lines(qk_sources_block(summary, t.node), "    ")
        if t.predicting_group:
            g = names[t.predicting_group]
            if own := own_token_text(t, g.pos):
                lines.append(f"  {own}")
            spread = spread_text(g, t.node)
            lines.append(
                f"  {predicting_heading(g, t, summary.tolerance)}: {short(g.key)}, flow "
                f"{_signed(g.flow[t.node])}" + (f" ({spread})" if spread else "")
            )
            lines += block_lines(flagged_block(g, t, summary.tolerance), "    ")
            if stronger := stronger_text(g, t, summary):
                lines.append(f"    {stronger}")
            # (its flagged check stays right under it)
            lines += block_lines(whys.get(t.node), "    ")
            lines += block_lines(qk_blocks.get(t.node), "    ")
            if moved_text(t):
                lines.append(f"  {moved_text(t)}")
            others = [names[k] for k in t.head_groups[1:]]
            if others:
                lines.append("  next head groups there, by flow: " + "; ".join(
                    f"{short(o.key)} {_signed(o.flow[t.node])}" for o in others))  # fmt: skip
        lines.append("  top paths (root => target):")
        for p in [p for p in summary.paths if p.target == t.node]:
            # "=>" between steps: a head group's name holds "->" to the key it reads (a
            # reviewer read `... -> L0 19 heads @7 -> ' Wednesday'@6` as ending at the key)
            # (titles without their no-concept descriptions, which the groups give: a path of
            # four described groups ran to 285 characters)
            chain = " => ".join(group_title(names[k], False) for k in p.groups)
            # a long chain goes on under its first step, broken before a "=>" (one path ran
            # to 239 characters: a review)
            lines += fitted(f"    {_signed(p.flow):>8}  {chain}", more=" " * 14, breaks=(" => ",))
    if any(g.kind not in ("embedding", "error", "bias") for g in summary.groups):
        lines.append("groups:")  # (a layer-0 head target's are tokens alone: no bare heading)
    checks_legend = checks_legend_text(summary)
    if checks_legend:
        lines.append(f"  (how to read the ablate lines and their marks: {LEGEND_AT_END})")
    first = summary.targets[0].node if summary.targets else None
    by_node = {t.node: t for t in summary.targets}
    said, repeats = sources_said(summary), reason_repeats(summary)
    for g in summary.groups:
        if g.kind in ("embedding", "error", "bias"):
            continue
        flow = ", ".join(f"{per_target(node)}{_signed(g.flow[node])}"
                         for node in labels if node in g.flow)  # the targets' order  # fmt: skip
        # its writes together, the first few (a reviewer: an induction group copying ' dance'
        # read "promotes ' Grace'" alone, ' dance' second)
        extra = f" promotes {', '.join(map(repr, g.promotes[:PROMOTED_SHOWN]))}" \
            if g.promotes else ""  # fmt: skip
        brings = carried_text(g, first) if first is not None else ""
        if several and extra:  # its promoted tokens under a flow of each target (a line of
            # both ran to 280 characters: a review)
            lines += [f"  {g.key:>4} {group_title(g, False)}: flow {flow}", f"      {extra}"]
        else:
            lines.append(f"  {g.key:>4} {group_title(g, False)}: flow {flow}{extra}")
        if brings:  # (on the line above it ran to 190 characters)
            lines.append(f"       {per_target(first)}{brings}")
        for block in member_concepts_blocks(g, summary.settings.get("member_min_f1", 0.0)):
            lines += block_lines(block, "       ")
        lines += [f"       {x}" for x in writes_qk_lines(g, summary, said)]
        for i, r in enumerate(g.qk):
            lines += reason_lines(r, max_pairs, "       ", summary, repeats.get((g.key, i)))
        shown = [c for c in g.checks if every_check or c.target == first]
        rest = [] if every_check else [c for c in g.checks if c.target != first]
        for c in shown:  # its verdict beside the prediction, each measurement under it (one
            # line of the three ran to 250 characters)
            frozen, free, mark = check_texts(c, by_node.get(c.target), summary.tolerance)
            head = (f"ablate{': ' + labels.get(c.target, c.target) if several else ''}: "
                    f"predicted {_signed(c.predicted)}")  # fmt: skip
            # a long mark on its own line under the prediction (one line of both ran to 248
            # characters: a review)
            fits = len(f"       {head}  [{mark}]") <= PRINT_WIDTH
            head = [f"{head}  [{mark}]"] if fits else [head, f"[{mark}]"]
            lines += block_lines([*head, f"frozen attention {_signed(c.frozen)}{frozen}",
                                  f"free {_signed(c.free)}{free}"], "       ")  # fmt: skip
        lines += block_lines(attention_checks_block(g, summary), "       ")
        if rest:
            lines.append(
                f"       ablate, the other {len(rest)} target{'s' if len(rest) > 1 else ''}: "
                f"sign agrees with attention "
                f"frozen {sum(c.agree_frozen for c in rest)}, free "
                f"{sum(c.agree_free for c in rest)}; flagged {sum(c.flagged for c in rest)} "
                "(each in mechanisms.json)"
            )
    # the definitions once, after the content they define (a reviewer found a 330- and a
    # 1,300-character legend inside the first 40 lines, pushing the targets and groups down)
    return "\n".join([x for line in lines for x in fitted(line)] + legend_lines(summary))


CSS = """
.mech td, .mech th { font-size: 0.9em; }
.mech .flagged { background: #fde0dd; }
.mech .path { font-family: Menlo, Consolas, monospace; font-size: 0.85em; }
.mech ul { margin: 2px 0 2px 1.2em; padding: 0; }
.mech .legend { color: #444; }
.mech .legend p { margin: 6px 0 2px; }
"""


def _esc(text: str) -> str:
    from .html import escape

    return escape(text)


def _anchor(node_id: str) -> str:
    from .html import node_anchor

    return node_anchor(node_id)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3g}"


def _cls(x: float | None) -> str:
    return "" if x is None else ("pos" if x > 0 else "neg")


def _span(x: float | None) -> str:
    return f'<span class="{_cls(x)}">{_num(x)}</span>'


def _ref(ref: NodeRef | None, drawn: set[str]) -> str:
    text = _esc(ref_text(ref))
    if ref is not None and ref.id is not None and ref.id in drawn:
        return f'<a href="#{_anchor(ref.id)}">{text}</a>'
    return text


def _reason_html(
    r: QKReasonRecord, drawn: set[str], summary: MechanismSummary,
    said: dict[str, str] | None = None,
) -> str:  # fmt: skip
    """A QK reason as the report gives it: as ``reason_block`` (``said`` too), with its
    numbers coloured and its unit pairs linked to their rows."""
    said = said or {}
    head = f"QK {r.qk_head} reads {_esc(repr(r.key_token))}@{r.key} (attention {r.attention:.2f})"
    parts = [block_html(b, "div") for b in reason_parts(r, PAIRS_SHOWN, summary, said)]
    if "reason" in said:
        return f"<div>{head}: as under {_esc(said['reason'])} above</div>{''.join(parts)}"
    heading, listed = unit_pairs(r, PAIRS_SHOWN)
    pairs = "".join(
        f"<li>{_ref(p.query, drawn)} &times; {_ref(p.key, drawn)}: {_span(p.value)}</li>"
        for p in listed
    )
    units = (
        f"<div>{_esc(heading)}</div>" + (f"<ul>{pairs}</ul>" if pairs else "") if heading else ""
    )
    # each side's sources as the printout gives them (one text: a review found this section
    # listing a side's lowerers as what it holds, once the lists held them)
    sources = "".join(f"<div>{_esc(text)}</div>" for side in SIDES
                      if (text := side_from_text(r, side)))  # fmt: skip
    return (
        f"<div>{head}: score {_span(r.score)} = always-on {_span(r.always_on)} (mean query "
        f"&times; mean key {_span(r.mean_query_mean_key)}, this query &times; mean key "
        f"{_span(r.query_vs_mean_key)}, mean query &times; this key "
        f"{_span(r.mean_query_vs_key)}) + specific {_span(r.specific)}</div>{''.join(parts)}"
        f"{units}{sources}"
    )


def _checks_html(g: GroupRecord, target_names: dict[str, str],
                 targets: dict[str, TargetRecord], tolerance: float) -> str:  # fmt: skip
    rows = []
    for c in g.checks:
        cls = ' class="flagged"' if c.flagged else ""
        frozen, free, mark = check_texts(c, targets.get(c.target), tolerance)
        rows.append(
            f"<tr{cls}><td>{_esc(target_names.get(c.target, c.target))}</td>"
            f'<td class="num">{_num(c.predicted)}</td><td class="num">{_num(c.frozen)}'
            f'{_esc(frozen)}</td><td class="num">{_num(c.free)}{_esc(free)}</td>'
            f"<td>{_esc(mark)}</td></tr>"
        )
    if not rows:
        return ""
    head = ("<tr><th>target</th><th>predicted</th><th>frozen attention</th>"
            "<th>free</th><th></th></tr>")  # fmt: skip
    return f"<table>{head}{''.join(rows)}</table>"


def mechanisms_html(
    summary: MechanismSummary, drawn_ids: set[str] | None = None, untrained: bool = True
) -> str:
    """The section's HTML; ``drawn_ids``: the node ids that have a row in the node table;
    ``untrained``: whether to say which tokens the model never trained on (not in a page that
    says it at its top). ``summary`` is checked first, as its file would be
    (``checked_summary``)."""
    summary = checked_summary(summary)
    drawn = drawn_ids or set()
    names = {g.key: group_title(g) for g in summary.groups}
    target_names = {t.node: t.label for t in summary.targets}
    by_node = {t.node: t for t in summary.targets}
    # the definitions after the section's content, as in the printout, with a pointer here:
    # the printout's legend, a block each (it had prose of its own, which defined the checks'
    # words where no group had checks, and 'promotes' and 'brings' only beside QK reasons)
    blocks = "".join(block_html(b) for b in legend_blocks(summary).values())
    legend = f'<div id="{LEGEND_ID}" class="legend"><p><b>Legend.</b></p>{blocks}</div>'
    what = demeaned_short(summary)
    head = f"{what + '; ' if what else ''}how to read the flows, checks and marks: "
    parts = [
        '<div class="mech">',
        f"<p>{_esc(head[0].upper() + head[1:])}"
        f'<a href="#{LEGEND_ID}">{LEGEND_AT_END} of this section</a>.</p>',
    ]
    if summary.mode == "sparse":
        words = sparse_words(summary)
        parts.append(f"<p>{_esc(words[0].upper() + words[1:])}.</p>")
    if untrained and (note := summary.untrained_note()):
        parts.append(f"<p class='note'>Note: {_esc(note)}.</p>")
    qk_blocks = qk_sources_blocks(summary)
    whys = why_blocks(summary)
    said, repeats = sources_said(summary), reason_repeats(summary)
    for t in summary.targets:
        consts = ", ".join(f"{_esc(constant_source(name))} {_span(v)}"
                           for name, v in t.constants_by_source)  # fmt: skip
        consts = f" ({consts})" if consts else ""
        runner = f"; {_esc(rival)}" if (rival := rival_text(t)) else ""
        parts.append(
            f"<h3>Target {_esc(target_names[t.node])} = {t.value:.4g} "
            + _esc(probability_text(t))
            + f"{runner}</h3>"
            f"<p>parts: tokens {_span(t.tokens)}{_esc(token_shares_text(t))}, constants "
            f"{_span(t.constants)}{consts}, errors {_span(t.errors)}</p>"
        )
        if reads := reads_text(t, summary.tokens):
            parts.append(f"<p>{_esc(reads)}</p>")
            parts.append(block_html(own_attention_block(t, summary.tokens)))
            parts += [_reason_html(r, drawn, summary) for r in t.qk]
            parts.append(block_html(qk_sources_block(summary, t.node)))
        if t.predicting_group:
            heading = _esc(
                predicting_heading(summary.group(t.predicting_group), t, summary.tolerance)
            )
            own = own_token_text(t, summary.group(t.predicting_group).pos)
            if own:
                parts.append(f"<p>{_esc(own)}</p>")
            spread = spread_text(summary.group(t.predicting_group), t.node)
            spread = f" ({_esc(spread)})" if spread else ""
            flow = summary.group(t.predicting_group).flow[t.node]
            parts.append(f"<p>{heading}: <b>{_esc(t.predicting_group)}</b> "
                         f"{_esc(names[t.predicting_group])}, flow {_span(flow)}"
                         f"{spread}</p>")  # fmt: skip
            flagged = flagged_text(summary.group(t.predicting_group), t, summary.tolerance)
            if flagged:
                parts.append(f'<p class="neg">{_esc(flagged)}</p>')
            if stronger := stronger_text(summary.group(t.predicting_group), t, summary):
                parts.append(f"<p>{_esc(stronger)}</p>")
            parts.append(block_html(whys.get(t.node), cls="why"))
            parts.append(block_html(qk_blocks.get(t.node)))
            if moved_text(t):
                parts.append(f"<p>{_esc(moved_text(t))}</p>")
            others = "; ".join(f"<b>{_esc(k)}</b> {_esc(names[k])} "
                               f"{_span(summary.group(k).flow[t.node])}"
                               for k in t.head_groups[1:])  # fmt: skip
            if others:
                parts.append(f"<p>next head groups there, by flow: {others}</p>")
        paths = [p for p in summary.paths if p.target == t.node]
        if paths:
            items = "".join(
                f'<li class="path">{_span(p.flow)} '
                + " &rarr; ".join(f"{_esc(k)} {_esc(names[k])}" for k in p.groups)
                + "</li>"
                for p in paths
            )
            parts.append(f"<p>top paths, token to target:</p><ul>{items}</ul>")
    rows = []
    for g in summary.groups:
        if g.kind in ("embedding", "error", "bias"):
            continue
        flows = "<br>".join(f"{_esc(target_names[k])}: {_span(g.flow[k])}"
                            for k in target_names if k in g.flow)  # fmt: skip
        what = []
        if g.concept:
            what.append(f"concept: {_esc(g.concept)}")
        if members := member_concepts_text(g, summary.settings.get("member_min_f1", 0.0)):
            what.append(_esc(members))
        if g.promotes:  # what its members' writes raise most together, as printed
            what.append("promotes " + ", ".join(_esc(repr(x)) for x in g.promotes))
        what += [
            f"{_esc(target_names[k])}: {_esc(carried_text(g, k))}"
            for k in target_names
            if g.carried.get(k)
        ]
        if writes := writes_qk_text(g, summary, said):
            what.append(_esc(writes))
        what += [_reason_html(r, drawn, summary, repeats.get((g.key, i)))
                 for i, r in enumerate(g.qk)]  # fmt: skip
        members = ", ".join(
            f'<a href="#{_anchor(m)}">{_esc(m)}</a>' if m in drawn else _esc(m)
            for m in g.members[:12]
        ) + (" …" if len(g.members) > 12 else "")
        attention = block_html(attention_checks_block(g, summary), "div")
        rows.append(
            f"<tr><td><b>{_esc(g.key)}</b></td><td>{_esc(group_title(g))}<br>"
            f"<small>{members}</small>"
            f"</td><td>{flows}</td><td>{'<br>'.join(what)}</td>"
            f"<td>{_checks_html(g, target_names, by_node, summary.tolerance)}"
            f"{attention}</td></tr>"
        )
    if rows:
        parts.append(
            "<table><tr><th>group</th><th>members</th><th>flow</th><th>what it does</th>"
            "<th>ablation: predicted vs measured</th></tr>" + "".join(rows) + "</table>"
        )
    parts += [legend, "</div>"]
    return "\n".join(parts)
