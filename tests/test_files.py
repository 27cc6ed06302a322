"""Atomic writes (``toy_models.files``) when several writers save one file at once, and the
temp files that killed writers leave behind."""

import os
import subprocess
import sys
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
