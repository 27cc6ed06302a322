"""Head taxonomy: which Lorsa heads are previous-token, induction, successor... heads, and the
ablations that say whether each label means anything.

    python -m reports.heads --model default [--out runs/heads] [--docs 24]

Writes into ``--out``: ``heads.json`` (every head's family scores and probe counts, the labels,
thresholds, ablation results and timings), ``heads.md`` (counts and top examples per layer and
family, ablation and precision/recall tables, what is missing and why) and PNG plots
(``scores.png`` score histograms per family, ``counts.png`` labelled heads per layer,
``ablation.png`` family vs random ablations).

**Detectors.** A Lorsa head ``i`` fires at query ``q`` with ``z_i(q) = sum_k c_k``, where
``c_k = A[q, k] (x_k . w_v + b_V)`` is what key ``k`` contributes (``LorsaLayer.contributions``).
Each family names the keys a head of that family should read at each of its probe queries
(the ``*_keys`` rules). A head's family score is the share of its positive contribution mass
that comes from those keys, summed over the probe queries where the head is active::

    score_f(i) = sum_{q active} sum_{k in keys_f(q)} c_k^+  /  sum_{q active} sum_k c_k^+

Positive parts (``c^+ = A relu(x w_v + b_V)``, patterns being non-negative) keep the score in
[0, 1] when a few keys pull against the rest; where every ``c_k >= 0`` it is exactly the share
of ``z``. It counts what the head *reads*, whether its pattern or its value picks the key (a
rank-1 head whose value is positive only on one token reads that token wherever it attends).
A head gets every label whose ``THRESHOLDS`` entry it meets (a score and a minimum number of
active probe queries, without which a score is noise); labels may overlap.

Probe queries and keys, on held-out documents (``toy_models.evaluate.heldout_examples``):

- previous-token: every query ``q >= 2`` of every corpus family; key ``q - 1``.
- attention sink: the same queries; key 0 (BOS). (At ``q = 1`` a head can only choose
  between BOS and the query itself.)
- duplicate-token: queries of every corpus family whose token occurred before; keys: those
  earlier occurrences.
- induction: the ``repeat`` family's second copy; keys: the tokens right after earlier
  occurrences of the query's token. Layer >= 1 only: at layer 0 the residual stream holds a
  token and its position, so no head there can find "the token after an earlier occurrence
  of mine" (that needs a previous-token head below it); a layer-0 head can score high only
  by reading some kind of token wherever it is, and is reported as a look-alike.
- subtoken induction: held-out rare names (``ĠB rio dan``) at their second and later
  mentions, every sub-token but the last; keys: as induction, inside the earlier mentions
  of the same name. Layer >= 1, as induction.
- successor: ``successor`` lists (weekdays, months, number words, ordinals, letters;
  counting is left out, its items are several digit tokens) at the comma before an item; key:
  the previous item. That pattern alone is a previous-token head's, so mass counts only where
  the head's output also promotes the next item: its token is among the ``SUCCESSOR_TOP``
  tokens that the head's ``w_o`` raises most through the unembedding (direct path, the
  demeaned and centred ``W_U`` of ``circuits.attribution.unembedding``).
- operand fetching: ``addition``, at each query that predicts an answer digit (``=`` and the
  answer digits but the last); keys: the operand digits of the same place value as the digit
  being predicted (right-aligned: units with units). The share from any digit of the two
  operands is reported beside it (``operand_any_digit``), not used for labels.

Key 0 is left to the sink and ``q - 1`` to the previous-token family (successor aside, which
its output tells apart), so that one attention is never evidence for two mechanisms.

**Ground truth.** In local mode (the original model's computation) with every error term held
at its clean value, so that zeroing a head is not absorbed by the errors, a family's heads are
zeroed (``hook_z``) and the loss on the family's task (``TASK_OF``) is compared with zeroing as
many random heads from the same layers (seeded draws): uniformly among the layer's heads (the
target's control) and among the heads active on the task's documents (a stricter control). A
family meets the target when its heads raise the task loss by at least ``RATIO_TARGET`` times
the uniform control, and by at least ``TRUTH_DELTA`` nats (a ratio of two noise-level numbers
is no evidence). Per head, the exact single-head ablation effect on the task (found for every
head by adaptive group testing, ``single_head_effects``) marks a head as truly carrying the
task when it is at least ``TRUTH_DELTA``; each detector's precision and recall are counted
against that. (First-order estimates, ``-z dL/dz``, are no substitute here: the tasks' losses
are near zero, the softmax saturates and the estimates miss by orders of magnitude.)
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from toy_models.cli import UserError, run_cli

HEAD_FAMILIES = (
    "previous_token",
    "duplicate_token",
    "induction",
    "subtoken_induction",
    "successor",
    "attention_sink",
    "operand_fetching",
)
DIAGNOSTICS = ("operand_any_digit",)  # scored like a family, never a label
CORPUS = ("names", "addition", "successor", "repeat")


@dataclass(frozen=True)
class Threshold:
    score: float  # minimum family score
    min_active: int  # minimum number of active probe queries


# Successor heads are specific (one rank-1 head per few transitions, e.g. eighth -> ninth)
# and see only those transitions' queries; subtoken-induction queries are few per document.
THRESHOLDS: dict[str, Threshold] = {
    "previous_token": Threshold(0.5, 10),
    "duplicate_token": Threshold(0.5, 10),
    "induction": Threshold(0.5, 10),
    "subtoken_induction": Threshold(0.5, 5),
    "successor": Threshold(0.5, 3),
    "attention_sink": Threshold(0.5, 10),
    "operand_fetching": Threshold(0.5, 10),
}
MIN_LAYER = {"induction": 1, "subtoken_induction": 1}  # see the module docstring
SUCCESSOR_TOP = 10  # "promotes the successor": among the head's top tokens (1% of 1024)
TRUTH_DELTA = 0.01  # nats per target token: a head whose ablation costs this carries the task
RATIO_TARGET = 5.0

# Each task: documents of some corpus families, and target tokens (predicted at p - 1).
TASKS = {
    "repeat_second_copy": "repeat: tokens 2..n of the second copy (copying)",
    "rare_name_subtokens": "names: sub-tokens 2..n of later mentions of held-out rare names",
    "successor_items": "successor: items after a list's first (single-token kinds)",
    "addition_answers": "addition: the answer digits",
    "after_duplicate": "all families: the token after a token that occurred before",
    "all_tokens": "all families: every next token",
}
TASK_CORPUS = {
    "repeat_second_copy": ("repeat",),
    "rare_name_subtokens": ("names",),
    "successor_items": ("successor",),
    "addition_answers": ("addition",),
    "after_duplicate": CORPUS,
    "all_tokens": CORPUS,
}
# A family's task is what its probe queries predict (for previous-token and sink heads, whose
# queries are every position, the next token everywhere).
TASK_OF = {
    "previous_token": "all_tokens",
    "duplicate_token": "after_duplicate",
    "induction": "repeat_second_copy",
    "subtoken_induction": "rare_name_subtokens",
    "successor": "successor_items",
    "attention_sink": "all_tokens",
    "operand_fetching": "addition_answers",
}
# What would create a family that the default model lacks (printed when one fails).
MISSING_NOTES = {
    "duplicate_token": (
        "Nothing in the corpus rewards knowing that the current token occurred before for its "
        "own sake: in `names` the two characters' roles swap at random, so a repeated name says "
        "nothing about the next one. An IOI-style template (`When Anna and Tom went to the "
        "park, Tom gave a ring to` -> Anna), where the answer is the name that is *not* "
        "repeated, is the setting in which duplicate-token heads appear in GPT-2 and would "
        "plant them here."
    ),
    "successor": (
        "In this corpus the next item always follows the previous one directly, so the model "
        "can move the previous item to the comma with previous-token heads and look up its "
        "successor in the MLPs; heads whose own output promotes the successor exist (layer 0) "
        "but are redundant with that route. Lists with gaps (`Monday ... [filler] ... then "
        "the day after:`) that force the item to be fetched from afar, a smaller d_mlp, or "
        "more kinds of ordered lists than the MLPs can memorise would push the successor map "
        "into attention OV circuits."
    ),
    "attention_sink": (
        "A head that attends to BOS reads the same BOS value everywhere and adds a nearly "
        "constant vector: removing it is close to a no-op by design, so no task depends on "
        "sink heads (they exist and are detected; the ablation target cannot be met by "
        "construction). Sinks matter as a resting place for other heads' attention, which a "
        "pattern intervention (not a head ablation) would show; no change to the corpus or "
        "model would make zeroing them costly without making them something other than sinks."
    ),
    "previous_token": "A stronger copying task (longer repeated segments) needs more of them.",
    "induction": "Longer repeated segments or more `repeat` documents would strengthen it.",
    "subtoken_induction": "More rare names per story would strengthen it.",
    "operand_fetching": "Longer operands would need more of them.",
}


# ----------------------------------------------------------------- expected keys
Keys = dict[int, list[int]]  # query position -> key positions


def previous_token_keys(ids: list[int], queries: Iterable[int] | None = None) -> Keys:
    queries = range(2, len(ids)) if queries is None else queries
    return {q: [q - 1] for q in queries if q >= 2}


def sink_keys(ids: list[int], queries: Iterable[int] | None = None) -> Keys:
    queries = range(2, len(ids)) if queries is None else queries
    return {q: [0] for q in queries if q >= 2}


def duplicate_token_keys(ids: list[int], queries: Iterable[int] | None = None) -> Keys:
    """Earlier occurrences of the query's own token (not BOS, not ``q - 1``)."""
    queries = range(len(ids)) if queries is None else queries
    out = {q: [k for k in range(1, q - 1) if ids[k] == ids[q]] for q in queries}
    return {q: keys for q, keys in out.items() if keys}


