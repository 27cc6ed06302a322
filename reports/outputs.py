"""Writing one graph's files into a directory: JSON, the graph file, DOT, renders and HTML.

The one place the CLIs of ``circuits`` (``trace``, ``global_graph``) hand a finished graph to
``reports``. Every file is written atomically. A rendering failure (``dot`` crashing or
refusing the file) never loses the other outputs: the DOT file, the JSON, the graph file and
the HTML page (without a drawing) are still written, and the failure comes back as one line.
With dashboards, circuit-tracer's feature files and viewer index are written beside
``graph.json`` (``reports.feature_files``).

The files are a set: they are written into a staging directory inside ``out`` first and moved
into place (renames, which need no space) only when all of them are written, so a run that
fails while writing (a full disk) leaves an earlier run's set as it was, never a mix of two
prompts' files (a run killed inside the few renames leaves the earlier entries it moved aside
in its staging directory, with the earlier set's record, and the next run undoes its renames
first; until then the set's loaders refuse its files: ``toy_models.files.set_cut_short``).
Two runs writing into one directory at once would share the staging directory, so a run holds
``out/.writing.lock`` (its process id) while it writes; another finds it and is refused in one
line (a killed run's lock is taken over). The staging directory holds a mark file
(``STAGING_MARK``): a killed run's is removed by the next, a user's ``.writing/`` is refused in
one line and kept.

A run records what it wrote in ``out`` (``.graph-set.json``, ``toy_models.files
.write_set_record``, written atomically), and of a directory (``features/``) every file it
wrote there; only what an earlier run recorded is replaced or removed: its outputs that this
run does not write again (a render in another format, ``full_graph.safetensors``, feature
files, ``mechanisms.json``) go, so a reused directory never shows a stale file beside a new
graph; nothing else in ``out`` is touched (``OUTPUT_NAMES``). The run refuses in one line,
before its files are written and with nothing touched, an ``out`` where it could destroy work
that is not its own (``toy_models.files.earlier_set``): a model or a replacement set; a
``graph.json`` with no record beside it (circuit-tracer's output, say, or a set of a version
that kept no record: move it away or choose another ``--out``); an entry of the set's names
that no record lists; a file the user put in a recorded directory (a directory is replaced or
removed whole), or anything in one whose record predates the listings.
``write_set`` is that machinery for any set of files (``OutputSet``: its names and the file
that marks it); ``reports.heads`` writes its report with it too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from circuits.graph import Graph
from circuits.neuronpedia import to_json
from toy_models.files import (
    PREVIOUS_DIR,
    STAGING_DIR,
    STAGING_MARK,
    SetRecord,
    WriteError,
    earlier_record,
    earlier_set,
    files_under,
    fresh_directory,
    interrupts_deferred,
    make_dir,
    read_set_record,
    release_lock,
    set_record_name,
    staging_in_the_way,
    take_lock,
    write_json_atomic,
    write_set_record,
)

from .feature_files import FEATURES_DIR, INDEX_FILE, write_feature_files
from .graphviz import (
    RENDER_FORMATS,
    RenderError,
    dot_available,
    dot_missing_message,
    render,
    to_dot,
)
from .html import write_html
from .labels import node_labels
from .layout import select
from .mechanism_figure import mechanism_dot
from .viewer import mechanisms_data, start_q_params

# Graphviz 2.43 crashes routing some drawings in a third of its runs of the same file, and
# not in the others (the 13-token induction trace of the README: 6 of 20): tried this often
# before the edges are drawn curved
ROUTE_TRIES = 3
GRAPH_FILE = "graph.safetensors"
FULL_GRAPH_FILE = "full_graph.safetensors"
MECHANISMS_FILE = "mechanisms.json"  # the trace's summary (``circuits.trace`` writes it)
FIGURE_STEM = "mechanism"  # its figure: mechanism.dot and its renders (reports.mechanism_figure)
# ``STAGING_DIR`` (``toy_models.files``): inside ``out``, the set being written, moved into
# place when whole; its ``STAGING_MARK`` marks it as a run's, so a leftover one (a killed
# run's) is removed and a user's folder of that name refused (``fresh_directory``).
LOCK_FILE = ".writing.lock"  # inside ``out``: the process id of the run writing there
# ``PREVIOUS_DIR``, inside ``STAGING_DIR``: the earlier set's entries, moved aside while the new
# set moves in (``_move_into_place``), with the earlier set's record (the journal: what the
# next run needs to undo a kill there exactly), put back if it fails (by the next run where
# this one was killed: ``_put_back_killed``), renamed ``REPLACED_DIR`` once the new set is
# whole, then deleted. While it stands the set's loaders refuse its files
# (``toy_models.files.set_cut_short``): the set may be two runs' files.
REPLACED_DIR = ".replaced"


# Every name a run's output set can hold in ``out``; nothing else there is ever touched (the
# trace refuses inputs among them, and more: ``circuits.trace.check_not_an_output``).
OUTPUT_NAMES = frozenset(
    ("graph.json", GRAPH_FILE, "graph.dot", "graph.html", INDEX_FILE, FULL_GRAPH_FILE,
     MECHANISMS_FILE, FEATURES_DIR, f"{FIGURE_STEM}.dot",
     *(f"{stem}.{fmt}" for stem in ("graph", FIGURE_STEM) for fmt in RENDER_FORMATS))
)  # fmt: skip


T = TypeVar("T")


@dataclass(frozen=True)
class OutputSet:
    """The entries a command writes into its output directory as one set (``write_set``):
    ``names``, every name the set can hold there (nothing else in the directory is touched),
    and ``mark``, a file in every set, which names the set's record (``record``)."""

    names: frozenset[str]
    mark: str
    by: str | None = None  # the command writing it, where two write sets of one mark

    @property
    def record(self) -> str:
        """The file in ``out`` that lists what the set's run wrote there."""
        return set_record_name(self.mark)


