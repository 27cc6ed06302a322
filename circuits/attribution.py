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
``b_U``) make the target's ``bias`` term. Edges are formed in closed form with batched matrix
products, never by backward passes (autograd is the tests' oracle, ``circuits.interventions``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Float, Int
from torch import Tensor

from replacement.model import MODES, ReplacementModel

from .graph import KINDS, Graph, node_id

EMBEDDING, LORSA, TRANSCODER, ERROR, LOGIT = range(len(KINDS))
LORSA_ROW_CHUNK = 512  # Lorsa target rows per block: bounds the (rows x sources) temporaries


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
    """A logit target as the graph needs it: what it reads and how it is shown."""

    index: int  # the token (the positive one of a difference)
    name: str  # the feature part of its node id: "v" or "a-b"
    direction: Float[Tensor, " d_model"]
    bias: Tensor
    value: Tensor
    weight: float
    label: str


def _check_token(token: int, d_vocab: int) -> int:
    if not 0 <= int(token) < d_vocab:
        raise ValueError(f"target token id {token} is outside the vocabulary (0..{d_vocab - 1})")
    return int(token)


# ----------------------------------------------------------------- the clean run
@dataclass
class PromptRun:
    """One clean forward pass and the source nodes it activates, in graph order.

    Sources are sorted by stage, then position, then index (``circuits.graph``); ``write[s]`` is
    what source s adds to the residual stream at ``pos[s]``. ``resid_bias[S]`` is the constant
    part of the residual stream that stage S reads (the decoder biases of all lower stages).
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
    resid_bias: Float[Tensor, "stage d_model"]

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


@torch.no_grad()
def run_prompt(
    replacement: ReplacementModel, tokens: Int[Tensor, " pos"], mode: str = "local"
) -> PromptRun:
    """Run ``replacement`` on one prompt, caching what the linear graph is made of."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    for l, tc in enumerate(replacement.transcoders):
        if tc.W_skip is not None:
            raise ValueError(
                f"transcoder {l} has a linear skip; attribution through skips is not supported"
            )
    if len({lorsa.cfg.group_size for lorsa in replacement.lorsas}) > 1:
        raise ValueError("attribution needs the same Lorsa group size in every layer")
    tokens = torch.as_tensor(tokens).reshape(-1)
    L, n = replacement.cfg.n_layers, len(tokens)
    names = ("hook_scale", "hook_pattern", "hook_pre", "hook_z", "hook_acts", "hook_error")
    names += ("lorsa.hook_in",)
    logits, cache = replacement.run_with_cache(
        tokens[None], mode=mode, names_filter=lambda name: name.endswith(names)
    )
    c = {k: v[0] for k, v in cache.items()}
    m = replacement.model
    blocks = [f"blocks.{l}" for l in range(L)]

    # Sources in graph order: stage, then position, then index.
    kinds, stages, poss, indices, acts, writes = [], [], [], [], [], []

    def add(kind, stage, pos, index, act, write):
        kinds.append(torch.full_like(pos, kind))
        stages.append(torch.full_like(pos, stage))
        poss.append(pos), indices.append(index), acts.append(act), writes.append(write)

    arange = torch.arange(n)
    add(EMBEDDING, 0, arange, tokens.clone(), torch.ones(n), m.W_E[tokens] + m.W_pos[:n])
    for l, block in enumerate(blocks):
        for stage, act_name, decoder, err_name in (
            (2 * l + 1, "lorsa.hook_z", replacement.lorsas[l].W_O, "lorsa.hook_error"),
            (2 * l + 2, "transcoder.hook_acts", replacement.transcoders[l].W_dec, None),
        ):
            err_name = err_name or "transcoder.hook_error"
            a = c[f"{block}.{act_name}"]
            pos, idx = a.nonzero(as_tuple=True)
            val = a[pos, idx]
            add(
                LORSA if stage % 2 else TRANSCODER,
                stage,
                pos,
                idx,
                val,
                val[:, None] * decoder[idx],
            )
            if mode == "local":
                add(
                    ERROR,
                    stage,
                    arange,
                    torch.full_like(arange, -1),
                    torch.ones(n),
                    c[f"{block}.{err_name}"],
                )

    biases = [torch.zeros(m.cfg.d_model)]
    for lorsa, tc in zip(replacement.lorsas, replacement.transcoders, strict=True):
        biases += [biases[-1] + lorsa.b_D, biases[-1] + lorsa.b_D + tc.b_dec]
    return PromptRun(
        tokens=tokens,
        mode=mode,
        sigma1=torch.stack([c[f"{b}.ln1.hook_scale"][:, 0] for b in blocks]),
        sigma2=torch.stack([c[f"{b}.ln2.hook_scale"][:, 0] for b in blocks]),
        sigma_final=c["ln_final.hook_scale"][:, 0],
        patterns=[c[f"{b}.lorsa.hook_pattern"] for b in blocks],
        lorsa_in=[c[f"{b}.lorsa.hook_in"] for b in blocks],
        lorsa_pre=[c[f"{b}.lorsa.hook_pre"] for b in blocks],
        tc_pre=[c[f"{b}.transcoder.hook_pre"] for b in blocks],
        logits=logits[0],
        kind=torch.cat(kinds),
        stage=torch.cat(stages),
        pos=torch.cat(poss),
        index=torch.cat(indices),
        activation=torch.cat(acts),
        write=torch.cat(writes),
        resid_bias=torch.stack([biases[0]] + [biases[(s - 1)] for s in range(1, 2 * L + 2)]),
    )


def source_ids(run: PromptRun) -> list[str]:
    """The node ids of the run's sources (``circuits.graph.node_id``)."""
    return [
        node_id(KINDS[k], s, p, i, int(run.tokens[p]) if k == EMBEDDING else None)
        for k, s, p, i in zip(
            run.kind.tolist(), run.stage.tolist(), run.pos.tolist(), run.index.tolist(), strict=True
        )
    ]


def center(x: Tensor) -> Tensor:
    """The LayerNorm centring ``P x`` along the last axis (``P`` is symmetric: it moves onto
    whichever side of a dot product is cheaper)."""
    return x - x.mean(-1, keepdim=True)


def unembedding(model) -> Float[Tensor, "vocab d_model"]:
    """``W_U`` demeaned over the vocabulary (a logit minus the mean logit), centred over
    d_model (what ``ln_final`` lets through): one reading vector per token."""
    return center((model.W_U - model.W_U.mean(1, keepdim=True)).T)


# ----------------------------------------------------------------- edges
class _EdgeRows:
    """The edge matrix assembled as CSR, block by block, in increasing row order (each block
    gives its rows, how many entries each has, their columns in increasing order and values).
    Also sums each row's terms and their magnitudes, for the closure check."""

    def __init__(self, n: int):
        self.n, self.counts = n, torch.zeros(n, dtype=torch.long)
        self.cols: list[Tensor] = []
        self.vals: list[Tensor] = []
        self.row_sum, self.row_abs = torch.zeros(n), torch.zeros(n)

    def add(
        self, rows: Tensor, counts: Tensor, cols: Tensor, vals: Tensor, dense: Tensor | None = None
    ) -> None:
        """``dense`` (optional): the block as a (rows, anything) matrix whose entries off the
        listed columns are zero, which sums rows faster than the flat values."""
        self.counts[rows] = counts
        self.cols.append(cols.int()), self.vals.append(vals.float())
        if dense is not None:
            self.row_sum[rows], self.row_abs[rows] = dense.sum(1), dense.abs().sum(1)
        else:
            row_of = torch.repeat_interleave(rows, counts)
            self.row_sum.index_add_(0, row_of, vals)
            self.row_abs.index_add_(0, row_of, vals.abs())

    def csr(self) -> sp.csr_array:
        nnz = int(self.counts.sum())
        indptr = np.zeros(self.n + 1, dtype=np.int32 if nnz < 2**31 else np.int64)
        np.cumsum(self.counts.numpy(), out=indptr[1:])
        cols, vals = torch.cat(self.cols).numpy(), torch.cat(self.vals).numpy()
        return sp.csr_array((vals, cols, indptr), shape=(self.n, self.n), copy=False)


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
    counts = torch.bincount(t_idx[p, i], minlength=len(rows))
    edges.add(rows, counts, s_idx[p, j], prod[p, i, j])


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
    lorsa = replacement.lorsas[layer]
    stage = 2 * layer + 1
    n_src = run.stage_start(stage)
    heads, q = run.index[rows], run.pos[rows]
    qk_head = heads // lorsa.cfg.group_size
    unique, which = torch.unique(heads, return_inverse=True)
    w_v = center(lorsa.W_V[unique])  # u d
    s_pos = run.pos[:n_src]
    inv_sigma = 1 / run.sigma1[layer]
    values = ((run.write[:n_src] @ w_v.T) * inv_sigma[s_pos, None]).T.contiguous()  # u src
    A = run.patterns[layer]
    bias = (run.resid_bias[stage] @ w_v.T)[which] * (A[qk_head, q] @ inv_sigma) + lorsa.b_V[heads]
    # Sources are sorted by stage, then position: the keys a query q sees are not one range,
    # so each query position's columns are listed once.
    causal_cols = [(s_pos <= k).nonzero().squeeze(1).int() for k in range(len(run.tokens))]
    n_cols = torch.tensor([len(c) for c in causal_cols])
    for start in range(0, len(rows), LORSA_ROW_CHUNK):
        sl = slice(start, start + LORSA_ROW_CHUNK)
        block = A[qk_head[sl], q[sl]][:, s_pos] * values[which[sl]]  # rows src
        mask = s_pos[None, :] <= q[sl, None]
        cols = torch.cat([causal_cols[k] for k in q[sl].tolist()])
        edges.add(rows[sl], n_cols[q[sl]], cols, block[mask], dense=block)  # A = 0 above q
    return bias


def _node_labels(run, replacement, tokenizer, kind, stage, pos, index):
    """One readable line per node: token, head with its QK group and strongest key, feature
    with the tokens its decoder promotes most (through the demeaned unembedding)."""
    tok = _token_string(tokenizer)
    toks = run.tokens.tolist()
    m = replacement.model
    W_U = unembedding(m).T
    top_out: dict[tuple[int, int], str] = {}
    for l, tc in enumerate(replacement.transcoders):
        feats = index[(kind == TRANSCODER) & (stage == 2 * l + 2)].unique()
        if len(feats):
            top = (center(tc.W_dec[feats]) @ W_U).topk(3, dim=-1).indices
            for f, t in zip(feats.tolist(), top.tolist(), strict=True):
                top_out[(l, f)] = " ".join(repr(tok(i)) for i in t)
    group_size = replacement.lorsas[0].cfg.group_size
    labels = []
    for k, s, p, i in zip(kind.tolist(), stage.tolist(), pos.tolist(), index.tolist(), strict=True):
        l = (s - 1) // 2
        if k == EMBEDDING:
            labels.append(f"{tok(toks[p])!r}@{p}")
        elif k == LORSA:
            h = i // group_size
            key = int(run.patterns[l][h, p].argmax())
            labels.append(f"L{l} head {i} (QK {h}) @{p} attends {tok(toks[key])!r}@{key}")
        elif k == TRANSCODER:
            labels.append(f"L{l} feature {i} @{p} -> {top_out[(l, i)]}")
        elif k == ERROR:
            labels.append(f"L{l} {'attn' if s % 2 else 'mlp'} error @{p}")
        else:
            labels.append("")  # logits are labelled where they are made
    return labels


def _token_string(tokenizer):
    if tokenizer is None:
        return lambda i: f"<{i}>"
    return lambda i: tokenizer.decode([i], skip_special_tokens=False)


# ----------------------------------------------------------------- the graph
@torch.no_grad()
def attribute(
    replacement: ReplacementModel,
    tokens: Int[Tensor, " pos"] | list[int],
    *,
    mode: str = "local",
    targets: list[Target] | None = None,
    max_logits: int = 10,
    logit_probability: float = 0.95,
    tokenizer=None,
    prompt: str = "",
    run: PromptRun | None = None,
) -> Graph:
    """The full (unpruned) attribution graph of one prompt.

    ``targets``: default the top logits at the last position, up to ``max_logits`` of them and
    a cumulative probability of ``logit_probability``, each weighted by its probability;
    otherwise the given logit tokens, logit differences and nodes, weighted equally.
    ``tokenizer`` (optional) gives readable labels; ``run`` (optional) is this prompt's
    ``run_prompt`` in this mode, when the caller has it already.
    """
    t0 = time.perf_counter()
    replacement.eval()
    run = run or run_prompt(replacement, tokens, mode)
    m, L, n = replacement.model, run.n_layers, len(run.tokens)
    n_src = len(run.kind)

    # Logit targets: demeaned unembedding columns (a difference needs no demeaning).
    last_logits = run.logits[-1]
    probs = last_logits.softmax(-1)
    W_U, b_U = unembedding(m), m.b_U - m.b_U.mean()
    demeaned = last_logits - last_logits.mean()
    tok = _token_string(tokenizer)
    logits: list[_Logit] = []
    if targets is None:
        order = probs.argsort(descending=True)
        k = min(int((probs[order].cumsum(0) < logit_probability).sum()) + 1, max_logits)
        for v in order[:k].tolist():
            label = f"logit {tok(v)!r} p={probs[v]:.3f}"
            logits.append(_Logit(v, f"{v}", W_U[v], b_U[v], demeaned[v], float(probs[v]), label))
    for t in targets or []:
        if isinstance(t, LogitTarget):
            v = _check_token(t.token, m.cfg.d_vocab)
            label = f"logit {tok(v)!r} p={probs[v]:.3f}"
            logits.append(_Logit(v, f"{v}", W_U[v], b_U[v], demeaned[v], 1.0, label))
        elif isinstance(t, LogitDiffTarget):
            a, b = _check_token(t.positive, m.cfg.d_vocab), _check_token(t.negative, m.cfg.d_vocab)
            diff = last_logits[a] - last_logits[b]
            label = f"logit {tok(a)!r} - {tok(b)!r} = {diff:.3f}"
            logits.append(_Logit(a, f"{a}-{b}", W_U[a] - W_U[b], b_U[a] - b_U[b], diff, 1.0, label))
    logit_stage = 2 * L + 1
    n_logit = len(logits)
    N = n_src + n_logit

    edges = _EdgeRows(N)
    bias = torch.zeros(N)
    value = torch.full((N,), float("nan"))
    for l in range(L):
        # Lorsa heads of layer l.
        lo, hi = run.stage_start(2 * l + 1), run.stage_start(2 * l + 2)
        heads = torch.arange(lo, hi)[run.kind[lo:hi] == LORSA]
        bias[heads] = _lorsa_edges(edges, run, replacement, l, heads)
        value[heads] = run.lorsa_pre[l][run.pos[heads], run.index[heads]]
        # Transcoder features of layer l.
        tc = replacement.transcoders[l]
        lo, hi = run.stage_start(2 * l + 2), run.stage_start(2 * l + 3)
        feats = torch.arange(lo, hi)[run.kind[lo:hi] == TRANSCODER]
        enc = center(tc.W_enc[:, run.index[feats]].T)  # feat d
        reading = enc / run.sigma2[l, run.pos[feats], None]
        _same_position_edges(edges, feats, reading, run, lo)
        bias[feats] = reading @ run.resid_bias[2 * l + 2] + tc.b_enc[run.index[feats]]
        value[feats] = run.tc_pre[l][run.pos[feats], run.index[feats]]
    # Logits at the last position read every source there.
    last = run.sources_at(n - 1, logit_stage)
    for j, logit in enumerate(logits):
        g = logit.direction / run.sigma_final[-1]
        edges.add(torch.tensor([n_src + j]), torch.tensor([len(last)]), last, run.write[last] @ g)
        bias[n_src + j] = run.resid_bias[logit_stage] @ g + logit.bias
        value[n_src + j] = logit.value

    kind = torch.cat([run.kind, torch.full((n_logit,), LOGIT)])
    stage = torch.cat([run.stage, torch.full((n_logit,), logit_stage)])
    pos = torch.cat([run.pos, torch.full((n_logit,), n - 1)])
    index = torch.cat([run.index, torch.tensor([lg.index for lg in logits], dtype=torch.long)])
    activation = torch.cat([run.activation, value[n_src:]])
    target_weight = torch.zeros(N)
    target_weight[n_src:] = torch.tensor([lg.weight for lg in logits])
    labels = _node_labels(run, replacement, tokenizer, run.kind, run.stage, run.pos, run.index)
    labels += [lg.label for lg in logits]
    ids = source_ids(run)
    ids += [f"{logit_stage}_{lg.name}_{n - 1}" for lg in logits]
    graph = Graph(
        prompt=prompt,
        tokens=run.tokens.tolist(),
        token_strings=[tok(t) for t in run.tokens.tolist()],
        n_layers=L,
        kind=kind,
        stage=stage,
        pos=pos,
        index=index,
        activation=activation,
        value=value,
        bias=bias,
        target_weight=target_weight,
        edges=edges.csr(),
        labels=labels,
        ids=ids,
        model={"name": replacement.model_name or "unnamed"},
        settings={"mode": mode, "lorsa_group_size": replacement.lorsas[0].cfg.group_size},
    )
    for t in targets or []:
        if isinstance(t, NodeTarget):
            graph.target_weight[find_node(graph, t)] = 1.0
    if targets is not None:
        if not targets:
            raise ValueError("targets is empty: name at least one, or pass None for top logits")
        graph.target_weight /= graph.target_weight.sum()
    graph.settings["closure_error"] = _closure(edges.row_sum, edges.row_abs, bias, value)
    graph.settings["seconds"] = round(time.perf_counter() - t0, 4)
    return graph


def find_node(graph: Graph, target: NodeTarget) -> int:
    """The graph index of an active head or feature, or a ValueError saying it is not there."""
    if target.kind not in ("lorsa", "transcoder"):
        raise ValueError(f"node targets are lorsa or transcoder nodes, not {target.kind!r}")
    stage = 2 * target.layer + (1 if target.kind == "lorsa" else 2)
    match = (
        (graph.kind == KINDS.index(target.kind))
        & (graph.stage == stage)
        & (graph.pos == target.pos)
        & (graph.index == target.index)
    ).nonzero()
    if not len(match):
        raise ValueError(
            f"{target.kind} {target.index} of layer {target.layer} is not active at position "
            f"{target.pos} of this prompt"
        )
    return int(match[0])


def closure_error(graph: Graph) -> dict[str, float]:
    """How far each target's incoming edges + bias are from its pre-activation, read from
    the graph's edge matrix (``attribute`` records the same from the blocks it built)."""
    row_sum = torch.from_numpy(graph.edges.sum(axis=1))
    row_abs = torch.from_numpy(abs(graph.edges).sum(axis=1))
    return _closure(row_sum, row_abs, graph.bias, graph.value)


def _closure(row_sum: Tensor, row_abs: Tensor, bias: Tensor, value: Tensor) -> dict[str, float]:
    """The largest gap, absolute and relative to the sum of the terms' magnitudes (the scale
    float rounding works at) and to ``|value|``, over targets (value not NaN)."""
    t = ~torch.isnan(value)
    gap = (row_sum[t] + bias[t] - value[t]).abs()
    scale = row_abs[t] + bias[t].abs()
    if not t.any():
        return {"max_abs": 0.0, "max_rel_terms": 0.0, "max_rel_value": 0.0}
    return {
        "max_abs": float(gap.max()),
        "max_rel_terms": float((gap / scale.clamp(min=1e-12)).max()),
        "max_rel_value": float((gap / value[t].abs().clamp(min=1e-12)).max()),
    }
