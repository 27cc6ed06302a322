"""What the taxonomy is configured with: the head families, their label thresholds, the tasks
that ablations measure, and the settings of one analysis.

Nothing here imports torch: the command line reads these defaults before it checks its
arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from toy_models.data import FAMILIES

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
MIN_LAYER = {"induction": 1, "subtoken_induction": 1}  # see the package docstring
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
    "after_duplicate": FAMILIES,
    "all_tokens": FAMILIES,
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


@dataclass(frozen=True)
class Settings:
    docs: int = 24  # held-out documents per corpus family (scores, family ablations)
    truth_docs: int = 8  # the first of them, for the single-head ablations (the costly part)
    draws: int = 10  # random head sets for the control (half as many for the stricter one)
    seed: int = 0
    truth: bool = True  # single-head ground truth (precision / recall)
    examples: int = 3  # top heads per family and layer shown with an example
