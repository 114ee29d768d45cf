"""Manual control of a real canary (real model servers, MLflow store and proxy, four clients
posting throughout): held at a manual step, ``workbench canary status`` shows it, a person the
prod policy does not list is refused, an allowed promote moves it on and it completes; the
next candidate, held the same way, is aborted by ``workbench canary abort`` and rolled back
with every request answered; a failing one is aborted by the analysis while held, with no
decision. ``audit verify`` covers the decisions, and the report site shows
both rollouts step by step."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from tests.conftest import Workspace, free_port, notebook
from tests.test_canary import Traffic, _ledger, _model_servers_of, register
from workbench.config import load_config
from workbench.deploy import deploy_to, local
from workbench.deploy.canary import CanaryAborted
from workbench.governance import canary_control
from workbench.project import Project
from workbench.reports import site

pytestmark = pytest.mark.slow

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = 180.0) -> T:
    """The first truthy value of ``condition``, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture
def manual_project(mini_project: Workspace) -> Workspace:
    ws = mini_project
    ws.write_yaml("environments.yaml", {"environments": {"prod": {
        "deploy": {"target": "local", "port": free_port(), "strategy": "canary", "canary": {
            "steps": [{"weight": 50, "pause": "manual"}, {"weight": 100, "pause": "2s"}],
            "sticky_header": "X-Client",
            "analysis": {"max_error_rate": 0.0, "min_requests": 20}}}}}})
    ws.write_yaml("model.yaml", {"name": "canaried"})
    ws.write_yaml("pipeline.yaml", {"name": "p", "stages": [
        {"name": "one", "notebook": "notebooks/one.ipynb"}]})
    ws.write_yaml("gates.yaml", {"policies": {"prod": {"approvers": ["alice"], "quorum": 1}}})
    ws.write_notebook("one", notebook("print(1)"))
    return ws


def held_with_traffic(project: Project, version: str) -> dict[str, Any]:
    """The rollout's state once it holds ``version`` at its manual step and the candidate has
    answered requests of that step."""
    def ready() -> dict[str, Any] | None:
        found = canary_control.status(project, "prod")
        if found is None or found.state.get("status") != "paused" or found.stats is None:
            return None
        candidate = (found.stats.get("versions") or {}).get(version) or {}
        return found.state if candidate.get("requests", 0) >= 20 else None
    return wait_for(ready, f"the canary of v{version} held with traffic")


