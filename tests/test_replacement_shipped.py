"""The shipped replacement set: intact, made for the shipped model, reproducing its record."""

import json

import pytest
import torch

from replacement.ship import RECORD_BATCHES, SHIPPED_DIR
from toy_models.zoo import file_sha256, load_pretrained

DEFAULT = SHIPPED_DIR / "default"
RECORD = json.loads((DEFAULT / "record.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORD["sha256"]))
def test_shipped_files_match_their_recorded_hashes(name):
    assert file_sha256(DEFAULT / name) == RECORD["sha256"][name]


def test_shipped_set_reproduces_its_record_and_local_mode_is_exact():
    from replacement.evaluate import heldout_batches, reconstruction_stats
    from replacement.model import ReplacementModel

    model, tokenizer = load_pretrained("default")
    replacement = ReplacementModel.load(DEFAULT, model)
    batches = heldout_batches(model, tokenizer, RECORD_BATCHES)
    stats = reconstruction_stats(replacement, batches)
    for kind, layers in RECORD["reconstruction"].items():
        for got, want in zip(stats[kind], layers, strict=True):
            assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    with torch.no_grad():
        local = replacement(batches[0][:4], mode="local")
        torch.testing.assert_close(local, model(batches[0][:4]), atol=1e-5, rtol=1e-5)


def test_the_zoo_directory_is_named_once():
    from replacement import model, train

    assert SHIPPED_DIR == model.SHIPPED_DIR and train.SET_FILE == model.CONFIG_FILE


@pytest.fixture(scope="module")
def default_model():
    return load_pretrained("default")[0]


def damaged_copy(tmp_path, keep_record=False):
    import shutil

    copy = tmp_path / "set"
    shutil.copytree(DEFAULT, copy)
    if not keep_record:
        (copy / "record.json").unlink()  # so that the set's own checks are what refuses
    return copy


def reseal(directory):
    """Record the files' current hashes in replacement.json, as a forger would."""
    from toy_models.checkpoint import json_sha256

    config = json.loads((directory / "replacement.json").read_text())
    config["files"] = {name: file_sha256(directory / name) for name in config["files"]}
    config.pop("content_sha256")
    config["content_sha256"] = json_sha256(config)
    (directory / "replacement.json").write_text(json.dumps(config))


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x01
    path.write_bytes(bytes(data))


def edit_config(directory, change):
    config = json.loads((directory / "replacement.json").read_text())
    change(config)
    (directory / "replacement.json").write_text(json.dumps(config))


def as_integers(path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({k: (v * 100).to(torch.int16) for k, v in tensors.items()}, str(path))


DAMAGE = {
    "missing": (
        lambda d: (d / "lorsa.2.safetensors").unlink(),
        FileNotFoundError,
        r"checkpoint file missing: .*set/lorsa.2.safetensors",
    ),
    "truncated": (
        lambda d: (d / "transcoder.1.safetensors").write_bytes(
            (d / "transcoder.1.safetensors").read_bytes()[:5000]
        ),
        ValueError,
        r"set/transcoder.1.safetensors: unreadable weights",
    ),
    "flipped": (
        lambda d: flip_byte(d / "lorsa.0.safetensors"),
        ValueError,
        r"set/lorsa.0.safetensors: not the file recorded in replacement.json",
    ),
    "top_k": (
        lambda d: edit_config(d, lambda c: c["lorsa"][1].update(top_k=64)),
        ValueError,
        r"set/replacement.json: edited after it was saved",
    ),
    "top_k_type": (
        lambda d: edit_config(d, lambda c: c["transcoders"][0].update(top_k="32")),
        ValueError,
        r"set/replacement.json: not a valid replacement config \(transcoders\[0\].top_k must be an "
        r"integer, got '32'\)",
    ),
    "swapped": (
        lambda d: [
            (d / "lorsa.0.safetensors").rename(d / "swap"),
            (d / "lorsa.1.safetensors").rename(d / "lorsa.0.safetensors"),
            (d / "swap").rename(d / "lorsa.1.safetensors"),
        ],
        ValueError,
        r"set/lorsa.0.safetensors: not the file recorded in replacement.json",
    ),
    "integers": (  # resealed, so that the dtype check itself is what refuses
        lambda d: [as_integers(d / "transcoder.3.safetensors"), reseal(d)],
        ValueError,
        r"set/transcoder.3.safetensors: \w+ is stored as torch.int16, not floating point",
    ),
    "old_format": (
        lambda d: edit_config(d, lambda c: c.update(format_version=1)),
        ValueError,
        r"set/replacement.json: format_version 1, expected 2",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_set_is_refused_naming_the_file(default_model, tmp_path, damage):
    from replacement.model import ReplacementModel

    directory = damaged_copy(tmp_path)
    ReplacementModel.load(directory, default_model)  # intact without its record, too
    apply, error, match = DAMAGE[damage]
    apply(directory)
    with pytest.raises(error, match=match) as info:
        ReplacementModel.load(directory, default_model)
    assert "\n" not in str(info.value)


def test_a_resealed_shipped_set_is_still_refused_by_its_record(default_model, tmp_path):
    from replacement.model import ReplacementModel

    directory = damaged_copy(tmp_path, keep_record=True)
    flip_byte(directory / "transcoder.2.safetensors")
    reseal(directory)
    with pytest.raises(
        ValueError, match=r"set/(replacement.json|transcoder.2.safetensors): changed since"
    ):
        ReplacementModel.load(directory, default_model)


def test_evaluate_refuses_a_damaged_set_in_one_line(tmp_path, capsys):
    from replacement.evaluate import main
    from toy_models.cli import run_cli

    directory = damaged_copy(tmp_path)
    flip_byte(directory / "lorsa.3.safetensors")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--replacement", str(directory), "--batches", "1", "--docs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert "lorsa.3.safetensors: not the file recorded in replacement.json" in err[0]


def test_loading_builds_no_meta_tensor_ops():
    """The shape check builds each module on the meta device first; an out-of-place op or a
    random init there runs torch's Python meta kernels, whose import costs seconds of every
    trace's start-up. A fresh process loads the shipped model and replacement set without."""
    import subprocess
    import sys

    code = (
        "import sys; from replacement.model import load_pretrained; load_pretrained('default'); "
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout


def test_the_shipped_entry_given_by_its_directory_finds_its_set(tmp_path):
    """Found by a fuzz pass: the shipped default given by path found no set, and told a
    Python caller to "pass one with --replacement"."""
    import shutil

    from replacement.model import load_pretrained as load_with_set
    from toy_models.zoo import SHIPPED_DIR as MODEL_ZOO
    from toy_models.zoo import UnknownModelError

    for given in (str(MODEL_ZOO / "default"), MODEL_ZOO / "default"):
        replacement, _ = load_with_set(given)
        assert (
            replacement.content_sha256
            == json.loads((DEFAULT / "replacement.json").read_text())["content_sha256"]
        )
    copy = tmp_path / "checkpoint"
    shutil.copytree(MODEL_ZOO / "default", copy)
    with pytest.raises(UnknownModelError, match="outside the zoo.*pass replacement=DIR"):
        load_with_set(str(copy))
    assert load_with_set(copy, DEFAULT)[0].content_sha256 == replacement.content_sha256
