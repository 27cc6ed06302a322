"""Atomic writes (``toy_models.files``) when several writers save one file at once, and the
temp files that killed writers leave behind."""

import json
import os
import re
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from toy_models import files

ROOT = Path(__file__).resolve().parents[1]


def temps(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".*.tmp"))


def test_two_writers_of_one_file_at_once_each_put_a_whole_version_in_place(tmp_path):
    """Writer A is half-way through its temp file when writer B saves the same file whole:
    B's version is in place until A finishes, then A's (with one shared temp name, B truncated
    A's file and A's rename failed after B had put a mix of both in place)."""
    path = tmp_path / "shared.json"
    first, second = b"A" * 100_000, b"B" * 100_000
    seen = []

    def slow_write(tmp):
        with open(tmp, "wb") as f:
            f.write(first[:50_000])
            f.flush()
            files.write_bytes_atomic(path, second)  # the other writer, whole, meanwhile
            seen.append(path.read_bytes())
            f.write(first[50_000:])

    files.replace_atomic(path, slow_write)
    assert seen == [second]
    assert path.read_bytes() == first
    assert temps(path) == []


WRITER = """
import sys
from pathlib import Path
from toy_models.files import write_bytes_atomic

path, mark = Path(sys.argv[1]), sys.argv[2].encode()
for i in range(40):
    write_bytes_atomic(path, mark * 200_000 + str(i).encode())
"""


def test_concurrent_writers_never_fail_and_leave_a_whole_version(tmp_path):
    """Two processes saving one file 40 times each at the same moment: neither fails, every
    version a reader sees is whole, and no temp file is left."""
    path = tmp_path / "shared.bin"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), mark],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for mark in "xy"
    ]
    reads = []
    while any(p.poll() is None for p in procs):
        if path.exists():
            reads.append(path.read_bytes())
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    for data in [*reads, path.read_bytes()]:
        body, number = data[:200_000], data[200_000:]
        assert body in (b"x" * 200_000, b"y" * 200_000) and 0 <= int(number) < 40
    assert temps(path) == []


