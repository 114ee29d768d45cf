"""The report site's cursor over the ledger, so a site update reads only what was appended since.

The site needs two things from ``ledger.jsonl``: each run's entries (for its page) and each
environment's alias moves, deploys and rollbacks (for ``environments.html``). Reading the whole
ledger for them on every finished run costs more the longer the archive lives; instead the
cursor keeps, under ``reports/.site/``:

- ``ledger-view.json``: the byte offset read up to and the hash of the entry that ends there;
- ``history/<environment>.jsonl``: the environment's history items so far, one per line,
  appended as they are read (a page reads the newest from the end);
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
from urllib.parse import quote, unquote

from filelock import FileLock

from workbench.atomic import write_text
from workbench.audit import ledger
from workbench.project import Project

VERSION = 1
STATE = "ledger-view.json"
HISTORY = "history"
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


def _history_file(project: Project, environment: str) -> Path:
    return _folder(project) / HISTORY / (quote(environment, safe="") + ".jsonl")


def history(project: Project, newest: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Each environment's history items in ledger order (``newest``: only its last so many),
    as of the last :func:`refresh`."""
    folder = _folder(project) / HISTORY
    found: dict[str, list[dict[str, Any]]] = {}
    first_seen = {environment: index for index, environment in enumerate(counts(project))}
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    for path in sorted(files, key=lambda f: (first_seen.get(unquote(f.stem), len(first_seen)),
                                             f.name)):
        items, last = [], None
        for line in _last_lines(path, newest):
            item = json.loads(line)
            if last is None or item["seq"] > last:  # a repeat after a crash: the first counts
                items.append(item)
                last = item["seq"]
        found[unquote(path.stem)] = items
    return found


def counts(project: Project) -> dict[str, int]:
    """How many history items each environment has."""
    try:
        stored = json.loads((_folder(project) / STATE).read_text(encoding="utf-8"))
        return {str(k): int(v) for k, v in stored.get("counts", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _last_lines(path: Path, count: int | None) -> list[bytes]:
    """The file's last ``count`` complete lines (every line for None), read from the end."""
    with path.open("rb") as handle:
        if count is None:
            return [line for line in handle if line.endswith(b"\n")]
        end = position = handle.seek(0, 2)
        chunk = b""
        while position > 0 and chunk.count(b"\n") <= count:
            step = min(1 << 16, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step) + chunk
    lines = chunk[:chunk.rfind(b"\n") + 1 if end else 0].split(b"\n")[:-1]
    if position > 0:
        lines = lines[1:]  # the first piece may be the end of a longer line
    return [line + b"\n" for line in lines[-count:]] if count else []


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
            shutil.rmtree(folder / HISTORY, ignore_errors=True)
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
        tally = counts(project)  # {} after a reset: the state file is gone
        for environment in _append_history(project, items, approvals_of):
            tally[environment] = tally.get(environment, 0) + 1
        write_text(folder / STATE, json.dumps(
            {"version": VERSION, "offset": view.offset, "hash": view.hash, "counts": tally}))


def _append_history(project: Project, entries: list[dict[str, Any]],
                    approvals_of: ApprovalsOf) -> list[str]:
    """Append each history entry's item to its environment's file (a crash between this and
    the cursor's write re-reads those entries, so an item may repeat; :func:`history`'s
    reader keeps the first of a seq)."""
    lines: dict[str, list[bytes]] = {}
    for entry in entries:
        data = entry.get("data") or {}
        environment = data.get("alias") if entry["event"] == "alias_move" \
            else data.get("environment")
        item = {"seq": entry.get("seq"), "time": entry.get("time"), "event": entry["event"],
                "run_id": entry.get("run_id"), "actor": (entry.get("actor") or {}).get("name"),
                "version": data.get("to_version") or data.get("version"),
                "from_version": data.get("from_version"), "model": data.get("model"),
                "approvals": approvals_of(entry.get("run_id"), environment,
                                          data.get("approvals") or []),
                "reason": data.get("reason"), "trigger": data.get("trigger")}
        lines.setdefault(str(environment or "?"), []).append(
            json.dumps(item, separators=(",", ":")).encode("utf-8") + b"\n")
    for environment, chunk in lines.items():
        path = _history_file(project, environment)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as handle:
            handle.write(b"".join(chunk))
    return [environment for environment, chunk in lines.items() for _ in chunk]


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
