"""Global circuits: one job, the prompt-independent circuit between units (``circuits.units``),
from the weights alone and from corpus statistics (``circuits.statistics``).

Two kinds of weights (DESIGN.md section 5, "Global circuits"):

- **Virtual weights**, from the weights alone: ``(P d_s) . r_t`` where ``d_s`` is the source's
  decoder vector (``w_o``, a decoder row, a token embedding), ``P`` the LayerNorm centring and
  ``r_t`` what the target reads (``w_v`` for a Lorsa head, an encoder column, a demeaned
  unembedding column): ``ReplacementModel.read_write()`` holds them centred. For a Lorsa QK
  head the bilinear ``(P d_s) W_Q W_K^T (P d_t) / sqrt(d_qk)`` says which key-side units a head
  looks for given query-side units.
- **Expected attribution**, **mean input** and **expected QK attribution** (``Statistics``):
  the local graphs' exact edges and QK terms summed over a corpus sample, per unit of the
  source's activity, per occurrence of the target, or per firing of a QK group.

Nothing of size units x units is ever formed for virtual weights (top-k per target in
blocks). ``global_graph`` grows a circuit best first from one unit over the statistics and
gives every Lorsa head in it its QK group's record (``with_qk_side``: the strongest pairs and
marginals, and the units of the strongest pair drawn as q/k edges); ``qk_circuit`` draws a QK
group's weights-only pairs with each unit's strongest writers; ``split_half`` grows the same
graph from each half of the sample and says how many of its top edges agree. Each returns a
``Graph`` whose nodes are units (``positional=False``, position 0).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable

import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Float
from torch import Tensor

from replacement.model import ReplacementModel
from toy_models.tokenizer import token_text

from .attribution import promoted_tokens
from .graph import (
    GlobalRecord,
    Graph,
    LogitRecord,
    NamedSide,
    QKAttribution,
    QKPair,
    checked_count,
    checked_index,
)
from .nodes import Kind, lorsa_stage
from .prune import influence
from .statistics import Statistics
from .units import Units
from .units import decoder as unit_decoder
from .units import decoders as unit_decoders
from .units import reader as unit_reader
from .units import readers as unit_readers

WEIGHT_FLOOR = 1e-12  # divisor floor for a unit's total |weight| (0 when nothing feeds it)
QK_BLOCK = 2048  # query units per block of the QK table: bounds the (block x units) temporary
QK_RECORD_TERMS = 10  # pairs and marginals per side kept in a global QK record
SPLIT_HALF_EDGES = 20  # top edges compared between the two halves' graphs


# ----------------------------------------------------------------- read/write vectors
def decoders(replacement: ReplacementModel, units: Units) -> Float[Tensor, "unit d_model"]:
    """Every source unit's write direction, centred (``P d``); zero for error and logit units."""
    return unit_decoders(replacement.read_write(), units)


def readers(replacement: ReplacementModel, units: Units) -> Float[Tensor, "unit d_model"]:
    """Every target unit's reading direction (``P w_v``, an encoder column, a demeaned
    unembedding column), centred; zero for embeddings and errors."""
    return unit_readers(replacement.read_write(), units)


# ----------------------------------------------------------------- virtual weights
@torch.no_grad()
def virtual_weights(
    replacement: ReplacementModel, target: int, k: int = 20, upstream: bool = True
) -> tuple[Tensor, Tensor]:
    """The ``k`` strongest virtual weights into ``target`` from every unit below it
    (``upstream``), or out of it into every unit above: (units, weights), by |weight|; none of
    weight 0 (an error unit reads and writes no fixed vector: it listed ``k`` token units of
    weight 0, a review)."""
    units, rw = Units.of(replacement), replacement.read_write()
    target, k = units.check(target, "target"), checked_count(k, "k")
    stage = int(units.stage[target])
    if upstream:
        below = units.start(stage)
        weights = decoders(replacement, units)[:below] @ unit_reader(rw, units, target)
        candidates = torch.arange(below)
    else:
        above = units.start(stage + 1)
        weights = readers(replacement, units)[above:] @ unit_decoder(rw, units, target)
        candidates = torch.arange(above, units.total)
    top = weights.abs().topk(min(k, len(weights))).indices
    top = top[weights[top] != 0]
    return candidates[top], weights[top]


