"""Held-out loss per task family and probes of the mechanisms the corpus plants, on both
held-out splits, with the issue's targets.

    python -m toy_models.evaluate --model default [--docs 200] [--json results.json]

Every probe runs on two splits, reported side by side (``toy_models.data``):
``heldout`` (*instances*: addition problems and rare names never trained on, in the training
forms: memory) and ``heldout_forms`` (*forms*: held-out instances in separators, frames, list
and addition formats never seen in training: whether the mechanism is general). Each split's
documents go through the model once (``run_split``); the probes read those runs
(teacher-forced, greedy = argmax):

- induction: mean loss on the second copy of a repeated random segment over the first copy's,
  overall, per separator (the second span's ``form``; the worst one is named) and per layout;
  per-head induction score (attention from a second-copy token to the token after its first
  occurrence) and previous-token score (attention to the position before).
- successor: an item counts as correct when all its tokens are predicted (and a number stops
  where it should); by list kind, step, list format (or ``"sentence"``) and sentence frame.
- addition: exact match of the answer: every digit predicted and, after the last one, a
  prediction that is not a digit (greedy decoding stops the number there, whatever follows:
  a line end, ``.``, ``,`` or a space); by operand digits, carries, spacing and frame, and
  the wrong answers by what goes wrong first (a carry added or missed, another digit, no
  digit, a number that goes on: ``first_error``) and at which place. Beside
  it (the targets read the exact match), ``exact_match_own_space``: the same when the model
  may write a whitespace token of its choosing before the answer where the document has none
  (``OwnSpacing``). A held-out spacing form such as ``a + b=c`` shares its text up to ``=``
  with a training form that always goes on with a space (``a + b= c``), so the first token
  of its answer cannot be told from what comes before; the second figure says how much of the
  exact match is lost to that token rather than to the sum.
- subtoken induction: the sub-tokens after the first of a held-out rare name, on every mention
  after its first, by story style; names seen in training never appear here.
- attention sink: mean attention mass on the BOS position, per head (instances split).

``targets`` checks the issue's numbers for each split (``TARGETS``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .cli import ArgumentParser, UserError, file_arg, run_cli
from .data import FAMILIES, Example, Span, carries_into, count_carries, examples, pad_rows

if TYPE_CHECKING:
    from torch import Tensor

EVAL_SEED = 12345
EVAL_SPLITS = ("heldout", "heldout_forms")
SPLIT_LABELS = {"heldout": "instances", "heldout_forms": "forms"}
MAX_DOCS = 10_000  # documents per family and split a command line may ask for
# The keys of the results ``main`` writes to ``--json``: a file holding them is an earlier
# run's results, which a rerun may replace (``toy_models.files.check_writable_file``).
RESULT_KEYS = frozenset({"model", "docs_per_family", *EVAL_SPLITS, "targets"})

# The targets: (result path in a split's probes, comparison, threshold per split).
TARGETS: dict[str, tuple[tuple[str, str], str, dict[str, float]]] = {
    "addition_exact_match": (
        ("addition", "exact_match"),
        ">=",
        {"heldout": 0.95, "heldout_forms": 0.85},
    ),
    "induction_loss_ratio_every_separator": (
        ("induction", "worst_separator_ratio"),
        "<=",
        {"heldout": 0.15, "heldout_forms": 0.15},
    ),
    "successor_accuracy": (
        ("successor", "accuracy"),
        ">=",
        {"heldout": 0.95, "heldout_forms": 0.85},
    ),
    "subtoken_induction_accuracy": (
        ("subtoken_induction", "accuracy"),
        ">=",
        {"heldout": 0.80, "heldout_forms": 0.70},
    ),
}


@dataclass
class Encoded:
    example: Example
    ids: list[int]  # BOS + document, cut to n_ctx
    offsets: list[tuple[int, int]]

    def tokens_in(self, span: Span) -> list[int]:
        """Positions of the tokens overlapping a span's characters (those inside the context)."""
        start, end = span.start, span.end
        return [i for i, (s, e) in enumerate(self.offsets) if i > 0 and s < end and e > start]

    def holds(self, span: Span) -> bool:
        """Whether a span lies wholly inside the (possibly cut) context."""
        return span.end <= self.offsets[-1][1]


