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

import torch
from torch import Tensor

from replacement.model import ReplacementModel, center

from .attribution import PromptRun, pad_by_position, run_prompt, source_ids
from .graph import Graph, QKAttribution, QKPair, QKReason
from .nodes import Kind, lorsa_stage, unit_id
from .units import Units


def reference_queries(n_pos: int) -> Tensor:
    """The queries a QK reason's mean query averages: the prompt after BOS (BOS alone for a
    one-token prompt)."""
    return torch.arange(1, n_pos) if n_pos > 1 else torch.zeros(1, dtype=torch.long)


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
        self._entry_cache: dict = {}  # ``_entries`` by (positions, unit table)
        parts = center(run.write[:n_src]) * inv_sigma[run.pos[:n_src], None]
        parts = parts[self.at] * self.valid[..., None]  # pos slot d
        bias = center(run.resid_bias[stage])[None, None] * inv_sigma[:, None, None]  # pos 1 d
        parts = torch.cat([bias, parts], dim=1)
        self.query = torch.einsum("psd,hde->pshe", parts, lorsa.W_Q)
        self.key = torch.einsum("psd,hde->pshe", parts, lorsa.W_K)
        self.query[:, 0] += lorsa.b_Q
        self.key[:, 0] += lorsa.b_K

    def terms(self, qk_head: Tensor, query: Tensor, key: Tensor) -> Tensor:
        """(triple, 1 + slots, 1 + slots) score terms; each table sums to its score."""
        u = self.query[query, :, qk_head]  # triple slot d_qk
        v = self.key[key, :, qk_head]
        return u @ v.transpose(1, 2) / math.sqrt(self.lorsa.cfg.d_qk)

    def contrast(self, qk_head: int, query: int, key: int, unit: Tensor) -> tuple[Tensor, Tensor]:
        """Query-slot x key-unit terms of ``score(q, key) - mean_{p <= q} score(q, p)``: what
        makes ``key`` stand out from the keys the query could have read (a uniform baseline;
        the attention-weighted one is ``score(q, key)`` itself when attention is sharp).
        ``unit[p, 1 + slot]`` names each key slot's unit (any integer codes; column 0 is the
        bias slot's own): a unit present at every key with the same weight (a dense feature,
        the bias) cancels, which a raw pair table cannot show. Returns the table
        (1 + slots, units) over the units present at keys <= q, and those units' codes; its
        columns sum over each unit's occurrences. Padding slots take no part."""
        weight = torch.full((query + 1,), -1 / (query + 1))
        weight[key] += 1
        real = self.slot_valid[: query + 1]  # pos 1+slot
        keys = self.key[: query + 1, :, qk_head][real] * weight[real.nonzero()[:, 0], None]
        present, which = torch.unique(unit[: query + 1][real], return_inverse=True)
        delta = torch.zeros(len(present), keys.shape[-1]).index_add_(0, which, keys)
        return self.query[query, :, qk_head] @ delta.T / math.sqrt(self.lorsa.cfg.d_qk), present

    def reason(
        self, qk_head: int, query: int, key: int, unit: Tensor, top: int = 10
    ) -> tuple[dict[str, float], Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The ``QKReason`` split of ``score(query, key)`` (``circuits.graph.QKReason``):
        the three named mean parts and the specific table ``du_s . dv_t`` over units.

        Reference positions: queries 1..n-1 (the prompt after BOS; 0 alone for a one-token
        prompt), keys 0..query. ``unit[p, 1 + slot]`` names each slot's unit as in
        ``contrast``. Returns the parts, the table (query units, key units), both sides' unit
        codes, and each side's units present at the query / at the key (bool)."""
        n = self.query.shape[0]
        scale = math.sqrt(self.lorsa.cfg.d_qk)
        refs = reference_queries(n)
        q_weight, k_weight = self.reference_weights(query, key)

        def split(vectors: Tensor, weight: Tensor, at: int, positions: Tensor):
            """Per unit: its deviation (weighted sum); the side's mean and total at ``at``."""
            p, slot, codes, which = self._entries(positions, unit)
            vec = vectors[p, slot]  # entries e
            dev = torch.zeros(len(codes), vec.shape[-1]).index_add_(0, which, vec * weight[p, None])
            here = torch.zeros(len(codes), dtype=torch.bool)
            here[which[p == at]] = True
            total_at = vectors[at][self.slot_valid[at]].sum(0)
            return dev, codes, here, total_at

        q_pos = torch.unique(torch.cat([refs, torch.tensor([query])]))
        k_pos = torch.arange(query + 1)
        du, q_codes, q_here, u_q = split(self.query[:, :, qk_head], q_weight, query, q_pos)
        dv, k_codes, k_here, v_k = split(self.key[:, :, qk_head], k_weight, key, k_pos)
        u_bar, v_bar = u_q - du.sum(0), v_k - dv.sum(0)
        du_total, dv_total = du.sum(0), dv.sum(0)
        parts = {
            "mean_query_mean_key": float(u_bar @ v_bar) / scale,
            "query_vs_mean_key": float(du_total @ v_bar) / scale,
            "mean_query_vs_key": float(u_bar @ dv_total) / scale,
        }
        table = du @ dv.T / scale
        parts["specific"] = float(table.sum())
        return parts, table, q_codes, k_codes, q_here, k_here

    def reference_weights(
        self, query: int, key: int, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """Per position, the weight of its vector in ``query_at`` (this query minus the mean
        of ``reference_queries``) and in ``key_at`` (this key minus the mean of keys
        ``0..query``): the deviations a ``QKReason`` splits."""
        n = self.query.shape[0]
        refs = reference_queries(n)
        q_weight = torch.zeros(n, dtype=dtype)
        q_weight[refs] = -1 / len(refs)
        q_weight[query] += 1
        k_weight = torch.zeros(n, dtype=dtype)
        k_weight[: query + 1] = -1 / (query + 1)
        k_weight[key] += 1
        return q_weight, k_weight

    def _entries(self, positions: Tensor, unit: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The real (position, slot) entries at ``positions``, their units' codes (unique) and
        each entry's index among them: the same for every QK head and, on the query side, for
        every query, so kept per (positions, ``unit``) and reused by all of a layer's reasons."""
        cache = self._entry_cache
        key = (tuple(positions.tolist()), id(unit))
        if key not in cache:
            real = self.slot_valid[positions]  # ref 1+slot
            nz = real.nonzero()
            codes, which = torch.unique(unit[positions][real], return_inverse=True)
            cache[key] = (positions[nz[:, 0]], nz[:, 1], codes, which, unit)  # unit kept alive
        p, slot, codes, which, _ = cache[key]
        return p, slot, codes, which

    def scores(self, qk_head: Tensor, query: Tensor, key: Tensor) -> Tensor:
        """The scores computed directly from the cached Lorsa input (the check on ``terms``)."""
        x, lorsa = self.run.lorsa_in[self.layer], self.lorsa
        q = torch.einsum("td,tde->te", x[query], lorsa.W_Q[qk_head]) + lorsa.b_Q[qk_head]
        k = torch.einsum("td,tde->te", x[key], lorsa.W_K[qk_head]) + lorsa.b_K[qk_head]
        return (q * k).sum(-1) / math.sqrt(lorsa.cfg.d_qk)


QK_CHUNK = 256  # triples per batched product


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
) -> list[QKAttribution]:
    """QK attributions for the Lorsa heads ``nodes`` of ``graph`` (default: all of them).

    For each head: its strongest key, and with ``key_mass`` every key whose attention weight is
    at least ``key_mass``. Heads of one QK group at one query share the result. ``graph`` may be
    pruned; terms still run over every source of the prompt (a pruned node keeps its id).
    ``contrast`` adds each record's contrast split (``QKSides.contrast``), whose key side is
    units (``E_{token}``, ``{layer}_{index}`` as in node ids without the position, ``bias``).
    ``reason`` adds each record's ``QKReason`` (both sides' always-on parts named, the rest
    split into query-unit x key-unit pairs). The list is also stored in ``graph.qk``.
    """
    tokens = torch.tensor(graph.tokens)
    run = run or run_prompt(replacement, tokens, graph.mode, constants=graph.has_constants)
    ids = source_ids(run)
    if nodes is None:
        nodes = (graph.kind == Kind.LORSA).nonzero().squeeze(1)
    wanted: set[tuple[int, int, int, int]] = set()
    nodes = torch.as_tensor(nodes, dtype=torch.long)
    kinds = graph.kind[nodes].tolist()
    if any(k != Kind.LORSA for k in kinds):
        bad = int(nodes[[k != Kind.LORSA for k in kinds]][0])
        raise ValueError(f"node {graph.ids[bad]} is a {graph.kinds[bad]}, not a Lorsa head")
    group_size = replacement.lorsas[0].cfg.group_size
    layers, queries = graph.layer[nodes].tolist(), graph.pos[nodes].tolist()
    qk_heads = (graph.index[nodes] // group_size).tolist()
    for layer, q, h in set(zip(layers, queries, qk_heads, strict=True)):
        pattern = run.patterns[layer][h, q, : q + 1]
        keys = {int(pattern.argmax())}
        if key_mass is not None:
            keys |= set((pattern >= key_mass).nonzero().squeeze(1).tolist())
        wanted |= {(layer, h, q, k) for k in keys}
    result = []
    units = Units.of(replacement)
    triples = torch.tensor(sorted(wanted), dtype=torch.long).reshape(-1, 4)
    for layer in triples[:, 0].unique().tolist():
        side = QKSides(run, replacement, layer)
        if contrast or reason:
            unit = slot_units(run, side, units)
        slot_ids = [
            [None] + [ids[s] if ok else None for s, ok in zip(row, vrow, strict=True)]
            for row, vrow in zip(side.at.tolist(), side.valid.tolist(), strict=True)
        ]
        layer_triples = triples[triples[:, 0] == layer]
        for chunk in layer_triples.split(QK_CHUNK):
            h, q, k = chunk[:, 1], chunk[:, 2], chunk[:, 3]
            terms = side.terms(h, q, k)
            records = _summaries(
                terms, side.scores(h, q, k), chunk, run.patterns[layer][h, q, k], slot_ids, top
            )
            for record in records:
                if contrast:
                    _add_contrast(record, side, units, unit, slot_ids, top)
                if reason:
                    record.reason = qk_reason(side, record, units, unit, slot_ids, top)
            result += records
    graph.qk = result
    return result


def _summaries(terms, scores, triples, attention, slot_ids, top) -> list[QKAttribution]:
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
        q_ids, k_ids = slot_ids[q], slot_ids[k_]
        out.append(
            QKAttribution(
                layer=layer, qk_head=h, query=q, key=k_, attention=att, score=score,
                pairs=[QKPair(q_ids[j // n], k_ids[j % n], v) for j, v in zip(b, bv, strict=True)
                       if v != 0.0],
                query_marginals=[(q_ids[j], v) for j, v in zip(qb, qv, strict=True) if v != 0.0],
                key_marginals=[(k_ids[j], v) for j, v in zip(kb, kv, strict=True) if v != 0.0],
                rest=r,
            )
        )  # fmt: skip
    return out


def top_entries(table: Tensor, k: int, magnitude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` entries of largest magnitude of a 2-D ``table``, largest first, as flat
    indices and values: ``topk`` of ``|table|.flatten()``, taken among the ``k`` rows of
    largest row maximum only (any of the ``k`` largest entries lies in one of those rows: a
    row outside them has ``k`` rows at least as large above it), so that a QK reason's table
    of thousands x thousands of units costs one pass, not a sort. ``magnitude``: ``|table|``
    when the caller has it."""
    magnitude = table.abs() if magnitude is None else magnitude
    n_rows, n_cols = table.shape
    rows = magnitude.amax(1).topk(min(k, n_rows)).indices
    best = magnitude[rows].flatten().topk(min(k, len(rows) * n_cols))
    flat = rows[best.indices // n_cols] * n_cols + best.indices % n_cols
    return flat, table.flatten()[flat]


def _add_contrast(record, side: QKSides, units, unit: Tensor, slot_ids, top: int) -> None:
    """Fill ``record.contrast`` and its ``top`` largest query-node x key-unit terms."""
    table, present = side.contrast(record.qk_head, record.query, record.key, unit)
    present = present.tolist()
    record.contrast = float(table.sum())
    n = table.shape[1]
    flat, values = top_entries(table, top)
    record.contrast_pairs = [
        QKPair(slot_ids[record.query][j // n], _unit_id(units, present[j % n]), v)
        for j, v in zip(flat.tolist(), values.tolist(), strict=True)
        if v != 0
    ]


def _unit_id(units, code: int) -> str:
    """A unit's id: a node id without its position (``E_{token}``, ``{layer}_{index}``,
    ``{layer}_bias``; ``bias`` for the query/key bias side)."""
    if code == units.total:
        return "bias"
    if code >= units.total + 2:  # a decoder-bias source (slot_units)
        return unit_id(Kind.BIAS, code - units.total - 2, -1)
    return units.unit_id(code)


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


def qk_reason(
    side: QKSides, record: QKAttribution, units: Units, unit: Tensor, slot_ids, top: int = 10
) -> QKReason:
    """``record``'s ``QKReason`` (``QKSides.reason``), its sides named by node id where the
    unit is present and by unit id where it is absent."""
    parts, table, q_codes, k_codes, q_here, k_here = side.reason(
        record.qk_head, record.query, record.key, unit, top
    )

    def namer(codes, here, pos):
        """Names of the side's units by their index in ``codes``, made only when asked for
        (a side has thousands of units; a reason names at most ``top`` pairs and units)."""
        by_code = {}
        for p_slot, code in enumerate(unit[pos].tolist()):
            if bool(side.slot_valid[pos, p_slot]):
                by_code[code] = slot_ids[pos][p_slot]

        def name(j: int):
            c = int(codes[j])
            return None if c == units.total else (by_code[c] if here[j] else _unit_id(units, c))

        return name

    q_name = namer(q_codes, q_here, record.query)
    k_name = namer(k_codes, k_here, record.key)
    n = table.shape[1]
    magnitude = table.abs()
    flat, values = top_entries(table, top, magnitude)
    pairs = [
        QKPair(q_name(j // n), k_name(j % n), v)
        for j, v in zip(flat.tolist(), values.tolist(), strict=True)
        if v != 0
    ]
    total = float(magnitude.sum())
    listed = float(values.abs().sum())
    q_marg, k_marg = table.sum(1), table.sum(0)
    q_best = q_marg.abs().topk(min(top, len(q_marg))).indices.tolist()
    k_best = k_marg.abs().topk(min(top, len(k_marg))).indices.tolist()
    return QKReason(
        **parts,
        pairs=pairs,
        rest=parts["specific"] - sum(p.value for p in pairs),
        rest_share=max(0.0, total - listed) / total if total > 0 else 0.0,
        query_units=[(q_name(j), float(q_marg[j])) for j in q_best],
        key_units=[(k_name(j), float(k_marg[j])) for j in k_best],
    )


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
    sides: dict[int, tuple[QKSides, Tensor, list]] | None = None,
) -> QKAttribution:
    """One QK attribution with its ``QKReason``, at any (layer, QK head, query, key) of the
    run (whether or not a graph keeps the head). ``sides`` (optional) caches each layer's
    ``QKSides``, slot units and slot ids across calls."""
    sides = {} if sides is None else sides
    if layer not in sides:
        side = QKSides(run, replacement, layer)
        ids = source_ids(run)
        slot_ids = [
            [None] + [ids[s] if ok else None for s, ok in zip(row, vrow, strict=True)]
            for row, vrow in zip(side.at.tolist(), side.valid.tolist(), strict=True)
        ]
        sides[layer] = (side, slot_units(run, side, Units.of(replacement)), slot_ids)
    side, unit, slot_ids = sides[layer]
    triple = torch.tensor([[layer, qk_head, query, key]])
    h, q, k = triple[:, 1], triple[:, 2], triple[:, 3]
    terms = side.terms(h, q, k)
    (record,) = _summaries(
        terms, side.scores(h, q, k), triple, run.patterns[layer][h, q, k], slot_ids, top
    )
    record.reason = qk_reason(side, record, Units.of(replacement), unit, slot_ids, top)
    return record
