"""Attention superposition: how each Lorsa head's activation and write decompose over the
original MHSA heads of its layer, measured on held-out corpus rows (issue 13).

One layer, with ``x_k`` its ``ln1`` output (what both the MHSA layer and its Lorsa read)::

    o_h(q)  = sum_k A_h[q, k] (x_k W_V^h + b_V^h) W_O^h     MHSA head h's output (its OV path
                                                             through its pattern)
    y(q)    = sum_h o_h(q) + b_O                             the attention layer's output
    z_i(q)                                                    Lorsa head i's activation (TopK)
    y^(q)   = sum_{i in S(q)} z_i(q) w_o^i + b_D              the Lorsa layer's reconstruction

where ``S(q)`` is the set of Lorsa heads that fire at ``q`` (at most ``top_k``).

**The split of an activation.** At each token, the attention output is written in the basis
of the heads that fired by least squares: ``c(q) = M(q) (y(q) - b_D)`` with
``M(q) = (W_S W_S^T + lam I)^{-1} W_S``, ``W_S`` the rows ``w_o^i``, ``i in S(q)``, and a ridge
``lam = RIDGE x`` their mean squared norm (for co-firing heads with nearly parallel writes).
``c_i(q)`` is the activation that head i needs, given the heads firing beside it, to write
the original output; on the shipped default model it reproduces ``z_i`` (slope 1.00, relative
error 0.17-0.25 per layer, ``LayerShares.fit``). ``M(q)`` is linear, so the refit splits
exactly over the MHSA heads' outputs (their OV paths through their patterns) and the biases::

    c_i(q)      = sum_h c_hi(q) + c_bias,i(q)
    c_hi(q)     = [M(q) o_h(q)]_i            (0 where i does not fire)
    c_bias,i(q) = [M(q) (b_O - b_D)]_i

**Carried share.** Over the held-out tokens ``T`` (every real position of every row)::

    beta_hi  = Cov_T(z_i, c_hi) / Var_T(z_i)
    share_hi = max(beta_hi, 0) / sum_h' max(beta_h'i, 0)

``beta_hi`` is the least-squares slope of head h's part on the activation: how much of each
unit of ``z_i`` head h's OV path carries. Covariance is linear, so the slopes add up exactly:
``refit_i = sum_h beta_hi + bias_i`` is the slope of ``c_i`` on ``z_i`` (1 when the refit
follows the activation one for one; ``bias_i`` the biases' slope). Being covariances,
constant parts earn nothing: a head's mean output, which ``b_D`` absorbs, is not credited to
every Lorsa head whose read-out it touches. The same number answers both questions of the
issue: the share of the activation that each head's OV path carries, and which heads'
outputs the write ``z_i w_o^i`` explains (the write is the coefficient times ``w_o^i``). Heads
pulling against (``beta < 0``) are left out of the shares and reported as
``against_i = sum_h max(-beta_hi, 0) / sum_h max(beta_hi, 0)``. A head is *measured* when it
fired at least ``min_fires`` times and some head carries a positive part.

Why not project onto ``w_o^i`` alone (``o_h . w_o^i / |w_o^i|^2``): about 32 heads fire per
token in 128 dimensions and their writes overlap, so a head's projection also collects what
its co-firing heads write; on the default model that projection reproduces ``z_i`` with
slope 1.5-1.8 and relative error 1.2-1.9 (``LayerShares.fit["projection"]``), and spreads
every head over the heads its neighbours come from.

**Pattern agreement** (the QK side, beside the shares)::

    agreement_hi = sum_q z_i(q) sum_k min(A^{g(i)}[q, k], A_h[q, k]) / sum_q z_i(q)

the attention mass that head i's QK pattern shares with head h's where i fires (weighted by
its activation): 1 when the two patterns agree at every firing, 0 when they never overlap.

**Spread.** A measured head is *spread over two or more MHSA heads at threshold t* when its
largest share is below ``t`` (reported at several thresholds, ``SPREAD_THRESHOLDS``);
``effective_heads_i = 1 / sum_h share_hi^2`` is the threshold-free count (1 for one head,
2 for an even mix of two). An MHSA head *hosts* a Lorsa head when it carries at least
``HOST_SHARE`` of it (so a spread head can have two or three hosts); its *primary* host is the
head of largest share.

**Validation.** ``constructed_lorsa`` builds Lorsa heads whose answer is known: QK copied from
an MHSA head, OV reading chosen heads' OV paths along a chosen direction ``u``
(``w_v = sum_h W_V^h W_O^h u / |u|^2``, ``w_o = u``, ``b_D = b_O``), so that
``z~_i = sum_h o_h . u / |u|^2`` exactly when the chosen heads share the copied pattern. With
directions only the chosen heads write along (``private_direction``), a head made from head 2
alone gets share 1 for head 2, an even mix of heads 1 and 3 (identical patterns and values)
0.5 / 0.5, and ``3 e_1 + e_3`` 0.75 / 0.25; and two co-firing heads with overlapping writes
(cosine 0.6) made from two rank-1 heads each keep share 1 for their own head, where the
projection would mix them (tests/test_superposition.py; benchmarks/superposition.py on the
shipped default model's own heads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from replacement.lorsa import LorsaConfig, LorsaLayer
from toy_models.data import pad_rows
from toy_models.model import attention_pattern, hook_name

from .graph import checked_count, checked_index

SPREAD_THRESHOLDS = (0.5, 0.7, 0.9)
HOST_SHARE = 0.3
MIN_FIRES = 10  # as circuits.dashboards: "fired enough"
RIDGE = 1e-3  # of the mean squared norm of the co-firing heads' writes
TOP_EXAMPLES = 3
BATCH_ROWS = 16


# ----------------------------------------------------------------- the MHSA heads
def mhsa_heads(
    attn, x: Float[Tensor, "batch pos d_model"]
) -> tuple[Float[Tensor, "batch head q k"], Float[Tensor, "batch pos head d_model"]]:
    """The MHSA layer's per-head patterns and outputs ``o_h`` (``sum_h o_h + b_O`` is the
    layer's output) from its input ``x``; ``attn`` is a ``toy_models.model.Attention``."""
    q = torch.einsum("bpd,hde->bhpe", x, attn.W_Q) + attn.b_Q[:, None]
    k = torch.einsum("bpd,hde->bhpe", x, attn.W_K) + attn.b_K[:, None]
    v = torch.einsum("bpd,hde->bhpe", x, attn.W_V) + attn.b_V[:, None]
    pattern = attention_pattern(q, k)
    out = torch.einsum("bhqe,hed->bqhd", pattern @ v, attn.W_O)
    return pattern, out


