"""Lorsa ablations (replacement.ablations, benchmarks/lorsa_ablations.py), the error analysis
(replacement.errors, reports.errors, benchmarks/error_analysis.py) and their reports, on
tiny models where the answer is known."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import benchmark, deleting

from replacement.ablations import (
    SWEPT,
    CachedLayerRows,
    LayerEvaluation,
    SweepAxes,
    Variant,
    sweep_variants,
    train_variant,
    unique_variants,
)
from replacement.dictionaries import fvu, init_lorsa_from_heads
from replacement.errors import (
    bin_labels,
    concentration,
    error_shares,
    position_bins,
    shared_direction,
    top_tokens,
)
from replacement.evaluate import MIN_GAP
from replacement.lorsa import LorsaConfig, LorsaLayer
from replacement.train import SHAPES, ReplacementTrainConfig
from replacement.transcoder import Transcoder, TranscoderConfig

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- the sweep's variants
def test_sweep_variants_share_the_base_run_and_have_unique_names():
    base = SHAPES["default"]
    axes = sweep_variants(base, SweepAxes())
    runs = unique_variants(axes)
    names = [v.name for v in runs]
    assert len(names) == len(set(names)) == 4 + 4 + 4 + 4 + 1  # K, SAE, QK heads, d_qk, control
    base_name = Variant("lorsa", 32, 1024, 16, 16).name
    for axis in ("k", "qk_heads", "d_qk"):
        assert base_name in [v.name for v in axes[axis]]
    assert [v.top_k for v in axes["sae"]] == [8, 16, 32, 64]
    assert all(v.width == 1024 for v in runs)
    assert axes["control"][0].qk_init == "random"
    # the axes a results file must hold (``SWEPT``, read by the report's checks), each its kind
    assert {a: {v.kind for v in vs} for a, vs in axes.items()} == {
        a: {kind} for a, kind in SWEPT.items()
    }
    with pytest.raises(ValueError, match="multiple"):
        Variant("lorsa", 4, 32, 3, 8)


# ----------------------------------------------------------------- QK rank
def _pattern_of(model, x, layer: int) -> torch.Tensor:
    attn = model.blocks[layer].attn
    q = torch.einsum("bpd,hde->bhpe", x, attn.W_Q) + attn.b_Q[:, None]
    k = torch.einsum("bpd,hde->bhpe", x, attn.W_K) + attn.b_K[:, None]
    n = x.shape[1]
    scores = q @ k.transpose(-1, -2) / attn.W_Q.shape[-1] ** 0.5
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def test_initialised_qk_reproduces_the_heads_at_and_above_their_rank(random_model, monkeypatch):
    """The initialisation copies QK at any rank: the heads' own weights at d_qk = d_head, else
    from each head's SVD. A rank >= d_head reproduces its patterns (extra dimensions at 0); a
    lower rank cannot. (The initialisation once left a fresh layer's random QK in place at any
    rank but the head dimension.)"""
    from replacement import dictionaries

    monkeypatch.setattr(dictionaries, "PAD_SCALE", 0.0)
    torch.manual_seed(0)
    d = random_model.cfg.d_model
    x = torch.randn(2, 10, d)
    want = _pattern_of(random_model, x, 0)  # 3 heads of dimension 8
    attn = random_model.blocks[0].attn
    errors, fresh = {}, {}
    for d_qk in (2, 8, 16):
        lorsa = LorsaLayer(LorsaConfig(d, 3, 6, d_qk, 6))
        fresh[d_qk] = (lorsa.patterns(2.0 * x) - want).abs().max().item()
        init_lorsa_from_heads(lorsa, attn, s_x=2.0, s_y=1.0, y_mean=torch.zeros(d), seed=0)
        got = lorsa.patterns(2.0 * x)  # inputs scaled by s_x, as in training
        errors[d_qk] = (got - want).abs().max().item()
    assert errors[8] < 1e-4 and errors[16] < 1e-4
    assert errors[2] > 1e-2
    assert fresh[16] > 1e-2  # the random QK the layer was built with: replaced


def test_fewer_qk_heads_than_heads_copy_those_heads_at_their_own_scale(random_model):
    """One QK head for a 3-head layer copies head 0; with every OV head kept its output is
    head 0's output (not 3x it, as when the cover count was the average over heads)."""
    torch.manual_seed(0)
    tokens = torch.randint(0, random_model.cfg.d_vocab, (2, random_model.cfg.n_ctx))
    with torch.no_grad():
        _, cache = random_model.run_with_cache(tokens)
        attn = random_model.blocks[0].attn
        head0 = cache["blocks.0.attn.hook_z"][:, :, 0] @ attn.W_O[0]
        d = random_model.cfg.d_model
        lorsa = LorsaLayer(LorsaConfig(d, 1, 16, 8, 16))  # 16 = a +/- pair per value dimension
        init_lorsa_from_heads(lorsa, attn, 1.0, 1.0, torch.zeros(d), seed=0)
        out = lorsa(cache["blocks.0.ln1.hook_normalized"])
    torch.testing.assert_close(out, head0, atol=1e-4, rtol=1e-4)


