import torch
from safetensors.torch import load_file, save_file

from toy_models.records import is_finite_number
from toy_models.train import lr_at, train
from toy_models.zoo import CONFIGS


def test_resume_continues_bit_for_bit(tiny_run, tmp_path):
    assert train("tiny", tmp_path, stop_after=20, quiet=True) is None
    assert not (tmp_path / "model.safetensors").exists()
    train("tiny", tmp_path, resume=True, quiet=True)
    straight = load_file(str(tiny_run / "model.safetensors"))
    resumed = load_file(str(tmp_path / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_training_lowers_the_loss(tiny_run):
    import json

    meta = json.loads((tiny_run / "config.json").read_text())
    # uniform over the vocabulary would be ln(400) = 5.99
    assert meta["final_train_loss"] < 5.9
    assert meta["tokenizer_sha256"]


def test_lr_schedule_warms_up_and_decays():
    cfg = CONFIGS["default"].train
    assert lr_at(0, cfg) < lr_at(cfg.warmup_steps - 1, cfg) == cfg.lr
    assert lr_at(cfg.steps - 1, cfg) < 0.06 * cfg.lr
    assert all(lr_at(s, cfg) > 0 for s in range(0, cfg.steps, 97))


def test_ship_writes_fp16_weights_and_a_record_that_reloads(tiny_run, tmp_path):
    import json

    from toy_models.ship import SHIPPED_FILES, ship
    from toy_models.zoo import file_sha256, load_pretrained

    dest = ship(tiny_run, "tiny", dest_root=tmp_path)
    record = json.loads((dest / "record.json").read_text())
    assert set(record["sha256"]) == set(SHIPPED_FILES)
    assert all(file_sha256(dest / name) == h for name, h in record["sha256"].items())
    assert all(
        t.dtype == torch.float16 for t in load_file(str(dest / "model.safetensors")).values()
    )
    model, _ = load_pretrained(str(dest))
    assert next(model.parameters()).dtype == torch.float32
    # shipping again replaces the entry whole
    assert ship(tiny_run, "tiny", dest_root=tmp_path) == dest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


# ----------------------------------------------------------------- resume, faults, files
import errno  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from toy_models import files  # noqa: E402
from toy_models.cli import UserError, run_cli  # noqa: E402

ROOT = Path(__file__).parent.parent


def with_tiny_data(tiny_run, out):
    """A fresh run directory holding the tiny run's cached corpus and tokenizer (deterministic,
    so the run is the same; only the minutes of data preparation are saved)."""
    shutil.copytree(tiny_run / "data", out / "data")
    shutil.copyfile(tiny_run / "tokenizer.json", out / "tokenizer.json")
    return out


def final_meta(directory):
    meta = json.loads((directory / "config.json").read_text())
    return {k: v for k, v in meta.items() if k not in ("train_elapsed_s", "train_tokens_per_s")}


def test_resumed_run_records_the_uninterrupted_figures(tiny_run, tmp_path):
    out = with_tiny_data(tiny_run, tmp_path / "run")
    assert train("tiny", out, stop_after=10, quiet=True) is None
    train("tiny", out, resume=True, quiet=True)
    assert final_meta(out) == final_meta(tiny_run)  # final_train_loss included
    # --resume on a finished run leaves its final model and figures as they are
    before = {name: (out / name).read_bytes() for name in ("config.json", "model.safetensors")}
    assert train("tiny", out, resume=True, quiet=True) == out
    assert {name: (out / name).read_bytes() for name in before} == before
    assert json.loads((out / "config.json").read_text())["final_train_loss"] > 0


def test_learning_rate_and_seed_overrides_are_part_of_the_run(tiny_run, tmp_path):
    """``--lr`` and ``--seed`` change what is trained, are recorded with the final model, and
    a run resumed with other values, or started on another seed's cached data, is refused."""
    out = with_tiny_data(tiny_run, tmp_path / "lr")
    train("tiny", out, lr=2 * CONFIGS["tiny"].train.lr, quiet=True)
    meta = json.loads((out / "config.json").read_text())
    assert meta["train"]["lr"] == 2 * CONFIGS["tiny"].train.lr
    straight = load_file(str(tiny_run / "model.safetensors"))
    other = load_file(str(out / "model.safetensors"))
    assert not all(torch.equal(straight[k], other[k]) for k in straight)

    stopped = with_tiny_data(tiny_run, tmp_path / "stopped")
    assert train("tiny", stopped, stop_after=10, quiet=True) is None
    with pytest.raises(UserError, match=r"belongs to another run \(.*lr"):
        train("tiny", stopped, resume=True, lr=0.5, quiet=True)
    with pytest.raises(UserError, match="another seed .*to resume that run, give the settings"):
        train("tiny", stopped, resume=True, seed=7, quiet=True)  # its data is seed 0's
    train("tiny", stopped, resume=True, quiet=True)  # the same configuration resumes

    # seed 0's tokenizer and packed rows are never trained on as seed 7's
    with pytest.raises(UserError, match="a run with another seed"):
        train("tiny", with_tiny_data(tiny_run, tmp_path / "seed7"), seed=7, quiet=True)
    older = with_tiny_data(tiny_run, tmp_path / "older")
    (older / "data" / "source.json").unlink()  # data of a run from before the record
    with pytest.raises(UserError, match="older run's"):
        train("tiny", older, quiet=True)


KILL_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
import toy_models.resumable as resumable
from toy_models.files import old_directory
from toy_models.train import train

def swap(new, dest):  # the first rename of swap_directory, then kill -9
    if dest.exists() and resumable.ResumableRun.saved_step_now == {step}:
        os.replace(dest, old_directory(dest))
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace(new, dest) if not dest.exists() else (os.replace(dest, old_directory(dest)),
                                                       os.replace(new, dest))

real_save = resumable.ResumableRun.save
def save(self):
    resumable.ResumableRun.saved_step_now = self.step
    real_save(self)
resumable.ResumableRun.save = save
resumable.swap_directory = swap
train("tiny", Path(sys.argv[1]), quiet=True)
"""


def test_a_crash_between_the_checkpoint_renames_leaves_a_checkpoint_to_resume(tiny_run, tmp_path):
    out = with_tiny_data(tiny_run, tmp_path / "run")
    script = KILL_BETWEEN_RENAMES.format(step=20)
    result = subprocess.run([sys.executable, "-c", script, str(out)], cwd=ROOT)
    assert result.returncode == -9
    assert not (out / "checkpoint").exists() and (out / "checkpoint.old").exists()
    assert train("tiny", out, resume=True, quiet=True) == out
    straight = load_file(str(tiny_run / "model.safetensors"))
    resumed = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert final_meta(out) == final_meta(tiny_run)
    assert not list(out.glob("checkpoint.*"))


def test_ctrl_c_between_the_checkpoint_renames_keeps_the_new_one(tiny_run, tmp_path, monkeypatch):
    """A fuzz pass: Ctrl-C between the swap's two renames removed the new, complete checkpoint
    (the swap ran inside the block that cleans up a half-written one) and said "resume from
    step 0". It stays in ``.tmp``, the message names the step ``--resume`` goes on from, and
    the resumed run is the straight one."""
    from toy_models import resumable
    from toy_models.files import old_directory

    out = with_tiny_data(tiny_run, tmp_path / "run")
    real = resumable.swap_directory
    saves = []

    def swap(new, dest):
        saves.append(new)
        if len(saves) == 2:  # the second checkpoint: its first rename, then Ctrl-C
            os.replace(dest, old_directory(dest))
            raise KeyboardInterrupt
        real(new, dest)

    monkeypatch.setattr(resumable, "swap_directory", swap)
    with pytest.raises(UserError, match=r"interrupted at step \d+; resume from step (\d+)") as e:
        train("tiny", out, quiet=True)
    monkeypatch.setattr(resumable, "swap_directory", real)
    state = json.loads((out / "checkpoint.tmp" / "state.json").read_text())
    assert f"resume from step {state['step']} " in str(e.value) and state["step"] > 0
    assert not (out / "checkpoint").exists() and (out / "checkpoint.old").exists()
    assert train("tiny", out, resume=True, quiet=True) == out
    straight = load_file(str(tiny_run / "model.safetensors"))
    resumed = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_checkpoint_with_another_runs_weights_is_not_resumed(tiny_run, tmp_path):
    """A fuzz pass copied another run's weights (same config) into a checkpoint: resumed
    silently. state.json records the SHA-256 of the weights and optimizer it goes with."""
    out = with_tiny_data(tiny_run, tmp_path / "run")
    assert train("tiny", out, stop_after=10, quiet=True) is None
    other = with_tiny_data(tiny_run, tmp_path / "other")
    assert train("tiny", other, stop_after=10, seed=0, lr=0.5, quiet=True) is None
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert sorted(state["files"]) == ["optimizer.safetensors", "weights.safetensors"]
    shutil.copy(other / "checkpoint" / "weights.safetensors", out / "checkpoint")
    with pytest.raises(UserError, match="weights.safetensors: not the file this checkpoint was"):
        train("tiny", out, resume=True, quiet=True)


MALICIOUS = """
import os
class Payload:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
"""


def plant_pickle(path, marker):
    import pickle
    import types

    module = types.ModuleType("payload")
    exec(MALICIOUS.format(marker=marker), module.__dict__)
    path.write_bytes(pickle.dumps(module.Payload()))


def test_no_checkpoint_file_is_unpickled_on_resume(tiny_run, tmp_path, monkeypatch):
    """Issue 11 item 4: a planted pickle never runs, even with torch's weights-only switch off."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    out = with_tiny_data(tiny_run, tmp_path / "run")
    assert train("tiny", out, stop_after=20, quiet=True) is None
    for name in ("optimizer.pt", "dictionaries.pt", "model.pt"):
        plant_pickle(out / "checkpoint" / name, marker)
    plant_pickle(out / "data" / "packed-64.pt", marker)
    train("tiny", out, resume=True, quiet=True)
    assert not marker.exists()
    # a pickle in the place of the optimizer state is refused as unreadable, not run
    again = with_tiny_data(tiny_run, tmp_path / "again")
    assert train("tiny", again, stop_after=10, quiet=True) is None
    plant = again / "checkpoint" / "optimizer.safetensors"
    plant_pickle(plant, marker)
    with pytest.raises(UserError, match="optimizer.safetensors: not the file this checkpoint"):
        train("tiny", again, resume=True, quiet=True)  # refused by its recorded hash
    state = json.loads((again / "checkpoint" / "state.json").read_text())
    state["files"][plant.name] = files.file_sha256(plant)  # and with the hash forged too
    (again / "checkpoint" / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="optimizer.safetensors: unreadable optimizer state"):
        train("tiny", again, resume=True, quiet=True)
    # a checkpoint of the old format (a pickled optimizer.pt) is refused, not loaded
    (again / "checkpoint" / "optimizer.safetensors").unlink()
    plant_pickle(again / "checkpoint" / "optimizer.pt", marker)
    with pytest.raises(UserError, match="older version"):
        train("tiny", again, resume=True, quiet=True)
    assert not marker.exists()


def test_no_code_of_the_project_unpickles():
    sources = [p for d in ("toy_models", "replacement") for p in (ROOT / d).rglob("*.py")]
    for path in sources:
        text = path.read_text()
        for call in ("torch.load(", "import pickle", "pickle.load", "weights_only=False"):
            assert call not in text, (path, call)


def test_schedules_are_fractions_of_the_run():
    """Issue 11 item 8: a shortened run warms up (and anneals K) within its own length."""
    from replacement.train import CONFIGS as REPLACEMENT_CONFIGS
    from replacement.train import k_at
    from replacement.train import lr_at as replacement_lr_at

    short = replace(CONFIGS["default"].train, steps=100)
    assert max(lr_at(s, short) for s in range(short.steps)) == pytest.approx(short.lr)
    assert short.warmup_steps == round(100 / 18)
    assert CONFIGS["default"].train.warmup_steps == 300  # the shipped model's schedule
    for steps in (1024, 300, 50):
        cfg = replace(REPLACEMENT_CONFIGS["default"], steps=steps)
        lrs = [replacement_lr_at(s, cfg) for s in range(steps)]
        assert max(lrs) == pytest.approx(cfg.lr) and lrs[-1] <= 0.1 * cfg.lr + 1e-12
        # K reaches its target at the same fraction of any run, well before its end
        assert k_at(int(0.3 * steps), 32, cfg) == 32 < k_at(int(0.1 * steps), 32, cfg)
    default = REPLACEMENT_CONFIGS["default"]
    # the shipped set's schedule (2800 steps)
    assert (default.warmup_steps, default.k_anneal_steps, default.decay_start) == (93, 747, 2240)


class FullDisk:
    """``open`` for files whose path contains ``where``: half the bytes, then ENOSPC."""

    def __init__(self, where, code=errno.ENOSPC):
        self.where, self.code = where, code

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115
        if self.where not in str(path) or "w" not in mode:
            return f
        code = self.code

        class Failing:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                f.write(data[: len(data) // 2])
                raise OSError(code, os.strerror(code))

        return Failing()


def cli_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    return last


@pytest.mark.parametrize(
    ("where", "code", "message"),
    [
        ("checkpoint.tmp", errno.ENOSPC, "No space left on device"),
        ("config.json", errno.EROFS, "Read-only file system"),
    ],
)
def test_train_on_a_full_or_read_only_disk_fails_in_one_line(
    tiny_run, tmp_path, monkeypatch, capsys, where, code, message
):
    from toy_models.train import main

    out = with_tiny_data(tiny_run, tmp_path / "run")
    monkeypatch.setattr(files, "open", FullDisk(where, code), raising=False)
    line = cli_error(capsys, main, ["--config", "tiny", "--out", str(out)])
    assert "cannot write" in line and message in line and where.split(".")[0] in line, line
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))


def test_train_refuses_an_unwritable_out_before_any_work(tmp_path, capsys):
    from toy_models.train import main

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert "exists and is not a directory" in cli_error(
        capsys, main, ["--config", "tiny", "--out", str(a_file)]
    )
    for place in ("/proc/x/run", "/sys/x/run"):
        assert "cannot write there" in cli_error(capsys, main, ["--config", "tiny", "--out", place])
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    assert "dangling symbolic link" in cli_error(
        capsys, main, ["--config", "tiny", "--out", str(link)]
    )


def test_atomic_writes_leave_no_temp_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old")
    monkeypatch.setattr(files, "open", FullDisk("out.json"), raising=False)
    with pytest.raises(OSError, match=r"cannot write .*out.json: No space left on device"):
        files.write_json_atomic(target, {"a": 1})
    monkeypatch.undo()
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
    adir = tmp_path / "adir"
    adir.mkdir()
    with pytest.raises(OSError, match="cannot write .*adir: Is a directory"):
        files.write_text_atomic(adir, "x")
    assert sorted(tmp_path.iterdir()) == [adir, target]


# Every CLI of this package and of replacement, with --help and with bad arguments: none may
# import torch, transformer_lens or a model before its arguments are checked (issue 10 item 8).
START_UP = """
import json, runpy, sys, warnings
warnings.simplefilter("ignore")
cases = json.loads(sys.argv[1])
for module, args in cases:
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code
    heavy = [m for m in ("torch", "transformer_lens", "safetensors") if m in sys.modules]
    print(json.dumps([module, args, code, heavy]), flush=True)
"""


def test_help_and_argument_errors_import_no_torch(tmp_path):
    a_file, a_dir = tmp_path / "a-file", tmp_path / "a-dir"
    a_file.write_text("")
    a_dir.mkdir()
    shipped = str(ROOT / "replacement" / "zoo" / "default")
    out = str(tmp_path / "never")
    unfinished = tmp_path / "unfinished"  # an interrupted replacement run: its checkpoint only
    (unfinished / "checkpoint").mkdir(parents=True)
    cases = [
        ("toy_models.train", ["--help"]),
        ("toy_models.train", ["--config", "huge", "--out", out]),
        ("toy_models.train", ["--config", "tiny", "--steps", "0", "--out", out]),
        ("toy_models.train", ["--config", "tiny", "--steps", str(10**20), "--out", out]),
        ("toy_models.train", ["--config", "tiny", "--lr", "0", "--out", out]),
        ("toy_models.train", ["--config", "tiny", "--lr", "nan", "--out", out]),
        ("toy_models.train", ["--config", "tiny", "--seed", "-1", "--out", out]),
        ("toy_models.train", ["--config", "tiny", "--seed", str(2**64), "--out", out]),
        ("toy_models.train", ["--config", "tiny", "--out", str(a_file)]),
        ("toy_models.train", ["--config", "tiny", "--out", "/proc/x/y"]),
        ("toy_models.train", ["--config", "tiny", "--out", str(tmp_path), "--resume"]),
        ("toy_models.evaluate", ["--help"]),
        ("toy_models.evaluate", ["--model", "gpt5"]),
        ("toy_models.evaluate", ["--docs", "0"]),
        ("toy_models.evaluate", ["--docs", str(10**20)]),  # would run for ever
        ("toy_models.evaluate", ["--json", str(a_dir)]),
        ("toy_models.evaluate", ["--json", "/proc/x/eval.json"]),
        ("toy_models.ship", ["--help"]),
        ("toy_models.ship", [str(a_dir), "--name", "huge"]),
        ("toy_models.ship", [str(tmp_path / "missing"), "--name", "tiny"]),
        ("replacement.train", ["--help"]),
        ("replacement.train", ["--config", "huge", "--out", out]),
        ("replacement.train", ["--layers", "1", "--out", out]),
        ("replacement.train", ["--model", "gpt5", "--out", out]),
        ("replacement.train", ["--out", str(a_file)]),
        ("replacement.train", ["--steps", str(10**20), "--out", out]),
        ("replacement.evaluate", ["--help"]),
        ("replacement.evaluate", ["--replacement", shipped, "--batches", "0"]),
        ("replacement.evaluate", ["--replacement", shipped, "--batches", str(10**9)]),
        ("replacement.evaluate", ["--replacement", shipped, "--docs", str(10**12)]),
        ("replacement.evaluate", ["--replacement", str(a_dir)]),
        ("replacement.evaluate", ["--replacement", shipped, "--json", str(a_dir)]),
        ("replacement.ship", ["--help"]),
        ("replacement.ship", [str(a_dir)]),
        ("replacement.ship", [str(unfinished)]),
        ("replacement.ship", [shipped, "--model", "huge"]),
        ("replacement.ship", [shipped, "--model", "tiny"]),  # a config, not a shipped model
    ]
    result = subprocess.run(
        [sys.executable, "-c", START_UP, json.dumps(cases)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    runs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(runs) == len(cases), result.stdout + result.stderr
    for module, args, code, heavy in runs:
        assert code == (0 if args == ["--help"] else 2), (module, args, code)
        assert not heavy, (module, args, heavy)
    assert "Traceback" not in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir", "a-file", "unfinished"]
    # one list of known models (a fuzz pass read "known: default, tiny" and "shipped: default")
    assert "--model 'tiny': not a shipped zoo model (shipped: default)" in result.stderr
    # an unfinished run is said to be one (it read "not a replacement.train --out directory")
    assert (
        "the run has not finished (a checkpoint, no replacement.json); finish it with "
        "replacement.train --resume first" in result.stderr
    )
    assert list(a_dir.iterdir()) == []


def test_a_failed_ship_keeps_the_earlier_entry_and_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    from toy_models import ship

    dest = ship.ship(tiny_run, "tiny", dest_root=tmp_path)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    monkeypatch.setattr(files, "open", FullDisk("record.json"), raising=False)
    with pytest.raises(OSError, match="record.json: No space left on device"):
        ship.ship(tiny_run, "tiny", dest_root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before


def test_a_foreign_tokenizer_is_named_where_it_is_before_shipping(tiny_run, tmp_path):
    """Found by a fuzz pass: the error named the ship's temporary copy, which no longer exists."""
    from toy_models import ship

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.copyfile(ROOT / "toy_models" / "zoo" / "default" / "tokenizer.json",
                    run / "tokenizer.json")  # fmt: skip
    with pytest.raises(ValueError, match=f"^{run / 'tokenizer.json'}: vocabulary of"):
        ship.ship(run, "tiny", dest_root=tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists() or not any((tmp_path / "zoo").iterdir())


def test_weights_beyond_float16_are_refused_naming_the_run_not_a_temp_file(tiny_run, tmp_path):
    """A fuzz pass: a run with one weight of 1e6 (finite in float32) shipped as inf, and the
    check of the shipped copy named the ship's temp file. Refused before anything is written,
    naming the run and the tensor."""
    from safetensors.torch import load_file, save_file

    from toy_models import ship
    from toy_models.checkpoint import WEIGHTS_FILE

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = load_file(run / WEIGHTS_FILE)
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name].view(-1)[0] = 1e6
    save_file(weights, run / WEIGHTS_FILE)
    with pytest.raises(UserError, match=re.escape(f"{run}: {name} holds values beyond float16")):
        ship.ship(run, "tiny", dest_root=tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists() or not any((tmp_path / "zoo").iterdir())


@pytest.mark.parametrize(
    "edit, message",
    [
        # (the model's own load refuses a stray key now, before the ship reads its fields)
        ({"surprise": 1}, "its config holds unknown keys ('surprise')"),
        ({"final_train_loss": float("nan")}, "config.final_train_loss: expected a finite number"),
        ({"train_elapsed_s": -5.0}, "config.train_elapsed_s: expected a number in [0, inf]"),
        ({"train": {"steps": "many"}}, "config.train.steps: expected an integer"),
        ({"train_tokens_per_s": 1.5}, "config.train_tokens_per_s: expected an integer"),
        # found by the twelfth pass's review: settings no run can have trained with
        ({"train": {"lr": -3.0}}, "config.train.lr: expected a number in [1e-12, 1]"),
        ({"train": {"steps": 0}}, "config.train.steps: expected a number in [1, "),
        (
            {"train": {"n_docs": {"names": -5}}},
            "config.train.n_docs.names: expected a number in [0",
        ),
        (
            {"train": {"warmup_fraction": 7.0}},
            "config.train.warmup_fraction: expected a number in [0, 1]",
        ),
        ({"train": {"seed": -1}}, "config.train.seed: expected a number in [0, "),
        (
            {"train": {"grad_clip": 0.0}},
            "config.train.grad_clip: expected a number in [1e-12, inf]",
        ),
    ],
)
def test_a_runs_other_config_fields_are_checked_before_shipping(tiny_run, tmp_path, edit, message):
    """Found by the third fuzz pass: the ship copied the config fields the model does not read
    (a NaN loss, a stray key) into the shipped entry unchecked."""
    from toy_models import ship

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    for key, value in edit.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises((ship.UserError, ValueError), match=re.escape(message)):
        ship.ship(run, "tiny", dest_root=tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists() or not any((tmp_path / "zoo").iterdir())
    # what is shipped is exactly the checked record
    shutil.copyfile(tiny_run / "config.json", run / "config.json")
    dest = ship.ship(run, "tiny", dest_root=tmp_path / "zoo")
    shipped = json.loads((dest / "config.json").read_text())
    assert {k: v for k, v in shipped.items() if k != "model"} == {
        k: v for k, v in json.loads((tiny_run / "config.json").read_text()).items() if k != "model"
    }


def test_two_ships_of_one_name_fill_their_own_directories(tiny_run, tmp_path, monkeypatch):
    """Found by a fuzz pass: two ships of one name at once shared ``.NAME.tmp``, each emptying
    it, so the entry could hold the failed run's files while the other said it shipped. Each
    shipper fills its own (``temp_path``); one a killed shipper left goes at the next ship."""
    import subprocess
    import sys

    from toy_models import files, ship

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = tmp_path / f".tiny.{files._HOST}-{int(done.stdout)}-0123abcd.tmp"
    (dead / "half").mkdir(parents=True)
    used, real = [], files.fresh_directory
    monkeypatch.setattr(files, "fresh_directory", lambda p: (used.append(p), real(p))[1])
    ship.ship(tiny_run, "tiny", dest_root=tmp_path)
    ship.ship(tiny_run, "tiny", dest_root=tmp_path)
    assert len(used) == 2 and used[0] != used[1]
    assert all(p.name.startswith(f".tiny.{files._HOST}-{os.getpid()}-") for p in used)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # the dead one's gone too


# ----------------------------------------------------------------- untrained tokens
def test_untrained_tokens_are_those_no_drawn_row_holds_before_its_end():
    from toy_models.train import batch_indices, untrained_tokens

    rows = torch.tensor([[0, 1, 2, 9], [0, 3, 4, 8], [0, 5, 6, 7], [0, 1, 1, 1]])
    drawn = set(batch_indices(0, len(rows), 2, seed=3).tolist())
    got = untrained_tokens(rows, steps=1, batch_size=2, seed=3, vocab=12)
    inputs = {t for r in drawn for t in rows[r, :-1].tolist()}
    assert got == sorted(set(range(12)) - inputs)
    assert {7, 8, 9, 10, 11} <= set(got)  # last positions and absent ids are never inputs
    assert untrained_tokens(rows, steps=2, batch_size=2, seed=3, vocab=12) == [7, 8, 9, 10, 11]


def test_training_and_shipping_record_the_untrained_tokens(tiny_run, tmp_path):
    from toy_models.checkpoint import read_tensors
    from toy_models.ship import ship
    from toy_models.train import untrained_tokens
    from toy_models.zoo import load_pretrained

    meta = json.loads((tiny_run / "config.json").read_text())
    (packed,) = (tiny_run / "data").glob("packed-*.safetensors")
    rows = read_tensors(packed)["tokens"]
    train_cfg = meta["train"]
    want = untrained_tokens(rows, train_cfg["steps"], train_cfg["batch_size"],
                            train_cfg["seed"], meta["model"]["d_vocab"])  # fmt: skip
    assert meta["untrained_tokens"] == want and want
    model, _ = load_pretrained(str(tiny_run))
    assert model.untrained_tokens == frozenset(want)
    # A run from before training recorded them: shipping works them out from its rows.
    old_run = tmp_path / "old"
    shutil.copytree(tiny_run, old_run)
    meta.pop("untrained_tokens")
    (old_run / "config.json").write_text(json.dumps(meta))
    dest = ship(old_run, "tiny", dest_root=tmp_path / "zoo")
    assert load_pretrained(str(dest))[0].untrained_tokens == frozenset(want)


@pytest.mark.parametrize(
    "value, problem",
    [("all", "list of token ids"), ([1, -1], "list of token ids"), ([10**6], "below"),
     ([True], "list of token ids"), ([3, 3], "twice")],
)  # fmt: skip
def test_a_config_with_bad_untrained_tokens_is_refused_in_one_line(tiny_run, tmp_path, value,
                                                                   problem):  # fmt: skip
    from toy_models.checkpoint import load_model

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("data", "checkpoint*"))
    meta = json.loads((run / "config.json").read_text())
    meta["untrained_tokens"] = value
    (run / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=problem) as err:
        load_model(run)
    assert "config.json" in str(err.value) and "\n" not in str(err.value)


def test_toy_transformer_load_knows_bos_from_the_tokenizer_file_beside(tiny_run, tmp_path):
    """``ToyTransformer.load`` left ``bos_id`` None where ``load_pretrained`` set it from the
    same directory's tokenizer file, so ids without BOS went through the library's entry
    points unchecked. The tokenizer beside the checkpoint records BOS; without it nothing
    does, and a tokenizer there that is not one of this project's is refused in one line."""
    from circuits.attribution import check_bos
    from toy_models.model import ToyTransformer

    model = ToyTransformer.load(tiny_run)
    assert model.bos_id == 0
    with pytest.raises(ValueError, match="tokens start with id 5, not"):
        check_bos(torch.tensor([5, 6]), model.bos_id)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("data", "checkpoint*"))
    (run / "tokenizer.json").unlink()
    assert ToyTransformer.load(run).bos_id is None
    (run / "tokenizer.json").write_text("{")
    with pytest.raises(ValueError, match="tokenizer.json: not a valid tokenizer file") as err:
        ToyTransformer.load(run)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------- faults at the end of a run
def test_a_run_stopped_while_writing_its_final_model_finishes_on_resume(tiny_run, tmp_path):
    """A crash or a full disk between model.safetensors and config.json: --resume writes the
    final model again from the last checkpoint (no steps left), instead of a run that can be
    neither resumed nor started again."""
    out = with_tiny_data(tiny_run, tmp_path / "run")
    assert train("tiny", out, quiet=True) == out
    (out / "config.json").unlink()
    assert train("tiny", out, resume=True, quiet=True) == out
    # final files damaged since (found by a fuzz pass: a truncated model was reported as
    # trained, a config without its figures was a KeyError traceback): written again
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(weights[:1000])
    assert train("tiny", out, resume=True, quiet=True) == out
    assert (out / "model.safetensors").read_bytes() == weights
    meta = json.loads((out / "config.json").read_text())
    del meta["final_train_loss"]
    (out / "config.json").write_text(json.dumps(meta))
    assert train("tiny", out, resume=True, quiet=True) == out
    assert "final_train_loss" in json.loads((out / "config.json").read_text())
    # figures main could not print as the run's (fuzz pass 73: a 401-digit loss was an
    # OverflowError traceback where main formats it, a NaN loss printed as the run's, exit 0)
    for figure, value in (("final_train_loss", "1" + "0" * 400), ("final_train_loss", "NaN"),
                          ("train_elapsed_s", "-1"), ("train_tokens_per_s", "1e999")):  # fmt: skip
        meta = json.loads((out / "config.json").read_text())
        text = json.dumps({**meta, figure: "VALUE"}).replace('"VALUE"', value)
        (out / "config.json").write_text(text)
        assert train("tiny", out, resume=True, quiet=True) == out
        assert is_finite_number(json.loads((out / "config.json").read_text())[figure])
    straight = load_file(str(tiny_run / "model.safetensors"))
    resumed = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert final_meta(out) == final_meta(tiny_run)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.update(recent=[{"x": 1.0}]), "not a training state"),
        (lambda s: s.update(recent=[{"loss": "2.5"}]), "not a training state"),
        (lambda s: s.update(recent=[{"loss": float("nan")}]), "the run diverged"),
        (lambda s: s.update(step=10**6), "state is of step 10, the checkpoint's of step 1000000"),
        # a step that is not the checkpoint's: its weights would ship as another step's
        (lambda s: s.update(step=20), "its state is of step 10, the checkpoint's of step 20"),
        (lambda s: s.update(step=5), r"state.0.step is 10, not a step count of this checkpoint"),
        (lambda s: s.update(step=0), r"state.0.step is 10, not a step count of this checkpoint"),
        (lambda s: s.update(elapsed_s=-5), "not a training state"),
        # fuzz pass 22: numbers no run writes were resumed into the final figures, and an
        # integer too large for a float was an OverflowError traceback
        (lambda s: s.update(elapsed_s=0), "not a training state"),  # at step 10
        (lambda s: s.update(elapsed_s=10**400), "not a training state"),
        (lambda s: [r.update(loss=-7.5) for r in s["recent"]], "not a training state"),
        (lambda s: s["recent"][-1].update(loss=10**400), "not a training state"),
        (lambda s: s["recent"][-1].update(loss=1e308), "not a training state"),  # not float32
        # a key the reader does not know (another version's, or a forgery) was ignored
        (lambda s: s.update(lr=1.0), r"not a training state \(its state holds unknown keys "
                                     r"\('lr'\): written by another version"),
        # a state of no files was resumed with its weights unchecked (those of a version
        # before 2026-12-06: none is kept anywhere, and another run's files read the same)
        (lambda s: s.pop("files"), "records no SHA-256 of its weights and optimizer .* start a "
                                   r"new run \(without --resume\)"),
    ],
)  # fmt: skip
def test_a_forged_training_state_is_refused(tiny_run, tmp_path, edit, message):
    """state.json is read from disk: statistics that are not the trainer's or that no run
    computes (a negative loss, no time spent on ten steps, a number beyond float32's range), a
    step beyond the run (which would write early weights as the final model) are one line, not
    a traceback or a silently wrong model."""
    out = with_tiny_data(tiny_run, tmp_path / "run")
    assert train("tiny", out, stop_after=10, quiet=True) is None
    path = out / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=message):
        train("tiny", out, resume=True, quiet=True)
    assert not (out / "model.safetensors").exists()


def _edit_optimizer(edit):
    def change(path):
        tensors = load_file(str(path))
        edit(tensors)
        save_file(tensors, str(path))
        # forged with its hash in state.json too: the optimizer's own checks refuse it
        state_path = path.parent / "state.json"
        state = json.loads(state_path.read_text())
        state["files"][path.name] = files.file_sha256(path)
        state_path.write_text(json.dumps(state))

    return change


@pytest.mark.parametrize(
    "edit, message",
    [
        (_edit_optimizer(lambda t: t["state.0.exp_avg"].view(-1).__setitem__(0, float("nan"))),
         "state.0.exp_avg holds NaN or infinite values"),
        (_edit_optimizer(lambda t: t["state.1.exp_avg_sq"].view(-1).__setitem__(0, -1.0)),
         "state.1.exp_avg_sq holds negative values"),
        (_edit_optimizer(lambda t: t["state.0.step"].fill_(2.5)), "state.0.step is 2.5"),
        (_edit_optimizer(lambda t: [t.pop(k) for k in list(t)]), "no state for parameter 0"),
        (_edit_optimizer(lambda t: [t.pop(f"state.3.{k}") for k in ("step", "exp_avg",
                                                                 "exp_avg_sq")]),
         "no state for parameter 3 at step 10"),
    ],
)  # fmt: skip
def test_a_damaged_optimizer_state_is_refused_and_the_checkpoint_kept(
    tiny_run, tmp_path, edit, message
):
    """Found by a fuzz pass: optimizer values were never checked, so a NaN moment trained a NaN
    model that was written with exit 0 over the good checkpoint, and an empty state restarted
    the moments silently (no longer bit for bit)."""
    out = with_tiny_data(tiny_run, tmp_path / "run")
    assert train("tiny", out, stop_after=10, quiet=True) is None
    edit(out / "checkpoint" / "optimizer.safetensors")
    before = (out / "checkpoint" / "weights.safetensors").read_bytes()
    with pytest.raises(ValueError, match=message):
        train("tiny", out, resume=True, quiet=True)
    assert (out / "checkpoint" / "weights.safetensors").read_bytes() == before
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: (c / "train" / "state.json").write_text("[" * 100_000 + "]" * 100_000),
         "the cached corpus cannot be read"),
        (lambda c: (c / "dataset_dict.json").write_text("{"), "the cached corpus cannot be read"),
        (lambda c: shutil.rmtree(c / "heldout"), "the cached corpus cannot be read"),
    ],
)  # fmt: skip
def test_a_damaged_corpus_cache_is_one_line_naming_it(tiny_run, tmp_path, damage, message):
    """Found by a fuzz pass: a damaged cached corpus was a RecursionError traceback (the corpus
    is read on every run, --resume too) or a line that named no file."""
    out = with_tiny_data(tiny_run, tmp_path / "run")
    assert train("tiny", out, stop_after=10, quiet=True) is None
    (corpus,) = (out / "data").glob("corpus-v*")
    damage(corpus)
    with pytest.raises(ValueError, match=message) as info:
        train("tiny", out, resume=True, quiet=True)
    assert str(corpus) in str(info.value) and "\n" not in str(info.value)