def test_a_killed_writers_temp_file_goes_and_a_live_ones_stays(tmp_path):
    """The next save of a file removes the temp files that dead writers on this machine left
    beside it, and no other: a live writer's (another process, or this one), one of another
    machine, and any other file stay."""
    path = tmp_path / "state.json"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(done.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = files._HOST  # this machine's mark in the temp names
        dead = tmp_path / f"state.json.{host}-{dead_pid}-0123abcd.tmp"
        alive = tmp_path / f"state.json.{host}-{live.pid}-0123abcd.tmp"
        mine = tmp_path / f"state.json.{host}-{os.getpid()}-0123abcd.tmp"
        elsewhere = tmp_path / f"state.json.ffffffff-{dead_pid}-0123abcd.tmp"
        other = tmp_path / f"other.json.{host}-{dead_pid}-0123abcd.tmp"
        for p in (dead, alive, mine, elsewhere, other):
            p.write_bytes(b"half a save")
        files.write_json_atomic(path, {"a": 1})
        assert not dead.exists()
        assert alive.exists() and mine.exists() and elsewhere.exists() and other.exists()
        assert path.read_text() == '{\n  "a": 1\n}\n'
    finally:
        live.kill()
        live.wait()


def test_a_lock_temp_file_a_killed_run_left_goes_with_the_next_lock(tmp_path):
    """Found by a robustness pass: a run killed between writing its lock's temp file and
    linking it into place (``take_lock``) left ``.writing.lock.HOST-PID-RANDOM.tmp`` in --out
    (``.training.lock...`` in a run) for good, where a killed writer's other temp files go at
    the next save. The next lock taken there removes it; the lock itself works as before."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    lock = tmp_path / ".writing.lock"
    left = tmp_path / f".writing.lock.{files._HOST}-{int(done.stdout)}-0123abcd.tmp"
    left.write_text(done.stdout)
    files.take_lock(lock, "writing there")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".writing.lock"]
    files.release_lock(lock)
    assert list(tmp_path.iterdir()) == []


def test_a_link_device_or_fifo_in_the_way_is_never_replaced(tmp_path):
    """Found by a fuzz pass: the atomic write renamed its temp file over whatever stood at the
    path, so ``--json /dev/null`` (as root) would have replaced the device, a FIFO became a
    file and a symbolic link was replaced instead of written through. Now refused, untouched."""
    from toy_models.cli import UserError
    from toy_models.files import WriteError, check_writable_file, write_json_atomic

    fifo, link, target = tmp_path / "fifo", tmp_path / "link", tmp_path / "target"
    os.mkfifo(fifo)
    target.write_text("kept")
    link.symlink_to(target)
    for path, what in ((fifo, "not a regular file"), (link, "a symbolic link")):
        with pytest.raises(WriteError, match=what):
            write_json_atomic(path, {"a": 1})
        with pytest.raises(UserError, match=what):
            check_writable_file(path, "--json")
    assert fifo.is_fifo() and link.is_symlink() and target.read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link", "target"]
    write_json_atomic(target, {"a": 1})  # a regular file is replaced as before
    assert target.read_text().startswith("{")


# ----------------------------------------------------------------- output sets (a fuzz pass)
SET_NAMES = frozenset({"graph.json", "graph.pdf", "graph.svg", "features"})


def write_a_set(out: Path, names=("graph.json", "graph.svg"), features: bool = False):
    """A set of ``names`` (and ``features/``) written by ``reports.outputs.write_set``."""
    from reports.outputs import OutputSet, write_set

    def fill(stage: Path) -> list[str]:
        for name in names:
            (stage / name).write_text(f"new {name}")
        if features:
            (stage / "features").mkdir()
            (stage / "features" / "1.json").write_text("new")
        return sorted(p.name for p in stage.iterdir() if not p.name.startswith("."))

    return write_set(out, OutputSet(SET_NAMES, "graph.json"), fill)


def snapshot(directory: Path) -> dict:
    return {
        p.relative_to(directory).as_posix(): None if p.is_dir() else p.read_bytes()
        for p in directory.rglob("*")
    }


def test_a_set_records_what_it_wrote_and_replaces_only_that(tmp_path):
    """Found by a fuzz pass (lost work): a set's clean-up removed whatever of its names stood in
    --out beside any graph.json. A run now records what it wrote (``.graph-set.json``); the next
    run replaces and removes exactly those entries, and nothing else in the directory."""
    out = tmp_path / "out"
    written, notes = write_a_set(out, ("graph.json", "graph.svg", "graph.pdf"), features=True)
    assert notes == [] and written == ["features", "graph.json", "graph.pdf", "graph.svg"]
    record = json.loads((out / ".graph-set.json").read_text())
    assert record == {
        "set": "graph.json",
        "entries": {
            "features": "directory",
            "graph.json": "file",
            "graph.pdf": "file",
            "graph.svg": "file",
        },
        "files": {"features": ["1.json"]},
    }
    (out / "notes.txt").write_text("mine")
    written, notes = write_a_set(out)  # no pdf, no features this time: removed, one note each
    assert notes == [f"removed {out / 'features'} of an earlier run",
                     f"removed {out / 'graph.pdf'} of an earlier run"]  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [
        ".graph-set.json", "graph.json", "graph.svg", "notes.txt"]  # fmt: skip
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / ".graph-set.json").read_text())["entries"] == {
        "graph.json": "file", "graph.svg": "file"}  # fmt: skip


@pytest.mark.parametrize("fails", ["graph.svg", "graph.json", "graph.pdf", ".graph-set.json"])
def test_a_rename_that_fails_among_the_sets_leaves_the_earlier_set_whole(
    tmp_path, monkeypatch, fails
):
    """Found by a robustness pass: a file of the set that cannot be replaced (immutable, a
    mount point, another user's in a sticky folder) failed its rename after the entries before
    it had moved, so the run ended in an error with the new run's features/ and graph.json
    beside the earlier run's graph.svg. Any rename that fails while the set moves (the earlier
    set's own entries moved aside, the new ones in, an entry no longer written moved out, the
    final record) puts every entry and the earlier record back: the earlier set stays whole,
    no staging directory is left, and the next run goes through."""
    import errno

    from reports.outputs import OutputSet, write_set
    from toy_models.files import WriteError

    def fill(stage: Path, run: str, names: tuple[str, ...]) -> None:
        for name in names:
            (stage / name).write_text(f"{run} {name}")
        (stage / "features").mkdir()
        (stage / "features" / f"{run}.json").write_text(run)

    out, kind = tmp_path / "out", OutputSet(SET_NAMES, "graph.json")
    write_set(out, kind, partial(fill, run="first", names=("graph.json", "graph.pdf", "graph.svg")))
    before = snapshot(out)
    real, seen = os.replace, []

    def replace(src, dst):  # the fault: ``fails`` cannot be replaced, moved or (re)written
        if Path(dst) == out / fails or Path(src).parent == out and Path(src).name == fails:
            seen.append(Path(dst).name)
            if fails != ".graph-set.json" or len(seen) == 2:  # the record: its final write
                raise PermissionError(errno.EPERM, "Operation not permitted", str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    second = partial(fill, run="second", names=("graph.json", "graph.svg"))  # no pdf: removed
    with pytest.raises(WriteError, match=f"cannot write .*/{re.escape(fails)}: Operation not"):
        write_set(out, kind, second)
    monkeypatch.undo()
    assert snapshot(out) == before
    _, notes = write_set(out, kind, second)
    assert notes == [f"removed {out / 'graph.pdf'} of an earlier run"]
    assert sorted(snapshot(out)) == [".graph-set.json", "features", "features/second.json",
                                     "graph.json", "graph.svg"]  # fmt: skip
    assert (out / "graph.svg").read_text() == "second graph.svg"


@pytest.mark.parametrize(
    "case, message",
    [
        ("another tool's graph.json", "graph.json: not written by a run of this version"),
        ("an unlisted entry", r"graph.pdf: in the way: not written by a run \(.graph-set.json"),
        ("a listed file now a folder", "graph.svg: in the way: not the file a run wrote"),
        ("a listed file now a link", "graph.svg: in the way: not the file a run wrote"),
        ("a forged record", ".graph-set.json: not a record of this project's outputs"),
        ("a record that is a link", ".graph-set.json: not a record of this project's outputs"),
        ("a listing that leaves its folder", ".graph-set.json: not a record of this project's"),
        ("a listing of a file entry", ".graph-set.json: not a record of this project's outputs"),
        ("a model", r"out: holds a model \(config.json\); write the outputs elsewhere"),
        ("a replacement set", r"holds a replacement set \(replacement.json\)"),
    ],
)
def test_what_a_set_did_not_write_is_refused_and_nothing_is_touched(tmp_path, case, message):
    """Found by a fuzz pass (lost work): ``circuits.trace --out D`` where D held
    circuit-tracer's graph.json and features/ (and the user's graph.pdf) took them for an
    earlier run's set, replaced graph.json and deleted features/ and graph.pdf. A directory
    holding a graph.json with no record beside it (another tool's, or a set of a version that
    kept no record), anything of the set's names that the record does not list (or not as it
    stands), a record this code did not write, or a model or replacement set, is refused in one
    line: every file stays as it was, and no staging directory, lock or record is left."""
    from toy_models.files import WriteError

    out = tmp_path / "out"
    if case == "another tool's graph.json":  # circuit-tracer's output, and the user's files
        (out / "features").mkdir(parents=True)
        (out / "features" / "0.json").write_text("theirs")
        (out / "graph.json").write_text('{"metadata": {}, "nodes": [], "links": []}')
        (out / "graph.pdf").write_text("my drawing")
    else:
        write_a_set(out)
    if case == "an unlisted entry":
        (out / "graph.pdf").write_text("my drawing")
    elif case == "a listed file now a folder":
        (out / "graph.svg").unlink()
        (out / "graph.svg").mkdir()
        (out / "graph.svg" / "mine.txt").write_text("mine")
    elif case == "a listed file now a link":
        (out / "graph.svg").unlink()
        (tmp_path / "elsewhere.svg").write_text("mine")
        (out / "graph.svg").symlink_to(tmp_path / "elsewhere.svg")
    elif case == "a forged record":  # a record naming a path outside the set's names
        (out / ".graph-set.json").write_text(
            json.dumps({"set": "graph.json", "entries": {"../precious": "directory"}})
        )
    elif case in ("a listing that leaves its folder", "a listing of a file entry"):
        name, path = ("features", "../notes.txt") if "leaves" in case else ("graph.svg", "x")
        (out / "features").mkdir()
        (out / ".graph-set.json").write_text(json.dumps({"set": "graph.json", "entries": {
            "graph.json": "file", "graph.svg": "file", "features": "directory"},
            "files": {name: [path]}}))  # fmt: skip
    elif case == "a record that is a link":
        record = out / ".graph-set.json"
        (tmp_path / "record.json").write_bytes(record.read_bytes())
        record.unlink()
        record.symlink_to(tmp_path / "record.json")
    elif case == "a model":
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_text("weights")
    elif case == "a replacement set":
        (out / "replacement.json").write_text("{}")
    before = snapshot(out)
    with pytest.raises(WriteError, match=message) as info:
        write_a_set(out, ("graph.json", "graph.svg", "graph.pdf"), features=True)
    assert "\n" not in str(info.value)
    assert snapshot(out) == before


def test_a_run_cut_short_among_its_renames_leaves_everything_it_moved_recorded(tmp_path):
    """The record lists both sets' entries while the new set moves in, so a run killed among
    the renames leaves nothing of its own unlisted: the next run replaces the mix whole (a
    kill stands for it: any exception there puts the earlier set back, and a Ctrl-C waits)."""
    out = tmp_path / "out"
    write_a_set(out, ("graph.json", "graph.svg"))
    kill(out, "graph.pdf in", ("graph.json", "graph.pdf"))  # features/, graph.json in by then
    assert (out / "graph.json").read_text() == "second graph.json" and (out / "features").is_dir()
    listed = json.loads((out / ".graph-set.json").read_text())["entries"]
    assert set(listed) == {"graph.json", "graph.pdf", "graph.svg", "features"}
    assert (out / ".writing").exists() and (out / ".writing.lock").exists()  # killed: no clean-up
    _, notes = write_a_set(out, ("graph.json",))
    assert sorted(p.name for p in out.iterdir()) == [".graph-set.json", "graph.json"]
    assert len(notes) == 3  # graph.json put back, then features/ and graph.svg removed; no pdf


def test_an_output_directory_holding_a_model_or_a_replacement_set_is_refused(tmp_path):
    """Found by a fuzz pass: ``reports.superposition --out`` (and ``toy_models.train --out``)
    naming a model's or a replacement set's folder wrote beside its files. The shared check
    refuses such a folder, except the kind the caller writes itself (a trainer's own run)."""
    from toy_models.cli import UserError
    from toy_models.files import check_writable_dir

    model, replacement = tmp_path / "model", tmp_path / "set"
    model.mkdir()
    (model / "model.safetensors").write_text("weights")
    replacement.mkdir()
    (replacement / "replacement.json").write_text("{}")
    with pytest.raises(UserError, match=r"--out .*model: holds a model \(model.safetensors\)"):
        check_writable_dir(model)
    with pytest.raises(UserError, match=r"--work .*set: holds a replacement set"):
        check_writable_dir(replacement, "--work")
    check_writable_dir(model, own=("model.safetensors",))  # toy_models.train, resuming
    check_writable_dir(replacement, own=("replacement.json",))  # replacement.train's own set
    with pytest.raises(UserError, match="holds a replacement set"):
        check_writable_dir(replacement, own=("model.safetensors",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "set"]
    assert [p.name for p in model.iterdir()] == ["model.safetensors"]


def test_a_training_runs_data_folder_is_refused_as_an_output_directory(tmp_path):
    """Found by a review: ``python -m replacement.cache --out RUN/data`` (a training run's
    own cache of its corpus, tokenizer source and packed rows) was accepted and wrote its
    manifest and chunks among them. The folder is saved work (both its names needed: a lone
    ``source.json`` is someone's own file), refused as an output directory and its files as
    output files; a folder beside it is fine."""
    from toy_models.cli import UserError
    from toy_models.files import check_writable_dir, check_writable_file

    data = tmp_path / "run" / "data"
    data.mkdir(parents=True)
    (data / "source.json").write_text("{}")
    check_writable_dir(data)  # a lone source.json: not a run's data
    (data / "packed-64.safetensors").write_text("rows")
    with pytest.raises(UserError, match=r"--out .*data: holds a training run's data"):
        check_writable_dir(data, sets_refused=True)
    with pytest.raises(UserError, match="packed-64.safetensors of a training run's data"):
        check_writable_file(data / "packed-64.safetensors", "--json")
    check_writable_dir(tmp_path / "run" / "cache")
    assert sorted(p.name for p in data.iterdir()) == ["packed-64.safetensors", "source.json"]


def test_the_light_copies_of_the_saved_work_names_are_the_librarys():
    """``toy_models.files`` names a model's and a replacement set's files without importing
    the layers that define them; each copy must equal its original."""
    from replacement import model as replacement_model
    from replacement.activation_cache import MANIFEST_FILE
    from replacement.train import SET_FILE
    from toy_models import checkpoint, resumable
    from toy_models.files import SAVED_WORK, set_record_name

    model_files, set_files, cache_files, checkpoint_files, data_files, shipped, shipped_set = (
        k.names for k in SAVED_WORK
    )
    assert model_files == (checkpoint.CONFIG_FILE, checkpoint.WEIGHTS_FILE)
    assert set_files == (replacement_model.CONFIG_FILE,) == (SET_FILE,)
    assert cache_files == (MANIFEST_FILE,)
    assert checkpoint_files == (resumable.STATE_FILE, resumable.WEIGHTS_FILE)
    assert shipped == (checkpoint.RECORD_FILE, *model_files)
    assert shipped_set == (checkpoint.RECORD_FILE, *set_files)
    assert [k.whole for k in SAVED_WORK] == [False, False, False, True, False, True, True]
    # toy_models.train.prepare_data's names, for any n_ctx
    assert SAVED_WORK[4].is_name("source.json") and SAVED_WORK[4].is_name("packed-64.safetensors")
    assert data_files == ("source.json", "packed-*.safetensors")
    assert set_record_name("graph.json") == ".graph-set.json"
    assert set_record_name("heads.json") == ".heads-set.json"


# ----------------------------------------------------------------- files in a set's directory
@pytest.mark.parametrize("rewrite", [False, True], ids=["removing", "replacing"])
@pytest.mark.parametrize(
    "case, where, message",
    [
        ("notes", "features/MY_NOTES.txt", r"in the way: not written by a run \(.graph-set.json "
         "does not list it among features/'s files"),
        ("a folder", "features/mine", "in the way: not written by a run"),
        ("a listed file now a link", "features/1.json", "in the way: not the file a run wrote"),
        ("a listed file now a folder", "features/1.json", "in the way: not the file a run wrote"),
    ],
)  # fmt: skip
def test_a_file_put_in_a_sets_directory_is_refused_and_kept(tmp_path, rewrite, case, where,
                                                             message):  # fmt: skip
    """Found in review (lost work, exit 0): the record said only that ``features`` was a
    directory of the set, so a user's file put in it went with it when the next run replaced
    features/ or, without feature files, removed it ("removed features of an earlier run").
    The record lists the files a run wrote in each directory; anything else there (or a listed
    file that is now a link or a folder) is refused in one line naming it, nothing touched."""
    from toy_models.files import WriteError

    out = tmp_path / "out"
    write_a_set(out, features=True)
    mine = out / where
    if case == "notes":
        mine.write_text("my notes")
    elif case == "a folder":
        mine.mkdir()
    else:
        mine.unlink()
        (tmp_path / "elsewhere.json").write_text("mine")
        mine.mkdir() if case.endswith("folder") else mine.symlink_to(tmp_path / "elsewhere.json")
    before = snapshot(out)
    with pytest.raises(WriteError, match=message) as info:
        write_a_set(out, features=rewrite)
    assert str(info.value).startswith(f"cannot write {mine}: ") and "move it" in str(info.value)
    assert "\n" not in str(info.value)
    assert snapshot(out) == before and mine.is_symlink() == (case == "a listed file now a link")


def test_a_users_folder_named_like_a_swaps_leftover_is_kept(tmp_path):
    """Found by fuzz pass 10 (lost work, exit 0): replacing a set's ``features/`` moved the
    previous version aside to ``features.old`` in ``out``, removing whatever stood there
    first, a user's folder of that name included. The previous version goes aside inside the
    run's own staging directory instead."""
    out = tmp_path / "out"
    write_a_set(out, features=True)
    mine = out / "features.old"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    write_a_set(out, features=True)
    assert (mine / "keep.txt").read_text() == "mine"
    assert (out / "features" / "1.json").read_text() == "new"


def test_a_users_staging_named_folder_is_refused_and_a_killed_runs_is_removed(tmp_path):
    """Found by fuzz pass 13 (lost work, exit 0): a set's run removed whatever stood at
    ``--out/.writing`` (its staging directory's name), a user's folder of notes included. Only
    a staging directory a run made (its mark file inside) is removed; anything else there is
    refused in one line, before anything is written, and kept."""
    from reports.outputs import STAGING_DIR, STAGING_MARK
    from toy_models.files import WriteError, fresh_directory

    out = tmp_path / "out"
    mine = out / STAGING_DIR
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my precious notes")
    (mine / STAGING_MARK).write_text("not what a run writes")
    with pytest.raises(WriteError, match=r"\.writing: in the way") as info:
        write_a_set(out)
    assert "\n" not in str(info.value) and "move it away" in str(info.value)
    assert (mine / "notes.txt").read_text() == "my precious notes"
    assert sorted(p.name for p in out.iterdir()) == [STAGING_DIR]
    for link in (True, False):  # a link to the user's folder, and a file, are in the way too
        (out / "x").unlink(missing_ok=True)
        (out / "x").symlink_to(mine) if link else (out / "x").write_text("mine")
        other = tmp_path / f"other{link}"
        other.mkdir()
        (other / STAGING_DIR).symlink_to(out / "x")
        with pytest.raises(WriteError, match="in the way"):
            write_a_set(other)
        assert (mine / "notes.txt").exists() and (out / "x").exists()

    killed = tmp_path / "killed"  # a run killed while writing left its marked staging directory
    killed.mkdir()
    cut_short = fresh_directory(killed / STAGING_DIR, STAGING_MARK)
    cut_short.__enter__()  # never left: the run was killed (kept referenced, never closed)
    (killed / STAGING_DIR / "graph.json").write_text("half a set")
    write_a_set(killed)
    assert sorted(p.name for p in killed.iterdir()) == [".graph-set.json", "graph.json",
                                                        "graph.svg"]  # fmt: skip
    assert (killed / "graph.json").read_text() == "new graph.json"


def test_a_set_with_a_directory_replaces_its_own_files_run_after_run(tmp_path):
    """A second and third run over a set's own directory succeed (what it wrote is listed),
    with a folder inside it, and the record lists the files that stand there now."""
    from reports.outputs import OutputSet, write_set

    out = tmp_path / "out"

    def fill(stage: Path, n: int) -> None:
        (stage / "graph.json").write_text(str(n))
        (stage / "features" / "model-local").mkdir(parents=True)
        (stage / "features" / "model-local" / f"{n}.json").write_text("{}")

    for number in range(3):
        _, notes = write_set(out, OutputSet(SET_NAMES, "graph.json"), partial(fill, n=number))
        assert notes == []
    assert sorted(snapshot(out)) == [".graph-set.json", "features", "features/model-local",
                                     "features/model-local/2.json", "graph.json"]  # fmt: skip
    record = json.loads((out / ".graph-set.json").read_text())
    assert record["files"] == {"features": ["model-local/2.json"]}


def test_a_directory_recorded_by_an_older_version_is_removed_only_when_empty(tmp_path):
    """A record written before the listings names a directory but not its files: none of them
    can be told from the user's, so a run that would replace or remove it is refused while it
    holds anything; an empty one goes as before."""
    from toy_models.files import WriteError, write_set_record

    out = tmp_path / "out"
    (out / "features" / "model-local").mkdir(parents=True)
    (out / "features" / "model-local" / "7.json").write_text("{}")
    (out / "graph.json").write_text("old")
    write_set_record(out, "graph.json", {"graph.json": "file", "features": "directory"})
    before = snapshot(out)
    for features in (False, True):
        with pytest.raises(WriteError, match="features: written by an older version, whose "
                           ".graph-set.json does not list the files it put there"):  # fmt: skip
            write_a_set(out, features=features)
        assert snapshot(out) == before
    shutil.rmtree(out / "features" / "model-local")
    _, notes = write_a_set(out)
    assert notes == [f"removed {out / 'features'} of an earlier run"]
    assert sorted(snapshot(out)) == [".graph-set.json", "graph.json", "graph.svg"]


# ----------------------------------------------------------------- saved work (fuzz pass 22)
def a_checkpoint(run: Path) -> Path:
    """A training run's checkpoint folder, as ``toy_models.resumable`` swaps it in."""
    checkpoint = run / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "weights.safetensors").write_text("weights")
    (checkpoint / "state.json").write_text("{}")
    return checkpoint


def test_a_training_checkpoint_is_saved_work_no_other_command_writes_into(tmp_path):
    """Found by fuzz pass 22 (lost work, exit 0): a graph set traced into a run's
    ``checkpoint/`` was deleted by the run's next checkpoint, which replaces the folder whole.
    Such a folder is refused as an output directory, and an output file anywhere under it."""
    from toy_models.cli import UserError
    from toy_models.files import check_writable_dir, check_writable_file, earlier_set

    checkpoint = a_checkpoint(tmp_path / "run")
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match=r"--out .*checkpoint: holds a training checkpoint"):
        check_writable_dir(checkpoint)
    with pytest.raises(files.WriteError, match="holds a training checkpoint .state.json."):
        earlier_set(checkpoint, "graph.json", SET_NAMES)  # what circuits.trace checks
    for path in (checkpoint / "eval.json", checkpoint / "deeper" / "dash.safetensors"):
        with pytest.raises(UserError, match=f"--json {path}: is inside a training checkpoint "
                           rf"\({checkpoint}\), which its run replaces whole"):  # fmt: skip
            check_writable_file(path, "--json")
    deeper = checkpoint / "graphs" / "one"
    with pytest.raises(UserError, match=f"--out {deeper}: is inside a training checkpoint"):
        check_writable_dir(deeper)
    with pytest.raises(files.WriteError, match="one: is inside a training checkpoint"):
        earlier_set(deeper, "graph.json", SET_NAMES)
    assert snapshot(tmp_path) == before
    # beside the run's checkpoint is fine, and so is a folder with a lone state.json (a common
    # name: a checkpoint is swapped in complete)
    check_writable_file(tmp_path / "run" / "eval.json", "--json")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "state.json").write_text("{}")
    check_writable_dir(tmp_path / "mine")
    check_writable_file(tmp_path / "mine" / "eval.json", "--json")


