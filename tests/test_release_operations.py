"""A release through qa's load test and prod's monitor on real kernels, stores and servers:
an SLO breach blocks promotion with its numbers; drift in what prod is asked rolls it back."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import pytest
from conftest import Workspace

from workbench.audit import ledger
from workbench.deploy.local import served_model
from workbench.project import Project

pytestmark = pytest.mark.slow
MODEL = "breast-cancer-classifier"


def _shifted_traffic(url: str, version: str, stop: threading.Event) -> None:
    """Once ``url`` serves ``version``, score 300 rows of the training data's population with
    one feature (``mean radius``) three times larger, as a client would (not marked as the
    workbench's own, so the endpoint logs them)."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).data.sample(300, random_state=3)
    frame["mean radius"] *= 3
    while not stop.is_set():
        try:
            if str(served_model(url)["version"]) == version:
                break
        except (OSError, ValueError):
            pass
        stop.wait(0.05)
    else:
        return
    for start in range(0, len(frame), 50):
        part = frame.iloc[start:start + 50]
        body = json.dumps({"dataframe_split": {"columns": list(part.columns),
                                               "data": part.values.tolist()}}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.status == 200


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
    #    breaks prod's monitor threshold, and is asked for inputs unlike its training data
    #    (one feature three times larger): the latency breach alone would not roll back
    #    (monitor.rollback is off), the drift does (drift.on_breach: rollback), so prod goes
    #    back to v1 with the drift figures in the rollback record, and the run fails.
    set_environment(ws, "prod", monitor={"window": "8s", "interval": "0.25s",
                                         "max_p95_ms": 0.001, "rollback": False},
                    inference_log={"sample": 1.0}, drift={"on_breach": "rollback"})
    stop = threading.Event()
    traffic = threading.Thread(target=_shifted_traffic, args=(prod_url, "2", stop))
    traffic.start()
    try:
        second, done = release(ws, oidc)
    finally:
        stop.set()
        traffic.join(60)
    assert done.returncode == 1, done.stdout + done.stderr
    record = ws.run_record()
    assert record["id"] == second and record["status"] == "failed"
    performance = record["stages"]["load_test"]["outputs"]["performance"]
    assert performance["baseline"]["version"] == "1" and performance["latency_ratio_p95"] > 0
    assert record["stages"]["deploy_prod"]["outputs"]["served_version"] == "2"
    monitor = record["stages"]["monitor"]
    assert monitor["status"] == "failed"
    assert "prod monitor breached: p95_ms" in monitor["error"]
    assert "drift of mean radius" in monitor["error"] and "rolled back to v1" in monitor["error"]
    drifted = [line for line in monitor["error"].split("; ") if line.startswith("drift of ")]
    assert {d.split(" ")[2] for d in drifted} <= {"mean", "__prediction__"}  # that feature
    assert "drift of mean radius " in monitor["error"] and \
        not any(f"drift of {name} " in monitor["error"] for name in
                ("mean texture", "worst radius", "mean smoothness"))
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
    assert data["threshold"]["drift"]["on_breach"] == "rollback"
    radius = next(f for f in data["observed"]["drift"] if f["feature"] == "mean radius")
    assert radius["drifted"] and radius["statistic"] == "ks" and radius["value"] > 0.2
    assert not next(f for f in data["observed"]["drift"]
                    if f["feature"] == "mean texture")["drifted"]
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
