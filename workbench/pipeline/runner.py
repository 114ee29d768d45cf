"""Run a pipeline: plan, execute each stage through papermill, record and archive as we go.

A run stops at a gate that lacks approvals ("awaiting approval") and is continued later by
:func:`resume_run` with the configuration it was started with; so is a run whose process died,
after :mod:`workbench.pipeline.recover` has made its records consistent. A stage attempt that
fails is retried as its failure class's retry policy allows.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from filelock import FileLock, Timeout

from workbench import gitinfo
from workbench.audit import archive, ledger
from workbench.audit.mlflow_guard import SECRET_NAMES_VAR
from workbench.audit.redact import Secrets
from workbench.config import Config
from workbench.governance import identity
from workbench.pipeline import recover, state
from workbench.pipeline.plan import stage_order
from workbench.pipeline.schedule import (
    Scheduler,
    note_mlflow,
    record_deploy,
    run_stages,
    stage_environment,
)
from workbench.progress import Reporter, make_event
from workbench.project import PROJECT_ENV_VAR, Project
from workbench.registry import store as mlflow_store

RUN_LOCK = ".run.lock"


class ResumeError(RuntimeError):
    """The run cannot be continued (finished, failed, or being executed elsewhere)."""


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


def default_jobs() -> int:
    """Stages at most at once by default: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def serialized(report: Reporter) -> Reporter:
    """``report`` callable from several threads, one event at a time."""
    lock = threading.Lock()

    def locked(event: dict[str, Any]) -> None:
        with lock:
            report(event)

    return locked


@contextmanager
def run_lock(project: Project, run_id: str) -> Iterator[None]:
    """One process at a time executes a run."""
    lock = FileLock(state.run_dir(project, run_id) / RUN_LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ResumeError(f"run {run_id} is being executed by another process") from None
    try:
        yield
    finally:
        lock.release()


def _new_record(project: Project, config: Config, environment: str, tracking_uri: str,
                actor: identity.Identity) -> state.RunRecord:
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
        requested_by=actor,
    )


def find_base(project: Project, config: Config, needed: set[str], explicit: str | None = None
              ) -> state.RunRecord:
    """The run to reuse ``needed`` stages from: ``explicit``, else the newest run of this
    pipeline in which all of them are done."""
    if explicit is not None:
        candidates = [state.load(project, explicit)]
    else:
        candidates = [r for r in state.list_runs(project) if r.pipeline == config.pipeline.name]
    for run in candidates:
        missing = sorted(n for n in needed
                         if n not in run.stages or run.stages[n].status not in state.DONE)
        if not missing:
            return run
        if explicit is not None:
            raise ResumeError(f"run {explicit} cannot be reused: stage {missing[0]!r} did not "
                              f"succeed there")
    raise ResumeError(f"no earlier run has {', '.join(sorted(needed))} done; include them in "
                      f"the selection")


def _reuse(record: state.RunRecord, config: Config, chosen: set[str], base: state.RunRecord,
           ) -> None:
    """Take the unselected stages the selection needs from ``base``; leave out the rest."""
    from workbench.pipeline.plan import needed_upstream

    needed = needed_upstream(config, chosen)
    for name, entry in record.stages.items():
        if name in chosen:
            continue
        if name not in needed:
            entry.status = "not_selected"
            continue
        old = base.stages[name]
        record.stages[name] = old.model_copy(update={
            "status": "reused", "reused_from": old.reused_from or base.id,
            "reuse": "selection"})
        note_mlflow(record, old.outputs, config.model.name, base.trained_by or base.requested_by)


