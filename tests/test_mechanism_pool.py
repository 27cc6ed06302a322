"""Pooling the mechanism benchmark's draws (benchmarks/mechanisms_pool.py): the pooled rates are
one draw's rates computed over every draw's records, and files that are not draws of one
setting are refused in one line."""

from __future__ import annotations

import json

import pytest
from conftest import benchmark

from toy_models.cli import UserError


def record(correct: bool, key: bool = False, checks: int = 0, agree: int = 0, **extra) -> dict:
    return {"correct": correct, "source": "heldout", "cpu_seconds": 0.5, "key": key,
            "checks": checks, "agree_free": agree, "agree_frozen": checks,
            "untrained_positions": [], **extra}  # fmt: skip


def draw(path, seed: int, records: list[dict], **settings) -> None:
    data = {"model": "default", "replacement": "shipped", "mode": "local", "target": "logit",
            "concepts": "dashboards.safetensors", "prompts_per_family": 40, "min_correct": 30,
            "max_prompts": 200, "seed": seed,
            "families": {"successor": {"records": records}}} | settings  # fmt: skip
    path.write_text(json.dumps(data))


def source(tested: int, rank: int, score: float, **extra) -> dict:
    return {"tested": tested, "rank": rank, "score": score, **extra}


def test_pooled_rates_are_one_draws_rates_over_every_record(tmp_path):
    pool = benchmark("mechanisms_pool")
    first = [record(True, True, 10, 9), record(True, False, 10, 7), record(False)]
    second = [record(True, True, 10, 10,
                     key_source=source(8, 8, 0.4, raisers=20, at_position=0),
                     query_source=source(6, 6, -0.2, at_position=2))]  # fmt: skip
    draw(tmp_path / "a.json", 1, first)
    draw(tmp_path / "b.json", 2, second)
    out = pool.pool([tmp_path / "a.json", tmp_path / "b.json"])
    rates = out["families"]["successor"]
    assert out["seeds"] == [1, 2]
    assert (rates["prompts"], rates["correct"]) == (4, 3)
    assert rates["key"] == round(2 / 3, 4)
    assert rates["per_draw"]["key"] == [0.5, 1.0]
    assert rates["checks"] == 30 and rates["sign_agree_free"] == round(26 / 30, 4)
    # the key side names the 8th of 8 raisers tested while 20 raise it: stopped at the bound;
    # the query side a group at its position (share -0.2)
    assert rates["qk_source_sides"] == {"named": 2, "at_position": 1, "last_raiser": 1,
                                        "bound": 1, "beyond_first_round": 1}  # fmt: skip
    assert rates == pool.family_rates("successor", first + second) | {"per_draw": rates["per_draw"]}


@pytest.mark.parametrize(
    "second, words",
    [
        (lambda p: draw(p, 1, [record(True)]), "given twice"),
        (lambda p: draw(p, 2, [record(True)], model="tiny"), "its model 'tiny'"),
        (lambda p: draw(p, 2, [record(True)], target="margin"), "its target"),
        (lambda p: draw(p, 2, [record(True)], concepts=None), "its concepts"),
        (lambda p: draw(p, 2, [record(True, qk_writer_checks=3)]), "more checks"),
        (lambda p: draw(p, 2, [record(True) | {"correct": "yes"}]), "correct"),
        (lambda p: draw(p, 2, [record(True, checks=2, agree=3)]), "more checks"),
        (lambda p: draw(p, 2, [record(True, key_source={"tested": 2})]), "tested, rank"),
        (lambda p: draw(p, 2, [record(True, checks=float("nan"))]), "not a count"),
        (
            lambda p: draw(p, 2, [{k: v for k, v in record(True).items() if k != "source"}]),
            "'correct' \\(true/false\\) or 'source'",
        ),
        (lambda p: p.write_text('{"families": {}}'), "no seed"),
        (lambda p: p.write_text("[1, 2"), "cannot be read"),
        (lambda p: p.write_text('{"seed": 2, "families": {"successor": {}}}'), "no records"),
    ],
)
def test_draws_that_do_not_pool_are_refused_in_one_line(tmp_path, second, words):
    pool = benchmark("mechanisms_pool")
    draw(tmp_path / "a.json", 1, [record(True)])
    second(tmp_path / "b.json")
    with pytest.raises(UserError, match=words):
        pool.pool([tmp_path / "a.json", tmp_path / "b.json"])


def test_the_command_refuses_to_write_over_a_draw_it_reads(tmp_path):
    pool = benchmark("mechanisms_pool")
    draw(tmp_path / "a.json", 1, [record(True)])
    with pytest.raises(UserError, match="one of the draws"):
        pool.main([str(tmp_path / "a.json"), "--out", str(tmp_path / "a.json")])
    assert pool.main([str(tmp_path / "a.json"), "--out", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["families"]["successor"]["correct"] == 1
