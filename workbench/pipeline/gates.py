"""Gate stages inside a run: check the approvals, archive the decision, move the alias."""

from __future__ import annotations

from pathlib import Path

from workbench.audit.journal import JournalError
from workbench.audit.redact import Secrets
from workbench.clock import utc_now
from workbench.config import Config
from workbench.events import Bus, GateAwaiting, StageFinished, StageStarted
from workbench.governance import approvals, promotion
from workbench.governance.bundle import BundleError
from workbench.governance.trust import TrustError
from workbench.identity import Identity
from workbench.pipeline.recorder import Recorder
from workbench.pipeline.stage_run import run_archived_stage
from workbench.project import Project
from workbench.run_record import StageStatus


def run_gate(project: Project, config: Config, recorder: Recorder, bus: Bus, name: str,
             actor: Identity, secrets: Secrets) -> None:
    """Decide a gate stage. Awaiting: the stage waits and nothing runs. Approved or rejected:
    the gate's notebook runs headless to archive the evidence and the decision; an approval
    then moves the environment's alias."""
    record = recorder.record
    stage = config.stage(name)
    entry = record.stages[name]
    environment = stage.gate
    if environment is None:
        raise ValueError(f"stage {name!r} is not a gate")
    entry.started = utc_now()
    try:
        verdict, _bundle = approvals.status(project, record, environment)
    except (BundleError, JournalError, TrustError) as exc:
        _finish(recorder, bus, name, "failed", f"gate {name} ({environment}): {exc}")
        return
    entry.gate = verdict.model_dump()
    message = verdict.describe(record.id)
    if verdict.state == "awaiting":
        entry.status, entry.error = "awaiting_approval", None
        recorder.save()
        bus.emit(GateAwaiting(stage=name, environment=environment, message=message))
        return
    entry.notebook = f"{name}.ipynb"
    entry.status = "running"
    recorder.save()
    bus.emit(StageStarted(stage=name, notebook=stage.notebook))
    result, archived = run_archived_stage(project, record, name, stage, secrets, environment)
    entry.outputs, entry.duration_s = result.outputs, round(result.duration_s, 3)
    shown = result.outputs.get("decision")
    if not result.succeeded:
        _finish(recorder, bus, name, "failed", result.error, archived)
    elif shown is not None and shown != verdict.state:
        _finish(recorder, bus, name, "failed", f"the gate notebook recorded {shown!r} but the "
                f"approvals say {verdict.state!r}", archived)
    elif verdict.state == "rejected":
        _finish(recorder, bus, name, "failed", message, archived)
    else:
        move = promotion.move_alias(project, record, actor, verdict)
        entry.gate = {**verdict.model_dump(), "alias_move": move["seq"]}
        recorder.alias_moved(move)
        _finish(recorder, bus, name, "succeeded", None, archived)


def _finish(recorder: Recorder, bus: Bus, name: str, status: StageStatus, error: str | None,
            archived: Path | None = None) -> None:
    entry = recorder.record.stages[name]
    entry.status, entry.error, entry.finished = status, error, utc_now()
    recorder.stage(name, archived)
    bus.emit(StageFinished(stage=name, status=status, duration_s=entry.duration_s or 0.0,
                           error=error))
