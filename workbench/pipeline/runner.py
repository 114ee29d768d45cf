"""Run a pipeline: plan, execute each stage through papermill, record and archive as we go."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from workbench import gitinfo
from workbench.config import Config
from workbench.execution.stage import execute_stage
from workbench.pipeline import state
from workbench.pipeline.plan import resolve_parameters, stage_order
from workbench.progress import Reporter, make_event
from workbench.project import PROJECT_ENV_VAR, Project
from workbench.registry import store as mlflow_store


@contextmanager
def kernel_environment(values: dict[str, str]) -> Iterator[None]:
    """Set variables that kernels inherit, and restore the caller's afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _new_record(project: Project, config: Config, environment: str, tracking_uri: str
                ) -> state.RunRecord:
    sha, dirty = gitinfo.commit(project.root)
    return state.RunRecord(
        id=state.new_run_id(),
        pipeline=config.pipeline.name,
        environment=environment,
        created=state.now(),
        git_commit=sha,
        git_dirty=dirty,
        config_hash=config.digest,
        config=config.sources,
        tracking_uri=tracking_uri,
        experiment=config.pipeline.mlflow.experiment,
        stages={name: state.StageRecord() for name in stage_order(config)},
    )


def _note_mlflow(record: state.RunRecord, outputs: dict[str, Any], model_name: str) -> None:
    """Pick up MLflow run ids and the registered version from conventional output names."""
    run_id = outputs.get("mlflow_run_id")
    if isinstance(run_id, str) and run_id and run_id not in record.mlflow_run_ids:
        record.mlflow_run_ids.append(run_id)
    version = outputs.get("model_version")
    if version not in (None, "", 0):
        record.model_version = state.ModelVersion(name=model_name, version=str(version))


def run_pipeline(project: Project, config: Config, environment: str, report: Reporter
                 ) -> state.RunRecord:
    """Execute every stage in dependency order; a failed stage stops its dependants only."""
    store = mlflow_store.resolve(project, config.pipeline.mlflow)
    mlflow_store.prepare(store)
    record = _new_record(project, config, environment, store.tracking_uri)
    folder = state.run_dir(project, record.id)
    folder.mkdir(parents=True, exist_ok=False)  # never write into an earlier run's folder
    state.save(project, record)
    run_info = {"id": record.id, "git_commit": record.git_commit,
                "config_hash": record.config_hash, "environment": environment}
    started = time.monotonic()
    report(make_event("run_started", run_id=record.id, pipeline=record.pipeline,
                      environment=environment, stages=list(record.stages), folder=str(folder)))
    kernel_env = {**store.environment, PROJECT_ENV_VAR: str(project.root),
                  "WORKBENCH_RUN_ID": record.id, "WORKBENCH_ENVIRONMENT": environment}
    try:
        with kernel_environment(kernel_env):
            _run_stages(project, config, record, run_info, report)
    except BaseException:  # Ctrl-C or a crash of ours: the record must not say "running"
        for entry in record.stages.values():
            if entry.status == "running":
                entry.status, entry.error, entry.finished = "failed", "interrupted", state.now()
        record.status, record.finished = "failed", state.now()
        state.save(project, record)
        raise
    failed = any(s.status in ("failed", "skipped") for s in record.stages.values())
    record.status = "failed" if failed else "succeeded"
    record.finished = state.now()
    state.save(project, record)
    report(make_event("run_finished", run_id=record.id, status=record.status,
                      duration_s=time.monotonic() - started, folder=str(folder)))
    return record


def _run_stages(project: Project, config: Config, record: state.RunRecord,
                run_info: dict[str, str], report: Reporter) -> None:
    """Execute the stages in order, saving the record after each; skip dependants of failures."""
    folder = state.run_dir(project, record.id)
    outputs: dict[str, dict[str, Any]] = {}
    for name in record.stages:
        stage = config.stage(name)
        entry = record.stages[name]
        blocked = [up for up in stage.needs if record.stages[up].status != "succeeded"]
        if blocked:
            entry.status = "skipped"
            entry.error = f"upstream stage {blocked[0]!r} did not succeed"
            report(make_event("stage_skipped", stage=name, reason=entry.error))
            state.save(project, record)
            continue
        entry.parameters = resolve_parameters(stage, config, record.environment, run_info,
                                              outputs)
        entry.notebook = f"{name}.ipynb"
        entry.status, entry.started = "running", state.now()
        state.save(project, record)
        report(make_event("stage_started", stage=name, notebook=stage.notebook))

        def on_cell(index: int, total: int, source: str, _stage: str = name) -> None:
            report(make_event("cell", stage=_stage, index=index, total=total, source=source))

        result = execute_stage(
            project.root / stage.notebook, folder / entry.notebook, entry.parameters,
            stage.outputs, cwd=project.root, timeout=stage.timeout, on_cell=on_cell,
        )
        entry.status = "succeeded" if result.succeeded else "failed"
        entry.outputs, entry.error = result.outputs, result.error
        entry.finished, entry.duration_s = state.now(), round(result.duration_s, 3)
        outputs[name] = result.outputs
        _note_mlflow(record, result.outputs, config.model.name)
        state.save(project, record)
        report(make_event("stage_finished", stage=name, status=entry.status,
                          duration_s=result.duration_s, error=result.error))
