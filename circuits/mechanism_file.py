"""The mechanism summary's records and their file: ``MechanismSummary`` (the summary of one
prompt's graph, ``circuits.mechanisms``) and the records it holds, as JSON.

``to_dict``/``from_dict`` write and read the summary as JSON (``save_summary``, beside the
graph as ``mechanisms.json``, atomically; ``load_summary``). A file is untrusted: every field
is typed (``toy_models.records.from_json``), then the references and sums that tie the records
together are checked (``_summary_from_dict``); a problem is one ValueError naming the file.
A summary in memory may be edited by hand: ``checked_summary`` puts it through the same
checks, and ``save_summary`` and the printers (``reports.mechanisms``) read it through them.
Ids are for files and people: every node a record mentions comes with its fields
(``NodeRef``). What the records' docstrings name lives with the summary
(``circuits.mechanisms``: ``RATIO``, ``HEAD_GROUPS``, ``SIDE_SOURCES``, ``ROOT_PAIRS``, the
sign agreement of a check) and with the flows (``circuits.flows``: ``node_flows``,
``qk_root_pairs``, ``root_split``).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from toy_models.cli import one_line
from toy_models.records import Bounds, Share, from_json, is_finite_number, parse_json, to_plain

from .graph import MODES, QKReason, softmax_pair, top_contradiction, untrained_words
from .nodes import EMBEDDING_STAGE, KINDS, Kind, block_of, kind_at_stage, node_id, stage_of

VERSION = 9  # 2: a group's ``carried`` holds every key, with ``carried_own``; a target's
# ``constants_by_source`` ranks ``own`` with the rest and leaves out zeros; 3: a head group's
# ``attends`` and QK reasons are at the key its heads read (their z-patterns' largest term), no
# longer their attention's argmax; 4: a head target's head groups and moved flows are those at
# the key it reads (``reads``), no longer at its query, and it has QK reasons of its own (``qk``);
# 5: a check's ``free`` recomputes the errors too (local mode: the original model less the group;
# it held them at their clean values, which a reviewer found reversed 12 of 260 probabilities);
# 6: a QK reason's ``token_checks``; 7: ``own_pairs`` / ``moved_pairs`` between the query's and
# the key's own vectors (they held the query's deviation: every position's token stood on the
# query side of a layer-0 head's terms, through the mean query), ``token_parts``' ``means``;
# 8: ``root_parts`` holds ``positions``: terms between tokens and the position vectors with
# the position vectors on either side, which were ``constants``; ``position_pairs``; a
# target's BOS is a constant (``BOS``), no longer a token; 9: a token check's ``specific`` and
# ``rival`` (the key that gained most attention, its attention before and after); a check's
# ``free_ln_held`` (and since, optional, absent from earlier files: ``free_final_ln_held``,
# ``free_attention_held``, ``margin_frozen`` / ``margin_free``; a group's ``writes_qk`` and
# ``attention_checks`` (with ``query_side`` / ``key_side``); a target's ``model_probability``;
# a QK source's ``raisers`` and ``at_position``; a head target's ``own_attention_sides``; a
# group's ``key_share``; a target's ``model_negative_probability``; the summary's ``model_top``;
# a QK reason's ``moved_by``)
TOLERANCE = 0.01  # effects below this (logit units) on both sides agree whatever their sign
SIDES = ("query", "key")  # a ``QKSourceRole``'s side
ROOT_PARTS = ("tokens", "positions", "errors", "constants")  # a QK reason's ``root_parts``
CLOSURE = 1e-3  # relative tolerance of the sums a summary file must close (float32 sums)
# a group's kind: its members' (a node kind), or "mixed" for a hand-made group of several
# (``circuits.groups.group``), whose Lorsa members' QK heads it lists too
GROUP_KINDS = (*KINDS, "mixed")


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
    concept_f1: Share | None = None  # an F1 (7.5 loaded: a fuzz pass)
    promotes: list[str] = field(default_factory=list)
    main_input: dict | None = None  # the fields of a ``MainInput`` (``_check_main_inputs``)


@dataclass
class MainInput:
    """What ``NodeRef.main_input`` holds (a JSON object with exactly these keys; the readers,
    ``reports.mechanisms.ref_text`` and the benchmarks, index it by name): the source of the
    node's largest incoming |edge|, its node ``id``, ``kind`` (``circuits.nodes.KINDS``),
    ``layer`` (-1 for embeddings), ``pos`` (in the prompt, at or before the node's), the key
    a head source reads (``attends``; None for other kinds, or a head that reads none) and its
    ``share`` of the node's incoming |edges|."""

    id: str
    kind: str
    layer: int
    pos: int
    attends: int | None
    share: Share


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

    @property
    def is_position(self) -> bool:
        """Whether this is the position vectors (``W_pos``; with constants as nodes, one group
        of every position's, ``circuits.groups.AUTO_RULES``): constant across prompts, but not
        across the keys a head chooses between, so a QK reason counts them apart from the
        constants that are (``root_split``'s ``positions``)."""
        return self.kind == "bias" and self.layer == block_of(EMBEDDING_STAGE)


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
class TokenCheck:
    """A QK reason's token term tested (``circuits.interventions.tokens_to_mean``): the token
    at ``pos`` (``token``) replaced by the mean token embedding, the model rerun, and the QK
    head's ``attention`` from the reason's query to its key after it (the reason's own
    ``attention`` before). A term that names a token but holds what any token would bring
    leaves it where it was (a reviewer found the +10.9 of ``'='@13 x '+'@2 -> @9`` on
    ``7+8=15; 15+9=`` moved nothing when ``+`` was swapped). ``specific``: the reason's
    ``specific`` part after it, what the terms split (the attention can fall as they say while
    the key's own part rises, another key gaining more); ``rival``: the other key whose
    attention rose most (None when none rose), its attention before and after."""

    pos: int
    token: str
    attention: Share
    specific: float
    rival: int | None = None
    rival_attention: Share | None = None
    rival_before: Share | None = None


@dataclass
class Mover:
    """A head group at a QK reason's key that brings a moved token's position there
    (``MovedBy``): the group's fields, its ``value`` what its heads bring from that position
    to the key side (``key_at``), exactly (``circuits.flows.key_flows`` of the side's flow:
    each head's share of the side split by its z-pattern, ``A[key, p] x_p w_v``); ``key`` its
    key in the summary where it is one of its groups (None: not listed there)."""

    group: SourceShare
    key: str | None = None


@dataclass
class MovedBy:
    """Which head groups at a QK reason's key moved a token there (``QKReasonRecord.moved_by``):
    for a token position ``pos`` (``token``) named on the key side of its ``moved_pairs``, what
    every head at the key brings from ``pos`` to the key side (``total``), and the ``MOVERS``
    groups bringing most, largest first (``movers``, none that lowers it): the heads that read
    the token before the key (an induction head's previous-token heads)."""

    pos: int
    token: str
    total: float
    movers: list[Mover] = field(default_factory=list)


@dataclass
class QKReasonRecord:
    """A head group's attention at its key, split as ``circuits.graph.QKReason`` (the four parts
    sum to ``score``).

    Each side of the ``specific`` part splits into what that position holds and the mean it is
    measured against: ``specific = query_at - mean query . dv = key_at - du . mean key``, with
    ``query_at = u(q) . dv`` (this query's own vector against the key's deviation) and ``key_at
    = du . v(k)`` (the query's deviation against this key's own vector). ``query_sources`` /
    ``key_sources``: where ``query_at`` / ``key_at`` come from through the graph. Each is linear
    in every node below the head: a node at the query (key) adds its own query (key) vector's
    term, and every node adds what it passes on through the nodes it feeds (the backward flow of
    ``node_flows``; a token at another position reaches the key only through heads at the key
    that read it). Grouped by the summary's groups, the ``SIDE_SOURCES`` largest of each
    category, largest first: ``roots`` (token embeddings, errors, constants: their totals, the
    nodes' own terms and the QK bias term sum to ``query_at`` / ``key_at``), ``heads`` and
    ``features`` (totals through them). ``root_pairs`` (for the group's first QK head, the one
    with the largest flow): ``specific`` split by roots on both sides at once (``RootPair``,
    ``qk_root_pairs``), its ``ROOT_PAIRS`` largest terms between tokens and errors: which token
    at the query meets which token the key side holds (its own, one moved there by the heads at
    the key, or, through the mean key, any position's); ``root_parts``: the exact split of
    ``specific`` into ``tokens``, ``positions`` (terms with a position vector on either side,
    the other a token or a position vector), ``errors`` and ``constants`` (``root_split``);
    ``position_pairs``: the largest terms of ``positions``, between the deviations like
    ``root_pairs`` (what sets this key apart from the others by where things are), between
    roots the query's and the key's own vectors hold;
    ``token_parts``: its ``tokens`` split by the key side, ``key_own`` (against the key's own
    token), ``moved`` (against tokens the heads at the key moved there), each between the
    query's own vector and the key's own vector, and ``means`` (what the mean query and the mean
    key take away: ``specific`` is between the deviations from them), and ``own_pairs`` /
    ``moved_pairs`` the largest terms of the first two (none holding a share of a mean, so a
    token at another position never stands on the query side of a layer-0 head's terms; a pair
    there differs from the same pair in ``root_pairs``, which the printout leaves to the file).
    The own token often gives the largest single term (the key is the kind of token the query
    reads: a word, not BOS or a comma), while what makes this key win over others of its kind is
    often a moved token: on ``My sister plays violin on stage and my sister plays`` changing
    ``violin`` keeps the induction heads' attention at 0.80-0.90 where changing the ``plays``
    before it takes it to 0.00. ``token_checks``: the tokens its printed root terms name
    (``TERMS_SHOWN`` of each list), each replaced by the mean token (``TokenCheck``);
    ``moved_by``: the head groups at the key that moved the tokens of ``moved_pairs`` there
    (``MovedBy``)."""

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
    rest_share: Share
    pairs: list[QKTermRecord]
    query_at: float | None = None
    key_at: float | None = None
    query_sources: dict[str, list[SourceShare]] = field(default_factory=dict)
    key_sources: dict[str, list[SourceShare]] = field(default_factory=dict)
    root_pairs: list[RootPair] = field(default_factory=list)
    root_parts: dict[str, float] = field(default_factory=dict)
    token_parts: dict[str, float] = field(default_factory=dict)
    own_pairs: list[RootPair] = field(default_factory=list)
    moved_pairs: list[RootPair] = field(default_factory=list)
    position_pairs: list[RootPair] = field(default_factory=list)
    token_checks: list[TokenCheck] = field(default_factory=list)
    moved_by: list[MovedBy] = field(default_factory=list)

    # the same parts as ``circuits.graph.QKReason``'s: one sum, read by every view
    always_on = QKReason.always_on


@dataclass
class EffectCheck:
    """Ablating a group: the change of one target predicted by the linear graph and measured with
    attention frozen (LayerNorm too, errors held: the graph's own setting) and free (attention,
    LayerNorm and, in local mode, the errors recomputed: the original model less the group's writes,
    ``circuits.interventions.intervene``); ``agree_*`` (sign, ``circuits.mechanisms``) and
    ``ratio_*`` (|measured| / |predicted|, None when the prediction is 0); ``flagged``: a sign
    disagreement or a ratio beyond ``RATIO`` in either mode. For a logit target,
    ``probability_frozen`` / ``probability_free``: its token's probability after the ablation (the
    summary's ``TargetRecord.probability`` before it). A logit target is demeaned (or a difference),
    so it can rise while its token's probability falls: a group whose ablation lowers every logit at
    once (measured: the mean logit from -1.1 to -14.5 while the probability of the target fell from
    0.98 to 0.0002) reads as helping the target from its change alone. ``free_ln_held``: the
    free rerun with the LayerNorm scales held at their clean values (attention and errors free),
    and whether it agrees in sign (``agree_free_ln_held``): where free disagrees and this
    agrees, the model's LayerNorm rescaling is what undoes the prediction, not other heads
    attending elsewhere (801 of the 974 free disagreements on the six draws' probe prompts).
    ``free_final_ln_held``: the same with only the final LayerNorm's scale held (the blocks'
    free), and ``agree_free_final_ln_held``: whether it is the final normalisation, which
    rescales every logit at once, that undoes it (None in files written before it).
    ``free_attention_held``: free with the attention patterns held at their clean values
    (LayerNorm and errors free), and ``agree_free_attention_held``: where free differs from
    it, the group acts through the attention it shapes (a reviewer's previous-token heads at
    an induction key: predicted -3.91, free -8.3, attention held +0.37; None in files written
    before it). ``margin_frozen`` / ``margin_free``: for a logit target (not a difference), the
    change of its margin over the runner-up (``TargetRecord.runner_up``) in each rerun: the
    heads that read a list's item bring +17.4 of ` April`'s logit, yet ablating them moves its
    margin over ` May` by -1.81 (a reviewer's months list): they say "a month", not which."""

    target: str
    predicted: float
    frozen: float
    free: float
    agree_frozen: bool
    agree_free: bool
    ratio_frozen: float | None
    ratio_free: float | None
    flagged: bool
    probability_frozen: float | None = None
    probability_free: float | None = None
    free_ln_held: float | None = None
    agree_free_ln_held: bool | None = None
    free_final_ln_held: float | None = None
    agree_free_final_ln_held: bool | None = None
    free_attention_held: float | None = None
    agree_free_attention_held: bool | None = None
    margin_frozen: float | None = None
    margin_free: float | None = None
    # For a logit target, the most likely token after each rerun and its probability, where
    # that is not the most likely token before (the ablation changes the model's answer);
    # None otherwise, and in files written before it (a reviewer read "its probability as
    # predicted" where the frozen rerun had made another token certain)
    top_frozen: str | None = None
    top_frozen_probability: Share | None = None
    top_free: str | None = None
    top_free_probability: Share | None = None
    # For a logit difference, its negative token's probability after each rerun (the summary's
    # ``TargetRecord.negative_probability`` before): a group lowering both tokens moves the
    # difference either way while the first token's probability collapses (a reviewer read
    # "ok" beside p(' four') 0.00163 -> 6.33e-05, where p(' one') fell 0.0084 -> 5.8e-05);
    # None otherwise, and in files written before it
    negative_probability_frozen: Share | None = None
    negative_probability_free: Share | None = None


@dataclass
class QKSourceRole:
    """Why a group is in the summary whatever its flow: it writes one side (``side``, "query"
    or "key") of the QK reason of head group ``group`` (a key of this summary; its QK head
    ``qk_head``), its ``SourceShare`` there (``value``, in score units), and of the ``tested``
    head groups that raise that side most (``rank``: its place among them by ``value``, 1 the
    largest), its ablation lowers the group's attention most (``AttentionCheck``, free). A
    target's predicting head group attends where it does because of what other heads wrote at
    its query and key (the previous-token heads at an induction key): their value flow into
    the target may be small, their effect all through that attention; and the linear share
    and the causal effect come apart (heads that act through the MLP after them, or through
    later heads at another position), so the ablations choose."""

    group: str
    qk_head: int
    side: str
    value: float
    rank: Annotated[int, Bounds(1, None)] = 1
    tested: Annotated[int, Bounds(1, None)] = 1
    # the tested group whose ablation lowers the attention through that side next most, where
    # it comes within ``TIE`` of this one's (its name and that attention): a choice no
    # measurement makes (a reviewer: 0.035 against 0.042, and the other way round in sparse
    # mode); None otherwise, and in files written before ties were said
    tie_name: str | None = None
    tie_attention: Share | None = None
    # how many head groups raise that side (the candidates, by ``value``; the ``tested`` are
    # the first of them, more tested while the last tested lowers the attention most, up to
    # ``circuits.mechanisms.MAX_CANDIDATES``); None in files written before it was kept
    raisers: Annotated[int, Bounds(0, None)] | None = None
    # how many of the ``tested`` are the other head groups at the side's own position (tested
    # after the raisers, so ranked after them: those that do not raise it, ``value`` <= 0, and
    # raisers there beyond the rounds' tested, since 2026-12-06), None in files written before
    # they were tested
    at_position: Annotated[int, Bounds(0, None)] | None = None

    @property
    def raisers_tested(self) -> int:
        """How many of the ``tested`` raise the side (ranked first, by ``value``)."""
        return self.tested - (self.at_position or 0)


TIE = 0.01  # side-alone attentions this close after two groups' ablations: neither is chosen by it


@dataclass
class AttentionCheck:
    """A head group's attention after the checked group is ablated, in the free rerun of its
    checks (``EffectCheck.free``): ``group`` (the head group read, a key of this summary: a
    target's predicting group) from its ``query`` to its ``key`` in block ``layer``, at each
    of its QK heads (``qk_heads``, with ``weights``: each one's share of the group's |flow|
    into the target it is weighed by, ``MechanismSummary.weighed_by``, summing to 1),
    ``before`` (clean) and ``free`` (after), one per QK head. ``mean_before`` /
    ``mean_free``: the weighted means, the group's attention as one number (one QK head alone
    understates it: a reviewer's induction group fell 0.93 -> 0.17 at its first QK head and
    0.82 -> 0.02 at two others)."""

    group: str
    layer: int
    query: int
    key: int
    qk_heads: list[int]
    weights: list[Share]
    before: list[Share]
    free: list[Share]
    # the attention with one side's vectors as after the ablation and the other's as clean
    # (``circuits.interventions.side_attention``), one per QK head: which side the ablation
    # acts through (empty in files written before it was measured)
    query_side: list[Share] = field(default_factory=list)
    key_side: list[Share] = field(default_factory=list)

    @property
    def mean_before(self) -> float:
        return weighted_mean(self.weights, self.before)

    @property
    def mean_free(self) -> float:
        return weighted_mean(self.weights, self.free)

    def mean_side(self, side: str) -> float | None:
        """The weighted mean attention with ``side``'s vectors alone as after the ablation
        (``query_side`` / ``key_side``); None where not measured."""
        alone = self.query_side if side == "query" else self.key_side
        return weighted_mean(self.weights, alone) if alone else None


def weighted_mean(weights: list[float], attention: list[float]) -> float:
    """A head group's attention as one number: its QK heads' ``attention`` weighted by
    ``weights`` (their shares of the group's |flow|, summing to 1)."""
    return sum(w * a for w, a in zip(weights, attention, strict=True))


@dataclass
class TokenShare:
    """A position's part of a flow into a target (``token``: the prompt's token there). In a
    target's ``tokens_by_position``: what the token embedding at ``pos`` carries, its exact
    flow through the frozen linear graph; in ``moved_by_position`` and a head group's
    ``carried``: what heads bring from the residual stream at key position ``pos``."""

    pos: int
    token: str
    flow: float


@dataclass
class MemberConcept:
    """One concept label that members of a group without a concept of its own carry
    (``GroupRecord.member_concepts``): ``share`` of the group's |flow| into the first target
    that the members carrying it bring (each member's own flow, ``circuits.flows``), how many
    members carry it and their label F1s' range (``circuits.concepts``: how well the label
    predicts each one's firing on the corpus). A label at chance or naming the kind of document
    is none (``circuits.dashboards.Dashboards.summary_concepts``)."""

    concept: str
    share: float
    members: int
    f1_low: float
    f1_high: float


@dataclass
class GroupRecord:
    """A group of the summary: ``key`` (``g0``, ``g1``, ... within this summary), ``name`` (for
    people), the structure its members share, its members (ids; ``in_pruned`` those the pruned
    graph keeps), ``flow`` per target node id, the tokens its members' writes raise most
    together (``circuits.attribution.group_promoted_tokens``), the QK reasons of its heads and
    its ablation checks. ``carried`` (head groups): per target node
    id, the key positions its flow comes from (``circuits.flows.key_flows``: the flow of its
    z-pattern, position by position; largest |flow| first, every key that brings any) and
    ``carried_own`` the heads' constant terms: the two sum to the group's flow. A head group
    is named by the key its heads read (``attends``: where each head's activation comes from
    most); ``carried`` says what it brings from each key into each target."""

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
    carried: dict[str, list[TokenShare]] = field(default_factory=dict)
    carried_own: dict[str, float] = field(default_factory=dict)
    writes_qk: list[QKSourceRole] = field(default_factory=list)
    attention_checks: list[AttentionCheck] = field(default_factory=list)
    # a head group reading one key: the share of its members' summed activation that their
    # terms at that key bring (``circuits.groups.Group.key_share``); None where not known
    # (hand-made groups of heads reading several keys, files written before it)
    key_share: float | None = None
    # a group without a concept of its own (``concept`` None): the concepts its members carry,
    # largest share of its |flow| into the first target first (``MEMBER_CONCEPTS`` of them),
    # and the share its members with no concept bring (None: not known, files before it)
    member_concepts: list[MemberConcept] = field(default_factory=list)
    no_concept_share: float | None = None
    # a feature group's flow into the first target split by the position of the token
    # embeddings it comes from (BOS, a constant, left out; largest |flow| first, ``READS`` of
    # them): what the group's flow reads, as ``carried`` says it of a head group
    reads: list[TokenShare] = field(default_factory=list)
    # each member's fields (``NodeRef``: kind, layer, stage, pos, index, the token there; a
    # head's key read and QK head), in ``members``' order, so that a reader of the file needs
    # no id parsed (a reviewer found a head group's head indices only in its member ids); empty
    # in files written before it
    member_nodes: list[NodeRef] = field(default_factory=list)

    def attention_of(self, key: str) -> AttentionCheck | None:
        """Its ablation's check of head group ``key``'s attention, if it has one."""
        return next((a for a in self.attention_checks if a.group == key), None)


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
    nodes, the position vectors, ``BOS`` at the first position, ``own`` the nodes' own terms);
    ``tokens_by_position`` the token part by the
    position of the token that carries it (largest |flow| first, summing to ``tokens``: which
    tokens of the prompt the target comes from); the runner-up token and the margin over it; the
    predicting head group (a group key) and the ``HEAD_GROUPS`` head groups at the target's
    position ranked as it was chosen (positive flows first, largest first). ``heads_flow``:
    the flow of every Lorsa head at the target's position as one group (the target itself
    left out): what zeroing them all takes away, a path through two of them counted once
    (summed head by head it was counted twice until 2026-12-07); ``moved_by_position`` splits
    it by the key position each part comes from (largest
    |flow| first, every position that brings any), ``heads_own`` the heads' constant terms,
    so that the two sum to ``heads_flow`` (``circuits.flows.key_flows``): which places the
    attention at this position brings the prediction from, whichever group holds the heads.
    A head target reads its inputs at its key, not its query: ``reads`` is that key, the
    position whose head groups (and moved flows) these are, and ``qk`` its own QK reasons there
    (why it attends that key); None and empty for logits and features."""

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
    tokens_by_position: list[TokenShare] = field(default_factory=list)
    kind: str = "logit"  # or the kind of a head or feature target ("lorsa", "transcoder")
    heads_flow: float = 0.0
    heads_own: float = 0.0
    moved_by_position: list[TokenShare] = field(default_factory=list)
    reads: int | None = None
    qk: list[QKReasonRecord] = field(default_factory=list)
    # In sparse mode ``probability`` is the replacement's: the model's own beside it
    # (``LogitRecord.model_probability``; None in local mode, and in files before it).
    model_probability: float | None = None
    # A difference's most likely other token (``runner_up``) is its own negative: its margin
    # is the target itself (False in files before it, and for every other target).
    runner_up_is_negative: bool = False
    # A head target's own attention from its query to the key it reads (``reads``), clean and
    # in the free rerun of each checked group's ablation (by group key): the heads at its key
    # can act through this attention rather than through their value flow (absent from files
    # before it, and for other targets).
    own_attention: Share | None = None
    own_attention_free: dict[str, Share] = field(default_factory=dict)
    # ... and through each side alone (query, key: ``circuits.interventions.side_attention``),
    # by the same group keys: whether a group acts on the head's query or on its key (absent
    # from files before it was measured)
    own_attention_sides: dict[str, list[Share]] = field(default_factory=dict)
    # A logit difference's negative token's probability (``probability`` is its first
    # token's); None for other targets and in files written before it. In sparse mode the
    # replacement's, and the model's own beside it, as ``model_probability`` is.
    negative_probability: Share | None = None
    model_negative_probability: Share | None = None

    @property
    def direction(self) -> float:
        """The sign of the target's value (``direction_of``): a flow this way is what makes it
        what it is, so "predicting" and "largest part" are read in it."""
        return direction_of(self.value)

    # A head target's QK score read as a head group's is (its block, query, the key it reads,
    # its QK head): the QK sources' records name either (``QKSourceRole.group``). These are
    # its QK reason's, so None (empty) for a target without one: a logit, a feature.
    @property
    def layer(self) -> int | None:
        return self.qk[0].layer if self.qk else None

    @property
    def pos(self) -> int | None:
        return self.qk[0].query if self.qk else None

    @property
    def attends(self) -> int | None:
        return self.reads if self.qk else None

    @property
    def qk_heads(self) -> list[int]:
        return [r.qk_head for r in self.qk]

    @property
    def label(self) -> str:
        """How the target is named to a reader: ``' Friday'``, ``' Friday' - ' May'``, or a
        head's or feature's name (``token`` holds it; its value is its pre-activation)."""
        if self.kind != "logit":
            return self.token
        return repr(self.token) + (f" - {self.negative!r}" if self.negative else "")

    def current_token_share(self, pos: int) -> TokenShare | None:
        """The share of the token at the target's own position ``pos`` when it carries the
        largest part of the token flow by magnitude, in the target's ``direction``, and the
        tokens' sum goes that way too (a joiner-less list's item is the query token itself,
        which no head moves there); else None."""
        top = self.tokens_by_position[0] if self.tokens_by_position else None
        way = self.direction
        if top is None or top.pos != pos or top.flow * way <= 0 or self.tokens * way <= 0:
            return None
        return top


def direction_of(value: float) -> float:
    """+1 for a target whose value is positive or zero, -1 for a negative one (a difference
    whose first token is the less likely, a logit below the mean): the way its movers
    push. Ranking by positive flow alone named, for a negative difference, a group pushing
    against it as its predictor (a review: +0.235 beside a -15.7 that made it)."""
    return 1.0 if value >= 0 else -1.0


@dataclass
class MechanismSummary:
    """The summary of one prompt's graph (``circuits.mechanisms``)."""

    prompt: str
    tokens: list[str]
    mode: str
    model: str
    targets: list[TargetRecord]
    groups: list[GroupRecord]
    paths: list[PathRecord]
    settings: dict
    # the prompt's positions whose tokens never came up in training, and the logit targets'
    # tokens that did not (``Graph.untrained_positions`` / ``untrained_targets``, as text):
    # no learned mechanism is there to read (a reviewer's script reading mechanisms.json never
    # learned of three such positions; empty in files written before them)
    untrained_positions: list[int] = field(default_factory=list)
    untrained_targets: list[str] = field(default_factory=list)
    # In sparse mode the model's own most likely next token and its probability
    # (``Graph.model_top``): the summary explains the replacement's prediction, and a reader of
    # this file alone learned nothing of the model putting another token first (a review);
    # None in local mode and in files written before it.
    model_top: str | None = None
    model_top_probability: Annotated[float, Bounds(1e-12, 1.0)] | None = None

    def untrained_note(self) -> str | None:
        """The reader's line on untrained tokens (``circuits.graph.untrained_words``)."""
        return untrained_words(self.tokens, self.untrained_positions, self.untrained_targets)

    def group(self, key: str) -> GroupRecord:
        return next(g for g in self.groups if g.key == key)

    def weighed_by(self, key: str) -> TargetRecord | None:
        """The target by whose |flow| head group ``key``'s QK heads are weighed (its
        ``AttentionCheck.weights``) and its QK reasons chosen: the first target it predicts,
        else the first target (None: no target). In files before 2026-12-07 always the
        first."""
        return next((t for t in self.targets if t.predicting_group == key),
                    self.targets[0] if self.targets else None)  # fmt: skip

    def qk_sources(self, key: str) -> list[tuple[GroupRecord, QKSourceRole]]:
        """The groups that write head group ``key``'s QK score (``GroupRecord.writes_qk``),
        each with its role there, in the summary's order."""
        return [(g, w) for g in self.groups for w in g.writes_qk if w.group == key]

    def qk_subject(self, key: str) -> GroupRecord | TargetRecord | None:
        """Whose QK score a ``QKSourceRole`` splits: a head group of the summary (its key), or
        a head target with its QK reason (its node); None for anything else."""
        head = next((g for g in self.groups if g.key == key), None)
        if head is None:
            head = next((t for t in self.targets if t.node == key and t.kind == "lorsa"
                         and t.qk), None)  # fmt: skip
        return head

    def attention_after(self, g: GroupRecord, key: str) -> AttentionCheck | None:
        """Group ``g``'s ablation's check of the attention of ``key`` (``qk_subject``): a head
        group's from ``g.attention_checks``; a head target's from its own attention, clean and
        after ``g`` (``TargetRecord.own_attention_free`` / ``own_attention_sides``), read as
        one; None where not measured."""
        if (found := g.attention_of(key)) is not None:
            return found
        t = next((t for t in self.targets if t.node == key), None)
        if t is None or not t.qk or t.own_attention is None or g.key not in t.own_attention_free:
            return None
        sides = t.own_attention_sides.get(g.key)
        return AttentionCheck(
            t.node, t.layer, t.pos, t.reads, t.qk_heads, [1.0], [t.own_attention],
            [t.own_attention_free[g.key]], [] if sides is None else [sides[0]],
            [] if sides is None else [sides[1]],
        )  # fmt: skip

    @property
    def tolerance(self) -> float:
        """The tolerance its checks were made with (``settings["tolerance"]``, checked when a
        file is read): a prediction and a measurement both below it agree whatever their
        signs. ``TOLERANCE`` for a summary without it."""
        return float(self.settings.get("tolerance", TOLERANCE))

    def to_dict(self) -> dict:
        return {"version": VERSION, **to_plain(self)}

    @classmethod
    def from_dict(cls, d: dict) -> MechanismSummary:
        try:
            if not isinstance(d, dict):
                raise ValueError(f"expected a JSON object, got {type(d).__name__}")
            if d.get("version") != VERSION:
                raise ValueError(f"version {d.get('version')!r}, expected {VERSION}: re-run the "
                                 "trace to rewrite it")  # fmt: skip
            return _summary_from_dict(d)
        except ValueError as exc:
            raise ValueError(f"not a mechanism summary ({exc})") from None