def test_a_rank_that_holds_the_heads_recovers_them_better_than_a_smaller_one(random_model):
    """Attention of a random model, whose heads are exactly representable at d_qk = d_head
    (8) and not at 2: after the same short training, the larger rank explains more."""
    torch.manual_seed(0)
    model, layer = random_model, 0
    tokens = torch.randint(0, model.cfg.d_vocab, (40, model.cfg.n_ctx))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    x, y = cache["blocks.0.ln1.hook_normalized"], cache["blocks.0.hook_attn_out"]
    rows = CachedLayerRows.from_tensors(x[:32], y[:32], batch_size=8)
    cfg = ReplacementTrainConfig(
        steps=30, batch_size=8, norm_batches=2, aux_k=8, dead_tokens=10**9, k_start_factor=1
    )
    fvus = {}
    for d_qk in (2, 8):
        variant = Variant("lorsa", top_k=48, width=48, n_qk_heads=3, d_qk=d_qk)
        module, info = train_variant(variant, model, rows, layer, cfg)
        assert len(info["scales"]) == 2
        with torch.no_grad():
            fvus[d_qk] = fvu(module(x[32:]), y[32:])
    assert fvus[8] < 0.5 * fvus[2], fvus


# ----------------------------------------------------------------- held-out measures
@pytest.fixture(scope="module")
def heldout_cache(tiny_run, tmp_path_factory):
    from replacement.activation_cache import ActivationCache, build_cache
    from toy_models.zoo import load_pretrained

    model, tokenizer = load_pretrained(str(tiny_run))
    out = tmp_path_factory.mktemp("heldout") / "acts"
    build_cache(model, tokenizer, out, 8, split="heldout", seed=4242, chunk_rows=8,
                forward_batch=4, quiet=True)  # fmt: skip
    return model, ActivationCache(out, model)


def test_an_exact_dictionary_has_zero_fvu_and_the_original_loss(heldout_cache):
    """An SAE whose latents are +x and -x of every dimension reconstructs exactly (FVU 0,
    the spliced model is the original: its CE, KL 0); so does a Lorsa initialised from the
    heads with every head kept and b_D = b_O, to rounding."""
    model, cache = heldout_cache
    d = model.cfg.d_model
    evaluation = LayerEvaluation(model, cache, 0, batch_size=4)
    sae = Transcoder(TranscoderConfig(d, 2 * d, d))
    with torch.no_grad():
        eye = torch.eye(d)
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    r = evaluation.measure(sae, "sae", batch_size=4)
    base = evaluation.baseline()
    assert r["fvu"] == 0.0 and r["kl"] == pytest.approx(0.0, abs=1e-9) and r["l0"] <= d
    assert r["ce"] == base["ce_original"] and base["heldout_rows"] == 8
    # The tiny model's layer 0 barely matters: mean-ablating it costs about 0.001 nats, a gap
    # of noise (under MIN_GAP), over which no loss recovered is measured (it was "1.0").
    assert 0 < base["ce_mean_ablated"] - base["ce_original"] < MIN_GAP
    assert math.isnan(r["loss_recovered"])

    attn = model.blocks[0].attn
    n_heads, d_head = attn.W_Q.shape[0], attn.W_Q.shape[-1]
    width = n_heads * 2 * d_head  # one +/- pair per value dimension of every head
    lorsa = LorsaLayer(LorsaConfig(d, n_heads, width, d_head, width))
    init_lorsa_from_heads(lorsa, attn, 1.0, 1.0, attn.b_O.detach().clone(), seed=0)
    r = evaluation.measure(lorsa, "lorsa", batch_size=4)
    assert r["fvu"] < 1e-8 and r["kl"] < 1e-6
    assert r["ce"] == pytest.approx(base["ce_original"], abs=1e-5)


# ----------------------------------------------------------------- error bookkeeping
def test_error_shares_sum_to_the_total():
    torch.manual_seed(0)
    target = torch.randn(500, 6) * torch.linspace(0.5, 2, 6)
    error = torch.randn(500, 6) * 0.3
    groups = torch.randint(0, 4, (500,))
    groups[:3] = 4  # a small group
    s = error_shares(error, target, groups, 6)  # group 5 is empty
    total = error.double().pow(2).sum() / (target.double() - target.double().mean(0)).pow(2).sum()
    assert s["fvu"] == pytest.approx(float(total))
    assert sum(s["fvu_contribution"]) == pytest.approx(s["fvu"])
    assert sum(s["error_share"]) == pytest.approx(1.0)
    assert sum(s["token_share"]) == pytest.approx(1.0) and s["tokens"][5] == 0
    assert s["fvu_contribution"][5] == 0.0 and s["group_fvu"][5] != s["group_fvu"][5]  # NaN
    # a group's FVU is its error energy over its own spread about the overall mean
    sel = groups == 2
    mean = target.double().mean(0)
    want = error[sel].double().pow(2).sum() / (target[sel].double() - mean).pow(2).sum()
    assert s["group_fvu"][2] == pytest.approx(float(want))


def test_positions_concentration_and_top_tokens():
    edges = (0, 1, 2, 4)
    assert position_bins(torch.tensor([0, 1, 2, 3, 4, 9]), edges).tolist() == [0, 1, 2, 2, 3, 3]
    assert bin_labels(edges, n_ctx=16) == ["0", "1", "2-3", "4-15"]
    error = torch.zeros(200, 4)
    error[7] = 5.0  # one token carries all of it
    c = concentration(error)
    assert c["tokens_for_half"] == c["tokens_for_90pct"] == 1 / 200 and c["top_1pct_share"] == 1
    ids = torch.arange(200) % 10  # token 7 appears 20 times, once with the error
    top = top_tokens(error, ids, k=3)
    assert len(top) == 1 and top[0]["token"] == 7 and top[0]["error_share"] == 1.0
    assert top[0]["enrichment"] == pytest.approx(10.0)
    error[:100] += 1.0  # now every even token has some error; token 7 still the densest
    by_share = top_tokens(error, ids, k=10)
    dense = top_tokens(error, ids, k=2, by="enrichment")
    assert dense[0]["token"] == 7 and len(by_share) == 10
    assert sum(t["error_share"] for t in by_share) == pytest.approx(1.0)


