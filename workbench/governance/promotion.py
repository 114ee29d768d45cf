"""Alias moves: an environment's alias points at a version only after its gate passed.

Every move is recorded in ``reports/runs/<run-id>/promotions/`` (append-only, see
:mod:`journal`): who, when, from which version to which, and on which approvals.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from workbench.audit import ledger
from workbench.governance import journal
from workbench.governance.approvals import Verdict
from workbench.governance.identity import Identity
from workbench.pipeline import state
from workbench.project import Project

PROMOTIONS_DIR = "promotions"


def record_move(project: Project, run_id: str, *, alias: str, model: str,
                from_version: str | None, to_version: str, actor: Identity, via: str,
                approvals: list[int], bundle_digest: str | None) -> dict[str, Any]:
    folder = state.run_dir(project, run_id) / PROMOTIONS_DIR
    entry = journal.append(folder, {
        "kind": "alias_move",
        "run_id": run_id,
        "model": model,
        "alias": alias,
        "from_version": from_version,
        "to_version": to_version,
        "actor": actor.model_dump(),
        "via": via,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "approvals": approvals,
        "bundle_digest": bundle_digest,
    })
    ledger.append(project.reports, "alias_move", actor=actor.model_dump(), run_id=run_id,
                  data={"model": model, "alias": alias, "from_version": from_version,
                        "to_version": to_version, "approvals": approvals},
                  files=[folder / f"{entry['seq']:04d}.json"])
    return entry


def move_alias(project: Project, record: state.RunRecord, actor: Identity, verdict: Verdict
               ) -> dict[str, Any]:
    """Point ``environment``'s alias at the run's model version; tag and record the move."""
    from mlflow import MlflowClient

    environment = verdict.environment
    if record.model_version is None:
        raise RuntimeError(f"run {record.id} has no model version to promote")
    name, version = record.model_version.name, record.model_version.version
    from workbench.registry.aliases import move_alias

    client = MlflowClient(tracking_uri=record.tracking_uri, registry_uri=record.tracking_uri)
    previous = move_alias(client, record.tracking_uri, name, environment, version)
    for key, value in {"approved_by": ",".join(verdict.approved_by),
                       "bundle": verdict.bundle_digest, "run": record.id}.items():
        client.set_model_version_tag(name, version, f"workbench.{environment}.{key}", value)
    return record_move(project, record.id, alias=environment, model=name,
                       from_version=previous, to_version=version, actor=actor,
                       via=f"gate {verdict.gate}", approvals=verdict.approval_seqs,
                       bundle_digest=verdict.bundle_digest)


def read_moves(project: Project, run_id: str) -> list[dict[str, Any]]:
    return journal.read(state.run_dir(project, run_id) / PROMOTIONS_DIR)
