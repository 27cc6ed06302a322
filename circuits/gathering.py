"""Gathering corpus statistics: one job, summing exact local edges and QK terms between units
over corpus rows, in closed form, in batches, resumably.

What is summed (``Statistics`` holds the result; units are numbered by ``circuits.units``),
separately over the even and the odd rows of the sample (the two *halves*, whose agreement
says whether the sample is large enough):

- **Edges.** Every exact local edge ``s -> t`` (frozen patterns and LayerNorm scales,
  DESIGN.md section 5) summed per unit pair, for every target stage. A head, feature or token
  writes ``a_s d_s`` (activation times a fixed direction; a token's position vector apart), so
  its edges into a target factor into a weights-only term and a co-activation term (a token
  unit is its embedding ``W_E[token]`` alone: the position vector, the same for every token
  at a position, is a constant, as in local graphs, and no unit's):

      head j (QK head h) of block l:  (d_s . P w_v^j) * sum_k a_s(k) / sigma1[k] mass_j[k]
                                      with mass_j[k] = sum over queries q where j fired of A[h,q,k]
      feature f of block l:           (d_s . P W_enc[:, f]) * sum_{p: f fired} a_s(p) / sigma2[p]
      logit v (conditioned, below):   (d_s . u_v) * sum_{p: v is next} a_s(p) / sigma_final[p]

  The co-activation sums are gathered (a sparse product per batch) and multiplied by the
  virtual weights once at the end; tokens (whose LayerNorm scales vary) and errors (whose
  vectors vary) have their edges summed directly.
- **Conditioned logits.** A logit unit's edges are summed over the positions where its token
  is the next token of the row (the last position of a row, with no next token, counts for
  none), and its occurrences are those positions: a logit-rooted graph shows what predicts
  the token where it comes. Its activity is its summed probability there.
- **QK terms.** For a Lorsa QK head h of layer l, the score at query q and key k splits exactly
  into query-node x key-node terms ``u_s(q) . v_t(k) / sqrt(d_qk)`` (``circuits.qk.QKSides``;
  the bias side included: the biases below the layer, the position vector and
  ``b_Q``/``b_K``). The *expected QK attribution* of a unit pair is

      sum over rows, queries q, keys k <= q:  w_h(q) (A[h,q,k] - 1/(q+1)) u_s(q).v_t(k) / sqrt(d_qk)

  over the nodes s of the query unit at q and t of the key unit at k, where ``w_h(q)`` counts
  the OV heads of the group that fired at q, divided by ``sum_q w_h(q)`` (``Statistics``
  divides): per firing of a head of the group, how much the pair raises the scores of the keys
  the head attends to above the scores of an average key. Terms the same at every key (the bias
  x bias term, a query unit against a constant key part) cancel, as they cancel in the softmax;
  all terms of one query sum to ``E_A[score] - mean score >= 0``. Every unit's *marginal* (its
  terms with every partner, bias included) is summed exactly; pairs are summed, in a second pass
  over the rows, among the ``QK_UNITS`` units of each side with the largest |marginal| on the
  whole sample.

Rows are run ``BATCH_ROWS`` at a time (``circuits.batch_run``), with no labels and no per-node
write vectors. The dense sums are saved to a *partial* file beside the statistics file every
``CHECKPOINT_SECONDS`` and resumed from; batches are fixed by row index, so a resumed run sums
the same rows in the same order as an uninterrupted one, bit for bit. The finished file is
compact (``circuits.statistics``) and the partial file is removed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm

from replacement.model import MODES, ReadWrite, ReplacementModel, center
from toy_models.data import stream_rows
from toy_models.records import parse_json

from .batch_run import BatchRun, run_rows
from .concepts import check_row_settings
from .nodes import Kind, block_of, is_attention, logit_stage, lorsa_stage, transcoder_stage
from .statistics import (
    DEFAULT_N_CTX,
    DEFAULT_ROWS,
    SPLIT,
    Statistics,
    compact,
    default_stats_path,
    identity,
)
from .statistics_file import (
    MAX_ROWS,
    STATS_VERSION,
    check_rows,
    check_settings,
    load_partial,
    partial_path,
    partial_plan,
    save_partial,
)
from .units import Units, decoders

BATCH_ROWS = 32  # rows per forward pass (a pass costs about what one row costs)
CHECKPOINT_SECONDS = 60.0  # a partial file is written after a batch this long after the last
QK_UNITS = 64  # query-side and key-side units per QK head whose pairs are summed


# ----------------------------------------------------------------- weights-only tables
@dataclass
class Tables:
    """What gathering needs from the weights, computed once: the read/write vectors, every
    unit's write direction, per block the query and key sides of every unit below it
    (``(P d_u) W_Q^h``, ``(P d_u) W_K^h``), and the token and position embeddings."""

    rw: ReadWrite
    writes: Float[Tensor, "unit d_model"]
    qk_query: list[Float[Tensor, "below qk d_qk"]]
    qk_key: list[Float[Tensor, "below qk d_qk"]]
    W_E: Tensor
    W_pos: Tensor

    @classmethod
    @torch.no_grad()
    def of(cls, replacement: ReplacementModel, units: Units) -> Tables:
        rw = replacement.read_write()
        writes = decoders(rw, units)
        qk_query, qk_key = [], []
        for l, lorsa in enumerate(replacement.lorsas):
            below = writes[: units.start(lorsa_stage(l))]
            qk_query.append(torch.einsum("ud,hde->uhe", below, lorsa.W_Q.detach()))
            qk_key.append(torch.einsum("ud,hde->uhe", below, lorsa.W_K.detach()))
        m = replacement.model
        return cls(rw, writes, qk_query, qk_key, m.W_E.detach(), m.W_pos.detach())


# ----------------------------------------------------------------- the dense sums
@dataclass
class Sums:
    """The dense sums of both halves (leading axis: even rows, odd rows).

    ``edges[S - 1][half]`` (target stage S = 1 .. 2L+1; units below S x units of S): the rows
    of heads and features hold co-activation sums, which ``edge_blocks`` multiplies by their
    virtual weights; the rows of tokens and errors hold edge sums. ``activity``/``count`` per
    unit. ``qk_query[l][half, h, u]`` / ``qk_key``: unit u's QK marginal for QK head h of block
    l; ``qk_scalars[half, g]``: (total, query bias, key bias, firings) of QK head g (blocks in
    order). After the first pass, ``candidates`` (per QK head, the chosen query-side and
    key-side units) and ``qk_pairs[half, g]``, their pair sums (second pass)."""

    units: Units
    n_qk: list[int]
    edges: list[Tensor]
    activity: Tensor
    count: Tensor
    qk_query: list[Tensor]
    qk_key: list[Tensor]
    qk_scalars: Tensor
    meta: dict
    qk_pairs: Tensor | None = None
    candidates: tuple[Tensor, Tensor] | None = None

    @classmethod
    def empty(cls, units: Units, n_qk: list[int], meta: dict) -> Sums:
        L = units.n_layers
        edges = [torch.zeros(2, units.start(s), units.sizes[s]) for s in range(1, 2 * L + 2)]
        qk = [torch.zeros(2, n_qk[l], units.start(lorsa_stage(l))) for l in range(L)]
        return cls(
            units, n_qk, edges, torch.zeros(2, units.total), torch.zeros(2, units.total),
            qk, [q.clone() for q in qk], torch.zeros(2, sum(n_qk), 4), meta,
        )  # fmt: skip

    def edge_blocks(self, stage: int, tables: Tables) -> tuple[Tensor, Tensor]:
        """The summed edges into ``stage`` from every unit below it, per half: heads' and
        features' co-activation sums times their virtual weights, tokens' and errors' sums."""
        below = self.units.start(stage)
        weights = tables.writes[:below] @ _stage_readers(tables.rw, self.units, stage).T
        weights[~self.units.dictionary()[:below]] = 1.0  # rows that hold edge sums already
        return self.edges[stage - 1][0] * weights, self.edges[stage - 1][1] * weights

    # ------------------------------------------------------------- one batch
    @torch.no_grad()
    def add(self, run: BatchRun, half: int, replacement: ReplacementModel, tables: Tables):
        """Add a batch of rows of one half: every sum but the QK pairs."""
        self._add_activity(run, half)
        for l in range(run.n_layers):
            nodes = _SourceNodes.below(run, self.units, lorsa_stage(l), 1 / run.sigma1[l])
            side = _LorsaSide(run, replacement, l)
            self._add_lorsa_edges(run, half, l, nodes, side, tables)
            self._add_qk_marginals(run, half, l, nodes, side, replacement, tables)
            nodes = _SourceNodes.below(run, self.units, transcoder_stage(l), 1 / run.sigma2[l])
            self._add_transcoder_edges(run, half, l, nodes, tables)
        stage = logit_stage(run.n_layers)
        nodes = _SourceNodes.below(run, self.units, stage, 1 / run.sigma_final)
        self._add_logit_edges(run, half, nodes, tables)

    def _add_activity(self, run: BatchRun, half: int) -> None:
        units, act, cnt = self.units, self.activity[half], self.count[half]
        ones = torch.ones(run.tokens.numel())
        act.index_add_(0, run.tokens.flatten(), ones)
        cnt.index_add_(0, run.tokens.flatten(), ones)
        for l in range(run.n_layers):
            for kind, nodes in ((Kind.LORSA, run.heads[l]), (Kind.TRANSCODER, run.features[l])):
                unit = units.unit(kind, l, 0) + nodes.index
                act.index_add_(0, unit, nodes.value)
                cnt.index_add_(0, unit, torch.ones(len(unit)))
            if run.errors is not None:
                for sub in (0, 1):
                    act[units.unit(Kind.ERROR, l, sub)] += run.tokens.numel()
                    cnt[units.unit(Kind.ERROR, l, sub)] += run.tokens.numel()
        nxt = run.tokens[:, 1:].flatten()
        logits = units.start(units.logit_stage) + nxt
        cnt.index_add_(0, logits, torch.ones(len(nxt)))
        act.index_add_(0, logits, run.next_probability[:, :-1].flatten())

    def _add_lorsa_edges(self, run, half, l, nodes, side, tables) -> None:
        block = self.edges[lorsa_stage(l) - 1][half][:, :-1]  # the error unit reads nothing
        mass = side.mass_by_key  # (row pos) head
        block += torch.sparse.mm(nodes.alpha_matrix(len(block)), mass)
        reads = tables.rw.lorsa_read[l]
        emb = run_embeddings(run, tables).flatten(0, 1)
        block.index_add_(0, run.tokens.flatten(), (emb @ reads.T) * nodes.inv[:, None] * mass)
        errors, units = nodes.errors, nodes.error_units
        if errors is not None:  # sum over positions first: (error d) x head, then . w_v
            weighted = (errors * nodes.inv[:, None, None]).flatten(1).T @ mass
            block[units] += (weighted.view(len(units), -1, mass.shape[1]) * reads.T).sum(1)

    def _add_transcoder_edges(self, run, half, l, nodes, tables) -> None:
        stage, width = transcoder_stage(l), self.units.sizes[transcoder_stage(l)]
        block = self.edges[stage - 1][half]
        feats = run.features[l]
        at = feats.row * run.n_pos + feats.pos
        fired = torch.zeros(run.tokens.numel(), width - 1)  # (row pos) feature
        fired[at, feats.index] = 1.0
        block[:, :-1] += torch.sparse.mm(nodes.alpha_matrix(len(block)), fired)
        block = block.view(-1)
        reads = tables.rw.tc_read[l][feats.index]  # feature d
        emb = run_embeddings(run, tables).flatten(0, 1)
        scale = nodes.inv[at]
        block.index_add_(0, run.tokens.flatten()[at] * width + feats.index,
                         (emb[at] * reads).sum(-1) * scale)  # fmt: skip
        if nodes.errors is not None:
            for e, unit in enumerate(nodes.error_units.tolist()):
                block.index_add_(0, unit * width + feats.index,
                                 (nodes.errors[at, e] * reads).sum(-1) * scale)  # fmt: skip

    def _add_logit_edges(self, run, half, nodes, tables) -> None:
        width = self.units.d_vocab
        block = self.edges[logit_stage(run.n_layers) - 1][half].view(-1)
        nxt = torch.nn.functional.pad(run.tokens[:, 1:], (0, 1), value=-1).flatten()
        has = nxt[nodes.flat] >= 0
        block.index_add_(0, nodes.unit[has] * width + nxt[nodes.flat[has]], nodes.alpha[has])
        at = (nxt >= 0).nonzero().squeeze(1)
        reads = tables.rw.unembed[nxt[at]]
        emb = run_embeddings(run, tables).flatten(0, 1)[at]
        scale = nodes.inv[at]
        block.index_add_(0, run.tokens.flatten()[at] * width + nxt[at],
                         (emb * reads).sum(-1) * scale)  # fmt: skip
        if nodes.errors is not None:
            for e, unit in enumerate(nodes.error_units.tolist()):
                block.index_add_(0, unit * width + nxt[at],
                                 (nodes.errors[at, e] * reads).sum(-1) * scale)  # fmt: skip

    def _add_qk_marginals(self, run, half, l, nodes, side, replacement, tables) -> None:
        lorsa = replacement.lorsas[l]
        H, e = side.n_qk, side.d_qk
        first = sum(self.n_qk[:l])
        scalars = self.qk_scalars[half, first : first + H]
        scalars[:, 0] += (side.query_total * side.key_bar).sum((0, 2, 3))
        scalars[:, 3] += side.firings.sum((0, 2))
        both = torch.cat([side.key_bar, side.query_bar], -1)  # row qk pos 2e
        both = both.permute(0, 2, 1, 3).reshape(-1, H * 2 * e)  # (row pos) (qk 2e)
        query, key = self.qk_query[l][half], self.qk_key[l][half]
        summed = torch.sparse.mm(nodes.alpha_matrix(query.shape[1]), both).view(-1, H, 2, e)
        query += (summed[:, :, 0] * tables.qk_query[l]).sum(-1).T
        key += (summed[:, :, 1] * tables.qk_key[l]).sum(-1).T
        # Tokens, errors and the bias side (biases and position vectors), node by node.
        kbar = side.key_bar.permute(0, 2, 1, 3).flatten(0, 1)  # (row pos) qk e
        qbar = side.query_bar.permute(0, 2, 1, 3).flatten(0, 1)
        emb = center(run_embeddings(run, tables).flatten(0, 1)) * nodes.inv[:, None]
        tokens = run.tokens.flatten()
        query.index_add_(1, tokens, _dot(emb, lorsa.W_Q, kbar).T)
        key.index_add_(1, tokens, _dot(emb, lorsa.W_K, qbar).T)
        if nodes.errors is not None:
            for e_, unit in enumerate(nodes.error_units.tolist()):
                err = center(nodes.errors[:, e_]) * nodes.inv[:, None]
                query[:, unit] += _dot(err, lorsa.W_Q, kbar).sum(0)
                key[:, unit] += _dot(err, lorsa.W_K, qbar).sum(0)
        positions = tables.W_pos[: run.n_pos].repeat(len(run.tokens), 1)  # (row pos) d
        bias = center(tables.rw.resid_bias[lorsa_stage(l)] + positions) * nodes.inv[:, None]
        scalars[:, 1] += (_dot(bias, lorsa.W_Q, kbar) + (kbar * lorsa.b_Q).sum(-1)).sum(0)
        scalars[:, 2] += (_dot(bias, lorsa.W_K, qbar) + (qbar * lorsa.b_K).sum(-1)).sum(0)

    # ------------------------------------------------------------- the pairs
    def choose_candidates(self, n_units: int = QK_UNITS) -> None:
        """Per QK head, the ``n_units`` query-side and key-side units of largest |marginal| on
        the whole sample (-1 pads where fewer units have any)."""
        queries, keys = [], []
        for query, key in zip(self.qk_query, self.qk_key, strict=True):
            for side, out in ((query, queries), (key, keys)):
                full = side.sum(0).abs()
                k = min(n_units, full.shape[1])
                top = full.topk(k, dim=1)
                chosen = torch.where(top.values > 0, top.indices, -1)
                out.append(torch.nn.functional.pad(chosen, (0, n_units - k), value=-1))
        self.candidates = (torch.cat(queries), torch.cat(keys))
        self.qk_pairs = torch.zeros(2, len(self.candidates[0]), n_units, n_units)

    @torch.no_grad()
    def add_pairs(self, run: BatchRun, half: int, replacement: ReplacementModel, tables):
        """Add a batch's QK pair terms among the chosen units (``choose_candidates``): per
        head, ``sum_q U[q] . (sum_k c[q, k] V[k])`` with U and V each chosen unit's query and
        key vectors at every position (zero where it is absent). U and V are laid out so that
        both products are batched matrix products without a copy."""
        first = 0
        for l in range(run.n_layers):
            lorsa = replacement.lorsas[l]
            nodes = _SourceNodes.below(run, self.units, lorsa_stage(l), 1 / run.sigma1[l])
            side = _LorsaSide(run, replacement, l, totals=False)
            H, e = side.n_qk, side.d_qk
            B, n = run.n_rows, run.n_pos
            groups = slice(first, first + H)
            N = self.candidates[0].shape[1]
            u = torch.zeros(H, N, B * n, e)
            h, slot, flat, vec = _side_entries(run, nodes, self.candidates[0][groups],
                                               tables.qk_query[l], lorsa.W_Q, tables)  # fmt: skip
            u[h, slot, flat] = vec
            v = torch.zeros(H, B * n, e, N)
            h, slot, flat, vec = _side_entries(run, nodes, self.candidates[1][groups],
                                               tables.qk_key[l], lorsa.W_K, tables)  # fmt: skip
            v[h, flat, :, slot] = vec
            contrast = side.contrast.transpose(0, 1).reshape(H * B, n, n)  # (qk row) q k
            y = torch.bmm(contrast, v.view(H * B, n, e * N))  # (qk row) q (e slot)
            pairs = torch.bmm(u.view(H, N, -1), y.view(H, -1, N))
            self.qk_pairs[half, groups] += pairs / math.sqrt(e)
            first += H


