"""QK attribution: why a Lorsa head attends where it does, as exact query-node x key-node terms.

With LayerNorm scales frozen, the residual stream at a position is the sum of its sources'
writes plus a constant (decoder biases), so a QK head's pre-softmax score at (q, k),

    score = (x_q W_Q + b_Q) . (x_k W_K + b_K) / sqrt(d_qk),   x = P resid / sigma1,

is a bilinear form: with ``u_s = P write_s / sigma1[q] W_Q`` for each source at q (``u_0`` the
constant part plus ``b_Q``) and ``v_t`` likewise at k, ``score = sum_{s,t} u_s . v_t / sqrt(d_qk)``
over sources *and* the bias side. Every term is kept in the sums; the top ones are reported.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from replacement.model import ReplacementModel, center

from .attribution import PromptRun, pad_by_position, run_for_graph
from .graph import (
    QK_BIAS,
    Graph,
    NamedSide,
    QKAttribution,
    QKPair,
    QKReason,
    QKSource,
    checked_count,
    checked_flag,
    checked_fraction,
    checked_index,
)
from .nodes import Kind, lorsa_stage
from .threads import single_thread
from .units import Units


def reference_queries(n_pos: int) -> Tensor:
    """The queries a QK reason's mean query averages: the prompt after BOS (BOS alone for a
    one-token prompt)."""
    return torch.arange(1, n_pos) if n_pos > 1 else torch.zeros(1, dtype=torch.long)


@dataclass
class Deviations:
    """A batch of records' unit deviations on both sides (``QKSides.deviations``): ``du``
    (record, query unit, d_qk) over the units ``q_codes``, ``dv`` likewise over ``k_codes``."""

    du: Tensor
    dv: Tensor
    q_codes: Tensor
    k_codes: Tensor


@dataclass
class SpecificTerms:
    """A batch's specific tables ``du_s . dv_t / sqrt(d_qk)`` (``QKSides.specific_terms``):
    per record the total magnitude of the terms, the largest terms as flat indices
    ``query unit * n_key_units + key unit`` and values (largest first), and each query
    (key) unit's total with every partner."""

    magnitude: Tensor
    flat: Tensor
    values: Tensor
    query_units: Tensor
    key_units: Tensor


