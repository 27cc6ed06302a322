"""Writing files safely: atomic writes (a reader sees the old version or the new, never half),
no ``.tmp`` left behind by a failed write, one-line errors, and up-front writability checks.

A write that fails (disk full, read-only file system, a directory in the way, no permission)
removes its temporary file and raises ``WriteError``, an ``OSError`` whose message is one line
naming the file; ``toy_models.cli.run_cli`` prints it as the CLI's error. Each writer has a
temp file of its own (``temp_path``), so processes saving one file at once never mix their
bytes; a temp file that a killed writer left is removed by the next save of that file.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from .cli import UserError


class WriteError(OSError):
    """Writing ``filename`` failed; ``str()`` is one line: the file and the reason."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


# A writer's temp file beside ``NAME``: ``NAME.HOST-PID-RANDOM.tmp``, a name no other writer
# uses, so that two processes saving one file at once never write into the same temp file (with
# one shared name the second truncated the first's half-written file, whose rename then put a
# mix of both in place). ``HOST`` is a hash of the machine's name, for the clean-up below.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(path: Path) -> Path:
    """A fresh temp name beside ``path`` for this writer (see ``_HOST``)."""
    return path.with_name(f"{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a writer that was not killed). A number no
    process can have (0 or below, which ``os.kill`` reads as a process group, or beyond a
    process id's range, an ``OverflowError`` there: a lock file holding a huge number was a
    traceback, found by a fuzz pass) is no live writer."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # no permission to signal it: it exists
        return True
    return True


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as the kernel counts it (Linux: the 22nd field of
    ``/proc/PID/stat``, clock ticks since boot), or None where that is not known (another
    system, no such process). With the id it names one process where an id alone is reused:
    a container numbers its processes from 1 again on every start, and a reviewer's killed
    run's lock held 1, a live process ever after, which locked the folder for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rpartition(")")[2].split()  # after the name, which may hold anything
    return fields[19] if len(fields) > 19 and fields[19].isdigit() else None


def _lock_text() -> str:
    """What this process writes in a lock: its id, and when it started where known."""
    start = process_start(os.getpid())
    return str(os.getpid()) if start is None else f"{os.getpid()} {start}"


# A lock's text is a process id and its start (``_lock_text``): far below this. Reading no more
# keeps a lock that is a link to /dev/zero (or a huge file) from being read without end (a
# fuzz pass: a MemoryError traceback, after all the machine's memory).
_LOCK_BYTES = 64


def _lock_owner(lock: Path) -> tuple[int, str | None]:
    """The process id and start (``process_start``; None in a lock without it) that ``lock``
    holds; id 0 for a file no process of this code wrote: a link (``take_lock`` links a
    regular file into place), a FIFO or device (opening a FIFO waits for a writer for ever:
    a fuzz pass), or more than a lock's text."""
    try:
        if lock.is_symlink() or not lock.is_file():
            return 0, None
        with open(lock, "rb") as file:
            text = file.read(_LOCK_BYTES + 1)
        if len(text) > _LOCK_BYTES:
            return 0, None
        pid, *start = text.decode("ascii").split()
        if len(start) > 1 or not all(x.isdigit() for x in start):
            return 0, None
        return int(pid), start[0] if start else None
    except (OSError, ValueError):
        return 0, None


def _holds(pid: int, start: str | None) -> bool:
    """Whether the process of a lock (``_lock_owner``) still runs: its id is alive and, where
    both are known, started when the lock says (else the id has been reused)."""
    if not process_alive(pid):
        return False
    now = process_start(pid)
    return start is None or now is None or now == start


def take_lock(lock: Path, busy: str) -> None:
    """Take ``lock`` (a file holding this process id and its start, linked into place whole:
    never read half-written) for a process's work in its folder, or refuse (``WriteError``
    EBUSY naming the folder: ``busy``, with the other process's id, and the lock to remove if
    no such run is active) where a live process holds it. A killed process's lock (its id gone,
    or reused by a process that started later), or a file no process could have written, is
    taken over. Released with ``release_lock``. Not re-entrant: this process's own live lock
    refuses a second take too (it returned, so two writers of one process shared the folder,
    and the first release freed it under the other)."""
    remove_dead_temps(lock)  # a killed run's, cut between writing its temp file and the link
    mine = temp_path(lock)
    try:  # the temp file is removed whatever happens, a full disk while writing it too (a fuzz
        # pass found a 0-byte lock temp file left in --out for good, and "No space left on
        # device" naming no file)
        try:
            mine.write_text(_lock_text())
        except OSError as exc:
            raise WriteError(exc.errno, exc.strerror, str(lock)) from None
        for _ in range(2):
            try:
                os.link(mine, lock)
                return
            except FileExistsError:
                owner, start = _lock_owner(lock)
                if owner > 0 and _holds(owner, start):
                    if owner == os.getpid():  # not re-entrant: two writers here are two runs
                        mine_too = f"another run in this process (process {owner}) is {busy}"
                        raise WriteError(errno.EBUSY, mine_too, str(lock.parent)) from None
                    raise WriteError(errno.EBUSY, f"another run (process {owner}) is {busy}; if "
                                     f"no run is, remove its lock {lock}",
                                     str(lock.parent)) from None  # fmt: skip
                if lock.is_dir() and not lock.is_symlink():  # no run's: said what to do (a
                    # fault pass read "error: c6/.writing.lock: Is a directory", no hint)
                    raise WriteError(errno.EISDIR, f"a directory stands where its lock goes, "
                                     f"{lock}: remove it if no run is {busy}",
                                     str(lock.parent)) from None  # fmt: skip
                lock.unlink(missing_ok=True)  # a killed run's: taken over
        raise WriteError(errno.EBUSY, "another run took the lock at the same moment",
                         str(lock.parent))  # fmt: skip
    finally:
        mine.unlink(missing_ok=True)


def release_lock(lock: Path) -> None:
    """Remove ``lock`` where this process holds it (``take_lock``); another's is left."""
    owner, start = _lock_owner(lock)
    if owner == os.getpid() and _holds(owner, start):
        with contextlib.suppress(OSError):
            lock.unlink()


def remove_dead_temps(path: Path) -> None:
    """Remove the temp files (or directories: ``ship_directory``'s) of ``path`` that writers
    on this machine left when they were killed (no handler ran; their process is gone). A
    temp file of a live writer, of this process or of another machine is never touched; a
    process id reused since leaves its file in place, which costs disk only."""
    pattern = re.compile(re.escape(path.name) + rf"\.{_HOST}-(\d+)-[0-9a-f]{{8}}\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            found = pattern.fullmatch(entry.name)
            if found and not process_alive(int(found[1])):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file beside it and a rename
    (``replace_atomic``)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    replace_atomic(path, write)


def write_json_atomic(path: str | Path, data: dict) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` via a temp file and a rename, like ``write_json_atomic``."""
    write_bytes_atomic(path, text.encode("utf-8"))


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def old_directory(dest: Path) -> Path:
    """Where ``swap_directory`` keeps the previous version of ``dest`` during the swap."""
    return dest.with_name(dest.name + ".old")


def _remove(path: Path) -> None:
    """Remove what stands at ``path``, if anything: a folder with its files, or a symbolic link
    (never what it points to) or a file. ``shutil.rmtree`` refuses a link, so a zoo entry that
    was a link, moved aside to ``NAME.old`` by a swap, stayed there and failed every later swap
    of that name ('Not a directory': found by a fuzz pass). Errors are ignored, as the swap's
    clean-up ignores them."""
    if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
        with contextlib.suppress(OSError):
            os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back while the body runs (the renames that put a set of outputs
    in place: all of them or none), then raised again once it has ended well, to the handlers
    there were (SIGTERM first where both came), so the run stops with a whole set (a fuzz
    pass's Ctrl-C between two renames left one prompt's graph beside another prompt's
    summary). A body that fails ends the run with its own error (a full disk named, not
    "interrupted"). Handlers, not a signal mask: a signal to the process reaches whichever of
    its threads (torch's) does not mask it. Off the main thread, where handlers cannot be set,
    or where one was set outside Python (it could not be put back), it holds nothing back."""
    held = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or any(
        signal.getsignal(s) is None for s in held
    ):
        yield
        return
    caught: list[int] = []

    def hold(signum, frame) -> None:
        caught.append(signum)

    previous = {s: signal.signal(s, hold) for s in held}
    try:
        yield
    finally:  # (a failing body raises on from here: what follows is for one that ended well)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:  # as it would have come, now the set is whole
        signal.raise_signal(signal.SIGTERM if signal.SIGTERM in caught else caught[0])


def swap_directory(new: Path, dest: Path) -> None:
    """Put the complete directory ``new`` in the place of ``dest`` (which may not exist).

    ``dest`` is first moved aside to ``old_directory(dest)``, so a complete version exists at
    every moment; a crash between the two renames leaves it there (see
    ``toy_models.resumable``, which looks for it). A failed rename puts the old version back.
    A ``dest`` that is a symbolic link is replaced, link and all (``_remove``): what it points
    to is never touched. A Ctrl-C or SIGTERM during the renames is raised once they are done
    (``interrupts_deferred``): between them it left a ship's zoo entry missing, the new version
    removed with the ship's temporary directory (a robustness pass). Where an earlier swap was
    cut short (``cut_short``: no ``dest``, its previous version at ``old``), that version stays
    until the new one is in place, and a failure puts it back: deleting it first lost every
    version of the entry to a rename that then failed (a fault pass).
    """
    old = old_directory(dest)
    with interrupts_deferred():
        try:
            if os.path.lexists(dest):
                _remove(old)
                os.replace(dest, old)
            os.replace(new, dest)
        except OSError as exc:
            if os.path.lexists(old) and not os.path.lexists(dest):
                with contextlib.suppress(OSError):
                    os.replace(old, dest)
            raise WriteError(exc.errno, exc.strerror, str(dest)) from None
        _remove(old)


def cut_short(dest: Path) -> str | None:
    """Why ``dest`` is missing when a swap was cut between its two renames (its previous,
    complete version still at ``old_directory(dest)``), or None. Readers say so and rename
    nothing: a reader's rename could race a swap in progress (``swap_directory``); the next
    swap into ``dest`` (e.g. shipping again) replaces the leftovers."""
    old = old_directory(dest)
    if dest.exists() or not old.is_dir():
        return None
    return f"{dest} is missing: a swap into it was cut short and left its previous version at {old}"


def is_swap_leftover(path: Path) -> bool:
    """A directory that ``swap_directory`` or ``fresh_directory`` leaves behind when cut short
    (``.NAME.tmp``, ``NAME.old``): never an entry of its own."""
    return path.name.startswith(".") or path.name.endswith(".old")


# What a marked staging directory's mark file holds (``fresh_directory``).
_STAGING_MARK_TEXT = "a staging directory of this project's code; a run cut short left it\n"
# An output set's staging directory in its ``--out`` (``reports.outputs.write_set``), its mark
# file (``fresh_directory``'s ``mark``), and the folder in it holding the earlier set's entries
# while the new set moves in (with the earlier set's record: what undoing a kill there needs).
STAGING_DIR = ".writing"
STAGING_MARK = ".staging-mark"
PREVIOUS_DIR = ".previous"


@contextlib.contextmanager
def fresh_directory(path: Path, mark: str | None = None, keep: str | None = None) -> Iterator[Path]:
    """An empty directory ``path`` to fill, removed again if filling it fails in any way, but
    where its subdirectory ``keep`` holds anything then (what the caller could not put back:
    the next run's to recover).

    With ``mark``, ``path`` lies among a user's files: the directory starts with a file of
    that name (the caller leaves it out of what it moves), and what stands at ``path`` before
    is removed only when it is a directory holding that file, as written here (a run cut short
    left it); anything else there is refused as in the way, untouched. Removing whatever
    stood there lost a user's ``--out/.writing/`` folder, exit 0 (found by fuzz pass 13)."""
    reason = None if mark is None else staging_in_the_way(path, mark)
    if reason:
        raise WriteError(errno.EEXIST, reason, str(path))
    _remove(path)
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise WriteError(exc.errno, exc.strerror, str(path)) from None
    try:
        if mark is not None:
            (path / mark).write_text(_STAGING_MARK_TEXT, encoding="utf-8")
        yield path
    except BaseException:
        held = path / keep if keep is not None else None
        if held is None or held.is_symlink() or not held.is_dir() or not any(held.iterdir()):
            shutil.rmtree(path, ignore_errors=True)
        raise


def staging_in_the_way(path: Path, mark: str) -> str | None:
    """Why ``fresh_directory(path, mark)`` would refuse what stands at ``path`` (anything but
    a staging directory a run left), or None: for the CLIs' checks before any work, so that a
    user's ``--out/.writing/`` is refused at once, not after the whole run (a reviewer's trace
    printed its summary for 18 s, then was refused)."""
    if os.path.lexists(path) and not _is_marked(path, mark):
        return ("in the way: a run's staging directory goes there, and this is not one a run "
                "left; move it away")  # fmt: skip
    return None


def set_cut_short(path: Path) -> str | None:
    """Why the file at ``path``, an entry of the output set in its folder, may not belong with
    the set's other files, or None: that set is being replaced (``reports.outputs``' renames,
    one entry at a time) or a run was killed among those renames (SIGKILL, the OOM killer, a
    power cut), so the folder may hold some of one run's files beside another's until the next
    run of the command puts the earlier set back. A set's loaders refuse its files then: a
    graph file and a summary of two prompts read as one (a robustness pass). A file no set
    record in its folder lists (a user's own beside the set) is never in question."""
    stage = path.parent / STAGING_DIR
    previous = stage / PREVIOUS_DIR
    if previous.is_symlink() or not previous.is_dir() or not _is_marked(stage, STAGING_MARK):
        return None
    try:
        if not any(previous.iterdir()):  # its journal is written before anything moves
            return None  # (a run that failed before it, on a read-only disk, moved nothing)
    except OSError:  # unreadable: in question
        pass
    if not any(
        isinstance(record, dict)
        and isinstance(record.get("entries"), dict)
        and path.name in record["entries"]
        for record in map(_small_json, path.parent.glob(".*-set.json"))
    ):
        return None
    return (f"the output set in {path.parent} is being replaced, or a run was killed "
            "while replacing it, so its files may be two runs' (the earlier ones are in "
            f"{previous}); wait for that run, or rerun the command that wrote the set (it puts "
            "the earlier set back first)")  # fmt: skip


def _is_marked(path: Path, mark: str) -> bool:
    """Whether ``path`` is a directory (not a link) that ``fresh_directory`` made with
    ``mark``: its mark file, a plain file, holds what that wrote."""
    marker = path / mark
    if path.is_symlink() or not path.is_dir() or marker.is_symlink() or not marker.is_file():
        return False
    try:
        with marker.open("rb") as file:
            return file.read(len(_STAGING_MARK_TEXT) + 1) == _STAGING_MARK_TEXT.encode()
    except OSError:
        return False


# The output directories the checks below made themselves in this run (absolute; the parents
# they made on the way are not listed): a run refused after them removes those still empty
# (``remove_empty_created``). ``toy_models.cli.run_cli`` empties the list before and after
# each run, so one run never acts on another's.
_CREATED: list[Path] = []


def make_dir(directory: Path) -> None:
    """Create the output directory ``directory`` and its parents as needed; list it in
    ``_CREATED`` only when this call made the directory itself, so that a run that fails or
    is interrupted after it removes it again if still empty (``os.mkdir`` is atomic: a
    directory that existed, or that another process made first, is never listed)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(directory)
    except FileExistsError:
        if not directory.is_dir():
            raise
        return
    _CREATED.append(Path.cwd() / directory)  # absolute, with no link or ``..`` resolved


def _cannot_write_in(directory: Path) -> str | None:
    """Why no file can be written in ``directory`` (created as needed), or None: a probe file
    is created and removed, the one check that is certain (permissions, read-only and
    pseudo file systems, a file in the way)."""
    for parent in (directory, *directory.parents):  # the nearest one that exists
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is not a directory"
            break
    try:
        make_dir(directory)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def forget_created() -> None:
    """Start a new run's list of made directories (``toy_models.cli.run_cli``)."""
    _CREATED.clear()


def remove_empty_created() -> None:
    """Remove the output directories the checks made in this run if they are still empty (a
    refused run leaves no empty ``--out`` behind; anything holding a file stays, and so do
    parents the checks made on the way, which another run may be using), then forget them."""
    for path in reversed(_CREATED):
        with contextlib.suppress(OSError):
            path.rmdir()
    forget_created()


class SavedWork(NamedTuple):
    """A kind of saved work: a folder holding any of ``names`` holds one (``what``). ``whole``:
    its writer replaces the folder whole (``swap_directory``), so a file another command put
    anywhere under it is lost at the next save; such a folder is put in place complete, so it
    is one only with every one of ``names`` (a lone ``state.json`` is a common name), and so is
    a kind marked ``every``. A name may be a pattern (``packed-*.safetensors``)."""

    names: tuple[str, ...]
    what: str
    whole: bool = False
    every: bool = False
    shipped: bool = False  # a zoo entry: its zoo lists every folder beside it as one (zoo_in)
    replacer: str = "its run"  # what replaces a ``whole`` kind's folder (the refusals say it)

    def found_in(self, directory: Path) -> str | None:
        """The first of ``names`` that shows ``directory`` holds this kind, or None."""
        found = [name for name in self.names if _entry_named(directory, name)]
        if not found or ((self.whole or self.every) and len(found) < len(self.names)):
            return None
        return found[0]

    def is_name(self, name: str) -> bool:
        """Whether a file called ``name`` would be one of this kind's (``names``' patterns)."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.names)


def _entry_named(directory: Path, pattern: str) -> bool:
    """Whether ``directory`` holds an entry called ``pattern`` (or matching it: ``*``)."""
    if "*" not in pattern:
        return os.path.lexists(directory / pattern)
    try:
        return any(fnmatch.fnmatchcase(e.name, pattern) for e in os.scandir(directory))
    except OSError:
        return False


# Folders that hold saved work of their own: a command's outputs written there would land among
# its files (and a set's clean-up could remove them), so an output directory holding one is
# refused unless the command writes that very kind (``check_writable_dir``'s ``own``: the
# trainers, into their run), and so is an output file named as one of its files or, for a kind
# replaced whole, anywhere under it (``check_writable_file``). Names only, not imported (the
# layers above, and start-up): ``toy_models.checkpoint``'s CONFIG_FILE and WEIGHTS_FILE,
# ``replacement.model.CONFIG_FILE``, ``replacement.activation_cache.MANIFEST_FILE`` (a training
# run written into a cache left it one that would not resume), ``toy_models.resumable``'s
# STATE_FILE and WEIGHTS_FILE (a graph set or results written into a run's checkpoint folder
# were deleted by the run's next checkpoint): both found by fuzz passes. A training run's
# ``data/`` folder (``toy_models.train.prepare_data``: ``source.json`` and the packed rows,
# both names needed, ``source.json`` being a common one) is its own cache of the corpus: an
# activation cache written there was accepted (a review). A shipped zoo entry (a model's or a
# set's files with ``toy_models.checkpoint.RECORD_FILE`` beside them) is replaced whole by the
# next ship (``toy_models.ship.ship_directory``): a trace written into ``zoo/default/sub`` was
# accepted, exit 0, and deleted by shipping ``default`` again (a fuzz pass).
SAVED_WORK = (
    SavedWork(("config.json", "model.safetensors"), "a model"),
    SavedWork(("replacement.json",), "a replacement set"),
    SavedWork(("manifest.json",), "an activation cache"),
    SavedWork(("state.json", "weights.safetensors"), "a training checkpoint", whole=True),
    SavedWork(("source.json", "packed-*.safetensors"), "a training run's data", every=True),
    SavedWork(("record.json", "config.json", "model.safetensors"), "a shipped model",
              whole=True, shipped=True, replacer="the next ship"),
    SavedWork(("record.json", "replacement.json"), "a shipped replacement set",
              whole=True, shipped=True, replacer="the next ship"),
)  # fmt: skip


def saved_work_in(directory: Path, own: tuple[str, ...] = ()) -> str | None:
    """``a model (config.json)`` when ``directory`` holds saved work (``SAVED_WORK``) of a kind
    none of whose files is among ``own``, else None."""
    for kind in SAVED_WORK:
        if any(name in own for name in kind.names):
            continue
        found = kind.found_in(directory)
        if found:
            return f"{kind.what} ({found})"
    return None


def zoo_in(directory: Path) -> list[str]:
    """The shipped entries (``SavedWork.shipped``) that ``directory`` holds as folders, by
    name: a zoo, which lists every folder in it as an entry (``toy_models.zoo``), so that a
    trace's ``features/`` written there read as a model of that name (a fuzz pass)."""
    try:
        folders = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    except OSError:
        return []
    shipped = [kind for kind in SAVED_WORK if kind.shipped]
    return [name for name in folders if any(k.found_in(directory / name) for k in shipped)]


def check_outside_saved_work(path: Path, flag: str = "--out", own: tuple[str, ...] = ()) -> None:
    """Refuse, in one line, an output folder that lies inside saved work its writer replaces
    whole (``replaced_whole``: a training checkpoint, a shipped entry) or that is a zoo
    (``zoo_in``): the checks of every output folder, the set writers' ``check_writable_dir``
    and the trace's own. The folder itself counts as well as those above it, except where the
    caller writes saved work of its own there (``own``, whose folder ``saved_work_in`` has
    weighed); a caller that writes a zoo's entries (``own=(RECORD_FILE,)``: a ship) may write
    into a zoo."""
    inside = replaced_whole(real_path(path).parent if own else path)
    if inside:
        raise UserError(f"{flag} {path}: is inside {inside}; "
                        "write the outputs elsewhere")  # fmt: skip
    if any(kind.shipped and set(kind.names) & set(own) for kind in SAVED_WORK):
        return
    entries = zoo_in(path) if path.is_dir() else []  # its folders list as entries
    if entries:
        more = ", ..." if len(entries) > 3 else ""
        named = ", ".join(entries[:3]) + more
        raise UserError(f"{flag} {path}: is a zoo (its shipped entries: {named}); write the "
                        "outputs elsewhere")  # fmt: skip


def output_set_in(directory: Path) -> str | None:
    """The record of an output set (``write_set_record``: a graph's or a report's files) in
    ``directory``, or None."""
    if not directory.is_dir():
        return None
    found = sorted(p.name for p in directory.glob(".*-set.json"))
    return found[0] if found else None


def check_writable_dir(
    path: Path, flag: str = "--out", own: tuple[str, ...] = (), sets_refused: bool = False
) -> None:
    """Create the output directory ``path`` (and its parents) now and prove that files can be
    written in it, so that a run fails in one line before its work instead of after it. A
    folder holding a model or a replacement set is refused (``SAVED_WORK``), except the kind
    whose files the caller writes itself (``own``: a trainer's final files), and so is one
    inside a training checkpoint (``replaced_whole``). With ``sets_refused`` (a model, a set or
    a cache, saved work itself), so is one holding a graph's or report's output set: written
    among a trace's files, a model made the trace refuse its own folder (a reviewer)."""
    if path.is_symlink() and not path.exists():
        raise UserError(f"{flag} {path}: is a dangling symbolic link")
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: exists and is not a directory")
    work = saved_work_in(path, own) if path.is_dir() else None
    if work:
        raise UserError(f"{flag} {path}: holds {work}; write the outputs elsewhere")
    check_outside_saved_work(path, flag, own)
    record = output_set_in(path) if sets_refused else None
    if record:
        raise UserError(f"{flag} {path}: holds a graph's or report's outputs ({record}); "
                        "write the outputs elsewhere")  # fmt: skip
    reason = _cannot_write_in(path)
    if reason:
        raise UserError(f"{flag} {path}: cannot write there ({reason})")


# ----------------------------------------------------------------- output sets
# A command that writes a set of files into one directory (``reports.outputs.write_set``)
# records there what it wrote, so that a later run replaces and removes only those entries:
# a file of one of the set's names that no run recorded is someone's own (circuit-tracer writes
# a graph.json and features/ too) and is never replaced or removed. A directory entry is
# replaced or removed whole, so its record lists the files the run wrote in it too: a file the
# user put there (notes beside the feature files) is in the way, not swept away with it.
MAX_RECORD_BYTES = 1 << 24  # a few dozen names, and a directory's files: one per graph unit


class SetRecord(NamedTuple):
    """What an earlier set's record says it wrote: ``entries`` (name: ``file`` or
    ``directory``) and, per directory entry, the relative paths of the files it wrote there
    (``files``; a record of a version that kept no listing has none)."""

    entries: dict[str, str]
    files: dict[str, list[str]]
    by: str | None = None  # the command that wrote it (None in records written before)


def set_record_name(mark: str) -> str:
    """The file in an output directory listing what a set marked by ``mark`` put there:
    hidden, named after the set (``graph.json``: ``.graph-set.json``)."""
    return f".{mark.partition('.')[0]}-set.json"


def files_under(directory: Path) -> list[str]:
    """The relative paths (``a/b.json``) of every file under ``directory``, and of every empty
    folder there with a ``/`` after it (``a/``), sorted: what a set records of a directory it
    wrote (``write_set_record``). A run that leaves a folder empty (the features folder of a
    graph with no head or feature) records it, so that it is the run's, not a stranger the same
    run is refused for the next time (found by a fuzz pass)."""
    out = []
    for root, folders, names in os.walk(directory):
        here = Path(root).relative_to(directory)
        out += [(here / name).as_posix() for name in names]
        if not folders and not names and here != Path("."):
            out.append(here.as_posix() + "/")
    return sorted(out)


def write_set_record(
    out: Path, mark: str, entries: dict[str, str], files: dict[str, list[str]] | None = None,
    by: str | None = None,
) -> None:  # fmt: skip
    """Record (atomically) that ``entries`` (name: ``file`` or ``directory``) in ``out`` are
    a set's, one marked by ``mark``, that each directory entry held ``files[name]``, and
    (``by``) which command wrote them, where two commands write sets of one mark."""
    record = {"set": mark, "entries": dict(sorted(entries.items()))}
    if files:
        record["files"] = {name: sorted(paths) for name, paths in sorted(files.items())}
    if by is not None:
        record["by"] = by
    write_json_atomic(out / set_record_name(mark), record)


def _is_relative_path(path) -> bool:
    """Whether ``path`` is a plain relative path inside a directory (``a/b.json``, or an empty
    folder's ``a/``): a record's listing could otherwise vouch for a file outside the entry it
    lists."""
    if not isinstance(path, str) or not path or "\0" in path:
        return False
    body = path.removesuffix("/")
    plain = PurePosixPath(body)
    inside = bool(plain.parts) and not plain.is_absolute() and ".." not in plain.parts
    return inside and plain.as_posix() == body


def read_set_record(path: Path, mark: str, names: frozenset[str]) -> SetRecord | None:
    """What a set record at ``path`` lists, or None when it is not one this code wrote (a
    link, too large, not JSON or nested too deeply to read (``_small_json``), another set's,
    names outside ``names``, a listing of a file entry or of a path that leaves its
    directory)."""
    record = _small_json(path)
    if not isinstance(record, dict) or set(record) - {"files", "by"} != {"set", "entries"}:
        return None
    entries, files, by = record["entries"], record.get("files", {}), record.get("by")
    if (
        record["set"] != mark
        or not (by is None or isinstance(by, str) and by.isprintable() and 0 < len(by) <= 80)
        or not isinstance(entries, dict)
        or not all(
            name in names and kind in ("file", "directory") for name, kind in entries.items()
        )
        or not isinstance(files, dict)
        or not all(
            entries.get(name) == "directory"
            and isinstance(paths, list)
            and all(_is_relative_path(p) for p in paths)
            for name, paths in files.items()
        )
    ):
        return None
    return SetRecord(entries, files, by)


def _strangers(directory: Path, files: set[str]) -> Iterator[tuple[Path, bool]]:
    """The entries under ``directory`` that a run which wrote ``files`` (relative paths) there
    did not write, each with whether it stands where a listed file did (a link or a folder
    now); a folder on the way to a listed file, or listed as one the run left empty (``a/``,
    ``files_under``), is walked, not reported."""
    folders = {parent.as_posix() for f in files for parent in PurePosixPath(f).parents}
    folders |= {f.rstrip("/") for f in files if f.endswith("/")}

    def walk(folder: Path) -> Iterator[tuple[Path, bool]]:
        for entry in sorted(folder.iterdir()):
            relative = entry.relative_to(directory).as_posix()
            if relative in files:
                if entry.is_symlink() or not entry.is_file():
                    yield entry, True
            elif relative in folders and entry.is_dir() and not entry.is_symlink():
                yield from walk(entry)
            else:
                yield entry, False

    return walk(directory)


def _check_directory_entry(entry: Path, record: Path, files: list[str] | None) -> None:
    """Refuse (``WriteError``) a recorded directory that holds anything its run did not write:
    the next run replaces or removes it whole. With no listing (a record of a version that kept
    none) nothing in it can be told from the user's, so only an empty one passes."""
    if files is None:
        if any(entry.iterdir()):
            raise WriteError(errno.EEXIST, f"written by an older version, whose {record.name} "
                             "does not list the files it put there, so they cannot be told "
                             "from yours and the run would delete them all; move it away or "
                             "choose another --out", str(entry))  # fmt: skip
        return
    first = next(_strangers(entry, set(files)), None)
    if first is None:
        return
    stranger, listed = first
    why = (
        f"not the file a run wrote there ({record.name} lists a file)"
        if listed
        else f"not written by a run ({record.name} does not list it among {entry.name}/'s "
        f"files, and a run replaces or removes {entry.name}/ whole)"
    )
    raise WriteError(errno.EEXIST, f"in the way: {why}; move it out of {entry.name}/ or choose "
                     "another --out", str(stranger))  # fmt: skip


def earlier_record(out: Path, mark: str, names: frozenset[str], by: str | None = None) -> SetRecord:
    """What an earlier set marked by ``mark`` recorded writing into ``out``
    (``write_set_record``): the entries a new set may replace or remove, and the files of its
    directories; empty when there is none. Creates nothing. Refused in one line (``WriteError``
    naming the entry), so that nothing is touched, when ``out`` holds saved work
    (``SAVED_WORK``) or lies inside a kind replaced whole (``replaced_whole``), a record this
    code did not write, the ``mark`` with no record beside it (another tool's file, or a set
    written before sets were recorded), a set another command wrote (``by``: two commands
    write graph sets, a trace's and a global graph's, and one would remove the other's summary
    and feature files: found by a reviewer), an entry of the set's ``names`` that no record lists,
    or not as what stands there, or a recorded directory that holds anything its run did not
    write (someone's own)."""
    inside = replaced_whole(real_path(out).parent)
    if inside:
        raise WriteError(errno.EEXIST, f"is inside {inside}; "
                         "write the outputs elsewhere", str(out))  # fmt: skip
    if not out.is_dir():
        return SetRecord({}, {})
    work = saved_work_in(out)
    if work:
        raise WriteError(errno.EEXIST, f"holds {work}; write the outputs elsewhere", str(out))
    record = out / set_record_name(mark)
    found, recorded = SetRecord({}, {}), os.path.lexists(record)
    if recorded:
        found = read_set_record(record, mark, names)
        if found is None:
            raise WriteError(errno.EEXIST, "not a record of this project's outputs; move it "
                             "away or choose another --out", str(record))  # fmt: skip
        if by is not None and found.by is not None and found.by != by:
            raise WriteError(errno.EEXIST, f"holds a set that {found.by} wrote, which {by} would "
                             "replace; choose another --out (or move that set away)",
                             str(out))  # fmt: skip
    elif os.path.lexists(out / mark):
        raise WriteError(errno.EEXIST, f"not written by a run of this version (there is no "
                         f"{record.name} beside it: another tool's file, or a set of an older "
                         "version, which kept no record); choose another --out (or move that "
                         "set away)", str(out / mark))  # fmt: skip
    for entry in sorted(out.iterdir()):
        if entry.name not in names:
            continue
        kind = found.entries.get(entry.name)
        if kind is None:
            why = f"{record.name} does not list it" if recorded else f"there is no {mark} beside it"
            raise WriteError(errno.EEXIST, f"in the way: not written by a run ({why}); move it "
                             "or choose another --out", str(entry))  # fmt: skip
        if entry.is_symlink() or entry.is_dir() != (kind == "directory"):
            raise WriteError(errno.EEXIST, f"in the way: not the {kind} a run wrote there; "
                             "move it or choose another --out", str(entry))  # fmt: skip
        if kind == "directory":
            _check_directory_entry(entry, record, found.files.get(entry.name))
    return found


def earlier_set(
    out: Path, mark: str, names: frozenset[str], by: str | None = None
) -> dict[str, str]:
    """The entries (name: ``file`` or ``directory``) that an earlier set marked by ``mark``
    recorded writing into ``out``, refused as ``earlier_record`` says: the check the CLIs run
    on ``--out`` before any work."""
    return earlier_record(out, mark, names, by).entries


def check_writable_file(path: Path, flag: str, results: frozenset[str] = frozenset()) -> None:
    """Refuse now an output file that could not be written (a directory in its place, a
    symbolic link, a device or a FIFO, which the atomic write would replace, a parent that
    cannot hold files) or that would land in saved work (``in_saved_work``), creating its
    missing parent directories.

    ``results``: the keys of the JSON object the command writes there. Given, a file already
    at ``path`` is replaced only when it is such an object (an earlier run's results): any
    other file is someone's saved work (another set's replacement.json, a cache's manifest, a
    user's notes were replaced, exit 0: found by a fuzz pass)."""
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory")
    reason = _unreplaceable(path)
    if reason:
        raise UserError(f"{flag} {path}: {reason}")
    earlier = bool(results) and os.path.lexists(path) and _is_results(path, results)
    if results and os.path.lexists(path) and not earlier:
        raise UserError(f"{flag} {path}: exists and is not an earlier results file of this "
                        "command (a JSON object with its keys); name a new file or move that "
                        "one away")  # fmt: skip
    reason = in_saved_work(path, own_results=earlier)
    if reason:
        raise UserError(f"{flag} {path}: {reason}; write the results elsewhere")
    reason = _cannot_write_in(path.parent)
    if reason:
        raise UserError(f"{flag} {path}: cannot write there ({reason})")


def real_path(path: Path) -> Path:
    """``path`` absolute with every symbolic link on it followed (a missing tail kept, a link
    loop left as it stands: ``os.path.realpath``, which never raises): where a write lands."""
    return Path(os.path.realpath(path))


def replaced_whole(directory: Path) -> str | None:
    """``a training checkpoint (DIR), which its run replaces whole`` (a shipped entry's: the next
    ship) when ``directory`` or a folder above it is saved work that its writer replaces whole
    (``SavedWork.whole``, ``SavedWork.replacer``), else None: whatever another command
    writes there is lost at the next save. Links are followed (``real_path``): an ``--out``
    that was a link to a folder inside such work was written into, the folders above the
    link checked instead of those above its target (a fuzz pass)."""
    directory = real_path(directory)
    for folder in (directory, *directory.parents):
        for kind in SAVED_WORK:
            if kind.whole and kind.found_in(folder):
                return f"{kind.what} ({folder}), which {kind.replacer} replaces whole"
    return None


def in_saved_work(path: Path, own_results: bool = False) -> str | None:
    """Why a file written at ``path`` would land in saved work (``SAVED_WORK``), or None:
    anywhere under a folder of a kind replaced whole (a training checkpoint: the run's next
    checkpoint deletes it), or under the name of one of the files of the saved work its folder
    holds (``--json SET/replacement.json``; not when ``own_results``: the file there is the
    command's own earlier results, ``check_writable_file``). Beside a kept kind's files is
    fine (``--json RUN/eval.json``)."""
    folder = real_path(path).parent
    inside = replaced_whole(folder)
    if inside:
        return f"is inside {inside}"
    for kind in SAVED_WORK:
        if not own_results and kind.is_name(path.name) and kind.found_in(folder):
            return f"is {path.name} of {kind.what}"
    return None


def _is_results(path: Path, keys: frozenset[str]) -> bool:
    """Whether the file at ``path`` is a results file of a command that writes ``keys``: a
    regular file of JSON (read as any file from disk: bounded, through
    ``toy_models.records.parse_json``) holding a JSON object with every one of them."""
    data = _small_json(path)
    return isinstance(data, dict) and keys <= data.keys()


def _small_json(path: Path):
    """The JSON of a regular file of at most ``MAX_RECORD_BYTES`` at ``path`` (not a link),
    parsed as any file from disk (``toy_models.records.parse_json``: nesting too deep to read
    is refused, where ``json.loads`` was a RecursionError traceback: a fuzz pass), or None."""
    from .records import parse_json

    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_RECORD_BYTES:
            return None
        return parse_json(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None


def resolved(path: Path, flag: str) -> Path:
    """``path.resolve()``, a link loop refused in one line (``UserError``) naming ``flag``
    (``resolve`` raises a bare RuntimeError there: a fuzz pass's traceback)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        raise UserError(f"{flag} {path}: a symbolic link in a loop; name a real path") from None


def check_not_input(path: Path, inputs: list[Path], flag: str) -> None:
    """Refuse an output file that is one of the files the run reads (``inputs``: a model's or a
    replacement set's own files), which writing the results there would destroy."""
    target = resolved(path, flag)
    for source in inputs:
        if source.resolve() == target:
            raise UserError(f"{flag} {path}: is {source.name} of the model or replacement set "
                            "this run reads; write the results elsewhere")  # fmt: skip


def check_readable_file(path: Path, what: str) -> None:
    """Refuse (``FileNotFoundError``, one line) a ``what`` (``"checkpoint file"``) at ``path``
    that is no regular file to read, saying which: missing, a directory, a link that leads
    nowhere or in a loop, or a FIFO, device or socket (a fuzz pass read "missing" for each)."""
    if path.is_file():
        return
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{what} missing: {path}")
    if path.is_dir():  # (through a link too)
        why = "a directory, not a file"
    elif not path.exists():  # a link to nothing (exists() follows links)
        why = "a symbolic link that leads to no file (dangling, or in a loop)"
    else:  # (through a link too: a link to /dev/zero was called dangling)
        why = "not a regular file (a FIFO, a device or a socket)"
    raise FileNotFoundError(f"{what} {path}: {why}")


def _unreplaceable(path: Path) -> str | None:
    """Why a rename must not replace what stands at ``path`` (None: nothing, or a regular
    file): it would replace a link rather than write through it, or a device or FIFO."""
    if path.is_symlink():
        return "is a symbolic link; name a new or regular file"
    if path.exists() and not path.is_file() and not path.is_dir():  # a directory: the OS says
        return "is not a regular file; name a new or regular file"
    return None


def _check_replaceable(path: Path) -> None:
    """Refuse (``WriteError``) a file in ``path``'s place that a rename must not replace."""
    reason = _unreplaceable(path)
    if reason:
        raise WriteError(errno.EEXIST, f"it {reason}", str(path))


def replace_atomic(path: str | Path, write) -> None:
    """Create ``path`` atomically when another library writes the bytes: ``write(tmp)`` fills
    a temp file beside it (this writer's own, ``temp_path``), which then replaces ``path``. On
    any failure the temp file is removed and ``path`` is untouched; an OSError becomes a
    ``WriteError``. Temp files that killed writers left beside ``path`` go first
    (``remove_dead_temps``). Writers of one file at once each put a whole version in place,
    the last to finish winning. A ``path`` that is a symbolic link, a device, a FIFO or
    anything else but a regular file is refused: the rename would replace it (``/dev/null``
    itself, for root), not write through it."""
    path = Path(path)
    _check_replaceable(path)
    remove_dead_temps(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(exc.errno, exc.strerror, str(path)) from None
        raise


def write_png_atomic(fig, path: str | Path, dpi: int = 110) -> None:
    """A matplotlib figure as a PNG at ``path``, atomically (``replace_atomic``)."""
    replace_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
