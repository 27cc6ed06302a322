"""The mechanism summary: a graph read at the level of groups, with checks of its linearity.

Built from the *full* graph of a prompt (every edge, so every number is exact) and its groups
(``circuits.groups.auto_groups``). For each target ``t`` (``circuits.interventions.target_nodes``:
the logits, then any head or feature the graph was traced from, whose value is its
pre-activation):

- **flows.** Each node's exact flow into the target through the frozen linear graph, a
  group's what zeroing its members at once takes away (``circuits.flows.group_flows``: the
  sum of its members' within one stage), and the target's value split exactly into
  ``tokens``, ``errors`` and ``constants`` (``circuits.flows``, which states the math).
- **paths.** Group-level paths from the target down to a root group, found by a beam search,
  each with its exact flow and ``hops`` (``circuits.flows.top_paths``).
- **predicting head group.** Among the Lorsa groups at the position the target reads that
  move something from elsewhere (their key is neither that position nor BOS), the one with the
  largest positive flow (else any positive flow, else the largest |flow|): the heads that
  move what is predicted. The other head groups there follow by flow (``head_groups``), so a
  group that reads the current token itself shows with its weight. A logit or feature reads
  its own position; a head target reads the key it reads (``Graph.read_key``): through its
  frozen pattern its value comes from the keys, so the heads that moved something there are
  what feeds it (``TargetRecord.reads``), and its own QK reasons there say why it attends
  that key (``TargetRecord.qk``; the heads at its query act through them).
- **keys.** What the Lorsa heads at the target's position bring from each key position
  (``circuits.flows.key_flows``: each head's flow split exactly by its z-pattern,
  ``A[q, k] x_k w_v``), summed over all of them (``TargetRecord.moved_by_position``) and per
  head group (``GroupRecord.carried``). A head group is named by the key its heads read (the
  largest term of each head's z-pattern, ``Graph.attends``); a head that reads two places
  brings from both, and this says how much from each (on ``If today is Wednesday, then
  tomorrow is``, the 12 heads reading ` tomorrow` bring +5.41 from it and +0.70 from
  ` Wednesday`).
- **groups.** The summary's groups (the predicting head groups, the groups on the top paths,
  then the largest flows) with the structure that reads them: where a head group attends and
  why (``QKReason`` of each of its QK heads at that key: both sides' always-on parts named,
  the specific query-unit x key-unit pairs with their nodes' fields, and where what the query
  and the key hold comes from through the graph: tokens, heads, features), each feature's
  concept label and promoted tokens. A group without a concept of its own (a place's
  features whose labels fit below the grouping F1: heterogeneous, ~30 TopK features) gets its
  members' labels by share of its |flow| (``member_concepts``; ``MEMBER_MIN_F1``) and, for
  features, what its flow reads by token position (``group_reads``), which the report titles
  it by where no members' label brings half its flow (``reports.mechanisms.group_title``).
- **QK sources.** For each predicting head group, per side of its first QK reason, the head
  group whose ablation (the model free) lowers its attention most through that side alone
  (``circuits.interventions.side_attention``), of those raising the side most by their linear
  share (``CANDIDATES`` at first, more in rounds while the last of them is lowest, up to
  ``MAX_CANDIDATES``) and every head group at the side's own position: it joins the summary
  with its checks whatever its flow (``QKSourceRole``), none where no ablation lowers the
  attention by ``ATTENTION_LOWERED``.
- **checks.** For each head and feature group: the change of every target when the group is
  ablated, predicted by the linear graph (``circuits.interventions.predict`` on the full
  graph) and measured by rerunning the replacement model with attention frozen and with it
  free (``intervene_many``: each way's reruns of every checked group batched together, each
  group's row its own ablation). A check is *flagged* where a measured change disagrees in
  sign with the prediction, or differs from it by more than ``RATIO`` x in magnitude, unless
  both are below ``TOLERANCE`` (logit units): the places where the linear graph is not to be
  trusted. A third rerun, free but with the LayerNorm scales held, says why where free
  disagrees: on the probe prompts of the mechanism benchmark most free disagreements go when
  the LayerNorm is held (the model's rescaling undoes the group's effect), few when attention
  is held; a fourth, free with only the final LayerNorm's scale held, says whether it is the
  final normalisation (one scale for every logit) or the blocks'; a fifth, free with the
  attention patterns held, whether the group acts through other heads' attention (the heads
  that write an induction head's query or key: their value paths may do nothing in the model,
  their effect all through the pattern they shape).

The summary is a record (``MechanismSummary``, ``circuits.mechanism_file``) that
``save_summary`` writes as JSON beside the graph (``mechanisms.json``) and ``load_summary``
reads back checked; ``reports.mechanisms`` prints it (``format_summary``) and renders it for
``reports.html``. Ids are for files and people: every node a record mentions comes with its
fields (``NodeRef``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from toy_models.tokenizer import token_text

from .attribution import PromptRun, group_promoted_tokens, run_for_graph
from .flows import (
    BEAM,
    MAX_PATHS,
    EdgeSweep,
    group_flows_and_grads,
    key_flows,
    many_node_flows,
    many_qk_side_flows,
    qk_root_tables,
    root_split,
    spanning_groups,
    target_parts,
    top_paths,
)
from .graph import Graph, NamedSide, QKAttribution, checked_count
from .groups import (
    AUTO_RULES,
    GroupedGraph,
    auto_groups,
    checked_concepts,
    grouped,
    node_name,
)
from .interventions import (
    FINAL_LAYERNORM,
    Intervention,
    check_full_graph,
    intervene_many,
    predict,
    target_nodes,
    tokens_to_mean,
)
from .mechanism_file import (
    SIDES,
    TIE,
    TOLERANCE,
    AttentionCheck,
    EffectCheck,
    GroupRecord,
    MechanismSummary,
    MemberConcept,
    MovedBy,
    Mover,
    NodeRef,
    PathRecord,
    QKReasonRecord,
    QKSourceRole,
    QKTermRecord,
    SourceShare,
    TargetRecord,
    TokenCheck,
    TokenShare,
    direction_of,
    effect_ratio,
    off_by,
    signs_agree,
    weighted_mean,
)
from .nodes import Kind, block_of, unit_id
from .qk import qk_record
from .threads import single_thread

RATIO = 3.0  # a measured effect this many times larger or smaller than predicted is flagged
MAX_GROUPS = 10
HEAD_GROUPS = 3  # head groups at each target's position the summary ranks
QK_PAIRS = 5
SIDE_SOURCES = 4  # groups per category listed for each side of a QK reason
CANDIDATES = 4  # head groups per side of a predicting group's QK reason ablated to find its source
# ... per round: while the one whose ablation lowers the attention most is the last tested, or
# none lowers it by ATTENTION_LOWERED, the next CANDIDATES by score are tested too, up to
# MAX_CANDIDATES (a reviewer ablated every earlier head group and found untested ones lowering
# it more than the 4th of 4 named: 0.35 against 0.51)
MAX_CANDIDATES = 16
# How much a candidate's ablation must lower the predicting group's attention to be its QK
# source: one printed hundredth (a free rerun recomputes everything, so a group that changes
# nothing can read a hair below the clean pattern; one whose ablation raised it, 0.51 -> 0.52,
# was named: reviewers' points).
ATTENTION_LOWERED = 0.01
ROOT_PAIRS = 5  # root x root terms listed for each QK reason (and as many against moved tokens)
TERMS_SHOWN = 3  # a reason's root terms of each list whose tokens are tested (``TokenCheck``)
MEMBER_CONCEPTS = 3  # concepts kept of the members of a group without one (``member_concepts``)
# a member's label counts toward a group's members' concepts from this F1 on: a sparse unit's
# label can be far above chance and still predict little of its firing (F1 0.05 named a head)
MEMBER_MIN_F1 = 0.3
READS = 3  # token positions kept of what a feature group's flow reads (``group_reads``)
MOVERS = 2  # head groups named per moved token of a QK reason (``MovedBy``)


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
    tokenizer=None,
) -> MechanismSummary:
    """The mechanism summary of ``full`` (the unpruned graph of ``run``'s prompt; module
    docstring). ``pruned`` (optional) marks the members the drawn graph keeps; ``concepts``
    (unit id -> (label, F1)) labels units and groups them (``auto_groups``); ``view`` replaces
    the automatic groups with the caller's (``circuits.groups.grouped``); ``check`` runs the
    ablation checks (two reruns of the model per head or feature group); ``tokenizer`` names
    the tokens a group promotes that the graph holds no text of (any of the vocabulary: the
    graph's own are written ``<id>``)."""
    run = run_for_graph(replacement, full, run)  # wrong inputs refused here, each in a line
    check_full_graph(full, run)
    for name, count in (("beam", beam), ("max_paths", max_paths), ("max_groups", max_groups)):
        checked_count(count, name)
    if not (isinstance(tolerance, numbers.Real) and 0 <= tolerance < math.inf):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if view is not None and view.graph.ids != full.ids:
        raise ValueError("view groups another graph's nodes: make it from full (grouped(full, "
                         "...))")  # fmt: skip
    if pruned is not None and (pruned.tokens != full.tokens or pruned.mode != full.mode
                               or not set(pruned.ids) <= set(full.ids)):  # fmt: skip
        raise ValueError("pruned is not a pruning of full: another prompt, mode or nodes")
    concepts = checked_concepts(concepts)  # with a view given too, where auto_groups is not run
    with single_thread():
        return _summarize(
            replacement, full, run, pruned=pruned, concepts=concepts, view=view, beam=beam,
            max_paths=max_paths, max_groups=max_groups, check=check, tolerance=tolerance,
            tokenizer=tokenizer,
        )  # fmt: skip


def _summarize(
    replacement, full, run, *, pruned, concepts, view, beam, max_paths, max_groups, check,
    tolerance, tokenizer,
) -> MechanismSummary:  # fmt: skip
    concepts = concepts or {}
    grouping = "given" if view is not None else AUTO_RULES
    view = view or auto_groups(full, concepts)
    targets = target_nodes(full)  # the logits, then heads or features traced from
    own = {t: int(view.of_node[t]) for t in targets}  # a target's group never explains itself
    flows: dict[int, np.ndarray] = {}
    grads: dict[int, np.ndarray] = {}  # h = d value_t / d value_n, per target
    per_target, paths, ranked, segments = [], [], set(), []
    probs = run.logits[-1].softmax(-1)
    edge_sweep = EdgeSweep(full, run)  # full is run's full graph: checked against it
    target_flows = many_node_flows(full, targets, edge_sweep)
    flow_of_group, grad_in_group = group_flows_and_grads(full, view, target_flows, edge_sweep)
    for t in targets:
        flow, h = target_flows[t]
        flows[t], grads[t] = flow, h
        group_flow = flow_of_group[t]
        way = direction_of(float(full.value[t]))  # a negative target's movers push down
        ranking = _head_ranking(view, way * group_flow, reads_at(full, t), own[t])[:HEAD_GROUPS]
        ranked.update(ranking)
        on_path = []
        for groups, path_flow, hops in top_paths(view, t, beam=beam, keep=max_paths):
            paths.append((t, groups, path_flow, hops))
            on_path += [g for g in groups if not view.groups[g].is_root]
        segments.append((ranking, on_path))
        parts = target_parts(full, t, flow, h) | _moved(full, t, h, flow, edge_sweep)
        per_target.append((t, parts, ranking))
    ids = full.ids
    # A head group's QK heads are weighed by its |flow| into the target it predicts (the first
    # it predicts; the first target for any other): a later target's predicting heads were
    # weighed, and their QK reasons chosen, by their flow into the first target, which they
    # can work against (a reviewer's group predicting 'v' +3.96 and lowering 'th' -1.54)
    weighed_by = {}
    for t, (ranking, _) in zip(targets, segments, strict=True):
        if ranking:
            weighed_by.setdefault(ranking[0], t)
    reasons = _Reasons(replacement, full, run, view, concepts, flows, weighed_by,
                       targets[0] if targets else None)  # fmt: skip
    # Each predicting head group's QK reason first, and a head target's own: the head groups
    # that write its query and its key (its QK sources) join the summary with checks, whatever
    # their flow: of those that raise a side most (CANDIDATES a round, up to MAX_CANDIDATES)
    # and those at that side's position, the one whose ablation lowers its attention most
    # through that side.
    predictors = list(dict.fromkeys(ranking[0] for ranking, _ in segments if ranking))
    for g in predictors:
        reasons.of_group(g)
    # a head target's own attention at the key it reads, read in every check's free rerun:
    # the heads at its key can act through it, not through their value flow (a reviewer's
    # induction head target: free -2.3 against a flow of +0.761, its attention 0.73 -> 0.0008)
    own_looks = {t: _Look(("target", t), int(full.layer[t]), int(full.pos[t]), full.read_key(t),
                          [full.qk_head(t)], [1.0])
                 for t in targets if full.kind[t] == Kind.LORSA
                 and full.read_key(t) is not None}  # fmt: skip
    own_reasons = {t: reasons.at(look.layer, look.heads, look.query, look.key)  # its own QK head's
                   for t, look in own_looks.items()}  # fmt: skip
    side_flows = reasons.resolve_sides(edge_sweep)
    looks = [_Look(g, view.groups[g].layer, view.groups[g].pos, view.groups[g].attends,
                   *reasons.weights[g]) for g in predictors if reasons.of[g]]  # fmt: skip
    # whose QK sources are looked for: the predicting groups' looks, then the head targets'
    subjects = [*looks, *own_looks.values()]
    first_reason = {look.group: reasons.of[look.group][0] for look in looks} | {
        own_looks[t].group: own_reasons[t][0] for t in own_looks
    }
    clean = {look.group: look.attention(run.patterns[look.layer]) for look in subjects}
    # a head target's own group holds it: never one of its candidates
    own_group = {look.group: own[t] for t, look in own_looks.items()}
    writes_qk, sources_of = _qk_sources(replacement, full, run, view, subjects, first_reason,
                                        side_flows, own_group, clean, check)  # fmt: skip
    chosen = []
    for t, (ranking, on_path) in zip(targets, segments, strict=True):
        chosen += ranking + (sources_of.get(ranking[0], []) if ranking else [])
        chosen += sources_of.get(("target", t), []) + on_path
    # Fill up with the largest flows into the first target, none that has no flow into it (a
    # head target at BOS: groups at later positions, which cannot reach it, came in with flow
    # 0 and a check of rounding noise; found by a reviewer).
    # Heads and features are what a check ablates: a hand-made group mixing them (or with
    # roots beside them) is one too (a review found such groups listed with no check and no
    # word of why).
    kinds = full.kind.numpy()
    inner_kinds = (Kind.LORSA, Kind.TRANSCODER)
    inner_group = [grp.kind in ("lorsa", "transcoder") or (
        grp.kind == "mixed" and bool(np.isin(kinds[grp.members], inner_kinds).any()))
        for grp in view.groups]  # fmt: skip
    if targets:
        group_flow = flow_of_group[targets[0]]
        inner = [g for g in np.argsort(-np.abs(group_flow)).tolist()
                 if inner_group[g] and g != own[targets[0]] and group_flow[g] != 0]  # fmt: skip
        chosen += inner[:max_groups]
    inner_chosen = list(dict.fromkeys(g for g in chosen if inner_group[g]))
    checked = set(inner_chosen[:max_groups]) | set(writes_qk)
    on_paths = {g for _, groups, _, _ in paths for g in groups}
    listed = [g for g in dict.fromkeys(chosen + sorted(on_paths))
              if g in checked or g in ranked or g in on_paths]  # fmt: skip
    keys = {g: f"g{k}" for k, g in enumerate(listed)}
    # a QK source role names the summary group, or the head target, whose score it writes
    subject_keys = keys | {look.group: ids[t] for t, look in own_looks.items()}
    pruned_ids = set(pruned.ids) if pruned is not None else set()
    below = {g: [look for look in looks if look.reads_after(view.groups[g])] for g in listed}
    token = full.token if tokenizer is None else partial(token_text, tokenizer)
    checks = {} if not (check and targets) else _checks(
        replacement, full, run, {g: view.groups[g].members for g in listed if g in checked},
        targets, tolerance, flows, subjects, token,
    )  # fmt: skip
    records, rw = [], replacement.read_write()
    first_t = targets[0] if targets else None
    unlabelled = [g for g in listed if view.groups[g].concept is None
                  and view.groups[g].kind in ("lorsa", "transcoder")]  # fmt: skip
    reads = {} if first_t is None else group_reads(
        full, view, [g for g in unlabelled if view.groups[g].kind == "transcoder"],
        grad_in_group[first_t], edge_sweep)  # fmt: skip
    for g in listed:
        grp = view.groups[g]
        total = {ids[t]: float(flow_of_group[t][g]) for t in targets}
        record = GroupRecord(
            key=keys[g], name=grp.name, kind=grp.kind, layer=grp.layer, pos=grp.pos,
            attends=grp.attends,
            attends_token=None if grp.attends is None else full.token_strings[grp.attends],
            qk_heads=grp.qk_heads, concept=grp.concept,
            members=[ids[m] for m in grp.members],
            member_nodes=[node_ref(full, m, {}, unit=False) for m in grp.members],
            in_pruned=[ids[m] for m in grp.members if ids[m] in pruned_ids],
            flow=total,
            promotes=[token(x) for x in group_promoted_tokens(rw, full, grp.members)],
            writes_qk=[QKSourceRole(subject_keys[h], *role) for h, *role in writes_qk.get(g, [])],
            key_share=grp.key_share,
        )  # fmt: skip
        if g in unlabelled and first_t is not None:
            record.member_concepts, record.no_concept_share = member_concepts(
                full, grp.members, grad_in_group[first_t], concepts
            )
            record.reads = reads.get(g, [])
        if grp.kind == "lorsa":
            for t in targets:
                # through the paths that avoid the group's other members: its flow, exactly
                carried, own_flow = key_flows(full, grad_in_group[t], np.asarray(grp.members))
                record.carried[ids[t]] = _shares(full, carried.sum(0))
                record.carried_own[ids[t]] = float(own_flow.sum())
        record.qk += reasons.of_group(g)
        if g in checks:
            record.checks, free = checks[g]
            record.attention_checks = [
                AttentionCheck(keys[look.group], look.layer, look.query, look.key, look.heads,
                               look.weights, clean[look.group], free[look.group].free,
                               free[look.group].query, free[look.group].key)
                for look in below[g]
            ]  # fmt: skip
        records.append(record)
    reasons.resolve_sides(edge_sweep)
    reasons.split_by_roots(edge_sweep)
    reasons.moved_by(keys)
    if check:
        _token_checks(replacement, run, full.token_strings, reasons.first)
    target_records = []
    for t, parts, ranking in per_target:
        record = _target_record(full, t, parts, probs, run, [keys[g] for g in ranking])
        if full.kind[t] == Kind.LORSA:
            record.reads, record.qk = full.read_key(t), own_reasons.get(t, [])
        if t in own_looks and checks:
            look = own_looks[t]
            record.own_attention = look.mean(look.attention(run.patterns[look.layer]))
            record.own_attention_free = {keys[g]: look.mean(free[look.group].free)
                                         for g, (_, free) in checks.items()}  # fmt: skip
            record.own_attention_sides = {
                keys[g]: [look.mean(free[look.group].side(side)) for side in SIDES]
                for g, (_, free) in checks.items()
            }
        target_records.append(record)
    path_records = [
        PathRecord(ids[t], [keys[g] for g in groups], flow, hops) for t, groups, flow, hops in paths
    ]
    return MechanismSummary(
        prompt=full.prompt, tokens=list(full.token_strings), mode=full.mode,
        model=str(full.model.get("name", "")), targets=target_records, groups=records,
        paths=path_records, untrained_positions=full.untrained_positions,
        untrained_targets=[full.token(x) for x in full.untrained_targets],
        model_top=None if full.model_top is None else full.token(full.model_top[0]),
        model_top_probability=None if full.model_top is None else full.model_top[1],
        settings={"beam": beam, "max_paths": max_paths, "max_groups": max_groups,
                  "tolerance": tolerance, "ratio": RATIO, "constants": full.has_constants,
                  "member_min_f1": MEMBER_MIN_F1,
                  "grouping": grouping, "qk_sources": CANDIDATES if check else 1,
                  "qk_sources_most": MAX_CANDIDATES if check else 1,
                  "qk_sources_at_position": bool(check), "checks": bool(check),
                  # every other head group at a side's position tested (raisers there too),
                  # and head targets' own sources looked for (the words of older files differ)
                  "qk_sources_every_placed": bool(check), "qk_sources_head_targets": True,
                  # how much a source's ablation must lower the attention through its side
                  **({"qk_sources_lowered": ATTENTION_LOWERED} if check else {})},
    )  # fmt: skip


def member_concepts(
    graph: Graph, members: list[int], h: np.ndarray, concepts: Mapping
) -> tuple[list[MemberConcept], float | None]:
    """The concept labels ``members`` (node indices of a group with none of its own) carry,
    each with the share of the group's |flow| that its members bring (a member's flow: its
    activation times ``h``, its gradient through the paths that avoid the other members), how
    many and their F1s, largest share first (``MEMBER_CONCEPTS``); and the share that members
    with no label in ``concepts`` of F1 ``MEMBER_MIN_F1`` or more bring. Nothing (and None)
    where the members bring no flow."""
    m = np.asarray(members, dtype=np.int64)
    own = np.abs(graph.activation.double().numpy()[m] * h[m])
    total = float(own.sum())
    if not total > 0:
        return [], None
    kinds, stages, index = graph.kind.tolist(), graph.stage.tolist(), graph.index.tolist()
    by_label: dict[str, list[tuple[float, float]]] = {}
    none = 0.0
    for i, f in zip(members, own.tolist(), strict=True):
        found = concepts.get(unit_id(Kind(kinds[i]), stages[i], index[i]))
        if found is None or found[1] < MEMBER_MIN_F1:
            none += f
        else:
            by_label.setdefault(found[0], []).append((f, float(found[1])))
    made = [MemberConcept(label, sum(f for f, _ in xs) / total, len(xs),
                          min(x for _, x in xs), max(x for _, x in xs))
            for label, xs in by_label.items()]  # fmt: skip
    made.sort(key=lambda c: -c.share)  # (stable: the members' order on ties)
    return made[:MEMBER_CONCEPTS], none / total


def group_reads(
    graph: Graph, view: GroupedGraph, groups: list[int], h: np.ndarray, edge_sweep: EdgeSweep
) -> dict[int, list[TokenShare]]:
    """What each of ``groups`` (one-stage groups of ``view``) reads: its flow into the target
    of ``h`` (each node's gradient through the paths avoiding its group's other members)
    split by the position of the token embeddings it comes from, the largest |flow| first
    (``READS``; BOS, the same in every prompt, is a constant, as in a target's parts). One
    sweep down from each stage for all its groups."""
    out: dict[int, list[TokenShare]] = {}
    by_stage: dict[int, list[int]] = {}
    for g in groups:
        if view.groups[g].stage is not None:
            by_stage.setdefault(view.groups[g].stage, []).append(g)
    n = graph.n_nodes
    activation = graph.activation.double().numpy()
    embedding = np.flatnonzero(graph.kind.numpy() == Kind.EMBEDDING)
    if graph.starts_with_bos:
        embedding = embedding[graph.pos.numpy()[embedding] != 0]
    pos = graph.pos.numpy()[embedding]
    for stage, gs in by_stage.items():
        seed, flow = np.zeros((n, len(gs))), np.zeros((n, len(gs)))
        for j, g in enumerate(gs):
            m = np.asarray(view.members(g), dtype=np.int64)
            seed[m, j] = h[m]
            flow[m, j] = h[m] * activation[m]
        edge_sweep.sweep(np.zeros((n, len(gs))), seed, flow, stage)
        for j, g in enumerate(gs):
            by_pos = np.bincount(pos, flow[embedding, j], minlength=len(graph.token_strings))
            order = [p for p in np.argsort(-np.abs(by_pos), kind="stable")[:READS].tolist()
                     if by_pos[p] != 0]  # fmt: skip
            out[g] = [TokenShare(p, graph.token_strings[p], float(by_pos[p])) for p in order]
    return out


class _Reasons:
    """The QK reasons a summary gives, made on demand, their costly parts batched: a head
    group's at its query and key (``of_group``: of its two QK heads with the most |flow| into
    the target it is weighed by, ``weighed_by``: the first it predicts, else the first target;
    made once) and a head target's own (``at``). The first reason of each
    call is split by roots later (``split_by_roots``: the sweeps cost most), and every
    reason's sides' sources are found for all made since the last ``resolve_sides`` in one
    sweep."""

    def __init__(self, replacement, full: Graph, run: PromptRun, view: GroupedGraph,
                 concepts: Mapping, flows: Mapping[int, np.ndarray],
                 weighed_by: Mapping[int, int], first: int | None):  # fmt: skip
        self.replacement, self.full, self.run, self.view = replacement, full, run, view
        self.concepts, self.flows = concepts, flows
        self.weighed_by, self.first_target = weighed_by, first
        self.units = unit_nodes(full)
        self.sides: dict = {}  # qk_record's per-layer cache
        self.pending: list = []  # (QK reason, its root-pair request): split by roots later
        self.side_requests: list = []  # (QK reason, its side-flow request): resolved later
        self.of: dict[int, list[QKReasonRecord]] = {}  # a head group's, once made
        self.weights: dict[int, tuple[list[int], list[float]]] = {}  # QK heads, |flow| shares
        self.key_flow: dict[int, np.ndarray] = {}  # each reason's key side flow, by its ``id``

    @property
    def first(self) -> list[QKReasonRecord]:
        """The reasons split by roots: the first of each call, in the order made."""
        return [reason for reason, _ in self.pending]

    def of_group(self, g: int) -> list[QKReasonRecord]:
        """Head group ``g``'s reasons at its query and key, of its two QK heads with the most
        |flow| into the target it is weighed by (none for a feature group, or one reading no
        key)."""
        grp = self.view.groups[g]
        if g in self.of:
            return self.of[g]
        if grp.kind != "lorsa" or None in (grp.attends, grp.pos, grp.layer):
            self.of[g] = []
            return []
        by_head: dict[int, float] = {}
        t = self.weighed_by.get(g, self.first_target)  # (the first target: none predicted)
        flow = self.flows[t] if t is not None else None
        for m in grp.members:
            head = self.full.qk_head(m)
            weight = abs(float(flow[m])) if flow is not None else 0.0
            by_head[head] = by_head.get(head, 0.0) + weight
        ordered = sorted(grp.qk_heads, key=lambda x: -by_head.get(x, 0.0))
        total = sum(by_head.get(x, 0.0) for x in ordered)
        self.weights[g] = (ordered, [by_head.get(x, 0.0) / total if total > 0
                                     else 1 / len(ordered) for x in ordered])  # fmt: skip
        self.of[g] = self.at(grp.layer, ordered[:2], grp.pos, grp.attends)
        return self.of[g]

    def at(self, layer: int, heads: list[int], query: int, key: int) -> list[QKReasonRecord]:
        """The reasons of QK ``heads`` of ``layer`` at (``query``, ``key``), the first one's
        to be split by roots."""
        out = []
        for head in heads:
            a = qk_record(self.replacement, self.run, layer, head, query, key, top=QK_PAIRS,
                          sides=self.sides)  # fmt: skip
            reason = _reason_record(self.full, a, self.concepts, self.units)
            request = (self.sides[layer][0], head, query, key)
            self.side_requests.append((reason, request))
            if head == heads[0]:
                self.pending.append((reason, request))
            out.append(reason)
        return out

    def resolve_sides(self, edge_sweep) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The side sources of every reason made since the last call (one sweep for all),
        and their flows by reason (``id``)."""
        requests = [r for _, r in self.side_requests]
        spanning = spanning_groups(self.full, self.view)  # hand-made groups: exact sums
        side_flows = many_qk_side_flows(self.full, requests, edge_sweep, spanning)
        out = {}
        for (reason, _), (q_flow, k_flow, parts) in zip(self.side_requests, side_flows,
                                                        strict=True):  # fmt: skip
            reason.query_at, reason.key_at = parts["query_at"], parts["key_at"]
            reason.query_sources = _side_sources(self.view, q_flow)
            reason.key_sources = _side_sources(self.view, k_flow)
            out[id(reason)] = (q_flow, k_flow)
            self.key_flow[id(reason)] = k_flow
        self.side_requests.clear()
        return out

    def split_by_roots(self, edge_sweep) -> None:
        """Each first reason's score split into root x root terms (``root_split``)."""
        tables = qk_root_tables(self.view, [r for _, r in self.pending], edge_sweep)
        for (reason, _), table in zip(self.pending, tables, strict=True):
            q_rows, k_rows, specific, at_key = table
            reason.root_pairs, reason.root_parts, reason.token_parts, by_key = root_split(
                q_rows, k_rows, specific, ROOT_PAIRS, key=reason.key, at_key=at_key
            )
            reason.own_pairs, reason.moved_pairs = by_key["key_own"], by_key["moved"]
            reason.position_pairs = by_key["positions"]

    def moved_by(self, keys: Mapping[int, str]) -> None:
        """Each first reason's ``moved_by`` (after ``split_by_roots`` and ``resolve_sides``):
        for each token position its ``moved_pairs`` name on the key side, what the heads at
        the key bring from there to the key side (``key_flows`` of the side's flow, by the
        groups of the view; ``keys``: the summary's key of each group it lists), the
        ``MOVERS`` groups bringing most."""
        full, view = self.full, self.view
        act = full.activation.double().numpy()
        kinds, pos, layer = full.kind.numpy(), full.pos.numpy(), full.layer.numpy()
        for reason, _ in self.pending:
            named = dict.fromkeys(p.key.pos for p in reason.moved_pairs
                                  if p.key.kind == "embedding" and p.key.pos is not None
                                  and p.key.pos < reason.key)  # fmt: skip
            if not named:
                continue
            flow = self.key_flow[id(reason)]
            h = np.divide(flow, act, out=np.zeros_like(flow), where=act != 0)
            heads = np.flatnonzero((kinds == Kind.LORSA) & (pos == reason.key)
                                   & (layer < reason.layer))  # fmt: skip
            carried, _ = key_flows(full, h, heads)
            groups = view.of_node[heads]
            for p in named:
                by_group = np.bincount(groups, carried[:, p], minlength=view.n_groups)
                order = [g for g in np.argsort(-by_group, kind="stable")[:MOVERS].tolist()
                         if by_group[g] > 0]  # fmt: skip
                movers = []
                for g in order:
                    grp = view.groups[g]
                    share = SourceShare(grp.name, grp.kind, grp.layer, grp.pos, grp.attends,
                                        grp.concept, float(by_group[g]))  # fmt: skip
                    movers.append(Mover(share, keys.get(g)))
                reason.moved_by.append(
                    MovedBy(p, full.token_strings[p], float(carried[:, p].sum()), movers)
                )


def _qk_sources(
    replacement, full, run, view, subjects, first_reason, side_flows, own_group, clean, check
) -> tuple[dict[int, list[tuple]], dict]:  # fmt: skip
    """The QK sources of each subject (a predicting head group's look, or a head target's)
    per side of its first QK reason (module docstring, **QK sources**): the head groups
    raising that side most by their linear share (``side_flows``, by the reason's ``id``),
    ``CANDIDATES`` a round up to ``MAX_CANDIDATES`` while the last one tested lowers the
    attention most, and every other head group at the side's position, each ablated once with
    the model free; the one lowering the attention (``clean``: each subject's before) through
    that side alone most, by ``ATTENTION_LOWERED`` at least (without ``check``: the largest
    by its share). Returns each source's roles (``QKSourceRole``'s fields but the subject's
    key) and each subject's sources. ``own_group``: a head target's own group, never a
    candidate of its target."""
    look_of = {look.group: look for look in subjects}
    raisers: dict[tuple[int, str], list[tuple[int, float]]] = {}  # every one, by score
    # and every other head group at the side's own position, tested beside them (a reviewer
    # found heads at the query whose linear share lowers the side take the attention 0.08 ->
    # 0.009 where the named raiser took it to 0.06; another, a 6th raiser at the query left
    # untested after the first round, 0.21 where the named one gave 0.40)
    placed: dict[tuple[int, str], list[tuple[int, float]]] = {}  # every one there, by score
    # never the subject itself, nor a head target's own group (which holds it); another
    # target's group is a head group like any (a reviewer's second head target's group was
    # left out of the first's candidates, 0.44 named where it gave 0.13)
    for look in subjects:
        for side, side_flow in zip(SIDES, side_flows[id(first_reason[look.group])], strict=True):
            exclude = {look.group, own_group.get(look.group)}
            raisers[look.group, side] = _qk_candidates(view, side_flow, exclude)
            at = look.query if side == "query" else look.key  # (ablated only with checks)
            placed[look.group, side] = (_placed_candidates(view, side_flow, exclude, look, at)
                                        if check else [])  # fmt: skip
    tried = {key: min(CANDIDATES, len(found)) for key, found in raisers.items()}

    def at_position(g: int, side: str) -> list[tuple[int, float]]:
        """The head groups at ``g``'s ``side``'s position not among the raisers tested."""
        tested = {c for c, _ in raisers[g, side][: tried[g, side]]}
        return [x for x in placed[g, side] if x[0] not in tested]

    def under_test(g: int, side: str) -> list[tuple[int, float]]:
        """The candidates of ``g``'s ``side`` tested so far: raisers by score, then the other
        head groups at the side's position."""
        return raisers[g, side][: tried[g, side]] + at_position(g, side)

    after: dict[int, dict[int, _After]] = {}  # tested group -> its free rerun's attentions

    def lowest(g: int, side: str) -> tuple[list[int], list[float]]:
        """The tested candidates of ``g``'s ``side`` by the attention through that side alone
        with each ablated, lowest first (ties by score), and those attentions."""
        look = look_of[g]
        alone = [look.mean(after[c][g].side(side)) if g in after[c] else np.inf
                 for c, _ in under_test(g, side)]  # fmt: skip
        return sorted(range(len(alone)), key=lambda r: (alone[r], r)), alone

    while check:  # each round's new candidates rerun together
        new = sorted({c for key in tried for c, _ in under_test(*key)} - set(after))
        after |= _free_attention(replacement, full, run, {c: view.groups[c] for c in new},
                                 subjects)  # fmt: skip
        grown = False
        for (g, side), n in tried.items():
            if n >= min(MAX_CANDIDATES, len(raisers[g, side])):
                continue
            # read among the raisers alone (a group at the position that lowers it does not
            # end the search: on a reviewer's prompt one at 0.50 stopped it before the 5th
            # raiser, which takes it to 0.35)
            order, alone = lowest(g, side)
            first = next(r for r in order if r < n)
            enough = alone[first] <= look_of[g].mean(clean[g]) - ATTENTION_LOWERED
            if first == n - 1 or not enough:  # the last raiser tested, or none enough
                tried[g, side] = min(n + CANDIDATES, MAX_CANDIDATES, len(raisers[g, side]))
                grown = True
        if not grown:
            break
    writes_qk: dict[int, list[tuple]] = {}  # source -> QKSourceRole's fields but the group key
    sources_of: dict = {}  # a subject (a group, or ("target", t)) -> its sources
    for g, side in tried:
        found = under_test(g, side)
        if not found:
            continue
        rank = 0  # without checks, the largest by its share; else the one ablation shows
        tie = (None, None)
        if check:
            # of those whose ablation lowers the attention through this side alone (one that
            # leaves it or raises it is no source of it, however much it writes: a reviewer
            # found "written most by" a group of +0.004 of a side's +0.22 whose ablation took
            # it from 0.51 to 0.52; another, a group at the key named the query side's source,
            # its ablation 0.57 -> 0.005 all through the keys, the query alone 0.54)
            before = look_of[g].mean(clean[g])
            (rank, *rest), alone = lowest(g, side)
            if alone[rank] > before - ATTENTION_LOWERED:
                continue
            # the next lowest, if it lowers the attention at all (whether or not it clears the
            # threshold itself) and comes within TIE
            if rest and alone[rest[0]] < before and alone[rest[0]] - alone[rank] <= TIE:
                tie = (view.groups[found[rest[0]][0]].name, alone[rest[0]])
        source, value = found[rank]
        role = (g, first_reason[g].qk_head, side, value, rank + 1, len(found) if check else 1, *tie,
                len(raisers[g, side]), len(at_position(g, side)))  # fmt: skip
        writes_qk.setdefault(source, []).append(role)
        sources_of.setdefault(g, []).append(source)
    return writes_qk, sources_of


def named_token_terms(r: QKReasonRecord) -> dict[int, float]:
    """The token positions a reason's first ``TERMS_SHOWN`` root terms of each list name (own,
    moved and by position; without that split, of ``root_pairs``), on either side, in the
    order they are named, each with the sum of those terms naming it: what the reason says the
    token does for the score, and what its ``token_checks`` test (the mean token replaces the
    token in every term, its position terms too: a reviewer found a printed ``token ' seven'@15
    x position vectors +3.8`` left out of that token's "terms +0.16")."""
    terms = r.own_pairs[:TERMS_SHOWN] + r.moved_pairs[:TERMS_SHOWN] + r.position_pairs[:TERMS_SHOWN]
    if not (r.own_pairs or r.moved_pairs or r.position_pairs):
        terms = r.root_pairs[:TERMS_SHOWN]
    out: dict[int, float] = {}
    for p in terms:
        for pos in dict.fromkeys(x.pos for x in (p.query, p.key)
                                 if x.kind == "embedding" and x.pos is not None):  # fmt: skip
            out[pos] = out.get(pos, 0.0) + p.value
    return out


def _token_checks(replacement, run, tokens: list[str], reasons: list[QKReasonRecord]) -> None:
    """Each reason's ``token_checks``: the tokens its first ``TERMS_SHOWN`` root terms of each
    list name (query and key sides), each replaced by the mean token and the model rerun
    (``tokens_to_mean``, one batch for all the reasons)."""
    named = [list(named_token_terms(r)) for r in reasons]
    positions = sorted({p for at in named for p in at})
    if not positions:
        return
    reads = [(r.layer, r.qk_head, r.query, r.key) for r in reasons]
    after = tokens_to_mean(replacement, run, positions, reads)
    row = {p: i for i, p in enumerate(positions)}

    def check(p: int, j: int) -> TokenCheck:
        i = row[p]
        rival = int(after.rival[i, j])
        return TokenCheck(
            p, tokens[p], float(after.attention[i, j]), float(after.specific[i, j]),
            *((rival, float(after.rival_attention[i, j]), float(after.rival_before[i, j]))
              if rival >= 0 else (None, None, None)),
        )  # fmt: skip

    for j, (r, at) in enumerate(zip(reasons, named, strict=True)):
        r.token_checks = [check(p, j) for p in at]


def _head_ranking(view: GroupedGraph, group_flow: np.ndarray, pos: int, own: int) -> list[int]:
    """The Lorsa groups at ``pos`` with a flow (a head or feature target's own block and those
    above have none: it reads only the blocks below), but the target's ``own``, the predicting
    head group first; ``group_flow`` is signed in the target's direction (``direction_of``:
    positive pushes the way its value goes):
    of the groups that move something from another position (their key is neither ``pos``
    itself nor BOS), the one with the largest positive flow (else the largest positive flow of
    any group, else the largest |flow|). The others follow by flow alone, positive ones first,
    largest first, so that a group reading the current token itself (a successor item at the
    query) shows with its weight however small the movers are."""
    heads = [g for g, grp in enumerate(view.groups)
             if grp.kind == "lorsa" and grp.pos == pos and g != own
             and group_flow[g] != 0]  # fmt: skip

    def by_flow(g):
        return (group_flow[g] <= 0, -abs(group_flow[g]))

    def as_predictor(g):
        not_positive, size = by_flow(g)
        return (not_positive, view.groups[g].attends in (None, 0, pos), size)

    if not heads:
        return []
    first = min(heads, key=as_predictor)
    return [first, *sorted((g for g in heads if g != first), key=by_flow)]


def reads_at(graph: Graph, t: int) -> int:
    """The position target ``t`` reads its inputs at: a Lorsa head's key (``Graph.read_key``:
    the one its activation comes from most, through its frozen pattern), else its own."""
    key = graph.read_key(t) if graph.kind[t] == Kind.LORSA else None
    return int(graph.pos[t]) if key is None else key


def _moved(graph: Graph, t: int, h: np.ndarray, flow: np.ndarray, edge_sweep: EdgeSweep) -> dict:
    """What the Lorsa heads at the position target ``t`` reads (``reads_at``; ``t`` itself
    left out) bring to it: their flow as one group (what zeroing them all takes away, a path
    through two of them counted once: ``group_flows``), split by key position
    (``circuits.flows.key_flows`` with each head's ``h`` through the paths that avoid the
    others) and their own constant terms; ``TargetRecord``'s ``heads_flow``,
    ``moved_by_position``, ``heads_own``. Summed head by head, a head of an earlier block
    that feeds a later one's value there was counted in both: on ``The old man was tired and
    the river was cold, so he sat by the`` the heads there read +5.48 where zeroing them
    takes away +6.27 (a review)."""
    heads = np.flatnonzero(
        (graph.kind.numpy() == Kind.LORSA) & (graph.pos.numpy() == reads_at(graph, t))
    )
    heads = heads[heads != t]
    if len(np.unique(graph.stage.numpy()[heads])) > 1:
        view = grouped(graph, [heads.tolist()])
        h = group_flows_and_grads(graph, view, {t: (flow, h)}, edge_sweep)[1][t]
    carried, own = key_flows(graph, h, heads)
    return {
        "heads_flow": float((h[heads] * graph.activation.double().numpy()[heads]).sum()),
        "heads_own": float(own.sum()),
        "moved_by_position": _shares(graph, carried.sum(0)),
    }


def _shares(graph: Graph, by_position: np.ndarray) -> list[TokenShare]:
    """Nonzero flows by position as ``TokenShare``s, largest |flow| first."""
    order = np.argsort(-np.abs(by_position), kind="stable").tolist()
    return [TokenShare(p, graph.token_strings[p], float(by_position[p]))
            for p in order if by_position[p] != 0]  # fmt: skip


def runner_up(scores: torch.Tensor, token: int) -> int | None:
    """The most likely token other than ``token`` by ``scores`` (logits or probabilities over
    the vocabulary); None when there is no other. For a difference it may be the difference's
    own negative token (the reports say so rather than give its margin, the target itself):
    leaving it out named a third token "runner-up" beside a negative of p 0.985 (a review)."""
    ranked = scores.argsort(descending=True).tolist()
    return next((v for v in ranked if v != token), None)


def _target_record(graph, t, parts, probs, run, head_groups) -> TargetRecord:
    kind = Kind(int(graph.kind[t]))
    by_position = [TokenShare(p, graph.token_strings[p], v) for p, v in parts["tokens_by_position"]]
    if kind != Kind.LOGIT:
        return TargetRecord(
            node=graph.ids[t], token=node_name(graph, t), negative=None, probability=None,
            value=float(graph.value[t]), tokens=parts["tokens"], errors=parts["errors"],
            constants=parts["constants"], constants_by_source=parts["constants_by_source"],
            runner_up=None, runner_up_probability=None, margin=None,
            predicting_group=head_groups[0] if head_groups else None, head_groups=head_groups,
            tokens_by_position=by_position, kind=kind.label, **_moved_fields(parts),
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
        head_groups=head_groups, tokens_by_position=by_position, **_moved_fields(parts),
        model_probability=record.model_probability,
        runner_up_is_negative=runner is not None and runner == record.negative,
        negative_probability=record.negative_probability,
        model_negative_probability=record.model_negative_probability,
    )  # fmt: skip


def _moved_fields(parts: dict) -> dict:
    return {k: parts[k] for k in ("heads_flow", "heads_own", "moved_by_position")}


def node_ref(
    graph: Graph, i: int, concepts: Mapping, with_input: bool = False, unit: bool = True
) -> NodeRef:
    """A ``NodeRef`` of node ``i`` from the graph's fields (``unit`` False: without its
    unit's concept and promoted tokens, as a group's ``member_nodes`` give it)."""
    kind = Kind(int(graph.kind[i]))
    stage, pos, index = int(graph.stage[i]), int(graph.pos[i]), int(graph.index[i])
    ref = NodeRef(
        id=graph.ids[i], kind=kind.label, layer=int(graph.layer[i]), stage=stage, pos=pos,
        index=index, token=graph.token_strings[pos],
    )  # fmt: skip
    if kind == Kind.LORSA:
        ref.attends = int(graph.attends[i])
        ref.qk_head = graph.qk_head(i)
    if kind in (Kind.LORSA, Kind.TRANSCODER) and unit:
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
              units: Mapping[str, int], named: Mapping[str, NamedSide]) -> NodeRef:  # fmt: skip
    if name is None:
        return NodeRef(id=None, kind="qk bias")
    i = graph.id_to_index.get(name)
    if i is not None:
        return node_ref(graph, i, concepts, with_input)
    j = units.get(name)
    if j is None:  # a unit no node of the graph has (a decoder bias): its record's fields
        side = named[name]
        token = graph.token(side.index) if side.kind == Kind.EMBEDDING else None
        return NodeRef(id=name, kind=side.kind.label, present=False, layer=block_of(side.stage),
                       stage=side.stage, index=side.index, token=token)  # fmt: skip
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
            _side_ref(graph, p.query, concepts, False, units, a.named),
            _side_ref(graph, p.key, concepts, True, units, a.named),
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


