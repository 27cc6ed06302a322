"""Mechanism summaries on probe prompts: does the summary name the head group that predicts,
the key it reads and why, and does the linear graph agree in sign with ablations?

    python benchmarks/mechanisms.py [--model default] [--prompts 40] [--min-correct 30]
        [--replacement DIR --dashboards-file FILE]   # another replacement set, its own labels

Targets (issue 14, item 3), per probe family, over the prompts the model gets right (its top
token is the expected one): in >= 90% of them the summary's predicting head group reads
the expected key and its QK reason meets the family's criterion (below); and the ablation
check agrees in sign with the measured effect for >= 90% of the summary's checked groups.

**Prompts.** For each family, ``--prompts`` prompts taken in turn from three sources: held-out
documents (``toy_models.data.examples(family, "heldout")``), documents in held-out forms
(``"heldout_forms"``), and frames written here (``NEW_FRAMES``, in no split of the corpus);
then more in the same order until ``--min-correct`` of them are prompts the model gets right
(at most ``--max-prompts``), so that every family's rates rest on as many prompts.
A prompt is a document's tokens cut just before one scored token (drawn with a seeded
generator among the document's candidates); the query is the last position ``q`` and the
generator's spans give the expected key(s):

- ``induction`` (repeat documents): a token of the second copy (not its first); key: the
  token after the earlier occurrence of the query's token in the first copy;
- ``subtoken_induction`` (names documents): a later sub-token of a repeated rare name, in a
  mention tokenized like an earlier one; keys: the same sub-token in every earlier mention
  tokenized alike, and in any earlier mention (tokenized otherwise, e.g. without the leading
  space at a document's start) every sub-token equal to the target that follows a sub-token
  equal to the query's;
- ``successor`` (successor documents; single-token items, not counting): an item; key: its
  ``span.previous``;
- ``operand_fetching`` (addition documents): an answer digit; keys: the digits of the same
  place in the operands, in every mention of them (the frames written here that say the
  operands before the equation mark those mentions as the operands' ``earlier`` spans; added
  on 2026-12-04 after 4 of 12 misses on the corpus-v5 default were groups reading such a
  mention's digit: a correction of the expected keys made after seeing misses, so the fourth
  draw below tests it).

**Pipeline.** ``circuits.trace``'s: the full graph with constants as nodes, the logit of the
expected token as the target (``--vs-runner-up``: its margin over the most likely other token,
the logit difference ``circuits.trace --vs-runner-up`` explains; ``--vs-other-item``, successor
only: its margin over the most likely other item of the same list, the question which item,
as ``circuits.trace --target-diff`` explains it), the automatic groups with
the unit dashboards' concept labels (when ``runs/dashboards`` holds a valid file for the
model), ``circuits.mechanisms.summarize`` with its ablation checks.

**Criteria** (from the summary's fields only):

- ``key``: the predicting head group's ``attends`` is an expected key (``key_top3``: any of the
  ``head_groups`` ranked at the query);
- ``reason`` (the group's first QK reason, i.e. its QK head with the largest flow, and the
  sources through the graph of what the query and the key position hold against the other
  side's deviation, ``query_at`` / ``key_at`` of ``QKReasonRecord``): for the
  induction families, the query side's largest positive root is the token embedding at ``q``
  (*the current token*), and among the key side's roots at other positions than the key, the
  largest positive one is the token just before the key: a token reaches the key's residual
  stream only through heads at the key reading it, so this is *what a previous-token head
  wrote there* (directly, or through the features it feeds). For successor and operand
  fetching, whose QK reason the issue leaves open, the reason is recorded for the key read
  and its specific part is positive (this key stands out for this query beyond both sides'
  always-on parts); ``key_own_token`` reports how often what the key holds comes first from
  its own token (the previous item, the operand digit) rather than from tokens moved there
  (in this model often the ``+`` an operand digit follows: its place). ``reason`` also needs
  ``key``;
- ``reason_head``: for the induction families, as ``reason`` but with the key side's largest
  positive head group itself at the key reading the position before it (heads are grouped by
  the key they read most, so heads that read the previous token only in part fall elsewhere);
- ``reason_match`` (looser, reported beside it; induction families): the query side's largest
  positive root and the key side's largest positive root at another position than the key are
  token embeddings of one and the same token, at or before ``q`` and before the key: the query
  and the key hold a shared earlier token. It contains ``reason`` (the current token and the
  token before the key are the same token) and admits a match on an earlier token, such as a
  name's first sub-token held at both places when its third is predicted;
- ``reason_pair`` (stricter, reported beside it): the largest positive single pair of the
  specific part has its query side at ``q`` and its key side at the key, and for the
  induction families the query side is the current token (the embedding at ``q``, a block-0
  feature there, or a block-0 head there reading ``q``) and the key side a head at the key
  reading the position before it, or a feature there whose largest input is such a head;
- ``reason_roots`` (induction families; added on 2026-12-02 after ``reason`` missed on
  subtoken induction, so read it as a second look, not a pre-registered target): the summary's
  QK reason split by roots on both sides at once (``QKReasonRecord.root_pairs``): among its
  listed token x token terms whose key side is a token moved to the key (not the key's own
  token), the largest positive one is the current token at ``q`` x the token at ``k - 1``;
  (since 2026-12-05, the eighteenth session, a reason lists the ``ROOT_PAIRS`` largest terms
  against the key's own roots and as many against roots moved to the key, where it listed the
  five largest of all: a moved term can no longer be crowded out of the list by terms against
  the key's own token, so the criterion reads closer to its definition);
  ``reason_roots_match``: that term pairs one and the same token (at or before ``q``, before
  the key): a match on a shared earlier token; ``root_own_first``: the largest positive token
  term overall is against the key's own token (the key is the kind of token the query reads,
  e.g. a name's later sub-token), reported beside them;
- ``top_term_causal`` (added 2026-12-05, a measurement, not a target): of the prompts whose
  reason the criterion accepts, the share whose largest printed root term names a key-side
  token that, made the mean token embedding with the model rerun (the reason's
  ``token_checks``), halves the head's attention; ``any_named_causal``: any named token does.
  A linear term credits what any token of the kind brings too, so this says how often the
  term the reader sees first is the token the attention needs;
- ``key_by_tokens`` (reported beside, added on 2026-12-03 in the eighth session after the
  successor key misses, so a second look, not a pre-registered target): the position whose
  token carries the largest positive part of the target's ``tokens``
  (``TargetRecord.tokens_by_position``, exact; ``top_token`` records it) is an expected key:
  where the prediction comes from, whether a head moves it or the current position's own
  layers compute on it (a joiner-less list's item is the query token itself, which no head
  moves);
- ``key_moved`` (reported beside, added on 2026-12-05 in the fifteenth session after
  reading the successor key misses on the four draws below, so a second look, not a
  pre-registered target): the key position, other than BOS, from which the heads at the query
  bring the largest positive flow (``TargetRecord.moved_by_position``, exact: every head's
  flow split by its z-pattern; ``moved_top`` records it) is an expected key. ``key`` reads the
  predicting group's ``attends``, the key its heads attend to *most*; a group named for the
  relation word of ``If today is Wednesday, then tomorrow is`` brings part of its flow from
  the item, and a joiner-less list's item is the query itself, which ``key_moved`` admits;
- ``key_named`` (added on 2026-12-05 in the nineteenth session, after reading the successor
  key misses of the five draws below, and written down before the sixth draw was run): the
  summary names the key the prediction comes from: ``key``, or the expected key is the query
  position itself and the summary says the current token carries the target's largest token
  part (``TargetRecord.current_token_share``, the line ``the current token ... carries its
  largest part by position``). A joiner-less list's item (``List: C E G I`` -> `` K``) is the
  query token, which no head moves; the predicting group, the largest mover from *another*
  position, cannot read it, and ``key`` misses it by construction (11 of the 26 successor
  misses over the five draws). On those five draws ``key_named`` would hold on 135 of 150
  right successor prompts (90.0%; per draw 76.7 / 86.7 / 90.0 / 96.7 / 100%): a criterion fitted
  after seeing them, so the sixth draw is its test. The relation sentences (``Yesterday was
  Thursday, so today is``: the relation word carries the largest token part, 11 misses)
  stay misses under it;
- ``sign``: a check's ``agree_frozen`` / ``agree_free`` (``circuits.mechanisms``). Beside
  them, a candidate for predicting the free measurement that the summary does not print:
  ``sign_agree_first_order_free``, the group's first-order change with attention and
  LayerNorm free (``circuits.interventions.first_order``: the graph's prediction plus what the
  group's writes do, to first order, to later attention patterns) against the free
  measurement, and ``free_disagreements_explained_by_first_order``, the same among the checks
  where the graph and the free measurement disagree. ``sign_agree_free_ln_held``: the free
  rerun with the LayerNorm scales held (``EffectCheck.free_ln_held``), and
  ``free_disagreements_from_layernorm`` the share of the free disagreements that it does
  not have: what the summary marks "from the LayerNorm"; ``sign_agree_free_final_ln_held`` and
  ``free_disagreements_from_final_layernorm`` the same with only the final LayerNorm's scale
  held (``EffectCheck.free_final_ln_held``): what it marks "from the final LayerNorm";
  ``sign_agree_free_attention_held`` and ``free_disagreements_from_attention`` the same with
  the attention patterns held (``EffectCheck.free_attention_held``);
- ``qk sources`` (``qk_source_fields``): each side's QK source of the predicting group's
  first QK reason (``circuits.mechanisms``: of the head groups raising that side most and
  those at its position, the one whose ablation lowers the attention most through that side)
  is in the summary with checks (``GroupRecord.writes_qk``; its record keeps its rank, the
  groups tested, how many raise the side and how many tested sit at its position);
  ``key_source_halves`` / ``query_source_halves``: ablating that side's one (attention free)
  at least halves the predicting group's attention through that side alone
  (``AttentionCheck``), the reason's side tested by intervention; ``key_source_previous_token``:
  the key side's is the heads at the key reading the token before it. ``qk_writer_checks`` and
  ``qk_writer_sign_agree_free``: those groups' checks, part of ``checks``, and their free
  agreement (their value path is what the graph predicts; much of their effect is through
  attention).

**A fresh draw** (written on 2026-12-02 before it was run, the seventh session): ``--seed
4321`` draws new prompts from the same sources and frames (the results go to
``mechanisms_{model}_seed4321.json``). Its targets: ``key`` >= 90%, sign agreement with
attention frozen >= 90%, and for the induction families ``reason_roots`` >= 90%, the criterion
on the line the summary prints first for a QK reason (``specific by roots``: both sides split
by roots at once). On seed 1234 the 5 induction prompts that missed ``reason`` all had
``reason_roots``: read one side at a time, the key side's largest moved root was the
document's first tokens (which the query side holds as well), not ``k - 1``; the fresh draw
tests whether ``reason_roots`` holds on prompts nobody has looked at. A third draw, ``--seed 9876``
(2026-12-03, the same targets), tests the first two again. A fourth, ``--seed 2468`` (written
on 2026-12-04 before it was run, after the operand keys took in every mention of an operand):
the same targets, on prompts nobody has looked at. A fifth, ``--seed 1357`` (written on
2026-12-05 before it was run, the seventeenth session, with the change it tests): a head's key
is now the key its activation comes from most (the largest term of its z-pattern
``A[q, k] (x_k . w_v + b_V)``, ``circuits.attribution._read_keys``), no longer its attention's
argmax, which named a sink (BOS) for heads parking most of their attention there while bringing
another token (found on a trace of a sentence of no template, not on these draws; the first
draw rerun with it before this was written: induction and subtoken induction unchanged,
successor 63.3 -> 70.0%, operand fetching 93.3 -> 100%). The same targets, on prompts nobody
has looked at; the four earlier draws are rerun beside it. A sixth, ``--seed 8642`` (written
on 2026-12-05 before it was run, the nineteenth session): the same targets, and
``key_named`` >= 90% for successor, on prompts nobody has looked at; the five earlier draws
are rerun beside it. ``targets_met`` gives ``key_90``, ``key_named_90``, ``reason_90``,
``reason_roots_90`` and ``sign_90_frozen`` for every draw. Each record also holds how sure
the model was: ``probability``, ``runner_up`` and ``margin`` (the target's logit minus the
runner-up's).

For the induction families each record also holds both sides' largest positive roots as fields
(``query_root``, ``key_moved_root``: kind, position, token), and ``reason_misses`` counts the
prompts whose key is right but whose ``reason`` is not, by what the key side leads with
instead: a token the query side leads with too (``shared_token``), the document's first token
(``document_start``), or something else.

Writes benchmarks/results/mechanisms_{model}.json: per family the rates, counts and CPU
seconds per prompt, and every prompt's record (text, query, expected keys, the group named,
its key, its top pair, the criteria, the positions holding a token the model never trained on:
``untrained_positions``, counted per source, since frames written here can hold such tokens).
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from toy_models.cli import (  # noqa: E402
    ArgumentParser,
    UserError,
    count_arg,
    file_arg,
    int_in,
    path_arg,
    path_text,
    positive_int,
    run_cli,
    seed_arg,
)

RESULTS = Path(__file__).parent / "results"
FAMILIES = {  # probe family -> corpus family
    "induction": "repeat",
    "subtoken_induction": "names",
    "successor": "successor",
    "operand_fetching": "addition",
}
INDUCTION = ("induction", "subtoken_induction")
SOURCES = ("heldout", "heldout_forms", "new_frames")
SEED = 1234
# Prompts per family a command line may ask for: each is a traced graph (about a second), so
# 10000 is hours a family, 50 times the default's 200 (a fuzz pass's 10**11 built prompts
# without end before the first graph)
MAX_PROMPTS = 10_000
# What the graph explains besides the expected token's logit: --vs-runner-up, --vs-other-item
# (the contrast's name, its file suffix, and the "target" the result file records).
CONTRASTS = {
    None: ("", "logit"),
    "runner_up": ("_vs_runner_up", "margin over the runner-up"),
    "other_item": ("_vs_other_item", "margin over the list's most likely other item"),
}


# ----------------------------------------------------------------- frames written here
@dataclass
class Doc:
    """A document and the character spans that make its probes (the generators' Example
    when it comes from ``toy_models.data``)."""

    text: str
    spans: list = field(default_factory=list)


class _Builder:
    def __init__(self):
        self.text = ""

    def add(self, s: str) -> None:
        self.text += s

    def span(self, value: str, kind: str, **fields):
        from toy_models.data import Span

        start = len(self.text)
        self.text += value
        return Span(start, len(self.text), kind, value, **fields)


def new_repeat(rng: random.Random) -> Doc:
    from toy_models.data import REPEAT_WORDS

    frames = (("Remember these words:", ". Now say them again:", "."),
              ("", " <=>", ""), ("Copy:", " // Copy:", " ok"))  # fmt: skip
    before, middle, after = rng.choice(frames)
    seg = " " + " ".join(rng.choice(REPEAT_WORDS) for _ in range(rng.randint(5, 9)))
    b = _Builder()
    b.add(before)
    first = b.span(seg, "first")
    b.add(middle)
    second = b.span(seg, "second", earlier=first)
    b.add(after)
    return Doc(b.text, [first, second])


def new_names(rng: random.Random) -> Doc:
    from toy_models.data import rare_name

    name = rare_name(rng, "heldout")
    frames = ("Our guide {A} waved at us. Everyone followed {A} up the hill.",
              "Dear {A}, thanks for the book. Best wishes to {A} and the family.",
              "The winner was {A}! Congratulations again, {A}.")  # fmt: skip
    head, middle, tail = rng.choice(frames).split("{A}")
    b = _Builder()
    b.add(head)
    first = b.span(name, "name", rare=True)
    b.add(middle)
    second = b.span(name, "name", rare=True, earlier=first)
    b.add(tail)
    return Doc(b.text, [first, second])


def new_successor(rng: random.Random) -> Doc:
    from toy_models.data import ORDERED_LISTS

    sequence = rng.choice(("weekdays", "months", "number_words", "ordinals"))
    items = ORDERED_LISTS[sequence]
    joiner = rng.choice((" => ", " ~ ", " :: "))
    start = rng.randrange(len(items) - 5)
    b = _Builder()
    b.add(rng.choice(("Sequence: ", "Keep going: ", "")))
    previous, spans = None, []
    for i in range(rng.randint(3, 5)):
        if i:
            b.add(joiner)
        span = b.span(items[start + i], "item", sequence=sequence, previous=previous, step=1)
        if previous is not None:
            spans.append(span)
        previous = span
    return Doc(b.text, spans)


def new_addition(rng: random.Random) -> Doc:
    """A problem in a frame written here; a frame that says the operands before the equation
    marks those mentions as the operands' ``earlier`` occurrences (their digits are keys too)."""
    a, b_ = rng.randrange(10, 1000), rng.randrange(10, 1000)
    frames = ("Add them up: {a} plus {b} gives {eq}.", "({eq})", "Sum of {a} and {b}: {eq}")
    frame = rng.choice(frames)
    head, tail = frame.split("{eq}")
    b = _Builder()
    values, mentions = {"{a}": a, "{b}": b_}, {}
    for piece in re.split(r"(\{a\}|\{b\})", head):
        if piece in values:
            mentions[piece] = b.span(str(values[piece]), "operand", number=values[piece])
        else:
            b.add(piece)
    first = b.span(str(a), "operand", earlier=mentions.get("{a}"), number=a)
    b.add("+")
    second = b.span(str(b_), "operand", earlier=mentions.get("{b}"), number=b_)
    b.add("=")
    answer = b.span(str(a + b_), "answer", operands=(first, second), number=a + b_)
    b.add(tail)
    return Doc(b.text, [answer])