def test_shared_direction_known_answers():
    torch.manual_seed(0)
    a = torch.randn(400, 16)
    same = shared_direction(a, 2 * a)
    assert same["mean_cosine"] == pytest.approx(1.0) and same["b_along_a"] == pytest.approx(1.0)
    assert same["r2_b_from_a"] == pytest.approx(1.0) and same["r2_a_from_b"] == pytest.approx(1.0)
    assert shared_direction(a, -a)["mean_cosine"] == pytest.approx(-1.0)
    other = shared_direction(a, torch.randn(400, 16))
    assert abs(other["mean_cosine"]) < 0.05 and other["b_along_a"] < 0.15
    assert other["r2_b_from_a"] < 0.1
    # a shared constant direction shows in the shuffled baseline too
    common = torch.zeros(16)
    common[0] = 10.0
    shifted = shared_direction(a + common, torch.randn(400, 16) + common)
    assert shifted["mean_cosine"] > 0.5 and shifted["mean_cosine_shuffled"] > 0.5


def test_token_roles_come_from_the_spans(tiny_pretrained):
    from circuits.concepts import corpus_rows
    from reports.errors import ROLES, role_of

    _, tokenizer = tiny_pretrained
    rows = corpus_rows(tokenizer, 128, 4242, 0, 8)
    seen = {r.example.family: set() for r in rows}
    for r in rows:
        roles = [ROLES[role_of(c)] for c in r.concepts]
        assert roles[0] == "bos" and "bos" not in roles[1:]
        seen[r.example.family] |= set(roles)
    assert {"name", "other"} <= seen["names"]
    assert {"operand", "answer", "separator"} <= seen["addition"]
    assert {"item", "separator"} <= seen["successor"]
    assert {"first", "second"} <= seen["repeat"]


