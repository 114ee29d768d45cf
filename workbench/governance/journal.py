"""Append-only record folders: one immutable JSON file per entry, chained by digest.

Each entry is written to a temporary file, fsynced, then hard-linked to its final name, which
fails if the name exists: an entry is never overwritten, and a reader never sees half of one.
Every entry carries the digest of the one before it and its own, so an edit, a deletion or a
reordering is detected when the folder is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock

from workbench.atomic import fsync_dir
from workbench.digests import canonical

LOCK_NAME = ".lock"
SUFFIX = ".json"


class JournalError(RuntimeError):
    """An entry was edited, removed or is unreadable."""


def digest_of(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "digest"})).hexdigest()


def _entry_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == SUFFIX and p.stem.isdigit())


def read(folder: Path) -> list[dict[str, Any]]:
    """Every entry in order, after checking each digest and link; raise :class:`JournalError`."""
    entries: list[dict[str, Any]] = []
    previous: str | None = None
    for index, path in enumerate(_entry_files(folder), start=1):
        label = f"{folder.name}/{path.name}"
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise JournalError(f"{label}: unreadable ({exc})") from exc
        if not isinstance(entry, dict):
            raise JournalError(f"{label}: not a JSON object")
        if int(path.stem) != index or entry.get("seq") != index:
            raise JournalError(f"{label}: expected entry {index}; an entry is missing or renamed")
        if entry.get("digest") != digest_of(entry):
            raise JournalError(f"{label}: content does not match its digest (edited)")
        if entry.get("previous") != previous:
            raise JournalError(f"{label}: does not follow the entry before it")
        previous = entry["digest"]
        entries.append(entry)
    return entries


def append(folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Add ``data`` as the next entry; return it with ``seq``, ``previous`` and ``digest``."""
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / LOCK_NAME, timeout=60):
        existing = read(folder)
        entry = {**data, "seq": len(existing) + 1,
                 "previous": existing[-1]["digest"] if existing else None}
        entry["digest"] = digest_of(entry)
        final = folder / f"{entry['seq']:04d}{SUFFIX}"
        fd, tmp = tempfile.mkstemp(prefix=".entry.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(json.dumps(entry, indent=2, sort_keys=True).encode() + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o444)
            os.link(tmp, final)  # fails if the name exists: never overwrite an entry
        finally:
            Path(tmp).unlink(missing_ok=True)
        fsync_dir(folder)
    return entry
