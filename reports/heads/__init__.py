"""Head taxonomy: which Lorsa heads are previous-token, induction, successor, sink, operand...
heads, and the causal test of each family that says whether its label means anything.

    python -m reports.heads --model default [--out runs/heads] [--docs 24]

Writes into ``--out``: ``heads.json`` (every head's family scores and probe counts, the labels,
thresholds, tests, accounts and timings), ``heads.md`` (the family table, counts and top
examples per layer and family, the successor OV test, the sink test on every task, where each
task is computed, precision/recall, what fails and where the model computes it instead) and
PNG plots (``scores.png`` score histograms per family, ``counts.png`` labelled heads per layer,
``ablation.png`` family vs random tests).

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
The attention sink is the exception: a sink head rests its attention on BOS where it has
nothing to read, whatever BOS's value, so its score is its QK group's attention on BOS averaged
over every probe query (active or not). A head gets every label whose ``THRESHOLDS`` entry it
meets (a score and a minimum number of active probe queries, without which a score is noise);
labels may overlap.

Probe queries and keys, on held-out documents (``toy_models.evaluate.heldout_examples``); the
corpus spans say where everything is and what it holds (never re-parsed from the text):

- previous-token: every query ``q >= 2`` of every corpus family; key ``q - 1``.
- local context: the same queries; keys the ``LOCAL_WINDOW`` tokens before the query
  (``q - 3 .. q - 1``, BOS excluded). A head that moves the recent context into ``q``, not
  one token: a sharp previous-token head is one too (the two labels overlap by design; the
  test says which set the model depends on).
- attention sink: the same queries; key 0 (BOS). (At ``q = 1`` a head can only choose
  between BOS and the query itself.)
- duplicate-token: queries of every corpus family whose token occurred before; keys: those
  earlier occurrences.
- induction: the ``repeat`` family's second copy (every separator and layout: adjacent, none,
  filler between); keys: the tokens right after earlier occurrences of the query's token.
  Layer >= 1 only: at layer 0 the residual stream holds a token and its position, so no head
  there can find "the token after an earlier occurrence of mine" (that needs a
  previous-token head below it); a layer-0 head can score high only by reading some kind of
  token wherever it is, and is reported as a look-alike.
- subtoken induction: held-out rare names (``ĠB rio dan``) at their second and later
  mentions, every sub-token but the last; keys: as induction, inside the earlier mentions
  of the same name. Layer >= 1, as induction.
- successor: ``item`` spans one step after their ``previous`` item (``step == 1``: lists in
  every format, and sentences such as ``Today is X. ... Tomorrow is Y`` whose X lies far
  back), single-token items (counting left out: its items are several digit tokens); at the
  token before the item, the key is the previous item. That pattern alone is a previous-token
  head's in a list, so mass counts only where the head's output also promotes the item: its
  token is among the ``SUCCESSOR_TOP`` tokens that the head's ``w_o`` raises most through the
  unembedding (direct path, the demeaned and centred ``W_U``:
  ``ReplacementModel.read_write().unembed``).
- arithmetic, by what a head fetches (``addition`` answers, the ``operands`` of their span):
  at the query predicting the answer digit of place p (units, tens, hundreds),
  ``operand_a_{place}`` reads operand a's digit of place p and ``operand_b_{place}`` operand
  b's (right-aligned); ``carry`` reads both operands' digits of place p - 1 at the query
  predicting the digit of place p, on the problems where place p receives a carry
  (``a mod 10^p + b mod 10^p >= 10^p``; the thousands digit of a four-digit answer is one).
  The share from any digit of the two operands is reported beside them
  (``operand_any_digit``), not used for labels.

Key 0 is left to the sink and ``q - 1`` to the previous-token family (successor aside, which
its output tells apart; local context, the previous-token family widened, aside), so that one
attention is never evidence for two mechanisms.

**Causal tests.** In local mode (the original model's computation) with every error term held
at its clean value, so that a change to a head is not absorbed by the errors, each family gets
its test and its task (``TEST_OF``, ``TASK_OF``): heads that write are zeroed (``hook_z``) and
the loss on the targets they serve is measured (an arithmetic family: the answer digits of its
place; carry: the digits that receive a carry); sink heads lose their attention to BOS (its
score masked, the softmax over the other keys; per OV head, the group's other heads keep the
pattern; ``bos_masked_pre``) and the damage is measured on every task. The same test on as many
random heads from the same layers (seeded draws) is the control: uniformly among the layer's
heads (the target's control) and among the heads active on the task's documents (a stricter
control). A family meets the target when it raises the task loss by at least ``RATIO_TARGET``
times the uniform control, and by at least ``TRUTH_DELTA`` nats (a ratio of two noise-level
numbers is no evidence). A successor family must also pass the OV test (``successor_ov``):
the previous item's actual residual, through the family's OV circuits, must put the successor
among its ``SUCCESSOR_TOP`` promoted tokens at ``SUCCESSOR_OV_TARGET`` of the probes. The same
test also runs on the heads that carry the successor task by their single-head tests below
(``successor_carriers_ov``; chosen by causal effect alone): where the map lives among heads
when the family fails. A family that misses its target is labelled and tested again at the
other ``SWEEP_SCORES`` thresholds (``threshold_sweep``: its heads, its test against both
controls, the OV test for successor heads), so that the report shows whether the family exists
just past the threshold or at no threshold; the verdict stays the one at ``THRESHOLDS``.

Per head, the exact single-head effect of the family's test on its task (found for every head
by adaptive group testing, ``single_head_effects``) marks a head as truly carrying the task
when it is at least ``TRUTH_DELTA``; each detector's precision and recall are counted against
that. (First-order estimates, ``-z dL/dz``, are no substitute here: the tasks' losses are near
zero, the softmax saturates and the estimates miss by orders of magnitude.) Where a family
fails, ``account`` measures where its task is computed instead: the loss increase from zeroing
every Lorsa head, or every transcoder feature, of one layer, and the direct effects of heads
and features on the target logit.

The package, one job per module (``reports.heads`` re-exports the public names, importing a
module only when one of its names is first used, so that ``python -m reports.heads --help``
and argument errors never import torch):

- ``config``: head families, thresholds, tasks, tests, ``Settings`` (no torch);
- ``probes``: the key rules and the probe documents (``ProbeDoc``, ``build_probes``);
- ``scores``: key mass, sink attention, ``FamilyScores``, ``score_heads``, ``labels``,
  ``family_labels``;
- ``ablation``: ``TaskBatch``, the tests (zeroing, ``bos_masked_pre``), ``task_losses``,
  ``family_ablation``, ``single_head_effects``;
- ``successor``: the successor family's OV test (``successor_ov``);
- ``account``: where each task is computed (``task_account``);
- ``analysis``: ``analyse`` (the phases) and the examples;
- ``report`` and ``plots``: ``heads.md``, ``heads.json``, the PNGs, the console summary;
- ``circuit``: the global induction circuit drawn with Graphviz;
- ``cli``: the command line (``__main__`` runs it).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "config": (
        "ARITHMETIC_FAMILIES", "DIAGNOSTICS", "HEAD_FAMILIES", "LOCAL_WINDOW", "MIN_LAYER",
        "OPERAND_FAMILIES",
        "PLACES", "RATIO_TARGET", "SUCCESSOR_OV_TARGET", "SUCCESSOR_TOP", "SWEEP_SCORES", "TASKS",
        "TASK_CORPUS",
        "TASK_OF", "TESTS", "TEST_OF", "THRESHOLDS", "TRUTH_DELTA", "Settings", "Threshold",
        "truth_key",
    ),
    "probes": (
        "Keys", "ProbeDoc", "build_probes", "duplicate_token_keys",
        "induction_keys", "local_context_keys", "previous_token_keys", "probe_doc",
        "sequence_tokens", "sink_keys",
    ),
    "scores": (
        "FamilyScores", "HeadScores", "family_labels", "key_mass", "key_masks", "labels", "passing",
        "promoted_tokens", "score_heads", "sink_attention",
    ),
    "ablation": (
        "TaskBatch", "ablated_logits", "ablation_hooks", "active_heads", "bos_masked_pre",
        "corpus_batches", "family_ablation", "for_tasks", "merge", "precision_recall",
        "random_like", "single_head_effects", "task_batch", "task_batches", "task_loss",
        "task_losses",
    ),
    "successor": ("first_in_sequence", "ov_logits", "ranks", "successor_ov"),
    "account": ("direct_effects", "layer_ablations", "task_account"),
    "analysis": (
        "analyse", "example", "ground_truth", "successor_carriers_ov", "threshold_sweep",
        "truth_groups",
    ),
    "report": ("MISSING_NOTES", "markdown", "summary", "write_report"),
    "plots": ("write_plots",),
    "circuit": ("induction_circuit",),
    "cli": ("check_args", "main", "parse_args"),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
