"""One stage of a run, end to end: parameters checked for secrets, executed (papermill here, or
another executor) into the staging folder, outputs and errors redacted, the notebook archived."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from workbench.audit import archive
from workbench.audit.redact import SecretError, Secrets
from workbench.config import Stage
from workbench.execution.executors import ExecutionRequest, LocalExecutor, StageExecutor
from workbench.execution.stage import CellCallback, KernelLimits, StageResult
from workbench.execution.warm import StageKernel
from workbench.project import Project
from workbench.registry import secret_guard
from workbench.run_record import RunRecord


def _mlflow_leaks(record: RunRecord, name: str, result: StageResult, started_ms: int,
                  secrets: Secrets) -> list[secret_guard.Leak]:
    """Secret values the stage left in MLflow, each removed from the store already."""
    run_ids = [*record.mlflow_run_ids]
    roles = record.stages[name].roles if name in record.stages else {}
    named = result.outputs.get(roles.get("trained_run", "mlflow_run_id"))
    if isinstance(named, str) and named and named not in run_ids:
        run_ids.append(named)
    if record.tracking_uri.startswith("sqlite:///"):
        from workbench.registry.store import sqlite_file

        database = sqlite_file(record.tracking_uri)
        if database is None or not database.is_file():
            return []  # no store yet: nothing was written to it
    try:
        leaks = secret_guard.scan(record.tracking_uri, run_ids, started_ms, secrets)
    except Exception as exc:  # noqa: BLE001 - a store we cannot read is a failure here
        return [secret_guard.Leak("?", f"the store could not be searched for secrets: "
                                       f"{type(exc).__name__}: {exc}")]
    return secret_guard.purge(record.tracking_uri, leaks, secrets) if leaks else []


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
        declared_outputs=stage.output_types, cwd=project.root, timeout=stage.timeout,
        run_id=record.id, stage=name, environment=environment, on_cell=on_cell,
        limits=KernelLimits(startup_timeout=stage.startup_timeout,
                            cell_timeout=stage.cell_timeout, hang_timeout=stage.hang_timeout,
                            output_limit_mb=stage.output_limit_mb),
        kernel=kernel, cancel=cancel)
    started_ms = int(time.time() * 1000) - 1000  # MLflow keeps milliseconds; clocks drift
    result = (executor or LocalExecutor()).execute(request)
    if not result.succeeded and result.failure is None:
        result.failure = "error"  # an executor that does not classify its failures
    result.outputs = secrets.redact(result.outputs)
    result.error = secrets.redact_text(result.error) if result.error else result.error
    if secrets:
        leaks = _mlflow_leaks(record, name, result, started_ms, secrets)
        if leaks:
            result.succeeded, result.failure = False, "error"
            result.error = "; ".join(leak.describe() for leak in leaks[:3]) + (
                f" (and {len(leaks) - 3} more)" if len(leaks) > 3 else "")
    if not staged.exists() or (cancel is not None and cancel.is_set()):
        return result, None
    try:
        archived = archive.archive_notebook(project, record.id, staged, secrets,
                                            archive_as(result) if archive_as else None)
    except SecretError as exc:
        return StageResult(succeeded=False, error=str(exc), duration_s=result.duration_s,
                           failure="error"), None
    return result, archived
