"""``workbench audit verify`` of a shared archive, in the store itself: every entry's hash and
link, in order, then every file the entries name re-hashed against its last record, streamed
page by page (entries fetched a batch at a time, files hashed as they arrive, nothing written
to disk), so a reviewer's fresh checkout verifies without first downloading the archive."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any

from workbench.audit import ledger
from workbench.audit.remote import FILES_PREFIX, LEDGER_PREFIX, PARALLEL, RemoteArchive, entry_key

BATCH = 256  # entries fetched at once


def _batches(keys: Iterator[str]) -> Iterator[list[str]]:
    while batch := list(islice(keys, BATCH)):
        yield batch


def _entry(archive: RemoteArchive, key: str) -> tuple[bytes | None, Any]:
    found = archive.store.get(key)
    if found is None:
        return None, None
    try:
        return found[0], json.loads(found[0])
    except ValueError:
        return found[0], None


def verify(archive: RemoteArchive, anchor: dict[str, Any] | None = None,
           check_files: bool = True, since: dict[str, Any] | None = None
           ) -> ledger.Verification:
    """Check the store's ledger and files; each problem names the object. With ``since`` (a
    checkpoint: seq and hash), only the entries after it, the first of them linked to it, and
    the files they name."""
    result = ledger.Verification(since=since["seq"] if since else None)
    previous, expected = (since["hash"], since["seq"] + 1) if since else (ledger.GENESIS, 1)
    seen: dict[int, str | None] = {since["seq"]: since["hash"]} if since else {}
    files: dict[str, tuple[str, int]] = {}
    if since and since["seq"] > 0:
        _, stored = _entry(archive, entry_key(since["seq"]))
        if not isinstance(stored, dict) or stored.get("hash") != since["hash"]:
            result.problems.append(f"{archive.url}/{entry_key(since['seq'])}: not the entry "
                                   f"the checkpoint names (the ledger was rewritten)")
    start = entry_key(since["seq"]) if since else ""
    with ThreadPoolExecutor(PARALLEL) as pool:
        for batch in _batches(archive.store.list(LEDGER_PREFIX, start_after=start)):
            for key, (raw, entry) in zip(batch, pool.map(lambda k: _entry(archive, k), batch),
                                         strict=True):
                where = f"{archive.url}/{key}"
                if not isinstance(entry, dict):
                    result.problems.append(f"{where}: not a ledger entry (edited)")
                    expected += 1
                    continue
                found = ledger.CHAIN.problems(entry, expected, previous)
                if key != entry_key(expected) and not found:
                    found.append(f"stored as {key}, expected {entry_key(expected)}")
                if raw != ledger.canonical(entry) + b"\n" and not found:
                    found.append("not in canonical form (edited)")
                result.problems += [f"{where}: {problem}" for problem in found]
                seq = entry.get("seq")
                previous = str(entry.get("hash", ""))
                expected = (seq if isinstance(seq, int) else expected) + 1
                if isinstance(seq, int):
                    seen[seq] = entry.get("hash")
                result.entries += 1
                if isinstance(entry.get("run_id"), str):
                    result.runs.add(entry["run_id"])
                if isinstance(entry.get("files"), dict):
                    files.update({str(n): (str(d), expected - 1)
                                  for n, d in entry["files"].items()})
        if check_files:
            for problem, size in pool.map(lambda item: _check_file(archive, *item),
                                          files.items()):
                result.files += 1
                result.bytes += size
                if problem:
                    result.problems.append(problem)
    if anchor:
        ledger._check_anchor(anchor, seen, result)
    return result


def _check_file(archive: RemoteArchive, name: str, recorded: tuple[str, int]
                ) -> tuple[str | None, int]:
    digest, seq = recorded
    found = archive.store.get(FILES_PREFIX + name)
    where = f"{archive.url}/{FILES_PREFIX}{name} (seq {seq})"
    if found is None:
        return f"{where}: missing", 0
    if hashlib.sha256(found[0]).hexdigest() != digest:
        return f"{where}: content changed since it was recorded", len(found[0])
    return None, len(found[0])
