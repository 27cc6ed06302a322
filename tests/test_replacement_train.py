import json
import math

import pytest
import torch

from replacement.activations import ActivationStore
from replacement.dictionaries import (
    aux_k_loss,
    fold_scales_lorsa,
    fold_scales_transcoder,
    fvu,
    init_lorsa_from_heads,
)
from replacement.lorsa import LorsaConfig, LorsaLayer
from replacement.train import CONFIGS, k_at
from replacement.transcoder import Transcoder, TranscoderConfig


def test_store_yields_real_activation_pairs(tiny_pretrained):
    model, tokenizer = tiny_pretrained
    store = ActivationStore(model, tokenizer, batch_size=3, seed=0, buffer_batches=2)
    batch = next(store)
    L, n, d = model.cfg.n_layers, model.cfg.n_ctx, model.cfg.d_model
    assert batch.lorsa_x.shape == (L, 3, n, d) and batch.tc_x.shape == (L, 3 * n, d)
    # the Lorsa pair is (attention input, attention output) of the same sequences
    out = model.blocks[1].attn(batch.lorsa_x[1])
    torch.testing.assert_close(out, batch.lorsa_y[1], atol=1e-5, rtol=1e-5)
    # transcoder pairs are shuffled tokens, but each is still (ln2 out, mlp out) of one token
    torch.testing.assert_close(
        model.blocks[0].mlp(batch.tc_x[0]), batch.tc_y[0], atol=1e-5, rtol=1e-5
    )
    # a store for a subset of layers holds exactly those, in order
    only_1 = next(ActivationStore(model, tokenizer, batch_size=2, seed=0, layers=[1]))
    assert only_1.lorsa_x.shape == (1, 2, n, d)
    torch.testing.assert_close(
        model.blocks[1].attn(only_1.lorsa_x[0]), only_1.lorsa_y[0], atol=1e-5, rtol=1e-5
    )


def test_folding_the_scales_leaves_outputs_unchanged():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8)
    lorsa = LorsaLayer(LorsaConfig(d_model=8, n_qk_heads=2, n_ov_heads=6, d_qk=4, top_k=2))
    tc = Transcoder(TranscoderConfig(d_model=8, d_sae=12, top_k=3, skip=True))
    with torch.no_grad():
        tc.W_skip.normal_()
    s_x, s_y = 2.5, 0.3
    want_lorsa, want_tc = lorsa(x * s_x) / s_y, tc(x * s_x) / s_y
    fold_scales_lorsa(lorsa, s_x, s_y)
    fold_scales_transcoder(tc, s_x, s_y)
    torch.testing.assert_close(lorsa(x), want_lorsa, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tc(x), want_tc, atol=1e-5, rtol=1e-5)


def test_lorsa_initialised_from_heads_reproduces_the_original_layer():
    """With +/- pairs of an orthonormal basis per head and TopK keeping everything, the
    initial Lorsa computes exactly what the attention layer computes."""
    from toy_models.model import Attention, ModelConfig

    torch.manual_seed(1)
    cfg = ModelConfig(d_vocab=10, n_ctx=8, d_model=8, n_layers=1, n_heads=2, d_head=4, d_mlp=8)
    attn = Attention(cfg)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(std=0.5)
    x = torch.randn(3, 5, 8)
    # one group per head covering its value space once, then 2 groups per head covering it
    # twice each (4 times in all): the init divides the copies back out
    for n_qk, n_ov in ((2, 16), (4, 64)):
        lorsa = LorsaLayer(
            LorsaConfig(d_model=8, n_qk_heads=n_qk, n_ov_heads=n_ov, d_qk=4, top_k=n_ov)
        )
        init_lorsa_from_heads(lorsa, attn, 1.0, 1.0, attn.b_O.detach(), seed=0)
        torch.testing.assert_close(lorsa(x), attn(x), atol=1e-5, rtol=1e-5)
    # and in scaled spaces: a layer initialised for (s_x x -> s_y y) maps s_x x to s_y attn(x)
    init_lorsa_from_heads(lorsa, attn, 2.0, 3.0, 3.0 * attn.b_O.detach(), seed=0)
    torch.testing.assert_close(lorsa(2.0 * x), 3.0 * attn(x), atol=1e-5, rtol=1e-5)


