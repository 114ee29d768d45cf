"""What ``workbench audit verify`` checks beyond the ledger's own chain: that the archive holds
nothing the ledger does not account for, and that every record beside it is the one recorded.

- every file of a record folder (``runs/<id>/approvals/``, ``promotions/``, ``rollbacks/``)
  must be named by a ledger entry with its current digest: a record written by hand has none;
- every run record (``runs/<id>/run.json``) must have the digest the run's last outcome entry
  recorded (``record_sha256``), unless the run is still running;
- every other file under a run folder must be named by a ledger entry (notebooks, attempts,
  rendered pages), apart from what is regenerated or private: the site's ``index.html``, the
  run's lock, the record folders' locks and the reviewers' working copies in ``reviews/``;
- every approver's SSH signature must verify (:mod:`workbench.audit.approval_signatures`);
- the decisions on canaries held at a manual step (``canary/<env>/``, one journal per
  environment) are record folders too: every file named by a ledger entry with its current
  digest; a signed accepted decision of a rollout that ran in a run must verify against that
  run's ``allowed_signers`` (one outside a run has no snapshot to check it against offline: a
  note), and an unsigned one must not be accepted where that run's policy requires signatures.

Archives written before a check existed (no ``record_sha256``, pages rendered before they were
recorded) are not failed by it: each is counted as predating that check.

An incremental verify (``--since``) checks only the folders of the runs with entries after its
checkpoint (and ``rollbacks/``, ``drift/`` and ``canary/`` as always), with an index of just what
those need (``ledger.index(reports, runs)``; the entries naming ``canary/`` files are found by
a search of the ledger's bytes when that index leaves them out).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.audit import approval_signatures, ledger
from workbench.audit.ledger import LedgerIndex
from workbench.digests import file_sha256

RECORD_FOLDERS = ("approvals", "promotions")
UNRECORDED = frozenset({"index.html", ".run.lock", "run.json"})  # regenerated, or checked apart
LOCKS = frozenset({".lock"})
REVIEWS = "reviews"  # a reviewer's working copy of the approval notebook, saved as they work
CANARY = "canary"  # canary/<env>/: decisions on canaries held at a manual step


@dataclass
class Coverage:
    problems: list[str] = field(default_factory=list)
    predating: dict[str, int] = field(default_factory=dict)  # check -> runs that predate it
    notes: list[str] = field(default_factory=list)  # worth a reader's eye, not a failure


def check(reports: Path, index: LedgerIndex, runs: set[str] | None = None) -> Coverage:
    """Every problem of the archive's coverage by the ledger (see the module doc); with
    ``runs``, of those runs' folders only (an incremental verify: the runs with entries after
    its checkpoint), and of the top-level record folders as always."""
    found = Coverage()
    _record_folder(reports, reports / "rollbacks", index, found)
    _record_folder(reports, reports / "drift", index, found)
    _canary_folders(reports, index, found, incremental=runs is not None)
    renders = [e.get("seq") or 0 for entries in index.by_run.values() for e in entries
               if e.get("event") == "stage_rendered"]
    first_render = min(renders, default=None)  # pages recorded since this ledger entry
    for folder in _run_folders(reports / "runs", runs):
        _run_folder(reports, folder, index, found, first_render)
    return found


def _run_folders(root: Path, runs: set[str] | None) -> list[Path]:
    """The run folders to check: every one, or those of ``runs`` that exist (a name that is
    no plain folder name, as a forged entry could give, is none)."""
    if runs is None:
        found = sorted(root.iterdir()) if root.is_dir() else []
    else:
        found = [root / name for name in sorted(runs) if name and "/" not in name
                 and "\\" not in name and name not in (".", "..")]
    return [f for f in found if f.is_dir() and not f.name.startswith(".")]


def _count(found: Coverage, what: str) -> None:
    found.predating[what] = found.predating.get(what, 0) + 1


def _relative(reports: Path, path: Path) -> str:
    return path.relative_to(reports).as_posix()


def _record_folder(reports: Path, folder: Path, index: LedgerIndex, found: Coverage) -> None:
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name in LOCKS or path.is_dir():
            continue
        name = _relative(reports, path)
        recorded = index.recorded(name)
        if recorded is None:
            found.problems.append(f"reports/{name}: in no ledger entry (a record written by "
                                  f"hand, or one the ledger lost)")
        elif file_sha256(path) != recorded[0]:
            found.problems.append(f"reports/{name}: content changed since the ledger recorded it "
                                  f"(seq {recorded[1]})")


def _run_folder(reports: Path, folder: Path, index: LedgerIndex, found: Coverage,
                first_render: int | None) -> None:
    for sub in RECORD_FOLDERS:
        _record_folder(reports, folder / sub, index, found)
    signed = approval_signatures.check(reports, folder)
    found.problems += signed.problems
    found.notes += signed.notes
    _run_record(reports, folder, index, found)
    for path in sorted(folder.iterdir()):
        if path.is_dir() or path.name in UNRECORDED or path.name.startswith("."):
            continue
        name = _relative(reports, path)
        if index.recorded(name) is not None:
            continue  # its digest is checked with the entry that names it
        notebook = index.recorded(_relative(reports, path.with_suffix(".ipynb")))
        if path.suffix == ".html" and notebook is not None and (
                first_render is None or notebook[1] < first_render):
            _count(found, "pages recorded in the ledger")  # rendered before pages were
            continue
        found.problems.append(f"reports/{name}: in no ledger entry (nothing the run recorded "
                              f"wrote it)")
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        if path.name in (*RECORD_FOLDERS, REVIEWS):
            continue
        found.problems.append(f"reports/{_relative(reports, path)}/: a folder no run writes")


def _config_snapshot(reports: Path, folder: Path, index: LedgerIndex, found: Coverage) -> None:
    """The run record's configuration snapshot must be the one the run started with."""
    import json

    from workbench.config import sources_digest

    started = next(iter(index.of_run(folder.name, "run_started")), None)
    try:
        data = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        sources, overrides = data["config"], data.get("overrides") or {}
        actual = sources_digest(sources)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        found.problems.append(f"reports/{_relative(reports, folder)}/run.json: not a readable "
                              f"run record")
        return
    recorded = (started or {}).get("data", {}).get("config_hash")
    if started is not None and recorded != actual:
        found.problems.append(f"reports/{_relative(reports, folder)}/run.json: its configuration "
                              f"snapshot is not the one the run started with (seq "
                              f"{started.get('seq')})")
    recorded_overrides = ((started or {}).get("data") or {}).get("overrides") or {}
    if started is not None and recorded_overrides != overrides:
        found.problems.append(f"reports/{_relative(reports, folder)}/run.json: its parameter "
                              f"overrides (-p) are not the ones the run started with (seq "
                              f"{started.get('seq')})")


