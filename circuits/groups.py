"""Supernodes: groups of a graph's nodes read as one, with exact summed edges.

A *grouping* partitions a graph's nodes; every node not named in a group is a group of its
own. The grouped view (``GroupedGraph``) has one node per group and, between two groups, the
sum of every edge from a member of one to a member of the other: exact, since edges are
additive contributions (the effect of all of a group's members on a target is the sum of
their edges). Edges among one group's own members are not edges of the view; their sum is
the group's ``internal`` total, so that for a group of targets ``sum of incoming group edges
+ internal + bias = value`` (the members' sums) still closes exactly.

Two ways to make groups:

- by hand: ``group(graph, [node indices], "name")`` (one supernode) or
  ``grouped(graph, [[...], [...]], names)`` (several);
- ``auto_groups(graph, concepts)``: heads and features that do the same thing in the same
  place (``AUTO_RULES``).

Groups hold structure (kind, block, position, the key their heads read, their QK heads, the
concept they share); ``name`` is for people.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch

from .graph import Graph, checked_graph, checked_index, is_integer
from .nodes import KINDS, Kind, constant_name, node_words, unit_id

MIN_CONCEPT_F1 = 0.5  # a concept label groups features (and marks a head's role) from this F1
# a head (or group) whose key brings less than this share of its activation says so in its
# name: it reads that key most, but its pattern spreads what it writes over many keys
SPREAD_SHARE = 0.5

AUTO_RULES = """\
Lorsa heads: one group per (block, query position, key read (``attends``), role); the
  role is the unit's concept label when its F1 >= MIN_CONCEPT_F1, else none (heads at one
  place reading one key then form one group).
transcoder features: one group per (block, position, concept label) when the label's F1 >=
  MIN_CONCEPT_F1, and the place's other features (no label that fits) one group per (block,
  position): what that MLP computes there besides its labelled features (its members alone
  were paths of a few percent each, splitting one route, e.g. a token through layer 0's MLP
  at an induction key, over dozens of features).
bias nodes: one group per sublayer (every position): the constant that sublayer writes; the
  position vectors one group too (a QK reason's position terms are then between what this
  query's and this key's positions hold against the mean query's and the mean key's).
embeddings, error nodes, logits and any other target (a head or feature traced from): alone."""


@dataclass
class Group:
    """A set of a graph's nodes read as one (module docstring)."""

    name: str
    members: list[int]  # node indices of the graph it was made on, ascending
    kind: str  # the members' kind, or "mixed"
    layer: int | None = None  # the members' block, when they share one
    stage: int | None = None  # the members' stage, when they share one
    pos: int | None = None  # the members' position, when they share one
    attends: int | None = None  # Lorsa groups: the key every member reads, when shared
    qk_heads: list[int] = field(default_factory=list)  # Lorsa groups: their QK heads
    concept: str | None = None  # the concept label the members share (auto groups)
    ids: list[str] = field(default_factory=list)  # the members' node ids (``describe`` sets them)
    # Lorsa groups reading one key: the share of the members' summed activation that their
    # terms at that key bring (``Graph.read_share``, summed); None where unknown
    key_share: float | None = None

    @property
    def is_root(self) -> bool:
        """Whether every member is a source without inputs (embedding, error, bias)."""
        return self.kind in ("embedding", "error", "bias")


class _Fields:
    """A graph's per-node fields as Python lists, read once for many groups."""

    def __init__(self, graph: Graph):
        self.n = graph.n_nodes
        self.kinds = graph.kinds
        self.layer, self.stage = graph.layer.tolist(), graph.stage.tolist()
        self.pos, self.attends = graph.pos.tolist(), graph.attends.tolist()
        self.index, self.group_size = graph.index.tolist(), graph.group_size
        self.activation = graph.activation.tolist()
        self.share = None if graph.key_share is None else graph.key_share.tolist()

    def key_share(self, members: Sequence[int]) -> float | None:
        """The share of ``members``' summed activation that their terms at the key they read
        bring (each head's ``Graph.read_share`` times its activation, summed, over the summed
        activation); None unless every member is a head reading one key and the graph knows
        the shares."""
        keys = {self.attends[i] for i in members}
        if self.share is None or len(keys) != 1 or keys.pop() < 0:
            return None
        total = sum(self.activation[i] for i in members)
        if not total > 0:
            return None
        return sum(self.share[i] * self.activation[i] for i in members) / total