def test_k_anneals_to_target_and_aux_loss_uses_dead_units_only():
    cfg = CONFIGS["default"]
    assert k_at(0, 16, cfg) == 16 * cfg.k_start_factor
    assert k_at(cfg.k_anneal_steps, 16, cfg) == 16 == k_at(cfg.steps, 16, cfg)
    pre = torch.tensor([[1.0, 2.0, 3.0]])
    W = torch.eye(3)
    residual = torch.tensor([[0.0, 0.0, 3.0]])
    dead = torch.tensor([False, False, True])
    assert aux_k_loss(pre, dead, W, residual, 1).item() == pytest.approx(0.0)
    assert aux_k_loss(pre, torch.zeros(3, dtype=torch.bool), W, residual, 1).item() == 0.0


def test_aux_loss_over_dead_columns_equals_the_masked_full_width_reference():
    """AuxK's TopK over the dead units' columns gives the loss and gradients of the reference
    formula (a TopK over every unit, live ones masked to zero), for any number of dead units."""
    from replacement.lorsa import sparse_decode, topk_sparse

    def reference(pre, dead, W, residual, k):
        values, idx = topk_sparse(pre.masked_fill(~dead, 0.0), min(k, int(dead.sum())))
        error = sparse_decode(values, idx, W) - residual
        return error.pow(2).sum() / residual.pow(2).sum()

    g = torch.Generator().manual_seed(0)
    for n_dead in (1, 3, 7, 40):
        pre = torch.randn(2, 5, 40, generator=g, requires_grad=True)
        W = torch.randn(40, 6, generator=g, requires_grad=True)
        residual = torch.randn(2, 5, 6, generator=g)
        dead = torch.zeros(40, dtype=torch.bool)
        dead[torch.randperm(40, generator=g)[:n_dead]] = True
        ours = aux_k_loss(pre, dead, W, residual, 4)
        grads = torch.autograd.grad(ours, (pre, W))
        ref = reference(pre, dead, W, residual, 4)
        torch.testing.assert_close(ours, ref)
        for a, b in zip(grads, torch.autograd.grad(ref, (pre, W)), strict=True):
            torch.testing.assert_close(a, b)


def test_fvu():
    """The one FVU of the project: error energy over the targets' spread about their mean, over
    every token and dimension; NaN (not a division by zero) where the targets do not vary."""
    from replacement.dictionaries import fvu_of_sums, target_variance

    y = torch.randn(100, 4)
    assert fvu(y, y) == 0.0
    assert fvu(y.mean(0).expand_as(y), y) == pytest.approx(1.0)
    y = torch.tensor([[[1.0, 0.0], [3.0, 0.0]], [[1.0, 2.0], [3.0, 2.0]]])  # (batch, pos, d)
    assert target_variance(y).item() == 8.0  # each coordinate 1 away from its mean, 4 tokens
    assert fvu(y + torch.tensor([1.0, 0.0]), y) == 0.5  # error energy 4 over 8
    assert fvu_of_sums(torch.tensor(3.0), torch.tensor(4.0)) == fvu_of_sums(3.0, 4.0) == 0.75
    constant = torch.ones(5, 3)
    assert math.isnan(fvu(constant, constant)) and math.isnan(fvu(constant * 2, constant))
    assert math.isnan(fvu_of_sums(1.0, 0.0))


def test_tiny_replacement_trains_end_to_end_and_lowers_fvu(tiny_run, tmp_path):
    from replacement.evaluate import evaluate_replacement, summary_lines
    from replacement.model import ReplacementModel
    from replacement.train import train_replacement
    from toy_models.zoo import load_pretrained

    model, tokenizer = load_pretrained(str(tiny_run))
    fvus = {}
    for steps in (1, 60):
        out = tmp_path / str(steps)
        _, dicts, meta = train_replacement(
            str(tiny_run), out, config="tiny", steps=steps, quiet=True
        )
        ReplacementModel(model, list(dicts.lorsas), list(dicts.transcoders)).save(out, "tiny", meta)
        loaded = ReplacementModel.load(out, model)
        results = evaluate_replacement(loaded, tokenizer, n_batches=2, n_docs=3)
        rec = results["reconstruction"]
        fvus[steps] = [layer["fvu"] for kind in ("lorsa", "transcoder") for layer in rec[kind]]
        assert all(layer["l0"] <= 4 + 1e-6 for kind in rec for layer in rec[kind])
    assert max(fvus[60]) < 0.95
    assert sum(fvus[60]) < sum(fvus[1])
    # local mode is exact whatever the quality of the dictionaries
    tokens = torch.tensor([[1, 5, 9, 2, 7]])
    torch.testing.assert_close(loaded(tokens, mode="local"), model(tokens), atol=1e-5, rtol=1e-5)
    assert summary_lines(results)
    assert meta["train_tokens_per_s"] > 0


