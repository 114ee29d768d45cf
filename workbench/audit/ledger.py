"""``reports/ledger.jsonl``: an append-only, hash-chained record of every release event.

Each line is one entry in canonical JSON: ``seq``, ``time``, ``actor``, ``event``, ``run_id``,
``data``, ``files`` (path under ``reports/`` -> sha256 of the file as archived), ``prev`` (the
previous entry's hash) and ``hash`` (sha256 over the entry without ``hash``). Appends take a file
lock, are written with one ``write`` and fsynced, so concurrent runs never lose or interleave
entries. :func:`verify` re-checks every hash, link and file; an anchor (the head's seq and hash,
published elsewhere) also catches truncation and a wholesale rewrite.

Incremental verification: :func:`checkpoint` is the anchor plus ``offset`` (the ledger's length
in bytes at the head entry) and ``prefix_sha256`` (sha256 of those bytes). ``verify(since=...)``
hashes the bytes before the checkpoint as one stream (no JSON parsed) and compares, which
catches any edit, truncation or rewrite before it; then it checks the entry the checkpoint
names and verifies only the entries after it, and only the files those name: the files of
earlier entries are trusted (a full verify re-hashes them). The checkpoint is only as
trustworthy as the place it is kept: outside the archive.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from workbench.atomic import write_new
from workbench.audit.chain import Chain
from workbench.clock import utc_now
from workbench.digests import canonical, file_sha256
from workbench.errors import EXIT_FAILED, EXIT_USAGE, WorkbenchError

LEDGER_FILE = "ledger.jsonl"
LOCK_FILE = ".ledger.lock"
TORN_DIR = "ledger.torn"  # torn last entries set aside by :func:`repair`
GENESIS = "0" * 64
CHUNK = 1 << 20  # bytes read at a time when a whole ledger is streamed


class LedgerError(WorkbenchError, RuntimeError):
    """The ledger cannot be appended to (it ends in a torn entry, or is unreadable)."""

    exit_code = EXIT_FAILED


class AnchorError(WorkbenchError, ValueError):
    """An anchor that cannot be verified from (not one :func:`checkpoint` writes)."""

    exit_code = EXIT_USAGE


CHAIN = Chain(hash_field="hash", link_field="prev", genesis=GENESIS)


def entry_hash(entry: dict[str, Any]) -> str:
    return CHAIN.digest(entry)


def ledger_path(reports: Path) -> Path:
    return reports / LEDGER_FILE


def _tail(path: Path, end: int | None = None) -> tuple[bytes | None, bytes | None]:
    """The file's last two lines (the one before the last, the last), read from the end (or
    from byte ``end``); None for a line that is not there. A last line without its newline is a
    torn write."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END) if end is None else end
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


def _head(path: Path, end: int | None = None) -> dict[str, Any] | None:
    """The last entry (before byte ``end``), after checking that it is one: its own hash and
    form, and its link to the entry before it. A head that does not verify is refused, so
    nothing is ever appended after a forged or garbage line; None for an empty ledger."""
    before, last = _tail(path, end)
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
        if (reports / SHARED_MARKER).exists():  # a cache of a team's archive: the store orders
            if _shared_append is None:
                raise LedgerError(f"{reports} is the cache of a shared archive, but "
                                  f"workbench.audit.remote is not loaded")
            body = {"time": utc_now(), "actor": actor, "event": event, "run_id": run_id,
                    "data": data or {}, "files": digests}
            return _shared_append(reports, ledger_path(reports), body)
        return _append_locked(ledger_path(reports), event, actor, run_id, data or {}, digests)


SHARED_MARKER = ".remote.json"  # in reports/: it caches a shared archive (audit.remote)
SharedAppend = Callable[[Path, Path, dict[str, Any]], dict[str, Any]]
_shared_append: SharedAppend | None = None


def use_shared_append(append_to_store: SharedAppend) -> None:
    """Route appends to a ``reports/`` holding :data:`SHARED_MARKER` through
    ``append_to_store(reports, ledger_path, body)`` (installed by
    :mod:`workbench.audit.remote`, which ``workbench.audit`` imports)."""
    global _shared_append
    _shared_append = append_to_store