def _summary_from_dict(d: dict) -> MechanismSummary:
    """Every field typed (``toy_models.records.from_json``), then the references and sums
    that tie the records together: group keys unique and every key a target, a path or a
    check names defined, and a flow into the target in each head group a target names; each
    target's parts closing to its value (its tokens by position to its tokens, each at a
    position holding that token) and each QK reason's to its score (``CLOSURE`` of the larger
    magnitude; a QK reason's pairs plus ``rest`` to its ``specific``); attentions and
    probabilities in [0, 1], a runner-up's given; the mode one of ``MODES``; the settings typed
    and in range."""
    summary = from_json(MechanismSummary, {k: v for k, v in d.items() if k != "version"}, "summary")
    _expect(summary.mode in MODES, f"mode: {summary.mode!r}, not one of {list(MODES)}")
    positions = summary.untrained_positions
    _expect(all(0 <= p < len(summary.tokens) for p in positions)
            and positions == sorted(set(positions)),
            "untrained_positions: not distinct prompt positions in increasing order")  # fmt: skip
    said = {x for t in summary.targets if t.kind == "logit" for x in (t.token, t.negative)}
    _expect(set(summary.untrained_targets) <= said,
            "untrained_targets: not tokens of the logit targets")  # fmt: skip
    _expect((summary.model_top is None) == (summary.model_top_probability is None)
            and (summary.model_top is None or (summary.mode == "sparse" and summary.model_top)),
            "model_top: the model's own top token (a text) and its probability, both or "
            "neither, in sparse mode only")  # fmt: skip
    # the most likely: no target's token more, its own the same (tokens by text: a summary
    # holds no ids; the default tokenizer's 1024 texts are distinct)
    if summary.model_top is not None:
        said = [(t.token, t.model_probability) for t in summary.targets]
        said += [(t.negative, t.model_negative_probability) for t in summary.targets]
        _expect(top_contradiction(summary.model_top, summary.model_top_probability, said) is None,
                "model_top: a target's token more likely in the model than its top token, or "
                "its own given another probability")  # fmt: skip
    tolerance = summary.settings.get("tolerance", TOLERANCE)
    _expect(is_finite_number(tolerance) and tolerance >= 0,
            f"settings.tolerance: {tolerance!r:.40}, not a finite number >= 0")  # fmt: skip
    # head groups ablated per side (printed), and the search's counts (``summarize`` refuses
    # any but a whole number >= 1); each absent from files before it
    for name in ("qk_sources", "qk_sources_most", "beam", "max_paths", "max_groups"):
        count = summary.settings.get(name, 1)
        _expect(type(count) is int and count >= 1,
                f"settings.{name}: {count!r:.40}, not a whole number >= 1")  # fmt: skip
    # ``RATIO``: a check is flagged beyond this factor either way (1/ratio..ratio), so >= 1
    ratio = summary.settings.get("ratio", 1.0)
    _expect(is_finite_number(ratio) and ratio >= 1,
            f"settings.ratio: {ratio!r:.40}, not a finite number >= 1")  # fmt: skip
    # printed, each (a string is no "no")
    for name in (
        "checks",
        "constants",
        "qk_sources_at_position",
        "qk_sources_every_placed",
        "qk_sources_head_targets",
    ):
        flag = summary.settings.get(name, False)
        _expect(type(flag) is bool, f"settings.{name}: {flag!r:.40}, not true or false")
    # the groups at a side's position were tested only with the rounds' bound, which the
    # words print (a file with one and not the other printed "up to the None raising it")
    _expect(not summary.settings.get("qk_sources_at_position")
            or "qk_sources_most" in summary.settings,
            "settings.qk_sources_at_position without qk_sources_most")  # fmt: skip
    # how much a QK source's ablation lowers the attention through its side at least (absent
    # from files before it was kept: then only not raising it)
    lowered = summary.settings.get("qk_sources_lowered", 0.0)
    _expect(is_finite_number(lowered) and 0 <= lowered <= 1,
            f"settings.qk_sources_lowered: {lowered!r:.40}, not a number in [0, 1]")  # fmt: skip
    # the F1 from which a member's label counts toward a group's members' concepts (absent
    # from files before them: 0)
    member_min_f1 = summary.settings.get("member_min_f1", 0.0)
    _expect(is_finite_number(member_min_f1) and 0 <= member_min_f1 <= 1,
            f"settings.member_min_f1: {member_min_f1!r:.40}, not a number in [0, 1]")  # fmt: skip
    grouping = summary.settings.get("grouping", "")  # the rules' text, or "given"
    _expect(isinstance(grouping, str), f"settings.grouping: {grouping!r:.40}, not a string")
    _check_main_inputs(summary)
    keys = [g.key for g in summary.groups]
    _expect(len(set(keys)) == len(keys), "groups: two groups share a key")
    targets = {t.node for t in summary.targets}
    by_key = {g.key: g for g in summary.groups}
    checked = {g.key for g in summary.groups if g.checks}  # a head target's own attention's
    for i, t in enumerate(summary.targets):
        where = f"targets[{i}]"
        named = [t.predicting_group] if t.predicting_group is not None else []
        _expect(set(named + t.head_groups) <= set(keys), f"{where}: names a group not defined")
        _expect(t.runner_up is None or t.runner_up_probability is not None,
                f"{where}: a runner-up without its probability")  # fmt: skip
        _expect((t.own_attention is None or (t.kind == "lorsa" and t.reads is not None))
                and set(t.own_attention_free) <= checked
                and (not t.own_attention_free or t.own_attention is not None)
                and set(t.own_attention_sides) in (set(), set(t.own_attention_free))
                and all(len(x) == 2 for x in t.own_attention_sides.values()),
                f"{where}: a head target's own attention, clean and after checked groups "
                "only (through each side alone, two values, after the same groups)")  # fmt: skip
        _expect(not t.runner_up_is_negative or (
            t.negative is not None and t.runner_up == t.negative and t.margin is not None
            and math.isclose(t.margin, t.value, rel_tol=CLOSURE, abs_tol=CLOSURE)),
            f"{where}: a runner-up said to be the difference's negative that is not")  # fmt: skip
        _expect(t.negative_probability is None or (t.kind == "logit" and t.negative is not None),
                f"{where}: a negative token's probability for a target not a logit "
                "difference")  # fmt: skip
        _expect(t.model_negative_probability is None or (
            summary.mode == "sparse" and t.negative_probability is not None
            and t.model_probability is not None),
            f"{where}.model_negative_probability: the model's beside none of the graph's own "
            "or without the model's of the positive token, or outside sparse mode")  # fmt: skip
        _expect(softmax_pair(t.probability, t.negative_probability)
                and softmax_pair(t.model_probability, t.model_negative_probability),
                f"{where}: a difference's two probabilities sum above 1")  # fmt: skip
        _closes(t.tokens + t.errors + t.constants, t.value, f"{where}: tokens + errors + constants")
        if t.tokens_by_position:
            shares = t.tokens_by_position
            _closes(sum(x.flow for x in shares), t.tokens, f"{where}.tokens_by_position")
            _at_tokens(shares, summary.tokens, f"{where}.tokens_by_position")
        moved = t.moved_by_position
        _closes(sum(x.flow for x in moved) + t.heads_own, t.heads_flow, f"{where}: heads' flow")
        _at_tokens(moved, summary.tokens, f"{where}.moved_by_position")
        for p in (t.probability, t.runner_up_probability, t.model_probability):
            _expect(p is None or 0 <= p <= 1, f"{where}: a probability outside [0, 1]")
        _expect(t.model_probability is None or (summary.mode == "sparse" and t.kind == "logit"),
                f"{where}.model_probability: the model's beside the graph's own outside a "
                "sparse graph's logit")  # fmt: skip
        _expect(t.kind == "lorsa" or t.reads is None, f"{where}.reads: a key for a target "
                "not a head")  # fmt: skip
        _expect(t.reads is None or 0 <= t.reads < len(summary.tokens),
                f"{where}.reads: position {t.reads} outside the prompt")  # fmt: skip
        _expect(not t.qk or t.reads is not None, f"{where}.qk: QK reasons without a key read")
        _expect(len(t.qk) <= 1, f"{where}.qk: {len(t.qk)} reasons; a head target has one, its "
                "own QK head's")  # fmt: skip
        for j, r in enumerate(t.qk):
            _expect(r.key == t.reads, f"{where}.qk[{j}]: at key {r.key}, not the key read")
        if t.reads is not None:  # its groups are those at the key it reads
            _expect(all(by_key[g].pos == t.reads for g in named + t.head_groups if g in by_key),
                    f"{where}: names a group not at the key it reads")  # fmt: skip
        _check_reasons(t.qk, where, summary.tokens)
    logits = {t.node for t in summary.targets if t.kind == "logit"}
    summary_target = {t.node: t for t in summary.targets}
    for i, g in enumerate(summary.groups):
        where = f"groups[{i}]"
        _expect(bool(g.members) and set(g.in_pruned) <= set(g.members), f"{where}: members")
        _check_place(g, len(summary.tokens), where)
        _check_key_token(g, summary.tokens, where)  # (its key in the prompt: checked above)
        _expect(all(h >= 0 for h in g.qk_heads) and len(set(g.qk_heads)) == len(g.qk_heads)
                and (g.kind in ("lorsa", "mixed") or not g.qk_heads),
                f"{where}.qk_heads: a head group's QK heads, each once")  # fmt: skip
        # a group's QK reasons are of its own QK heads, at its query and the key it reads
        # (a fuzz pass loaded a reason of layer 10**9 and printed it)
        _expect(all((r.layer, r.query, r.key) == (g.layer, g.pos, g.attends)
                    and r.qk_head in g.qk_heads for r in g.qk),
                f"{where}.qk: a reason not of the group's QK heads at its query and "
                "key")  # fmt: skip
        _expect(set(g.flow) <= targets, f"{where}.flow: a flow into a node that is no target")
        _expect({c.target for c in g.checks} <= targets, f"{where}.checks: an unknown target")
        for j, c in enumerate(g.checks):
            after = (c.probability_frozen, c.probability_free)
            _expect(all(p is None or 0 <= p <= 1 for p in after),
                    f"{where}.checks[{j}]: a probability outside [0, 1]")  # fmt: skip
            _expect(c.target in logits or after == (None, None),
                    f"{where}.checks[{j}]: a probability for a target not a logit")  # fmt: skip
            negative = (c.negative_probability_frozen, c.negative_probability_free)
            _expect(negative == (None, None) or (
                None not in negative and summary_target[c.target].negative_probability
                is not None), f"{where}.checks[{j}]: a negative token's probability for one "
                "rerun only, or for a target without one (not a logit difference)")  # fmt: skip
            _expect((c.margin_frozen is None) == (c.margin_free is None)
                    and (c.target in logits or c.margin_free is None),
                    f"{where}.checks[{j}]: a margin for one rerun only, or for a target not "
                    "a logit")  # fmt: skip
            _expect(all((top is None) == (p is None) and (top is None or c.target in logits)
                        for top, p in ((c.top_frozen, c.top_frozen_probability),
                                       (c.top_free, c.top_free_probability))),
                    f"{where}.checks[{j}]: a most likely token after a rerun without its "
                    "probability or the reverse, or for a target not a logit")  # fmt: skip
            # the most likely: at least as likely as the target's token after the same rerun
            # (a review's forgery loaded)
            _expect(all(top is None or after is None or p >= after - CLOSURE
                        for top, p, after in (
                            (c.top_frozen, c.top_frozen_probability, c.probability_frozen),
                            (c.top_free, c.top_free_probability, c.probability_free))),
                    f"{where}.checks[{j}]: a most likely token after a rerun less likely than "
                    "the target's token")  # fmt: skip
            for name in ("free_ln_held", "free_final_ln_held", "free_attention_held"):
                _expect((getattr(c, name) is None) == (getattr(c, f"agree_{name}") is None),
                        f"{where}.checks[{j}]: {name} without its agreement, or the "
                        "reverse")  # fmt: skip
            _check_effect(c, summary.tolerance, summary.settings.get("ratio"),
                          f"{where}.checks[{j}]")  # fmt: skip
        for j, w in enumerate(g.writes_qk):
            head = summary.qk_subject(w.group)
            _expect(head is not None and head.kind == "lorsa" and w.side in SIDES
                    and w.qk_head in head.qk_heads and _below(g, head),
                    f"{where}.writes_qk[{j}]: not a side ({'/'.join(SIDES)}) of a QK head of a "
                    "head group of the summary, or of a head target, in a later "
                    "block")  # fmt: skip
            placed, raising = w.at_position or 0, w.raisers_tested
            _expect(w.rank <= w.tested and 0 <= raising <= (
                w.tested if w.raisers is None else w.raisers),
                f"{where}.writes_qk[{j}]: ranked beyond those tested, or more tested than "
                "raise the side or sit at its position")  # fmt: skip
            _expect(w.at_position is None or w.rank > raising or w.value > 0,
                    f"{where}.writes_qk[{j}]: ranked among the raisers tested without raising "
                    "the side")  # fmt: skip
            # without checks no ablation chose it: the largest raiser, alone
            _expect(
                summary.settings.get("checks", True) or (w.tested == 1 and not placed),
                f"{where}.writes_qk[{j}]: groups tested in a summary without checks",
            )
            _expect(
                raising <= summary.settings.get("qk_sources_most", raising),
                f"{where}.writes_qk[{j}]: more raisers tested than the settings' bound",
            )
            _expect((w.tie_name is None) == (w.tie_attention is None) and (
                w.tie_name is None or w.tested > 1), f"{where}.writes_qk[{j}]: a tie without "
                "its attention or the reverse, or with one group tested")  # fmt: skip
        for j, a in enumerate(g.attention_checks):
            head = by_key.get(a.group)
            n = len(a.qk_heads)
            _expect(bool(g.checks) and head is not None and head.kind == "lorsa"
                    and _below(g, head) and n > 0 and len(set(a.qk_heads)) == n
                    and set(a.qk_heads) <= set(head.qk_heads)
                    and len(a.weights) == len(a.before) == len(a.free) == n
                    and len(a.query_side) in (0, n) and len(a.key_side) == len(a.query_side)
                    and abs(sum(a.weights) - 1) <= CLOSURE
                    and (a.layer, a.query, a.key) == (head.layer, head.pos, head.attends),
                    f"{where}.attention_checks[{j}]: not the attention of a head group in a "
                    "later block at its query and key (its QK heads once each, one weight, "
                    "before and after each, each side's alone for all or none, the weights "
                    "summing to 1), after a checked "
                    "ablation")  # fmt: skip
        for j, w in enumerate(g.writes_qk):  # (its attention checks' shapes checked above)
            # a head group, whose ablation (where measured) lowers the attention through its
            # side (a forged 0.99 after 0.5 loaded: a review)
            a = summary.attention_after(g, w.group)
            alone = None if a is None else a.mean_side(w.side)
            _expect(g.kind == "lorsa" and (alone is None or alone <= a.mean_before - lowered
                                           + CLOSURE),
                    f"{where}.writes_qk[{j}]: a QK source not a head group, or whose ablation "
                    f"does not lower the attention through its side by {lowered}")  # fmt: skip
            if w.tie_attention is not None:  # as low as this group's, within TIE: a review
                # loaded a tie of 0.95 said to be "within 0.01" of 0.04
                _expect(alone is not None and alone - CLOSURE <= w.tie_attention
                        <= alone + TIE + CLOSURE and w.tie_attention < a.mean_before,
                        f"{where}.writes_qk[{j}]: a tie not within {TIE} above this group's "
                        "own attention through the side, or not below the attention "
                        "before")  # fmt: skip
        _expect(g.key_share is None or (g.kind == "lorsa" and g.attends is not None
                                        and is_finite_number(g.key_share) and g.key_share > 0),
                f"{where}.key_share: not a finite number > 0 of a head group reading one "
                "key")  # fmt: skip
        shares = [c.share for c in g.member_concepts]
        _expect(not g.member_concepts or (
            g.concept is None and g.no_concept_share is not None
            and len({c.concept for c in g.member_concepts}) == len(shares)
            and all(is_finite_number(x) and 0 <= x <= 1 for x in shares)
            and shares == sorted(shares, reverse=True)
            and all(c.concept and 1 <= c.members <= len(g.members) for c in g.member_concepts)
            and all(is_finite_number(c.f1_low) and is_finite_number(c.f1_high)
                    and member_min_f1 <= c.f1_low <= c.f1_high <= 1
                    for c in g.member_concepts)),
            f"{where}.member_concepts: not distinct concepts of a group without one, largest "
            "share first, each share in [0, 1], 1..its members, F1s low <= high in "
            "[settings.member_min_f1, 1], "
            "with no_concept_share")  # fmt: skip
        _expect(g.no_concept_share is None or (
            is_finite_number(g.no_concept_share) and 0 <= g.no_concept_share <= 1
            and sum(shares) + g.no_concept_share <= 1 + CLOSURE),
            f"{where}.no_concept_share: not a share in [0, 1] that, with member_concepts', "
            "sums to 1 at most")  # fmt: skip
        _expect(not g.reads or g.kind == "transcoder",
                f"{where}.reads: of a group not of features")  # fmt: skip
        _at_tokens(g.reads, summary.tokens, f"{where}.reads")
        _expect(set(g.carried) <= targets, f"{where}.carried: from a node that is no target")
        _expect(set(g.carried) == set(g.carried_own), f"{where}: carried and carried_own "
                "name other targets")  # fmt: skip
        for node, shares in g.carried.items():
            _at_tokens(shares, summary.tokens, f"{where}.carried")
            _closes(sum(x.flow for x in shares) + g.carried_own[node],
                    g.flow.get(node, float("nan")), f"{where}: flow carried")  # fmt: skip
        _check_reasons(g.qk, where, summary.tokens)
    # one source a side of a QK score (a duplicate role loaded: a review)
    roles = [(w.group, w.side) for g in summary.groups for w in g.writes_qk]
    _expect(len(set(roles)) == len(roles), "writes_qk: two QK sources of one side of one score")
    # a mover's key names the summary's group of its fields (a forged key drew another box)
    listed = {g.key: g for g in summary.groups}
    movers = [m for x in (*summary.groups, *summary.targets) for r in x.qk for y in r.moved_by
              for m in y.movers if m.key is not None]  # fmt: skip
    _expect(all(m.key in listed and (listed[m.key].name, listed[m.key].pos, listed[m.key].layer)
                == (m.group.name, m.group.pos, m.group.layer) for m in movers),
            "moved_by: a mover's key names no group of the summary, or one of other "
            "fields")  # fmt: skip
    flows = {g.key: g.flow for g in summary.groups}
    for i, t in enumerate(summary.targets):  # the groups it names (defined: checked above)
        named = [t.predicting_group] if t.predicting_group is not None else []
        _expect(all(t.node in flows[k] for k in named + t.head_groups),
                f"targets[{i}]: a head group it names has no flow into it")  # fmt: skip
    groups = {g.key: g for g in summary.groups}
    for i, p in enumerate(summary.paths):
        where = f"paths[{i}]"
        _expect(p.target in targets and set(p.groups) <= set(keys), f"{where}: unknown names")
        _check_path(p, [groups[k] for k in p.groups], where)
    for i, g in enumerate(summary.groups):  # last: a forged group's own fields are named first
        _check_members(g, len(summary.tokens), f"groups[{i}]")
    return summary


