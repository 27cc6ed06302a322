"""References the tests compute by hand, apart from the code they check."""

from __future__ import annotations

import torch


def side_patterns(lorsa, clean: torch.Tensor, after: torch.Tensor) -> list[torch.Tensor]:
    """A Lorsa layer's whole patterns (QK head, query, key) from its inputs ``clean`` and
    ``after`` (pos, d_model): with the queries from ``after`` and the keys from ``clean``, then
    the other way round (what ``circuits.interventions.side_attention`` reads one entry of)."""
    n = len(clean)
    out = []
    for q_from, k_from in ((after, clean), (clean, after)):
        with torch.no_grad():
            q, k = lorsa.qk(q_from[None])[0][0], lorsa.qk(k_from[None])[1][0]  # qk pos d_qk
        scores = q @ k.transpose(-1, -2) / lorsa.cfg.d_qk**0.5
        out.append(scores.masked_fill(torch.ones(n, n).tril() == 0, -torch.inf).softmax(-1))
    return out
