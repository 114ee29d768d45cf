"""Archiving an executed notebook: staged outside ``reports/``, redacted, written, recorded.

Papermill writes each stage's notebook to ``.workbench/staging/<run-id>/`` (it writes parameters
and outputs as they happen, so the staged file may hold a secret). Only the redacted text ever
reaches ``reports/runs/<run-id>/``; the ledger then records it with its digest.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from workbench.atomic import write_new
from workbench.audit import ledger
from workbench.audit.redact import Secrets, redact_notebook_text
from workbench.digests import file_sha256
from workbench.pipeline import state
from workbench.project import Project

STAGING = "staging"


def staging_path(project: Project, run_id: str, notebook: str) -> Path:
    path = project.state / STAGING / run_id / notebook
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def attempt_name(stage: str, number: int) -> str:
    """The archived name of an attempt that did not count (retried, or cut short)."""
    return f"{stage}.attempt-{number}.ipynb"


def archive_notebook(project: Project, run_id: str, staged: Path, secrets: Secrets,
                     name: str | None = None) -> Path:
    """Move a staged notebook into the run's folder (as ``name``, default its own name) with
    every secret redacted. An archived file is never replaced: a name already taken raises
    :class:`FileExistsError`.

    Raises :class:`~workbench.audit.redact.SecretError` (and deletes the staged copy) if a secret
    would remain; nothing reaches the archive then.
    """
    target = state.run_dir(project, run_id) / (name or staged.name)
    try:
        text = redact_notebook_text(staged.read_text(encoding="utf-8"), secrets,
                                    f"{run_id}/{target.name}")
        write_new(target, text.encode("utf-8"))
    finally:
        staged.unlink(missing_ok=True)
    return target


def remove_staging(project: Project, run_id: str) -> None:
    """Remove the run's staging folder once the run is over, if nothing is left in it.

    Never done while stages run: with stages in parallel, one stage archiving would otherwise
    remove the folder that another is about to write its first save into."""
    folder = project.state / STAGING / run_id
    if folder.is_dir() and not any(folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


def record_stage(project: Project, record: state.RunRecord, name: str,
                 archived: Path | None) -> dict[str, Any]:
    """The ledger entry for a stage that ran (or was reused)."""
    entry = record.stages[name]
    data = {"stage": name, "status": entry.status, "duration_s": entry.duration_s,
            "error": entry.error, "notebook": entry.notebook,
            "reused_from": entry.reused_from}
    if entry.cache_key:
        data["cache_key"] = entry.cache_key
    if entry.reuse:
        data["reuse"] = entry.reuse
    if entry.status == "reused":  # the pointer to the original, with the digest it has now
        original = state.notebook_path(project, record, name)
        if original is not None and original.is_file():
            data["notebook_sha256"] = file_sha256(original)
    if entry.status != "reused":
        data.update(failure=entry.failure, attempt=len(entry.attempts) + 1)
    event = "stage_reused" if entry.status == "reused" else "stage_executed"
    actor = entry.actor.model_dump() if entry.actor else None
    return ledger.append(project.reports, event, actor=actor, run_id=record.id, data=data,
                         files=[archived] if archived is not None else [])


def record_attempt(project: Project, record: state.RunRecord, name: str,
                   attempt: state.Attempt) -> dict[str, Any]:
    """The ledger entry for an attempt that did not count, with its archived notebook."""
    entry = record.stages[name]
    archived = state.run_dir(project, record.id) / attempt.notebook if attempt.notebook \
        else None
    data = {"stage": name, "attempt": attempt.number, "failure": attempt.failure,
            "error": attempt.error, "notebook": attempt.notebook}
    actor = entry.actor.model_dump() if entry.actor else None
    return ledger.append(project.reports, "stage_attempt", actor=actor, run_id=record.id,
                         data=data, files=[archived] if archived is not None else [])


def publish_stage(project: Project, record: state.RunRecord, name: str,
                  archived: Path | None) -> list[str]:
    """Everything that follows archiving a stage: the ledger entry, the HTML rendering and the
    MLflow artifacts. Returns warnings: rendering and MLflow are never allowed to fail a
    release whose record is safe in the archive and the ledger."""
    entry = record_stage(project, record, name, archived)
    if archived is None:
        return []
    return publish_views(project, record, name, archived, entry["seq"])


def publish_views(project: Project, record: state.RunRecord, name: str, archived: Path,
                  seq: int) -> list[str]:
    """The HTML rendering and the MLflow artifacts of a stage already in the ledger (entry
    ``seq``); returns warnings instead of raising. Safe to run beside the next stage."""
    warnings: list[str] = []
    files = [archived]
    try:
        files.append(render_stage(project, record, name, archived))
    except Exception as exc:  # noqa: BLE001 - reported, the archive is already complete
        warnings.append(f"stage {name}: HTML rendering failed: {exc}")
    try:
        from workbench.audit.mlflow_log import log_stage

        log_stage(record, name, files, seq)
    except Exception as exc:  # noqa: BLE001 - reported, the archive is already complete
        warnings.append(f"stage {name}: logging to MLflow failed: {exc}")
    return warnings


def render_stage(project: Project, record: state.RunRecord, name: str, archived: Path) -> Path:
    """``<stage>.html`` beside the archived notebook, through the project's offline template."""
    from workbench.reports.render import copy_static, render_notebook

    copy_static(project.reports)
    target = archived.with_suffix(".html")
    render_notebook(archived, target, static_url="../../static",
                    title=f"{record.id} / {name}", run_id=record.id, stage=name)
    return target
