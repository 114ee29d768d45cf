"""Operating releases on real model servers: redeploys under traffic, rollback, notifications."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Workspace, clean_environment, notebook, processes_with, wait_until

from workbench.audit import ledger
from workbench.config import load_config
from workbench.deploy import deploy_to, local
from workbench.governance.promotion import record_move
from workbench.identity import Identity
from workbench.project import Project
from workbench.registry.store import resolve

pytestmark = pytest.mark.slow
MODEL = "breast-cancer-classifier"


@pytest.fixture
def versions(release_project: Workspace) -> Iterator[tuple[Workspace, Project, str]]:
    """The default project with three registered versions of its model; endpoints stopped
    afterwards by the release_project fixture."""
    done = subprocess.run([sys.executable, str(REPO / "tests/tools/register_versions.py"),
                           str(release_project.root), "3"], capture_output=True, text=True,
                          env=clean_environment(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ["1", "2", "3"]
    project = Project(release_project.root)
    config = load_config(project.configs)
    yield release_project, project, resolve(project, config.pipeline.mlflow).tracking_uri


def rows_body() -> bytes:
    from workbench.datasets import load_split

    _, X_test, _, _ = load_split("breast_cancer", 0.25, 0)
    return json.dumps({"dataframe_split": X_test.head(3).to_dict(orient="split",
                                                                 index=False)}).encode()


def test_redeploy_under_steady_traffic_loses_no_request(versions: Any) -> None:
    _, project, tracking_uri = versions
    config = load_config(project.configs)
    first = deploy_to(project, config, "dev", MODEL, "1", tracking_uri)
    assert local.served_model(first.url)["version"] == "1"
    body, stop = rows_body(), threading.Event()
    outcomes: Counter[str] = Counter()
    seen: Counter[str] = Counter()

    def client() -> None:
        while not stop.is_set():
            request = urllib.request.Request(f"{first.url}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    ok = answer.status == 200 and len(json.loads(answer.read())
                                                      ["predictions"]) == 3
                outcomes["ok" if ok else "bad"] += 1
                seen[local.served_model(first.url)["version"]] += 1
            except OSError as exc:
                outcomes[f"failed: {exc}"] += 1

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        wait_until("answers from version 1", lambda: seen["1"] > 0)
        before = outcomes["ok"]
        second = deploy_to(project, config, "dev", MODEL, "2", tracking_uri)
        wait_until("answers from version 2", lambda: seen["2"] >= 4)
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    assert before > 0 and outcomes["ok"] > before
    assert set(outcomes) == {"ok"}, outcomes  # not one failed or wrong answer
    assert seen["1"] > 0 and seen["2"] > 0  # traffic crossed the switch
    assert second.url == first.url and second.pid == first.pid  # the same endpoint
    assert second.backend_port != first.backend_port
    assert not local._group_alive(first.backend_pid)  # the old server was stopped
    assert local.served_model(second.url)["version"] == "2"

    # A version that cannot start leaves the running one serving.
    with pytest.raises(local.DeployError, match="exited with code"):
        deploy_to(project, config, "dev", MODEL, "99", tracking_uri)
    assert local.served_model(second.url)["version"] == "2"
    assert local.current(project, "dev") == second


def approve_into(project: Project, environment: str, version: str, previous: str | None,
                 approvals: list[int], tracking_uri: str) -> None:
    """What a passed gate records: the alias moves and the move is journalled."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(MODEL, environment,
                                                                      version)
    record_move(project, f"run-v{version}", alias=environment, model=MODEL,
                from_version=previous, to_version=version,
                actor=Identity(name="carol", source="typed"), via="gate approve_prod",
                approvals=approvals, bundle_digest="b" * 64)