def induction_keys(
    ids: list[int], queries: Iterable[int] | None = None, allowed: set[int] | None = None
) -> Keys:
    """The tokens right after earlier occurrences of the query's token (not ``q - 1``); with
    ``allowed``, only keys among those positions (e.g. the earlier mentions of one name)."""
    queries = range(len(ids)) if queries is None else queries
    out = {}
    for q in queries:
        keys = [k + 1 for k in range(1, q - 2) if ids[k] == ids[q]]
        keys = [k for k in keys if allowed is None or k in allowed]
        if keys:
            out[q] = keys
    return out


# ----------------------------------------------------------------- probe documents
@dataclass
class ProbeDoc:
    """One held-out document: per head family, its probe queries with their expected keys;
    per task, the positions whose token is a target (predicted at ``p - 1``)."""

    corpus: str
    ids: list[int]
    keys: dict[str, Keys] = field(default_factory=dict)
    targets: dict[str, list[int]] = field(default_factory=dict)
    successor_token: dict[int, int] = field(default_factory=dict)  # query -> next item's token


def _inside(encoded, span: tuple[int, int]) -> bool:
    """Whether a character span lies wholly inside the (possibly cut) context."""
    return span[1] <= encoded.offsets[-1][1]


def probe_doc(encoded) -> ProbeDoc:
    """Probe queries, keys and task targets of one ``toy_models.evaluate.Encoded`` document."""
    from toy_models.data import COMMON_NAMES

    ex, ids = encoded.example, encoded.ids
    probe = ProbeDoc(ex.family, ids)
    probe.keys["previous_token"] = previous_token_keys(ids)
    probe.keys["attention_sink"] = sink_keys(ids)
    probe.keys["duplicate_token"] = duplicate_token_keys(ids)
    probe.targets["all_tokens"] = list(range(1, len(ids)))
    probe.targets["after_duplicate"] = [
        q + 1 for q in probe.keys["duplicate_token"] if q + 1 < len(ids)
    ]
    if ex.family == "repeat":
        span = ex.spans["second"][0]
        first = encoded.tokens_in(ex.spans["first"][0])
        second = encoded.tokens_in(span)
        if len(first) == len(second) and _inside(encoded, span):
            probe.keys["induction"] = induction_keys(ids, second[:-1])
            probe.targets["repeat_second_copy"] = second[1:]
    elif ex.family == "names":
        keys, targets = {}, []
        for tag, spans in ex.spans.items():
            if tag.removeprefix("name:") in COMMON_NAMES:
                continue
            earlier: set[int] = set()
            for j, span in enumerate(s for s in spans if _inside(encoded, s)):
                pos = encoded.tokens_in(span)
                if j > 0 and len(pos) >= 2:
                    keys |= induction_keys(ids, pos[:-1], allowed=earlier)
                    targets += pos[1:]
                earlier |= set(pos)
        probe.keys["subtoken_induction"] = keys
        probe.targets["rare_name_subtokens"] = sorted(targets)
    elif ex.family == "successor":
        keys, targets = {}, []
        for tag, spans in ex.spans.items():
            if tag == "item:counting":
                continue  # several digit tokens per item: digit arithmetic, not a lookup
            for start, end in spans:  # each item follows ", "
                comma = ex.text.rfind(", ", 0, start - 2)
                prev_start = max(ex.text.rfind("\n", 0, start - 2) + 1, comma + 2)
                item = encoded.tokens_in((start, end))
                prev = encoded.tokens_in((prev_start, start - 2))
                if len(item) == 1 and len(prev) == 1 and _inside(encoded, (start, end)):
                    keys[item[0] - 1] = prev
                    probe.successor_token[item[0] - 1] = ids[item[0]]
                    targets.append(item[0])
        probe.keys["successor"] = keys
        probe.targets["successor_items"] = sorted(targets)
    elif ex.family == "addition":
        aligned, any_digit, targets = {}, {}, []
        for start, end in ex.spans["answer"]:
            if not _inside(encoded, (start, end)):
                continue
            line = ex.text.rfind("\n", 0, start) + 1
            a, b = re.match(r"(\d+)\+(\d+)=", ex.text[line:]).groups()
            operands = (
                encoded.tokens_in((line, line + len(a))),
                encoded.tokens_in((line + len(a) + 1, line + len(a) + 1 + len(b))),
            )
            answer = encoded.tokens_in((start, end))
            for j, p in enumerate(answer):
                place, q = len(answer) - 1 - j, p - 1  # place 0: units
                same_place = [d[-1 - place] for d in operands if place < len(d)]
                aligned[q] = [k for k in same_place if k != q - 1]
                any_digit[q] = [k for d in operands for k in d if k != q - 1]
                targets.append(p)
        probe.keys["operand_fetching"] = {q: k for q, k in aligned.items() if k}
        probe.keys["operand_any_digit"] = {q: k for q, k in any_digit.items() if k}
        probe.targets["addition_answers"] = targets
    return probe


