"""``qk_record`` on a small random replacement model: one QK attribution at any (layer, QK
head, query, key) of a run, its score the head's own, and bad coordinates refused in one
line at the call (never wrapped around from the end, never a masked key, never a float)."""

import numpy as np
import pytest
import torch

from circuits.attribution import run_prompt
from circuits.qk import QKSides, qk_record

N_POS = 12
GOOD = {"layer": 1, "qk_head": 1, "query": 5, "key": 2}


@pytest.fixture
def run(replacement):
    torch.manual_seed(2)
    return run_prompt(replacement, torch.randint(1, 50, (N_POS,)), "local")


def test_a_qk_record_is_the_heads_own_score(replacement, run):
    record = qk_record(replacement, run, **GOOD, top=3)
    layer, h, q, k = GOOD.values()
    with torch.no_grad():
        side = QKSides(run, replacement, layer)
        score = side.scores(torch.tensor([h]), torch.tensor([q]), torch.tensor([k]))
    assert (record.layer, record.qk_head, record.query, record.key) == (layer, h, q, k)
    assert record.score == pytest.approx(float(score[0]), abs=1e-5)
    assert record.attention == pytest.approx(float(run.patterns[layer][h, q, k]))
    assert len(record.pairs) <= 3 and record.reason is not None
    # NumPy integers are integers; a key at its own query is allowed.
    same = qk_record(replacement, run, *(np.int64(v) for v in GOOD.values()), top=3)
    assert same.score == record.score and type(same.key) is int
    assert qk_record(replacement, run, 1, 1, 5, 5).key == 5


@pytest.mark.parametrize(
    "change, message",
    [
        ({"layer": -1}, r"layer -1 is outside 0\.\.1"),
        ({"layer": 2}, r"layer 2 is outside 0\.\.1"),
        ({"layer": 1.0}, "layer must be an integer, got 1.0"),
        ({"layer": True}, "layer must be an integer, got True"),
        ({"qk_head": -1}, r"qk_head -1 is outside 0\.\.1"),
        ({"qk_head": 2}, r"qk_head 2 is outside 0\.\.1"),
        ({"qk_head": 0.5}, "qk_head must be an integer"),
        ({"query": -1}, r"query -1 is outside 0\.\.11"),
        ({"query": N_POS}, r"query 12 is outside 0\.\.11"),
        ({"query": 5.0}, "query must be an integer, got 5.0"),
        ({"query": False}, "query must be an integer, got False"),
        ({"key": -1}, r"key -1 is outside 0\.\.11"),
        ({"key": 6}, r"key 6 is after query 5: a query reads keys 0\.\.5 only"),
        ({"key": "2"}, "key must be an integer, got '2'"),
        ({"top": 0}, "top must be a positive integer, got 0"),
        ({"top": 2.5}, "top must be a positive integer, got 2.5"),
        ({"top": True}, "top must be a positive integer, got True"),
    ],
)
def test_bad_qk_record_arguments_are_refused(replacement, run, change, message):
    args = GOOD | {k: v for k, v in change.items() if k != "top"}
    with pytest.raises(ValueError, match=message):
        qk_record(replacement, run, *args.values(), top=change.get("top", 10))


def test_qk_sources_group_each_sides_flow_exactly(replacement, run):
    """A record's sources: per side, the largest positive groups of that side's split through
    the graph (``qk_side_flows``, tested against the parts it must sum to elsewhere), heads
    grouped by (layer, position, key read) and anything else alone, each total the sum of
    its members' parts; of the tokens the side's own alone (its embedding at the query or the
    key), bias nodes never a source."""
    from collections import defaultdict

    from circuits.attribution import attribute
    from circuits.flows import qk_side_flows
    from circuits.graph import Graph
    from circuits.qk import qk_attribution, qk_sources

    full = attribute(replacement, run.tokens, run=run)
    # layer 1's heads: a layer-0 head's sides hold only token embeddings and constants
    heads = (full.is_kind("lorsa") & (full.layer == 1)).nonzero().squeeze(1)[:12]
    records = qk_attribution(replacement, full, heads, run=run)
    qk_sources(replacement, full, records, run, top=2)
    kinds, layers, positions = full.kinds, full.layer.tolist(), full.pos.tolist()
    for a in records:
        with torch.no_grad():
            side = QKSides(run, replacement, a.layer)
        q_flow, k_flow, _ = qk_side_flows(full, side, a.qk_head, a.query, a.key)
        for name, flow, at in (("query", q_flow, a.query), ("key", k_flow, a.key)):
            totals, members = defaultdict(float), defaultdict(list)
            for n in np.flatnonzero(flow):
                own_token = kinds[n] == "embedding" and positions[n] == at
                if kinds[n] not in ("lorsa", "transcoder", "error") and not own_token:
                    continue
                key = (layers[n], positions[n], int(full.attends[n])) if kinds[n] == "lorsa" else n
                totals[key] += flow[n]
                members[key].append(full.ids[n])
            best = sorted((v for v in totals.values() if v > 0), reverse=True)[:2]
            listed = [x for x in a.sources if x.side == name]
            assert [x.value for x in listed] == pytest.approx(best, rel=1e-9, abs=1e-12)
            for x in listed:
                key = (
                    (x.layer, x.pos, x.attends)
                    if x.kind == "lorsa"
                    else full.id_to_index[x.members[0]]
                )
                assert sorted(x.members) == sorted(members[key]) and x.pos <= at
                if x.kind == "embedding":
                    assert x.layer == -1 and x.pos == at and x.attends is None
                parts = [flow[full.id_to_index[m]] for m in x.members]
                assert parts == sorted(parts, reverse=True)  # strongest member first
    # They travel in the graph file, and a file's sources are checked.
    import tempfile
    from pathlib import Path

    full.qk = records
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.safetensors"
        full.save(path)
        back = Graph.load(path)
    assert [a.sources for a in back.qk] == [a.sources for a in records]
    assert any(a.sources for a in records)
    assert any(x.kind == "embedding" for a in records for x in a.sources)


def test_qk_attribution_flags_are_true_or_false(replacement, run):
    """Found by a fuzz pass: ``contrast="no"`` (truthy) computed the contrasts."""
    from circuits.attribution import attribute
    from circuits.qk import qk_attribution

    graph = attribute(replacement, run.tokens, run=run, max_logits=3)
    for name in ("contrast", "reason"):
        with pytest.raises(TypeError, match=f"^{name} must be True or False, got 'no'$"):
            qk_attribution(replacement, graph, run=run, **{name: "no"})
