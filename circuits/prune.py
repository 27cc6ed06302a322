"""Influence, pruning and graph scores, with circuit-tracer's definitions on a sparse matrix.

``A = edges`` holds direct effects ``[target, source]``; ``Â`` is ``|A|`` with each row divided
by its sum. A node's influence is the weight of every path from it to the targets,
``w^T ((I - Â)^-1 - I)``, where ``w`` is the graph's ``target_weight`` (logit probabilities).
The graph is a DAG sorted by stage, so the power series is summed exactly in one sweep from the
top stage down: each row block is visited once, and nothing dense of size nodes x nodes exists.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .graph import Graph, checked_count, checked_fraction, checked_graph

NODE_THRESHOLD = 0.8
# the kinds ``max_nodes`` caps (embeddings and targets are kept beside them); the trace's room
# for groups it adds under a cap counts the same
CAPPED_KINDS = ("lorsa", "transcoder", "error")
EDGE_THRESHOLD = 0.98
ROW_BLOCK_ENTRIES = 1 << 23  # |A| is made this many entries at a time (bounds temporaries)


def row_blocks(indptr: np.ndarray, lo: int = 0, hi: int | None = None):
    """Ranges covering rows ``lo:hi`` of a CSR matrix with row pointers ``indptr``, of about
    ``ROW_BLOCK_ENTRIES`` entries each (a row longer than that is a range of its own)."""
    hi = len(indptr) - 1 if hi is None else hi
    marks = np.arange(indptr[lo], indptr[hi], ROW_BLOCK_ENTRIES)
    starts = np.searchsorted(indptr, marks, "right") - 1
    bounds = np.unique(np.clip(np.r_[lo, starts, hi], lo, hi))
    return zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)


def row_block(edges: sp.csr_array, lo: int, hi: int, transposed: bool = False):
    """Rows ``lo:hi`` of the CSR ``edges`` sharing its arrays (``transposed``: their transpose,
    a CSC of the same arrays). Not scipy's constructor, nor its ``.T``: each copies a slice of
    a much larger array (its ``prune``), a block's 8e6 indices and values, 64 MB at a long
    prompt's memory peak and most of a sweep's time outside the products."""
    start, end = int(edges.indptr[lo]), int(edges.indptr[hi])
    shape = (hi - lo, edges.shape[1])
    block = sp.csc_array(shape[::-1], dtype=edges.dtype) if transposed else \
        sp.csr_array(shape, dtype=edges.dtype)  # fmt: skip
    block.indices = edges.indices[start:end]
    block.indptr = (edges.indptr[lo : hi + 1] - start).astype(block.indices.dtype)
    block.data = edges.data[start:end]
    return block


def row_sums(edges: sp.csr_array) -> tuple[np.ndarray, np.ndarray]:
    """Each row's sum and the sum of its magnitudes (float64), a row block at a time: a long
    prompt's ``abs(edges)`` whole would be a second copy of its 1e8 edges."""
    total, size = np.zeros(edges.shape[0]), np.zeros(edges.shape[0])
    for lo, hi in row_blocks(edges.indptr):
        start, end = int(edges.indptr[lo]), int(edges.indptr[hi])
        rows = np.repeat(np.arange(hi - lo), np.diff(edges.indptr[lo : hi + 1]))
        data = edges.data[start:end].astype(np.float64)
        total[lo:hi] = np.bincount(rows, data, minlength=hi - lo)
        size[lo:hi] = np.bincount(rows, np.abs(data), minlength=hi - lo)
    return total, size


# How far a full graph's row may be from closing, relative to its terms' magnitudes (float32
# edges close to about 1e-6; a pruned graph misses whole edges).
CLOSURE = 1e-3


# The smallest scale a row's gap is measured against (a row of no terms and no bias).
SCALE_FLOOR = 1e-6