def _side_entries(run, nodes, chosen, unit_side, W, tables):
    """The nonzero entries of each QK head's chosen units' query (or key) vectors at every
    position: (head, slot, flat position, vector), a unit occurring once per position."""
    H, N = chosen.shape
    slot = torch.full((H, unit_side.shape[0]), -1, dtype=torch.long)
    h, i = (chosen >= 0).nonzero(as_tuple=True)
    slot[h, chosen[h, i]] = i
    heads, slots, flats, vecs = [], [], [], []
    s = slot[:, nodes.unit]  # qk node
    h, j = (s >= 0).nonzero(as_tuple=True)
    heads.append(h), slots.append(s[h, j]), flats.append(nodes.flat[j])
    vecs.append(nodes.alpha[j, None] * unit_side[nodes.unit[j], h])
    emb = center(run_embeddings(run, tables).flatten(0, 1)) * nodes.inv[:, None]
    s = slot[:, run.tokens.flatten()]  # qk (row pos)
    h, p = (s >= 0).nonzero(as_tuple=True)
    heads.append(h), slots.append(s[h, p]), flats.append(p)
    vecs.append(torch.einsum("nd,nde->ne", emb[p], W[h]))
    if nodes.errors is not None:
        every = torch.arange(nodes.n_flat)
        for k, unit in enumerate(nodes.error_units.tolist()):
            for h in (slot[:, unit] >= 0).nonzero().squeeze(1).tolist():
                err = center(nodes.errors[:, k]) * nodes.inv[:, None]
                heads.append(torch.full_like(every, h)), flats.append(every)
                slots.append(torch.full_like(every, int(slot[h, unit])))
                vecs.append(err @ W[h])
    return torch.cat(heads), torch.cat(slots), torch.cat(flats), torch.cat(vecs)