def start_run(project: Project, config: Config, environment: str, report: Reporter,
              chosen: set[str] | None = None, base: state.RunRecord | None = None,
              executor: str = "local", options: state.RunOptions | None = None
              ) -> state.RunRecord:
    """Create a run for ``environment`` and execute it as far as its gates allow.

    A partial run executes only ``chosen`` and reuses what they need from ``base``.
    """
    actor = identity.current()
    secrets = Secrets.from_environment(config.pipeline.secrets)  # refuses unusable values
    ledger.head(project.reports)  # a ledger ending in a torn entry is refused before anything
    store = mlflow_store.resolve(project, config.pipeline.mlflow)
    record = _new_record(project, config, environment, store.tracking_uri, actor)
    record.executor = executor
    record.options = options or state.RunOptions(jobs=default_jobs())
    record.config = secrets.redact(record.config)  # a secret pasted into a config file
    if chosen is not None:
        if base is None:
            raise ValueError("a partial run needs a run to reuse stages from")
        _reuse(record, config, chosen, base)
        record.trained_by = record.trained_by or base.trained_by
    _claim_folder(project, record)
    # the first stages' kernels start (and import) while the store is prepared
    scheduler = Scheduler(project, config, record, report, actor, None, secrets,
                          _kernel_env(project, config, record))
    try:
        scheduler.warm_ahead()
        mlflow_store.prepare(store)
    except BaseException:
        scheduler.close()
        with contextlib.suppress(OSError):
            state.run_dir(project, record.id).rmdir()  # still empty: nothing was recorded
        raise
    try:
        with run_lock(project, record.id):
            state.save(project, record)
            ledger.append(project.reports, "run_started", actor=actor.model_dump(),
                          run_id=record.id, data=_started_data(record))
            for name, entry in record.stages.items():
                if entry.status == "reused":
                    archive.record_stage(project, record, name, None)
            return _execute(project, config, record, report, actor, until=None,
                            scheduler=scheduler)
    finally:
        scheduler.close()  # kernels warmed for stages that never started


def _kernel_env(project: Project, config: Config, record: state.RunRecord) -> dict[str, str]:
    """Variables every kernel of the run gets: the store, the project, the run, the names (never
    the values) of the secrets."""
    store = mlflow_store.Store(record.tracking_uri, record.experiment, None, embedded=False)
    return {**store.environment, PROJECT_ENV_VAR: str(project.root),
            "WORKBENCH_RUN_ID": record.id, "WORKBENCH_ENVIRONMENT": record.environment,
            SECRET_NAMES_VAR: ",".join(config.pipeline.secrets)}


def _claim_folder(project: Project, record: state.RunRecord) -> None:
    """Create the run's folder, never an earlier run's: a taken id gets a new one."""
    for _ in range(100):
        try:
            state.run_dir(project, record.id).mkdir(parents=True, exist_ok=False)
            return
        except FileExistsError:
            record.id = state.new_run_id()
    raise ResumeError(f"could not create a new run folder under {project.runs}")


def _started_data(record: state.RunRecord) -> dict[str, Any]:
    """The ``run_started`` ledger entry's data."""
    left_out = ("reused", "not_selected")
    partial = None
    if any(e.status in left_out for e in record.stages.values()):
        partial = sorted(n for n, e in record.stages.items() if e.status not in left_out)
    return {"pipeline": record.pipeline, "environment": record.environment,
            "git_commit": record.git_commit, "config_hash": record.config_hash,
            "partial": partial}


def resume_run(project: Project, run_id: str, report: Reporter, until: str | None = None
               ) -> state.RunRecord:  # until: an environment; later ones are not entered
    """Continue a run that stopped at a gate (or before ``until``'s later environments), or
    one whose process died (see :mod:`workbench.pipeline.recover`)."""
    from workbench.governance.approvals import run_config

    actor = identity.current()
    state.load(project, run_id)  # an unknown run is an error, not a folder for its lock
    with run_lock(project, run_id):
        record = state.load(project, run_id)
        dead = recover.is_dead(record)  # says running, yet we hold its lock: its process is gone
        if not dead and record.status not in state.RESUMABLE:
            raise ResumeError(f"run {run_id} is {record.status}; only a run that is awaiting "
                              f"approval, paused, or interrupted (its process died) can be "
                              f"resumed")
        config = run_config(record)
        if until is not None and until not in config.environments:
            raise ResumeError(f"unknown environment {until!r}; this run's configuration "
                              f"defines {', '.join(config.environments)}")
        if dead:
            _recover(project, config, record, actor, report)
        for entry in record.stages.values():
            if entry.status == "awaiting_approval":
                entry.status = "pending"
        record.status, record.finished = "running", None
        state.save(project, record)
        return _execute(project, config, record, report, actor, until=until, recovered=dead)


