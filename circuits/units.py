"""The numbering of units: one job, mapping units to and from (kind, stage, index).

A *unit* is what a local graph's node is an occurrence of: a token's embedding, a Lorsa head, a
transcoder feature, a sublayer's error term, a logit. Units are numbered stage by stage (the
order of ``circuits.nodes``): ``V`` token units, then per block ``l`` its Lorsa heads plus one
attention-error unit and its features plus one MLP-error unit, then ``V`` logit units::

    sizes = V, (n_ov[0] + 1, d_sae[0] + 1), ..., (n_ov[L-1] + 1, d_sae[L-1] + 1), V

Within a stage a unit's offset is its head, feature or token index; the error unit is last.
Global circuits (``circuits.statistics``, ``circuits.global_weights``) index their tables by
unit, and ``unit_id`` names a unit as a node id without its position. ``decoders`` and
``readers`` give every unit's centred write and read direction in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from replacement.model import ReadWrite, ReplacementModel

from .graph import NamedSide, checked_index, is_integer
from .nodes import (
    EMBEDDING_STAGE,
    Kind,
    block_of,
    logit_stage,
    lorsa_stage,
    stage_of,
    sublayer_kind,
)


@dataclass(frozen=True)
class Units:
    """The numbering of units: stage blocks of sizes ``V, (n_ov+1, d_sae+1) x L, V``.

    ``sizes`` (per stage), ``offsets`` (per stage, and the total at the end) and ``stage`` (per
    unit) are computed once, when the numbering is made."""

    d_vocab: int
    n_ov: list[int]
    d_sae: list[int]
    sizes: list[int] = field(init=False, repr=False, compare=False)
    offsets: np.ndarray = field(init=False, repr=False, compare=False)
    stage: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        inner = [s for n, d in zip(self.n_ov, self.d_sae, strict=True) for s in (n + 1, d + 1)]
        sizes = [self.d_vocab, *inner, self.d_vocab]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        stage = np.repeat(np.arange(len(sizes)), sizes)
        offsets.flags.writeable = stage.flags.writeable = False
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "stage", stage)
        object.__setattr__(self, "_offsets_t", torch.from_numpy(offsets[:-1].copy()))
        object.__setattr__(self, "_sizes_t", torch.tensor(sizes))

    @classmethod
    def of(cls, replacement: ReplacementModel) -> Units:
        return cls(
            replacement.cfg.d_vocab,
            [lorsa.cfg.n_ov_heads for lorsa in replacement.lorsas],
            [tc.cfg.d_sae for tc in replacement.transcoders],
        )

    @property
    def n_layers(self) -> int:
        return len(self.n_ov)

    @property
    def total(self) -> int:
        return int(self.offsets[-1])

    @property
    def logit_stage(self) -> int:
        return logit_stage(self.n_layers)

    def start(self, stage: int) -> int:
        """The first unit of ``stage`` (= the number of units below it)."""
        return int(self.offsets[stage])

    def unit(self, kind: Kind | str, layer: int, index: int) -> int:
        """The unit of a kind (``Kind`` or its name) in block ``layer`` (ignored for embeddings
        and logits); an error unit's ``index`` is its sublayer, 0 attention and 1 MLP."""
        kind = Kind.parse(kind) if isinstance(kind, str) else Kind(kind)
        if kind == Kind.EMBEDDING:
            return self._checked(EMBEDDING_STAGE, index)
        if kind == Kind.LOGIT:
            return self._checked(self.logit_stage, index)
        layer = self.check_layer(layer)
        if kind == Kind.ERROR:
            if not is_integer(index) or index not in (0, 1):
                raise ValueError(f"an error unit's index is 0 (attention) or 1 (MLP), not {index}")
            return int(self.offsets[lorsa_stage(layer) + index + 1] - 1)
        stage = stage_of(kind, layer)
        return self._checked(stage, index, self.sizes[stage] - 1)

    def _checked(self, stage: int, index: int, size: int | None = None) -> int:
        size = self.sizes[stage] if size is None else size
        return int(self.offsets[stage]) + checked_index(index, "index", size)

    def check(self, unit: int, name: str = "unit") -> int:
        """``unit`` as an ``int``, or a one-line ValueError naming ``name`` unless it is a unit
        of this numbering (``checked_index``)."""
        return checked_index(unit, name, self.total)

    def check_layer(self, layer: int) -> int:
        """``layer`` as an ``int``, or a one-line ValueError unless it is a block of this
        numbering."""
        return checked_index(layer, "layer", self.n_layers)

    def describe(self, unit: int) -> tuple[Kind, int, int]:
        """(kind, stage, index) of a unit; an error unit's index is -1."""
        unit = self.check(unit)
        stage = int(self.stage[unit])
        index = unit - int(self.offsets[stage])
        if stage == EMBEDDING_STAGE:
            return Kind.EMBEDDING, stage, index
        if stage == self.logit_stage:
            return Kind.LOGIT, stage, index
        if index == self.sizes[stage] - 1:
            return Kind.ERROR, stage, -1
        return sublayer_kind(stage), stage, index

    def layer(self, unit: int) -> int:
        """The block of a Lorsa, transcoder or error unit (-1 for tokens, L for logits)."""
        return block_of(int(self.stage[self.check(unit)]))

    def side(self, unit: int, pos: int | None = None) -> NamedSide:
        """A unit's fields as a QK record names them (``NamedSide``): its node at ``pos``, or
        the unit itself (None)."""
        return NamedSide(*self.describe(unit), pos)

    def unit_id(self, unit: int) -> str:
        """A unit's id (``circuits.nodes.unit_id``): a node id without the position."""
        return self.side(unit).id

    def node_id(self, unit: int) -> str:
        """The id of a unit's node in a global graph, where units sit at position 0."""
        return self.side(unit, 0).id

    def dictionary(self) -> Tensor:
        """Per unit: whether it is a Lorsa head or a transcoder feature (a dictionary unit,
        whose write is its activation times a fixed direction)."""
        stage = torch.tensor(self.stage)
        offset = torch.arange(self.total) - self._offsets_t[stage]
        inner = (stage > EMBEDDING_STAGE) & (stage < self.logit_stage)
        return inner & (offset < self._sizes_t[stage] - 1)

    def of_nodes(
        self, kind: Int[Tensor, " n"], stage: Int[Tensor, " n"], index: Int[Tensor, " n"]
    ) -> Int[Tensor, " n"]:
        """The unit of each node of a local graph or prompt run (logit nodes included)."""
        unit = self._offsets_t[stage] + index
        err = kind == Kind.ERROR
        unit[err] = self._offsets_t[stage[err]] + self._sizes_t[stage[err]] - 1
        return unit


