"""Where replacement layers err: the error's share of each sublayer's output variance, split
by any grouping of tokens (task family, token role, position), where it concentrates, and
whether two dictionaries' errors on the same tokens point the same way.

A dictionary's error on a token is ``target - reconstruction`` on the original model's own
input (what local mode's ``hook_error`` holds: ``replacement.model``). With ``E`` the error
energy ``sum_t ||e_t||^2`` and ``V = sum_t ||y_t - mean(y)||^2`` the output variance over all
tokens, FVU = E / V, and for a group ``g`` of tokens

    fvu_contribution_g = E_g / V          (sums over groups to the FVU)
    error_share_g      = E_g / E          (sums to 1; compare with the group's token share)
    group_fvu_g        = E_g / V_g        (V_g: the group's tokens' variance about the overall
                                           mean, so a group whose outputs are nearly constant
                                           is not made to look bad by its own small spread)

The grouping is given as an integer label per token: this module knows nothing of families or
roles (``reports.errors`` derives them from the generator's spans).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .activations import layer_activations
from .dictionaries import fvu_of_sums

POSITION_BINS = (0, 1, 2, 4, 8, 16, 32, 64)  # bin b: positions [edge_b, edge_{b+1})


@torch.no_grad()
def dictionary_errors(
    replacement, tokens: Int[Tensor, "batch pos"], layers: list[int]
) -> dict[tuple[str, int], tuple[Tensor, Tensor]]:
    """Per ``(kind, layer)``: ``(error, target)``, each ``(batch, pos, d_model)``, of the
    replacement set's Lorsa layers and transcoders on the original model's activations."""
    lx, ly, tx, ty = layer_activations(replacement.model, tokens, layers)
    out = {}
    for i, l in enumerate(layers):
        lorsa, tc = replacement.lorsas[l], replacement.transcoders[l]
        out["lorsa", l] = (ly[i] - lorsa(lx[i]), ly[i])
        out["transcoder", l] = (ty[i] - tc(tx[i]), ty[i])
    return out


def error_shares(
    error: Float[Tensor, "tokens d"],
    target: Float[Tensor, "tokens d"],
    groups: Int[Tensor, " tokens"],
    n_groups: int,
) -> dict[str, list[float] | float]:
    """The bookkeeping of the module docstring, per group ``0 .. n_groups - 1``."""
    energy = error.double().pow(2).sum(-1)
    target = target.double()
    spread = (target - target.mean(0)).pow(2).sum(-1)
    tokens = torch.bincount(groups, minlength=n_groups).double()
    e_g = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, groups, energy)
    v_g = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, groups, spread)
    e, v = energy.sum(), spread.sum()
    return {
        "fvu": fvu_of_sums(e, v),
        "tokens": tokens.tolist(),
        "token_share": (tokens / tokens.sum()).tolist(),
        "error_share": (e_g / e).tolist(),
        "fvu_contribution": [fvu_of_sums(x, v) for x in e_g],
        "group_fvu": [fvu_of_sums(x, y) for x, y in zip(e_g, v_g, strict=True)],
    }


def position_bins(positions: Int[Tensor, " tokens"], edges=POSITION_BINS) -> Tensor:
    """The bin of each position (``edges``: each bin's first position, increasing)."""
    return torch.bucketize(positions, torch.tensor(edges), right=True) - 1


def bin_labels(edges=POSITION_BINS, n_ctx: int | None = None) -> list[str]:
    labels = []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] - 1 if i + 1 < len(edges) else (n_ctx - 1 if n_ctx else None)
        labels.append(str(lo) if hi == lo else f"{lo}-{hi if hi is not None else ''}")
    return labels