NEW_FRAMES = {"repeat": new_repeat, "names": new_names, "successor": new_successor,
              "addition": new_addition}  # fmt: skip


# ----------------------------------------------------------------- probe prompts
@dataclass
class Prompt:
    family: str
    source: str
    ids: list[int]  # BOS + the document, cut before the scored token
    target: int  # the token that comes next
    keys: list[int]  # expected key positions
    text: str
    others: list[int] = field(default_factory=list)  # successor: the list's other items


def other_items(tokenizer, span, target: int) -> list[int]:
    """The other items of a successor item's list (``span.sequence``), each as the single
    token the target is written as (with its leading space, or none); items that take more
    than one token in that form are left out."""
    from toy_models.data import ORDERED_LISTS

    lead = " " if tokenizer.decode([target]).startswith(" ") else ""
    out = []
    for item in ORDERED_LISTS[span.sequence]:
        ids = tokenizer.encode(lead + item, add_special_tokens=False).ids
        if len(ids) == 1 and ids[0] != target:
            out.append(ids[0])
    return out


def _positions(offsets, span) -> list[int]:
    return [i for i, (s, e) in enumerate(offsets) if i > 0 and s < span.end and e > span.start]


def candidates(family: str, ids: list[int], offsets, spans) -> list[tuple[int, list[int]]]:
    """(target position, expected keys) of every probe of one document."""
    out = []
    if family == "induction":
        for span in [s for s in spans if s.kind == "second"]:
            first, second = _positions(offsets, span.earlier), _positions(offsets, span)
            if len(first) != len(second) or [ids[i] for i in first] != [ids[i] for i in second]:
                continue
            out += [(second[j], [first[j]]) for j in range(1, len(second))]
    elif family == "subtoken_induction":
        for span in [s for s in spans if s.kind == "name" and s.rare and s.earlier is not None]:
            pos = _positions(offsets, span)
            mentions = [_positions(offsets, e) for e in span.occurrences_before()]
            alike = [e for e in mentions if [ids[i] for i in e] == [ids[i] for i in pos]]
            if len(pos) >= 2 and alike:
                for j in range(1, len(pos)):
                    keys = {e[j] for e in alike} | {
                        e[i + 1] for e in mentions for i in range(len(e) - 1)
                        if ids[e[i]] == ids[pos[j - 1]] and ids[e[i + 1]] == ids[pos[j]]
                    }  # fmt: skip
                    out.append((pos[j], sorted(keys)))
    elif family == "successor":
        for span in [s for s in spans if s.kind == "item" and s.previous is not None]:
            if span.sequence == "counting":
                continue
            item, prev = _positions(offsets, span), _positions(offsets, span.previous)
            if len(item) == 1 and len(prev) == 1:
                out.append((item[0], prev))
    else:
        for span in [s for s in spans if s.kind == "answer"]:
            answer = _positions(offsets, span)
            # every mention of each operand: the equation's, and any earlier one
            mentions = [_positions(offsets, m) for o in span.operands
                        for m in (*o.occurrences_before(), o)]  # fmt: skip
            for j, p in enumerate(answer):
                place = len(answer) - 1 - j
                keys = sorted({d[-1 - place] for d in mentions if place < len(d)})
                if keys:
                    out.append((p, keys))
    return out


