"""What a gate trusts about a run: what the ledger recorded, never a file anyone can edit.

``run.json`` is rewritten after every stage; whoever can write ``reports/`` can edit it, and an
approval file can be written by hand. So before a gate counts anything:

- the run's configuration snapshot (its approval policy among it) must have the digest the
  ledger's ``run_started`` entry recorded; the requester is that entry's actor;
- the trainer is also taken from the ledger: the actor of the stage that logged the model;
- an approval counts only if the ledger holds an ``approval`` entry naming its file with the
  file's current digest (a file written by hand has none);
- every archived notebook the release bundle binds must have the digest the ledger recorded
  when it was archived (evidence edited after the fact is refused, by name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from workbench import run_record
from workbench.audit import ledger
from workbench.config import Config, sources_digest
from workbench.digests import file_sha256
from workbench.errors import EXIT_FAILED, WorkbenchError
from workbench.identity import Identity
from workbench.project import Project
from workbench.records import ApprovalRecord
from workbench.run_record import RunRecord

APPROVALS_DIR = "approvals"


class TrustError(WorkbenchError, RuntimeError):
    """A file the gate relies on disagrees with what the ledger recorded."""

    exit_code = EXIT_FAILED


@dataclass
class Trusted:
    """A run as the ledger vouches for it."""

    requester: Identity | None
    trainers: list[Identity] = field(default_factory=list)
    index: ledger.LedgerIndex = field(default_factory=ledger.LedgerIndex)

    def ledgered(self, project: Project, records: list[ApprovalRecord], run_id: str
                 ) -> set[int]:
        """The approval records (seq) the ledger holds with their file's current digest."""
        folder = run_record.run_dir(project, run_id) / APPROVALS_DIR
        found = set()
        for record in records:
            path = folder / f"{record.seq:04d}.json"
            recorded = self.index.recorded(_relative(project, path))
            if recorded is not None and path.is_file() and recorded[0] == file_sha256(path):
                found.add(record.seq)
        return found

    def check_evidence(self, project: Project, path: Path) -> None:
        """Refuse an archived file whose digest is not the one the ledger recorded for it."""
        relative = _relative(project, path)
        recorded = self.index.recorded(relative)
        if recorded is None:
            raise TrustError(f"reports/{relative} is in no ledger entry: it was not archived "
                             f"by a run, and a release cannot bind to it")
        if file_sha256(path) != recorded[0]:
            raise TrustError(f"reports/{relative} changed since the ledger recorded it (seq "
                             f"{recorded[1]}): the evidence was edited; `workbench audit "
                             f"verify` names every change")


def _relative(project: Project, path: Path) -> str:
    return path.resolve().relative_to(project.reports.resolve()).as_posix()


def trusted(project: Project, record: RunRecord, config: Config) -> Trusted:
    """Check ``record``'s configuration snapshot against the ledger and take the requester and
    the trainers from it; :class:`TrustError` names a mismatch."""
    index = ledger.index(project.reports)
    started = index.first(record.id, "run_started")
    if started is None:
        raise TrustError(f"run {record.id} has no run_started entry in the ledger; its record "
                         f"cannot be trusted (`workbench audit verify`)")
    recorded = (started.get("data") or {}).get("config_hash")
    actual = sources_digest(config.sources)
    if recorded != actual:
        raise TrustError(f"reports/runs/{record.id}/run.json: its configuration snapshot has "
                         f"digest {actual[:12]}, but the ledger recorded {str(recorded)[:12]} "
                         f"when the run started (seq {started.get('seq')}): the snapshot (and "
                         f"the approval policy in it) was edited")
    overrides = (started.get("data") or {}).get("overrides") or {}
    if overrides != record.overrides:
        raise TrustError(f"reports/runs/{record.id}/run.json: its parameter overrides (-p) are "
                         f"not the ones the ledger recorded when the run started (seq "
                         f"{started.get('seq')}): the record was edited")
    requester = _identity(started.get("actor"))
    return Trusted(requester=requester, trainers=_trainers(record, index), index=index)


def _identity(data: object) -> Identity | None:
    try:
        return Identity.model_validate(data) if isinstance(data, dict) else None
    except ValueError:
        return None


def _trainers(record: RunRecord, index: ledger.LedgerIndex) -> list[Identity]:
    """Who trained the run's model: the record's word, and the actor the ledger recorded for
    each stage that logged an MLflow run (in the run that executed it)."""
    found = [record.trained_by] if record.trained_by else []
    for name, entry in record.stages.items():
        if not entry.output("trained_run"):
            continue
        source = entry.reused_from or record.id
        for executed in index.of_run(source, "stage_executed"):
            data = executed.get("data") or {}
            actor = _identity(executed.get("actor"))
            if data.get("stage") == name and data.get("status") == "succeeded" and actor:
                found.append(actor)
    unique: dict[str, Identity] = {}
    for identity in found:
        unique.setdefault(f"{identity.person()}|{identity.name}", identity)
    return list(unique.values())