def _check_path(p: PathRecord, groups: list[GroupRecord], where: str) -> None:
    """A path (``circuits.flows.top_paths``) as the graph makes one: one hop per group, from a
    token embedding group up through groups, none twice in a row, each in a later stage than
    the one before and not at an earlier position (a head's value comes from a key at or
    before its query), and a path of the root alone bringing its hop into the target (its flow
    is that summed edge). A hand-made group spanning stages or positions is not ordered, and
    may come again after another group."""
    _expect(len(p.hops) == len(p.groups), f"{where}: one hop per group")
    _expect(bool(groups) and groups[0].kind == Kind.EMBEDDING.label,
            f"{where}: does not start at a token embedding group")  # fmt: skip
    # a group twice in a row is one hop inside it; apart, a group spanning stages met again
    _expect(all(a != b for a, b in itertools.pairwise(p.groups)), f"{where}: a group twice in a "
            "row")  # fmt: skip
    for a, b in itertools.pairwise(groups):
        low, high = _stage(a), _stage(b)
        _expect(low is None or high is None or low < high,
                f"{where}: {b.key} is not above {a.key}")  # fmt: skip
        _expect(a.pos is None or b.pos is None or a.pos <= b.pos,
                f"{where}: {b.key} is at a position before {a.key}'s")  # fmt: skip
    if len(p.groups) == 1:
        _closes(p.hops[0], p.flow, f"{where}: the flow of a path of one group (its hop)")