def build_prompts(tokenizer, family: str, n: int, n_ctx: int, seed: int = SEED) -> list[Prompt]:
    """``n`` prompts of a probe family, the sources taking turns (module docstring)."""
    from toy_models.data import examples

    corpus = FAMILIES[family]
    rng = random.Random(f"{seed}-{family}")
    streams = {s: examples(corpus, s, seed) for s in SOURCES[:2]}
    prompts: list[Prompt] = []
    for _ in range(n * 50):
        if len(prompts) >= n:
            break
        source = SOURCES[len(prompts) % len(SOURCES)]
        if source == "new_frames":
            doc = NEW_FRAMES[corpus](rng)
            text, spans = doc.text, doc.spans
        else:
            ex = next(streams[source])
            text, spans = ex.text, list(ex.spans)
        enc = tokenizer.encode(text)
        ids, offsets = enc.ids, [tuple(o) for o in enc.offsets]
        found = [(p, keys) for p, keys in candidates(family, ids, offsets, spans)
                 if 2 <= p <= n_ctx]  # fmt: skip
        if not found:
            continue
        p, keys = rng.choice(found)
        others = []
        if family == "successor":
            item = next(s for s in spans if s.kind == "item" and p in _positions(offsets, s))
            others = other_items(tokenizer, item, ids[p])
        prompts.append(Prompt(family, source, ids[:p], ids[p], keys,
                              tokenizer.decode(ids[1:p], skip_special_tokens=False),
                              others))  # fmt: skip
    return prompts