GRAPH_SET = OutputSet(OUTPUT_NAMES, "graph.json")  # a traced or global graph's files
# the commands that write it, each refusing the other's set (``earlier_record``'s ``by``)
GRAPH_WRITERS = ("circuits.trace", "circuits.global_graph")


def is_output(name: str) -> bool:
    """Whether a file or directory named ``name`` in ``out`` belongs to a run's output set."""
    return name in OUTPUT_NAMES


@dataclass
class Written:
    """The files written, one line per thing that went wrong or needs the user's hand, and
    the renders asked for that were not drawn (``dot`` missing or failing: the rest is
    written; a command exits non-zero where the user named the formats)."""

    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unrendered: list[str] = field(default_factory=list)


def write_graph_outputs(
    graph: Graph,
    out: Path,
    formats: list[str],
    full: Graph | None = None,
    dashboards: Mapping[str, Mapping] | None = None,
    feature_files: bool = True,
    mechanisms=None,
    also: Callable[[Path], list[Path]] | None = None,
    by: str | None = None,
) -> Written:
    """Write ``graph`` (and the unpruned ``full``, if given) into ``out``: ``graph.json``
    (Neuronpedia schema), ``graph.safetensors``, ``graph.dot``, the ``formats`` renders
    (when ``dot`` is installed) and ``graph.html`` (with ``dashboards``, keyed by unit id,
    ``reports.viewer``'s schema, when given; then with ``feature_files``, circuit-tracer's
    feature files and ``graph-metadata.json`` too; with ``mechanisms``, a
    ``circuits.mechanism_file.MechanismSummary``, its section in the page). ``also(directory)``
    writes the caller's own outputs (named so that ``is_output`` claims them) into the set
    and returns their paths. ``by``: the command writing it (``GRAPH_WRITERS``), recorded, so
    that the other one refuses this ``out``. All of it lands in ``out`` at once (module
    docstring)."""
    out = Path(out)

    def fill(stage: Path) -> Written:
        result = _write_set(graph, stage, out, formats, full, dashboards, feature_files,
                            mechanisms)  # fmt: skip
        if also is not None:
            result.paths += also(stage)
        return result

    if by is not None and by not in GRAPH_WRITERS:
        raise ValueError(f"by must be one of {GRAPH_WRITERS}, got {by!r}")
    result, notes = write_set(out, replace(GRAPH_SET, by=by), fill)
    result.notes += notes
    result.paths = placed(out, result.paths)
    return result


