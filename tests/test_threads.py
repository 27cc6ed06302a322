"""``circuits.threads.single_thread``: one torch thread inside, the caller's count after."""

import pytest
import torch

from circuits import qk
from circuits.attribution import attribute, run_prompt
from circuits.threads import single_thread


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_one_thread_inside_and_the_count_restored_even_on_error(two_threads):
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), single_thread():
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_qk_explanations_run_on_one_thread_plain_records_on_the_callers(
    two_threads, monkeypatch, random_model, make_replacement
):
    """The contrast split and the reason (thousands of small products) run on one thread;
    plain QK records (a few large products per layer) on the caller's threads."""
    replacement = make_replacement(random_model)
    tokens = torch.randint(1, 50, (8,), generator=torch.Generator().manual_seed(0))
    run = run_prompt(replacement, tokens, "local")
    graph = attribute(replacement, tokens, max_logits=2, run=run)
    seen = []
    real = qk.QKSides

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(qk, "QKSides", spy)
    plain = qk.qk_attribution(replacement, graph, run=run)
    assert seen and set(seen) == {2}
    seen.clear()
    explained = qk.qk_attribution(replacement, graph, run=run, contrast=True, reason=True)
    assert seen and set(seen) == {1} and torch.get_num_threads() == 2
    assert [(a.layer, a.qk_head, a.query, a.key) for a in plain] == [
        (a.layer, a.qk_head, a.query, a.key) for a in explained
    ]
    assert [a.score for a in plain] == pytest.approx([a.score for a in explained], abs=1e-5)
