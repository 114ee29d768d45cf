"""The ``kubernetes`` stage executor: each stage runs as a Job (see :mod:`workbench.k8s.jobs`).

The input notebook goes to the shared store, the Job's papermill writes the executed notebook
back there after every cell, and when the Job has finished the notebook is copied to ``output``
in the run's staging folder, where the runner redacts and archives it as for a local stage.
Same signature and result as :func:`workbench.execution.stage.execute_stage`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, ClassVar, cast

from workbench.config import Config
from workbench.execution.executors import ExecutionRequest, ExecutorError
from workbench.execution.outputs import output_problems
from workbench.execution.stage import CellCallback, StageResult
from workbench.k8s import KubernetesError, checks, store
from workbench.k8s.client import api_client, api_error, is_not_found, to_dict
from workbench.k8s.config import LABEL, Cluster, Executor, cluster_for, is_local_uri
from workbench.k8s.jobs import job_name, stage_job
from workbench.k8s.manifests import POD_TMP
from workbench.project import PROJECT_ENV_VAR, Project
from workbench.registry.secret_guard import SECRET_NAMES_VAR
from workbench.run_record import Failure
from workbench.scraps import read_scraps

FORWARDED = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_DISABLE_TELEMETRY",
             "WORKBENCH_RUN_ID", "WORKBENCH_ENVIRONMENT", SECRET_NAMES_VAR)
GRACE_S = 60.0  # beyond the stage timeout (the Job's activeDeadlineSeconds) before we give up
ATTEMPTS = 5  # names tried when a Job of an interrupted attempt still exists


def make_executor(project: Project, config: Config, environment: str) -> JobExecutor:
    """The executor for stages acting on ``environment`` (its ``executor`` settings)."""
    cluster = cluster_for(project, environment, "executor")
    executor = _settings(cluster)
    where = f"{LABEL}: environments.{environment}.executor"
    if config.pipeline.secrets and not executor.secret:
        raise ExecutorError(f"{where}.secret: required, the pipeline declares secrets "
                            f"{config.pipeline.secrets}")
    tracking = executor.tracking_uri or _run_tracking_uri(project, config)
    if executor.tracking_uri is None and is_local_uri(tracking):
        raise ExecutorError(f"{where}.tracking_uri: the run's MLflow store {tracking} is on this "
                            f"machine and Jobs cannot reach it; set a tracking server there or "
                            f"in mlflow.tracking_uri (configs/pipeline.yaml)")
    return JobExecutor(project, config, environment, cluster, tracking)


def _run_tracking_uri(project: Project, config: Config) -> str:
    from workbench.registry.store import resolve

    return os.environ.get("MLFLOW_TRACKING_URI") or resolve(project, config.pipeline.mlflow
                                                             ).tracking_uri


def _settings(cluster: Cluster) -> Executor:
    if cluster.executor is None:
        raise ExecutorError("configs/kubernetes.yaml: the environment has no executor section")
    return cluster.executor


def job_state(job: dict[str, Any]) -> tuple[str, str]:
    """``("running" | "succeeded" | "failed", reason)`` from a Job's status."""
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", ""
        if condition.get("type") in ("Failed", "FailureTarget"):
            reason = condition.get("reason") or "Failed"
            message = condition.get("message") or ""
            return "failed", f"{reason}: {message}" if message else reason
    return "running", ""


def notebook_error(nb: dict[str, Any]) -> str | None:
    """The first error an executed notebook records, worded as the local executor words it."""
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return (f"cell {cell.get('execution_count')} raised {out.get('ename')}: "
                        f"{out.get('evalue')}")
    return None


