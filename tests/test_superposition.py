"""Attention superposition (circuits.superposition, reports.superposition): the MHSA head split,
the betas against brute force, and Lorsa layers built from MHSA heads whose answer is known
(one head: share 1; an even mix of two heads with identical patterns and values: 0.5 / 0.5;
``3 e_0 + e_2``: 0.75 / 0.25), on a random toy model and on one whose heads write into
separate blocks of the residual stream."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from circuits import superposition as S
from replacement.model import ReplacementModel

ROWS = [
    [0, 5, 7, 9, 11, 5, 7, 3, 2, 14, 6],
    [0, 3, 3, 8, 2],
    [0, 1, 4, 9, 12, 13, 1, 4, 9, 2, 2, 7],
]
ROWS += [[0] + [(7 * r + 3 * p) % 49 + 1 for p in range(15)] for r in range(10)]


def _x(model, layer: int, tokens) -> torch.Tensor:
    name = f"blocks.{layer}.ln1.hook_normalized"
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == name)
    return cache[name]


def test_mhsa_heads_add_up_to_the_attention_output(random_model):
    tokens = torch.tensor([ROWS[0]])
    with torch.no_grad():
        for l, block in enumerate(random_model.blocks):
            x = _x(random_model, l, tokens)
            pattern, out = S.mhsa_heads(block.attn, x)
            torch.testing.assert_close(out.sum(2) + block.attn.b_O, block.attn(x))
            torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))


def test_pattern_overlap_is_one_for_identical_patterns_and_zero_for_disjoint():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    b = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.3, 0.7]])
    overlap = S.pattern_overlap(a[:, None], torch.stack([a, b], 1))  # query qk head
    torch.testing.assert_close(overlap[:, 0], torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.8]]))


# ----------------------------------------------------------------- the split against brute force
def _brute_force(replacement, rows, layer: int):
    """For ``layer``: z (token ov), each head's part c_h (token ov head: 0 where the Lorsa
    head does not fire) and the bias part (token ov), one token at a time through the toy
    model's own hooks (``hook_z`` of each head times its ``W_O``) and a least-squares solve."""
    model, lorsa = replacement.model, replacement.lorsas[layer]
    attn = model.blocks[layer].attn
    outs, zs = [], []
    for row in rows:
        names = [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.ln1.hook_normalized"]
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([row]), names_filter=names)
            head_z = cache[f"blocks.{layer}.attn.hook_z"][0]  # pos head d_head
            outs.append(torch.einsum("phe,hed->phd", head_z, attn.W_O).double())
            zs.append(lorsa.encode(cache[f"blocks.{layer}.ln1.hook_normalized"])[0].double())
    o, z = torch.cat(outs), torch.cat(zs)
    W = lorsa.W_O.detach().double()
    parts = torch.zeros(len(z), W.shape[0], o.shape[1], dtype=torch.float64)
    bias = torch.zeros(len(z), W.shape[0], dtype=torch.float64)
    offset = (attn.b_O - lorsa.b_D).detach().double()
    for t in range(len(z)):
        firing = (z[t] > 0).nonzero().flatten()
        if len(firing):
            Ws = W[firing]
            gram = Ws @ Ws.T
            gram += torch.eye(len(firing), dtype=torch.float64) * S.RIDGE * gram.diagonal().mean()
            M = torch.linalg.solve(gram, Ws)  # firing d_model
            parts[t, firing] = M @ o[t].T
            bias[t, firing] = M @ offset
    return z, parts, bias


def _slope(z, a):
    """Least-squares slope (with intercept) of ``a`` (token ov ...) on ``z`` (token ov)."""
    zc = z - z.mean(0)
    zc = zc.reshape(*zc.shape, *([1] * (a.ndim - 2)))
    return (zc * (a - a.mean(0))).sum(0) / zc.pow(2).sum(0)