def test_a_resume_on_other_cached_data_is_refused(tiny_run, tmp_path):
    """Found by a fuzz pass: packed rows put in another order, or a tokenizer with two ids
    swapped, resumed with exit 0 on data the checkpoint was not trained on. The checkpoint
    records both files' SHA-256; a resume on others names the one that changed."""
    from toy_models.cli import UserError

    out = with_tiny_data(tiny_run, tmp_path / "run")
    assert train("tiny", out, stop_after=10, quiet=True) is None
    (packed,) = (out / "data").glob("packed-*.safetensors")
    tensors = load_file(str(packed))
    save_file({k: v.flip(0).contiguous() for k, v in tensors.items()}, str(packed))
    with pytest.raises(UserError, match=r"belongs to another run \(data.packed_rows_sha256"):
        train("tiny", out, resume=True, quiet=True)
    save_file(tensors, str(packed))  # the rows it was trained on: it resumes
    assert train("tiny", out, resume=True, quiet=True) == out


def test_a_diverging_run_stops_before_replacing_its_last_checkpoint(tmp_path, monkeypatch):
    """A NaN statistic ends the run at that step, in one line: the last good checkpoint stays
    (a checkpoint of the diverged weights would replace it, and --resume would refuse it)."""
    import torch

    from toy_models.cli import UserError
    from toy_models.resumable import ResumableRun

    module = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(module.parameters())
    run = ResumableRun(tmp_path / "run", resume=False, outputs=(), window=5)
    run.start({"x": 1}, module, opt, stats=("loss",))

    def step_fn(step):
        module(torch.ones(2)).sum().backward()
        opt.step()
        return {"loss": float("nan") if step == 6 else 1.0}

    with pytest.raises(UserError, match="diverged at step 6 .* nothing after step 5 was saved"):
        run.train(step_fn, 10, checkpoint_every=5, desc="x", quiet=True)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5