def test_resume_refuses_another_run(tiny_run, tmp_path):
    from replacement.train import train_replacement
    from toy_models.cli import UserError

    train_replacement(str(tiny_run), tmp_path, config="tiny", quiet=True)
    with pytest.raises(UserError, match="already holds a training run"):
        train_replacement(str(tiny_run), tmp_path, config="tiny", quiet=True)
    with pytest.raises(UserError, match="belongs to another run"):
        train_replacement(str(tiny_run), tmp_path, config="tiny", resume=True, steps=99, quiet=True)


# ----------------------------------------------------------------- faults
KILL_WHILE_CHECKPOINTING = """
import os, signal, sys
from pathlib import Path
import toy_models.checkpoint as checkpoint
from replacement.train import train_replacement

real, calls = checkpoint.save_optimizer_atomic, []

def save_optimizer_atomic(optimizer, path):  # kill -9 in the middle of the second checkpoint
    calls.append(path)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real(optimizer, path)

checkpoint.save_optimizer_atomic = save_optimizer_atomic
train_replacement(sys.argv[1], Path(sys.argv[2]), config="tiny", quiet=True)
"""


def test_kill_9_while_checkpointing_then_resume(tiny_run, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from replacement.train import train_replacement

    out = tmp_path / "killed"
    script = [sys.executable, "-c", KILL_WHILE_CHECKPOINTING, str(tiny_run), str(out)]
    result = subprocess.run(script, cwd=Path(__file__).parent.parent)
    assert result.returncode == -9
    assert (out / "checkpoint.tmp" / "weights.safetensors").exists()  # the half-written one
    _, resumed, _ = train_replacement(str(tiny_run), out, config="tiny", resume=True, quiet=True)
    assert not list(out.glob("checkpoint.*"))
    # the same as a run stopped cleanly at the last complete checkpoint (step 10), resumed
    ref = tmp_path / "ref"
    assert train_replacement(str(tiny_run), ref, config="tiny", stop_after=10, quiet=True) is None
    _, expected, _ = train_replacement(str(tiny_run), ref, config="tiny", resume=True, quiet=True)
    want, got = expected.state_dict(), resumed.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def failing_open(where, code):
    """``open`` that fails (ENOSPC, EROFS...) for paths containing ``where``."""
    import os

    def fake(path, mode="r", *args, **kwargs):
        if where in str(path) and "w" in mode:
            raise OSError(code, os.strerror(code))
        return open(path, mode, *args, **kwargs)  # noqa: SIM115

    return fake


def one_line_error(capsys, main, argv) -> str:
    from toy_models.cli import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: "), err
    return err.strip().splitlines()[-1]


def test_replacement_cli_write_failures_are_one_line_with_nothing_left(
    tiny_run, tmp_path, monkeypatch, capsys
):
    import errno

    from replacement import evaluate, train
    from toy_models import files

    out = tmp_path / "set"
    monkeypatch.setattr(files, "open", failing_open("checkpoint.tmp", errno.ENOSPC), raising=False)
    argv = ["--model", str(tiny_run), "--config", "tiny", "--out", str(out)]
    line = one_line_error(capsys, train.main, argv)
    assert "weights.safetensors: No space left on device" in line
    assert not list(out.rglob("*.tmp")) and not (out / "checkpoint").exists()
    monkeypatch.undo()

    assert "exists and is not a directory" in one_line_error(
        capsys, train.main, ["--model", str(tiny_run), "--config", "tiny", "--out", __file__]
    )
    monkeypatch.setattr(files, "open", failing_open("replacement.json", errno.EROFS), raising=False)
    line = one_line_error(capsys, train.main, argv)  # the final set cannot be written
    assert line == f"error: cannot write {out / 'replacement.json'}: Read-only file system"
    assert not list(out.rglob("*.tmp"))
    monkeypatch.undo()
    train.main([*argv, "--resume"])  # the set is written when the disk is back

    adir = tmp_path / "adir"
    adir.mkdir()
    argv = ["--model", str(tiny_run), "--replacement", str(out), "--batches", "1", "--docs", "1"]
    assert f"--json {adir}: is a directory" in one_line_error(
        capsys, evaluate.main, [*argv, "--json", str(adir)]
    )
    monkeypatch.setattr(files, "open", failing_open("eval.json", errno.ENOSPC), raising=False)
    line = one_line_error(capsys, evaluate.main, [*argv, "--json", str(tmp_path / "eval.json")])
    assert line == f"error: cannot write {tmp_path / 'eval.json'}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "set"]
    assert list(adir.iterdir()) == []


@pytest.mark.parametrize(
    "buffer, value, message",
    [
        ("scales", -1.0, "scales holds values that are not positive"),
        ("scales", 0.0, "scales holds values that are not positive"),
        ("lorsa_idle", -1e30, "lorsa_idle holds negative token counts"),
    ],
)
def test_restored_buffers_no_run_could_write_are_refused(tiny_run, tmp_path, buffer, value,
                                                         message):  # fmt: skip
    """Found by a fuzz pass: a negative scale trained a set of FVU 9785 written with exit 0, a
    zero scale failed after the layer files were written (half a set), and a huge negative idle
    count kept every unit from ever counting as dead. Refused on resume, checkpoint kept."""
    from safetensors.torch import load_file, save_file

    from replacement.train import train_replacement

    out = tmp_path / "run"
    assert train_replacement(str(tiny_run), out, config="tiny", stop_after=10, quiet=True) is None
    weights = out / "checkpoint" / "weights.safetensors"
    tensors = load_file(str(weights))
    tensors[buffer].view(-1)[0] = value
    save_file(tensors, str(weights))
    # forged with its hash in state.json too, so that the buffers' own check is what refuses it
    from toy_models.files import file_sha256

    state_path = out / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    state["files"]["weights.safetensors"] = file_sha256(weights)
    state_path.write_text(json.dumps(state))
    before = weights.read_bytes()
    with pytest.raises(ValueError, match=message):
        train_replacement(str(tiny_run), out, config="tiny", resume=True, quiet=True)
    assert weights.read_bytes() == before and not (out / "replacement.json").exists()


def test_figures_that_cannot_be_saved_leave_no_half_set(random_model, make_replacement, tmp_path):
    """A NaN among the figures is refused before any layer file is written."""
    replacement = make_replacement(random_model)
    with pytest.raises(ValueError, match="cannot be saved .*nothing written"):
        replacement.save(tmp_path / "set", "m", meta={"loss_recovered": float("nan")})
    assert not (tmp_path / "set").exists() or not any((tmp_path / "set").iterdir())


@pytest.mark.parametrize(
    ("out", "acts", "where"),
    [("acts", "acts", "is"), ("acts/set", "acts", "is inside"), ("run", "run/acts", "holds")],
)
def test_an_out_that_overlaps_the_activation_cache_is_refused(tmp_path, capsys, out, acts, where):
    """Found by a fuzz pass: --out the --activations directory (or inside it, or around it)
    trained and wrote a checkpoint and a replacement set among the cache's chunks. Refused in
    one line before anything is written (paths compared resolved: ``x/../acts`` is ``acts``)."""
    from replacement import train

    (tmp_path / acts).mkdir(parents=True)
    (tmp_path / acts / "manifest.json").write_text("{}")
    before = sorted(tmp_path.rglob("*"))
    out_arg = tmp_path / "x" / ".." / out  # the same directory, spelled otherwise
    argv = ["--model", "default", "--config", "tiny", "--steps", "3",
            "--activations", str(tmp_path / acts), "--out", str(out_arg)]  # fmt: skip
    line = one_line_error(capsys, train.main, argv)
    assert line == (f"error: --out {out_arg} {where} --activations {tmp_path / acts}: the run "
                    "would write its checkpoint and set among the cache's files; keep them "
                    "apart")  # fmt: skip
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(("text", "layer"), [("1,1", 1), ("0,2,0", 0)])
def test_a_layer_named_twice_is_refused(text, layer):
    """Found by a fuzz pass: ``--layers 1,1`` was read as ``1`` without a word."""
    from replacement.train import parse_layers
    from toy_models.cli import UserError

    with pytest.raises(UserError, match=f"^--layers {text}: layer {layer} is named twice"):
        parse_layers(text)
    assert parse_layers("2,0") == [0, 2]


def test_a_resume_with_another_base_is_refused(tiny_run, tiny_pretrained, tmp_path, cli):
    """Found by a fuzz pass: ``--base`` was not part of the checkpoint's identity, so a run
    resumed with another base set was accepted (its trained layers then shipped among another
    set's). The base is part of it now, by content: another base (or none) is refused in one
    line before the model is loaded, nothing written; a copy of the same set elsewhere resumes.
    A base that does not load for the model is refused before the training, not after."""
    import json
    import shutil

    from replacement import train
    from replacement.activation_cache import build_cache
    from replacement.model import ReplacementModel
    from replacement.train import train_replacement
    from toy_models.cli import UserError

    model, tokenizer = tiny_pretrained
    tiny = CONFIGS["tiny"]
    acts = tmp_path / "acts"
    build_cache(model, tokenizer, acts, tiny.batch_size * (tiny.norm_batches + 8 + tiny.steps),
                chunk_rows=32, forward_batch=tiny.batch_size, quiet=True)  # fmt: skip
    base_a, base_b, moved = tmp_path / "a", tmp_path / "b", tmp_path / "moved"
    _, dicts, meta = train_replacement(str(tiny_run), tmp_path / "full", config="tiny",
                                       quiet=True, activations=acts)  # fmt: skip
    full = ReplacementModel(model, list(dicts.lorsas), list(dicts.transcoders))
    full.save(base_a, str(tiny_run), {"copy": "a"})
    full.save(base_b, str(tiny_run), {"copy": "b"})
    shutil.copytree(base_a, moved)
    out = tmp_path / "run"
    common = ["--model", tiny_run, "--config", "tiny", "--activations", acts, "--layers", "0",
              "--out", out, "--resume"]  # fmt: skip
    assert train_replacement(str(tiny_run), out, layers=[0], config="tiny", quiet=True,
                             activations=acts, base=base_a, stop_after=10) is None  # fmt: skip
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = cli(train.main, *common, "--base", base_b)
    assert code == 2 and err.count("\n") == 1, err
    assert f"error: {out / 'checkpoint'} belongs to another run (base_sha256: '" in err
    with pytest.raises(UserError, match=r"belongs to another run \(base_sha256: '[0-9a-f]+' th"):
        train_replacement(str(tiny_run), out, layers=[0], config="tiny", quiet=True,
                          activations=acts, resume=True)  # fmt: skip
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    code, _, err = cli(train.main, *common, "--base", moved)  # the same set, moved
    assert code == 0, err
    assert json.loads((out / "replacement.json").read_text())["meta"]["base"] == str(moved)
    # a base of another model's sizes: refused before the first step, not after the last
    other = tmp_path / "other"
    shutil.copytree(base_a, other)
    (other / "lorsa.1.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="lorsa.1.safetensors"):
        train_replacement(str(tiny_run), tmp_path / "bad", layers=[0], config="tiny",
                          quiet=True, activations=acts, base=other)  # fmt: skip
    assert not (tmp_path / "bad" / "checkpoint").exists()


# ----------------------------------------------------------------- fuzz pass 22
@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s["recent"][-1].update(lorsa_dead=-5),  # a fraction of the units
        lambda s: s["recent"][-1].update(tc_dead=1.5),
        lambda s: s["recent"][-1].update(tc_fvu=-0.1),
        lambda s: s["recent"][-1].update(tc_fvu=1e308),  # beyond float32, which computes it
        lambda s: s["recent"][-1].update(lorsa_fvu=10**400),  # was an OverflowError
        lambda s: s.update(elapsed_s=0),  # ten steps in no time
        lambda s: s.update(base="elsewhere"),  # a key no reader knows was ignored
    ],
    ids=["dead<0", "dead>1", "fvu<0", "fvu 1e308", "fvu 401 digits", "no time", "unknown key"],
)
def test_statistics_no_run_computes_are_refused_on_resume(tiny_run, tmp_path, edit):
    """Found by fuzz pass 22: a checkpoint's recent statistics were checked only for being
    finite, so a dead fraction of -5 and an FVU of 1e308 were resumed and written into the
    set's final figures. Each statistic is bounded by what it is (``STAT_BOUNDS``)."""
    from replacement.dictionaries import STAT_NAMES
    from replacement.train import STAT_BOUNDS, train_replacement

    assert sorted(STAT_BOUNDS) == sorted(STAT_NAMES)
    out = tmp_path / "run"
    assert train_replacement(str(tiny_run), out, config="tiny", stop_after=10, quiet=True) is None
    path = out / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="state.json: not a training state"):
        train_replacement(str(tiny_run), out, config="tiny", resume=True, quiet=True)
    assert path.read_bytes() == before and not (out / "replacement.json").exists()


