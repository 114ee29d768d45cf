"""``reports/ledger.jsonl``: an append-only, hash-chained record of every release event.

Each line is one entry in canonical JSON: ``seq``, ``time``, ``actor``, ``event``, ``run_id``,
``data``, ``files`` (path under ``reports/`` -> sha256 of the file as archived), ``prev`` (the
previous entry's hash) and ``hash`` (sha256 over the entry without ``hash``). Appends take a file
lock, are written with one ``write`` and fsynced, so concurrent runs never lose or interleave
entries. :func:`verify` re-checks every hash, link and file; an anchor (the head's seq and hash,
published elsewhere) also catches truncation and a wholesale rewrite.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from workbench.atomic import write_new
from workbench.audit.chain import Chain
from workbench.clock import utc_now
from workbench.digests import canonical, file_sha256
from workbench.errors import EXIT_FAILED, WorkbenchError

LEDGER_FILE = "ledger.jsonl"
LOCK_FILE = ".ledger.lock"
TORN_DIR = "ledger.torn"  # torn last entries set aside by :func:`repair`
GENESIS = "0" * 64


class LedgerError(WorkbenchError, RuntimeError):
    """The ledger cannot be appended to (it ends in a torn entry, or is unreadable)."""

    exit_code = EXIT_FAILED


CHAIN = Chain(hash_field="hash", link_field="prev", genesis=GENESIS)


def entry_hash(entry: dict[str, Any]) -> str:
    return CHAIN.digest(entry)


def ledger_path(reports: Path) -> Path:
    return reports / LEDGER_FILE


def _tail(path: Path) -> tuple[bytes | None, bytes | None]:
    """The file's last two lines (the one before the last, the last), read from the end; None
    for a line that is not there. A last line without its newline is a torn write."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None, None
        block, position, tail = 4096, size, b""
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            tail = handle.read(step) + tail
            if tail.count(b"\n") >= 3 or position == 0:
                break
    if not tail.endswith(b"\n"):
        raise LedgerError(f"{path} ends with an incomplete entry (a torn write: a crash "
                          f"during an append); `workbench resume RUN` of the interrupted "
                          f"run sets it aside and repairs the ledger")
    lines = tail[:-1].split(b"\n")
    if position > 0:
        lines = lines[1:]  # the first piece may be the end of a longer line
    last = lines[-1] if lines else None
    before = lines[-2] if len(lines) > 1 else None
    return before, last


def _parsed(line: bytes | None) -> dict[str, Any] | None:
    try:
        entry = json.loads(line) if line is not None else None
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _head(path: Path) -> dict[str, Any] | None:
    """The last entry, after checking that it is one: its own hash and form, and its link to
    the entry before it. A head that does not verify is refused, so nothing is ever appended
    after a forged or garbage line; None for an empty ledger."""
    before, last = _tail(path)
    if last is None:
        return None
    entry = _parsed(last)
    problem = None
    if entry is None:
        problem = "is not a ledger entry (not a JSON object)"
    elif entry.get("hash") != entry_hash(entry) or last != canonical(entry):
        problem = "does not match its hash (edited or forged)"
    else:
        previous = _parsed(before) if before is not None else None
        expected_seq = previous["seq"] + 1 if previous and isinstance(
            previous.get("seq"), int) else 1
        expected_link = previous.get("hash") if previous else GENESIS
        if before is not None and previous is None:
            problem = "follows a line that is not a ledger entry"
        elif entry.get("seq") != expected_seq or entry.get("prev") != expected_link:
            problem = "does not link to the entry before it"
    if problem:
        raise LedgerError(f"{path}: its last entry (seq {entry.get('seq') if entry else '?'}) "
                          f"{problem}; nothing is appended after it. `workbench audit verify` "
                          f"names every problem; `workbench audit repair` sets a garbage tail "
                          f"aside")
    return entry


def append(reports: Path, event: str, *, actor: dict[str, Any] | None, run_id: str | None,
           data: dict[str, Any] | None = None, files: list[Path] | None = None
           ) -> dict[str, Any]:
    """Append one entry; ``files`` (under ``reports``) are hashed as they are now."""
    reports.mkdir(parents=True, exist_ok=True)
    digests = {p.resolve().relative_to(reports.resolve()).as_posix(): file_sha256(p)
               for p in files or []}
    with FileLock(reports / LOCK_FILE, timeout=120):
        return _append_locked(ledger_path(reports), event, actor, run_id, data or {}, digests)


