"""Activation caches (replacement.activation_cache, python -m replacement.cache) and training
from them (replacement.train --activations, --layers, --base)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from replacement.activation_cache import (
    CHUNK_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    ActivationCache,
    CachedActivationStore,
    build_cache,
)
from replacement.activations import ActivationStore
from replacement.train import CONFIGS
from toy_models.cli import UserError

ROOT = Path(__file__).parent.parent
TINY = CONFIGS["tiny"]
# rows a tiny run reads: scales, the shuffle buffer, then one batch a step
TINY_ROWS = TINY.batch_size * (TINY.norm_batches + 8 + TINY.steps)
CHUNK, BATCH = 32, TINY.batch_size  # forward batch = training batch: the same bits


@pytest.fixture(scope="module")
def tiny_cache(tiny_run, tmp_path_factory):
    from toy_models.zoo import load_pretrained

    model, tokenizer = load_pretrained(str(tiny_run))
    out = tmp_path_factory.mktemp("acts") / "acts"
    build_cache(model, tokenizer, out, TINY_ROWS, chunk_rows=CHUNK, forward_batch=BATCH, quiet=True)
    return out


def _states_equal(a, b) -> bool:
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cached_store_yields_the_streamed_batches(tiny_pretrained, tiny_cache):
    """Same rows, same forward batches, float32: the cached store's batches (Lorsa rows and
    shuffled transcoder tokens) are the streamed store's, bit for bit."""
    model, tokenizer = tiny_pretrained
    cache = ActivationCache(tiny_cache, model)
    assert cache.plan.rows == TINY_ROWS and len(cache.chunks) == -(-TINY_ROWS // CHUNK)
    streamed = ActivationStore(model, tokenizer, BATCH, "train", seed=0)  # every layer
    cached = CachedActivationStore(cache, [1], BATCH, seed=0)
    for _ in range(3):
        a, b = next(streamed), next(cached)
        for name in ("lorsa_x", "lorsa_y", "tc_x", "tc_y"):
            assert torch.equal(getattr(a, name)[1:], getattr(b, name)), name
    # stored tokens are the stream's rows; reading past the end wraps around to row 0
    from toy_models.data import stream_rows

    rows = stream_rows(tokenizer, model.cfg.n_ctx, "train", 0)
    first = torch.tensor([next(rows)[1] for _ in range(CHUNK + 3)])
    assert torch.equal(cache.tokens(0, CHUNK + 3), first)
    wrapped = cache.rows([0], TINY_ROWS - 2, 4)
    torch.testing.assert_close(wrapped[0][:, 2:], cache.rows([0], 0, 2)[0], rtol=0, atol=0)


def test_training_from_the_cache_equals_training_from_the_stream(tiny_run, tiny_cache, tmp_path):
    """A fresh run from a cache built with the training stream's seed (0) sees the same rows
    in the same forward batches (float32), so the trained dictionaries are bit-identical."""
    from replacement.train import train_replacement

    def run(out, **kw):
        return train_replacement(str(tiny_run), tmp_path / out, config="tiny", quiet=True, **kw)[1:]

    streamed, _ = run("stream")
    cached, meta = run("cache", activations=tiny_cache)
    assert _states_equal(streamed, cached)
    assert meta["activations"]["rows"] == TINY_ROWS and meta["activations"]["epochs_read"] <= 1
    # --layers 1 trains layer 1 alone: exactly the layer-1 dictionaries of the full run (each
    # layer's loss, initialisation and Adam state are its own)
    only_1, meta_1 = run("layer1", activations=tiny_cache, layers=[1])
    assert only_1.layers == [1] and len(only_1.lorsas) == len(only_1.transcoders) == 1
    assert meta_1["layers"] == [1]
    for part in ("lorsas", "transcoders"):
        one, full = getattr(only_1, part)[0].state_dict(), getattr(cached, part)[1].state_dict()
        for k in full:
            torch.testing.assert_close(one[k], full[k], rtol=1e-6, atol=1e-7)
    # a cache of another seed is other rows: the run differs
    with pytest.raises(UserError, match="already holds a training run"):
        run("cache", activations=tiny_cache)


def test_training_from_a_cache_of_the_held_out_split_is_refused(tiny_pretrained, tiny_run,
                                                                 tmp_path):  # fmt: skip
    """Found by a fuzz pass: a set trained from a cache of the held-out split was accepted
    without a word, and evaluation would then read rows the dictionaries trained on."""
    from replacement.train import train_replacement

    model, tokenizer = tiny_pretrained
    held = tmp_path / "held"
    build_cache(model, tokenizer, held, CHUNK, split="heldout", chunk_rows=CHUNK,
                forward_batch=BATCH, quiet=True)  # fmt: skip
    with pytest.raises(UserError, match="caches the 'heldout' split"):
        train_replacement(str(tiny_run), tmp_path / "set", config="tiny", quiet=True,
                          activations=held)  # fmt: skip
    assert not (tmp_path / "set" / "replacement.json").exists()


def test_an_activation_cache_is_saved_work_no_other_run_writes_into(tiny_run, tiny_cache,
                                                                     tmp_path):  # fmt: skip
    """Found by a fuzz pass: a training run written into an activation cache (not the one it
    trained from) succeeded, and the cache then refused to resume, holding a replacement set.
    A folder holding a cache's manifest is refused by every command but the cache's own."""
    from replacement.train import train_replacement

    other = tmp_path / "other"
    shutil.copytree(tiny_cache, other)
    before = sorted(p.name for p in other.iterdir())
    with pytest.raises(UserError, match="holds an activation cache .manifest.json."):
        train_replacement(str(tiny_run), other, config="tiny", quiet=True)
    assert sorted(p.name for p in other.iterdir()) == before
    from toy_models.files import check_writable_dir

    with pytest.raises(UserError, match="--out .*: holds an activation cache"):
        check_writable_dir(other)  # what every command checks its --out with
    check_writable_dir(other, own=(MANIFEST_FILE,))  # the cache's own, to resume it


def test_a_fresh_cache_refuses_chunk_files_it_did_not_write(tiny_pretrained, tmp_path):
    """Found by a fuzz pass: a fresh cache run overwrote a chunk file already in --out with
    no manifest beside it (exit 0); a run writes its manifest first, so such a file is not a
    cache run's: refused, kept."""
    model, tokenizer = tiny_pretrained
    out = tmp_path / "acts"
    out.mkdir()
    stray = out / CHUNK_FILE.format(0)
    stray.write_bytes(b"mine")
    with pytest.raises(UserError, match="a chunk file with no manifest.json beside it"):
        build_cache(model, tokenizer, out, CHUNK, chunk_rows=CHUNK, forward_batch=BATCH,
                    quiet=True)  # fmt: skip
    assert stray.read_bytes() == b"mine" and not (out / MANIFEST_FILE).exists()


def test_a_second_build_into_a_folder_being_cached_is_refused(tiny_pretrained, tmp_path):
    """Two cache builds into one folder each wrote the manifest over the other's (a note's
    Left: ``replacement.cache`` took no lock): a live build's lock refuses the second in one
    line before it writes anything; a finished build leaves no lock behind."""
    model, tokenizer = tiny_pretrained
    out = tmp_path / "acts"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(str(other.pid))
        with pytest.raises(UserError, match=rf"another run \(process {other.pid}\) is caching"):
            build_cache(model, tokenizer, out, CHUNK, chunk_rows=CHUNK, forward_batch=BATCH,
                        quiet=True)  # fmt: skip
        assert sorted(os.listdir(out)) == [LOCK_FILE]  # nothing written, the lock left as it was
        assert (out / LOCK_FILE).read_text() == str(other.pid)
    finally:
        other.kill()
        other.wait()
    build_cache(model, tokenizer, out, CHUNK, chunk_rows=CHUNK, forward_batch=BATCH, quiet=True)
    assert LOCK_FILE not in os.listdir(out) and (out / MANIFEST_FILE).exists()  # a dead one's taken


def test_a_resumed_run_from_the_cache_ends_as_an_uninterrupted_one(tiny_run, tiny_cache, tmp_path):
    """Stopped at checkpoints and resumed, a run from the cache reads on with the rows, the
    shuffle buffer and the generator of an uninterrupted run: the same bits at the end. By
    step 30 it has read past the cache's last row, so the second resume's buffer holds
    wrapped rows."""
    from replacement.train import train_replacement

    def run(out, **kw):
        return train_replacement(
            str(tiny_run), tmp_path / out, config="tiny", steps=40, quiet=True,
            activations=tiny_cache, **kw,
        )  # fmt: skip

    _, whole, meta = run("whole")
    assert run("stopped", stop_after=10) is None
    assert run("stopped", stop_after=30, resume=True) is None
    _, resumed, resumed_meta = run("stopped", resume=True)
    assert _states_equal(whole, resumed)
    assert meta["activations"]["epochs_read"] > 1
    assert resumed_meta["activations"] == meta["activations"]


def test_cli_trains_only_the_given_layers_and_copies_the_rest_from_base(
    tiny_run, tiny_cache, tmp_path, cli
):
    from replacement import train
    from replacement.model import ReplacementModel
    from toy_models.zoo import load_pretrained

    model, _ = load_pretrained(str(tiny_run))
    base = tmp_path / "base"
    common = ["--model", tiny_run, "--config", "tiny"]
    assert cli(train.main, *common, "--steps", "10", "--activations", tiny_cache,
               "--out", base)[0] == 0  # fmt: skip
    out = tmp_path / "layer0"
    code, stdout, err = cli(
        train.main, *common, "--activations", tiny_cache, "--layers", "0", "--base", base,
        "--out", out, "--steps", "20",
    )  # fmt: skip
    assert code == 0, err
    got, want = ReplacementModel.load(out, model), ReplacementModel.load(base, model)
    assert _states_equal(got.transcoders[1], want.transcoders[1])
    assert _states_equal(got.lorsas[1], want.lorsas[1])
    assert not _states_equal(got.lorsas[0], want.lorsas[0])
    meta = json.loads((out / "replacement.json").read_text())["meta"]
    assert meta["trained_layers"] == [0] and meta["base"] == str(base)
    assert (
        meta["activations"]["cache_id"]
        == json.loads((tiny_cache / MANIFEST_FILE).read_text())["cache_id"]
    )
    # a layer the cache does not hold, and a layer the model does not have
    code, _, err = cli(
        train.main, *common, "--activations", tiny_cache, "--layers", "5", "--base", base,
        "--out", tmp_path / "bad",
    )  # fmt: skip
    assert code == 2 and "out of range" in err


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_damaged_caches_are_refused_naming_the_file(tiny_pretrained, tiny_cache, tmp_path):
    import replacement.activation_cache as ac

    model, _ = tiny_pretrained

    def read_all(directory):
        cache = ActivationCache(directory, model)
        for i in range(cache.plan.n_chunks):
            cache.chunk(i, cache.plan.layers)

    read_all(tiny_cache)  # the intact one reads
    chunk1 = CHUNK_FILE.format(1)

    missing = _copy(tiny_cache, tmp_path / "missing")
    (missing / chunk1).unlink()
    with pytest.raises(FileNotFoundError, match=f"chunk missing: .*missing/{chunk1}"):
        read_all(missing)

    # a fault pass: each of these was called "missing"
    for case, why in (("directory", "a directory, not a file"),
                      ("/dev/zero", r"not a regular file \(a FIFO, a device or a socket\)"),
                      ("itself", "a symbolic link that leads to no file")):  # fmt: skip
        forged = _copy(tiny_cache, tmp_path / case.strip("/").replace("/", "-"))
        (forged / chunk1).unlink()
        if case == "directory":
            (forged / chunk1).mkdir()
        else:
            (forged / chunk1).symlink_to(chunk1 if case == "itself" else case)
        with pytest.raises(FileNotFoundError, match=f"^activation cache chunk {forged / chunk1}: "
                           f"{why}"):  # fmt: skip
            read_all(forged)

    truncated = _copy(tiny_cache, tmp_path / "truncated")
    data = (truncated / chunk1).read_bytes()
    (truncated / chunk1).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"truncated/{chunk1}: unreadable chunk"):
        read_all(truncated)

    swapped = _copy(tiny_cache, tmp_path / "swapped")
    a, b = swapped / CHUNK_FILE.format(0), swapped / chunk1
    a.rename(tmp_path / "t")
    b.rename(a)
    (tmp_path / "t").rename(b)
    with pytest.raises(ValueError, match=f"swapped/{CHUNK_FILE.format(0)}: is chunk '1'"):
        read_all(swapped)

    edited = _copy(tiny_cache, tmp_path / "edited")  # same header, one value changed
    data = bytearray((edited / chunk1).read_bytes())
    data[-5] ^= 0xFF
    (edited / chunk1).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"edited/{chunk1}: .* differs from the manifest"):
        read_all(edited)

    for name, change, match in (
        ("bad-field", lambda m: m["plan"].update(rows=-3), "plan.rows must be an integer"),
        ("bad-dtype", lambda m: m["plan"].update(dtype="int8"), "plan.dtype must be one of"),
        ("bad-record", lambda m: m["chunks"][0].update(file="../x"), "chunk record 0 is invalid"),
        ("incomplete", lambda m: m["chunks"].pop(), "incomplete"),
        (
            "another-model",
            lambda m: (
                m["plan"].update(model_sha256="0" * 64),
                m.update(cache_id=ac.CachePlan.from_json(m["plan"], "m").cache_id()),
            ),
            "another model",
        ),  # fmt: skip
        # a fuzz pass: the manifest's cache_id was written and never read back
        (
            "edited-id",
            lambda m: m.update(cache_id="0" * 64),
            "its cache_id is not its plan's .*: the manifest was edited; remove the cache",
        ),
        (
            "extra-key",
            lambda m: m.update(note="mine"),
            r"holds unknown keys \('note'\): written by another version, or edited",
        ),
    ):
        bad = _copy(tiny_cache, tmp_path / name)
        manifest = json.loads((bad / MANIFEST_FILE).read_text())
        change(manifest)
        (bad / MANIFEST_FILE).write_text(json.dumps(manifest))
        with pytest.raises((ValueError, UserError), match=match):
            read_all(bad)

    # the identity is the model's: one changed weight makes another model
    other = type(model)(model.cfg)
    other.load_state_dict(model.state_dict())
    other.tokenizer_sha256 = model.tokenizer_sha256
    with torch.no_grad():
        other.blocks[0].attn.W_Q[0, 0, 0] += 1e-3
    with pytest.raises(UserError, match="built from another model"):
        ActivationCache(tiny_cache, other)


