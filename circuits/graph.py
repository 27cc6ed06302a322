"""The attribution graph: a plain data object with typed nodes, a sparse edge matrix and files.

Nodes are held as parallel arrays, sorted by ``stage`` (the topological order of the
replacement model; ``circuits.nodes`` numbers stages and kinds and builds ids) and, within a
stage, by position and index. ``edges[t, s]`` is the direct linear effect of source ``s`` on
target ``t`` with every attention pattern and LayerNorm scale frozen (DESIGN.md section 5).
Row ``t`` plus ``bias[t]`` sums to the target's pre-activation (``value[t]``). Edges only run
from a lower stage to a higher one.

``activation`` is what a source multiplies its write vector by: a head's ``z``, a feature's
activation, and 1 for embedding and error nodes (whose write vector is the vector itself).
``value`` is a target's pre-activation: equal to ``activation`` for active heads and features,
the demeaned logit (or logit difference) for logit nodes.

Structure lives in fields, never in text: ``attends``/``attention`` (the key a Lorsa head
reads: the largest term of its z-pattern, where its activation comes from most; and its
attention there), ``promotes`` (the tokens a head's or feature's decoder
promotes most through the unembedding), ``logit_targets`` (the resolved logit targets, one
record per logit node, in node order), ``mode``, ``group_size`` (OV heads per Lorsa QK head),
``positional`` (False for global graphs, whose nodes are units), ``global_record`` (how a
global graph was made: grown upstream or downstream, or a QK circuit), ``node_targets`` (the
head and feature targets in the order given) and ``pruned`` (a part of the full graph, whose
rows need not close). ``token_text`` holds the text of every token id the graph refers to.
Ids (``ids``) are derived from the fields for files and people; readable labels are made in
``reports.labels``. ``settings`` is provenance only (thresholds, timings, scores).

A loaded graph is untrusted: ``load`` validates every field (``circuits.graph_file``) before
anything uses it, and refuses with one line naming the file and the field.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import networkx as nx
import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Float, Int
from torch import Tensor

from toy_models.tokenizer import BOS

from .nodes import KINDS, Kind, block_of, logit_stage, node_id, unit_id

# 3: the header holds a SHA-256 of the tensors; 4: and of the header; 5: ``attends`` is the key a
# head reads (its z-pattern's largest term), no longer its attention's argmax; 6: an embedding
# node is its token's embedding alone, the position vector a constant (stage 0's bias nodes);
# 7: each QK record gives the fields of the nodes and units it names (``QKAttribution.named``),
# and a sparse graph's logit targets the model's probability (``LogitRecord.model_probability``);
# 8: a difference's record gives its negative token's probability too
# (``LogitRecord.negative_probability``, and the model's in sparse mode), and a sparse graph's
# ``model`` entry the model's own most likely next token (``Graph.model_top``); 9: a global
# graph says how it was made in a typed record (``Graph.global_record``), no longer in its
# settings' ``direction``, ``edge_weights`` and ``qk_circuit``, and a prompt's graph gives the
# order its head and feature targets were given in (``Graph.node_targets``) and whether it is a
# part of its full graph (``Graph.pruned``), no longer its settings' ``node_targets`` and
# ``unpruned``
FORMAT_VERSION = 9
SAME_P = 1e-6  # two float32 probabilities of one token read apart (a file's checks)
MODES = ("local", "sparse")
N_PROMOTED = 3  # tokens kept per head/feature in ``promotes``
QK_BIAS = "bias"  # the query/key bias side where a record names units (None where nodes)
# The graph-level attributes ``Graph.to_networkx`` sets itself, beside ``settings``' keys (a
# setting of one of these names is refused there and in a graph file, never let to shadow it).
RESERVED_SETTINGS = ("prompt", "tokens", "mode", "positional", "global", "node_targets",
                     "pruned")  # fmt: skip
# the setting of a global graph holding what it keeps of its start's own total
# (``circuits.global_graph.start_coverage``): of its edges as grown, so a subgraph drops it
START_EDGES = "start_edges"
# its split-half reliability and its start's firings (``circuits.global_graph``): of the graph
# as grown from each half of the sample, so a subgraph drops it too
RELIABILITY = "reliability"
# What a global graph's value edges are (``GlobalRecord.edge_weights``, said on its page)
MEAN_INPUT = "mean input per target occurrence"
EXPECTED_ATTRIBUTION = "expected attribution per unit of source activity"
# How a global graph was made (``GlobalRecord.method``): grown from one unit towards its inputs
# or towards what it drives (``circuits.global_weights.global_graph``), or a QK group's pairs
# from the weights alone with their units' writers (``circuits.global_weights.qk_circuit``)
GLOBAL_METHODS = ("upstream", "downstream", "qk_circuit")


@dataclass(frozen=True)
class GlobalRecord:
    """How a global graph (``positional`` False: its nodes are units) was made, which decides
    what its edges, QK records and rankings are: ``method`` is one of ``GLOBAL_METHODS``. A
    prompt's graph has none (``Graph.global_record`` None). Its parameters (budget, start,
    statistics) are provenance, in ``Graph.settings``."""

    method: str

    def __post_init__(self):
        if self.method not in GLOBAL_METHODS:
            raise ValueError(f"a global graph's method must be one of "
                             f"{', '.join(GLOBAL_METHODS)}, got {self.method!r:.60}")  # fmt: skip

    @property
    def direction(self) -> str | None:
        """The way a grown graph grew from its start ("upstream" or "downstream"); None for a
        QK circuit, which grows no way."""
        return None if self.method == "qk_circuit" else self.method

    @property
    def edge_weights(self) -> str:
        """What its value edges are, in words: expected attributions downstream, else mean
        inputs (a QK circuit's edges are its units' strongest writers' mean inputs)."""
        return EXPECTED_ATTRIBUTION if self.method == "downstream" else MEAN_INPUT

    @property
    def qk_from_weights(self) -> bool:
        """Whether its QK pairs come from the weights alone (no prompt or corpus), not an
        expected QK attribution per firing."""
        return self.method == "qk_circuit"

    def to_dict(self) -> dict:
        """The record for files and exports, its derived fields beside it for their readers
        (a graph file holds ``method`` alone: ``circuits.graph_file``)."""
        return {"method": self.method, "direction": self.direction,
                "edge_weights": self.edge_weights,
                "qk_from_weights": self.qk_from_weights}  # fmt: skip


@dataclass
class QKPair:
    """One term of a QK score: query-side node x key-side node (``None`` is the bias side)."""

    query: str | None
    key: str | None
    value: float


class NamedSide(NamedTuple):
    """The fields of a node or unit that a QK record names by id (``QKAttribution.named``):
    its kind, stage, index (a token's id for an embedding, -1 for an error or bias) and
    position, None for a unit named by its unit id (a node id without the position). A record
    keeps them because pruning drops most of the nodes it names, and an id is for files and
    people, never parsed back: the id is made from these fields (``id``)."""

    kind: Kind
    stage: int
    index: int
    pos: int | None

    @property
    def id(self) -> str:
        if self.pos is None:
            return unit_id(self.kind, self.stage, self.index)
        return node_id(self.kind, self.stage, self.pos, self.index)

    def to_list(self) -> list:
        return [self.kind.label, self.stage, self.index, self.pos]


@dataclass
class LogitRecord:
    """A resolved logit target (circuit-tracer's ``Graph.logit_targets``): the demeaned logit
    of ``token``, or ``logit(token) - logit(negative)`` when ``negative`` is set;
    ``probability`` is the token's softmax probability at the last position, in the model the
    graph explains: in sparse mode the replacement's, which can be far from the model's even
    where both rank it first, so ``model_probability`` gives the model's beside it (None in
    local mode, whose error nodes make the two one)."""

    token: int
    negative: int | None
    probability: float
    model_probability: float | None = None
    # a difference's negative token's, as ``probability`` and ``model_probability`` are the
    # positive's (None for a single token): a reviewer's difference read p 0.003 for its
    # positive token alone, its negative's 0.72 nowhere
    negative_probability: float | None = None
    model_negative_probability: float | None = None

    @property
    def tokens(self) -> tuple[int, ...]:
        """The tokens the target names: its token, and a difference's negative."""
        return (self.token,) if self.negative is None else (self.token, self.negative)


@dataclass
class QKReason:
    """Why a query attends this key rather than another, with the always-on parts named.

    Each side's vector is split by *unit* (a node without its position; the bias side is
    ``None``) into its mean over reference positions and the deviation from it: a query unit
    ``s`` has ``u_s(q) = ubar_s + du_s`` (mean over the prompt's queries after BOS), a key unit
    ``t`` has ``v_t(k) = vbar_t + dv_t`` (mean over the keys ``0..q`` the query can read); a
    unit absent at a position counts 0 there. Then, exactly (``/ sqrt(d_qk)`` understood)::

        score = mean_query_mean_key   ubar . vbar   what an average query gives an average key
              + query_vs_mean_key     du . vbar     this query at any key: moves no attention
              + mean_query_vs_key     ubar . dv     this key for any query (key salience)
              + specific              du . dv       sum over (query unit, key unit) pairs

    ``pairs`` are the largest specific terms ``du_s . dv_t``; a side is named by its node id
    when the unit is present at that position (query or key) and by its unit id when it is
    absent there (it then acts through its mean alone). ``rest`` is ``specific`` minus the
    listed pairs; ``rest_share`` the share of the specific terms' total magnitude that the
    listed pairs leave out. ``query_units`` / ``key_units``: each side's units' totals of the
    specific part (``du_s . dv``, ``du . dv_t``), largest first. A unit present at every
    position with one vector (the query/key bias) has no deviation: it lands in the named
    mean parts only.
    """

    mean_query_mean_key: float
    query_vs_mean_key: float
    mean_query_vs_key: float
    specific: float
    pairs: list[QKPair]
    rest: float
    rest_share: float
    query_units: list[tuple[str | None, float]]
    key_units: list[tuple[str | None, float]]

    @property
    def always_on(self) -> float:
        """The parts that come from each side's mean (everything but ``specific``)."""
        return self.mean_query_mean_key + self.query_vs_mean_key + self.mean_query_vs_key

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["pairs"] = [[p.query, p.key, p.value] for p in self.pairs]
        d["query_units"] = [list(m) for m in self.query_units]
        d["key_units"] = [list(m) for m in self.key_units]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QKReason:
        d = dict(d)
        d["pairs"] = [QKPair(*p) for p in d["pairs"]]
        d["query_units"] = [tuple(m) for m in d["query_units"]]
        d["key_units"] = [tuple(m) for m in d["key_units"]]
        return cls(**d)


@dataclass
class QKSource:
    """What one side of a QK record's score comes from through the graph
    (``circuits.qk.qk_sources``): a group of nodes and its exact total in ``query_at`` (the
    query's own vector against the key's deviation from the mean key) or ``key_at`` (the
    query's deviation against the key's own vector), the parts of ``QKReason`` that move
    attention. Heads are grouped by (layer, position, the key they read), as
    ``circuits.groups.auto_groups`` does, since a job is spread over many rank-1 heads (the
    previous-token heads at an induction key each carry a small part of the token before it);
    a feature or an error node is a group of one. ``members``: node ids, largest part first."""

    side: str  # "query" or "key"
    kind: str  # "lorsa", "transcoder", "error" or "embedding" (the side's own token)
    layer: int  # -1 for the token
    pos: int
    attends: int | None  # heads: the key they read
    members: list[str]
    value: float


QK_SOURCE_SIDES = ("query", "key")
QK_SOURCE_KINDS = ("lorsa", "transcoder", "error", "embedding")


@dataclass
class QKAttribution:
    """The pre-softmax score of one Lorsa QK head at (query, key), split into exact terms.

    ``score = sum of all query-node x key-node terms + query-node x key-bias terms +
    query-bias x key-node terms + bias x bias``; ``pairs`` holds the largest of these terms,
    ``query_marginals`` / ``key_marginals`` each side's node totals (over every partner,
    bias included), largest first. ``rest`` is ``score`` minus the listed pairs.
    """

    layer: int
    qk_head: int
    query: int
    key: int
    attention: float
    score: float
    pairs: list[QKPair]
    query_marginals: list[tuple[str | None, float]]
    key_marginals: list[tuple[str | None, float]]
    rest: float
    # Optional (``qk_attribution(contrast=True)``): ``score`` minus the mean score over every
    # key the query could read, split into query-node x key-*unit* terms (a unit's key vector
    # at this key minus its mean over keys; "bias" is the constant part).
    contrast: float | None = None
    contrast_pairs: list[QKPair] = field(default_factory=list)
    # Optional (``qk_attribution(reason=True)``): the split with both sides' always-on parts
    # named (``QKReason``).
    reason: QKReason | None = None
    # Optional (``circuits.qk.qk_sources``): each side's largest sources through the graph.
    sources: list[QKSource] = field(default_factory=list)
    # The fields of every node or unit the record names (``names``), by id (``NamedSide``).
    named: dict[str, NamedSide] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Every node or unit id the record names (not the bias side), each once, in the order
        first named: its pairs, marginals, contrast pairs, reason and sources' members."""
        names = [x for p in self.pairs + self.contrast_pairs for x in (p.query, p.key)]
        names += [n for n, _ in self.query_marginals + self.key_marginals]
        if self.reason is not None:
            names += [x for p in self.reason.pairs for x in (p.query, p.key)]
            names += [n for n, _ in self.reason.query_units + self.reason.key_units]
        names += [m for x in self.sources for m in x.members]
        return list(dict.fromkeys(n for n in names if n is not None and n != QK_BIAS))

    def name_fields(self, known: Callable[[str], NamedSide]) -> None:
        """Fill ``named`` for every id the record names, with ``known(id)``'s fields (the
        producer's, which made the ids from them)."""
        self.named = {n: known(n) for n in self.names()}

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["named"] = {n: side.to_list() for n, side in self.named.items()}
        d["sources"] = [dict(x.__dict__) for x in self.sources]
        d["pairs"] = [[p.query, p.key, p.value] for p in self.pairs]
        d["contrast_pairs"] = [[p.query, p.key, p.value] for p in self.contrast_pairs]
        d["query_marginals"] = [list(m) for m in self.query_marginals]
        d["key_marginals"] = [list(m) for m in self.key_marginals]
        d["reason"] = None if self.reason is None else self.reason.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QKAttribution:
        d = dict(d)
        d["pairs"] = [QKPair(*p) for p in d["pairs"]]
        d["contrast_pairs"] = [QKPair(*p) for p in d.get("contrast_pairs", [])]
        d["query_marginals"] = [tuple(m) for m in d["query_marginals"]]
        d["key_marginals"] = [tuple(m) for m in d["key_marginals"]]
        reason = d.get("reason")
        d["reason"] = None if reason is None else QKReason.from_dict(reason)
        d["sources"] = [QKSource(**x) for x in d.get("sources", [])]
        d["named"] = {
            n: NamedSide(Kind.parse(k), stage, index, pos)
            for n, (k, stage, index, pos) in d.get("named", {}).items()
        }
        return cls(**d)


def top_contradiction(top, p: float, said: list[tuple]) -> tuple | None:
    """The first ``(token, probability)`` of ``said`` (a probability None: not given) that
    ``top`` being the most likely token at ``p`` contradicts: a token more likely, or ``top``
    itself given another probability (to ``SAME_P``); None where none does. Tokens are ids in
    a graph, texts in a summary file."""
    for token, q in said:
        if q is not None and (q > p + SAME_P or (token == top and abs(q - p) > SAME_P)):
            return token, q
    return None


def softmax_pair(a: float | None, b: float | None) -> bool:
    """Whether two probabilities of one softmax (a difference's tokens; None: not given) can
    be: they sum to at most 1 (to ``SAME_P``)."""
    return a is None or b is None or a + b <= 1 + SAME_P


def probability_words(p: float) -> str:
    """A probability for people: three decimals, or two significant figures below 0.001
    (``p=0.000`` hid the one number a contrastive target's reader needs: ``2.1e-07``)."""
    return f"{p:.3f}" if p >= 0.001 or p == 0 else f"{p:.2g}"


def untrained_words(
    token_strings: list[str], positions: list[int], targets: list[str]
) -> str | None:
    """One line for the reader when the prompt's tokens at ``positions`` never came up in
    training, or the logit targets' tokens ``targets`` (their texts) did not; None when
    neither (``Graph.untrained_note``, the mechanism summary's heading)."""
    notes = []
    if positions:
        shown = ", ".join(f"{token_strings[p]!r}@{p}" for p in positions[:8])
        more = f" and {len(positions) - 8} more" if len(positions) > 8 else ""
        notes.append(f"the model never saw {shown}{more} in training: those embeddings are "
                     "untrained, so the graph shows no learned mechanism at those "
                     "positions")  # fmt: skip
    if targets:
        shown = ", ".join(repr(t) for t in targets)
        notes.append(f"the target token{'s' if len(targets) > 1 else ''} {shown} never came "
                     "up in training: its unembedding is untrained, so no learned "
                     "prediction of it is there to explain")  # fmt: skip
    return "; ".join(notes) or None


@dataclass(eq=False)
class Graph:
    prompt: str
    tokens: list[int]
    token_strings: list[str]
    n_layers: int
    kind: Int[Tensor, " node"]  # Kind codes
    stage: Int[Tensor, " node"]
    pos: Int[Tensor, " node"]
    index: Int[Tensor, " node"]  # head, feature or token id; -1 for errors and bias nodes
    activation: Float[Tensor, " node"]
    value: Float[Tensor, " node"]  # pre-activations of heads, features, logits; NaN elsewhere
    bias: Float[Tensor, " node"]  # targets' constant terms (0 where not a target)
    target_weight: Float[Tensor, " node"]  # where influence starts: logit probabilities
    edges: sp.csr_array  # (node, node) float32, [target, source]
    attends: Int[Tensor, " node"]  # the key a head reads (its z-pattern's top); -1 elsewhere
    attention: Float[Tensor, " node"]  # the head's attention there; NaN elsewhere
    promotes: Int[Tensor, "node top"]  # a head's / feature's top promoted tokens; -1 elsewhere
    logit_targets: list[LogitRecord]  # one per logit node, in node order
    token_text: dict[int, str]  # the text of every token id the graph refers to
    mode: str = "local"  # "local" (error nodes) or "sparse"
    group_size: int = 1  # OV heads per Lorsa QK head
    positional: bool = True  # False: a global graph, nodes are units (pos 0)
    qk: list[QKAttribution] = field(default_factory=list)
    influence: Float[Tensor, " node"] | None = None
    occurrences: Float[Tensor, " node"] | None = None  # global graphs: firings in the sample
    # a prompt's head: its term at the key it reads over its activation (``read_share``); NaN
    # elsewhere; None where not known (a global graph: its heads read no key)
    key_share: Float[Tensor, " node"] | None = None
    model: dict = field(default_factory=dict)  # names and weight hashes
    settings: dict = field(default_factory=dict)  # provenance: thresholds, timings, scores
    global_record: GlobalRecord | None = None  # how a global graph was made; None: a prompt's
    # the head and feature targets (``NodeTarget``, positive ``target_weight``) in the order
    # they were given (``circuits.attribution.attribute``), as node indices; None: node order
    # (none given, or a graph built by hand). ``target_order`` follows it
    node_targets: list[int] | None = None
    # a part of its prompt's full graph (``subgraph``, ``prune_graph``): nodes or edges were
    # dropped, so its rows need not close (a full graph's must: ``circuits.graph_file``); the
    # full graph's size is provenance, ``settings["unpruned"]``
    pruned: bool = False

    @property
    def n_nodes(self) -> int:
        return len(self.kind)

    @property
    def n_edges(self) -> int:
        return int(self.edges.nnz)

    @property
    def has_constants(self) -> bool:
        """Whether the decoder biases are nodes (``attribute(constants=True)``)."""
        return bool((self.kind == Kind.BIAS).any())

    @cached_property
    def kinds(self) -> list[str]:
        """Each node's kind name (computed once; the arrays are not edited in place)."""
        return [KINDS[k] for k in self.kind.tolist()]

    def is_kind(self, *kinds: Kind | str) -> Tensor:
        codes = [int(k if isinstance(k, Kind) else Kind.parse(k)) for k in kinds]
        # numpy: called hundreds of times per trace, where torch.isin's thread pool cost a
        # full graph 0.4-2 ms a call on a busy machine
        return torch.from_numpy(np.isin(self.kind.numpy(), codes))

    @property
    def qk_from_weights(self) -> bool:
        """A QK circuit's graph (``circuits.global_weights.qk_circuit``, its
        ``global_record``): its QK pairs come from the weights alone (no prompt or corpus), not
        an expected QK attribution per firing."""
        return self.global_record is not None and self.global_record.qk_from_weights

    @property
    def direction(self) -> str | None:
        """The way a grown global graph grew from its start ("upstream" or "downstream",
        ``GlobalRecord.direction``); None for a prompt's graph or a QK circuit."""
        return None if self.global_record is None else self.global_record.direction

    @property
    def is_target(self) -> Tensor:
        """What the graph explains: its logit nodes and any head or feature it was traced
        from (positive ``target_weight``)."""
        return self.is_kind(Kind.LOGIT) | (self.target_weight > 0)

    @property
    def layer(self) -> Int[Tensor, " node"]:
        """Block index: -1 for embeddings, n_layers for logits."""
        return block_of(self.stage)

    @cached_property
    def ids(self) -> list[str]:
        """Node ids (``circuits.nodes.node_id``), derived from the fields."""
        negative = iter([r.negative for r in self.logit_targets])
        ids = []
        rows = zip(
            self.kind.tolist(), self.stage.tolist(), self.pos.tolist(), self.index.tolist(),
            strict=True,
        )  # fmt: skip
        for k, s, p, i in rows:
            kind = Kind(k)
            neg = next(negative) if kind == Kind.LOGIT else None
            ids.append(node_id(kind, s, p, i, negative=neg))
        return ids

    @cached_property
    def id_to_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.ids)}

    def units(self) -> list[tuple[Kind, int, int]]:
        """(kind, stage, index) of every Lorsa head and transcoder feature of the graph, once
        each (a unit active at several positions is one), sorted: what has a dashboard."""
        heads_and_features = self.is_kind(Kind.LORSA, Kind.TRANSCODER)
        found = zip(self.kind[heads_and_features].tolist(), self.stage[heads_and_features].tolist(),
                    self.index[heads_and_features].tolist(), strict=True)  # fmt: skip
        return sorted({(Kind(k), s, i) for k, s, i in found})

    def logit_record(self, node: int) -> LogitRecord:
        """The resolved target of logit node ``node``."""
        node = self.node_index(node)
        if Kind(int(self.kind[node])) != Kind.LOGIT:
            raise ValueError(f"node {self.ids[node]} is not a logit")
        return self.logit_targets[int((self.kind[:node] == Kind.LOGIT).sum())]

    def token(self, token: int) -> str:
        """The text of a token id the graph refers to."""
        return self.token_text.get(int(token), f"<{int(token)}>")

    @property
    def untrained_positions(self) -> list[int]:
        """Prompt positions holding a token the model never saw as an input in training
        (``model["untrained_positions"]``; empty when the model does not record them). A
        value that is no list of prompt positions (set by hand: a file's is checked as it is
        read) is refused in one line."""
        positions = self.model.get("untrained_positions", [])
        n_pos = len(self.tokens)
        ok = isinstance(positions, list) and all(
            isinstance(p, int) and not isinstance(p, bool) and 0 <= p < n_pos for p in positions
        )
        if not (ok and positions == sorted(set(positions))):
            raise ValueError(f"model['untrained_positions']: expected a list of distinct prompt "
                             f"positions (0..{n_pos - 1}) in increasing order, got "
                             f"{positions!r:.60}")  # fmt: skip
        return list(positions)

    @property
    def model_top(self) -> tuple[int, float] | None:
        """In sparse mode the model's own most likely next token and its probability
        (``model["model_top"]``): the graph explains the replacement's prediction, which can
        be another token (a reviewer's sparse trace explained a near-tie of '9' and '8' where
        the model put '0' first); None in local mode, whose error nodes make the two one. A
        value that is no ``[token id, probability]`` is refused in one line."""
        top = self.model.get("model_top")
        if top is None:
            return None
        ok = isinstance(top, list) and len(top) == 2 and is_integer(top[0]) and top[0] >= 0 \
            and (not self.token_text or int(top[0]) in self.token_text) \
            and is_fraction(top[1])  # fmt: skip
        if not ok:
            raise ValueError(f"model['model_top']: expected [token id, probability in (0, 1]] "
                             f"of a token the graph names, got {top!r:.60}")  # fmt: skip
        token, p = int(top[0]), float(top[1])
        said = [(r.token, r.model_probability) for r in self.logit_targets]
        said += [(r.negative, r.model_negative_probability) for r in self.logit_targets]
        against = top_contradiction(token, p, said)
        if against is not None:
            other, q = against
            raise ValueError(f"model['model_top']: p={p:.6g} for token {token}, where a target "
                             f"gives the model's p={q:.6g} for token {other}")  # fmt: skip
        return token, p

    @property
    def starts_with_bos(self) -> bool:
        """A prompt's graph whose position 0 holds the tokenizer's BOS (where the trace puts
        it): its embedding there holds the same in every prompt, as a position vector does, so
        the reader is given it as a constant named ``BOS`` (``circuits.flows.target_parts``,
        ``circuits.groups.node_name``)."""
        return self.positional and self.token_strings[:1] == [BOS]

    @property
    def untrained_targets(self) -> list[int]:
        """The logit targets' tokens (positive or negative) the model never saw in training
        (``model["untrained_targets"]``; empty when the model does not record them): their
        unembeddings are untrained. A value that is no increasing list of the targets' tokens
        is refused in one line."""
        tokens = self.model.get("untrained_targets", [])
        named = {x for r in self.logit_targets for x in r.tokens}
        ok = isinstance(tokens, list) and all(
            isinstance(t, int) and not isinstance(t, bool) and t in named for t in tokens
        )
        if not (ok and tokens == sorted(set(tokens))):
            raise ValueError(f"model['untrained_targets']: expected a list of distinct logit "
                             f"target tokens in increasing order, got {tokens!r:.60}")  # fmt: skip
        return list(tokens)

    def untrained_note(self) -> str | None:
        """One line for the reader when the prompt holds tokens the model never trained on,
        or a logit target is one (``untrained_words``)."""
        return untrained_words(
            self.token_strings, self.untrained_positions,
            [self.token(t) for t in self.untrained_targets],
        )  # fmt: skip

    # ----------------------------------------------------------------- views
    def node_index(self, node, name: str = "node") -> int:
        """One node index, refused in one line unless an integer in ``0..n_nodes - 1`` (never
        read from the end, never a float truncated into one)."""
        return checked_index(node, name, self.n_nodes)

    def node_indices(self, nodes, name: str = "nodes") -> Int[Tensor, " n"]:
        """``nodes`` (node indices or a boolean mask over the nodes) as sorted indices, refused
        in one line when it is anything else: floats, strings, negative or out-of-range
        indices (never read from the end), a node named twice, a mask of another length."""
        if isinstance(nodes, set | frozenset):
            nodes = sorted(nodes)  # sorted below anyway
        if isinstance(nodes, dict | str):
            raise ValueError(f"{name} must be node indices (integers, 1-D) or a boolean mask, "
                             f"not a {type(nodes).__name__}")  # fmt: skip
        listed = isinstance(nodes, list | tuple)
        mask = listed and all(isinstance(x, bool) for x in nodes)
        if listed and not (all(map(is_integer, nodes)) or mask):
            raise ValueError(f"{name} must be node indices (integers, 1-D) or a boolean mask")
        if listed and not mask:  # before torch, which overflows on an int beyond int64
            self._check_range([x for x in nodes if not 0 <= x < self.n_nodes], name)
        nodes = torch.as_tensor(nodes)
        if nodes.numel() == 0 and nodes.dtype != torch.bool:
            nodes = nodes.long()  # an empty list: no nodes
        if nodes.dtype == torch.bool:
            if nodes.shape != (self.n_nodes,):
                raise ValueError(f"a mask of {tuple(nodes.shape)} for {self.n_nodes} nodes")
            nodes = nodes.nonzero().squeeze(1)
        if nodes.dtype.is_floating_point or nodes.is_complex() or nodes.ndim != 1:
            raise ValueError(f"{name} must be node indices (integers, 1-D) or a boolean mask")
        nodes = nodes.long().sort().values
        self._check_range(nodes[(nodes < 0) | (nodes >= self.n_nodes)].tolist(), name)
        if bool((nodes[1:] == nodes[:-1]).any()):
            raise ValueError(f"{name} names a node twice")
        return nodes

    def _check_range(self, outside: list[int], name: str) -> None:
        """Refuse ``outside``, the indices of ``name`` outside the graph, naming the first as
        ``node_index`` does (an int of 31 digits was torch's "Overflow when unpacking long
        long": fuzz pass 13)."""
        if outside:
            first = str(int(outside[0]))
            shown = first if len(first) <= 30 else f"{first[:27]}..."
            raise ValueError(f"{name} must hold node indices in 0..{self.n_nodes - 1}: {shown} "
                             "is outside")  # fmt: skip

    def subgraph(self, keep: Tensor | list[int], edges: sp.csr_array | None = None) -> Graph:
        """The graph restricted to the nodes ``keep`` (indices or a boolean mask), in order;
        ``edges`` (optional) replaces the edges among them, e.g. with a pruned set."""
        keep = self.node_indices(keep, "keep")
        idx = keep.numpy()
        if edges is not None and not (sp.issparse(edges) and edges.shape == (len(idx),) * 2):
            shape = getattr(edges, "shape", None)
            raise ValueError(f"edges must be a sparse ({len(idx)}, {len(idx)}) array, got {shape}")
        if edges is not None and not np.isfinite(edges.data).all():
            raise ValueError("edges has NaN or infinite values: a graph's edges are finite")
        qk_keys = self.qk_keys(keep)
        logit_nodes = (self.kind == Kind.LOGIT).nonzero().squeeze(1).tolist()
        kept_logits = set(idx[self.kind[keep].numpy() == Kind.LOGIT].tolist())
        settings, pruned = self.settings, self.pruned
        if edges is not None or len(idx) < self.n_nodes:  # no longer every node and edge:
            # say so (``pruned``), as ``prune_graph`` does, or its file would be read as a
            # full graph, whose rows must close; the whole graph's size is provenance
            pruned = True
            whole = {"nodes": self.n_nodes, "edges": self.n_edges}
            settings = {**settings, "unpruned": settings.get("unpruned", whole)}
            settings.pop(START_EDGES, None)  # of the edges as grown: no longer these
            settings.pop(RELIABILITY, None)
        targets = [r for n, r in zip(logit_nodes, self.logit_targets, strict=True)
                   if n in kept_logits]  # fmt: skip
        node_targets = self.node_targets
        if node_targets is not None:  # the order given, of those kept, as the new indices
            new = {old: i for i, old in enumerate(idx.tolist())}
            node_targets = [new[i] for i in node_targets if i in new]
        model = self.model
        if "untrained_targets" in model:  # of the targets kept
            named = {x for r in targets for x in r.tokens}
            model = {**model, "untrained_targets": [
                x for x in self.untrained_targets if x in named]}  # fmt: skip
        return replace(
            self,
            settings=settings,
            model=model,
            node_targets=node_targets,
            pruned=pruned,
            kind=self.kind[keep],
            stage=self.stage[keep],
            pos=self.pos[keep],
            index=self.index[keep],
            activation=self.activation[keep],
            value=self.value[keep],
            bias=self.bias[keep],
            target_weight=self.target_weight[keep],
            attends=self.attends[keep],
            attention=self.attention[keep],
            promotes=self.promotes[keep],
            logit_targets=targets,
            edges=sp.csr_array(self.edges[idx][:, idx] if edges is None else edges),
            qk=[a for a in self.qk if (a.layer, a.qk_head, a.query) in qk_keys],
            influence=None if self.influence is None else self.influence[keep],
            occurrences=None if self.occurrences is None else self.occurrences[keep],
            key_share=None if self.key_share is None else self.key_share[keep],
        )

    def qk_head(self, nodes):
        """The QK head of Lorsa node(s) ``nodes`` (``index // group_size``): an int for one
        node, a tensor for a tensor of them. The one place a head's QK head is read."""
        if isinstance(nodes, Tensor):
            return self.index[nodes] // self.group_size
        return int(self.index[nodes]) // self.group_size

    def qk_keys(self, nodes: Tensor) -> set[tuple[int, int, int]]:
        """(layer, QK head, query) of the Lorsa nodes among ``nodes``."""
        lorsa = nodes[self.kind[nodes] == Kind.LORSA]
        layers, heads = self.layer[lorsa].tolist(), self.qk_head(lorsa).tolist()
        return set(zip(layers, heads, self.pos[lorsa].tolist(), strict=True))

    def qk_for(self, node: int) -> list[QKAttribution]:
        """The QK attributions of the Lorsa head ``node``'s pattern (its QK head at its query),
        one per key traced: the key it reads first (``read_key``), then any other (another
        head of its QK group reads it, or ``key_mass`` asked for it) by attention."""
        node = self.node_index(node)
        if Kind(int(self.kind[node])) != Kind.LORSA:
            return []
        layer, q = int(self.layer[node]), int(self.pos[node])
        head = self.qk_head(node)
        read = self.read_key(node)
        found = [a for a in self.qk if (a.layer, a.qk_head, a.query) == (layer, head, q)]
        return sorted(found, key=lambda a: (a.key != read, -a.attention))

    def side(self, node: int) -> NamedSide:
        """Node ``node``'s fields as a QK record names them (``QKAttribution.named``)."""
        i = self.node_index(node)
        kind, stage, index, pos = (int(x[i]) for x in (self.kind, self.stage, self.index, self.pos))
        return NamedSide(Kind(kind), stage, index, pos)

    def target_order(self) -> list[int]:
        """The nodes the graph explains: its logit nodes in node order, then the heads and
        features it was traced from (positive ``target_weight``) in the order they were given
        (``given_targets``). The first is the summary's first target, whose flows rank the
        groups it checks beyond each target's own (so the order given decides which groups
        fill the checks)."""
        return self.is_kind(Kind.LOGIT).nonzero().squeeze(1).tolist() + self.given_targets()

    def given_targets(self) -> list[int]:
        """The head and feature targets in the order given (``node_targets``; node order where
        None), checked (``node_targets_problem``): a one-line ValueError where they are not
        those targets."""
        problem = self.node_targets_problem()
        if problem is not None:
            raise ValueError(f"node_targets {problem}")
        if self.node_targets is None:
            return (self.is_target & (self.kind != Kind.LOGIT)).nonzero().squeeze(1).tolist()
        return [int(i) for i in self.node_targets]

    def node_targets_problem(self) -> str | None:
        """What is wrong with ``node_targets`` (None: nothing; None itself is node order): each
        must be a node index in range, once, of a head or feature with a positive target
        weight, and together every target that is not a logit. The one check of them, for
        ``given_targets`` and a graph file (``circuits.graph_file``)."""
        given = self.node_targets
        if given is None:
            return None
        if not isinstance(given, list) or not all(is_integer(i) for i in given):
            return f"must be a list of node indices, got {given!r:.60}"
        outside = [i for i in given if not 0 <= i < self.n_nodes]
        if outside:
            return f"names node {outside[0]}, outside 0..{self.n_nodes - 1}"
        twice = [i for n, i in enumerate(given) if i in given[:n]]
        if twice:
            return f"names node {self.ids[twice[0]]} twice"
        other = [i for i in given if Kind(int(self.kind[i])) not in (Kind.LORSA, Kind.TRANSCODER)]
        if other:
            return f"names node {self.ids[other[0]]}, no head or feature"
        weightless = [i for i in given if not self.target_weight[i] > 0]
        if weightless:
            return f"names node {self.ids[weightless[0]]}, which has no target weight"
        others = (self.is_target & (self.kind != Kind.LOGIT)).nonzero().squeeze(1).tolist()
        left = [i for i in others if i not in given]
        return f"leaves out the target {self.ids[left[0]]}" if left else None

    def read_key(self, node: int) -> int | None:
        """The key position a Lorsa head node reads (``attends``: the one its activation comes
        from most; None for other nodes)."""
        key = int(self.attends[self.node_index(node)])
        return key if key >= 0 else None

    def read_share(self, node: int) -> float | None:
        """The share of a Lorsa head node's activation that the key it reads brings (its
        z-pattern's term there over the sum of all, ``A[q, k] (x_k . w_v + b_V) / activation``:
        above 1 where other keys take some away); None for other nodes, or where the graph
        does not know it (``key_share`` None)."""
        i = self.node_index(node)
        if self.key_share is None or int(self.attends[i]) < 0:
            return None
        share = float(self.key_share[i])
        return None if math.isnan(share) else share

    def to_networkx(self, labels: list[str] | None = None) -> nx.DiGraph:
        """Nodes keyed by id with every attribute (``labels``, e.g. ``reports.labels
        .node_labels(graph)``, adds a ``label``); edges source -> target with ``weight``.
        Graph attributes: ``prompt``, ``tokens`` (token strings), ``mode``, ``positional``,
        ``global`` (a global graph's ``GlobalRecord.to_dict()``, None for a prompt's),
        ``node_targets`` (the ids of the head and feature targets in the order given:
        ``given_targets``), ``pruned`` and each entry of ``settings`` beside them, as
        ``g.graph["closure_error"]``; a setting named like one of the seven is refused rather
        than let to shadow it."""
        reserved = [key for key in RESERVED_SETTINGS if key in self.settings]
        if reserved:
            raise ValueError(f"settings[{reserved[0]!r}] would shadow the graph's own "
                             f"{reserved[0]!r} attribute: store it under another key")  # fmt: skip
        g = nx.DiGraph(
            prompt=self.prompt, tokens=self.token_strings, mode=self.mode,
            positional=self.positional,
            **{"global": None if self.global_record is None else self.global_record.to_dict()},
            node_targets=[self.ids[i] for i in self.given_targets()], pruned=self.pruned,
        )  # fmt: skip
        g.graph.update(self.settings)  # any key a dict holds (a keyword must be a string)
        if labels is not None and len(labels) != self.n_nodes:
            raise ValueError(f"{len(labels)} labels for {self.n_nodes} nodes (labels of another "
                             "graph?)")  # fmt: skip
        if labels is not None and not all(isinstance(x, str) for x in labels):
            raise TypeError("labels must be strings, one per node (reports.labels.node_labels)")
        for i, name in enumerate(self.ids):
            attrs = self.node_attributes(i)
            if labels is not None:
                attrs["label"] = labels[i]
            g.add_node(name, **attrs)
        coo = self.edges.tocoo()
        g.add_weighted_edges_from(
            (self.ids[s], self.ids[t], float(w))
            for t, s, w in zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist(), strict=True)
        )
        return g

    def node_attributes(self, i: int) -> dict:
        """Node ``i``'s fields, as ``to_networkx`` gives them."""
        i = self.node_index(i)
        attrs = {
            "kind": self.kinds[i],
            "layer": int(self.layer[i]),
            "stage": int(self.stage[i]),
            "pos": int(self.pos[i]),
            "index": int(self.index[i]),
            "activation": float(self.activation[i]),
            "value": float(self.value[i]),
            "bias": float(self.bias[i]),
            "target_weight": float(self.target_weight[i]),
        }
        if int(self.attends[i]) >= 0:
            attrs["attends"] = int(self.attends[i])
            attrs["attention"] = float(self.attention[i])
            if self.key_share is not None:
                attrs["key_share"] = float(self.key_share[i])
        promoted = [t for t in self.promotes[i].tolist() if t >= 0]
        if promoted:
            attrs["promotes"] = promoted
        if self.influence is not None:
            attrs["influence"] = float(self.influence[i])
        if self.occurrences is not None:
            attrs["occurrences"] = float(self.occurrences[i])
        if self.kinds[i] == "logit":
            record = self.logit_record(i)
            attrs["token"], attrs["negative"] = record.token, record.negative
            attrs["probability"] = record.probability
        qk = self.qk_for(i)
        if qk:
            attrs["qk"] = [a.to_dict() for a in qk]
        return attrs

    # ----------------------------------------------------------------- files
    def save(self, path: str | Path) -> None:
        """Write a ``.safetensors`` graph file (tensors plus a JSON header) atomically."""
        from .graph_file import save_graph

        save_graph(self, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        """Read and fully validate a graph file (``circuits.graph_file``)."""
        from .graph_file import load_graph

        return load_graph(Path(path))


def is_integer(x) -> bool:
    """A Python or NumPy integer (what ``operator.index`` takes), not a bool: what the graph
    API accepts as a node index or a count, so a float is never truncated into one. A one-element
    bool tensor is a bool too (``operator.index`` reads it as 0 or 1: a mask passed as a group's
    members was refused as "names a node twice", ``node_index(torch.tensor(True))`` gave 1)."""
    if isinstance(x, bool) or (isinstance(x, torch.Tensor) and x.dtype == torch.bool):
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


def checked_graph(graph, name: str = "graph") -> Graph:
    """``graph`` itself, or a one-line TypeError unless it is a ``Graph``: a grouped view
    (``circuits.groups.GroupedGraph``) has no node arrays, and would fail deep inside."""
    if not isinstance(graph, Graph):
        hint = " (a grouped view: pass its .graph)" if isinstance(
            getattr(graph, "graph", None), Graph
        ) else ""  # fmt: skip
        raise TypeError(f"{name} must be a circuits.graph.Graph, got a "
                        f"{type(graph).__name__}{hint}")  # fmt: skip
    return graph


def checked_index(value, name: str, size: int) -> int:
    """``value`` as an ``int`` in ``0..size-1``, or a one-line ValueError naming ``name``: a
    bool, a float or a negative index (never read from the end) is refused."""
    if not is_integer(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 <= value < size:
        raise ValueError(f"{name} {value} is outside 0..{size - 1}")
    return int(value)


def checked_fraction(value, name: str) -> float:
    """``value`` as a ``float`` in (0, 1] (``is_fraction``), or a one-line ValueError."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not is_fraction(value):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def checked_count(value, name: str, least: int = 1) -> int:
    """``value`` as an ``int`` of at least ``least`` (1: a positive count, 0: a non-negative
    one), or a one-line ValueError naming ``name``: never a float truncated into one."""
    if not (is_integer(value) and value >= least):
        what = "a positive" if least == 1 else "a non-negative"
        raise ValueError(f"{name} must be {what} integer, got {value!r}")
    return int(value)


def checked_flag(value, name: str, *, none: bool = False) -> bool | None:
    """``value`` as a ``bool`` (a NumPy bool too), or a one-line TypeError naming ``name``: a
    truthy string such as "no" or a number is never read as True (``none``: None passes)."""
    if value is None and none:
        return None
    if not isinstance(value, bool | np.bool_):
        also = " (or None)" if none else ""
        raise TypeError(f"{name} must be True or False{also}, got {value!r}")
    return bool(value)


def is_fraction(x) -> bool:
    """A real number in (0, 1] (not a bool, not NaN): a threshold or a share of a mass."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and 0 < x <= 1


def no_promotes(n: int) -> Tensor:
    """A ``promotes`` array for ``n`` nodes that promote nothing."""
    return torch.full((n, N_PROMOTED), -1, dtype=torch.long)


__all__ = [
    "FORMAT_VERSION", "GlobalRecord", "Graph", "KINDS", "Kind", "LogitRecord", "QKAttribution",
    "QKPair", "QKReason", "QKSource",
    "block_of", "logit_stage", "no_promotes", "node_id",
]  # fmt: skip
