"""Activation stores: (input, target) pairs of every layer, streamed from the toy model.

One forward pass of the toy model over a batch of generated rows yields, for every layer, the
Lorsa pair (``ln1`` output, ``hook_attn_out``) and the transcoder pair (``ln2`` output,
``hook_mlp_out``). Lorsa attends, so it trains on whole sequences; transcoders see single
tokens, which a shuffle buffer decorrelates. Nothing but the current batch and the buffer is
held in memory: rows are generated and tokenized on the fly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from toy_models.data import stream_rows
from toy_models.model import hook_name


def lorsa_hooks(layer: int) -> tuple[str, str]:
    """(input, target) hook names of the attention layer a Lorsa layer replaces."""
    return hook_name(layer, "ln1.hook_normalized"), hook_name(layer, "hook_attn_out")


def transcoder_hooks(layer: int) -> tuple[str, str]:
    """(input, target) hook names of the MLP a transcoder replaces."""
    return hook_name(layer, "ln2.hook_normalized"), hook_name(layer, "hook_mlp_out")


@dataclass
class LayerBatch:
    """Every layer's Lorsa pairs (whole sequences) and transcoder pairs (shuffled tokens)."""

    lorsa_x: Float[Tensor, "layer batch pos d_model"]
    lorsa_y: Float[Tensor, "layer batch pos d_model"]
    tc_x: Float[Tensor, "layer tokens d_model"]
    tc_y: Float[Tensor, "layer tokens d_model"]


class ActivationStore:
    """Streams activations of ``layers`` (all by default); ``next()`` returns a ``LayerBatch``
    whose leading axis runs over those layers in order.

    ``buffer_batches`` forward passes fill the token shuffle buffer; each call refills what it
    takes, so transcoder batches mix tokens from many sequences and positions. A subclass that
    overrides ``sequences`` (``replacement.activation_cache.CachedActivationStore``) gets the
    same batches and shuffle from stored rows.
    """

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 16,
        split: str = "train",
        seed: int = 0,
        buffer_batches: int = 8,
        layers: list[int] | None = None,
    ):
        self.model, self.batch_size = model, batch_size
        self.rows = stream_rows(tokenizer, model.cfg.n_ctx, split, seed)
        self.layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
        self.n_layers = len(self.layers)
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer_batches = buffer_batches
        self._buffer: Tensor | None = None  # (tokens, layer, 2, d_model)

    def sequences(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One forward pass: Lorsa x, y and transcoder x, y, each ``(layer, batch, pos, d)``."""
        tokens = torch.tensor([next(self.rows)[1] for _ in range(self.batch_size)])
        return layer_activations(self.model, tokens, self.layers)

    def __iter__(self) -> Iterator[LayerBatch]:
        return self

    def __next__(self) -> LayerBatch:
        lorsa_x, lorsa_y, tc_x, tc_y = self.sequences()
        fresh = _as_tokens(tc_x, tc_y)
        if self._buffer is None:
            more = [_as_tokens(*self.sequences()[2:]) for _ in range(self.buffer_batches - 1)]
            self._buffer = torch.cat([fresh, *more])
        taken = shuffle_in(self._buffer, fresh, self.generator)
        return LayerBatch(
            lorsa_x, lorsa_y, taken[:, :, 0].transpose(0, 1), taken[:, :, 1].transpose(0, 1)
        )


@torch.no_grad()
def layer_activations(
    model, tokens: Tensor, layers: list[int]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One forward pass over ``tokens (batch, pos)``: the Lorsa x, y and transcoder x, y of
    ``layers``, each ``(layer, batch, pos, d_model)`` in the order of ``layers``."""
    hooks = {h for l in layers for h in (*lorsa_hooks(l), *transcoder_hooks(l))}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks)
    stack = lambda names: torch.stack([cache[n] for n in names])  # noqa: E731
    return (
        stack([lorsa_hooks(l)[0] for l in layers]),
        stack([lorsa_hooks(l)[1] for l in layers]),
        stack([transcoder_hooks(l)[0] for l in layers]),
        stack([transcoder_hooks(l)[1] for l in layers]),
    )


def shuffle_in(buffer: Tensor, fresh: Tensor, generator: torch.Generator) -> Tensor:
    """Take a random batch out of ``buffer`` (rows: tokens) and put ``fresh`` in its place."""
    idx = torch.randperm(len(buffer), generator=generator)[: len(fresh)]
    taken = buffer[idx]
    buffer[idx] = fresh
    return taken


def _as_tokens(x: Tensor, y: Tensor) -> Float[Tensor, "tokens layer 2 d_model"]:
    """``(layer, batch, pos, d)`` pairs as one row per token, holding every layer's pair."""
    return torch.stack([x.flatten(1, 2), y.flatten(1, 2)], dim=2).transpose(0, 1)