def _stage(g: GroupRecord) -> int | None:
    """The stage of a group of one kind in one stage (tokens, heads, features), None for
    others (errors and constants exist at both sublayers; a mixed group spans stages)."""
    if g.kind == Kind.EMBEDDING.label:
        return EMBEDDING_STAGE
    if g.kind in (Kind.LORSA.label, Kind.TRANSCODER.label) and g.layer is not None:
        return stage_of(Kind.parse(g.kind), g.layer)
    return None


def _check_key_token(g: GroupRecord, tokens: list[str], where: str) -> None:
    """A group's ``attends_token`` is the token at the key it reads, none where it reads none
    (``summarize`` writes it so; the viewer prints it beside the key)."""
    key_token = None if g.attends is None else tokens[g.attends]
    _expect(g.attends_token == key_token, f"{where}.attends_token: {g.attends_token!r:.40}, not "
            f"the token at the key read, {key_token!r:.40}")  # fmt: skip


def _below(g: GroupRecord, head: GroupRecord | TargetRecord) -> bool:
    """Whether group ``g`` sits in a block before head group (or head target) ``head``'s, whose
    QK score it can write, and not after its query."""
    return (g.layer is not None and head.layer is not None and g.layer < head.layer
            and (g.pos is None or head.pos is None or g.pos <= head.pos))  # fmt: skip