def _dot(x: Tensor, W: Tensor, bar: Tensor) -> Tensor:
    """``(x W^h) . bar^h`` per row and QK head: x (n, d), W (qk, d, e), bar (n, qk, e)."""
    return torch.einsum("nd,hde,nhe->nh", x, W, bar)


def run_embeddings(run: BatchRun, tables: Tables) -> Float[Tensor, "row pos d_model"]:
    """What each token writes at its position: its embedding (the position vector is a
    constant, on the bias side)."""
    return tables.W_E[run.tokens]


def _stage_readers(rw: ReadWrite, units: Units, stage: int) -> Tensor:
    """The reading directions of the units of ``stage`` (its error unit reads nothing)."""
    if stage == units.logit_stage:
        return rw.unembed
    reads = (rw.lorsa_read if is_attention(stage) else rw.tc_read)[block_of(stage)]
    return torch.cat([reads, torch.zeros(1, reads.shape[1])])


@dataclass
class _SourceNodes:
    """The heads and features below a stage over a batch (unit, flat position ``row * n_pos +
    pos``, activation times ``inv``, the inverse LayerNorm scale the stage reads with), and the
    batch's error vectors below the stage with their units."""

    unit: Tensor
    flat: Tensor
    alpha: Tensor
    inv: Tensor  # (row pos): 1 / sigma of the stage
    errors: Tensor | None  # (row pos) error d_model
    error_units: Tensor
    n_flat: int

    @classmethod
    def below(cls, run: BatchRun, units: Units, stage: int, inv: Tensor) -> _SourceNodes:
        parts = []
        for l in range(run.n_layers):
            for kind, nodes in ((Kind.LORSA, run.heads[l]), (Kind.TRANSCODER, run.features[l])):
                if (lorsa_stage(l) if kind == Kind.LORSA else transcoder_stage(l)) < stage:
                    parts.append((units.unit(kind, l, 0) + nodes.index, nodes))
        inv = inv.flatten()
        if parts:
            unit = torch.cat([u for u, _ in parts])
            flat = torch.cat([nd.row * run.n_pos + nd.pos for _, nd in parts])
            value = torch.cat([nd.value for _, nd in parts])
        else:
            unit = flat = torch.zeros(0, dtype=torch.long)
            value = torch.zeros(0)
        errors, error_units = None, torch.zeros(0, dtype=torch.long)
        if run.errors is not None and stage > 1:
            errors = torch.stack([e.flatten(0, 1) for e in run.errors[: stage - 1]], 1)
            error_units = torch.tensor(
                [
                    units.unit(Kind.ERROR, block_of(s), 0 if is_attention(s) else 1)
                    for s in range(1, stage)
                ]  # fmt: skip
            )
        return cls(unit, flat, value * inv[flat], inv, errors, error_units, run.tokens.numel())

    def alpha_matrix(self, n_units: int) -> Tensor:
        """Sparse (unit, flat position) matrix of ``alpha`` over the first ``n_units`` units."""
        index = torch.stack([self.unit, self.flat])
        shape = (n_units, self.n_flat)
        return torch.sparse_coo_tensor(index, self.alpha, shape, check_invariants=False)


