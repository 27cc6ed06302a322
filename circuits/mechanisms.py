"""The mechanism summary: a graph read at the level of groups, with checks of its linearity.

Built from the *full* graph of a prompt (every edge, so every number is exact) and its groups
(``circuits.groups.auto_groups``). For each target ``t`` (``circuits.interventions.target_nodes``:
the logits, then any head or feature the graph was traced from, whose value is its
pre-activation):

- **flows.** ``h_n = d value_t / d value_n`` through the frozen linear graph (``h_t = 1``;
  ``h_s = sum_r h_r edges[r, s] / activation_s``); a node's *flow* ``h_n activation_n`` is its
  total signed contribution to the target along every path, and a group's flow the sum of its
  members'. The target's value splits exactly into ``tokens`` (the embeddings' flows),
  ``errors`` (the error nodes'), and ``constants``: the bias nodes' flows plus every node's
  own constant term reaching the target (``h_n bias_n``: ``b_V``, ``b_enc``, ``b_U``, and in
  graphs without bias nodes the decoder biases those terms hold).
- **paths.** Group-level paths from the target down to a root group (embedding, error or
  constant), found by a beam search. A path's flow is exact: the part of the target that flows
  along that sequence of groups (at node level, the sum over every member-level path through
  those groups in that order). ``hops`` are the summed edges between consecutive groups.
- **predicting head group.** Among the Lorsa groups at the target's position that move
  something from elsewhere (their key is neither that position nor BOS), the one with the
  largest positive flow (else any positive flow, else the largest |flow|): the heads that
  move what is predicted.
- **groups.** The summary's groups (the predicting head groups, the groups on the top paths,
  then the largest flows) with the structure that reads them: where a head group attends and
  why (``QKReason`` of each of its QK heads at that key: both sides' always-on parts named,
  the specific query-unit x key-unit pairs with their nodes' fields, and where what the query
  and the key hold comes from through the graph: tokens, heads, features), each feature's
  concept label and promoted tokens.
- **checks.** For each head and feature group: the change of every target when the group is
  ablated, predicted by the linear graph (``circuits.interventions.predict`` on the full
  graph) and measured by rerunning the replacement model with attention frozen and with it
  free (``intervene``). A check is *flagged* where a measured change disagrees in sign with the
  prediction, or differs from it by more than ``RATIO`` x in magnitude, unless both are below
  ``TOLERANCE`` (logit units): the places where the linear graph is not to be trusted.

The summary is a record (``MechanismSummary``) that ``to_dict``/``from_dict`` write and read
as JSON (``save_summary``, beside the graph as ``mechanisms.json``); ``format_summary`` prints
it and ``reports.html`` renders it. Ids are for files and people: every node a record
mentions comes with its fields (``NodeRef``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from toy_models.records import from_json

from .attribution import PromptRun
from .graph import MODES, Graph, QKAttribution
from .groups import AUTO_RULES, GroupedGraph, auto_groups, node_name
from .interventions import Intervention, intervene, predict, target_nodes
from .nodes import Kind, lorsa_stage, unit_id
from .prune import row_blocks
from .qk import qk_record
from .threads import single_thread

TOLERANCE = 0.01  # effects below this (logit units) on both sides agree whatever their sign
RATIO = 3.0  # a measured effect this many times larger or smaller than predicted is flagged
BEAM = 24
MAX_PATHS = 5
MAX_GROUPS = 10
HEAD_GROUPS = 3  # head groups at each target's position the summary ranks
QK_PAIRS = 5
SIDE_SOURCES = 4  # groups per category listed for each side of a QK reason
ROOT_PAIRS = 5  # root x root terms listed for each QK reason
ROOT_BATCH = 8  # QK reasons per root-pair sweep (2 x d_qk columns each: bounds memory)
SIDE_BATCH = 64  # readouts per sweep of the QK reasons' side flows (two per reason)
PSEUDO_ROOTS = (("QK bias side", "qk_bias"), ("own terms of the nodes", "own"))  # qk_root_pairs
VERSION = 1
CLOSURE = 1e-3  # relative tolerance of the sums a summary file must close (float32 sums)
ROUNDING = 1e-9  # a part this small against the whole it is part of is float rounding


# ----------------------------------------------------------------- records
@dataclass
class NodeRef:
    """A node named in a summary, with its fields: ``kind``, ``layer`` (block; -1 embeddings),
    ``pos`` and ``index``; a head's key (``attends``) and QK head; a unit's concept label and
    promoted tokens; ``main_input``: the source of its largest incoming |edge| (id, kind,
    layer, pos, attends and its share of the |edges|), for the key-side nodes of QK pairs.
    ``present`` is False for a unit absent at the position a QK term names it at (it acts
    through its mean alone): ``id`` is then the unit id, ``pos`` is None, and ``token`` is
    an embedding unit's token."""

    id: str | None
    kind: str
    present: bool = True
    layer: int | None = None
    stage: int | None = None
    pos: int | None = None
    index: int | None = None
    token: str | None = None  # the prompt token at ``pos``
    attends: int | None = None
    qk_head: int | None = None
    concept: str | None = None
    concept_f1: float | None = None
    promotes: list[str] = field(default_factory=list)
    main_input: dict | None = None


@dataclass
class QKTermRecord:
    """One specific QK term: query-side unit x key-side unit (``NodeRef``), its value."""

    query: NodeRef
    key: NodeRef
    value: float


@dataclass
class SourceShare:
    """A group's total contribution (``value``) to one side of a QK reason's specific part,
    with the group's fields (``circuits.groups.Group``)."""

    name: str
    kind: str
    layer: int | None
    pos: int | None
    attends: int | None
    concept: str | None
    value: float


@dataclass
class RootPair:
    """One term of a QK reason's ``specific`` part split by roots on both sides
    (``qk_root_pairs``): the part of the query's deviation that comes from the root group
    ``query`` (a token embedding at some position, an error, a constant) against the part of
    the key's deviation that comes from the root group ``key``. For induction the expected
    term is the current token at the query against the token before the key, which reaches
    the key through the heads there that read it. Each side's ``value`` is that root's total
    against the other side's whole deviation; besides the graph's roots, a side has two
    pseudo-roots: ``qk_bias`` (the QK bias side: ``b_Q``/``b_K`` and the residual constants
    not held by nodes) and ``own`` (the nodes' own terms, e.g. encoder biases)."""

    query: SourceShare
    key: SourceShare
    value: float


