"""What every CLI of the project shares: bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem with what the user asked for; its message is the whole story."""


# Loaders raise these for missing, corrupt or mismatched files; they carry a full message.
# OSError covers failed writes too (disk full, read-only file system, a directory in the way):
# ``toy_models.files`` raises them as one line naming the file, with no temporary file left.
EXPECTED_ERRORS = (UserError, ValueError, OSError)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (an OSError as ``file: reason``)."""
    if isinstance(exc, OSError) and type(exc).__str__ is OSError.__str__ and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc)
    return " ".join(text.split())


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    try:
        code = main(argv)
    except EXPECTED_ERRORS as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