def test_a_held_canary_is_promoted_then_the_next_one_aborted(manual_project: Workspace
                                                             ) -> None:
    ws = manual_project
    project = Project(ws.root)
    config = load_config(project.configs)
    uri = f"sqlite:///{project.mlflow_dir / 'mlflow.db'}"
    first, better, third, failing = register(ws, {}, {"threshold": 0.7}, {"threshold": 0.2},
                                             {"fail": True})
    releases = ThreadPoolExecutor(max_workers=1)
    pending: Future[Any] | None = None
    try:
        endpoint = deploy_to(project, config, "prod", "canaried", first, uri)
        with Traffic(endpoint.url) as traffic:
            pending = releases.submit(deploy_to, project, config, "prod", "canaried", better,
                                      uri)
            state = held_with_traffic(project, better)
            assert (state["step"], state["weight"], state["version"]) == (1, 50.0, better)

            shown = ws.cli("canary", "status", "--env", "prod")
            assert shown.returncode == 0, shown.stderr
            text = shown.stdout
            assert f"canary of canaried v{better} on prod" in text
            assert f"step 1 of 2: 50% to v{better}, 50% to v{first}; held at a manual step" \
                in text
            assert f"    v{better} (candidate): " in text and f"    v{first} (serving): " in text
            assert "promote needs 1 more of quorum 1 from alice" in text

            refused = ws.cli("canary", "promote", "--env", "prod", "--as", "mallory",
                             "--comment", "ship it")
            assert refused.returncode == 1
            assert "refused and recorded as #1: 'mallory' is not an approver for prod" in \
                refused.stderr
            assert not pending.done()  # still held
            promoted = ws.cli("canary", "promote", "--env", "prod", "--as", "alice",
                              "--comment", "latency and errors as before")
            assert promoted.returncode == 0, promoted.stderr
            assert promoted.stdout.splitlines()[1] == \
                "promoted by alice: the rollout moves on"
            rollout = pending.result(timeout=180)
            assert rollout.version == better
            assert [(s.weight, s.passed) for s in rollout.steps] == [(50, True), (100, True)]
            assert rollout.steps[0].decision is not None
            assert (rollout.steps[0].decision["effect"], rollout.steps[0].decision["by"]) == (
                "promote", ["alice"])
            served = local.current(project, "prod")
            assert served is not None and served.version == better
            before = (served.backend_pid, served.backend_port)
            assert ws.cli("canary", "status", "--env", "prod").stdout.strip() == \
                "no canary is running on prod"

            pending = releases.submit(deploy_to, project, config, "prod", "canaried", third,
                                      uri)
            held_with_traffic(project, third)
            aborted = ws.cli("canary", "abort", "--env", "prod", "--as", "alice",
                             "--comment", "stop here")
            assert aborted.returncode == 0, aborted.stderr
            with pytest.raises(CanaryAborted) as stopped:
                pending.result(timeout=180)
            assert f"v{third} on prod aborted at step 1 (50%): manual abort by alice " \
                   f"(decision #3): stop here; every request is back on v{better}" in \
                str(stopped.value)
            kept = local.current(project, "prod")
            assert kept is not None and (kept.backend_pid, kept.backend_port) == before
            route = json.loads(local.route_file(project, "prod").read_text())
            assert "canary" not in route and route["version"] == better

            # held at the manual step, the analysis still runs: a breach aborts, no decision
            with pytest.raises(CanaryAborted) as breached:
                deploy_to(project, config, "prod", "canaried", failing, uri)
            assert f"v{failing} on prod aborted at step 1 (50%): error rate" in \
                str(breached.value)
            kept = local.current(project, "prod")
            assert kept is not None and (kept.backend_pid, kept.backend_port) == before
        assert traffic.failures == []
        assert set(status for status, _ in traffic.answers.elements()) == {200}
        versions = Counter(version for _, version in traffic.answers.elements())
        assert versions[first] > 0 and versions[better] > 0 and versions[third] > 0
        assert versions[failing] == 0  # each of its failures answered by the serving one
        assert not _model_servers_of(project, third) and not _model_servers_of(project, failing)

        entries = _ledger(ws)
        steps = [e["data"] for e in entries if e["event"] == "canary_step"]
        assert [(s["version"], s["step"], s["verdict"], s["trigger"]) for s in steps] == [
            (better, 1, "pass", "canary"), (better, 2, "pass", "canary"),
            (third, 1, "abort", "manual"), (failing, 1, "abort", "canary")]
        assert steps[0]["decision"]["by"] == ["alice"] and steps[0]["started"]
        decisions = [e["data"] for e in entries if e["event"] == "canary_decision"]
        assert [(d["seq"], d["decision"], d["accepted"], d["effect"]) for d in decisions] == [
            (1, "promote", False, None), (2, "promote", True, "promote"),
            (3, "abort", True, "abort")]
        rollbacks = [json.loads(p.read_text()) for p in
                     sorted((ws.root / "reports" / "rollbacks").glob("*.json"))]
        assert [(r["trigger"], r["from_version"], r["to_version"]) for r in rollbacks] == [
            ("manual", third, better), ("canary", failing, better)]
        assert "manual abort by alice" in rollbacks[0]["reason"]
        verified = ws.cli("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr

        site.build_environments(project)
        page = (project.reports / "environments.html").read_text()
        assert page.count('<section class="canary" data-env="prod"') == 3
        assert "pass (promote by alice)" in page
        assert "aborted at step 1 (50%, manual): manual abort by alice" in page
        assert page.count('<figure class="canary-plot"') == 6
    finally:
        local.stop(project, "prod")  # a rollout still held fails once its proxy is gone
        if pending is not None:  # the test's own assertions said what went wrong
            with contextlib.suppress(Exception):
                pending.result(timeout=120)
        releases.shutdown(wait=True)