def placed(out: Path, staged: list[Path]) -> list[Path]:
    """Where the files that a ``write_set`` fill wrote in its staging directory (``staged``)
    are once the set is in ``out``: the paths a command reports as written."""
    return [out / path.relative_to(out / STAGING_DIR) for path in staged]


def write_set(out: Path, kind: OutputSet, fill: Callable[[Path], T]) -> tuple[T, list[str]]:
    """Write a set of files into ``out`` at once (module docstring): ``fill(stage)`` writes
    them into a staging directory and returns what the caller wants back; they are moved into
    place only when all are written, under ``out``'s write lock, and an earlier set's entries
    this one does not write again are removed (``kind``). Returns ``(result, notes)``; an OSError
    names the file in ``out``, not its staged copy."""
    out = Path(out)
    earlier_set(out, kind.mark, kind.names, kind.by)  # refused before any work, nothing touched
    make_dir(out)  # listed: a run stopped before its set is in place leaves no empty --out
    stage = out / STAGING_DIR
    try:
        with _writing_lock(out):
            notes = _put_back_killed(stage, out, kind)  # before its stage goes
            with fresh_directory(stage, STAGING_MARK, keep=PREVIOUS_DIR):
                result = fill(stage)
                notes += _move_into_place(stage, out, kind)
    except OSError as exc:  # name the file the user will look for, not its staged copy
        name = Path(str(exc.filename or ""))
        if name != stage and name.is_relative_to(stage):
            inside = name.relative_to(stage)
            # the stage's own folders (``PREVIOUS_DIR``...) have no place in ``out``: ``out``
            # itself is what could not be written (a disk gone read-only named ``out/.previous``)
            where = out if inside.parts[0].startswith(".") else out / inside
            raise WriteError(exc.errno, exc.strerror, str(where)) from None
        raise
    return result, notes


def write_report_files(
    out: Path, names: tuple[str, ...], fill: Callable[[Path], list[Path]]
) -> list[Path]:
    """A report of a few files (``names``, the first naming its set) written into ``out`` as
    one set (``write_set``; ``fill(stage)`` makes them there and returns their paths), its
    notes said on stderr: a user's own file of one of those names is refused, before ``fill``
    runs, and kept; a failure leaves the earlier report whole. Returns the paths in ``out``."""
    staged, notes = write_set(Path(out), OutputSet(frozenset(names), names[0]), fill)
    for note in notes:
        print(note, file=sys.stderr)
    return placed(Path(out), staged)


@contextlib.contextmanager
def _writing_lock(out: Path) -> Iterator[None]:
    """Hold ``out/LOCK_FILE`` while this run writes its set there (module docstring)."""
    lock = out / LOCK_FILE
    take_lock(lock, "writing its graph there; wait for it or choose another --out")
    try:
        yield
    finally:
        release_lock(lock)