def pattern_overlap(
    lorsa_pattern: Float[Tensor, "... qk k"], mhsa_pattern: Float[Tensor, "... head k"]
) -> Float[Tensor, "... qk head"]:
    """``sum_k min(A^g[q, k], A_h[q, k])`` for every Lorsa QK head g and MHSA head h, at each
    query (the leading dimensions)."""
    per_qk = [
        torch.minimum(lorsa_pattern[..., g, None, :], mhsa_pattern).sum(-1)  # ... head
        for g in range(lorsa_pattern.shape[-2])
    ]
    return torch.stack(per_qk, -2)


# ----------------------------------------------------------------- the sums over tokens
def ridged_gram(W: Float[Tensor, "... k d_model"], on: Tensor) -> Float[Tensor, "... k k"]:
    """The Gram matrix of the firing heads' writes ``W`` (rows of heads that are ``on``; the
    others zero) with the refit's ridge on its diagonal: ``RIDGE`` times the mean squared norm
    of the firing writes (1 for the rows that are off, whose parts are then 0). The one rule of
    the read-out ``M = (W W^T + ridge)^-1 W``, for the sums and for one firing's detail."""
    gram = W @ W.transpose(-1, -2)
    lam = RIDGE * gram.diagonal(dim1=-2, dim2=-1).sum(-1) / on.sum(-1).clamp(min=1)
    return gram + torch.diag_embed(torch.where(on, lam[..., None], 1.0))


