"""The archive a team shares: ledger and archived files on an object store, ``reports/`` its
local cache.

Layout under the store's prefix:

- ``ledger/000000000042.json``: one ledger entry per object, created only if absent. Two
  machines appending at once both seal seq 42 on the same head; the store lets one create
  the object and refuses the other (HTTP 412), which pulls the winner's entry and reseals on
  the new head. So the chain never forks and no entry is lost, without a lock server.
- ``files/<path under reports/>``: each file a ledger entry names, written once (create only
  if absent) *before* its entry, so an entry never names a file the store lacks. A file that
  exists with other content is never replaced: that is an error.
- ``state/runs/<run>/run.json``: a run's record (its current state, which the ledger's
  entries record step by step), replaced only if unchanged since this machine read it
  (``If-Match``): two machines driving one run at once get a clear conflict, not a lost write.

``reports/.remote.json`` (hidden: not served, not archived) marks a cache and names its store,
so every process appending to this ``reports/`` (kernels included) writes through to the store:
:func:`workbench.audit.ledger.append` calls :func:`append_locked` under its lock. Before each
append the cache pulls what other machines appended; commands pull when they start
(:mod:`workbench.audit.shared`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from workbench.atomic import write_bytes
from workbench.audit import ledger
from workbench.audit.object_store import LostRace, ObjectStore, open_store
from workbench.digests import canonical, file_sha256
from workbench.errors import EXIT_FAILED, WorkbenchError

MARKER = ledger.SHARED_MARKER
STATE_TAG = ".run.remote.json"  # beside a cached run.json: the store's tag of what was read
RUN_FILE = "run.json"
LEDGER_PREFIX, FILES_PREFIX, STATE_PREFIX = "ledger/", "files/", "state/"
RACES = 200  # lost races in a row before an append gives up (8 writers lose a few each)
PARALLEL = 16  # objects fetched at once


class RemoteError(WorkbenchError, RuntimeError):
    """The shared archive and this cache disagree (a fork, a replaced file, a conflict)."""

    exit_code = EXIT_FAILED


def entry_key(seq: int) -> str:
    return f"{LEDGER_PREFIX}{seq:012d}.json"


def state_key(run_id: str) -> str:
    return f"{STATE_PREFIX}runs/{run_id}/{RUN_FILE}"


@dataclass
class RemoteArchive:
    """A store and the cache (``reports``) that mirrors it."""

    store: ObjectStore
    reports: Path
    in_sync: tuple[int, str] | None = None  # (seq, hash) known to be the store's too
    pushed: set[tuple[str, str]] = field(default_factory=set)  # (path, sha256) in the store
    races_lost: int = 0  # conditional creates refused (for tests and figures)

    @property
    def url(self) -> str:
        return self.store.url


_attached: dict[Path, tuple[float, RemoteArchive]] = {}
_attach_lock = threading.Lock()


def attach(reports: Path, url: str, endpoint_url: str | None = None) -> RemoteArchive:
    """Mark ``reports`` as the cache of the store at ``url`` (rewritten only if it changed)."""
    marker = reports / MARKER
    wanted = {"url": url, "endpoint_url": endpoint_url}
    try:
        current = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = None
    if current != wanted:
        write_bytes(marker, (json.dumps(wanted) + "\n").encode())
    found = attached(reports)
    if found is None:  # written just above
        raise RemoteError(f"{marker} could not be written")
    return found


def detach(reports: Path) -> None:
    (reports / MARKER).unlink(missing_ok=True)


def attached(reports: Path) -> RemoteArchive | None:
    """The store ``reports`` is a cache of (one object per process), or None."""
    marker = reports / MARKER
    try:
        stamp = marker.stat().st_mtime_ns
    except OSError:
        return None
    key = reports.resolve()
    with _attach_lock:
        known = _attached.get(key)
        if known and known[0] == stamp:
            return known[1]
        settings = json.loads(marker.read_text(encoding="utf-8"))
        archive = RemoteArchive(open_store(settings["url"], settings.get("endpoint_url")),
                                reports)
        _attached[key] = (stamp, archive)
        return archive


# --- pulling ------------------------------------------------------------------------------


def pull(archive: RemoteArchive) -> list[dict[str, Any]]:
    """Bring the cache up to the store's head: new entries, the files they name, the records
    of their runs. Returns the new entries."""
    archive.reports.mkdir(parents=True, exist_ok=True)
    with FileLock(archive.reports / ledger.LOCK_FILE, timeout=120):
        return pull_locked(archive)


def _fetch_entry(archive: RemoteArchive, key: str) -> dict[str, Any]:
    found = archive.store.get(key)
    if found is None:
        raise RemoteError(f"{archive.url}/{key}: listed but gone")
    try:
        entry = json.loads(found[0])
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        raise RemoteError(f"{archive.url}/{key}: not a ledger entry (not a JSON object)")
    return entry


def _local_head(archive: RemoteArchive) -> dict[str, Any] | None:
    path = ledger.ledger_path(archive.reports)
    return ledger._head(path) if path.exists() and path.stat().st_size else None


def pull_locked(archive: RemoteArchive) -> list[dict[str, Any]]:
    """:func:`pull`; the caller holds the ledger lock."""
    head = _local_head(archive)
    seq, previous = (head["seq"], head["hash"]) if head else (0, ledger.GENESIS)
    keys = list(archive.store.list(LEDGER_PREFIX, start_after=entry_key(seq)))
    if not keys:
        _confirm(archive, head)
        return []
    with ThreadPoolExecutor(PARALLEL) as pool:
        fetched = list(pool.map(lambda key: _fetch_entry(archive, key), keys))
    lines = []
    for key, entry in zip(keys, fetched, strict=True):
        problems = ledger.CHAIN.problems(entry, seq + 1, previous)
        if key != entry_key(seq + 1):
            problems.append(f"expected {entry_key(seq + 1)} next")
        if problems:
            raise RemoteError(f"{archive.url}/{key}: {'; '.join(problems)}. The shared ledger "
                              f"does not continue this cache (reports/{ledger.LEDGER_FILE} at "
                              f"seq {seq}); `workbench audit verify` names every problem")
        lines.append(canonical(entry) + b"\n")
        seq, previous = seq + 1, entry["hash"]
    _materialize(archive, fetched)  # files first: the cache never names a file it lacks
    for run_id in sorted({e["run_id"] for e in fetched if isinstance(e.get("run_id"), str)}):
        pull_state(archive, run_id)  # a conflict stops the pull before the entries land
    ledger.append_lines(ledger.ledger_path(archive.reports), b"".join(lines))
    archive.in_sync = (seq, previous)
    return fetched


def _confirm(archive: RemoteArchive, head: dict[str, Any] | None) -> None:
    """Check once per process that the store holds this cache's head (a cache with entries the
    store lacks was written without it: refused, never silently forked)."""
    if head is None or archive.in_sync == (head["seq"], head["hash"]):
        return
    found = archive.store.get(entry_key(head["seq"]))
    stored = json.loads(found[0]) if found else None
    if not stored or stored.get("hash") != head["hash"]:
        raise RemoteError(f"reports/{ledger.LEDGER_FILE} (seq {head['seq']}) has entries "
                          f"{archive.url} does not: this cache was written without the shared "
                          f"archive. `workbench archive push` adopts it into an empty store; "
                          f"otherwise start from a fresh reports/ (move this one aside)")
    archive.in_sync = (head["seq"], head["hash"])


def _latest_files(entries: Iterable[dict[str, Any]]) -> dict[str, str]:
    files: dict[str, str] = {}
    for entry in entries:
        if isinstance(entry.get("files"), dict):
            files.update({str(k): str(v) for k, v in entry["files"].items()})
    return files


def _materialize(archive: RemoteArchive, entries: list[dict[str, Any]]) -> None:
    """Download each file the entries name that the cache lacks (or holds otherwise)."""
    root = archive.reports.resolve()

    def fetch(item: tuple[str, str]) -> None:
        name, digest = item
        target = (root / name).resolve()
        if not target.is_relative_to(root):
            raise RemoteError(f"{archive.url}: an entry names {name}, outside reports/")
        if target.is_file() and file_sha256(target) == digest:
            return
        found = archive.store.get(FILES_PREFIX + name)
        if found is None:
            raise RemoteError(f"{archive.url}/{FILES_PREFIX}{name}: missing, though the "
                              f"ledger records it")
        if hashlib.sha256(found[0]).hexdigest() != digest:
            raise RemoteError(f"{archive.url}/{FILES_PREFIX}{name}: content differs from the "
                              f"ledger's record (changed in the store)")
        write_bytes(target, found[0])
        archive.pushed.add((name, digest))

    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(fetch, _latest_files(entries).items()))


def pull_state(archive: RemoteArchive, run_id: str) -> bool:
    """Refresh the cached record of ``run_id`` from the store (False: the store has none)."""
    found = archive.store.get(state_key(run_id))
    if found is None:
        return False
    data, tag = found
    folder = archive.reports / "runs" / run_id
    path = folder / RUN_FILE
    known = _read_tag(folder)
    if path.is_file() and known.get("sha256") and \
            hashlib.sha256(path.read_bytes()).hexdigest() != known["sha256"]:
        # this machine changed the record since it last synced it (a write to the store
        # failed): kept while the store's copy is the one it read; both changed: a conflict
        if tag == known.get("tag"):
            return True
        raise RemoteError(f"run {run_id}: its record changed both here (not yet written to "
                          f"{archive.url}) and on another machine; move "
                          f"reports/runs/{run_id}/{RUN_FILE} aside to take the shared one")
    if not path.is_file() or path.read_bytes() != data:
        write_bytes(path, data)
    _write_tag(folder, tag, hashlib.sha256(data).hexdigest())
    return True


def _read_tag(folder: Path) -> dict[str, Any]:
    try:
        known = json.loads((folder / STATE_TAG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _write_tag(folder: Path, tag: str, digest: str) -> None:
    write_bytes(folder / STATE_TAG, (json.dumps({"tag": tag, "sha256": digest}) + "\n").encode())


# --- pushing ------------------------------------------------------------------------------


def append_locked(archive: RemoteArchive, path: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Append ``body`` (an entry without seq, link and hash) to the shared ledger, then to the
    cache; the caller holds the ledger lock. A lost race pulls the winner and retries."""
    for _ in range(RACES):
        pull_locked(archive)
        head = _local_head(archive)
        _confirm(archive, head)
        push_files(archive, body.get("files") or {})
        if isinstance(body.get("run_id"), str):
            push_state(archive, body["run_id"])
        entry = ledger.CHAIN.seal(body, head)
        line = canonical(entry) + b"\n"
        try:
            archive.store.put_new(entry_key(entry["seq"]), line)
        except LostRace:
            archive.races_lost += 1
            continue
        ledger.append_lines(path, line)
        archive.in_sync = (entry["seq"], entry["hash"])
        return entry
    raise RemoteError(f"{archive.url}: lost the race for the next ledger entry {RACES} times "
                      f"in a row; nothing was appended (retry the command)")