def _recover(project: Project, config: Config, record: state.RunRecord,
             actor: identity.Identity, report: Reporter) -> None:
    """Make a dead run's records consistent before it continues."""
    secrets = Secrets.from_environment(config.pipeline.secrets)

    def deploy_recorded(name: str) -> None:
        record_deploy(project, record, name, stage_environment(config, record, name), actor,
                      report)

    notes = recover.recover(project, record, secrets, actor, deploy_recorded,
                            _started_data(record))
    for note in notes:
        report(make_event("warning", stage=None, message=f"recovered run {record.id}: {note}"))


def _execute(project: Project, config: Config, record: state.RunRecord, report: Reporter,
             actor: identity.Identity, until: str | None, recovered: bool = False,
             scheduler: Scheduler | None = None) -> state.RunRecord:
    folder = state.run_dir(project, record.id)
    started = time.monotonic()
    report(make_event("run_started", run_id=record.id, pipeline=record.pipeline,
                      environment=record.environment, stages=list(record.stages),
                      statuses={n: e.status for n, e in record.stages.items()},
                      folder=str(folder)))
    kernel_env = _kernel_env(project, config, record)
    secrets = Secrets.from_environment(config.pipeline.secrets)
    report = serialized(report)  # stages in parallel threads report too
    try:
        with kernel_environment(kernel_env):
            run_stages(project, config, record, report, actor, until, secrets, scheduler)
    except BaseException:  # Ctrl-C or a crash of ours: the record must not say "running"
        for name, entry in record.stages.items():
            if entry.status == "running":
                entry.status, entry.error, entry.finished = "failed", "interrupted", state.now()
                entry.failure = "interrupted"
                _archive_partial(project, record, name, secrets)
        record.status, record.finished = "failed", state.now()
        state.save(project, record)
        archive.remove_staging(project, record.id)
        raise
    archive.remove_staging(project, record.id)
    record.status = _final_status(record)
    record.finished = state.now() if record.status in ("succeeded", "failed") else None
    # the ledger first: a run.json that says finished implies the ledger says so too
    if not (recovered and _last_event(project, record.id) == "run_" + record.status):
        ledger.append(project.reports, "run_" + record.status, actor=actor.model_dump(),
                      run_id=record.id, data={"status": record.status,
                                              "model_version": record.model_version and
                                              record.model_version.model_dump()})
    state.save(project, record)
    try:
        from workbench.reports.site import build as build_site

        build_site(project, record.id)
    except Exception as exc:  # noqa: BLE001 - the run and its archive are complete already
        report(make_event("warning", stage=None, message=f"report site not updated: {exc}"))
    report(make_event("run_finished", run_id=record.id, status=record.status,
                      duration_s=time.monotonic() - started, folder=str(folder)))
    return record


def _last_event(project: Project, run_id: str) -> str | None:
    """The run's latest ledger event besides the recovery's own (after a recovery: was the run
    already finished?)."""
    last = None
    for entry in ledger.entries(project.reports):
        if entry.get("run_id") == run_id and entry.get("event") not in recover.BOOKKEEPING:
            last = entry.get("event")
    return last


def _archive_partial(project: Project, record: state.RunRecord, name: str,
                     secrets: Secrets) -> None:
    """Archive what an interrupted stage had written so far (redacted), and record it."""
    staged = archive.staging_path(project, record.id, record.stages[name].notebook or "")
    archived = None
    if staged.is_file():
        try:
            archived = archive.archive_notebook(project, record.id, staged, secrets)
        except Exception:  # noqa: BLE001 - interrupted already; keep the record consistent
            archived = None
    archive.record_stage(project, record, name, archived)


def _final_status(record: state.RunRecord) -> state.RunStatus:
    statuses = {entry.status for entry in record.stages.values()} - {"reused", "not_selected"}
    if statuses & {"failed", "skipped"}:
        return "failed"
    if "awaiting_approval" in statuses:
        return "awaiting_approval"
    if "pending" in statuses:
        return "paused"
    return "succeeded"
