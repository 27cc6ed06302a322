"""``qk_record`` on a small random replacement model: one QK attribution at any (layer, QK
head, query, key) of a run, its score the head's own, and bad coordinates refused in one
line at the call (never wrapped around from the end, never a masked key, never a float)."""

import numpy as np
import pytest
import torch

from circuits.attribution import run_prompt
from circuits.qk import QKSides, qk_record

N_POS = 12
GOOD = {"layer": 1, "qk_head": 1, "query": 5, "key": 2}


@pytest.fixture
def replacement(random_model, make_replacement):
    return make_replacement(random_model)


@pytest.fixture
def run(replacement):
    torch.manual_seed(2)
    return run_prompt(replacement, torch.randint(1, 50, (N_POS,)), "local")


def test_a_qk_record_is_the_heads_own_score(replacement, run):
    record = qk_record(replacement, run, **GOOD, top=3)
    layer, h, q, k = GOOD.values()
    with torch.no_grad():
        side = QKSides(run, replacement, layer)
        score = side.scores(torch.tensor([h]), torch.tensor([q]), torch.tensor([k]))
    assert (record.layer, record.qk_head, record.query, record.key) == (layer, h, q, k)
    assert record.score == pytest.approx(float(score[0]), abs=1e-5)
    assert record.attention == pytest.approx(float(run.patterns[layer][h, q, k]))
    assert len(record.pairs) <= 3 and record.reason is not None
    # NumPy integers are integers; a key at its own query is allowed.
    same = qk_record(replacement, run, *(np.int64(v) for v in GOOD.values()), top=3)
    assert same.score == record.score and type(same.key) is int
    assert qk_record(replacement, run, 1, 1, 5, 5).key == 5


@pytest.mark.parametrize(
    "change, message",
    [
        ({"layer": -1}, r"layer -1 is outside 0\.\.1"),
        ({"layer": 2}, r"layer 2 is outside 0\.\.1"),
        ({"layer": 1.0}, "layer must be an integer, got 1.0"),
        ({"layer": True}, "layer must be an integer, got True"),
        ({"qk_head": -1}, r"qk_head -1 is outside 0\.\.1"),
        ({"qk_head": 2}, r"qk_head 2 is outside 0\.\.1"),
        ({"qk_head": 0.5}, "qk_head must be an integer"),
        ({"query": -1}, r"query -1 is outside 0\.\.11"),
        ({"query": N_POS}, r"query 12 is outside 0\.\.11"),
        ({"query": 5.0}, "query must be an integer, got 5.0"),
        ({"query": False}, "query must be an integer, got False"),
        ({"key": -1}, r"key -1 is outside 0\.\.11"),
        ({"key": 6}, r"key 6 is after query 5: a query reads keys 0\.\.5 only"),
        ({"key": "2"}, "key must be an integer, got '2'"),
        ({"top": 0}, "top must be a positive integer, got 0"),
        ({"top": 2.5}, "top must be a positive integer, got 2.5"),
        ({"top": True}, "top must be a positive integer, got True"),
    ],
)
def test_bad_qk_record_arguments_are_refused(replacement, run, change, message):
    args = GOOD | {k: v for k, v in change.items() if k != "top"}
    with pytest.raises(ValueError, match=message):
        qk_record(replacement, run, *args.values(), top=change.get("top", 10))
