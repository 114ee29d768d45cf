"""Fixes of the first hour: the environment history of a deploy without an alias move, the
review notebook of the gate stage, references nested in literal parameters, and validate
agreeing with papermill on what a parameters cell declares.

Fast unless marked slow: a synthetic ledger, small projects in ``tmp_path``, the library calls
and the real CLI where it exits before anything long-running starts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import GATED_PIPELINE, REPO, Workspace, notebook

from workbench.audit import ledger
from workbench.config import ConfigError, Ref, parse_config
from workbench.governance import promotion
from workbench.identity import Identity
from workbench.project import Project
from workbench.reports import site
from workbench.stage_graph import refs_in, resolve_parameters

RUN = "20260101T080000Z-aaaaaa"
ENVIRONMENTS = {"environments": {
    name: {"deploy": {"target": "local", "port": port}, "thresholds": {"min_score": 0.5}}
    for name, port in (("dev", 6101), ("qa", 6102), ("prod", 6103))}}
MODEL = {"name": "mini", "dataset": "iris",
         "estimator": "sklearn.linear_model.LogisticRegression",
         "hyperparameters": {"C": 0.5, "max_iter": 200}}


def history_of(page: Path) -> Any:
    """The inline JSON data of environments.html."""
    html = page.read_text(encoding="utf-8")
    start = html.index('<script type="application/json" id="data">') + len(
        '<script type="application/json" id="data">')
    return json.loads(html[start:html.index("</script>", start)])


# --- 1. the environment history: a deploy without an alias move ----------------------------------

def test_site_builds_with_a_deploy_that_has_no_alias_move(tmp_path: Path) -> None:
    project = Project(tmp_path / "project")
    actor = Identity(name="carol", source="github")
    # dev: deployed, its alias never moved; qa: moved to v1, then v1 deployed; prod: v2 deployed
    # while its alias points at v1
    ledger.append(project.reports, "deploy", actor=actor.model_dump(), run_id=RUN,
                  data={"stage": "deploy", "environment": "dev", "model": "mini",
                        "version": "1", "endpoint": "http://127.0.0.1:6101"})
    for alias in ("qa", "prod"):
        promotion.record_move(project, RUN, alias=alias, model="mini", from_version=None,
                              to_version="1", actor=actor, via=f"gate approve_{alias}",
                              approvals=[], bundle_digest="b" * 64)
    for environment, version in (("qa", "1"), ("prod", "2")):
        ledger.append(project.reports, "deploy", actor=actor.model_dump(), run_id=RUN,
                      data={"stage": f"deploy_{environment}", "environment": environment,
                            "model": "mini", "version": version, "endpoint": None})

    site.build(project)  # was: ValueError: zip() argument 2 is longer than argument 1

    page = project.reports / "environments.html"
    history = history_of(page)
    assert [(i["event"], i["version"], i["alias_move"]) for i in history["dev"]] == [
        ("deploy", "1", None)]
    qa_move, qa_deploy = history["qa"]
    assert (qa_move["event"], qa_move["until"]) == ("alias_move", None)
    assert (qa_deploy["event"], qa_deploy["alias_move"]) == ("deploy", qa_move["seq"])
    assert history["prod"][1]["alias_move"] is None  # v2 deployed, the alias names v1
    html = page.read_text(encoding="utf-8")
    assert html.count("deploy (no alias move)") == 2  # dev's and prod's, not qa's


# --- 2. the review notebook is the gate stage's ------------------------------------------------

def synthetic_run(ws: Workspace) -> None:
    """A run record whose configuration snapshot is the workspace's configs."""
    from workbench import run_record

    config = {p.name: p.read_text() for p in (ws.root / "configs").glob("*.yaml")}
    run_record.save(Project(ws.root), run_record.RunRecord(
        id=RUN, pipeline="gated", environment="dev", status="awaiting_approval",
        created="2026-01-01T08:00:00+00:00", git_commit="c" * 40, config_hash="f" * 64,
        config=config, tracking_uri="", experiment="gated",
        stages={s["name"]: run_record.StageRecord() for s in ws.read_yaml("pipeline.yaml")
                ["stages"]}))


