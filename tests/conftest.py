"""Shared fixtures: throw-away projects on disk and a way to run the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

# longest test files first on the xdist workers (tests/file_order.py)
pytest_plugins = ["file_order"]

REPO = Path(__file__).resolve().parents[1]
# Debian's chromium (installed by .ci/run); flags keep it off this machine's closed network.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def wait_until(what: str, probe: Any, timeout: float = 120.0, every: float = 0.1,
               detail: Any = None) -> Any:
    """Poll ``probe`` until it returns something truthy (that value); fail naming ``what``
    (and ``detail()``, when given) after ``timeout``: tests wait on conditions, never on a
    sleep that happens to be long enough."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}"
                        + (detail() if detail else ""))
        time.sleep(every)


def local_only(blocked: list[str], hosts: tuple[str, ...] = ("127.0.0.1",)) -> Any:
    """A Playwright route handler letting through files, ``data:`` and ``blob:`` URLs and
    pages of ``hosts``; any other request is aborted and its URL appended to ``blocked``."""
    from urllib.parse import urlsplit

    def route(request_route: Any) -> None:
        parts = urlsplit(request_route.request.url)
        if parts.scheme in ("data", "blob", "file") or parts.hostname in hosts:
            request_route.continue_()
        else:
            blocked.append(request_route.request.url)
            request_route.abort()

    return route


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def notebook(*cells: str, parameters: str = "") -> dict[str, Any]:
    """A minimal notebook: a ``parameters`` cell, then one code cell per string."""
    def cell(source: str, tags: list[str] | None = None) -> dict[str, Any]:
        return {"cell_type": "code", "execution_count": None, "id": f"c{abs(hash(source))}",
                "metadata": {"tags": tags or []}, "outputs": [], "source": source}

    return {
        "cells": [cell(parameters, ["parameters"]), *(cell(c) for c in cells)],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}, "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


IDENTITY_VARIABLES = ("JUPYTERHUB_USER", "GITHUB_ACTOR", "GITLAB_USER_LOGIN", "BUILD_USER_ID",
                      "GITHUB_ACTIONS", "ACTIONS_ID_TOKEN_REQUEST_URL",
                      "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "WORKBENCH_OIDC_ISSUER",
                      "WORKBENCH_ID_TOKEN", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_API_URL",
                      "JENKINS_API_TOKEN")


def clean_environment() -> dict[str, str]:
    """This process's environment without the variables that would point a child elsewhere."""
    dropped = ("MLFLOW_TRACKING_URI", "WORKBENCH_PROJECT", "WORKBENCH_RUN_ID", "JPY_SESSION_NAME",
               *IDENTITY_VARIABLES)
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


@dataclass
class Workspace:
    """A project folder plus helpers to edit its configs and run the CLI against it."""

    root: Path

    def write_yaml(self, name: str, data: Any) -> None:
        (self.root / "configs" / name).write_text(yaml.safe_dump(data, sort_keys=False))

    def read_yaml(self, name: str) -> Any:
        return yaml.safe_load((self.root / "configs" / name).read_text())

    def write_notebook(self, name: str, nb: dict[str, Any]) -> None:
        path = self.root / "notebooks" / f"{name}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(nb))

    def cli(self, *args: str, timeout: float = 600, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run ``workbench`` in a subprocess; ``env`` adds variables (e.g. a CI actor)."""
        env = {**clean_environment(), **(env or {})}
        return subprocess.run([sys.executable, "-m", "workbench", "--project", str(self.root),
                               *args], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=self.root)

    def runs(self) -> list[Path]:
        """Run folders, oldest first by their record's creation time (two runs started within
        the same second have ids in random order); a folder without a record yet is newest."""
        folder = self.root / "reports" / "runs"
        return sorted(folder.iterdir(), key=_created) if folder.is_dir() else []

    def run_record(self) -> dict[str, Any]:
        return json.loads((self.runs()[-1] / "run.json").read_text())


def _created(folder: Path) -> tuple[str, str]:
    try:
        return json.loads((folder / "run.json").read_text())["created"], folder.name
    except (OSError, ValueError, KeyError):
        return "~", folder.name  # after every timestamp


def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "WORKBENCH_PROJECT", "WORKBENCH_RUN_ID",
                 "JPY_SESSION_NAME", *IDENTITY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def oidc() -> Iterator[Any]:
    """A GitHub-Actions-like OIDC issuer on 127.0.0.1 (tests/tools/oidc.py): ``oidc.github(NAME)``
    gives the variables of a job in which GitHub vouches for NAME."""
    from tests.tools.oidc import Issuer

    with Issuer() as issuer:
        yield issuer


@pytest.fixture
def release_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """A copy of this repository's configs and notebooks, deploying on free ports."""
    _isolated_env(monkeypatch)
    root = tmp_path / "project"
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    workspace = Workspace(root)
    environments = workspace.read_yaml("environments.yaml")
    for env in environments["environments"].values():
        env["deploy"]["port"] = free_port()
    untimed(environments["environments"])
    workspace.write_yaml("environments.yaml", environments)
    yield workspace
    for env in environments["environments"]:
        if (root / ".workbench" / "servers" / f"{env}.json").exists():
            workspace.cli("stop", env)


