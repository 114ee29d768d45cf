"""The kernel pool of a run with a fork server: no more kernels alive than can run, and the
run's MLflow tasks forked from its server (on real kernels and a real fork server)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Workspace, clean_environment, notebook
from workbench.execution import forked_calls
from workbench.execution.warm import KernelPool


def _wait(condition, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_forking_pool_keeps_no_more_kernels_alive_than_can_run(tmp_path: Path) -> None:
    pool = KernelPool(2, fork_preload=["json"], cwd=tmp_path)
    try:
        assert pool.warm("first", "python3", tmp_path, 60, ["json"])
        assert forked_calls.available()  # the run's MLflow tasks can fork from its server
        running = pool.take("first", "python3")
        assert running is not None and running.forked
        assert pool.warm("second", "python3", tmp_path, 60, ["json"])
        # two kernels alive (one running, one warm) and two jobs: the third stage waits
        assert not pool.warm("third", "python3", tmp_path, 60, ["json"])
        # unless that stage starts now: then its kernel is forked at once (not started cold)
        assert pool.warm("now", "python3", tmp_path, 60, ["json"], starting=True)
        starting = pool.take("now", "python3")
        assert starting is not None and starting.forked
        starting.close()
        running.close()  # its stage is done and the kernel gone
        assert _wait(lambda: not running.alive())
        assert pool.warm("third", "python3", tmp_path, 60, ["json"])
        kernels = [pool.take(name, "python3") for name in ("second", "third")]
        assert all(k is not None and k.forked and k.alive() for k in kernels)
        for kernel in kernels:
            assert kernel is not None
            kernel.close()
    finally:
        pool.close(wait=30)
    assert not forked_calls.available()  # withdrawn with the pool
    assert pool.fork_server is not None and pool.fork_server.process.returncode == 0


def test_a_pool_that_does_not_fork_leaves_a_starting_stage_its_own_kernel(tmp_path: Path
                                                                          ) -> None:
    pool = KernelPool(2)  # --no-fork: a warm kernel takes seconds; the stage starts its own
    try:
        assert not pool.warm("now", "python3", tmp_path, 60, [], starting=True)
        assert pool.warming() == set()
    finally:
        pool.close()


STEP = """from workbench.scraps import glue

glue("y", x + 1)
"""
# the workbench command, recording the modules it imported once every atexit handler ran
RECORDING = ("import atexit, json, runpy, sys\n"
             "path = sys.argv.pop(1)\n"
             "atexit.register(lambda: open(path, 'w').write(json.dumps(sorted(sys.modules))))\n"
             "runpy.run_module('workbench', run_name='__main__', alter_sys=True)\n")


@pytest.mark.slow
def test_the_workbench_process_leaves_mlflow_to_tasks_forked_from_the_server(
        mini_project: Workspace, tmp_path: Path) -> None:
    """A run whose kernels fork from a server that imported MLflow: the new store's experiment
    is created and each stage's notebook and HTML are logged to MLflow, all without the
    workbench process importing MLflow (130-200 MB it would keep for the whole run)."""
    mini_project.write_yaml("pipeline.yaml", {"name": "steps", "stages": [
        {"name": f"step{i}", "notebook": "notebooks/step.ipynb",
         "preload": ["mlflow.store.tracking.sqlalchemy_store", "workbench.scraps"],
         "parameters": {"x": i} if i == 1 else {"x": {"from": f"step{i - 1}.y"}},
         "needs": [] if i == 1 else [f"step{i - 1}"], "outputs": {"y": "int"}}
        for i in (1, 2)]})
    mini_project.write_notebook("step", notebook(STEP, parameters="x: int = 0"))
    modules = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", RECORDING, str(modules), "--project",
                           str(mini_project.root), "run", "--json", "--no-cache"],
                          capture_output=True, text=True, timeout=600,
                          env=clean_environment(), cwd=mini_project.root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = mini_project.run_record()
    assert {n: (e["status"], e["kernel"]) for n, e in record["stages"].items()} == \
        {"step1": ("succeeded", "forked"), "step2": ("succeeded", "forked")}
    assert record["stages"]["step2"]["outputs"] == {"y": 3}
    imported = json.loads(modules.read_text())
    assert "workbench.execution.forked_calls" in imported
    assert not [m for m in imported if m == "mlflow" or m.startswith("mlflow.")]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=record["tracking_uri"])
    experiment = client.get_experiment_by_name(record["experiment"])
    assert experiment is not None
    for name in ("step1", "step2"):
        [run] = client.search_runs([experiment.experiment_id],
                                   f"tags.`workbench.stage` = '{name}'")
        assert run.info.run_name == f"{record['id']}/{name}"
        assert run.info.status == "FINISHED"
        assert run.data.tags["workbench.ledger_seq"].isdigit()
        logged = {a.path for a in client.list_artifacts(run.info.run_id, f"workbench/{name}")}
        assert logged == {f"workbench/{name}/{name}.ipynb", f"workbench/{name}/{name}.html"}
