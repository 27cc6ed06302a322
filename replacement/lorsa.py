"""Lorsa: low-rank sparse attention, a replacement for one attention layer.

``n_ov_heads`` rank-1 heads, each reading the residual stream through ``w_v`` and writing
through ``w_o``; consecutive blocks of ``n_ov_heads // n_qk_heads`` OV heads share one QK head
(``W_Q``, ``W_K``). With ``X`` the layer's ``ln1`` output:

    A^h   = softmax(causal(Q^h K^h^T / sqrt(d_qk)))
    z~_i  = A^{h(i)} (X w_v^i + b_V^i)               (one value per head and position)
    z     = TopK over heads of ReLU(z~), ranked by z * ||w_o||, straight-through
    Y^    = sum_i z_i w_o^i + b_D

The grouped form is one multi-head attention call whose value width is the group size, so
per-OV-head patterns are never materialised.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from toy_models.model import attention_pattern


@dataclass(frozen=True)
class LorsaConfig:
    d_model: int
    n_qk_heads: int
    n_ov_heads: int
    d_qk: int
    top_k: int

    def __post_init__(self):
        # Checked before any arithmetic: n_qk_heads=0 divided by zero, a negative one passed
        # the divisibility check (1024 % -16 == 0) and built a layer of negative size.
        for name in ("d_model", "n_qk_heads", "n_ov_heads", "d_qk", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.n_ov_heads % self.n_qk_heads:
            raise ValueError(
                f"n_ov_heads={self.n_ov_heads} must be a multiple of n_qk_heads={self.n_qk_heads}"
            )
        if not 0 < self.top_k <= self.n_ov_heads:
            raise ValueError(f"top_k={self.top_k} must be in 1..n_ov_heads={self.n_ov_heads}")

    @property
    def group_size(self) -> int:
        return self.n_ov_heads // self.n_qk_heads


def topk_sparse(
    pre: Float[Tensor, "... n"], k: int, weight: Float[Tensor, " n"] | None = None
) -> tuple[Float[Tensor, "... k"], Int[Tensor, "... k"]]:
    """ReLU, then the k largest per row ranked by ``relu(pre) * weight``: (values, indices).

    Gradients flow to the kept entries only (the TopK SAE straight-through convention).
    """
    act = F.relu(pre)
    score = act if weight is None else act * weight
    idx = score.topk(k, dim=-1).indices
    return act.gather(-1, idx), idx


def topk_relu(
    pre: Float[Tensor, "... n"], k: int, weight: Float[Tensor, " n"] | None = None
) -> Float[Tensor, "... n"]:
    """``topk_sparse`` scattered back into a dense tensor (zeros elsewhere)."""
    values, idx = topk_sparse(pre, k, weight)
    return torch.zeros_like(pre).scatter(-1, idx, values)


def sparse_decode(
    values: Float[Tensor, "... k"], idx: Int[Tensor, "... k"], W_dec: Float[Tensor, "n d"]
) -> Float[Tensor, "... d"]:
    """``sum_j values_j W_dec[idx_j]`` without forming the dense activation vector."""
    k = values.shape[-1]
    flat = F.embedding_bag(
        idx.reshape(-1, k), W_dec, per_sample_weights=values.reshape(-1, k), mode="sum"
    )
    return flat.reshape(*values.shape[:-1], W_dec.shape[-1])


class LorsaLayer(nn.Module):
    def __init__(self, cfg: LorsaConfig):
        super().__init__()
        self.cfg = cfg
        d, h, e, n = cfg.d_model, cfg.n_qk_heads, cfg.d_qk, cfg.n_ov_heads
        self.W_Q = nn.Parameter(torch.randn(h, d, e).div_(math.sqrt(d)))
        self.W_K = nn.Parameter(torch.randn(h, d, e).div_(math.sqrt(d)))
        self.b_Q = nn.Parameter(torch.zeros(h, e))
        self.b_K = nn.Parameter(torch.zeros(h, e))
        self.W_V = nn.Parameter(torch.randn(n, d).div_(math.sqrt(d)))  # row i is w_v^i
        self.b_V = nn.Parameter(torch.zeros(n))
        self.W_O = nn.Parameter(torch.randn(n, d).div_(math.sqrt(n)))  # row i is w_o^i
        self.b_D = nn.Parameter(torch.zeros(d))

    def qk(
        self, x: Float[Tensor, "batch pos d_model"]
    ) -> tuple[Float[Tensor, "batch qk pos d_qk"], Float[Tensor, "batch qk pos d_qk"]]:
        q = torch.einsum("bpd,hde->bhpe", x, self.W_Q) + self.b_Q[:, None]
        k = torch.einsum("bpd,hde->bhpe", x, self.W_K) + self.b_K[:, None]
        return q, k

    def patterns(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch qk q k"]:
        """The QK heads' attention patterns (one per QK head, shared by its OV group)."""
        return attention_pattern(*self.qk(x))

    def values(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos ov"]:
        return x @ self.W_V.T + self.b_V

    def pre_activations(
        self,
        x: Float[Tensor, "batch pos d_model"],
        pattern: Float[Tensor, "batch qk q k"] | None = None,
    ) -> Float[Tensor, "batch pos ov"]:
        """z~ for every OV head: one grouped attention call with value width ``group_size``.

        With ``pattern`` given (e.g. frozen at its value on another input), the heads attend
        with it instead of computing their own.
        """
        b, n, _ = x.shape
        v = self.values(x).view(b, n, self.cfg.n_qk_heads, self.cfg.group_size).transpose(1, 2)
        if pattern is None:
            q, k = self.qk(x)
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # batch qk pos group
        else:
            z = pattern @ v
        return z.transpose(1, 2).reshape(b, n, self.cfg.n_ov_heads)

    def activate(self, pre: Float[Tensor, "batch pos ov"]) -> Float[Tensor, "batch pos ov"]:
        """ReLU + TopK of pre-activations: at most ``top_k`` non-zero per position."""
        return topk_relu(pre, self.cfg.top_k, self.decoder.norm(dim=-1))

    def encode(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos ov"]:
        """Sparse head activations: at most ``top_k`` non-zero per position."""
        return self.activate(self.pre_activations(x))

    def decode(
        self, z: Float[Tensor, "batch pos ov"], x: Tensor | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        """``x`` is unused; it keeps the signature of ``Transcoder.decode`` (linear skip)."""
        return z @ self.W_O + self.b_D

    @property
    def decoder(self) -> Float[Tensor, "ov d_model"]:
        return self.W_O

    def decode_sparse(
        self, values: Float[Tensor, "... k"], idx: Int[Tensor, "... k"], x: Tensor | None = None
    ) -> Float[Tensor, "... d_model"]:
        """``decode`` from the TopK (values, indices) alone: what training uses."""
        return sparse_decode(values, idx, self.W_O) + self.b_D

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return self.decode(self.encode(x))

    def contributions(
        self, x: Float[Tensor, "pos d_model"], query: int, heads: Tensor
    ) -> Float[Tensor, "heads key"]:
        """Per-key terms ``A[q, k] * (x_k w_v + b_V)`` of chosen heads at one query position.

        They sum over keys to the heads' pre-activations at ``query``.
        """
        pattern = self.patterns(x[None, : query + 1])[0, :, query]  # qk key
        qk_of = heads // self.cfg.group_size
        return pattern[qk_of] * self.values(x[: query + 1])[:, heads].T
