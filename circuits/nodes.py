"""Node kinds, the stage numbering and node/unit ids: the one place that knows them.

A graph's nodes are sorted by *stage*, the replacement model's topological order::

    stage 0             embedding   one per position (the token's embedding W_E[token])
    stage 2l + 1        lorsa       block l's active Lorsa heads, and its attention error nodes
    stage 2l + 2        transcoder  block l's active transcoder features, and its MLP error nodes
    stage 2L + 1        logit       targets: logit tokens (demeaned), logit differences

Graphs made with constants as nodes (``attribute(constants=True)``) also hold, in every
sublayer stage, one ``bias`` node per position: the constant that sublayer writes there (the
Lorsa output bias ``b_D``, the transcoder decoder bias ``b_dec``); and at stage 0 one per
position for the position vector ``W_pos[pos]``, which depends on where a token is and never on
which: a constant, so that a token's flow is its embedding's alone (without constants as
nodes it is part of the readers' constant terms, as the biases are).

Ids follow circuit-tracer/Neuronpedia's ``{layer}_{feature}_{pos}``, where ``layer`` counts
*sublayers* (stage - 1: ``2l`` is block l's Lorsa, ``2l + 1`` its transcoder) and the logits
sit at ``2L + 1``::

    E_{token}_{pos}        embedding            {2l}_{head}_{pos}      Lorsa head
    {2l}_-1_{pos}          attention error      {2l+1}_{feature}_{pos} transcoder feature
    {2l+1}_-1_{pos}        MLP error            {2L+1}_{token}_{pos}   logit
    {2L+1}_{a}-{b}_{pos}   logit difference a - b
    {2l}_bias_{pos}        Lorsa output bias    {2l+1}_bias_{pos}      transcoder decoder bias
    E_pos_{pos}            position vector

A *unit* is a position-free node (global circuits): its id is the node id without the
position (``E_{token}``, ``{2l}_{head}``, ...). Ids are for files and people: code reads the
kind, stage, position and index arrays, never the id text.

This module imports nothing heavy, so CLIs can use it before their arguments are checked.
"""

from __future__ import annotations

import math
from enum import IntEnum


class Kind(IntEnum):
    """A node's kind; the integer is the code stored in graph files."""

    EMBEDDING = 0
    LORSA = 1
    TRANSCODER = 2
    ERROR = 3
    LOGIT = 4
    BIAS = 5  # a constant at one position: a sublayer's output bias (b_D, b_dec), W_pos at 0

    @property
    def label(self) -> str:
        """The lower-case name used in files, CLIs and networkx attributes."""
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Kind:
        """The kind named ``name`` (``"lorsa"``, ...; a ``Kind`` is itself), or a ValueError
        listing the names."""
        if isinstance(name, cls):
            return name
        try:
            return cls[name.upper()]
        except (KeyError, AttributeError):
            names = ", ".join(k.label for k in cls)
            raise ValueError(f"unknown node kind {name!r}; expected one of {names}") from None


KINDS = tuple(k.label for k in Kind)  # names by code, as in graph files
TARGET_KINDS = (Kind.LORSA, Kind.TRANSCODER)  # what a node target (a unit traced from) is
# Kinds whose activation is 1 by the graph's convention (their write vector is the vector
# itself): graph.json writes none for them, and neither the page's panel nor its node table
# shows one (a review read "activation 1" for a token in the table)
CONVENTION_ACTIVATION = frozenset({Kind.EMBEDDING, Kind.ERROR, Kind.BIAS})


def target_kind(name) -> Kind:
    """The kind of a node target named ``name`` (``Kind.parse``), or a ValueError unless it
    is one of ``TARGET_KINDS``."""
    kind = Kind.parse(name)
    if kind not in TARGET_KINDS:
        raise ValueError(f"node targets are lorsa or transcoder nodes, not {name!r}")
    return kind


# ----------------------------------------------------------------- stages
EMBEDDING_STAGE = 0


def lorsa_stage(layer: int) -> int:
    """The stage of block ``layer``'s Lorsa heads and attention errors."""
    return 2 * layer + 1


def transcoder_stage(layer: int) -> int:
    """The stage of block ``layer``'s transcoder features and MLP errors."""
    return 2 * layer + 2


def logit_stage(n_layers: int) -> int:
    """The stage of the logits of an ``n_layers``-block model."""
    return 2 * n_layers + 1


def stage_of(kind: Kind, layer: int) -> int:
    """The stage of a Lorsa or transcoder unit of block ``layer`` (``layer`` is n_layers for
    logits, ignored for embeddings). Error and bias nodes exist at both sublayers of a block."""
    if kind == Kind.EMBEDDING:
        return EMBEDDING_STAGE
    if kind == Kind.LORSA:
        return lorsa_stage(layer)
    if kind == Kind.TRANSCODER:
        return transcoder_stage(layer)
    if kind == Kind.LOGIT:
        return logit_stage(layer)
    raise ValueError(f"{Kind(kind).label} nodes exist at both sublayers of a block: give the stage")