def _check_reasons(reasons: list[QKReasonRecord], where: str, tokens: list[str]) -> None:
    """Each QK reason's parts close to its score, its attention in [0, 1], its token parts
    to its roots' tokens, its token checks each at a prompt position once, holding its token."""
    for j, r in enumerate(reasons):
        _expect(r.layer >= 0 and r.qk_head >= 0 and 0 <= r.key <= r.query < len(tokens),
                f"{where}.qk[{j}]: layer, QK head, query and key: a block, a head, a key up "
                "to its query in the prompt")  # fmt: skip
        shares = [(f"{side}_sources.{c}", x) for side, d in (("query", r.query_sources),
                  ("key", r.key_sources)) for c, xs in d.items() for x in xs]  # fmt: skip
        shares += [(f"{name}.{side}", getattr(p, side))
                   for name in ("root_pairs", "own_pairs", "moved_pairs", "position_pairs")
                   for p in getattr(r, name) for side in ("query", "key")]  # fmt: skip
        shares += [(f"moved_by[{i}].movers", m.group) for i, x in enumerate(r.moved_by)
                   for m in x.movers]  # fmt: skip
        for name, x in shares:
            _check_place(x, len(tokens), f"{where}.qk[{j}].{name}")
        at = [c.pos for c in r.token_checks]
        held = all(0 <= c.pos < len(tokens) and tokens[c.pos] == c.token for c in r.token_checks)
        _expect(
            len(set(at)) == len(at) and held,
            f"{where}.qk[{j}].token_checks: each a prompt position once, with its token",
        )
        # a moved token comes from another position up to the key, through heads at the key
        moved = [x.pos for x in r.moved_by]
        _expect(len(set(moved)) == len(moved)
                and all(0 <= x.pos < r.key and tokens[x.pos] == x.token
                        and is_finite_number(x.total) for x in r.moved_by)
                and all(m.group.kind in ("lorsa", "mixed") and m.group.pos in (r.key, None)
                        and (m.group.layer is None or m.group.layer < r.layer)
                        for x in r.moved_by for m in x.movers),
                f"{where}.qk[{j}].moved_by: each a position before the key once, with its "
                "token, moved by head groups at the key below the head (a hand-made group "
                "holding such heads may span places)")  # fmt: skip
        _expect(
            all((c.rival is None) == (c.rival_attention is None) == (c.rival_before is None)
                and (c.rival is None or (0 <= c.rival <= r.query and c.rival != r.key
                                         and c.rival_attention > c.rival_before))
                for c in r.token_checks),
            f"{where}.qk[{j}].token_checks: a rival is another key up to the query whose "
            "attention rose, with its attention before and after, or none",
        )  # fmt: skip
        _closes(r.always_on + r.specific, r.score, f"{where}.qk[{j}]: always-on + specific")
        # ``QKReason.rest``: the specific part less its listed pairs (``qk.qk_attribution``)
        _closes(math.fsum([p.value for p in r.pairs] + [r.rest]), r.specific,
                f"{where}.qk[{j}]: pairs + rest")  # fmt: skip
        # each side's own total: specific = query_at - mean query . dv = key_at - du . mean key
        # (a forged query_at of 1e300 loaded and was printed as the side's total: a fuzz pass)
        for side, at, mean in (("query_at", r.query_at, r.mean_query_vs_key),
                               ("key_at", r.key_at, r.query_vs_mean_key)):  # fmt: skip
            if at is not None:
                _closes(r.specific + mean, at, f"{where}.qk[{j}].{side}: specific + its mean part")
        _expect(0 <= r.attention <= 1, f"{where}.qk[{j}].attention: outside [0, 1]")
        if r.root_parts:
            _expect(
                set(r.root_parts) <= set(ROOT_PARTS),
                f"{where}.qk[{j}].root_parts: parts other than {list(ROOT_PARTS)}",
            )
            _closes(sum(r.root_parts.values()), r.specific, f"{where}.qk[{j}].root_parts")
        _expect(all(p.query.is_position or p.key.is_position for p in r.position_pairs),
                f"{where}.qk[{j}].position_pairs: a term without a position vector")  # fmt: skip
        if r.token_parts:
            what = f"{where}.qk[{j}].token_parts"
            _expect(set(r.token_parts) == {"key_own", "moved", "means"}
                    and "tokens" in r.root_parts,
                    f"{what}: key_own, moved and means, beside root_parts' tokens")  # fmt: skip
            _closes(sum(r.token_parts.values()), r.root_parts["tokens"], what)


