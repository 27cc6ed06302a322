"""The shipped default model: files intact, loadable, and reproducing their recorded figures."""

import json
import random

import pytest

from toy_models.data import COMMON_NAMES, rare_name
from toy_models.ship import RECORD_DOCS, SHIPPED_FILES
from toy_models.zoo import SHIPPED_DIR, file_sha256, load_pretrained

DEFAULT = SHIPPED_DIR / "default"
RECORD = json.loads((DEFAULT / "record.json").read_text())


@pytest.mark.parametrize("name", SHIPPED_FILES)
def test_shipped_files_match_their_recorded_hashes(name):
    assert file_sha256(DEFAULT / name) == RECORD["sha256"][name]


def test_shipped_model_reproduces_its_recorded_heldout_loss():
    from toy_models.evaluate import heldout_loss

    model, tokenizer = load_pretrained("default")
    loss = heldout_loss(model, tokenizer, RECORD_DOCS)
    assert loss == pytest.approx(RECORD["heldout_loss"], rel=1e-5)


def test_shipped_artifacts_are_small():
    total = sum(f.stat().st_size for f in SHIPPED_DIR.rglob("*") if f.is_file())
    assert total < 10e6


def test_trained_vocabulary_makes_subtoken_induction_observable():
    _, tokenizer = load_pretrained("default")
    for name in COMMON_NAMES:
        assert len(tokenizer.encode(" " + name).ids) == 2, name  # BOS + one token
    rng = random.Random(0)
    heldout = [rare_name(rng, "heldout") for _ in range(200)]
    split = [len(tokenizer.encode(" " + n).ids) - 1 >= 2 for n in heldout]
    assert sum(split) / len(split) >= 0.95
    digits = tokenizer.encode("1234567890").tokens[1:]
    assert digits == list("1234567890")


def shipped_copy(tmp_path):
    import shutil

    copy = tmp_path / "D"
    shutil.copytree(DEFAULT, copy)
    return copy


def flip_a_weight_byte(path):
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x01  # inside the tensor data, past the header
    path.write_bytes(bytes(data))


def test_a_model_directory_may_be_a_path():
    """Found by a fuzz pass: a Path (what a notebook often holds) failed on ``.strip``."""
    model, _ = load_pretrained(SHIPPED_DIR / "default")
    assert model.cfg.n_layers == 4


def test_a_changed_shipped_file_is_refused(tmp_path):
    """Issue 11 item 3: record.json's hashes are checked whenever a shipped entry loads."""
    d = shipped_copy(tmp_path)
    config = json.loads((d / "config.json").read_text())
    config["model"]["ln_eps"] = 1e-3
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"D/config.json: changed since shipped"):
        load_pretrained(str(d))
    d = shipped_copy(tmp_path / "2")
    flip_a_weight_byte(d / "model.safetensors")
    with pytest.raises(ValueError, match=r"D/model.safetensors: changed since shipped"):
        load_pretrained(str(d))


def test_a_ship_record_holds_its_figures_and_nothing_else(tmp_path):
    """A fuzz pass: a shipped model's and a shipped set's record.json with a key of any name
    beside the hashes and the ship's figures loaded, the key ignored."""
    import shutil

    from replacement.model import SHIPPED_DIR as SETS_DIR
    from replacement.model import ReplacementModel

    d = shipped_copy(tmp_path)
    model, _ = load_pretrained(str(d))
    sets = tmp_path / "set"
    shutil.copytree(SETS_DIR / "default", sets)
    ReplacementModel.load(sets, model)  # as shipped: read
    for directory, load in ((d, lambda: load_pretrained(str(d))),
                            (sets, lambda: ReplacementModel.load(sets, model))):  # fmt: skip
        record = json.loads((directory / "record.json").read_text())
        (directory / "record.json").write_text(json.dumps(record | {"verified": True}))
        with pytest.raises(ValueError) as info:
            load()
        assert str(info.value) == (
            f"{directory / 'record.json'}: not a ship record (it holds unknown keys "
            "('verified'): written by another version, or edited)"
        )


def test_evaluate_refuses_a_changed_shipped_model_in_one_line(tmp_path, capsys):
    from toy_models.cli import run_cli
    from toy_models.evaluate import main

    d = shipped_copy(tmp_path)
    flip_a_weight_byte(d / "model.safetensors")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--model", str(d), "--docs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and "model.safetensors: changed since shipped" in err[0]


def test_the_shipped_replacement_set_refuses_a_model_with_another_config(tmp_path):
    """A model whose config changed (record.json gone, so it loads) is another model: the
    replacement set is bound to its identity, which covers the config."""
    from replacement.model import load_pretrained as load_replacement
    from replacement.ship import SHIPPED_DIR as REPLACEMENT_DIR

    d = shipped_copy(tmp_path)
    (d / "record.json").unlink()
    load_replacement(str(d), REPLACEMENT_DIR / "default")  # an intact copy is the same model
    config = json.loads((d / "config.json").read_text())
    config["model"]["ln_eps"] = 1e-3
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="replacement.json: made for toy model 'default'"):
        load_replacement(str(d), REPLACEMENT_DIR / "default")


def test_evaluate_json_on_a_full_disk_fails_in_one_line_and_leaves_nothing(
    tmp_path, capsys, monkeypatch
):
    import errno
    import os

    from toy_models import files
    from toy_models.cli import run_cli
    from toy_models.evaluate import main

    def full_disk(path, mode="r", *args, **kwargs):
        if "eval.json" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return open(path, mode, *args, **kwargs)  # noqa: SIM115

    out = tmp_path / "out"
    monkeypatch.setattr(files, "open", full_disk, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--model", "default", "--docs", "1", "--json", str(out / "eval.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1] == f"error: cannot write {out / 'eval.json'}: No space left on device"
    assert not out.exists()  # nothing written, and the directory the run made removed