def test_the_split_equals_brute_force_and_adds_up(random_model, make_replacement):
    replacement = make_replacement(random_model, n_qk=2, n_ov=8, lorsa_k=3)
    result = S.measure(replacement, ROWS, batch_rows=4, min_fires=1)
    for layer, shares in enumerate(result.layers):
        z, parts, bias = _brute_force(replacement, ROWS, layer)
        assert shares.tokens == len(z) == sum(len(r) for r in ROWS)
        assert torch.equal(shares.fires, (z > 0).sum(0))
        m = shares.measured
        assert m.any()
        beta, bias_slope = _slope(z, parts), _slope(z, bias)
        torch.testing.assert_close(shares.beta[m].double(), beta[m], rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(shares.bias[m].double(), bias_slope[m], rtol=1e-3, atol=1e-4)
        # exact bookkeeping: the parts add up to the refit c, whose slope is the sum of slopes
        refit = _slope(z, parts.sum(-1) + bias)
        torch.testing.assert_close(shares.refit[m].double(), refit[m], rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(shares.share[m].sum(1), torch.ones(int(m.sum())))
        assert (shares.share >= 0).all() and (shares.share[~m] == 0).all()
        assert (shares.agreement >= -1e-6).all() and (shares.agreement <= 1 + 1e-5).all()
        assert set(shares.fit) == {"refit", "projection"}


def test_batches_do_not_change_the_result(random_model, make_replacement):
    replacement = make_replacement(random_model, n_qk=2, n_ov=8, lorsa_k=3)
    one = S.measure(replacement, ROWS, batch_rows=1, min_fires=1)
    many = S.measure(replacement, ROWS, batch_rows=5, min_fires=1)
    for a, b in zip(one.layers, many.layers, strict=True):
        assert torch.equal(a.fires, b.fires) and torch.equal(a.measured, b.measured)
        torch.testing.assert_close(a.beta, b.beta, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.agreement, b.agreement, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.top_value, b.top_value)
        # the top examples: the largest activations, each at a real token
        for i in range(a.top_value.shape[0]):
            for value, index in zip(a.top_value[i], a.top_index[i], strict=True):
                if value > 0:
                    row, pos = one.where(int(index))
                    assert 0 <= pos < len(ROWS[row])


# ----------------------------------------------------------------- constructed cases
def _with_lorsa(model, layer: int, lorsa, make_layers) -> ReplacementModel:
    lorsas, transcoders = make_layers(model.cfg.n_layers, model.cfg.d_model)
    lorsas[layer] = lorsa
    return ReplacementModel(model, lorsas, transcoders).eval()


def _private_pairs(attn, groups, generator):
    """For each group of heads: ``(heads, u)`` and ``(heads, -u)`` with u only those heads
    write along and orthogonal to the earlier groups' (one of the pair fires wherever the
    other does not; the writes of heads that can fire together are orthogonal)."""
    ov, done = [], []
    for heads in groups:
        u = S.private_direction(attn, heads, generator, orthogonal_to=done)
        done.append(u)
        ov += [(heads, u), (heads, -u)]
    return ov


def test_a_head_made_from_one_mhsa_head_has_share_one(random_model, make_layers):
    """On a random model (the heads' write spaces overlap): Lorsa heads 2h and 2h + 1 read
    and write head h's output along a direction no other head writes along."""
    attn = random_model.blocks[1].attn
    ov = _private_pairs(attn, [[0], [1], [2]], torch.Generator().manual_seed(0))
    lorsa = S.constructed_lorsa(attn, [0, 1, 2], ov)
    result = S.measure(_with_lorsa(random_model, 1, lorsa, make_layers), ROWS, min_fires=5)
    shares = result.layers[1]
    m = shares.measured
    assert m.view(3, 2).any(1).all()
    expected = torch.eye(3).repeat_interleave(2, 0)
    torch.testing.assert_close(shares.share[m], expected[m], atol=1e-5, rtol=0)
    off = expected[m] == 0
    torch.testing.assert_close(shares.beta[m][off], torch.zeros(int(off.sum())), atol=1e-5, rtol=0)
    # the refit is the activation, up to the ridge
    ridge = torch.full((int(m.sum()),), 1 / (1 + S.RIDGE))
    torch.testing.assert_close(shares.refit[m], ridge, atol=1e-5, rtol=0)
    assert shares.fit["refit"]["relative_error"] < 2e-3
    # its pattern is head h's own
    fired = shares.fires > 0
    agreement = shares.agreement[fired]
    torch.testing.assert_close(
        agreement[expected[fired] == 1], torch.ones(int(fired.sum())), atol=1e-5, rtol=0
    )
    assert (agreement[expected[fired] == 0] < 0.999).all()
    assert not shares.spread(0.9).any()
    torch.testing.assert_close(
        shares.effective_heads[m], torch.ones(int(m.sum())), atol=1e-4, rtol=0
    )


def test_co_firing_heads_with_overlapping_writes_keep_their_own_head(random_model, make_layers):
    """Heads 0 and 1 each write one direction (u, v, cosine 0.6) with a positive amount, head
    2 writes nothing: Lorsa heads made from head 0 along u and head 1 along v fire together
    everywhere and reconstruct the layer exactly. Each keeps share 1 for its own head; the
    projection on u alone would also collect head 1's write (fit["projection"])."""
    attn = random_model.blocks[1].attn
    u = torch.zeros(24)
    u[0] = 1.0
    v = torch.zeros(24)
    v[0], v[1] = 0.6, 0.8
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for h, w in ((0, u), (1, v)):
            r = torch.randn(8, generator=g)
            attn.W_O[h] = torch.outer(r, w)
            attn.b_V[h] += 20.0 * r / r.pow(2).sum()  # its amount along w: 20 + noise
        attn.W_O[2] = 0.0
    lorsa = S.constructed_lorsa(attn, [0, 1], [([0], u), ([1], v)])
    result = S.measure(_with_lorsa(random_model, 1, lorsa, make_layers), ROWS, min_fires=5)
    shares = result.layers[1]
    assert (shares.fires == shares.tokens).all()
    torch.testing.assert_close(shares.share, torch.eye(2, 3), atol=2e-3, rtol=0)
    assert shares.fit["refit"]["relative_error"] < 2e-3
    assert shares.fit["projection"]["relative_error"] > 0.3


@pytest.fixture
def block_model(random_model):
    """The random model with layer 1's heads writing into separate blocks of the residual
    stream (head h: coordinates 8h .. 8h + 7), head 2 a copy of head 0 (same pattern, same
    value, its own block), and value biases that keep every head's output along its block's
    first four coordinates positive (so that the Lorsa heads below fire everywhere)."""
    attn = random_model.blocks[1].attn
    with torch.no_grad():
        W_O = torch.zeros_like(attn.W_O)
        for h in range(3):
            W_O[h, :, 8 * h : 8 * h + 8] = attn.W_O[h, :, 8 * h : 8 * h + 8]
        for name in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V"):
            getattr(attn, name)[2] = getattr(attn, name)[0]
        W_O[2, :, 16:24] = W_O[0, :, 0:8]
        attn.W_O.copy_(W_O)
        for h in range(3):  # a value bias that writes 20 on the block's first 4 coordinates
            write = attn.W_O[h, :, 8 * h : 8 * h + 4]  # d_head 4
            attn.b_V[h] += torch.linalg.pinv(write).T @ torch.full((4,), 20.0)
    return random_model


def _e(h: int, c: int = 0) -> torch.Tensor:
    u = torch.zeros(24)
    u[8 * h + c] = 1.0
    return u


def test_mixes_of_heads_get_their_known_shares(block_model, make_layers):
    attn = block_model.blocks[1].attn
    ov = [
        ([1], _e(1, 0)), ([1], _e(1, 3)),                          # QK head 1: head 1 alone
        ([0, 2], _e(0, 0) + _e(2, 0)), ([0, 2], 3 * _e(0, 1) + _e(2, 1)),  # QK head 0: mixes
        ([0], _e(0, 2)), ([2], _e(2, 3)),                          # QK head 0 (= head 2's)
    ]  # fmt: skip
    lorsa = S.constructed_lorsa(attn, [1, 0, 0], ov)
    replacement = _with_lorsa(block_model, 1, lorsa, make_layers)
    result = S.measure(replacement, ROWS, min_fires=5)
    shares = result.layers[1]
    expected = torch.tensor(
        [[0, 1, 0], [0, 1, 0], [0.5, 0, 0.5], [0.75, 0, 0.25], [1, 0, 0], [0, 0, 1.0]]
    )
    assert shares.measured.all()
    torch.testing.assert_close(shares.share, expected, atol=1e-5, rtol=0)
    # the refit is the activation, up to the ridge (relative to the co-firing writes' norms)
    torch.testing.assert_close(shares.refit, torch.ones(6), atol=10 * S.RIDGE, rtol=0)
    torch.testing.assert_close(shares.against, torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        shares.effective_heads, torch.tensor([1, 1, 2, 1 / 0.625, 1, 1]), atol=1e-4, rtol=0
    )
    # heads 0 and 2 have one pattern: every head of QK head 0 agrees with both fully
    torch.testing.assert_close(shares.agreement[2:, [0, 2]], torch.ones(4, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(shares.agreement[:2, 1], torch.ones(2), atol=1e-5, rtol=0)

    spread = S.spread_fractions(result.layers[1:2], (0.5, 0.7, 0.9))
    assert spread["0.5"]["fraction"] == 0
    assert spread["0.7"]["spread"] == 1 and spread["0.7"]["fraction"] == pytest.approx(1 / 6)
    assert spread["0.9"]["spread"] == 2 and spread["0.9"]["measured"] == 6

    families = {"a": [0, 1], "b": [2], "c": [4, 5]}
    hosts = S.hosting(shares, families, host_share=0.3)
    assert [h["hosted"] for h in hosts] == [3, 2, 2]  # head 0: 2, 3, 4; head 2: 2, 5
    primary = [h["primary"] for h in hosts]  # the even mix goes to head 0 or head 2
    assert primary[1] == 2 and primary[0] + primary[2] == 4 and min(primary) >= 1
    assert [h["families"] for h in hosts] == [["b", "c"], ["a"], ["b", "c"]]
    assert hosts[0]["hosted_heads"] == [2, 3, 4]
    matrix = S.family_matrix(shares, families, ["a", "b", "c"])
    torch.testing.assert_close(
        matrix,
        torch.tensor([[0, 0.5, 1, 0.75], [2, 0, 0, 0], [0, 0.5, 1, 0.25]]),
        atol=1e-5, rtol=0,
    )  # fmt: skip

    # one firing of the 3:1 mix: head 0 carries three times what head 2 does, head 1 nothing
    row, pos = result.where(int(shares.top_index[3, 0]))
    detail = S.firing_detail(replacement, ROWS[row], 1, 3, pos)
    assert detail["z"] == pytest.approx(float(shares.top_value[3, 0]), rel=1e-5)
    assert detail["c"] == pytest.approx(detail["z"], rel=10 * S.RIDGE)  # up to the ridge
    assert sum(detail["c_h"]) + detail["bias"] == pytest.approx(detail["c"], rel=1e-4)
    assert detail["c_h"][0] == pytest.approx(3 * detail["c_h"][2], rel=1e-3, abs=1e-4)
    assert detail["c_h"][1] == 0
    assert detail["mhsa_attention"][0] == pytest.approx(detail["lorsa_attention"], abs=1e-4)


def test_rare_heads_are_not_measured(random_model, make_replacement):
    replacement = make_replacement(random_model, n_qk=2, n_ov=8, lorsa_k=1)
    result = S.measure(replacement, ROWS[:2], min_fires=1000)
    for shares in result.layers:
        assert not shares.measured.any() and (shares.share == 0).all()
        assert S.spread_fractions([shares])["0.7"]["fraction"] == 0


def test_rows_are_checked(random_model, make_replacement):
    replacement = make_replacement(random_model)
    with pytest.raises(ValueError, match="rows must be"):
        S.measure(replacement, [])
    with pytest.raises(ValueError, match="rows must be"):
        S.measure(replacement, [[0] * 17])


# ----------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--model", "gpt5"], "unknown model 'gpt5'"),
        (["--rows", "0"], "--rows must be"),
        (["--min-fires", "0"], "--min-fires must be"),
        (["--thresholds", "0.7,2"], "--thresholds must lie in (0, 1], got 2"),
        (["--thresholds", "1.5"], "--thresholds must lie in (0, 1], got 1.5"),  # not "(1.5,)"
        # a review: measured once without a word
        (["--thresholds", "0.5,0.50"], "--thresholds 0.5,0.50: 0.5 is given twice"),
        (["--host-share", "0"], "--host-share"),
        (["--out", "{file}"], "exists and is not a directory"),
    ],
)
def test_cli_bad_input(args, match, tmp_path, fresh_cli):
    (tmp_path / "file").write_text("")
    args = [a.format(file=tmp_path / "file") for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code, heavy, stderr = fresh_cli("reports.superposition", args)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], stderr
    assert heavy == [], f"{args} imported {heavy}"
    assert not (tmp_path / "out").exists()


def test_cli_help_imports_no_torch(fresh_cli):
    code, heavy, stderr = fresh_cli("reports.superposition", ["--help"])
    assert (code, heavy, stderr) == (0, [], "")


def test_cli_end_to_end_on_a_tiny_model(tiny_run, tiny_pretrained, make_layers, tmp_path, capsys):
    """A replacement set whose layer-0 Lorsa is built from the tiny model's own heads: every
    measured head carries share 1 for the head it was made from."""
    from reports.superposition import main

    model, _ = tiny_pretrained
    attn = model.blocks[0].attn
    n_heads = model.cfg.n_heads
    groups = [[h] for h in range(n_heads)]
    ov = _private_pairs(attn, groups, torch.Generator().manual_seed(0))
    lorsa = S.constructed_lorsa(attn, list(range(n_heads)), ov)
    lorsas, transcoders = make_layers(model.cfg.n_layers, model.cfg.d_model, n_qk=2, n_ov=16)
    lorsas[0] = lorsa
    ReplacementModel(model, lorsas, transcoders).save(tmp_path / "rep", str(tiny_run))
    out = tmp_path / "sp"
    args = ["--model", str(tiny_run), "--replacement", str(tmp_path / "rep"), "--out", str(out),
            "--rows", "16", "--heads-docs", "2", "--min-fires", "3", "--quiet"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        from toy_models.cli import run_cli

        run_cli(main, args)
    assert exit_info.value.code == 0, capsys.readouterr().err
    results = json.loads((out / "superposition.json").read_text())
    layer0 = results["layers"][0]
    measured = layer0["heads"]  # the measured ones
    assert measured, "no constructed head fired often enough"
    for h in measured:
        assert h["top_head"] == h["head"] // 2 and h["top_share"] == pytest.approx(1, abs=1e-3)
    assert results["spread"]["0.7"]["per_layer"][0] == 0
    assert len(results["layers"][0]["mhsa"]) == n_heads
    page = (out / "superposition.md").read_text()
    assert "## Summary" in page and "## Worked examples" in page
    # the headline with every other threshold beside it, and the paper's figure as its own
    # measure's (a reviewer read the report's 0.7 figure and the README's 0.5 one against it)
    for t, row in results["spread"].items():
        assert f"{row['fraction']:.1%}" in page, t
    assert "by its own measure, which this one need not match" in page
    # each worked example's unit shows what its share is a share of: the heads' and the
    # biases' slopes and the heads against it (a reviewer's L3.520 read "share 0.89" where the
    # heads carried 0.47 of its slope, the biases 0.56, heads against it 0.51)
    by_head = {h["head"]: h for h in measured}
    rows = 0
    for ex in (e for e in results["examples"] if e["layer"] == 0):
        for u in ex["units"]:
            h = by_head[u["head"]]
            assert (u["from_heads"], u["bias"], u["against"]) == (
                h["from_heads"], h["bias"], h["against"])  # fmt: skip
            cell = f"| {h['from_heads']:.2f} + {h['bias']:.2f} ({h['against']:.2f}) |"
            assert f"| L0.{u['head']} | " in page and cell in page
            rows += 1
    assert rows and "slope: heads + biases (against)" in page
    for name in ("superposition.png", "top_share.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp"))
    assert "wrote" in capsys.readouterr().out


def test_the_benchmark_runs_to_its_results_on_a_tiny_model(
    tiny_run, tiny_pretrained, make_layers, tmp_path, cli, monkeypatch
):
    """``benchmarks/superposition.py`` end to end in seconds (nothing else runs the benchmarks:
    its call of ``reports.superposition.analyse`` was a TypeError for a while after the report's
    labels moved out of it), its results file written in a temporary folder."""
    from conftest import benchmark

    from reports import superposition as R

    model, _ = tiny_pretrained
    lorsas, transcoders = make_layers(model.cfg.n_layers, model.cfg.d_model, n_qk=2, n_ov=16)
    ReplacementModel(model, lorsas, transcoders).save(tmp_path / "rep", str(tiny_run))
    bench = benchmark("superposition")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(R, "HEADS_DOCS", 2)  # the CLI's defaults, which the benchmark keeps
    monkeypatch.setattr(R, "MIN_FIRES", 3)
    args = ["--model", tiny_run, "--replacement", tmp_path / "rep", "--rows", 16,
            "--validation-rows", 4, "--out", tmp_path / "sp"]  # fmt: skip
    code, _, err = cli(bench.main, *args)
    assert code == 0, err
    record = json.loads((tmp_path / "results" / f"superposition_{tiny_run.name}.json").read_text())
    assert len(record["per_layer"]) == model.cfg.n_layers and "validation" in record
    assert {"rows_per_half", "spread"} <= set(record["split_half"])
    assert (tmp_path / "sp" / "superposition.md").is_file()


@pytest.mark.parametrize("content", [b"", b"not a safetensors file"])
def test_a_bad_dashboards_file_is_refused_before_the_measurement(
    content, tiny_run, tiny_pretrained, make_layers, tmp_path, cli, monkeypatch
):
    """Found by a fuzz pass: an unreadable --dashboards file was refused only after the whole
    measurement (a minute or more). It is read, with the same checks, before any of it."""
    from reports.superposition import main

    def measure(*args, **kwargs):
        raise AssertionError("measured before the dashboards file was read")

    monkeypatch.setattr(S, "measure", measure)
    model, _ = tiny_pretrained
    lorsas, transcoders = make_layers(model.cfg.n_layers, model.cfg.d_model, n_qk=2, n_ov=16)
    ReplacementModel(model, lorsas, transcoders).save(tmp_path / "rep", str(tiny_run))
    (tmp_path / "dash.safetensors").write_bytes(content)
    out = tmp_path / "sp"
    code, _, err = cli(main, "--model", tiny_run, "--replacement", tmp_path / "rep", "--out", out,
                       "--dashboards", tmp_path / "dash.safetensors", "--quiet")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: dashboards file {tmp_path / 'dash.safetensors'}:"), err
    assert not out.exists()


def test_a_measurement_of_no_heads_is_refused(
    tiny_run, tiny_pretrained, make_layers, tmp_path, cli
):
    """Found by a fuzz pass: with no head measured (``--min-fires`` above every head's
    firings) the report said "0.0% spread" against the paper's 25%, cells "0.0% (0/0)", exit
    0. No figure of it is defined: refused in one line, nothing written."""
    from reports.superposition import main

    model, _ = tiny_pretrained
    lorsas, transcoders = make_layers(model.cfg.n_layers, model.cfg.d_model, n_qk=2, n_ov=16)
    ReplacementModel(model, lorsas, transcoders).save(tmp_path / "rep", str(tiny_run))
    out = tmp_path / "sp"
    code, _, err = cli(main, "--model", tiny_run, "--replacement", tmp_path / "rep", "--out", out,
                       "--rows", "4", "--min-fires", "100000", "--quiet")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "no Lorsa head fired 100000 times in 4 rows" in err and not out.exists()


@pytest.mark.parametrize("min_fires", ["257", "100000000000000000000"])
def test_a_min_fires_above_the_rows_tokens_is_refused_before_the_measurement(
    min_fires, tiny_run, tiny_pretrained, make_layers, tmp_path, cli, monkeypatch
):
    """Found by a fuzz pass: ``--min-fires 100000000000000000000`` ended in an OverflowError
    traceback after the model loaded. A head fires at most once a token: more firings than
    the rows' tokens (4 rows of 64: 256) are refused in one line before the measurement."""
    from reports.superposition import main

    def measure(*args, **kwargs):
        raise AssertionError("measured a --min-fires no head can reach")

    monkeypatch.setattr(S, "measure", measure)
    model, _ = tiny_pretrained
    assert model.cfg.n_ctx == 64
    lorsas, transcoders = make_layers(model.cfg.n_layers, model.cfg.d_model, n_qk=2, n_ov=16)
    ReplacementModel(model, lorsas, transcoders).save(tmp_path / "rep", str(tiny_run))
    out = tmp_path / "sp"
    code, _, err = cli(main, "--model", tiny_run, "--replacement", tmp_path / "rep", "--out", out,
                       "--rows", "4", "--min-fires", min_fires, "--quiet")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"no Lorsa head fired {min_fires} times in 4 rows: a head fires at most once a " \
        "token, 256 times in 4 rows of 64" in err, err  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--examples", "5", "--examples 5: a worked example is one MHSA head and the model has 4 "
         "(2 layers of 2)"),
        ("--examples", "100000000000000000000", "--examples 100000000000000000000: a worked"),
        ("--units", "17", "--units 17: a worked example's units are Lorsa heads of its layer, "
         "and a layer has at most 16"),
        ("--units", "100000000000000000000", "--units 100000000000000000000: a worked"),
    ],
)  # fmt: skip
def test_examples_and_units_beyond_the_model_are_refused_before_the_measurement(
    flag, value, said, tiny_run, tiny_pretrained, make_layers, tmp_path, cli, monkeypatch
):
    """A fuzz pass: ``--examples`` and ``--units`` took any count (10**20 too), measured for a
    minute or more and wrote the few there are. An example is an MHSA head (the tiny model has
    2 x 2) and its units Lorsa heads of its layer (16 here): more is refused in one line
    before the measurement, exit 2; the bounds themselves pass."""
    from reports.superposition import main

    def measure(*args, **kwargs):
        raise AssertionError("measured for worked examples the model cannot have")

    monkeypatch.setattr(S, "measure", measure)
    model, _ = tiny_pretrained
    lorsas, transcoders = make_layers(model.cfg.n_layers, model.cfg.d_model, n_qk=2, n_ov=16)
    replacement = ReplacementModel(model, lorsas, transcoders)
    replacement.save(tmp_path / "rep", str(tiny_run))
    out = tmp_path / "sp"
    code, _, err = cli(main, "--model", tiny_run, "--replacement", tmp_path / "rep", "--out", out,
                       "--rows", "4", flag, value, "--quiet")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert said in err, err
    assert not out.exists()
    from reports.superposition import check_example_sizes

    check_example_sizes(SimpleNamespace(examples=4, units=16), replacement)