class _LorsaSide:
    """Per block: each head's attention mass on every key (summed over the queries where it
    fired), the QK contrast weights ``w_h(q) (A[h,q,k] - 1/(q+1))`` and the contrast-weighted
    full key side per query and query side per key (module docstring)."""

    def __init__(self, run: BatchRun, replacement: ReplacementModel, layer: int, totals=True):
        lorsa = replacement.lorsas[layer]
        B, n = run.n_rows, run.n_pos
        H, g = lorsa.cfg.n_qk_heads, lorsa.cfg.group_size
        self.n_qk, self.d_qk = H, lorsa.cfg.d_qk
        heads = run.heads[layer]
        active = torch.zeros(B, n, H * g)
        active[heads.row, heads.pos, heads.index] = 1.0
        A = run.pattern(layer, replacement)  # row qk q k
        by_group = active.view(B, n, H, g).permute(0, 2, 3, 1)  # row qk group q
        mass = (by_group @ A).reshape(B, H * g, n)  # row head key
        self.mass_by_key = mass.transpose(1, 2).reshape(B * n, H * g)
        self.firings = by_group.sum(2)  # row qk q
        steps = torch.arange(1, n + 1, dtype=A.dtype)
        uniform = torch.ones(n, n).tril() / steps[:, None]
        self.contrast = self.firings[..., None] * (A - uniform)  # row qk q k
        if not totals:
            return
        x = run.lorsa_in[layer]
        scale = math.sqrt(self.d_qk)
        self.query_total = torch.einsum("bnd,hde->bhne", x, lorsa.W_Q) + lorsa.b_Q[:, None]
        key_total = torch.einsum("bnd,hde->bhne", x, lorsa.W_K) + lorsa.b_K[:, None]
        self.key_bar = self.contrast @ key_total / scale  # row qk q e
        self.query_bar = self.contrast.transpose(-1, -2) @ self.query_total / scale  # row qk k e


