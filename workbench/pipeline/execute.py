"""One stage of a run, end to end: parameters checked for secrets, executed through papermill
into the staging folder, outputs and errors redacted, the notebook archived."""

from __future__ import annotations

from pathlib import Path

from workbench.audit import archive
from workbench.audit.mlflow_guard import leaked_in_run
from workbench.audit.redact import SecretError, Secrets
from workbench.config import Stage
from workbench.execution.executors import StageExecutor
from workbench.execution.stage import CellCallback, StageResult, execute_stage
from workbench.pipeline import state
from workbench.project import Project


def run_archived_stage(project: Project, record: state.RunRecord, name: str, stage: Stage,
                       secrets: Secrets, on_cell: CellCallback | None = None,
                       executor: StageExecutor = execute_stage
                       ) -> tuple[StageResult, Path | None]:
    """Execute ``name`` and archive its notebook; return the result and the archived path
    (None when nothing could be archived)."""
    entry = record.stages[name]
    try:
        secrets.check_parameters(name, entry.parameters)
    except SecretError as exc:
        entry.parameters = secrets.redact(entry.parameters)  # never kept in run.json either
        return StageResult(succeeded=False, error=str(exc)), None
    staged = archive.staging_path(project, record.id, entry.notebook or f"{name}.ipynb")
    result = executor(project.root / stage.notebook, staged, entry.parameters,
                           stage.outputs, cwd=project.root, timeout=stage.timeout,
                           on_cell=on_cell)
    result.outputs = secrets.redact(result.outputs)
    result.error = secrets.redact_text(result.error) if result.error else result.error
    if not staged.exists():
        return result, None
    try:
        archived = archive.archive_notebook(project, record.id, staged, secrets)
    except SecretError as exc:
        return StageResult(succeeded=False, error=str(exc), duration_s=result.duration_s), None
    run_id = result.outputs.get("mlflow_run_id")
    if secrets and isinstance(run_id, str) and run_id:
        leaked = leaked_in_run(record.tracking_uri, run_id, secrets)
        if leaked:
            result.succeeded = False
            result.error = (f"the value of secret {leaked[0]} reached MLflow run {run_id} "
                            f"(params or tags); delete that run")
    return result, archived
