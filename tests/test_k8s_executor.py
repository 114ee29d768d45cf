"""``workbench run --executor kubernetes``: every stage a Job, through the real ``kubernetes``
client against an API emulator on 127.0.0.1. The test plays the Job controller and the kubelet:
it runs each Job's container command, arguments and environment (the Secret reference resolved
through the API) as a local process — papermill, for real — with a local folder standing in for
the shared store, then reports the outcome through the Job's ``/status``."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import Workspace, notebook
from k8s_emulator import NAMESPACE, TOKEN, Emulator, JobController, controller_client, running

from workbench.config import load_config
from workbench.execution.executors import ExecutorError, executor_for
from workbench.k8s.stage_job import decode_parameters
from workbench.project import Project

SECRET_VALUE = "s3cr3t-token-value-42"  # noqa: S105 - a test secret
RUN_ID = "20261127T120000Z-0a1b2c"
JOBS = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"

PREPARE = """import os
from workbench.scraps import glue

token = os.environ["API_TOKEN"]
print("the token is", token)
glue("message", f"code {code} ({type(code).__name__}) in {os.environ['WORKBENCH_ENVIRONMENT']}")
glue("token_length", len(token))
"""

PIPELINE = {
    "name": "mini",
    "secrets": ["API_TOKEN"],
    "stages": [
        {"name": "prepare", "notebook": "notebooks/prepare.ipynb",
         "parameters": {"code": "007", "run_id": {"from": "run.id"}},
         "outputs": {"message": "str", "token_length": "int"}},
        {"name": "report", "notebook": "notebooks/report.ipynb", "needs": ["prepare"],
         "parameters": {"message": {"from": "prepare.message"}},
         "outputs": {"shout": "str"}},
        {"name": "broken", "notebook": "notebooks/broken.ipynb", "needs": ["report"],
         "outputs": {"never": "str"}},
    ],
}


@pytest.fixture
def emulator() -> Any:
    with Emulator() as emu:
        from kubernetes import client

        core = client.CoreV1Api(controller_client(emu.url))
        core.create_namespaced_secret(NAMESPACE, {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "pipeline-secrets", "namespace": NAMESPACE},
            "data": {"API_TOKEN": base64.b64encode(SECRET_VALUE.encode()).decode()}})
        yield emu


def configure(ws: Workspace, emulator: Emulator, **executor: Any) -> Path:
    """The mini project with two stages and Kubernetes settings; returns the store folder."""
    ws.write_yaml("pipeline.yaml", PIPELINE)
    ws.write_notebook("prepare", notebook(PREPARE, parameters='code: str = "1"\nrun_id: str = ""'))
    ws.write_notebook("report", notebook(
        "from workbench.scraps import glue\nglue('shout', message.upper())",
        parameters='message: str = ""'))
    ws.write_notebook("broken", notebook("import time\ntime.sleep(1.5)",
                                         "raise ValueError('boom')"))
    store = ws.root.parent / "shared-store"
    ws.write_yaml("kubernetes.yaml", {"environments": {"dev": {
        "kubeconfig": str(emulator.kubeconfig(ws.root.parent / "kubeconfig.yaml")),
        "context": "emulator", "namespace": NAMESPACE, "poll_interval_s": 0.05,
        "executor": {"image": "registry.example.test/runner:1", "store": store.as_uri(),
                     "secret": "pipeline-secrets",
                     "tracking_uri": f"sqlite:///{ws.root}/.workbench/mlflow/mlflow.db",
                     **executor}}}})
    return store


def jobs_sent(emulator: Emulator) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in emulator.handler.sent()
            if r.method.value == "POST" and r.url.path == JOBS]


@pytest.mark.slow
def test_run_executes_every_stage_as_a_job_and_archives_locally(mini_project, emulator):
    ws = mini_project
    store = configure(ws, emulator)
    kubelet = JobController(emulator, {"/workspace": ws.root,
                                       "/tmp": ws.root.parent / "emptydir"})
    with running(kubelet):
        done = ws.cli("run", "--executor", "kubernetes", "--json", timeout=300,
                      env={"API_TOKEN": SECRET_VALUE})
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # broken failed
    record = ws.run_record()
    assert record["executor"] == "kubernetes" and record["status"] == "failed"
    prepare, report = record["stages"]["prepare"], record["stages"]["report"]
    assert (prepare["status"], report["status"]) == ("succeeded", "succeeded")
    assert prepare["outputs"] == {"message": "code 007 (str) in dev",
                                  "token_length": len(SECRET_VALUE)}
    assert report["outputs"] == {"shout": "CODE 007 (STR) IN DEV"}

    # each stage ran as a Job whose spec really carried the run: papermill in the runner image
    assert [run["returncode"] for run in kubelet.runs] == [0, 0, 1]
    jobs = jobs_sent(emulator)
    stages = ["prepare", "report", "broken"]
    assert [j["metadata"]["labels"]["workbench.io/stage"] for j in jobs] == stages
    for job, stage in zip(jobs, stages, strict=True):
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "registry.example.test/runner:1"
        args = container["args"]
        assert decode_parameters(args[args.index("--parameters") + 1]) == \
            record["stages"][stage]["parameters"]
        assert args[args.index("--output") + 1] == \
            f"{store.as_uri()}/{record['id']}/{stage}.ipynb"
        env = {e["name"]: e for e in container["env"]}
        assert env["API_TOKEN"] == {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "pipeline-secrets", "key": "API_TOKEN"}}}
        assert env["WORKBENCH_RUN_ID"]["value"] == record["id"]
        assert env["WORKBENCH_PROJECT"]["value"] == "/workspace"
        assert SECRET_VALUE not in json.dumps(job)  # never a parameter, never a plain value
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}"
               for r in emulator.handler.sent())

    # a failing notebook fails its stage with the notebook's own error, as a local stage does
    broken = record["stages"]["broken"]
    assert broken["status"] == "failed"
    assert re.fullmatch(r"cell \d+ raised ValueError: boom", broken["error"]), broken["error"]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert any(e["event"] == "cell" and e["stage"] == "broken"
               and e["source"].startswith("import time") for e in events)  # progress shown

    # archived locally as usual (the failed stage's partial notebook too), redacted; the
    # unredacted copies in the store are gone
    folder = ws.runs()[-1]
    archived = (folder / "prepare.ipynb").read_text()
    assert "the token is [REDACTED:API_TOKEN]" in archived and SECRET_VALUE not in archived
    assert (folder / "report.ipynb").is_file()
    assert "boom" in (folder / "broken.ipynb").read_text()
    assert [p for p in store.rglob("*") if p.is_file()] == []


@pytest.fixture
def stage_executor(mini_project: Workspace, emulator: Emulator, monkeypatch: pytest.MonkeyPatch):
    """The executor for dev, called as the runner calls it (inside the run's environment)."""
    def make(**executor: Any) -> Any:
        configure(mini_project, emulator, **executor)
        monkeypatch.setenv("WORKBENCH_RUN_ID", RUN_ID)
        monkeypatch.setenv("WORKBENCH_ENVIRONMENT", "dev")
        project = Project(mini_project.root)
        return executor_for("kubernetes", project, load_config(project.configs), "dev")

    return make


def call(executor: Any, ws: Workspace, name: str, **options: Any) -> tuple[Any, Path]:
    from workbench.execution.executors import ExecutionRequest

    output = ws.root / ".workbench" / "staging" / RUN_ID / f"{name}.ipynb"
    result = executor.execute(ExecutionRequest(
        notebook=ws.root / "notebooks" / f"{name}.ipynb", output=output, parameters={},
        declared_outputs={"never": "str"}, cwd=ws.root, timeout=30, **options))
    return result, output


@pytest.mark.parametrize(("mode", "error", "failure"), [
    ("fail", r"Job ml-dev/broken-[0-9t]+z-0a1b2c failed: BackoffLimitExceeded: Job has reached "
             r"the specified backoff limit", "startup"),
    ("deadline", r"^stage exceeded its timeout of 30 s$", "deadline"),
])
def test_a_job_that_fails_without_a_notebook(mini_project, emulator, stage_executor, mode,
                                             error, failure):
    ws = mini_project
    executor = stage_executor()
    ws.write_notebook("broken", notebook("print('never runs')"))
    with running(JobController(emulator, {}, mode=mode)):
        result, output = call(executor, ws, "broken")
    assert not result.succeeded and result.failure == failure
    assert re.search(error, result.error), result.error
    assert not output.exists()


def test_dry_run_creates_the_job_with_dry_run_all(mini_project, emulator, stage_executor):
    ws = mini_project
    executor = stage_executor()
    settings = ws.read_yaml("kubernetes.yaml")
    settings["environments"]["dev"]["dry_run"] = True
    ws.write_yaml("kubernetes.yaml", settings)
    executor = executor_for("kubernetes", Project(ws.root), load_config(ws.root / "configs"),
                            "dev")
    ws.write_notebook("noop", notebook("print('x')"))
    result, _ = call(executor, ws, "noop")
    assert result.error.startswith("dry run: the API server accepted Job ml-dev/noop-")
    posts = [r for r in emulator.handler.sent() if r.method.value == "POST"]
    assert len(posts) == 1 and posts[0].params["dryRun"] == "All"
    assert emulator.objects("batch/v1/jobs") == {}


def test_executor_settings_that_cannot_work_are_refused(mini_project, emulator, stage_executor,
                                                        monkeypatch):
    stage_executor()  # a valid configuration first
    ws = mini_project
    settings = ws.read_yaml("kubernetes.yaml")
    del settings["environments"]["dev"]["executor"]["tracking_uri"]
    ws.write_yaml("kubernetes.yaml", settings)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/somewhere/mlflow.db")
    config = load_config(ws.root / "configs")
    with pytest.raises(ExecutorError, match="executor.tracking_uri: the run's MLflow store "
                                            "sqlite:////tmp/somewhere/mlflow.db is on this"):
        executor_for("kubernetes", Project(ws.root), config, "dev")
    del settings["environments"]["dev"]["executor"]["secret"]
    ws.write_yaml("kubernetes.yaml", settings)
    with pytest.raises(ExecutorError, match=r"executor.secret: required, the pipeline declares "
                                            r"secrets \['API_TOKEN'\]"):
        executor_for("kubernetes", Project(ws.root), config, "dev")
    assert emulator.handler.sent() == []