def _check_main_inputs(summary: MechanismSummary) -> None:
    """Every QK pair side (``NodeRef``) checked (``_check_ref``) and its ``main_input`` null or
    a ``MainInput``: typed with exactly its keys, a known kind, inside the prompt at or before
    its node, a key read only by a head and at or before the head. Each is replaced by the
    checked record's fields (a float share for an integer one), so what the readers index is
    there and typed."""
    records = [(f"targets[{i}]", t.qk) for i, t in enumerate(summary.targets)]
    records += [(f"groups[{i}]", g.qk) for i, g in enumerate(summary.groups)]
    # a head a group of the summary holds has one of the group's QK heads (both are its index
    # // the group size: ``circuits.groups.group``, ``Graph.qk_head``)
    held: dict[str, list[list[int]]] = {}
    for g in summary.groups:
        for m in g.members if g.kind in ("lorsa", "mixed") else []:
            held.setdefault(m, []).append(g.qk_heads)
    for where, reasons in records:
        for j, r in enumerate(reasons):
            for k, pair in enumerate(r.pairs):
                for side, ref in (("query", pair.query), ("key", pair.key)):
                    at = f"{where}.qk[{j}].pairs[{k}].{side}"
                    _check_ref(ref, len(summary.tokens), at)
                    groups = held.get(ref.id, []) if ref.present and ref.kind == "lorsa" else []
                    _expect(all(ref.qk_head in heads for heads in groups),
                            f"{at}.qk_head: {ref.qk_head}, not a QK head of its group")  # fmt: skip
                    if ref.main_input is not None:
                        ref.main_input = _main_input(ref, len(summary.tokens), f"{at}.main_input")