class LayerSums:
    """Running sums over tokens for one layer (float64 across batches), enough for every
    head's slopes (module docstring), pattern agreements and fit, and each head's
    ``TOP_EXAMPLES`` largest activations with their token index (row * width + position)."""

    def __init__(self, n_ov: int, n_heads: int, d_model: int, top: int = TOP_EXAMPLES):
        f64 = torch.float64
        self.tokens = 0
        self.fires = torch.zeros(n_ov, dtype=torch.long)
        self.z = torch.zeros(n_ov, dtype=f64)  # sum z_i
        self.zz = torch.zeros(n_ov, dtype=f64)  # sum z_i^2
        self.c = torch.zeros(n_ov, n_heads, dtype=f64)  # sum c_hi
        self.zc = torch.zeros(n_ov, n_heads, dtype=f64)  # sum z_i c_hi
        self.m = torch.zeros(n_ov, d_model, dtype=f64)  # sum M_i (the bias parts, by linearity)
        self.zm = torch.zeros(n_ov, d_model, dtype=f64)  # sum z_i M_i
        self.zo = torch.zeros(n_ov, n_heads, dtype=f64)  # sum z_i overlap(g(i), h)
        self.fit = torch.zeros(2, 3, dtype=f64)  # (refit, projection) x (sum e^2, sum cz, sum z^2)
        self.top_value = torch.zeros(n_ov, top)
        self.top_index = torch.full((n_ov, top), -1, dtype=torch.long)

    def add(
        self,
        z: Float[Tensor, "tok ov"],
        o: Float[Tensor, "tok head d_model"],
        overlap: Float[Tensor, "tok qk head"],
        W_O: Float[Tensor, "ov d_model"],
        offset: Float[Tensor, " d_model"],
        index: Tensor,
    ) -> None:
        """One batch of real tokens: activations, head outputs, pattern overlaps, the Lorsa
        writes, ``offset = b_O - b_D``, and each token's index (for the top examples)."""
        n_tok, n_ov = z.shape
        n_qk, n_heads = overlap.shape[1:]
        self.tokens += n_tok
        self.fires += (z > 0).sum(0)
        self.z += z.double().sum(0)
        self.zz += z.double().pow(2).sum(0)
        grouped = torch.einsum("tgj,tgh->gjh", z.view(n_tok, n_qk, n_ov // n_qk), overlap)
        self.zo += grouped.reshape(n_ov, n_heads).double()
        k = int((z > 0).sum(1).max()) if n_tok else 0
        if k:
            self._refit(z, o, W_O, offset, k)
        k = min(self.top_value.shape[1], n_tok)
        new_value, at = z.topk(k, dim=0)  # k ov
        new_index = torch.where(new_value > 0, index[at], -1)
        value = torch.cat([self.top_value, new_value.T], 1)  # (topk keeps no order among
        where = torch.cat([self.top_index, new_index.T], 1)  # equal activations)
        best = value.topk(self.top_value.shape[1], dim=1, sorted=True)
        self.top_value, self.top_index = best.values, where.gather(1, best.indices)

    def _refit(self, z, o, W_O, offset, k: int) -> None:
        """The least-squares read-out ``M`` of the firing heads at every token, applied to
        each head's output, to ``y - b_D`` and to the identity (for the bias parts)."""
        value, idx = z.topk(k, dim=1)  # tok k: the firing heads (value 0: none)
        on = value > 0
        W = W_O[idx] * on[..., None]  # tok k d_model
        gram = ridged_gram(W, on)
        norm2 = (W * W).sum(-1)
        y = o.sum(1) + offset  # y - b_D
        rhs = torch.cat([W @ o.transpose(1, 2), W @ y[..., None], W], -1)
        sol = torch.cholesky_solve(rhs, torch.linalg.cholesky(gram))  # tok k (head + 1 + d)
        i, sol, zv = idx[on], sol[on].double(), value[on].double()
        n_heads = o.shape[1]
        parts, c, M = sol[:, :n_heads], sol[:, n_heads], sol[:, n_heads + 1 :]
        self.c.index_add_(0, i, parts)
        self.zc.index_add_(0, i, zv[:, None] * parts)
        self.m.index_add_(0, i, M)
        self.zm.index_add_(0, i, zv[:, None] * M)
        projection = (W @ y[..., None])[..., 0][on] / norm2[on].clamp(min=1e-30)
        for j, estimate in enumerate((c, projection.double())):
            e = estimate - zv
            self.fit[j] += torch.stack([e @ e, estimate @ zv, zv @ zv])

    def shares(self, offset: Float[Tensor, " d_model"], min_fires: int = MIN_FIRES) -> LayerShares:
        """Every head's slopes and shares (module docstring) from the sums."""
        n = max(self.tokens, 1)
        mean_z = self.z / n
        var = (self.zz / n - mean_z**2)[:, None]
        ok = var > 1e-12 * (self.zz / n).clamp(min=1e-30)[:, None]  # z not constant
        var = var.clamp(min=1e-30)
        beta = torch.where(ok, (self.zc / n - mean_z[:, None] * self.c / n) / var, 0.0)
        cov_m = self.zm / n - mean_z[:, None] * self.m / n
        bias = torch.where(ok[:, 0], (cov_m @ offset.double()) / var[:, 0], 0.0)
        pos, neg = beta.clamp(min=0), (-beta).clamp(min=0)
        total = pos.sum(1)
        measured = (self.fires >= min_fires) & (total > 0)
        share = torch.where(measured[:, None], pos / total.clamp(min=1e-30)[:, None], 0.0)
        fit = {
            name: {
                "relative_error": float((self.fit[j, 0] / self.fit[j, 2].clamp(min=1e-30)).sqrt()),
                "slope": float(self.fit[j, 1] / self.fit[j, 2].clamp(min=1e-30)),
            }
            for j, name in enumerate(("refit", "projection"))
        }
        return LayerShares(
            tokens=self.tokens,
            fires=self.fires.clone(),
            beta=beta.float(),
            share=share.float(),
            bias=bias.float(),
            against=torch.where(measured, neg.sum(1) / total.clamp(min=1e-30), 0.0).float(),
            agreement=(self.zo / self.z.clamp(min=1e-30)[:, None]).float(),
            measured=measured,
            top_value=self.top_value.clone(),
            top_index=self.top_index.clone(),
            fit=fit,
        )


@dataclass
class LayerShares:
    """One layer's result: per Lorsa head (rows) and MHSA head (columns)."""

    tokens: int
    fires: Tensor  # ov: tokens where z_i > 0
    beta: Tensor  # ov head: slopes (0 where z_i is constant or never fires)
    share: Tensor  # ov head: 0 for heads not measured
    bias: Tensor  # ov: the biases' slope
    against: Tensor  # ov
    agreement: Tensor  # ov head: pattern agreement (every head that fired)
    measured: Tensor  # ov, bool
    top_value: Tensor  # ov top
    top_index: Tensor  # ov top: row * width + position (-1: none)
    fit: dict  # {"refit" | "projection": {"relative_error", "slope"}} against z, firings

    @property
    def from_heads(self) -> Tensor:
        """The slope of the MHSA heads' parts together (the refit's, less the biases')."""
        return self.beta.sum(1)

    @property
    def refit(self) -> Tensor:
        """The slope of the refit ``c_i`` on ``z_i`` (1: it follows the activation)."""
        return self.beta.sum(1) + self.bias

    @property
    def top_head(self) -> Tensor:
        return self.share.argmax(1)

    @property
    def top_share(self) -> Tensor:
        return self.share.max(1).values

    @property
    def effective_heads(self) -> Tensor:
        return torch.where(self.measured, 1.0 / self.share.pow(2).sum(1).clamp(min=1e-30), 0.0)

    def spread(self, threshold: float) -> Tensor:
        """Measured heads whose largest share is below ``threshold``."""
        return self.measured & (self.top_share < threshold)


@dataclass
class Superposition:
    """The measurement: ``layers[l]`` per layer, on ``rows`` (token ids) padded to ``width``."""

    layers: list[LayerShares]
    rows: list[list[int]]
    width: int
    min_fires: int

    def where(self, index: int) -> tuple[int, int]:
        """(row, position) of a token index."""
        return index // self.width, index % self.width


# ----------------------------------------------------------------- the pass
def measure(
    replacement,
    rows: Sequence[Sequence[int]],
    *,
    batch_rows: int = BATCH_ROWS,
    min_fires: int = MIN_FIRES,
    progress: bool = False,
) -> Superposition:
    """Every layer's shares on ``rows`` (token ids, each starting with BOS): the original
    model's residual stream (what local mode reproduces), each layer's Lorsa activations and
    MHSA head outputs computed from the same ``ln1`` output."""
    from tqdm import tqdm

    model, lorsas = replacement.model, replacement.lorsas
    cfg = model.cfg
    batch_rows = checked_count(batch_rows, "batch_rows")  # -1 would step over every row
    min_fires = checked_count(min_fires, "min_fires", least=0)
    rows = [list(r) for r in rows]
    if not rows or any(not 1 <= len(r) <= cfg.n_ctx for r in rows):
        raise ValueError(f"rows must be 1..{cfg.n_ctx} tokens long, and there must be some")
    width = max(len(r) for r in rows)
    sums = [LayerSums(m.cfg.n_ov_heads, cfg.n_heads, cfg.d_model) for m in lorsas]
    names = {hook_name(l, "ln1.hook_normalized") for l in range(cfg.n_layers)}
    starts = range(0, len(rows), batch_rows)
    with torch.no_grad():
        for start in tqdm(starts, desc="superposition", disable=not progress, leave=False):
            batch = rows[start : start + batch_rows]
            tokens = pad_rows(batch)
            b, p = tokens.shape
            valid = torch.arange(p)[None] < torch.tensor([len(r) for r in batch])[:, None]
            index = ((torch.arange(b)[:, None] + start) * width + torch.arange(p)[None])[valid]
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            for l, (lorsa, block) in enumerate(zip(lorsas, model.blocks, strict=True)):
                x = cache[hook_name(l, "ln1.hook_normalized")].float()
                mhsa_pattern, o = mhsa_heads(block.attn, x)
                lorsa_pattern = lorsa.patterns(x)
                z = lorsa.activate(lorsa.pre_activations(x, lorsa_pattern))
                overlap = pattern_overlap(  # only at real queries
                    lorsa_pattern.transpose(1, 2)[valid], mhsa_pattern.transpose(1, 2)[valid]
                )
                offset = (block.attn.b_O - lorsa.b_D).float()
                sums[l].add(z[valid], o[valid], overlap, lorsa.W_O.float(), offset, index)
        offsets = [(b.attn.b_O - m.b_D).float() for b, m in zip(model.blocks, lorsas, strict=True)]
        layers = [s.shares(off, min_fires) for s, off in zip(sums, offsets, strict=True)]
    return Superposition(layers, rows, width, min_fires)


def firing_detail(replacement, ids: Sequence[int], layer: int, head: int, pos: int) -> dict:
    """At one firing of Lorsa head ``head``: its activation ``z``, the refit ``c`` and its
    parts ``c_h`` over the MHSA heads and ``bias`` (module docstring), and the key that
    contributes most to ``z~`` with the attention its QK head and each MHSA head pay it.
    Layer, head and position are indices, never read from the end; the head must fire there
    (the split is of a firing)."""
    model = replacement.model
    layer = checked_index(layer, "layer", model.cfg.n_layers)
    lorsa = replacement.lorsas[layer]
    head = checked_index(head, "head", lorsa.cfg.n_ov_heads)
    if not len(ids):
        raise ValueError("ids must hold at least one token")
    pos = checked_index(pos, "pos", len(ids))
    attn = model.blocks[layer].attn
    tokens = torch.tensor([list(ids[: pos + 1])])
    name = hook_name(layer, "ln1.hook_normalized")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == name)
        x = cache[name].float()
        pattern, o = mhsa_heads(attn, x)
        lorsa_pattern = lorsa.patterns(x)
        z = lorsa.activate(lorsa.pre_activations(x, lorsa_pattern))[0, pos]
        if not z[head] > 0:
            raise ValueError(f"Lorsa head {head} of layer {layer} does not fire at pos {pos}")
        firing = (z > 0).nonzero().flatten()
        W = lorsa.W_O[firing].float()
        gram = ridged_gram(W, torch.ones(len(firing), dtype=torch.bool))
        row = torch.linalg.solve(gram, W)[(firing == head).nonzero().flatten()[0]]  # d_model
        c_h = o[0, pos] @ row
        bias = (attn.b_O - lorsa.b_D) @ row
        contrib = lorsa.contributions(x[0], pos, torch.tensor([head]))[0]  # key
    key = int(contrib.argmax())
    return {
        "z": float(z[head]),
        "c": float(c_h.sum() + bias),
        "c_h": [round(float(v), 4) for v in c_h],
        "bias": float(bias),
        "key": key,
        "key_contribution": float(contrib[key]),
        "lorsa_attention": float(lorsa_pattern[0, head // lorsa.cfg.group_size, pos, key]),
        "mhsa_attention": [round(float(v), 4) for v in pattern[0, :, pos, key]],
    }


# ----------------------------------------------------------------- summaries
def spread_fractions(
    layers: list[LayerShares], thresholds: Sequence[float] = SPREAD_THRESHOLDS
) -> dict:
    """For each threshold: the fraction of measured heads spread over two or more MHSA heads,
    over all layers and per layer, with the counts."""
    measured = [int(s.measured.sum()) for s in layers]
    out = {}
    for t in thresholds:
        spread = [int(s.spread(t).sum()) for s in layers]
        out[str(t)] = {
            "fraction": sum(spread) / max(sum(measured), 1),
            "spread": sum(spread),
            "measured": sum(measured),
            "per_layer": [k / max(m, 1) for k, m in zip(spread, measured, strict=True)],
        }
    return out


def hosting(
    shares: LayerShares,
    families: dict[str, list[int]] | None = None,
    host_share: float = HOST_SHARE,
) -> list[dict]:
    """Per MHSA head of one layer: the Lorsa heads it hosts (share >= ``host_share``), those
    it is the primary host of, its share-weighted count, and the families (``families``:
    family -> this layer's labelled heads) that its hosted heads cover."""
    label_of: dict[int, list[str]] = {}
    for family, heads in _family_heads(families or {}, shares.share.shape[0]).items():
        for i in heads:
            label_of.setdefault(i, []).append(family)
    measured = shares.measured
    primary = shares.top_head
    out = []
    for h in range(shares.share.shape[1]):
        hosted = (measured & (shares.share[:, h] >= host_share)).nonzero().flatten().tolist()
        counts: dict[str, int] = {}
        for i in hosted:
            for family in label_of.get(i, []):
                counts[family] = counts.get(family, 0) + 1
        out.append({
            "hosted": len(hosted),
            "primary": int((measured & (primary == h)).sum()),
            "share_mass": round(float(shares.share[measured, h].sum()), 3),
            "families": sorted(counts, key=lambda f: (-counts[f], f)),
            "family_counts": counts,
            "hosted_heads": hosted,
        })  # fmt: skip
    return out


def family_matrix(
    shares: LayerShares, families: dict[str, list[int]], names: Sequence[str]
) -> Tensor:
    """``(head, family)``: the share mass each MHSA head carries of the measured Lorsa heads
    labelled with each family in ``names`` (a head with several labels counts in each), plus
    a last column for the unlabelled ones."""
    n_ov, n_heads = shares.share.shape
    families = _family_heads(families, n_ov)
    out = torch.zeros(n_heads, len(names) + 1)
    labelled = torch.zeros(n_ov, dtype=torch.bool)
    for j, family in enumerate(names):
        heads = torch.tensor(sorted(families.get(family, [])), dtype=torch.long)
        if len(heads):
            keep = heads[shares.measured[heads]]
            out[:, j] = shares.share[keep].sum(0)
            labelled[heads] = True
    out[:, -1] = shares.share[shares.measured & ~labelled].sum(0)
    return out


def _family_heads(families: dict[str, list[int]], n_ov: int) -> dict[str, list[int]]:
    """``families`` with every head checked to be a Lorsa head index of the layer: a negative
    one would be read from the end (-1 crediting the last head), a float truncated."""
    return {
        family: [checked_index(i, f"families[{family!r}] head", n_ov) for i in heads]
        for family, heads in families.items()
    }


# ----------------------------------------------------------------- constructed cases
def private_direction(
    attn,
    heads: int | Sequence[int],
    generator: torch.Generator | None = None,
    orthogonal_to: Sequence[Tensor] = (),
) -> Tensor:
    """A unit vector that only ``heads`` write along: inside their write spaces (the row
    spaces of their ``W_O^h``), orthogonal to every other head's (so that ``o_h . u = 0`` for
    every other head h) and to the vectors ``orthogonal_to``. Needs the rest not to cover
    their write spaces."""
    heads = [heads] if isinstance(heads, int) else list(heads)
    W_O = attn.W_O.detach().float()  # head d_head d_model
    rows = [W_O[h] for h in range(W_O.shape[0]) if h not in heads]
    others = torch.cat(rows + [v.float()[None] for v in orthogonal_to])
    values = torch.linalg.svdvals(others)
    rank = int((values > 1e-6 * values.max()).sum())
    complement = torch.linalg.svd(others, full_matrices=True).Vh[rank:]  # orthonormal rows
    own = torch.cat([W_O[h] for h in heads])
    u = complement.T @ (complement @ (own.T @ torch.randn(own.shape[0], generator=generator)))
    if u.norm() < 1e-6:
        raise ValueError(f"heads {heads} write nothing outside the other heads' write spaces")
    return u / u.norm()


def constructed_lorsa(
    attn,
    qk_heads: Sequence[int],
    ov_heads: Sequence[tuple[Sequence[int], Tensor]],
    top_k: int | None = None,
) -> LorsaLayer:
    """A Lorsa layer whose answer is known (module docstring, **Validation**): QK head j is
    MHSA head ``qk_heads[j]``'s; OV head i, given as ``(heads, u)`` and in QK group
    ``i // (len(ov_heads) // len(qk_heads))``, reads ``sum_{h in heads} (x W_V^h + b_V^h)
    W_O^h u / |u|^2`` and writes along ``u``; ``b_D = b_O``. Heads are indices into the MHSA
    heads, never read from the end, and ``u`` a finite non-zero vector (``u / |u|^2``)."""
    n_heads, d_model, d_head = attn.W_Q.shape
    if not len(qk_heads) or not len(ov_heads):
        raise ValueError("qk_heads and ov_heads must each name at least one head")
    qk_heads = [checked_index(g, f"qk_heads[{j}]", n_heads) for j, g in enumerate(qk_heads)]
    checked = []
    for i, (heads, u) in enumerate(ov_heads):
        heads = [checked_index(h, f"ov_heads[{i}] head", n_heads) for h in heads]
        if not (isinstance(u, Tensor) and u.shape == (d_model,) and u.isfinite().all()):
            raise ValueError(f"ov_heads[{i}] direction must be a finite tensor of shape "
                             f"({d_model},)")  # fmt: skip
        if not u.float().pow(2).sum() > 0:
            raise ValueError(f"ov_heads[{i}] direction is zero: a head writes along a non-zero u")
        checked.append((heads, u))
    n_qk, n_ov = len(qk_heads), len(checked)
    top_k = n_ov if top_k is None else checked_count(top_k, "top_k")
    cfg = LorsaConfig(d_model, n_qk, n_ov, d_head, top_k)
    lorsa = LorsaLayer(cfg)
    with torch.no_grad():
        for j, g in enumerate(qk_heads):
            lorsa.W_Q[j], lorsa.W_K[j] = attn.W_Q[g], attn.W_K[g]
            lorsa.b_Q[j], lorsa.b_K[j] = attn.b_Q[g], attn.b_K[g]
        for i, (heads, u) in enumerate(checked):
            u = u.float()
            read = u / u.pow(2).sum()  # z~ = sum_h o_h . u / |u|^2: the write is o's projection
            lorsa.W_O[i] = u
            lorsa.W_V[i] = sum(attn.W_V[h] @ (attn.W_O[h] @ read) for h in heads)
            lorsa.b_V[i] = sum(attn.b_V[h] @ (attn.W_O[h] @ read) for h in heads)
        lorsa.b_D.copy_(attn.b_O)  # y - b_D = sum_h o_h
    return lorsa.eval()