def _side_sources(view: GroupedGraph, flow: np.ndarray) -> dict[str, list[SourceShare]]:
    """A QK reason side's flow (``circuits.flows.qk_side_flows``) summed per group of ``view``:
    of each category (``roots``, ``heads``, ``features``) the ``SIDE_SOURCES`` largest
    positive sums, largest first, then the ``SIDE_SOURCES`` most negative, most negative first
    (what raises the side, then what lowers it: a side below zero was listed by its raisers
    alone, and a category without enough raisers filled up with sums of -0.002). A constant
    group of every position whose flow here comes from one position's node alone is named as
    that node, at its position (a layer-0 head's query side read ``position vector (all
    positions)`` where only the query's own position vector reaches it)."""
    sums = np.bincount(view.of_node, flow, minlength=view.n_groups)
    out: dict[str, list[SourceShare]] = {"roots": [], "heads": [], "features": []}
    for sign in (1.0, -1.0):
        taken = dict.fromkeys(out, 0)
        for g in np.argsort(-sign * sums, kind="stable").tolist():
            grp = view.groups[g]
            category = (
                "roots"
                if grp.is_root
                else {"lorsa": "heads", "transcoder": "features"}.get(grp.kind)
            )
            if sign * sums[g] <= 0 or category is None or taken[category] >= SIDE_SOURCES:
                continue
            taken[category] += 1
            name, pos = grp.name, grp.pos
            if grp.kind == "bias" and pos is None:
                # a constant group of every position (``position vector (all positions)``)
                # whose flow into this side comes from one position's node alone, as a layer-0
                # head's query side reads its own position's vector only: named as that node
                held = [i for i in grp.members if flow[i] != 0]
                if len(held) == 1:
                    name, pos = node_name(view.graph, held[0]), int(view.graph.pos[held[0]])
            out[category].append(
                SourceShare(
                    name, grp.kind, grp.layer, pos, grp.attends, grp.concept, float(sums[g])
                )  # fmt: skip
            )
    return out


