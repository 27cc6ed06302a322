"""What every CLI of the project shares: bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """A problem with what the user asked for; its message is the whole story."""


# Loaders raise these for missing, corrupt or mismatched files; they carry a full message.
# OSError covers failed writes too (disk full, read-only file system, a directory in the way):
# ``toy_models.files`` raises them as one line naming the file, with no temporary file left.
EXPECTED_ERRORS = (UserError, ValueError, OSError)
# Set (to anything but empty or 0) to print the traceback above such a one-line error: a
# ValueError from a bug reads like a refusal, and a bug report needs where it came from.
TRACEBACK_VARIABLE = "SPARSE_CIRCUITS_TRACEBACK"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, every CLI's, with two refusals argparse lacks.

    - A single-valued option given twice is refused: argparse keeps the last silently, so
      ``--prompt A ... --prompt B`` traced B and ``--qk ... --no-qk`` ran without QK. Options
      that collect (``action="append"``, counts) may repeat.
    - A value that begins with ``-`` is read by argparse as an option (``--prompt -5+3=``
      said only "expected one argument"): the error says to write ``--prompt=-5+3=``.
    """

    _REPEATABLE = (
        argparse._AppendAction,
        argparse._AppendConstAction,
        argparse._CountAction,
        argparse._HelpAction,
        argparse._VersionAction,
    )

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        self._refuse_repeats(self._given)
        return super().parse_known_args(args, namespace)

    def _action_of(self, word: str) -> argparse.Action | None:
        """The option ``word`` (``--name`` or ``--name=value``) names, as argparse resolves
        it (a unique prefix of a long option is that option); None for anything else."""
        name = word.split("=", 1)[0]
        if name in self._option_string_actions:
            return self._option_string_actions[name]
        if not self.allow_abbrev:
            return None
        found = {a for s, a in self._option_string_actions.items() if s.startswith(name)}
        return found.pop() if len(found) == 1 else None  # ambiguous: argparse says so

    def _refuse_repeats(self, words: list[str]) -> None:
        seen: dict[argparse.Action, str] = {}
        for word in words:
            if word == "--":
                break  # what follows is positional
            if not word.startswith("--"):
                continue
            action = self._action_of(word)
            if action is None or isinstance(action, self._REPEATABLE):
                continue
            name = word.split("=", 1)[0]
            if action in seen:
                both = "/".join(action.option_strings)
                self.error(f"{both} is given twice ({seen[action]}, then {name}); give it once")
            seen[action] = name

    def error(self, message: str):
        given = getattr(self, "_given", [])
        if "expected" in message and "argument" in message:
            for option, value in zip(given, given[1:], strict=False):
                action = self._action_of(option) if option.startswith("--") else None
                if action is None or not value.startswith("-"):
                    continue
                if f"argument {'/'.join(action.option_strings)}:" in message:
                    message += f" (a value that begins with '-' is written {option}={value})"
                    break
        super().error(message)


def path_text(text: str) -> str:
    """``path_arg``'s check, the text kept as written: for a path a command records as given
    (``--replacement``, in results files). An empty ``--replacement`` read as the current
    directory, after the model loaded ("replacement file missing: replacement.json"), or used
    a set that happened to be there (a fuzz pass)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return text


def path_arg(text: str) -> Path:
    """An argparse ``type`` for paths: an empty string is refused (``Path("")`` would be the
    current directory, where nobody asked a run to write)."""
    return Path(path_text(text))


def file_arg(text: str) -> Path:
    """``path_arg`` for a file to write: a path ending in a separator names a directory
    (``Path("newdir/")`` drops the slash, and a fuzz pass found ``--out newdir/`` writing a
    file called ``newdir``)."""
    path = path_arg(text)
    if text.endswith(("/", os.sep)) or os.path.basename(text) in (".", ".."):  # (newdir/.:
        # pathlib drops the dot, and a review found it writing a file called newdir)
        raise argparse.ArgumentTypeError(f"{text!r} ends in a separator or a dot directory: "
                                         "give a file's path")  # fmt: skip
    return path


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts that must be at least 1 (steps, rows, repeats...)."""
    return _int_at_least(text, 1)


