"""Canary releases on the local target under steady traffic from four clients, with real
model servers, a real MLflow store and the real proxy: 10 % -> 50 % -> 100 % completes with
no failed request and each step's measured share within tolerance; a candidate that is slow
or that fails is aborted at its first step, every request answered, the serving version
untouched, the abort recorded like a rollback."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from typing import Any

import pytest

from tests.conftest import REPO, Workspace, free_port, notebook, processes_with
from workbench.config import load_config
from workbench.deploy import deploy_to, local
from workbench.deploy.canary import CanaryAborted
from workbench.deploy.shadow import shadow, shadow_markdown
from workbench.objectives import check as check_objectives
from workbench.project import Project

pytestmark = pytest.mark.slow

CLIENTS = 4
BODY = json.dumps({"dataframe_split": {"columns": ["x"], "data": [[0.5], [-0.5]]}}).encode()


def tolerance(weight: float, requests: int) -> float:
    """Percentage points a measured share may be off its weight: four binomial standard
    deviations of the step's requests, at least 5."""
    p = weight / 100
    return max(5.0, 400 * math.sqrt(p * (1 - p) / max(requests, 1)))


class Traffic:
    """Clients posting to the endpoint until stopped: every answer's status and version."""

    def __init__(self, url: str) -> None:
        self.url = f"{url}/invocations"
        self.answers: Counter[tuple[int, str]] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                        for n in range(CLIENTS)]
        self.lock = threading.Lock()

    def _client(self, number: int) -> None:
        sent = 0
        while not self.stop.is_set():
            sent += 1
            request = urllib.request.Request(self.url, data=BODY, method="POST", headers={
                "Content-Type": "application/json", "X-Client": f"{number}-{sent}"})
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:  # nosec B310
                    answer.read()
                    key = (answer.status, answer.headers.get("X-Workbench-Version", ""))
            except OSError as exc:
                with self.lock:
                    self.failures.append(str(exc))
                continue
            with self.lock:
                self.answers[key] += 1

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


@pytest.fixture
def canary_project(mini_project: Workspace) -> Workspace:
    ws = mini_project
    ws.write_yaml("environments.yaml", {"environments": {"prod": {
        "deploy": {"target": "local", "port": free_port(), "strategy": "canary", "canary": {
            "steps": [{"weight": 10, "pause": "3s"}, {"weight": 50, "pause": "3s"},
                      {"weight": 100, "pause": "2s"}],
            "sticky_header": "X-Client",
            "analysis": {"max_error_rate": 0.0, "max_p95_ms": 150, "min_requests": 20}}}}}})
    ws.write_yaml("model.yaml", {"name": "canaried"})
    ws.write_yaml("pipeline.yaml", {"name": "p", "stages": [
        {"name": "one", "notebook": "notebooks/one.ipynb"}]})
    ws.write_notebook("one", notebook("print(1)"))
    return ws