def _move_into_place(stage: Path, out: Path, kind: OutputSet) -> list[str]:
    """Replace ``out``'s output set by the one written in ``stage``: each earlier entry of a
    new entry's name moved aside into the stage (``PREVIOUS_DIR``) and the new one moved in, so
    one version exists at every moment, then the entries the earlier set recorded that this
    one does not replace moved aside too, one note each; the earlier versions are deleted only
    once the whole set is in place. A rename that fails among them (a file of the set that
    cannot be replaced: immutable, a mount point, another user's in a sticky folder), or any
    other error there, puts every entry moved so far back and the earlier record with them, so
    the run fails with the earlier set whole: it left one run's graph beside another's page (a
    robustness pass). What a kill there leaves aside the next run puts back
    (``_put_back_killed``); what cannot be put back keeps the stage for it.
    Anything in ``out`` that is not the earlier set's (``earlier_set``), and a name held by
    the other kind of entry (a directory named ``graph.html``), are refused before anything
    moves; so is a recorded directory holding a file its run did not write (a directory is
    replaced or removed whole). The record lists every entry of both sets, and every file of
    their directories, while they move (a run killed among the renames leaves nothing of its
    own unlisted), then this set's alone."""
    new = sorted((e for e in stage.iterdir() if e.name != STAGING_MARK), key=lambda e: e.name)
    for entry in new:
        target = out / entry.name
        if os.path.lexists(target) and (entry.is_dir() != target.is_dir() or target.is_symlink()):
            raise WriteError(errno.EEXIST, "in the way: not the kind of entry the run writes",
                             str(target))  # fmt: skip
    earlier = earlier_record(out, kind.mark, kind.names, kind.by)  # again: under the lock
    written = {entry.name: "directory" if entry.is_dir() else "file" for entry in new}
    files = {entry.name: files_under(entry) for entry in new if entry.is_dir()}
    entries = {**earlier.entries, **written}
    both = {name: sorted({*paths, *files.get(name, [])})
            for name, paths in earlier.files.items() if entries[name] == "directory"}  # fmt: skip
    gone = [name for name in sorted(set(earlier.entries) - set(written))
            if os.path.lexists(out / name)]  # fmt: skip
    previous = stage / PREVIOUS_DIR  # the earlier versions, ours: a ``graph.json.old`` or
    previous.mkdir()  # a ``features.old`` beside them in ``out`` may be the user's
    had_record = os.path.lexists(out / kind.record)
    aside: list[str] = []  # the earlier entries moved into ``previous``
    placed: list[Path] = []  # the new entries moved into ``out``
    with interrupts_deferred():  # a Ctrl-C among the renames would leave two runs' files
        moving = kind.record
        try:
            # the journal, before anything moves: which entries are the earlier set's (none:
            # there was no record), so that undoing a kill removes new entries that replaced none
            try:
                write_set_record(previous, kind.mark, earlier.entries, earlier.files, earlier.by)
            except OSError as exc:  # (a full disk) named as the record it is a copy of
                raise WriteError(exc.errno, exc.strerror, str(out / kind.record)) from None
            write_set_record(out, kind.mark, entries, {**files, **both}, kind.by)
            for entry in new:
                moving = entry.name
                if os.path.lexists(out / entry.name):
                    os.replace(out / entry.name, previous / entry.name)
                    aside.append(entry.name)
                os.replace(entry, out / entry.name)
                placed.append(entry)
            for moving in gone:
                os.replace(out / moving, previous / moving)
                aside.append(moving)
            # the set whole: a run killed from here on leaves it (``_put_back_killed``)
            os.replace(previous, stage / REPLACED_DIR)
            moving = kind.record
            write_set_record(out, kind.mark, written, files, kind.by)
        except BaseException as exc:  # any: the stage's clean-up would delete ``previous``
            with contextlib.suppress(OSError):  # the final record failed: not whole after all
                if not os.path.lexists(previous):
                    os.replace(stage / REPLACED_DIR, previous)
            _put_back(out, previous, placed, aside, kind, earlier if had_record else None)
            if not isinstance(exc, OSError) or isinstance(exc, WriteError):  # the record's, named
                raise
            raise WriteError(exc.errno, exc.strerror, str(out / moving)) from None
    shutil.rmtree(stage / REPLACED_DIR)
    (stage / STAGING_MARK).unlink()
    stage.rmdir()
    return [f"removed {out / name} of an earlier run" for name in gone]