def closure_gaps(total, size, bias, want) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how far its incoming edges (``total``, ``size``: the sum and magnitude of each
    row, ``row_sums``) plus ``bias`` miss ``want`` (its activation or value), absolute and
    relative to the scale float rounding works at (the terms' magnitudes plus |bias|, at least
    ``SCALE_FLOOR``). The one measure of closure: ``open_rows`` gates on it and
    ``circuits.attribution.closure_error`` reports it."""
    total, size, bias, want = (np.asarray(x, dtype=np.float64) for x in (total, size, bias, want))
    gap = np.abs(total + bias - want)
    return gap, gap / np.maximum(size + np.abs(bias), SCALE_FLOOR)


def open_rows(graph: Graph, total: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The heads, features and targets whose incoming edges (``total``, ``size``: each row's
    sum and magnitude, ``row_sums``) plus bias miss their activation (a target: its value) by
    more than ``CLOSURE`` of the row's magnitude: none in a full graph, which every exact flow
    read from a graph assumes; some in a pruned one, which has lost edges."""
    bias = graph.bias.double().numpy()
    target = graph.is_target.numpy()
    want = np.where(target, graph.value.double().numpy(), graph.activation.double().numpy())
    rows = target | graph.is_kind("lorsa", "transcoder").numpy()
    _, relative = closure_gaps(total, size, bias, want)
    return np.flatnonzero(rows & ~(relative <= CLOSURE))


# The arrays of graphs whose rows were found to close: a pass over a long prompt's 1e8 edges
# takes about 1.5 s, which every flow or intervention would pay again. Keyed by the arrays'
# ids, each checked by a weak reference; ``attribute`` registers the graphs it builds (it has
# every row's sum already).
_CLOSED: dict[tuple[int, ...], tuple[weakref.ref, ...]] = {}


def _closed_parts(graph: Graph) -> tuple:
    return graph.edges, graph.bias, graph.value, graph.activation


def known_closed(graph: Graph) -> bool:
    """Whether these very arrays of ``graph`` were found to close (``remember_closed``)."""
    parts = _closed_parts(graph)
    known = _CLOSED.get(tuple(map(id, parts)))
    return known is not None and all(r() is x for r, x in zip(known, parts, strict=True))


def check_rows_close(graph: Graph, needs: str = "this needs", hint: str = "") -> None:
    """Refuse ``graph`` unless every head's, feature's and target's row closes (``open_rows``:
    what every exact flow and score read from a prompt's graph assumes, and what a pruned
    graph, having lost edges, no longer does), naming the first open node (``needs``: what
    needs the full graph; ``hint``: what to do instead); remembered once found
    (``remember_closed``)."""
    if known_closed(graph):
        return  # these very arrays were found to close
    _refuse_open_rows(graph, needs, hint)
    remember_closed(graph)


def _refuse_open_rows(graph: Graph, needs: str, hint: str) -> None:
    """``check_rows_close``'s pass over every edge."""
    total, size = row_sums(graph.edges)
    open_ = open_rows(graph, total, size)
    if len(open_):
        i = int(open_[0])
        target = bool(graph.is_target[i])
        want = float(graph.value[i] if target else graph.activation[i])
        raise ValueError(
            f"{needs} the full (unpruned) graph of the prompt: node {graph.ids[i]}'s "
            f"incoming edges and bias sum to {total[i] + float(graph.bias[i]):.4g}, not its "
            f"{'value' if target else 'activation'} {want:.4g} (a pruned graph has lost "
            f"edges){hint}"
        )


def remember_closed(graph: Graph) -> None:
    """Record that ``graph``'s arrays close (the caller has checked ``open_rows``)."""
    for key in [k for k, refs in _CLOSED.items() if any(r() is None for r in refs)]:
        del _CLOSED[key]  # arrays gone since
    parts = _closed_parts(graph)
    _CLOSED[tuple(map(id, parts))] = tuple(weakref.ref(x) for x in parts)


