"""Stage execution with real kernels on small notebooks: typing, scraps, failures, timeouts."""

from __future__ import annotations

import json

import pytest
import scrapbook

from tests.conftest import Workspace, notebook

pytestmark = pytest.mark.slow  # every test executes notebooks on real kernels

GLUE = "from workbench.scraps import glue\n"


def pipeline(*stages: dict) -> dict:
    return {"name": "mini", "stages": list(stages)}


def test_parameters_keep_their_types(mini_project: Workspace) -> None:
    """'007' and a SHA like '1234e56' stay strings; papermill's CLI would turn them into numbers."""
    mini_project.write_notebook("typed", notebook(
        GLUE + "glue('seen', {k: [type(v).__name__, v] for k, v in "
        "dict(code=code, sha=sha, count=count, ratio=ratio, flag=flag, opts=opts).items()})\n"
        "glue('code_out', code)",
        parameters='code: str = ""\nsha: str = ""\ncount: int = 0\nratio: float = 0.0\n'
                   'flag: bool = False\nopts: dict = {}',
    ))
    mini_project.write_notebook("downstream", notebook(
        GLUE + "glue('received', [type(value).__name__, value])",
        parameters='value: str = ""',
    ))
    mini_project.write_yaml("pipeline.yaml", pipeline(
        {"name": "typed", "notebook": "notebooks/typed.ipynb",
         "parameters": {"code": "007", "sha": "1234e56", "count": 7, "ratio": 0.5,
                        "flag": True, "opts": {"a": 1}},
         "outputs": {"seen": "dict", "code_out": "str"}},
        {"name": "downstream", "notebook": "notebooks/downstream.ipynb", "needs": ["typed"],
         "parameters": {"value": {"from": "typed.code_out"}}, "outputs": {"received": "list"}},
    ))
    done = mini_project.cli("run")
    assert done.returncode == 0, done.stderr + done.stdout
    stages = mini_project.run_record()["stages"]
    assert stages["typed"]["outputs"]["seen"] == {
        "code": ["str", "007"], "sha": ["str", "1234e56"], "count": ["int", 7],
        "ratio": ["float", 0.5], "flag": ["bool", True], "opts": ["dict", {"a": 1}],
    }
    assert stages["downstream"]["parameters"] == {"value": "007"}
    assert stages["downstream"]["outputs"]["received"] == ["str", "007"]
    archived = mini_project.runs()[-1] / "typed.ipynb"
    assert scrapbook.read_notebook(str(archived)).scraps["code_out"].data == "007"


@pytest.mark.parametrize(("glued", "message"), [
    ("", "declared output 'answer' (int) was not glued"),
    ("glue('answer', '42')", "output 'answer' should be int, got str"),
    ("glue('answer', True)", "output 'answer' should be int, got bool"),
])
def test_missing_or_mistyped_scrap_fails_the_stage(
    mini_project: Workspace, glued: str, message: str
) -> None:
    mini_project.write_notebook("answer", notebook(GLUE + glued, parameters="x: int = 1"))
    mini_project.write_notebook("after", notebook("print('ran')", parameters="answer: int = 0"))
    mini_project.write_yaml("pipeline.yaml", pipeline(
        {"name": "answer", "notebook": "notebooks/answer.ipynb", "outputs": {"answer": "int"}},
        {"name": "after", "notebook": "notebooks/after.ipynb", "needs": ["answer"],
         "parameters": {"answer": {"from": "answer.answer"}}},
    ))
    done = mini_project.cli("run")
    assert done.returncode == 1
    record = mini_project.run_record()
    assert record["status"] == "failed"
    assert message in record["stages"]["answer"]["error"]
    assert message in done.stdout
    assert record["stages"]["after"]["status"] == "skipped"


def test_failing_stage_keeps_evidence_and_stops_dependants(mini_project: Workspace) -> None:
    mini_project.write_notebook("ok", notebook(GLUE + "glue('n', 1)"))
    mini_project.write_notebook("boom", notebook(
        "print('before the failure')", "raise ValueError('boom: bad batch')", "print('never')"))
    mini_project.write_notebook("after", notebook("print('ran')"))
    mini_project.write_notebook("side", notebook("print('independent')"))
    mini_project.write_yaml("pipeline.yaml", pipeline(
        {"name": "ok", "notebook": "notebooks/ok.ipynb", "outputs": {"n": "int"}},
        {"name": "boom", "notebook": "notebooks/boom.ipynb", "needs": ["ok"]},
        {"name": "after", "notebook": "notebooks/after.ipynb", "needs": ["boom"]},
        {"name": "side", "notebook": "notebooks/side.ipynb", "needs": ["ok"]},
    ))
    done = mini_project.cli("run")
    assert done.returncode == 1
    folder = mini_project.runs()[-1]
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "failed"
    statuses = {name: stage["status"] for name, stage in record["stages"].items()}
    assert statuses == {"ok": "succeeded", "boom": "failed", "after": "skipped",
                        "side": "succeeded"}
    assert "ValueError: boom: bad batch" in record["stages"]["boom"]["error"]
    partial = json.loads((folder / "boom.ipynb").read_text())
    text = json.dumps(partial)
    assert "before the failure" in text and "boom: bad batch" in text
    assert "never\\n" not in text
    assert not (folder / "after.ipynb").exists()
    status = mini_project.cli("status")
    assert "boom" in status.stdout and "failed" in status.stdout


def test_stage_timeout_bounds_the_whole_stage(mini_project: Workspace) -> None:
    mini_project.write_notebook("slow", notebook(
        "import time\ntime.sleep(1.5)", "time.sleep(1.5)", "time.sleep(60)"))
    mini_project.write_yaml("pipeline.yaml", pipeline(
        {"name": "slow", "notebook": "notebooks/slow.ipynb", "timeout": 4},
    ))
    done = mini_project.cli("run", timeout=120)
    assert done.returncode == 1
    record = mini_project.run_record()
    assert "exceeded its timeout of 4 s" in record["stages"]["slow"]["error"]
    assert record["stages"]["slow"]["duration_s"] < 30


def test_json_progress_events(mini_project: Workspace) -> None:
    mini_project.write_notebook("one", notebook(GLUE + "glue('x', 1)"))
    mini_project.write_yaml("pipeline.yaml", pipeline(
        {"name": "one", "notebook": "notebooks/one.ipynb", "outputs": {"x": "int"}}))
    done = mini_project.cli("run", "--json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert "cell" in kinds and kinds.index("stage_started") < kinds.index("stage_finished")
    assert events[-1]["status"] == "succeeded"


def test_kernel_ignoring_the_interrupt_is_killed(mini_project: Workspace) -> None:
    """A stage that swallows the timeout's interrupt is killed, and the run still ends."""
    mini_project.write_notebook("stubborn", notebook(
        "import time\ntry:\n    time.sleep(90)\nexcept KeyboardInterrupt:\n"
        "    print('ignoring the interrupt', flush=True)\n    time.sleep(90)"))
    mini_project.write_yaml("pipeline.yaml", pipeline(
        {"name": "stubborn", "notebook": "notebooks/stubborn.ipynb", "timeout": 3}))
    done = mini_project.cli("run", timeout=80)
    assert done.returncode == 1
    record = mini_project.run_record()
    assert record["stages"]["stubborn"]["error"] == "stage exceeded its timeout of 3 s"
    assert "ignoring the interrupt" in (mini_project.runs()[-1] / "stubborn.ipynb").read_text()
