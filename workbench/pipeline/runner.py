"""Run a pipeline: plan, execute each stage through papermill, record and archive as we go.

A run stops at a gate that lacks approvals ("awaiting approval") and is continued later by
:func:`resume_run` with the configuration it was started with; so is a run whose process died,
after :mod:`workbench.pipeline.recover` has made its records consistent. A stage attempt that
fails is retried as its failure class's retry policy allows.

What reacts to the run (progress, notifications, HTML, MLflow artifacts, the site, the stage
cache's index) is given as ``listeners`` (see :mod:`workbench.events`); the run itself writes
only its record and the ledger, through its :class:`~workbench.pipeline.recorder.Recorder`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from filelock import FileLock, Timeout

from workbench import gitinfo, identity, run_record
from workbench.audit import archive, ledger
from workbench.audit.object_store import StoreError
from workbench.audit.redact import SecretError, Secrets
from workbench.audit.remote import RemoteError
from workbench.clock import utc_now
from workbench.config import PIPELINE_ENV_VAR, Config, pipeline_names
from workbench.errors import EXIT_FAILED, WorkbenchError
from workbench.events import Bus, CallbackListener, RunFinished, RunStarted, standard_listeners
from workbench.execution import forked_calls, kernel_output
from workbench.pipeline import recover
from workbench.pipeline.recorder import Recorder
from workbench.pipeline.scheduler import Scheduler, note_mlflow, stage_environment
from workbench.project import PROJECT_ENV_VAR, Project
from workbench.registry import store as mlflow_store
from workbench.registry.secret_guard import SECRET_NAMES_VAR
from workbench.run_record import RunRecord
from workbench.stage_graph import needed_upstream, stage_order

RUN_LOCK = ".run.lock"


class SharedArchiveLost(WorkbenchError, RuntimeError):
    """The shared archive stopped answering (or refused a write) during a run: the run is
    kept resumable, exactly as after a crash of this process."""

    exit_code = EXIT_FAILED


class ResumeError(WorkbenchError, RuntimeError):
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


def make_bus(listeners: Iterable[Any] | Callable[[dict[str, Any]], None],
             standard: bool = True) -> Bus:
    """A bus for the standard listeners (``standard``) and ``listeners`` (see
    :mod:`workbench.events`); a plain callable, alone or in the list, is given each public
    event as a dict."""
    items: Iterable[Any] = [listeners] if callable(listeners) and \
        not hasattr(listeners, "on_event") else cast(Iterable[Any], listeners)
    given = [listener if not callable(listener) or hasattr(listener, "on_event")
             else CallbackListener(listener) for listener in items]
    return Bus([*(standard_listeners() if standard else []), *given])


@contextmanager
def run_lock(project: Project, run_id: str) -> Iterator[None]:
    """One process at a time executes a run."""
    lock = FileLock(run_record.run_dir(project, run_id) / RUN_LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ResumeError(f"run {run_id} is being executed by another process") from None
    try:
        yield
    finally:
        lock.release()


def _new_record(project: Project, config: Config, environment: str, tracking_uri: str,
                actor: identity.Identity) -> RunRecord:
    sha, dirty = gitinfo.commit(project.root)
    return RunRecord(
        id=run_record.new_run_id(),
        pipeline=config.pipeline.name,
        environment=environment,
        created=utc_now(),
        git_commit=sha,
        git_dirty=dirty,
        config_hash=config.digest,
        config=config.sources,
        tracking_uri=tracking_uri,
        experiment=config.pipeline.mlflow.experiment,
        stages={name: run_record.StageRecord(roles=config.stage(name).roles)
                for name in stage_order(config)},
        requested_by=actor,
    )


def find_base(project: Project, config: Config, needed: set[str], explicit: str | None = None
              ) -> RunRecord:
    """The run to reuse ``needed`` stages from: ``explicit``, else the newest run of this
    pipeline in which all of them are done."""
    if explicit is not None:
        candidates = [run_record.load(project, explicit)]
    else:
        candidates = [r for r in run_record.list_runs(project)
                      if r.pipeline == config.pipeline.name]
    for run in candidates:
        missing = sorted(n for n in needed
                         if n not in run.stages or run.stages[n].status not in run_record.DONE)
        if not missing:
            return run
        if explicit is not None:
            raise ResumeError(f"run {explicit} cannot be reused: stage {missing[0]!r} did not "
                              f"succeed there")
    raise ResumeError(f"no earlier run has {', '.join(sorted(needed))} done; include them in "
                      f"the selection")


def _reuse(record: RunRecord, config: Config, chosen: set[str], base: RunRecord | None
           ) -> None:
    """Take the unselected stages the selection needs from ``base``; leave out the rest."""
    needed = needed_upstream(config, chosen)
    for name, entry in record.stages.items():
        if name in chosen:
            continue
        if name not in needed or base is None:
            entry.status = "not_selected"
            continue
        old = base.stages[name]
        record.stages[name] = old.model_copy(update={
            "status": "reused", "reused_from": old.reused_from or base.id,
            "reuse": "selection", "roles": config.stage(name).roles})
        note_mlflow(record, record.stages[name], config.model.name,
                    base.trained_by or base.requested_by)


def start_run(project: Project, config: Config, environment: str, listeners: Iterable[Any],
              chosen: set[str] | None = None, base: RunRecord | None = None,
              executor: str = "local", options: run_record.RunOptions | None = None,
              overrides: dict[str, Any] | None = None) -> RunRecord:
    """Create a run for ``environment`` and execute it as far as its gates allow.

    A partial run executes only ``chosen`` and reuses what they need from ``base``.
    ``overrides`` are the run's checked ``-p`` values (:mod:`workbench.pipeline.overrides`).
    """
    actor = identity.current()
    secrets = Secrets.from_environment(config.pipeline.secrets)  # refuses unusable values
    secrets.check_config(config.sources)
    _check_overrides(secrets, overrides or {})
    ledger.head(project.reports)  # a ledger ending in a torn entry is refused before anything
    store = mlflow_store.resolve(project, config.pipeline.mlflow)
    record = _new_record(project, config, environment, store.tracking_uri, actor)
    record.executor = executor
    record.options = options or run_record.RunOptions(jobs=default_jobs())
    record.config = secrets.redact(record.config)  # a secret pasted into a config file
    record.overrides = dict(overrides or {})
    if chosen is not None:
        if base is None and needed_upstream(config, chosen):
            raise ValueError("a partial run that needs earlier stages needs a run to reuse "
                             "them from")
        _reuse(record, config, chosen, base)
        if base is not None:
            record.trained_by = record.trained_by or base.trained_by
    _claim_folder(project, record)
    bus = make_bus(listeners)
    recorder = Recorder(project, record, bus, secrets)
    with kernel_output.captured(_kernel_log(project, record.id), secrets.redact_text):
        # the first stages' kernels start (and import) while the store is prepared
        scheduler = Scheduler(project, config, recorder, bus, actor, None, secrets,
                              _kernel_env(project, config, record))
        try:
            scheduler.warm_ahead()
            _prepare_store(store, project.root)
        except BaseException:
            scheduler.close()
            with contextlib.suppress(OSError):
                run_record.run_dir(project, record.id).rmdir()  # still empty: nothing recorded
            raise
        try:
            with run_lock(project, record.id):
                recorder.run_started(actor, _started_data(record))
                for name, entry in record.stages.items():
                    if entry.status == "reused":
                        recorder.stage(name, None)
                return _execute(project, config, recorder, actor, until=None,
                                scheduler=scheduler)
        finally:
            scheduler.close()  # kernels warmed for stages that never started
            bus.close()


def _prepare_store(store: mlflow_store.Store, root: Path) -> None:
    """Prepare the MLflow store. When that needs MLflow (a new store, another MLflow version),
    in a process forked from the run's kernel fork server, which imported it for the kernels,
    so that this process never imports it (130-200 MB it would keep for the whole run); here
    if there is no such server, or if that failed (MLflow then says why, from here)."""
    if not mlflow_store.prepared(store) and forked_calls.available():
        forked, error = forked_calls.call("workbench.registry.store:prepare_from",
                                          dataclasses.asdict(store), root)
        if forked and error is None:
            return
    mlflow_store.prepare(store)


def _kernel_log(project: Project, run_id: str) -> Path:
    """Where the run's kernels write their own stdout and stderr (redacted)."""
    return project.local_state / "logs" / run_id / kernel_output.LOG_NAME