class Normalized:
    """``Â = D^-1 |A|`` without a copy of ``A``: ``|A|`` is taken one row block at a time
    (a block's ``|A|`` shares ``A``'s index arrays), with the row sums ``D`` computed once, so
    ``Â^T w = |A|^T (w / D)`` needs no scaled or absolute copy of the whole matrix (on a long
    prompt ``A`` alone is most of the memory). ``row_sums`` (optional): ``D`` given rather than
    computed (``without``)."""

    def __init__(self, edges: sp.csr_array, row_sums: np.ndarray | None = None):
        self.edges = edges
        if row_sums is None:
            row_sums = np.zeros(edges.shape[0])
            for lo, hi in self.blocks():
                block = self.abs_rows(lo, hi)
                counts = torch.from_numpy(np.diff(block.indptr))
                data = torch.from_numpy(block.data.astype(np.float64))
                row_sums[lo:hi] = torch.segment_reduce(data, "sum", lengths=counts).numpy()
        self.row_sums = np.maximum(row_sums, 1e-10)  # circuit-tracer's clamp: empty rows stay 0

    def without(self, columns: np.ndarray) -> Normalized:
        """``Â`` of the graph without the source nodes ``columns``: each row divided by its
        sum over the other columns (the entries of ``columns`` stay, relative to the rest)."""
        return Normalized(self.edges, self.row_sums * (1 - self.column_fraction(columns)))

    def blocks(self, lo: int = 0, hi: int | None = None):
        """Ranges covering rows ``lo:hi`` of about ``ROW_BLOCK_ENTRIES`` entries each."""
        return row_blocks(self.edges.indptr, lo, hi)

    def abs_rows(self, lo: int, hi: int, transposed: bool = False) -> sp.csr_array | sp.csc_array:
        """Rows ``lo:hi`` of ``|A|`` (their values copied, their index arrays shared;
        ``transposed``: their transpose, ``row_block``'s)."""
        block = row_block(self.edges, lo, hi, transposed)
        block.data = np.abs(block.data)
        return block

    def rows(self, lo: int, hi: int) -> sp.csr_array:
        """Rows ``lo:hi`` of ``Â`` itself."""
        block = self.abs_rows(lo, hi)
        block.data /= np.repeat(self.row_sums[lo:hi], np.diff(block.indptr)).astype(
            block.data.dtype
        )
        return block

    def column_fraction(self, columns: np.ndarray) -> np.ndarray:
        """Per row, the share of ``|A|`` that comes from ``columns``: ``Â[:, columns].sum(1)``."""
        picked = np.zeros(self.edges.shape[1])
        picked[columns] = 1.0
        part = np.zeros(self.edges.shape[0])
        for lo, hi in self.blocks():
            part[lo:hi] = self.abs_rows(lo, hi) @ picked
        return part / self.row_sums


def influence(
    edges: sp.csr_array, stage: np.ndarray, weights: np.ndarray, a_hat=None
) -> np.ndarray:
    """``weights^T ((I - Â)^-1 - I)``: every node's influence on the weighted targets."""
    return influences([Normalized(edges) if a_hat is None else a_hat], stage, weights)[0]


def reach(edges: sp.csr_array, stage: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``influence``'s mirror, from the sources up: ``weights^T (I - Ã)^-1`` with ``Ã`` the
    transpose of ``|A|`` with each *column* divided by its sum, so a node passes its reach on
    to its targets in proportion to its outgoing |edges|. A node's reach is the share of the
    weighted nodes' (a downstream global graph's start: weight 1) |effect| that flows through
    it, the weighted nodes' own weight included: at most 1 for a weight of 1. It is
    ``influence`` of the reversed graph (edges turned round, nodes and stages in reverse
    order), so one sweep computes both."""
    back = np.arange(len(stage))[::-1]
    mirrored = sp.csr_array(edges.T.tocsr()[back][:, back])
    return influence(mirrored, -stage[back], weights[back])[back] + weights


def influences(a_hats: list[Normalized], stage: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``influence`` under each of ``a_hats`` (one ``A``, several row normalisations), in one
    sweep: each block of ``|A|`` is made once for all of them. Returns (len(a_hats), nodes)."""
    sums = np.stack([a.row_sums for a in a_hats], 1)
    total = np.zeros((len(weights), len(a_hats)))
    bounds = np.flatnonzero(np.diff(stage)) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, len(stage)]
    for lo, hi in zip(starts[::-1], ends[::-1], strict=True):  # top stage first
        w = (weights[lo:hi, None] + total[lo:hi]) / sums[lo:hi]
        if not w.any():
            continue
        # A stage's rows only reach lower stages, so its row blocks add up independently.
        for a, b in a_hats[0].blocks(lo, hi):
            total += a_hats[0].abs_rows(a, b, transposed=True) @ w[a - lo : b - lo]
    return total.T