def _append_locked(path: Path, event: str, actor: dict[str, Any] | None, run_id: str | None,
                   data: dict[str, Any], digests: dict[str, str]) -> dict[str, Any]:
    """Append one entry; the caller holds the ledger lock."""
    head = _head(path) if path.exists() else None
    entry = CHAIN.seal({"time": utc_now(), "actor": actor, "event": event, "run_id": run_id,
                        "data": data, "files": digests}, head)
    line = canonical(entry) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def repair(reports: Path, actor: dict[str, Any] | None, run_id: str | None = None,
           garbage: bool = False) -> dict[str, Any] | None:
    """Set aside a torn last entry (left by a crash during an append) and record that; with
    ``garbage``, also a tail of complete lines that are no valid entries (``workbench audit
    repair``).

    The bytes are kept in ``reports/ledger.torn/`` and the ledger is cut back to its last
    entry that verifies, then a ``ledger_repaired`` entry records where the cut was, how many
    bytes were set aside and their digest. An append that never completed was never
    acknowledged, and a line that is no valid entry recorded nothing, so nothing that had been
    recorded is lost. History is never cut: a tail is set aside only when no line in it is an
    entry that verifies on its own (:class:`LedgerError` otherwise). Returns the entry, or None
    when there was nothing to set aside.
    """
    path = ledger_path(reports)
    with FileLock(reports / LOCK_FILE, timeout=120):
        if not path.exists():
            return None
        with path.open("rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            cut = _after_last_newline(handle, size)
            if garbage:
                cut = _garbage_tail(handle, cut)
            if cut == size:
                return None
            handle.seek(cut)
            fragment = handle.read()
            digest = hashlib.sha256(fragment).hexdigest()
            kept = reports / TORN_DIR / f"{cut:012d}-{digest[:16]}.bin"
            if not kept.exists():
                write_new(kept, fragment, mode=0o444)
            handle.truncate(cut)
            handle.flush()
            os.fsync(handle.fileno())
        data = {"offset": cut, "bytes": len(fragment), "sha256": digest}
        files = {kept.relative_to(reports).as_posix(): digest}
        return _append_locked(path, "ledger_repaired", actor, run_id, data, files)


def _garbage_tail(handle: Any, complete: int) -> int:
    """Where the tail of complete lines (up to offset ``complete``) that do not continue the
    chain starts; ``complete`` when every line does. Refuses a tail holding an entry that
    verifies on its own: that is an edit in the middle, not garbage at the end."""
    handle.seek(0)
    offset, previous, expected, start = 0, GENESIS, 1, None
    for number, line in enumerate(handle, start=1):
        if offset >= complete:
            break
        entry = _parsed(line.rstrip(b"\n"))
        valid_alone = entry is not None and entry.get("hash") == entry_hash(entry)
        continues = valid_alone and entry is not None and entry.get("seq") == expected and \
            entry.get("prev") == previous
        if start is None and continues and entry is not None:
            previous, expected = entry["hash"], expected + 1
        elif start is None:
            start = offset
        elif valid_alone:
            raise LedgerError(f"{LEDGER_FILE} line {number}: a valid entry follows lines that do "
                              f"not verify; that is an edit of the history, not a garbage tail, "
                              f"and is not repaired (`workbench audit verify` names it)")
        offset += len(line)
    return complete if start is None else start


def _after_last_newline(handle: Any, size: int) -> int:
    """Offset just after the file's last newline (0 if it has none)."""
    position = size
    while position > 0:
        step = min(4096, position)
        position -= step
        handle.seek(position)
        block = handle.read(step)
        found = block.rfind(b"\n")
        if found >= 0:
            return position + found + 1
    return 0


def entries(reports: Path) -> Iterator[dict[str, Any]]:
    """Every entry as stored (no checks; see :func:`verify`)."""
    path = ledger_path(reports)
    if not path.exists():
        return
    with path.open("rb") as handle:
        for line in handle:
            if line.strip() and line.endswith(b"\n"):  # a torn last line is not an entry
                entry = _parsed(line)
                if entry is not None:  # a garbage line is no entry (verify names it)
                    yield entry


def head(reports: Path) -> dict[str, Any]:
    """The anchor: the last entry's ``seq`` and ``hash`` (seq 0 for an empty ledger), once it
    verifies (:class:`LedgerError` otherwise)."""
    path = ledger_path(reports)
    entry = (_head(path) if path.exists() else None) or {"seq": 0, "hash": GENESIS}
    return {"seq": entry["seq"], "hash": entry["hash"], "ledger": LEDGER_FILE}


@dataclass
class LedgerIndex:
    """What the ledger says, read once: the digest each file was last recorded with, and the
    entries of each run (for the gate's checks, which trust the ledger, never a file)."""

    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (sha256, seq)
    by_run: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def recorded(self, path: str) -> tuple[str, int] | None:
        """(digest, seq) of the last entry naming ``path`` (under ``reports/``), if any."""
        return self.files.get(path)

    def first(self, run_id: str, event: str) -> dict[str, Any] | None:
        return next((e for e in self.by_run.get(run_id, []) if e.get("event") == event), None)

    def of_run(self, run_id: str, event: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.by_run.get(run_id, []) if event is None or e.get("event") == event]


def index(reports: Path) -> LedgerIndex:
    """One pass over the ledger (entries as stored; :func:`verify` checks them)."""
    found = LedgerIndex()
    for entry in entries(reports):
        files = entry.get("files")
        if isinstance(files, dict):
            for name, digest in files.items():
                found.files[str(name)] = (str(digest), int(entry.get("seq") or 0))
        run_id = entry.get("run_id")
        if isinstance(run_id, str):
            found.by_run.setdefault(run_id, []).append(entry)
    return found


@dataclass
class Verification:
    entries: int = 0
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(reports: Path, anchor: dict[str, Any] | None = None,
           check_files: bool = True) -> Verification:
    """Recompute every hash and link, re-hash every referenced file, compare with ``anchor``.

    Each problem names the entry (line and seq) or the file; verification goes on after a
    problem so that one report lists them all.
    """
    result = Verification()
    path = ledger_path(reports)
    if not path.exists():
        if anchor and anchor.get("seq", 0) > 0:
            result.problems.append(f"{LEDGER_FILE} is missing; the anchor expects "
                                   f"{anchor['seq']} entries")
        return result
    previous, expected_seq = GENESIS, 1
    seen: dict[int, str | None] = {}
    known: dict[tuple[str, str], bool] = {}
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{LEDGER_FILE} line {number}"
            if not raw.endswith(b"\n"):
                result.problems.append(f"{where}: incomplete entry (torn write)")
                break
            try:
                entry = json.loads(raw)
            except ValueError:
                result.problems.append(f"{where}: not valid JSON (edited)")
                continue
            if not isinstance(entry, dict):
                result.problems.append(f"{where}: not a ledger entry (edited)")
                continue
            seq = entry.get("seq")
            where = f"{where} (seq {seq})"
            found = CHAIN.problems(entry, expected_seq, previous)
            if entry.get("hash") == entry_hash(entry) and raw != canonical(entry) + b"\n":
                found.insert(0, "not in canonical form (edited)")
            result.problems += [f"{where}: {problem}" for problem in found]
            previous = entry.get("hash", "")
            expected_seq = (seq if isinstance(seq, int) else expected_seq) + 1
            if isinstance(seq, int):
                seen[seq] = entry.get("hash")
            result.entries += 1
            if check_files:
                _check_files(reports, entry, where, result, known)
    if anchor:
        _check_anchor(anchor, seen, result)
    return result


def _check_files(reports: Path, entry: dict[str, Any], where: str, result: Verification,
                 known: dict[tuple[str, str], bool]) -> None:
    root = reports.resolve()
    files = entry.get("files") or {}
    if not isinstance(files, dict):
        result.problems.append(f"{where}: files is not a mapping (edited)")
        return
    for name, digest in files.items():
        target = (reports / name).resolve()
        if root not in target.parents:
            result.problems.append(f"{where}: file {name} is outside reports/")
            continue
        key = (name, digest)
        if key not in known:
            if not target.is_file():
                known[key] = False
                result.problems.append(f"reports/{name} (seq {entry.get('seq')}): missing")
                continue
            actual = file_sha256(target)
            result.files += 1
            result.bytes += target.stat().st_size
            known[key] = actual == digest
            if actual != digest:
                result.problems.append(f"reports/{name} (seq {entry.get('seq')}): content "
                                       f"changed since it was recorded")


def _check_anchor(anchor: dict[str, Any], seen: dict[int, str | None], result: Verification
                  ) -> None:
    seq, digest = anchor.get("seq"), anchor.get("hash")
    if not isinstance(seq, int) or seq < 0 or not isinstance(digest, str):
        result.problems.append("anchor: expected {\"seq\": N, \"hash\": \"...\"}")
        return
    if seq == 0:
        return
    if seq not in seen:
        last = max(seen, default=0)
        result.problems.append(f"anchor: the ledger ends at seq {last} but the anchor is at "
                               f"seq {seq} (truncated)")
    elif seen[seq] != digest:
        result.problems.append(f"anchor: entry seq {seq} has hash {str(seen[seq])[:12]}, the "
                               f"anchor says {digest[:12]} (the ledger was rewritten)")
