"""Global circuits: one job, the prompt-independent circuit between units (``circuits.units``),
from the weights alone and from corpus statistics (``circuits.statistics``).

Two kinds of weights (DESIGN.md section 5, "Global circuits"):

- **Virtual weights**, from the weights alone: ``(P d_s) . r_t`` where ``d_s`` is the source's
  decoder vector (``w_o``, a decoder row, a token embedding), ``P`` the LayerNorm centring and
  ``r_t`` what the target reads (``w_v`` for a Lorsa head, an encoder column, a demeaned
  unembedding column): ``ReplacementModel.read_write()`` holds them centred. For a Lorsa QK
  head the bilinear ``(P d_s) W_Q W_K^T (P d_t) / sqrt(d_qk)`` says which key-side units a head
  looks for given query-side units.
- **Expected attribution** and **mean input** (``Statistics``): the local graphs' exact edges
  summed over a corpus sample, per unit of the source's activity or per occurrence of the
  target.

Nothing of size units x units is ever formed for virtual weights (top-k per target in
blocks). ``global_graph`` grows a circuit best first from one unit over the statistics;
``qk_circuit`` draws a QK group's weights-only pairs with each unit's strongest writers. Both
return a ``Graph`` whose nodes are units (``positional=False``, position 0).
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Float
from torch import Tensor

from replacement.model import ReadWrite, ReplacementModel

from .graph import N_PROMOTED, Graph, LogitRecord, QKAttribution, QKPair
from .nodes import Kind, block_of, lorsa_stage
from .statistics import Statistics
from .statistics import statistics_for as statistics_for  # reports.heads imports it from here
from .units import Units

WEIGHT_FLOOR = 1e-12  # divisor floor for a unit's total |weight| (0 when nothing feeds it)
QK_BLOCK = 2048  # query units per block of the QK table: bounds the (block x units) temporary


# ----------------------------------------------------------------- read/write vectors
def decoders(replacement: ReplacementModel, units: Units) -> Float[Tensor, "unit d_model"]:
    """Every source unit's write direction, centred (``P d``); zero for error and logit units."""
    rw = replacement.read_write()
    zero = torch.zeros(1, rw.embed_write.shape[1])
    rows = [rw.embed_write]
    for lorsa_write, tc_write in zip(rw.lorsa_write, rw.tc_write, strict=True):
        rows += [lorsa_write, zero, tc_write, zero]
    rows.append(zero.expand(units.d_vocab, -1))
    return torch.cat(rows)


def readers(replacement: ReplacementModel, units: Units) -> Float[Tensor, "unit d_model"]:
    """Every target unit's reading direction (``P w_v``, an encoder column, a demeaned
    unembedding column), centred; zero for embeddings and errors."""
    rw = replacement.read_write()
    zero = torch.zeros(1, rw.embed_write.shape[1])
    rows = [zero.expand(units.d_vocab, -1)]
    for lorsa_read, tc_read in zip(rw.lorsa_read, rw.tc_read, strict=True):
        rows += [lorsa_read, zero, tc_read, zero]
    rows.append(rw.unembed)
    return torch.cat(rows)


def _decoder(rw: ReadWrite, units: Units, unit: int) -> Float[Tensor, " d_model"]:
    """One row of ``decoders``, without forming the table."""
    kind, stage, index = units.describe(unit)
    tables = {
        Kind.EMBEDDING: lambda: rw.embed_write,
        Kind.LORSA: lambda: rw.lorsa_write[block_of(stage)],
        Kind.TRANSCODER: lambda: rw.tc_write[block_of(stage)],
    }
    return tables[kind]()[index] if kind in tables else torch.zeros(rw.embed_write.shape[1])


def _reader(rw: ReadWrite, units: Units, unit: int) -> Float[Tensor, " d_model"]:
    """One row of ``readers``, without forming the table."""
    kind, stage, index = units.describe(unit)
    tables = {
        Kind.LORSA: lambda: rw.lorsa_read[block_of(stage)],
        Kind.TRANSCODER: lambda: rw.tc_read[block_of(stage)],
        Kind.LOGIT: lambda: rw.unembed,
    }
    return tables[kind]()[index] if kind in tables else torch.zeros(rw.embed_write.shape[1])