def _put_back_killed(stage: Path, out: Path, kind: OutputSet) -> list[str]:
    """Undo the renames of a run killed among them (no handler ran: SIGKILL, the OOM killer, a
    power cut), from its stage's ``PREVIOUS_DIR``: the earlier set's entries there go back, each
    in place of the killed run's version, if any; the killed run's entries that replaced none
    (a ``features/`` the earlier set had not) are removed, and the earlier set's record is put
    back, both as the journal there says (the earlier record). The stage is removed next, and
    with it the entries aside were lost, one moved aside and not yet replaced missing from
    ``out`` for good; and a new entry left beside the earlier set made a mix of two runs
    (a robustness pass). A run killed once its set was whole left none there
    (``REPLACED_DIR``). A step that fails is one line, the stage kept for the next run; undoing
    is done again whole from where it stopped."""
    previous = stage / PREVIOUS_DIR
    if staging_in_the_way(stage, STAGING_MARK) or previous.is_symlink() or not previous.is_dir():
        return []
    journal = previous / kind.record
    earlier = read_set_record(journal, kind.mark, kind.names)
    if os.path.lexists(journal) and earlier is None:
        raise WriteError(errno.EEXIST, "not the earlier set's record that a killed run left; "
                         f"move {stage} away", str(journal))  # fmt: skip
    notes = []
    for entry in sorted(previous.iterdir(), key=lambda e: e.name):
        if entry.name not in kind.names:  # never anything but the set's own names
            continue
        target = out / entry.name
        try:
            _remove_entry(target)
            os.replace(entry, target)
        except OSError as exc:
            raise WriteError(exc.errno, exc.strerror, str(target)) from None
        notes.append(f"put back {target} of an earlier run, which a killed run had moved aside")
    if earlier is None:  # a run killed before its journal was written moved nothing
        return notes
    moved_in = read_set_record(out / kind.record, kind.mark, kind.names)  # both sets' entries
    for name in sorted(set(moved_in.entries if moved_in else ()) - set(earlier.entries)):
        target = out / name
        if not os.path.lexists(target):
            continue
        try:
            _remove_entry(target)
        except OSError as exc:
            raise WriteError(exc.errno, exc.strerror, str(target)) from None
        notes.append(f"removed {target}, which a killed run had moved in beside an earlier set")
    try:
        if earlier.entries:
            write_set_record(out, kind.mark, earlier.entries, earlier.files, earlier.by)
        else:  # there was none
            (out / kind.record).unlink(missing_ok=True)
        journal.unlink()
    except OSError as exc:
        raise WriteError(exc.errno, exc.strerror, str(out / kind.record)) from None
    return notes


def _remove_entry(target: Path) -> None:
    """Remove what stands at ``target`` in ``out``, if anything: a file or link, or a folder
    with its files (an entry of a set, which is replaced whole)."""
    if target.is_symlink() or (os.path.lexists(target) and not target.is_dir()):
        target.unlink()
    elif os.path.lexists(target):
        shutil.rmtree(target)


def _put_back(
    out: Path, previous: Path, placed: list[Path], aside: list[str], kind: OutputSet,
    earlier: SetRecord | None,
) -> None:  # fmt: skip
    """Undo a ``_move_into_place`` that failed among its renames: the new entries ``placed``
    back into the stage (whose clean-up removes them), the earlier ones ``aside`` back into
    ``out``, and the earlier record (``earlier``; None: there was none, and the one written
    goes). Each step is tried whatever the others do."""
    for entry in reversed(placed):
        with contextlib.suppress(OSError):
            os.replace(out / entry.name, entry)
    for name in reversed(aside):
        with contextlib.suppress(OSError):
            os.replace(previous / name, out / name)
    with contextlib.suppress(OSError):
        if earlier is None:
            (out / kind.record).unlink()
        else:
            write_set_record(out, kind.mark, earlier.entries, earlier.files, earlier.by)
        if all(entry.name == kind.record for entry in previous.iterdir()):
            (previous / kind.record).unlink()  # undone whole: the journal's work is done