def test_a_shipped_zoo_entry_is_saved_work_no_other_command_writes_into(tmp_path):
    """Found by fuzz pass 73 (lost work, exit 0): ``circuits.trace --out
    toy_models/zoo/default/sub`` wrote its graph set inside the shipped model's entry, which the
    next ``toy_models.ship RUN --name default`` replaces whole (``ship_directory``), deleting
    the set. A shipped entry (a model's or a set's files with its record.json) is refused as an
    output folder's parent, and an output file anywhere under it; an unshipped run is not."""
    from toy_models.cli import UserError
    from toy_models.files import check_writable_dir, check_writable_file, earlier_set
    from toy_models.ship import ship_directory

    zoo = tmp_path / "zoo"
    model = zoo / "default"
    model.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "record.json"):
        (model / name).write_text("{}")
    sets = tmp_path / "sets" / "default"
    sets.mkdir(parents=True)
    for name in ("replacement.json", "record.json"):
        (sets / name).write_text("{}")
    before = snapshot(tmp_path)
    for entry, what in ((model, "a shipped model"), (sets, "a shipped replacement set")):
        for out in (entry / "sub", entry / "graphs" / "one"):
            # the next ship replaces it, not "its run" (the fuzz pass's Left)
            said = f"--out {out}: is inside {what} \\({entry}\\), which the next ship replaces"
            with pytest.raises(UserError, match=said):
                check_writable_dir(out)
            with pytest.raises(UserError, match=f"--out {out}: is inside {what}"):
                check_writable_dir(out)
            with pytest.raises(files.WriteError, match=f"is inside {what}"):
                earlier_set(out, "graph.json", SET_NAMES)  # what circuits.trace checks
        path = entry / "eval.json"
        with pytest.raises(UserError, match=f"--json {path}: is inside {what}"):
            check_writable_file(path, "--json")
    assert snapshot(tmp_path) == before
    # which is what the next ship does to anything written there
    (model / "sub").mkdir()
    (model / "sub" / "graph.json").write_text("{}")
    ship_directory(zoo, "default", lambda tmp: (tmp / "config.json").write_text("{}"), lambda _: {})
    assert not (model / "sub").exists()
    # an unshipped run's folder (no record.json) keeps taking files beside its model
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "model.safetensors"):
        (run / name).write_text("{}")
    check_writable_dir(run / "sub")
    check_writable_file(run / "eval.json", "--json")