def off_by_ratio(predicted: float, actual: float, tolerance: float) -> bool:
    """Whether a measured change is more than ``RATIO`` times off the predicted one in size (or
    one of them 0), unless both are below ``tolerance``: half of what flags a check, the one
    statement of it (``circuits.mechanism_file.off_by``, which a file read back is held to;
    the reports' marks read it too)."""
    return off_by(predicted, actual, tolerance, RATIO)


@dataclass(frozen=True)
class _Look:
    """A predicting head group's attention, as its checks read it: from its ``query`` to its
    ``key`` in block ``layer`` at each of its QK heads (``heads``), with ``weights`` (each one's
    share of the group's |flow| into the first target)."""

    group: int
    layer: int
    query: int
    key: int
    heads: list[int]
    weights: list[float]

    def reads(self) -> list[tuple[int, int, int, int]]:
        return [(self.layer, h, self.query, self.key) for h in self.heads]

    def attention(self, patterns: torch.Tensor) -> list[float]:
        """Its attention at each QK head in ``patterns`` (the block's: QK head, query, key)."""
        return [float(patterns[h, self.query, self.key]) for h in self.heads]

    def mean(self, attention: list[float]) -> float:
        return weighted_mean(self.weights, attention)

    def reads_after(self, grp) -> bool:
        """Whether group ``grp`` (``circuits.groups.Group``) can change this attention: in an
        earlier block, not after the query."""
        return (grp.layer is not None and grp.layer < self.layer
                and (grp.pos is None or grp.pos <= self.query))  # fmt: skip