def test_ctrl_c_before_the_first_checkpoint_says_to_start_again(tiny_run, tmp_path, monkeypatch):
    from toy_models import resumable

    out = with_tiny_data(tiny_run, tmp_path / "run")
    real_train = resumable.ResumableRun.train

    def interrupt_first_step(self, step_fn, total, **kwargs):
        def step(i):
            raise KeyboardInterrupt

        return real_train(self, step, total, **kwargs)

    monkeypatch.setattr(resumable.ResumableRun, "train", interrupt_first_step)
    with pytest.raises(UserError, match="before the first checkpoint: nothing was saved; start"):
        train("tiny", out, quiet=True)
    monkeypatch.undo()
    assert train("tiny", out, quiet=True) == out  # started again, as the message says


def test_a_ship_cut_between_its_renames_is_explained_on_load(tiny_run, tmp_path, monkeypatch):
    """A kill between the two renames of a ship leaves the entry moved aside (NAME.old) and the
    new version in .NAME.tmp: loading the name says so and how to mend it (a reader renames
    nothing: it could race a ship in progress), and the listing of shipped names never offers
    the leftovers."""
    from toy_models import ship, zoo

    ship.ship(tiny_run, "tiny", dest_root=tmp_path)
    (tmp_path / "tiny").rename(tmp_path / "tiny.old")
    (tmp_path / ".tiny.tmp").mkdir()
    (tmp_path / "other.old").mkdir()
    monkeypatch.setattr(zoo, "SHIPPED_DIR", tmp_path)
    with pytest.raises(zoo.UnknownModelError, match=r"cut short.*tiny\.old; ship it again"):
        zoo.resolve_model_dir("tiny")
    assert (tmp_path / "tiny.old" / "config.json").is_file()  # left as it was
    with pytest.raises(zoo.UnknownModelError, match=r"\(shipped: none\)"):
        zoo.resolve_model_dir("nope")
    ship.ship(tiny_run, "tiny", dest_root=tmp_path)  # shipping again mends it
    assert zoo.resolve_model_dir("tiny") == tmp_path / "tiny"
    assert not (tmp_path / "tiny.old").exists()


