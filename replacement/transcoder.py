"""Transcoder: a sparse replacement for one MLP, reading its input and predicting its output.

    f  = TopK(ReLU(W_enc x + b_enc))
    y^ = W_dec f + b_dec (+ W_skip x, when the optional linear skip is on)

``x`` is the layer's ``ln2`` output and the target is its ``hook_mlp_out``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from .lorsa import sparse_decode, topk_relu


@dataclass(frozen=True)
class TranscoderConfig:
    d_model: int
    d_sae: int
    top_k: int
    skip: bool = False

    def __post_init__(self):
        if not 0 < self.top_k <= self.d_sae:
            raise ValueError(f"top_k={self.top_k} must be in 1..d_sae={self.d_sae}")


class Transcoder(nn.Module):
    def __init__(self, cfg: TranscoderConfig):
        super().__init__()
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.randn(cfg.d_model, cfg.d_sae).div_(math.sqrt(cfg.d_model)))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.randn(cfg.d_sae, cfg.d_model).div_(math.sqrt(cfg.d_sae)))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_model))
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_model)) if cfg.skip else None

    def pre_activations(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_sae"]:
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        """ReLU + TopK of pre-activations: at most ``top_k`` non-zero per position."""
        return topk_relu(pre, self.cfg.top_k, self.decoder.norm(dim=-1))

    def encode(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_sae"]:
        return self.activate(self.pre_activations(x))

    def decode(
        self, f: Float[Tensor, "... d_sae"], x: Float[Tensor, "... d_model"] | None = None
    ) -> Float[Tensor, "... d_model"]:
        return f @ self.W_dec + self._bias(x)

    @property
    def decoder(self) -> Float[Tensor, "d_sae d_model"]:
        return self.W_dec

    def decode_sparse(
        self, values: Float[Tensor, "... k"], idx: Int[Tensor, "... k"], x: Tensor | None = None
    ) -> Float[Tensor, "... d_model"]:
        """``decode`` from the TopK (values, indices) alone: what training uses."""
        return sparse_decode(values, idx, self.W_dec) + self._bias(x)

    def _bias(self, x: Tensor | None) -> Tensor:
        """The decoder bias, plus the linear skip of the input when there is one."""
        if self.W_skip is None:
            return self.b_dec
        if x is None:
            raise ValueError("this transcoder has a linear skip: decode needs its input x")
        return self.b_dec + x @ self.W_skip

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return self.decode(self.encode(x), x)