def _kernel_env(project: Project, config: Config, record: RunRecord) -> dict[str, str]:
    """Variables every kernel of the run gets: the store, the project, the run, the names (never
    the values) of the secrets."""
    store = mlflow_store.Store(record.tracking_uri, record.experiment, None, embedded=False)
    values = {**store.environment, PROJECT_ENV_VAR: str(project.root),
              "WORKBENCH_RUN_ID": record.id, "WORKBENCH_ENVIRONMENT": record.environment,
              SECRET_NAMES_VAR: ",".join(config.pipeline.secrets)}
    if pipeline_names(project.configs):  # the kernels' load_config selects the run's pipeline
        values[PIPELINE_ENV_VAR] = config.pipeline.name
    return values


def _claim_folder(project: Project, record: RunRecord) -> None:
    """Create the run's folder, never an earlier run's: a taken id gets a new one."""
    for _ in range(100):
        try:
            run_record.run_dir(project, record.id).mkdir(parents=True, exist_ok=False)
            return
        except FileExistsError:
            record.id = run_record.new_run_id()
    raise ResumeError(f"could not create a new run folder under {project.runs}")


def _check_overrides(secrets: Secrets, overrides: dict[str, Any]) -> None:
    """Refuse a ``-p`` value that holds a secret's value: secrets are never parameters."""
    for key, value in sorted(overrides.items()):
        leaked = secrets.found_in(json.dumps(value, default=str)) + (
            secrets.found_in(value) if isinstance(value, str) else [])
        if leaked:
            raise SecretError(f"-p {key}: the value holds the value of secret {leaked[0]}; "
                              f"stages read secrets from the environment "
                              f"(os.environ[{leaked[0]!r}]), never as parameters")


