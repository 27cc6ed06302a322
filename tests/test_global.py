"""Global circuits against brute force on a small random replacement model: unit numbering,
virtual weights, QK bilinear weights, expected attribution (summed local edges), graphs."""

import math

import numpy as np
import pytest
import torch

from circuits.attribution import attribute, center, run_prompt, unembedding
from circuits.global_weights import (
    Statistics,
    Units,
    _accumulate,
    _empty,
    decoders,
    global_graph,
    qk_virtual_weights,
    readers,
    stage_of,
    virtual_weights,
)
from tests.test_attribution import random_replacement


@pytest.fixture
def replacement(random_model):
    return random_replacement(random_model)


@pytest.fixture
def units(replacement):
    return Units.of(replacement)


@pytest.fixture
def stats(replacement, units):
    """Statistics over three random prompts, accumulated the way gather_statistics does."""
    torch.manual_seed(3)
    stats = _empty(units, replacement.cfg.d_model, {"rows_done": 0})
    for _ in range(3):
        tokens = torch.randint(1, 50, (10,))
        run = run_prompt(replacement, tokens, "local")
        _accumulate(stats, attribute(replacement, tokens, run=run), run)
    return stats


def test_unit_numbering_round_trips(units):
    assert units.sizes == [50, 9, 17, 9, 17, 50]
    for u in range(units.total):
        kind, stage, index = units.describe(u)
        layer = (stage - 1) // 2
        if kind == "error":
            assert units.unit("error", layer, (stage - 1) % 2) == u
        else:
            assert units.unit(kind, layer, index) == u
    with pytest.raises(ValueError, match="outside"):
        units.unit("lorsa", 0, 8)  # 8 heads: 0..7 (8 is the error unit)
    with pytest.raises(ValueError, match="layer 2"):
        units.unit("transcoder", 2, 0)


def test_nodes_map_to_their_units(replacement, units):
    graph = attribute(replacement, torch.arange(1, 9))
    unit = units.of_nodes(graph.kind, graph.stage, graph.index)
    for i in range(graph.n_nodes):
        kind, stage, index = units.describe(int(unit[i]))
        assert kind == graph.kinds[i] and stage == int(graph.stage[i])
        assert index == (-1 if kind == "error" else int(graph.index[i]))


def test_virtual_weights_are_the_top_of_the_dense_products(replacement, units):
    d, r = decoders(replacement, units), readers(replacement, units)
    stage = stage_of(units)
    target = units.unit("transcoder", 1, 5)
    ids, weights = virtual_weights(replacement, target, k=7)
    dense = d @ r[target]
    dense[stage >= stage[target]] = 0
    expected = dense.abs().topk(7).indices
    assert set(ids.tolist()) == set(expected.tolist())
    torch.testing.assert_close(weights, dense[ids])
    # Downstream from a head: reads of every unit above it.
    source = units.unit("lorsa", 0, 3)
    ids, weights = virtual_weights(replacement, source, k=5, upstream=False)
    assert (stage[ids] > stage[source]).all()
    torch.testing.assert_close(weights, r[ids] @ d[source])
    # A logit reads through the demeaned unembedding.
    logit = units.unit("logit", 0, 4)
    torch.testing.assert_close(r[logit], center(unembedding(replacement.model)[4]))


def test_qk_virtual_weights_match_brute_force(replacement, units):
    lorsa = replacement.lorsas[1]
    below = int(units.offsets[3])
    d = decoders(replacement, units)[:below]
    table = (d @ lorsa.W_Q[1]) @ (d @ lorsa.W_K[1]).T / math.sqrt(lorsa.cfg.d_qk)
    pairs = qk_virtual_weights(replacement, 1, 1, k=6, block=7)  # blocks smaller than the table
    best = table.flatten().abs().topk(6).indices
    assert [(q * below + k) for q, k, _ in pairs] == best.tolist()
    for q, k, v in pairs:
        assert v == pytest.approx(float(table[q, k].detach()), rel=1e-5)


def test_expected_attribution_sums_local_edges(replacement, units, stats):
    """Rebuilt here from dense local graphs with plain loops."""
    torch.manual_seed(3)
    summed = np.zeros((units.total, units.total))
    activity = np.zeros(units.total)
    for _ in range(3):
        tokens = torch.randint(1, 50, (10,))
        graph = attribute(replacement, tokens)
        unit = units.of_nodes(graph.kind, graph.stage, graph.index).numpy()
        dense = graph.edges.toarray()
        for t, s in zip(*dense.nonzero(), strict=True):
            summed[unit[s], unit[t]] += dense[t, s]
        for i in range(graph.n_nodes):
            if graph.kinds[i] != "logit":
                activity[unit[i]] += float(graph.activation[i])
    np.testing.assert_allclose(stats.activity.numpy(), activity, rtol=1e-5)
    stage = stage_of(units)
    for target in (units.unit("lorsa", 1, 2), units.unit("transcoder", 0, 7)):
        ids, weights = stats.expected_into(target, replacement)
        expected = summed[: len(ids), target] / np.maximum(activity[: len(ids)], 1e-12)
        np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-4, atol=1e-6)
        assert (stage[ids.numpy()] < stage[target]).all()
    # Units that never fire together have no expected attribution.
    source = int(np.flatnonzero(activity == 0)[0])
    ids, weights = stats.expected_from(source, replacement)
    assert weights.abs().max() == 0


