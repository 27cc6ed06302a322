"""What the taxonomy is configured with: the head families, their label thresholds, the tasks
that ablations measure, each family's causal test, and the settings of one analysis.

Nothing here imports torch: the command line reads these defaults before it checks its
arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from toy_models.data import FAMILIES

PLACES = ("units", "tens", "hundreds")  # place p of a number: its digit of 10**p


def operand_family(operand: str, place: str) -> str:
    """The family of heads fetching operand ``operand``'s (``"a"``/``"b"``) digit of ``place``
    (``PLACES``): the one place such a name is spelled."""
    return f"operand_{operand}_{place}"


OPERAND_FAMILIES = tuple(operand_family(x, place) for x in "ab" for place in PLACES)
ARITHMETIC_FAMILIES = (*OPERAND_FAMILIES, "carry")
HEAD_FAMILIES = (
    "previous_token",
    "local_context",
    "duplicate_token",
    "induction",
    "subtoken_induction",
    "successor",
    "attention_sink",
    *ARITHMETIC_FAMILIES,
)
DIAGNOSTICS = ("operand_any_digit",)  # scored like a family, never a label


@dataclass(frozen=True)
class Threshold:
    score: float  # minimum family score
    min_active: int  # minimum number of active probe queries


# Successor heads are specific (one rank-1 head per few transitions, e.g. eighth -> ninth)
# and see only those transitions' queries; subtoken-induction and carry queries are few.
THRESHOLDS: dict[str, Threshold] = {
    "previous_token": Threshold(0.5, 10),
    "local_context": Threshold(0.5, 10),
    "duplicate_token": Threshold(0.5, 10),
    "induction": Threshold(0.5, 10),
    "subtoken_induction": Threshold(0.5, 5),
    "successor": Threshold(0.5, 3),
    # The head's attention (not its value) on BOS, averaged over every probe query: uniform
    # attention gives BOS about 0.03 here (1 / (q + 1) over q = 2..127), so a quarter is a
    # head that rests on BOS far more than chance would put it there.
    "attention_sink": Threshold(0.25, 10),
    **{f: Threshold(0.5, 10) for f in OPERAND_FAMILIES},
    "carry": Threshold(0.5, 5),
}
LOCAL_WINDOW = 3  # local-context keys: the tokens q - 3 .. q - 1 before the query (not BOS)
MIN_LAYER = {"induction": 1, "subtoken_induction": 1}  # see the package docstring
SUCCESSOR_TOP = 10  # "promotes the successor": among the head's top tokens (1% of 1024)
SUCCESSOR_OV_TARGET = 0.5  # share of successor probes whose successor the family's OV puts in
# its top SUCCESSOR_TOP tokens, reading the previous item's actual residual
# Label thresholds (family scores) at which a family that misses its target is labelled and
# tested again (``threshold_sweep``): how its heads and its test move with the threshold, beside
# the verdict, which stays the one at ``THRESHOLDS``.
SWEEP_SCORES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TRUTH_DELTA = 0.01  # nats per target token: a head whose ablation costs this carries the task
RATIO_TARGET = 5.0

# Each task: documents of some corpus families, and target tokens (predicted at p - 1).
TASKS = {
    "repeat_second_copy": "repeat: tokens 2..n of the second copy (copying)",
    "rare_name_subtokens": "names: sub-tokens 2..n of later mentions of held-out rare names",
    "successor_items": "successor: items one step after the previous item (lists and "
    "sentences; single-token items, counting left out)",
    "answer_units": "addition: the answer's units digit",
    "answer_tens": "addition: the answer's tens digit",
    "answer_hundreds": "addition: the answer's hundreds digit",
    "carry_digits": "addition: the answer digits whose place receives a carry",
    "addition_answers": "addition: every answer digit",
    "after_duplicate": "all families: the token after a token that occurred before",
    "all_tokens": "all families: every next token",
}
TASK_CORPUS = {
    "repeat_second_copy": ("repeat",),
    "rare_name_subtokens": ("names",),
    "successor_items": ("successor",),
    "answer_units": ("addition",),
    "answer_tens": ("addition",),
    "answer_hundreds": ("addition",),
    "carry_digits": ("addition",),
    "addition_answers": ("addition",),
    "after_duplicate": FAMILIES,
    "all_tokens": FAMILIES,
}
# A family's task is what its probe queries predict (for previous-token and sink heads, whose
# queries are every position, the next token everywhere).
TASK_OF = {
    "previous_token": "all_tokens",
    "local_context": "all_tokens",
    "duplicate_token": "after_duplicate",
    "induction": "repeat_second_copy",
    "subtoken_induction": "rare_name_subtokens",
    "successor": "successor_items",
    "attention_sink": "all_tokens",
    **{operand_family(x, place): f"answer_{place}" for x in "ab" for place in PLACES},
    "carry": "carry_digits",
}
# How a family is tested: heads that write are zeroed (``hook_z``); a sink's job is to hold
# attention that has nowhere better to go, so its heads' attention to BOS is removed instead
# (the rest renormalised) and they attend elsewhere.
TESTS = ("zero", "mask_bos")
TEST_OF = {f: "mask_bos" if f == "attention_sink" else "zero" for f in HEAD_FAMILIES}


def truth_key(task: str, test: str) -> str:
    """The name of a single-head ground truth: the task, and the test when not zeroing."""
    return task if test == "zero" else f"{task}/{test}"


@dataclass(frozen=True)
class Settings:
    docs: int = 24  # held-out documents per corpus family (scores, family ablations)
    truth_docs: int = 6  # the first of them, for the single-head tests (the costly part)
    draws: int = 10  # random head sets for the control (half as many for the stricter one)
    seed: int = 0
    truth: bool = True  # single-head ground truth (precision / recall)
    examples: int = 3  # top heads per family and layer shown with an example


# The induction circuit's files in the report's directory (``reports.heads.circuit``).
CIRCUIT_STEM = "induction_circuit"
CIRCUIT_FILES = tuple(f"{CIRCUIT_STEM}.{x}" for x in ("dot", "svg", "png", "html"))