def _first_line(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    return next((line.strip() for line in source.splitlines() if line.strip()), "")


class JobExecutor:
    """Runs stages as Jobs in the environment's namespace (the ``kubernetes`` executor)."""

    runs_here: ClassVar[bool] = False  # kernels run in pods: nothing is warmed or forked here

    @classmethod
    def create(cls, project: Project, config: Config, environment: str) -> JobExecutor:
        return make_executor(project, config, environment)

    def __init__(self, project: Project, config: Config, environment: str, cluster: Cluster,
                 tracking_uri: str):
        self.project, self.config, self.environment = project, config, environment
        self.cluster, self.settings, self.tracking_uri = cluster, _settings(cluster), tracking_uri

    def execute(self, request: ExecutionRequest) -> StageResult:
        """Run the stage as a Job; the request's kernel limits (start-up and per-cell bounds
        of the local executor) and pre-warmed kernel do not apply: the Job's deadline is the
        stage ``timeout``."""
        if request.kernel is not None:
            request.kernel.close()  # a kernel of this machine is of no use here
        notebook, output, timeout = request.notebook, request.output, request.timeout
        parameters, declared_outputs = request.parameters, request.declared_outputs
        on_cell = request.on_cell
        started = time.monotonic()
        run_id = request.run_id or os.environ.get("WORKBENCH_RUN_ID") or output.parent.name
        stage = request.stage or output.stem
        prefix = store.join(self.settings.store, run_id)
        input_url = store.join(prefix, f"{stage}.input.ipynb")
        output_url = store.join(prefix, f"{stage}.ipynb")

        def failed(error: str, failure: Failure, outputs: dict[str, Any] | None = None
                   ) -> StageResult:
            result = StageResult(False, outputs or {}, error, time.monotonic() - started)
            result.failure = failure  # the class the runner's retry policy reads
            return result

        try:
            store.write_bytes(input_url, notebook.read_bytes())
            state, reason = self._run(stage, run_id, notebook, input_url, output_url,
                                      parameters, timeout, on_cell)
            fetched = self._fetch(output_url, output)
        except (KubernetesError, store.StoreError, checks.ManifestInvalid) as exc:
            return failed(str(exc), "startup")
        finally:
            if not self.settings.keep_in_store:  # not redacted there: the archive is the record
                for url in (input_url, output_url):
                    with contextlib.suppress(store.StoreError, OSError):
                        store.delete(url)
        if state == "timeout":
            return failed(f"stage exceeded its timeout of {timeout:g} s", "deadline")
        if state != "succeeded":
            detail = notebook_error(_read(output)) if fetched else None
            if detail:
                return failed(detail, "error")
            return failed(reason, "kernel_died" if fetched else "startup")
        if not fetched:
            return failed(f"the Job succeeded but wrote no notebook to {output_url}", "error")
        scraps = read_scraps(_read(output))
        outputs = {name: scraps[name] for name in declared_outputs if name in scraps}
        problems = output_problems(scraps, declared_outputs)
        if problems:
            return failed("; ".join(problems), "error", outputs)
        return StageResult(True, outputs, None, time.monotonic() - started)

    def _environment(self) -> dict[str, str]:
        env = {key: os.environ[key] for key in FORWARDED if os.environ.get(key)}
        env.update({"MLFLOW_TRACKING_URI": self.tracking_uri,
                    "MLFLOW_DISABLE_TELEMETRY": "true",
                    PROJECT_ENV_VAR: self.settings.workdir,
                    "HOME": POD_TMP})
        env.setdefault("WORKBENCH_ENVIRONMENT", self.environment)
        return env

    def _run(self, stage: str, run_id: str, notebook: Path, input_url: str, output_url: str,
             parameters: dict[str, Any], timeout: float, on_cell: CellCallback | None
             ) -> tuple[str, str]:
        """Create the Job and wait for it; ``(state, reason)``."""
        try:
            relative = str(notebook.resolve().relative_to(self.project.root.resolve()))
        except ValueError:
            relative = notebook.name
        api = api_client(self.project, self.cluster)
        name = None
        try:
            for attempt in range(1, ATTEMPTS + 1):
                manifest = stage_job(
                    self.cluster, name=job_name(stage, run_id, attempt), run_id=run_id,
                    stage=stage, environment=self.environment, notebook=relative,
                    input_url=input_url, output_url=output_url, parameters=parameters,
                    env=self._environment(), secrets=list(self.config.pipeline.secrets),
                    timeout=timeout)
                checks.validate([manifest], self.cluster.kubernetes_version)
                if self._create(api, manifest):
                    name = manifest["metadata"]["name"]
                    break
            if name is None:
                raise KubernetesError(f"stage {stage}: Jobs for run {run_id} already exist "
                                      f"({ATTEMPTS} attempts); delete them")
            if self.cluster.dry_run:
                return "dry run", (f"dry run: the API server accepted Job "
                                   f"{self.cluster.namespace}/{name}; nothing ran")
            return self._wait(api, name, timeout, output_url, on_cell)
        except BaseException:
            if name is not None and not self.cluster.dry_run:
                self._delete(api, name)
            raise
        finally:
            api.close()

    def _create(self, api: Any, manifest: dict[str, Any]) -> bool:
        """Create the Job; False when one of that name exists already."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:  # the client takes a manifest as a dict as well as a V1Job
            client.BatchV1Api(api).create_namespaced_job(
                self.cluster.namespace, cast(Any, manifest),
                dry_run="All" if self.cluster.dry_run else None)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise api_error(f"creating Job {self.cluster.namespace}/"
                            f"{manifest['metadata']['name']}", exc) from exc
        return True

    def _wait(self, api: Any, name: str, timeout: float, output_url: str,
              on_cell: CellCallback | None) -> tuple[str, str]:
        from kubernetes import client

        batch = client.BatchV1Api(api)
        deadline = time.monotonic() + timeout + GRACE_S
        shown = -1
        while True:
            try:
                job = to_dict(api, batch.read_namespaced_job_status(name, self.cluster.namespace))
            except Exception as exc:
                if is_not_found(exc):
                    return "failed", f"Job {self.cluster.namespace}/{name} was deleted"
                raise api_error(f"reading Job {self.cluster.namespace}/{name}", exc) from exc
            state, reason = job_state(job)
            if state == "failed" and reason.startswith("DeadlineExceeded"):
                return "timeout", reason
            if state != "running":
                return state, f"Job {self.cluster.namespace}/{name} failed: {reason}"
            if on_cell is not None:
                shown = self._progress(output_url, on_cell, shown)
            if time.monotonic() >= deadline:
                self._delete(api, name)
                return "timeout", ""
            time.sleep(self.cluster.poll_interval_s)

    def _progress(self, url: str, on_cell: CellCallback, shown: int) -> int:
        """Report the cell the Job is executing, from the notebook it saves after each cell."""
        try:
            cells = json.loads(store.read_bytes(url)).get("cells", [])
        except (store.StoreError, ValueError, OSError):
            return shown
        running = next((i for i, cell in enumerate(cells)
                        if cell.get("metadata", {}).get("papermill", {}).get("status")
                        == "running"), None)
        if running is not None and running != shown:
            on_cell(running, len(cells), _first_line(cells[running]))
            return running
        return shown

    def _delete(self, api: Any, name: str) -> None:
        from kubernetes import client

        with contextlib.suppress(Exception):  # best effort: ttlSecondsAfterFinished remains
            client.BatchV1Api(api).delete_namespaced_job(
                name, self.cluster.namespace, propagation_policy="Background")

    def _fetch(self, url: str, output: Path) -> bool:
        """Copy the executed notebook to ``output``; False when the Job wrote none."""
        if not store.exists(url):
            return False
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(store.read_bytes(url))
        return True


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
