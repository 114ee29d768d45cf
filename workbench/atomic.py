"""Crash-safe file writes: a reader sees the old content or the new, never a torn file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new name in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(path: Path, data: bytes, mode: int | None, move: bool) -> None:
    """Write a synced temp file beside ``path``, then rename it over ``path`` (``move``) or
    hard-link it to ``path`` (never replacing a file); fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        if move:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # after a rename: already gone
    fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync of the folder);
    ``mode`` sets the permissions (the temp file's own are 0600)."""
    _publish(path, data, mode, move=True)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_new(path: Path, data: bytes, mode: int | None = None) -> None:
    """Like :func:`write_bytes`, but never replaces a file: raises :class:`FileExistsError`
    when ``path`` exists (the complete file appears under its name by a hard link)."""
    _publish(path, data, mode, move=False)