def test_a_zoo_itself_is_refused_as_an_output_folder(tmp_path):
    """A fuzz pass's Left: ``circuits.trace --out toy_models/zoo`` wrote its set into the zoo
    itself, whose folders all list as entries (``features/`` read as a model of that name).
    A folder holding a shipped entry is refused in one line by every output check (the set
    writers' ``check_writable_dir`` and the trace's own ``check_writable``); a folder of
    unshipped runs is not."""
    from circuits.trace import check_writable
    from toy_models.cli import UserError
    from toy_models.files import check_writable_dir

    zoo = tmp_path / "zoo"
    for name in ("a", "b", "c", "d"):
        (zoo / name).mkdir(parents=True)
        for file in ("config.json", "model.safetensors", "record.json"):
            (zoo / name / file).write_text("{}")
    sets = tmp_path / "sets"
    (sets / "default").mkdir(parents=True)
    for file in ("replacement.json", "record.json"):
        (sets / "default" / file).write_text("{}")
    before = snapshot(tmp_path)
    for check in (check_writable_dir, check_writable):
        with pytest.raises(UserError, match=r"is a zoo \(its shipped entries: a, b, c, \.\.\.\)"):
            check(zoo)
        with pytest.raises(UserError, match=r"is a zoo \(its shipped entries: default\)"):
            check(sets)
    assert snapshot(tmp_path) == before
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    for file in ("config.json", "model.safetensors"):  # a trained run, not shipped
        (runs / "r" / file).write_text("{}")
    check_writable_dir(runs)
    check_writable(runs)