def find_threshold(scores: np.ndarray, fraction: float) -> float:
    """The smallest score among the top scores that together hold ``fraction`` of the total."""
    ordered = np.sort(scores)[::-1]
    if not len(ordered) or ordered.sum() <= 0:
        return np.inf
    cumulative = np.cumsum(ordered) / ordered.sum()
    return float(ordered[min(np.searchsorted(cumulative, fraction), len(ordered) - 1)])


@dataclass
class Scored:
    """An unpruned graph's influence (``influence``) and scores (``graph_scores``), computed
    together once and shared by ``prune_graph``."""

    influence: np.ndarray
    scores: dict[str, float]


def influence_scores(graph: Graph) -> Scored:
    """Full-graph influence and circuit-tracer's replacement and completeness scores.

    replacement: of the influence that reaches the targets from embeddings and errors, the
    fraction from embeddings (error nodes have no inputs: their influence is unexplained).
    completeness: the fraction of each node's input that does not come from error nodes,
    averaged with weights (influence + target weight). A score with nothing to divide by (a
    graph without targets, or no influence reaching them) is NaN: undefined, not 0 or 1.

    The scores are circuit-tracer's whether or not the decoder biases are nodes (``bias``,
    ``attribute(constants=True)``): circuit-tracer's graphs have none, so the scores leave
    them out of every row's sum (``Normalized.without``; both influences in one sweep,
    ``influences``), and a graph scores the same either way. The influence returned, which
    pruning reads, counts them as the inputs they are.

    A prompt's graph must be the full one (every row closes, ``open_rows``): a pruned graph
    has lost nodes and edges, and scores of what is left read as circuit-tracer's without
    being them (its rows renormalised over the kept edges alone), so it is refused.
    """
    _check_full(graph)
    a_hat = Normalized(graph.edges)
    weights, stage = graph.target_weight.numpy(), graph.stage.numpy()
    biases = np.flatnonzero(graph.is_kind("bias").numpy())
    if not len(biases):
        infl = influence(graph.edges, stage, weights, a_hat)
        return Scored(infl, _scores(graph, infl, a_hat))
    scoring = a_hat.without(biases)
    infl, scored = influences([a_hat, scoring], stage, weights)
    return Scored(infl, _scores(graph, scored, scoring))


def _check_full(graph: Graph) -> None:
    """Refuse a prompt's graph whose rows do not close (a pruned one): ``influence_scores``."""
    if graph.positional:  # a global graph's rows are corpus sums, not one prompt's closing rows
        check_rows_close(graph, "the scores need", ": score the graph attribute returned")


def _scores(graph: Graph, infl: np.ndarray, a_hat: Normalized) -> dict[str, float]:
    """The replacement and completeness scores from influence and ``Â`` (``influence_scores``)."""
    weights = graph.target_weight.numpy()
    emb, err = graph.is_kind("embedding").numpy(), graph.is_kind("error").numpy()
    token_infl, error_infl = infl[emb].sum(), infl[err].sum()
    non_error = 1 - a_hat.column_fraction(np.flatnonzero(err))
    output_infl = infl + weights
    output_infl[graph.is_kind("bias").numpy()] = 0.0  # not nodes of circuit-tracer's graph
    return {
        "replacement": _ratio(token_infl, token_infl + error_infl),
        "completeness": _ratio((non_error * output_infl).sum(), output_infl.sum()),
    }


def _ratio(part: float, whole: float) -> float:
    return float(part / whole) if whole > 0 else float("nan")


def graph_scores(graph: Graph) -> dict[str, float]:
    """circuit-tracer's replacement and completeness scores of an unpruned graph
    (``influence_scores``)."""
    return influence_scores(graph).scores