@dataclass(frozen=True)
class _After:
    """A look's attention in a free rerun, per QK head: ``free`` (the rerun's own) and with
    the query's vector alone, then the keys' alone, as after the edit (``query``, ``key``:
    ``circuits.interventions.side_attention``)."""

    free: list[float]
    query: list[float]
    key: list[float]

    def side(self, side: str) -> list[float]:
        return self.query if side == "query" else self.key


def _split(looks: list[_Look], result) -> dict[int, _After]:
    """The attention ``result`` (an ``InterventionResult``) read for ``looks`` (their
    ``reads`` one after the other), by group."""
    free, by_side = result.attention.tolist(), result.attention_by_side.tolist()
    out, start = {}, 0
    for look in looks:
        here = slice(start, start + len(look.heads))
        alone = by_side[here]
        out[look.group] = _After(free[here], [a[0] for a in alone], [a[1] for a in alone])
        start += len(look.heads)
    return out


def _head_groups_by_sum(
    view: GroupedGraph, flow: np.ndarray, exclude: set[int], keep
) -> list[tuple[int, float]]:
    """The head groups (not in ``exclude``) that ``keep(group, sum)`` keeps, with one side of
    a QK reason's flow (``circuits.flows.qk_side_flows``) summed over each, largest first."""
    sums = np.bincount(view.of_node, flow, minlength=view.n_groups)
    heads = [g for g, grp in enumerate(view.groups)
             if grp.kind == "lorsa" and g not in exclude and keep(grp, sums[g])]  # fmt: skip
    heads.sort(key=lambda g: (-sums[g], g))
    return [(g, float(sums[g])) for g in heads]