@pytest.mark.parametrize(("meta", "why"), [
    ({"mode": "sparse", "rows_done": 8, "rows": 8}, "built in sparse mode, not local"),
    ({"mode": "local", "rows_done": 3, "rows": 8}, "an unfinished build (3 of 8 rows)"),
])  # fmt: skip
def test_a_dashboards_file_of_another_mode_or_unfinished_is_refused(
    meta, why, tiny_run, tiny_pretrained, make_layers, tmp_path, cli, monkeypatch
):
    """Found by a fuzz pass: a sparse-mode or unfinished dashboards file gave the report its
    concept labels without a word (labels from another run of the model, or from part of a
    pass), where ``circuits.trace`` refuses the same file."""
    from types import SimpleNamespace

    import circuits.dashboards as dashboards
    from reports.superposition import main

    def measure(*args, **kwargs):
        raise AssertionError("measured before the dashboards file was read")

    def read_file(path, replacement, tokenizer):
        return SimpleNamespace(meta=meta, finished=meta["rows_done"] == meta["rows"])

    monkeypatch.setattr(S, "measure", measure)
    monkeypatch.setattr(dashboards, "read_file", read_file)
    model, _ = tiny_pretrained
    lorsas, transcoders = make_layers(model.cfg.n_layers, model.cfg.d_model, n_qk=2, n_ov=16)
    ReplacementModel(model, lorsas, transcoders).save(tmp_path / "rep", str(tiny_run))
    (tmp_path / "dash.safetensors").write_bytes(b"read by the stand-in")
    out = tmp_path / "sp"
    code, _, err = cli(main, "--model", tiny_run, "--replacement", tmp_path / "rep", "--out", out,
                       "--dashboards", tmp_path / "dash.safetensors", "--quiet")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.strip() == f"error: --dashboards {tmp_path / 'dash.safetensors'}: {why}" + (
        ": finish it with python -m circuits.dashboard_cli" if "unfinished" in why else ""
    )
    assert not out.exists()


