"""Atomic file and directory writes: a reader sees the old version or the new, never half."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def write_json_atomic(path: str | Path, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def swap_directory(new: Path, dest: Path) -> None:
    """Put the complete directory ``new`` in the place of ``dest`` (which may not exist).

    ``dest`` is first moved aside, so a complete version exists at every moment.
    """
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.replace(old)
    new.replace(dest)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` via a temp file and a rename, like ``write_json_atomic``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def replace_atomic(path: str | Path, write) -> None:
    """Create ``path`` atomically: ``write(tmp)`` fills a temp file beside it, which then
    replaces ``path``. On any failure the temp file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