def build_probes(tokenizer, n_docs: int, n_ctx: int) -> dict[str, list[ProbeDoc]]:
    """``n_docs`` held-out documents of each corpus family (``toy_models.evaluate``'s probe
    sets: the same seed and encoding), with their probe queries and task targets."""
    from toy_models.evaluate import encode, heldout_examples

    return {
        corpus: [probe_doc(encode(tokenizer, ex, n_ctx)) for ex in heldout_examples(corpus, n_docs)]
        for corpus in CORPUS
    }


def padded(probes: list[ProbeDoc]) -> Int[Tensor, "batch pos"]:
    """Right-padded with BOS: through a causal model padding never reaches earlier positions."""
    width = max(len(p.ids) for p in probes)
    return torch.tensor([p.ids + [p.ids[0]] * (width - len(p.ids)) for p in probes])


# ----------------------------------------------------------------- scores
def key_mass(
    pattern: Float[Tensor, "batch qk q k"],
    values: Float[Tensor, "batch k ov"],
    key_mask: Bool[Tensor, "batch q k"] | None = None,
) -> Float[Tensor, "batch q ov"]:
    """``sum_k A[q, k] relu(v_k)`` over the keys in ``key_mask`` (all keys when None): every
    head's positive contribution mass from those keys in one grouped product, without
    forming per-head patterns (heads ``g * group_size ...`` share QK head ``g``)."""
    b, n_k, n_ov = values.shape
    n_qk = pattern.shape[1]
    v = values.clamp(min=0).view(b, n_k, n_qk, n_ov // n_qk).transpose(1, 2)  # batch qk k group
    if key_mask is not None:
        pattern = pattern * key_mask[:, None]
    return (pattern @ v).transpose(1, 2).reshape(b, pattern.shape[2], n_ov)


@dataclass
class FamilyScores:
    """One family's sums over its probe queries, for each head of one layer."""

    expected: Float[Tensor, " ov"]  # positive mass from the expected keys, active queries
    total: Float[Tensor, " ov"]  # positive mass from every key, active queries
    active: Float[Tensor, " ov"]  # number of active probe queries
    best: Float[Tensor, " ov"]  # the largest expected mass at one query
    best_at: list[tuple[str, int, int] | None]  # (corpus, doc, query) of it: the example

    @classmethod
    def zeros(cls, n_ov: int) -> FamilyScores:
        return cls(*(torch.zeros(n_ov) for _ in range(4)), [None] * n_ov)

    @property
    def score(self) -> Float[Tensor, " ov"]:
        return torch.where(self.total > 0, self.expected / self.total.clamp(min=1e-30), 0.0)

    def add(
        self,
        expected: Float[Tensor, "batch q ov"],
        total: Float[Tensor, "batch q ov"],
        active: Bool[Tensor, "batch q ov"],
        corpus: str,
        first_doc: int = 0,
    ) -> None:
        expected, total = expected * active, total * active
        self.expected += expected.sum((0, 1))
        self.total += total.sum((0, 1))
        self.active += active.sum((0, 1))
        n_q = expected.shape[1]
        best, where = expected.flatten(0, 1).max(0)
        for i in (best > self.best).nonzero().flatten().tolist():
            self.best[i] = best[i]
            self.best_at[i] = (corpus, first_doc + int(where[i]) // n_q, int(where[i]) % n_q)


def key_masks(
    probes: list[ProbeDoc], family: str, n: int
) -> tuple[Bool[Tensor, "batch q k"], Bool[Tensor, "batch q"]]:
    """A family's expected (query, key) pairs over padded documents, and its probe queries."""
    mask = torch.zeros(len(probes), n, n, dtype=torch.bool)
    for j, probe in enumerate(probes):
        for q, ks in probe.keys.get(family, {}).items():
            mask[j, q, ks] = True
    return mask, mask.any(-1)


def promoted_tokens(
    lorsa, unembed: Float[Tensor, "vocab d_model"], top: int
) -> Bool[Tensor, "ov vocab"]:
    """Whether each token is among the ``top`` that a head's output raises most through the
    direct path (``unembed``: demeaned, centred ``W_U`` columns, one row per token)."""
    effect = lorsa.W_O @ unembed.T
    promoted = torch.zeros_like(effect, dtype=torch.bool)
    return promoted.scatter_(1, effect.topk(top, dim=1).indices, True)


@dataclass
class HeadScores:
    """``families[f][l]``: family (or diagnostic) f's sums for the heads of layer l;
    ``lorsa_inputs[corpus][l]``: the Lorsa inputs of the probe documents, for examples."""

    families: dict[str, list[FamilyScores]]
    lorsa_inputs: dict[str, list[Float[Tensor, "batch pos d_model"]]]


def score_heads(
    replacement, probes: dict[str, list[ProbeDoc]], batch_size: int = 32, progress: bool = True
) -> HeadScores:
    """Run the probe documents once (local mode: the original model's residual stream) and
    add up every family's key mass for every head."""
    from tqdm import tqdm

    from circuits.attribution import unembedding

    n_layers = replacement.cfg.n_layers
    lorsas = replacement.lorsas
    names = HEAD_FAMILIES + DIAGNOSTICS
    families = {f: [FamilyScores.zeros(m.cfg.n_ov_heads) for m in lorsas] for f in names}
    unembed = unembedding(replacement.model)
    promoted = [promoted_tokens(lorsa, unembed, SUCCESSOR_TOP) for lorsa in lorsas]
    hooks = {f"blocks.{l}.lorsa.{h}" for l in range(n_layers) for h in ("hook_in", "hook_z")}
    inputs: dict[str, list[list[Tensor]]] = {c: [[] for _ in lorsas] for c in probes}
    chunks = [(c, i) for c, docs in probes.items() for i in range(0, len(docs), batch_size)]
    for corpus, first in tqdm(chunks, desc="scoring heads", disable=not progress, leave=False):
        batch = probes[corpus][first : first + batch_size]
        tokens = padded(batch)
        n = tokens.shape[1]
        with torch.no_grad():
            _, cache = replacement.run_with_cache(
                tokens, mode="local", names_filter=lambda name: name in hooks
            )
            for l, lorsa in enumerate(lorsas):
                x, z = cache[f"blocks.{l}.lorsa.hook_in"], cache[f"blocks.{l}.lorsa.hook_z"]
                inputs[corpus][l].append(x)
                pattern, values = lorsa.patterns(x), lorsa.values(x)
                total = key_mass(pattern, values)
                for family in names:
                    mask, queries = key_masks(batch, family, n)
                    if not queries.any():
                        continue
                    expected = key_mass(pattern, values, mask)
                    if family == "successor":
                        target = torch.zeros(len(batch), n, dtype=torch.long)
                        for j, probe in enumerate(batch):
                            for q, token in probe.successor_token.items():
                                target[j, q] = token
                        expected = expected * promoted[l][:, target].permute(1, 2, 0)
                    active = (z > 0) & queries[..., None]
                    families[family][l].add(expected, total, active, corpus, first)
    width = {c: max(len(p.ids) for p in docs) for c, docs in probes.items()}
    lorsa_inputs = {
        c: [torch.cat([_pad_to(x, width[c]) for x in per_layer]) for per_layer in layers]
        for c, layers in inputs.items()
    }
    return HeadScores(families, lorsa_inputs)


def _pad_to(x: Float[Tensor, "batch pos d"], n: int) -> Float[Tensor, "batch n d"]:
    return torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[1]))


