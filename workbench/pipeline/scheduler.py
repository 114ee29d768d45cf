"""Executing a run's stages: in parallel where the graph allows, on pre-warmed kernels, and
reusing identical earlier executions from the stage cache.

The scheduler thread (the caller's) owns the run record: it decides gates, cache hits and skips,
submits stages to a pool of at most ``jobs`` worker threads, and books each result when it
comes back, through the run's :class:`~workbench.pipeline.recorder.Recorder` (it writes no file
itself). Workers only execute and archive one stage (with its retries). While stages run, the
kernels of the stages that come next are started and their ``preload`` modules imported
(:mod:`workbench.execution.warm`). HTML rendering and MLflow artifacts of a finished stage are
produced by a listener in the background; the scheduler waits for them (``bus.drain``) before
a stage that acts on an environment starts, and before the run ends.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from workbench import run_record
from workbench.audit import archive
from workbench.audit.redact import Secrets
from workbench.clock import utc_now
from workbench.config import Config
from workbench.events import Bus, CellStarted, StageFinished, StageSkipped, StageStarted
from workbench.execution import cache
from workbench.execution.executors import StageExecutor, executor_for, executor_plugin
from workbench.execution.notebook_file import kernel_name_of
from workbench.execution.stage import KILL_AFTER, StageResult
from workbench.execution.warm import KernelPool, StageKernel, wait_retired
from workbench.identity import Identity
from workbench.pipeline.gates import run_gate
from workbench.pipeline.recorder import Recorder
from workbench.pipeline.stage_run import run_archived_stage
from workbench.project import Project
from workbench.run_record import RunRecord, StageRecord
from workbench.stage_graph import UnresolvedReference, ancestors, resolve_parameters

WAIT_STEP = 0.5  # seconds between checks of a Ctrl-C while stages run
LOOKAHEAD = 2  # warm the kernels of the next stages and of the ones after those
Running = dict[Future[tuple[StageResult, Path | None]], str]


def note_mlflow(record: RunRecord, entry: StageRecord, model_name: str,
                actor: Identity | None) -> None:
    """Pick up the trained MLflow run and the registered version from the stage's outputs
    that play those roles (``trained_run``, ``model_version``)."""
    run_id = entry.output("trained_run")
    if isinstance(run_id, str) and run_id and run_id not in record.mlflow_run_ids:
        record.mlflow_run_ids.append(run_id)
        record.trained_by = record.trained_by or actor
    version = entry.output("model_version")
    if version not in (None, "", 0):
        record.model_version = run_record.ModelVersion(name=model_name, version=str(version))


def stage_environment(config: Config, record: RunRecord, name: str) -> str:
    return config.stage(name).target_environment or record.environment


class Scheduler:
    """Runs the pending stages of one run (see the module doc)."""

    def __init__(self, project: Project, config: Config, recorder: Recorder, bus: Bus,
                 actor: Identity, until: str | None, secrets: Secrets,
                 kernel_env: dict[str, str] | None = None):
        record = recorder.record
        self.project, self.config, self.record = project, config, record
        self.recorder, self.bus = recorder, bus
        self.actor, self.until, self.secrets = actor, until, secrets
        self.options = record.options
        self.jobs = max(1, self.options.jobs)
        self.cancel = threading.Event()
        self.run_info = {"id": record.id, "git_commit": record.git_commit,
                         "config_hash": record.config_hash, "environment": record.environment}
        self.outputs = {name: dict(entry.outputs) for name, entry in record.stages.items()
                        if entry.status in run_record.DONE}
        self.upstream = ancestors(config)
        self.upstream_gates = {name: {up for up in ups if config.stage(up).gate}
                               for name, ups in self.upstream.items()}
        self.local = executor_plugin(record.executor).runs_here
        self.kernels: KernelPool | None = None
        if self.options.warm and self.local:
            self.kernels = KernelPool(self.jobs, on_problem=self._warn, env=kernel_env,
                                      fork_preload=self._preloads() if self.options.fork
                                      else (), cwd=project.root)
        self.looked_up: set[str] = set()  # stages whose cache key was computed and looked up
        self._kernel_names: dict[str, str | None] = {}  # per stage; None: no notebook file

    # ---------------------------------------------------------------- the loop

    def run(self) -> None:
        workers = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="stage")
        running: Running = {}
        try:
            while True:
                self._start_ready(workers, running)
                if not running:
                    break
                done, _ = wait(running, timeout=WAIT_STEP, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    result, archived = future.result()
                    self._book(name, result, archived)
        except BaseException:
            self.cancel.set()  # every stage still running is killed and returns at once
            wait(running, timeout=KILL_AFTER + 30)
            raise
        finally:
            workers.shutdown(wait=False)
            self.bus.drain()  # HTML and MLflow artifacts of every stage (forked from the
            if self.kernels is not None:  # fork server, which takes no request after this)
                self.kernels.close()
            wait_retired(timeout=KILL_AFTER + 30)  # no kernel of the run outlives it
            if self.kernels is not None:
                self.kernels.close(wait=KILL_AFTER)  # nor does the fork server

    def _start_ready(self, workers: ThreadPoolExecutor, running: Running) -> None:
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
                try:
                    if self.config.stage(name).gate:
                        self._prepare(name)
                        run_gate(self.project, self.config, self.recorder, self.bus, name,
                                 self.actor, self.secrets)
                        self.outputs[name] = dict(entry.outputs)
                        changed = True
                        continue
                    if self._reused_from_cache(name):
                        changed = True
                        continue
                except UnresolvedReference as exc:  # the stage fails before it starts
                    self._book(name, StageResult(succeeded=False, error=str(exc),
                                                 failure="error"), None)
                    changed = True
                    continue
                if len(running) < self.jobs:
                    self._submit(name, workers, running)
        self._warm_next(running)

    def _upstream_state(self, name: str, ahead: set[str] | frozenset[str] = frozenset()
                        ) -> str:
        """The one readiness rule: ``broken`` (a stage it needs, or a gate before it, failed
        or was skipped), ``waiting`` (one is not done: still running, or a gate waits; those
        in ``ahead`` count as done; a gate never does) or ``ready``. A stage of an
        environment after ``until`` waits."""
        stage = self.config.stage(name)
        stages = self.record.stages
        needs = {up: stages[up].status for up in stage.needs}
        gates = {up: stages[up].status for up in self.upstream_gates[name]}
        if any(status in ("failed", "skipped") for status in (*needs.values(),
                                                               *gates.values())):
            return "broken"
        if any(status not in run_record.DONE and up not in ahead
               for up, status in needs.items()):
            return "waiting"
        if any(status not in run_record.DONE for status in gates.values()):
            return "waiting"  # a reused stage in between does not open a gate that waits
        if self.until is not None and self.config.environment_rank(
                stage_environment(self.config, self.record, name)) > \
                self.config.environment_rank(self.until):
            return "waiting"
        return "ready"

    def _readiness(self, name: str) -> str:
        """``ready``, ``wait``, or ``skip`` (recorded as skipped here)."""
        state = self._upstream_state(name)
        if state == "broken":
            stage = self.config.stage(name)
            stages = self.record.stages
            broken = next(up for up in (*stage.needs, *sorted(self.upstream_gates[name]))
                          if stages[up].status in ("failed", "skipped"))
            entry = stages[name]
            entry.status = "skipped"
            entry.error = f"upstream stage {broken!r} did not succeed"
            self.bus.emit(StageSkipped(stage=name, reason=entry.error))
            self.recorder.save()
            return "skip"
        return "ready" if state == "ready" else "wait"

    def _prepare(self, name: str) -> None:
        entry = self.record.stages[name]
        entry.parameters = resolve_parameters(self.config.stage(name), self.config,
                                              self.record.environment, self.run_info,
                                              self.outputs, self.record.overrides)
        entry.actor = self.actor

    # ---------------------------------------------------------------- the stage cache

    def _cache_key(self, name: str) -> str | None:
        stage = self.config.stage(name)
        if not stage.cacheable:
            return None
        upstream = {up: self.outputs.get(up, {}) for up in sorted(self.upstream[name])}
        try:
            return cache.stage_key(stage, self.project.root, self.project.local_state,
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
        entry.started = entry.finished = utc_now()
        entry.duration_s = 0.0
        self.outputs[name] = dict(hit.outputs)
        note_mlflow(self.record, entry, self.config.model.name, hit.actor)
        self.recorder.stage(name, None)
        self.bus.emit(StageFinished(stage=name, status="reused", duration_s=0.0, error=None,
                                    reused_from=hit.run_id, cache_key=entry.cache_key))
        return True

    # ---------------------------------------------------------------- executing

    def _submit(self, name: str, workers: ThreadPoolExecutor, running: Running) -> None:
        entry = self.record.stages[name]
        stage = self.config.stage(name)
        if stage.environment:  # load tests and monitors measure: none of our background work
            self.bus.drain()  # (HTML, MLflow artifacts, kernels shutting down) may run beside
            wait_retired(timeout=KILL_AFTER + 30)  # them
        entry.notebook = f"{name}.ipynb"
        entry.status, entry.started = "running", utc_now()  # the scheduler's view at once
        kernel = None
        if self.kernels is not None:
            self._warm(name, starting=True)  # forked now if nobody warmed one for it
            kernel = self.kernels.take(name, self._kernel_of(name) or "")
        if self.local:
            entry.kernel = "cold" if kernel is None else "forked" if kernel.forked else "warm"
        environment = stage_environment(self.config, self.record, name)
        executor = executor_for(self.record.executor, self.project, self.config, environment)
        running[workers.submit(self._attempts, name, executor, kernel, environment)] = name

    def _attempts(self, name: str, executor: StageExecutor, kernel: StageKernel | None,
                  environment: str) -> tuple[StageResult, Path | None]:
        """Execute a stage until an attempt counts: it succeeds, or fails in a way its retry
        policy does not retry. Each retried attempt is archived as ``<stage>.attempt-<n>.ipynb``
        and recorded; the last keeps ``<stage>.ipynb``. Runs on a worker thread; only a retry
        touches the record meanwhile."""
        stage = self.config.stage(name)
        entry = self.record.stages[name]
        policy = self.config.pipeline.retry_policy(stage)

        def archived_as(result: StageResult, number: int) -> str:
            return archive.attempt_name(name, number) if retried(result) else f"{name}.ipynb"

        def retried(result: StageResult) -> bool:
            if result.succeeded or result.failure not in policy or self.cancel.is_set():
                return False
            used = sum(1 for a in entry.attempts if a.failure == result.failure)
            return used < policy[result.failure]

        def on_cell(index: int, total: int, source: str) -> None:
            self.bus.emit(CellStarted(stage=name, index=index, total=total, source=source))

        while True:
            number = len(entry.attempts) + 1
            entry.status, entry.started, entry.failure = "running", utc_now(), None
            self.recorder.save()
            self.bus.emit(StageStarted(stage=name, notebook=stage.notebook, kernel=entry.kernel))
            result, archived = run_archived_stage(
                self.project, self.record, name, stage, self.secrets, environment,
                on_cell=on_cell, executor=executor,
                archive_as=functools.partial(archived_as, number=number), kernel=kernel,
                cancel=self.cancel)
            kernel = None  # used up: a retry starts a fresh one
            if not retried(result) or result.failure is None:
                return result, archived
            attempt = run_record.Attempt(
                number=number, failure=result.failure, error=result.error,
                notebook=archived.name if archived else None, started=entry.started,
                finished=utc_now(), duration_s=round(result.duration_s, 3))
            entry.attempts.append(attempt)
            if self.local:
                entry.kernel = "cold"
            self.recorder.attempt(name, attempt)
            used = sum(1 for a in entry.attempts if a.failure == attempt.failure)
            self._warn(name, f"stage {name} attempt {number} failed ({attempt.failure}): "
                             f"{attempt.error}; retry {used} of {policy[attempt.failure]} for "
                             f"{attempt.failure}")

    def _book(self, name: str, result: StageResult, archived: Path | None) -> None:
        """Record a finished stage: run.json and ledger (and, through the listeners, the
        cache index, HTML and MLflow artifacts), then its deploy or alias move."""
        entry = self.record.stages[name]
        entry.status = "succeeded" if result.succeeded else "failed"
        entry.failure = None if result.succeeded else result.failure
        entry.outputs, entry.error = result.outputs, result.error
        entry.finished, entry.duration_s = utc_now(), round(result.duration_s, 3)
        self.outputs[name] = result.outputs
        note_mlflow(self.record, entry, self.config.model.name, self.actor)
        self.recorder.stage(name, archived)
        if result.succeeded:
            self.recorder.alias_output(name, self.actor)
            self.recorder.deploy(name, stage_environment(self.config, self.record, name),
                                 self.actor)
        self.bus.emit(StageFinished(stage=name, status=entry.status,
                                    duration_s=result.duration_s, error=result.error,
                                    kernel=entry.kernel))

    # ---------------------------------------------------------------- warming

    def _warm_next(self, running: Running) -> None:
        """Start kernels for the pending stages that come next: first those that can start
        once the running ones finish (every stage they need is done or running), then the
        stages after those; never past a gate that is not decided. At most ``jobs`` kernels
        are kept (measured on 2 cores: warming more at once only slows the running stage),
        fewer while forked ones run (``KernelPool``: each holds copies of server pages)."""
        if self.kernels is None:
            return
        ahead = {*running.values()}
        for _ in range(LOOKAHEAD):
            level = self._candidates(ahead)
            for name in level:
                if not self._warm(name):
                    return  # as many kernels kept or starting as allowed
            ahead.update(level)

    def _candidates(self, ahead: set[str]) -> list[str]:
        """Pending stages (not gates) that could start once ``ahead`` are done, in order."""
        return [name for name, entry in self.record.stages.items()
                if entry.status == "pending" and not self.config.stage(name).gate
                and name not in ahead and self._upstream_state(name, ahead) == "ready"]

    def warm_ahead(self) -> None:
        """Before the run's own setup (MLflow store, run record): start kernels for the
        stages that can start at once, unless the stage cache has them."""
        if self.kernels is None:
            return
        for name in self._candidates(set()):
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
            self._kernel_names[name] = kernel_name_of(path) if path.is_file() else None
        return self._kernel_names[name]

    def _warm(self, name: str, starting: bool = False) -> bool:
        """Warm a kernel for ``name`` (a stage without a notebook file is passed over); False
        when the pool is full (see ``KernelPool.warm`` for ``starting``)."""
        kernel_name = self._kernel_of(name)
        if kernel_name is None or self.kernels is None:
            return True
        stage = self.config.stage(name)
        return self.kernels.warm(name, kernel_name, self.project.root, stage.startup_timeout,
                                 stage.preload, starting=starting)

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
        self.bus.warn(message, stage=stage)