def encode(tokenizer, example: Example, n_ctx: int) -> Encoded:
    enc = tokenizer.encode(example.text)
    return Encoded(example, enc.ids[:n_ctx], [tuple(o) for o in enc.offsets[:n_ctx]])


def heldout_examples(
    family: str, n_docs: int, seed: int = EVAL_SEED, split: str = "heldout"
) -> list[Example]:
    """The first ``n_docs`` documents of a family's evaluation stream in ``split``: one or
    more, since every probe is a mean over them (0 divided by zero)."""
    from .checkpoint import check_value

    check_value("int", n_docs, "n_docs")
    stream = examples(family, split, seed)
    return [next(stream) for _ in range(n_docs)]


# ----------------------------------------------------------------- one pass over a split
@dataclass
class Scored:
    """One document after one forward pass: what every probe reads.

    ``log_prob[p - 1]`` is the log-probability of token ``p`` given the tokens before it and
    ``argmax[p - 1]`` the prediction made there (``argmax[n - 1]``: after the last token).
    With patterns, per-head sums of attention (layer, head) over the document's queries:
    ``bos_mass`` on BOS and ``previous_token`` on the position before (queries 1..n-1), and
    for a repeat document ``induction`` on the induction key of each second-copy query
    (``n_induction`` of them).
    """

    doc: Encoded
    log_prob: list[float]
    argmax: list[int]
    bos_mass: Tensor | None = None  # (layer, head)
    previous_token: Tensor | None = None  # (layer, head)
    induction: Tensor | None = None  # (layer, head)
    n_induction: int = 0

    def loss(self, positions: Iterable[int]) -> list[float]:
        """The loss (nats) on the token at each position."""
        return [-self.log_prob[p - 1] for p in positions]

    def correct(self, positions: Iterable[int]) -> list[bool]:
        """Whether the token at each position is the argmax prediction from the one before."""
        return [self.argmax[p - 1] == self.doc.ids[p] for p in positions]


def copy_positions(doc: Encoded) -> tuple[list[int], list[int]] | None:
    """The token positions of a repeat document's two copies, or None when the second runs
    past the context or the two do not tokenize alike."""
    copy = doc.example.spans_of("second")[0]
    first, second = doc.tokens_in(copy.earlier), doc.tokens_in(copy)
    if not doc.holds(copy) or len(first) != len(second):
        return None
    if [doc.ids[p] for p in first] != [doc.ids[p] for p in second]:
        return None
    return first, second


def score_docs(model, docs: list[Encoded], patterns: bool = False, batch_size: int = 32):
    """Run documents through the model in batches: a ``Scored`` per document."""
    import torch

    from .model import hook_name

    names = (lambda name: name.endswith("hook_pattern")) if patterns else (lambda name: False)
    out = []
    for i in range(0, len(docs), batch_size):
        chunk = docs[i : i + batch_size]
        tokens = pad_rows([d.ids for d in chunk])
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens, names_filter=names)
        logits = logits.float()
        target = logits[:, :-1].gather(2, tokens[:, 1:, None])[..., 0]
        log_prob = (target - logits[:, :-1].logsumexp(-1)).tolist()
        argmax = logits.argmax(-1).tolist()
        stacked = None
        if patterns:  # (batch, layer, head, q, k)
            layers = range(model.cfg.n_layers)
            stacked = torch.stack([cache[hook_name(l, "attn.hook_pattern")] for l in layers], 1)
        for j, doc in enumerate(chunk):
            n = len(doc.ids)
            scored = Scored(doc, log_prob[j][: n - 1], argmax[j][:n])
            if stacked is not None:
                _attention_sums(scored, stacked[j, :, :, :n, :n].float())
            out.append(scored)
    return out


def _attention_sums(scored: Scored, pattern) -> None:
    """Fill a ``Scored``'s per-head attention sums from its pattern (layer, head, q, k)."""
    import torch

    n = pattern.shape[-1]
    queries = torch.arange(1, n)
    scored.bos_mass = pattern[:, :, 1:, 0].sum(-1)
    scored.previous_token = pattern[:, :, queries, queries - 1].sum(-1)
    if scored.doc.example.family == "repeat" and (copies := copy_positions(scored.doc)):
        first, second = copies
        q = torch.tensor(second[1:])
        scored.induction = pattern[:, :, q, q - (second[0] - first[0]) + 1].sum(-1)
        scored.n_induction = len(q)