def test_a_full_disk_while_saving_the_corpus_names_it_and_leaves_nothing(
    tmp_path, monkeypatch, capsys
):
    import datasets

    from toy_models.train import main

    def full(self, path, *args, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", full)
    out = tmp_path / "run"
    line = cli_error(capsys, main, ["--config", "tiny", "--out", str(out)])
    assert line.startswith(f"error: cannot write {out / 'data'}/corpus-v"), line
    assert line.endswith("No space left on device"), line
    assert not list((out / "data").iterdir())


def test_a_run_is_shipped_only_under_the_config_it_was_trained_as(tiny_run, tmp_path):
    """Shipping the tiny run as "default" would replace the default model (and break every
    set made for it): refused, nothing written."""
    from toy_models import ship

    with pytest.raises(UserError, match="trained as zoo config 'tiny', not 'default'"):
        ship.ship(tiny_run, "default", dest_root=tmp_path)
    assert not any(tmp_path.iterdir())


def test_an_unfinished_run_is_said_to_be_unfinished_when_shipped(tmp_path):
    """A fuzz pass: shipping an interrupted run said "checkpoint file missing: config.json",
    what is missing, not why. A run folder with a checkpoint and no final model is unfinished."""
    from toy_models import ship
    from toy_models.resumable import CHECKPOINT_DIR

    run = tmp_path / "run"
    (run / CHECKPOINT_DIR).mkdir(parents=True)
    with pytest.raises(UserError, match=r"the run has not finished .*--resume first"):
        ship.ship(run, "tiny", dest_root=tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()


@pytest.mark.parametrize("checkpoint", [True, False])
def test_a_ship_pointed_at_the_other_trainers_folder_says_what_it_holds(tmp_path, cli, checkpoint):
    """A fuzz pass: ``toy_models.ship`` on a finished replacement-training folder said "the run
    has not finished ... finish it with toy_models.train --resume" (and without a checkpoint
    "checkpoint file missing: config.json"); ``replacement.ship`` said the same of a toy
    model's run. Each names what the folder holds and the command that ships it."""
    from replacement.ship import main as ship_set
    from toy_models.resumable import CHECKPOINT_DIR
    from toy_models.ship import main as ship_model

    cases = (
        (ship_model, "replacement.json", ["--name", "tiny"],
         "holds a replacement set (replacement.json, as replacement.train writes it), not a "
         "toy_models.train run; ship it with python -m replacement.ship {} --model MODEL"),
        (ship_set, "config.json", [],
         "holds a toy model (config.json, as toy_models.train writes it), not a "
         "replacement.train run; ship it with python -m toy_models.ship {} --name NAME"),
    )  # fmt: skip
    for main, file, args, said in cases:
        run = tmp_path / f"{main.__module__}-run"
        run.mkdir()
        if checkpoint:
            (run / CHECKPOINT_DIR).mkdir()
        (run / file).write_text("{}")
        code, out, err = cli(main, run, *args)
        assert code == 2 and err == f"error: {run}: {said.format(run)}\n", err


@pytest.mark.parametrize(
    "state, message",
    [
        ({}, r"state.json: not a training state \(no 'identity'\)"),
        ({"identity": {"config": "default", "train": {}}, "step": 10, "elapsed_s": 1.0,
          "recent": [], "files": {}},
         r"belongs to another run \(config: 'default' there, 'tiny' here\)"),
    ],
)  # fmt: skip
def test_a_resume_it_cannot_continue_writes_nothing(tmp_path, cli, state, message):
    """Found by a fuzz pass: ``toy_models.train --resume`` with checkpoint/state.json ``{}``
    (or another run's) was refused only after the corpus, tokenizer and packed rows had been
    built and written into the run directory. The state, and the part of the identity known
    without data, are checked first: one line, nothing written."""
    from toy_models.train import main

    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "state.json").write_text(json.dumps(state))
    code, _, err = cli(main, "--config", "tiny", "--out", out, "--resume")
    assert code == 2 and err.count("\n") == 1 and re.search(message, err), err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "checkpoint", "checkpoint/state.json"]  # fmt: skip