def _started_data(record: RunRecord) -> dict[str, Any]:
    """The ``run_started`` ledger entry's data (``overrides`` only when the run has some, so
    that the entry of a run without them is as it always was)."""
    left_out = ("reused", "not_selected")
    partial = None
    if any(e.status in left_out for e in record.stages.values()):
        partial = sorted(n for n, e in record.stages.items() if e.status not in left_out)
    data: dict[str, Any] = {"pipeline": record.pipeline, "environment": record.environment,
                            "git_commit": record.git_commit, "config_hash": record.config_hash,
                            "partial": partial}
    if record.overrides:
        data["overrides"] = record.overrides
    return data


def resume_run(project: Project, run_id: str, listeners: Iterable[Any],
               until: str | None = None) -> RunRecord:
    """Continue a run that stopped at a gate (or before ``until``'s later environments: an
    environment; later ones are not entered), or one whose process died (see
    :mod:`workbench.pipeline.recover`)."""
    from workbench.governance.approvals import run_config

    actor = identity.current()
    run_record.load(project, run_id)  # an unknown run is an error, not a folder for its lock
    with run_lock(project, run_id):
        record = run_record.load(project, run_id)
        dead = recover.was_interrupted(record)  # says running, yet we hold its lock
        if not dead and record.status not in run_record.RESUMABLE:
            raise ResumeError(f"run {run_id} is {record.status}; only a run that is awaiting "
                              f"approval, paused, or interrupted (its process died) can be "
                              f"resumed")
        config = run_config(record)
        if until is not None and until not in config.environments:
            raise ResumeError(f"unknown environment {until!r}; this run's configuration "
                              f"defines {', '.join(config.environments)}")
        _check_what_will_run(project, config, record, until)
        secrets = Secrets.from_environment(config.pipeline.secrets)
        secrets.check_config(record.config)
        bus = make_bus(listeners)
        recorder = Recorder(project, record, bus, secrets)
        try:
            with kernel_output.captured(_kernel_log(project, run_id), secrets.redact_text):
                if dead:
                    _recover(project, config, recorder, actor)
                for entry in record.stages.values():
                    if entry.status == "awaiting_approval":
                        entry.status = "pending"
                record.status, record.finished = "running", None
                recorder.save()
                return _execute(project, config, recorder, actor, until=until, recovered=dead)
        finally:
            bus.close()