def labels(
    scores: HeadScores,
    thresholds: dict[str, Threshold] = THRESHOLDS,
    min_layer: dict[str, int] = MIN_LAYER,
) -> dict[str, dict[int, list[int]]]:
    """``{family: {layer: [head, ...]}}``, each layer's heads by decreasing score."""
    out: dict[str, dict[int, list[int]]] = {}
    for family in HEAD_FAMILIES:
        out[family] = {}
        for l, s in enumerate(scores.families[family]):
            heads = passing(s, thresholds[family])
            out[family][l] = heads.tolist() if l >= min_layer.get(family, 0) else []
    return out


def passing(s: FamilyScores, t: Threshold) -> Int[Tensor, " n"]:
    """The heads meeting a threshold, by decreasing score."""
    heads = ((s.score >= t.score) & (s.active >= t.min_active)).nonzero().flatten()
    return heads[s.score[heads].argsort(descending=True, stable=True)]


# ----------------------------------------------------------------- ablation
@dataclass
class TaskBatch:
    """One task's documents (padded), its target mask, and what an ablation starts from: the
    clean local-mode errors (held fixed) and the clean residual stream before each layer."""

    tokens: Int[Tensor, "batch pos"]
    targets: Bool[Tensor, "batch pos"]  # position p is a target: its token, predicted at p - 1
    errors: dict[str, Float[Tensor, "batch pos d_model"]]  # hook name -> clean error
    resid_pre: list[Float[Tensor, "batch pos d_model"]]  # per layer
    active: list[Bool[Tensor, " ov"]]  # per layer: heads active at or before some target