def test_a_replacement_set_beyond_float16_is_refused_before_shipping(
    tiny_pretrained, make_replacement, monkeypatch, tmp_path
):
    """A review: a set with a decoder weight of 1e6 shipped as inf and was refused naming the
    ship's temp directory. ``replacement.ship`` checks the set it loaded first, as
    ``toy_models.ship`` checks a model (``check_half_range``)."""
    import torch

    import replacement.model
    import toy_models.zoo
    from replacement import ship

    model, _ = tiny_pretrained
    rep = make_replacement(model, n_qk=2, n_ov=16, lorsa_k=4)
    with torch.no_grad():
        rep.transcoders[0].W_dec.view(-1)[0] = 1e6
    monkeypatch.setattr(toy_models.zoo, "load_pretrained", lambda name: (model, None))
    monkeypatch.setattr(replacement.model.ReplacementModel, "load", lambda d, m: rep)
    with pytest.raises(UserError, match=re.escape(f"{tmp_path}: ") + r"\S*W_dec holds values "
                       "beyond float16's range"):  # fmt: skip
        ship.ship(tmp_path, "tiny", dest_root=tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()


@pytest.mark.parametrize("at", ["writing", "swapping"])
def test_ctrl_c_in_the_last_checkpoint_says_where_resume_goes_on(tmp_path, monkeypatch, at):
    """Found by a robustness pass: a Ctrl-C while the last checkpoint (the run's end) was
    written or swapped in ended the run with a bare "interrupted", where one at any other
    checkpoint says the step ``--resume`` goes on from; it says so there too (the last
    checkpoint's step once the swap's first rename is done: the new one is complete)."""
    import torch

    from toy_models import resumable
    from toy_models.cli import UserError
    from toy_models.files import old_directory
    from toy_models.resumable import ResumableRun

    module = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(module.parameters())
    run = ResumableRun(tmp_path / "run", resume=False, outputs=(), window=5)
    run.start({"x": 1}, module, opt, stats=("loss",))
    real_save, real_swap, saves = resumable.ResumableRun.save, resumable.swap_directory, []

    def save(self):
        saves.append(self.step)
        if self.step == 10 and at == "writing":
            raise KeyboardInterrupt
        real_save(self)

    def swap(new, dest):
        if saves[-1] == 10 and at == "swapping":  # its first rename done, then Ctrl-C
            os.replace(dest, old_directory(dest))
            raise KeyboardInterrupt
        real_swap(new, dest)

    monkeypatch.setattr(resumable.ResumableRun, "save", save)
    monkeypatch.setattr(resumable, "swap_directory", swap)
    go_on = 5 if at == "writing" else 10
    with pytest.raises(UserError, match=rf"^interrupted at step 9; resume from step {go_on} with"):
        run.train(lambda step: {"loss": 1.0}, 10, checkpoint_every=5, desc="x", quiet=True)
    assert saves == [5, 10]