def register(ws: Workspace, *configurations: dict[str, Any]) -> list[str]:
    done = subprocess.run([sys.executable, str(REPO / "tests" / "tools" /
                                               "register_configured.py"), str(ws.root),
                           json.dumps(configurations)], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_canary_completes_and_bad_candidates_are_aborted(canary_project: Workspace) -> None:
    ws = canary_project
    project = Project(ws.root)
    config = load_config(project.configs)
    uri = f"sqlite:///{project.mlflow_dir / 'mlflow.db'}"
    good, better, slow, failing = register(ws, {}, {"threshold": 0.7}, {"sleep_s": 0.3},
                                           {"fail": True})
    try:
        first = deploy_to(project, config, "prod", "canaried", good, uri)
        assert first.version == good and "first deploy" in first.describe()
        with Traffic(first.url) as traffic:
            rollout = deploy_to(project, config, "prod", "canaried", better, uri)
            assert rollout.version == better
            assert [s.weight for s in rollout.steps] == [10, 50, 100]
            for step in rollout.steps:
                assert step.passed, step.breaches
                requests = step.candidate["requests"] + step.serving.get("requests", 0)
                assert abs(step.share - step.weight) <= tolerance(step.weight, requests), step
            served = local.current(project, "prod")
            assert served is not None and served.version == better
            before = (served.backend_pid, served.backend_port)

            for candidate, breach in ((slow, "max_p95_ms 150"),
                                      (failing, "max_error_rate 0")):
                with pytest.raises(CanaryAborted) as aborted:
                    deploy_to(project, config, "prod", "canaried", candidate, uri)
                assert f"v{candidate} on prod aborted at step 1 (10%)" in str(aborted.value)
                assert breach in str(aborted.value)
                assert f"every request is back on v{better}" in str(aborted.value)
                kept = local.current(project, "prod")
                assert kept is not None and (kept.backend_pid, kept.backend_port) == before
                route = json.loads(local.route_file(project, "prod").read_text())
                assert "canary" not in route and route["version"] == better
                assert local.served_model(kept.url)["version"] == better
        assert traffic.failures == []
        statuses = Counter(status for status, _ in traffic.answers.elements())
        assert set(statuses) == {200}, traffic.answers  # the failing one's requests too
        versions = Counter(version for _, version in traffic.answers.elements())
        assert versions[good] > 0 and versions[better] > 0 and versions[slow] > 0
        assert versions[failing] == 0  # each of its failures was answered by the serving one
        rollbacks = [json.loads(p.read_text()) for p in
                     sorted((ws.root / "reports" / "rollbacks").glob("*.json"))]
        assert [(r["trigger"], r["from_version"], r["to_version"]) for r in rollbacks] == [
            ("canary", slow, better), ("canary", failing, better)]
        assert "p95" in rollbacks[0]["reason"] and rollbacks[0]["threshold"]["max_p95_ms"] == 150
        steps = [e for e in _ledger(ws) if e["event"] == "canary_step"]
        assert [(e["data"]["version"], e["data"]["verdict"]) for e in steps] == [
            (better, "pass"), (better, "pass"), (better, "pass"), (slow, "abort"),
            (failing, "abort")]
        assert not _model_servers_of(project, slow) and not _model_servers_of(project, failing)
    finally:
        local.stop(project, "prod")


def _ledger(ws: Workspace) -> list[dict[str, Any]]:
    return [json.loads(line) for line in
            (ws.root / "reports" / "ledger.jsonl").read_text().splitlines()]


def _model_servers_of(project: Project, version: str) -> list[str]:
    """The pids of this project's prod model servers of ``version`` (by the endpoint marker
    every server of ours carries: another test file's servers of a model called the same, on
    another worker, are not this test's)."""
    command = f"workbench.deploy.model_server --model-uri models:/canaried/{version} ".encode()
    return [str(pid) for pid, _ in processes_with(local.ENDPOINT_VARIABLE,
                                                  local._marker(project, "prod"), command)]


def test_shadow_compares_answers_and_clients_see_only_the_serving_version(
        canary_project: Workspace) -> None:
    ws = canary_project
    project = Project(ws.root)
    config = load_config(project.configs)
    uri = f"sqlite:///{project.mlflow_dir / 'mlflow.db'}"
    serving, same, differing = register(ws, {}, {}, {"threshold": 0.7})
    try:
        endpoint = deploy_to(project, config, "prod", "canaried", serving, uri,
                             strategy="replace")
        with Traffic(endpoint.url) as traffic:
            identical = shadow(project, "prod", "prod", "canaried", same, uri, 3.0)
            # rows 0.5 and -0.5: the candidate labels the first 0 instead of 1, the second
            # alike: exactly half of its labels differ
            half = shadow(project, "prod", "prod", "canaried", differing, uri, 3.0)
        assert identical.comparison["compared"] >= 20, identical.comparison
        assert identical.disagreement_rate == 0.0
        assert half.comparison["compared"] >= 20
        assert half.disagreement_rate == pytest.approx(0.5)
        assert half.comparison["disagreed"] == half.comparison["compared"]
        assert half.comparison["errors"] == 0 and half.comparison["shadow_p95_ms"] > 0
        assert traffic.failures == []
        assert set(traffic.answers) == {(200, serving)}  # only the serving version answered
        route = json.loads(local.route_file(project, "prod").read_text())
        assert "shadow" not in route
        assert not _model_servers_of(project, same)
        assert not _model_servers_of(project, differing)
        assert _model_servers_of(project, serving)  # while the serving one is found
        shadows = [e["data"] for e in _ledger(ws) if e["event"] == "shadow"]
        assert [(s["shadow_version"], s["disagreement_rate"]) for s in shadows] == [
            (same, 0.0), (differing, 0.5)]
        # the comparison as an objective: disagreement at most 2 %, shadow p95 within 5x live
        wanted = [{"metric": "shadow_disagreement_rate", "direction": "minimize", "bound": 0.02},
                  {"metric": "shadow_error_rate", "direction": "minimize", "bound": 0.0}]
        assert [v.passed for v in check_objectives(wanted, identical.metrics())] == [True, True]
        judged = check_objectives(wanted, half.metrics())
        assert [v.passed for v in judged] == [False, True]
        assert half.metrics()["shadow_p95_ratio"] > 0
        assert "50.00%" in shadow_markdown(shadows[1])  # as the next gate's review shows it
        assert half.plot().axes[1].patches[0].get_height() == pytest.approx(0.5)
    finally:
        local.stop(project, "prod")