def test_a_link_into_a_folder_replaced_whole_is_followed(tmp_path):
    """Found by fuzz pass 73 (lost work, exit 0): an ``--out`` (or a ``--json``'s folder) that
    was a symbolic link to a folder inside a training checkpoint or a shipped zoo entry was
    written into, the folders above the link checked instead of those above its target."""
    from toy_models.cli import UserError
    from toy_models.files import check_writable_dir, check_writable_file, earlier_set

    checkpoint = a_checkpoint(tmp_path / "run")
    (checkpoint / "sub").mkdir()
    zoo_entry = tmp_path / "zoo" / "default"
    zoo_entry.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "record.json"):
        (zoo_entry / name).write_text("{}")
    (zoo_entry / "sub").mkdir()
    before = snapshot(tmp_path)
    for target, what in ((checkpoint, "a training checkpoint"), (zoo_entry, "a shipped model")):
        link = tmp_path / f"link-{target.name}"
        link.symlink_to(target / "sub")
        for out in (link, link / "deeper"):
            with pytest.raises(UserError, match=f"--out {out}: is inside {what} \\({target}\\)"):
                check_writable_dir(out)
            with pytest.raises(files.WriteError, match=f"is inside {what}"):
                earlier_set(out, "graph.json", SET_NAMES)  # what circuits.trace checks
        with pytest.raises(UserError, match=f"is inside {what}"):
            check_writable_file(link / "eval.json", "--json")
        link.unlink()
    assert snapshot(tmp_path) == before
    # a link to a folder of one's own stays fine
    (tmp_path / "mine").mkdir()
    (tmp_path / "link-mine").symlink_to(tmp_path / "mine")
    check_writable_dir(tmp_path / "link-mine")
    check_writable_file(tmp_path / "link-mine" / "eval.json", "--json")


def test_results_replace_only_an_earlier_results_file(tmp_path):
    """Found by fuzz pass 22 (lost work, exit 0): ``--json`` replaced any file: another set's
    replacement.json, a cache's manifest, a checkpoint's state, a user's notes. Given the keys
    its command writes, an existing file is replaced only when it is a JSON object holding
    them (an earlier run's results); a file named as saved work beside that work is refused
    even when missing; results beside a model stay fine (``--json RUN/eval.json``)."""
    from toy_models.cli import UserError
    from toy_models.files import check_writable_file

    keys = frozenset({"model", "loss"})
    model, cache = tmp_path / "model", tmp_path / "acts"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cache.mkdir()
    (cache / "manifest.json").write_text('{"format": "activation-cache/1"}')
    notes, deep = tmp_path / "notes.txt", tmp_path / "deep.json"
    notes.write_text("mine")
    deep.write_text("[" * 100_000 + "]" * 100_000)
    before = snapshot(tmp_path)
    for path in (cache / "manifest.json", notes, deep, model / "config.json"):
        with pytest.raises(UserError, match=f"--json {path}: exists and is not an earlier "
                           "results file of this command"):  # fmt: skip
            check_writable_file(path, "--json", keys)
    with pytest.raises(UserError, match="model.safetensors: is model.safetensors of a model"):
        check_writable_file(model / "model.safetensors", "--json", keys)
    with pytest.raises(UserError, match="is manifest.json of an activation cache"):
        check_writable_file(cache / "manifest.json", "--stats")  # any file output, too
    assert snapshot(tmp_path) == before
    check_writable_file(model / "eval.json", "--json", keys)
    earlier = tmp_path / "manifest.json"  # an earlier run's results, whatever its name
    earlier.write_text(json.dumps({"model": "tiny", "loss": 1.0, "more": []}))
    check_writable_file(earlier, "--json", keys)


def test_a_zoo_entry_that_is_a_link_is_replaced_not_followed(tmp_path):
    """Found by fuzz pass 22: swapping into a ``dest`` that was a symbolic link moved the link
    aside to ``NAME.old``, which ``shutil.rmtree`` cannot remove (error ignored), and every
    later swap of that name failed 'Not a directory'. The link itself is replaced; what it
    points to is kept; swaps go on working."""
    from toy_models.files import swap_directory

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    dest = tmp_path / "zoo" / "tiny"
    dest.parent.mkdir()
    dest.symlink_to(mine)
    for n in range(2):
        new = tmp_path / "zoo" / f".tiny.{n}.tmp"
        new.mkdir()
        (new / "model.safetensors").write_text(str(n))
        swap_directory(new, dest)
        assert not dest.is_symlink() and (dest / "model.safetensors").read_text() == str(n)
        assert sorted(p.name for p in dest.parent.iterdir()) == ["tiny"]
    assert (mine / "keep.txt").read_text() == "mine"
    dangling = tmp_path / "zoo" / "small"
    dangling.symlink_to(tmp_path / "nowhere")
    new = tmp_path / "zoo" / ".small.tmp"
    new.mkdir()
    swap_directory(new, dangling)
    assert dangling.is_dir() and not dangling.is_symlink()


def test_ctrl_c_between_a_swaps_renames_is_raised_when_the_swap_is_done(tmp_path, monkeypatch):
    """Found by a robustness pass: a Ctrl-C between ``swap_directory``'s two renames, in a ship
    (``toy_models.ship``, ``replacement.ship``), left the zoo entry missing: its earlier
    version at ``NAME.old`` and the new one removed with the ship's temporary directory, so
    the model did not load until shipped again. The renames end first (``interrupts_deferred``),
    then the Ctrl-C is raised: the entry is the new one, whole, and nothing is left beside it."""
    import signal

    from toy_models.files import cut_short
    from toy_models.ship import ship_directory

    zoo = tmp_path / "zoo"
    (zoo / "tiny").mkdir(parents=True)
    (zoo / "tiny" / "model.safetensors").write_text("old")
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if Path(src) == zoo / "tiny":  # the earlier entry moved aside: Ctrl-C now
            signal.raise_signal(signal.SIGINT)

    def write(tmp: Path) -> None:
        (tmp / "model.safetensors").write_text("new")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        ship_directory(zoo, "tiny", write, lambda tmp: {})
    assert cut_short(zoo / "tiny") is None
    assert (zoo / "tiny" / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in zoo.iterdir()) == ["tiny"]