def _check_what_will_run(project: Project, config: Config, record: RunRecord,
                         until: str | None) -> None:
    """Refuse to go on when the run record is not the one the ledger vouches for (its config
    snapshot edited), when what an approval covers changed since it was given, or when a
    gated environment would run code that is not committed."""
    from workbench.governance.approvals import changed_since_approval
    from workbench.governance.trust import trusted

    trusted(project, record, config)
    changed = changed_since_approval(project, record)
    if changed:
        raise ResumeError(f"changed since it was approved: {'; '.join(changed)}. An approval "
                          f"covers the notebooks of the stages it releases: restore them, or "
                          f"start a new run and ask for approval of that")
    gated = [name for name, entry in record.stages.items() if entry.status in (
        "pending", "awaiting_approval") and stage_environment(config, record, name) in
        config.gates.policies and (until is None or config.environment_rank(
            stage_environment(config, record, name)) <= config.environment_rank(until))]
    dirty = gitinfo.changed_files(project.root) if gated else []
    if dirty:
        shown = ", ".join(dirty[:8]) + (f" and {len(dirty) - 8} more" if len(dirty) > 8 else "")
        raise ResumeError(f"the work tree has uncommitted changes ({shown}); stages of a gated "
                          f"environment ({', '.join(gated)}) run only committed code: commit "
                          f"or revert them first")


def _recover(project: Project, config: Config, recorder: Recorder,
             actor: identity.Identity) -> None:
    """Make a dead run's records consistent before it continues."""
    record = recorder.record
    secrets = Secrets.from_environment(config.pipeline.secrets)
    notes = recover.recover(project, recorder, secrets, actor,
                            lambda name: stage_environment(config, record, name),
                            _started_data(record))
    for note in notes:
        recorder.bus.warn(f"recovered run {record.id}: {note}")


def _execute(project: Project, config: Config, recorder: Recorder, actor: identity.Identity,
             until: str | None, recovered: bool = False,
             scheduler: Scheduler | None = None) -> RunRecord:
    record, bus = recorder.record, recorder.bus
    folder = run_record.run_dir(project, record.id)
    started = time.monotonic()
    bus.emit(RunStarted(run_id=record.id, pipeline=record.pipeline,
                        environment=record.environment, stages=list(record.stages),
                        statuses={n: e.status for n, e in record.stages.items()},
                        folder=str(folder)))
    secrets = Secrets.from_environment(config.pipeline.secrets)
    if scheduler is None:
        scheduler = Scheduler(project, config, recorder, bus, actor, until, secrets)
    try:
        with kernel_environment(_kernel_env(project, config, record)):
            scheduler.run()
    except (StoreError, RemoteError) as exc:  # the shared archive failed: as after a crash,
        # the record keeps saying "running" (what this machine wrote stays in reports/), and
        # `workbench resume` recovers the run once the store answers again
        archive.remove_staging(project, record.id)
        raise SharedArchiveLost(f"{exc.user_message()}\nrun {record.id} stopped; nothing "
                                f"written is lost: `workbench resume {record.id}` continues "
                                f"it once the store answers") from exc
    except BaseException:  # Ctrl-C or a crash of ours: the record must not say "running"
        for name, entry in record.stages.items():
            if entry.status == "running":
                entry.status, entry.error, entry.finished = "failed", "interrupted", utc_now()
                entry.failure = "interrupted"
                _archive_partial(project, recorder, name, secrets)
        record.status, record.finished = "failed", utc_now()
        recorder.save()
        archive.remove_staging(project, record.id)
        raise
    archive.remove_staging(project, record.id)
    record.status = _final_status(record)
    record.finished = utc_now() if record.status in ("succeeded", "failed") else None
    recorder.run_finished(actor, ledger_has_it=recovered and
                          _last_event(project, record.id) == "run_" + record.status)
    bus.emit(RunFinished(run_id=record.id, status=record.status,
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


def _archive_partial(project: Project, recorder: Recorder, name: str, secrets: Secrets
                     ) -> None:
    """Archive what an interrupted stage had written so far (redacted), and record it."""
    record = recorder.record
    staged = archive.staging_path(project, record.id, record.stages[name].notebook or "")
    archived = None
    if staged.is_file():
        try:
            archived = archive.archive_notebook(project, record.id, staged, secrets)
        except Exception:  # noqa: BLE001 - interrupted already; keep the record consistent
            archived = None
    recorder.stage(name, archived, publish=False)


def _final_status(record: RunRecord) -> run_record.RunStatus:
    statuses = {entry.status for entry in record.stages.values()} - {"reused", "not_selected"}
    if statuses & {"failed", "skipped"}:
        return "failed"
    if "awaiting_approval" in statuses:
        return "awaiting_approval"
    if "pending" in statuses:
        return "paused"
    return "succeeded"