def test_a_finished_sets_resume_writes_nothing(tiny_run, tmp_path, cli):
    """Found by fuzz pass 22: ``--resume`` of a finished set saved its checkpoint again (a
    folder swapped whole: whatever stood in it went) and rewrote the set. As a finished
    ``toy_models.train`` run, it now stands as written, and says so; a set damaged since is
    written again from the checkpoint. Its evaluation's ``--json`` replaces only its own
    earlier results, never the set's files nor another's."""
    from replacement import evaluate, train

    out = tmp_path / "set"
    argv = ["--model", tiny_run, "--config", "tiny", "--out", out]
    code, first, err = cli(train.main, *argv)
    assert code == 0, err
    (out / "checkpoint" / "notes.txt").write_text("mine")

    def stamps() -> dict:
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
                for p in sorted(out.rglob("*")) if p.is_file()}  # fmt: skip

    before = stamps()
    code, again, err = cli(train.main, *argv, "--resume")
    assert code == 0, err
    assert stamps() == before and again == first
    (out / "replacement.json").unlink()  # damaged since: written again
    code, _, err = cli(train.main, *argv, "--resume")
    assert code == 0, err
    assert (out / "replacement.json").read_bytes() == before[out / "replacement.json"][2]
    # figures main cannot print, in a set edited with its checksum made again (fuzz pass 73: a
    # 401-digit FVU was an OverflowError traceback where main formats it): written again
    from toy_models.checkpoint import json_sha256

    config = json.loads((out / "replacement.json").read_text())
    config["meta"]["final_train_stats"]["lorsa_fvu"] = 10**400
    config["content_sha256"] = json_sha256(
        {k: v for k, v in config.items() if k != "content_sha256"}
    )
    (out / "replacement.json").write_text(json.dumps(config))
    code, again, err = cli(train.main, *argv, "--resume")
    assert code == 0 and "Traceback" not in err, err
    assert (out / "replacement.json").read_bytes() == before[out / "replacement.json"][2]

    eva = ["--model", tiny_run, "--replacement", out, "--batches", "1", "--docs", "1"]
    results = tmp_path / "eval.json"
    for _ in range(2):  # the second run replaces the first's results
        code, _, err = cli(evaluate.main, *eva, "--json", results)
        assert code == 0, err
    assert evaluate.RESULT_KEYS <= json.loads(results.read_text()).keys()
    other = tmp_path / "other"
    other.mkdir()
    (other / "replacement.json").write_text("{}")
    for path, why in (
        (other / "replacement.json", "exists and is not an earlier results file"),
        (out / "checkpoint" / "eval.json", "is inside a training checkpoint"),
    ):
        code, _, err = cli(evaluate.main, *eva, "--json", path)
        assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: --json {path}: {why}")
    assert (other / "replacement.json").read_text() == "{}"
    assert not (out / "checkpoint" / "eval.json").exists()
