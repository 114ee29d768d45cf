"""Executing a run's stages: in parallel where the graph allows, on pre-warmed kernels, and
reusing identical earlier executions from the stage cache.

The scheduler thread (the caller's) owns the run record: it decides gates, cache hits and skips,
submits stages to a pool of at most ``jobs`` worker threads, and books each result when it
comes back. Workers only execute and archive one stage (with its retries). While stages run,
the kernels of the stages that come next are started and their ``preload`` modules imported
(:mod:`workbench.execution.warm`). HTML rendering and MLflow artifacts of a finished stage are
produced on a publisher thread, off the critical path; the ledger entry is written first, by
the scheduler, as before.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from workbench.audit import archive, ledger
from workbench.audit.redact import Secrets
from workbench.config import Config
from workbench.execution import cache
from workbench.execution.executors import executor_for
from workbench.execution.stage import KILL_AFTER, StageResult
from workbench.execution.warm import KernelPool, StageKernel, wait_retired
from workbench.governance import identity
from workbench.pipeline import state
from workbench.pipeline.execute import run_archived_stage
from workbench.pipeline.gates import record_alias_output, run_gate
from workbench.pipeline.plan import ancestors, resolve_parameters
from workbench.progress import Reporter, make_event
from workbench.project import Project

WAIT_STEP = 0.5  # seconds between checks of a Ctrl-C while stages run
LOOKAHEAD = 2  # warm the kernels of the next stages and of the ones after those


def note_mlflow(record: state.RunRecord, outputs: dict[str, Any], model_name: str,
                actor: identity.Identity | None) -> None:
    """Pick up MLflow run ids and the registered version from conventional output names."""
    run_id = outputs.get("mlflow_run_id")
    if isinstance(run_id, str) and run_id and run_id not in record.mlflow_run_ids:
        record.mlflow_run_ids.append(run_id)
        record.trained_by = record.trained_by or actor
    version = outputs.get("model_version")
    if version not in (None, "", 0):
        record.model_version = state.ModelVersion(name=model_name, version=str(version))


def stage_environment(config: Config, record: state.RunRecord, name: str) -> str:
    return config.stage(name).target_environment or record.environment


def record_deploy(project: Project, record: state.RunRecord, name: str, environment: str,
                  actor: identity.Identity, report: Reporter) -> None:
    """A stage that served a model (``served_version`` output) is a deploy in the ledger."""
    outputs = record.stages[name].outputs
    if "served_version" not in outputs:
        return
    model = record.model_version.name if record.model_version else None
    ledger.append(project.reports, "deploy", actor=actor.model_dump(), run_id=record.id,
                  data={"stage": name, "environment": environment, "model": model,
                        "version": str(outputs["served_version"]),
                        "endpoint": outputs.get("endpoint")})
    report(make_event("deployed", stage=name, run_id=record.id, environment=environment,
                      model=model, version=str(outputs["served_version"]),
                      endpoint=outputs.get("endpoint")))


def cell_reporter(report: Reporter, stage: str) -> Any:
    def on_cell(index: int, total: int, source: str) -> None:
        report(make_event("cell", stage=stage, index=index, total=total, source=source))

    return on_cell


def _kernel_name(path: Path) -> str:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "python3"
    return data.get("metadata", {}).get("kernelspec", {}).get("name", "python3")


class Scheduler:
    """Runs the pending stages of one run (see the module doc)."""

    def __init__(self, project: Project, config: Config, record: state.RunRecord,
                 report: Reporter, actor: identity.Identity, until: str | None,
                 secrets: Secrets, kernel_env: dict[str, str] | None = None):
        self.project, self.config, self.record = project, config, record
        self.report, self.actor, self.until, self.secrets = report, actor, until, secrets
        self.options = record.options
        self.jobs = max(1, self.options.jobs)
        self.cancel = threading.Event()
        self.run_info = {"id": record.id, "git_commit": record.git_commit,
                         "config_hash": record.config_hash, "environment": record.environment}
        self.outputs = {name: dict(entry.outputs) for name, entry in record.stages.items()
                        if entry.status in state.DONE}
        self.upstream = ancestors(config)
        self.upstream_gates = {name: {up for up in ups if config.stage(up).gate}
                               for name, ups in self.upstream.items()}
        self.local = record.executor == "local"
        self.kernels: KernelPool | None = None
        if self.options.warm and self.local:
            self.kernels = KernelPool(self.jobs, on_problem=self._warn, env=kernel_env,
                                      fork_preload=self._preloads() if self.options.fork
                                      else (), cwd=project.root)
        self.published: list[Future[list[str]]] = []
        self.looked_up: set[str] = set()  # stages whose cache key was computed and looked up
        self._kernel_names: dict[str, str | None] = {}  # per stage; None: no notebook file

    # ---------------------------------------------------------------- the loop

    def run(self) -> None:
        workers = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="stage")
        publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")
        running: dict[Future[tuple[StageResult, Path | None]], str] = {}
        try:
            while True:
                self._start_ready(workers, running)
                if not running:
                    break
                done, _ = wait(running, timeout=WAIT_STEP, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    result, archived = future.result()
                    self._book(name, result, archived, publisher)
        except BaseException:
            self.cancel.set()  # every stage still running is killed and returns at once
            wait(running, timeout=KILL_AFTER + 30)
            raise
        finally:
            workers.shutdown(wait=False)
            if self.kernels is not None:
                self.kernels.close()
            publisher.shutdown(wait=True)
            wait_retired(timeout=KILL_AFTER + 30)  # no kernel of the run outlives it
            if self.kernels is not None:
                self.kernels.close(wait=KILL_AFTER)  # nor does the fork server
            for future in self.published:
                for warning in future.result():
                    self._warn(None, warning)

    def _start_ready(self, workers: ThreadPoolExecutor,
                     running: dict[Future[tuple[StageResult, Path | None]], str]) -> None:
        """Decide everything that can be decided now; start what may start; warm the next."""
        changed = True
        while changed:
            changed = False
            for name, entry in self.record.stages.items():
                if entry.status != "pending":
                    continue
                verdict = self._readiness(name)
                if verdict == "skip":
                    changed = True
                    continue
                if verdict != "ready":
                    continue
                stage = self.config.stage(name)
                if stage.gate:
                    self._prepare(name)
                    run_gate(self.project, self.config, self.record, name, self.actor,
                             self.report, self.secrets)
                    self.outputs[name] = dict(entry.outputs)
                    changed = True
                elif self._reused_from_cache(name):
                    changed = True
                elif len(running) < self.jobs:
                    self._submit(name, workers, running)
        self._warm_next(running)

    def _readiness(self, name: str) -> str:
        """``ready``, ``wait`` (upstream or a gate not done, or a later environment), or
        ``skip`` (an upstream stage or gate failed: recorded as skipped here)."""
        stage = self.config.stage(name)
        entry = self.record.stages[name]
        upstream = {up: self.record.stages[up].status for up in stage.needs}
        gates = {up: self.record.stages[up].status for up in self.upstream_gates[name]}
        broken = [up for up, status in {**upstream, **gates}.items()
                  if status in ("failed", "skipped")]
        if broken:
            entry.status = "skipped"
            entry.error = f"upstream stage {broken[0]!r} did not succeed"
            self.report(make_event("stage_skipped", stage=name, reason=entry.error))
            state.save(self.project, self.record)
            return "skip"
        if any(status not in state.DONE for status in upstream.values()):
            return "wait"  # upstream still running, or waiting for a gate
        if any(status not in state.DONE for status in gates.values()):
            return "wait"  # a reused stage in between does not open a gate that still waits
        if self.until is not None and self.config.environment_rank(
                stage_environment(self.config, self.record, name)) > \
                self.config.environment_rank(self.until):
            return "wait"
        return "ready"

    def _prepare(self, name: str) -> None:
        entry = self.record.stages[name]
        entry.parameters = resolve_parameters(self.config.stage(name), self.config,
                                              self.record.environment, self.run_info,
                                              self.outputs)
        entry.actor = self.actor

    # ---------------------------------------------------------------- the stage cache

    def _cache_key(self, name: str) -> str | None:
        stage = self.config.stage(name)
        if not stage.cacheable:
            return None
        upstream = {up: self.outputs.get(up, {}) for up in sorted(self.upstream[name])}
        try:
            return cache.stage_key(stage, self.project.root, self.project.state,
                                   self.record.stages[name].parameters, upstream,
                                   {"tracking_uri": self.record.tracking_uri,
                                    "experiment": self.record.experiment})
        except OSError:
            return None  # an unreadable notebook fails when it is executed, with its own error

    def _reused_from_cache(self, name: str) -> bool:
        """Resolve the stage's parameters and key; reuse an identical execution if allowed
        (once per stage: a stage waiting for a free worker is not looked up again)."""
        if name in self.looked_up:
            return False
        self.looked_up.add(name)
        self._prepare(name)
        entry = self.record.stages[name]
        entry.cache_key = self._cache_key(name)
        if entry.cache_key is None or not self.options.cache:
            return False
        hit = cache.lookup(self.project, entry.cache_key)
        if hit is None:
            return False
        if self.kernels is not None:
            self.kernels.discard(name)
        entry.status, entry.reuse, entry.reused_from = "reused", "cache", hit.run_id
        entry.notebook, entry.outputs = hit.notebook, hit.outputs
        entry.started = entry.finished = state.now()
        entry.duration_s = 0.0
        self.outputs[name] = dict(hit.outputs)
        note_mlflow(self.record, hit.outputs, self.config.model.name, hit.actor)
        state.save(self.project, self.record)
        archive.record_stage(self.project, self.record, name, None)
        self.report(make_event("stage_finished", stage=name, status="reused", duration_s=0.0,
                               error=None, reused_from=hit.run_id, cache_key=entry.cache_key))
        return True

    # ---------------------------------------------------------------- executing

    def _submit(self, name: str, workers: ThreadPoolExecutor,
                running: dict[Future[tuple[StageResult, Path | None]], str]) -> None:
        entry = self.record.stages[name]
        stage = self.config.stage(name)
        if stage.environment:  # load tests and monitors measure: none of our background work
            wait(self.published)  # (HTML, MLflow artifacts, kernels shutting down) may run
            wait_retired(timeout=KILL_AFTER + 30)  # beside them
        entry.notebook = f"{name}.ipynb"
        entry.status, entry.started = "running", state.now()  # the scheduler's view at once
        kernel = None
        if self.kernels is not None:
            kernel = self.kernels.take(name, self._kernel_of(name) or "")
        if self.local:
            entry.kernel = "cold" if kernel is None else "forked" if kernel.forked else "warm"
        executor = executor_for(self.record.executor, self.project, self.config,
                                stage_environment(self.config, self.record, name))
        running[workers.submit(self._attempts, name, executor, kernel)] = name

    def _attempts(self, name: str, executor: Any, kernel: StageKernel | None
                  ) -> tuple[StageResult, Path | None]:
        """Execute a stage until an attempt counts: it succeeds, or fails in a way its retry
        policy does not retry. Each retried attempt is archived as ``<stage>.attempt-<n>.ipynb``
        and recorded (``run.json`` first, then the ledger); the last keeps ``<stage>.ipynb``.
        Runs on a worker thread; only a retry touches the record meanwhile."""
        stage = self.config.stage(name)
        entry = self.record.stages[name]
        policy = self.config.pipeline.retry_policy(stage)

        def retried(result: StageResult) -> bool:
            if result.succeeded or result.failure not in policy or self.cancel.is_set():
                return False
            used = sum(1 for a in entry.attempts if a.failure == result.failure)
            return used < policy[result.failure]

        while True:
            number = len(entry.attempts) + 1
            entry.status, entry.started, entry.failure = "running", state.now(), None
            state.save(self.project, self.record)
            self.report(make_event("stage_started", stage=name, notebook=stage.notebook,
                                   kernel=entry.kernel))
            result, archived = run_archived_stage(
                self.project, self.record, name, stage, self.secrets,
                on_cell=cell_reporter(self.report, name), executor=executor,
                archive_as=lambda r, n=number: archive.attempt_name(name, n)
                if retried(r) else f"{name}.ipynb", kernel=kernel, cancel=self.cancel)
            kernel = None  # used up: a retry starts a fresh one
            if not retried(result):
                return result, archived
            attempt = state.Attempt(number=number, failure=result.failure, error=result.error,
                                    notebook=archived.name if archived else None,
                                    started=entry.started, finished=state.now(),
                                    duration_s=round(result.duration_s, 3))
            entry.attempts.append(attempt)
            if self.local:
                entry.kernel = "cold"
            state.save(self.project, self.record)
            archive.record_attempt(self.project, self.record, name, attempt)
            used = sum(1 for a in entry.attempts if a.failure == attempt.failure)
            self.report(make_event(
                "warning", stage=name, message=f"stage {name} attempt {number} failed "
                f"({attempt.failure}): {attempt.error}; retry {used} of "
                f"{policy[attempt.failure]} for {attempt.failure}"))

    def _book(self, name: str, result: StageResult, archived: Path | None,
              publisher: ThreadPoolExecutor) -> None:
        """Record a finished stage: run.json, ledger, cache index, deploys; views later."""
        entry = self.record.stages[name]
        entry.status = "succeeded" if result.succeeded else "failed"
        entry.failure = None if result.succeeded else result.failure
        entry.outputs, entry.error = result.outputs, result.error
        entry.finished, entry.duration_s = state.now(), round(result.duration_s, 3)
        self.outputs[name] = result.outputs
        note_mlflow(self.record, result.outputs, self.config.model.name, self.actor)
        state.save(self.project, self.record)
        seq = archive.record_stage(self.project, self.record, name, archived)["seq"]
        if archived is not None:
            self.published.append(publisher.submit(
                archive.publish_views, self.project, self.record, name, archived, seq))
        if result.succeeded:
            if entry.cache_key and archived is not None:
                cache.remember(self.project.state, entry.cache_key, self.record.id, name,
                               archived)
            record_alias_output(self.project, self.record, name, self.actor)
            record_deploy(self.project, self.record, name,
                          stage_environment(self.config, self.record, name), self.actor,
                          self.report)
        self.report(make_event("stage_finished", stage=name, status=entry.status,
                               duration_s=result.duration_s, error=result.error,
                               kernel=entry.kernel))

    # ---------------------------------------------------------------- warming

    def _warm_next(self, running: dict[Future[tuple[StageResult, Path | None]], str]) -> None:
        """Start kernels for the pending stages that come next: first those that can start
        once the running ones finish (every stage they need is done or running), then the
        stages after those; never past a gate that is not decided. At most ``jobs`` kernels
        are kept (measured on 2 cores: warming more at once only slows the running stage)."""
        if self.kernels is None:
            return
        ahead = {*running.values()}
        for _ in range(LOOKAHEAD):
            level = [name for name in self._candidates(ahead) if name not in ahead]
            for name in level:
                if not self._warm(name):
                    return  # as many kernels kept or starting as allowed
            ahead.update(level)

    def _candidates(self, ahead: set[str]) -> list[str]:
        """Pending stages whose needs are all done or in ``ahead``, in pipeline order."""
        found = []
        for name, entry in self.record.stages.items():
            stage = self.config.stage(name)
            if entry.status != "pending" or stage.gate or name in ahead:
                continue
            if any(self.record.stages[up].status not in state.DONE and up not in ahead
                   for up in stage.needs):
                continue
            if any(self.record.stages[up].status not in state.DONE
                   for up in self.upstream_gates[name]):
                continue
            if self.until is not None and self.config.environment_rank(
                    stage_environment(self.config, self.record, name)) > \
                    self.config.environment_rank(self.until):
                continue
            found.append(name)
        return found

    def warm_ahead(self) -> None:
        """Before the run's own setup (MLflow store, run record): start kernels for the
        stages that can start at once, unless the stage cache has them."""
        if self.kernels is None:
            return
        for name, entry in self.record.stages.items():
            stage = self.config.stage(name)
            if entry.status != "pending" or stage.gate or \
                    any(self.record.stages[up].status not in state.DONE for up in stage.needs):
                continue
            try:
                self._prepare(name)
                key = self._cache_key(name) if self.options.cache else None
            except (LookupError, TypeError, ValueError):  # reported when the stage is prepared
                continue
            if key is not None and cache.lookup(self.project, key) is not None:
                continue
            if not self._warm(name):
                return

    def _kernel_of(self, name: str) -> str | None:
        """The kernel the stage's notebook asks for (read once per run), None without one."""
        if name not in self._kernel_names:
            path = self.project.root / self.config.stage(name).notebook
            self._kernel_names[name] = _kernel_name(path) if path.is_file() else None
        return self._kernel_names[name]

    def _warm(self, name: str) -> bool:
        """Warm a kernel for ``name`` (a stage without a notebook file is passed over); False
        when the pool is full."""
        kernel_name = self._kernel_of(name)
        if kernel_name is None or self.kernels is None:
            return True
        stage = self.config.stage(name)
        return self.kernels.warm(name, kernel_name, self.project.root, stage.startup_timeout,
                                 stage.preload)

    def _preloads(self) -> list[str]:
        """What the fork server imports: every ``preload`` module of the stages still to run,
        once, in pipeline order."""
        found: dict[str, None] = {}
        for name, entry in self.record.stages.items():
            stage = self.config.stage(name)
            if entry.status == "pending" and not stage.gate:
                found.update(dict.fromkeys(stage.preload))
        return list(found)

    def close(self) -> None:
        """Stop kernels warmed for stages that will not run here, and the fork server."""
        if self.kernels is not None:
            self.kernels.close(wait=KILL_AFTER)

    def _warn(self, stage: str | None, message: str) -> None:
        self.report(make_event("warning", stage=stage, message=message))


def run_stages(project: Project, config: Config, record: state.RunRecord, report: Reporter,
               actor: identity.Identity, until: str | None, secrets: Secrets,
               scheduler: Scheduler | None = None) -> None:
    """Execute the stages still to do; skip dependants of failures, hold back dependants of
    gates that are waiting, and stages of environments after ``until``."""
    if scheduler is None:
        scheduler = Scheduler(project, config, record, report, actor, until, secrets)
    scheduler.report = report
    scheduler.run()