def push_files(archive: RemoteArchive, files: dict[str, str]) -> None:
    """Write each file (path under ``reports/`` -> sha256) to the store once."""
    todo = [(name, digest) for name, digest in files.items()
            if (name, digest) not in archive.pushed]

    def push(item: tuple[str, str]) -> None:
        name, digest = item
        data = (archive.reports / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise RemoteError(f"reports/{name} changed while it was being recorded")
        try:
            archive.store.put_new(FILES_PREFIX + name, data)
        except LostRace:
            found = archive.store.get(FILES_PREFIX + name)
            if found is None or hashlib.sha256(found[0]).hexdigest() != digest:
                raise RemoteError(f"{archive.url}/{FILES_PREFIX}{name} exists with other "
                                  f"content; an archived file is never replaced") from None
        archive.pushed.add(item)

    with ThreadPoolExecutor(min(PARALLEL, max(1, len(todo)))) as pool:
        list(pool.map(push, todo))


def push_state(archive: RemoteArchive, run_id: str) -> None:
    """Write the cached record of ``run_id`` to the store if it changed since it was last read
    or written here, only if the store's copy is still the one read (else a conflict)."""
    folder = archive.reports / "runs" / run_id
    try:
        data = (folder / RUN_FILE).read_bytes()
    except FileNotFoundError:
        return
    digest = hashlib.sha256(data).hexdigest()
    known = _read_tag(folder)
    if known.get("sha256") == digest:
        return
    try:
        if known.get("tag"):
            tag = archive.store.put(state_key(run_id), data, if_match=known["tag"])
        else:
            tag = archive.store.put_new(state_key(run_id), data)
    except LostRace:
        raise RemoteError(f"run {run_id}: its record in {archive.url} was changed by another "
                          f"machine since this one read it (two machines driving one run); "
                          f"`workbench status {run_id}` shows the shared state") from None
    _write_tag(folder, tag, digest)


def save_state(reports: Path, run_id: str) -> None:
    """After a run record was saved: write it to the shared archive too, if ``reports`` caches
    one (a record saved without a ledger entry after it would otherwise stay on this machine
    until the next append)."""
    archive = attached(reports)
    if archive is not None:
        with FileLock(reports / ledger.LOCK_FILE, timeout=120):
            push_state(archive, run_id)


def adopt(archive: RemoteArchive) -> int:
    """Push a cache's whole ledger (and its files and run records) into an empty store:
    how a project that kept its archive locally moves to a shared one. Returns the entries."""
    with FileLock(archive.reports / ledger.LOCK_FILE, timeout=120):
        if next(iter(archive.store.list(LEDGER_PREFIX)), None) is not None:
            raise RemoteError(f"{archive.url} already holds a ledger; only an empty store "
                              f"adopts a local one")
        entries = list(ledger.entries(archive.reports))
        runs: set[str] = set()
        for entry in entries:
            push_files(archive, entry.get("files") or {})
            archive.store.put_new(entry_key(entry["seq"]), canonical(entry) + b"\n")
            if isinstance(entry.get("run_id"), str):
                runs.add(entry["run_id"])
        for run_id in sorted(runs):
            push_state(archive, run_id)
        if entries:
            archive.in_sync = (entries[-1]["seq"], entries[-1]["hash"])
        return len(entries)


def _append_to_store(reports: Path, path: Path, body: dict[str, Any]) -> dict[str, Any]:
    archive = attached(reports)
    if archive is None:
        raise RemoteError(f"{reports / MARKER} disappeared during an append")
    return append_locked(archive, path, body)


ledger.use_shared_append(_append_to_store)
