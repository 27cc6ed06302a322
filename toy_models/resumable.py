"""One resumable training loop for every trainer of the project (toy models, replacement sets).

A run lives in a directory ``out``; its checkpoint, refreshed every ``checkpoint_every`` steps
and at the end, is one directory swapped in whole (``toy_models.files.swap_directory``)::

    out/checkpoint/weights.safetensors    the trained module's state_dict
    out/checkpoint/optimizer.safetensors  the optimizer's per-parameter state
    out/checkpoint/state.json             the run's identity, step, elapsed time, recent stats,
                                          and the SHA-256 of the two files it goes with

Nothing is pickled. A trainer (dictionary_learning's ``trainSAE`` is the model):

    run = ResumableRun(out, resume=resume, outputs=("model.safetensors",))  # 1) the directory
    if resume: run.check_resumable(identity known now)  # refused before anything is written
    ...build the data, the module and its optimizer...                        # 2)
    run.start(identity, module, optimizer)  # 3) restored from the checkpoint on --resume
    run.train(step, total_steps, checkpoint_every=..., desc=...)             # 4) the loop
    ...write the final outputs, e.g. from run.mean("loss")...                # 5)

``step(i)`` does optimisation step ``i`` and returns its statistics (floats); the last
``window`` of them are kept in the checkpoint, so figures computed from them at the end are
those of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .cli import UserError
from .files import (
    WriteError,
    check_readable_file,
    check_writable_dir,
    file_sha256,
    fresh_directory,
    old_directory,
    release_lock,
    swap_directory,
    take_lock,
)
from .records import Bounds, check_keys, is_finite_number

CHECKPOINT_DIR = "checkpoint"
LOCK_FILE = ".training.lock"  # the process id of the run training in ``out``
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
STATE_KEYS = ("identity", "step", "elapsed_s", "recent", "files")  # what ``save`` writes
# The range of a statistic that its trainer names without one (``toy_models.train``'s
# ``loss``): every statistic a trainer here returns is a loss or a fraction of variance
# unexplained, never below 0; a trainer whose statistics have other ranges gives them
# (``replacement.train.STAT_BOUNDS``: its dead fractions lie in [0, 1]).
STAT_BOUNDS = Bounds(0, None)
# The statistics of a step (``ResumableRun.start``'s ``stats``): their names, or each name with
# its range (``Bounds``; a name alone has ``STAT_BOUNDS``).
Stats = tuple[str, ...] | Mapping[str, Bounds]
# The largest statistic a step can return whatever its range: every trainer here computes its
# statistics in float32 tensors (``.item()`` of one), so a larger number (a 1e308 FVU) is no
# run's, and the means of a window of them (``ResumableRun.mean``) are always finite.
FLOAT32_MAX = 3.4028234663852886e38


# The runs this project trains, by trainer: the file a finished run holds, what that is, and
# the command that ships it (the ships refuse the other kind's folder by these).
RUN_KINDS = {
    "toy_models.train": ("config.json", "a toy model", "toy_models.ship {} --name NAME"),
    "replacement.train": (
        "replacement.json", "a replacement set", "replacement.ship {} --model MODEL"
    ),
}  # fmt: skip


def check_finished(run_dir: Path, finished: bool, final: str, trainer: str) -> None:
    """Refuse in one line a run directory that an interrupted run left (``finished`` false, a
    checkpoint there), naming what it lacks (``final``) and the command that finishes it
    (``trainer``): a ship's "checkpoint file missing: config.json" said what, not why. A
    folder of another trainer's (``RUN_KINDS``) is said to be one, with the command that ships
    it (a finished replacement-training folder was "not finished" to ``toy_models.ship``, a
    toy model's to ``replacement.ship``: a fuzz pass). The check of both ships."""
    if finished:
        return
    for other, (file, what, ship) in RUN_KINDS.items():
        if other != trainer and (run_dir / file).is_file():
            raise UserError(f"{run_dir}: holds {what} ({file}, as {other} writes it), not a "
                            f"{trainer} run; ship it with python -m "
                            f"{ship.format(run_dir)}")  # fmt: skip
    if (run_dir / CHECKPOINT_DIR).is_dir():
        raise UserError(f"{run_dir}: the run has not finished (a checkpoint, no {final}); "
                        f"finish it with {trainer} --resume first")  # fmt: skip


class ResumableRun:
    """A training run in ``out``; see the module docstring for the protocol."""

    def __init__(self, out: Path, *, resume: bool, outputs: tuple[str, ...] = (), window: int = 50):
        """Check the run directory before any heavy work: it must be writable; a fresh run
        refuses a directory that holds a run (a checkpoint or any of ``outputs``); ``resume``
        needs a checkpoint."""
        self.out, self.resume, self.window = Path(out), resume, window
        self.checkpoint = self.out / CHECKPOINT_DIR
        self._tmp = self.checkpoint.with_name(CHECKPOINT_DIR + ".tmp")
        self.step, self.elapsed_s, self.recent = 0, 0.0, []
        # a model or set of another kind, a graph's or report's outputs: refused
        check_writable_dir(self.out, own=outputs, sets_refused=True)
        if resume:
            self._recover()
            state = self.checkpoint / STATE_FILE
            if not state.is_file():
                try:
                    check_readable_file(state, "checkpoint file")
                except FileNotFoundError as exc:  # missing, or a FIFO or folder in its place
                    raise UserError(f"nothing to resume: {exc}") from None
        elif self._holds_a_checkpoint():
            raise UserError(
                f"{self.out} already holds a training run; pass --resume or choose another --out"
            )
        elif found := [name for name in outputs if os.path.lexists(self.out / name)]:
            raise UserError(f"{self.out} already holds {found[0]}, which this run would write "
                            "(a finished run's, or yours); pass --resume to finish a run, or "
                            "choose another --out")  # fmt: skip

    def _holds_a_checkpoint(self) -> bool:
        return (
            any(
                (d / STATE_FILE).is_file()
                for d in (self.checkpoint, old_directory(self.checkpoint), self._tmp)
            )
            or self.checkpoint.exists()
        )

    def _newest(self) -> Path | None:
        """The newest complete checkpoint: in place, or, after a crash or Ctrl-C inside
        ``swap_directory``, the new one complete in ``.tmp`` (its state.json is written last)
        or the old one moved aside (``.old``); None when there is none."""
        if self.checkpoint.exists():
            return self.checkpoint
        for candidate in (self._tmp, old_directory(self.checkpoint)):
            if (candidate / STATE_FILE).is_file():
                return candidate
        return None

    def _recover(self) -> None:
        """Put the newest complete checkpoint (``_newest``) in place."""
        newest = self._newest()
        if newest is not None and newest != self.checkpoint:
            newest.replace(self.checkpoint)

    # ----------------------------------------------------------------- state
    def start(self, identity: dict, module, optimizer, stats: Stats = ()) -> None:
        """Attach the module and optimizer to checkpoint; on ``--resume``, restore them (and
        the step, elapsed time and recent statistics) after checking that the checkpoint
        belongs to a run with this ``identity`` (JSON: config, steps, model hash...).
        ``stats``: the statistics ``step`` returns (``Stats``); the checkpoint's recent
        statistics must be exactly those, finite numbers in their ranges."""
        from .checkpoint import load_checked, load_optimizer

        identity = json.loads(json.dumps(identity))  # as it reads back (tuples are lists)
        self.identity, self.module, self.optimizer = identity, module, optimizer
        if not self.resume:
            return
        step, elapsed, recent = self.check_resumable(identity, stats, whole=True)
        self._check_files()
        load_checked(module, self.checkpoint / WEIGHTS_FILE, STATE_FILE)
        load_optimizer(optimizer, self.checkpoint / OPTIMIZER_FILE, step)
        self.step, self.elapsed_s, self.recent = step, float(elapsed), recent[-self.window :]

    def _lock(self) -> None:
        """Hold ``out/LOCK_FILE`` while the loop runs (``train`` releases it): two runs training
        into one folder (two ``--resume``s) each saved checkpoints over the other's (a fuzz
        pass: one stopped at step 1768 reported the other's 1770). A killed run's lock is
        taken over."""
        lock = self.out / LOCK_FILE
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            take_lock(lock, "training there; wait for it or choose another --out")
        except WriteError as exc:
            raise UserError(f"{self.out}: {exc.strerror}") from None

    def _check_files(self) -> None:
        """The checkpoint's weights and optimizer are the files its state.json was written with
        (their SHA-256, ``files``, which ``check_resumable`` requires)."""
        from .checkpoint import read_json

        recorded = read_json(self.checkpoint / STATE_FILE).get("files")
        names = (WEIGHTS_FILE, OPTIMIZER_FILE)
        if not (isinstance(recorded, dict) and sorted(recorded) == sorted(names)):
            raise ValueError(f"{self.checkpoint / STATE_FILE}: 'files' must give the SHA-256 of "
                             f"{' and '.join(names)}")  # fmt: skip
        for name in names:
            path = self.checkpoint / name
            check_readable_file(path, "checkpoint file")
            if file_sha256(path) != recorded[name]:
                raise UserError(f"{path}: not the file this checkpoint was saved with (sha256 "
                                "differs: another run's, edited or damaged); the run cannot "
                                "be resumed from it")  # fmt: skip

    def check_resumable(
        self, identity: dict, stats: Stats = (), whole: bool = False
    ) -> tuple[int, float, list]:
        """On ``--resume``, refuse a checkpoint that cannot be resumed by this run: a state
        that is not one, or another run's. A trainer calls it before preparing anything (its
        data) with the part of its ``identity`` known by then (``whole``: False, only those
        keys are compared), so that a refused resume writes nothing; ``start`` calls it with
        the whole. Returns the saved step, elapsed time and recent statistics.

        Every number is checked as the run writes it, since the final figures are computed
        from them: a time that is a finite number, above 0 once a step was taken, and each
        statistic a number in its range (``stats``, ``FLOAT32_MAX``; a loss of -7.5, a dead
        fraction of -5, an FVU of 1e308 and no time spent were resumed into a model's and a
        set's final figures, and a 401-digit integer was an ``OverflowError`` traceback: found
        by a fuzz pass)."""
        from .checkpoint import read_json

        if not self.resume:
            raise ValueError("check_resumable is for a resumed run")
        if (self.checkpoint / "optimizer.pt").exists() and not (
            self.checkpoint / OPTIMIZER_FILE
        ).exists():
            raise UserError(
                f"{self.checkpoint} was written by an older version (a pickled optimizer.pt, "
                "which is never loaded); start a new run"
            )
        path = self.checkpoint / STATE_FILE
        state = read_json(path)
        if isinstance(state, dict) and "files" not in state and set(STATE_KEYS[:4]) <= set(state):
            # every save since 2026-12-06 records them, and no checkpoint of an older one is
            # kept anywhere (the zoo ships none): its files cannot be told from another run's
            raise ValueError(f"{path}: records no SHA-256 of its weights and optimizer (saved "
                            "by a version before 2026-12-06), so they cannot be checked as "
                            "this run's; start a new run (without --resume) or choose "
                            "another --out")  # fmt: skip
        try:
            if isinstance(state, dict):
                check_keys(state, "its state", (), STATE_KEYS)
            saved, step, elapsed = state["identity"], state["step"], state["elapsed_s"]
            recent = state["recent"]
            valid = (
                isinstance(saved, dict)
                and isinstance(step, int)
                and not isinstance(step, bool)
                and 0 <= step
                and is_finite_number(elapsed)
                and (elapsed > 0 if step > 0 else elapsed >= 0)
                and isinstance(recent, list)
                and all(_is_stats(r, stats) for r in recent)
            )
            diverged = valid and not all(math.isfinite(v) for r in recent for v in r.values())
        except KeyError as exc:
            raise ValueError(f"{path}: not a training state (no {exc})") from None
        except ValueError as exc:
            raise ValueError(f"{path}: not a training state ({exc})") from None
        if not valid:
            raise ValueError(f"{path}: not a training state (identity, step, elapsed_s or "
                             "recent invalid)")  # fmt: skip
        if diverged:
            raise ValueError(
                f"{path}: the run diverged (a NaN or infinite statistic among its last steps): "
                "resuming would train on from it; start a new run"
            )
        identity = json.loads(json.dumps(identity))  # as it reads back (tuples are lists)
        compared = saved if whole else {k: saved.get(k) for k in identity}
        if compared != identity:
            diff = _first_difference(compared, identity)
            # (a resume without the options the run started with reads as another run:
            # say how to resume it, a reviewer's `--resume` without its `--steps 60`)
            raise UserError(f"{self.checkpoint} belongs to another run ({diff}); to resume "
                            "it, give the settings it was started with again")  # fmt: skip
        return step, elapsed, recent

    def save(self) -> None:
        """Write the checkpoint at ``self.step``: a complete directory beside the old one,
        state.json last, swapped in whole; removed again if writing fails."""
        from .checkpoint import save_optimizer_atomic, save_state_atomic
        from .files import write_json_atomic

        with fresh_directory(self._tmp) as tmp:
            save_state_atomic(self.module, tmp / WEIGHTS_FILE)
            save_optimizer_atomic(self.optimizer, tmp / OPTIMIZER_FILE)
            state = {
                "identity": self.identity,
                "step": self.step,
                "elapsed_s": self.elapsed_s,
                "recent": self.recent,
                # the weights and optimizer this state goes with: another run's weights of the
                # same config, copied in, were resumed silently (a fuzz pass)
                "files": {name: file_sha256(tmp / name) for name in (WEIGHTS_FILE, OPTIMIZER_FILE)},
            }
            write_json_atomic(tmp / STATE_FILE, state)
        # outside the block, which removes its directory on any exception: a Ctrl-C between
        # the swap's two renames must leave the new, complete checkpoint in ``.tmp`` (it lost
        # it, and the message then said "resume from step 0": a fuzz pass)
        swap_directory(self._tmp, self.checkpoint)

    def mean(self, key: str, last: int | None = None) -> float:
        """Mean of statistic ``key`` over the last ``last`` (default: all kept) steps."""
        recent = self.recent[-last:] if last else self.recent
        return sum(r[key] for r in recent) / max(1, len(recent))

    def saved_step(self) -> int:
        """The step ``--resume`` goes on from: the newest complete checkpoint's (``_newest``),
        0 when there is none."""
        from .checkpoint import read_json

        newest = self._newest()
        path = None if newest is None else newest / STATE_FILE
        return read_json(path)["step"] if path is not None and path.is_file() else 0

    # ----------------------------------------------------------------- the loop
    def train(
        self,
        step_fn: Callable[[int], dict[str, float]],
        total: int,
        *,
        checkpoint_every: int,
        desc: str,
        quiet: bool = False,
        stop_after: int | None = None,
        postfix: Callable[[ResumableRun], dict[str, str]] | None = None,
    ) -> bool:
        """Run steps ``self.step .. total - 1``, checkpointing every ``checkpoint_every`` steps
        and at the end. ``stop_after`` ends the run early, as an interruption would, after the
        checkpoint at that step; the function then returns False. Ctrl-C ends the run with a
        one-line message saying where ``--resume`` will continue."""
        if self.step > total:  # a restored step beyond the run: its weights are not the end's
            raise ValueError(f"{self.checkpoint / STATE_FILE}: not a training state (step "
                             f"{self.step} of a {total}-step run)")  # fmt: skip
        self._lock()  # from the first step to the last save
        try:
            return self._train(step_fn, total, checkpoint_every, desc, quiet, stop_after, postfix)
        finally:  # the folder is free again however the loop ends
            release_lock(self.out / LOCK_FILE)

    def _train(self, step_fn, total, checkpoint_every, desc, quiet, stop_after, postfix) -> bool:
        from tqdm import tqdm

        step = self.step
        with tqdm(
            range(self.step, total), initial=self.step, total=total, desc=desc, disable=quiet
        ) as bar:
            try:
                for step in bar:
                    t0 = time.perf_counter()
                    stats = step_fn(step)
                    self.elapsed_s += time.perf_counter() - t0
                    if not all(math.isfinite(v) for v in stats.values()):
                        # stop before a checkpoint of it replaces the last good one
                        raise UserError(
                            f"the run diverged at step {step} (a NaN or infinite statistic: "
                            f"{stats}); nothing after step {self.saved_step()} was saved, and "
                            "--resume would diverge again: start a new run"
                        )
                    self.recent = [*self.recent, stats][-self.window :]
                    self.step = step + 1
                    if postfix is not None:
                        bar.set_postfix(postfix(self))
                    if self.step % checkpoint_every == 0 and self.step < total:
                        self.save()
                        if self.step == stop_after:
                            return False
                self.save()  # the last: a Ctrl-C in it says where --resume goes on, too
            except KeyboardInterrupt:
                if not self._holds_a_checkpoint():
                    raise UserError(
                        f"interrupted at step {step}, before the first checkpoint: nothing was "
                        "saved; start the run again (without --resume)"
                    ) from None
                raise UserError(
                    f"interrupted at step {step}; resume from step {self.saved_step()} with "
                    "--resume"
                ) from None
        return True


def _is_stats(record, stats: Stats) -> bool:
    """One step's statistics as a checkpoint keeps them: numbers named as ``stats`` (when the
    trainer names them), each inside its range (``Stats``); a NaN or an infinity is checked
    apart (a diverged run), an integer too large for a float is no statistic."""
    bounds = stats if isinstance(stats, Mapping) else dict.fromkeys(stats, STAT_BOUNDS)
    return (
        isinstance(record, dict)
        and (not bounds or sorted(record) == sorted(bounds))
        and all(_in_range(v, bounds.get(k, STAT_BOUNDS)) for k, v in record.items())
    )


def _in_range(value, bounds: Bounds) -> bool:
    """A statistic inside ``bounds`` and within float32's range (``FLOAT32_MAX``), or a NaN or
    infinite float (a diverged run's)."""
    if isinstance(value, float) and not math.isfinite(value):
        return True
    if not is_finite_number(value) or abs(value) > FLOAT32_MAX:
        return False
    low, high = bounds.low, bounds.high
    return (low is None or value >= low) and (high is None or value <= high)


def _first_difference(saved, now, where: str = "") -> str:
    """``key: X there, Y here`` for the first entry where two JSON values differ."""
    if isinstance(saved, dict) and isinstance(now, dict):
        for key in sorted(set(saved) | set(now)):
            if saved.get(key) != now.get(key):
                return _first_difference(saved.get(key), now.get(key), f"{where}{key}.")
    return f"{where.rstrip('.') or 'identity'}: {saved!r} there, {now!r} here"