def test_expected_attribution_into_logits(replacement, units, stats):
    """Every position's final residual reads every source there: sum of a * VW / sigma_f."""
    torch.manual_seed(3)
    logit = units.unit("logit", 0, 11)
    r = readers(replacement, units)[logit]
    d = decoders(replacement, units)
    expected = torch.zeros(units.total)
    for _ in range(3):
        tokens = torch.randint(1, 50, (10,))
        run = run_prompt(replacement, tokens, "local")
        unit = units.of_nodes(run.kind, run.stage, run.index)
        for s in range(len(run.kind)):
            write = run.write[s]  # errors write their own vector; others a * decoder
            expected[unit[s]] += float(center(write) @ r) / float(run.sigma_final[run.pos[s]])
    ids, weights = stats.expected_into(logit, replacement)
    torch.testing.assert_close(weights, expected[ids] / stats.activity[ids].clamp(min=1e-12),
                               atol=1e-5, rtol=1e-4)  # fmt: skip
    del d


def test_statistics_round_trip_and_refusals(replacement, stats, tmp_path, random_model):
    path = tmp_path / "stats.safetensors"
    stats.save(path)
    back = Statistics.load(path, replacement)
    assert all(torch.equal(a, b) for a, b in zip(back.blocks, stats.blocks, strict=True))
    assert torch.equal(back.activity, stats.activity) and back.units == stats.units
    path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(ValueError, match="not a readable statistics file"):
        Statistics.load(path)
    with pytest.raises(FileNotFoundError):
        Statistics.load(tmp_path / "none.safetensors")


def test_global_graph_grows_from_the_start(replacement, units, stats):
    start = units.unit(
        "transcoder", 1, int(stats.count[units.unit("transcoder", 1, 0) :][:16].argmax())
    )
    graph = global_graph(replacement, stats, start, budget=12, per_node=4)
    assert graph.n_nodes <= 12
    start_row = [i for i in range(graph.n_nodes) if graph.target_weight[i] == 1]
    assert len(start_row) == 1
    unit = units.of_nodes(graph.kind, graph.stage, graph.index)
    assert int(unit[start_row[0]]) == start
    coo = graph.edges.tocoo()
    assert (graph.stage[coo.col] < graph.stage[coo.row]).all()
    for t, s, w in zip(coo.row, coo.col, coo.data, strict=True):
        ids, weights = stats.mean_input(int(unit[t]), replacement)
        assert w == pytest.approx(float(weights[int(unit[s])]), rel=1e-5)
    assert graph.settings["edge_weights"] == "mean input per target occurrence"
    down = global_graph(replacement, stats, units.unit("embedding", 0, 5), budget=6, upstream=False)
    assert down.settings["direction"] == "downstream"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--start", "head:1:2"], "expected lorsa:L:HEAD"),
        (["--start", "lorsa:9:1"], "layer 9 is outside 0..3"),
        (["--start", "transcoder:1:99999"], "outside 0..2047"),
        (["--start", "logit: Thursdayy"], "not one token"),
        (["--start", "token: Monday"], "grow it with --downstream"),
        (["--start", "logit: Monday", "--downstream"], "a logit has no outputs"),
        (["--start", "lorsa:1:2", "--budget", "0"], "must be positive"),
    ],
)
def test_global_graph_cli_bad_input(tmp_path, capsys, args, message):
    from circuits.global_graph import main
    from toy_models.cli import run_cli

    out = tmp_path / "never"
    stats = tmp_path / "stats.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*args, "--out", str(out), "--stats", str(stats)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error:") and message in err, err
    assert not out.exists() and not stats.exists()


def test_qk_circuit(replacement, units, stats):
    from circuits.global_weights import qk_circuit

    graph = qk_circuit(replacement, stats, 1, [4, 5], k=5, writers=2)
    (record,) = graph.qk
    expected = qk_virtual_weights(replacement, 1, 1, k=5)
    unit = units.of_nodes(graph.kind, graph.stage, graph.index).tolist()
    ids = dict(zip(graph.ids, unit, strict=True))
    assert [(ids[p.query], ids[p.key], p.value) for p in record.pairs] == expected
    coo = graph.edges.tocoo()
    for t, s, w in zip(coo.row, coo.col, coo.data, strict=True):
        sources, inputs = stats.mean_input(unit[t])
        assert w == pytest.approx(float(inputs[unit[s]]), rel=1e-5)
        assert graph.stage[s] < graph.stage[t]
    assert graph.target_weight.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one QK group"):
        qk_circuit(replacement, stats, 1, [0, 4])
