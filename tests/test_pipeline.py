"""The whole release pipeline on real kernels, a real MLflow store and a real model server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import scrapbook

from tests.conftest import Workspace, free_port
from workbench.deploy.local import ping

pytestmark = pytest.mark.slow  # real kernels, MLflow and model servers

STAGES = ["train", "evaluate", "register", "deploy"]
PROMOTION = ["approve_qa", "deploy_qa", "load_test", "approve_prod", "deploy_prod", "monitor"]


def predict(url: str, columns: list[str], rows: list[list[float]]) -> list:
    body = json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["predictions"]


def test_full_pipeline_trains_registers_and_serves(release_project: Workspace) -> None:
    ws = release_project
    first = ws.cli("run")
    assert first.returncode == 3, first.stdout + first.stderr  # dev done; qa needs approval
    record = ws.run_record()
    folder = ws.runs()[-1]
    assert record["status"] == "awaiting_approval"
    assert [name for name in record["stages"]] == STAGES + PROMOTION
    assert all(record["stages"][name]["status"] == "succeeded" for name in STAGES)
    assert record["stages"]["approve_qa"]["status"] == "awaiting_approval"
    assert "gate approve_qa (qa) is awaiting approval" in first.stderr
    assert record["model_version"] == {"name": "breast-cancer-classifier", "version": "1"}
    assert record["mlflow_run_ids"] == [record["stages"]["train"]["outputs"]["mlflow_run_id"]]
    assert record["config"]["pipeline.yaml"] == (ws.root / "configs/pipeline.yaml").read_text()
    for name in STAGES:
        scraps = scrapbook.read_notebook(str(folder / f"{name}.ipynb")).scraps
        assert set(scraps) >= set(record["stages"][name]["outputs"])
    evaluate = record["stages"]["evaluate"]["outputs"]
    assert evaluate["passed"] is True and evaluate["champion"] == {}
    assert record["stages"]["register"]["parameters"]["git_commit"] == record["git_commit"]

    # The endpoint answers with the model's own predictions until `workbench stop dev`.
    deploy = record["stages"]["deploy"]["outputs"]
    url = deploy["endpoint"]
    assert deploy["served_version"] == "1" and deploy["smoke_passed"] is True
    import mlflow.pyfunc
    from sklearn.datasets import load_breast_cancer

    mlflow.set_tracking_uri(record["tracking_uri"])
    model = mlflow.pyfunc.load_model("models:/breast-cancer-classifier/1")
    rows = load_breast_cancer(as_frame=True).data.head(40)
    served = predict(url, list(rows.columns), rows.values.tolist())
    assert served == model.predict(rows).tolist()
    assert len(served) == 40 and set(served) == {0, 1}

    status = ws.cli("status")
    assert status.returncode == 0 and record["id"] in status.stdout
    assert "breast-cancer-classifier v1" in status.stdout
    assert "approve_qa   awaiting_approval" in status.stdout
    listing = ws.cli("runs")
    assert record["id"] in listing.stdout and "awaiting_approval" in listing.stdout

    # A second run compares against the champion (v1 holds the dev alias) and redeploys v2.
    second = ws.cli("run")
    assert second.returncode == 3, second.stdout + second.stderr
    record2 = ws.run_record()
    assert record2["id"] != record["id"]
    assert record2["stages"]["evaluate"]["outputs"]["champion"]["version"] == "1"
    assert record2["model_version"]["version"] == "2"
    assert ping(url) and record2["stages"]["deploy"]["outputs"]["served_version"] == "2"
    assert (folder / "train.ipynb").is_file(), "earlier runs stay archived"

    stopped = ws.cli("stop", "dev")
    assert stopped.returncode == 0 and "v2" in stopped.stdout
    assert not ping(url)

    # Promote the second release to qa: approve, then deploy to qa's own server.
    approved = ws.cli("approve", record2["id"], "--env", "qa", "--as", "alice")
    assert approved.returncode == 0, approved.stderr
    promoted = ws.cli("promote", record2["id"], "--to", "qa")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    record2 = ws.run_record()
    assert record2["status"] == "paused"
    qa = record2["stages"]["deploy_qa"]
    assert qa["status"] == "succeeded" and qa["parameters"]["environment"] == "qa"
    assert qa["outputs"]["served_version"] == "2" and qa["outputs"]["smoke_passed"] is True
    assert qa["outputs"]["endpoint"] != url and ping(qa["outputs"]["endpoint"])
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=record2["tracking_uri"])
    assert str(client.get_model_version_by_alias("breast-cancer-classifier", "qa").version) == "2"
    assert str(client.get_model_version_by_alias("breast-cancer-classifier", "dev").version) == "2"
    tags = client.get_model_version("breast-cancer-classifier", "2").tags
    assert tags["workbench.qa.approved_by"] == "alice"
    moves = [json.loads(p.read_text()) for p in
             sorted((ws.runs()[-1] / "promotions").glob("*.json"))]
    assert [(m["alias"], m["from_version"], m["to_version"]) for m in moves] == [
        ("dev", "1", "2"), ("qa", None, "2")]
    assert ws.cli("stop", "qa").returncode == 0


def test_notebooks_run_under_plain_papermill(release_project: Workspace) -> None:
    """Each stage notebook runs alone with its defaults, with no workbench process around it."""
    ws = release_project
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WORKBENCH_"))}
    papermill = str(Path(sys.executable).parent / "papermill")
    (ws.root / "out").mkdir()
    for name in STAGES:
        out = ws.root / "out" / f"{name}.ipynb"
        done = subprocess.run([papermill, f"notebooks/{name}.ipynb", str(out)], cwd=ws.root,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
        assert scrapbook.read_notebook(str(out)).scraps, f"{name} glued no scraps"
    deployed = scrapbook.read_notebook(str(ws.root / "out" / "deploy.ipynb")).scraps
    assert deployed["smoke_passed"].data is True
    assert (ws.root / ".workbench" / "mlflow" / "mlflow.db").is_file()
    assert not (ws.root / "mlruns").exists(), "artifacts must go to the embedded store"

    # Plain nbconvert runs the notebook from notebooks/; the project is found upwards.
    jupyter = str(Path(sys.executable).parent / "jupyter")
    done = subprocess.run([jupyter, "nbconvert", "--to", "notebook", "--execute",
                           "notebooks/train.ipynb", "--output-dir", "converted"], cwd=ws.root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert scrapbook.read_notebook(str(ws.root / "converted" / "train.ipynb")).scraps["model_uri"]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1, stopped by pid afterwards."""
    port = free_port()
    home = tmp_path / "mlflow-server"
    home.mkdir()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{home}/db.sqlite",
         "--artifacts-destination", str(home / "artifacts")],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert process.poll() is None, (home / "server.log").read_text()[-2000:]
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
        log.close()


def test_configured_tracking_server_is_used(release_project: Workspace, mlflow_server: str
                                            ) -> None:
    ws = release_project
    pipeline = ws.read_yaml("pipeline.yaml")
    pipeline["mlflow"]["tracking_uri"] = mlflow_server
    ws.write_yaml("pipeline.yaml", pipeline)
    done = ws.cli("run")
    assert done.returncode == 3, done.stdout + done.stderr  # at the qa gate
    record = ws.run_record()
    assert record["tracking_uri"] == mlflow_server
    assert not (ws.root / ".workbench" / "mlflow").exists(), "embedded store must stay unused"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    version = client.get_model_version_by_alias("breast-cancer-classifier", "dev")
    assert version.version == "1"
    assert version.tags["workbench.run_id"] == record["id"]
    run = client.get_run(record["mlflow_run_ids"][0])
    assert "eval_accuracy" in run.data.metrics
    assert run.data.tags["workbench.evaluation.passed"] == "true"