def untimed(environments: dict[str, Any]) -> None:
    """The demo's latency limits (a qa SLO, a prod monitor) made loose enough that a busy
    machine never breaches them: tests of the release's mechanics must not depend on how fast
    this machine is today. Breaches are tested on purpose, with limits no server can meet
    (``tests/test_release_operations.py``)."""
    for env in environments.values():
        slo = env.get("slo")
        if isinstance(slo, dict):
            slo.update({k: v for k, v in {"p95_ms": 60_000, "p99_ms": 120_000,
                                          "min_throughput_rps": 0.1,
                                          "max_latency_ratio": 1_000.0}.items() if k in slo})
        monitor = env.get("monitor")
        if isinstance(monitor, dict) and "max_p95_ms" in monitor:
            monitor["max_p95_ms"] = 60_000


MINI_ENVIRONMENTS = {"environments": {"dev": {"deploy": {"target": "local", "port": 5999},
                                              "thresholds": {"min_score": 0.5}}}}
MINI_MODEL = {"name": "mini", "dataset": "iris", "target": "target", "task": "classification",
              "estimator": "sklearn.linear_model.LogisticRegression", "test_size": 0.25,
              "random_state": 42}


@pytest.fixture
def mini_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """An empty project with small environment and model configs; tests add the pipeline."""
    _isolated_env(monkeypatch)
    root = tmp_path / "mini"
    (root / "configs").mkdir(parents=True)
    workspace = Workspace(root)
    workspace.write_yaml("environments.yaml", MINI_ENVIRONMENTS)
    workspace.write_yaml("model.yaml", MINI_MODEL)
    return workspace


# --- a light gated project: one quick build stage, then qa and prod behind gates --------------

BUILD_STAGE = """import mlflow
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from workbench.registry.models import log_sklearn_model, register
from workbench.registry.store import connect
from workbench.scraps import glue

connect()
X, y = load_iris(return_X_y=True, as_frame=True)
with mlflow.start_run() as run:
    model = LogisticRegression(max_iter=300).fit(X, y)
    accuracy = float(model.score(X, y))
    mlflow.log_metric("accuracy", accuracy)
    logged = log_sklearn_model(model, X)
version, previous = register(logged.model_uri, model_name, {"workbench.run_id": run_id}, "dev")
glue("mlflow_run_id", run.info.run_id)
glue("model_version", version)
glue("metrics", {"accuracy": accuracy, "score": accuracy})
glue("champion", {})
glue("passed", True)
glue("alias_move", {"alias": "dev", "from": previous, "to": version})
"""

RELEASE_STAGE = """from workbench.scraps import glue

print(f"released v{version} to {environment}")
glue("released", f"{environment}:{version}")
"""

GATES = {
    "groups": {"reviewers": ["alice", "bob"], "managers": ["carol", "dave", "erin"]},
    "policies": {
        "qa": {"approvers": ["group:reviewers", "group:managers"], "quorum": 1,
               "valid_for": "1h"},
        "prod": {"approvers": ["group:managers"], "quorum": 2, "valid_for": "1h"},
    },
}