def gated_configs(ws: Workspace, notebook_path: str) -> None:
    from conftest import GATES

    pipeline = json.loads(json.dumps(GATED_PIPELINE))
    for stage in pipeline["stages"]:
        if stage.get("gate"):
            stage["notebook"] = notebook_path
    (ws.root / "configs").mkdir(parents=True, exist_ok=True)
    ws.write_yaml("pipeline.yaml", pipeline)
    ws.write_yaml("environments.yaml", ENVIRONMENTS)
    ws.write_yaml("model.yaml", MODEL)
    ws.write_yaml("gates.yaml", GATES)


def test_the_review_notebook_is_the_gate_stage_notebook(tmp_path: Path) -> None:
    from workbench.governance.approvals import ApprovalUsageError
    from workbench.governance.review import gate_of

    ws = Workspace(tmp_path / "p")
    gated_configs(ws, "notebooks/sign_off.ipynb")
    config = parse_config({p.name: p.read_text() for p in (ws.root / "configs").glob("*")})
    assert gate_of(config, "qa").notebook == "notebooks/sign_off.ipynb"
    assert gate_of(config, "prod").name == "approve_prod"
    with pytest.raises(ApprovalUsageError, match="--env dev: no stage of the pipeline has "
                       "'gate: dev'.*gated environments: prod, qa"):
        gate_of(config, "dev")