def run_split(
    model,
    tokenizer,
    family: str,
    n_docs: int,
    split: str = "heldout",
    patterns: bool = False,
    progress=None,
) -> list[Scored]:
    """The first ``n_docs`` evaluation documents of a family in ``split``, run once."""
    docs = [
        encode(tokenizer, e, model.cfg.n_ctx) for e in heldout_examples(family, n_docs, split=split)
    ]
    scored = score_docs(model, docs, patterns)
    if progress is not None:
        progress.update(len(docs))
    return scored


# ----------------------------------------------------------------- what the probes compute
def _rates(hits: dict) -> dict:
    """Mean of each group's hits, groups in sorted order."""
    return {k: sum(v) / len(v) for k, v in sorted(hits.items(), key=lambda kv: str(kv[0]))}


def _counts(hits: dict) -> dict:
    return {k: len(v) for k, v in sorted(hits.items(), key=lambda kv: str(kv[0]))}


def loss_scores(scored: dict[str, list[Scored]]) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) per family, and their mean."""
    out = {}
    for family in FAMILIES:
        losses = [x for s in scored[family] for x in s.loss(range(1, len(s.doc.ids)))]
        out[family] = sum(losses) / len(losses)
    out["mean"] = sum(out[f] for f in FAMILIES) / len(FAMILIES)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def induction_scores(scored: list[Scored], head_scores: bool = True) -> dict:
    """Copy losses on repeated segments, overall, per separator and per layout; with
    ``head_scores``, per-head pattern scores too (they need runs with patterns).

    A ratio is the mean loss on the second copy's tokens 2..n over the first copy's, pooled
    over the documents of a group; ``worst_separator`` is the separator with the highest;
    ``counts`` are the second-copy tokens behind each group's ratio."""
    import torch

    losses: dict[str, dict[str, tuple[list[float], list[float]]]] = {"form": {}, "frame": {}}
    n_copies = 0
    for s in scored:
        copies = copy_positions(s.doc)
        if copies is None:
            continue
        n_copies += 1
        copy = s.doc.example.spans_of("second")[0]
        first, second = s.loss(copies[0][1:]), s.loss(copies[1][1:])
        for by in ("form", "frame"):
            group = losses[by].setdefault(getattr(copy, by), ([], []))
            group[0].extend(first)
            group[1].extend(second)

    def ratio(first: list[float], second: list[float]) -> float:
        f, s = _mean(first), _mean(second)
        return s / f if f > 0 else float("nan")

    by = {b: {k: ratio(*losses[b][k]) for k in sorted(losses[b])} for b in losses}
    every_first = [x for first, _ in losses["frame"].values() for x in first]
    every_second = [x for _, second in losses["frame"].values() for x in second]
    # the worst among the separators with a ratio: a NaN compares as neither higher nor lower,
    # so a max over them named whichever came first
    measured = [k for k in by["form"] if not math.isnan(by["form"][k])]
    worst = max(measured, key=lambda k: by["form"][k], default=None)
    result = {
        "loss_first_copy": _mean(every_first),
        "loss_second_copy": _mean(every_second),
        "loss_ratio": ratio(every_first, every_second),
        "n_copies": n_copies,
        "by_separator": by["form"],
        "by_layout": by["frame"],
        "worst_separator": worst,
        "worst_separator_ratio": float("nan") if worst is None else by["form"][worst],
        "counts": {
            "by_separator": {k: len(losses["form"][k][1]) for k in by["form"]},
            "by_layout": {k: len(losses["frame"][k][1]) for k in by["frame"]},
        },
    }
    if head_scores:
        if any(s.previous_token is None for s in scored):
            raise ValueError("head scores need documents run with patterns=True")
        prev = sum(s.previous_token for s in scored) / sum(len(s.doc.ids) - 1 for s in scored)
        with_heads = [s for s in scored if s.induction is not None]
        ind = sum((s.induction for s in with_heads), torch.zeros_like(prev))
        ind = ind / sum(s.n_induction for s in with_heads) if with_heads else ind * float("nan")
        result |= {
            "induction_scores": ind.tolist(),
            "previous_token_scores": prev.tolist(),
            "best_induction_head": _best(ind),
            "best_previous_token_head": _best(prev),
        }
    return result


