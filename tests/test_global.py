"""Global circuits against brute force on a small random replacement model: unit numbering,
virtual weights, QK bilinear weights, expected attribution (summed local edges), graphs; the
statistics file refused whole when damaged or foreign; gathering resumed and extended bit for
bit; the CLI's bad input and start-up."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from circuits import statistics as statistics_module
from circuits.attribution import attribute, run_prompt
from circuits.global_weights import (
    decoders,
    global_graph,
    qk_circuit,
    qk_virtual_weights,
    readers,
    virtual_weights,
)
from circuits.graph import Graph
from circuits.nodes import Kind, block_of, is_attention
from circuits.statistics import Statistics, gather_statistics, identity, statistics_for
from circuits.units import Units
from replacement.model import center


@pytest.fixture
def replacement(random_model, make_replacement):
    return make_replacement(random_model)


@pytest.fixture
def units(replacement):
    return Units.of(replacement)


def sample_meta(replacement, rows: int, n_ctx: int) -> dict:
    return {
        "rows": rows, "n_ctx": n_ctx, "seed": 3, "mode": "local", "split": "heldout",
        "rows_done": 0, "seconds": 0.0, "identity": identity(replacement),
    }  # fmt: skip


@pytest.fixture
def stats(replacement, units):
    """Statistics over three random prompts, added the way gather_statistics adds rows."""
    torch.manual_seed(3)
    stats = Statistics.empty(units, replacement.cfg.d_model, sample_meta(replacement, 3, 10))
    for _ in range(3):
        tokens = torch.randint(1, 50, (10,))
        stats.add_run(run_prompt(replacement, tokens, "local"), replacement)
        stats.meta["rows_done"] += 1
    return stats


@pytest.fixture
def random_rows(monkeypatch):
    """The corpus stream replaced by seeded random rows that fit the random model's
    vocabulary (the real stream needs a trained tokenizer); deterministic like the real one."""

    def rows(tokenizer, n_ctx, split, seed):
        generator = torch.Generator().manual_seed(seed)
        while True:
            yield "random", torch.randint(1, 50, (n_ctx,), generator=generator).tolist()

    monkeypatch.setattr(statistics_module, "stream_rows", rows)


def assert_same(a: Statistics, b: Statistics) -> None:
    """Bit for bit: every tensor, and the metadata apart from timings."""
    assert a.units == b.units
    for (name, x), (_, y) in zip(a.tensors().items(), b.tensors().items(), strict=True):
        assert torch.equal(x, y), name
    assert {k: v for k, v in a.meta.items() if k != "seconds"} == {
        k: v for k, v in b.meta.items() if k != "seconds"
    }


# ----------------------------------------------------------------- units
def test_unit_numbering_round_trips(units):
    assert units.sizes == [50, 9, 17, 9, 17, 50]
    for u in range(units.total):
        kind, stage, index = units.describe(u)
        layer = block_of(stage)
        if kind == Kind.ERROR:
            assert units.unit(Kind.ERROR, layer, 0 if is_attention(stage) else 1) == u
        else:
            assert units.unit(kind, layer, index) == u
    with pytest.raises(ValueError, match="outside"):
        units.unit("lorsa", 0, 8)  # 8 heads: 0..7 (8 is the error unit)
    with pytest.raises(ValueError, match="layer 2"):
        units.unit("transcoder", 2, 0)
    # Computed once, not on every access.
    assert units.offsets is units.offsets and units.sizes is units.sizes
    assert units.stage is units.stage


def test_unit_ids(units):
    assert units.unit_id(units.unit(Kind.EMBEDDING, 0, 7)) == "E_7"
    assert units.unit_id(units.unit(Kind.LORSA, 1, 3)) == "2_3"
    assert units.unit_id(units.unit(Kind.ERROR, 0, 1)) == "1_-1"  # block 0's MLP error
    assert units.unit_id(units.unit(Kind.LOGIT, 0, 4)) == "5_4"
    assert units.node_id(units.unit(Kind.TRANSCODER, 1, 5)) == "3_5_0"


def test_nodes_map_to_their_units(replacement, units):
    graph = attribute(replacement, torch.arange(1, 9))
    unit = units.of_nodes(graph.kind, graph.stage, graph.index)
    for i in range(graph.n_nodes):
        kind, stage, index = units.describe(int(unit[i]))
        assert kind.label == graph.kinds[i] and stage == int(graph.stage[i])
        assert index == (-1 if kind == Kind.ERROR else int(graph.index[i]))


# ----------------------------------------------------------------- virtual weights
def test_virtual_weights_are_the_top_of_the_dense_products(replacement, units):
    d, r = decoders(replacement, units), readers(replacement, units)
    stage = units.stage
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
    # A logit reads through the unembedding column demeaned over the vocabulary, centred.
    logit = units.unit("logit", 0, 4)
    W_U = replacement.model.W_U.detach()
    torch.testing.assert_close(r[logit], center(W_U[:, 4] - W_U.mean(1)))
    # A head writes its centred w_o; errors and logits write nothing.
    torch.testing.assert_close(d[source], center(replacement.lorsas[0].W_O[3].detach()))
    assert d[units.unit(Kind.ERROR, 0, 0)].abs().max() == 0


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


# ----------------------------------------------------------------- expected attribution
def summed_local_edges(replacement, units, prompts, mode="local"):
    """Edges of dense local graphs summed per unit pair with plain loops, and activities."""
    summed = np.zeros((units.total, units.total))
    activity = np.zeros(units.total)
    for tokens in prompts:
        graph = attribute(replacement, tokens, mode=mode)
        unit = units.of_nodes(graph.kind, graph.stage, graph.index).numpy()
        dense = graph.edges.toarray()
        for t, s in zip(*dense.nonzero(), strict=True):
            summed[unit[s], unit[t]] += dense[t, s]
        for i in range(graph.n_nodes):
            if graph.kinds[i] != "logit":
                activity[unit[i]] += float(graph.activation[i])
    return summed, activity


def test_expected_attribution_sums_local_edges(replacement, units, stats):
    torch.manual_seed(3)
    prompts = [torch.randint(1, 50, (10,)) for _ in range(3)]
    summed, activity = summed_local_edges(replacement, units, prompts)
    np.testing.assert_allclose(stats.activity.numpy(), activity, rtol=1e-5)
    stage = units.stage
    for target in (units.unit("lorsa", 1, 2), units.unit("transcoder", 0, 7)):
        ids, weights = stats.expected_into(target, replacement)
        expected = summed[: len(ids), target] / np.maximum(activity[: len(ids)], 1e-12)
        np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-4, atol=1e-6)
        assert (stage[ids.numpy()] < stage[target]).all()
    # Units that never fire together have no expected attribution.
    source = int(np.flatnonzero(activity == 0)[0])
    ids, weights = stats.expected_from(source, replacement)
    assert weights.abs().max() == 0


@pytest.mark.parametrize("mode", ["local", "sparse"])
def test_every_summed_edge_block_matches_the_local_graphs(replacement, units, mode):
    """add_run forms a row's sums in closed form; every block equals the summed edge lists."""
    torch.manual_seed(5)
    prompts = [torch.randint(1, 50, (n,)) for n in (12, 7)]
    stats = Statistics.empty(units, replacement.cfg.d_model, sample_meta(replacement, 2, 12))
    for tokens in prompts:
        stats.add_run(run_prompt(replacement, tokens, mode), replacement)
    summed, activity = summed_local_edges(replacement, units, prompts, mode)
    for s in range(1, units.logit_stage):
        start, end = units.start(s), units.start(s + 1)
        np.testing.assert_allclose(
            stats.edge_block(s).numpy(), summed[:start, start:end], rtol=1e-4, atol=1e-5
        )
    np.testing.assert_allclose(stats.activity.numpy(), activity, rtol=1e-5)