def spread_percent(share: float | None) -> str | None:
    """``12%`` where a head's (or head group's) key brings less than ``SPREAD_SHARE`` of its
    activation (rounded down: 0.4996 never reads as half), else None: what every name, label
    and box says of it."""
    if share is None or share >= SPREAD_SHARE:
        return None
    return f"{math.floor(share * 100 + 1e-4)}%"  # (a float32 0.29 is 28.99999...: 29%)


def spread_note(share: float | None) -> str:
    """What a head's or head group's name adds after the key it reads (``spread_percent``):
    `` (brings 12%)``, or nothing."""
    percent = spread_percent(share)
    return "" if percent is None else f" (brings {percent})"


def describe(
    graph: Graph,
    members: Sequence[int],
    name: str,
    concept: str | None = None,
    fields: _Fields | None = None,
) -> Group:
    """A ``Group`` of ``members`` with the structure they share read from the graph."""
    f = fields or _Fields(graph)
    if not isinstance(name, str) or not name:
        raise ValueError(f"a group's name must be a non-empty string, got {name!r}")
    try:
        listed = None if isinstance(members, Mapping | str | bytes) else list(members)
    except TypeError:  # not iterable: None, a number, a 0-d tensor
        listed = None
    if listed is None or not all(is_integer(m) for m in listed):
        raise ValueError(f"group {name!r}: members must be node indices (integers), got "
                         f"{members!r:.60}")  # fmt: skip
    members = listed
    idx = sorted({operator.index(m) for m in members})
    if len(idx) != len(members):
        raise ValueError(f"group {name!r} names a node twice")
    if not idx:
        raise ValueError(f"group {name!r} has no members")
    bad = [m for m in idx if not 0 <= m < f.n]
    if bad:
        raise ValueError(f"group {name!r}: node {bad[0]} is outside 0..{f.n - 1}")

    def shared(values: list[int]) -> int | None:
        first = values[idx[0]]
        return first if all(values[i] == first for i in idx) else None

    kinds = {f.kinds[i] for i in idx}
    kind = kinds.pop() if len(kinds) == 1 else "mixed"
    heads = sorted({f.index[i] // f.group_size for i in idx if f.kinds[i] == "lorsa"})
    attends = shared(f.attends) if kind == "lorsa" else None
    return Group(
        name=name, members=idx, kind=kind, layer=shared(f.layer), stage=shared(f.stage),
        pos=shared(f.pos), attends=attends if attends is not None and attends >= 0 else None,
        qk_heads=heads, concept=concept, ids=[graph.ids[i] for i in idx],
        key_share=f.key_share(idx) if kind == "lorsa" else None,
    )  # fmt: skip


@dataclass(eq=False)
class GroupedGraph:
    """A graph seen through a partition of its nodes (module docstring).

    ``groups[g]``; ``of_node[i]`` the group of node ``i``; ``edges[g, h]`` the sum of the edges
    from the members of ``h`` into the members of ``g`` (``g != h``); ``internal[g]`` the sum
    of the edges among ``g``'s own members; ``value``/``bias``/``target_weight`` the members'
    sums (``value`` NaN where no member is a target)."""

    graph: Graph
    groups: list[Group]
    of_node: np.ndarray
    value: np.ndarray
    bias: np.ndarray
    target_weight: np.ndarray

    @cached_property
    def _summed(self) -> tuple[sp.csr_array, np.ndarray]:
        """(edges, internal), made on first use: summing every edge of a long prompt's graph
        is the costly part of a view, and many uses need only the groups."""
        n_groups, n = self.n_groups, self.graph.n_nodes
        member = sp.csr_array(
            (np.ones(n, dtype=np.float32), (self.of_node, np.arange(n))), shape=(n_groups, n)
        )
        # float32 like the edges themselves: no float64 copy of a matrix that can hold 1e7
        # entries; each sum is as exact as the edges it adds.
        coo = sp.coo_array(member @ self.graph.edges @ member.T)
        inside = coo.row == coo.col
        data = coo.data.astype(np.float64)
        internal = np.bincount(coo.row[inside], data[inside], minlength=n_groups)
        off = ~inside
        edges = sp.csr_array((data[off], (coo.row[off], coo.col[off])), shape=(n_groups, n_groups))
        edges.sum_duplicates()
        edges.sort_indices()
        return edges, internal

    @property
    def edges(self) -> sp.csr_array:
        return self._summed[0]

    @property
    def internal(self) -> np.ndarray:
        return self._summed[1]

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def members(self, g: int) -> list[int]:
        """The node indices of group ``g`` (an integer in ``0..n_groups - 1``)."""
        return self.groups[checked_index(g, "group", self.n_groups)].members

    def group_of(self, node: int) -> int:
        return int(self.of_node[self.graph.node_index(node)])

    def to_networkx(self):
        """Groups keyed by name with their fields (``Group``'s: ``members`` the node ids,
        ``member_nodes`` their indices in the graph; and the view's sums: ``value``, None where
        no member has one (embeddings, errors, constants), ``bias``, ``target_weight`` and the
        ``internal`` edges); edges source -> target with ``weight``. A review found a group's
        stage, QK heads, key share and sums missing, where the graph's ``to_networkx`` gives a
        node all."""
        import networkx as nx

        g = nx.DiGraph(prompt=self.graph.prompt)
        for k, grp in enumerate(self.groups):
            value = float(self.value[k])
            g.add_node(grp.name, kind=grp.kind, layer=grp.layer, stage=grp.stage, pos=grp.pos,
                       attends=grp.attends, qk_heads=list(grp.qk_heads), concept=grp.concept,
                       key_share=grp.key_share,
                       members=[self.graph.ids[i] for i in grp.members],
                       member_nodes=list(grp.members),
                       value=None if math.isnan(value) else value, bias=float(self.bias[k]),
                       target_weight=float(self.target_weight[k]),
                       internal=float(self.internal[k]))  # fmt: skip
        coo = self.edges.tocoo()
        g.add_weighted_edges_from(
            (self.groups[s].name, self.groups[t].name, float(w))
            for t, s, w in zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist(), strict=True)
        )
        return g


def checked_view(view, name: str = "view") -> GroupedGraph:
    """``view`` itself, or a one-line TypeError unless it is a ``GroupedGraph``: a plain
    ``Graph`` has no groups, and would fail deep inside."""
    if not isinstance(view, GroupedGraph):
        hint = " (group it first: auto_groups(graph) or grouped(graph, ...))" if isinstance(
            view, Graph
        ) else ""  # fmt: skip
        raise TypeError(f"{name} must be a circuits.groups.GroupedGraph, got a "
                        f"{type(view).__name__}{hint}")  # fmt: skip
    return view


def grouped(
    graph: Graph,
    groups: Sequence[Sequence[int] | Group],
    names: Sequence[str] | None = None,
) -> GroupedGraph:
    """The view of ``graph`` in which each of ``groups`` (a list of node index lists, or of
    ``Group``s) is one node and every other node is a group of its own. A node may be in one
    group only. ``names`` (a list of strings, one per group) names index lists; a ``Group``
    carries its own name, so ``names`` beside a ``Group`` is refused rather than one of the
    two ignored (rename a group with ``dataclasses.replace(group, name=...)``).

    A ``Group`` stands for its members' node ids: made on another graph (a pruned graph's
    group applied to its full graph, or a graph of another prompt) it means the nodes with
    those ids here, and one missing here is an error, never another node at its index."""
    checked_graph(graph)
    if not isinstance(groups, list | tuple):
        raise TypeError(f"groups must be a list of node index lists or Groups, got a "
                        f"{type(groups).__name__}")  # fmt: skip
    if names is not None:
        if not isinstance(names, list | tuple):  # each is checked as its group is made
            raise TypeError(f"names must be a list of strings (one per group) or None, got "
                            f"{names!r:.60}")  # fmt: skip
        if len(names) != len(groups):
            raise ValueError(f"{len(names)} names for {len(groups)} groups")
        named = [k for k, members in enumerate(groups) if isinstance(members, Group)]
        if named:
            raise ValueError(f"names given for groups[{named[0]}], a Group with its own name "
                             f"({groups[named[0]].name!r}): names are for node index lists "
                             "(rename a Group: dataclasses.replace(group, name=...))")  # fmt: skip
    fields = _Fields(graph)
    made: list[Group] = []
    for k, members in enumerate(groups):
        if isinstance(members, Group):
            here = _members_here(graph, members)
            made.append(describe(graph, here, members.name, members.concept, fields))
        else:
            members = _unmasked(graph, members)
            made.append(describe(graph, members, names[k] if names else f"group {k}", None, fields))
    seen: set[str] = set()  # each name against those before it, once (not a set per group)
    repeated = []
    for grp in made:
        if grp.name in seen:
            repeated.append(grp.name)
        seen.add(grp.name)
    if repeated:  # groups are keyed by name (``to_networkx``, the viewer's supernodes)
        raise ValueError(f"two groups are named {repeated[0]!r}")
    of_node = np.full(graph.n_nodes, -1, dtype=np.int64)
    for k, grp in enumerate(made):
        taken = [m for m in grp.members if of_node[m] >= 0]
        if taken:
            raise ValueError(f"node {graph.ids[taken[0]]} is in two groups")
        of_node[grp.members] = k
    all_groups = list(made)
    names_made = {grp.name for grp in made}
    for i in np.flatnonzero(of_node < 0).tolist():
        of_node[i] = len(all_groups)
        own = node_name(graph, i, fields)
        if own in names_made:  # the networkx view would merge the two
            raise ValueError(f"a group is named {own!r}, the name of node {graph.ids[i]}'s own "
                             "group: choose another")  # fmt: skip
        all_groups.append(describe(graph, [i], own, None, fields))
    return _view(graph, all_groups, of_node)


def _members_here(graph: Graph, grp: Group) -> list[int]:
    """``grp``'s members in ``graph``, found by their node ids (a ``Group`` made by hand
    without ids names indices of ``graph`` itself)."""
    if not grp.ids:
        return grp.members  # checked by ``describe``
    if not isinstance(grp.ids, list | tuple) or not all(isinstance(i, str) for i in grp.ids):
        raise ValueError(f"group {grp.name!r}: ids must be a list of node ids, got "
                         f"{grp.ids!r:.60}")  # fmt: skip
    try:
        n_members = len(grp.members)
    except TypeError:
        raise ValueError(f"group {grp.name!r}: members must be node indices (integers), got "
                         f"{grp.members!r:.60}") from None  # fmt: skip
    if len(grp.ids) != n_members:
        raise ValueError(f"group {grp.name!r}: {len(grp.ids)} ids for {n_members} members")
    index = graph.id_to_index
    missing = [i for i in grp.ids if i not in index]
    if missing:
        raise ValueError(f"group {grp.name!r}: node {missing[0]} is not in this graph")
    return [index[i] for i in grp.ids]


def _unmasked(graph: Graph, members):
    """A boolean mask over the graph's nodes (a tensor or array, as ``Graph.subgraph`` and
    ``qk_attribution`` take) as the indices it selects; anything else as it is. A review found
    a mask refused as "names a node twice" (each element read as index 0 or 1)."""
    is_mask = isinstance(members, torch.Tensor) and members.dtype == torch.bool
    is_mask = is_mask or (isinstance(members, np.ndarray) and members.dtype == np.bool_)
    return graph.node_indices(torch.as_tensor(members), "group").tolist() if is_mask else members


def group(graph: Graph, nodes: Sequence[int], name: str) -> GroupedGraph:
    """``graph`` with the nodes ``nodes`` merged into one supernode called ``name`` (the view
    orders groups as the graph orders their first members: find it by its name or by
    ``group_of`` a member); edges into and out of it are the exact sums of its members' edges."""
    nodes = _unmasked(graph, nodes)
    try:
        listed = None if isinstance(nodes, Mapping | str | bytes) else list(nodes)
    except TypeError:  # not iterable: None, a number, a 0-d tensor (Python's own message was
        listed = None  # "'NoneType' object is not iterable": fuzz pass 13)
    if listed is None:
        raise TypeError(f"group: nodes must be node indices (a list of integers), got "
                        f"{nodes!r:.60}")  # fmt: skip
    return grouped(graph, [listed], [name])


def _view(graph: Graph, groups: list[Group], of_node: np.ndarray) -> GroupedGraph:
    # Order groups as the graph orders their first members, so a view of stage-pure groups
    # keeps the graph's stage order.
    order = np.argsort([g.members[0] for g in groups], kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    groups = [groups[k] for k in order]
    of_node = rank[of_node]
    n_groups = len(groups)
    value = graph.value.double().numpy()
    is_target = ~np.isnan(value)
    value_sum = np.bincount(of_node, np.where(is_target, value, 0.0), minlength=n_groups)
    has_target = np.bincount(of_node, is_target, minlength=n_groups) > 0
    return GroupedGraph(
        graph=graph, groups=groups, of_node=of_node,
        value=np.where(has_target, value_sum, np.nan),
        bias=np.bincount(of_node, graph.bias.double().numpy(), minlength=n_groups),
        target_weight=np.bincount(of_node, graph.target_weight.double().numpy(),
                                  minlength=n_groups),
    )  # fmt: skip


# ----------------------------------------------------------------- automatic groups
def auto_groups(
    graph: Graph,
    concepts: Mapping[str, tuple[str, float]] | None = None,
    min_f1: float = MIN_CONCEPT_F1,
) -> GroupedGraph:
    """Group heads and features that do the same thing in the same place (``AUTO_RULES``).
    ``concepts``: unit id (``circuits.nodes.unit_id``) -> (concept label, F1), e.g. from the
    unit dashboards (``Dashboards.summary_concepts``), checked by ``checked_concepts``; a
    label groups from ``min_f1`` (a number in [0, 1]) on."""
    concepts = checked_concepts(concepts)
    if not _is_unit_real(min_f1):
        raise ValueError(f"min_f1 must be a number in [0, 1], got {min_f1!r}")
    kinds, layers = graph.kind.tolist(), graph.layer.tolist()
    stages, pos = graph.stage.tolist(), graph.pos.tolist()
    index, attends = graph.index.tolist(), graph.attends.tolist()
    target = graph.is_target.tolist()
    fields = _Fields(graph)
    buckets: dict[tuple, list[int]] = {}
    labels: dict[tuple, str | None] = {}
    f1s: dict[tuple, list[float]] = {}  # the members' label F1s, for the name
    for i in range(graph.n_nodes):
        kind = Kind(kinds[i])
        concept, f1 = None, None
        if target[i]:  # what the graph explains stays itself
            buckets[("node", i)], labels[("node", i)] = [i], None
            continue
        if kind in (Kind.LORSA, Kind.TRANSCODER):
            found = concepts.get(unit_id(kind, stages[i], index[i]))
            if found is not None and found[1] >= min_f1:
                concept, f1 = found
        if kind == Kind.LORSA:
            key = ("lorsa", layers[i], pos[i], attends[i], concept)
        elif kind == Kind.TRANSCODER:
            key = ("transcoder", layers[i], pos[i], concept)
        elif kind == Kind.BIAS:
            key = ("bias", stages[i])
        else:
            key = ("node", i)
        buckets.setdefault(key, []).append(i)
        labels[key] = concept
        if f1 is not None:
            f1s.setdefault(key, []).append(float(f1))
    made = []
    for key, members in buckets.items():
        if key[0] == "node":
            continue
        name = _auto_name(graph, key, members, f1s.get(key, []), fields)
        made.append(Group(name=name, members=members, kind="", concept=labels[key]))
    return grouped(graph, made)


def checked_concepts(concepts) -> Mapping[str, tuple[str, float]]:
    """``concepts`` (None: none) if it maps unit ids (strings) to (concept label, F1) pairs,
    a label a string and an F1 a number in [0, 1]; otherwise a one-line ValueError naming the
    first bad entry (a NaN F1 compared below every threshold, dropping its label silently)."""
    if concepts is None:
        return {}
    if not isinstance(concepts, Mapping):
        raise ValueError(f"concepts must map unit ids to (label, F1), got a "
                         f"{type(concepts).__name__}")  # fmt: skip
    for unit, entry in concepts.items():
        ok = isinstance(unit, str) and isinstance(entry, tuple | list) and len(entry) == 2
        if not (ok and isinstance(entry[0], str) and _is_unit_real(entry[1])):
            raise ValueError(f"concepts must map unit ids to (label, F1), a string and a number "
                             f"in [0, 1]: got {unit!r}: {entry!r}")  # fmt: skip
    return concepts


def _is_unit_real(x) -> bool:
    """A real number in [0, 1] (not a bool, not NaN)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and 0 <= x <= 1


def node_name(graph: Graph, i: int, fields: _Fields | None = None) -> str:
    """A short readable name of one node (for people; ``reports.labels`` has the long ones),
    in ``circuits.nodes.node_words``'s wording; a head says the key it reads."""
    f = fields or _Fields(graph)
    kind = Kind.parse(f.kinds[i])
    stage, index = f.stage[i], f.index[i]
    pos = f.pos[i] if graph.positional else None
    if kind == Kind.LOGIT:
        record = graph.logit_record(i)
        text = f"logit {graph.token(record.token)!r}"
        return text if record.negative is None else f"{text} - {graph.token(record.negative)!r}"
    token = None
    if kind == Kind.EMBEDDING:
        if pos == 0 and graph.starts_with_bos:  # a constant, as the target's parts name it
            return "BOS"
        token = graph.token_strings[pos] if pos is not None else graph.token(index)
    text = node_words(kind, stage, index, pos, token=token)
    if kind == Kind.LORSA and f.attends[i] >= 0:
        key = f.attends[i]
        text += f" -> {graph.token_strings[key]!r}@{key}{spread_note(graph.read_share(i))}"
    return text


def _auto_name(
    graph: Graph, key: tuple, members: list[int], f1s: list[float], fields: _Fields
) -> str:
    """A readable name of an automatic group (for people; structure is in the ``Group``), a
    concept label with its members' F1 (how well it predicts their firing on the corpus: a
    label of F1 0.3 says little about a prompt of another task, where a reviewer read
    ``[successor: weekdays item]`` on a list of letters); a group of one names its unit's
    index, as the graph's labels do."""
    n = len(members)
    one = "" if n != 1 else f" {int(graph.index[members[0]])}"
    if key[0] == "bias":
        return f"{constant_name(key[1])} (all positions)"
    low, high = (min(f1s), max(f1s)) if f1s else (None, None)
    f1 = "" if low is None else f", F1 {low:.2f}" + (f"-{high:.2f}" if high - low >= 0.005 else "")
    if key[0] == "lorsa":
        _, layer, pos, attends, concept = key
        what = f"L{layer} {'head' + one if n == 1 else f'{n} heads'} @{pos}"
        if attends >= 0:
            what += f" -> {graph.token_strings[attends]!r}@{attends}"
            what += spread_note(fields.key_share(members))
        return what + (f" [{concept}{f1}]" if concept else "")
    _, layer, pos, concept = key
    label = f" [{concept}{f1}]" if concept else ""
    return f"L{layer} {'feature' + one if n == 1 else f'{n} features'} @{pos}{label}"


__all__ = [
    "AUTO_RULES", "Group", "GroupedGraph", "KINDS", "MIN_CONCEPT_F1", "auto_groups",
    "checked_concepts", "describe", "group", "grouped", "node_name",
]  # fmt: skip