def test_rollback_serves_the_previous_approved_version(versions: Any) -> None:
    ws, project, tracking_uri = versions
    config = load_config(project.configs)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    nothing = ws.cli("rollback", "--env", "prod")
    assert nothing.returncode == 2
    assert "no earlier version was approved for prod (approved: none" in nothing.stderr

    approve_into(project, "prod", "1", None, [1, 2], tracking_uri)
    deploy_to(project, config, "prod", MODEL, "1", tracking_uri)
    only_one = ws.cli("rollback", "--env", "prod")
    assert only_one.returncode == 2
    assert "no earlier version was approved for prod (approved: 1; serving 1)" in \
        only_one.stderr
    approve_into(project, "prod", "2", "1", [3, 4], tracking_uri)
    # version 3 reached prod's alias without its gate: never a rollback target
    approve_into(project, "prod", "3", "2", [], tracking_uri)
    endpoint = deploy_to(project, config, "prod", MODEL, "3", tracking_uri)
    refused = ws.cli("rollback", "--env", "prod", "--to", "3")
    assert refused.returncode == 2
    assert "version 3 was never approved for prod; approved: 1, 2" in refused.stderr
    bad = ws.cli("rollback", "--env", "staging")
    assert bad.returncode == 2 and "unknown environment 'staging'" in bad.stderr

    done = ws.cli("rollback", "--env", "prod", "--reason", "p95 doubled", "--as", "dave")
    assert done.returncode == 0, done.stderr
    assert "rolled back prod: breast-cancer-classifier v3 -> v2" in done.stdout
    assert local.served_model(endpoint.url)["version"] == "2"  # same endpoint, earlier model
    assert str(client.get_model_version_by_alias(MODEL, "prod").version) == "2"
    again = ws.cli("rollback", "--env", "prod", "--to", "1", "--as", "dave")
    assert again.returncode == 0, again.stderr
    assert local.served_model(endpoint.url)["version"] == "1"
    assert ws.cli("rollback", "--env", "prod").returncode == 2  # nothing before v1

    journal = sorted((project.reports / "rollbacks").glob("*.json"))
    records = [json.loads(p.read_text()) for p in journal]
    assert [(r["from_version"], r["to_version"]) for r in records] == [("3", "2"), ("2", "1")]
    first = records[0]
    assert first["trigger"] == "manual" and first["reason"] == "p95 doubled"
    assert first["actor"]["name"] == "dave" and first["environment"] == "prod"
    assert first["endpoint"] == endpoint.url and first["target"] == "local"
    entries = [e for e in ledger.entries(project.reports) if e["event"] == "rollback"]
    assert [(e["data"]["from_version"], e["data"]["to_version"]) for e in entries] == [
        ("3", "2"), ("2", "1")]
    assert set(entries[0]["files"]) == {"rollbacks/0001.json"}
    verified = ws.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    page = (project.reports / "environments.html").read_text()
    assert "manual rollback: p95 doubled" in page  # auditors see it on the report site