def _best(scores) -> dict | None:
    """The head (layer, head) with the highest score, among those with one; None when no head
    has a score (NaN everywhere: no document gave one, as with ``--docs 1``), where an argmax
    over the NaNs named head L0H0 with score nan (found by a fuzz pass)."""
    import torch

    measured = ~scores.isnan()
    if not bool(measured.any()):
        return None
    flat = int(torch.where(measured, scores, -torch.inf).argmax())
    layer, head = divmod(flat, scores.shape[1])
    return {"layer": layer, "head": head, "score": float(scores[layer, head])}


def _digit_ids(tokenizer) -> dict[int, int]:
    """Tokens that would extend a number (digits split one per token), each with its digit."""
    return {i: int(d) for d in "0123456789" if (i := tokenizer.token_to_id(d)) is not None}


def _stops(s: Scored, span: Span, positions: list[int], digits: Mapping[int, int]) -> bool:
    """For a number (an item of the ``counting`` sequence), whether the prediction after its
    last digit ends it (not a digit)."""
    return span.sequence != "counting" or s.argmax[positions[-1]] not in digits


def successor_scores(scored: list[Scored], digits: Mapping[int, int] | None = None) -> dict:
    """Items (all tokens predicted; a number must stop) by list kind, step, form and, for
    sentences, frame."""
    digits = digits or {}
    groups: dict[str, dict] = {k: defaultdict(list) for k in ("kind", "step", "form", "frame")}
    for s in scored:
        for span in s.doc.example.spans_of("item"):
            positions = s.doc.tokens_in(span)
            if not positions or not s.doc.holds(span):
                continue
            ok = all(s.correct(positions)) and _stops(s, span, positions, digits)
            groups["kind"][span.sequence].append(ok)
            groups["step"][span.step].append(ok)
            groups["form"][span.form].append(ok)
            if span.form == "sentence":
                groups["frame"][span.frame].append(ok)
    every = [h for v in groups["kind"].values() for h in v]
    return {
        "accuracy": sum(every) / max(1, len(every)),
        "n_items": len(every),
        **{f"by_{k}": _rates(v) for k, v in groups.items()},
        "counts": {f"by_{k}": _counts(v) for k, v in groups.items()},
    }


@dataclass(frozen=True)
class OwnSpacing:
    """What ``exact_match_own_space`` reruns: where the model predicts a whitespace token
    (``spaces``) at an answer's first position and the document has a digit there, the
    document's tokens up to the answer, that whitespace token, then the answer and what follows
    (cut to the context) go through ``model`` once more (``score_docs``); the answer counts
    there when every digit is predicted after the inserted token and then no further digit. An
    answer pushed out of the context by the inserted token keeps its exact-match result."""

    model: object
    spaces: frozenset[int]

    @classmethod
    def of(cls, model, tokenizer) -> OwnSpacing:
        vocab = range(tokenizer.get_vocab_size())
        return cls(model, frozenset(i for i in vocab if tokenizer.decode([i]).isspace()))


FIRST_ERRORS = ("carry_added", "carry_missed", "other_digit", "not_a_digit", "continues")


def first_error(
    s: Scored, answer: Span, positions: list[int], digits: Mapping[int, int]
) -> tuple[str, int] | None:
    """What goes wrong first in an answer, as (kind, place; place 0 = units), or None when it
    is right. Kinds (``FIRST_ERRORS``): the first wrong prediction is a digit one above the
    right one at a place above the units that receives no carry (``carry_added``: the model
    carried where the lower places do not), one below at a place that receives one
    (``carry_missed``), another digit (``other_digit``), or no digit (``not_a_digit``, such as
    a space the document does not have); or every digit is right and the number goes on
    (``continues``, place -1)."""
    a, b = (o.number for o in answer.operands)
    for j, p in enumerate(positions):
        predicted = s.argmax[p - 1]
        if predicted == s.doc.ids[p]:
            continue
        place = len(positions) - 1 - j
        if predicted not in digits:
            return "not_a_digit", place
        carry_in = carries_into(a, b, place)
        step = digits[predicted] - (a + b) // 10**place % 10
        if place and (step, carry_in) == (1, False):
            return "carry_added", place
        if place and (step, carry_in) == (-1, True):
            return "carry_missed", place
        return "other_digit", place
    return ("continues", -1) if s.argmax[positions[-1]] in digits else None