def _append_locked(path: Path, event: str, actor: dict[str, Any] | None, run_id: str | None,
                   data: dict[str, Any], digests: dict[str, str]) -> dict[str, Any]:
    """Append one entry; the caller holds the ledger lock."""
    head = _head(path) if path.exists() else None
    entry = CHAIN.seal({"time": utc_now(), "actor": actor, "event": event, "run_id": run_id,
                        "data": data, "files": digests}, head)
    append_lines(path, canonical(entry) + b"\n")
    return entry


def append_lines(path: Path, data: bytes) -> None:
    """Append complete lines with one ``write`` and fsync them (the caller holds the lock)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


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
        if (reports / SHARED_MARKER).exists() and _shared_append is not None:
            # a cache of a shared archive: the cut tail was this machine's copy only; the
            # store's entries are pulled again and the repair recorded there
            return _shared_append(reports, path, {
                "time": utc_now(), "actor": actor, "event": "ledger_repaired",
                "run_id": run_id, "data": data, "files": files})
        return _append_locked(path, "ledger_repaired", actor, run_id, data, files)


def ends_torn(reports: Path) -> bool:
    """Whether the ledger's last line is incomplete (a crash during an append)."""
    path = ledger_path(reports)
    try:
        with path.open("rb") as handle:
            if handle.seek(0, os.SEEK_END) == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False


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


def checkpoint(reports: Path) -> dict[str, Any]:
    """:func:`head` plus what ``verify(since=...)`` starts from: ``offset`` (the ledger's
    length in bytes at the head entry, where the next entry starts) and ``prefix_sha256`` (the
    sha256 of those bytes). Streams the whole ledger once; entries appended meanwhile are after
    the checkpoint."""
    path = ledger_path(reports)
    offset = path.stat().st_size if path.exists() else 0
    entry = (_head(path, offset) if offset else None) or {"seq": 0, "hash": GENESIS}
    return {"seq": entry["seq"], "hash": entry["hash"], "ledger": LEDGER_FILE,
            "offset": offset, "prefix_sha256": _prefix(path, offset)[0]}


def _prefix(path: Path, offset: int) -> tuple[str, int]:
    """sha256 of the file's bytes [0, offset) (fewer if it is shorter) and how many lines end
    in them, streamed."""
    sha, lines, left = hashlib.sha256(), 0, offset
    if offset <= 0:
        return sha.hexdigest(), 0
    with path.open("rb") as handle:
        while left > 0:
            block = handle.read(min(CHUNK, left))
            if not block:
                break
            sha.update(block)
            lines += block.count(b"\n")
            left -= len(block)
    return sha.hexdigest(), lines


def _since(anchor: dict[str, Any]) -> tuple[int, str, int, str]:
    """seq, hash, offset and prefix_sha256 of a checkpoint (:class:`AnchorError` if it is
    not one)."""
    seq, digest = anchor.get("seq"), anchor.get("hash")
    offset, prefix = anchor.get("offset"), anchor.get("prefix_sha256")
    if offset is None or prefix is None:
        raise AnchorError("the anchor has no offset and prefix_sha256 (written by an older "
                          "workbench): verifying from it needs an anchor written by "
                          "`workbench audit anchor` of this version; a full verify accepts "
                          "it as --anchor")
    if not (isinstance(seq, int) and seq >= 0 and isinstance(digest, str)
            and isinstance(offset, int) and offset >= 0 and isinstance(prefix, str)
            and len(prefix) == 64):
        raise AnchorError('expected {"seq": N, "hash": "...", "offset": BYTES, '
                          '"prefix_sha256": "..."} (from `workbench audit anchor`)')
    return seq, digest, offset, prefix


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


