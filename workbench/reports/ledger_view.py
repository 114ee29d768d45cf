"""The report site's cursor over the ledger, so a site update reads only what was appended since.

The site needs two things from ``ledger.jsonl``: each run's entries (for its page) and each
environment's alias moves, deploys and rollbacks (for ``environments.html``). Reading the whole
ledger for them on every finished run costs more the longer the archive lives; instead the
cursor keeps, under ``reports/.site/``:

- ``ledger-view.json``: the byte offset read up to and the hash of the entry that ends there;
- ``ledger-history.json``: every environment's history items so far;
- ``ledger-runs/<run-id>.json``: where each of the run's entries is in the ledger (offset and
  length), so its page reads its own lines, from the ledger itself, and nothing else.

When the entry ending at the cursor is no longer the one it read (the ledger was repaired or
replaced), the view is rebuilt from the first entry. The view is for display; ``workbench
audit verify`` remains what checks the ledger.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from workbench.atomic import write_text
from workbench.audit import ledger
from workbench.project import Project

VERSION = 1
STATE = "ledger-view.json"
HISTORY = "ledger-history.json"
RUNS = "ledger-runs"
HISTORY_EVENTS = ("alias_move", "deploy", "rollback")

ApprovalsOf = Callable[[str | None, str | None, list[int]], list[dict[str, Any]]]


@dataclass
class View:
    offset: int = 0
    hash: str = ""


def _folder(project: Project) -> Path:
    return project.reports / ".site"


def _load(project: Project) -> View:
    try:
        stored = json.loads((_folder(project) / STATE).read_text(encoding="utf-8"))
        if stored.get("version") != VERSION:
            return View()
        return View(int(stored["offset"]), str(stored["hash"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return View()


def history(project: Project) -> dict[str, list[dict[str, Any]]]:
    """Every environment's history items, in ledger order, as of the last :func:`refresh`."""
    try:
        stored = json.loads((_folder(project) / HISTORY).read_text(encoding="utf-8"))
        return dict(stored) if isinstance(stored, dict) else {}
    except (OSError, ValueError):
        return {}


def _line_ending_at(path: Path, offset: int) -> bytes | None:
    """The complete line that ends at byte ``offset`` (None when there is none)."""
    if offset <= 0:
        return None
    with path.open("rb") as handle:
        if handle.seek(0, 2) < offset:
            return None
        start, chunk = offset, b""
        while start > 0 and b"\n" not in chunk[:-1]:  # back to the newline before it
            step = min(65536, start)
            start -= step
            handle.seek(start)
            chunk = handle.read(step) + chunk
    if not chunk.endswith(b"\n"):
        return None
    return chunk[:-1].rsplit(b"\n", 1)[-1]


def _still_valid(path: Path, view: View) -> bool:
    if view.offset == 0:
        return True
    line = _line_ending_at(path, view.offset)
    try:
        entry = json.loads(line) if line is not None else None
    except ValueError:
        return False
    return isinstance(entry, dict) and entry.get("hash") == view.hash


def refresh(project: Project, approvals_of: ApprovalsOf) -> None:
    """Read the entries appended since the cursor; record where each run's are and add the
    environments' history items (with their approvals, by ``approvals_of``)."""
    path = ledger.ledger_path(project.reports)
    folder = _folder(project)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".ledger-view.lock")):
        view = _load(project)
        if not path.exists() or not _still_valid(path, view):
            view = View()
            shutil.rmtree(folder / RUNS, ignore_errors=True)
            (folder / HISTORY).unlink(missing_ok=True)
            (folder / STATE).unlink(missing_ok=True)
        if not path.exists():
            return
        placed: dict[str, list[list[int]]] = {}
        items: list[dict[str, Any]] = []
        read_any = False
        with path.open("rb") as handle:
            handle.seek(view.offset)
            position = view.offset
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # a torn last line: not an entry (yet)
                start, position = position, position + len(raw)
                try:
                    entry = json.loads(raw)
                except ValueError:
                    entry = None
                if not isinstance(entry, dict):
                    continue  # garbage: `audit verify` names it
                read_any = True
                view.offset, view.hash = position, str(entry.get("hash", ""))
                run_id = entry.get("run_id")
                if isinstance(run_id, str) and run_id:
                    placed.setdefault(run_id, []).append([start, len(raw)])
                if entry.get("event") in HISTORY_EVENTS:
                    items.append(entry)
        if not read_any:
            return
        for run_id, spots in placed.items():
            _extend_run(project, run_id, spots)
        if items:
            known = history(project)
            for entry in items:
                _add_history(known, entry, approvals_of)
            write_text(folder / HISTORY, json.dumps(known, separators=(",", ":")))
        write_text(folder / STATE, json.dumps(
            {"version": VERSION, "offset": view.offset, "hash": view.hash}))


def _add_history(known: dict[str, list[dict[str, Any]]], entry: dict[str, Any],
                 approvals_of: ApprovalsOf) -> None:
    data = entry.get("data") or {}
    environment = data.get("alias") if entry["event"] == "alias_move" else data.get("environment")
    item = {"seq": entry.get("seq"), "time": entry.get("time"), "event": entry["event"],
            "run_id": entry.get("run_id"), "actor": (entry.get("actor") or {}).get("name"),
            "version": data.get("to_version") or data.get("version"),
            "from_version": data.get("from_version"), "model": data.get("model"),
            "approvals": approvals_of(entry.get("run_id"), environment,
                                      data.get("approvals") or []),
            "reason": data.get("reason"), "trigger": data.get("trigger")}
    known.setdefault(environment or "?", []).append(item)


def _run_file(project: Project, run_id: str) -> Path | None:
    if "/" in run_id or run_id.startswith(".") or "\\" in run_id:
        return None  # not a run id of ours: never a path outside the folder
    return _folder(project) / RUNS / f"{run_id}.json"


def _extend_run(project: Project, run_id: str, spots: list[list[int]]) -> None:
    target = _run_file(project, run_id)
    if target is None:
        return
    try:
        known = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = []
    write_text(target, json.dumps(known + spots))


def run_entries(project: Project, run_id: str) -> list[dict[str, Any]]:
    """The run's ledger entries as the ledger holds them now, in order (after
    :func:`refresh`)."""
    target = _run_file(project, run_id)
    path = ledger.ledger_path(project.reports)
    try:
        spots = json.loads(target.read_text(encoding="utf-8")) if target else []
    except (OSError, ValueError):
        return []
    found = []
    with path.open("rb") as handle:
        for start, length in spots:
            handle.seek(start)
            try:
                entry = json.loads(handle.read(length))
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("run_id") == run_id:
                found.append(entry)
    return found