def addition_scores(
    scored: list[Scored], digits: Mapping[int, int], own_spacing: OwnSpacing | None = None
) -> dict:
    """Exact match: every answer digit predicted and then no further digit, by operand
    digits, carries, form and frame; ``first_errors`` / ``first_error_places``: the wrong
    answers counted by what goes wrong first (``first_error``). With ``own_spacing``, also
    ``exact_match_own_space`` (its docstring), its rates by form, and ``space_first``: the
    share of answers where the model predicted a whitespace token the document does not have
    at the answer's first position."""
    groups: dict[str, dict] = {k: defaultdict(list) for k in ("digits", "carries", "form", "frame")}
    errors: dict[str, int] = dict.fromkeys(FIRST_ERRORS, 0)
    places: dict[int, int] = defaultdict(int)
    answers = []  # (scored run, answer positions, form, exact match)
    for s in scored:
        for answer in s.doc.example.spans_of("answer"):
            positions = s.doc.tokens_in(answer)
            if not positions or not s.doc.holds(answer):
                continue
            a, b = answer.operands
            error = first_error(s, answer, positions, digits)
            ok = error is None
            if error is not None:
                errors[error[0]] += 1
                places[error[1]] += 1
            groups["digits"][max(len(a.value), len(b.value))].append(ok)
            groups["carries"][count_carries(a.number, b.number)].append(ok)
            groups["form"][answer.form].append(ok)
            groups["frame"][answer.frame].append(ok)
            answers.append((s, positions, answer.form, ok))
    every = [h for v in groups["digits"].values() for h in v]
    out = {
        "exact_match": sum(every) / max(1, len(every)),
        "n_problems": len(every),
        **{f"by_{k}": _rates(v) for k, v in groups.items()},
        "counts": {f"by_{k}": _counts(v) for k, v in groups.items()},
        "first_errors": errors,
        "first_error_places": dict(sorted(places.items())),
    }
    if own_spacing is not None:
        out |= _own_space_scores(answers, digits, own_spacing)
    return out


def _own_space_scores(answers: list, digits: Mapping[int, int], own: OwnSpacing) -> dict:
    retries = []  # (index into answers, the document with the model's whitespace put in)
    spaced = 0  # answers whose first position the model gave a whitespace the document lacks
    for j, (s, positions, _, ok) in enumerate(answers):
        first = positions[0]
        space = s.argmax[first - 1]
        if ok or space not in own.spaces or s.doc.ids[first] in own.spaces:
            continue
        spaced += 1
        row = (s.doc.ids[:first] + [space] + s.doc.ids[first:])[: own.model.cfg.n_ctx]
        if positions[-1] + 1 < len(row):  # the answer still fits, after one more token
            at = s.doc.offsets[first][0]  # the inserted token holds none of the text
            offsets = (s.doc.offsets[:first] + [(at, at)] + s.doc.offsets[first:])[: len(row)]
            retries.append((j, replace(s.doc, ids=row, offsets=offsets)))
    right = {j: ok for j, (_, _, _, ok) in enumerate(answers)}
    rerun = score_docs(own.model, [doc for _, doc in retries])
    for (j, doc), run in zip(retries, rerun, strict=True):
        shifted = [p + 1 for p in answers[j][1]]
        stops = run.argmax[shifted[-1]] not in digits
        right[j] = stops and all(run.argmax[p - 1] == doc.ids[p] for p in shifted)
    by_form: dict = defaultdict(list)
    for j, (_, _, form, _) in enumerate(answers):
        by_form[form].append(right[j])
    n = max(1, len(answers))
    return {
        "exact_match_own_space": sum(right.values()) / n,
        "by_form_own_space": _rates(by_form),
        "space_first": spaced / n,
    }


def subtoken_scores(scored: list[Scored]) -> dict:
    """Accuracy on sub-tokens 2..n of multi-token rare names at later mentions, by style."""
    by_form: dict[str, list[bool]] = defaultdict(list)
    mention_hits = []
    for s in scored:
        for span in s.doc.example.spans_of("name"):
            if not span.rare or span.earlier is None:
                continue  # a name seen in training, or its first mention
            positions = s.doc.tokens_in(span)
            if len(positions) < 2 or not s.doc.holds(span):
                continue
            hits = s.correct(positions[1:])
            by_form[span.form] += hits
            mention_hits.append(all(hits))
    token_hits = [h for v in by_form.values() for h in v]
    return {
        "accuracy": sum(token_hits) / max(1, len(token_hits)),
        "mention_accuracy": sum(mention_hits) / max(1, len(mention_hits)),
        "n_subtokens": len(token_hits),
        "n_mentions": len(mention_hits),
        "by_form": _rates(by_form),
        "counts": {"by_form": _counts(by_form)},
    }