@dataclass
class QKReasonRecord:
    """A head group's attention at its key, split as ``circuits.graph.QKReason`` (the four
    parts sum to ``score``).

    Each side of the ``specific`` part splits into what that position holds and the mean it
    is measured against: ``specific = query_at - mean query . dv = key_at - du . mean key``,
    with ``query_at = u(q) . dv`` (this query's own vector against the key's deviation) and
    ``key_at = du . v(k)`` (the query's deviation against this key's own vector).
    ``query_sources`` / ``key_sources``: where ``query_at`` / ``key_at`` come from through the
    graph. Each is linear in every node below the head: a node at the query (key) adds its
    own query (key) vector's term, and every node adds what it passes on through the nodes it
    feeds (the backward flow of ``node_flows``; a token at another position reaches the key
    only through heads at the key that read it). Grouped by the summary's groups, the
    ``SIDE_SOURCES`` largest of each category, largest first: ``roots`` (token embeddings,
    errors, constants: their totals, the nodes' own terms and the QK bias term sum to
    ``query_at`` / ``key_at``), ``heads`` and ``features`` (totals through them).
    ``root_pairs`` (for the group's first QK head, the one with the largest flow):
    ``specific`` split by roots on both sides at once (``RootPair``,
    ``qk_root_pairs``), its ``ROOT_PAIRS`` largest terms between tokens and errors: which token
    at the query meets which token the key holds (its own, or one moved there by the heads at
    the key); ``root_parts``: the exact split of ``specific`` into ``tokens``, ``errors`` and
    ``constants`` (``root_split``)."""

    layer: int
    qk_head: int
    query: int
    key: int
    key_token: str
    attention: float
    score: float
    mean_query_mean_key: float
    query_vs_mean_key: float
    mean_query_vs_key: float
    specific: float
    rest: float
    rest_share: float
    pairs: list[QKTermRecord]
    query_at: float | None = None
    key_at: float | None = None
    query_sources: dict[str, list[SourceShare]] = field(default_factory=dict)
    key_sources: dict[str, list[SourceShare]] = field(default_factory=dict)
    root_pairs: list[RootPair] = field(default_factory=list)
    root_parts: dict[str, float] = field(default_factory=dict)


@dataclass
class EffectCheck:
    """Ablating a group: the change of one target predicted by the linear graph and measured
    with attention frozen and free; ``agree_*`` (sign, module docstring) and ``ratio_*``
    (|measured| / |predicted|, None when the prediction is 0); ``flagged``: a sign
    disagreement or a ratio beyond ``RATIO`` in either mode."""

    target: str
    predicted: float
    frozen: float
    free: float
    agree_frozen: bool
    agree_free: bool
    ratio_frozen: float | None
    ratio_free: float | None
    flagged: bool


@dataclass
class GroupRecord:
    """A group of the summary: ``key`` (``g0``, ``g1``, ... within this summary), ``name`` (for
    people), the structure its members share, its members (ids; ``in_pruned`` those the pruned
    graph keeps), ``flow`` per target node id, the tokens its strongest member promotes, the QK
    reasons of its heads and its ablation checks."""

    key: str
    name: str
    kind: str
    layer: int | None
    pos: int | None
    attends: int | None
    attends_token: str | None
    qk_heads: list[int]
    concept: str | None
    members: list[str]
    in_pruned: list[str]
    flow: dict[str, float]
    promotes: list[str] = field(default_factory=list)
    qk: list[QKReasonRecord] = field(default_factory=list)
    checks: list[EffectCheck] = field(default_factory=list)


@dataclass
class PathRecord:
    """A group-level path into ``target``: ``groups`` (keys) from the root up, ``flow`` its
    exact contribution, ``hops[i]`` the summed edge from ``groups[i]`` to the next group (the
    last into the target)."""

    target: str
    groups: list[str]
    flow: float
    hops: list[float]


@dataclass
class TargetRecord:
    """A target: a logit (or logit difference), or a head or feature (``kind``; ``token`` its
    name, ``value`` its pre-activation, no probability or runner-up); its value split exactly
    into ``tokens + errors + constants``;
    ``constants_by_source`` the constant part by where it comes from (each sublayer's bias
    nodes, ``own`` the nodes' own terms); the runner-up token and the margin over it; the
    predicting head group (a group key) and the ``HEAD_GROUPS`` head groups at the target's
    position ranked as it was chosen (positive flows first, largest first)."""

    node: str
    token: str
    negative: str | None
    probability: float | None
    value: float
    tokens: float
    errors: float
    constants: float
    constants_by_source: list[tuple[str, float]]
    runner_up: str | None
    runner_up_probability: float | None
    margin: float | None
    predicting_group: str | None
    head_groups: list[str] = field(default_factory=list)
    kind: str = "logit"  # or the kind of a head or feature target ("lorsa", "transcoder")

    @property
    def label(self) -> str:
        """How the target is named to a reader: ``' Friday'``, ``' Friday' - ' May'``, or a
        head's or feature's name (``token`` holds it; its value is its pre-activation)."""
        if self.kind != "logit":
            return self.token
        return repr(self.token) + (f" - {self.negative!r}" if self.negative else "")


