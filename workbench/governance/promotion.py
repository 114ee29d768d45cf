"""Alias moves: an environment's alias points at a version only after its gate passed.

Every move is recorded in ``reports/runs/<run-id>/promotions/`` (append-only, see
:mod:`workbench.audit.journal`) and in the ledger: who, when, from which version to which, and
on which approvals.
"""

from __future__ import annotations

from typing import Any

from workbench import run_record
from workbench.audit import journal
from workbench.clock import utc_now
from workbench.governance.approvals import Verdict
from workbench.identity import Identity
from workbench.project import Project
from workbench.records import AliasMoveRecord
from workbench.run_record import RunRecord

PROMOTIONS_DIR = "promotions"


def record_move(project: Project, run_id: str, *, alias: str, model: str,
                from_version: str | None, to_version: str, actor: Identity, via: str,
                approvals: list[int], bundle_digest: str | None) -> dict[str, Any]:
    """Record an alias move (the record folder, then the ledger); the stored entry."""
    move = AliasMoveRecord(run_id=run_id, model=model, alias=alias, from_version=from_version,
                           to_version=to_version, actor=actor, via=via, time=utc_now(),
                           approvals=approvals, bundle_digest=bundle_digest)
    entry, _ = journal.append_recorded(
        project.reports, run_record.run_dir(project, run_id) / PROMOTIONS_DIR, move.body(),
        event="alias_move", actor=actor.model_dump(), run_id=run_id,
        ledger_data=lambda _stored: {"model": model, "alias": alias,
                                     "from_version": from_version, "to_version": to_version,
                                     "approvals": approvals})
    return entry


def move_alias(project: Project, record: RunRecord, actor: Identity, verdict: Verdict
               ) -> dict[str, Any]:
    """Point ``environment``'s alias at the run's model version; tag and record the move."""
    from workbench.registry.aliases import move_alias as move_registry_alias
    from workbench.registry.client import client_for

    environment = verdict.environment
    if record.model_version is None:
        raise RuntimeError(f"run {record.id} has no model version to promote")
    name, version = record.model_version.name, record.model_version.version
    client = client_for(record.tracking_uri)
    previous = move_registry_alias(client, record.tracking_uri, name, environment, version)
    for key, value in {"approved_by": ",".join(verdict.approved_by),
                       "bundle": verdict.bundle_digest, "run": record.id}.items():
        client.set_model_version_tag(name, version, f"workbench.{environment}.{key}", value)
    return record_move(project, record.id, alias=environment, model=name,
                       from_version=previous, to_version=version, actor=actor,
                       via=f"gate {verdict.gate}", approvals=verdict.approval_seqs,
                       bundle_digest=verdict.bundle_digest)


def read_moves(project: Project, run_id: str) -> list[AliasMoveRecord]:
    return [AliasMoveRecord.model_validate(entry)
            for entry in journal.read(run_record.run_dir(project, run_id) / PROMOTIONS_DIR)]