def index(reports: Path, runs: set[str] | None = None) -> LedgerIndex:
    """One pass over the ledger (entries as stored; :func:`verify` checks them). With ``runs``,
    only what the archive's coverage of those runs' folders and of ``rollbacks/`` and
    ``drift/`` needs (:func:`_concerning`): complete for those, not for anything else."""
    found = LedgerIndex()
    for entry in entries(reports) if runs is None else _concerning(reports, runs):
        files = entry.get("files")
        if isinstance(files, dict):
            for name, digest in files.items():
                found.files[str(name)] = (str(digest), int(entry.get("seq") or 0))
        run_id = entry.get("run_id")
        if isinstance(run_id, str):
            found.by_run.setdefault(run_id, []).append(entry)
    return found


RECORD_ROOTS = ("rollbacks", "drift", "canary")  # record folders at the top of reports/
# A run named in a canonical line, as its ``run_id`` or by the folder of a file: the name as
# JSON spells it (up to a slash).
RUN_NAMED = re.compile(rb'"(?:run_id":"|runs/)((?:[^"/\\]|\\.)*)')
FEW_RUNS = 4


def _concerning(reports: Path, runs: set[str]) -> Iterator[dict[str, Any]]:
    """The entries of ``runs``, every entry naming a file under their folders or under
    ``rollbacks/`` or ``drift/``, and the first ``stage_rendered`` entry, in order. Lines are
    picked by searching the bytes (canonical JSON has one spelling), so only those are
    parsed; a line picked by a near miss is dropped once parsed."""
    few = len(runs) <= FEW_RUNS  # then a plain search per run beats a regex over every line
    names = set() if few else {canonical(run)[1:-1].split(b"/", 1)[0] for run in runs}
    patterns: list[bytes | None] = [
        *(p for run in runs if few for p in (b'"run_id":' + canonical(run),
                                            canonical(f"runs/{run}/")[:-1])),
        *(canonical(f"{root}/")[:-1] for root in RECORD_ROOTS), b'"event":"stage_rendered"']
    for line in _lines_naming(ledger_path(reports), names, patterns):
        entry = _parsed(line)
        if entry is None:
            continue
        first_render = patterns[-1] is not None and entry.get("event") == "stage_rendered"
        if first_render or _concerns(entry, runs):
            yield entry
        if first_render:
            patterns[-1] = None  # only the first one (coverage: pages recorded since then)


def _concerns(entry: dict[str, Any], runs: set[str]) -> bool:
    if entry.get("run_id") in runs:
        return True
    files = entry.get("files")
    return isinstance(files, dict) and any(
        str(name).split("/", 1)[0] in RECORD_ROOTS or _run_of(str(name)) in runs
        for name in files)


def _run_of(name: str) -> str | None:
    """The run whose folder holds ``name`` (a path under ``reports/``), if any."""
    parts = name.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "runs" else None


def _lines_naming(path: Path, names: set[bytes], patterns: list[bytes | None]
                  ) -> Iterator[bytes]:
    """Complete lines of the file, in order, that name a run of ``names`` (:data:`RUN_NAMED`)
    or hold one of ``patterns`` (None is skipped; the list may change between blocks). Each
    block of lines is searched as a whole: one without any costs no work per line."""
    for block in _blocks(path):
        starts: set[int] = set()
        for pattern in [p for p in patterns if p is not None]:
            at = block.find(pattern)
            while at >= 0:  # each line once: go on after the end of the line found
                starts.add(block.rfind(b"\n", 0, at) + 1)
                at = block.find(pattern, block.find(b"\n", at))
        if names and names.intersection(RUN_NAMED.findall(block)):
            starts.update(block.rfind(b"\n", 0, m.start()) + 1
                          for m in RUN_NAMED.finditer(block) if m.group(1) in names)
        for start in sorted(starts):
            yield block[start:block.index(b"\n", start)]


def _blocks(path: Path) -> Iterator[bytes]:
    """The file's complete lines, about :data:`CHUNK` bytes at a time (a torn last line is
    no entry and is left out)."""
    if not path.exists():
        return
    carry = b""
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            block = carry + chunk
            cut = block.rfind(b"\n") + 1
            carry = block[cut:]
            if cut:
                yield block[:cut]