def _qk_candidates(
    view: GroupedGraph, flow: np.ndarray, exclude: set[int]
) -> list[tuple[int, float]]:
    """The head groups (not in ``exclude``) that raise one side of a QK reason (that side's
    flow summed per group), with their sums, largest first; none with a sum <= 0."""
    return _head_groups_by_sum(view, flow, exclude, lambda grp, total: total > 0)


def _placed_candidates(
    view: GroupedGraph, flow: np.ndarray, exclude: set[int], look: _Look, pos: int
) -> list[tuple[int, float]]:
    """The head groups (not in ``exclude``) at position ``pos`` (a QK side's: the query or the
    key) that can change ``look``'s attention, whether or not they raise that side (its flow
    summed per group), with their sums, largest first."""
    return _head_groups_by_sum(
        view, flow, exclude, lambda grp, total: grp.pos == pos and look.reads_after(grp)
    )


def _free_attention(replacement, full, run, groups: dict, looks: list[_Look]) -> dict:
    """For each group of ``groups`` (index -> ``circuits.groups.Group``), the attention of
    each look it can change (``_After``: per QK head, and through each side alone), with it
    ablated and the model otherwise free (attention, LayerNorm and errors recomputed, as a
    check's ``free``): one rerun each, run together (``intervene_many``); a group that can
    change none has none."""
    below = {g: [look for look in looks if look.reads_after(grp)] for g, grp in groups.items()}
    runs = [g for g in groups if below[g]]
    if not runs:
        return {g: {} for g in groups}
    edits = [[Intervention(full.ids[m], "ablate") for m in groups[g].members] for g in runs]
    reads = [read for look in looks for read in look.reads()]
    zeros = torch.zeros(full.n_nodes)
    results = intervene_many(replacement, full, edits, freeze_attention=False,
                             freeze_errors=False, run=run, predicted=[zeros] * len(runs),
                             attention_reads=reads)  # fmt: skip
    out = {g: {} for g in groups}
    for g, result in zip(runs, results, strict=True):
        by_group = _split(looks, result)
        out[g] = {look.group: by_group[look.group] for look in below[g]}
    return out