def sink_scores(scored: dict[str, list[Scored]]) -> dict:
    """Mean attention mass on BOS per head (queries after the first), over all families and
    per family (a head can be a sink on the tasks it has no work in)."""
    mass = {f: sum(s.bos_mass for s in scored[f]) for f in FAMILIES}
    count = {f: sum(len(s.doc.ids) - 1 for s in scored[f]) for f in FAMILIES}
    overall = sum(mass.values()) / sum(count.values())
    n_layers = overall.shape[0]

    def best_after_first_layer(scores) -> dict | None:
        best = _best(scores[1:] if n_layers > 1 else scores)
        if best is not None:
            best["layer"] += 1 if n_layers > 1 else 0
        return best

    return {
        "bos_mass": overall.tolist(),
        "best_head_layer_ge_1": best_after_first_layer(overall),
        "best_head_layer_ge_1_by_family": {
            f: best_after_first_layer(mass[f] / count[f]) for f in FAMILIES
        },
    }


# ----------------------------------------------------------------- one probe at a time
def heldout_loss(model, tokenizer, n_docs: int = 200, split: str = "heldout") -> dict[str, float]:
    """Mean next-token cross-entropy (nats) on evaluation documents of each family."""
    return loss_scores({f: run_split(model, tokenizer, f, n_docs, split) for f in FAMILIES})


def induction_probe(
    model, tokenizer, n_docs: int, head_scores: bool = True, split: str = "heldout"
) -> dict:
    """Copy losses on repeated segments; with ``head_scores``, per-head pattern scores too
    (a model without ``attn.hook_pattern`` hooks, such as a replacement model, passes False)."""
    scored = run_split(model, tokenizer, "repeat", n_docs, split, patterns=head_scores)
    return induction_scores(scored, head_scores)


def successor_probe(model, tokenizer, n_docs: int, split: str = "heldout") -> dict:
    scored = run_split(model, tokenizer, "successor", n_docs, split)
    return successor_scores(scored, _digit_ids(tokenizer))


def addition_probe(model, tokenizer, n_docs: int, split: str = "heldout") -> dict:
    scored = run_split(model, tokenizer, "addition", n_docs, split)
    return addition_scores(scored, _digit_ids(tokenizer), OwnSpacing.of(model, tokenizer))


def subtoken_induction_probe(model, tokenizer, n_docs: int, split: str = "heldout") -> dict:
    return subtoken_scores(run_split(model, tokenizer, "names", n_docs, split))


def sink_probe(model, tokenizer, n_docs: int, split: str = "heldout") -> dict:
    return sink_scores(
        {f: run_split(model, tokenizer, f, n_docs, split, patterns=True) for f in FAMILIES}
    )


# ----------------------------------------------------------------- everything, both splits
def split_probes(scored: dict[str, list[Scored]], tokenizer, head_scores: bool, model=None) -> dict:
    """Every probe on one split's runs (``scored``: family -> its documents); with the
    ``model`` that ran them, addition's ``exact_match_own_space`` too (``OwnSpacing``)."""
    digits = _digit_ids(tokenizer)
    own = OwnSpacing.of(model, tokenizer) if model is not None else None
    return {
        "heldout_loss": loss_scores(scored),
        "induction": induction_scores(scored["repeat"], head_scores),
        "successor": successor_scores(scored["successor"], digits),
        "addition": addition_scores(scored["addition"], digits, own),
        "subtoken_induction": subtoken_scores(scored["names"]),
    }


def _lookup(probes: dict, path: tuple[str, ...]):
    for key in path:
        probes = probes[key]
    return probes