def test_a_chunk_forged_with_its_manifest_hashes_is_refused_for_its_values(
    tiny_pretrained, tiny_cache, tmp_path
):
    """A fault pass: a chunk holding a NaN activation, or a token id past the vocabulary, with
    the manifest's SHA-256 made for it, passed every check: the NaN was reported as the
    training run diverging ("start a new run", which diverged again), the token id reached
    the model's embedding. Each is refused naming the chunk and what is wrong."""
    from safetensors import safe_open
    from safetensors.torch import load, save

    from replacement.activation_cache import tensor_sha256

    model, _ = tiny_pretrained
    vocab = model.cfg.d_vocab
    for case, name, value, why in (
        ("nan", "lorsa_x.1", float("nan"), "lorsa_x.1 holds NaN or infinite values"),
        ("inf", "tc_y.0", float("inf"), "tc_y.0 holds NaN or infinite values"),
        ("past", "tokens", vocab, f"tokens holds ids outside the model's vocabulary "
                                  f"\\(0..{vocab - 1}\\)"),
        ("negative", "tokens", -1, "tokens holds ids outside"),
    ):  # fmt: skip
        bad = _copy(tiny_cache, tmp_path / case)
        chunk = bad / CHUNK_FILE.format(1)
        with safe_open(str(chunk), "pt") as f:
            metadata = f.metadata()
        tensors = load(chunk.read_bytes())
        tensors[name][2, 3, ...] = value
        chunk.write_bytes(save(tensors, metadata))
        manifest = json.loads((bad / MANIFEST_FILE).read_text())
        manifest["chunks"][1]["sha256"][name] = tensor_sha256(tensors[name])
        (bad / MANIFEST_FILE).write_text(json.dumps(manifest))
        cache = ActivationCache(bad, model)
        cache.chunk(0, cache.plan.layers)  # the other chunk reads
        with pytest.raises(ValueError, match=f"^{chunk}: {why}"):
            cache.chunk(1, cache.plan.layers)