def _checks(
    replacement, full, run, groups: dict, targets, tolerance, flows, looks=(), token=None
) -> dict[int, tuple[list[EffectCheck], dict[int, _After]]]:
    """For each group of ``groups`` (index -> its members), its ``EffectCheck`` per target
    (module docstring), and the attention of each of ``looks`` (``_Look``) in its free rerun,
    by group; each rerun way once for all the groups (``intervene_many``). ``token``: a token
    id's text (default ``full.token``)."""
    if not groups:
        return {}
    reads = [read for look in looks for read in look.reads()]
    keys = list(groups)
    edits = [[Intervention(full.ids[m], "ablate") for m in groups[g]] for g in keys]
    predictions = []
    for g, group_edits in zip(keys, edits, strict=True):
        members = groups[g]
        if len({int(full.stage[m]) for m in members}) == 1:
            # Members of one stage do not feed each other: the graph's prediction for
            # ablating them is minus their flows (what ``predict`` would propagate, without a
            # sweep).
            predicted = torch.zeros(full.n_nodes)
            predicted[targets] = torch.tensor([-float(flows[t][members].sum()) for t in targets])
        else:
            predicted = predict(full, group_edits)
        predictions.append(predicted)

    def rerun(**freezes):
        return intervene_many(replacement, full, edits, run=run, predicted=predictions,
                              **freezes)  # fmt: skip

    ways = zip(
        rerun(),  # frozen
        rerun(freeze_attention=False, freeze_errors=False, attention_reads=reads),  # free
        rerun(freeze_attention=False, freeze_layernorm=True, freeze_errors=False),  # LN held
        rerun(freeze_attention=False, freeze_layernorm=FINAL_LAYERNORM, freeze_errors=False),
        rerun(freeze_attention=True, freeze_layernorm=False, freeze_errors=False),  # patterns
        strict=True,
    )
    return {
        g: (_effect_checks(full, run, groups[g], tolerance, *results, text=token or full.token),
            _split(list(looks), results[1]))
        for g, results in zip(keys, ways, strict=True)
    }  # fmt: skip