def test_expected_attribution_into_logits(replacement, units, stats):
    """Every position's final residual reads every source there: sum of a * VW / sigma_f."""
    torch.manual_seed(3)
    logit = units.unit("logit", 0, 11)
    r = readers(replacement, units)[logit]
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
    _, mean = stats.mean_input(logit, replacement)
    torch.testing.assert_close(mean, expected[ids] / (3 * 10), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------- the file
def test_statistics_round_trip_and_refusals(replacement, stats, tmp_path, random_model):
    path = tmp_path / "stats.safetensors"
    stats.save(path)
    back = Statistics.load(path, replacement)
    assert all(torch.equal(a, b) for a, b in zip(back.blocks, stats.blocks, strict=True))
    assert torch.equal(back.activity, stats.activity) and back.units == stats.units
    assert_same(back, stats)
    path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(ValueError, match="not a readable statistics file"):
        Statistics.load(path)
    with pytest.raises(FileNotFoundError):
        Statistics.load(tmp_path / "none.safetensors")


def test_statistics_of_another_model_are_refused(replacement, stats, tmp_path, make_replacement):
    path = tmp_path / "stats.safetensors"
    stats.save(path)
    other_layers = make_replacement(replacement.model)
    with torch.no_grad():
        other_layers.lorsas[0].W_V[0, 0] += 1e-3  # one weight of the replacement set
    with pytest.raises(ValueError, match=f"{path}: made for another replacement set"):
        Statistics.load(path, other_layers)
    with torch.no_grad():
        replacement.model.W_E[0, 0] += 1e-3  # one weight of the toy model
    with pytest.raises(ValueError, match=f"{path}: made for another toy model"):
        Statistics.load(path, replacement)


def rewrite(path: Path, out: Path, header=None, tensors=None, raw_metadata=None) -> Path:
    """``path`` written again with a changed header and/or tensors (checksum left as it was)."""
    with safe_open(str(path), "pt") as f:
        old = json.loads(f.metadata()["statistics"])
    metadata = raw_metadata if raw_metadata is not None else {
        "statistics": json.dumps(header(old) if header else old)
    }  # fmt: skip
    new = tensors(load_file(str(path))) if tensors else load_file(str(path))
    save_file(new, str(out), metadata=metadata)
    return out


def meta_with(key: str, value):
    return lambda header: header | {"meta": header["meta"] | {key: value}}


def units_with(key: str, value):
    return lambda header: header | {"units": header["units"] | {key: value}}


def without(key: str, part: str | None = None):
    if part is None:
        return lambda header: {k: v for k, v in header.items() if k != key}
    return lambda header: header | {part: {k: v for k, v in header[part].items() if k != key}}


IDENTITY_KEYS = ("model", "replacement", "tokenizer")
CRAFTED = {
    "old version": dict(header=lambda header: header | {"version": 1}),
    "rows as a string": dict(header=meta_with("rows", "3")),
    "rows as a float": dict(header=meta_with("rows", 3.0)),
    "more rows done than asked": dict(header=meta_with("rows_done", 4)),
    "unknown mode": dict(header=meta_with("mode", "both")),
    "no identity": dict(header=without("identity", "meta")),
    "identity of numbers": dict(header=meta_with("identity", dict.fromkeys(IDENTITY_KEYS, 1))),
    "absurd unit sizes": dict(header=units_with("n_ov", [10**12, 8])),
    "sizes of the wrong type": dict(header=units_with("d_vocab", "50")),
    "no checksum": dict(header=without("sha256")),
    "header not JSON": dict(raw_metadata={"statistics": "{not json"}),
    "no header": dict(raw_metadata={}),
    "a missing tensor": dict(tensors=lambda t: {k: v for k, v in t.items() if k != "count"}),
    "an extra tensor": dict(tensors=lambda t: t | {"extra": torch.zeros(2)}),
    "a block one row short": dict(tensors=lambda t: t | {"block.1": t["block.1"][:-1]}),
    "float64 counts": dict(tensors=lambda t: t | {"count": t["count"].double()}),
    "changed values": dict(tensors=lambda t: t | {"activity": t["activity"] + 1}),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_statistics_files_are_refused_in_one_line(stats, tmp_path, case):
    path = tmp_path / "stats.safetensors"
    stats.save(path)
    crafted = rewrite(path, tmp_path / "crafted.safetensors", **CRAFTED[case])
    with pytest.raises(ValueError, match="not a readable statistics file") as info:
        Statistics.load(crafted)
    assert str(info.value).startswith(f"{crafted}: ") and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s.activity.__setitem__(0, float("nan")), "activity holds NaN"),
        (lambda s: s.count.__setitem__(0, -1.0), "not occurrence counts"),
        (lambda s: s.count.__setitem__(0, 0.5), "not occurrence counts"),
        (lambda s: s.count.__setitem__(0, s.count[0] + 1), "token counts sum to 31"),
        (lambda s: s.blocks.__setitem__(0, s.blocks[0].double()), "not float32"),
    ],
)
def test_statistics_with_bad_values_are_refused(stats, tmp_path, damage, message):
    """Saved with a valid checksum (save writes what it is given): the values are checked."""
    damage(stats)
    stats.save(tmp_path / "stats.safetensors")
    with pytest.raises(ValueError, match=message):
        Statistics.load(tmp_path / "stats.safetensors")