KILL_WHILE_WRITING_A_CHUNK = """
import os, signal, sys
from pathlib import Path
import toy_models.files as files
from replacement.activation_cache import build_cache
from toy_models.zoo import load_pretrained

real, calls = files.replace_atomic, []

def replace_atomic(path, write):  # kill -9 half-way through the third chunk's temp file
    if Path(path).suffix == ".safetensors":
        calls.append(path)
    if len(calls) == 3:
        files.temp_path(Path(path)).write_bytes(b"half a chunk")
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, write)

files.replace_atomic = replace_atomic
model, tokenizer = load_pretrained(sys.argv[1])
build_cache(model, tokenizer, Path(sys.argv[2]), int(sys.argv[3]), chunk_rows=32,
            forward_batch=4, quiet=True)
"""


def test_a_killed_cache_build_resumes_to_the_same_bytes(tiny_run, tiny_cache, tmp_path):
    from toy_models.zoo import load_pretrained

    out = tmp_path / "killed"
    script = [sys.executable, "-c", KILL_WHILE_WRITING_A_CHUNK, str(tiny_run), str(out)]
    result = subprocess.run([*script, str(TINY_ROWS)], cwd=ROOT)
    assert result.returncode == -9
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    orphans = list(out.glob(CHUNK_FILE.format(2) + ".*.tmp"))  # the killed writer's temp file
    assert len(manifest["chunks"]) == 2 and len(orphans) == 1
    model, tokenizer = load_pretrained(str(tiny_run))
    with pytest.raises(UserError, match="incomplete"):
        ActivationCache(out, model)
    # another plan in the same directory is refused, naming the difference
    with pytest.raises(UserError, match="another activation cache .*rows"):
        build_cache(model, tokenizer, out, 64, chunk_rows=32, forward_batch=4, quiet=True)
    build_cache(model, tokenizer, out, TINY_ROWS, chunk_rows=32, forward_batch=4, quiet=True)
    assert not orphans[0].exists()  # its writer is dead: writing the chunk removed it
    names = sorted(os.listdir(tiny_cache))
    assert sorted(os.listdir(out)) == names
    # the same manifest (which holds every tensor's SHA-256) and the same chunks; safetensors
    # writes a header's metadata entries in no fixed order, so chunk bytes are compared by
    # content
    from safetensors import safe_open

    assert (out / MANIFEST_FILE).read_bytes() == (tiny_cache / MANIFEST_FILE).read_bytes()
    for name in names:
        if name != MANIFEST_FILE:
            with (
                safe_open(str(out / name), "pt") as a,
                safe_open(str(tiny_cache / name), "pt") as b,
            ):
                assert a.metadata() == b.metadata() and set(a.keys()) == set(b.keys())
                assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())  # noqa: SIM118
    ActivationCache(out, model).chunk(2, [0, 1])  # and it reads, checked