def _check_place(x, n_pos: int, at: str) -> None:
    """A group's or a source's place (``GroupRecord``, ``SourceShare``): its position inside the
    prompt or none, the key it reads up to that position or none, its block -1 (embeddings and
    the position vectors) or above, or none (a fuzz pass loaded and rendered positions of
    +-2**63)."""
    _expect(x.pos is None or 0 <= x.pos < n_pos, f"{at}.pos: {x.pos} is outside the prompt")
    _expect(x.attends is None or (x.pos is not None and 0 <= x.attends <= x.pos),
            f"{at}.attends: {x.attends} is not a key up to its position")  # fmt: skip
    _expect(x.layer is None or x.layer >= -1, f"{at}.layer: {x.layer} is below -1")
    _expect(x.kind in GROUP_KINDS, f"{at}.kind: {x.kind!r}, not one of {list(GROUP_KINDS)}")


def _check_ref(ref: NodeRef, n_pos: int, at: str) -> None:
    """A QK pair side's fields agree, as the printers read them: the bias side (``qk bias``,
    no id); a unit absent at the position (``present`` false: no position, no key read); or a
    node of a known kind but a logit, at a stage of its kind, its block, inside the prompt."""
    if ref.kind == "qk bias":
        _expect(ref.id is None and ref.present, f"{at}: the bias side has no id")
        return
    _expect(ref.kind in KINDS or (ref.kind == "unit" and not ref.present),
            f"{at}.kind: {ref.kind!r}, not one of {list(KINDS)}")  # fmt: skip
    # a head's QK head is its index // the group size (``Graph.qk_head``), which the file does
    # not hold: 0 up to its index; other kinds have none
    _expect(ref.qk_head is None or (ref.kind == "lorsa" and ref.index is not None
                                    and 0 <= ref.qk_head <= ref.index),
            f"{at}.qk_head: {ref.qk_head}, not a head's QK head (0 up to its index)")  # fmt: skip
    if not ref.present:
        _expect(ref.pos is None and ref.attends is None,
                f"{at}: a unit absent here has no position and reads no key")  # fmt: skip
        return
    kind, stage = Kind.parse(ref.kind), ref.stage
    # a logit is no pair's side: no stage fits it without a model's depth
    at_stage = stage is not None and bool(kind_at_stage(kind, stage))
    _expect(at_stage and ref.layer == block_of(stage),
            f"{at}: stage {stage}, layer {ref.layer} for a {ref.kind} node")  # fmt: skip
    _expect(ref.pos is not None and 0 <= ref.pos < n_pos and ref.index is not None,
            f"{at}: a node needs an index and a position inside the prompt")  # fmt: skip
    indexed = kind in (Kind.EMBEDDING, Kind.LORSA, Kind.TRANSCODER)
    _expect(ref.index >= 0 if indexed else ref.index == -1,
            f"{at}.index: {ref.index} for a {ref.kind} node (a unit's index, -1 for the "
            "others)")  # fmt: skip
    _expect(ref.attends is None or (kind == Kind.LORSA and 0 <= ref.attends <= ref.pos),
            f"{at}.attends: {ref.attends} is not a key up to a head's position")  # fmt: skip