class QKSides:
    """Every source's query- and key-side vector for every QK head of one layer, computed once:
    ``query[s, h] = P write_s / sigma1[pos_s] W_Q^h`` and the bias side per position (constant
    residual part, plus ``b_Q``), likewise for keys, padded per position so that the term
    tables of many (head, query, key) triples are one batched product.

    ``at[p, j]`` is the j-th source at position p (``valid`` marks the real ones); row and
    column 0 of a table are the bias side, row/column ``1 + j`` the source ``at[p, j]``.
    """

    def __init__(self, run: PromptRun, replacement: ReplacementModel, layer: int):
        lorsa = replacement.lorsas[layer]
        self.run, self.lorsa, self.layer, stage = run, lorsa, layer, lorsa_stage(layer)
        n_src, n_pos = run.stage_start(stage), len(run.tokens)
        inv_sigma = 1 / run.sigma1[layer]
        self.at, self.valid = pad_by_position(run.pos[:n_src], n_pos)
        self.slot_valid = torch.cat([torch.ones(n_pos, 1, dtype=torch.bool), self.valid], dim=1)
        self._entry_cache: tuple | None = None  # ``_entries`` and the unit table it is for
        self._head_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # ``head_vectors``
        parts = center(run.write[:n_src]) * inv_sigma[run.pos[:n_src], None]
        parts = parts[self.at] * self.valid[..., None]  # pos slot d
        bias = center(run.resid_bias[stage])[:, None] * inv_sigma[:, None, None]  # pos 1 d
        parts = torch.cat([bias, parts], dim=1)
        self.query = torch.einsum("psd,hde->pshe", parts, lorsa.W_Q)
        self.key = torch.einsum("psd,hde->pshe", parts, lorsa.W_K)
        self.query[:, 0] += lorsa.b_Q
        self.key[:, 0] += lorsa.b_K

    def head_vectors(self, qk_head: int) -> tuple[np.ndarray, np.ndarray]:
        """QK head ``qk_head``'s query- and key-side vectors, (pos, 1 + slots, d_qk) in float64
        with the padding slots zero, read-only; made once per head (a QK side's flows ask for
        one head's at each of its records: 0.7-1.4 s of a 127-token trace made them again)."""
        qk_head = int(qk_head)
        if qk_head not in self._head_cache:
            valid = self.slot_valid.numpy()[..., None]
            sides = tuple(np.multiply(x.numpy()[:, :, qk_head], valid, dtype=np.float64)
                          for x in (self.query, self.key))  # fmt: skip
            for x in sides:
                x.flags.writeable = False
            self._head_cache[qk_head] = sides
        return self._head_cache[qk_head]

    def terms(self, qk_head: Tensor, query: Tensor, key: Tensor) -> Tensor:
        """(triple, 1 + slots, 1 + slots) score terms; each table sums to its score."""
        u = self.query[query, :, qk_head]  # triple slot d_qk
        v = self.key[key, :, qk_head]
        return u @ v.transpose(1, 2) / math.sqrt(self.lorsa.cfg.d_qk)

    def deviations(
        self, qk_heads: Tensor, queries: Tensor, keys: Tensor, unit: Tensor
    ) -> Deviations:
        """Each record's units' deviations on both sides (``QKReason``), for a batch of
        (QK head, query, key) records at once: query unit ``s`` has ``du_s = sum_p wq[p]
        u_s(p)`` and key unit ``t`` has ``dv_t = sum_p wk[p] v_t(p)`` with the weights of
        ``reference_weights`` (a unit absent at p counts 0 there). The query side's units are
        those of the whole prompt, the key side's those at positions ``<= max(queries)``: one
        unit list for the batch; a unit outside a record's reference positions has a zero
        deviation in it. ``unit[p, 1 + slot]`` names each slot's unit (any integer codes;
        column 0 is the bias slot's own)."""
        p, slot, codes, which = self._entries(unit)
        n_keys = int(torch.searchsorted(p, int(queries.max()), right=True))
        if n_keys == len(p):
            k_codes, k_which = codes, which
        else:
            k_codes, k_which = torch.unique(unit[p[:n_keys], slot[:n_keys]], return_inverse=True)
        wq, wk = self._weights(queries, keys)

        def deviation(vectors: Tensor, weight: Tensor, n_entries: int, n_units: int, which):
            vec = vectors[p[:n_entries], slot[:n_entries]][:, qk_heads]  # entry record d
            vec = vec * weight.T[p[:n_entries], :, None]
            dev = torch.zeros(n_units, *vec.shape[1:]).index_add_(0, which, vec)
            return dev.transpose(0, 1)  # record unit d

        return Deviations(
            du=deviation(self.query, wq, len(p), len(codes), which),
            dv=deviation(self.key, wk, n_keys, len(k_codes), k_which),
            q_codes=codes,
            k_codes=k_codes,
        )

    def contrasts(
        self, qk_heads: Tensor, queries: Tensor, dev: Deviations, top: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The query-slot x key-unit terms of ``score(q, key) - mean_{p <= q} score(q, p)``
        for a batch: what makes the key stand out from the keys the query could have read (a
        uniform baseline; the attention-weighted one is ``score(q, key)`` itself when
        attention is sharp). The key side's weights are the ``QKReason`` key deviation's, so a
        unit present at every key with the same weight (a dense feature, the bias) cancels,
        which a raw pair table cannot show. Returns each record's contrast (its table's sum)
        and the table's ``top`` largest terms as flat indices ``(1 + slot) * n_key_units +
        key unit`` and values (``product_top``); padding slots' rows are zero."""
        u = self.query[queries, :, qk_heads] / math.sqrt(self.lorsa.cfg.d_qk)  # record 1+slot d
        _, flat, values = product_top(u, dev.dv.transpose(1, 2), top)
        return (u.sum(1) * dev.dv.sum(1)).sum(-1), flat, values

    def reason_parts(
        self, qk_heads: Tensor, queries: Tensor, keys: Tensor, dev: Deviations, top: int
    ) -> tuple[dict[str, Tensor], SpecificTerms]:
        """The ``QKReason`` split of each record's score (``circuits.graph.QKReason``): the
        three named mean parts and ``specific`` per record, and the summary of the specific
        tables ``du_s . dv_t`` (``specific_terms``)."""
        scale = math.sqrt(self.lorsa.cfg.d_qk)

        def total_at(vectors: Tensor, at: Tensor) -> Tensor:
            return (vectors[at, :, qk_heads] * self.slot_valid[at, :, None]).sum(1)

        du_total, dv_total = dev.du.sum(1), dev.dv.sum(1)
        u_bar = total_at(self.query, queries) - du_total
        v_bar = total_at(self.key, keys) - dv_total
        parts = {
            "mean_query_mean_key": (u_bar * v_bar).sum(-1) / scale,
            "query_vs_mean_key": (du_total * v_bar).sum(-1) / scale,
            "mean_query_vs_key": (u_bar * dv_total).sum(-1) / scale,
            "specific": (du_total * dv_total).sum(-1) / scale,
        }
        return parts, self.specific_terms(dev, top)

    def specific_terms(self, dev: Deviations, top: int) -> SpecificTerms:
        """The specific tables ``du_s . dv_t / sqrt(d_qk)`` of a batch, summarised without
        holding them (``SpecificTerms``, ``product_top``)."""
        du = dev.du / math.sqrt(self.lorsa.cfg.d_qk)
        magnitude, flat, values = product_top(du, dev.dv.transpose(1, 2), top)
        return SpecificTerms(
            magnitude=magnitude,
            flat=flat,
            values=values,
            query_units=torch.bmm(du, dev.dv.sum(1)[..., None]).squeeze(2),
            key_units=torch.bmm(dev.dv, du.sum(1)[..., None]).squeeze(2),
        )

    def units_up_to(self, unit: Tensor) -> Tensor:
        """Per position p, how many distinct units the slots at positions ``<= p`` hold: the
        key side's unit count for a batch whose last query is p."""
        p, _, codes, which = self._entries(unit)
        first = torch.full((len(codes),), self.query.shape[0], dtype=torch.long)
        first = first.scatter_reduce(0, which, p, "amin")
        return torch.bincount(first, minlength=self.query.shape[0]).cumsum(0)

    def reference_weights(
        self, query: int, key: int, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """Per position, the weight of its vector in ``query_at`` (this query minus the mean
        of ``reference_queries``) and in ``key_at`` (this key minus the mean of keys
        ``0..query``): the deviations a ``QKReason`` splits."""
        wq, wk = self._weights(torch.tensor([query]), torch.tensor([key]), dtype)
        return wq[0], wk[0]

    def _weights(
        self, queries: Tensor, keys: Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """``reference_weights`` of a batch of records: (record, pos) each."""
        n, rows = self.query.shape[0], torch.arange(len(queries))
        refs = reference_queries(n)
        wq = torch.zeros(len(queries), n, dtype=dtype)
        wq[:, refs] = -1 / len(refs)
        wq[rows, queries] += 1
        readable = (torch.arange(n) <= queries[:, None]).to(dtype)
        wk = readable * (-1 / (queries[:, None] + 1).to(dtype))
        wk[rows, keys] += 1
        return wq, wk

    def _entries(self, unit: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The real (position, slot) entries of the prompt in position order, their units'
        codes (unique) and each entry's index among them: the same for every record of the
        layer, so kept per ``unit`` table."""
        if self._entry_cache is None or self._entry_cache[-1] is not unit:
            p, slot = self.slot_valid.nonzero(as_tuple=True)
            codes, which = torch.unique(unit[p, slot], return_inverse=True)
            self._entry_cache = (p, slot, codes, which, unit)
        return self._entry_cache[:4]

    def scores(self, qk_head: Tensor, query: Tensor, key: Tensor) -> Tensor:
        """The scores computed directly from the cached Lorsa input (the check on ``terms``)."""
        x, lorsa = self.run.lorsa_in[self.layer], self.lorsa
        q = torch.einsum("td,tde->te", x[query], lorsa.W_Q[qk_head]) + lorsa.b_Q[qk_head]
        k = torch.einsum("td,tde->te", x[key], lorsa.W_K[qk_head]) + lorsa.b_K[qk_head]
        return (q * k).sum(-1) / math.sqrt(lorsa.cfg.d_qk)


QK_CHUNK = 256  # triples per batched product
REASON_ELEMENTS = 1 << 23  # tensor entries per batch of reasons (``_explain``)
PRODUCT_BLOCK = 1 << 18  # table entries formed at once (``product_top``)


class SlotNames:
    """Node ids of a layer's slots (``QKSides``), made when asked for: a prompt has thousands
    of sources and a record names a few. ``names(p, j)`` is the id of slot ``j`` at position
    ``p`` (slot 0, the bias side, and padding: None); ``names.slot_of(p)`` maps the unit code
    of each source at ``p`` to its slot (``unit``: ``slot_units``)."""

    def __init__(
        self, run: PromptRun, side: QKSides, unit: Tensor | None = None, units: Units | None = None
    ):
        self.at, self.valid = side.at.tolist(), side.valid.tolist()
        self.units = units
        self.fields: dict[str, NamedSide] = {}  # of every id made, for ``QKAttribution.named``
        self.source = list(
            zip(run.kind.tolist(), run.stage.tolist(), run.pos.tolist(), run.index.tolist(),
                strict=True)
        )  # fmt: skip
        self.unit = None if unit is None else unit.tolist()
        self._slot_of: dict[int, dict[int, int]] = {}
        self._ids: dict[tuple[int, int], str] = {}

    def __call__(self, pos: int, slot: int) -> str | None:
        if slot == 0 or not self.valid[pos][slot - 1]:
            return None
        if (pos, slot) not in self._ids:
            kind, stage, p, index = self.source[self.at[pos][slot - 1]]
            fields = NamedSide(Kind(kind), stage, index, p)
            self._ids[pos, slot] = fields.id
            self.fields[fields.id] = fields
        return self._ids[pos, slot]

    def unit_name(self, code: int) -> str:
        """A unit's id (``slot_units``' code): a node id without its position (``E_{token}``,
        ``{layer}_{index}``, ``{layer}_bias``; ``QK_BIAS`` for the query/key bias side)."""
        units = self.units
        if code == units.total:
            return QK_BIAS
        if code >= units.total + 2:  # a decoder-bias source (slot_units)
            fields = NamedSide(Kind.BIAS, code - units.total - 2, -1, None)
        else:
            fields = units.side(code)
        self.fields[fields.id] = fields
        return fields.id

    def name_fields(self, records: list[QKAttribution]) -> None:
        """Each record's ``named``: the fields of the ids it names, as they were made."""
        for record in records:
            record.name_fields(self.fields.__getitem__)

    def slot_of(self, pos: int) -> dict[int, int]:
        if pos not in self._slot_of:
            row, valid = self.unit[pos], self.valid[pos]
            self._slot_of[pos] = {row[j]: j for j in range(1, len(row)) if valid[j - 1]}
        return self._slot_of[pos]


@torch.no_grad()
def qk_attribution(
    replacement: ReplacementModel,
    graph: Graph,
    nodes: list[int] | Tensor | None = None,
    *,
    key_mass: float | None = None,
    top: int = 10,
    run: PromptRun | None = None,
    contrast: bool = False,
    reason: bool = False,
    sides: dict[int, QKSides] | None = None,
) -> list[QKAttribution]:
    """QK attributions for the Lorsa heads ``nodes`` of ``graph`` (default: all of them).

    For each head: the key it reads (``Graph.attends``: where its activation comes from most),
    and with ``key_mass`` every key whose attention weight is at least ``key_mass``. Heads of
    one QK group at one query reading one key share the record. ``graph`` may be
    pruned; terms still run over every source of the prompt (a pruned node keeps its id).
    ``contrast`` adds each record's contrast split (``QKSides.contrasts``), whose key side is
    units (``E_{token}``, ``{layer}_{index}`` as in node ids without the position, ``bias``).
    ``reason`` adds each record's ``QKReason`` (both sides' always-on parts named, the rest
    split into query-unit x key-unit pairs). Both are computed for a batch of a layer's
    records at once. The list is also stored in ``graph.qk``. ``sides`` (optional): a dict of
    each layer's ``QKSides`` of this run, read and filled (``qk_sources`` shares it).
    """
    checked_count(top, "top")
    contrast, reason = checked_flag(contrast, "contrast"), checked_flag(reason, "reason")
    if key_mass is not None:
        key_mass = checked_fraction(key_mass, "key_mass")
    run = run_for_graph(replacement, graph, run)
    if nodes is None:
        nodes = (graph.kind == Kind.LORSA).nonzero().squeeze(1)
    wanted: set[tuple[int, int, int, int]] = set()
    nodes = graph.node_indices(nodes)
    kinds = graph.kind[nodes].tolist()
    if any(k != Kind.LORSA for k in kinds):
        bad = int(nodes[[k != Kind.LORSA for k in kinds]][0])
        raise ValueError(f"node {graph.ids[bad]} is a {graph.kinds[bad]}, not a Lorsa head")
    layers, queries = graph.layer[nodes].tolist(), graph.pos[nodes].tolist()
    qk_heads = graph.qk_head(nodes).tolist()  # its group size is the set's (run_for_graph)
    read = graph.attends[nodes].tolist()
    if -1 in read:  # a graph file may hold one; -1 would be read as the last key
        bad = int(nodes[read.index(-1)])
        raise ValueError(f"head {graph.ids[bad]} reads no key (attends -1): its graph holds "
                         "no key for it to trace")  # fmt: skip
    for layer, q, h, k in set(zip(layers, queries, qk_heads, read, strict=True)):
        wanted.add((layer, h, q, k))
        if key_mass is not None:
            pattern = run.patterns[layer][h, q, : q + 1]
            wanted |= {(layer, h, q, int(j)) for j in (pattern >= key_mass).nonzero()[:, 0]}
    result = []
    units = Units.of(replacement)
    triples = torch.tensor(sorted(wanted), dtype=torch.long).reshape(-1, 4)
    # The contrast split and the reason are thousands of small products: one thread
    # (``single_thread``); the plain records are a few large ones per layer.
    with single_thread() if contrast or reason else nullcontext():
        for layer in triples[:, 0].unique().tolist():
            side = _sides_of(sides, run, replacement, layer)
            unit = slot_units(run, side, units) if contrast or reason else None
            names = SlotNames(run, side, unit, units)
            layer_triples, records = triples[triples[:, 0] == layer], []
            for chunk in layer_triples.split(QK_CHUNK):
                h, q, k = chunk[:, 1], chunk[:, 2], chunk[:, 3]
                terms = side.terms(h, q, k)
                records += _summaries(
                    terms, side.scores(h, q, k), chunk, run.patterns[layer][h, q, k], names, top
                )
            if contrast or reason:
                _explain(side, records, units, unit, names, top, contrast=contrast, reason=reason)
            names.name_fields(records)
            result += records
    graph.qk = result
    return result


QK_SOURCES = 3  # per side of a QK record: the largest positive source groups it keeps


def _sides_of(sides: dict | None, run: PromptRun, replacement, layer: int) -> QKSides:
    """Layer ``layer``'s ``QKSides`` of ``run``: from ``sides`` when it holds them (the caller's
    cache, for this very run), else built (and kept there when ``sides`` is a dict)."""
    if sides is not None and layer in sides:
        if sides[layer].run is not run:
            raise ValueError("sides holds another run's QKSides: pass a dict for this run")
        return sides[layer]
    side = QKSides(run, replacement, layer)
    if sides is not None:
        sides[layer] = side
    return side


@torch.no_grad()
def qk_sources(
    replacement: ReplacementModel,
    full: Graph,
    records: list[QKAttribution],
    run: PromptRun | None = None,
    *,
    top: int = QK_SOURCES,
    sides: dict[int, QKSides] | None = None,
) -> None:
    """Fill each record's ``sources``: its ``query_at`` and ``key_at`` (the query's own vector
    against the key's deviation, the query's deviation against the key's own vector: the
    mechanism summary's "query side from" / "key side from") split exactly by node through
    ``full`` (``circuits.flows.many_qk_side_flows``), heads grouped by (layer, position, the
    key they read), and per side the ``top`` groups of heads, features and error nodes with
    the largest positive totals (``QKSource``), and the side's own token (its embedding at the
    query or the key: the current token an induction head's query holds, which no head moves
    there; a reviewer found it the largest source of 124 of 212 sides). Other tokens and the
    bias nodes are left out: a token reaches another position only through heads there, and
    those heads are what a drawing can show. ``full`` is the unpruned graph of the records'
    prompt (only its flows are exact); the records may be a pruned copy's. ``sides``: as
    ``qk_attribution``'s."""
    from .flows import EdgeSweep, many_qk_side_flows

    checked_count(top, "top")
    run = run_for_graph(replacement, full, run)
    for a in records:
        a.sources = []
        a.name_fields(a.named.__getitem__)  # the former sources' members no longer named
    # A layer's heads read only what the layers below wrote: layer 0's sides hold token
    # embeddings and constants alone, and each layer's records are swept from its own stage.
    records = [a for a in records if a.layer > 0]
    if not records:
        return
    sweep = EdgeSweep(full, run)
    flows = {}
    for layer in sorted({a.layer for a in records}):
        side = _sides_of(sides, run, replacement, layer)
        mine = [a for a in records if a.layer == layer]
        requests = [(side, a.qk_head, a.query, a.key) for a in mine]
        flows |= dict(zip(map(id, mine), many_qk_side_flows(full, requests, sweep), strict=True))
    kind, layer, pos = full.kind.numpy(), full.layer.numpy(), full.pos.numpy()
    attends = full.attends.numpy()
    eligible = np.isin(kind, [Kind.LORSA, Kind.TRANSCODER, Kind.ERROR, Kind.EMBEDDING])
    # One group code per eligible node: heads by (layer, position, key read), others alone.
    grouped = (kind == Kind.LORSA) & (attends >= 0)
    key = np.where(grouped, (layer * len(run.tokens) + pos) * len(run.tokens) + attends,
                   -1 - np.arange(full.n_nodes))[eligible]  # fmt: skip
    _, code = np.unique(key, return_inverse=True)
    nodes = np.flatnonzero(eligible)
    for a in records:
        q_flow, k_flow, _ = flows[id(a)]
        for side, flow, at in (("query", q_flow, a.query), ("key", k_flow, a.key)):
            # of the tokens, the side's own alone
            part = np.where((kind[nodes] == Kind.EMBEDDING) & (pos[nodes] != at), 0.0, flow[nodes])
            totals = np.bincount(code, weights=part)
            best = [g for g in np.argsort(-totals, kind="stable")[:top] if totals[g] > 0]
            for g in best:
                members = nodes[(code == g) & (part != 0)]
                members = members[np.argsort(-flow[members], kind="stable")]
                first = int(members[0])
                a.sources.append(QKSource(
                    side=side, kind=Kind(int(kind[first])).label, layer=int(layer[first]),
                    pos=int(pos[first]),
                    attends=int(attends[first]) if kind[first] == Kind.LORSA else None,
                    members=[full.ids[m] for m in members.tolist()], value=float(totals[g]),
                ))  # fmt: skip
        known = a.named | {m: full.side(full.id_to_index[m]) for x in a.sources for m in x.members}
        a.name_fields(known.__getitem__)


def _summaries(terms, scores, triples, attention, names: SlotNames, top) -> list[QKAttribution]:
    """Top pairs and marginals of each table, as ``QKAttribution`` records."""
    n = terms.shape[-1]
    flat = terms.flatten(1)
    k = min(top, flat.shape[1])
    best = flat.abs().topk(k, dim=-1).indices
    best_vals = flat.gather(1, best)
    rest = scores - best_vals.sum(1)
    q_marg, k_marg = terms.sum(2), terms.sum(1)
    q_best = q_marg.abs().topk(min(top, n), dim=-1).indices
    k_best = k_marg.abs().topk(min(top, n), dim=-1).indices
    out = []
    rows = zip(
        triples.tolist(), attention.tolist(), scores.tolist(), best.tolist(),
        best_vals.tolist(), rest.tolist(), q_best.tolist(), q_marg.gather(1, q_best).tolist(),
        k_best.tolist(), k_marg.gather(1, k_best).tolist(), strict=True,
    )  # fmt: skip
    for (layer, h, q, k_), att, score, b, bv, r, qb, qv, kb, kv in rows:
        out.append(
            QKAttribution(
                layer=layer, qk_head=h, query=q, key=k_, attention=att, score=score,
                pairs=[QKPair(names(q, j // n), names(k_, j % n), v)
                       for j, v in zip(b, bv, strict=True) if v != 0.0],
                query_marginals=[(names(q, j), v) for j, v in zip(qb, qv, strict=True) if v != 0.0],
                key_marginals=[(names(k_, j), v) for j, v in zip(kb, kv, strict=True) if v != 0.0],
                rest=r,
            )
        )  # fmt: skip
    return out


def product_top(left: Tensor, right: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    """Of each table ``left[r] @ right[r]`` of a batch (record, n, d) x (record, d, m): its
    total magnitude and its ``top`` largest entries (flat indices ``row * m + column``, values,
    largest first: ``top_entries``), without holding the tables. They are formed a block of
    rows at a time that stays in cache: a batch's tables are tens of millions of entries from
    16 tokens on, and passes over them in memory cost more than the products. The top entries
    are exact: they lie in the ``top`` rows of largest maximum, which are formed again."""
    right = right.contiguous()
    n_rec, n_rows, d = left.shape
    n_cols = right.shape[2]
    block = max(1, PRODUCT_BLOCK // max(1, n_rec * n_cols))
    magnitude, row_max = torch.zeros(n_rec), torch.zeros(n_rec, n_rows)
    for i in range(0, n_rows if n_cols else 0, block):
        m = torch.bmm(left[:, i : i + block], right).abs_()
        magnitude += m.sum((1, 2))
        row_max[:, i : i + block] = m.amax(2)
    rows = row_max.topk(min(top, n_rows), dim=1).indices  # record row
    table = torch.bmm(left.gather(1, rows[..., None].expand(-1, -1, d)), right)
    in_rows, values = top_entries(table, top)
    flat = rows.gather(1, in_rows // max(n_cols, 1)) * n_cols + in_rows % max(n_cols, 1)
    return magnitude, flat, values


def top_entries(table: Tensor, k: int, magnitude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` entries of largest magnitude of a 2-D ``table`` (or of each table of a 3-D
    batch), largest first, as flat indices and values: ``topk`` of ``|table|.flatten()``, taken
    among the ``k`` rows of largest row maximum only (any of the ``k`` largest entries lies in
    one of those rows: a row outside them has ``k`` rows at least as large above it), so that
    a QK reason's table of thousands x thousands of units costs one pass, not a sort.
    ``magnitude``: ``|table|`` when the caller has it."""
    if table.dim() == 2:
        flat, values = top_entries(table[None], k, None if magnitude is None else magnitude[None])
        return flat[0], values[0]
    magnitude = table.abs() if magnitude is None else magnitude
    _, n_rows, n_cols = table.shape
    rows = magnitude.amax(2).topk(min(k, n_rows), dim=1).indices  # batch row
    candidates = magnitude.gather(1, rows[..., None].expand(-1, -1, n_cols)).flatten(1)
    best = candidates.topk(min(k, candidates.shape[1]), dim=1).indices
    flat = rows.gather(1, best // n_cols) * n_cols + best % n_cols
    return flat, table.flatten(1).gather(1, flat)


def _explain(
    side: QKSides, records: list[QKAttribution], units: Units, unit: Tensor, names: SlotNames,
    top: int, *, contrast: bool, reason: bool,
) -> None:  # fmt: skip
    """Fill the contrast split (``record.contrast``, its ``top`` largest query-node x key-unit
    terms) and/or the ``QKReason`` of a layer's records, a batch at a time: records in query
    order, as many as keep a batch's largest tensors (each record's entries' vectors, its
    table's top rows: ``product_top``) under ``REASON_ELEMENTS`` entries."""
    units_up_to = side.units_up_to(unit).tolist()
    entries = int(side.slot_valid.sum()) * side.lorsa.cfg.d_qk
    top_rows = min(top, max(units_up_to[-1], side.slot_valid.shape[1]))
    batches: list[list[QKAttribution]] = [[]]
    for record in sorted(records, key=lambda r: r.query):
        per_record = max(entries, top_rows * units_up_to[record.query])
        if batches[-1] and (len(batches[-1]) + 1) * per_record > REASON_ELEMENTS:
            batches.append([])
        batches[-1].append(record)
    for batch in batches:
        if not batch:
            continue
        heads, queries, keys = (
            torch.tensor([getattr(r, f) for r in batch]) for f in ("qk_head", "query", "key")
        )
        dev = side.deviations(heads, queries, keys, unit)
        if contrast:
            _add_contrasts(batch, side.contrasts(heads, queries, dev, top), dev, units, names, top)
        if reason:
            parts, terms = side.reason_parts(heads, queries, keys, dev, top)
            _add_reasons(batch, parts, terms, dev, units, names, top)


def _add_contrasts(batch, contrasts, dev: Deviations, units, names, top: int) -> None:
    total, flat, values = (t.tolist() for t in contrasts)
    n, k_codes = len(dev.k_codes), dev.k_codes.tolist()
    for record, contrast, best, best_values in zip(batch, total, flat, values, strict=True):
        record.contrast = contrast
        record.contrast_pairs = [
            QKPair(names(record.query, j // n), names.unit_name(k_codes[j % n]), v)
            for j, v in zip(best, best_values, strict=True)
            if v != 0
        ]


def _add_reasons(batch, parts, terms: SpecificTerms, dev: Deviations, units, names, top) -> None:
    """Each record's ``QKReason`` from its parts and specific terms; a side's unit is named by
    its node id where present at the record's query (key) and by its unit id elsewhere."""
    n = len(dev.k_codes)
    q_codes, k_codes = dev.q_codes.tolist(), dev.k_codes.tolist()
    total, listed = terms.magnitude.tolist(), terms.values.abs().sum(1).tolist()
    q_marg, k_marg = terms.query_units, terms.key_units
    q_best = q_marg.abs().topk(min(top, q_marg.shape[1]), dim=1).indices
    k_best = k_marg.abs().topk(min(top, k_marg.shape[1]), dim=1).indices
    columns = (
        {name: value.tolist() for name, value in parts.items()}, terms.flat.tolist(),
        terms.values.tolist(), q_best.tolist(), q_marg.gather(1, q_best).tolist(),
        k_best.tolist(), k_marg.gather(1, k_best).tolist(),
    )  # fmt: skip
    part_values, flat, values, q_best, q_values, k_best, k_values = columns

    def namer(codes: list[int], pos: int):
        slot_of = names.slot_of(pos)

        def name(j: int) -> str | None:
            code = codes[j]
            if code == units.total:
                return None
            return names(pos, slot_of[code]) if code in slot_of else names.unit_name(code)

        return name

    for r, record in enumerate(batch):
        q_name, k_name = namer(q_codes, record.query), namer(k_codes, record.key)
        pairs = [
            QKPair(q_name(j // n), k_name(j % n), v)
            for j, v in zip(flat[r], values[r], strict=True)
            if v != 0
        ]
        mine = {name: value[r] for name, value in part_values.items()}
        record.reason = QKReason(
            **mine,
            pairs=pairs,
            rest=mine["specific"] - sum(p.value for p in pairs),
            rest_share=max(0.0, total[r] - listed[r]) / total[r] if total[r] > 0 else 0.0,
            query_units=[
                (q_name(j), v) for j, v in zip(q_best[r], q_values[r], strict=True) if v != 0
            ],
            key_units=[
                (k_name(j), v) for j, v in zip(k_best[r], k_values[r], strict=True) if v != 0
            ],
        )


def slot_units(run: PromptRun, side: QKSides, units: Units) -> Tensor:
    """(pos, 1 + slot) unit codes of a layer's slots: ``units.total`` for the bias side,
    ``units.total + 1`` for padding, ``units.total + 2 + stage`` for a decoder-bias source,
    the ``Units`` number otherwise."""
    codes = units.of_nodes(run.kind, run.stage, run.index)
    is_bias = run.kind == Kind.BIAS
    codes[is_bias] = units.total + 2 + run.stage[is_bias]
    codes = codes[side.at]
    codes[~side.valid] = units.total + 1
    bias = torch.full((len(codes), 1), units.total)
    return torch.cat([bias, codes], dim=1)  # pos 1+slot


@torch.no_grad()
def qk_record(
    replacement: ReplacementModel,
    run: PromptRun,
    layer: int,
    qk_head: int,
    query: int,
    key: int,
    *,
    top: int = 10,
    sides: dict[int, tuple[QKSides, Tensor, SlotNames]] | None = None,
) -> QKAttribution:
    """One QK attribution with its ``QKReason``, at any (layer, QK head, query, key) of the
    run (whether or not a graph keeps the head): integers in range, the key at or before the
    query (a later key is masked). ``sides`` (optional) caches each layer's ``QKSides``, slot
    units and slot names across calls."""
    units = Units.of(replacement)
    layer = units.check_layer(layer)
    qk_head = checked_index(qk_head, "qk_head", replacement.lorsas[layer].cfg.n_qk_heads)
    query = checked_index(query, "query", len(run.tokens))
    key = checked_index(key, "key", len(run.tokens))
    if key > query:
        raise ValueError(f"key {key} is after query {query}: a query reads keys 0..{query} only")
    checked_count(top, "top")
    sides = {} if sides is None else sides
    if layer not in sides:
        side = QKSides(run, replacement, layer)
        unit = slot_units(run, side, units)
        sides[layer] = (side, unit, SlotNames(run, side, unit, units))
    side, unit, names = sides[layer]
    triple = torch.tensor([[layer, qk_head, query, key]])
    h, q, k = triple[:, 1], triple[:, 2], triple[:, 3]
    terms = side.terms(h, q, k)
    records = _summaries(
        terms, side.scores(h, q, k), triple, run.patterns[layer][h, q, k], names, top
    )
    _explain(side, records, units, unit, names, top, contrast=False, reason=True)
    names.name_fields(records)
    return records[0]
