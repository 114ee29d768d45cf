"""Archiving an executed notebook: staged outside ``reports/``, redacted, written, recorded.

Papermill writes each stage's notebook to ``.workbench/staging/<run-id>/`` (it writes parameters
and outputs as they happen, so the staged file may hold a secret). Only the redacted text ever
reaches ``reports/runs/<run-id>/``; the ledger then records it with its digest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from workbench import run_record
from workbench.atomic import write_new
from workbench.audit.redact import Secrets, redact_notebook_text
from workbench.project import Project

STAGING = "staging"


def staging_path(project: Project, run_id: str, notebook: str) -> Path:
    path = project.local_state / STAGING / run_id / notebook
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
    target = run_record.run_dir(project, run_id) / (name or staged.name)
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
    folder = project.local_state / STAGING / run_id
    if folder.is_dir() and not any(folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)
