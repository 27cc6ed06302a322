"""Torch's thread count for steps made of many small operations."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def single_thread():
    """Torch on one thread inside, as before outside (also a decorator). For steps made of
    thousands of small operations (the mechanism summary's reruns and QK tables, the QK
    attributions' contrast splits and reasons), a second thread costs more than it gives,
    and on a machine with other work running each parallel operation can wait a scheduler
    time slice for it. Measured on the default model: the summary of the README prompt, 4.7
    CPU-s with two threads, 0.7 with one; the trace's QK step (contrast and reason) of a
    128-token prompt beside another process using both cores, 18-32 s with two threads in a
    fresh process, 1.0-1.1 s with one (idle: 0.35 s with two, 0.7-0.9 s with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
