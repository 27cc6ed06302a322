"""Local attribution: the exact linear graph of one prompt through frozen attention patterns.

With every Lorsa pattern ``A`` and LayerNorm scale ``sigma`` frozen at their values on the prompt,
each target's pre-activation is a linear function of the sources' activations (DESIGN.md
section 5). Every LayerNorm here only centres and scales (``P x / sigma``, ``P`` the centring
projection), so a target reads the residual stream at position p through a vector ``g``:

    transcoder feature t of layer l at p:   g = P W_enc[:, t] / sigma2[l, p]
    Lorsa head i of layer l at query q:     at each key k <= q, A[h(i), q, k] P w_v^i / sigma1[l, k]
    logit v at the last position:           g = P (W_U[:, v] - mean_v W_U) / sigma_final

and a source s at position p writes ``activation_s * d_s`` (d: the head's ``w_o``, the feature's
decoder row, the embedding or error vector). The edge is their dot product, times the pattern
weight for a Lorsa target; the constants (decoder biases below the target, ``b_enc``, ``b_V``,
``b_U``) make the target's ``bias`` term, except that with ``constants=True`` the decoder
biases are source nodes of kind ``bias`` (one per sublayer and position) and only the target's
own constant stays in its term. Edges are formed in closed form with batched matrix
products, never by backward passes (autograd is the tests' oracle, ``circuits.interventions``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Float, Int
from torch import Tensor

from replacement.model import MODES, ReadWrite, ReplacementModel, hook_name
from toy_models.tokenizer import BOS, bos_id, token_text, tokenizer_sha256

from .graph import (
    N_PROMOTED,
    Graph,
    LogitRecord,
    checked_count,
    checked_flag,
    checked_fraction,
    is_integer,
)
from .nodes import (
    Kind,
    block_of,
    logit_stage,
    lorsa_stage,
    stage_of,
    target_kind,
    transcoder_stage,
)
from .prune import closure_gaps, open_rows, remember_closed, row_sums

LORSA_BLOCK_ENTRIES = 1 << 23  # Lorsa targets x sources per dense block (bounds temporaries)
TOP_TOKENS = 5  # the texts a graph keeps of the last position's most likely next tokens


# ----------------------------------------------------------------- targets
@dataclass(frozen=True)
class LogitTarget:
    """The demeaned logit of ``token`` at the last position."""

    token: int


@dataclass(frozen=True)
class LogitDiffTarget:
    """``logit(positive) - logit(negative)`` at the last position."""

    positive: int
    negative: int


@dataclass(frozen=True)
class NodeTarget:
    """An active Lorsa head or transcoder feature of the graph: influence starts there."""

    kind: str  # "lorsa" or "transcoder"
    layer: int
    pos: int
    index: int


Target = LogitTarget | LogitDiffTarget | NodeTarget


@dataclass
class _Logit:
    """A resolved logit target with what its node reads: ``direction`` (and ``bias``) from
    the residual stream at the last position, its ``value`` and influence ``weight``."""

    record: LogitRecord
    direction: Float[Tensor, " d_model"]
    bias: Tensor
    value: Tensor
    weight: float


def _check_token(token: int, d_vocab: int) -> int:
    if not is_integer(token):  # never a float or a string truncated or parsed into an id
        raise ValueError(f"a target token id must be an integer, got {token!r}")
    if not 0 <= token < d_vocab:
        raise ValueError(f"target token id {token} is outside the vocabulary (0..{d_vocab - 1})")
    return int(token)


# ----------------------------------------------------------------- the clean run
@dataclass
class PromptRun:
    """One clean forward pass and the source nodes it activates, in graph order.

    Sources are sorted by stage (``circuits.nodes``); within a stage come the heads or
    features (by position, then index), then the error nodes, then the bias nodes (by
    position). ``write[s]`` is what source s adds to the residual stream at ``pos[s]``: an
    embedding node its token's embedding ``W_E[token]``, never the position vector.
    ``resid_bias[S, p]`` is the constant part of the residual stream that stage S reads at
    position p and no source carries: the position vector ``W_pos[p]`` plus
    ``ReadWrite.resid_bias`` (the decoder biases below S), or zero when ``constants`` made
    them bias sources (one per sublayer and position, and the position vectors one per
    position at stage 0). A position vector depends on where a token is, never on which: a
    constant, like a bias, so that a token's flow is its embedding's alone.
    """

    tokens: Int[Tensor, " pos"]
    mode: str
    sigma1: Float[Tensor, "layer pos"]
    sigma2: Float[Tensor, "layer pos"]
    sigma_final: Float[Tensor, " pos"]
    patterns: list[Float[Tensor, "qk q k"]]
    lorsa_in: list[Float[Tensor, "pos d_model"]]
    lorsa_pre: list[Float[Tensor, "pos ov"]]
    tc_pre: list[Float[Tensor, "pos d_sae"]]
    logits: Float[Tensor, "pos d_vocab"]
    kind: Int[Tensor, " src"]
    stage: Int[Tensor, " src"]
    pos: Int[Tensor, " src"]
    index: Int[Tensor, " src"]
    activation: Float[Tensor, " src"]
    write: Float[Tensor, "src d_model"]
    resid_bias: Float[Tensor, "stage pos d_model"]
    constants: bool = False

    @property
    def n_layers(self) -> int:
        return len(self.patterns)

    def stage_start(self, stage: int) -> int:
        """Index of the first source of ``stage`` (= number of sources below it)."""
        return int(torch.searchsorted(self.stage, stage))

    def sources_at(self, pos: int, below_stage: int) -> Int[Tensor, " n"]:
        """Sources at ``pos`` that a reader at ``below_stage`` sees."""
        n = self.stage_start(below_stage)
        return (self.pos[:n] == pos).nonzero().squeeze(1)

    def select(self, kind: Kind, stage: int) -> Int[Tensor, " n"]:
        """The sources of one kind in one stage, in graph order."""
        lo, hi = self.stage_start(stage), self.stage_start(stage + 1)
        return torch.arange(lo, hi)[self.kind[lo:hi] == kind]


_RUN_HOOKS = ("hook_scale", "hook_pattern", "hook_pre", "hook_z", "hook_acts", "hook_error")
_RUN_HOOKS += ("lorsa.hook_in",)


def run_for_graph(
    replacement: ReplacementModel,
    graph: Graph,
    run: PromptRun | None = None,
    *,
    constants: bool | None = None,
) -> PromptRun:
    """The clean run that a computation on ``graph`` reads (``intervene``, ``first_order``,
    ``qk_attribution``): ``run`` when the caller has one, else a new ``run_prompt`` of the
    graph's prompt in its mode, with bias sources when ``constants`` (default: when the graph
    has them).

    Refused, each in one line: a graph without a prompt (a global graph), a replacement set
    that cannot be the graph's (``check_replacement_fits``: other layers, QK group size,
    vocabulary or widths), a graph traced with another saved replacement set than
    ``replacement`` or with other weights (``weights_sha256``: a set swapped or edited in
    place; its edges and this set's run would not describe one model), and a ``run`` of
    another prompt or mode than the graph's.
    """
    if not graph.positional or not graph.tokens:
        raise ValueError("a global graph has no prompt to run: this needs a prompt's graph")
    check_replacement_fits(replacement, graph)
    traced, given = graph.model.get("replacement_sha256"), replacement.content_sha256
    if None not in (traced, given) and traced != given:
        raise ValueError(f"the graph was traced with another replacement set ({traced[:12]}...) "
                         f"than the one given ({given[:12]}...): its edges and this set's run "
                         "would not describe one model")  # fmt: skip
    weights = graph.model.get("weights_sha256")
    if weights is not None and weights != replacement.weights_sha256():
        raise ValueError("the graph was traced with other weights than this replacement set's "
                         "(another set, or one edited since): its edges and this set's run "
                         "would not describe one model")  # fmt: skip
    tokens = torch.tensor(graph.tokens)
    if run is None:
        with_constants = graph.has_constants if constants is None else constants
        return run_prompt(replacement, tokens, graph.mode, constants=with_constants)
    if run.mode != graph.mode or not torch.equal(run.tokens, tokens):
        raise ValueError(
            f"the run given is not of this graph's prompt in its mode ({graph.mode}): "
            "pass the run_prompt of the graph's own tokens, or none"
        )
    return run


def check_replacement_fits(replacement: ReplacementModel, graph: Graph) -> None:
    """Refuse, in one line, a replacement set that cannot be the one ``graph`` was traced with:
    another number of layers, Lorsa group size or vocabulary, or a unit index the set does not
    have (a saved set is also checked by its identity, ``run_for_graph``; an unsaved one only
    by these shapes)."""
    lorsas, tcs = replacement.lorsas, replacement.transcoders
    if graph.n_layers != len(lorsas):
        raise ValueError(f"the graph has {graph.n_layers} layers and the replacement set "
                         f"{len(lorsas)}: not the set it was traced with")  # fmt: skip
    if graph.group_size != replacement.group_size:
        raise ValueError(f"the graph's Lorsa heads share QK in groups of {graph.group_size}, the "
                         f"replacement set's in groups of {replacement.group_size}: not the "
                         "set it was traced with")  # fmt: skip
    referenced = [r.token for r in graph.logit_targets] + graph.tokens
    referenced += [r.negative for r in graph.logit_targets if r.negative is not None]
    if max(referenced, default=0) >= replacement.cfg.d_vocab:
        raise ValueError(f"the graph names token {max(referenced)}, outside the replacement set's "
                         f"vocabulary of {replacement.cfg.d_vocab}")  # fmt: skip
    # numpy: a full graph's dozen passes over its nodes cost 0.4 s in torch's thread pool on
    # a busy machine, at every intervention's check
    kinds, stages, index = (x.numpy() for x in (graph.kind, graph.stage, graph.index))
    for kind, widths in ((Kind.LORSA, [x.cfg.n_ov_heads for x in lorsas]),
                         (Kind.TRANSCODER, [x.cfg.d_sae for x in tcs])):  # fmt: skip
        for l, width in enumerate(widths):
            at = index[(kinds == kind) & (stages == stage_of(kind, l))]
            if len(at) and int(at.max()) >= width:
                raise ValueError(f"the graph has {kind.label} {int(at.max())} in layer {l}, which "
                                 f"the replacement set's {width} units lack: not the set it was "
                                 "traced with")  # fmt: skip


@torch.no_grad()
def run_prompt(
    replacement: ReplacementModel,
    tokens: Int[Tensor, " pos"],
    mode: str = "local",
    *,
    constants: bool = False,
) -> PromptRun:
    """Run ``replacement`` on one prompt, caching what the linear graph is made of.
    ``constants``: every sublayer's decoder bias (``b_D``, ``b_dec``) at every position is a
    source of its own (kind ``bias``, activation 1) instead of part of the readers' bias terms.
    ``tokens`` as ``prompt_tokens`` takes them: BOS first and nowhere else, checked when the
    model knows its BOS id (a loaded one), else the caller's to ensure."""
    constants = checked_flag(constants, "constants")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    for l, tc in enumerate(replacement.transcoders):
        if tc.W_skip is not None:
            raise ValueError(
                f"transcoder {l} has a linear skip; attribution through skips is not supported"
            )
    replacement.group_size  # noqa: B018 (refuses a set whose layers differ)
    tokens = prompt_tokens(replacement, tokens)
    L, n = replacement.cfg.n_layers, len(tokens)
    logits, cache = replacement.run_with_cache(
        tokens[None], mode=mode, names_filter=lambda name: name.endswith(_RUN_HOOKS)
    )
    c = {k: v[0] for k, v in cache.items()}
    m = replacement.model

    # Sources in graph order: stage, then position, then index.
    kinds, stages, poss, indices, acts, writes = [], [], [], [], [], []

    def add(kind, stage, pos, index, act, write):
        kinds.append(torch.full_like(pos, kind))
        stages.append(torch.full_like(pos, stage))
        poss.append(pos), indices.append(index), acts.append(act), writes.append(write)

    arange = torch.arange(n)
    add(Kind.EMBEDDING, 0, arange, tokens.clone(), torch.ones(n), m.W_E[tokens])
    minus_one = torch.full_like(arange, -1)
    if constants:  # the position vectors: stage 0's bias nodes
        add(Kind.BIAS, 0, arange, minus_one, torch.ones(n), m.W_pos[:n])
    for l in range(L):
        for kind, site, layer in (
            (Kind.LORSA, "lorsa", replacement.lorsas[l]),
            (Kind.TRANSCODER, "transcoder", replacement.transcoders[l]),
        ):
            stage = stage_of(kind, l)
            a = c[hook_name(l, f"{site}.hook_z" if kind == Kind.LORSA else f"{site}.hook_acts")]
            pos, idx = a.nonzero(as_tuple=True)
            val = a[pos, idx]
            add(kind, stage, pos, idx, val, val[:, None] * layer.decoder[idx])
            if mode == "local":
                error = c[hook_name(l, f"{site}.hook_error")]
                add(Kind.ERROR, stage, arange, minus_one, torch.ones(n), error)
            if constants:
                bias = decoder_bias(layer).detach()
                add(Kind.BIAS, stage, arange, minus_one, torch.ones(n), bias.expand(n, -1))
    resid_bias = replacement.read_write().resid_bias[:, None] + m.W_pos[:n].detach()[None]

    return PromptRun(
        tokens=tokens,
        mode=mode,
        sigma1=torch.stack([c[hook_name(l, "ln1.hook_scale")][:, 0] for l in range(L)]),
        sigma2=torch.stack([c[hook_name(l, "ln2.hook_scale")][:, 0] for l in range(L)]),
        sigma_final=c["ln_final.hook_scale"][:, 0],
        patterns=[c[hook_name(l, "lorsa.hook_pattern")] for l in range(L)],
        lorsa_in=[c[hook_name(l, "lorsa.hook_in")] for l in range(L)],
        lorsa_pre=[c[hook_name(l, "lorsa.hook_pre")] for l in range(L)],
        tc_pre=[c[hook_name(l, "transcoder.hook_pre")] for l in range(L)],
        logits=logits[0],
        kind=torch.cat(kinds),
        stage=torch.cat(stages),
        pos=torch.cat(poss),
        index=torch.cat(indices),
        activation=torch.cat(acts),
        write=torch.cat(writes),
        resid_bias=torch.zeros_like(resid_bias) if constants else resid_bias,
        constants=constants,
    )


def prompt_tokens(replacement: ReplacementModel, tokens) -> Int[Tensor, " pos"]:
    """One prompt's token ids as a 1-D tensor (a ``(1, pos)`` batch of one is read as its
    row), refused in one line when it is anything else: text, several prompts (never run as
    one), nothing, or more tokens than the model trained positions for
    (``ToyTransformer.trained_positions``: a prediction read past them is not the model's),
    or, for a model that knows its BOS id (``ToyTransformer.bos_id``: one ``load_pretrained``
    loaded), not BOS at position 0 and nowhere else, as every sequence it trained on holds it
    (a notebook review: ids without BOS gave a graph of another computation without a word).
    Ids and their type are checked where the model reads them (``check_tokens``). A model
    built in memory has no BOS id: BOS is then the caller's to ensure
    (``check_prompt_tokenizer`` checks it with the tokenizer)."""
    if isinstance(tokens, str | bytes):
        raise ValueError("tokens are token ids: encode the text with the model's tokenizer")
    try:
        tokens = torch.as_tensor(tokens)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"tokens must be token ids (integers), got {type(tokens).__name__}: "
                         f"{str(exc).splitlines()[0]}") from None  # fmt: skip
    if tokens.ndim == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.ndim != 1:
        raise ValueError(f"one prompt at a time: tokens must be (pos,) or (1, pos), got shape "
                         f"{tuple(tokens.shape)}")  # fmt: skip
    if not len(tokens):
        raise ValueError("tokens is empty: a prompt has at least one token (BOS)")
    limit = replacement.model.trained_positions
    if len(tokens) > limit:
        raise ValueError(f"{len(tokens)} tokens: the model was trained on {limit} positions "
                         "(its last one never trains), so a prompt holds at most "
                         "that many")  # fmt: skip
    bos = replacement.model.bos_id
    if bos is not None:
        check_bos(tokens, bos)
    return tokens