# ----------------------------------------------------------------- criteria
def token_like(ref, q: int) -> bool:
    """The current token at ``q``: its embedding, a block-0 feature there, or a block-0 head
    there reading ``q`` itself."""
    if ref is None or not ref.present or ref.pos != q:
        return False
    if ref.kind == "embedding":
        return True
    return ref.layer == 0 and (
        ref.kind == "transcoder" or (ref.kind == "lorsa" and ref.attends == q)
    )


def previous_token_written(ref, k: int) -> bool:
    """Written at ``k`` by a previous-token head: a head at ``k`` reading ``k - 1``, or a
    feature at ``k`` whose largest input is such a head."""
    if ref is None or not ref.present or ref.pos != k:
        return False
    if ref.kind == "lorsa":
        return ref.attends == k - 1
    mi = ref.main_input
    return ref.kind == "transcoder" and mi is not None and mi["kind"] == "lorsa" and \
        mi["pos"] == k and mi["attends"] == k - 1  # fmt: skip


def _first_positive(shares):
    return next((x for x in shares if x.value > 0), None)


def leading_roots(reason, k: int):
    """The query side's largest positive root, and the key side's largest positive root at
    another position than the key ``k`` (what was moved there); None where there is none."""
    query_root = _first_positive(reason.query_sources.get("roots", []))
    moved = _first_positive([x for x in reason.key_sources.get("roots", []) if x.pos != k])
    return query_root, moved


def sources_ok(family: str, reason, q: int, k: int, by_head: bool = False) -> bool:
    """The ``reason`` criterion on the sources of each side of the specific part
    (``by_head``: ``reason_head``'s key side)."""
    if family not in INDUCTION:
        return reason.specific > 0
    query_root, moved = leading_roots(reason, k)
    if query_root is None or query_root.kind != "embedding" or query_root.pos != q:
        return False
    if by_head:
        head = _first_positive(reason.key_sources.get("heads", []))
        return head is not None and head.pos == k and head.attends == k - 1
    return moved is not None and moved.kind == "embedding" and moved.pos == k - 1


def shared_token(reason, ids: list[int], q: int, k: int) -> bool:
    """``reason_match``: both sides' largest positive roots (the key's at another position
    than ``k``) are embeddings of the same token, at or before ``q`` and before ``k``."""
    query_root, moved = leading_roots(reason, k)
    return (
        query_root is not None and moved is not None
        and query_root.kind == "embedding" and moved.kind == "embedding"
        and query_root.pos <= q and moved.pos < k and ids[query_root.pos] == ids[moved.pos]
    )  # fmt: skip


def score_prompt(prompt: Prompt, summary) -> dict:
    q = len(prompt.ids) - 1
    target = summary.targets[0]
    out = {"named": target.predicting_group is not None}
    top_token = next((x for x in target.tokens_by_position if x.flow > 0), None)
    out["key_by_tokens"] = top_token is not None and top_token.pos in prompt.keys
    if top_token is not None:
        out["top_token"] = [top_token.pos, top_token.token, round(top_token.flow, 4)]
    moved = max((x for x in target.moved_by_position if x.pos != 0 and x.flow > 0),
                key=lambda x: x.flow, default=None)  # fmt: skip
    out["key_moved"] = moved is not None and moved.pos in prompt.keys
    if moved is not None:
        out["moved_top"] = [moved.pos, moved.token, round(moved.flow, 4)]
    if not out["named"]:
        none = {"key": False, "key_named": False, "key_top3": False, "reason": False,
                "reason_head": False, "reason_match": False, "reason_roots": False,
                "reason_roots_match": False}  # fmt: skip
        return out | none | {"reason_pair": False}
    group = summary.group(target.predicting_group)
    ranked = [summary.group(k) for k in target.head_groups]
    out["group"] = group.name
    out["attends"] = group.attends
    out["key"] = group.attends in prompt.keys
    out["key_top3"] = any(g.attends in prompt.keys for g in ranked)
    out["key_named"] = out["key"] or (
        group.pos == q and q in prompt.keys and target.current_token_share(q) is not None
    )
    reason = group.qk[0] if group.qk else None
    positive = [p for p in reason.pairs if p.value > 0] if reason else []
    top = positive[0] if positive else None
    k = group.attends
    ok = top is not None and top.query.present and top.query.pos == q and top.key.present \
        and top.key.pos == k  # fmt: skip
    if prompt.family in INDUCTION:
        ok = ok and token_like(top.query, q) and previous_token_written(top.key, k)
    out["reason_pair"] = bool(ok) and out["key"]
    out["reason"] = out["key"] and reason is not None and sources_ok(prompt.family, reason, q, k)
    out["reason_head"] = (
        out["key"] and reason is not None and sources_ok(prompt.family, reason, q, k, by_head=True)
    )
    out["reason_match"] = (
        out["key"] and prompt.family in INDUCTION and reason is not None
        and shared_token(reason, prompt.ids, q, k)
    )  # fmt: skip
    if reason is not None and prompt.family in INDUCTION:
        # What each side's largest positive root is, as fields (the failure classes below).
        query_root, moved = leading_roots(reason, k)
        out["query_root"] = _root_fields(query_root, prompt.ids)
        out["key_moved_root"] = _root_fields(moved, prompt.ids)
    if reason is not None:
        out |= root_criteria(prompt.family, reason, prompt.ids, q, k, out["key"])
    key_root = _first_positive(reason.key_sources.get("roots", [])) if reason else None
    out["key_own_token"] = (
        key_root is not None and key_root.kind == "embedding" and (key_root.pos == k)
    )
    if reason is not None:
        from reports.mechanisms import ref_text

        if top is not None:
            out["top_pair"] = [ref_text(top.query), ref_text(top.key), top.value]
        out["specific_share"] = reason.specific / reason.score if reason.score else None
        out |= token_check_fields(reason)
        out["sources"] = {
            side: {c: [[x.name, round(x.value, 4)] for x in xs] for c, xs in d.items()}
            for side, d in (("query", reason.query_sources), ("key", reason.key_sources))
        }
    out |= qk_source_fields(summary, group, k)
    checks = [c for g in summary.groups for c in g.checks]
    writers = [c for g in summary.groups if g.writes_qk for c in g.checks]
    out["qk_writer_checks"] = len(writers)
    out["qk_writer_agree_free"] = sum(c.agree_free for c in writers)
    out["checks"] = len(checks)
    out["agree_frozen"] = sum(c.agree_frozen for c in checks)
    out["agree_free"] = sum(c.agree_free for c in checks)
    out["agree_free_ln_held"] = sum(bool(c.agree_free_ln_held) for c in checks)
    out["disagree_free_from_layernorm"] = sum(
        not c.agree_free and bool(c.agree_free_ln_held) for c in checks
    )
    out["agree_free_final_ln_held"] = sum(bool(c.agree_free_final_ln_held) for c in checks)
    out["agree_free_attention_held"] = sum(bool(c.agree_free_attention_held) for c in checks)
    out["disagree_free_from_attention"] = sum(
        not c.agree_free and bool(c.agree_free_attention_held) for c in checks
    )
    out["disagree_free_from_final_layernorm"] = sum(
        not c.agree_free and bool(c.agree_free_final_ln_held) for c in checks
    )
    out["flagged"] = sum(c.flagged for c in checks)
    return out


