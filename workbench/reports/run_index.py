"""The report site's index of runs, split into shards so that it scales to 100,000 runs.

Every run's summary lives in exactly one shard of at most about :data:`SHARD_SIZE` runs, by
run id (ids begin with their UTC start time, so shards follow time). A new run goes to the
newest shard, or opens the next one when that is full; a run rewritten later (resumed,
approved) stays in the shard it has. So adding or updating a run rewrites one shard and the
small manifest, the same work at 100 runs as at 100,000.

Private state, under ``reports/.site/`` (the report server serves no dot folder):

- ``manifest.json``: the shards in order, each with its first and last run id and its count;
- ``shard-NNNNN.json``: per run, the ``run.json`` mtime it was summarised from and the summary.

Public data, under ``reports/shards/`` (loaded by the pages on demand, with ``<script>``
elements, so that they work from disk and under the server's CSP):

- ``runs-NNNNN.js``: the shard's index rows, ``workbenchRuns(N, [...])``;
- ``compare-NNNNN.js``: the shard's metrics and parameters, ``workbenchCompare(N, [...])``.

Writes take ``reports/.site/.lock``, so two runs finishing at once never lose each other's row.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from workbench.atomic import write_text
from workbench.project import Project
from workbench.reports.script_data import script_json

SHARD_SIZE = 500
VERSION = 1  # bump when a summary or the manifest changes shape
PRIVATE = ".site"
PUBLIC = "shards"
LISTED = ("id", "pipeline", "status", "environment", "environments", "model", "version",
          "approvers", "created", "finished", "duration_s", "git_commit", "metrics")
COMPARED = ("id", "status", "model", "version", "metrics", "parameters")

Summarise = Callable[[str], dict[str, Any] | None]  # run id -> summary (None: unreadable)


@dataclass
class Shard:
    number: int
    first: str
    last: str
    count: int

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.number, "first": self.first, "last": self.last, "count": self.count}


@dataclass
class Manifest:
    shards: list[Shard] = field(default_factory=list)
    changed: set[int] = field(default_factory=set)  # shards rewritten by this update

    @property
    def total(self) -> int:
        return sum(s.count for s in self.shards)

    def place(self, run_id: str) -> Shard:
        """The shard ``run_id`` belongs in (a new one when the newest is full), its range
        widened to hold it. The caller counts it in when it is new to the shard."""
        if not self.shards or (run_id > self.shards[-1].last
                               and self.shards[-1].count >= SHARD_SIZE):
            shard = Shard(len(self.shards) + 1, run_id, run_id, 0)
            self.shards.append(shard)
            return shard
        firsts = [s.first for s in self.shards]
        shard = self.shards[max(bisect.bisect_right(firsts, run_id) - 1, 0)]
        shard.first, shard.last = min(shard.first, run_id), max(shard.last, run_id)
        return shard

    def as_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "total": self.total,
                "shards": [s.as_dict() for s in self.shards]}


def _private(project: Project) -> Path:
    return project.reports / PRIVATE


def shard_name(number: int, kind: str) -> str:
    """``runs-00001.js`` and the like: the file of one shard."""
    return f"{kind}-{number:05d}"


def read_manifest(project: Project) -> Manifest:
    try:
        stored = json.loads((_private(project) / "manifest.json").read_text(encoding="utf-8"))
        if stored.get("version") != VERSION:
            return Manifest()
        return Manifest([Shard(s["n"], s["first"], s["last"], s["count"])
                         for s in stored["shards"]])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return Manifest()


def read_shard(project: Project, number: int) -> dict[str, dict[str, Any]]:
    """Run id -> ``{"mtime", "summary"}`` of one shard (empty when missing or stale)."""
    path = _private(project) / f"{shard_name(number, 'shard')}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        return stored["runs"] if stored.get("version") == VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _newest_first(summaries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(summaries, key=lambda s: (s.get("created") or "", s["id"]), reverse=True)


def _write_shard(project: Project, number: int, runs: dict[str, dict[str, Any]]) -> None:
    ordered = _newest_first(e["summary"] for e in runs.values())
    write_text(_private(project) / f"{shard_name(number, 'shard')}.json",
               json.dumps({"version": VERSION, "runs": runs}, separators=(",", ":")))
    public = project.reports / PUBLIC
    listed = [{k: summary.get(k) for k in LISTED} for summary in ordered]
    compared = [{k: summary.get(k) for k in COMPARED} for summary in ordered]
    write_text(public / f"{shard_name(number, 'runs')}.js",
               f"workbenchRuns({number},{script_json(listed)});\n")
    write_text(public / f"{shard_name(number, 'compare')}.js",
               f"workbenchCompare({number},{script_json(compared)});\n")


def _lock(project: Project) -> FileLock:
    folder = _private(project)
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / ".lock"))


def _write_manifest(project: Project, manifest: Manifest) -> None:
    write_text(_private(project) / "manifest.json", json.dumps(manifest.as_dict()))


def update(project: Project, run_ids: Iterable[str], summarise: Summarise,
           mtime: Callable[[str], int | None]) -> Manifest:
    """Re-summarise ``run_ids`` into their shards (a run whose record is gone or unreadable is
    dropped from its shard); rewrite only the shards that changed."""
    with _lock(project):
        manifest = read_manifest(project)
        _apply(project, manifest, set(run_ids), summarise, mtime, {})
        return manifest


def _apply(project: Project, manifest: Manifest, wanted: set[str], summarise: Summarise,
           mtime: Callable[[str], int | None], loaded: dict[int, dict[str, dict[str, Any]]]
           ) -> None:
    """Bring each run of ``wanted`` up to date in its shard (``loaded``: shards already read,
    by number)."""
    changed: set[int] = set()
    for run_id in sorted(wanted):
        stamp = mtime(run_id)
        existing = _find(manifest, run_id)
        shard = existing or (manifest.place(run_id) if stamp is not None else None)
        if shard is None:
            continue
        if shard.number not in loaded:
            loaded[shard.number] = read_shard(project, shard.number)
        runs = loaded[shard.number]
        hit = runs.get(run_id)
        if stamp is not None and hit is not None and hit["mtime"] == stamp:
            continue
        summary = summarise(run_id) if stamp is not None else None
        if summary is None:
            if runs.pop(run_id, None) is not None:
                changed.add(shard.number)
            shard.count = len(runs)
            continue
        runs[run_id] = {"mtime": stamp, "summary": summary}
        shard.count = len(runs)
        changed.add(shard.number)
    for number in sorted(changed):
        _write_shard(project, number, loaded[number])
    manifest.changed |= changed
    if changed or not (_private(project) / "manifest.json").exists():
        _write_manifest(project, manifest)


def _find(manifest: Manifest, run_id: str) -> Shard | None:
    """The shard whose range holds ``run_id`` (whether or not the run is in it yet); ranges
    are disjoint and in order, so a bisection finds it."""
    index = bisect.bisect_right([s.first for s in manifest.shards], run_id) - 1
    if index >= 0 and run_id <= manifest.shards[index].last:
        return manifest.shards[index]
    return None


def rebuild(project: Project, run_ids: Iterable[str], summarise: Summarise,
            mtime: Callable[[str], int | None]) -> Manifest:
    """Every run of the archive (``run_ids``: what is on disk) brought up to date: a run whose
    ``run.json`` changed is re-read, a new one placed, a vanished one dropped."""
    with _lock(project):
        manifest = read_manifest(project)
        loaded = {shard.number: read_shard(project, shard.number) for shard in manifest.shards}
        known = {run_id for runs in loaded.values() for run_id in runs}
        _apply(project, manifest, set(run_ids) | known, summarise, mtime, loaded)
        return manifest


def newest(project: Project, manifest: Manifest, count: int) -> list[dict[str, Any]]:
    """The newest ``count`` summaries, newest first (reading shards from the newest back)."""
    found: list[dict[str, Any]] = []
    for shard in reversed(manifest.shards):
        found += [e["summary"] for e in read_shard(project, shard.number).values()]
        if len(found) >= count:
            break
    return _newest_first(found)[:count]


def of_shard(project: Project, number: int) -> list[dict[str, Any]]:
    """One shard's summaries, newest first."""
    return _newest_first(e["summary"] for e in read_shard(project, number).values())


def every(project: Project, manifest: Manifest) -> Iterator[dict[str, Any]]:
    """Every summary, shard by shard, oldest shard first."""
    for shard in manifest.shards:
        yield from (e["summary"] for e in read_shard(project, shard.number).values())