def check_bos(tokens: Int[Tensor, " pos"], bos: int) -> None:
    """Refuse, in one line, ``tokens`` that do not hold ``bos`` at position 0 and there only,
    as every sequence the model was trained on does (without BOS a prompt runs, to other
    answers, with no sink at position 0)."""
    if int(tokens[0]) != bos:
        raise ValueError(f"tokens start with id {int(tokens[0])}, not {BOS} ({bos}), which "
                         "begins every sequence the model was trained on: encode the prompt "
                         "with the tokenizer (tokenizer.encode(text).ids puts it first, or "
                         "toy_models.tokenizer.encode_prompt)")  # fmt: skip
    later = (tokens[1:] == bos).nonzero()
    if len(later):
        raise ValueError(f"tokens hold {BOS} ({bos}) again at position {int(later[0]) + 1}: the "
                         "model was trained with it at position 0 only")  # fmt: skip


def check_prompt_tokenizer(
    replacement: ReplacementModel, tokens: Int[Tensor, " pos"], tokenizer
) -> None:
    """Refuse, in one line, a ``tokenizer`` that is not the one the model was trained with
    (its serialized form's SHA-256, the hash of the ``tokenizer.json`` it is saved as, is not
    the model's ``tokenizer_sha256``; a model built in memory has none, and any tokenizer
    passes), and ``tokens`` that do not hold its BOS at position 0 and there only, as every
    sequence the model was trained on does (without BOS a prompt runs, to other answers)."""
    recorded = replacement.model.tokenizer_sha256
    if recorded is not None and _tokenizer_sha256(tokenizer) != recorded:
        raise ValueError("tokenizer: not the tokenizer this model was trained with (its hash "
                         "differs): pass the one load_pretrained returned with it")  # fmt: skip
    bos = bos_id(tokenizer)
    if bos is None:
        raise ValueError(f"tokenizer has no {BOS} token: not a tokenizer of this project")
    check_bos(tokens, bos)