def block_of(stage: int) -> int:
    """The block a stage (an int, or elementwise a tensor of stages) belongs to: -1 for
    embeddings, n_layers for the logits."""
    return (stage - 1) // 2


def constant_name(stage: int) -> str:
    """How the constant (bias) nodes of ``stage`` are named to a reader: stage 0's are the
    position vectors, a sublayer's its output bias (``L0 attn bias``, ``L1 mlp bias``)."""
    if stage == EMBEDDING_STAGE:
        return "position vector"
    return f"L{block_of(stage)} {'attn' if is_attention(stage) else 'mlp'} bias"


def node_words(
    kind: Kind, stage: int, index: int, pos: int | None = None, *, token: str | None = None
) -> str:
    """A node (or, ``pos`` None, a unit) of any kind but a logit in words, the one wording
    every label builds on: ``token ' is'@7`` (a token is written against its position, as
    everywhere), ``position vector @7``, ``L1 mlp bias @7``, ``L0 attn error @7``,
    ``L2 head 573 @15``, ``L0 feature 1859 @7``. ``token``: an embedding's token text (its id
    is said when the text is unknown)."""
    kind, where = Kind(kind), "" if pos is None else f" @{pos}"
    if kind == Kind.EMBEDDING:
        return (f"token id {index}" if token is None else f"token {token!r}") + where.strip()
    if kind == Kind.BIAS:
        return constant_name(stage) + where
    if kind == Kind.LOGIT:
        raise ValueError("a logit is named by its token(s): see reports.labels.logit_text")
    layer = block_of(stage)
    if kind == Kind.ERROR:
        return f"L{layer} {'attn' if is_attention(stage) else 'mlp'} error{where}"
    return f"L{layer} {'head' if kind == Kind.LORSA else 'feature'} {index}{where}"


def is_attention(stage):
    """Whether ``stage`` (an int, or elementwise a tensor of stages) is a Lorsa (attention)
    stage rather than a transcoder one. Only meaningful between the embedding and logit stage."""
    return stage % 2 == 1


def kind_at_stage(kind: Kind, stage, top: int | None = None):
    """Whether a node of ``kind`` may sit at ``stage`` (an int, or elementwise a tensor of
    stages), the one statement of the stage numbering's rule (module docstring): a token at 0;
    a head at a Lorsa stage, a feature at a transcoder one; an error in a sublayer; a bias in a
    sublayer or at 0 (the position vectors); a logit at ``top``, the logit stage, below which
    every other kind sits. ``top`` None: a model of unknown depth (no logit fits it)."""
    top = math.inf if top is None else top
    kind = Kind(kind)
    if kind == Kind.LOGIT:
        return stage == top
    below = (stage >= EMBEDDING_STAGE) & (stage < top)
    if kind == Kind.EMBEDDING:
        return below & (stage == EMBEDDING_STAGE)
    if kind == Kind.BIAS:
        return below
    in_sublayer = below & (stage > EMBEDDING_STAGE)
    if kind == Kind.ERROR:
        return in_sublayer
    return in_sublayer & (is_attention(stage) == (kind == Kind.LORSA))


def sublayer_kind(stage: int) -> Kind:
    """The dictionary kind of a sublayer stage: LORSA or TRANSCODER."""
    return Kind.LORSA if is_attention(stage) else Kind.TRANSCODER


def sublayer(stage: int) -> int:
    """The circuit-tracer "layer" of a stage (its id prefix): stage - 1; logits keep their
    stage (module docstring)."""
    return stage - 1


# ----------------------------------------------------------------- ids
def node_id(
    kind: Kind,
    stage: int,
    pos: int,
    index: int,
    *,
    token: int | None = None,
    negative: int | None = None,
) -> str:
    """The node's id (module docstring). ``token``: an embedding's token; ``negative``: the
    subtracted token of a logit difference (``index`` is the positive one)."""
    return f"{unit_id(kind, stage, index, token=token, negative=negative)}_{pos}"


def unit_id(
    kind: Kind, stage: int, index: int, *, token: int | None = None, negative: int | None = None
) -> str:
    """A unit's id: a node id without the position."""
    kind = Kind(kind)
    if kind == Kind.EMBEDDING:
        return f"E_{index if token is None else token}"
    if kind == Kind.LOGIT:
        return f"{stage}_{index}" if negative is None else f"{stage}_{index}-{negative}"
    if kind == Kind.BIAS:
        return "E_pos" if stage == EMBEDDING_STAGE else f"{sublayer(stage)}_bias"
    return f"{sublayer(stage)}_{-1 if kind == Kind.ERROR else index}"