def targets(results: dict) -> dict:
    """Each of the issue's targets per split: the value, its threshold and whether it is met;
    ``all_met`` over all of them."""
    out: dict = {}
    for split in EVAL_SPLITS:
        out[split] = {}
        for name, (path, op, thresholds) in TARGETS.items():
            value, threshold = _lookup(results[split], path), thresholds[split]
            met = value >= threshold if op == ">=" else value <= threshold
            out[split][f"{name}{op}{threshold:g}"] = {
                "value": value,
                "threshold": threshold,
                "met": bool(met),
            }
    out["all_met"] = all(t["met"] for split in EVAL_SPLITS for t in out[split].values())
    return out


def evaluate(
    model, tokenizer, n_docs: int = 200, head_scores: bool = True, progress: bool = False
) -> dict:
    """Every probe on both held-out splits (each split's documents run once), the attention
    sink on the instances split, and the targets."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=n_docs * len(FAMILIES) * len(EVAL_SPLITS),
        desc="evaluating",
        unit="doc",
        disable=not progress,
    )
    results: dict = {}
    with bar:
        for split in EVAL_SPLITS:
            scored = {
                f: run_split(model, tokenizer, f, n_docs, split, head_scores, bar) for f in FAMILIES
            }
            results[split] = split_probes(scored, tokenizer, head_scores, model)
            if split == "heldout" and head_scores:
                results["attention_sink"] = sink_scores(scored)
    results["targets"] = targets(results)
    return results


# ----------------------------------------------------------------- the printed summary
NOT_ENOUGH_DATA = "none (not enough data: more --docs)"


def _head(best: dict | None) -> str:
    """A best head as ``L1H3 0.82``; saying so when no head had a score (``_best``)."""
    if best is None:
        return NOT_ENOUGH_DATA
    return f"L{best['layer']}H{best['head']} {best['score']:.2f}"


def _groups(rates: dict, fmt: str = "{:.0%}") -> str:
    return " ".join(f"{k!r}:{fmt.format(v)}" for k, v in rates.items())


def _failing(rates: dict, threshold: float, op: str = ">=") -> list[str]:
    bad = [(k, v) for k, v in rates.items() if (v < threshold if op == ">=" else v > threshold)]
    return [f"{k!r} {v:.0%}" for k, v in bad]


def _failing_text(items: list[str]) -> str:
    return "; failing: " + ", ".join(items) if items else "; no failing form"


def summary(r: dict) -> str:
    """Both splits, one line per probe per split, with the worst separator and the forms
    below their split's target."""
    lines = []

    def add(label: str, split: str, text: str) -> None:
        first = label if split == EVAL_SPLITS[0] else ""
        lines.append(f"{first:15s} {SPLIT_LABELS[split]:9s} {text}")

    for split in EVAL_SPLITS:
        losses = r[split]["heldout_loss"]
        add("held-out loss", split, "  ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    for split in EVAL_SPLITS:
        ind = r[split]["induction"]
        threshold = TARGETS["induction_loss_ratio_every_separator"][2][split]
        worst = (
            NOT_ENOUGH_DATA
            if ind["worst_separator"] is None
            else f"{ind['worst_separator']!r} {ind['worst_separator_ratio']:.1%}"
        )
        text = (
            f"second/first copy loss {ind['loss_second_copy']:.3f}/{ind['loss_first_copy']:.3f}"
            f" = {ind['loss_ratio']:.1%}; worst separator {worst}; "
            f"layouts {_groups(ind['by_layout'], '{:.1%}')}"
            if ind["n_copies"]
            else f"second/first copy loss {NOT_ENOUGH_DATA}"  # no second copy fits
        )
        if "best_induction_head" in ind:
            text += (
                f"; best induction head {_head(ind['best_induction_head'])}, previous-token "
                f"{_head(ind['best_previous_token_head'])}"
            )
        failing = _failing(ind["by_separator"], threshold, "<=")
        add("induction", split, text + _failing_text(failing))
    for split in EVAL_SPLITS:
        suc = r[split]["successor"]
        threshold = TARGETS["successor_accuracy"][2][split]
        text = (
            f"accuracy {suc['accuracy']:.1%} over {suc['n_items']} items; kinds "
            + " ".join(f"{k} {v:.0%}" for k, v in suc["by_kind"].items())
            + "; steps "
            + " ".join(f"{k}:{v:.0%}" for k, v in suc["by_step"].items())
        )
        failing = _failing(suc["by_form"], threshold) + _failing(suc["by_frame"], threshold)
        add("successor", split, text + _failing_text(failing))
    for split in EVAL_SPLITS:
        a = r[split]["addition"]
        threshold = TARGETS["addition_exact_match"][2][split]
        text = (
            f"exact match {a['exact_match']:.1%} over {a['n_problems']}; by digits "
            + " ".join(f"{k}:{v:.1%}" for k, v in a["by_digits"].items())
            + "; by carries "
            + " ".join(f"{k}:{v:.1%}" for k, v in a["by_carries"].items())
        )
        if "exact_match_own_space" in a:
            text += (
                f"; {a['exact_match_own_space']:.1%} with the model's own space before the "
                f"answer (a space predicted where the document has none: {a['space_first']:.1%})"
            )
        wrong = {k.replace("_", " "): v for k, v in a["first_errors"].items() if v}
        if wrong:
            text += "; first errors " + ", ".join(f"{k} {v}" for k, v in wrong.items())
        failing = _failing(a["by_form"], threshold) + _failing(a["by_frame"], threshold)
        add("addition", split, text + _failing_text(failing))
    for split in EVAL_SPLITS:
        sub = r[split]["subtoken_induction"]
        threshold = TARGETS["subtoken_induction_accuracy"][2][split]
        text = (
            f"accuracy {sub['accuracy']:.1%} over {sub['n_subtokens']} sub-tokens (whole "
            f"mentions {sub['mention_accuracy']:.1%}); styles {_groups(sub['by_form'])}"
        )
        add("subtoken ind.", split, text + _failing_text(_failing(sub["by_form"], threshold)))
    if "attention_sink" in r:
        sink = r["attention_sink"]
        lines.append(
            f"{'attention sink':15s} {SPLIT_LABELS['heldout']:9s} best head in layer >= 1: "
            f"{_head(sink['best_head_layer_ge_1'])} of attention on BOS; per family "
            + ", ".join(
                f"{family} {_head(best)}"
                for family, best in sink["best_head_layer_ge_1_by_family"].items()
            )
        )
    for split in EVAL_SPLITS:
        checks = r["targets"][split]
        add(
            "targets",
            split,
            "  ".join(
                f"{name} not measured (more --docs)"
                if not math.isfinite(t["value"])
                else f"{name} {'met' if t['met'] else 'NOT met'} ({t['value']:.3f})"
                for name, t in checks.items()
            ),
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m toy_models.evaluate",
        description="Held-out loss per task family, mechanism probes and the issue's targets "
        "for a toy model, on held-out instances (heldout) and held-out forms (heldout_forms).",
    )
    parser.add_argument(
        "--model", default="default", help="zoo name with a shipped checkpoint, or a run directory"
    )
    parser.add_argument(
        "--docs", type=int, default=200, help="documents per family and split (default 200)"
    )
    parser.add_argument("--json", type=file_arg, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.docs <= MAX_DOCS:  # a huge count would run for ever without a word
        raise ValueError(f"--docs must be between 1 and {MAX_DOCS}, got {args.docs}")
    from .checkpoint import model_files
    from .files import check_not_input, check_writable_file
    from .zoo import load_pretrained, resolve_model_dir

    directory = resolve_model_dir(args.model)  # an unknown name fails before the heavy imports
    if args.json:  # before the evaluation, not after it
        check_not_input(args.json, model_files(directory), "--json")
        check_writable_file(args.json, "--json", RESULT_KEYS)  # saved work: refused
    model, tokenizer = load_pretrained(args.model)
    results = {
        "model": args.model,
        "docs_per_family": args.docs,
        **evaluate(model, tokenizer, args.docs, progress=True),
    }
    # Weights that load (finite) but overflow in use: every loss is NaN, and no figure of the
    # model means anything (it printed NaN losses and wrote them, exit 0: found by a fuzz
    # pass); as ``replacement.evaluate`` refuses a set's.
    bad = [
        f"{split}.heldout_loss.{family}"
        for split in EVAL_SPLITS
        for family, loss in results[split]["heldout_loss"].items()
        if not math.isfinite(loss)
    ]
    if bad:
        named = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise UserError(f"{args.model}: the model gives non-finite figures ({named}): its "
                        "weights overflow")  # fmt: skip
    print(summary(results))
    if args.json:
        from .records import write_measured_json

        write_measured_json(args.json, results)
    return 0


if __name__ == "__main__":
    run_cli(main)