@dataclass
class Verification:
    entries: int = 0  # entries checked (with ``since``: after the checkpoint)
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    since: int | None = None  # the checkpoint's seq, for an incremental verify
    runs: set[str] = field(default_factory=set)  # runs the checked entries name or write in

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Scan:
    """A pass over ledger lines: the chain it continues, where it is, what it has seen. Entries
    starting at byte ``new_from`` or later are counted and have their files checked."""

    reports: Path
    result: Verification
    check_files: bool
    new_from: int = 0
    previous: str = GENESIS
    expected_seq: int = 1
    line: int = 0
    position: int = 0
    seen: dict[int, str | None] = field(default_factory=dict)
    known: dict[tuple[str, str], bool] = field(default_factory=dict)

    def run(self, handle: Any) -> None:
        """Check every line from the handle's position on; a torn last line ends the pass."""
        for raw in handle:
            if not self.check(raw):
                break

    def check(self, raw: bytes) -> bool:
        """Check one line; False after a torn (incomplete) last line."""
        self.line += 1
        new, self.position = self.position >= self.new_from, self.position + len(raw)
        where = f"{LEDGER_FILE} line {self.line}"
        if not raw.endswith(b"\n"):
            self.result.problems.append(f"{where}: incomplete entry (torn write)")
            return False
        try:
            entry = json.loads(raw)
        except ValueError:
            self.result.problems.append(f"{where}: not valid JSON (edited)")
            return True
        if not isinstance(entry, dict):
            self.result.problems.append(f"{where}: not a ledger entry (edited)")
            return True
        seq = entry.get("seq")
        where = f"{where} (seq {seq})"
        found = CHAIN.problems(entry, self.expected_seq, self.previous)
        if entry.get("hash") == entry_hash(entry) and raw != canonical(entry) + b"\n":
            found.insert(0, "not in canonical form (edited)")
        self.result.problems += [f"{where}: {problem}" for problem in found]
        self.previous = entry.get("hash", "")
        self.expected_seq = (seq if isinstance(seq, int) else self.expected_seq) + 1
        if isinstance(seq, int):
            self.seen[seq] = entry.get("hash")
        if new:
            self._new(entry, where)
        return True

    def _new(self, entry: dict[str, Any], where: str) -> None:
        self.result.entries += 1
        if isinstance(entry.get("run_id"), str):
            self.result.runs.add(entry["run_id"])
        files = entry.get("files")
        if isinstance(files, dict):
            self.result.runs.update(r for r in map(_run_of, map(str, files)) if r)
        if self.check_files:
            _check_files(self.reports, entry, where, self.result, self.known)


def verify(reports: Path, anchor: dict[str, Any] | None = None,
           check_files: bool = True, since: dict[str, Any] | None = None) -> Verification:
    """Recompute every hash and link, re-hash every referenced file, compare with ``anchor``.

    With ``since`` (a :func:`checkpoint`), incrementally: the bytes before it are compared
    with its digest, then only the entries after it and the files they name are checked
    (:func:`_verify_since`). Each problem names the entry (line and seq) or the file;
    verification goes on after a problem so that one report lists them all.
    """
    if since is not None:
        return _verify_since(reports, since, anchor, check_files)
    result = Verification()
    path = ledger_path(reports)
    if not path.exists():
        if anchor and anchor.get("seq", 0) > 0:
            result.problems.append(f"{LEDGER_FILE} is missing; the anchor expects "
                                   f"{anchor['seq']} entries")
        return result
    scan = _Scan(reports, result, check_files)
    with path.open("rb") as handle:
        scan.run(handle)
    if anchor:
        _check_anchor(anchor, scan.seen, result)
    return result


