"""Exact flows through the frozen linear graph: what each node contributes to a target, to a
linear readout of the nodes, and to each side of a QK reason, and the group-level paths that
carry it.

Read from the *full* graph of a prompt (every edge, so every number is exact). For a target
``t`` (``circuits.interventions.target_nodes``: the logits, then any head or feature the graph
was traced from, whose value is its pre-activation):

- **flows.** ``h_n = d value_t / d value_n`` through the frozen linear graph (``h_t = 1``;
  ``h_s = sum_r h_r edges[r, s] / activation_s``); a node's *flow* ``h_n activation_n`` is its
  total signed contribution to the target along every path, and a group's flow what zeroing
  its members at once takes away (``group_flows``: within one stage its members' sum; in a
  group spanning stages a path through two members counts once). The target's value splits
  exactly into ``tokens`` (the embeddings' flows), ``errors`` (the error nodes'), and
  ``constants``: the bias nodes' flows plus every node's own constant term reaching the target
  (``h_n bias_n``: ``b_V``, ``b_enc``, ``b_U``, and in graphs without bias nodes the decoder
  biases those terms hold).
- **paths.** Group-level paths from the target down to a root group (embedding, error or
  constant), found by a beam search. A path's flow is exact: the part of the target that flows
  along that sequence of groups (at node level, the sum over every member-level path through
  those groups in that order; a hop between two members of one group, which a hand-made group
  spanning stages has, stays in that group, and such a group can come again after another).
  ``hops`` are the summed edges between consecutive groups.

The same backward sweep (``EdgeSweep``) reads any linear readout of the nodes
(``linear_flows``): the two sides of a QK reason (``qk_side_flows``) and its ``specific``
part split by roots on both sides (``qk_root_pairs``, read by ``root_split``). The summary
that reads them is ``circuits.mechanisms``; its records (``SourceShare``, ``RootPair``) are
``circuits.mechanism_file``'s.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .graph import Graph, checked_count, checked_graph, is_integer
from .groups import GroupedGraph, checked_view
from .interventions import check_full_graph
from .mechanism_file import RootPair, SourceShare
from .nodes import Kind, constant_name, logit_stage, lorsa_stage
from .prune import row_block, row_blocks

BEAM = 24  # the paths' beam width (``top_paths``)
MAX_PATHS = 5
ROOT_BATCH = 4  # QK reasons per root-pair sweep (4 x d_qk columns each: bounds memory)
SIDE_BATCH = 64  # readouts per sweep of the QK reasons' side flows (two per reason: even)
PSEUDO_ROOTS = (("QK bias side", "qk_bias"), ("own terms of the nodes", "own"))  # qk_root_pairs


class EdgeSweep:
    """Backward sweeps over a graph's edges, read in place: a long prompt's graph holds 1e8
    edges (0.9 GB), and a transposed copy for column access would double that at the trace's
    peak. A sweep visits the stages from the top down; once a stage's ``h`` is final, its
    rows push ``edges[rows].T @ h[rows]`` into the stages below, one block of about
    ``ROW_BLOCK_ENTRIES`` edges at a time (``circuits.prune.row_blocks``; float32 products,
    float64 sums), each block a view of the graph's arrays (``circuits.prune.row_block``).
    Only a full graph's flows are exact: a graph whose rows do not close (a pruned one) is
    refused (``check_full_graph``: a pass over the edges, or, given the prompt's ``run``, a
    comparison of the graph's nodes with it)."""

    def __init__(self, graph: Graph, run=None):
        check_full_graph(checked_graph(graph), run)
        self.ids = graph.ids
        self.edges = graph.edges
        self.stage = graph.stage.numpy()
        self.activation = graph.activation.double().numpy()

    def push(self, lo: int, hi: int, h: np.ndarray, into: np.ndarray) -> None:
        """``into[:lo] += edges[lo:hi].T @ h``, ``h`` the rows ``lo:hi``' (rows, ) or (rows,
        columns): edges only run down the stages, so nothing reaches a row from ``lo`` up."""
        edges = self.edges
        for a, b in row_blocks(edges.indptr, lo, hi):
            if not h[a - lo : b - lo].any():
                continue
            block = row_block(edges, a, b, transposed=True)
            into[:lo] += (block @ h[a - lo : b - lo].astype(np.float32))[:lo]

    def sweep(
        self,
        direct: np.ndarray,
        h: np.ndarray | None,
        flow: np.ndarray,
        below_stage: int,
        stop: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Fill ``flow`` and ``h`` stage by stage, from the top stage below ``below_stage``
        down: ``flow = direct + edges.T @ h``, ``h = flow / activation``; rows from
        ``below_stage`` up pass on the ``h`` they hold (a target's 1). ``flow``'s rows below
        ``below_stage`` gather the pushes (no third array of the readouts' size: with ``h``,
        the memory peak of a trace's QK root pairs); ``h`` None (nothing from ``below_stage``
        up) keeps one stage's ``h`` at a time, for a caller that reads the flows alone.
        ``stop`` (a mask of the nodes): those nodes get their flow and ``h`` but pass nothing
        down, so the nodes below them see only the paths that avoid them (``group_flows``)."""
        stage = self.stage
        start = int(np.searchsorted(stage, below_stage))
        flow[:start] = 0.0
        if h is not None:  # a stopped node from ``below_stage`` up (a target) passes nothing
            top = h[start:]
            if stop is not None and stop[start:].any():
                top = np.where(stop[start:].reshape(-1, *[1] * (h.ndim - 1)), 0.0, top)
            self.push(start, len(stage), top, flow)
        for s in np.unique(stage[:start])[::-1]:
            lo, hi = np.searchsorted(stage, s), np.searchsorted(stage, s, side="right")
            flow[lo:hi] += direct[lo:hi]  # the pushes' sum plus the own term, as one sum
            act = self.activation[lo:hi].reshape(-1, *[1] * (flow.ndim - 1))
            here = flow[lo:hi] / np.where(act != 0, act, 1.0)
            here[np.broadcast_to(act == 0, here.shape)] = 0.0
            if h is not None:
                h[lo:hi] = here
            if stop is not None and stop[lo:hi].any():
                here = here.copy()
                here[stop[lo:hi]] = 0.0
            self.push(lo, hi, here, flow)
        return flow, h


def _sweep_of(graph: Graph, edge_sweep: EdgeSweep | None) -> EdgeSweep:
    """``edge_sweep`` when it is ``graph``'s, else a new one (which checks the graph)."""
    if edge_sweep is None:
        return EdgeSweep(graph)
    same = isinstance(edge_sweep, EdgeSweep) and (
        edge_sweep.edges is graph.edges  # or an equal graph loaded or grouped apart
        or (edge_sweep.ids == graph.ids and edge_sweep.edges.nnz == graph.edges.nnz)
    )
    if not same:
        raise ValueError("edge_sweep is not this graph's: pass EdgeSweep(graph), or none")
    return edge_sweep


def _target(graph: Graph, target) -> int:
    """``target`` as a node index, refused unless a node something flows into: a logit, a
    head or a feature (an embedding, error or bias node has no value to split)."""
    target = checked_graph(graph).node_index(target, "target")
    kind = Kind(int(graph.kind[target]))
    if kind not in (Kind.LOGIT, Kind.LORSA, Kind.TRANSCODER):
        raise ValueError(f"target {target} ({graph.ids[target]}): nothing flows into "
                         f"{kind.label} nodes; pass a logit, head or feature node")  # fmt: skip
    return target


def node_flows(
    graph: Graph, target: int, edge_sweep: EdgeSweep | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(flow, h) of every node for the target node ``target`` (module docstring): ``flow[n]``
    its total signed contribution to the target's value, ``h[n] = d value / d value_n``.
    ``edge_sweep``: the graph's ``EdgeSweep``, when the caller has one."""
    target = _target(graph, target)
    return many_node_flows(graph, [target], edge_sweep)[target]


def many_node_flows(
    graph: Graph, targets: list[int], edge_sweep: EdgeSweep | None = None
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``node_flows`` of several targets, those of one stage (the logits) in one sweep: a
    sparse product with many columns costs little more than one with a single column."""
    targets = checked_graph(graph).node_indices(targets, "targets").tolist()
    targets = [_target(graph, t) for t in targets]
    edge_sweep = _sweep_of(graph, edge_sweep)
    n = graph.n_nodes
    out = {}
    for stage in sorted({int(graph.stage[t]) for t in targets}):
        same = [t for t in dict.fromkeys(targets) if int(graph.stage[t]) == stage]
        cols = np.arange(len(same))
        h, flow = np.zeros((n, len(same))), np.zeros((n, len(same)))
        h[same, cols] = 1.0
        flow[same, cols] = graph.value[same].double().numpy()
        edge_sweep.sweep(np.zeros((n, len(same))), h, flow, stage)
        out |= {t: (flow[:, j].copy(), h[:, j].copy()) for j, t in enumerate(same)}
    return out


def group_flows(
    graph: Graph,
    view: GroupedGraph,
    target_flows: dict[int, tuple[np.ndarray, np.ndarray]],
    edge_sweep: EdgeSweep | None = None,
) -> dict[int, np.ndarray]:
    """Each group of ``view``'s flow into each target of ``target_flows`` (``many_node_flows``'s
    result): the part of the target that flows through the group, every path through one or
    more of its members counted once, so that it is what zeroing the members at once takes
    away through the frozen linear graph (``circuits.interventions.predict``). A group within
    one stage is its members' flows summed (no path runs from one member to another); in a
    group spanning stages (a hand-made one) a path through two members is counted at the one
    nearest the target: ``sum_m activation_m h_m``, ``h_m`` through the paths that avoid the
    other members (a sweep in which they pass nothing down, a target among them too: a group
    holding a target takes away its value, once). Summed, the members' flows counted
    such a path once per member: the heads at the last position of ``red blue red blue red``,
    one group, read +10.86 where zeroing them predicts -16.30 (a review)."""
    return group_flows_and_grads(graph, view, target_flows, edge_sweep)[0]


def group_flows_and_grads(
    graph: Graph,
    view: GroupedGraph,
    target_flows: dict[int, tuple[np.ndarray, np.ndarray]],
    edge_sweep: EdgeSweep | None = None,
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """``group_flows``, and per target each node's ``h`` through the paths that avoid the
    other members of its group (the ``h_m`` those flows are made of: a one-stage group's
    members have their own ``h``): what splits a group's flow exactly, member by member
    (``key_flows`` of a head group's members: a group's ``carried`` plus ``carried_own``
    summed the members' flows, and missed a spanning group's flow, so that its summary was
    refused on reading, a review)."""
    view = checked_view(view)
    if view.graph.ids != graph.ids:
        raise ValueError("view groups another graph's nodes")
    targets = list(target_flows)
    out = {t: np.bincount(view.of_node, target_flows[t][0], minlength=view.n_groups)
           for t in targets}  # fmt: skip
    grads = {t: target_flows[t][1] for t in targets}
    spanning = spanning_groups(graph, view)
    if not spanning or not targets:
        return out, grads
    grads = {t: h.copy() for t, h in grads.items()}
    edge_sweep = _sweep_of(graph, edge_sweep)
    n = graph.n_nodes
    for members in spanning:
        g = int(view.of_node[members[0]])
        stop = np.zeros(n, dtype=bool)
        stop[members] = True
        for stage in sorted({int(graph.stage[t]) for t in targets}):
            same = [t for t in targets if int(graph.stage[t]) == stage]
            cols = np.arange(len(same))
            h, flow = np.zeros((n, len(same))), np.zeros((n, len(same)))
            h[same, cols] = 1.0
            flow[same, cols] = graph.value[same].double().numpy()
            edge_sweep.sweep(np.zeros((n, len(same))), h, flow, stage, stop=stop)
            for j, t in enumerate(same):
                out[t][g] = flow[members, j].sum()
                grads[t][members] = h[members, j]
    return out, grads


def spanning_groups(graph: Graph, view: GroupedGraph) -> list[np.ndarray]:
    """The members of each group of ``view`` that spans stages (a hand-made one: automatic
    groups never do), whose flows need a sweep of their own to be exact (``group_flows``)."""
    stages = graph.stage.numpy()
    return [np.asarray(grp.members) for grp in checked_view(view).groups
            if grp.stage is None and len(set(stages[grp.members].tolist())) > 1]  # fmt: skip


def linear_flows(
    graph: Graph, direct: np.ndarray, below_stage: int, edge_sweep: EdgeSweep | None = None,
    keep_h: bool = True, stop: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """(flow, h) of a linear readout ``R = sum_n direct[n]`` of the nodes below ``below_stage``
    (``direct[n]``: node n's own term, proportional to its activation): ``flow[n]`` is n's
    total contribution to R through every node it feeds, ``h[n] = dR / d value_n``. A
    ``direct`` of shape (node, d) sweeps d readouts at once (a vector readout). ``keep_h``
    False: h is None, and the sweep holds one array of ``direct``'s size less. ``stop``: the
    nodes that pass nothing down (``EdgeSweep.sweep``)."""
    top = logit_stage(checked_graph(graph).n_layers)
    if not (is_integer(below_stage) and 1 <= below_stage <= top):
        raise ValueError(f"below_stage must be a stage in 1..{top} (an integer), got "
                         f"{below_stage!r}")  # fmt: skip
    direct = np.asarray(direct)
    if direct.ndim not in (1, 2) or len(direct) != graph.n_nodes or direct.dtype.kind not in "iuf":
        raise ValueError(f"direct must be numbers of shape (node,) or (node, d) with "
                         f"{graph.n_nodes} nodes, got {direct.dtype} {direct.shape}")  # fmt: skip
    if not np.isfinite(direct).all():
        raise ValueError("direct holds NaN or infinite values")
    direct = direct.astype(np.float64, copy=False)
    edge_sweep = _sweep_of(graph, edge_sweep)
    h = np.zeros(direct.shape) if keep_h else None
    return edge_sweep.sweep(direct, h, np.zeros(direct.shape), below_stage, stop=stop)


def qk_side_flows(
    graph: Graph, side, qk_head: int, query: int, key: int, edge_sweep: EdgeSweep | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Per node, its total contribution (``linear_flows``) to ``query_at`` and to ``key_at``
    of the QK reason at (``qk_head``, ``query``, ``key``)
    (``circuits.mechanism_file.QKReasonRecord``), and the parts: ``query_at``, ``key_at``,
    ``specific`` and the QK bias side's terms in the first two (``query_bias``,
    ``key_bias``). ``side`` is the layer's ``circuits.qk.QKSides``. Each side's root flows,
    the nodes' own terms and its bias term sum to its ``_at`` part."""
    return many_qk_side_flows(graph, [(side, qk_head, query, key)], edge_sweep)[0]


def many_qk_side_flows(
    graph: Graph, requests: list[tuple], edge_sweep: EdgeSweep | None = None,
    spanning: list[np.ndarray] = (),
) -> list[tuple[np.ndarray, np.ndarray, dict[str, float]]]:  # fmt: skip
    """``qk_side_flows`` of many (``QKSides``, QK head, query, key) requests, their readouts
    swept together (``SIDE_BATCH`` columns per sweep, those of a layer together: a sweep reads
    the edges below its highest layer). A readout is zero above its own Lorsa layer, so
    sweeping it from a higher stage adds exact zeros. ``spanning``: the members of groups
    spanning stages (``spanning_groups``), whose flows are each member's through the paths
    that avoid the others (one more sweep per group), so that a group's summed flows are what
    zeroing it at once takes from the side: summed apart, a path through two members counted
    twice (as ``group_flows`` for targets; a review)."""
    edge_sweep = _sweep_of(graph, edge_sweep)
    out: list = [None] * len(requests)
    for picked in _layer_batches(requests, SIDE_BATCH // 2):
        direct = np.zeros((graph.n_nodes, 2 * len(picked)))
        parts = []
        for i, r in enumerate(picked):
            direct[:, 2 * i], direct[:, 2 * i + 1], part = _qk_side_directs(graph, *requests[r])
            parts.append(part)
        below = max(int(lorsa_stage(requests[r][0].layer)) for r in picked)
        flow = linear_flows(graph, direct, below, edge_sweep, keep_h=False)[0]
        for members in spanning:
            stop = np.zeros(graph.n_nodes, dtype=bool)
            stop[members] = True
            apart = linear_flows(graph, direct, below, edge_sweep, keep_h=False, stop=stop)[0]
            flow[members] = apart[members]
        for i, r in enumerate(picked):
            out[r] = (flow[:, 2 * i].copy(), flow[:, 2 * i + 1].copy(), parts[i])
    return out


def _layer_batches(requests: list[tuple], size: int) -> list[list[int]]:
    """The indices of (``QKSides``, ...) ``requests`` in batches of at most ``size``, those of
    a layer together (a sweep reads the edges below its batch's highest layer)."""
    order = sorted(range(len(requests)), key=lambda r: requests[r][0].layer)
    return [order[start : start + size] for start in range(0, len(order), size)]


def _qk_side_directs(
    graph: Graph, side, qk_head: int, query: int, key: int
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """The nodes' own terms in ``query_at`` and ``key_at`` (``qk_side_flows``), and the parts."""
    wq, wk = (w.numpy() for w in side.reference_weights(query, key, torch.float64))
    u, v = side.head_vectors(qk_head)  # pos 1+slot e
    scale = math.sqrt(side.lorsa.cfg.d_qk)
    du = np.einsum("p,pse->e", wq, u)
    dv = np.einsum("p,pse->e", wk, v)
    at, slots = side.at.numpy(), side.valid.numpy()
    q_direct, k_direct = np.zeros(graph.n_nodes), np.zeros(graph.n_nodes)
    q_slots, k_slots = np.flatnonzero(slots[query]), np.flatnonzero(slots[key])
    q_direct[at[query, q_slots]] = u[query, 1 + q_slots] @ dv / scale
    k_direct[at[key, k_slots]] = v[key, 1 + k_slots] @ du / scale
    parts = {
        "query_at": float(u[query].sum(0) @ dv / scale),
        "key_at": float(du @ v[key].sum(0) / scale),
        "specific": float(du @ dv / scale),
        "query_bias": float(u[query, 0] @ dv / scale),
        "key_bias": float(du @ v[key, 0] / scale),
    }
    return q_direct, k_direct, parts


def qk_root_pairs(
    view: GroupedGraph, side, qk_head: int, query: int, key: int,
    edge_sweep: EdgeSweep | None = None,
) -> tuple[list[SourceShare], list[SourceShare], np.ndarray]:  # fmt: skip
    """The ``specific`` part of the QK reason at (``qk_head``, ``query``, ``key``) split by
    roots on both sides (``RootPair``): each side's deviation vector (``du``, ``dv`` of
    ``QKSides.deviations``) is a sum over the graph's sources at every reference position,
    and each source's vector a sum over the roots it comes from (a vector readout of
    ``linear_flows``: d_qk readouts in one sweep); grouped by ``view``'s root groups, plus the
    side's QK bias term and the nodes' own terms (what no root holds). Returns the query
    side's and the key side's rows (``SourceShare``, each with its total against the other
    side's whole deviation) and the table ``table[a, b] = DU_a . DV_b / sqrt(d_qk)``, which
    sums to ``specific`` exactly. ``qk_root_tables`` does many at once."""
    return qk_root_tables(view, [(side, qk_head, query, key)], edge_sweep)[0][:3]


def qk_root_tables(
    view: GroupedGraph, requests: list[tuple], edge_sweep: EdgeSweep | None = None
) -> list[tuple[list[SourceShare], list[SourceShare], np.ndarray, np.ndarray]]:
    """``qk_root_pairs`` of many (``QKSides``, QK head, query, key) requests, their readouts
    swept together (``ROOT_BATCH`` requests per sweep, those of a layer together: a sparse
    product with many columns costs much less per column than one with a few, and a sweep
    reads the edges below its highest layer), each with a fourth item: the table
    between the query's own vector and the key's own vector instead of their deviations
    (``own[a, b] = U_a . V_b``, ``U_a`` what root ``a`` gives the query's own vector: its own
    token at the query, tokens the heads there moved to it; ``V_b`` the same at the key; it sums
    to the score). ``table = own`` less the terms against the mean query and the mean key (every
    position's vector), so the difference is what the means take away (``root_split``'s
    ``token_parts``): no token at another position stands on the query side of ``own`` (on a
    layer-0 head's deviation table, every position's token did, through the mean query)."""
    graph = checked_view(view).graph
    edge_sweep = _sweep_of(graph, edge_sweep)
    roots = np.flatnonzero([g.is_root for g in view.groups])
    is_root = np.isin(view.of_node, roots)
    names = [view.groups[g] for g in roots]

    def shares(totals: np.ndarray) -> list[SourceShare]:
        out = [SourceShare(g.name, g.kind, g.layer, g.pos, g.attends, g.concept, float(x))
               for g, x in zip(names, totals[:-2], strict=True)]  # fmt: skip
        for (name, kind), x in zip(PSEUDO_ROOTS, totals[-2:], strict=True):
            out.append(SourceShare(name, kind, None, None, None, None, float(x)))
        return out

    out: list = [None] * len(requests)
    for picked in _layer_batches(requests, ROOT_BATCH):
        batch = [requests[r] for r in picked]
        width = batch[0][0].query.shape[-1]  # d_qk: every layer's the same
        # node (request, readout, e), filled in place: a list of per-readout arrays joined
        # after held the batch's readouts twice at the trace's memory peak (a review's
        # 124-token prompt of ten targets peaked here at 2.45 GB)
        direct = np.zeros((graph.n_nodes, 4 * len(batch) * width))
        biases = []
        for i, (side, qk_head, query, key) in enumerate(batch):
            wq, wk = (w.numpy() for w in side.reference_weights(query, key, torch.float64))
            valid, at = side.valid.numpy(), side.at.numpy()
            at_query, at_key = np.zeros_like(wq), np.zeros_like(wk)
            at_query[query], at_key[key] = 1.0, 1.0  # the query's and the key's own vectors
            readouts = ((side.query, wq), (side.key, wk), (side.query, at_query),
                        (side.key, at_key))  # fmt: skip
            for j, (vectors, weight) in enumerate(readouts):
                vec = vectors[:, :, qk_head].double().numpy()  # pos 1+slot e
                columns = slice((4 * i + j) * width, (4 * i + j + 1) * width)
                direct[at[valid], columns] = (weight[:, None, None] * vec[:, 1:])[valid]
                biases.append(weight @ vec[:, 0])
        below = max(int(lorsa_stage(side.layer)) for side, *_ in batch)
        flow = linear_flows(graph, direct, below, edge_sweep, keep_h=False)[0]
        by_group = np.zeros((view.n_groups, direct.shape[1]))
        np.add.at(by_group, view.of_node[is_root], flow[is_root])
        by_root = by_group[roots]
        own = direct.sum(0) - by_root.sum(0)
        del direct, flow
        for i, (side, *_) in enumerate(batch):
            du, dv, u, v = (
                np.concatenate([by_root[:, sl], biases[j][None], own[None, sl]])
                for j in range(4 * i, 4 * i + 4)
                for sl in [slice(j * width, (j + 1) * width)]
            )
            scale = math.sqrt(side.lorsa.cfg.d_qk)
            table, at_both = du @ dv.T / scale, u @ v.T / scale
            out[picked[i]] = (shares(table.sum(1)), shares(table.sum(0)), table, at_both)
    return out


def root_split(
    query_rows: list[SourceShare], key_rows: list[SourceShare], table: np.ndarray, top: int,
    key: int | None = None, at_key: np.ndarray | None = None,
) -> tuple[list[RootPair], dict[str, float], dict[str, float], dict]:  # fmt: skip
    """A ``qk_root_pairs`` table read for people: its ``top`` largest terms by magnitude
    between tokens and errors (largest first), and the table's exact split into ``tokens``
    (token x token terms), ``positions`` (terms between tokens and position vectors with a
    position vector on either side, ``SourceShare.is_position``: what a head that picks its
    key by where it is reads), ``constants`` (every term with a constant on either side: a
    sublayer's bias nodes, the QK bias side, the nodes' own terms; the always-on part, which
    cancels across positions only where nothing varies) and ``errors`` (the rest: terms with an
    error).

    With the ``key`` position and the table between the query's and the key's own vectors
    (``at_key``, the fourth item of ``qk_root_tables``), the token part splits by what the key
    side holds (``QKReasonRecord.token_parts``, summing to ``tokens``):
    ``key_own`` (the query's tokens against the key's own token), ``moved`` (against tokens the
    heads at the key moved there) and ``means`` (what the mean query and the mean key, every
    position's vectors, take away); and the ``top`` largest terms of the first two are listed
    (``by_key["key_own"]``, ``by_key["moved"]``: ``QKReasonRecord.own_pairs`` and
    ``moved_pairs``, each between what the query holds and what the key holds, none through a
    mean): for induction the current token against the token before the key. A layer-0 head's
    ``moved`` is 0 (no head below it moves anything) and its query side is its own token. The
    ``top`` largest terms of ``positions`` are listed from this table, between the deviations
    (``by_key["positions"]``, ``position_pairs``: what sets this key apart from the others by
    where things are; a term between the own vectors is mostly the same at every key, a
    reviewer found ``token ','@8 x position vector @7 -3.17`` at -3.0 to -3.3 at every key),
    between roots the two own vectors hold."""
    position = np.array([r.is_position for r in query_rows])  # the same rows on both sides
    constant = np.array([r.kind in ("bias", "qk_bias", "own") for r in query_rows]) & ~position
    token_q = np.array([r.kind == "embedding" for r in query_rows])
    token_k = np.array([r.kind == "embedding" for r in key_rows])
    varying = table[~constant][:, ~constant]
    tokens = table[token_q][:, token_k]
    placed = table[token_q | position][:, token_k | position]  # tokens and positions
    parts = {
        "tokens": float(tokens.sum()),
        "positions": float(placed.sum() - tokens.sum()),
        "errors": float(varying.sum() - placed.sum()),
        "constants": float(table.sum() - varying.sum()),
    }
    kept = np.flatnonzero(~constant & ~position)  # tokens and errors
    listed = table[np.ix_(kept, kept)]
    pairs = [RootPair(query_rows[kept[i]], key_rows[kept[j]], float(listed[i, j]))
             for i, j in _largest(listed, top)]  # fmt: skip
    by_key: dict[str, list[RootPair]] = {}
    token_parts: dict[str, float] = {}
    if key is not None and at_key is not None:
        own = np.array([r.pos == key for r in key_rows])
        mine = at_key[token_q][:, token_k]
        token_parts = {"key_own": float(mine[:, own[token_k]].sum()),
                       "moved": float(mine[:, ~own[token_k]].sum())}  # fmt: skip
        token_parts["means"] = parts["tokens"] - token_parts["key_own"] - token_parts["moved"]
        # the position terms of this table (between the deviations: what sets this key apart
        # from the others, summing to ``positions``), between roots the query's and the key's
        # own vectors hold (a root held only through a mean, a position the query never
        # saw, named no reason: those terms stay in the total)
        held_q, held_k = np.abs(at_key).sum(1) > 0, np.abs(at_key).sum(0) > 0
        rows = np.flatnonzero((token_q | position) & held_q)
        cols = np.flatnonzero((token_k | position) & held_k)
        either = position[rows][:, None] | position[cols][None, :]
        by_position = np.where(either, table[np.ix_(rows, cols)], 0.0)
        by_key["positions"] = [
            RootPair(query_rows[rows[i]], key_rows[cols[j]], float(by_position[i, j]))
            for i, j in _largest(by_position, top)
        ]
        listed_at_key = at_key[np.ix_(kept, kept)]
        for name, columns in (("key_own", np.flatnonzero(own[kept])),
                              ("moved", np.flatnonzero(~own[kept]))):  # fmt: skip
            table_part = listed_at_key[:, columns]
            by_key[name] = [RootPair(query_rows[kept[i]], key_rows[kept[columns[j]]],
                                     float(table_part[i, j]))
                            for i, j in _largest(table_part, top)]  # fmt: skip
    return pairs, parts, token_parts, by_key


def _largest(table: np.ndarray, top: int) -> list[tuple[int, int]]:
    """The (row, column) of a table's ``top`` largest nonzero entries by magnitude, largest
    first."""
    magnitude = np.abs(table).ravel()
    flat = np.argpartition(-magnitude, top - 1)[:top] if magnitude.size > top else \
        np.arange(magnitude.size)  # fmt: skip
    flat = flat[np.argsort(-magnitude[flat], kind="stable")]
    a, b = np.unravel_index(flat, table.shape)
    return [(i, j) for i, j in zip(a.tolist(), b.tolist(), strict=True) if table[i, j] != 0]


def target_parts(graph: Graph, target: int, flow: np.ndarray, h: np.ndarray) -> dict:
    """``tokens``, ``errors``, ``constants`` (summing to the target's value), the constant
    part by source (each sublayer's bias nodes, the position vectors, ``BOS`` and ``own``, the
    nodes' own terms; largest |flow| first, none that is 0, such as a stage above a head or
    feature target) and the token part by position (``tokens_by_position``: (position, flow)
    for every position whose token embeddings carry flow, largest |flow| first). BOS at the
    first position (``toy_models.tokenizer.BOS``, which the trace puts there) is a constant
    (``BOS``): what it holds is the same in every prompt, as a position vector is; how much the
    heads read it is what varies, and their flows say so."""
    _target(graph, target)
    for name, x in (("flow", flow), ("h", h)):
        if np.shape(x) != (graph.n_nodes,):
            raise ValueError(f"{name} holds {np.shape(x)} values, the graph {graph.n_nodes} "
                             "nodes: pass this graph's node_flows")  # fmt: skip
    kinds = graph.kind.numpy()
    own = h * graph.bias.double().numpy()
    is_bias = kinds == Kind.BIAS
    by_stage = {}
    for s in np.unique(graph.stage.numpy()[is_bias]).tolist():
        sel = is_bias & (graph.stage.numpy() == s)
        by_stage[constant_name(s)] = float(flow[sel].sum())
    embedding = kinds == Kind.EMBEDDING
    bos = embedding & (graph.pos.numpy() == 0) & graph.starts_with_bos
    by_stage["BOS"] = float(flow[bos].sum())
    by_stage["own"] = float(own.sum())
    by_source = sorted(((k, v) for k, v in by_stage.items() if v != 0), key=lambda kv: -abs(kv[1]))
    is_token = embedding & ~bos
    at = np.bincount(graph.pos.numpy()[is_token], flow[is_token], minlength=len(graph.tokens))
    by_position = [(p, float(at[p])) for p in np.argsort(-np.abs(at), kind="stable").tolist()
                   if at[p] != 0]  # fmt: skip
    return {
        "tokens": float(flow[is_token].sum()),
        "errors": float(flow[kinds == Kind.ERROR].sum()),
        "constants": float(flow[is_bias].sum() + flow[bos].sum() + own.sum()),
        "constants_by_source": by_source,
        "tokens_by_position": by_position,
    }


def key_flows(graph: Graph, h: np.ndarray, heads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the Lorsa heads ``heads`` (node indices) bring to a target from each key position:
    ``(carried, own)``, ``carried[i, k] = h[m] sum_{s at k} edges[m, s]`` for ``m = heads[i]``
    and ``own[i] = h[m] bias[m]``. A head's activation is ``sum_k A[q, k] x_k . w_v`` plus its
    constant term, and every edge into it comes from the residual stream at one key position
    (``circuits.attribution._lorsa_edges``), so its flow ``h[m] activation[m]`` splits exactly
    into ``carried[i].sum() + own[i]``: the flow of the z-pattern, position by position. A
    head is grouped and drawn by the key its activation comes from most (``attends``);
    ``carried`` says which keys its contribution to this target comes from, and a head
    reading two places splits between them."""
    heads = np.asarray(heads)
    if len(heads) and (heads.ndim != 1 or heads.dtype.kind not in "iu"):
        raise ValueError("heads must be node indices (integers, 1-D), in the caller's order")
    heads = heads.astype(np.int64)
    if len(heads) and (heads.min() < 0 or heads.max() >= graph.n_nodes
                       or not bool((graph.kind.numpy()[heads] == Kind.LORSA).all())):  # fmt: skip
        raise ValueError(f"heads must be Lorsa head nodes of the graph (0..{graph.n_nodes - 1})")
    if np.shape(h) != (graph.n_nodes,):
        raise ValueError(f"h holds {np.shape(h)} values, the graph {graph.n_nodes} nodes: pass "
                         "this graph's node_flows")  # fmt: skip
    n_pos = len(graph.tokens)
    carried = np.zeros((len(heads), n_pos))
    if len(heads):
        block = graph.edges[heads].tocoo()
        cell = block.row.astype(np.int64) * n_pos + graph.pos.numpy()[block.col]
        sums = np.bincount(cell, block.data.astype(np.float64), minlength=len(heads) * n_pos)
        carried = sums.reshape(len(heads), n_pos) * h[heads, None]
    own = h[heads] * graph.bias.double().numpy()[heads]
    return carried, own


def top_paths(
    view: GroupedGraph,
    target: int,
    *,
    beam: int = BEAM,
    keep: int = MAX_PATHS,
    roots: tuple[str, ...] = ("embedding",),
) -> list[tuple[list[int], float, list[float]]]:
    """The ``keep`` group-level paths into node ``target`` of largest |flow| that start at a
    root group of a kind in ``roots`` (default: token embeddings; errors and constants are
    the target's ``errors`` and ``constants`` parts), each (groups from the root up, flow,
    hops), by a beam search from the target down (module docstring). ``view`` groups a full
    graph: a pruned one's paths miss the edges pruning dropped (a review read 5.23 for a
    path whose exact flow is 5.58), and is refused as ``node_flows`` refuses it."""
    view = checked_view(view)
    beam, keep = checked_count(beam, "beam"), checked_count(keep, "keep")
    target = view.graph.node_index(target, "target")
    graph = view.graph
    check_full_graph(graph)
    edges = graph.edges
    activation = graph.activation.double().numpy()
    start = view.group_of(target)
    # A partial path: (groups from the target down, members' d(target)/d(value), flow).
    frontier = [([start], {target: 1.0}, float(graph.value[target]))]
    done: list[tuple[list[int], float]] = []
    while frontier:
        children = []
        for path, b, _ in frontier:
            r = _through_group(edges, activation, view, path[-1], b)
            cols = np.flatnonzero(r)
            if not len(cols):
                continue
            groups = view.of_node[cols]
            sums = np.bincount(groups, r[cols], minlength=view.n_groups)
            candidates = np.unique(groups)
            # the group itself is not a next hop (its members' edges among themselves are
            # inside ``r``); a group met before can be again, at another stage
            candidates = candidates[candidates != path[-1]]
            order = np.argsort(-np.abs(sums[candidates]), kind="stable")[:beam]
            for g in candidates[order].tolist():
                members = cols[groups == g]
                if view.groups[g].is_root:
                    if view.groups[g].kind in roots:
                        done.append((path + [g], float(sums[g])))
                else:
                    child = {int(m): float(r[m] / activation[m]) for m in members}
                    children.append((path + [g], child, float(sums[g])))
        children.sort(key=lambda c: -abs(c[2]))
        frontier = children[:beam]
    done.sort(key=lambda d: -abs(d[1]))
    out = []
    for path, flow in done[:keep]:
        up = path[::-1]  # root first, the target last
        hops = [_summed_edge(edges, view.members(up[i + 1]), view.members(up[i]))
                for i in range(len(up) - 1)]  # fmt: skip
        out.append((up[:-1], flow, hops))
    return out


def _through_group(
    edges, activation: np.ndarray, view: GroupedGraph, g: int, b: dict
) -> np.ndarray:
    """What a partial path ending in group ``g`` brings each node: ``b`` holds the
    d(target)/d(value) of the members it reached; a member reached pushes on into the group's
    members below it (a hand-made group may span stages: those member-to-member hops are the
    group's, one group-level hop), and every member reached then into its sources. Returns
    each node's flow along the path (``sum_m b_m edges[m, n]``), the group's own members
    included."""
    members = np.asarray(view.members(g), dtype=np.int64)
    total = dict(b)
    step = b
    while step:  # edges go down the stages: at most one round per stage of the group
        rows = np.fromiter(step, dtype=np.int64)
        inside = np.asarray(
            np.fromiter(step.values(), dtype=np.float64) @ edges[rows][:, members]
        ).ravel()
        step = {
            int(m): float(x / activation[m]) for m, x in zip(members, inside, strict=True) if x != 0
        }
        for m, x in step.items():
            total[m] = total.get(m, 0.0) + x
    rows = np.fromiter(total, dtype=np.int64)
    block = edges[rows]
    if not block.nnz:
        return np.zeros(edges.shape[1])
    return np.asarray(np.fromiter(total.values(), dtype=np.float64) @ block).ravel()


def _summed_edge(edges, targets: list[int], sources: list[int]) -> float:
    """The sum of the edges from ``sources`` into ``targets``."""
    return float(edges[targets][:, sources].sum(dtype=np.float64))