def _check_members(g: GroupRecord, n_pos: int, where: str) -> None:
    """A group's ``member_nodes`` (none in files before them): one per member, in order, each
    a node (``_check_ref``) whose id its fields make, of the group's kind (any but a logit in
    a mixed group), block and position where the group has one, a head of its QK heads."""
    if not g.member_nodes:
        return
    _expect([ref.id for ref in g.member_nodes] == g.members,
            f"{where}.member_nodes: not one per member, in the members' order")  # fmt: skip
    for k, ref in enumerate(g.member_nodes):
        at = f"{where}.member_nodes[{k}]"
        _expect(ref.present and ref.kind in KINDS and ref.kind != "logit",
                f"{at}: a member is a node of the prompt, not a {ref.kind!r}")  # fmt: skip
        _check_ref(ref, n_pos, at)
        _expect(node_id(Kind.parse(ref.kind), ref.stage, ref.pos, ref.index) == ref.id,
                f"{at}: its fields make another id than {ref.id!r}")  # fmt: skip
        _expect((g.kind == "mixed" or ref.kind == g.kind)
                and (g.layer is None or ref.layer == g.layer)
                and (g.pos is None or ref.pos == g.pos),
                f"{at}: a {ref.kind} node of block {ref.layer} at {ref.pos}, not of its group's "
                "kind and place")  # fmt: skip
        _expect(ref.kind != "lorsa" or ref.qk_head in g.qk_heads,
                f"{at}.qk_head: {ref.qk_head}, not a QK head of its group")  # fmt: skip


def _main_input(ref: NodeRef, n_pos: int, at: str) -> dict:
    mi = from_json(MainInput, ref.main_input, at)
    _expect(mi.kind in KINDS, f"{at}.kind: {mi.kind!r}, not one of {list(KINDS)}")
    _expect(mi.layer >= -1, f"{at}.layer: {mi.layer} is below -1")
    last = n_pos - 1 if ref.pos is None else min(ref.pos, n_pos - 1)
    _expect(0 <= mi.pos <= last,
            f"{at}.pos: {mi.pos} outside 0..{last} (the prompt, up to its node's)")  # fmt: skip
    head_key = mi.kind == "lorsa" and mi.attends is not None and 0 <= mi.attends <= mi.pos
    _expect(mi.attends is None or head_key,
            f"{at}.attends: {mi.attends} is not a key up to a head's position")  # fmt: skip
    return to_plain(mi)


def _at_tokens(shares: list[TokenShare], tokens: list[str], where: str) -> None:
    """Flows by position: each position once, each holding the token the share names."""
    _expect(len({x.pos for x in shares}) == len(shares), f"{where}: a position twice")
    for x in shares:
        inside = 0 <= x.pos < len(tokens)
        _expect(
            inside and tokens[x.pos] == x.token,
            f"{where}: position {x.pos} is not token {x.token!r}",
        )


def signs_agree(predicted: float, actual: float, tolerance: float) -> bool:
    """A check's sign agreement: same sign, or both below ``tolerance`` in magnitude (what
    ``circuits.mechanisms`` writes and a file read back is held to: ``_check_effect``)."""
    return max(abs(predicted), abs(actual)) < tolerance or predicted * actual > 0


def effect_ratio(predicted: float, actual: float) -> float | None:
    """A check's ``|actual| / |predicted|`` (None for a prediction of 0)."""
    return None if predicted == 0 else abs(actual) / abs(predicted)


def off_by(predicted: float, actual: float, tolerance: float, ratio: float) -> bool:
    """Whether a measured change is more than ``ratio`` times off the predicted one in size (or
    one of them 0), unless both are below ``tolerance``: half of what flags a check
    (``circuits.mechanisms.off_by_ratio`` at its ``RATIO``; a file's checks at its own)."""
    if max(abs(predicted), abs(actual)) < tolerance:
        return False
    if predicted == 0 or actual == 0:
        return True
    found = abs(actual) / abs(predicted)
    return found > ratio or found < 1 / ratio


def _check_effect(c: EffectCheck, tolerance: float, ratio: float | None, where: str) -> None:
    """A check's agreements, ratios and flag are the ones its changes give, by the rules
    ``circuits.mechanisms`` makes them with (``signs_agree``, ``effect_ratio``, ``off_by`` at
    the file's ``ratio``; the flag unchecked in a file without one): a forged check whose
    frozen change was -1e308 beside the writer's agreement and no flag loaded and printed as
    agreeing ([ok]; a fuzz pass)."""
    changes = [("frozen", c.frozen), ("free", c.free)]
    changes += [(name, getattr(c, name)) for name in
                ("free_ln_held", "free_final_ln_held", "free_attention_held")]  # fmt: skip
    for name, actual in changes:
        _expect(actual is None
                or getattr(c, f"agree_{name}") == signs_agree(c.predicted, actual, tolerance),
                f"{where}.agree_{name}: not {name}'s sign agreement")  # fmt: skip
    for name, actual in changes[:2]:
        found, want = getattr(c, f"ratio_{name}"), effect_ratio(c.predicted, actual)
        _expect(found is None if want is None else found is not None
                and math.isclose(found, want, rel_tol=CLOSURE),
                f"{where}.ratio_{name}: not |{name}| / |predicted|")  # fmt: skip
    if ratio is None:
        return
    flagged = (not (c.agree_frozen and c.agree_free)
               or off_by(c.predicted, c.frozen, tolerance, ratio)
               or off_by(c.predicted, c.free, tolerance, ratio))  # fmt: skip
    _expect(c.flagged == flagged, f"{where}.flagged: not what its agreements and ratios give")


def _expect(ok: bool, problem: str) -> None:
    if not ok:
        raise ValueError(problem)


def _closes(total: float, value: float, what: str) -> None:
    _expect(
        abs(total - value) <= CLOSURE * max(1.0, abs(total), abs(value)),
        f"{what} = {total:.6g}, not {value:.6g}",
    )


def checked_summary(summary: MechanismSummary) -> MechanismSummary:
    """``summary`` as its file would read back (``from_dict`` of its JSON), or one ValueError
    saying what ``load_summary`` would refuse: a summary edited by hand (a group it names
    undefined, NaN, a string for a number) is refused before anything prints or writes it."""
    if not isinstance(summary, MechanismSummary):
        raise TypeError(f"summary must be a circuits.mechanism_file.MechanismSummary, got a "
                        f"{type(summary).__name__}")  # fmt: skip
    try:
        data = json.loads(json.dumps(summary.to_dict()))
    except (TypeError, ValueError) as exc:  # a value JSON cannot carry (a tensor, an object)
        raise ValueError(f"not a mechanism summary ({one_line(exc)})") from None
    return MechanismSummary.from_dict(data)


def save_summary(summary: MechanismSummary, path: str | Path) -> None:
    """Write ``summary`` as JSON atomically, after the checks ``load_summary`` makes
    (``checked_summary``): a file it would refuse is never written."""
    from toy_models.files import write_json_atomic

    try:
        data = checked_summary(summary).to_dict()
    except ValueError as exc:
        raise ValueError(f"{path}: not saved, {exc}") from None
    write_json_atomic(Path(path), data)


def load_summary(path: str | Path) -> MechanismSummary:
    """Read a summary written by ``save_summary``; a ValueError names the file (one whose set
    is being replaced, or was cut short among its renames, is refused: ``set_cut_short``)."""
    from toy_models.files import check_readable_file, set_cut_short

    mixed = set_cut_short(Path(path))
    if mixed:
        raise ValueError(f"{path}: {mixed}")
    try:  # a link to /dev/zero was read without end (a MemoryError traceback; a fault pass)
        check_readable_file(Path(path), "mechanisms summary")
    except OSError as exc:
        raise ValueError(str(exc)) from None
    try:
        return MechanismSummary.from_dict(parse_json(Path(path).read_text(encoding="utf-8")))
    except UnicodeDecodeError:  # a graph's safetensors or an image given by mistake
        raise ValueError(f"{path}: not a mechanisms summary (mechanisms.json, written by "
                         "circuits.trace): not UTF-8 text") from None  # fmt: skip
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: {exc}") from None
