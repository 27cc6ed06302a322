"""Clean runs of many corpus rows at once, for corpus statistics: one job, a batched forward
pass kept as sparse sources.

``circuits.attribution.run_prompt`` caches one prompt with every source's write vector, which
a local graph needs. Statistics (``circuits.gathering``) sum edges over hundreds of rows and
need less: which heads and features fired where and how strongly (their write vectors are
their activation times a fixed decoder row), the error vectors, the frozen LayerNorm scales,
the Lorsa inputs and patterns, and the probability of each next token. One forward pass
over ``rows x n_ctx`` tokens costs about what one row costs (the model is small; a pass is
mostly per-call overhead), so rows are run together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor

from replacement.model import MODES, ReplacementModel, hook_name

# The hooks a batch needs; the Lorsa pattern hook also makes the patterns explicit (as in
# ``run_prompt``), so heads' activations are the ones a local graph holds.
BATCH_HOOKS = ("hook_scale", "hook_pattern", "hook_z", "hook_acts", "hook_error", "lorsa.hook_in")


@dataclass
class Nodes:
    """The active heads or features of one sublayer over a batch: row, position, index and
    activation of each, sorted by row, then position, then index."""

    row: Int[Tensor, " n"]
    pos: Int[Tensor, " n"]
    index: Int[Tensor, " n"]
    value: Float[Tensor, " n"]

    @classmethod
    def of(cls, acts: Float[Tensor, "row pos width"]) -> Nodes:
        row, pos, index = acts.nonzero(as_tuple=True)
        return cls(row, pos, index, acts[row, pos, index])

    def rows(self, keep: Int[Tensor, " k"], n_rows: int) -> Nodes:
        """The nodes of rows ``keep`` (increasing), renumbered 0..k-1; the order is kept."""
        new = torch.full((n_rows,), -1, dtype=torch.long)
        new[keep] = torch.arange(len(keep))
        row = new[self.row]
        mask = row >= 0
        return Nodes(row[mask], self.pos[mask], self.index[mask], self.value[mask])


@dataclass
class BatchRun:
    """One clean forward pass over ``rows`` corpus rows (``(row, pos)`` tokens).

    Per block ``l``: ``sigma1[l]``, ``sigma2[l]`` (frozen LayerNorm scales), ``lorsa_in[l]``,
    ``patterns[l]`` (None once dropped: ``pattern`` recomputes it), the active Lorsa heads
    ``heads[l]`` and transcoder features ``features[l]``. ``errors[S - 1]`` is the error vector
    of sublayer stage ``S`` at every position (local mode; None in sparse mode).
    ``next_probability[r, p]`` is the model's probability of token ``p + 1`` at ``p`` (0 at
    the last position, which has no next token here).
    """

    tokens: Int[Tensor, "row pos"]
    mode: str
    sigma1: Float[Tensor, "layer row pos"]
    sigma2: Float[Tensor, "layer row pos"]
    sigma_final: Float[Tensor, "row pos"]
    lorsa_in: list[Float[Tensor, "row pos d_model"]]
    patterns: list[Float[Tensor, "row qk q k"]] | None
    heads: list[Nodes]
    features: list[Nodes]
    errors: list[Float[Tensor, "row pos d_model"]] | None
    next_probability: Float[Tensor, "row pos"]

    @property
    def n_rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_pos(self) -> int:
        return self.tokens.shape[1]

    @property
    def n_layers(self) -> int:
        return len(self.heads)

    def pattern(self, layer: int, replacement: ReplacementModel) -> Tensor:
        """Block ``layer``'s QK patterns (recomputed from the Lorsa input once dropped)."""
        if self.patterns is not None:
            return self.patterns[layer]
        return replacement.lorsas[layer].patterns(self.lorsa_in[layer])

    def rows(self, keep: Int[Tensor, " k"]) -> BatchRun:
        """The run restricted to rows ``keep`` (increasing)."""
        if (keep.diff() <= 0).any():
            raise ValueError("rows must be given in increasing order")
        n = self.n_rows
        return replace(
            self,
            tokens=self.tokens[keep],
            sigma1=self.sigma1[:, keep],
            sigma2=self.sigma2[:, keep],
            sigma_final=self.sigma_final[keep],
            lorsa_in=[x[keep] for x in self.lorsa_in],
            patterns=None if self.patterns is None else [a[keep] for a in self.patterns],
            heads=[h.rows(keep, n) for h in self.heads],
            features=[f.rows(keep, n) for f in self.features],
            errors=None if self.errors is None else [e[keep] for e in self.errors],
            next_probability=self.next_probability[keep],
        )

    def without_patterns(self) -> BatchRun:
        """The same run holding no patterns (a quarter of its memory): kept for a second look."""
        return replace(self, patterns=None)


@torch.no_grad()
def run_rows(
    replacement: ReplacementModel, tokens: Int[Tensor, "row pos"], mode: str = "local"
) -> BatchRun:
    """Run ``replacement`` on a batch of rows with the hooks ``run_prompt`` caches (so every
    number is the one a local graph of the row would hold), keeping sources sparse."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"rows must be a (row, pos) tensor, got shape {tuple(tokens.shape)}")
    L = replacement.cfg.n_layers
    logits, c = replacement.run_with_cache(
        tokens, mode=mode, names_filter=lambda name: name.endswith(BATCH_HOOKS)
    )
    probs = logits[:, :-1].softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    errors = None
    if mode == "local":
        errors = []
        for l in range(L):
            errors += [
                c[hook_name(l, "lorsa.hook_error")],
                c[hook_name(l, "transcoder.hook_error")],
            ]
    return BatchRun(
        tokens=tokens,
        mode=mode,
        sigma1=torch.stack([c[hook_name(l, "ln1.hook_scale")][..., 0] for l in range(L)]),
        sigma2=torch.stack([c[hook_name(l, "ln2.hook_scale")][..., 0] for l in range(L)]),
        sigma_final=c["ln_final.hook_scale"][..., 0],
        lorsa_in=[c[hook_name(l, "lorsa.hook_in")] for l in range(L)],
        patterns=[c[hook_name(l, "lorsa.hook_pattern")] for l in range(L)],
        heads=[Nodes.of(c[hook_name(l, "lorsa.hook_z")]) for l in range(L)],
        features=[Nodes.of(c[hook_name(l, "transcoder.hook_acts")]) for l in range(L)],
        errors=errors,
        next_probability=torch.nn.functional.pad(probs, (0, 1)),
    )
