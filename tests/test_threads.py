"""``circuits.threads.single_thread``: one torch thread inside, the caller's count after."""

import pytest
import torch

from circuits import qk
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


def test_qk_attributions_run_on_one_thread(two_threads, monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop here")

    monkeypatch.setattr(qk, "run_prompt", spy)  # the first thing it calls without a run
    graph = type("G", (), {"tokens": [1, 2], "mode": "local", "has_constants": False})()
    with pytest.raises(RuntimeError, match="stop here"):
        qk.qk_attribution(None, graph)
    assert seen == [1] and torch.get_num_threads() == 2