def _write_figure(mechanisms, out: Path, final: Path, formats: list[str],
                  result: Written) -> str | None:  # fmt: skip
    """The summary's figure (``reports.mechanism_figure``): ``mechanism.dot`` and its renders
    in ``formats`` where ``dot`` is installed (the figure's paths added to ``result``); its
    SVG text for the page, None where there is none. A failing ``dot`` costs the figure alone,
    never the set (one note)."""
    dot_text = mechanism_dot(mechanisms)
    try:
        rendered = render(dot_text, out / FIGURE_STEM, formats if dot_available() else ())
    except RenderError as exc:
        result.notes.append(f"mechanism figure failed, written without it "
                            f"({final / f'{FIGURE_STEM}.dot'}): {exc}")  # fmt: skip
        rendered = render(dot_text, out / FIGURE_STEM, ())
    result.paths += rendered
    svg = out / f"{FIGURE_STEM}.svg"
    return svg.read_text(encoding="utf-8") if svg in rendered else None


def _write_set(
    graph: Graph,
    out: Path,
    final: Path,
    formats: list[str],
    full: Graph | None,
    dashboards: Mapping[str, Mapping] | None,
    feature_files: bool,
    mechanisms,
) -> Written:
    """Every file of the set, into the empty directory ``out``; the notes name the files
    where they will be, in ``final``."""
    result = Written()
    json_path = out / "graph.json"
    scan, feature_paths = None, []
    if dashboards is not None and feature_files:
        scan, feature_paths = write_feature_files(out, graph, dashboards)
    labels = node_labels(graph)
    # the page and graph.json start from the same supernodes (a summary's groups): a reviewer
    # found the page grouped and graph.json's qParams empty
    q_params = start_q_params(mechanisms_data(mechanisms, graph))
    supernodes = [] if q_params is None else q_params["supernodes"]
    write_json_atomic(json_path, to_json(graph, labels, slug=final.name or "graph", scan=scan,
                                         supernodes=supernodes))  # fmt: skip
    graph.save(out / GRAPH_FILE)
    result.paths += [json_path, *feature_paths, out / GRAPH_FILE]
    if full is not None:
        full.save(out / FULL_GRAPH_FILE)
        result.paths.append(out / FULL_GRAPH_FILE)

    selection = select(graph)
    dot_text = to_dot(graph, selection)
    svg_text = None
    try:
        for attempt in range(1, ROUTE_TRIES + 1):
            try:
                rendered = render(dot_text, out / "graph", formats if dot_available() else ())
                break
            except RenderError as exc:
                if not exc.crashed:
                    raise
                if attempt < ROUTE_TRIES:  # its crashes come and go from run to run
                    continue
                # Graphviz 2.43 (Debian's) aborts routing some small drawings around their
                # nodes (a reviewer: the README's own prompt): drawn again with curved edges
                dot_text = to_dot(graph, selection, route=False)
                rendered = render(dot_text, out / "graph", formats)
                result.notes.append(f"Graphviz crashed routing the edges around the nodes "
                                    f"({exc.detail}; {ROUTE_TRIES} tries); drawn with curved "
                                    "edges instead")  # fmt: skip
    except RenderError as exc:  # dot crashed or refused the file: keep everything else
        rendered = []
        result.notes.append(f"drawing failed, written without it ({final / 'graph.dot'}): {exc}")
        render(dot_text, out / "graph", ())  # the DOT file, for a look by hand
    result.paths += rendered or [out / "graph.dot"]
    result.unrendered = [f for f in formats if out / f"graph.{f}" not in rendered]
    if formats and not dot_available():
        result.notes.append(dot_missing_message(final / "graph.dot"))
    svg = out / "graph.svg"
    if svg in rendered:
        svg_text = svg.read_text(encoding="utf-8")
    figure_svg = None
    if mechanisms is not None:
        figure_svg = _write_figure(mechanisms, out, final, formats, result)
    write_html(
        graph, out / "graph.html", svg_text, selection, dashboards=dashboards,
        q_params=q_params, mechanisms=mechanisms, figure_svg=figure_svg,
    )  # fmt: skip
    result.paths.append(out / "graph.html")
    return result
