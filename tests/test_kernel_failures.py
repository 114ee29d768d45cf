"""Kernel failures, classified: each is detected, recorded with its class in run.json, the
status output and the report, with the partial notebook archived; retries follow the policy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import Workspace, notebook, processes_with
from workbench.audit import ledger

GLUE = "from workbench.scraps import glue\n"

DIE_ONCE = """import os, pathlib, signal
marker = pathlib.Path("died-once")
if not marker.exists():
    marker.write_text("x")
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
"""


def kernelspec(folder: Path, name: str, argv: list[str]) -> None:
    """A kernel for ``name`` under ``folder/kernels`` (found through ``JUPYTER_PATH``)."""
    spec = folder / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": name, "language": "python"}))


def on_kernel(nb: dict, name: str) -> dict:
    nb["metadata"]["kernelspec"]["name"] = name
    return nb


@pytest.mark.slow
def test_each_failure_class_is_detected_recorded_and_archived(mini_project: Workspace) -> None:
    ws = mini_project
    jupyter = ws.root / "jupyter"
    kernelspec(jupyter, "broken", [sys.executable, "-c", "import sys; sys.exit(3)",
                                   "{connection_file}"])
    notebooks = {
        "died": notebook("print('before', flush=True)",
                         "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
                         "print('never')"),
        "hang": notebook("print('started', flush=True)", "import time\ntime.sleep(120)",
                         "print('never')"),
        "slowcell": notebook("print('first', flush=True)", "import time\ntime.sleep(120)",
                             "print('never')"),
        "deadline": notebook("import time\nfor i in range(600):\n"
                             "    print(i, flush=True)\n    time.sleep(0.2)"),
        "startup": on_kernel(notebook("print('never')"), "broken"),
        "raises": notebook("raise ValueError('bad batch')"),
        "fine": notebook(GLUE + "glue('ok', True)"),
    }
    for name, nb in notebooks.items():
        ws.write_notebook(name, nb)
    ws.write_yaml("pipeline.yaml", {"name": "failing", "retry": {"startup": 2}, "stages": [
        {"name": "died", "notebook": "notebooks/died.ipynb"},
        {"name": "hang", "notebook": "notebooks/hang.ipynb", "hang_timeout": 3},
        {"name": "slowcell", "notebook": "notebooks/slowcell.ipynb", "cell_timeout": 2},
        {"name": "deadline", "notebook": "notebooks/deadline.ipynb", "timeout": 4,
         "hang_timeout": 3},
        {"name": "startup", "notebook": "notebooks/startup.ipynb", "startup_timeout": 20},
        {"name": "raises", "notebook": "notebooks/raises.ipynb", "retry": {"startup": 0}},
        {"name": "fine", "notebook": "notebooks/fine.ipynb", "outputs": {"ok": "bool"}},
    ]})
    done = ws.cli("run", env={"JUPYTER_PATH": str(jupyter)}, timeout=400)
    assert done.returncode == 1, done.stdout + done.stderr
    record = ws.run_record()
    folder = ws.runs()[-1]
    stages = record["stages"]
    expected = {"died": "kernel_died", "hang": "hang", "slowcell": "cell_timeout",
                "deadline": "deadline", "startup": "startup", "raises": "error"}
    assert {n: s["failure"] for n, s in stages.items()} == {**expected, "fine": None}
    assert stages["fine"]["status"] == "succeeded"
    assert "killed by SIGKILL" in stages["died"]["error"]
    assert stages["hang"]["error"].startswith("hang: no output for 3 s in cell 2")
    assert stages["slowcell"]["error"].startswith("cell timeout: ran longer than 2 s in cell 2")
    assert stages["deadline"]["error"] == "stage exceeded its timeout of 4 s"
    assert "kernel failed to start" in stages["startup"]["error"]
    assert "exited with code 3" in stages["startup"]["error"]

    # startup: retried twice (pipeline policy), every attempt archived under its own name
    attempts = stages["startup"]["attempts"]
    assert [(a["number"], a["failure"], a["notebook"]) for a in attempts] == [
        (1, "startup", "startup.attempt-1.ipynb"), (2, "startup", "startup.attempt-2.ipynb")]
    for name in ("startup.attempt-1.ipynb", "startup.attempt-2.ipynb", "startup.ipynb"):
        assert (folder / name).is_file(), name
    assert all(not s["attempts"] for n, s in stages.items() if n != "startup")

    # papermill marks a timed-out cell "completed" with no banner: the archive tells the truth
    timed_out = json.loads((folder / "slowcell.ipynb").read_text())
    assert timed_out["metadata"]["workbench"]["failure"] == "cell_timeout"
    assert timed_out["cells"][0]["source"].startswith("**Stage failed (cell_timeout)**")
    states = [c["metadata"].get("papermill", {}).get("status") for c in timed_out["cells"][1:]]
    assert states == ["completed", "completed", "failed", "pending"]
    for name in expected:  # every partial notebook is archived and says what happened
        archived = json.loads((folder / f"{name}.ipynb").read_text())
        assert archived["metadata"]["workbench"]["failure"] == expected[name], name
    assert "started" in (folder / "hang.ipynb").read_text()

    # the same classes in the ledger, `workbench status` and the report page
    entries = [e for e in ledger.entries(ws.root / "reports") if e["run_id"] == record["id"]]
    executed = {e["data"]["stage"]: e["data"]["failure"] for e in entries
                if e["event"] == "stage_executed"}
    assert executed == {**expected, "fine": None}
    assert sum(e["event"] == "stage_attempt" for e in entries) == 2
    status = ws.cli("status")
    assert "error (cell_timeout): cell timeout" in status.stdout
    assert "attempt 1 (startup):" in status.stdout and "startup.attempt-1.ipynb" in status.stdout
    page = (folder / "index.html").read_text()
    for failure in expected.values():
        assert f"[{failure}]" in page, failure
    assert ws.cli("audit", "verify").returncode == 0
    assert not processes_with("WORKBENCH_PROJECT", str(ws.root), b"ipykernel")


@pytest.mark.slow
def test_a_dead_kernel_is_retried_by_policy(mini_project: Workspace) -> None:
    ws = mini_project
    ws.write_notebook("flaky", notebook("print('attempt', flush=True)", DIE_ONCE,
                                        GLUE + "glue('n', 1)"))
    ws.write_notebook("after", notebook(GLUE + "glue('m', n + 1)", parameters="n: int = 0"))
    ws.write_yaml("pipeline.yaml", {"name": "retrying", "stages": [
        {"name": "flaky", "notebook": "notebooks/flaky.ipynb", "outputs": {"n": "int"},
         "retry": {"kernel_died": 1}},
        {"name": "after", "notebook": "notebooks/after.ipynb", "needs": ["flaky"],
         "parameters": {"n": {"from": "flaky.n"}}, "outputs": {"m": "int"}},
    ]})
    done = ws.cli("run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "attempt 1 failed (kernel_died)" in done.stdout
    record = ws.run_record()
    folder = ws.runs()[-1]
    flaky = record["stages"]["flaky"]
    assert flaky["status"] == "succeeded" and flaky["failure"] is None
    assert [(a["number"], a["failure"], a["notebook"]) for a in flaky["attempts"]] == [
        (1, "kernel_died", "flaky.attempt-1.ipynb")]
    assert record["stages"]["after"]["outputs"] == {"m": 2}
    first = json.loads((folder / "flaky.attempt-1.ipynb").read_text())
    assert first["metadata"]["workbench"]["failure"] == "kernel_died"
    assert "scrapbook" not in (folder / "flaky.attempt-1.ipynb").read_text()
    assert "application/scrapbook.scrap.json+json" in (folder / "flaky.ipynb").read_text()
    entries = [e for e in ledger.entries(ws.root / "reports") if e["run_id"] == record["id"]]
    attempt = next(e for e in entries if e["event"] == "stage_attempt")
    assert attempt["data"]["failure"] == "kernel_died"
    assert list(attempt["files"]) == [f"runs/{record['id']}/flaky.attempt-1.ipynb"]
    assert ledger.verify(ws.root / "reports").ok