def task_batches(replacement, probes: dict[str, list[ProbeDoc]]) -> dict[str, list[TaskBatch]]:
    """Every task's documents with their clean local-mode state. A task spread over k corpus
    families takes the first 1/k of each one's documents, so that every task is measured on
    about as many documents (and costs about as much per ablation)."""
    out: dict[str, list[TaskBatch]] = {task: [] for task in TASKS}
    for task, corpora in TASK_CORPUS.items():
        for corpus in corpora:
            docs = probes[corpus][: max(1, len(probes[corpus]) // len(corpora))]
            batch = _task_batch(replacement, docs, task)
            if batch is not None:
                out[task].append(batch)
    return out


def _task_batch(replacement, docs: list[ProbeDoc], task: str) -> TaskBatch | None:
    n_layers = replacement.cfg.n_layers
    tokens = padded(docs)
    targets = torch.zeros_like(tokens, dtype=torch.bool)
    for j, probe in enumerate(docs):
        targets[j, probe.targets.get(task, [])] = True
    if not targets.any():
        return None
    with torch.no_grad():
        _, cache = replacement.run_with_cache(
            tokens,
            mode="local",
            names_filter=lambda n: n.endswith(("hook_error", "hook_resid_pre", "lorsa.hook_z")),
        )
    # A head silent at every position up to the last target cannot move the task's loss:
    # ablating it is exactly a no-op, and group testing skips it.
    upto = targets.flip(1).cummax(1).values.flip(1)
    return TaskBatch(
        tokens,
        targets,
        {n: v for n, v in cache.items() if n.endswith("hook_error")},
        [cache[f"blocks.{l}.hook_resid_pre"] for l in range(n_layers)],
        [
            ((cache[f"blocks.{l}.lorsa.hook_z"] > 0) & upto[..., None]).any(1).any(0)
            for l in range(n_layers)
        ],
    )


def ablation_hooks(batch: TaskBatch, heads: dict[int, list[int]]) -> list[tuple[str, Callable]]:
    """Zero the given heads (``hook_z``) and hold every error at its clean value."""

    def zero(index: list[int]):
        def hook(z, hook):
            z = z.clone()
            z[..., index] = 0
            return z

        return hook

    def frozen(value: Tensor):
        return lambda act, hook: value

    hooks = [(name, frozen(value)) for name, value in batch.errors.items()]
    return hooks + [(f"blocks.{l}.lorsa.hook_z", zero(h)) for l, h in heads.items() if len(h)]


def ablated_logits(
    replacement, batch: TaskBatch, heads: dict[int, list[int]]
) -> Float[Tensor, "batch pos vocab"]:
    """Logits with ``heads`` zeroed and errors frozen. The layers below the first ablated one
    compute what the clean run computed, so the run starts from its residual stream there."""
    start = min((l for l, h in heads.items() if len(h)), default=0)
    model = replacement.model
    with torch.no_grad(), replacement.hooks(fwd_hooks=ablation_hooks(batch, heads)):
        resid = batch.resid_pre[start]
        for block, original in zip(replacement.blocks[start:], model.blocks[start:], strict=True):
            resid = block(resid, original)
        return replacement.ln_final(resid) @ model.W_U + model.b_U


def task_loss(replacement, batches: list[TaskBatch], heads: dict[int, list[int]]) -> float:
    """Mean cross-entropy (nats) over a task's target tokens with ``heads`` zeroed."""
    total, count = 0.0, 0
    for batch in batches:
        lp = ablated_logits(replacement, batch, heads)[:, :-1].log_softmax(-1)
        nll = -lp.gather(-1, batch.tokens[:, 1:, None])[..., 0]
        mask = batch.targets[:, 1:]
        total += float(nll[mask].sum())
        count += int(mask.sum())
    return total / max(count, 1)


def active_heads(batches: list[TaskBatch]) -> list[list[int]]:
    """Per layer, the heads active on a task's documents (at or before some target)."""
    n_layers = len(batches[0].active)
    return [
        torch.stack([b.active[l] for b in batches]).any(0).nonzero().flatten().tolist()
        for l in range(n_layers)
    ]


def random_like(
    heads: dict[int, list[int]], pools: list[list[int]], n_ov: list[int], rng: random.Random
) -> dict[int, list[int]]:
    """As many heads per layer as ``heads`` has, drawn from ``pools[layer]`` minus those heads
    (topped up from the layer's other heads where the pool is too small)."""
    out = {}
    for l, chosen in heads.items():
        if not chosen:
            continue
        pool = sorted(set(pools[l]) - set(chosen))
        if len(pool) < len(chosen):
            rest = sorted(set(range(n_ov[l])) - set(chosen) - set(pool))
            pool += rng.sample(rest, len(chosen) - len(pool))
        out[l] = rng.sample(pool, len(chosen))
    return out


def family_ablation(
    replacement,
    batches: dict[str, list[TaskBatch]],
    clean: dict[str, float],
    family_heads: dict[int, list[int]],
    task: str,
    draws: int,
    seed: int,
) -> dict:
    """A family's heads zeroed vs as many random heads from the same layers: the increase of
    the task's loss, and of every other task's (does it hurt its own task most?)."""
    n_ov = [lorsa.cfg.n_ov_heads for lorsa in replacement.lorsas]
    n_heads = sum(len(h) for h in family_heads.values())
    out: dict = {"task": task, "n_heads": n_heads, "clean_loss": clean.get(task)}
    if not batches.get(task):
        return out | {"skipped": "the probe documents hold no target of this task"}
    if not n_heads:
        return out
    rng = random.Random(f"heads/{seed}/{task}/{n_heads}")
    uniform = [list(range(n)) for n in n_ov]
    matched = active_heads(batches[task])
    controls = {
        "random": [random_like(family_heads, uniform, n_ov, rng) for _ in range(draws)],
        # Stricter and secondary: half as many draws.
        "matched_random": [
            random_like(family_heads, matched, n_ov, rng) for _ in range(max(1, draws // 2))
        ],
    }
    out["increase"] = task_loss(replacement, batches[task], family_heads) - clean[task]
    for name, drawn in controls.items():
        increases = [task_loss(replacement, batches[task], r) - clean[task] for r in drawn]
        out[f"{name}_increases"] = increases
        out[f"{name}_mean"] = sum(increases) / len(increases)
    out["ratio"] = _ratio(out["increase"], out["random_mean"])
    out["matched_ratio"] = _ratio(out["increase"], out["matched_random_mean"])
    out["meets_target"] = bool(
        out["increase"] >= TRUTH_DELTA and out["increase"] >= RATIO_TARGET * out["random_mean"]
    )
    out["other_tasks"] = {
        t: task_loss(replacement, b, family_heads) - clean[t]
        for t, b in batches.items()
        if b and t != task
    }
    return out


def _ratio(a: float, b: float) -> float | None:
    """``a / b``, or None where ``b <= 0`` (JSON has no infinity; the caller says why)."""
    return a / b if b > 0 else None


def single_head_effects(
    replacement,
    batches: list[TaskBatch],
    delta: float,
    chunk: int = 32,
    progress: bool = False,
) -> tuple[dict[tuple[int, int], float], int]:
    """Exact single-head ablation effects on a task's loss, by adaptive group testing.

    Heads silent on the task's documents have no effect and are skipped. The others are
    ablated ``chunk`` at a time; a chunk that raises the loss by ``delta`` or more is halved
    until single heads remain, whose effect is then exact; a chunk below ``delta`` is taken to
    hold no head above it (such a head would have to be cancelled by its neighbours). Returns
    ``{(layer, head): loss increase}`` for the heads measured alone and the number of runs.
    """
    from tqdm import tqdm

    if not batches:
        return {}, 0
    clean = task_loss(replacement, batches, {})
    stack = [
        (l, heads[i : i + chunk])
        for l, heads in enumerate(active_heads(batches))
        for i in range(0, len(heads), chunk)
    ]
    effects: dict[tuple[int, int], float] = {}
    runs = 1
    bar = tqdm(total=len(stack), desc="single heads", disable=not progress, leave=False)
    while stack:
        l, heads = stack.pop()
        effect = task_loss(replacement, batches, {l: heads}) - clean
        runs += 1
        bar.update()
        if len(heads) == 1:
            effects[(l, heads[0])] = effect
        elif effect >= delta:
            stack += [(l, heads[: len(heads) // 2]), (l, heads[len(heads) // 2 :])]
            bar.total += 2
    bar.close()
    return effects, runs


def precision_recall(labelled: set[tuple[int, int]], true: set[tuple[int, int]]) -> dict:
    tp = len(labelled & true)
    return {
        "true_positives": tp,
        "false_positives": len(labelled - true),
        "false_negatives": len(true - labelled),
        "precision": tp / len(labelled) if labelled else None,
        "recall": tp / len(true) if true else None,
    }


# ----------------------------------------------------------------- the whole analysis
@dataclass(frozen=True)
class Settings:
    docs: int = 24  # held-out documents per corpus family (scores, family ablations)
    truth_docs: int = 8  # the first of them, for the single-head ablations (the costly part)
    draws: int = 10  # random head sets for the control (half as many for the stricter one)
    seed: int = 0
    truth: bool = True  # single-head ground truth (precision / recall)
    examples: int = 3  # top heads per family and layer shown with an example


def analyse(replacement, tokenizer, settings: Settings = Settings(), progress: bool = True):
    """Scores, labels, ablations and ground truth: ``(results, scores, probes)``, where
    ``results`` is what ``heads.json`` holds."""
    from tqdm import tqdm

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    probes = build_probes(tokenizer, settings.docs, replacement.cfg.n_ctx)
    scores = score_heads(replacement, probes, progress=progress)
    labelled = labels(scores)
    seconds["scores"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    batches = task_batches(replacement, probes)
    clean = {task: task_loss(replacement, b, {}) for task, b in batches.items() if b}
    ablation = {}
    for family in tqdm(HEAD_FAMILIES, desc="family ablations", disable=not progress, leave=False):
        ablation[family] = family_ablation(
            replacement, batches, clean, labelled[family], TASK_OF[family], settings.draws,
            settings.seed,
        )  # fmt: skip
    seconds["family_ablations"] = time.perf_counter() - t0

    label_sets = {f: {(l, h) for l, hs in labelled[f].items() for h in hs} for f in HEAD_FAMILIES}
    truth, detectors = {}, {}
    if settings.truth:
        t0 = time.perf_counter()
        subset = {c: docs[: settings.truth_docs] for c, docs in probes.items()}
        truth_batches = task_batches(replacement, subset)
        for task in tqdm(sorted(set(TASK_OF.values())), desc="single-head ablations",
                         disable=not progress, leave=False):  # fmt: skip
            effects, runs = single_head_effects(
                replacement, truth_batches[task], TRUTH_DELTA, progress=progress
            )
            true = sorted((lh for lh, e in effects.items() if e >= TRUTH_DELTA),
                          key=lambda lh: -effects[lh])  # fmt: skip
            truth[task] = {
                "forward_passes": runs,
                "heads_measured_alone": len(effects),
                "true_heads": [
                    {
                        "layer": l,
                        "head": h,
                        "increase": effects[(l, h)],
                        "labels": [f for f in HEAD_FAMILIES if (l, h) in label_sets[f]],
                    }
                    for l, h in true
                ],  # fmt: skip
            }
        for family in HEAD_FAMILIES:
            task = TASK_OF[family]
            true = {(t["layer"], t["head"]) for t in truth[task]["true_heads"]}
            detectors[family] = precision_recall(label_sets[family], true) | {
                "task": task,
                "true_heads_by_label": _by_label(truth[task]["true_heads"]),
            }
        seconds["single_head_ablations"] = time.perf_counter() - t0

    results = {
        "settings": {
            **settings.__dict__,
            "thresholds": {f: t.__dict__ for f, t in THRESHOLDS.items()},
            "min_layer": MIN_LAYER,
            "successor_top": SUCCESSOR_TOP,
            "truth_delta": TRUTH_DELTA,
            "ratio_target": RATIO_TARGET,
            "tasks": {t: {"description": d, "corpus": TASK_CORPUS[t]} for t, d in TASKS.items()},
        },
        "n_ov_heads": [lorsa.cfg.n_ov_heads for lorsa in replacement.lorsas],
        "probe_queries": {
            f: sum(len(p.keys.get(f, {})) for docs in probes.values() for p in docs)
            for f in HEAD_FAMILIES + DIAGNOSTICS
        },
        "clean_loss": clean,
        "families": {
            f: _family_summary(replacement, tokenizer, scores, probes, labelled, f, settings)
            for f in HEAD_FAMILIES
        },
        "scores": {
            f: {
                "score": [[round(v, 4) for v in s.score.tolist()] for s in per_layer],
                "active": [[int(v) for v in s.active.tolist()] for s in per_layer],
            }
            for f, per_layer in scores.families.items()
        },
        "ablation": ablation,
        "truth": truth,
        "detectors": detectors,
        "seconds": seconds,
    }
    results["overlaps"] = {
        f: {g: len(label_sets[f] & label_sets[g]) for g in HEAD_FAMILIES if g != f}
        for f in HEAD_FAMILIES
    }
    results["found"] = {f: results["families"][f]["total"] > 0 for f in HEAD_FAMILIES}
    results["met"] = {f: bool(ablation[f].get("meets_target")) for f in HEAD_FAMILIES}
    return results, scores, probes


def _by_label(true_heads: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in true_heads:
        for name in t["labels"] or ["(none)"]:
            out[name] = out.get(name, 0) + 1
    return out


def _family_summary(replacement, tokenizer, scores, probes, labelled, family, settings) -> dict:
    per_layer = scores.families[family]
    heads = []
    for l, hs in labelled[family].items():
        s = per_layer[l]
        for rank, h in enumerate(hs):
            entry = {"layer": l, "head": h, "score": float(s.score[h]), "active": int(s.active[h])}
            if rank < settings.examples:
                entry["example"] = example(replacement, tokenizer, scores, probes, family, l, h)
            heads.append(entry)
    heads.sort(key=lambda e: -e["score"])
    t = THRESHOLDS[family]
    below = [
        int(len(passing(per_layer[l], t)))
        for l in range(min(MIN_LAYER.get(family, 0), len(per_layer)))
    ]
    return {
        "task": TASK_OF[family],
        "threshold": t.__dict__,
        "min_layer": MIN_LAYER.get(family, 0),
        "counts_per_layer": [len(labelled[family][l]) for l in range(len(per_layer))],
        "total": len(heads),
        "look_alikes_below_min_layer": sum(below),
        "heads": heads,
    }


def example(replacement, tokenizer, scores: HeadScores, probes, family: str, layer: int, head: int):
    """The probe query where the head read most from the family's keys: the query token, the
    expected key it read most from, and that key's share of ``z`` (``LorsaLayer.contributions``)."""
    where = scores.families[family][layer].best_at[head]
    if where is None:
        return None
    corpus, doc, q = where
    probe = probes[corpus][doc]
    x = scores.lorsa_inputs[corpus][layer][doc, : len(probe.ids)]
    with torch.no_grad():
        c = replacement.lorsas[layer].contributions(x, q, torch.tensor([head]))[0]
    key = max(probe.keys[family][q], key=lambda k: float(c[k]))
    return {
        "corpus": corpus,
        "doc": doc,
        "query": q,
        "query_token": _token(tokenizer, probe.ids[q]),
        "key": key,
        "key_token": _token(tokenizer, probe.ids[key]),
        "share_of_z": float(c[key] / c.sum()) if float(c.sum()) > 0 else None,
        "context": _context(tokenizer, probe.ids, key, q),
    }


def _token(tokenizer, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)


def _context(tokenizer, ids: list[int], key: int, query: int, width: int = 3) -> str:
    """The text around the key and the query, each in brackets, with ``…`` for a long gap."""

    def piece(positions: Iterable[int]) -> str:
        return "".join(
            f"[{_token(tokenizer, ids[p])}]" if p in (key, query) else _token(tokenizer, ids[p])
            for p in positions
        )

    left = range(max(0, key - width + 1), key + 1)
    if query - key <= width + 1:
        return piece(range(left.start, query + 1))
    return piece(left) + " … " + piece(range(query - width + 1, query + 1))


# ----------------------------------------------------------------- report files
def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _md(text: str) -> str:
    """Text that is safe inside a Markdown table cell's code span."""
    return text.replace("\n", "⏎").replace("|", "\\|").replace("`", "'")


def _head_id(l: int, h: int) -> str:
    return f"L{l}H{h}"


def markdown(results: dict) -> str:
    """The report page: summary, per-layer tables with examples, ablations, ground truth, and
    what is missing with its evidence."""
    s, fams, abl = results["settings"], results["families"], results["ablation"]
    n_layers = len(results["n_ov_heads"])
    layer_cols = " | ".join(f"L{l}" for l in range(n_layers))
    lines = [
        f"# Lorsa head taxonomy: model `{results['model']}`",
        "",
        f"{s['docs']} held-out documents per corpus family (single-head ground truth on the "
        f"first {s['truth_docs']}); {results['n_ov_heads'][0]} Lorsa OV heads per layer. A "
        "head's family score is the share of its positive per-key contribution mass, over the "
        "family's probe queries where it is active, that comes from the keys the family "
        "predicts (see `reports/heads.py`). Ablations: local mode, errors frozen at their clean "
        f"values; {s['draws']} random head sets per control, drawn from the same layers "
        "(uniformly, and among heads active on the task's documents).",
        "",
        "## Summary",
        "",
        f"| family | threshold | {layer_cols} | heads | task | loss +, family | + random | ratio "
        f"| + active random | ratio | target met | precision | recall |",
        "|---" * (12 + n_layers) + "|",
    ]
    for f in HEAD_FAMILIES:
        fam, a, d = fams[f], abl[f], results["detectors"].get(f, {})
        t = fam["threshold"]
        counts = " | ".join(str(c) for c in fam["counts_per_layer"])
        lines.append(
            f"| {f} | {t['score']} (>= {t['min_active']} q) | {counts} | {fam['total']} | "
            f"`{fam['task']}` | {_fmt(a.get('increase'), '.4f')} | "
            f"{_fmt(a.get('random_mean'), '.4f')} | {_fmt(a.get('ratio'), '.1f')} | "
            f"{_fmt(a.get('matched_random_mean'), '.4f')} | {_fmt(a.get('matched_ratio'), '.1f')} "
            f"| {'yes' if results['met'][f] else '**no**'} | {_fmt(d.get('precision'), '.2f')} "
            f"| {_fmt(d.get('recall'), '.2f')} |"
        )
    lines += [
        "",
        f"Target: every family found (>= 1 head) and its heads' ablation raises its task's loss "
        f">= {s['ratio_target']:g}x as much as as many random heads (and by >= "
        f"{s['truth_delta']} nats). Precision/recall: against heads whose single-head ablation "
        f"raises the family's task loss by >= {s['truth_delta']} nats. Probe queries per "
        "family: " + ", ".join(f"{f} {n}" for f, n in results["probe_queries"].items()) + ".",
        "",
        "Reading precision and recall: single-head ground truth undercounts a family whose heads "
        "are redundant (each dispensable alone, the family as a whole not: compare the family "
        "ablation), and it counts heads that carry the task by another mechanism (lowering "
        "recall); the ground-truth table below says which labels those heads carry.",
        "",
        "## Per layer",
    ]
    for l in range(n_layers):
        lines += [
            "",
            f"### Layer {l}",
            "",
            "| family | heads | top heads (score, active queries) | example: [key] the top head "
            "reads most at [query] |",
            "|---|---|---|---|",
        ]
        for f in HEAD_FAMILIES:
            heads = [h for h in fams[f]["heads"] if h["layer"] == l]
            top = ", ".join(
                f"{_head_id(l, h['head'])} {h['score']:.2f} ({h['active']})" for h in heads[:5]
            )
            ex = next((h["example"] for h in heads if h.get("example")), None)
            shown = ""
            if ex:
                shown = (
                    f"{_head_id(l, heads[0]['head'])}: `{_md(ex['context'])}` "
                    f"({_fmt(ex['share_of_z'], '.0%')} of z from the key)"
                )
            elif l < fams[f]["min_layer"]:
                shown = (
                    f"not labelled below layer {fams[f]['min_layer']} "
                    f"({fams[f]['look_alikes_below_min_layer']} look-alikes pass the threshold)"
                )
            lines.append(f"| {f} | {len(heads)} | {top} | {shown} |")
    short = [f.replace("_", " ") for f in HEAD_FAMILIES]
    lines += [
        "",
        "## Heads with two labels",
        "",
        "Labels may overlap; a head counted here is zeroed with both families.",
        "",
        "| | " + " | ".join(short) + " |",
        "|---" * (len(short) + 1) + "|",
    ]
    for f, name in zip(HEAD_FAMILIES, short, strict=True):
        cells = ["" if g == f else str(results["overlaps"][f][g] or "") for g in HEAD_FAMILIES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    tasks = list(results["clean_loss"])
    lines += [
        "",
        "## Ablating each family on every task",
        "",
        "Loss increase (nats per target token) when the family's heads are zeroed; bold: the "
        "family's own task. Clean losses: "
        + ", ".join(f"`{t}` {v:.4f}" for t, v in results["clean_loss"].items())
        + ".",
        "",
        "| family heads zeroed | " + " | ".join(f"`{t}`" for t in tasks) + " |",
        "|---" * (len(tasks) + 1) + "|",
    ]
    for f in HEAD_FAMILIES:
        a = abl[f]
        if "increase" not in a:
            why = a.get("skipped", "no heads")
            lines.append(f"| {f} ({why}) |" + " |" * len(tasks))
            continue
        cells = [
            f"**{a['increase']:.4f}**" if t == a["task"] else _fmt(a["other_tasks"].get(t), ".4f")
            for t in tasks
        ]
        lines.append(f"| {f} ({a['n_heads']}) | " + " | ".join(cells) + " |")
    if results["truth"]:
        lines += [
            "",
            "## Ground truth: single-head ablations",
            "",
            "Exact loss increase of zeroing one head, for every head active on the task's "
            "documents (adaptive group testing: chunks of heads below the threshold are not "
            "split further) and for every labelled head.",
            "",
            "| task | forward passes | heads >= threshold | their labels | strongest |",
            "|---|---|---|---|---|",
        ]
        for task, t in results["truth"].items():
            strongest = ", ".join(
                f"{_head_id(h['layer'], h['head'])} +{h['increase']:.3f}"
                + (f" ({'/'.join(h['labels'])})" if h["labels"] else "")
                for h in t["true_heads"][:8]
            )
            by_label = _by_label(t["true_heads"])
            lines.append(
                f"| `{task}` | {t['forward_passes']} | {len(t['true_heads'])} | "
                + ", ".join(f"{k} {v}" for k, v in by_label.items())
                + f" | {strongest} |"
            )
    missing = [f for f in HEAD_FAMILIES if not (results["found"][f] and results["met"][f])]
    lines += ["", "## Families not found, or without ablation evidence", ""]
    if not missing:
        lines.append("None: every family is found and meets the ablation target.")
    for f in missing:
        a, fam = abl[f], fams[f]
        if not results["found"][f]:
            best = max(
                (max(layer) for layer in results["scores"][f]["score"] if layer), default=0.0
            )
            evidence = (
                f"no head reaches the threshold (best score {best:.2f}; "
                f"{fam['look_alikes_below_min_layer']} look-alikes below layer "
                f"{fam['min_layer']})."
            )
        elif "skipped" in a:
            evidence = f"{fam['total']} heads found; ablation skipped: {a['skipped']}."
        else:
            evidence = (
                f"{fam['total']} heads found, but zeroing them raises `{a['task']}` loss by "
                f"{a['increase']:.4f} nats vs {a['random_mean']:.4f} for random heads "
                f"(ratio {_fmt(a['ratio'], '.2f')}; target {s['ratio_target']:g}x and >= "
                f"{s['truth_delta']} nats)."
            )
        hurts = {
            g: abl[g]["other_tasks"][a["task"]]
            for g in HEAD_FAMILIES
            if g != f and a["task"] in abl[g].get("other_tasks", {})
        }
        if hurts:
            g = max(hurts, key=hurts.get)
            evidence += (
                f" Of the other families, zeroing the {g} heads hurts `{a['task']}` most: "
                f"+{hurts[g]:.4f} nats."
            )
        truth = results["truth"].get(a["task"])
        if truth:
            carriers = ", ".join(
                f"{_head_id(h['layer'], h['head'])} +{h['increase']:.3f} "
                f"({'/'.join(h['labels']) or 'unlabelled'})"
                for h in truth["true_heads"][:6]
            )
            evidence += (
                f" The heads whose single ablation costs the task >= {s['truth_delta']} nats: "
                f"{len(truth['true_heads'])} ({carriers or 'none'})."
            )
        lines += [f"- **{f}**: {evidence} {MISSING_NOTES[f]}", ""]
    lines += [
        "## Plots",
        "",
        "![score histograms](scores.png)",
        "",
        "![labelled heads per layer](counts.png)",
        "",
        "![ablations](ablation.png)",
        "",
        "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in results["seconds"].items()),
        "",
    ]
    return "\n".join(lines)


def _save_png(fig, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    tmp.replace(path)


def plots(results: dict, out: Path) -> list[Path]:
    """Score histograms per family, labelled heads per layer, family vs random ablations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = HEAD_FAMILIES + DIAGNOSTICS
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, f in zip(axes.flat, names, strict=True):
        t = THRESHOLDS.get(f, THRESHOLDS["operand_fetching"])
        sc = results["scores"][f]
        for l, (score, active) in enumerate(zip(sc["score"], sc["active"], strict=True)):
            kept = [v for v, a in zip(score, active, strict=True) if a >= t.min_active]
            ax.hist(kept, bins=40, range=(0, 1), histtype="step", label=f"L{l} ({len(kept)})")
        ax.axvline(t.score, color="k", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(f + (" (diagnostic)" if f in DIAGNOSTICS else ""))
        ax.set_xlabel(f"score (heads with >= {t.min_active} active queries)")
        ax.legend(fontsize=7)
    fig.suptitle("Family scores of every Lorsa head (dashed: label threshold)")
    fig.tight_layout()
    _save_png(fig, out / "scores.png")
    plt.close(fig)
    written.append(out / "scores.png")

    n_layers = len(results["n_ov_heads"])
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(HEAD_FAMILIES)
    for j, f in enumerate(HEAD_FAMILIES):
        counts = results["families"][f]["counts_per_layer"]
        ax.bar([l + j * width for l in range(n_layers)], counts, width, label=f)
    ax.set_xticks(
        [l + 0.4 - width / 2 for l in range(n_layers)], [f"L{l}" for l in range(n_layers)]
    )
    ax.set_ylabel("labelled heads")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Labelled heads per layer and family")
    fig.tight_layout()
    _save_png(fig, out / "counts.png")
    plt.close(fig)
    written.append(out / "counts.png")

    fig, ax = plt.subplots(figsize=(10, 4))
    abl = results["ablation"]
    for j, (key, label) in enumerate(
        [("increase", "family heads"), ("random_mean", "random heads"),
         ("matched_random_mean", "random active heads")]
    ):  # fmt: skip
        values = [abl[f].get(key, 0.0) for f in HEAD_FAMILIES]
        ax.bar([i + j * 0.27 for i in range(len(HEAD_FAMILIES))], values, 0.27, label=label)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xticks(range(len(HEAD_FAMILIES)), [f.replace("_", "\n") for f in HEAD_FAMILIES])
    ax.set_ylabel("task loss increase (nats)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Zeroing a family's heads vs as many random heads, on the family's task")
    fig.tight_layout()
    _save_png(fig, out / "ablation.png")
    plt.close(fig)
    written.append(out / "ablation.png")
    return written


def write_report(results: dict, out: Path) -> list[Path]:
    from toy_models.files import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "heads.json", results)
    write_text_atomic(out / "heads.md", markdown(results))
    return [out / "heads.json", out / "heads.md", *plots(results, out)]


def summary(results: dict) -> str:
    lines = []
    for f in HEAD_FAMILIES:
        fam, a, d = results["families"][f], results["ablation"][f], results["detectors"].get(f, {})
        lines.append(
            f"{f:19s} heads {fam['total']:4d} per layer {fam['counts_per_layer']}; zeroing them: "
            f"+{_fmt(a.get('increase'), '.4f')} nats on {a['task']} vs random "
            f"+{_fmt(a.get('random_mean'), '.4f')} (ratio {_fmt(a.get('ratio'), '.1f')}, "
            f"{'met' if results['met'][f] else 'NOT met'}); precision "
            f"{_fmt(d.get('precision'), '.2f')} recall {_fmt(d.get('recall'), '.2f')}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reports.heads",
        description="Label Lorsa heads as previous-token, duplicate-token, induction, subtoken "
        "induction, successor, attention-sink and operand-fetching heads from their per-key "
        "contributions on held-out probes, and check each family by ablation (family heads vs "
        "random heads, and single heads for precision/recall).",
    )
    parser.add_argument("--model", default="default", help="toy model: zoo name or directory")
    parser.add_argument(
        "--replacement", help="replacement set directory (default: the one shipped with --model)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/heads"), help="output directory")
    parser.add_argument(
        "--docs",
        type=int,
        default=Settings.docs,
        help="held-out documents per corpus family (default %(default)s)",
    )
    parser.add_argument(
        "--truth-docs",
        type=int,
        default=Settings.truth_docs,
        help="of those, how many the single-head ablations use (default "
        "%(default)s; they cost most of the time)",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=Settings.draws,
        help="random head sets per control (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=Settings.seed, help="seeds the random draws")
    parser.add_argument(
        "--no-truth",
        action="store_true",
        help="skip the single-head ablations (no precision/recall)",
    )
    parser.add_argument(
        "--no-induction-circuit",
        action="store_true",
        help="skip the Graphviz picture of the global induction circuit (its first run "
        "gathers corpus statistics for circuits.global_weights: a few minutes, once)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.docs <= 10_000:
        raise UserError(f"--docs must be between 1 and 10000, got {args.docs}")
    if not 1 <= args.truth_docs <= args.docs:
        raise UserError(f"--truth-docs must be between 1 and --docs ({args.docs}), "
                        f"got {args.truth_docs}")  # fmt: skip
    if args.draws < 1:
        raise UserError(f"--draws must be positive, got {args.draws}")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a directory")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    from toy_models.zoo import resolve_model_dir

    resolve_model_dir(args.model)  # an unknown name fails before the heavy imports
    from replacement.model import load_pretrained

    t0 = time.perf_counter()
    replacement, tokenizer = load_pretrained(args.model, args.replacement)
    settings = Settings(
        docs=args.docs, truth_docs=args.truth_docs, draws=args.draws, seed=args.seed,
        truth=not args.no_truth,
    )  # fmt: skip
    t1 = time.perf_counter()
    results, _, _ = analyse(replacement, tokenizer, settings, progress=not args.quiet)
    results["model"] = args.model
    results["replacement"] = args.replacement or "shipped"
    results["seconds"] = {"load": t1 - t0, **results["seconds"]}
    written = write_report(results, args.out)
    results["seconds"]["total"] = time.perf_counter() - t0
    written = write_report(results, args.out)
    print(summary(results))
    print("seconds: " + json.dumps({k: round(v, 1) for k, v in results["seconds"].items()}))
    if not args.no_induction_circuit:
        written += induction_circuit(replacement, tokenizer, results, args)
    for path in written:
        print(f"wrote {path}")
    return 0


def induction_circuit(replacement, tokenizer, results: dict, args: argparse.Namespace) -> list:
    """The global induction circuit from weights: the QK group of the top induction head, its
    strongest query-unit x key-unit pairs (``circuits.global_weights.qk_circuit``) and the
    units that write them on the corpus sample, drawn with Graphviz; returns the files."""
    from circuits.global_weights import qk_circuit, statistics_for
    from reports.graphviz import dot_available, render, to_dot
    from reports.html import write_html

    heads = results["families"]["induction"]["heads"]
    if not heads:
        print("induction circuit skipped: no induction head was found")
        return []
    top = heads[0]
    group = replacement.lorsas[top["layer"]].cfg.group_size
    same_group = [
        h["head"] for h in heads
        if h["layer"] == top["layer"] and h["head"] // group == top["head"] // group
    ]  # fmt: skip
    stats = statistics_for(replacement, tokenizer, args.model)
    graph = qk_circuit(replacement, stats, top["layer"], same_group, tokenizer=tokenizer)
    graph.model["name"] = args.model
    out = args.out / "induction_circuit"
    formats = ("svg", "png") if dot_available() else ()
    written = render(to_dot(graph, max_nodes=None), out, formats)
    svg = out.with_suffix(".svg")
    title = f"Global induction circuit: QK group of {_head_id(top['layer'], top['head'])}"
    write_html(graph, out.with_suffix(".html"), svg.read_text() if svg in written else None,
               title=title)  # fmt: skip
    return [*written, out.with_suffix(".html")]


if __name__ == "__main__":
    run_cli(main)