def test_lab_review_without_a_gate_for_the_environment_is_a_usage_error(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "p")
    gated_configs(ws, "notebooks/sign_off.ipynb")
    pipeline = ws.read_yaml("pipeline.yaml")  # prod keeps its policy, loses its gate stage
    pipeline["stages"] = pipeline["stages"][:3]
    ws.write_yaml("pipeline.yaml", pipeline)
    synthetic_run(ws)
    done = ws.cli("lab", "--review", RUN, "--env", "prod", "--no-browser", timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert ("--env prod: no stage of the pipeline has 'gate: prod', so there is no approval "
            "notebook to review it with; gated environments: qa") in done.stderr
    assert "Traceback" not in done.stderr


def test_lab_review_names_a_missing_gate_notebook(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "p")
    gated_configs(ws, "notebooks/sign_off.ipynb")  # not written
    synthetic_run(ws)
    done = ws.cli("lab", "--review", RUN, "--env", "qa", "--no-browser", timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert ("--env qa: gate stage 'approve_qa' names notebook notebooks/sign_off.ipynb, which "
            "does not exist") in done.stderr
    assert "FileNotFoundError" not in done.stderr


@pytest.mark.slow
def test_review_copy_is_made_from_the_gate_stage_notebook(gated_project: Workspace,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from workbench.governance.review import prepare_review

    ws = gated_project
    approve = ws.root / "notebooks" / "approve.ipynb"
    nb = json.loads(approve.read_text())
    nb["cells"].insert(0, {"cell_type": "markdown", "id": "signoff", "metadata": {},
                           "source": "# Sign-off form of this team"})
    (ws.root / "notebooks" / "sign_off.ipynb").write_text(json.dumps(nb))
    approve.unlink()  # nothing named approve.ipynb any more
    pipeline = ws.read_yaml("pipeline.yaml")
    for stage in pipeline["stages"]:
        if stage.get("gate"):
            stage["notebook"] = "notebooks/sign_off.ipynb"
    ws.write_yaml("pipeline.yaml", pipeline)
    ran = ws.cli("run")
    assert ran.returncode == 3, ran.stdout + ran.stderr  # awaiting approval at qa
    run_id = ws.run_record()["id"]

    monkeypatch.chdir(ws.root)
    copy = prepare_review(Project(ws.root), run_id, "qa")
    made = json.loads(copy.read_text())
    assert "".join(made["cells"][0]["source"]) == "# Sign-off form of this team"
    injected = [c for c in made["cells"] if "injected-parameters" in c["metadata"]["tags"]]
    assert f'run_id = "{run_id}"' in "".join(injected[0]["source"])

    # the CLI prepares the same copy and hands it to JupyterLab (--help: it exits at once)
    done = ws.cli("lab", "--review", run_id, "--env", "qa", "--no-browser", "--", "--help",
                  timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("review notebook: "))
    opened = Path(line.removeprefix("review notebook: "))
    assert opened.parent == copy.parent and opened != copy
    assert "".join(json.loads(opened.read_text())["cells"][0]["source"]) == \
        "# Sign-off form of this team"


# --- 3. references nested in literal lists and mappings ------------------------------------------

def texts(stages: list[dict[str, Any]]) -> dict[str, str | None]:
    return {"pipeline.yaml": yaml.safe_dump({"name": "nested", "stages": stages}),
            "environments.yaml": yaml.safe_dump(ENVIRONMENTS),
            "model.yaml": yaml.safe_dump(MODEL)}


PREPARE = {"name": "prepare", "notebook": "notebooks/prepare.ipynb",
           "outputs": {"rows": "int", "columns": "list"}}


def train_stage(parameters: dict[str, Any], needs: list[str] | None = None) -> dict[str, Any]:
    return {"name": "train", "notebook": "notebooks/train.ipynb", "needs": needs or [],
            "parameters": parameters}


NESTED = {
    "hyperparameters": {"alpha": {"from": "model.hyperparameters.C"},
                        "inner": {"deep": [{"from": "env.deploy.port"}, 3]}, "fixed": 1},
    "tags": [1, {"from": "run.id"}, {"n": {"from": "prepare.rows"}}],
    "top": {"from": "model.name"},
}


def test_nested_references_are_read_and_resolved() -> None:
    config = parse_config(texts([PREPARE, train_stage(NESTED, ["prepare"])]))
    stage = config.stage("train")
    assert stage.parameters["hyperparameters"]["alpha"] == Ref.model_validate(
        {"from": "model.hyperparameters.C"})
    assert [(path, ref.source) for path, ref in refs_in(stage.parameters["tags"], "tags")] == [
        ("tags[1]", "run.id"), ("tags[2].n", "prepare.rows")]
    resolved = resolve_parameters(stage, config, "qa", {"id": RUN},
                                  {"prepare": {"rows": 150, "columns": ["a"]}})
    assert resolved == {
        "hyperparameters": {"alpha": 0.5, "inner": {"deep": [6102, 3]}, "fixed": 1},
        "tags": [1, RUN, {"n": 150}],
        "top": "mini",
    }
    assert not any(isinstance(v, dict) and "from" in v for v in resolved["tags"])


def problems_of(stages: list[dict[str, Any]]) -> list[str]:
    from workbench.stage_graph import gate_problems, graph_problems, reference_problems

    try:
        config = parse_config(texts(stages))
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    found = graph_problems(config) or gate_problems(config) or reference_problems(config)
    return [str(p) for p in found]


def test_nested_references_are_validated_with_their_full_key_path() -> None:
    label = "configs/pipeline.yaml: stages[1](train).parameters"
    assert problems_of([PREPARE, train_stage(
        {"hyperparameters": {"alpha": {"from": "model.hyperparameters.alpha"}}})]) == [
        f"{label}.hyperparameters.alpha: 'from: model.hyperparameters.alpha': "
        f"configs/model.yaml has no key hyperparameters.alpha"]
    # an upstream stage named in a nested reference must be in needs, as at the top
    assert problems_of([PREPARE, train_stage({"sizes": [1, {"from": "prepare.rows"}]})]) == [
        f"{label}.sizes[1]: 'from: prepare.rows': stage 'prepare' is not upstream of "
        f"'train'; add it to needs"]
    assert problems_of([PREPARE, train_stage({"sizes": [1, {"from": "prepare.rows"}]},
                                             ["prepare"])]) == []
    assert problems_of([PREPARE, train_stage(
        {"x": {"a": [{"from": "prepare.missing"}]}}, ["prepare"])]) == [
        f"{label}.x.a[0]: 'from: prepare.missing': stage 'prepare' declares no output "
        f"'missing'; it declares ['columns', 'rows']"]
    # a malformed nested reference is refused when the file is read, at its key
    bad = problems_of([PREPARE, train_stage({"hyperparameters": {"alpha": {"from": "nodot"},
                                                                 "beta": {"from": "run.id",
                                                                          "extra": 1}}})])
    assert [p.split(": ", 2)[1] for p in bad] == [
        "stages[1](train).parameters.hyperparameters.alpha.from",
        "stages[1](train).parameters.hyperparameters.beta.extra"]


def test_validate_cli_names_a_bad_nested_reference(mini_project: Workspace) -> None:
    ws = mini_project
    ws.write_notebook("train", notebook("print(hyperparameters)",
                                        parameters="hyperparameters: dict = {}"))
    ws.write_yaml("pipeline.yaml", {"name": "nested", "stages": [{
        "name": "train", "notebook": "notebooks/train.ipynb",
        "parameters": {"hyperparameters": {"alpha": {"from": "model.hyperparameters.alpha"}}}}]})
    done = ws.cli("validate", timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert ("configs/pipeline.yaml: stages[0](train).parameters.hyperparameters.alpha: "
            "'from: model.hyperparameters.alpha': configs/model.yaml has no key "
            "hyperparameters") in done.stderr


# --- 4. validate reads parameters cells as papermill does ----------------------------------------

def one_stage(ws: Workspace, parameters_cell: str, passed: dict[str, Any]) -> Path:
    ws.write_notebook("stage", notebook("print('ran')", parameters=parameters_cell))
    ws.write_yaml("pipeline.yaml", {"name": "cells", "stages": [{
        "name": "stage", "notebook": "notebooks/stage.ipynb", "parameters": passed}]})
    return ws.root / "notebooks" / "stage.ipynb"


def validate_problems(ws: Workspace) -> list[str]:
    from workbench.pipeline.validate import load_and_validate

    try:
        load_and_validate(Project(ws.root))
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def papermill_knows(path: Path) -> set[str]:
    """What papermill itself infers (its ``Passed unknown parameter`` check uses this)."""
    import papermill

    return set(papermill.inspect_notebook(str(path)))


def test_a_comment_with_an_equals_sign_is_a_problem(mini_project: Workspace,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    ws = mini_project
    path = one_stage(ws, "alpha = 0.5  # default: a=1\nbeta = 2", {"alpha": 0.1, "beta": 3})
    assert papermill_knows(path) == {"beta"}  # papermill would call alpha unknown
    caplog.clear()  # papermill's own warning above
    with caplog.at_level(logging.WARNING):
        found = validate_problems(ws)
    assert found == [
        "configs/pipeline.yaml: stages[0](stage).notebook: notebooks/stage.ipynb parameters "
        "cell line 1 ('alpha = 0.5  # default: a=1'): papermill cannot parse it (a parameter "
        "line may have one '=', and one in a comment or a string counts) and warns 'Unable to "
        "parse line' on every run; it does not see parameter 'alpha' (it would call it "
        "unknown)",
        "configs/pipeline.yaml: stages[0](stage).parameters.alpha: papermill would call "
        "'alpha' an unknown parameter: it does not read it from line 1 of the parameters cell "
        "of notebooks/stage.ipynb",
    ]
    assert "Unable to parse line" not in caplog.text  # reported once, as a problem


def test_an_annotation_papermill_cannot_read_is_a_problem(mini_project: Workspace) -> None:
    ws = mini_project
    path = one_stage(ws, "import math\nx: bool | None = None\ny: Optional[int] = None",
                     {"y": 1})
    assert papermill_knows(path) == {"y"}
    assert validate_problems(ws) == [
        "configs/pipeline.yaml: stages[0](stage).notebook: notebooks/stage.ipynb parameters "
        "cell line 2 ('x: bool | None = None'): papermill's parser does not read the "
        "annotation 'bool | None' (it takes names, brackets and commas: e.g. Optional[X] for "
        "X | None), so papermill does not see parameter 'x' (it would call it unknown)"]


def test_a_line_papermill_cannot_parse_outside_any_parameter(mini_project: Workspace) -> None:
    ws = mini_project
    one_stage(ws, "a = 1\nsizes = dict(\n    small=1, large=2,\n)", {"a": 2})
    found = validate_problems(ws)
    assert len(found) == 1 and "parameters cell line 3 ('small=1, large=2,'): papermill " \
        "cannot parse it" in found[0], found


def test_cells_papermill_reads_as_python_does_pass(mini_project: Workspace) -> None:
    ws = mini_project
    cell = ('from typing import Optional\n'
            'alpha: float = 0.5  # the learning rate\n'
            'passed: Optional[bool] = None\n'
            'names: list = ["a", "b"]\n'
            'options = {\n    "k": 1,  # inner comment\n}\n')
    path = one_stage(ws, cell, {"alpha": 0.1, "passed": True, "names": [], "options": {}})
    assert papermill_knows(path) == {"alpha", "passed", "names", "options"}
    assert validate_problems(ws) == []


def test_the_real_notebooks_read_the_same_with_papermill() -> None:
    from workbench.execution.parameters import read_parameters_cell

    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cell = read_parameters_cell(path)
        assert cell.unread == () and set(cell.declared) <= cell.papermill, path
        assert cell.papermill == papermill_knows(path), path