def count_arg(text: str) -> int:
    """An argparse ``type`` for counts where 0 means none (a seed, SAE steps, warm-up)."""
    return _int_at_least(text, 0)


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type`` for a count in ``low..high``: the most a command can use (a fuzz
    pass gave the benchmarks counts of 10**11 that built prompts or rows for hours, or could
    never be met, without a word)."""

    def bounded(text: str) -> int:
        value = _int_at_least(text, low)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value

    return bounded


MAX_STEPS = 2**40  # a training run's steps, at most (``TrainConfig.steps``' bound)
MAX_SEED = 2**63 - 1  # what a seeded generator takes (``torch.Generator().manual_seed``)


def seed_arg(text: str) -> int:
    """An argparse ``type`` for a seed: a whole number in 0..``MAX_SEED`` (a fuzz pass's
    ``--seed=-5`` passed one command's check and failed after the model loaded, naming no
    option; two others took it)."""
    value = _int_at_least(text, 0)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be at most 2**63 - 1, got {value}")
    return value


def refuse_repeats(flag: str, text: str, values: list[float]) -> None:
    """Refuse a comma-separated option (``flag`` given ``text``) whose ``values`` hold one twice:
    the sorted set a command measures would drop it without a word (a review's
    ``--thresholds 0.5,0.5`` measured one)."""
    if twice := sorted({v for v in values if values.count(v) > 1}):
        raise UserError(f"{flag} {text}: {twice[0]:g} is given twice; give each once")


def whole_numbers(parts: list[str]) -> list[int] | None:
    """The numbers of a colon-separated spec (``--target-node KIND:LAYER:POS:INDEX``,
    ``--start lorsa:LAYER:INDEX``) as written: ASCII digits only, or None. ``int()`` would
    also take a sign, spaces and ``1_0``; a layer, position or index is none of those."""
    if all(p.isascii() and p.isdigit() for p in parts):
        return [int(p) for p in parts]
    return None


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (an OSError as ``file: reason``)."""
    if isinstance(exc, OSError) and type(exc).__str__ is OSError.__str__ and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc)
    return " ".join(text.split())


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``), raised where the run is as Ctrl-C is (a kind of
    KeyboardInterrupt, so whatever handles an interrupt handles it: a training run says where
    to resume), and its cleanups run: a write lock released, a staging directory removed."""


def _terminate(signum, frame) -> None:
    raise Terminated


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a CLI's ``main``: expected errors end in one line and exit code 2, Ctrl-C in 130,
    SIGTERM in 143 (after the same cleanups), a closed stdout (``| head``) in 141 with nothing
    printed, and each way the output directories the run created and left empty are
    removed."""
    from . import files

    files.forget_created()  # only this run's directories
    in_main = threading.current_thread() is threading.main_thread()  # where handlers can go
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    failed: tuple[str, int] | None = None  # the line and exit code, said once the step is gone
    try:
        code = main(argv)
    except BrokenPipeError:  # stdout's reader went away (``| head``): nothing more to say
        files.remove_empty_created()
        with contextlib.suppress(OSError, ValueError):  # (a captured stdout has no fd)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        sys.exit(141)  # as a process killed by SIGPIPE
    except EXPECTED_ERRORS as exc:
        files.remove_empty_created()
        if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            traceback.print_exc()
        failed = f"error: {one_line(exc)}", 2
    except Terminated:
        files.remove_empty_created()
        failed = "terminated", 143  # as a process killed by SIGTERM
    except KeyboardInterrupt:
        files.remove_empty_created()
        failed = "\ninterrupted", 130  # on its own line, after a progress bar's
    finally:
        files.forget_created()
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if failed is None:
        sys.exit(code or 0)
    # The failed step's frames, freed with the exception, close its progress bar (which prints
    # it once more, an open tqdm bar): printed inside the handler, the line came before that
    # bar, which was then the last line on the terminal (a fault pass: Ctrl-C in the global
    # statistics' row loop). Freed first (a cycle among them: the collector), the line is last.
    gc.collect()
    print(failed[0], file=sys.stderr)
    sys.exit(failed[1])