@dataclass
class MechanismSummary:
    """The summary of one prompt's graph (module docstring)."""

    prompt: str
    tokens: list[str]
    mode: str
    model: str
    targets: list[TargetRecord]
    groups: list[GroupRecord]
    paths: list[PathRecord]
    settings: dict

    def group(self, key: str) -> GroupRecord:
        return next(g for g in self.groups if g.key == key)

    def to_dict(self) -> dict:
        return {"version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> MechanismSummary:
        try:
            if d.get("version") != VERSION:
                raise ValueError(f"version {d.get('version')!r}, expected {VERSION}")
            return _summary_from_dict(d)
        except ValueError as exc:
            raise ValueError(f"not a mechanism summary ({exc})") from None


def _summary_from_dict(d: dict) -> MechanismSummary:
    """Every field typed (``toy_models.records.from_json``), then the references and sums
    that tie the records together: group keys unique and every key a target, a path or a
    check names defined; each target's parts closing to its value and each QK reason's to its
    score (``CLOSURE`` of the larger magnitude); attentions and probabilities in [0, 1]; the mode
    one of ``MODES``."""
    summary = from_json(MechanismSummary, {k: v for k, v in d.items() if k != "version"}, "summary")
    _expect(summary.mode in MODES, f"mode: {summary.mode!r}, not one of {list(MODES)}")
    keys = [g.key for g in summary.groups]
    _expect(len(set(keys)) == len(keys), "groups: two groups share a key")
    targets = {t.node for t in summary.targets}
    for i, t in enumerate(summary.targets):
        where = f"targets[{i}]"
        named = [t.predicting_group] if t.predicting_group is not None else []
        _expect(set(named + t.head_groups) <= set(keys), f"{where}: names a group not defined")
        _closes(t.tokens + t.errors + t.constants, t.value, f"{where}: tokens + errors + constants")
        for p in (t.probability, t.runner_up_probability):
            _expect(p is None or 0 <= p <= 1, f"{where}: a probability outside [0, 1]")
    for i, g in enumerate(summary.groups):
        where = f"groups[{i}]"
        _expect(bool(g.members) and set(g.in_pruned) <= set(g.members), f"{where}: members")
        _expect(set(g.flow) <= targets, f"{where}.flow: a flow into a node that is no target")
        _expect({c.target for c in g.checks} <= targets, f"{where}.checks: an unknown target")
        for j, r in enumerate(g.qk):
            parts = r.mean_query_mean_key + r.query_vs_mean_key + r.mean_query_vs_key + r.specific
            _closes(parts, r.score, f"{where}.qk[{j}]: always-on + specific")
            _expect(0 <= r.attention <= 1, f"{where}.qk[{j}].attention: outside [0, 1]")
    for i, p in enumerate(summary.paths):
        where = f"paths[{i}]"
        _expect(p.target in targets and set(p.groups) <= set(keys), f"{where}: unknown names")
        _expect(len(p.hops) == len(p.groups), f"{where}: one hop per group")
    return summary


def _expect(ok: bool, problem: str) -> None:
    if not ok:
        raise ValueError(problem)


def _closes(total: float, value: float, what: str) -> None:
    _expect(
        abs(total - value) <= CLOSURE * max(1.0, abs(total), abs(value)),
        f"{what} = {total:.6g}, not {value:.6g}",
    )


def save_summary(summary: MechanismSummary, path: str | Path) -> None:
    """Write ``summary`` as JSON atomically."""
    from toy_models.files import write_json_atomic

    write_json_atomic(Path(path), summary.to_dict())


def load_summary(path: str | Path) -> MechanismSummary:
    """Read a summary written by ``save_summary``; a ValueError names the file."""
    try:
        return MechanismSummary.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: {exc}") from None


# ----------------------------------------------------------------- flows
class EdgeSweep:
    """Backward sweeps over a graph's edges, read in place: a long prompt's graph holds 1e8
    edges (0.9 GB), and a transposed copy for column access would double that at the trace's
    peak. A sweep visits the stages from the top down; once a stage's ``h`` is final, its
    rows push ``edges[rows].T @ h[rows]`` into the stages below, one block of about
    ``ROW_BLOCK_ENTRIES`` edges at a time (``circuits.prune.row_blocks``; float32 products,
    float64 sums), so the only copies are one block's."""

    def __init__(self, graph: Graph):
        self.edges = graph.edges
        self.stage = graph.stage.numpy()
        self.activation = graph.activation.double().numpy()

    def push(self, lo: int, hi: int, h: np.ndarray, into: np.ndarray) -> None:
        """``into += edges[lo:hi].T @ h[lo:hi]``; ``h`` (node,) or (node, columns)."""
        edges = self.edges
        for a, b in row_blocks(edges.indptr, lo, hi):
            if not h[a:b].any():
                continue
            start, end = int(edges.indptr[a]), int(edges.indptr[b])
            block = sp.csr_array(
                (edges.data[start:end], edges.indices[start:end], edges.indptr[a : b + 1] - start),
                shape=(b - a, edges.shape[1]), copy=False,
            )  # fmt: skip
            into += block.T @ h[a:b].astype(np.float32)

    def sweep(self, direct: np.ndarray, h: np.ndarray, flow: np.ndarray, below_stage: int):
        """Fill ``flow`` and ``h`` stage by stage, from the top stage below ``below_stage``
        down: ``flow = direct + edges.T @ h``, ``h = flow / activation``; rows from
        ``below_stage`` up pass on the ``h`` they hold (a target's 1)."""
        stage = self.stage
        into = np.zeros(direct.shape)
        self.push(int(np.searchsorted(stage, below_stage)), len(stage), h, into)
        for s in np.unique(stage[stage < below_stage])[::-1]:
            lo, hi = np.searchsorted(stage, s), np.searchsorted(stage, s, side="right")
            flow[lo:hi] = direct[lo:hi] + into[lo:hi]
            act = self.activation[lo:hi].reshape(-1, *[1] * (flow.ndim - 1))
            h[lo:hi] = np.where(act != 0, flow[lo:hi] / np.where(act != 0, act, 1.0), 0.0)
            self.push(lo, hi, h, into)
        return flow, h


def node_flows(
    graph: Graph, target: int, edge_sweep: EdgeSweep | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(flow, h) of every node for the target node ``target`` (module docstring): ``flow[n]``
    its total signed contribution to the target's value, ``h[n] = d value / d value_n``.
    ``edge_sweep``: the graph's ``EdgeSweep``, when the caller has one."""
    return many_node_flows(graph, [target], edge_sweep)[target]


def many_node_flows(
    graph: Graph, targets: list[int], edge_sweep: EdgeSweep | None = None
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``node_flows`` of several targets, those of one stage (the logits) in one sweep: a
    sparse product with many columns costs little more than one with a single column."""
    edge_sweep = edge_sweep or EdgeSweep(graph)
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


def linear_flows(
    graph: Graph, direct: np.ndarray, below_stage: int, edge_sweep: EdgeSweep | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(flow, h) of a linear readout ``R = sum_n direct[n]`` of the nodes below ``below_stage``
    (``direct[n]``: node n's own term, proportional to its activation): ``flow[n]`` is n's
    total contribution to R through every node it feeds, ``h[n] = dR / d value_n``. A
    ``direct`` of shape (node, d) sweeps d readouts at once (a vector readout)."""
    edge_sweep = edge_sweep or EdgeSweep(graph)
    return edge_sweep.sweep(direct, np.zeros(direct.shape), np.zeros(direct.shape), below_stage)


def qk_side_flows(
    graph: Graph, side, qk_head: int, query: int, key: int, edge_sweep: EdgeSweep | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Per node, its total contribution (``linear_flows``) to ``query_at`` and to ``key_at``
    of the QK reason at (``qk_head``, ``query``, ``key``) (``QKReasonRecord``), and the parts:
    ``query_at``, ``key_at``, ``specific`` and the QK bias side's terms in the first two
    (``query_bias``, ``key_bias``). ``side`` is the layer's ``circuits.qk.QKSides``. Each
    side's root flows, the nodes' own terms and its bias term sum to its ``_at`` part."""
    return many_qk_side_flows(graph, [(side, qk_head, query, key)], edge_sweep)[0]


def many_qk_side_flows(
    graph: Graph, requests: list[tuple], edge_sweep: EdgeSweep | None = None
) -> list[tuple[np.ndarray, np.ndarray, dict[str, float]]]:
    """``qk_side_flows`` of many (``QKSides``, QK head, query, key) requests, their readouts
    swept together (``SIDE_BATCH`` columns per sweep). A readout is zero above its own
    Lorsa layer, so sweeping it from a higher stage adds exact zeros."""
    edge_sweep = edge_sweep or EdgeSweep(graph)
    directs, parts = [], []
    for request in requests:
        q_direct, k_direct, part = _qk_side_directs(graph, *request)
        directs += [q_direct, k_direct]
        parts.append(part)
    flows = []
    below = max((int(lorsa_stage(side.layer)) for side, *_ in requests), default=0)
    for start in range(0, len(directs), SIDE_BATCH):
        batch = np.stack(directs[start : start + SIDE_BATCH], axis=1)
        flow = linear_flows(graph, batch, below, edge_sweep)[0]
        flows += [flow[:, j].copy() for j in range(flow.shape[1])]
    return [(flows[2 * i], flows[2 * i + 1], part) for i, part in enumerate(parts)]


def _qk_side_directs(
    graph: Graph, side, qk_head: int, query: int, key: int
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """The nodes' own terms in ``query_at`` and ``key_at`` (``qk_side_flows``), and the parts."""
    wq, wk = (w.numpy() for w in side.reference_weights(query, key, torch.float64))
    valid = side.slot_valid.numpy()
    u = side.query[:, :, qk_head].double().numpy() * valid[..., None]  # pos 1+slot e
    v = side.key[:, :, qk_head].double().numpy() * valid[..., None]
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
    return qk_root_tables(view, [(side, qk_head, query, key)], edge_sweep)[0]


def qk_root_tables(
    view: GroupedGraph, requests: list[tuple], edge_sweep: EdgeSweep | None = None
) -> list[tuple[list[SourceShare], list[SourceShare], np.ndarray]]:
    """``qk_root_pairs`` of many (``QKSides``, QK head, query, key) requests, their readouts
    swept together (``ROOT_BATCH`` requests per sweep: a sparse product with many columns
    costs much less per column than one with a few)."""
    graph = view.graph
    edge_sweep = edge_sweep or EdgeSweep(graph)
    roots = np.flatnonzero([g.is_root for g in view.groups])
    is_root = np.isin(view.of_node, roots)
    names = [view.groups[g] for g in roots]

    def shares(totals: np.ndarray) -> list[SourceShare]:
        out = [SourceShare(g.name, g.kind, g.layer, g.pos, g.attends, g.concept, float(x))
               for g, x in zip(names, totals[:-2], strict=True)]  # fmt: skip
        for (name, kind), x in zip(PSEUDO_ROOTS, totals[-2:], strict=True):
            out.append(SourceShare(name, kind, None, None, None, None, float(x)))
        return out

    out = []
    for start in range(0, len(requests), ROOT_BATCH):
        batch = requests[start : start + ROOT_BATCH]
        directs, biases = [], []
        for side, qk_head, query, key in batch:
            wq, wk = (w.numpy() for w in side.reference_weights(query, key, torch.float64))
            valid, at = side.valid.numpy(), side.at.numpy()
            for vectors, weight in ((side.query, wq), (side.key, wk)):
                vec = vectors[:, :, qk_head].double().numpy()  # pos 1+slot e
                direct = np.zeros((graph.n_nodes, vec.shape[-1]))
                direct[at[valid]] = (weight[:, None, None] * vec[:, 1:])[valid]
                directs.append(direct)
                biases.append(weight @ vec[:, 0])
        direct = np.concatenate(directs, axis=1)  # node (request side e)
        below = max(int(lorsa_stage(side.layer)) for side, *_ in batch)
        flow = linear_flows(graph, direct, below, edge_sweep)[0]
        by_group = np.zeros((view.n_groups, direct.shape[1]))
        np.add.at(by_group, view.of_node[is_root], flow[is_root])
        by_root = by_group[roots]
        own = direct.sum(0) - by_root.sum(0)
        width = len(biases[0])
        for i, (side, *_) in enumerate(batch):
            du, dv = (
                np.concatenate([by_root[:, sl], biases[j][None], own[None, sl]])
                for j in (2 * i, 2 * i + 1)
                for sl in [slice(j * width, (j + 1) * width)]
            )
            table = du @ dv.T / math.sqrt(side.lorsa.cfg.d_qk)
            out.append((shares(table.sum(1)), shares(table.sum(0)), table))
    return out


def root_split(
    query_rows: list[SourceShare], key_rows: list[SourceShare], table: np.ndarray, top: int
) -> tuple[list[RootPair], dict[str, float]]:
    """A ``qk_root_pairs`` table read for people: its ``top`` largest terms by magnitude
    between tokens and errors (largest first), and the table's exact split into ``tokens``
    (token x token terms), ``constants`` (every term with a constant on either side: bias
    nodes, the QK bias side, the nodes' own terms; the always-on part, which cancels across
    positions only where nothing varies) and ``errors`` (the rest: terms with an error)."""
    constant = np.array([r.kind in ("bias", "qk_bias", "own") for r in query_rows])
    token_q = np.array([r.kind == "embedding" for r in query_rows])
    token_k = np.array([r.kind == "embedding" for r in key_rows])
    varying = table[~constant][:, ~constant]
    parts = {
        "tokens": float(table[token_q][:, token_k].sum()),
        "errors": float(varying.sum() - table[token_q][:, token_k].sum()),
        "constants": float(table.sum() - varying.sum()),
    }
    kept = np.flatnonzero(~constant)  # the same rows on both sides
    magnitude = np.abs(varying).ravel()
    flat = np.argpartition(-magnitude, top - 1)[:top] if magnitude.size > top else \
        np.arange(magnitude.size)  # fmt: skip
    flat = flat[np.argsort(-magnitude[flat], kind="stable")]
    a, b = np.unravel_index(flat, varying.shape)
    pairs = [
        RootPair(query_rows[kept[i]], key_rows[kept[j]], float(varying[i, j]))
        for i, j in zip(a.tolist(), b.tolist(), strict=True)
        if varying[i, j] != 0
    ]
    return pairs, parts


def _side_sources(view: GroupedGraph, flow: np.ndarray) -> dict[str, list[SourceShare]]:
    sums = np.bincount(view.of_node, flow, minlength=view.n_groups)
    out: dict[str, list[SourceShare]] = {"roots": [], "heads": [], "features": []}
    for g in np.argsort(-sums, kind="stable").tolist():
        grp = view.groups[g]
        category = (
            "roots" if grp.is_root else {"lorsa": "heads", "transcoder": "features"}.get(grp.kind)
        )
        if sums[g] == 0 or category is None or len(out[category]) >= SIDE_SOURCES:
            continue
        out[category].append(
            SourceShare(
                grp.name, grp.kind, grp.layer, grp.pos, grp.attends, grp.concept, float(sums[g])
            )  # fmt: skip
        )
    return out


def target_parts(graph: Graph, target: int, flow: np.ndarray, h: np.ndarray) -> dict:
    """``tokens``, ``errors``, ``constants`` (summing to the target's value) and the constant
    part by source: each sublayer's bias nodes and ``own`` (the nodes' own terms)."""
    kinds = graph.kind.numpy()
    own = h * graph.bias.double().numpy()
    is_bias = kinds == Kind.BIAS
    by_stage = {}
    for s in np.unique(graph.stage.numpy()[is_bias]).tolist():
        sel = is_bias & (graph.stage.numpy() == s)
        layer, attn = (s - 1) // 2, s % 2 == 1
        by_stage[f"L{layer} {'attn' if attn else 'mlp'} bias"] = float(flow[sel].sum())
    by_source = sorted(by_stage.items(), key=lambda kv: -abs(kv[1]))
    by_source.append(("own", float(own.sum())))
    return {
        "tokens": float(flow[kinds == Kind.EMBEDDING].sum()),
        "errors": float(flow[kinds == Kind.ERROR].sum()),
        "constants": float(flow[is_bias].sum() + own.sum()),
        "constants_by_source": by_source,
    }


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
    hops), by a beam search from the target down (module docstring)."""
    graph = view.graph
    edges = graph.edges
    activation = graph.activation.double().numpy()
    start = view.group_of(target)
    # A partial path: (groups from the target down, members' d(target)/d(value), flow).
    frontier = [([start], {target: 1.0}, float(graph.value[target]))]
    done: list[tuple[list[int], float]] = []
    while frontier:
        children = []
        for path, b, _ in frontier:
            rows = np.fromiter(b, dtype=np.int64)
            weights = np.fromiter(b.values(), dtype=np.float64)
            block = edges[rows]
            r = np.asarray(weights @ block).ravel() if block.nnz else np.zeros(graph.n_nodes)
            cols = np.flatnonzero(r)
            if not len(cols):
                continue
            groups = view.of_node[cols]
            sums = np.bincount(groups, r[cols], minlength=view.n_groups)
            candidates = np.unique(groups)
            candidates = candidates[~np.isin(candidates, path)]
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


def _summed_edge(edges, targets: list[int], sources: list[int]) -> float:
    """The sum of the edges from ``sources`` into ``targets``."""
    return float(edges[targets][:, sources].sum(dtype=np.float64))


# ----------------------------------------------------------------- the summary
def summarize(
    replacement,
    full: Graph,
    run: PromptRun,
    *,
    pruned: Graph | None = None,
    concepts: Mapping[str, tuple[str, float]] | None = None,
    view: GroupedGraph | None = None,
    beam: int = BEAM,
    max_paths: int = MAX_PATHS,
    max_groups: int = MAX_GROUPS,
    check: bool = True,
    tolerance: float = TOLERANCE,
) -> MechanismSummary:
    """The mechanism summary of ``full`` (the unpruned graph of ``run``'s prompt; module
    docstring). ``pruned`` (optional) marks the members the drawn graph keeps; ``concepts``
    (unit id -> (label, F1)) labels units and groups them (``auto_groups``); ``view`` replaces
    the automatic groups with the caller's (``circuits.groups.grouped``); ``check`` runs the
    ablation checks (two reruns of the model per head or feature group)."""
    with single_thread():
        return _summarize(
            replacement, full, run, pruned=pruned, concepts=concepts, view=view, beam=beam,
            max_paths=max_paths, max_groups=max_groups, check=check, tolerance=tolerance,
        )  # fmt: skip


def _summarize(
    replacement, full, run, *, pruned, concepts, view, beam, max_paths, max_groups, check,
    tolerance,
) -> MechanismSummary:  # fmt: skip
    concepts = concepts or {}
    grouping = "given" if view is not None else AUTO_RULES
    view = view or auto_groups(full, concepts)
    targets = target_nodes(full)  # the logits, then heads or features traced from
    own = {t: int(view.of_node[t]) for t in targets}  # a target's group never explains itself
    flows: dict[int, np.ndarray] = {}
    per_target, paths, chosen, ranked = [], [], [], set()
    probs = run.logits[-1].softmax(-1)
    edge_sweep = EdgeSweep(full)
    target_flows = many_node_flows(full, targets, edge_sweep)
    for t in targets:
        flow, h = target_flows[t]
        flows[t] = flow
        group_flow = np.bincount(view.of_node, flow, minlength=view.n_groups)
        ranking = [g for g in _head_ranking(view, group_flow, int(full.pos[t]))
                   if g != own[t]][:HEAD_GROUPS]  # fmt: skip
        chosen += ranking
        ranked.update(ranking)
        for groups, path_flow, hops in top_paths(view, t, beam=beam, keep=max_paths):
            paths.append((t, groups, path_flow, hops))
            chosen += [g for g in groups if not view.groups[g].is_root]
        per_target.append((t, target_parts(full, t, flow, h), ranking))
    # Fill up with the largest flows into the first target.
    if targets:
        group_flow = np.bincount(view.of_node, flows[targets[0]], minlength=view.n_groups)
        inner = [g for g in np.argsort(-np.abs(group_flow)).tolist()
                 if view.groups[g].kind in ("lorsa", "transcoder")
                 and g != own[targets[0]]]  # fmt: skip
        chosen += inner[:max_groups]
    inner_chosen = list(
        dict.fromkeys(g for g in chosen if view.groups[g].kind in ("lorsa", "transcoder"))
    )
    keep_inner = set(inner_chosen[:max_groups])
    on_paths = {g for _, groups, _, _ in paths for g in groups}
    listed = [g for g in dict.fromkeys(chosen + sorted(on_paths))
              if g in keep_inner or g in ranked or g in on_paths]  # fmt: skip
    keys = {g: f"g{k}" for k, g in enumerate(listed)}
    ids = full.ids
    pruned_ids = set(pruned.ids) if pruned is not None else set()
    sides: dict = {}
    units = unit_nodes(full)
    records = []
    pending = []  # (QK reason, its root-pair request): computed together below
    side_requests = []  # (QK reason, its side-flow request): computed together below
    for g in listed:
        grp = view.groups[g]
        member_flow = {ids[t]: flows[t][grp.members] for t in targets}
        total = {t: float(v.sum()) for t, v in member_flow.items()}
        strongest = grp.members[int(np.argmax(np.abs(member_flow[ids[targets[0]]])))] if targets \
            else grp.members[0]  # fmt: skip
        record = GroupRecord(
            key=keys[g], name=grp.name, kind=grp.kind, layer=grp.layer, pos=grp.pos,
            attends=grp.attends,
            attends_token=None if grp.attends is None else full.token_strings[grp.attends],
            qk_heads=grp.qk_heads, concept=grp.concept,
            members=[ids[m] for m in grp.members],
            in_pruned=[ids[m] for m in grp.members if ids[m] in pruned_ids],
            flow=total,
            promotes=[full.token(x) for x in full.promotes[strongest].tolist() if x >= 0],
        )  # fmt: skip
        if grp.kind == "lorsa" and grp.attends is not None and grp.pos is not None:
            by_head: dict[int, float] = {}
            first = ids[targets[0]] if targets else None
            for m, f in zip(grp.members, member_flow[first] if first else [], strict=False):
                head = int(full.index[m]) // full.group_size
                by_head[head] = by_head.get(head, 0.0) + abs(float(f))
            heads = sorted(grp.qk_heads, key=lambda x: -by_head.get(x, 0.0))[:2]
            for head in heads:
                a = qk_record(replacement, run, grp.layer, head, grp.pos, grp.attends,
                              top=QK_PAIRS, sides=sides)  # fmt: skip
                reason = _reason_record(full, a, concepts, units)
                request = (sides[grp.layer][0], head, grp.pos, grp.attends)
                side_requests.append((reason, request))
                if head == heads[0]:  # the group's main QK head (the sweeps cost most)
                    pending.append((reason, request))
                record.qk.append(reason)
        if check and g in keep_inner and targets:
            record.checks = _checks(replacement, full, run, grp.members, targets, tolerance, flows)
        records.append(record)
    side_flows = many_qk_side_flows(full, [request for _, request in side_requests], edge_sweep)
    for (reason, _), (q_flow, k_flow, parts) in zip(side_requests, side_flows, strict=True):
        reason.query_at, reason.key_at = parts["query_at"], parts["key_at"]
        reason.query_sources = _side_sources(view, q_flow)
        reason.key_sources = _side_sources(view, k_flow)
    tables = qk_root_tables(view, [request for _, request in pending], edge_sweep)
    for (reason, _), table in zip(pending, tables, strict=True):
        reason.root_pairs, reason.root_parts = root_split(*table, ROOT_PAIRS)
    target_records = []
    for t, parts, ranking in per_target:
        target_records.append(_target_record(full, t, parts, probs, run,
                                             [keys[g] for g in ranking]))  # fmt: skip
    path_records = [
        PathRecord(ids[t], [keys[g] for g in groups], flow, hops) for t, groups, flow, hops in paths
    ]
    return MechanismSummary(
        prompt=full.prompt, tokens=list(full.token_strings), mode=full.mode,
        model=str(full.model.get("name", "")), targets=target_records, groups=records,
        paths=path_records,
        settings={"beam": beam, "max_paths": max_paths, "max_groups": max_groups,
                  "tolerance": tolerance, "ratio": RATIO, "constants": full.has_constants,
                  "grouping": grouping},
    )  # fmt: skip


def _head_ranking(view: GroupedGraph, group_flow: np.ndarray, pos: int) -> list[int]:
    """The Lorsa groups at ``pos``, the predicting head group first: groups that move
    something from another position (their key is neither ``pos`` itself nor BOS) with
    positive flow, largest first; then the other positive flows; then the rest by |flow|."""
    heads = [g for g, grp in enumerate(view.groups) if grp.kind == "lorsa" and grp.pos == pos]

    def rank(g):
        moves = view.groups[g].attends not in (None, 0, pos)
        return (group_flow[g] <= 0, not moves, -abs(group_flow[g]))

    return sorted(heads, key=rank)


def runner_up(scores: torch.Tensor, token: int) -> int | None:
    """The most likely token other than ``token`` by ``scores`` (logits or probabilities
    over the vocabulary); None when there is no other."""
    return next((v for v in scores.argsort(descending=True).tolist() if v != token), None)


def _target_record(graph, t, parts, probs, run, head_groups) -> TargetRecord:
    kind = Kind(int(graph.kind[t]))
    if kind != Kind.LOGIT:
        return TargetRecord(
            node=graph.ids[t], token=node_name(graph, t), negative=None, probability=None,
            value=float(graph.value[t]), tokens=parts["tokens"], errors=parts["errors"],
            constants=parts["constants"], constants_by_source=parts["constants_by_source"],
            runner_up=None, runner_up_probability=None, margin=None,
            predicting_group=head_groups[0] if head_groups else None, head_groups=head_groups,
            kind=kind.label,
        )  # fmt: skip
    record = graph.logit_record(t)
    runner = runner_up(probs, record.token)
    margin = None
    if runner is not None:
        margin = float(run.logits[-1, record.token] - run.logits[-1, runner])
    return TargetRecord(
        node=graph.ids[t], token=graph.token(record.token),
        negative=None if record.negative is None else graph.token(record.negative),
        probability=record.probability, value=float(graph.value[t]),
        tokens=parts["tokens"], errors=parts["errors"], constants=parts["constants"],
        constants_by_source=parts["constants_by_source"],
        runner_up=None if runner is None else graph.token(runner),
        runner_up_probability=None if runner is None else float(probs[runner]),
        margin=margin, predicting_group=head_groups[0] if head_groups else None,
        head_groups=head_groups,
    )  # fmt: skip


def node_ref(graph: Graph, i: int, concepts: Mapping, with_input: bool = False) -> NodeRef:
    """A ``NodeRef`` of node ``i`` from the graph's fields."""
    kind = Kind(int(graph.kind[i]))
    stage, pos, index = int(graph.stage[i]), int(graph.pos[i]), int(graph.index[i])
    ref = NodeRef(
        id=graph.ids[i], kind=kind.label, layer=int(graph.layer[i]), stage=stage, pos=pos,
        index=index, token=graph.token_strings[pos],
    )  # fmt: skip
    if kind == Kind.LORSA:
        ref.attends = int(graph.attends[i])
        ref.qk_head = index // graph.group_size
    if kind in (Kind.LORSA, Kind.TRANSCODER):
        found = concepts.get(unit_id(kind, stage, index))
        if found is not None:
            ref.concept, ref.concept_f1 = found[0], found[1]
        ref.promotes = [graph.token(x) for x in graph.promotes[i].tolist() if x >= 0]
        if with_input:
            ref.main_input = _main_input(graph, i)
    return ref


def _main_input(graph: Graph, i: int) -> dict | None:
    row = graph.edges[[i]].tocoo()
    if not row.nnz:
        return None
    j = int(np.argmax(np.abs(row.data)))
    s = int(row.col[j])
    attends = int(graph.attends[s])
    return {
        "id": graph.ids[s], "kind": graph.kinds[s], "layer": int(graph.layer[s]),
        "pos": int(graph.pos[s]), "attends": attends if attends >= 0 else None,
        "share": float(abs(row.data[j]) / np.abs(row.data).sum()),
    }  # fmt: skip


def unit_nodes(graph: Graph) -> dict[str, int]:
    """unit id -> the first node of that unit in the graph."""
    out: dict[str, int] = {}
    rows = zip(graph.kind.tolist(), graph.stage.tolist(), graph.index.tolist(), strict=True)
    for i, (k, s, x) in enumerate(rows):
        out.setdefault(unit_id(Kind(k), s, x), i)
    return out


def _side_ref(graph: Graph, name: str | None, concepts: Mapping, with_input: bool,
              units: Mapping[str, int]) -> NodeRef:  # fmt: skip
    if name is None:
        return NodeRef(id=None, kind="qk bias")
    i = graph.id_to_index.get(name)
    if i is not None:
        return node_ref(graph, i, concepts, with_input)
    j = units.get(name)
    if j is None:
        return NodeRef(id=name, kind="unit", present=False)
    ref = node_ref(graph, j, concepts)
    ref.id, ref.present, ref.pos, ref.attends = name, False, None, None
    ref.token = graph.token(int(graph.index[j])) if ref.kind == "embedding" else None
    return ref


def _reason_record(
    graph: Graph, a: QKAttribution, concepts: Mapping, units: Mapping[str, int]
) -> QKReasonRecord:
    r = a.reason
    pairs = [
        QKTermRecord(
            _side_ref(graph, p.query, concepts, False, units),
            _side_ref(graph, p.key, concepts, True, units),
            float(p.value),
        )
        for p in r.pairs
    ]
    return QKReasonRecord(
        layer=a.layer, qk_head=a.qk_head, query=a.query, key=a.key,
        key_token=graph.token_strings[a.key], attention=float(a.attention), score=float(a.score),
        mean_query_mean_key=r.mean_query_mean_key, query_vs_mean_key=r.query_vs_mean_key,
        mean_query_vs_key=r.mean_query_vs_key, specific=r.specific, rest=r.rest,
        rest_share=r.rest_share, pairs=pairs,
    )  # fmt: skip


def signs_agree(predicted: float, actual: float, tolerance: float) -> bool:
    """A check's sign agreement: same sign, or both below ``tolerance`` in magnitude."""
    return max(abs(predicted), abs(actual)) < tolerance or predicted * actual > 0


def _ratio(predicted: float, actual: float) -> float | None:
    return None if predicted == 0 else abs(actual) / abs(predicted)


def _off(predicted: float, actual: float, tolerance: float) -> bool:
    if max(abs(predicted), abs(actual)) < tolerance:
        return False
    if predicted == 0 or actual == 0:
        return True
    ratio = abs(actual) / abs(predicted)
    return ratio > RATIO or ratio < 1 / RATIO


def _checks(replacement, full, run, members, targets, tolerance, flows) -> list[EffectCheck]:
    edits = [Intervention(full.ids[m], "ablate") for m in members]
    if len({int(full.stage[m]) for m in members}) == 1:
        # Members of one stage do not feed each other: the graph's prediction for ablating
        # them is minus their flows (what ``predict`` would propagate, without a sweep).
        predicted = torch.zeros(full.n_nodes)
        predicted[targets] = torch.tensor([-float(flows[t][members].sum()) for t in targets])
    else:
        predicted = predict(full, edits)
    frozen = intervene(replacement, full, edits, run=run, predicted=predicted)
    free = intervene(replacement, full, edits, freeze_attention=False, run=run,
                     predicted=predicted)  # fmt: skip
    out = []
    inside = {full.ids[m] for m in members}
    for j, target in enumerate(frozen.targets):
        if target in inside:  # a target in the ablated group is not its own effect
            continue
        p = float(frozen.predicted[j])
        fz, fr = float(frozen.actual[j]), float(free.actual[j])
        agree_frozen, agree_free = signs_agree(p, fz, tolerance), signs_agree(p, fr, tolerance)
        flagged = (
            not (agree_frozen and agree_free) or _off(p, fz, tolerance) or _off(p, fr, tolerance)
        )
        out.append(
            EffectCheck(
                target=target, predicted=p, frozen=fz, free=fr, agree_frozen=agree_frozen,
                agree_free=agree_free, ratio_frozen=_ratio(p, fz), ratio_free=_ratio(p, fr),
                flagged=flagged,
            )
        )  # fmt: skip
    return out


# ----------------------------------------------------------------- printing
def _signed(x: float | None, whole: float = 0.0) -> str:
    """``x`` signed to 3 digits; ``0`` where it is float rounding against ``whole`` (a sum of
    parts that are exactly zero in exact arithmetic comes out as 1e-16, not 0)."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return "0" if abs(x) <= ROUNDING * max(abs(whole), 1e-3) else f"{x:+.3g}"


def ref_text(ref: NodeRef | None) -> str:
    """A node reference in words (for people)."""
    if ref is None or ref.kind == "qk bias":
        return "bias"
    if not ref.present:
        if ref.kind == "embedding":
            return f"no token {ref.token!r} here"
        what = {"lorsa": "head", "transcoder": "feature"}.get(ref.kind, ref.kind)
        index = f" {ref.index}" if ref.kind in ("lorsa", "transcoder") else ""
        layer = f"L{ref.layer} " if ref.layer is not None and ref.layer >= 0 else ""
        return f"no {layer}{what}{index} here"
    where = f"@{ref.pos}"
    if ref.kind == "embedding":
        return f"token {ref.token!r}{where}"
    if ref.kind in ("error", "bias"):
        sub = "attn" if ref.stage is not None and ref.stage % 2 == 1 else "mlp"
        return f"L{ref.layer} {sub} {ref.kind}{where}"
    text = f"L{ref.layer} {'head' if ref.kind == 'lorsa' else 'feature'} {ref.index}{where}"
    if ref.kind == "lorsa" and ref.attends is not None and ref.attends >= 0:
        text += f" reads @{ref.attends}"
    if ref.concept:
        text += f" [{ref.concept}]"
    elif ref.promotes:
        text += f" -> {ref.promotes[0]!r}"
    if ref.main_input is not None and ref.kind == "transcoder":
        mi = ref.main_input
        if mi["kind"] == "lorsa":
            text += f" (from L{mi['layer']} head @{mi['pos']} reading @{mi['attends']})"
    return text


def root_text(r: QKReasonRecord, top: int) -> str:
    """A QK reason's root pairs in one line: the exact split of ``specific`` and its largest
    token (or error) pairs, query side first."""
    whole = sum(abs(x) for x in r.root_parts.values())
    split = ", ".join(f"{part} {_signed(r.root_parts.get(part), whole)}"
                      for part in ("tokens", "errors", "constants"))  # fmt: skip
    pairs = "; ".join(f"{p.query.name} x {p.key.name} {_signed(p.value)}"
                      for p in r.root_pairs[:top])  # fmt: skip
    return f"specific by roots ({split}): {pairs}"


def format_summary(summary: MechanismSummary, max_pairs: int = 3, every_check: bool = False) -> str:
    """The summary as text (what ``python -m circuits.trace`` prints). A group's ablation
    checks are printed for the first target, and for the other targets counted in one line
    (how many agree in sign and how many are flagged; each is in the record, and
    ``every_check`` prints them all)."""
    lines = ["mechanisms (exact flows: each group's total linear contribution to the target):"]
    names = {g.key: g for g in summary.groups}
    labels = {t.node: t.label for t in summary.targets}
    several = len(labels) > 1  # then each flow and check names its target

    def per_target(node: str) -> str:
        return f"{labels.get(node, node)} " if several else ""

    def short(key: str) -> str:
        return f"{key} {names[key].name}"

    for t in summary.targets:
        head = f"target {t.label} = {t.value:.3g} " + (
            f"(p={t.probability:.3f})" if t.probability is not None else "(pre-activation)"
        )
        if t.runner_up is not None:
            head += f"; runner-up {t.runner_up!r} p={t.runner_up_probability:.3f}, margin " \
                    f"{_signed(t.margin)}"  # fmt: skip
        lines.append(head)
        consts = ", ".join(f"{name} {_signed(v)}" for name, v in t.constants_by_source[:4])
        lines.append(f"  parts: tokens {_signed(t.tokens)}, constants {_signed(t.constants)} "
                     f"({consts}), errors {_signed(t.errors)}")  # fmt: skip
        if t.predicting_group:
            g = names[t.predicting_group]
            lines.append(f"  predicting heads: {short(g.key)}, flow {_signed(g.flow[t.node])}")
            others = [names[k] for k in t.head_groups[1:]]
            if others:
                lines.append("  next head groups there: " + "; ".join(
                    f"{short(o.key)} {_signed(o.flow[t.node])}" for o in others))  # fmt: skip
        lines.append("  top paths (root -> target):")
        for p in [p for p in summary.paths if p.target == t.node]:
            chain = " -> ".join(names[k].name for k in p.groups)
            lines.append(f"    {_signed(p.flow):>8}  {chain}")
    lines.append("groups:")
    if any(g.checks for g in summary.groups):
        lines.append(
            "  (ablate: the group zeroed; the change of the target predicted by the linear "
            "graph and measured with attention frozen and free; FLAGGED where a measured "
            f"change has the other sign or is over {RATIO:g}x off)"
        )
    first = summary.targets[0].node if summary.targets else None
    for g in summary.groups:
        if g.kind in ("embedding", "error", "bias"):
            continue
        flow = ", ".join(f"{per_target(node)}{_signed(v)}" for node, v in g.flow.items())
        extra = f" promotes {g.promotes[0]!r}" if g.promotes and g.kind == "transcoder" else ""
        lines.append(f"  {g.key:>4} {g.name}: flow {flow}{extra}")
        for r in g.qk:
            lines.append(
                f"       QK {r.qk_head} reads {r.key_token!r}@{r.key} (attention "
                f"{r.attention:.2f}): score {r.score:+.3g} = always-on "
                f"{r.mean_query_mean_key + r.query_vs_mean_key + r.mean_query_vs_key:+.3g} "
                f"(mean q x mean k {r.mean_query_mean_key:+.3g}, q x mean k "
                f"{r.query_vs_mean_key:+.3g}, mean q x k {r.mean_query_vs_key:+.3g}) + specific "
                f"{r.specific:+.3g}"
            )
            if r.root_pairs:
                lines.append(f"         {root_text(r, max_pairs)}")
            if r.pairs:
                lines.append(f"         specific by units at the two positions (the pairs "
                             f"below leave out {r.rest_share:.0%}):")  # fmt: skip
            for p in r.pairs[:max_pairs]:
                lines.append(f"         {p.value:+.3g}  {ref_text(p.query)}  x  {ref_text(p.key)}")
            for name, sources in (("query", r.query_sources), ("key", r.key_sources)):
                top = [x for c in ("roots", "heads") for x in sources.get(c, [])[:1]]
                if top:
                    lines.append(f"         {name} side from: " + "; ".join(
                        f"{x.name} {x.value:+.3g}" for x in top))  # fmt: skip
        shown = [c for c in g.checks if every_check or c.target == first]
        rest = [] if every_check else [c for c in g.checks if c.target != first]
        for c in shown:
            mark = "FLAGGED" if c.flagged else "ok"
            lines.append(
                f"       ablate{': ' + labels.get(c.target, c.target) if several else ''}: "
                f"predicted {_signed(c.predicted)}, frozen attention "
                f"{_signed(c.frozen)}, free attention {_signed(c.free)}  [{mark}]"
            )
        if rest:
            lines.append(
                f"       ablate, the other {len(rest)} targets: sign agrees with attention "
                f"frozen {sum(c.agree_frozen for c in rest)}, free "
                f"{sum(c.agree_free for c in rest)}; flagged {sum(c.flagged for c in rest)} "
                "(each in mechanisms.json)"
            )
    return "\n".join(lines)