def qk_source_fields(summary, group, k: int) -> dict:
    """The head groups the summary gives the predicting ``group`` as its QK sources
    (``GroupRecord.writes_qk``), per side: the source's place and key, its score, its rank by
    score among the groups ablated to choose it, and its ablation's effect on the group's
    attention (``AttentionCheck``, free; its QK heads weighted by flow): ``<side>_source``
    (None when the side has none) and ``<side>_source_halves`` (the ablation at least halves
    the attention through that side alone, the other side's vectors clean, where the summary
    measured it: the QK reason's side tested by intervention). ``key_source_previous_token``:
    the key side's source sits at the key and reads the position before it (the
    previous-token heads of induction)."""
    out = {}
    for side in ("query", "key"):
        found = [(g, w) for g, w in summary.qk_sources(group.key) if w.side == side]
        a = None
        if found:
            g, w = found[0]
            a = g.attention_of(group.key)
            out[f"{side}_source"] = {
                "name": g.name, "pos": g.pos, "attends": g.attends, "layer": g.layer,
                "score": round(w.value, 4), "rank": w.rank, "tested": w.tested,
                "raisers": w.raisers, "at_position": w.at_position,
                "attention_before": None if a is None else round(a.mean_before, 4),
                "attention_after": None if a is None else round(a.mean_free, 4),
            }  # fmt: skip
        else:
            out[f"{side}_source"] = None
        after = None if a is None else a.mean_side(side)
        after = a.mean_free if after is None and a is not None else after
        if a is not None:
            out[f"{side}_source"]["attention_side_alone"] = round(after, 4)
        out[f"{side}_source_halves"] = a is not None and after < a.mean_before / 2
    key = out["key_source"]
    out["key_source_previous_token"] = key is not None and key["pos"] == k \
        and key["attends"] == k - 1  # fmt: skip
    return out


def token_check_fields(reason) -> dict:
    """What the reason's token checks (``TokenCheck``) say of its largest printed term: the
    key-side token of the larger of its first own and first moved term (``top_term_token``:
    position, token, attention after it is made the mean token) and whether that halves the
    head's attention (``top_term_causal``); ``any_named_causal``: whether any named token
    does; ``token_checks``: every check as [position, attention after]."""
    checks = {c.pos: c for c in reason.token_checks}
    terms = [p for p in reason.own_pairs[:1] + reason.moved_pairs[:1] if p.key.kind == "embedding"]
    top = max(terms, key=lambda p: p.value, default=None)
    out = {
        "token_checks": [[c.pos, round(c.attention, 4)] for c in reason.token_checks],
        "any_named_causal": any(c.attention < reason.attention / 2 for c in checks.values()),
    }
    if top is not None and top.key.pos in checks:
        c = checks[top.key.pos]
        out["top_term_token"] = [c.pos, c.token, round(c.attention, 4)]
        out["top_term_causal"] = c.attention < reason.attention / 2
    return out


def root_criteria(family: str, reason, ids: list[int], q: int, k: int, key: bool) -> dict:
    """``reason_roots``, ``reason_roots_match`` (induction families) and ``root_own_first``
    from a QK reason's root pairs (module docstring), with the pair they read as fields."""
    tokens = token_pairs(reason)
    pair = next((p for p in tokens if p.key.pos != k), None)
    out = {"root_own_first": bool(tokens) and tokens[0].key.pos == k}
    if pair is not None:
        out["root_pair"] = {
            "query": _root_fields(pair.query, ids),
            "key": _root_fields(pair.key, ids),
            "value": round(pair.value, 4),
        }
        out["root_parts"] = {name: round(v, 4) for name, v in reason.root_parts.items()}
    if family in INDUCTION:
        right = key and pair is not None
        out["reason_roots"] = right and pair.query.pos == q and pair.key.pos == k - 1
        out["reason_roots_match"] = (
            right and pair.query.pos <= q and pair.key.pos < k
            and ids[pair.query.pos] == ids[pair.key.pos]
        )  # fmt: skip
    return out


def token_pairs(reason) -> list:
    """The QK reason's listed root pairs between two token embeddings with a positive term,
    largest first."""
    return sorted(
        (p for p in reason.root_pairs
         if p.value > 0 and p.query.kind == "embedding" and p.key.kind == "embedding"),
        key=lambda p: -p.value,
    )  # fmt: skip


def first_order_agreement(summary, full, slopes, tolerance: float) -> dict:
    """Per check of ``summary``: its group's first-order change with attention and errors free
    (``slopes``: ``circuits.interventions.first_order`` of ``full``) against the free
    measurement; counts of sign agreement overall and among the checks where the graph's
    prediction and the free measurement disagree."""
    from circuits.mechanisms import signs_agree

    row_of = {full.ids[int(i)]: j for j, i in enumerate(full.is_kind("logit").nonzero())}
    out = {"agree_first_order_free": 0, "disagree_free": 0, "disagree_free_explained": 0}
    for g in summary.groups:
        members = [full.id_to_index[m] for m in g.members]
        for c in g.checks:
            first = -float(slopes[row_of[c.target], members].sum())
            agree = signs_agree(first, c.free, tolerance)
            out["agree_first_order_free"] += agree
            out["disagree_free"] += not c.agree_free
            out["disagree_free_explained"] += not c.agree_free and agree
    return out


def _root_fields(x, ids: list[int]) -> dict | None:
    """A root source as fields: its kind, position and (an embedding's) token id."""
    if x is None:
        return None
    token = ids[x.pos] if x.kind == "embedding" and x.pos is not None else None
    return {"kind": x.kind, "pos": x.pos, "token": token, "value": round(x.value, 4)}