# ----------------------------------------------------------------- gathering
@torch.no_grad()
def gather_statistics(
    replacement: ReplacementModel,
    tokenizer,
    rows: int = DEFAULT_ROWS,
    n_ctx: int = DEFAULT_N_CTX,
    seed: int = 0,
    mode: str = "local",
    progress: bool = True,
    checkpoint: Path | None = None,
) -> Statistics:
    """Sum the exact local edges and QK terms of ``rows`` corpus rows (held-out split,
    ``n_ctx`` tokens; module docstring). With ``checkpoint`` (the statistics file), the dense
    sums are kept in ``partial_path(checkpoint)`` while gathering and resumed from there; the
    finished statistics are written to ``checkpoint``. A finished file of fewer rows is
    gathered again to ``rows`` (it holds no dense sums); files of other settings, of more rows
    or of another model are refused."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if type(rows) is not int or not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"rows must be an integer in 1..{MAX_ROWS}, not {rows!r}")
    check_row_settings(n_ctx, seed, replacement.cfg.n_ctx)
    expected = identity(replacement, tokenizer)
    units = Units.of(replacement)
    settings = {"n_ctx": n_ctx, "seed": seed, "mode": mode, "split": SPLIT}
    sums = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if checkpoint.is_file():
            done = Statistics.load(checkpoint)
            done.check_identity(checkpoint, expected, units)
            check_settings(done.meta, settings, checkpoint)
            check_rows(done.meta, rows, checkpoint)
            if done.meta["rows_done"] == rows:
                return done
        partial = partial_path(checkpoint)
        if partial.is_file():
            sums = load_partial(partial)
            Statistics.check_identity_of(partial, sums.meta, sums.units, expected, units)
            check_settings(sums.meta, settings, partial)
            check_rows(sums.meta, rows, partial)
            if sums.meta["rows_done"] % BATCH_ROWS and sums.meta["rows_done"] < rows:
                sums = None  # its last batch was cut short by its own end: start again
    if sums is None:
        meta = {"rows": rows, **settings, "rows_done": 0, "seconds": 0.0, "identity": expected,
                "qk_units": QK_UNITS}  # fmt: skip
        sums = new_sums(replacement, meta)
    sums.meta["rows"] = rows
    return _gather(replacement, tokenizer, sums, checkpoint, progress)


def batches(rows: int, start: int = 0, size: int | None = None) -> list[tuple[int, int]]:
    """The row ranges of the batches from ``start`` on: fixed by row index (``BATCH_ROWS``)."""
    size = size or BATCH_ROWS
    return [(a, min(a + size, rows)) for a in range(start, rows, size)]


def _halves(first_row: int, n_rows: int) -> list[tuple[int, Tensor]]:
    """Which rows of a batch go to the even half (0) and the odd half (1)."""
    index = torch.arange(n_rows)
    parity = (first_row + index) % 2
    return [(h, index[parity == h]) for h in (0, 1) if (parity == h).any()]


def _gather(replacement, tokenizer, sums: Sums, checkpoint, progress) -> Statistics:
    meta = sums.meta
    stream = stream_rows(tokenizer, meta["n_ctx"], meta["split"], meta["seed"])
    rows = torch.tensor([next(stream)[1] for _ in range(meta["rows"])])
    partial = partial_path(checkpoint) if checkpoint is not None else None
    t0, seconds = time.perf_counter(), meta["seconds"]
    tables = Tables.of(replacement, sums.units)
    sum_rows(replacement, rows, sums, tables, partial, progress)
    meta["seconds"] = seconds + time.perf_counter() - t0
    stats = compact(sums, tables)
    bad = [name for name, x in stats.tensors().items()
           if x.is_floating_point() and not torch.isfinite(x).all()]  # fmt: skip
    if bad:  # weights that load (finite) but overflow in use: in local mode the errors absorb
        # it (a fuzz pass: a global graph drew an edge of -3.7e29 from an error node, exit 0,
        # and wrote statistics holding NaN that its next run refused, then gathered the same)
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise ValueError(f"the replacement set's or the model's weights overflow on the corpus "
                         f"rows ({bad[0]} is not finite); nothing written")  # fmt: skip
    if checkpoint is not None:
        stats.save(checkpoint)
        if partial.exists():
            partial.unlink()
    return stats


@torch.no_grad()
def sum_rows(
    replacement: ReplacementModel,
    rows: Int[Tensor, "row pos"],
    sums: Sums,
    tables: Tables | None = None,
    partial: Path | None = None,
    progress: bool = False,
) -> Sums:
    """Add ``rows`` from ``sums.meta["rows_done"]`` on to ``sums`` (every sum, then the QK
    pairs of every row), in batches fixed by row index; with ``partial``, the dense sums are
    saved there every ``CHECKPOINT_SECONDS``."""
    replacement.eval()
    meta = sums.meta
    tables = tables or Tables.of(replacement, sums.units)
    t0, seconds, saved = time.perf_counter(), meta["seconds"], time.perf_counter()
    kept: dict[int, BatchRun] = {}
    bar = tqdm(total=len(rows), initial=meta["rows_done"], disable=not progress, desc="rows")
    for a, b in batches(len(rows), meta["rows_done"]):
        run = run_rows(replacement, rows[a:b], meta["mode"])
        for half, chosen in _halves(a, b - a):
            sums.add(run.rows(chosen), half, replacement, tables)
        kept[a] = run.without_patterns()
        meta["rows_done"], meta["seconds"] = b, seconds + time.perf_counter() - t0
        bar.update(b - a)
        if (
            partial is not None
            and b < len(rows)
            and time.perf_counter() - saved >= CHECKPOINT_SECONDS
        ):
            save_partial(sums, partial)
            saved = time.perf_counter()
    bar.close()
    sums.choose_candidates(meta["qk_units"])
    for a, b in tqdm(batches(len(rows)), disable=not progress, desc="QK pairs"):
        run = kept.pop(a, None) or run_rows(replacement, rows[a:b], meta["mode"]).without_patterns()
        for half, chosen in _halves(a, b - a):
            sums.add_pairs(run.rows(chosen), half, replacement, tables)
    return sums


def new_sums(replacement: ReplacementModel, meta: dict) -> Sums:
    """Empty sums for ``replacement``; ``meta`` as ``gather_statistics`` writes it."""
    n_qk = [lorsa.cfg.n_qk_heads for lorsa in replacement.lorsas]
    return Sums.empty(Units.of(replacement), n_qk, meta)


def statistics_for(
    replacement: ReplacementModel,
    tokenizer,
    model: str,
    path: Path | None = None,
    rows: int | None = None,
    option: str | None = "--stats",
) -> Statistics:
    """The statistics at ``path`` (default ``circuits.statistics.default_stats_path``: one
    file per model, replacement set and tokenizer), gathered first when missing, resumed when
    partial and gathered again to ``rows`` when that asks for more than they hold (``rows``
    None: what the file holds, or what an interrupted gathering into it asked for, or
    ``DEFAULT_ROWS``). ``option``: the caller's flag for another file, named in a refusal.
    Every refusal comes before a gathering is announced."""
    path = Path(path) if path else default_stats_path(model, replacement, tokenizer)
    settings = {}
    partial = partial_path(path)
    if not path.is_file():  # to be gathered into: a directory, a link or a FIFO in its place
        # was found only when the finished file was written, minutes later (a review, at the
        # default path, which the command cannot check before the model is loaded)
        from toy_models.files import check_writable_file

        check_writable_file(path, "the statistics file")
    if path.is_file():
        stats = read_statistics(path, replacement, tokenizer, option)
        done = stats.meta["rows_done"]
        if rows is None or rows == done:
            return stats
        check_rows(stats.meta, rows, path)
        settings = {k: stats.meta[k] for k in ("n_ctx", "seed", "mode")}  # the same stream
        resumed = _resumed_rows(partial, replacement, tokenizer, rows, settings)
        how = f"resuming at {resumed}" if resumed else f"it holds {done}"
        print(f"gathering statistics over {rows} rows into {path} ({how})")
    elif (plan := partial_plan(partial)) is not None and rows in (None, plan["rows"]):
        # An interrupted gathering: resumed as it was asked for (its rows, its row stream).
        rows = plan["rows"]
        settings = {k: plan[k] for k in ("n_ctx", "seed", "mode")}
        print(f"gathering statistics over {rows} rows into {path} (resuming at "
              f"{plan['rows_done']})")  # fmt: skip
    else:
        rows = rows or DEFAULT_ROWS
        if partial.is_file():  # resumed to other rows on its stream, or refused
            settings = {k: plan[k] for k in ("n_ctx", "seed", "mode")} if plan else {}
        resumed = _resumed_rows(partial, replacement, tokenizer, rows, settings)
        print(f"gathering statistics over {rows} rows into {path} "
              f"({f'resuming at {resumed}' if resumed else 'once'})")  # fmt: skip
    return gather_statistics(replacement, tokenizer, rows=rows, checkpoint=path, **settings)


def _resumed_rows(partial: Path, replacement, tokenizer, rows: int, settings: dict) -> int:
    """The rows of an interrupted gathering's ``partial`` file that gathering ``rows`` with
    ``settings`` resumes from (0: none, or it starts again), or the refusal
    ``gather_statistics`` would give (another model's, other settings, more rows), said
    before a gathering is announced."""
    if not partial.is_file():
        return 0
    sums = load_partial(partial)
    Statistics.check_identity_of(partial, sums.meta, sums.units, identity(replacement, tokenizer),
                                 Units.of(replacement))  # fmt: skip
    check_settings(sums.meta, {"n_ctx": DEFAULT_N_CTX, "seed": 0, "mode": "local",
                               **settings, "split": SPLIT}, partial)  # fmt: skip
    check_rows(sums.meta, rows, partial)
    done = sums.meta["rows_done"]
    return 0 if done % BATCH_ROWS and done < rows else done  # a batch cut short: again


def statistics_kind(path: Path) -> str | None:
    """What the file at ``path`` is, from its safetensors header alone (a damaged body still
    shows it): None when it is not a statistics file (not safetensors, or without a
    statistics header: a model's weights, say); ``partial`` (an interrupted gathering's
    file), ``old`` or ``newer`` (another format version), ``damaged`` (a header that does not
    read) or ``current`` (whose body may still be damaged: ``Statistics.load`` says)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= 100_000_000:  # safetensors' own bound on its header
                return None
            text = parse_json(f.read(size).decode())["__metadata__"]["statistics"]
    except (OSError, ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
        return None
    try:
        header = parse_json(text)
    except (TypeError, ValueError):
        return "damaged"
    if not isinstance(header, dict):
        return "damaged"
    if header.get("partial") is True:
        return "partial"
    version = header.get("version")
    if type(version) is int and version != STATS_VERSION:
        return "old" if version < STATS_VERSION else "newer"
    return "current" if version == STATS_VERSION else "damaged"


def read_statistics(
    path: Path, replacement: ReplacementModel, tokenizer, option: str | None = "--stats"
) -> Statistics:
    """The finished statistics file at ``path``, checked for ``replacement``. A refusal says
    what the file is and the way out: removing it, to gather again, only for a damaged or
    old-format statistics file; another file (``option``) for anything else, which is someone's
    work (another model's statistics, a model's weights)."""
    elsewhere = (
        f"pass another {option}"
        if option
        else "move it away to gather this model's statistics there"
    )
    again = "remove it to gather the statistics again" + (f", or pass another {option}"
                                                          if option else "")  # fmt: skip
    kind = statistics_kind(path)
    if kind is None:
        raise ValueError(f"{path}: not a statistics file (no statistics header); {elsewhere}")
    if kind == "partial":
        suffix = f".partial{path.suffix}"
        finished = path.with_name(path.name.removesuffix(suffix) + path.suffix)
        resume = (f" (to resume it: {option} {finished})" if option
                  and path.name.endswith(suffix) else "")  # fmt: skip
        raise ValueError(f"{path}: the partial file of an interrupted gathering, not finished "
                         f"statistics; {elsewhere}{resume}")  # fmt: skip
    if kind == "newer":
        raise ValueError(f"{path}: statistics of a newer format than this version reads "
                         f"({STATS_VERSION}); {elsewhere}")  # fmt: skip
    if kind == "old":
        raise ValueError(f"{path}: statistics of an older format than this version reads "
                         f"({STATS_VERSION}); {again}")  # fmt: skip
    try:
        stats = Statistics.load(path)
    except ValueError as exc:  # gathered work is the user's: never removed for them
        raise ValueError(f"{exc}; {again}") from None
    try:
        stats.check_identity(path, identity(replacement, tokenizer), Units.of(replacement))
    except ValueError as exc:  # another model's statistics: kept, another file asked for
        raise ValueError(f"{exc}; {elsewhere}") from None
    return stats


__all__ = [
    "Sums", "Tables", "gather_statistics", "new_sums", "partial_path", "read_statistics",
    "statistics_for", "statistics_kind", "sum_rows",
]  # fmt: skip