def gate_stage(name: str, needs: str, environment: str) -> dict[str, Any]:
    return {"name": name, "notebook": "notebooks/approve.ipynb", "needs": [needs],
            "gate": environment, "timeout": 300,
            "parameters": {"run_id": {"from": "run.id"}, "environment": {"from": "env.name"},
                           "mode": "headless"},
            "outputs": {"decision": "str", "approvers": "list", "bundle_digest": "str"}}


def release_stage(name: str, needs: str, environment: str) -> dict[str, Any]:
    return {"name": name, "notebook": "notebooks/release.ipynb", "needs": [needs],
            "environment": environment,
            "parameters": {"environment": {"from": "env.name"},
                           "version": {"from": "build.model_version"}},
            "outputs": {"released": "str"}}


GATED_PIPELINE = {
    "name": "gated",
    "stages": [
        {"name": "build", "notebook": "notebooks/build.ipynb",
         "parameters": {"model_name": {"from": "model.name"}, "run_id": {"from": "run.id"}},
         "outputs": {"mlflow_run_id": "str", "model_version": "str", "metrics": "dict",
                     "alias_move": "dict"}},
        gate_stage("approve_qa", "build", "qa"),
        release_stage("release_qa", "approve_qa", "qa"),
        gate_stage("approve_prod", "release_qa", "prod"),
        release_stage("release_prod", "approve_prod", "prod"),
    ],
}


@pytest.fixture
def gated_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A quick pipeline (build, approve_qa, release_qa, approve_prod, release_prod) using the
    real approval notebook, the real MLflow registry and the gates policy above."""
    _isolated_env(monkeypatch)
    root = tmp_path / "gated"
    (root / "configs").mkdir(parents=True)
    workspace = Workspace(root)
    environments = {name: {"deploy": {"target": "local", "port": free_port()},
                           "thresholds": {"min_score": 0.5}} for name in ("dev", "qa", "prod")}
    workspace.write_yaml("environments.yaml", {"environments": environments})
    workspace.write_yaml("model.yaml", MINI_MODEL)
    workspace.write_yaml("gates.yaml", GATES)
    workspace.write_yaml("pipeline.yaml", GATED_PIPELINE)
    (root / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / "approve.ipynb", root / "notebooks" / "approve.ipynb")
    workspace.write_notebook("build", notebook(
        BUILD_STAGE, parameters='model_name: str = "mini"\nrun_id: str = ""'))
    workspace.write_notebook("release", notebook(
        RELEASE_STAGE, parameters='environment: str = "qa"\nversion: str = ""'))
    return workspace


# --- resource hygiene: no kernel, model server or other process outlives the session ----------

SESSION_MARKER = "WORKBENCH_TEST_SESSION"  # every process the tests start inherits it


def processes_with(variable: str, value: str, command: bytes = b"") -> list[tuple[int, str]]:
    """Live processes (zombies excluded) whose environment sets ``variable=value`` and whose
    command line contains ``command``: (pid, command line)."""
    found = []
    needle = f"{variable}={value}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").strip()
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[0] != "Z" and command in cmdline:
            found.append((int(proc.name), cmdline.decode(errors="replace")[:160]))
    return found


def wait_until_gone(variable: str, value: str, command: bytes = b"", timeout: float = 15.0,
                    ignore: str | None = None) -> list[tuple[int, str]]:
    """Wait for such processes to exit (those whose command line contains ``ignore`` do not
    count); return the ones still there after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        left = [(pid, cmd) for pid, cmd in processes_with(variable, value, command)
                if ignore is None or ignore not in cmd]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session() -> Iterator[None]:
    """Mark every process the tests start; at the end, fail (and kill) any still running."""
    import contextlib
    import signal
    import uuid

    token = uuid.uuid4().hex
    os.environ[SESSION_MARKER] = token
    yield
    # multiprocessing's resource tracker and forkserver serve this process; they end with it
    left = wait_until_gone(SESSION_MARKER, token, timeout=10, ignore="from multiprocessing.")
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        pytest.fail("processes started by the tests outlived the session (killed now):\n"
                    + "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in left), pytrace=False)