def reason_misses(records: list[dict]) -> dict:
    """The induction families' ``reason`` misses among prompts whose key is right, by what
    the key side's largest moved root is instead: the token before the key is not it, but a
    token the query side also leads with (``shared_token``: a match on an earlier token,
    e.g. a name's first sub-token), the document's first token (``document_start``: position
    1, read by heads at an early key), or something else."""
    misses = [r for r in records if r.get("key") and not r.get("reason") and "query_root" in r]
    out = {"misses": len(misses), "shared_token": 0, "document_start": 0, "other": 0}
    for r in misses:
        moved = r.get("key_moved_root") or {}
        if r.get("reason_match"):
            out["shared_token"] += 1
        elif moved.get("pos") == 1:
            out["document_start"] += 1
        else:
            out["other"] += 1
    return out


# ----------------------------------------------------------------- the run
def concepts_for(
    replacement, tokenizer, model: str, mode: str, path: Path | None = None
) -> tuple[dict | None, str]:
    """Every unit's (concept, F1) from the dashboards file (default: the model's), when it is
    a valid one for this replacement set, as the trace gives them to the summary (labels at
    chance left out: ``Dashboards.summary_concepts``); else None and why."""
    from circuits.dashboards import default_path, read_file

    path = default_path(model, mode, replacement, tokenizer) if path is None else path
    if not path.exists():
        return None, f"no dashboards file {path} (run circuits.trace once to build it)"
    try:
        dash = read_file(path, replacement, tokenizer)
    except ValueError as exc:
        return None, str(exc)
    return dash.summary_concepts(), str(path)


def load_with_concepts(model: str, mode: str = "local") -> tuple:
    """The benchmarks' start: torch seeded, the model's shipped replacement set and tokenizer
    loaded, and its units' concepts (``concepts_for``): (replacement, tokenizer, concepts,
    where they came from)."""
    import torch

    from replacement.model import load_pretrained

    torch.manual_seed(0)
    replacement, tokenizer = load_pretrained(model)
    concepts, source = concepts_for(replacement, tokenizer, model, mode)
    return replacement, tokenizer, concepts, source


def right_prompts(replacement, tokenizer, per_family: int, seed: int):
    """The first ``per_family`` prompts of each probe family (``build_prompts``, draw
    ``seed``) that the model gets right, each as (family, prompt, tokens, run): the trace's
    run (local mode, constants as nodes)."""
    import torch

    from circuits.attribution import run_prompt

    for family in FAMILIES:
        done = 0
        for prompt in build_prompts(tokenizer, family, 200, replacement.cfg.n_ctx - 1, seed):
            if done >= per_family:
                break
            tokens = torch.tensor(prompt.ids)
            run = run_prompt(replacement, tokens, "local", constants=True)
            if int(run.logits[-1].argmax()) != prompt.target:
                continue
            yield family, prompt, tokens, run
            done += 1


def right_summaries(replacement, tokenizer, concepts, per_family: int, seed: int, check: bool):
    """``right_prompts``, each as (family, prompt, summary): the trace's pipeline (the expected
    token's logit as the target), then ``circuits.mechanisms.summarize`` with or without its
    ``check``s. The second looks (``benchmarks/paths.py``, ``benchmarks/check_sizes.py``) read
    these summaries."""
    from circuits.attribution import LogitTarget, attribute
    from circuits.mechanisms import summarize

    for family, prompt, tokens, run in right_prompts(replacement, tokenizer, per_family, seed):
        full = attribute(replacement, tokens, mode="local", run=run, tokenizer=tokenizer,
                         targets=[LogitTarget(prompt.target)])  # fmt: skip
        yield family, prompt, summarize(replacement, full, run, concepts=concepts, check=check)


def show_families(result: dict) -> None:
    """A second look's rates, one line per family (``result["families"]``)."""
    for family, part in result["families"].items():
        print(family, json.dumps(part))


def draw_main(argv, doc: str, name: str, measure, show=show_families) -> int:
    """The command of a second look over a draw's right prompts (``right_summaries``):
    ``--model``, ``--per-family``, ``--seed`` and ``--out`` (default
    ``benchmarks/results/{name}_{model}.json``), checked before any work; then the model with
    its concepts, ``measure(replacement, tokenizer, concepts, per_family, seed)`` (a dict of
    results), ``show(results)`` printing them, and the file written with the draw's settings
    and wall time."""
    parser = ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="zoo name or directory")
    parser.add_argument("--per-family", type=positive_int, default=8,
                        help="right prompts per probe family (default 8)")  # fmt: skip
    parser.add_argument("--seed", type=count_arg, default=SEED,
                        help="the probe draw (benchmarks/mechanisms.py's --seed; default "
                        "%(default)s)")  # fmt: skip
    parser.add_argument("--out", type=file_arg, help=f"result file (default: "
                        f"benchmarks/results/{name}_{{model}}.json)")  # fmt: skip
    args = parser.parse_args(argv)
    out = args.out or RESULTS / f"{name}_{Path(args.model).name}.json"
    from toy_models.files import check_writable_file, write_json_atomic

    # an earlier results file of this command is replaced, no other file (README.md was)
    check_writable_file(out, "--out", frozenset({"model", "seed", "per_family", "wall_seconds"}))
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    replacement, tokenizer, concepts, concept_source = load_with_concepts(args.model)
    result = {"model": args.model, "concepts": concept_source, "seed": args.seed,
              "per_family": args.per_family}  # fmt: skip
    with torch.no_grad():
        result |= measure(replacement, tokenizer, concepts, args.per_family, args.seed)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    show(result)
    write_json_atomic(out, result)
    print(f"wrote {out}")
    return 0


def run_family(
    replacement, tokenizer, prompts: list[Prompt], concepts, mode: str, at_least: int | None = None,
    min_correct: int = 0, contrast: str | None = None,
) -> dict:  # fmt: skip
    """Score ``prompts`` in order: the first ``at_least`` (default: all), then more until
    ``min_correct`` of the scored ones are prompts the model gets right. ``contrast``
    (``CONTRASTS``): explain the target's logit minus the runner-up's or the most likely other
    item's of its list, instead of its logit."""
    import torch

    from circuits.attribution import LogitDiffTarget, LogitTarget, attribute, run_prompt
    from circuits.interventions import first_order
    from circuits.mechanisms import TOLERANCE, runner_up, summarize
    from toy_models.tokenizer import token_text

    records = []
    untrained = replacement.model.untrained_tokens or frozenset()
    at_least = len(prompts) if at_least is None else at_least
    for i, prompt in enumerate(prompts):
        if i >= at_least and sum(r["correct"] for r in records) >= min_correct:
            break
        t0 = time.process_time()
        tokens = torch.tensor(prompt.ids)
        run = run_prompt(replacement, tokens, mode, constants=True)
        logits = run.logits[-1]
        runner = runner_up(logits, prompt.target)
        correct = int(logits.argmax()) == prompt.target
        record = {
            "source": prompt.source,
            "text": prompt.text[-160:],
            "query": len(prompt.ids) - 1,
            "keys": prompt.keys,
            "target": tokenizer.decode([prompt.target]),
            "correct": correct,
            # How sure the model is: the target's probability, and its logit minus that of
            # the most likely other token (negative where the prompt is not right).
            "probability": round(float(logits.softmax(-1)[prompt.target]), 4),
            "runner_up": token_text(tokenizer, runner),
            "margin": round(float(logits[prompt.target] - logits[runner]), 4),
            "untrained_positions": [p for p, t in enumerate(prompt.ids) if t in untrained],
        }
        target = LogitTarget(prompt.target)
        if contrast == "runner_up":
            target = LogitDiffTarget(prompt.target, runner)
        elif contrast == "other_item":  # the list's most likely other item (successor)
            if not prompt.others:
                raise UserError(f"--vs-other-item: no other item of one token for {prompt.text!r}")
            other = max(prompt.others, key=lambda t: float(logits[t]))
            record["other_item"] = token_text(tokenizer, other)
            target = LogitDiffTarget(prompt.target, other)
        if correct:
            full = attribute(replacement, tokens, mode=mode, targets=[target],
                             tokenizer=tokenizer, run=run)  # fmt: skip
            summary = summarize(replacement, full, run, concepts=concepts)
            record |= score_prompt(prompt, summary)
            record["closure"] = full.settings["closure_error"]["max_abs"]
        record["cpu_seconds"] = round(time.process_time() - t0, 3)  # the pipeline's own
        if correct:  # a measurement of the benchmark's, not timed
            slopes = first_order(replacement, full, freeze_errors=False, run=run)
            record |= first_order_agreement(summary, full, slopes, TOLERANCE)
        records.append(record)
    return family_rates(prompts[0].family if prompts else None, records) | {"records": records}