def _tables(rw: ReadWrite, write: bool) -> list[Tensor | None]:
    """Per stage, the table of its units' centred write (``write``) or read directions, error
    units (each sublayer stage's last) left out; None where they are all zero (logits' writes,
    tokens' reads). The one layout of ``decoders``, ``readers`` and their single rows."""
    tables: list[Tensor | None] = [rw.embed_write if write else None]
    for layer in range(len(rw.lorsa_write)):
        if write:
            tables += [rw.lorsa_write[layer], rw.tc_write[layer]]
        else:
            tables += [rw.lorsa_read[layer], rw.tc_read[layer]]
    tables.append(None if write else rw.unembed)
    return tables


def _every_row(rw: ReadWrite, units: Units, write: bool) -> Float[Tensor, "unit d_model"]:
    zero = torch.zeros(1, rw.embed_write.shape[1])
    rows = []
    for table, size in zip(_tables(rw, write), units.sizes, strict=True):
        held = 0 if table is None else len(table)
        rows += [*([] if table is None else [table]), zero.expand(size - held, -1)]
    return torch.cat(rows)


def _one_row(rw: ReadWrite, units: Units, unit: int, write: bool) -> Float[Tensor, " d_model"]:
    kind, stage, index = units.describe(unit)
    table = _tables(rw, write)[stage]
    if table is None or kind == Kind.ERROR:
        return torch.zeros(rw.embed_write.shape[1])
    return table[index]


def decoders(rw: ReadWrite, units: Units) -> Float[Tensor, "unit d_model"]:
    """Every unit's write direction, centred (``P d``: a token's ``P W_E[t]``, a head's
    ``P w_o``, a feature's decoder row), in unit order; zero for error and logit units."""
    return _every_row(rw, units, write=True)


def readers(rw: ReadWrite, units: Units) -> Float[Tensor, "unit d_model"]:
    """Every unit's reading direction, centred (``P w_v``, an encoder column, a demeaned
    unembedding column), in unit order; zero for tokens and errors."""
    return _every_row(rw, units, write=False)


def decoder(rw: ReadWrite, units: Units, unit: int) -> Float[Tensor, " d_model"]:
    """One row of ``decoders``, without forming the table."""
    return _one_row(rw, units, unit, write=True)


def reader(rw: ReadWrite, units: Units, unit: int) -> Float[Tensor, " d_model"]:
    """One row of ``readers``, without forming the table."""
    return _one_row(rw, units, unit, write=False)
