"""Several runs at once on a fresh project: for the same model and for different models.

The runs start together, so they race to create the embedded MLflow store, append to one
ledger and register versions of the same registered model. Nothing may be lost: every run
succeeds, every ledger entry is there and verifies, and every model version is distinct.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import (
    MINI_MODEL,
    Workspace,
    clean_environment,
    free_port,
    notebook,
    processes_with,
)
from workbench.audit import ledger

RUNS = {"dev": 3, "staging": 3}  # environment -> concurrent runs; one model per environment

REGISTER = """import mlflow
from workbench.registry.models import register
from workbench.registry.store import connect
from workbench.scraps import glue

connect()
name = f"{model_name}-{environment}"  # one registered model per environment
with mlflow.start_run() as run:
    mlflow.log_text("flavors: {}\\n", "model/MLmodel")
version, previous = register(f"runs:/{run.info.run_id}/model", name,
                             {"workbench.run_id": run_id}, environment)
glue("mlflow_run_id", run.info.run_id)
glue("model_version", version)
glue("registered_as", name)
glue("alias_move", {"alias": environment, "from": previous, "to": version})
"""


def make_project(root: Path) -> Workspace:
    ws = Workspace(root)
    (root / "configs").mkdir(parents=True)
    ws.write_yaml("model.yaml", MINI_MODEL)
    ws.write_yaml("environments.yaml", {"environments": {
        env: {"deploy": {"target": "local", "port": free_port()},
              "thresholds": {"min_score": 0.5}} for env in RUNS}})
    ws.write_notebook("register", notebook(
        REGISTER, parameters='model_name: str = "mini"\nenvironment: str = "dev"\n'
                             'run_id: str = ""'))
    ws.write_notebook("note", notebook("print('registered', version)",
                                       parameters='version: str = ""'))
    ws.write_yaml("pipeline.yaml", {"name": "together", "stages": [
        {"name": "register", "notebook": "notebooks/register.ipynb",
         "parameters": {"model_name": {"from": "model.name"},
                        "environment": {"from": "env.name"}, "run_id": {"from": "run.id"}},
         "outputs": {"mlflow_run_id": "str", "model_version": "str", "registered_as": "str",
                     "alias_move": "dict"}},
        {"name": "note", "notebook": "notebooks/note.ipynb", "needs": ["register"],
         "parameters": {"version": {"from": "register.model_version"}}},
    ]})
    return ws


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_concurrent_runs_lose_nothing(tmp_path: Path) -> None:
    ws = make_project(tmp_path / "together")
    assert not (ws.root / ".workbench").exists(), "the store must be fresh"
    processes = [subprocess.Popen([sys.executable, "-m", "workbench", "--project", str(ws.root),
                                   "run", "--env", env], cwd=ws.root, env=clean_environment(),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for env, count in RUNS.items() for _ in range(count)]
    outputs = [p.communicate(timeout=800)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * len(processes), "\n".join(outputs)

    records = [json.loads((path / "run.json").read_text()) for path in ws.runs()]
    assert len({r["id"] for r in records}) == sum(RUNS.values())
    assert all(r["status"] == "succeeded" for r in records)

    # every entry of every run is in the one ledger, and it verifies
    reports = ws.root / "reports"
    verified = ledger.verify(reports, ledger.head(reports))
    assert verified.ok, verified.problems
    entries = list(ledger.entries(reports))
    per_run = Counter(e["run_id"] for e in entries)
    expected = ["run_started", "stage_executed", "alias_move", "stage_executed", "run_succeeded"]
    rendered = Counter(e["run_id"] for e in entries if e["event"] == "stage_rendered")
    for record in records:  # each page's record comes after its stage, before the outcome
        events = [e["event"] for e in entries if e["run_id"] == record["id"]
                  and e["event"] != "stage_rendered"]
        assert events == expected, (record["id"], events)
        assert rendered[record["id"]] == 2, "both stages' pages are recorded"
    assert sum(per_run.values()) == len(entries) == (len(expected) + 2) * len(records)

    # model versions: unique per registered model, 1..n, each tagged with its own run
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=records[0]["tracking_uri"])
    for env, count in RUNS.items():
        name = f"{MINI_MODEL['name']}-{env}"
        mine = [r for r in records if r["environment"] == env]
        versions = sorted(int(r["stages"]["register"]["outputs"]["model_version"]) for r in mine)
        assert versions == list(range(1, count + 1)), (name, versions)
        registered = {str(v.version): v.tags.get("workbench.run_id")
                      for v in client.search_model_versions(f"name = '{name}'")}
        assert registered == {r["stages"]["register"]["outputs"]["model_version"]: r["id"]
                              for r in mine}
    store = ws.root / ".workbench" / "mlflow"
    assert sorted(p.name for p in store.iterdir() if p.name.startswith(".mlflow.db")) == []
    assert not processes_with("WORKBENCH_PROJECT", str(ws.root), b"ipykernel")