def qk_source_sides(records: list[dict]) -> dict:
    """How the predicting groups' QK sources were chosen (``qk_source_fields``), over the sides
    of ``records`` that name one: ``named``; ``at_position``, those naming one of the other
    groups at the side's own position (tested after the raisers); ``last_raiser``, those
    naming the last of more than one raiser tested; ``bound``, those of them where more raise
    the side than were tested (testing stopped at ``circuits.mechanisms.MAX_CANDIDATES``);
    ``beyond_first_round``, those that tested more raisers than the first round's
    ``circuits.mechanisms.CANDIDATES``."""
    from circuits.mechanisms import CANDIDATES

    sides = [r[f"{s}_source"] for r in records for s in ("query", "key") if r.get(f"{s}_source")]

    def raisers_tested(x: dict) -> int:
        return x["tested"] - (x.get("at_position") or 0)

    last = [x for x in sides if 1 < raisers_tested(x) == x["rank"]]
    return {
        "named": len(sides),
        "at_position": sum(x["rank"] > raisers_tested(x) for x in sides),
        "last_raiser": len(last),
        "bound": sum(x.get("raisers") is not None and raisers_tested(x) < x["raisers"]
                     for x in last),
        "beyond_first_round": sum(raisers_tested(x) > CANDIDATES for x in sides),
    }  # fmt: skip