def test_heads_positions_and_counts_are_checked(random_model, make_replacement):
    """Found by a fuzz pass: head -1 was read from the end (family_matrix credited the last
    Lorsa head, constructed_lorsa copied the last MHSA head's QK), a zero direction built a
    NaN W_V, top_k=0 became n_ov, batch_rows=-1 measured nothing, and firing_detail failed
    with an IndexError on a head that does not fire (or a KeyError on layer -1)."""
    replacement = make_replacement(random_model, n_qk=2, n_ov=8, lorsa_k=3)
    with pytest.raises(ValueError, match="batch_rows must be a positive integer, got -1"):
        S.measure(replacement, ROWS, batch_rows=-1)
    shares = S.measure(replacement, ROWS[:3], min_fires=1).layers[0]
    for bad, match in ((-1, "head -1 is outside 0..7"), (1.0, "must be an integer, got 1.0")):
        with pytest.raises(ValueError, match=match):
            S.family_matrix(shares, {"x": [bad]}, ["x"])
        with pytest.raises(ValueError, match=match):
            S.hosting(shares, {"x": [bad]})

    attn = random_model.blocks[1].attn
    u = torch.ones(24)
    with pytest.raises(ValueError, match=r"qk_heads\[0\] -1 is outside 0..2"):
        S.constructed_lorsa(attn, [-1], [([0], u)])
    with pytest.raises(ValueError, match=r"ov_heads\[0\] head -1 is outside 0..2"):
        S.constructed_lorsa(attn, [0], [([-1], u)])
    with pytest.raises(ValueError, match=r"ov_heads\[0\] direction is zero"):
        S.constructed_lorsa(attn, [0], [([0], torch.zeros(24))])
    with pytest.raises(ValueError, match=r"ov_heads\[0\] direction must be a finite tensor"):
        S.constructed_lorsa(attn, [0], [([0], torch.ones(23))])
    with pytest.raises(ValueError, match="top_k must be a positive integer, got 0"):
        S.constructed_lorsa(attn, [0], [([0], u), ([1], u)], top_k=0)
    assert S.constructed_lorsa(attn, [0], [([0], u), ([1], u)]).cfg.top_k == 2

    ids = ROWS[0]
    x = _x(random_model, 1, torch.tensor([ids]))
    with torch.no_grad():
        z = replacement.lorsas[1].encode(x)[0, 4]
    fires, silent = int(z.argmax()), int((z == 0).nonzero()[0])
    assert S.firing_detail(replacement, ids, 1, fires, 4)["z"] == pytest.approx(float(z[fires]))
    for args, match in [
        ((1, silent, 4), f"head {silent} of layer 1 does not fire at pos 4"),
        ((1, -1, 4), "head -1 is outside 0..7"),
        ((1, float(fires), 4), "head must be an integer"),
        ((1, fires, -1), "pos -1 is outside 0..10"),
        ((1, fires, 11), "pos 11 is outside 0..10"),
        ((-1, fires, 4), "layer -1 is outside 0..1"),
    ]:
        with pytest.raises(ValueError, match=match):
            S.firing_detail(replacement, ids, *args)


def test_report_medians_of_an_even_count_are_the_mean_of_the_middle_two():
    """The hosted heads' median of the default's 32 MHSA heads read 72, the upper of the two
    middle values (71 and 72), and the slopes' medians the lower one (``Tensor.median``)."""
    from reports.superposition import _median, _stats

    assert _stats([46, 71, 72, 115]) == {"min": 46, "median": 71.5, "max": 115, "mean": 76.0}
    assert _stats([1, 3, 3, 9])["median"] == 3 and _stats([5, 1, 2])["median"] == 2
    assert _median(torch.tensor([1.0, 2.0, 4.0, 8.0])) == 3.0
    assert _median(torch.tensor([1.0, 2.0, 4.0])) == 2.0
    assert _median(torch.tensor([])) is None