def _effect_checks(full, run, members, tolerance, frozen, free, held, final, patterns, text):
    """A group's ``EffectCheck`` per target from its five reruns (``_checks``); ``text``: a
    token id's text."""
    out = []
    inside = {full.ids[m] for m in members}
    after = [torch.softmax(r.logits.double(), -1) for r in (frozen, free)]
    clean = run.logits[-1].double()
    # the most likely token after each rerun, where the ablation changes it (a reviewer read
    # "frozen other sign, its probability as predicted" where the frozen rerun had made ' '
    # certain, its logit +93.6: the replacement with its scales held had left its range)
    top = [int(a.argmax()) for a in after]
    top = [(None, None) if x == int(clean.argmax()) else (text(x), float(a[x]))
           for x, a in zip(top, after, strict=True)]  # fmt: skip
    for j, target in enumerate(frozen.targets):
        if target in inside:  # a target in the ablated group is not its own effect
            continue
        t = full.id_to_index[target]
        record = full.logit_record(t) if full.kind[t] == Kind.LOGIT else None
        token = None if record is None else record.token
        p_frozen, p_free = (None, None) if token is None else (float(a[token]) for a in after)
        negative = None if record is None else record.negative
        n_frozen, n_free = (None, None) if negative is None else (float(a[negative])
                                                                  for a in after)  # fmt: skip
        # a logit's margin over the runner-up (``TargetRecord.runner_up``), before and after
        other = None if record is None or record.negative is not None else runner_up(clean, token)
        m_frozen, m_free = (None, None) if other is None else (
            float((r.logits.double()[token] - r.logits.double()[other])
                  - (clean[token] - clean[other])) for r in (frozen, free)
        )  # fmt: skip
        p = float(frozen.predicted[j])
        fz, fr, ln = float(frozen.actual[j]), float(free.actual[j]), float(held.actual[j])
        # the final LayerNorm comes after every head and feature: for their targets the rerun
        # holding it is the free one, and says nothing (a reviewer read "the final one alone"
        # beside a layer-2 head)
        last = float(final.actual[j]) if record is not None else None
        attention = float(patterns.actual[j])
        agree_frozen, agree_free = signs_agree(p, fz, tolerance), signs_agree(p, fr, tolerance)
        flagged = (
            not (agree_frozen and agree_free)
            or off_by_ratio(p, fz, tolerance)
            or off_by_ratio(p, fr, tolerance)
        )
        out.append(
            EffectCheck(
                target=target, predicted=p, frozen=fz, free=fr, agree_frozen=agree_frozen,
                agree_free=agree_free, ratio_frozen=effect_ratio(p, fz),
                ratio_free=effect_ratio(p, fr), flagged=flagged, probability_frozen=p_frozen,
                probability_free=p_free,
                free_ln_held=ln, agree_free_ln_held=signs_agree(p, ln, tolerance),
                free_final_ln_held=last,
                agree_free_final_ln_held=None if last is None else signs_agree(p, last, tolerance),
                free_attention_held=attention,
                agree_free_attention_held=signs_agree(p, attention, tolerance),
                margin_frozen=m_frozen, margin_free=m_free,
                negative_probability_frozen=n_frozen, negative_probability_free=n_free,
                **({} if record is None else {"top_frozen": top[0][0],
                                              "top_frozen_probability": top[0][1],
                                              "top_free": top[1][0],
                                              "top_free_probability": top[1][1]}),
            )
        )  # fmt: skip
    return out