def family_rates(family: str | None, records: list[dict]) -> dict:
    """A probe family's rates, counts and sub-rates by source from its prompts' records (what
    ``run_family`` writes beside them): one draw's, or several draws' pooled
    (``benchmarks/mechanisms_pool.py``), computed alike."""
    right = [r for r in records if r["correct"]]

    def rate(key, rows=right):
        return round(sum(bool(r.get(key)) for r in rows) / len(rows), 4) if rows else None

    def per_check(key):  # a count per right prompt, over all their checks
        return round(sum(r.get(key, 0) for r in right) / checks, 4) if checks else None

    def of_free_disagreements(key):  # a count per right prompt, over their free disagreements
        disagreements = sum(r.get("checks", 0) - r.get("agree_free", 0) for r in right)
        return round(sum(r.get(key, 0) for r in right) / max(1, disagreements), 4)

    checks = sum(r.get("checks", 0) for r in right)
    induction = family in INDUCTION
    by_source = {s: {"prompts": sum(r["source"] == s for r in records),
                     "correct": sum(r["source"] == s for r in right),
                     "key": rate("key", [r for r in right if r["source"] == s]),
                     "reason": rate("reason", [r for r in right if r["source"] == s]),
                     "reason_roots": rate("reason_roots", [r for r in right
                                                           if r["source"] == s])
                     if induction else None,
                     "with_untrained_tokens": sum(
                         r["source"] == s and bool(r["untrained_positions"]) for r in records),
                     "correct_with_untrained_tokens": sum(
                         r["source"] == s and bool(r["untrained_positions"]) for r in right)}
                 for s in SOURCES}  # fmt: skip
    return {
        "prompts": len(records),
        "correct": len(right),
        "named": rate("named"),
        "key": rate("key"),
        "key_top3": rate("key_top3"),
        "key_by_tokens": rate("key_by_tokens"),
        "key_moved": rate("key_moved"),
        "key_named": rate("key_named"),
        "reason": rate("reason"),
        "reason_head": rate("reason_head"),
        "reason_match": rate("reason_match") if induction else None,
        "reason_pair": rate("reason_pair"),
        "reason_roots": rate("reason_roots") if induction else None,
        "reason_roots_match": rate("reason_roots_match") if induction else None,
        "root_own_first": rate("root_own_first"),
        # of the prompts whose reason the criterion accepts: its largest printed term's key-side
        # token, made the mean token, halves the head's attention (``token_check_fields``)
        "top_term_causal": rate("top_term_causal", [r for r in right if r.get("reason")]),
        "any_named_causal": rate("any_named_causal", [r for r in right if r.get("reason")]),
        "key_own_token": rate("key_own_token"),
        "checks": checks,
        "sign_agree_frozen": per_check("agree_frozen"),
        "sign_agree_free": per_check("agree_free"),
        "sign_agree_free_ln_held": per_check("agree_free_ln_held"),
        # of the checks whose free measurement disagrees with the graph: those that agree
        # with the LayerNorm scales held (the model's rescaling undoes the prediction)
        "free_disagreements_from_layernorm": of_free_disagreements("disagree_free_from_layernorm"),
        # the same with only the final LayerNorm's scale held (the blocks' free)
        "sign_agree_free_final_ln_held": per_check("agree_free_final_ln_held"),
        "free_disagreements_from_final_layernorm": of_free_disagreements(
            "disagree_free_from_final_layernorm"
        ),
        # the same with the attention patterns held (LayerNorm free)
        "sign_agree_free_attention_held": per_check("agree_free_attention_held"),
        "free_disagreements_from_attention": of_free_disagreements("disagree_free_from_attention"),
        "sign_agree_first_order_free": per_check("agree_first_order_free"),
        "free_disagreements_explained_by_first_order": round(
            sum(r.get("disagree_free_explained", 0) for r in right)
            / max(1, sum(r.get("disagree_free", 0) for r in right)),
            4,
        ),
        "flagged": per_check("flagged"),
        # the predicting group's QK sources (``qk_source_fields``): the share of right prompts
        # whose largest key- / query-side head group, ablated, halves its attention; for the
        # key side, the share whose source is the heads at the key reading the token before it
        "key_source_halves": rate("key_source_halves"),
        "query_source_halves": rate("query_source_halves"),
        "key_source_previous_token": rate("key_source_previous_token"),
        # the checks of the groups in the summary as QK sources, and their free agreement
        # (part of ``checks`` and ``sign_agree_free``: their value path is what the graph
        # predicts, their effect much through attention)
        "qk_writer_checks": sum(r.get("qk_writer_checks", 0) for r in right),
        "qk_writer_sign_agree_free": round(
            sum(r.get("qk_writer_agree_free", 0) for r in right)
            / max(1, sum(r.get("qk_writer_checks", 0) for r in right)),
            4,
        ),
        # the same free agreement over the other checks (the groups' value paths alone)
        "sign_agree_free_without_qk_writers": round(
            sum(r.get("agree_free", 0) - r.get("qk_writer_agree_free", 0) for r in right)
            / max(1, checks - sum(r.get("qk_writer_checks", 0) for r in right)),
            4,
        ),
        "qk_source_sides": qk_source_sides(right),
        "targets_met": {
            "key_90": rate("key") is not None and rate("key") >= 0.9,
            "key_named_90": rate("key_named") is not None and rate("key_named") >= 0.9,
            "reason_90": rate("reason") is not None and rate("reason") >= 0.9,
            "reason_roots_90": (rate("reason_roots") or 0) >= 0.9 if induction else None,
            "sign_90_frozen": bool(checks)
            and sum(r.get("agree_frozen", 0) for r in right) / checks >= 0.9,
        },  # fmt: skip
        "by_source": by_source,
        "reason_misses": reason_misses(right) if induction else None,
        "cpu_seconds_per_prompt": round(
            sum(r["cpu_seconds"] for r in records) / max(len(records), 1), 3
        ),
    }


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="zoo name or directory")
    parser.add_argument("--replacement", type=path_text,
                        help="replacement set (default: shipped with --model)")  # fmt: skip
    parser.add_argument("--dashboards-file", type=path_arg,
                        help="the concept labels' dashboards file (default "
                        "runs/dashboards/<model>-<mode>-<key>.safetensors, the one "
                        "circuits.trace builds, used when valid; a file "
                        "named here must be valid for the replacement set)")  # fmt: skip
    parser.add_argument("--prompts", type=int_in(1, MAX_PROMPTS), default=40,
                        help="prompts per probe family")  # fmt: skip
    parser.add_argument(
        "--min-correct",
        type=count_arg,
        default=30,
        help="then more prompts until this many are ones the model gets right (at most "
        "--max-prompts)",
    )
    parser.add_argument("--max-prompts", type=int_in(1, MAX_PROMPTS), default=200,
                        help=f"prompts per family at most (up to {MAX_PROMPTS})")  # fmt: skip
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"comma-separated among {', '.join(FAMILIES)}")  # fmt: skip
    parser.add_argument("--mode", choices=("local", "sparse"), default="local")
    parser.add_argument("--vs-runner-up", action="store_true",
                        help="explain the margin over the runner-up (logit(target) - "
                        "logit(runner-up)) instead of the target's logit, as circuits.trace "
                        "--vs-runner-up does")  # fmt: skip
    parser.add_argument("--vs-other-item", action="store_true",
                        help="successor only: explain logit(target) - logit(the most likely "
                        "other item of the same list), the question which item, instead of "
                        "the target's logit")  # fmt: skip
    parser.add_argument("--seed", type=seed_arg, default=SEED,
                        help=f"draws the prompts (default {SEED}; another seed is a fresh "
                        "draw of the same sources)")  # fmt: skip
    parser.add_argument("--threads", type=int_in(1, os.cpu_count() or 1), default=1,
                        help="torch threads, at most the machine's cores (default 1: the "
                        "graphs are small, and a second thread mostly spins on a shared "
                        "machine)")  # fmt: skip
    parser.add_argument("--out", type=file_arg, help="result file (default: benchmarks/results/"
                        "mechanisms_{model}.json; _seed{seed} added for another seed, "
                        "_vs_runner_up with --vs-runner-up, _vs_other_item with "
                        "--vs-other-item)")  # fmt: skip
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = sorted(set(families) - set(FAMILIES))
    if bad or not families:
        parser.error(f"--families: unknown {bad}; choose among {', '.join(FAMILIES)}")
    if args.max_prompts < args.prompts:
        parser.error("--max-prompts must be >= --prompts")
    if args.min_correct > args.max_prompts:  # it would run every prompt and never meet it
        parser.error(f"--min-correct {args.min_correct}: more right prompts than "
                     f"--max-prompts {args.max_prompts} can give")  # fmt: skip
    if args.vs_runner_up and args.vs_other_item:
        parser.error("--vs-runner-up and --vs-other-item name two different targets: pick one")
    if args.vs_other_item and families != ["successor"]:
        parser.error("--vs-other-item is for the successor family: pass --families successor")
    args.families = families
    args.contrast = "runner_up" if args.vs_runner_up else "other_item" if args.vs_other_item \
        else None  # fmt: skip
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    seed = "" if args.seed == SEED else f"_seed{args.seed}"
    suffix, explained = CONTRASTS[args.contrast]
    out = args.out or RESULTS / f"mechanisms_{Path(args.model).name}{seed}{suffix}.json"
    from toy_models.files import check_writable_file, write_json_atomic

    # before, not after, the run; an earlier results file of it alone is replaced
    check_writable_file(out, "--out", frozenset({"model", "mode", "families"}))
    if args.dashboards_file is not None:  # named here: it must be there (after the load, it
        # said so after the model and its set had loaded)
        from toy_models.files import check_readable_file

        try:
            check_readable_file(args.dashboards_file, "--dashboards-file")
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
    import torch

    from replacement.model import load_pretrained

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    replacement, tokenizer = load_pretrained(args.model, args.replacement)
    concepts, concept_source = concepts_for(
        replacement, tokenizer, args.model, args.mode, args.dashboards_file
    )
    if concepts is None and args.dashboards_file is not None:
        raise UserError(f"--dashboards-file: {concept_source}")
    startup = time.perf_counter() - t0
    result = {"model": args.model, "mode": args.mode,
              "replacement": args.replacement or "shipped",
              "prompts_per_family": args.prompts,
              "min_correct": args.min_correct, "max_prompts": args.max_prompts,
              "threads": args.threads, "seed": args.seed,
              "target": explained,
              "concepts": concept_source, "startup_seconds": round(startup, 2),
              "families": {}}  # fmt: skip
    with torch.no_grad():
        for family in args.families:
            t1 = time.perf_counter()
            # The first prompts of a longer list are the same as those of a shorter one.
            n = max(args.prompts, args.max_prompts)
            prompts = build_prompts(tokenizer, family, n, replacement.cfg.n_ctx - 1, args.seed)
            result["families"][family] = run_family(
                replacement, tokenizer, prompts, concepts, args.mode, at_least=args.prompts,
                min_correct=args.min_correct, contrast=args.contrast,
            )  # fmt: skip
            result["families"][family]["wall_seconds"] = round(time.perf_counter() - t1, 2)
            summary = {k: v for k, v in result["families"][family].items()
                       if k not in ("records", "by_source")}  # fmt: skip
            print(family, json.dumps(summary), flush=True)
    write_json_atomic(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