def _run_record(reports: Path, folder: Path, index: LedgerIndex, found: Coverage) -> None:
    path = folder / "run.json"
    if not path.is_file():
        return
    digests = [(e.get("seq"), (e.get("data") or {}).get("record_sha256"))
               for e in index.of_run(folder.name)]
    digests = [(seq, digest) for seq, digest in digests if digest]
    if not digests:
        _count(found, "run record digests")
        return
    import json

    try:
        status = json.loads(path.read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    _config_snapshot(reports, folder, index, found)
    seq, digest = digests[-1]
    if status == "running":
        _count(found, "a recorded outcome (running, or interrupted)")  # rewritten after every
        return  # stage until the run records its outcome
    if file_sha256(path) != digest:
        found.problems.append(f"reports/{_relative(reports, path)}: content changed since the "
                              f"run recorded it (seq {seq})")


def _canary_folders(reports: Path, index: LedgerIndex, found: Coverage,
                    incremental: bool) -> None:
    """Each environment's canary decisions: covered by the ledger, signatures verified."""
    root = reports / CANARY
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        return
    if incremental and CANARY not in getattr(ledger, "RECORD_ROOTS", ()):
        index = _with_entries_naming(reports, CANARY, index)
    for folder in folders:
        _record_folder(reports, folder, index, found)
        _canary_signatures(reports, folder, found)
    for path in sorted(p for p in root.iterdir() if not p.is_dir()):
        if path.name not in LOCKS:
            found.problems.append(f"reports/{_relative(reports, path)}: in no ledger entry "
                                  f"(canary/ holds one folder per environment)")


def _with_entries_naming(reports: Path, root: str, index: LedgerIndex) -> LedgerIndex:
    """``index`` plus the files of every ledger entry naming a file under ``root/`` (the lines
    are found by a search of the ledger's bytes; only those are parsed)."""
    pattern = json.dumps(f"{root}/")[:-1].encode()  # how canonical JSON starts such a name
    files = dict(index.files)
    path = ledger.ledger_path(reports)
    if not path.exists():
        return index
    carry = b""
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(ledger.CHUNK), b""):
            block = carry + chunk
            cut = block.rfind(b"\n") + 1
            carry, block = block[cut:], block[:cut]
            at = block.find(pattern)
            while at >= 0:
                start, end = block.rfind(b"\n", 0, at) + 1, block.find(b"\n", at)
                _note_files(block[start:end], root, files)
                at = block.find(pattern, end)
    return LedgerIndex(files=files, by_run=index.by_run)


def _note_files(line: bytes, root: str, files: dict[str, tuple[str, int]]) -> None:
    try:
        entry = json.loads(line)
    except ValueError:
        return
    named = entry.get("files") if isinstance(entry, dict) else None
    if isinstance(named, dict):
        for name, digest in named.items():
            if str(name).startswith(f"{root}/"):
                files[str(name)] = (str(digest), int(entry.get("seq") or 0))


def _canary_signatures(reports: Path, folder: Path, found: Coverage) -> None:
    """The SSH signatures of one environment's accepted canary decisions: the rules of
    :mod:`workbench.audit.approval_signatures`, against the rollout's run's snapshot."""
    from workbench.audit import approval_signatures

    snapshots: dict[str, tuple[str, Any]] = {}
    checked = approval_signatures.Found()
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # named by the coverage check
        if not isinstance(record, dict) or record.get("accepted") is not True:
            continue  # a refused attempt never counted
        name = f"reports/{_relative(reports, path)}"
        run_id = record.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            if record.get("signature") is not None:
                approver = record.get("approver") if isinstance(record.get("approver"),
                                                                dict) else {}
                found.notes.append(f"{name}: signed by {str((approver or {}).get('name'))!r} "
                                   f"during a rollout outside a run: no configuration snapshot "
                                   f"to check it against offline")
            continue
        if run_id not in snapshots:
            snapshots[run_id] = approval_signatures.snapshot(reports / "runs" / run_id)
        signers, gates = snapshots[run_id]
        # what governance.canary_control.signed_message signs: the step digest as the bundle
        approval_signatures.check_record(
            name, record, signers, gates, checked,
            signed={**record, "bundle_digest": record.get("step_digest"), "diff_digest": None})
    found.problems += checked.problems
    found.notes += checked.notes