def _verify_since(reports: Path, since: dict[str, Any], anchor: dict[str, Any] | None,
                  check_files: bool) -> Verification:
    """Verify from a checkpoint: its prefix digest, the entry it names, then the entries
    after it. When the bytes before it changed, the chain is checked from the first entry (no
    files but the new entries') to name what changed, and the checkpoint like an anchor."""
    seq, digest, offset, prefix = _since(since)
    if anchor is not None and isinstance(anchor.get("seq"), int) and anchor["seq"] < seq:
        raise AnchorError(f"the anchor (seq {anchor['seq']}) is before the checkpoint (seq "
                          f"{seq}): a full verify checks it")
    result = Verification(since=seq)
    path = ledger_path(reports)
    if not path.exists():
        if offset > 0:
            result.problems.append(f"{LEDGER_FILE} is missing; the checkpoint expects seq "
                                   f"{seq} ({offset} bytes): truncated")
        if anchor:
            _check_anchor(anchor, {}, result)
        return result
    changed, lines = _prefix_problem(path, offset, seq, prefix)
    scan = _Scan(reports, result, check_files, new_from=offset)
    with path.open("rb") as handle:
        if changed is None:
            result.problems += _checkpoint_problems(path, offset, seq, digest)
            scan.previous, scan.expected_seq, scan.seen[seq] = digest, seq + 1, digest
            scan.line, scan.position = lines, handle.seek(offset)
        else:
            result.problems.append(changed)
        scan.run(handle)
    if changed is not None:
        _check_anchor(since, scan.seen, result, "checkpoint")
    if anchor:
        _check_anchor(anchor, scan.seen, result)
    return result


def _prefix_problem(path: Path, offset: int, seq: int, prefix: str) -> tuple[str | None, int]:
    """What is wrong with the ledger's bytes before the checkpoint (None: nothing), and how
    many lines they hold."""
    size = path.stat().st_size
    if size < offset:
        return (f"{LEDGER_FILE} has {size} bytes, fewer than the {offset} it had at the "
                f"checkpoint (seq {seq}): truncated"), 0
    actual, lines = _prefix(path, offset)
    if actual != prefix:
        return (f"{LEDGER_FILE}: the {offset} bytes up to the checkpoint (seq {seq}) do not "
                f"match its prefix_sha256: an entry up to seq {seq} was edited, removed or "
                f"rewritten"), lines
    return None, lines


def _checkpoint_problems(path: Path, offset: int, seq: int, digest: str) -> list[str]:
    """What is wrong with the entry ending at ``offset`` as the checkpoint's (seq, hash)."""
    if offset == 0:
        return [] if (seq, digest) == (0, GENESIS) else [
            f"checkpoint: at offset 0 there is no entry, but it says seq {seq}"]
    try:
        last = _tail(path, offset)[1]
    except LedgerError:
        return [f"checkpoint: offset {offset} is not the end of an entry"]
    entry = _parsed(last)
    if entry is None or entry.get("hash") != entry_hash(entry) or last != canonical(entry):
        return [f"checkpoint: the entry ending at offset {offset} does not match its hash"]
    if (entry.get("seq"), entry.get("hash")) != (seq, digest):
        return [f"checkpoint: the entry ending at offset {offset} is seq {entry.get('seq')} "
                f"({str(entry.get('hash'))[:12]}), the checkpoint says seq {seq} "
                f"({digest[:12]})"]
    return []


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


def _check_anchor(anchor: dict[str, Any], seen: dict[int, str | None], result: Verification,
                  label: str = "anchor") -> None:
    seq, digest = anchor.get("seq"), anchor.get("hash")
    if not isinstance(seq, int) or seq < 0 or not isinstance(digest, str):
        result.problems.append(f"{label}: expected {{\"seq\": N, \"hash\": \"...\"}}")
        return
    if seq == 0:
        return
    if seq not in seen:
        last = max(seen, default=0)
        result.problems.append(f"{label}: the ledger ends at seq {last} but the {label} is at "
                               f"seq {seq} (truncated)")
    elif seen[seq] != digest:
        result.problems.append(f"{label}: entry seq {seq} has hash {str(seen[seq])[:12]}, the "
                               f"{label} says {digest[:12]} (the ledger was rewritten)")