def test_a_rerun_rebuilds_missing_or_damaged_chunks(tiny_run, tiny_cache, tmp_path):
    """A rerun of a finished (or partial) cache reads every recorded chunk against the
    manifest and builds again from the first missing or damaged one, instead of reporting a
    cache that training would refuse later."""
    import shutil

    from toy_models.zoo import load_pretrained

    model, tokenizer = load_pretrained(str(tiny_run))
    for damage in (
        lambda out: (out / CHUNK_FILE.format(1)).unlink(),
        lambda out: os.truncate(out / CHUNK_FILE.format(0), 5000),
        lambda out: shutil.copyfile(out / CHUNK_FILE.format(0), out / CHUNK_FILE.format(2)),
    ):
        out = tmp_path / "acts"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(tiny_cache, out)
        damage(out)
        build_cache(model, tokenizer, out, TINY_ROWS, chunk_rows=CHUNK, forward_batch=BATCH,
                    quiet=True)  # fmt: skip
        assert (out / MANIFEST_FILE).read_bytes() == (tiny_cache / MANIFEST_FILE).read_bytes()
        cache = ActivationCache(out, model)
        for index in range(cache.plan.n_chunks):
            cache.chunk(index, cache.plan.layers)  # every chunk reads, checked


def test_cache_cli_builds_and_resumes(tiny_run, tmp_path, cli):
    from replacement import cache

    out = tmp_path / "acts"
    argv = ["--model", tiny_run, "--rows", "20", "--layers", "1", "--chunk-rows", "8",
            "--batch", "4", "--out", out]  # fmt: skip
    code, stdout, err = cli(cache.main, *argv)
    assert code == 0, err
    assert "cached 20 rows of layers [1] (3 chunks" in stdout
    code, stdout, _ = cli(cache.main, *argv)  # a complete cache: nothing to do, same result
    assert code == 0 and "cached 20 rows" in stdout
    code, _, err = cli(cache.main, *argv[:-1], tmp_path / "x", "--dtype", "float16")
    assert code == 0
    assert json.loads((tmp_path / "x" / MANIFEST_FILE).read_text())["plan"]["dtype"] == "float16"