@torch.no_grad()
def qk_virtual_weights(
    replacement: ReplacementModel,
    layer: int,
    qk_head: int,
    k: int = 20,
    block: int = QK_BLOCK,
) -> list[tuple[int, int, float]]:
    """The ``k`` largest query-unit x key-unit terms ``(P d_s) W_Q W_K^T (P d_t) / sqrt(d_qk)``
    of one Lorsa QK head, over every pair of units below the layer (both sides), found in row
    blocks without forming the whole table."""
    units = Units.of(replacement)
    layer = units.check_layer(layer)
    lorsa = replacement.lorsas[layer]
    qk_head = checked_index(qk_head, "qk_head", lorsa.cfg.n_qk_heads)
    k, block = checked_count(k, "k"), checked_count(block, "block")
    below = units.start(lorsa_stage(layer))
    d = decoders(replacement, units)[:below]
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
    qk: bool = False,
) -> Graph:
    """A circuit grown from ``start``, best first: each unit's ``per_node`` strongest
    neighbours are candidates, scored by their share of the unit's total |weight| (over every
    neighbour, kept in the statistics or not) times the unit's own score; the best candidate
    joins. A grown unit none of whose candidates joined gets its best candidate where paths
    end (a token or an error term upstream, a logit downstream), and the budget counts these
    ends: a unit joins only where it and the ends then needed fit in ``budget`` units (the
    start always joins; ``budget=1`` is the start alone).

    Upstream, weights are mean inputs (what feeds a unit per occurrence of it: the drivers
    that matter most often; a logit's occurrences are the positions where its token came
    next); downstream, expected attributions (a source's effect per unit of its activity). The
    returned ``Graph`` (units at position 0) holds the same kind of weight among all chosen
    units, says which way it grew in its ``global_record`` (its ``edge_weights``), and has
    target weight 1 on ``start`` (so ``prune_graph`` works on upstream graphs); upstream, its
    ``influence`` on the start (``circuits.prune.influence``, which ``prune_graph`` gives the
    nodes it keeps: an unpruned graph ranks its units by it too; a downstream graph ranks them
    by their reach from the start, ``reports.layout.node_scores``). ``qk``: give its Lorsa
    heads their QK side (``with_qk_side``, whose units join beyond ``budget``; after pruning,
    prune first and add it then). ``tokenizer`` (optional) gives the text of the tokens the
    graph refers to."""
    units = stats.units
    start = units.check(start, "start")
    budget, per_node = checked_count(budget, "budget"), checked_count(per_node, "per_node")
    if upstream:
        neighbours, total = stats.mean_input, stats.input_total
        stop = (Kind.EMBEDDING, Kind.ERROR)
    else:
        neighbours, total = stats.expected_from, stats.output_total
        stop = (Kind.LOGIT,)
    chosen: dict[int, float] = {}
    candidates: dict[int, list[int]] = {}  # per grown unit, its candidates, best first
    is_end = lambda v: units.describe(v)[0] in stop  # noqa: E731 (nothing flows further that way)
    heap = [(-1.0, start)]
    while heap and len(chosen) < budget:
        neg_score, u = heapq.heappop(heap)
        if u in chosen:
            continue
        ids, weights = neighbours(u) if not is_end(u) else ([], [])
        top = weights.abs().topk(min(per_node, len(weights))).indices if len(weights) else []
        grown = {u: ids[top].tolist()} if len(weights) else {}
        # The budget holds the path ends too: a unit joins only where it and the ends the
        # grown units then need fit in it (the start always joins)
        ends = _path_ends({**candidates, **grown}, {*chosen, u}, is_end)
        if chosen and len(chosen) + 1 + len(ends) > budget:
            continue
        score = chosen[u] = -neg_score
        candidates.update(grown)
        if not grown:
            continue
        whole = max(total(u), WEIGHT_FLOOR)
        for v, w in zip(ids[top].tolist(), weights[top].abs().tolist(), strict=True):
            if v not in chosen and w > 0:
                heapq.heappush(heap, (-score * w / whole, v))
    # A path must end where nothing flows further (a token or an error term; downstream, a
    # logit): a unit none of whose candidates joined gets its best such candidate, or a
    # budget spent high up would leave units without inputs, and pruning would drop them all
    # (only ``budget=1``, the start alone, has no room for its end).
    ends = _path_ends(candidates, chosen, is_end)
    if len(chosen) + len(ends) <= budget:
        chosen.update(dict.fromkeys(ends, 0.0))

    edges = _edges_among(stats, sorted(chosen), upstream)
    settings = {"start": units.unit_id(start), "budget": budget, "per_node": per_node}
    method = GlobalRecord("upstream" if upstream else "downstream")
    graph = _unit_graph(replacement, stats, sorted(chosen), edges, {start: 1.0}, tokenizer,
                        settings, method)  # fmt: skip
    if upstream:  # what ranks its units, pruned (``prune_graph`` keeps these values) or not
        weights = graph.target_weight.numpy()
        graph.influence = torch.from_numpy(influence(graph.edges, graph.stage.numpy(), weights))
        graph.influence = graph.influence.float()
    return with_qk_side(replacement, stats, graph, tokenizer) if qk else graph