def _tokenizer_sha256(tokenizer) -> str:
    """``toy_models.tokenizer.tokenizer_sha256``, or a TypeError for what is no tokenizer."""
    try:
        return tokenizer_sha256(tokenizer)
    except (AttributeError, TypeError):
        raise TypeError(f"tokenizer must be a tokenizers.Tokenizer (load_pretrained's), got "
                        f"{type(tokenizer).__name__}") from None  # fmt: skip


def decoder_bias(layer) -> Float[Tensor, " d_model"]:
    """The constant a Lorsa layer (``b_D``) or transcoder (``b_dec``) writes at every position."""
    return layer.b_D if hasattr(layer, "b_D") else layer.b_dec


# ----------------------------------------------------------------- edges
class _EdgeRows:
    """The edge matrix as CSR, filled block by block in increasing row order into arrays
    sized up front: every row's number of entries is known before any edge is formed
    (``edge_counts``), so the edges exist once in memory. Each block gives its rows (the rows
    between them have no entries), their columns in increasing order and values. Also sums
    each row's terms and their magnitudes, for the closure check."""

    def __init__(self, counts: Int[Tensor, " node"]):
        self.n = len(counts)
        nnz = int(counts.sum())
        dtype = np.int32 if max(nnz, self.n) < 2**31 else np.int64
        self.indptr = np.zeros(self.n + 1, dtype=dtype)
        np.cumsum(counts.numpy(), out=self.indptr[1:])
        self.counts = counts
        self.cols, self.vals = np.empty(nnz, dtype=dtype), np.empty(nnz, dtype=np.float32)
        self.row_sum, self.row_abs = torch.zeros(self.n), torch.zeros(self.n)

    def add(self, rows: Tensor, cols: Tensor, vals: Tensor) -> None:
        if not len(rows):
            return
        start, end = self._span(rows, len(vals))
        self.cols[start:end], self.vals[start:end] = cols.numpy(), vals.float().numpy()
        row_of = torch.repeat_interleave(rows, self.counts[rows])
        self.row_sum.index_add_(0, row_of, vals)
        self.row_abs.index_add_(0, row_of, vals.abs())

    def add_ranges(self, rows: Tensor, block: Tensor, keys: Tensor, ranges: list) -> None:
        """A dense block (rows, sources) whose row i holds its edges at the columns of
        ``ranges[keys[i]]`` (increasing, disjoint (start, stop) pairs) and zeros elsewhere:
        each run of rows with one key is copied a range at a time into the arrays (slices,
        where picking the entries by a mask cost more than the block itself), and every row
        is summed whole."""
        if not len(rows):
            return
        keys = keys.tolist()
        # numpy for the many small copies: torch's per-call cost (its thread pool) was larger
        cols_of = {k: np.concatenate([np.arange(a, b, dtype=self.cols.dtype) for a, b in ranges[k]])
                   for k in set(keys)}  # fmt: skip
        start, end = self._span(rows, sum(len(cols_of[k]) for k in keys))
        dense = block.numpy()
        at, i = int(start), 0
        for key, run in itertools.groupby(keys):
            n_rows, width = len(list(run)), len(cols_of[key])
            out = self.vals[at : at + n_rows * width].reshape(n_rows, width)
            c = 0
            for a, b in ranges[key]:
                out[:, c : c + b - a] = dense[i : i + n_rows, a:b]
                c += b - a
            self.cols[at : at + n_rows * width].reshape(n_rows, width)[:] = cols_of[key]
            at, i = at + n_rows * width, i + n_rows
        self.row_sum[rows], self.row_abs[rows] = block.sum(1), block.abs().sum(1)

    def _span(self, rows: Tensor, n_edges: int) -> tuple[int, int]:
        """Where the edges of ``rows`` (increasing, the rows between them empty) go, checked
        against the counts."""
        start, end = self.indptr[int(rows[0])], self.indptr[int(rows[-1]) + 1]
        if end - start != n_edges:
            raise AssertionError(f"rows {int(rows[0])}..: {n_edges} edges, {end - start} counted")
        return start, end

    def csr(self) -> sp.csr_array:
        return sp.csr_array((self.vals, self.cols, self.indptr), shape=(self.n, self.n), copy=False)