def test_cache_and_train_arguments_are_checked_before_torch(tmp_path, fresh_cli):
    out, a_file = str(tmp_path / "never"), tmp_path / "a-file"
    a_file.write_text("")
    cases = [
        ("replacement.cache", ["--help"], 0, "Rerun to resume"),
        ("replacement.cache", ["--rows", "0", "--out", out], 2, "--rows must be positive"),
        ("replacement.cache", ["--rows", "8", "--batch", "3", "--out", out], 2, "divide"),
        ("replacement.cache", ["--rows", "8", "--layers", "x", "--out", out], 2, "--layers"),
        ("replacement.cache", ["--rows", "8", "--model", "gpt5", "--out", out], 2, "unknown"),
        ("replacement.cache", ["--rows", "8", "--out", str(a_file)], 2, "not a directory"),
        ("replacement.train", ["--help"], 0, "--activations"),
        ("replacement.train", ["--layers", "1", "--out", out], 2, "needs --activations"),
        ("replacement.train", ["--activations", out, "--out", out], 2, "not an activation"),
        ("replacement.train", ["--base", str(tmp_path), "--out", out], 2, "with --layers all"),
        (
            "replacement.train",
            ["--layers", "0,2", "--activations", str(tmp_path), "--base", out, "--out", out],
            2,
            "not an activation cache",
        ),
    ]
    for module, args, want, text in cases:
        code, heavy, err = fresh_cli(module, args, cwd=ROOT)
        assert code == want and not heavy, (module, args, code, heavy, err)
        assert "Traceback" not in err
        if want:
            assert err.strip().splitlines()[-1].startswith("error: ") and text in err, err
    for module, args in (
        ("replacement.cache", ["--rows", "8", "--out", ""]),
        ("replacement.train", ["--out", " "]),
    ):  # argparse's own line
        code, heavy, err = fresh_cli(module, args, cwd=ROOT)
        assert code == 2 and not heavy and "error: argument --out: an empty path" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_cache_that_cannot_fit_on_the_disk_is_refused_before_any_work(
    tiny_run, tiny_cache, tmp_path, monkeypatch
):
    """The chunk sizes are known from the plan: a build that would fill the disk is refused
    up front (naming what it needs and what is free), writing nothing; a partial cache needs
    room only for its missing chunks."""
    import replacement.activation_cache as ac
    from toy_models.zoo import load_pretrained

    plan, _ = ac.read_manifest(tiny_cache)
    for i in range(plan.n_chunks):  # the estimate is each file's tensor bytes
        size = (tiny_cache / CHUNK_FILE.format(i)).stat().st_size
        assert 0 <= size - plan.chunk_bytes(i) < 2**16
    need = sum(plan.chunk_bytes(i) for i in range(plan.n_chunks))
    model, tokenizer = load_pretrained(str(tiny_run))
    real = shutil.disk_usage

    def free(n):
        monkeypatch.setattr(ac.shutil, "disk_usage", lambda p: real(p)._replace(free=n))

    free(need // 2)
    out = tmp_path / "acts"
    with pytest.raises(UserError, match=r"needs \d+\.\d MiB more .* MiB free; .*--rows or "
                       "--layers or --dtype float16$"):  # fmt: skip
        build_cache(model, tokenizer, out, TINY_ROWS, chunk_rows=CHUNK, forward_batch=BATCH,
                    quiet=True)  # fmt: skip
    assert not out.exists() or not any(out.iterdir())
    monkeypatch.undo()
    build_cache(model, tokenizer, out, TINY_ROWS, chunk_rows=CHUNK, forward_batch=BATCH,
                quiet=True, stop_after_chunks=plan.n_chunks - 1)  # fmt: skip
    free(plan.chunk_bytes(plan.n_chunks - 1) + 2**17)  # room for the last chunk only
    build_cache(model, tokenizer, out, TINY_ROWS, chunk_rows=CHUNK, forward_batch=BATCH,
                quiet=True)  # fmt: skip
    assert (out / MANIFEST_FILE).read_bytes() == (tiny_cache / MANIFEST_FILE).read_bytes()


# ----------------------------------------------------------------- fuzz pass 22
def test_cache_arguments_beyond_the_manifest_bound_are_refused_early(tmp_path, fresh_cli):
    """Found by fuzz pass 22: ``--seed``, ``--chunk-rows`` and ``--batch`` above 2**40 built a
    cache (exit 0) that its own manifest reader refuses, so every later use failed; ``--rows``
    of 1e14 spent hours in the disk-space check. The CLI applies the reader's bound
    (``MAX_PLAN_VALUE``) before any work, without importing torch."""
    big = str(2**40 + 1)
    out = str(tmp_path / "never")
    for args, flag in (
        (["--rows", "99999999999999"], "--rows"),
        (["--rows", big, "--chunk-rows", str(2**40)], "--rows"),  # two chunks: no hang before
        (["--rows", "8", "--seed", "2199023255552"], "--seed"),
        (["--rows", "8", "--chunk-rows", str(2 * (2**40 + 1)), "--batch", big], "--chunk-rows"),
    ):
        code, heavy, err = fresh_cli("replacement.cache", [*args, "--out", out], cwd=ROOT)
        assert code == 2 and not heavy and "Traceback" not in err, (args, err)
        assert err.strip().splitlines()[-1].startswith(f"error: {flag} must be at most 2**40")
    assert not any(tmp_path.iterdir())


def test_one_plan_bound_and_a_closed_form_space_check(tiny_cache, monkeypatch):
    """One bound for the CLI and the reader (``MAX_PLAN_VALUE``); the disk space still needed
    is the sum over the chunks left, computed without a loop over them: a plan of 2**40 chunks
    is refused at once."""
    import time
    from dataclasses import asdict, replace

    import replacement.activation_cache as ac
    from replacement.cache import MAX_PLAN_VALUE

    plan, _ = ac.read_manifest(tiny_cache)
    with pytest.raises(ValueError, match=r"plan.seed must be an integer in 0..2\*\*40"):
        ac.CachePlan.from_json(asdict(replace(plan, seed=MAX_PLAN_VALUE + 1)), "manifest")
    real = shutil.disk_usage
    for rows, chunk_rows in ((20, 8), (24, 8), (7, 8)):
        small = replace(plan, rows=rows, chunk_rows=chunk_rows, forward_batch=1)
        for done in range(small.n_chunks + 1):
            need = sum(small.chunk_bytes(i) + 2**16 for i in range(done, small.n_chunks))
            monkeypatch.setattr(ac.shutil, "disk_usage", lambda p, n=need: real(p)._replace(free=n))
            ac._check_space(tiny_cache, small, done)  # exactly enough room
            if need:
                free = need - 1
                monkeypatch.setattr(ac.shutil, "disk_usage",
                                    lambda p, n=free: real(p)._replace(free=n))  # fmt: skip
                with pytest.raises(UserError, match="the cache needs"):
                    ac._check_space(tiny_cache, small, done)
    monkeypatch.undo()
    huge = replace(plan, rows=MAX_PLAN_VALUE, chunk_rows=1, forward_batch=1)
    start = time.perf_counter()
    with pytest.raises(UserError, match="the cache needs"):
        ac._check_space(tiny_cache, huge, 0)
    assert time.perf_counter() - start < 1


def test_a_manifest_key_of_any_name_is_refused_in_one_clipped_line(tiny_cache, tmp_path):
    """A fuzz-style edit: a manifest or its plan with a key of 10**5 characters was refused
    with the key written out whole ("plan fields differ (missing [], unexpected ['xxx...])",
    100 kB on one line); ``check_keys``'s form now, as every reader of JSON from disk says it."""
    from replacement.activation_cache import read_manifest

    long = "x" * 10**5
    said, clipped = "written by another version, or edited", f"('{'x' * 39}...)"
    for name, change, message in (
        ("plan", lambda m: m["plan"].update({long: 1}), f": its plan holds unknown keys {clipped}"),
        ("top", lambda m: m.update({long: 1}), f" holds unknown keys {clipped}"),
        ("seed", lambda m: m["plan"].pop("seed"), ": its plan lacks 'seed'"),
        ("chunks", lambda m: m.pop("chunks"), " lacks 'chunks'"),
    ):  # fmt: skip
        bad = _copy(tiny_cache, tmp_path / name)
        manifest = json.loads((bad / MANIFEST_FILE).read_text())
        change(manifest)
        (bad / MANIFEST_FILE).write_text(json.dumps(manifest))
        with pytest.raises(ValueError) as info:
            read_manifest(bad)
        assert str(info.value) == f"{bad / MANIFEST_FILE}{message}: {said}"