def prune_graph(
    graph: Graph,
    node_threshold: float = NODE_THRESHOLD,
    edge_threshold: float = EDGE_THRESHOLD,
    max_nodes: int | None = None,
    *,
    scored: Scored | None = None,
    keep: Iterable[int] | None = None,
) -> Graph:
    """The subgraph that carries ``node_threshold`` of the influence on the targets, with the
    edges that carry ``edge_threshold`` of the remaining edge influence; heads, features and
    errors left without an outgoing edge (heads and features also without an incoming edge)
    are removed until none is left. Embeddings, logits and node targets always stay, and so do
    the nodes ``keep`` names (indices of ``graph``: the trace keeps the heads behind a kept
    head's attention, whose own influence on the targets is small; ``circuits.trace.qk_step``).
    ``max_nodes`` caps the heads, features and errors kept (most influential first).
    ``scored`` (optional): this graph's ``influence_scores``, when the caller has them.
    """
    checked_graph(graph)  # a bare AttributeError on None before (a review)
    if max_nodes is not None:
        checked_count(max_nodes, "max_nodes")
    node_threshold = checked_fraction(node_threshold, "node_threshold")
    edge_threshold = checked_fraction(edge_threshold, "edge_threshold")
    if graph.positional:  # its thresholds are fractions of the full graph's influence
        check_rows_close(graph, "pruning needs", ": prune the graph attribute returned")
    if scored is not None and scored.influence.shape != (graph.n_nodes,):
        raise ValueError(f"scored holds {len(scored.influence)} nodes' influence, the graph has "
                         f"{graph.n_nodes}: pass this graph's influence_scores")  # fmt: skip
    stage, weights = graph.stage.numpy(), graph.target_weight.numpy()
    infl = scored.influence if scored is not None else influence(graph.edges, stage, weights)
    always = (graph.is_kind("embedding") | graph.is_target).numpy()
    if keep is not None:
        always[graph.node_indices(list(keep), "keep").numpy()] = True
    inner = graph.is_kind(*CAPPED_KINDS).numpy()
    keep = infl >= find_threshold(infl, node_threshold)
    if max_nodes is not None:
        ranked = np.flatnonzero(keep & inner)
        ranked = ranked[np.argsort(-infl[ranked], kind="stable")]
        keep[ranked[max_nodes:]] = False
    keep |= always

    idx = np.flatnonzero(keep)
    sub = sp.csr_array(graph.edges[idx][:, idx])
    sub_norm = Normalized(sub)
    sub_hat = sub_norm.rows(0, len(idx))  # same sparsity structure as sub, entry for entry
    sub_infl = influence(sub, stage[idx], weights[idx], sub_norm) + weights[idx]
    coo, coo_hat = sub.tocoo(), sub_hat.tocoo()
    row, col = coo.row, coo.col
    scores = coo_hat.data * sub_infl[row]
    edge_keep = scores >= find_threshold(scores, edge_threshold)

    # Drop nodes left dangling, until nothing changes.
    must_out = inner[idx] & ~always[idx]
    must_in = graph.is_kind("lorsa", "transcoder").numpy()[idx] & ~always[idx]
    alive = np.ones(len(idx), dtype=bool)
    while True:
        e = edge_keep & alive[row] & alive[col]
        has_out = np.bincount(col[e], minlength=len(idx)) > 0
        has_in = np.bincount(row[e], minlength=len(idx)) > 0
        new = alive & ~(must_out & ~has_out) & ~(must_in & ~has_in)
        if (new == alive).all():
            break
        alive = new

    new_index = np.cumsum(alive) - 1
    e = edge_keep & alive[row] & alive[col]
    n = int(alive.sum())
    edges = sp.csr_array((coo.data[e], (new_index[row[e]], new_index[col[e]])), shape=(n, n))
    pruned = graph.subgraph(torch.from_numpy(idx[alive]), edges=edges)
    pruned.influence = torch.from_numpy(infl[idx[alive]]).float()
    pruned.settings = {
        **graph.settings,
        "node_threshold": node_threshold,
        "edge_threshold": edge_threshold,
        "max_nodes": max_nodes,
        "unpruned": {"nodes": graph.n_nodes, "edges": graph.n_edges},
    }
    return pruned
