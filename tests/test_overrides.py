"""Per-run parameter overrides: ``workbench run -p STAGE.PARAM=VALUE`` and ``-p model.KEY=VALUE``.

VALUE is YAML, typed by the notebook's annotation as a configured value is (a ``str`` parameter
gets the text as written); mistakes are exit 2 before anything runs, naming stage and
parameter; overrides are kept in run.json, recorded in the ledger, part of the cache key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Workspace, notebook
from workbench.audit import ledger
from workbench.config import load_config
from workbench.execution import cache
from workbench.pipeline import overrides
from workbench.project import Project
from workbench.run_record import RunRecord
from workbench.stage_graph import resolve_parameters

PARAMETERS = """code: str = "x"
n: int = 1
tags: list = []
opts: dict = {}
alpha: float = 0.5
seed: int = 0
name = "default"
"""

GLUE = """from workbench.scraps import glue
glue("seen", {"code": code, "n": n, "tags": tags, "opts": opts, "alpha": alpha, "seed": seed,
              "name": name})
"""

SECRET = "s3cr3t-value-for-tests"


def _project(ws: Workspace, secrets: list[str] | None = None) -> None:
    ws.write_notebook("train", notebook(GLUE, parameters=PARAMETERS))
    pipeline: dict[str, Any] = {"name": "overrides", "stages": [
        {"name": "train", "notebook": "notebooks/train.ipynb",
         "parameters": {"seed": {"from": "model.random_state"}, "name": {"from": "model.name"}},
         "outputs": {"seen": "dict"}}]}
    if secrets:
        pipeline["secrets"] = secrets
    ws.write_yaml("pipeline.yaml", pipeline)


def _checked(ws: Workspace, *items: str) -> dict[str, Any]:
    project = Project(ws.root)
    return overrides.from_command_line(project, load_config(project.configs), items)


def _refused(ws: Workspace, *items: str, env: dict[str, str] | None = None) -> str:
    args = [arg for item in items for arg in ("-p", item)]
    done = ws.cli("run", *args, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert not ws.runs(), "nothing may run (or be recorded) when an override is refused"
    return done.stderr


# --------------------------------------------------------------- typing (no kernels)

def test_values_are_yaml_typed_by_the_annotation(mini_project: Workspace) -> None:
    _project(mini_project)
    typed = _checked(mini_project, "train.code=007", "train.n=5", "train.tags=[a, b]",
                     "train.opts={x: 1}", "train.alpha=2", "model.random_state=7")
    assert typed == {"train.code": "007", "train.n": 5, "train.tags": ["a", "b"],
                     "train.opts": {"x": 1}, "train.alpha": 2, "model.random_state": 7}
    assert isinstance(typed["train.code"], str) and isinstance(typed["train.n"], int)


def test_a_str_parameter_gets_the_text_as_written(mini_project: Workspace) -> None:
    _project(mini_project)
    typed = _checked(mini_project, "train.code=true", "train.name='quoted'",
                     "model.estimator=sklearn.linear_model.Ridge")
    assert typed == {"train.code": "true", "train.name": "'quoted'",
                     "model.estimator": "sklearn.linear_model.Ridge"}


def test_unknown_stage_parameter_and_model_key_are_exit_2(mini_project: Workspace) -> None:
    _project(mini_project)
    assert "-p nope.n=1: no stage 'nope'; stages are train" in _refused(mini_project, "nope.n=1")
    message = _refused(mini_project, "train.beta=1")
    assert "-p train.beta=1: stage 'train' declares no parameter 'beta' in the parameters cell " \
           "of notebooks/train.ipynb" in message
    assert "-p model.colour=red: configs/model.yaml has no key colour" in \
        _refused(mini_project, "model.colour=red")
    assert "expected STAGE.PARAM=VALUE" in _refused(mini_project, "train")
    assert "-p model.name=other: the workbench itself uses model.name" in \
        _refused(mini_project, "model.name=other")


def test_a_wrong_type_is_exit_2_naming_stage_and_parameter(mini_project: Workspace) -> None:
    _project(mini_project)
    assert "-p train.alpha=x: stage 'train' declares alpha: float in notebooks/train.ipynb; " \
           "got str 'x'" in _refused(mini_project, "train.alpha=x")
    assert "-p train.n=true: stage 'train' declares n: int in notebooks/train.ipynb; got bool " \
           "True" in _refused(mini_project, "train.n=true")
    assert "-p train.tags={a: 1}: stage 'train' declares tags: list" in \
        _refused(mini_project, "train.tags={a: 1}")
    # a model key is typed by every notebook parameter that references it
    assert "-p model.random_state=x: stage 'train' declares seed: int in " \
           "notebooks/train.ipynb (from: model.random_state); got str 'x'" in \
        _refused(mini_project, "model.random_state=x")
    assert "-p train.n=[1: the value is not valid YAML" in _refused(mini_project, "train.n=[1")


def test_a_secret_value_is_never_a_parameter(mini_project: Workspace) -> None:
    _project(mini_project, secrets=["API_TOKEN"])
    message = _refused(mini_project, f"train.code={SECRET}", env={"API_TOKEN": SECRET})
    assert "-p train.code: the value holds the value of secret API_TOKEN" in message
    assert SECRET not in message


def test_overrides_replace_at_resolution(mini_project: Workspace) -> None:
    _project(mini_project)
    config = load_config(mini_project.root / "configs")
    stage = config.stage("train")
    run = {"id": "r", "git_commit": "", "config_hash": "", "environment": "dev"}
    plain = resolve_parameters(stage, config, "dev", run, {})
    assert plain == {"seed": 42, "name": "mini"}
    given = {"train.n": 5, "train.seed": 3, "model.name": "other"}  # (the CLI refuses name)
    assert resolve_parameters(stage, config, "dev", run, {}, given) == \
        {"seed": 3, "name": "other", "n": 5}
    assert resolve_parameters(stage, config, "dev", run, {}, {"model.random_state": 9}) == \
        {"seed": 9, "name": "mini"}
    assert config.model.random_state == 42  # the configuration itself is left alone


def test_an_override_changes_the_cache_key(mini_project: Workspace) -> None:
    _project(mini_project)
    config = load_config(mini_project.root / "configs")
    stage, root = config.stage("train"), mini_project.root
    state = root / ".workbench"

    def key(parameters: dict[str, Any]) -> str:
        return cache.stage_key(stage, root, state, parameters, {}, {"tracking_uri": "t"})

    assert key({"seed": 42, "name": "mini"}) != key({"seed": 42, "name": "mini", "n": 5})
    assert key({"seed": 42, "name": "mini", "n": 5}) == key({"seed": 42, "name": "mini", "n": 5})


def test_the_record_keeps_overrides_and_old_records_load(tmp_path: Path) -> None:
    base = {"id": "r1", "pipeline": "p", "environment": "dev", "created": "2026", "git_commit": "",
            "config_hash": "h", "config": {}, "tracking_uri": "t", "experiment": "e",
            "stages": {}}
    assert RunRecord.model_validate(base).overrides == {}
    kept = RunRecord.model_validate({**base, "overrides": {"train.n": 5}})
    assert RunRecord.model_validate_json(kept.model_dump_json()).overrides == {"train.n": 5}


# --------------------------------------------------------------- a real run

def _injected(path: Path) -> str:
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1
    source = cells[0]["source"]
    return "".join(source) if isinstance(source, list) else source


@pytest.mark.slow
def test_overrides_reach_the_notebook_typed_and_are_recorded(mini_project: Workspace) -> None:
    _project(mini_project)
    given = ["-p", "train.code=007", "--param", "train.n=5", "-p", "train.tags=[a, b]",
             "-p", "train.opts={x: 1}", "-p", "model.random_state=7"]
    done = mini_project.cli("run", *given)
    assert done.returncode == 0, done.stdout + done.stderr
    first = mini_project.run_record()
    expected = {"code": "007", "n": 5, "tags": ["a", "b"], "opts": {"x": 1}, "seed": 7}
    assert first["overrides"] == {"train.code": "007", "train.n": 5, "train.tags": ["a", "b"],
                                  "train.opts": {"x": 1}, "model.random_state": 7}
    train = first["stages"]["train"]
    assert train["parameters"] == {**expected, "name": "mini"}
    assert train["outputs"]["seen"] == {**expected, "alpha": 0.5, "name": "mini"}
    injected = _injected(mini_project.runs()[-1] / train["notebook"])
    assert 'code = "007"' in injected and "n = 5" in injected and "seed = 7" in injected
    assert "tags = ['a', 'b']" in injected or 'tags = ["a", "b"]' in injected

    # recorded in the ledger's run_started entry; the record verifies and status shows them
    started = [e for e in ledger.entries(mini_project.root / "reports")
               if e.get("run_id") == first["id"] and e.get("event") == "run_started"]
    assert started[0]["data"]["overrides"] == first["overrides"]
    status = mini_project.cli("status", first["id"])
    assert 'overrides train.code="007"' in status.stdout, status.stdout
    verified = mini_project.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    page = (mini_project.root / "reports" / "runs" / first["id"] / "index.html")
    assert 'id="overrides"' in page.read_text()
    assert "train.code=&#34;007&#34;" in page.read_text() or 'train.code="007"' in \
        page.read_text()

    # without the overrides the overridden execution is not reused ...
    done = mini_project.cli("run")
    assert done.returncode == 0, done.stdout + done.stderr
    plain = mini_project.run_record()
    assert plain["overrides"] == {}
    assert plain["stages"]["train"]["status"] == "succeeded"
    assert plain["stages"]["train"]["cache_key"] != train["cache_key"]
    assert plain["stages"]["train"]["outputs"]["seen"]["code"] == "x"
    # ... and the same overrides again are
    done = mini_project.cli("run", *given)
    assert done.returncode == 0, done.stdout + done.stderr
    again = mini_project.run_record()
    assert again["stages"]["train"]["status"] == "reused"
    assert again["stages"]["train"]["reused_from"] == first["id"]
    assert again["stages"]["train"]["cache_key"] == train["cache_key"]

    # an edited record no longer matches what the ledger recorded
    path = mini_project.runs()[0] / "run.json"
    record = json.loads(path.read_text())
    record["overrides"]["train.n"] = 6
    path.write_text(json.dumps(record, indent=2) + "\n")
    verified = mini_project.cli("audit", "verify")
    assert verified.returncode != 0
    assert "overrides" in verified.stdout + verified.stderr

    # mistakes are refused before anything runs, naming stage and parameter
    runs = len(mini_project.runs())
    done = mini_project.cli("run", "-p", "train.beta=1")
    assert done.returncode == 2 and "stage 'train' declares no parameter 'beta'" in done.stderr
    done = mini_project.cli("run", "-p", "train.n=many")
    assert done.returncode == 2
    assert "stage 'train' declares n: int in notebooks/train.ipynb; got str 'many'" in done.stderr
    assert len(mini_project.runs()) == runs


@pytest.mark.slow
def test_resume_goes_on_with_the_same_overrides(gated_project: Workspace) -> None:
    ws = gated_project
    started = ws.cli("run", "-p", "release_qa.version=0042")
    assert started.returncode == 3, started.stdout + started.stderr
    run_id = ws.run_record()["id"]
    approved = ws.cli("approve", run_id, "--env", "qa", "--as", "alice", "--comment", "ok")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    resumed = ws.cli("promote", run_id, "--to", "qa")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    record = ws.run_record()
    assert record["overrides"] == {"release_qa.version": "0042"}
    assert record["stages"]["release_qa"]["parameters"]["version"] == "0042"
    assert record["stages"]["release_qa"]["outputs"]["released"] == "qa:0042"