def concentration(error: Float[Tensor, "tokens d"]) -> dict[str, float]:
    """The smallest fractions of tokens that carry half and 90% of the error energy, and the
    share carried by the top 1% of tokens."""
    energy = error.double().pow(2).sum(-1).sort(descending=True).values
    cum = energy.cumsum(0) / energy.sum()
    n = len(energy)

    def tokens_for(q: float) -> float:
        return (int(torch.searchsorted(cum, torch.tensor(q, dtype=cum.dtype))) + 1) / n

    top = max(1, n // 100)
    return {
        "tokens_for_half": tokens_for(0.5),
        "tokens_for_90pct": tokens_for(0.9),
        "top_1pct_share": float(cum[top - 1]),
    }


def top_tokens(
    error: Float[Tensor, "tokens d"],
    token_ids: Int[Tensor, " tokens"],
    k: int,
    min_count: int = 5,
    by: str = "share",
) -> list[dict]:
    """The ``k`` token ids with the most error energy (``by="share"``) or the most per
    occurrence (``by="enrichment"``), among those seen ``min_count`` times or more: count,
    error share, token share, and enrichment (error share / token share)."""
    if by not in ("share", "enrichment"):
        raise ValueError(f"by must be 'share' or 'enrichment', got {by!r}")
    energy = error.double().pow(2).sum(-1)
    n_vocab = int(token_ids.max()) + 1
    e = torch.zeros(n_vocab, dtype=torch.float64).index_add_(0, token_ids, energy)
    c = torch.bincount(token_ids, minlength=n_vocab).double()
    e = e.masked_fill(c < min_count, 0.0)
    order = (e if by == "share" else e / c.clamp_min(1)).argsort(descending=True)[:k]
    total, n = energy.sum(), len(token_ids)
    return [
        {
            "token": int(t),
            "count": int(c[t]),
            "error_share": float(e[t] / total),
            "token_share": float(c[t] / n),
            "enrichment": float((e[t] / total) / (c[t] / n)),
        }
        for t in order
        if e[t] > 0
    ]


def shared_direction(
    a: Float[Tensor, "tokens d"], b: Float[Tensor, "tokens d"], seed: int = 0
) -> dict[str, float]:
    """Do two errors on the same tokens point the same way?

    - ``mean_cosine``: mean over tokens of cos(a_t, b_t); ``mean_cosine_shuffled``: the same
      with b's tokens permuted (what a shared mean direction alone gives);
    - ``b_along_a``: share of b's energy along a's direction token by token,
      ``sum_t (b_t . a_t / |a_t|)^2 / sum_t |b_t|^2`` (and ``a_along_b``);
    - ``r2_b_from_a``: variance of b explained by an affine map of a (least squares fitted on
      even tokens, measured on odd ones), and ``r2_a_from_b``.
    """
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    keep = (na > 0) & (nb > 0)
    a, b, na, nb = a[keep], b[keep], na[keep], nb[keep]
    dot = (a * b).sum(-1)
    perm = torch.randperm(len(a), generator=torch.Generator().manual_seed(seed))
    shuffled = (a * b[perm]).sum(-1) / (na * nb[perm])
    return {
        "tokens": int(keep.sum()),
        "mean_cosine": float((dot / (na * nb)).mean()),
        "mean_cosine_shuffled": float(shuffled.mean()),
        "b_along_a": float((dot / na).pow(2).sum() / nb.pow(2).sum()),
        "a_along_b": float((dot / nb).pow(2).sum() / na.pow(2).sum()),
        "r2_b_from_a": _affine_r2(a, b),
        "r2_a_from_b": _affine_r2(b, a),
    }


def _affine_r2(x: Tensor, y: Tensor) -> float:
    """R^2 of y from an affine map of x, fitted on even rows, measured on odd rows."""
    ones = torch.ones(len(x), 1, dtype=x.dtype)
    X = torch.cat([x, ones], dim=1)
    fit, test = slice(0, None, 2), slice(1, None, 2)
    if len(X[fit]) <= X.shape[1] or not len(X[test]):
        return float("nan")
    W = torch.linalg.lstsq(X[fit], y[fit]).solution
    residual = (y[test] - X[test] @ W).pow(2).sum()
    return float(1 - residual / (y[test] - y[test].mean(0)).pow(2).sum())