# ----------------------------------------------------------------- virtual weights
@torch.no_grad()
def virtual_weights(
    replacement: ReplacementModel, target: int, k: int = 20, upstream: bool = True
) -> tuple[Tensor, Tensor]:
    """The ``k`` strongest virtual weights into ``target`` from every unit below it
    (``upstream``), or out of it into every unit above: (units, weights), by |weight|."""
    units, rw = Units.of(replacement), replacement.read_write()
    stage = int(units.stage[target])
    if upstream:
        below = units.start(stage)
        weights = decoders(replacement, units)[:below] @ _reader(rw, units, target)
        candidates = torch.arange(below)
    else:
        above = units.start(stage + 1)
        weights = readers(replacement, units)[above:] @ _decoder(rw, units, target)
        candidates = torch.arange(above, units.total)
    top = weights.abs().topk(min(k, len(weights))).indices
    return candidates[top], weights[top]


@torch.no_grad()
def qk_virtual_weights(
    replacement: ReplacementModel,
    layer: int,
    qk_head: int,
    k: int = 20,
    scale: Tensor | None = None,
    block: int = QK_BLOCK,
) -> list[tuple[int, int, float]]:
    """The ``k`` largest query-unit x key-unit terms ``(P d_s) W_Q W_K^T (P d_t) / sqrt(d_qk)``
    of one Lorsa QK head, over every pair of units below the layer (both sides), found in row
    blocks without forming the whole table. ``scale`` (per unit, optional) multiplies each
    decoder, e.g. by a unit's typical activation / sigma from corpus statistics."""
    units = Units.of(replacement)
    lorsa = replacement.lorsas[layer]
    below = units.start(lorsa_stage(layer))
    d = decoders(replacement, units)[:below]
    if scale is not None:
        d = d * scale[:below, None]
    query = d @ lorsa.W_Q[qk_head]  # unit d_qk
    key = d @ lorsa.W_K[qk_head] / math.sqrt(lorsa.cfg.d_qk)
    best_values, best_index = torch.empty(0), torch.empty(0, dtype=torch.long)
    for start in range(0, below, block):
        table = query[start : start + block] @ key.T  # block unit
        flat = table.flatten().abs().topk(min(k, table.numel())).indices
        rows, cols = flat // below + start, flat % below
        best_values = torch.cat([best_values, table.flatten()[flat]])
        best_index = torch.cat([best_index, rows * below + cols])
        keep = best_values.abs().topk(min(k, len(best_values))).indices
        best_values, best_index = best_values[keep], best_index[keep]
    return [
        (int(i // below), int(i % below), float(v))
        for i, v in zip(best_index.tolist(), best_values.tolist(), strict=True)
    ]


# ----------------------------------------------------------------- global graphs
@torch.no_grad()
def global_graph(
    replacement: ReplacementModel,
    stats: Statistics,
    start: int,
    *,
    budget: int = 40,
    per_node: int = 8,
    upstream: bool = True,
    tokenizer=None,
) -> Graph:
    """A circuit grown from ``start``, best first: each unit's ``per_node`` strongest
    neighbours are candidates, scored by their share of the unit's total |weight| times the
    unit's own score; the best candidate joins until ``budget`` units.

    Upstream, weights are mean inputs (what feeds a unit per occurrence of it: the drivers
    that matter most often); downstream, expected attributions (a source's effect per unit of
    its activity). The returned ``Graph`` (units at position 0) holds the same kind of weight
    among all chosen units, records which in ``settings["edge_weights"]``, and has target
    weight 1 on ``start`` (so ``prune_graph`` works on upstream graphs). ``tokenizer``
    (optional) gives the text of the tokens the graph refers to."""
    units = stats.units
    neighbours = stats.mean_input if upstream else stats.expected_from
    stop = (Kind.EMBEDDING, Kind.ERROR) if upstream else (Kind.LOGIT,)
    chosen: dict[int, float] = {}
    heap = [(-1.0, start)]
    while heap and len(chosen) < budget:
        neg_score, u = heapq.heappop(heap)
        if u in chosen:
            continue
        score = chosen[u] = -neg_score
        if units.describe(u)[0] in stop:
            continue  # nothing flows further that way
        ids, weights = neighbours(u, replacement)
        if not len(weights):
            continue
        total = float(weights.abs().sum().clamp(min=WEIGHT_FLOOR))
        top = weights.abs().topk(min(per_node, len(weights))).indices
        for v, w in zip(ids[top].tolist(), weights[top].abs().tolist(), strict=True):
            if v not in chosen and w > 0:
                heapq.heappush(heap, (-score * w / total, v))

    order = sorted(chosen)  # unit order is stage order
    read = stats.mean_input if upstream else stats.expected_into
    edges: dict[tuple[int, int], float] = {}
    for t in order:
        ids, weights = read(t, replacement)
        for s in order:
            if s < len(ids) and weights[s] != 0:
                edges[(s, t)] = float(weights[s])
    settings = {
        "start": units.unit_id(start),
        "direction": "upstream" if upstream else "downstream",
        "edge_weights": "mean input per target occurrence"
        if upstream
        else "expected attribution per unit of source activity",
        "budget": budget,
        "per_node": per_node,
    }
    return _unit_graph(replacement, stats, order, edges, {start: 1.0}, tokenizer, settings)


@torch.no_grad()
def qk_circuit(
    replacement: ReplacementModel,
    stats: Statistics,
    layer: int,
    heads: list[int],
    *,
    k: int = 12,
    writers: int = 2,
    tokenizer=None,
) -> Graph:
    """The circuit behind Lorsa heads' attention: for the QK group of ``heads`` (one layer,
    one group), the ``k`` strongest query-unit x key-unit pairs of ``qk_virtual_weights``
    (weights alone), and for each of those units its ``writers`` strongest inputs on the
    corpus sample (``Statistics.mean_input``). Returns a ``Graph``: writer -> unit edges carry
    the mean inputs, and the pairs are the heads' QK record (drawn as dashed query/key edges)."""
    units = stats.units
    group = replacement.lorsas[layer].cfg.group_size
    qk_heads = {h // group for h in heads}
    if len(qk_heads) != 1:
        raise ValueError(f"heads {heads} are not all in one QK group (groups of {group})")
    (qk_head,) = qk_heads
    pairs = qk_virtual_weights(replacement, layer, qk_head, k=k)
    chosen = {units.unit(Kind.LORSA, layer, h) for h in heads}
    edges: dict[tuple[int, int], float] = {}
    for u in {q for q, _, _ in pairs} | {key for _, key, _ in pairs}:
        chosen.add(u)
        if units.describe(u)[0] == Kind.EMBEDDING:
            continue  # nothing writes into a token
        ids, w = stats.mean_input(u, replacement)
        for s in w.abs().topk(min(writers, len(w))).indices.tolist():
            chosen.add(int(ids[s]))
            edges[(int(ids[s]), u)] = float(w[s])
    node_ids = {u: units.node_id(u) for u in chosen}
    record = QKAttribution(
        layer=layer, qk_head=qk_head, query=0, key=0, attention=float("nan"),
        score=float("nan"),
        pairs=[QKPair(node_ids[q], node_ids[key], v) for q, key, v in pairs],
        query_marginals=[], key_marginals=[], rest=float("nan"),
    )  # fmt: skip
    weight = {units.unit(Kind.LORSA, layer, h): 1 / len(heads) for h in heads}
    settings = {"qk_circuit": {"layer": layer, "qk_head": qk_head, "heads": heads, "pairs": k}}
    return _unit_graph(
        replacement, stats, sorted(chosen), edges, weight, tokenizer, settings, [record]
    )


def _unit_graph(
    replacement: ReplacementModel,
    stats: Statistics,
    order: list[int],
    edges: dict[tuple[int, int], float],
    target_weight: dict[int, float],
    tokenizer,
    settings: dict,
    qk: list[QKAttribution] | None = None,
) -> Graph:
    """A ``Graph`` over units (sorted, so in stage order) at position 0: ``edges`` maps
    (source unit, target unit) to a weight; a node's activation is its unit's mean activation
    when active, ``occurrences`` its firings in the sample."""
    units = stats.units
    at = {u: i for i, u in enumerate(order)}
    described = [units.describe(u) for u in order]
    n = len(order)
    kind = torch.tensor([int(d[0]) for d in described], dtype=torch.long)
    index = torch.tensor([d[2] for d in described], dtype=torch.long)
    rows, cols = [at[t] for _, t in edges], [at[s] for s, _ in edges]
    values = np.array(list(edges.values()), dtype=np.float32)
    weights = torch.zeros(n)
    for u, w in target_weight.items():
        weights[at[u]] = w
    order_t = torch.tensor(order, dtype=torch.long)
    count = stats.count[order_t]
    promotes = _promoted_tokens(replacement.read_write(), described)
    # A unit has no probability (that is a prompt's); 0 keeps graph.json valid JSON (NaN is not).
    logits = [LogitRecord(d[2], None, 0.0) for d in described if d[0] == Kind.LOGIT]
    referenced = {d[2] for d in described if d[0] in (Kind.EMBEDDING, Kind.LOGIT)}
    referenced |= set(promotes[promotes >= 0].tolist())
    return Graph(
        prompt="",
        tokens=[],
        token_strings=[],
        n_layers=units.n_layers,
        kind=kind,
        stage=torch.tensor([d[1] for d in described], dtype=torch.long),
        pos=torch.zeros(n, dtype=torch.long),
        index=index,
        activation=stats.activity[order_t] / count.clamp(min=1),
        value=torch.full((n,), float("nan")),
        bias=torch.zeros(n),
        target_weight=weights,
        edges=sp.csr_array((values, (rows, cols)), shape=(n, n)),
        attends=torch.full((n,), -1, dtype=torch.long),
        attention=torch.full((n,), float("nan")),
        promotes=promotes,
        logit_targets=logits,
        token_text={t: _token_text(tokenizer, t) for t in sorted(referenced)}
        if tokenizer is not None
        else {},
        mode=stats.meta["mode"],
        group_size=replacement.lorsas[0].cfg.group_size,
        positional=False,
        qk=qk or [],
        occurrences=count.clone(),
        model={"name": replacement.model_name or "unnamed"},
        settings={**settings, "statistics": _provenance(stats)},
    )


def _promoted_tokens(rw: ReadWrite, described: list[tuple[Kind, int, int]]) -> Tensor:
    """Per unit: the ``N_PROMOTED`` tokens a head's or feature's decoder raises most through
    the demeaned unembedding (-1 for other units)."""
    promotes = torch.full((len(described), N_PROMOTED), -1, dtype=torch.long)
    for i, (kind, stage, index) in enumerate(described):
        if kind in (Kind.LORSA, Kind.TRANSCODER):
            write = (rw.lorsa_write if kind == Kind.LORSA else rw.tc_write)[block_of(stage)]
            promotes[i] = (rw.unembed @ write[index]).topk(N_PROMOTED).indices
    return promotes


def _token_text(tokenizer, token: int) -> str:
    # Special tokens (BOS) are kept: skipping them would give an empty label.
    return tokenizer.decode([token], skip_special_tokens=False)


def _provenance(stats: Statistics) -> dict:
    """The statistics' settings and size, for ``Graph.settings`` (the identity hashes stay in
    the statistics file; timings stay out of graph files, which are then reproducible)."""
    return {k: v for k, v in stats.meta.items() if k not in ("identity", "seconds")}
