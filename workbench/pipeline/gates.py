"""Gate stages inside a run: check the approvals, archive the decision, move the alias."""

from __future__ import annotations

from pathlib import Path

from workbench.audit.journal import JournalError
from workbench.audit.redact import Secrets
from workbench.clock import utc_now
from workbench.config import Config
from workbench.events import Bus, GateAwaiting, StageFinished, StageStarted
from workbench.governance import approvals, attestation, promotion
from workbench.governance.attestation import AttestationError
from workbench.governance.bundle import Bundle, BundleError
from workbench.governance.project_key import AttestationKeyError, SigningKey, signing_key
from workbench.governance.trust import TrustError
from workbench.identity import Identity
from workbench.pipeline.recorder import Recorder
from workbench.pipeline.stage_run import run_archived_stage
from workbench.project import Project
from workbench.run_record import RunRecord, StageStatus


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
    key: SigningKey | None = None
    files: list[tuple[str, str]] = []
    if verdict.state == "approved":  # what the attestation needs, before anything runs
        try:
            key, files = _prepare_attestation(project, record, bus, name, _bundle)
        except (AttestationKeyError, AttestationError) as exc:
            _finish(recorder, bus, name, "failed", f"gate {name} ({environment}): {exc}")
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
        gate = entry.gate = {**verdict.model_dump(), "alias_move": move["seq"]}
        recorder.alias_moved(move)
        try:
            attested = attestation.attest(project, approvals.run_config(record), record,
                                          verdict, _bundle, move, actor, key, files)
        except AttestationError as exc:
            _finish(recorder, bus, name, "failed", f"gate {name} ({environment}): the alias "
                    f"moved, but {exc}", archived)
            return
        gate["attestation"] = attested.path.name
        _log_attestation(bus, name, record, environment, attested)
        _finish(recorder, bus, name, "succeeded", None, archived)


def _prepare_attestation(project: Project, record: RunRecord, bus: Bus, name: str,
                         bundle: Bundle) -> tuple[SigningKey | None, list[tuple[str, str]]]:
    """The signing key and the model's files, checked before the gate's notebook runs and the
    alias moves (a key configured but unusable fails the gate here)."""
    settings = approvals.run_config(record).pipeline.attestation
    key = signing_key(project, approvals.run_config(record))
    if key is None and settings.public_key:
        bus.warn(f"the attestation of this release will be unsigned: "
                 f"${settings.private_key_env} is not set", stage=name)
    return key, attestation.artifact_files(record, bundle)


def _log_attestation(bus: Bus, name: str, record: RunRecord, environment: str,
                     attested: attestation.Attested) -> None:
    """The attestation as an MLflow artifact: a warning if that fails (the archive and the
    ledger already hold it)."""
    try:
        attestation.log_to_mlflow(record, environment, attested)
    except Exception as exc:  # noqa: BLE001 - reported; the archived copy is the record
        bus.warn(f"attestation {attested.path.name}: logging to MLflow failed: {exc}",
                 stage=name)


def _finish(recorder: Recorder, bus: Bus, name: str, status: StageStatus, error: str | None,
            archived: Path | None = None) -> None:
    entry = recorder.record.stages[name]
    entry.status, entry.error, entry.finished = status, error, utc_now()
    recorder.stage(name, archived)
    bus.emit(StageFinished(stage=name, status=status, duration_s=entry.duration_s or 0.0,
                           error=error))