def test_a_deeply_nested_record_and_a_huge_lock_pid_are_no_tracebacks(tmp_path):
    """Found by fuzz pass 22: a set record nested 100000 deep was a RecursionError traceback
    (read now through ``toy_models.records.parse_json``: not a record of this code), and a
    lock file holding a number beyond a process id's range an OverflowError from ``os.kill``
    (no live writer)."""
    from toy_models.files import WriteError, earlier_set, process_alive

    out = tmp_path / "out"
    out.mkdir()
    (out / ".graph-set.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(WriteError, match="not a record of this project's outputs"):
        earlier_set(out, "graph.json", SET_NAMES)
    for pid in (10**20, 2**63, 2**31, 0, -1):
        assert process_alive(pid) is False
    assert process_alive(os.getpid())


def test_a_file_to_read_that_is_no_regular_file_says_what_it_is(tmp_path):
    """A fuzz pass read "checkpoint file missing" for a FIFO, a link in a loop and a folder."""
    from toy_models.files import check_readable_file

    (tmp_path / "ok").write_text("x")
    check_readable_file(tmp_path / "ok", "checkpoint file")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    (tmp_path / "to_dir").symlink_to(tmp_path / "dir")
    (tmp_path / "to_fifo").symlink_to(tmp_path / "fifo")
    for name, words in (
        ("to_dir", "a directory, not a file"),
        ("to_fifo", "not a regular file (a FIFO, a device or a socket)"),
        ("missing", "checkpoint file missing: "),
        ("fifo", "not a regular file (a FIFO, a device or a socket)"),
        ("dir", "a directory, not a file"),
        ("loop", "a symbolic link that leads to no file (dangling, or in a loop)"),
        ("dangling", "a symbolic link that leads to no file"),
    ):
        with pytest.raises(FileNotFoundError, match=re.escape(words)):
            check_readable_file(tmp_path / name, "checkpoint file")


def test_a_training_folder_is_locked_while_its_loop_runs(tmp_path):
    """A fuzz pass: two ``--resume`` runs into one folder trained side by side, each saving
    its checkpoints over the other's (one stopped at step 1768 reported the other's 1770). The
    loop holds ``out/.training.lock`` (its process id): a live other process's lock refuses
    the run in one line before a step; a killed run's is taken over; the lock goes when the
    loop ends, however it ends. The graph sets' ``.writing.lock`` is the same lock."""
    import subprocess
    import sys

    import torch

    from toy_models.cli import UserError
    from toy_models.resumable import LOCK_FILE, ResumableRun

    def run_in(out, steps_seen):
        run = ResumableRun(out, resume=False)
        module = torch.nn.Linear(2, 1)
        run.start({"config": "t"}, module, torch.optim.SGD(module.parameters(), lr=0.1),
                  stats=("loss",))  # fmt: skip

        def step(i):
            steps_seen.append((out / LOCK_FILE).read_text())
            return {"loss": 1.0}

        return run.train(step, 3, checkpoint_every=2, desc="t", quiet=True)

    from toy_models.files import process_start

    me = f"{os.getpid()} {process_start(os.getpid())}"  # the id and when it started
    seen = []
    assert run_in(tmp_path / "a", seen) and seen == [me] * 3  # held, by this one
    assert not (tmp_path / "a" / LOCK_FILE).exists()  # released at the end
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / LOCK_FILE).write_text(str(other.pid))
        with pytest.raises(UserError, match=rf"another run \(process {other.pid}\) is training"):
            run_in(tmp_path / "b", [])
        assert (tmp_path / "b" / LOCK_FILE).read_text() == str(other.pid)  # left as it was
        assert not (tmp_path / "b" / "checkpoint").exists()
        # the same with when it started, and the refusal names the lock to remove if no run is
        lock = tmp_path / "b" / LOCK_FILE
        lock.write_text(f"{other.pid} {process_start(other.pid)}")
        with pytest.raises(
            UserError, match=f"if no run is, remove its lock {re.escape(str(lock))}"
        ):
            run_in(tmp_path / "b", [])
        # a killed run's id reused by a live process that started at another time (in a
        # container ids start at 1 again: a reviewer's lock held 1 and blocked the folder for
        # good): taken over
        for pid in (other.pid, 1):
            (tmp_path / f"reused{pid}").mkdir()
            lock = tmp_path / f"reused{pid}" / LOCK_FILE
            lock.write_text(f"{pid} {int(process_start(pid)) + 1}")
            seen = []
            assert run_in(lock.parent, seen) is True and seen == [me] * 3
            assert not lock.exists()
    finally:
        other.kill()
        other.wait()
    seen = []  # the other process is gone: its lock is a killed run's, taken over
    assert run_in(tmp_path / "b", seen) is True and not (tmp_path / "b" / LOCK_FILE).exists()


def test_interrupts_are_held_back_until_a_set_of_renames_ends_well():
    """``interrupts_deferred``: a Ctrl-C or SIGTERM inside the body is raised as it ends (the
    renames all done), SIGTERM first where both came; a body that fails ends with its own
    error (a full disk named, not "interrupted"); the handlers there were are put back; off
    the main thread it holds nothing back."""
    import signal
    import threading

    class Term(Exception):
        pass

    def on_term(signum, frame):
        raise Term

    before = signal.signal(signal.SIGTERM, on_term)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with files.interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("after the signal")
        assert done == ["after the signal"]
        with pytest.raises(Term):  # both came: SIGTERM ends the run
            with files.interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(OSError, match="disk full"):  # the body's own error, not an interrupt
            with files.interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                raise OSError("disk full")
        assert signal.getsignal(signal.SIGTERM) is on_term
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with files.interrupts_deferred():  # nothing came: nothing raised
            pass
        seen = []

        def elsewhere():  # handlers cannot be set off the main thread: nothing held
            with files.interrupts_deferred():
                seen.append(signal.getsignal(signal.SIGINT))

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        assert seen == [signal.default_int_handler]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_full_disk_while_taking_a_lock_leaves_no_temp_file_and_names_the_lock(
    tmp_path, monkeypatch
):
    """A fuzz pass on a 3 MB tmpfs: a 0-byte ``.writing.lock.<id>.tmp`` stayed in ``--out`` for
    good (also after later runs), and the error read "No space left on device" naming no
    file. The lock's temp file is removed however writing it fails, and the error names the
    lock."""
    import errno

    real = Path.write_text

    def full(self, *args, **kwargs):
        real(self, "")  # the file is made, its text does not fit
        raise OSError(errno.ENOSPC, "No space left on device")

    lock = tmp_path / ".writing.lock"
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(files.WriteError, match=re.escape(f"cannot write {lock}: No space left")):
        files.take_lock(lock, "writing here")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    files.take_lock(lock, "writing here")  # the next run takes it
    files.release_lock(lock)
    assert list(tmp_path.iterdir()) == []


KILLED_AMONG_RENAMES = """
import os, shutil, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from reports.outputs import OutputSet, write_set
out, at = Path({out!r}), {at!r}
real_replace, real_rmtree = os.replace, shutil.rmtree

def replace(src, dst):  # killed (no handler runs) as ``at`` happens
    if at == "graph.pdf in" and Path(dst) == out / "graph.pdf":
        os._exit(9)
    real_replace(src, dst)
    if at == "graph.json aside" and Path(src) == out / "graph.json":
        os._exit(9)

def rmtree(path, *args, **kwargs):
    if at == "earlier versions deleted" and Path(path).parent == out / ".writing":
        os._exit(9)  # the set whole: its stage's folder of the earlier versions goes
    real_rmtree(path, *args, **kwargs)

os.replace, shutil.rmtree = replace, rmtree

def fill(stage):
    for name in {written!r}:
        (stage / name).write_text("second " + name)
    (stage / "features").mkdir()
    (stage / "features" / "second.json").write_text("second")

write_set(out, OutputSet(frozenset({names!r}), "graph.json"), fill)
"""


def kill(out: Path, at: str, written: tuple[str, ...]) -> None:
    """A run writing ``written`` and ``features/`` into ``out``, killed at ``at``."""
    script = KILLED_AMONG_RENAMES.format(
        root=str(Path(__file__).parents[1]), out=str(out), at=at, names=sorted(SET_NAMES),
        written=written,
    )  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr


@pytest.mark.parametrize("at", ["graph.json aside", "earlier versions deleted"])
def test_a_run_killed_among_its_renames_leaves_the_earlier_versions_to_the_next(tmp_path, at):
    """Found in review: a run killed (no handler: SIGKILL, the OOM killer, a power cut) after
    moving an earlier entry aside into its staging directory (``.writing/.previous``) and
    before moving the new one in left that entry out of ``--out``, and the next run removed
    the killed run's staging directory with it before writing anything: a next run that then
    failed (a full disk) left the earlier set without its graph.json, lost. The next run puts
    the entries aside back first (the killed run's own new versions go); one killed once its
    set was whole (deleting the earlier versions) leaves the new set as it is."""
    import errno

    from reports.outputs import OutputSet, write_set

    out, kind = tmp_path / "out", OutputSet(SET_NAMES, "graph.json")

    def fill(stage: Path, run: str) -> None:
        for name in ("graph.json", "graph.svg"):
            (stage / name).write_text(f"{run} {name}")
        (stage / "features").mkdir()
        (stage / "features" / f"{run}.json").write_text(run)

    write_set(out, kind, partial(fill, run="first"))
    first = snapshot(out)
    kill(out, at, ("graph.json", "graph.svg"))
    whole = {name: data for name, data in snapshot(out).items() if not name.startswith(".")}

    def full_disk(stage: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(stage / "graph.json"))

    with pytest.raises(OSError, match="No space left"):
        write_set(out, kind, full_disk)
    kept = {name: data for name, data in snapshot(out).items() if not name.startswith(".")}
    if at == "graph.json aside":
        assert (out / "graph.json").read_text() == "first graph.json"
        assert kept == {name: data for name, data in first.items() if not name.startswith(".")}
    else:
        assert (out / "graph.json").read_text() == "second graph.json"
        assert kept == whole
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".graph-set.json"]
    write_set(out, kind, partial(fill, run="third"))
    assert (out / "graph.json").read_text() == "third graph.json"
    assert sorted(snapshot(out)) == [".graph-set.json", "features", "features/third.json",
                                     "graph.json", "graph.svg"]  # fmt: skip


def test_an_error_not_of_the_os_among_the_renames_puts_the_earlier_set_back(tmp_path, monkeypatch):
    """Found in review: only an OSError among the renames put the earlier entries back; any
    other (a MemoryError, a bug's) left the earlier graph.json in the staging directory, which
    the run's clean-up removed: the run failed with no graph.json in --out at all."""
    import os

    out = tmp_path / "out"
    write_a_set(out, ("graph.json", "graph.svg"))
    before = snapshot(out)
    real, failed = os.replace, []

    def replace(src, dst):  # once: the earlier one aside, the new one moving in
        if Path(dst) == out / "graph.json" and not failed:
            failed.append(dst)
            raise MemoryError
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(MemoryError):
        write_a_set(out, ("graph.json", "graph.svg"), features=True)
    monkeypatch.undo()
    assert snapshot(out) == before


KILLED_AFTER_RENAMES = """
import os, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from reports.outputs import OutputSet, write_set
out, names, done = Path({out!r}), {names!r}, []
real_replace = os.replace

def replace(src, dst):  # killed (no handler runs) before the rename number k + 1 (the last:
    if Path(src).name in names or Path(src).name == ".previous":  # the folder aside, whole)
        if len(done) == {k!r}:
            os._exit(9)
        done.append(src)
    real_replace(src, dst)

os.replace = replace
new = {new!r}

def fill(stage):
    for name, text in new.items():
        if name.endswith("/"):
            (stage / name).mkdir()
            (stage / name / "1.json").write_text(text)
        else:
            (stage / name).write_text(text)

write_set(out, OutputSet(frozenset(names), "graph.json"), fill)
"""


def kill_after(out: Path, k: int, names: frozenset[str], new: dict[str, str]) -> None:
    """A run writing ``new`` (name: text; ``NAME/`` a folder of one file) as a set of
    ``names`` into ``out``, killed (``os._exit``) before its rename of an entry number k+1."""
    script = KILLED_AFTER_RENAMES.format(root=str(ROOT), out=str(out), names=sorted(names),
                                         k=k, new=new)  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr


# first set: graph.json, graph.svg; the second: features/ (new), graph.json (replacing),
# graph.pdf (new), graph.svg gone: five renames (features in, graph.json aside and in,
# graph.pdf in, graph.svg aside), then the folder aside renamed once the set is whole (k=5:
# killed before it, the set whole but not yet known to be)
@pytest.mark.parametrize("k", range(6))
def test_a_run_killed_after_any_rename_leaves_a_set_refused_then_put_back_exactly(tmp_path, k):
    """Found in review: a run killed among its renames left a mix of two runs' files that
    nothing said was one until the next run, and that run's undoing put back only the earlier
    entries moved aside: a new entry that replaced none (``features/`` where the earlier set had
    none) stayed beside the earlier graph.json, and a next run that failed (a full disk) left
    that mix for good, its record listing it as the set's. Now the set's files are refused
    while the renames' folder stands (``set_cut_short``: a reader is told, in one line), and the
    next run undoes the killed run's renames exactly from the journal kept there (the earlier
    record): the earlier set, record and all, after any number of renames."""
    import errno

    from reports.outputs import OutputSet, write_set

    out, kind = tmp_path / "out", OutputSet(SET_NAMES, "graph.json")
    write_a_set(out, ("graph.json", "graph.svg"))
    first = snapshot(out)
    kill_after(out, k, SET_NAMES, {"features/": "second", "graph.json": "second graph.json",
                                   "graph.pdf": "second graph.pdf"})  # fmt: skip
    for name in ("graph.json", "graph.svg", "graph.pdf", "features"):  # listed: refused
        reason = files.set_cut_short(out / name)
        assert reason and "\n" not in reason and "being replaced, or a run was killed" in reason
    assert files.set_cut_short(out / "notes.txt") is None  # a user's own file beside the set

    def full_disk(stage: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(stage / "graph.json"))

    with pytest.raises(OSError, match="No space left"):
        write_set(out, kind, full_disk)
    assert snapshot(out) == first  # the earlier set exactly, its record too
    assert files.set_cut_short(out / "graph.json") is None
    write_a_set(out, ("graph.json",), features=True)
    assert sorted(snapshot(out)) == [".graph-set.json", "features", "features/1.json",
                                     "graph.json"]  # fmt: skip


def test_a_summary_loader_given_a_binary_file_says_it_is_no_summary(tmp_path):
    """A graph's safetensors given where mechanisms.json belongs read "'utf-8' codec can't
    decode byte 0xf0": one line, but not saying what is wrong (a notebook review)."""
    from circuits.mechanism_file import load_summary

    wrong = tmp_path / "graph.safetensors"
    wrong.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}\xf0\x9f\xff\xfe")
    with pytest.raises(ValueError, match="not a mechanisms summary") as info:
        load_summary(wrong)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(wrong))


def test_a_sets_loaders_refuse_its_files_while_a_killed_runs_renames_are_undone(tmp_path):
    """The graph file's and the summary's loaders refuse a file of a set cut short among its
    renames, in one line, before reading it (it may be another run's than the files beside
    it), and read it again once the next run has put the earlier set back."""
    from circuits.graph_file import GraphFileError, load_graph
    from circuits.mechanism_file import load_summary
    from reports.outputs import GRAPH_SET, write_set

    out = tmp_path / "out"

    def fill(stage: Path) -> None:
        for name in ("graph.json", "graph.safetensors", "mechanisms.json"):
            (stage / name).write_text("first")

    write_set(out, GRAPH_SET, fill)
    stage = out / ".writing"  # a run that failed before its journal (a disk gone read-only)
    cut_short = files.fresh_directory(stage, ".staging-mark")
    cut_short.__enter__()  # never left: cut short (kept referenced, never closed)
    (stage / ".previous").mkdir()  # nothing moved: nothing in question
    assert files.set_cut_short(out / "graph.safetensors") is None
    kill_after(out, 2, GRAPH_SET.names, {"graph.json": "2", "graph.safetensors": "2",
                                         "mechanisms.json": "2"})  # fmt: skip
    with pytest.raises(GraphFileError, match=r"being replaced, or a run was killed") as info:
        load_graph(out / "graph.safetensors")
    assert "\n" not in str(info.value) and str(info.value).startswith(str(out))
    with pytest.raises(ValueError, match=r"being replaced, or a run was killed"):
        load_summary(out / "mechanisms.json")
    write_set(out, GRAPH_SET, fill)  # puts the earlier set back, then writes its own
    with pytest.raises(GraphFileError, match="not a readable graph file"):  # read, not refused
        load_graph(out / "graph.safetensors")
    with pytest.raises(ValueError, match="mechanisms.json: "):
        load_summary(out / "mechanisms.json")