def _path_ends(candidates: dict[int, list[int]], chosen, is_end) -> list[int]:
    """The end units (``is_end``) a grown circuit needs: for each grown unit none of whose
    ``candidates`` are ``chosen``, its best candidate among the ends, where it has one."""
    need: list[int] = []  # in growth order, an end already needed serving the later units
    for vs in candidates.values():
        if not any(v in chosen or v in need for v in vs):
            ends = [v for v in vs if is_end(v)]
            if ends:
                need.append(ends[0])
    return need


def _edges_among(stats: Statistics, order: list[int], upstream: bool) -> dict:
    """The kept weights between every two of ``order`` (mean inputs or expected
    attributions): (source unit, target unit) -> weight."""
    read = stats.mean_input if upstream else stats.expected_into
    members = torch.tensor(order, dtype=torch.long)
    edges: dict[tuple[int, int], float] = {}
    for t in order:
        ids, weights = read(t)
        among = torch.isin(ids, members) & (weights != 0)
        for s, w in zip(ids[among].tolist(), weights[among].tolist(), strict=True):
            edges[(s, t)] = w
    return edges


def units_of(graph: Graph, units: Units) -> list[int]:
    """The unit of each node of a global graph, in node order."""
    return units.of_nodes(graph.kind, graph.stage, graph.index).tolist()


@torch.no_grad()
def with_qk_side(
    replacement: ReplacementModel,
    stats: Statistics,
    graph: Graph,
    tokenizer=None,
    pairs: int = 1,
) -> Graph:
    """``graph`` (a global graph) with the QK side of each of its Lorsa heads: the head's QK
    group's record (``qk_record``) and, as nodes, the query and key units of the group's
    ``pairs`` pairs raising its score most (drawn as q/k edges into the head). An added unit
    that is a Lorsa head gets its QK group's record too (so every head of the graph has one:
    a reviewer found a layer-1 head, added as a layer-2 head's query unit, with none), but no
    units of its own
    pairs: the QK side goes one step back. Added units have no value edges here, so their
    influence is 0; every other field of the graph is kept."""
    pairs = checked_count(pairs, "pairs", least=0)
    units = stats.units
    have = units_of(graph, units)
    heads = (graph.kind == Kind.LORSA).nonzero().squeeze(1).tolist()
    groups = sorted({(int(graph.layer[i]), graph.qk_head(i)) for i in heads})
    records, extra = [], set()
    for layer, qk_head in groups:
        group = stats.qk_group(layer, qk_head)
        records.append(qk_record(stats, layer, qk_head))
        # the pairs raising the score most: a pair lowering it is no reason the heads attend
        # (a reviewer found a dense feature pair of -2.2% of the lift drawn as the q/k link)
        flat = group.pairs.flatten()
        for j in flat.topk(min(pairs, len(flat))).indices.tolist() if len(flat) else []:
            if flat[j] > 0:
                q, k = divmod(j, group.pairs.shape[1])
                extra |= {int(group.query_units[q]), int(group.key_units[k])}
    for unit in sorted(extra - set(have)):
        kind, _, index = units.describe(unit)
        added = (units.layer(unit), index // graph.group_size)
        if kind == Kind.LORSA and added not in groups:
            groups.append(added)
            records.append(qk_record(stats, *added))
    records.sort(key=lambda r: (r.layer, r.qk_head))
    order = sorted(set(have) | extra)
    coo = graph.edges.tocoo()
    edges = {(have[s], have[t]): float(w)
             for t, s, w in zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist(),
                                strict=True)}  # fmt: skip
    weight = {have[i]: float(w) for i, w in enumerate(graph.target_weight.tolist()) if w}
    out = _unit_graph(replacement, stats, order, edges, weight, tokenizer,
                      {**graph.settings, "qk_side": {"pairs": pairs}}, graph.global_record,
                      records)  # fmt: skip
    if graph.influence is not None:
        at = {u: i for i, u in enumerate(have)}
        out.influence = torch.tensor(
            [float(graph.influence[at[u]]) if u in at else 0.0 for u in order]
        )
    return out