@pytest.mark.parametrize("where", ["truncated", "flipped"])
def test_damaged_statistics_files_are_refused(stats, tmp_path, where):
    path = tmp_path / "stats.safetensors"
    stats.save(path)
    data = bytearray(path.read_bytes())
    if where == "truncated":
        data = data[: len(data) // 2]
    else:
        data[-5] ^= 0x40  # one bit of the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{path}: not a readable statistics file"):
        Statistics.load(path)


# ----------------------------------------------------------------- gathering
def test_gathering_resumes_bit_for_bit_after_a_kill(
    replacement, tmp_path, random_rows, monkeypatch
):
    """A fault mid-gathering (as kill -9: no handler runs) loses only the rows since the last
    checkpoint; the resumed run equals an uninterrupted one bit for bit."""
    whole = gather_statistics(replacement, None, rows=7, n_ctx=8, progress=False)
    monkeypatch.setattr(statistics_module, "CHECKPOINT_EVERY", 2)
    add_run, calls = Statistics.add_run, itertools.count()

    def killed_at_row_6(self, run, replacement):
        if next(calls) == 5:
            raise RuntimeError("killed")
        add_run(self, run, replacement)

    path = tmp_path / "stats.safetensors"
    monkeypatch.setattr(Statistics, "add_run", killed_at_row_6)
    with pytest.raises(RuntimeError, match="killed"):
        gather_statistics(replacement, None, rows=7, n_ctx=8, progress=False, checkpoint=path)
    assert Statistics.load(path).meta["rows_done"] == 4  # the last checkpoint
    path.with_name(path.name + ".tmp").write_bytes(b"half a checkpoint")  # killed mid-save
    resumed_rows = itertools.count()

    def counted(self, run, replacement):
        next(resumed_rows)
        add_run(self, run, replacement)

    monkeypatch.setattr(Statistics, "add_run", counted)
    resumed = gather_statistics(replacement, None, rows=7, n_ctx=8, progress=False, checkpoint=path)
    assert next(resumed_rows) == 3  # rows 5..7 only
    assert_same(resumed, whole)
    assert_same(Statistics.load(path, replacement), whole)


def test_rows_extend_statistics_or_are_refused(replacement, tmp_path, random_rows):
    path = tmp_path / "stats.safetensors"
    gather_statistics(replacement, None, rows=2, n_ctx=8, progress=False, checkpoint=path)
    # More rows than the file holds: extended, the same as gathering them at once.
    extended = statistics_for(replacement, None, "random", path, rows=4)
    assert_same(extended, gather_statistics(replacement, None, rows=4, n_ctx=8, progress=False))
    assert Statistics.load(path).meta["rows_done"] == 4
    # No --rows: the file as it is.
    assert statistics_for(replacement, None, "random", path).meta["rows_done"] == 4
    # Fewer rows than it holds: refused, the file untouched.
    before = path.read_bytes()
    with pytest.raises(ValueError, match=f"{path}: holds statistics over 4 rows, more than the 3"):
        statistics_for(replacement, None, "random", path, rows=3)
    with pytest.raises(ValueError, match="more than the 3"):
        gather_statistics(replacement, None, rows=3, n_ctx=8, progress=False, checkpoint=path)
    # Other settings (another row stream) are refused, never overwritten.
    with pytest.raises(ValueError, match=f"{path}: holds statistics gathered with n_ctx 8"):
        gather_statistics(replacement, None, rows=4, n_ctx=12, progress=False, checkpoint=path)
    assert path.read_bytes() == before


# ----------------------------------------------------------------- global graphs
def test_global_graph_grows_from_the_start(replacement, units, stats, tmp_path):
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
    torch.testing.assert_close(graph.occurrences, stats.count[unit])
    assert not graph.positional
    down = global_graph(replacement, stats, units.unit("embedding", 0, 5), budget=6, upstream=False)
    assert down.settings["direction"] == "downstream"
    # The graph file of a global graph passes the loader's checks.
    down.save(tmp_path / "down.safetensors")
    back = Graph.load(tmp_path / "down.safetensors")
    assert back.ids == down.ids and (back.edges != down.edges).nnz == 0


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
        (["--start", "lorsa:1:2", "--rows", "-3"], "must be positive"),
        (["--start", "lorsa:1:x"], "expected lorsa:L:HEAD"),
        (["--start", "lorsa:1:2", "--stats", "/proc/stats.safetensors"], "--stats /proc/"),
    ],
)
def test_global_graph_cli_bad_input(tmp_path, capsys, args, message):
    from circuits.global_graph import main
    from toy_models.cli import run_cli

    out = tmp_path / "never"
    stats = tmp_path / "stats.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--out", str(out), "--stats", str(stats), *args])  # a later --stats wins
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error:") and message in err, err
    assert not out.exists() and not stats.exists()


@pytest.mark.parametrize(
    "args, code",
    [(["--help"], 0), (["--start", "head:1:2"], 2), (["--start", "lorsa:1:2", "--budget", "0"], 2)],
)
def test_global_graph_cli_parses_arguments_before_importing_torch(fresh_cli, tmp_path, args, code):
    got, heavy, err = fresh_cli("circuits.global_graph", [*args, "--out", str(tmp_path / "x")])
    assert got == code, err[-2000:]
    assert heavy == [], err[-2000:]
    assert not (tmp_path / "x").exists()


def test_qk_circuit(replacement, units, stats):
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