def test_a_full_disk_on_the_journal_leaves_the_earlier_set_whole(tmp_path, monkeypatch):
    """The journal (the earlier record, kept beside the entries moved aside) is written before
    anything moves: a full disk there fails the run in one line naming the record, with the
    earlier set whole, no staging folder left (a stage kept would have its files refused) and
    the next run going through."""
    import errno

    out = tmp_path / "out"
    write_a_set(out, ("graph.json", "graph.svg"))
    before = snapshot(out)
    real = os.replace

    def replace(src, dst):
        if Path(dst).parent.name == ".previous" and Path(dst).name == ".graph-set.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(files.WriteError, match=re.escape(f"cannot write {out / '.graph-set.json'}"
                                                         ": No space left")):  # fmt: skip
        write_a_set(out, ("graph.json",), features=True)
    monkeypatch.undo()
    assert snapshot(out) == before and files.set_cut_short(out / "graph.json") is None
    write_a_set(out, ("graph.json",), features=True)
    assert sorted(snapshot(out)) == [".graph-set.json", "features", "features/1.json",
                                     "graph.json"]  # fmt: skip


def test_a_swap_after_one_cut_short_keeps_the_previous_version_until_the_new_is_in(
    tmp_path, monkeypatch
):
    """Found by a fault pass: a swap cut short between its renames (a shipper killed) leaves
    the entry's previous version alone at ``NAME.old`` (``cut_short``), and the next swap,
    the mend the zoo's loader asks for ("ship it again"), deleted it before moving the new
    version in: a rename that failed there (or a second kill) lost every version of the
    entry. It is removed only once the new one is in place; a failure puts it back."""
    import errno

    from toy_models.files import WriteError, old_directory, swap_directory

    dest = tmp_path / "tiny"
    old = old_directory(dest)
    old.mkdir()
    (old / "model.safetensors").write_text("previous")  # the cut-short state: no ``tiny``
    new = tmp_path / ".tiny.tmp"
    new.mkdir()
    (new / "model.safetensors").write_text("new")
    real = os.replace

    def replace(src, dst):
        if Path(src) == new:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(WriteError, match=re.escape(f"cannot write {dest}: Input/output error")):
        swap_directory(new, dest)
    monkeypatch.undo()
    assert (dest / "model.safetensors").read_text() == "previous" and not old.exists()
    swap_directory(new, dest)
    assert (dest / "model.safetensors").read_text() == "new" and not old.exists()


def test_a_stage_folder_that_cannot_be_made_names_the_output_folder(tmp_path, monkeypatch):
    """Found by a fault pass (--out remounted read-only before the renames): the failure to
    make the stage's folder of earlier versions read ``cannot write OUT/.previous``, a path
    that never exists there; it names ``out``, and the earlier set stays whole."""
    import errno

    out = tmp_path / "out"
    write_a_set(out)
    before = snapshot(out)
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == ".previous":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(files.WriteError) as info:
        write_a_set(out)
    assert str(info.value) == f"cannot write {out}: Read-only file system"
    monkeypatch.undo()
    assert snapshot(out) == before


def test_a_lock_is_not_taken_twice_by_one_process(tmp_path):
    """A review: ``take_lock`` returned where this process held the lock already, so two
    writers of one process (two trainings or graph writes into one folder, from two threads or
    nested calls) shared the folder, and the first ``release_lock`` freed it under the other.
    The second take is refused as another process's would be; the first holder keeps it."""
    from toy_models.files import process_start

    lock = tmp_path / ".writing.lock"
    files.take_lock(lock, "writing there")
    held = lock.read_text()
    assert held == f"{os.getpid()} {process_start(os.getpid())}"
    with pytest.raises(files.WriteError) as refused:
        files.take_lock(lock, "writing there")
    assert str(refused.value) == (
        f"cannot write {tmp_path}: another run in this process (process {os.getpid()}) is "
        "writing there"
    )
    assert lock.read_text() == held and sorted(p.name for p in tmp_path.iterdir()) == [lock.name]
    files.release_lock(lock)
    assert not lock.exists()
    files.take_lock(lock, "writing there")  # free again: taken
    files.release_lock(lock)


def test_a_lock_that_is_a_directory_is_refused_saying_what_to_do(tmp_path):
    """A fault pass: a directory in the lock's place gave "error: ...: Is a directory" with no
    hint; it is refused naming it and what to do, left as it is, and no temp file stays."""
    lock = tmp_path / ".writing.lock"
    lock.mkdir()
    with pytest.raises(files.WriteError) as refused:
        files.take_lock(lock, "writing there")
    assert str(refused.value) == (
        f"cannot write {tmp_path}: a directory stands where its lock goes, {lock}: remove it if "
        "no run is writing there"
    )
    assert lock.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == [lock.name]
    lock.rmdir()
    files.take_lock(lock, "writing there")  # removed: taken
    files.release_lock(lock)


def _forge(path: Path, forged: str) -> None:
    """Put a FIFO, a directory or a symbolic link to ``forged`` (/dev/zero) at ``path``."""
    if forged == "fifo":
        os.mkfifo(path)
    elif forged == "directory":
        path.mkdir()
    else:
        path.symlink_to(forged)


def _held_child(script: str, path: Path) -> str:
    """Run ``script`` with ``path`` in a child with this checkout on its path (the script holds
    its own memory); its stdout, after checking that it exited 0."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", script, str(path)], env=env, timeout=120,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-300:]
    return done.stdout


_TAKE_LOCK = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from toy_models import files
files.take_lock(Path(sys.argv[1]), "writing there")
print(Path(sys.argv[1]).read_text())
"""


@pytest.mark.parametrize("forged", ["/dev/zero", "fifo"])
def test_a_lock_that_is_a_link_to_dev_zero_or_a_fifo_is_taken_over(tmp_path, forged):
    """A fault pass: a lock that is a symbolic link to /dev/zero was read whole (a MemoryError
    traceback once the machine's memory was spent: here in a child held to 1 GiB), and a FIFO
    in its place waited for a writer for ever. No run of this code writes either (a lock is a
    regular file linked into place): it is taken over, as a file no process wrote is."""
    lock = tmp_path / ".writing.lock"
    _forge(lock, forged)
    pid = _held_child(_TAKE_LOCK, lock).split()[0]
    assert pid.isdigit() and not lock.is_symlink() and lock.is_file()


_LOAD_SUMMARY = """
import resource, sys
from circuits.mechanism_file import load_summary
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
try:
    load_summary(sys.argv[1])
except ValueError as exc:
    print(exc)
"""


@pytest.mark.parametrize("forged", ["/dev/zero", "fifo", "directory"])
def test_a_summary_loader_refuses_a_link_to_dev_zero_a_fifo_or_a_directory(tmp_path, forged):
    """A fault pass: ``load_summary`` of a mechanisms.json that is a link to /dev/zero read
    without end (a MemoryError traceback once memory was spent: here in a child held to 1 GiB
    more than its start), and of a FIFO waited for ever. Each is refused in one line naming
    the file and what stands there, as the other loaders' files are (``check_readable_file``)."""
    path = tmp_path / "mechanisms.json"
    _forge(path, forged)
    out = _held_child(_LOAD_SUMMARY, path)
    why = {"/dev/zero": "not a regular file (a FIFO, a device or a socket)",
           "fifo": "not a regular file (a FIFO, a device or a socket)",
           "directory": "a directory, not a file"}[forged]  # fmt: skip
    assert out == f"mechanisms summary {path}: {why}\n"
