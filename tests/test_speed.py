"""Parallel stages, pre-warmed kernels and the stage cache, on real kernels through the CLI.

The project is a diamond: ``prep`` feeds ``left`` and ``right`` (independent, run side by side),
which feed ``join``; ``publish`` declares an ``endpoint`` output, so it acts on the world and is
never reused. The notebooks import numpy, pandas and matplotlib (declared as ``preload``) and
draw a figure, so a warm kernel's imports show up in the executed notebook if they leak.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Workspace, clean_environment, notebook, processes_with

PREP = """import numpy as np
from workbench.scraps import glue

values = np.arange(size, dtype=float) * scale
print("prepared", values.tolist())
glue("values", values.tolist())
"""

BRANCH = """import time
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from workbench.scraps import glue

time.sleep(pause)
frame = pd.DataFrame({"x": values, "y": np.power(values, power)})
print(frame.describe().loc[["mean", "max"]].round(3).to_string())
fig, ax = plt.subplots(figsize=(3, 2))
ax.plot(frame["x"], frame["y"])
plt.show()
glue("part", float(frame["y"].sum()))
"""

JOIN = """from workbench.scraps import glue

print("total", left + right)
glue("total", left + right)
"""

PUBLISH = """from workbench.scraps import glue

glue("endpoint", f"file://published/{total}")
"""

BRANCH_PARAMS = "values: list = []\npower: int = 1\npause: float = 0.0"
HEAVY = ["numpy", "pandas", "matplotlib.pyplot", "workbench.scraps"]


def diamond(pause: float = 2.0, right_power: int = 3) -> dict[str, Any]:
    def branch(name: str, power: int) -> dict[str, Any]:
        return {"name": name, "notebook": "notebooks/branch.ipynb", "needs": ["prep"],
                "preload": HEAVY,
                "parameters": {"values": {"from": "prep.values"}, "power": power,
                               "pause": pause},
                "outputs": {"part": "float"}}

    return {"name": "diamond", "stages": [
        {"name": "prep", "notebook": "notebooks/prep.ipynb", "preload": ["numpy"],
         "parameters": {"size": 6, "scale": 0.5}, "outputs": {"values": "list"}},
        branch("left", 2),
        branch("right", right_power),
        {"name": "join", "notebook": "notebooks/join.ipynb", "needs": ["left", "right"],
         "preload": ["workbench.scraps", "no_such_module_here"],
         "parameters": {"left": {"from": "left.part"}, "right": {"from": "right.part"}},
         "outputs": {"total": "float"}},
        {"name": "publish", "notebook": "notebooks/publish.ipynb", "needs": ["join"],
         "parameters": {"total": {"from": "join.total"}}, "outputs": {"endpoint": "str"}},
    ]}


@pytest.fixture
def speed_project(mini_project: Workspace) -> Workspace:
    mini_project.write_yaml("pipeline.yaml", diamond())
    mini_project.write_notebook("prep", notebook(PREP, parameters="size: int = 3\nscale: "
                                                                  "float = 1.0"))
    mini_project.write_notebook("branch", notebook(BRANCH, parameters=BRANCH_PARAMS))
    mini_project.write_notebook("join", notebook(JOIN, parameters="left: float = 0.0\n"
                                                                  "right: float = 0.0"))
    mini_project.write_notebook("publish", notebook(PUBLISH, parameters="total: float = 0.0"))
    return mini_project


def run(project: Workspace, *options: str) -> dict[str, Any]:
    done = project.cli("run", "--json", *options, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = project.run_record()
    record["events"] = [json.loads(line) for line in done.stdout.splitlines()
                        if line.startswith("{")]
    return record


def archived(project: Workspace, record: dict[str, Any], stage: str) -> Path:
    entry = record["stages"][stage]
    return project.root / "reports" / "runs" / (entry["reused_from"] or record["id"]) / \
        entry["notebook"]


VOLATILE_CELL_METADATA = ("execution", "papermill")


def comparable(path: Path) -> dict[str, Any]:
    """An executed notebook without what differs between any two executions: timestamps,
    durations, papermill's record of its input and output paths, and the random id papermill
    gives the cell it injects the parameters in."""
    nb = json.loads(path.read_text())
    nb["metadata"].pop("papermill", None)
    for cell in nb["cells"]:
        for key in VOLATILE_CELL_METADATA:
            cell.get("metadata", {}).pop(key, None)
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell.pop("id")
    return nb


def outputs(record: dict[str, Any]) -> dict[str, Any]:
    return {name: entry["outputs"] for name, entry in record["stages"].items()}


def ledger(project: Workspace) -> list[dict[str, Any]]:
    lines = (project.root / "reports" / "ledger.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["started"] < b["finished"] and b["started"] < a["finished"]


@pytest.mark.slow
def test_parallel_warm_and_cached_runs_match_a_cold_sequential_run(speed_project: Workspace):
    cold = run(speed_project, "--jobs", "1", "--no-warm", "--no-cache")
    warm = run(speed_project, "--jobs", "2", "--no-cache", "--no-fork")
    fast = run(speed_project, "--jobs", "2", "--no-cache")
    cached = run(speed_project)  # reuses the newest executions: the fast run's

    stages = cold["stages"]
    assert {n: e["status"] for n, e in stages.items()} == dict.fromkeys(stages, "succeeded")
    assert cold["options"] == {"jobs": 1, "warm": False, "cache": False, "fork": True}
    assert {e["kernel"] for e in stages.values()} == {"cold"}
    assert not overlap(stages["left"], stages["right"])  # one at a time

    # parallel: the independent branches ran side by side, on kernels warmed meanwhile
    assert fast["options"] == {"jobs": 2, "warm": True, "cache": False, "fork": True}
    assert overlap(fast["stages"]["left"], fast["stages"]["right"])
    kernels = {n: e["kernel"] for n, e in fast["stages"].items()}
    # every kernel forked from the run's fork server (prep's while the run set up)
    assert kernels == dict.fromkeys(fast["stages"], "forked")
    # warm, not forked: every kernel pre-started as an interpreter of its own
    assert warm["options"] == {"jobs": 2, "warm": True, "cache": False, "fork": False}
    assert {n: e["kernel"] for n, e in warm["stages"].items()} == \
        dict.fromkeys(warm["stages"], "warm")
    warnings = [e["message"] for e in fast["events"] if e["event"] == "warning"]
    assert any("preload: no_such_module_here: ModuleNotFoundError" in w for w in warnings)

    # cached: every stage without a side effect is reused from the parallel run's archive
    reused = {n: (e["status"], e.get("reuse"), e["reused_from"])
              for n, e in cached["stages"].items()}
    assert reused == {**{n: ("reused", "cache", fast["id"])
                         for n in ("prep", "left", "right", "join")},
                      "publish": ("succeeded", None, None)}

    # the same stage outputs and the same archived notebooks, apart from times
    assert outputs(fast) == outputs(warm) == outputs(cold) == outputs(cached)
    assert cold["stages"]["join"]["outputs"]["total"] == pytest.approx(
        sum((0.5 * i) ** 2 + (0.5 * i) ** 3 for i in range(6)))
    for name in stages:
        expected = comparable(archived(speed_project, cold, name))
        assert comparable(archived(speed_project, fast, name)) == expected, name
        assert comparable(archived(speed_project, warm, name)) == expected, name
        assert comparable(archived(speed_project, cached, name)) == expected, name
    figure = [o for c in expected_cells(speed_project, cold, "left") for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert figure, "the branch notebook's figure is in the archive"

    # the audit trail: a reuse points at the original execution and its digest
    entries = ledger(speed_project)
    executed = {(e["run_id"], e["data"]["stage"]): e for e in entries
                if e["event"] == "stage_executed"}
    for name in ("prep", "left", "right", "join"):
        reuse = next(e for e in entries if e["event"] == "stage_reused"
                     and e["run_id"] == cached["id"] and e["data"]["stage"] == name)
        original = executed[(fast["id"], name)]
        assert reuse["data"]["reuse"] == "cache"
        assert reuse["data"]["reused_from"] == fast["id"]
        assert reuse["data"]["cache_key"] == original["data"]["cache_key"] \
            == cached["stages"][name]["cache_key"]
        digest = original["files"][f"runs/{fast['id']}/{name}.ipynb"]
        assert reuse["data"]["notebook_sha256"] == digest
    assert "cache_key" not in executed[(cached["id"], "publish")]["data"]
    assert speed_project.cli("audit", "verify").returncode == 0


def expected_cells(project: Workspace, record: dict[str, Any], stage: str) -> list[Any]:
    return json.loads(archived(project, record, stage).read_text())["cells"]


def statuses(record: dict[str, Any]) -> dict[str, str]:
    return {n: e["status"] for n, e in record["stages"].items()}


@pytest.mark.slow
def test_the_cache_key_follows_notebook_parameters_and_upstream_outputs(
        speed_project: Workspace):
    first = run(speed_project)
    assert set(statuses(first).values()) == {"succeeded"}

    # an edit that does not change right's output: right runs, join is still reused
    path = speed_project.root / "notebooks" / "branch.ipynb"
    edited = json.loads(path.read_text())
    edited["cells"].append({"cell_type": "markdown", "id": "note", "metadata": {},
                            "source": "A note."})
    path.write_text(json.dumps(edited))
    second = run(speed_project)
    assert statuses(second) == {"prep": "reused", "left": "succeeded", "right": "succeeded",
                                "join": "reused", "publish": "succeeded"}

    # a parameter that changes right's output: right and join run again, left is reused
    speed_project.write_yaml("pipeline.yaml", diamond(right_power=4))
    third = run(speed_project)
    assert statuses(third) == {"prep": "reused", "left": "reused", "right": "succeeded",
                               "join": "succeeded", "publish": "succeeded"}
    assert third["stages"]["join"]["outputs"] != second["stages"]["join"]["outputs"]

    # --no-cache executes everything; cache: false opts a stage out
    assert set(statuses(run(speed_project, "--no-cache")).values()) == {"succeeded"}
    pipeline = diamond(right_power=4)
    pipeline["stages"][0]["cache"] = False
    speed_project.write_yaml("pipeline.yaml", pipeline)
    assert statuses(run(speed_project))["prep"] == "succeeded"

    # an archived original that no longer has its recorded digest is never reused
    latest = speed_project.run_record()
    original = archived(speed_project, latest, "left")
    original.write_text(original.read_text().replace("Axes", "Tampered"))
    after = run(speed_project)
    assert after["stages"]["left"]["status"] == "succeeded"
    assert after["stages"]["right"]["status"] == "reused"


def test_a_stage_that_acts_on_the_world_cannot_be_cached(speed_project: Workspace):
    pipeline = diamond()
    pipeline["stages"][4]["cache"] = True
    speed_project.write_yaml("pipeline.yaml", pipeline)
    done = speed_project.cli("validate")
    assert done.returncode == 2
    assert "stages[4](publish).cache" in done.stderr
    assert "declares output 'endpoint'" in done.stderr


@pytest.mark.slow
def test_a_failed_branch_does_not_stop_the_other_and_ctrl_c_stops_both(
        speed_project: Workspace):
    # one branch fails; the other, already running beside it, completes; join is skipped
    speed_project.write_notebook("branch", notebook(
        BRANCH.replace("time.sleep(pause)", "time.sleep(pause)\nassert power != 3, 'no cubes'"),
        parameters=BRANCH_PARAMS))
    done = speed_project.cli("run", "--json", timeout=900)
    assert done.returncode == 1
    record = speed_project.run_record()
    assert statuses(record) == {"prep": "succeeded", "left": "succeeded", "right": "failed",
                                "join": "skipped", "publish": "skipped"}
    assert "no cubes" in record["stages"]["right"]["error"]

    # Ctrl-C while both branches run: both are interrupted, archived, and their kernels gone.
    # Each branch marks the moment it enters its pause, so the signal comes when both are in it.
    speed_project.write_notebook("branch", notebook(
        BRANCH.replace("time.sleep(pause)", "import pathlib\n"
                       "pathlib.Path(f'paused-{power}').touch()\ntime.sleep(pause)"),
        parameters=BRANCH_PARAMS))
    speed_project.write_yaml("pipeline.yaml", diamond(pause=120))
    paused = [speed_project.root / f"paused-{power}" for power in (2, 3)]
    env = {**clean_environment(), "WORKBENCH_TEST_MARK": "ctrl-c"}
    process = subprocess.Popen(
        [sys.executable, "-m", "workbench", "--project", str(speed_project.root), "run",
         "--json", "--no-cache"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=speed_project.root)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            runs = speed_project.runs()
            ready = len(runs) == 2 and (runs[-1] / "run.json").is_file()  # folder comes first
            record = speed_project.run_record() if ready else {"stages": {}}
            started = [speed_project.root / ".workbench" / "staging" / runs[-1].name / f"{n}"
                       ".ipynb" for n in ("left", "right")] if len(runs) == 2 else []
            if all(record["stages"].get(n, {}).get("status") == "running"
                   for n in ("left", "right")) and all(p.exists() for p in started) \
                    and all(p.exists() for p in paused):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the branches never ran side by side")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    record = speed_project.run_record()
    for name in ("left", "right"):
        entry = record["stages"][name]
        assert (entry["status"], entry["failure"]) == ("failed", "interrupted"), stderr
        assert (speed_project.runs()[-1] / f"{name}.ipynb").is_file()
    kernels = [p for p in processes_with("WORKBENCH_TEST_MARK", "ctrl-c")]
    deadline = time.monotonic() + 20
    while kernels and time.monotonic() < deadline:
        time.sleep(0.5)
        kernels = processes_with("WORKBENCH_TEST_MARK", "ctrl-c")
    assert kernels == []
    assert os.path.isdir(speed_project.root / "reports")
    assert speed_project.cli("audit", "verify").returncode == 0


def test_a_prepared_store_skips_mlflow_only_while_it_is_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from mlflow import MlflowClient

    from workbench.config import MlflowSettings
    from workbench.project import Project
    from workbench.registry import store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the embedded store, here
    resolved = store.resolve(Project(tmp_path / "one"), MlflowSettings())
    first = store.prepare(resolved)
    template = store._template_path()
    assert template.parent == tmp_path / "cache" / "workbench" and template.is_file()

    # a second project's store starts as a copy of the empty schema MLflow made for the first
    other = store.resolve(Project(tmp_path / "two"), MlflowSettings(experiment="other"))
    created = store.prepare(other)
    assert MlflowClient(other.tracking_uri).get_experiment(created).name == "other"
    assert store._schema_and_experiment(store.sqlite_file(other.tracking_uri), "other") == \
        (store._schema_and_experiment(template, "")[0], created)
    assert MlflowClient(other.tracking_uri).get_experiment_by_name("workbench") is None
    remembered = tmp_path / "one" / ".workbench" / "mlflow" / store.PREPARED
    assert json.loads(remembered.read_text())["revision"]
    assert store.prepare(resolved) == first  # read from SQLite, the same experiment

    # a deleted experiment is not taken as prepared: MLflow restores it
    client = MlflowClient(resolved.tracking_uri)
    client.delete_experiment(first)
    again = store.prepare(resolved)
    assert again == first
    assert client.get_experiment(again).lifecycle_stage == "active"

    # a schema revision other than the remembered one goes through MLflow again
    saved = json.loads(remembered.read_text())
    remembered.write_text(json.dumps({**saved, "revision": "older"}))
    assert store.prepare(resolved) == again
    assert json.loads(remembered.read_text()) == saved
