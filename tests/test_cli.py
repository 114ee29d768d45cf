"""The command line around runs: listing, status, stop, interruption and user mistakes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Workspace, notebook


def test_commands_on_a_project_without_runs(mini_project: Workspace) -> None:
    mini_project.write_notebook("one", notebook("print(1)"))
    mini_project.write_yaml("pipeline.yaml", {"name": "m", "stages": [
        {"name": "one", "notebook": "notebooks/one.ipynb"}]})
    listing = mini_project.cli("runs")
    assert listing.returncode == 0 and listing.stdout.strip() == "no runs yet"
    missing = mini_project.cli("status", "20990101T000000Z-abcdef")
    assert missing.returncode == 2
    assert "no run '20990101T000000Z-abcdef'" in missing.stderr
    assert "Traceback" not in missing.stderr
    latest = mini_project.cli("status")
    assert latest.returncode == 2 and "no runs yet" in latest.stderr
    stop = mini_project.cli("stop", "dev")
    assert stop.returncode == 0 and "no model server running for dev" in stop.stdout
    wrong_env = mini_project.cli("run", "--env", "staging")
    assert wrong_env.returncode == 2 and "--env staging" in wrong_env.stderr
    assert not (mini_project.root / "reports" / "runs").exists()


def test_outside_a_project_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_PROJECT"}
    done = subprocess.run([sys.executable, "-m", "workbench", "validate"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert "no configs/pipeline.yaml" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_terminated_run_is_recorded_as_failed(mini_project: Workspace) -> None:
    mini_project.write_notebook("slow", notebook(
        "import time\nprint('started', flush=True)", "time.sleep(120)"))
    mini_project.write_notebook("after", notebook("print('after')"))
    mini_project.write_yaml("pipeline.yaml", {"name": "m", "stages": [
        {"name": "slow", "notebook": "notebooks/slow.ipynb"},
        {"name": "after", "notebook": "notebooks/after.ipynb", "needs": ["slow"]}]})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WORKBENCH_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "workbench", "--project", str(mini_project.root), "run",
         "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:  # wait until the sleeping cell runs
        event = json.loads(line)
        if event["event"] == "cell" and "sleep" in event["source"]:
            break
    time.sleep(1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    record = mini_project.run_record()
    assert record["status"] == "failed" and record["finished"]
    assert record["stages"]["slow"]["status"] == "failed"
    assert record["stages"]["slow"]["error"] == "interrupted"
    assert record["stages"]["after"]["status"] == "pending"
    partial = (mini_project.runs()[-1] / "slow.ipynb").read_text()
    assert "started" in partial


def test_latest_is_the_run_created_last_even_within_one_second(tmp_path: Path) -> None:
    """Run ids have second resolution and a random suffix: two runs started within one second
    must still be told apart by creation time (``resume latest``, a partial run's base)."""
    from workbench import run_record
    from workbench.project import Project

    project = Project(tmp_path)
    for run_id, created in (("20261201T081635Z-ffffff", "2026-12-01T08:16:35.100+00:00"),
                            ("20261201T081635Z-000000", "2026-12-01T08:16:35.900+00:00")):
        (project.runs / run_id).mkdir(parents=True)
        run_record.save(project, run_record.RunRecord(
            id=run_id, pipeline="p", environment="dev", created=created, git_commit="abc",
            config_hash="h", config={}, tracking_uri="sqlite:///x", experiment="e", stages={}))
    assert run_record.latest_run(project).id == "20261201T081635Z-000000"
    assert [r.id for r in run_record.list_runs(project)] == ["20261201T081635Z-000000",
                                                        "20261201T081635Z-ffffff"]