class Receiver:
    """A local webhook receiver that keeps every JSON body it gets."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers["Content-Length"])
                received.append((self.path, json.loads(self.rfile.read(length))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhooks_get_events_and_a_dead_one_never_fails_the_run(mini_project: Workspace,
                                                                 tmp_path: Path) -> None:
    receiver = Receiver()
    mini_project.write_notebook("one", notebook("print(1)"))
    mini_project.write_notebook("two", notebook("print(2)"))
    mini_project.write_yaml("pipeline.yaml", {
        "name": "m",
        "notifications": [
            {"kind": "slack", "url_secret": "SLACK_WEBHOOK_URL", "events": ["run", "stage"]},
            {"kind": "webhook", "url_secret": "HOOK_URL", "events": ["stage"]},
            {"kind": "webhook", "url_secret": "DEAD_HOOK_URL", "timeout": 2},
            {"kind": "webhook", "url_secret": "UNSET_HOOK_URL"}],
        "stages": [{"name": "one", "notebook": "notebooks/one.ipynb"},
                   {"name": "two", "notebook": "notebooks/two.ipynb", "needs": ["one"]}]})
    dead = "http://127.0.0.1:9/hook-token-s3cr3t"
    env = {"SLACK_WEBHOOK_URL": f"{receiver.url}/slack", "HOOK_URL": f"{receiver.url}/hook",
           "DEAD_HOOK_URL": dead}
    try:
        done = mini_project.cli("run", env=env)
    finally:
        receiver.close()
    assert done.returncode == 0, done.stdout + done.stderr
    slack = [body for path, body in receiver.received if path == "/slack"]
    hook = [body for path, body in receiver.received if path == "/hook"]
    assert [b["text"].split(":")[0] for b in slack] == ["workbench"] * 4
    assert "started" in slack[0]["text"] and "succeeded" in slack[-1]["text"]
    assert [(b["event"], b["stage"], b["status"]) for b in hook] == [
        ("stage_finished", "one", "succeeded"), ("stage_finished", "two", "succeeded")]
    assert all(b["source"] == "workbench" and b["class"] == "stage" for b in hook)
    assert "notification webhook (DEAD_HOOK_URL) for run_started failed" in done.stderr
    assert "secret UNSET_HOOK_URL is not set" in done.stderr
    assert "s3cr3t" not in done.stdout + done.stderr  # a webhook URL is a secret
    record = mini_project.run_record()
    assert record["status"] == "succeeded"
    assert "s3cr3t" not in json.dumps(record)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _warm(project: Project, environment: str) -> bool:
    log = project.servers / f"{environment}.forks.log"
    return log.is_file() and "forking model servers on" in log.read_text(encoding="utf-8")


def test_a_redeploy_forks_a_warm_model_server(versions: Any) -> None:
    _, project, tracking_uri = versions
    config = load_config(project.configs)
    deployed_once = deploy_to(project, config, "dev", MODEL, "1", tracking_uri)
    assert deployed_once.forks_pid == 0, "an endpoint deployed once has no fork server"
    first = deploy_to(project, config, "dev", MODEL, "3", tracking_uri)
    assert _parent(first.backend_pid) != first.forks_pid, "the first redeploy starts anew"
    assert local._forks_alive(first.forks_pid), "and starts the fork server"
    wait_until("the fork server to warm up", lambda: _warm(project, "dev"), timeout=180)

    second = deploy_to(project, config, "dev", MODEL, "2", tracking_uri)
    assert _parent(second.backend_pid) == first.forks_pid == second.forks_pid
    served = local.served_model(second.url)
    assert served["version"] == "2" and served["model_uuid"]
    assert served == local.served_model(second.backend_url)  # the forked server itself
    request = urllib.request.Request(f"{second.url}/invocations", data=rows_body(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert len(json.loads(answer.read())["predictions"]) == 3
    assert not local._group_alive(first.backend_pid)

    # A version that cannot load: its forked server exits, the running one keeps serving.
    with pytest.raises(local.DeployError, match="exited"):
        deploy_to(project, config, "dev", MODEL, "99", tracking_uri)
    assert local.served_model(second.url)["version"] == "2"
    assert local._forks_alive(second.forks_pid)

    # The fork server goes with its endpoint, and so does everything it forked.
    local.stop(project, "dev")
    marker = local._marker(project, "dev")
    assert not local._forks_alive(second.forks_pid)
    assert processes_with(local.ENDPOINT_VARIABLE, marker) == []


def test_a_fork_server_leaves_when_its_endpoint_is_gone(versions: Any) -> None:
    _, project, tracking_uri = versions
    config = load_config(project.configs)
    deploy_to(project, config, "dev", MODEL, "1", tracking_uri)
    first = deploy_to(project, config, "dev", MODEL, "2", tracking_uri)
    wait_until("the fork server to warm up", lambda: _warm(project, "dev"), timeout=180)
    os.kill(first.pid, signal.SIGKILL)  # the proxy dies (a crash, a reboot of sorts)
    wait_until("the fork server to notice", lambda: not local._forks_alive(first.forks_pid),
               timeout=30)
    assert local.current(project, "dev") is None
    local.stop(project, "dev")  # what is left (the model server) is stopped by the record
    assert processes_with(local.ENDPOINT_VARIABLE, local._marker(project, "dev")) == []
