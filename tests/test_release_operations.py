"""A release through qa's load test and prod's monitor on real kernels, stores and servers:
an SLO breach blocks promotion with its numbers; a monitor breach rolls prod back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import Workspace

from workbench.audit import ledger
from workbench.deploy.local import served_model
from workbench.project import Project

pytestmark = pytest.mark.slow
MODEL = "breast-cancer-classifier"


def set_environment(ws: Workspace, name: str, **sections: Any) -> None:
    environments = ws.read_yaml("environments.yaml")
    for key, value in sections.items():
        environments["environments"][name][key] = value
    ws.write_yaml("environments.yaml", environments)


def release(ws: Workspace, oidc: Any, *run_args: str, through_qa_only: bool = False
            ) -> tuple[str, Any]:
    """Run, approve qa, resume to the prod gate, approve prod twice (carol and dave in CI jobs
    of their own, vouched for by GitHub), resume; the last result."""
    started = ws.cli("run", *run_args)
    assert started.returncode == 3, started.stdout + started.stderr
    run_id = ws.run_record()["id"]
    assert ws.cli("approve", run_id, "--env", "qa", "--as", "alice").returncode == 0
    to_prod_gate = ws.cli("resume", run_id)
    if through_qa_only or to_prod_gate.returncode != 3:
        return run_id, to_prod_gate
    for who in ("carol", "dave"):
        approved = ws.cli("approve", run_id, "--env", "prod", "--comment", "ok",
                          env=oidc.github(who))
        assert approved.returncode == 0, approved.stderr
    return run_id, ws.cli("resume", run_id)


@pytest.mark.timeout(1800)  # three releases on real kernels; about 5 minutes on an idle machine
def test_slo_and_monitor_gate_the_release(release_project: Workspace, oidc: Any) -> None:
    ws = release_project
    project = Project(ws.root)
    set_environment(ws, "qa", load_test={"concurrency": 2, "duration": "2s", "warmup": "0.5s",
                                         "baseline": "prod"})
    set_environment(ws, "prod", monitor={"window": "2s", "interval": "0.25s",
                                         "max_p95_ms": 2000})

    # 1. The first release goes all the way: no production baseline yet, a healthy monitor.
    first, done = release(ws, oidc)
    assert done.returncode == 0, done.stdout + done.stderr
    record = ws.run_record()
    load = record["stages"]["load_test"]["outputs"]
    assert load["slo_passed"] is True and load["tested_version"] == "1"
    assert load["load"]["requests"] > 0 and load["load"]["errors"] == 0
    assert load["performance"] == {"latency_ratio_p95": None, "baseline": None}
    watched = record["stages"]["monitor"]["outputs"]
    assert watched["breaches"] == [] and watched["rolled_back_to"] == ""
    assert watched["monitor"]["probes"] == 8 and watched["monitor"]["errors"] == 0
    prod_url = record["stages"]["deploy_prod"]["outputs"]["endpoint"]
    assert served_model(prod_url)["version"] == "1"

    # 2. The second release passes qa (compared with v1 under the same load), reaches prod,
    #    and breaks prod's monitor threshold: prod goes back to v1, and the run fails.
    set_environment(ws, "prod", monitor={"window": "2s", "interval": "0.25s",
                                         "max_p95_ms": 0.001})
    second, done = release(ws, oidc)
    assert done.returncode == 1, done.stdout + done.stderr
    record = ws.run_record()
    assert record["id"] == second and record["status"] == "failed"
    performance = record["stages"]["load_test"]["outputs"]["performance"]
    assert performance["baseline"]["version"] == "1" and performance["latency_ratio_p95"] > 0
    assert record["stages"]["deploy_prod"]["outputs"]["served_version"] == "2"
    monitor = record["stages"]["monitor"]
    assert monitor["status"] == "failed"
    assert "prod monitor breached: p95_ms" in monitor["error"]
    assert "> 0.001; rolled back to v1" in monitor["error"]
    assert served_model(prod_url)["version"] == "1"  # the previous version serves again
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=record["tracking_uri"])
    assert str(client.get_model_version_by_alias(MODEL, "prod").version) == "1"
    rollbacks = [e for e in ledger.entries(project.reports) if e["event"] == "rollback"]
    assert len(rollbacks) == 1
    data = rollbacks[0]["data"]
    assert rollbacks[0]["run_id"] == second
    assert (data["from_version"], data["to_version"], data["trigger"]) == ("2", "1", "monitor")
    assert data["threshold"]["max_p95_ms"] == 0.001 and data["observed"]["p95_ms"] > 0.001
    assert data["reason"].startswith("monitor breach: p95_ms")
    journal = json.loads((project.reports / "rollbacks" / "0001.json").read_text())
    assert journal["actor"]["name"] and journal["endpoint"] == prod_url

    # 3. A release that misses qa's SLO stops at the load test, with the numbers (a partial
    #    run: v2 stays on qa, the load test runs again after a new qa approval).
    set_environment(ws, "qa", slo={"p95_ms": 0.001, "max_error_rate": 0.0})
    third, done = release(ws, oidc, "--from", "load_test", through_qa_only=True)
    assert done.returncode == 1, done.stdout + done.stderr
    record = ws.run_record()
    stages = record["stages"]
    assert stages["load_test"]["status"] == "failed"
    assert "qa load test breached its SLO: p95_ms" in stages["load_test"]["error"]
    assert "(SLO <= 0.001): BREACH" in stages["load_test"]["error"]
    assert "stage load_test failed: " in done.stderr and "p95_ms" in done.stderr
    assert stages["deploy_qa"]["status"] == "reused"
    assert stages["approve_prod"]["status"] == "skipped"
    assert stages["deploy_prod"]["status"] == "skipped"
    assert served_model(prod_url)["version"] == "1"  # prod untouched
    verified = ws.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