# ----------------------------------------------------------------- the commands
def _script(path: str, *args, cwd=ROOT):
    """Run a benchmark script in a fresh interpreter; also report whether torch was imported
    before it exited."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{path!r}, *{list(map(str, args))!r}]\n"
        "try:\n"
        f"    runpy.run_path({path!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NOTORCH', file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=900
    )


@pytest.mark.parametrize(
    "script, args, match",
    [
        ("benchmarks/lorsa_ablations.py", ["--steps", "0"], "--steps must be positive"),
        ("benchmarks/lorsa_ablations.py", ["--ks", "8,x"], "--ks must be comma-separated"),
        ("benchmarks/lorsa_ablations.py", ["--ks", "8,16,8"], "--ks 8,16,8: 8 is given twice"),
        ("benchmarks/lorsa_ablations.py", ["--qk-heads", "3"], "do not divide"),
        ("benchmarks/lorsa_ablations.py", ["--layers", "all"], "must name layers"),
        ("benchmarks/lorsa_ablations.py", ["--model", "gpt5"], "unknown"),
        ("benchmarks/error_analysis.py", ["--rows", "0"], "--rows must be positive"),
        ("benchmarks/error_analysis.py", ["--replacement", "/nonexistent"], "no replacement"),
    ],
)
def test_benchmark_arguments_are_checked_before_torch(script, args, match):
    result = _script(script, *args)
    *lines, torch_line = result.stderr.strip().splitlines()
    assert result.returncode == 2 and torch_line == "NOTORCH", result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], lines


@pytest.mark.parametrize("module", ["reports.ablations", "reports.errors"])
def test_report_commands_need_their_results(module, fresh_cli, tmp_path):
    code, heavy, err = fresh_cli(module, ["--help"], cwd=ROOT)
    assert code == 0 and not heavy
    code, heavy, err = fresh_cli(module, ["--json", str(tmp_path / "none.json")], cwd=ROOT)
    assert code == 2 and not heavy and err.startswith("error:") and "no such file" in err
    (tmp_path / "bad.json").write_text("{}")
    code, _, err = fresh_cli(module, ["--json", str(tmp_path / "bad.json")], cwd=ROOT)
    assert code == 2 and "not a" in err and len(err.strip().splitlines()) == 1
    # Found by the fourth fuzz pass: a directory was "no such file", and a file without a
    # suffix was its own default report directory ("--out ... exists", with no --out given).
    code, _, err = fresh_cli(module, ["--json", str(tmp_path)], cwd=ROOT)
    assert code == 2 and "not a regular file" in err
    (tmp_path / "results").write_text("{}")
    code, _, err = fresh_cli(module, ["--json", str(tmp_path / "results")], cwd=ROOT)
    assert code == 2 and "has no suffix" in err and "pass --out" in err
    assert (tmp_path / "results").read_text() == "{}"


@pytest.mark.parametrize(
    ("module", "results", "damage"),
    [
        ("reports.errors", "error_analysis_default.json", ("lorsa_vs_sae", [1])),
        ("reports.errors", "error_analysis_default.json", ("roles", None)),
        ("reports.ablations", "lorsa_ablations_default.json", ("layers", "x")),
        ("reports.ablations", "lorsa_ablations_default.json", ("settings", [])),
        # no data at all: refused, not an empty report
        ("reports.errors", "error_analysis_default.json", ("layers", [])),
        ("reports.errors", "error_analysis_default.json", ("by_kind", {})),
        ("reports.ablations", "lorsa_ablations_default.json", ("layers", {})),
    ],
)
def test_a_damaged_results_file_is_one_line_and_writes_nothing(
    module, results, damage, tmp_path, cli
):
    """The shipped results with one field of the wrong shape: refused in one line, and no
    report file is written (the markdown and the figure are made before either is)."""
    import importlib

    data = json.loads((ROOT / "benchmarks" / "results" / results).read_text())
    key, value = damage
    data[key] = value
    (tmp_path / "bad.json").write_text(json.dumps(data))
    out = tmp_path / "report"
    main = importlib.import_module(module).main
    code, _, err = cli(main, "--json", tmp_path / "bad.json", "--out", out)
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error:") and "not a" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing written, and the directory the run made removed


def _set_nested(path: str, value):
    """An edit of the field at a dotted ``path`` (list indices as numbers)."""

    def edit(data):
        *parents, last = path.split(".")
        for key in parents:
            data = data[int(key)] if isinstance(data, list) else data[key]
        data[int(last) if isinstance(data, list) else last] = value

    return edit


@pytest.mark.parametrize(
    ("module", "results", "edit", "message"),
    [
        ("reports.errors", "error_analysis_default.json",
         _set_nested("by_kind.transcoder.1.by_position.fvu", -5), "fvu: expected a number in"),
        ("reports.errors", "error_analysis_default.json",
         _set_nested("by_kind.lorsa.0.by_role.group_fvu.1", float("nan")), "NaN for a group"),
        ("reports.errors", "error_analysis_default.json",
         _set_nested("by_kind.lorsa.2.top_tokens.0.count", None), "count: expected an integer"),
        ("reports.errors", "error_analysis_default.json",
         _set_nested("by_kind.lorsa.0.by_family.error_share", [0.5]), "1 values for 4 groups"),
        ("reports.errors", "error_analysis_default.json",
         _set_nested("lorsa_vs_sae.0.mean_cosine", 3.0), "mean_cosine: expected a number in"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("layers.1.runs.lorsa-w1024-k16-qk16-d16.loss_recovered", 1e30),
         "its losses give"),
        # a gap of noise (under MIN_GAP nats): no loss recovered, as replacement.evaluate says
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("layers.1.baseline.ce_mean_ablated", 1.69),
         "results.layers.1.runs.lorsa-w1024-k16-qk16-d16.loss_recovered: 0.9846892569942831, "
         "its losses give nan"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("layers.2.runs.lorsa-w1024-k32-qk16-d8.l0", float("nan")),
         "l0: expected a finite number"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("variants.lorsa-w1024-k16-qk16-d16.kind", "mlp"), "unknown dictionary kind"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("axes.k", ["no-such-variant"]), "no variant named"),
        # n_qk_heads 0 was a ZeroDivisionError, -16 divided 1024 and was rendered
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("variants.lorsa-w1024-k32-qk16-d64.n_qk_heads", 0),
         "n_qk_heads=0 must be a positive integer"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("variants.lorsa-w1024-k32-qk16-d64.n_qk_heads", -16),
         "n_qk_heads=-16 must be a positive integer"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("variants.lorsa-w1024-k32-qk16-d64.n_qk_heads", 8),
         "its fields are variant lorsa-w1024-k32-qk8-d64"),
        # Found by a fuzz pass: the settings' shapes and training configuration were unchecked
        # (NaN, strings, negative counts printed into the report), a run an axis names but the
        # layer lacks was left out of the tables, and a family's cosine could be deleted.
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("settings.base_shapes.n_qk_heads", -16),
         "results.settings.base_shapes.n_qk_heads: expected a number in [1, inf]"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("settings.base_shapes.d_qk", float("nan")),
         "results.settings.base_shapes.d_qk: expected an integer"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("settings.base_shapes.n_ov_heads", "1024"),
         "results.settings.base_shapes.n_ov_heads: expected an integer"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("settings.base_shapes.n_qk_heads", 48),
         "results.settings.base_shapes: 1024 OV heads are not whole blocks of 48 QK heads"),
        ("reports.ablations", "lorsa_ablations_default.json",
         deleting("settings.base_shapes.lorsa_top_k"),
         "results.settings.base_shapes lacks 'lorsa_top_k': written by another version, or edited"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("settings.base_shapes.colour", 1),
         "results.settings.base_shapes holds unknown keys ('colour'): "
         "written by another version, or edited"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("settings.train.norm_batches", -1),
         "results.settings.train.norm_batches: expected a number in [1, inf]"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("settings.train.lr", float("nan")),
         "results.settings.train.lr: expected a finite number"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("settings.train.warmup_fraction", "x"),
         "results.settings.train.warmup_fraction: expected a finite number"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("settings.train.steps", 7),
         "results.settings.train.steps: 7, the settings say 500"),
        ("reports.ablations", "lorsa_ablations_default.json",
         deleting("layers.1.runs.sae-w1024-k8"),
         "results.layers.1.runs: no run of ['sae-w1024-k8'], which results.axes.sae names"),
        ("reports.errors", "error_analysis_default.json",
         deleting("lorsa_vs_sae.0.by_family_mean_cosine.names"),
         "results.lorsa_vs_sae.0.by_family_mean_cosine: no cosine for ['names']"),
        ("reports.errors", "error_analysis_default.json",
         _set_nested("lorsa_vs_sae.0.by_family_mean_cosine.stories", 0.5),
         "results.lorsa_vs_sae.0.by_family_mean_cosine: ['stories'] is no family with tokens"),
        ("reports.errors", "error_analysis_default.json",
         _set_nested("lorsa_vs_sae.1.lorsa_fvu", 0.5), "results.lorsa_vs_sae.1.lorsa_fvu: 0.5"),
        # a reviewer's NaN over 17153 tokens was printed "mean cosine nan"
        ("reports.errors", "error_analysis_default.json",
         _set_nested("lorsa_vs_sae.0.mean_cosine", float("nan")),
         "results.lorsa_vs_sae.0.mean_cosine: NaN, a mean over"),
        ("reports.errors", "error_analysis_default.json",
         _set_nested("families", ["names", "names", "successor", "repeat"]),
         "results.families: ['names', 'names', 'successor', 'repeat'] names a group twice"),
        # a review: a family's NaN cosine was printed, an axis deleted or emptied left its runs
        # out of the report; FVU and KL have no upper bound but are never negative
        ("reports.errors", "error_analysis_default.json",
         _set_nested("lorsa_vs_sae.0.by_family_mean_cosine.names", float("nan")),
         "results.lorsa_vs_sae.0.by_family_mean_cosine.names: NaN, a mean over some of its"),
        ("reports.errors", "error_analysis_default.json",
         _set_nested("lorsa_vs_sae.2.tokens", 17154),
         "results.lorsa_vs_sae.2.tokens: 17154, more than the layer's 17153 tokens"),
        ("reports.errors", "error_analysis_default.json",
         _set_nested("by_kind.lorsa.1.by_family.fvu", -1e308), "fvu: expected a number in"),
        ("reports.ablations", "lorsa_ablations_default.json", deleting("axes.qk_heads"),
         "results.axes: ['control', 'd_qk', 'k', 'sae'], the sweep writes"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("axes.colour", []), "the sweep writes ['control', 'd_qk', 'k', 'qk_heads'"),
        ("reports.ablations", "lorsa_ablations_default.json", _set_nested("axes.d_qk", []),
         "results.axes.d_qk: empty, the sweep runs every axis but the control"),
        ("reports.ablations", "lorsa_ablations_default.json", _set_nested("axes.k", []),
         "results.axes.k: empty"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("axes.sae", ["sae-w1024-k8", "lorsa-w1024-k16-qk16-d16"]),
         "results.axes.sae: ['lorsa-w1024-k16-qk16-d16'] not of the sae variants it holds"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("axes.k", ["lorsa-w1024-k8-qk16-d16", "lorsa-w1024-k8-qk16-d16"]),
         "results.axes.k: names a variant twice"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("layers.1.runs.lorsa-w1024-k16-qk16-d16.fvu", -1e308),
         "fvu: expected a number in [0, inf]"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("layers.1.runs.lorsa-w1024-k16-qk16-d16.kl", -0.5),
         "kl: expected a number in [-1e-06, 3.40282e+38]"),
        # a review: counts and fractions no run gives, each in its range alone, were rendered
        ("reports.errors", "error_analysis_default.json",
         _set_nested("by_kind.lorsa.1.concentration.tokens_for_90pct", 0),
         "results.by_kind.lorsa.1.concentration.tokens_for_90pct: 0, not a whole number of "
         "tokens (at least one) of 17153"),
        ("reports.errors", "error_analysis_default.json",
         _set_nested("by_kind.lorsa.1.concentration.tokens_for_half", 17000 / 17153),
         "tokens_for_half: 0.99108, more than tokens_for_90pct"),
        ("reports.errors", "error_analysis_default.json",
         _set_nested("by_kind.transcoder.2.concentration.top_1pct_share", 0.001),
         "top_1pct_share: 0.001, below the 0.0099691 of the tokens it counts"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("layers.2.baseline.heldout_rows", 0),
         "results.layers.2.baseline.heldout_rows: 0, the settings say 256"),
        ("reports.ablations", "lorsa_ablations_default.json",
         _set_nested("layers.1.baseline.heldout_tokens", 256),
         "results.layers.1.baseline.heldout_tokens: 256, not whole rows of two or more"),
        ("reports.errors", "error_analysis_default.json", _set_nested("rows", 0),
         "results.rows: 0 rows of documents for 17153 tokens"),
        ("reports.errors", "error_analysis_default.json", _set_nested("sae.top_k", 0),
         "results.sae.top_k: 0 of 1024 latents"),
        ("reports.errors", "error_analysis_default.json",
         _set_nested("by_kind.lorsa.1.by_role.tokens", [0.0] * 9),
         "results.by_kind.lorsa.1.by_role.tokens: sum to 0, the file has 17153 tokens"),
    ],
)  # fmt: skip
def test_a_results_file_with_values_out_of_range_is_one_line(
    module, results, edit, message, tmp_path, cli
):
    """Found by a fuzz pass: values of the right shape but impossible (a negative FVU, a loss
    recovered that its losses do not give, NaN where the benchmark writes none) rendered into
    the report with exit 0. Each is refused naming the field, and nothing is written."""
    import importlib

    data = json.loads((ROOT / "benchmarks" / "results" / results).read_text())
    edit(data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    out = tmp_path / "report"
    code, _, err = cli(importlib.import_module(module).main, "--json", tmp_path / "bad.json",
                       "--out", out)  # fmt: skip
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("module", ["reports.ablations", "reports.errors"])
@pytest.mark.parametrize("text", ['{"layers": NaN}', "[" * 100_000 + "]" * 100_000])
def test_a_results_file_that_is_not_strict_json_is_one_line(module, text, tmp_path, cli):
    import importlib

    (tmp_path / "bad.json").write_text(text)
    out = tmp_path / "report"
    code, _, err = cli(importlib.import_module(module).main, "--json", tmp_path / "bad.json",
                       "--out", out)  # fmt: skip
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_quick_sweep_writes_results_and_a_report_and_resumes(tiny_run, tmp_path, cli):
    """The whole sweep in smoke-run size on the tiny model; a rerun reads every record back."""
    main = benchmark("lorsa_ablations").main
    args = ["--model", tiny_run, "--config", "tiny", "--quick", "--quiet",
            "--work", tmp_path / "work", "--json", tmp_path / "abl.json"]  # fmt: skip
    code, out, err = cli(main, *args)
    assert code == 0, err
    assert "SMOKE RUN" in out
    results = json.loads((tmp_path / "abl.json").read_text())
    assert results["quick"] and results["settings"]["layers"] == [1]
    runs = results["layers"]["1"]["runs"]
    assert len(runs) == 7  # K x2, SAE x2, one more QK-head count, one more rank, the control
    for r in runs.values():
        assert {"fvu", "l0", "loss_recovered", "kl", "train_s"} <= set(r)
    assert {r["l0"] for n, r in runs.items() if n.startswith("sae")} <= {2.0, 4.0}
    md = (tmp_path / "abl" / "ablations.md").read_text()
    assert "SMOKE RUN" in md and (tmp_path / "abl" / "ablations.png").stat().st_size > 1000
    code, _, err = cli(main, *args)  # every run is read back, none retrained
    assert code == 0, err
    assert json.loads((tmp_path / "abl.json").read_text())["layers"] == results["layers"]
    md = (tmp_path / "abl" / "ablations.md").read_text()
    from reports.ablations import main as render

    code, _, err = cli(render, "--json", tmp_path / "abl.json", "--out", tmp_path / "again")
    assert code == 0 and (tmp_path / "again" / "ablations.md").read_text() == md
    # A review: a record read back was copied into the results as it stood (an FVU of 1e308,
    # a KL beyond float32, a string); it is checked as the results file's are, one line
    record_path = next((tmp_path / "work").glob("*/runs/L1/lorsa-*.json"))
    saved = json.loads(record_path.read_text())
    for field, value in (("kl", 1e308), ("fvu", "x")):
        damaged = {**saved, "record": {**saved["record"], field: value}}
        record_path.write_text(json.dumps(damaged))
        code, _, err = cli(main, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"{record_path}: a damaged record of this variant (record.{field}: expected" in err
    assert json.loads((tmp_path / "abl.json").read_text())["layers"] == results["layers"]


def test_quick_error_analysis_end_to_end(tiny_run, make_replacement, tmp_path, cli):
    from toy_models.zoo import load_pretrained

    model, _ = load_pretrained(str(tiny_run))
    make_replacement(model, n_qk=2, n_ov=8).save(tmp_path / "set", str(tiny_run))
    args = ["--model", tiny_run, "--replacement", tmp_path / "set", "--quick", "--quiet",
            "--work", tmp_path / "work", "--json", tmp_path / "err.json"]  # fmt: skip
    code, out, err = cli(benchmark("error_analysis").main, *args)
    assert code == 0, err
    r = json.loads((tmp_path / "err.json").read_text())
    assert r["quick"] and set(r["by_kind"]) == {"lorsa", "transcoder"}
    for per_layer in r["by_kind"].values():
        assert set(per_layer) == {"0", "1"}
        for split in ("by_family", "by_role", "by_position"):
            s = per_layer["0"][split]
            assert sum(s["fvu_contribution"]) == pytest.approx(s["fvu"], rel=1e-9)
            assert sum(s["error_share"]) == pytest.approx(1.0)
    assert set(r["lorsa_vs_sae"]) == {"0", "1"}
    assert -1 <= r["lorsa_vs_sae"]["0"]["mean_cosine"] <= 1
    md = (tmp_path / "err" / "errors.md").read_text()
    assert "SMOKE RUN" in md and "By token role" in md


def test_streamed_attention_saes_train_the_given_layers(tiny_pretrained):
    from replacement.attn_sae import train_attn_saes

    model, tokenizer = tiny_pretrained
    saes, seconds = train_attn_saes(model, tokenizer, 16, 2, 3, layers=[1], quiet=True)
    assert len(saes) == 1
    assert saes[0].cfg.d_sae == 16 and all(torch.isfinite(p).all() for p in saes[0].parameters())


def test_kept_attention_saes_are_trained_once_per_setting(tiny_pretrained, tmp_path, monkeypatch):
    """A second call with the same model and settings reads the SAEs back, equal to the first;
    other settings train anew beside them."""
    from replacement import attn_sae

    model, tokenizer = tiny_pretrained
    first, seconds = attn_sae.kept_attn_saes(model, tokenizer, [1], 16, 2, 3, tmp_path, quiet=True)
    trained = []
    real = attn_sae.train_attn_saes
    monkeypatch.setattr(
        attn_sae, "train_attn_saes", lambda *a, **k: trained.append(a) or real(*a, **k)
    )
    again, again_s = attn_sae.kept_attn_saes(model, tokenizer, [1], 16, 2, 3, tmp_path)
    assert not trained and again_s == pytest.approx(seconds)
    for name, value in first[1].state_dict().items():
        assert torch.equal(again[1].state_dict()[name], value), name
    other, _ = attn_sae.kept_attn_saes(model, tokenizer, [1], 16, 4, 3, tmp_path, quiet=True)
    assert len(trained) == 1 and other[1].cfg.top_k == 4
    assert len([d for d in tmp_path.iterdir() if d.is_dir()]) == 2


def test_kept_attention_saes_refuse_a_tampered_file_and_retrain_over_an_unhashed_record(
    tiny_pretrained, tmp_path, monkeypatch
):
    """The kept SAEs are loaded checked (names, shapes, finite values) and bound to the
    SHA-256 recorded for each file: a file edited since (finite values, the right shapes) or
    holding NaN is refused in one line naming it; a record written before files were hashed is
    retrained over."""
    from safetensors.torch import load_file, save_file

    from replacement import attn_sae

    model, tokenizer = tiny_pretrained
    first, seconds = attn_sae.kept_attn_saes(model, tokenizer, [1], 16, 2, 3, tmp_path, quiet=True)
    (directory,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    path, record = directory / "sae.1.safetensors", directory / attn_sae.SAES_FILE
    original = path.read_bytes()
    tensors = load_file(str(path))
    tensors["b_dec"] = tensors["b_dec"] + 1.0
    save_file(tensors, str(path))
    with pytest.raises(ValueError) as info:
        attn_sae.kept_attn_saes(model, tokenizer, [1], 16, 2, 3, tmp_path)
    assert str(info.value) == (f"{path}: not the file recorded in saes.json (sha256 differs: "
                               "damaged, edited or swapped with another)")  # fmt: skip
    tensors["b_dec"][0] = float("nan")
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"sae\.1\.safetensors: b_dec holds NaN or infinite"):
        attn_sae.kept_attn_saes(model, tokenizer, [1], 16, 2, 3, tmp_path)
    path.write_bytes(original)
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "train_s": "soon"}))
    with pytest.raises(ValueError, match=r"saes\.json: train_s must be a number, got 'soon'"):
        attn_sae.kept_attn_saes(model, tokenizer, [1], 16, 2, 3, tmp_path)
    record.write_text(json.dumps({**data, "files": {"sae.0.safetensors": "0" * 64}}))
    with pytest.raises(ValueError, match=r"'files' does not list the SAE files"):
        attn_sae.kept_attn_saes(model, tokenizer, [1], 16, 2, 3, tmp_path)
    # an older record, without hashes: trained again, and the new record hashes the file
    record.write_text(json.dumps({k: v for k, v in data.items() if k != "files"}))
    trained = []
    real = attn_sae.train_attn_saes
    monkeypatch.setattr(
        attn_sae, "train_attn_saes", lambda *a, **k: trained.append(a) or real(*a, **k)
    )
    again, _ = attn_sae.kept_attn_saes(model, tokenizer, [1], 16, 2, 3, tmp_path, quiet=True)
    assert len(trained) == 1 and set(json.loads(record.read_text())["files"]) == {path.name}
    for name, value in first[1].state_dict().items():  # the same seed: the same SAE
        assert torch.equal(again[1].state_dict()[name], value), name


def test_attention_sae_baseline_writes_where_told(tiny_run, make_replacement, tmp_path, cli):
    """The Lorsa-vs-SAE benchmark on the tiny model: one row per layer, written to ``--out``
    (a candidate set's comparison), the shipped results left alone."""
    from toy_models.zoo import load_pretrained

    module = benchmark("attn_sae_baseline")
    shipped = module.RESULTS / "attn_sae_baseline.json"
    before = shipped.read_bytes() if shipped.exists() else None
    model, _ = load_pretrained(str(tiny_run))
    make_replacement(model, n_qk=2, n_ov=8).save(tmp_path / "set", str(tiny_run))
    out = tmp_path / "candidate" / "sae.json"
    args = ["--model", tiny_run, "--replacement", tmp_path / "set", "--steps", 3,
            "--batches", 1, "--out", out, "--work", tmp_path / "work"]  # fmt: skip
    code, stdout, err = cli(module.main, *args)
    assert code == 0, err
    r = json.loads(out.read_text())
    assert [row["layer"] for row in r["layers"]] == [0, 1] and r["sae"]["steps"] == 3
    assert r["target"]["worst_ratio"] == max(row["fvu_ratio_lorsa_over_sae"] for row in r["layers"])
    assert str(out) in stdout
    assert (shipped.read_bytes() if shipped.exists() else None) == before
    kept = [d for d in (tmp_path / "work").iterdir() if d.is_dir()]
    assert len(kept) == 1  # the SAEs kept for the other analyses to reuse
    code, _, err = cli(module.main, *args[:-3], tmp_path)  # --out a directory: refused first
    assert code == 2 and err.strip() == f"error: --out {tmp_path}: is a directory"
    # Without --steps the SAEs train as long as the set records; a set recording none is refused.
    no_steps = [a for a in args if a not in ("--steps", 3)]
    code, _, err = cli(module.main, *no_steps)
    assert (
        code == 2
        and err.strip()
        == f"error: {tmp_path / 'set'}: the set records no training steps; give --steps"
    )
    make_replacement(model, n_qk=2, n_ov=8).save(
        tmp_path / "set2", str(tiny_run), meta={"train": {"steps": 2}}
    )
    code, _, err = cli(
        module.main, *[tmp_path / "set2" if a == tmp_path / "set" else a for a in no_steps]
    )
    assert code == 0, err
    assert json.loads(out.read_text())["sae"]["steps"] == 2


def test_the_error_reports_tokens_read_as_text():
    """The results keep each token as its vocabulary entry (`Ġby`, `Ċ`), which a reviewer read
    in the report as it was: it shows them as text (` by`, a newline as ⏎, a lone space as ␣)."""
    import json

    from reports.errors import _token, markdown
    from toy_models.tokenizer import vocab_text

    assert (_token("Ġby"), _token("Ċ"), _token("Ġ"), _token("a|`b")) == (" by", "⏎", "␣", "a¦'b")
    assert vocab_text("æ") == "<0xE6>" and vocab_text("<|bos|>") == "<|bos|>"
    results = json.loads((ROOT / "benchmarks/results/error_analysis_default.json").read_text())
    text = markdown(results)
    assert "Ġ" not in text and "Ċ" not in text and "` by`" in text


def test_the_reports_settings_records_have_the_fields_of_the_configs_they_read():
    """``reports.ablations`` checks the sweep's base shapes and training configuration field
    by field: a field added to (or renamed in) ``DictionaryShapes`` or
    ``ReplacementTrainConfig`` must be added to its record there too."""
    from dataclasses import fields

    from replacement.train import DictionaryShapes
    from reports.ablations import BaseShapes, TrainSettings

    for record, config in ((BaseShapes, DictionaryShapes), (TrainSettings, ReplacementTrainConfig)):
        assert [f.name for f in fields(record)] == [f.name for f in fields(config)], record


def test_the_qk_rank_finding_names_the_rank_it_compares_with():
    """Where the head dimension is not a swept rank, the QK-rank sentence is relative to the
    base rank, and says so (it said "relative to d_qk=<head dimension>" either way)."""
    from reports.ablations import findings

    results = json.loads((ROOT / "benchmarks/results/lorsa_ablations_default.json").read_text())
    rank_lines = [f for f in findings(results) if ", QK rank:" in f]
    assert rank_lines[0].startswith(
        "Layer 1, QK rank: FVU relative to d_qk=16 (the head dimension): d_qk=4: 1.50x, "
    )
    results["d_head"] = 12  # not among the swept ranks 4..64; the base rank is 16
    rank_lines = [f for f in findings(results) if ", QK rank:" in f]
    assert len(rank_lines) == 2 and rank_lines[0] == (
        "Layer 1, QK rank: FVU relative to d_qk=16 (the base rank): d_qk=4: 1.50x, "
        "d_qk=8: 1.14x, d_qk=16: 1.00x, d_qk=32: 1.00x, d_qk=64: 0.99x."
    )
    results["settings"]["base_shapes"]["d_qk"] = 12  # neither swept: no sentence
    assert not [f for f in findings(results) if ", QK rank:" in f]


def test_an_earlier_sweeps_ratio_over_a_gap_too_small_to_measure_still_loads():
    """A review: the sweep now writes NaN where ablating raises the loss by MIN_GAP or less
    (a ratio over noise), and its check refused files an earlier sweep wrote with the bare
    ratio there. Both load; a value that is neither is refused."""
    import copy
    import json
    from pathlib import Path

    from reports.ablations import check_results

    shipped = json.loads(Path("benchmarks/results/lorsa_ablations_default.json").read_text())
    check_results(shipped)
    for written in ("bare", "nan", "wrong"):
        r = copy.deepcopy(shipped)
        b = r["layers"]["1"]["baseline"]
        b["ce_mean_ablated"] = b["ce_original"] + 0.01  # a layer that barely matters
        for run in r["layers"]["1"]["runs"].values():
            run["loss_recovered"] = {"bare": (b["ce_mean_ablated"] - run["ce"]) / 0.01,
                                     "nan": float("nan"), "wrong": 0.5}[written]  # fmt: skip
        if written == "wrong":
            with pytest.raises(ValueError, match="loss_recovered: 0.5, its losses give nan"):
                check_results(r)
        else:
            check_results(r)


def test_a_results_file_may_hold_any_finite_fvu(tmp_path, cli):
    """FVU (error energy over variance, in float64) has no upper bound that the benchmarks
    guarantee: a huge one is a measured figure, rendered, not refused; a value beyond a float
    is (``toy_models.records``: finite numbers only). A KL is a mean of float32 figures."""
    from reports import ablations, errors

    data = json.loads((ROOT / "benchmarks/results/lorsa_ablations_default.json").read_text())
    run = data["layers"]["1"]["runs"]["lorsa-w1024-k16-qk16-d16"]
    run["fvu"] = 1e308
    assert ablations.check_results(data).layers["1"].runs["lorsa-w1024-k16-qk16-d16"].fvu == 1e308
    run["kl"] = 1e308  # but a KL and a CE are means of float32 figures: within its range
    with pytest.raises(ValueError, match=r"kl: expected a number in \[-1e-06, 3.40282e\+38\]"):
        ablations.check_results(data)
    data = json.loads((ROOT / "benchmarks/results/error_analysis_default.json").read_text())
    data["lorsa_vs_sae"]["1"]["sae_fvu"] = 1e308
    assert errors.check_results(data).lorsa_vs_sae["1"].sae_fvu == 1e308
    (tmp_path / "bad.json").write_text(json.dumps(data).replace("1e+308", "1e309"))
    code, _, err = cli(errors.main, "--json", tmp_path / "bad.json", "--out", tmp_path / "r")
    assert code == 2 and "sae_fvu: expected a finite number" in err, err


@pytest.mark.parametrize("field", ["ce_original", "ce_mean_ablated"])
def test_a_layers_baseline_losses_are_float32_means_as_its_runs_are(field):
    """A run's CE is refused beyond float32's range (a mean of float32 figures), but its
    layer's baseline CEs, the same means (``LayerEvaluation``), were not: 1e308 for both with
    the loss recovered NaN (what such losses give) rendered."""
    import copy

    from reports.ablations import check_results

    shipped = json.loads((ROOT / "benchmarks/results/lorsa_ablations_default.json").read_text())
    r = copy.deepcopy(shipped)
    b = r["layers"]["1"]["baseline"]
    b[field] = 1e308  # refused for itself, not only through the loss recovered it gives
    with pytest.raises(ValueError, match=rf"baseline\.{field}: expected a number in \[0, 3\.40"):
        check_results(r)