def qk_record(stats: Statistics, layer: int, qk_head: int, top: int = QK_RECORD_TERMS):
    """A QK group's expected QK attribution as a ``QKAttribution``: per firing of a head of
    the group, ``score`` is every term (how much higher the scores of the keys its heads attend
    to are than an average key's), ``pairs`` its ``top`` strongest query-unit x key-unit terms
    among the units gathered, the marginals each side's ``top`` strongest units and the bias
    (``None``), ``rest`` the score minus the listed pairs. A global record has no query, key or
    attention of its own (0)."""
    top = checked_count(top, "top")
    group = stats.qk_group(layer, qk_head)
    named: dict[str, NamedSide] = {}

    def unit_id(unit: int) -> str:  # its node's, at position 0
        fields = stats.units.side(unit, 0)
        named[fields.id] = fields
        return fields.id

    flat = group.pairs.flatten()
    best = flat.abs().topk(min(top, len(flat))).indices.tolist() if len(flat) else []
    n_key = group.pairs.shape[1]
    pairs = [QKPair(unit_id(int(group.query_units[j // n_key])),
                    unit_id(int(group.key_units[j % n_key])), float(flat[j]))
             for j in best if flat[j] != 0]  # fmt: skip

    def marginals(chosen: Tensor, values: Tensor, bias: float) -> list:
        order = values.abs().topk(min(top, len(values))).indices.tolist() if len(values) else []
        listed = [(unit_id(int(chosen[i])), float(values[i])) for i in order if values[i] != 0]
        return sorted([*listed, (None, bias)], key=lambda m: -abs(m[1]))[:top]

    record = QKAttribution(
        layer=layer, qk_head=qk_head, query=0, key=0, attention=0.0, score=group.total,
        pairs=pairs,
        query_marginals=marginals(group.query_units, group.query_marginal, group.bias_query),
        key_marginals=marginals(group.key_units, group.key_marginal, group.bias_key),
        rest=group.total - sum(p.value for p in pairs),
    )  # fmt: skip
    record.name_fields(named.__getitem__)
    return record


def split_half(
    grow: Callable[[Statistics], Graph], stats: Statistics, top: int = SPLIT_HALF_EDGES
) -> dict:
    """Whether the sample is large enough for a graph: ``grow`` (a statistics -> graph
    function, e.g. growing and pruning from one start) applied to each half of the sample, and
    how many of each half's ``top`` strongest edges (by |weight|, as unit pairs) the other
    half's graph has among its own ``top``. Returns the overlap fraction, the counts and the
    units both halves' graphs share."""
    top = checked_count(top, "top")
    halves = [grow(stats.half(h)) for h in (0, 1)]
    tops, members = [], []
    for graph in halves:
        unit = units_of(graph, stats.units)
        coo = graph.edges.tocoo()
        order = np.argsort(-np.abs(coo.data), kind="stable")[:top]
        tops.append({(unit[coo.col[j]], unit[coo.row[j]]) for j in order})
        members.append(set(unit))
    k = min(len(tops[0]), len(tops[1]))
    shared = len(tops[0] & tops[1])
    return {
        "top_edges": top,
        "compared": k,
        "shared": shared,
        "overlap": shared / k if k else float("nan"),
        "units_shared": len(members[0] & members[1]),
        "units": [len(m) for m in members],
        "rows": [stats.half(h).rows for h in (0, 1)],
    }


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
    the mean inputs, and the pairs are the heads' QK record (drawn as dashed query/key edges).
    Weights alone give no score of a prompt or the corpus: the record's ``score`` is its pairs'
    sum (``rest`` 0), so that its pairs and rest make its score, as every record's do (one of
    score 0 beside pairs summing to 0.07 was refused by ``Graph.save``)."""
    units = stats.units
    layer = units.check_layer(layer)
    cfg = replacement.lorsas[layer].cfg
    listed = list(heads) if isinstance(heads, Iterable) and not isinstance(heads, str) else []
    if not listed:
        raise ValueError(f"heads must be a non-empty list of Lorsa head indices, got {heads!r}")
    heads = [checked_index(h, "head", cfg.n_ov_heads) for h in listed]
    if len(set(heads)) != len(heads):
        raise ValueError(f"heads {heads} name a head twice")
    writers = checked_count(writers, "writers", least=0)
    group = cfg.group_size
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
        ids, w = stats.mean_input(u)
        for s in w.abs().topk(min(writers, len(w))).indices.tolist():
            chosen.add(int(ids[s]))
            edges[(int(ids[s]), u)] = float(w[s])
    fields = {u: units.side(u, 0) for u in chosen}  # their nodes, at position 0
    record = QKAttribution(
        layer=layer, qk_head=qk_head, query=0, key=0, attention=0.0,
        score=sum(v for _, _, v in pairs),
        pairs=[QKPair(fields[q].id, fields[key].id, v) for q, key, v in pairs],
        query_marginals=[], key_marginals=[], rest=0.0,
    )  # fmt: skip
    record.name_fields({f.id: f for f in fields.values()}.__getitem__)
    weight = {units.unit(Kind.LORSA, layer, h): 1 / len(heads) for h in heads}
    # its edges are mean inputs, said on its page as a grown graph's are (the induction
    # circuit's page said nothing under its heading, a review), its pairs weights alone: both
    # its record's (``GlobalRecord``); which heads and how many pairs, provenance
    settings = {"qk_circuit": {"layer": layer, "qk_head": qk_head, "heads": heads, "pairs": k}}
    return _unit_graph(replacement, stats, sorted(chosen), edges, weight, tokenizer, settings,
                       GlobalRecord("qk_circuit"), [record])  # fmt: skip


def _unit_graph(
    replacement: ReplacementModel,
    stats: Statistics,
    order: list[int],
    edges: dict[tuple[int, int], float],
    target_weight: dict[int, float],
    tokenizer,
    settings: dict,
    method: GlobalRecord,
    qk: list[QKAttribution] | None = None,
) -> Graph:
    """A ``Graph`` over units (sorted, so in stage order) at position 0: ``edges`` maps
    (source unit, target unit) to a weight; a node's activation is its unit's mean activation
    when active, ``occurrences`` its firings in the sample (a logit's: where its token came
    next, and its record's probability the mean probability there)."""
    units = stats.units
    at = {u: i for i, u in enumerate(order)}
    described = [units.describe(u) for u in order]
    n = len(order)
    kind = torch.tensor([int(d[0]) for d in described], dtype=torch.long)
    stage = torch.tensor([d[1] for d in described], dtype=torch.long)
    index = torch.tensor([d[2] for d in described], dtype=torch.long)
    rows, cols = [at[t] for _, t in edges], [at[s] for s, _ in edges]
    values = np.array(list(edges.values()), dtype=np.float32)
    weights = torch.zeros(n)
    for u, w in target_weight.items():
        weights[at[u]] = w
    order_t = torch.tensor(order, dtype=torch.long)
    count = stats.unit_count[order_t]
    mean = stats.unit_activity[order_t] / count.clamp(min=1)
    promotes = promoted_tokens(replacement.read_write(), kind, stage, index)
    pairs = zip(described, mean.tolist(), strict=True)
    logits = [LogitRecord(d[2], None, float(m)) for d, m in pairs if d[0] == Kind.LOGIT]
    referenced = {d[2] for d in described if d[0] in (Kind.EMBEDDING, Kind.LOGIT)}
    referenced |= set(promotes[promotes >= 0].tolist())
    # and the tokens its QK records name, most of them no node (a viewer read "token id 21")
    referenced |= {s.index for a in qk or [] for s in a.named.values() if s.kind == Kind.EMBEDDING}
    return Graph(
        prompt="",
        tokens=[],
        token_strings=[],
        n_layers=units.n_layers,
        kind=kind,
        stage=stage,
        pos=torch.zeros(n, dtype=torch.long),
        index=index,
        activation=mean,
        value=torch.full((n,), float("nan")),
        bias=torch.zeros(n),
        target_weight=weights,
        edges=sp.csr_array((values, (rows, cols)), shape=(n, n)),
        attends=torch.full((n,), -1, dtype=torch.long),
        attention=torch.full((n,), float("nan")),
        promotes=promotes,
        logit_targets=logits,
        token_text={t: token_text(tokenizer, t) for t in sorted(referenced)}
        if tokenizer is not None
        else {},
        mode=stats.meta["mode"],
        group_size=replacement.group_size,
        positional=False,
        qk=qk or [],
        occurrences=count.clone(),
        model={"name": replacement.model_name or "unnamed"},
        settings={**settings, "statistics": _provenance(stats)},
        global_record=method,
    )


def _provenance(stats: Statistics) -> dict:
    """The statistics' settings and size, for ``Graph.settings`` (the identity hashes stay in
    the statistics file; timings stay out of graph files, which are then reproducible)."""
    meta = {k: v for k, v in stats.meta.items() if k not in ("identity", "seconds")}
    return meta | {"sample": stats.view_name}
