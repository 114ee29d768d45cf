"""Gate stages inside a run: check the approvals, archive the decision, move the alias."""

from __future__ import annotations

from pathlib import Path

from workbench.audit import archive
from workbench.audit.redact import Secrets
from workbench.config import Config
from workbench.governance import approvals, promotion
from workbench.governance.bundle import BundleError
from workbench.governance.identity import Identity
from workbench.governance.journal import JournalError
from workbench.pipeline import state
from workbench.pipeline.execute import run_archived_stage
from workbench.progress import Reporter, make_event
from workbench.project import Project


def run_gate(project: Project, config: Config, record: state.RunRecord, name: str,
             actor: Identity, report: Reporter, secrets: Secrets) -> None:
    """Decide a gate stage. Awaiting: the stage waits and nothing runs. Approved or rejected:
    the gate's notebook runs headless to archive the evidence and the decision; an approval
    then moves the environment's alias."""
    stage = config.stage(name)
    entry = record.stages[name]
    environment = stage.gate
    if environment is None:
        raise ValueError(f"stage {name!r} is not a gate")
    entry.started = state.now()
    try:
        verdict, _bundle = approvals.status(project, record.id, environment)
    except (BundleError, JournalError) as exc:
        _finish(project, record, name, "failed", f"gate {name} ({environment}): {exc}", report)
        return
    entry.gate = verdict.model_dump()
    message = verdict.describe(record.id)
    if verdict.state == "awaiting":
        entry.status, entry.error = "awaiting_approval", None
        state.save(project, record)
        report(make_event("gate_awaiting", stage=name, environment=environment,
                          message=message))
        return
    entry.notebook = f"{name}.ipynb"
    entry.status = "running"
    state.save(project, record)
    report(make_event("stage_started", stage=name, notebook=stage.notebook))
    result, archived = run_archived_stage(project, record, name, stage, secrets)
    entry.outputs, entry.duration_s = result.outputs, round(result.duration_s, 3)
    shown = result.outputs.get("decision")
    if not result.succeeded:
        _finish(project, record, name, "failed", result.error, report, archived)
    elif shown is not None and shown != verdict.state:
        _finish(project, record, name, "failed", f"the gate notebook recorded {shown!r} but "
                f"the approvals say {verdict.state!r}", report, archived)
    elif verdict.state == "rejected":
        _finish(project, record, name, "failed", message, report, archived)
    else:
        move = promotion.move_alias(project, record, actor, verdict)
        entry.gate = {**verdict.model_dump(), "alias_move": move["seq"]}
        report(make_event("alias_moved", alias=move["alias"], model=move["model"],
                          from_version=move["from_version"], to_version=move["to_version"]))
        _finish(project, record, name, "succeeded", None, report, archived)


def _finish(project: Project, record: state.RunRecord, name: str, status: state.StageStatus,
            error: str | None, report: Reporter, archived: Path | None = None) -> None:
    entry = record.stages[name]
    entry.status, entry.error, entry.finished = status, error, state.now()
    state.save(project, record)
    for warning in archive.publish_stage(project, record, name, archived):
        report(make_event("warning", stage=name, message=warning))
    report(make_event("stage_finished", stage=name, status=status,
                      duration_s=entry.duration_s or 0.0, error=error))


def record_alias_output(project: Project, record: state.RunRecord, name: str,
                        actor: Identity) -> None:
    """Record an alias a stage moved itself (``alias_move`` output: alias, from, to)."""
    move = record.stages[name].outputs.get("alias_move")
    if not isinstance(move, dict) or not move.get("alias") or record.model_version is None:
        return
    previous = move.get("from")
    promotion.record_move(project, record.id, alias=str(move["alias"]),
                          model=record.model_version.name,
                          from_version=str(previous) if previous else None,
                          to_version=str(move.get("to")), actor=actor, via=f"stage {name}",
                          approvals=[], bundle_digest=None)
