"""Record folders: one immutable JSON file per entry, chained by digest (see :mod:`chain`).

Approvals (``reports/runs/<run-id>/approvals/``), alias moves (``.../promotions/``) and
rollbacks (``reports/rollbacks/``) are kept this way. Each entry is written to a temporary
file, fsynced, made read-only and hard-linked to its final name ``NNNN.json``, which fails if
the name exists: an entry is never overwritten, and a reader never sees half of one.
:func:`append_recorded` also records the new file in the ledger, so the ledger vouches for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from workbench.atomic import write_new
from workbench.audit import ledger
from workbench.audit.chain import Chain
from workbench.errors import EXIT_FAILED, WorkbenchError

LOCK_NAME = ".lock"
SUFFIX = ".json"
CHAIN = Chain(hash_field="digest", link_field="previous", genesis=None)


class JournalError(WorkbenchError, RuntimeError):
    """An entry was edited, removed or is unreadable."""

    exit_code = EXIT_FAILED


def digest_of(entry: dict[str, Any]) -> str:
    return CHAIN.digest(entry)


def entry_path(folder: Path, seq: int) -> Path:
    return folder / f"{seq:04d}{SUFFIX}"


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
        problems = CHAIN.problems(entry, index, previous)
        if problems:
            raise JournalError(f"{label}: {problems[0]}")
        previous = entry[CHAIN.hash_field]
        entries.append(entry)
    return entries


def append(folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Add ``data`` as the next entry; return it with ``seq``, ``previous`` and ``digest``."""
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / LOCK_NAME, timeout=60):
        existing = read(folder)
        entry = CHAIN.seal(data, existing[-1] if existing else None)
        body = json.dumps(entry, indent=2, sort_keys=True).encode() + b"\n"
        write_new(entry_path(folder, entry["seq"]), body, mode=0o444)
    return entry


def append_recorded(reports: Path, folder: Path, data: dict[str, Any], *, event: str,
                    actor: dict[str, Any] | None, run_id: str | None,
                    ledger_data: Callable[[dict[str, Any]], dict[str, Any]]
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Append ``data`` to the record folder, then a ledger ``event`` with
    ``ledger_data(entry)`` naming the new file (and its digest): the folder's entry and the
    ledger's, written in that order."""
    entry = append(folder, data)
    recorded = ledger.append(reports, event, actor=actor, run_id=run_id,
                             data=ledger_data(entry), files=[entry_path(folder, entry["seq"])])
    return entry, recorded