def edge_counts(run: PromptRun, n_logits: int) -> Int[Tensor, " node"]:
    """How many edges enter each node: a Lorsa head at query q reads every source below its
    stage at a key <= q, a feature every source below it at its position, a logit every
    source at the last position; sources that are not targets have none."""
    n, n_src = len(run.tokens), len(run.kind)
    counts = torch.zeros(n_src + n_logits, dtype=torch.long)
    for l in range(run.n_layers):
        stage = lorsa_stage(l)
        heads = run.select(Kind.LORSA, stage)
        per_pos = torch.bincount(run.pos[: run.stage_start(stage)], minlength=n)
        counts[heads] = per_pos.cumsum(0)[run.pos[heads]]
        stage = transcoder_stage(l)
        feats = run.select(Kind.TRANSCODER, stage)
        per_pos = torch.bincount(run.pos[: run.stage_start(stage)], minlength=n)
        counts[feats] = per_pos[run.pos[feats]]
    counts[n_src:] = len(run.sources_at(n - 1, logit_stage(run.n_layers)))
    return counts


def _same_position_edges(
    edges: _EdgeRows,
    rows: Int[Tensor, " t"],
    reading: Float[Tensor, "t d"],
    run: PromptRun,
    n_src: int,
) -> None:
    """Edges ``reading[t] . write[s]`` from every source below ``n_src`` at the target's
    position. Targets ``rows`` must be sorted by position (graph order is)."""
    n_pos = len(run.tokens)
    t_idx, t_valid = pad_by_position(run.pos[rows], n_pos)
    s_idx, s_valid = pad_by_position(run.pos[:n_src], n_pos)
    prod = reading[t_idx] @ run.write[s_idx].transpose(1, 2)  # pos t_slot s_slot
    mask = t_valid[:, :, None] & s_valid[:, None, :]
    p, i, j = mask.nonzero(as_tuple=True)  # row-major: rows, then columns, ascending
    edges.add(rows, s_idx[p, j], prod[p, i, j])


