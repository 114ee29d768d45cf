"""One stage of a run, end to end: parameters checked for secrets, executed (papermill here, or
another executor) into the staging folder, outputs and errors redacted, the notebook archived."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from workbench.audit import archive
from workbench.audit.redact import SecretError, Secrets
from workbench.config import Stage
from workbench.execution.executors import ExecutionRequest, LocalExecutor, StageExecutor
from workbench.execution.stage import CellCallback, KernelLimits, StageResult
from workbench.execution.warm import StageKernel
from workbench.project import Project
from workbench.registry.secret_guard import leaked_in_run
from workbench.run_record import RunRecord


def run_archived_stage(project: Project, record: RunRecord, name: str, stage: Stage,
                       secrets: Secrets, environment: str, on_cell: CellCallback | None = None,
                       executor: StageExecutor | None = None,
                       archive_as: Callable[[StageResult], str] | None = None,
                       kernel: StageKernel | None = None,
                       cancel: threading.Event | None = None,
                       ) -> tuple[StageResult, Path | None]:
    """Execute ``name`` and archive its notebook; return the result and the archived path
    (None when nothing could be archived). ``archive_as`` names the archived file after the
    result is known (an attempt that will be retried keeps an attempt-numbered name).
    ``kernel`` is a pre-warmed kernel to execute on; once ``cancel`` is set the stage is
    stopped and its staged notebook left for the interrupted run's bookkeeping."""
    entry = record.stages[name]
    try:
        secrets.check_parameters(name, entry.parameters)
    except SecretError as exc:
        entry.parameters = secrets.redact(entry.parameters)  # never kept in run.json either
        if kernel is not None:
            kernel.close()
        return StageResult(succeeded=False, error=str(exc), failure="error"), None
    staged = archive.staging_path(project, record.id, entry.notebook or f"{name}.ipynb")
    request = ExecutionRequest(
        notebook=project.root / stage.notebook, output=staged, parameters=entry.parameters,
        declared_outputs=stage.outputs, cwd=project.root, timeout=stage.timeout,
        run_id=record.id, stage=name, environment=environment, on_cell=on_cell,
        limits=KernelLimits(startup_timeout=stage.startup_timeout,
                            cell_timeout=stage.cell_timeout, hang_timeout=stage.hang_timeout),
        kernel=kernel, cancel=cancel)
    result = (executor or LocalExecutor()).execute(request)
    if not result.succeeded and result.failure is None:
        result.failure = "error"  # an executor that does not classify its failures
    result.outputs = secrets.redact(result.outputs)
    result.error = secrets.redact_text(result.error) if result.error else result.error
    run_id = result.outputs.get("mlflow_run_id")
    if secrets and isinstance(run_id, str) and run_id:
        leaked = leaked_in_run(record.tracking_uri, run_id, secrets)
        if leaked:
            result.succeeded, result.failure = False, "error"
            result.error = (f"the value of secret {leaked[0]} reached MLflow run {run_id} "
                            f"(params or tags); delete that run")
    if not staged.exists() or (cancel is not None and cancel.is_set()):
        return result, None
    try:
        archived = archive.archive_notebook(project, record.id, staged, secrets,
                                            archive_as(result) if archive_as else None)
    except SecretError as exc:
        return StageResult(succeeded=False, error=str(exc), duration_s=result.duration_s,
                           failure="error"), None
    return result, archived
