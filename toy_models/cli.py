"""What every CLI of the project shares: bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem with what the user asked for; its message is the whole story."""


# Loaders raise these for missing, corrupt or mismatched files; they carry a full message.
EXPECTED_ERRORS = (UserError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    try:
        code = main(argv)
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