def pad_by_position(pos: Int[Tensor, " n"], n_pos: int) -> tuple[Tensor, Tensor]:
    """Indices grouped by position, padded: (pos, max_count) with a validity mask. A stable
    sort keeps each position's indices in their original (graph) order."""
    order = torch.sort(pos, stable=True).indices
    counts = torch.bincount(pos, minlength=n_pos)
    width = int(counts.max()) if len(pos) else 0
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(pos)) - starts[pos[order]]
    idx = torch.zeros(n_pos, width, dtype=torch.long)
    valid = torch.zeros(n_pos, width, dtype=torch.bool)
    idx[pos[order], slot], valid[pos[order], slot] = order, True
    return idx, valid


def _lorsa_edges(
    edges: _EdgeRows, run: PromptRun, replacement: ReplacementModel, layer: int, rows: Tensor
) -> Tensor:
    """Edges into the Lorsa heads ``rows`` (graph indices of layer ``layer``'s heads),
    ``A[h, q, pos(s)] * write[s] . P w_v^i / sigma1[layer, pos(s)]`` for every source below
    the layer at a key position ``pos(s) <= q``; returns the heads' bias terms."""
    rw = replacement.read_write()
    stage = lorsa_stage(layer)
    n_src = run.stage_start(stage)
    heads, q = run.index[rows], run.pos[rows]
    qk_head = heads // replacement.lorsas[layer].cfg.group_size
    unique, which = torch.unique(heads, return_inverse=True)
    w_v = rw.lorsa_read[layer][unique]  # u d
    s_pos = run.pos[:n_src]
    inv_sigma = 1 / run.sigma1[layer]
    values = ((run.write[:n_src] @ w_v.T) * inv_sigma[s_pos, None]).T.contiguous()  # u src
    A = run.patterns[layer]
    # the constant residual at each key (position vectors, biases), through the pattern
    at_key = (run.resid_bias[stage] @ w_v.T) * inv_sigma[:, None]  # pos u
    constant = (A[qk_head, q] * at_key[:, which].T).sum(1)
    bias = constant + rw.lorsa_bias[layer][heads]
    # Sources are sorted by stage, then position within each kind of a stage: the keys a query
    # q sees (A = 0 above q) are not one range but the start of each run of rising positions.
    runs = torch.cat([torch.tensor([0]), (s_pos[1:] < s_pos[:-1]).nonzero().squeeze(1) + 1,
                      torch.tensor([n_src])]).tolist()  # fmt: skip
    keys = torch.arange(len(run.tokens))
    ends = [(a, (a + torch.searchsorted(s_pos[a:b], keys, right=True)).tolist())
            for a, b in itertools.pairwise(runs)]  # fmt: skip
    ranges = [[(a, stop[k]) for a, stop in ends] for k in range(len(keys))]
    chunk = max(1, LORSA_BLOCK_ENTRIES // max(n_src, 1))
    for start in range(0, len(rows), chunk):
        sl = slice(start, start + chunk)
        block = A[qk_head[sl], q[sl]][:, s_pos].mul_(values[which[sl]])  # rows src
        edges.add_ranges(rows[sl], block, q[sl], ranges)
    return bias


def _token_string(tokenizer):
    if tokenizer is None:
        return lambda i: f"<{i}>"
    return lambda i: token_text(tokenizer, i)


# ----------------------------------------------------------------- the graph
@torch.no_grad()
def attribute(
    replacement: ReplacementModel,
    tokens: Int[Tensor, " pos"] | list[int],
    *,
    mode: str | None = None,
    targets: list[Target] | None = None,
    max_logits: int = 10,
    logit_probability: float = 0.95,
    tokenizer=None,
    prompt: str = "",
    run: PromptRun | None = None,
    constants: bool = False,
) -> Graph:
    """The full (unpruned) attribution graph of one prompt.

    ``targets``: default the top logits at the last position, up to ``max_logits`` of them and
    a cumulative probability of ``logit_probability``, each weighted by its probability;
    otherwise the given logit tokens, logit differences and nodes, weighted equally.
    ``mode``: "local" (the default) or "sparse"; ``tokenizer`` (optional) gives the graph its
    token texts, and must be the model's, with ``tokens`` holding its BOS first and only there
    (``check_prompt_tokenizer``; without one, ``prompt_tokens`` checks BOS for a model that
    knows its id: one ``load_pretrained`` loaded); ``run``
    (optional) is this prompt's ``run_prompt``, when the caller has it already (its mode is
    the default then, and its ``constants`` decides). ``constants``: the decoder biases become
    ``bias`` nodes, one per sublayer and position, whose edges carry what the readers' bias
    terms held (a Lorsa head reads them through its frozen pattern); each target's ``bias``
    keeps only its own constant (``b_V`` for a head, ``b_enc`` for a feature, ``b_U`` for a
    logit). The graph closes either way.
    """
    if targets is not None and not isinstance(targets, list | tuple):
        raise ValueError(f"targets must be a list of targets (or None), got "
                         f"{type(targets).__name__}")  # fmt: skip
    if targets is not None and not targets:
        raise ValueError("targets is empty: name at least one, or pass None for top logits")
    checked_count(max_logits, "max_logits")
    logit_probability = checked_fraction(logit_probability, "logit_probability")
    constants = checked_flag(constants, "constants")
    if tokenizer is not None:
        check_prompt_tokenizer(replacement, prompt_tokens(replacement, tokens), tokenizer)
    replacement.eval()
    if run is None:
        run = run_prompt(replacement, tokens, mode or "local", constants=constants)  # 1) clean run
    elif run.mode != (mode or run.mode) or not torch.equal(
        run.tokens, prompt_tokens(replacement, tokens)
    ):
        raise ValueError(f"the run given is not of these tokens in mode {mode or run.mode!r}: "
                         "pass the run_prompt of the same tokens and mode, or none")  # fmt: skip
    elif constants and not run.constants:
        raise ValueError("constants asks for bias nodes the run given has none of: pass a "
                         "run_prompt(..., constants=True), or none")  # fmt: skip
    model_probs = model_next(replacement, run)  # sparse mode: the model's own, once
    logits = resolve_targets(replacement, run, targets, max_logits, logit_probability,
                             model_probs)  # 2)  # fmt: skip
    edges, bias, value = build_edges(replacement, run, logits)  # 3) closed-form edges
    graph = assemble_graph(replacement, run, logits, edges, bias, value, tokenizer, prompt,
                           model_probs)  # 4)  # fmt: skip
    given = [find_node(graph, t) for t in targets or [] if isinstance(t, NodeTarget)]
    for i in given:
        graph.target_weight[i] = 1.0
    if given:  # their order, which node order is not (a reviewer's two printed reversed)
        graph.node_targets = given
    if targets is not None:
        graph.target_weight /= graph.target_weight.sum()
    graph.settings["closure_error"] = _closure(edges.row_sum, edges.row_abs, bias, value)
    if not len(open_rows(graph, edges.row_sum.numpy(), edges.row_abs.numpy())):
        remember_closed(graph)  # its rows were summed as they were built: no second pass
    return graph  # no timings in it: the same prompt gives the same bytes


def repeated_target(targets: list[Target]) -> Target | None:
    """The first target that ``targets`` names a second time, or None. A difference and its
    reverse are one target (each is minus the other: traced twice with opposite signs)."""

    def same(t: Target) -> Target:
        if isinstance(t, LogitDiffTarget) and t.positive > t.negative:
            return LogitDiffTarget(t.negative, t.positive)
        return t

    seen = [same(t) for t in targets]
    return next((t for i, t in enumerate(targets) if seen[i] in seen[:i]), None)


@torch.no_grad()
def model_next(replacement: ReplacementModel, run: PromptRun) -> Tensor | None:
    """In sparse mode the model's own next-token probabilities at the run's last position
    (the run's logits are the replacement's, which can rank another token first); None in
    local mode, whose error terms make the two one."""
    if run.mode != "sparse":
        return None
    return replacement.model(run.tokens[None])[0, -1].softmax(-1)


def resolve_targets(
    replacement: ReplacementModel,
    run: PromptRun,
    targets: list[Target] | None,
    max_logits: int = 10,
    logit_probability: float = 0.95,
    model_probs: Tensor | None = None,
) -> list[_Logit]:
    """The logit targets: the top tokens by probability (``targets`` None), or the given
    logit tokens and differences; each reads a demeaned unembedding column (a difference
    needs no demeaning). ``model_probs``: ``model_next``'s, when the caller has them."""
    rw, d_vocab = replacement.read_write(), replacement.cfg.d_vocab
    last_logits = run.logits[-1]
    probs = last_logits.softmax(-1)
    demeaned = last_logits - last_logits.mean()
    if model_probs is None:  # sparse mode: the model's own, beside ours
        model_probs = model_next(replacement, run)

    def record(a: int, b: int | None) -> LogitRecord:
        theirs = lambda v: None if model_probs is None or v is None else float(model_probs[v])  # noqa: E731
        return LogitRecord(a, b, float(probs[a]), theirs(a),
                           None if b is None else float(probs[b]), theirs(b))  # fmt: skip

    def logit(v: int, weight: float) -> _Logit:
        return _Logit(record(v, None), rw.unembed[v], rw.unembed_bias[v], demeaned[v], weight)

    if targets is None:
        order = probs.argsort(descending=True)
        k = min(int((probs[order].cumsum(0) < logit_probability).sum()) + 1, max_logits)
        return [logit(v, float(probs[v])) for v in order[:k].tolist()]
    repeated = repeated_target(targets)
    if repeated is not None:  # two nodes with one id, and the target weighted twice
        reverse = " (a difference and its reverse are one target)" * isinstance(
            repeated, LogitDiffTarget)  # fmt: skip
        raise ValueError(f"{repeated} is named twice{reverse}: name each target once")
    logits = []
    for t in targets:
        if isinstance(t, LogitTarget):
            logits.append(logit(_check_token(t.token, d_vocab), 1.0))
        elif isinstance(t, LogitDiffTarget):
            a, b = _check_token(t.positive, d_vocab), _check_token(t.negative, d_vocab)
            if a == b:
                raise ValueError(f"a logit difference of token {a} with itself is zero: name "
                                 "two different tokens")  # fmt: skip
            logits.append(
                _Logit(
                    record(a, b),
                    rw.unembed[a] - rw.unembed[b],
                    rw.unembed_bias[a] - rw.unembed_bias[b],
                    last_logits[a] - last_logits[b],
                    1.0,
                )
            )
        elif isinstance(t, NodeTarget):
            _check_node(run, t)
        else:
            raise ValueError(f"unknown target {t!r}: a LogitTarget, LogitDiffTarget or NodeTarget")
    return logits


def _check_node(run: PromptRun, target: NodeTarget) -> None:
    """A ValueError naming what is wrong with a node target (kind, layer, position, or a unit
    that is not active there), before any edge is built."""
    kind = target_kind(target.kind)
    odd = next((f for f in ("layer", "pos", "index") if not is_integer(getattr(target, f))), None)
    if odd is not None:
        raise ValueError(f"a node target's {odd} must be an integer, got "
                         f"{getattr(target, odd)!r}")  # fmt: skip
    if not 0 <= target.layer < run.n_layers:
        raise ValueError(f"layer {target.layer} does not exist: the model has layers "
                         f"0..{run.n_layers - 1}")  # fmt: skip
    if not 0 <= target.pos < len(run.tokens):
        raise ValueError(f"position {target.pos} is outside the prompt (positions 0.."
                         f"{len(run.tokens) - 1}, BOS included)")  # fmt: skip
    pre = run.lorsa_pre if kind is Kind.LORSA else run.tc_pre
    n_units = pre[target.layer].shape[-1]
    if not 0 <= target.index < n_units:
        raise ValueError(f"{target.kind} {target.index} does not exist: layer {target.layer} "
                         f"has {target.kind} units 0..{n_units - 1}")  # fmt: skip
    if not _matching(run, target).any():
        raise ValueError(f"{target.kind} {target.index} of layer {target.layer} is not active "
                         f"at position {target.pos} of this prompt")  # fmt: skip


def build_edges(
    replacement: ReplacementModel, run: PromptRun, logits: list[_Logit]
) -> tuple[_EdgeRows, Tensor, Tensor]:
    """Every edge into every target (heads, features, logits) in closed form, with each
    target's bias term and pre-activation; rows are the sources, then the logits."""
    rw, L, n = replacement.read_write(), run.n_layers, len(run.tokens)
    n_src = len(run.kind)
    N = n_src + len(logits)
    edges = _EdgeRows(edge_counts(run, len(logits)))
    bias = torch.zeros(N)
    value = torch.full((N,), float("nan"))
    for l in range(L):
        heads = run.select(Kind.LORSA, lorsa_stage(l))
        bias[heads] = _lorsa_edges(edges, run, replacement, l, heads)
        value[heads] = run.lorsa_pre[l][run.pos[heads], run.index[heads]]
        stage = transcoder_stage(l)
        feats = run.select(Kind.TRANSCODER, stage)
        reading = rw.tc_read[l][run.index[feats]] / run.sigma2[l, run.pos[feats], None]
        _same_position_edges(edges, feats, reading, run, run.stage_start(stage))
        constant = (reading * run.resid_bias[stage, run.pos[feats]]).sum(-1)
        bias[feats] = constant + rw.tc_bias[l][run.index[feats]]
        value[feats] = run.tc_pre[l][run.pos[feats], run.index[feats]]
    # Logits at the last position read every source there.
    top = logit_stage(L)
    last = run.sources_at(n - 1, top)
    for j, logit in enumerate(logits):
        g = logit.direction / run.sigma_final[-1]
        edges.add(torch.tensor([n_src + j]), last, run.write[last] @ g)
        bias[n_src + j] = run.resid_bias[top, n - 1] @ g + logit.bias
        value[n_src + j] = logit.value
    return edges, bias, value


def assemble_graph(
    replacement: ReplacementModel,
    run: PromptRun,
    logits: list[_Logit],
    edges: _EdgeRows,
    bias: Tensor,
    value: Tensor,
    tokenizer=None,
    prompt: str = "",
    model_probs: Tensor | None = None,
) -> Graph:
    """The ``Graph``: the run's sources then the logits, with each node's structured facts
    (the key a head reads, the tokens a head or feature promotes, the logit records).
    ``model_probs``: ``model_next``'s, when the caller has them."""
    n_src, n_logit, n = len(run.kind), len(logits), len(run.tokens)
    N = n_src + n_logit
    kind = torch.cat([run.kind, torch.full((n_logit,), Kind.LOGIT)])
    stage = torch.cat([run.stage, torch.full((n_logit,), logit_stage(run.n_layers))])
    pos = torch.cat([run.pos, torch.full((n_logit,), n - 1)])
    index = torch.cat([run.index, torch.tensor([lg.record.token for lg in logits])]).long()
    target_weight = torch.zeros(N)
    target_weight[n_src:] = torch.tensor([lg.weight for lg in logits])
    attends, attention, key_share = _read_keys(run, replacement, N)
    promotes = promoted_tokens(replacement.read_write(), kind, stage, index)
    tok = _token_string(tokenizer)
    referenced = set(run.tokens.tolist()) | set(promotes[promotes >= 0].tolist())
    referenced |= {lg.record.token for lg in logits}
    referenced |= {lg.record.negative for lg in logits if lg.record.negative is not None}
    # the model's top next tokens: a summary's runner-up is one (it read '<453>' for ' wind')
    referenced |= set(run.logits[-1].topk(min(TOP_TOKENS, run.logits.shape[-1])).indices.tolist())
    if model_probs is None:
        model_probs = model_next(replacement, run)
    if model_probs is not None:  # the model's own top token (``Graph.model_top``)
        referenced.add(int(model_probs.argmax()))
    return Graph(
        prompt=prompt,
        tokens=run.tokens.tolist(),
        token_strings=[tok(t) for t in run.tokens.tolist()],
        n_layers=run.n_layers,
        kind=kind,
        stage=stage,
        pos=pos,
        index=index,
        activation=torch.cat([run.activation, value[n_src:]]),
        value=value,
        bias=bias,
        target_weight=target_weight,
        edges=edges.csr(),
        attends=attends,
        attention=attention,
        key_share=key_share,
        promotes=promotes,
        logit_targets=[lg.record for lg in logits],
        token_text={t: tok(t) for t in sorted(referenced)} if tokenizer is not None else {},
        mode=run.mode,
        group_size=replacement.group_size,
        model=_model_info(replacement, run, [lg.record for lg in logits], model_probs),
    )


def _model_info(
    replacement: ReplacementModel,
    run: PromptRun,
    targets: list[LogitRecord],
    model_probs: Tensor | None,
) -> dict:
    """The graph's ``model`` entry: the model's name, the hash of the weights it was traced
    with (``weights_sha256``, any set), the saved replacement set's identity
    (``replacement_sha256``) and, when the model records the tokens it never saw in training,
    the prompt positions holding one (``untrained_positions``: their embeddings are untrained,
    so the graph shows no learned mechanism there) and the logit targets' tokens that are one
    (``untrained_targets``: never an input, so never a next token either; a reviewer traced
    ``'#'`` at p 3e-8 with nothing said); in sparse mode the model's own most likely next
    token and its probability (``model_top``, from ``model_probs``: ``Graph.model_top``)."""
    tokens = run.tokens.tolist()
    info: dict = {"name": replacement.model_name or "unnamed",
                  "weights_sha256": replacement.weights_sha256()}  # fmt: skip
    if replacement.content_sha256 is not None:  # a saved set: which one (``intervene`` checks)
        info["replacement_sha256"] = replacement.content_sha256
    untrained = replacement.model.untrained_tokens
    if untrained is not None:
        info["untrained_positions"] = [p for p, t in enumerate(tokens) if t in untrained]
        named = {x for r in targets for x in r.tokens}
        info["untrained_targets"] = sorted(named & set(untrained))
    if model_probs is not None:
        top = int(model_probs.argmax())
        info["model_top"] = [top, float(model_probs[top])]
    return info


def _read_keys(
    run: PromptRun, replacement: ReplacementModel, n_nodes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per node: the key position a Lorsa head reads, its attention weight there, and the share
    of its activation that key's term is (``Graph.key_share``; NaN elsewhere).

    A rank-1 head's activation at query q is exactly one term per key, its z-pattern
    ``A[q, k] (x_k . w_v + b_V)``; the key it reads is the one whose term is largest in the
    activation's sign: where what the head writes comes from. The attention's own argmax
    is not that key for a head that parks most of its attention on a sink: an induction head
    with 0.6 of its attention on BOS and 0.2 on the earlier copy of a token brings that token,
    and was named and grouped as reading BOS, with the QK reason of the sink. A head whose
    terms are spread over many keys reads its largest all the same, and its share says how
    little of it that is (a reviewer's head with a flat pattern over 21 keys was named for the
    key bringing 12% of its activation)."""
    attends = torch.full((n_nodes,), -1, dtype=torch.long)
    attention = torch.full((n_nodes,), float("nan"))
    share = torch.full((n_nodes,), float("nan"))
    for l, lorsa in enumerate(replacement.lorsas):
        heads = run.select(Kind.LORSA, lorsa_stage(l))
        index = run.index[heads]
        pattern = run.patterns[l][index // lorsa.cfg.group_size, run.pos[heads]]  # head key
        value = lorsa.values(run.lorsa_in[l])[:, index]  # key head
        z = pattern * value.T
        total = z.sum(-1)  # the activation: a ReLU's, positive at every node
        key = (z * total[:, None].sign()).argmax(-1)
        attends[heads], attention[heads] = key, pattern.gather(1, key[:, None])[:, 0]
        share[heads] = z.gather(1, key[:, None])[:, 0] / total
    return attends, attention, share


def _by_sublayer(kind: Tensor, stage: Tensor):
    """For each dictionary sublayer that ``kind``/``stage`` (per node or unit) hold a head or
    feature of: (whether it is a Lorsa layer, its block, the mask of its rows)."""
    for dictionary in (Kind.LORSA, Kind.TRANSCODER):
        for s in torch.unique(stage[kind == dictionary]).tolist():
            yield dictionary == Kind.LORSA, block_of(s), (kind == dictionary) & (stage == s)


def promoted_tokens(rw: ReadWrite, kind: Tensor, stage: Tensor, index: Tensor) -> Tensor:
    """Per node or unit (``kind``, ``stage``, ``index``): the ``N_PROMOTED`` tokens a head's or
    feature's decoder raises most through the demeaned unembedding
    (``ReadWrite.direct_logits``); -1 for other kinds."""
    promotes = torch.full((len(kind), N_PROMOTED), -1, dtype=torch.long)
    for attention, layer, rows in _by_sublayer(kind, stage):
        units, which = torch.unique(index[rows], return_inverse=True)
        effect = rw.direct_logits(attention, layer, units)
        promotes[rows] = effect.topk(N_PROMOTED, dim=-1).indices[which]
    return promotes


def group_promoted_tokens(rw: ReadWrite, graph: Graph, members: list[int]) -> list[int]:
    """The ``N_PROMOTED`` tokens a group of heads and features (node indices of ``graph``)
    raises most through the direct path together: each member's direct logit effect
    (``ReadWrite.direct_logits``) times its activation, summed. A group's own writes, not its
    strongest member's decoder (a reviewer's group of 32 features "promotes 'V'", its fifth
    token). Empty for a group of neither kind."""
    m = torch.as_tensor(members, dtype=torch.long)
    effect = None
    for attention, layer, rows in _by_sublayer(graph.kind[m], graph.stage[m]):
        these = m[rows]
        per_unit = rw.direct_logits(attention, layer, graph.index[these])
        part = graph.activation[these].float() @ per_unit
        effect = part if effect is None else effect + part
    return [] if effect is None else effect.topk(min(N_PROMOTED, len(effect))).indices.tolist()


def _matching(nodes: PromptRun | Graph, target: NodeTarget) -> Tensor:
    """Which of the run's sources (or the graph's nodes) is the node target: a bool mask."""
    kind = Kind.parse(target.kind)
    return (
        (nodes.kind == kind)
        & (nodes.stage == stage_of(kind, target.layer))
        & (nodes.pos == target.pos)
        & (nodes.index == target.index)
    )


def find_node(graph: Graph, target: NodeTarget) -> int:
    """The graph index of a node target (a head or feature by its fields); a ValueError in
    one line where the graph holds no such node (a pruned graph keeps few: an IndexError
    from torch before)."""
    if not isinstance(target, NodeTarget):
        raise TypeError(f"target must be a NodeTarget, got a {type(target).__name__}")
    target_kind(target.kind)
    found = _matching(graph, target).nonzero()
    if not len(found):
        raise ValueError(f"no {target.kind} {target.index} of layer {target.layer} at "
                         f"position {target.pos} in this graph (inactive there, or pruned "
                         "away)")  # fmt: skip
    return int(found[0])


def closure_error(graph: Graph) -> dict[str, float]:
    """How far each target's incoming edges + bias are from its pre-activation, read from
    the graph's edge matrix (``attribute`` records the same from the blocks it built)."""
    row_sum, row_abs = map(torch.from_numpy, row_sums(graph.edges))  # no |A| copy
    return _closure(row_sum, row_abs, graph.bias.double(), graph.value.double())


def _closure(row_sum: Tensor, row_abs: Tensor, bias: Tensor, value: Tensor) -> dict[str, float]:
    """The largest gap over targets (value not NaN), absolute, relative to the sum of the
    terms' magnitudes (``circuits.prune.closure_gaps``, the measure pruning gates on) and
    relative to ``|value|``."""
    t = ~torch.isnan(value)
    if not t.any():
        return {"max_abs": 0.0, "max_rel_terms": 0.0, "max_rel_value": 0.0}
    gap, relative = closure_gaps(row_sum[t], row_abs[t], bias[t], value[t])
    return {
        "max_abs": float(gap.max()),
        "max_rel_terms": float(relative.max()),
        "max_rel_value": float((gap / np.maximum(np.abs(value[t].double().numpy()), 1e-12)).max()),
    }
