"""CI definitions generated from the project: three project shapes (this repository's default
project; a dev+qa project with other stage names and a requirements.txt; a minimal one), each
rendered for GitHub Actions, GitLab CI and Jenkins, linted, and checked against its config."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import GATES, REPO, Workspace, clean_environment, gate_stage, notebook
from tests.test_ci import actionlint, check_schema, expand

# --- three projects -----------------------------------------------------------------------

# (b): this repository's pipeline up to qa, its stages renamed
RENAMES = {"train": "fit", "evaluate": "score", "register": "publish", "deploy": "ship_dev",
           "approve_qa": "gate_qa", "deploy_qa": "ship_qa"}


def _renamed(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"from"}:
            root, _, rest = value["from"].partition(".")
            return {"from": f"{RENAMES.get(root, root)}.{rest}"}
        return {k: _renamed(v) for k, v in value.items()}
    return value


def write_dev_qa_project(root: Path) -> Workspace:
    """dev and qa only, stages fit, score, publish, ship_dev, gate_qa, ship_qa; installs from
    requirements.txt; builds the images of configs/docker/."""
    ws = Workspace(root)
    (root / "configs").mkdir(parents=True)
    shutil.copytree(REPO / "configs" / "docker", root / "configs" / "docker")
    pipeline = yaml.safe_load((REPO / "configs" / "pipeline.yaml").read_text())
    stages = []
    for stage in pipeline["stages"]:
        if stage["name"] not in RENAMES:
            continue
        stage = {**stage, "name": RENAMES[stage["name"]],
                 "needs": [RENAMES[n] for n in stage.get("needs", [])],
                 "parameters": _renamed(stage.get("parameters", {}))}
        stages.append(stage)
    ws.write_yaml("pipeline.yaml", {**pipeline, "name": "scoring", "stages": stages})
    environments = yaml.safe_load((REPO / "configs" / "environments.yaml").read_text())
    environments["environments"].pop("prod")
    environments["environments"]["qa"]["load_test"].pop("baseline")  # prod is gone
    ws.write_yaml("environments.yaml", environments)
    gates = yaml.safe_load((REPO / "configs" / "gates.yaml").read_text())
    gates["policies"].pop("prod")
    ws.write_yaml("gates.yaml", gates)
    shutil.copy(REPO / "configs" / "model.yaml", root / "configs" / "model.yaml")
    (root / "requirements.txt").write_text("scikit-learn>=1.5\nmlflow>=3.1  # the registry\n")
    (root / "features").mkdir()
    (root / "features" / "encode.py").write_text("def encode(x):\n    return x\n")
    return ws


MINIMAL_TRAIN = """import mlflow
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from workbench.registry.models import log_sklearn_model
from workbench.registry.store import connect
from workbench.scraps import glue

connect()
X, y = load_iris(return_X_y=True, as_frame=True)
with mlflow.start_run() as run:
    model = LogisticRegression(max_iter=300).fit(X, y)
    accuracy = float(model.score(X, y))
    mlflow.log_metric("accuracy", accuracy)
    logged = log_sklearn_model(model, X)
glue("mlflow_run_id", run.info.run_id)
glue("model_uri", logged.model_uri)
glue("metrics", {"accuracy": accuracy, "score": accuracy})
"""
MINIMAL_REGISTER = """from workbench.registry.models import register
from workbench.registry.store import connect
from workbench.scraps import glue

connect()
version, previous = register(model_uri, model_name, {"workbench.run_id": run_id}, "dev")
glue("model_version", version)
glue("alias_move", {"alias": "dev", "from": previous, "to": version})
"""
MINIMAL_DEPLOY = """from workbench.scraps import glue

glue("endpoint", "http://127.0.0.1:1/invocations")
glue("served_version", version)
"""


def write_minimal_project(root: Path) -> Workspace:
    """train, register, deploy, one gate (prod); dev and prod; no requirements.txt and no
    pyproject.toml; small notebooks (a model on iris, the embedded registry, a stand-in
    deploy) that run in seconds."""
    ws = Workspace(root)
    (root / "configs").mkdir(parents=True)
    ws.write_yaml("pipeline.yaml", {"name": "minimal", "stages": [
        {"name": "train", "notebook": "notebooks/train.ipynb",
         "outputs": {"mlflow_run_id": "str", "model_uri": "str", "metrics": "dict"}},
        {"name": "register", "notebook": "notebooks/register.ipynb", "needs": ["train"],
         "parameters": {"model_uri": {"from": "train.model_uri"},
                        "model_name": {"from": "model.name"}, "run_id": {"from": "run.id"}},
         "outputs": {"model_version": "str", "alias_move": "dict"}},
        {"name": "deploy", "notebook": "notebooks/deploy.ipynb", "needs": ["register"],
         "parameters": {"version": {"from": "register.model_version"}},
         "outputs": {"endpoint": "str", "served_version": "str"}},
        gate_stage("approve", "deploy", "prod"),
    ]})
    ws.write_yaml("environments.yaml", {"environments": {
        "dev": {"deploy": {"target": "local", "port": 5301}, "thresholds": {"min_score": 0.5}},
        "prod": {"deploy": {"target": "local", "port": 5302}, "thresholds": {"min_score": 0.9}},
    }})
    ws.write_yaml("gates.yaml", {"groups": GATES["groups"],
                                 "policies": {"prod": GATES["policies"]["prod"]}})
    ws.write_yaml("model.yaml", {"name": "mini", "dataset": "iris",
                                 "estimator": "sklearn.linear_model.LogisticRegression"})
    (root / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / "approve.ipynb", root / "notebooks" / "approve.ipynb")
    ws.write_notebook("train", notebook(MINIMAL_TRAIN))
    ws.write_notebook("register", notebook(MINIMAL_REGISTER, parameters=(
        'model_uri: str = ""\nmodel_name: str = "mini"\nrun_id: str = ""')))
    ws.write_notebook("deploy", notebook(MINIMAL_DEPLOY, parameters='version: str = ""'))
    return ws


def workbench_pin() -> str:
    from workbench.ci.shape import workbench_distribution

    dist, version = workbench_distribution()
    return f'python -m pip install "{dist}=={version}"'


@dataclass
class Case:
    """A project shape and what its CI definitions must say."""

    name: str
    root: Path
    stages: set[str]
    environments: list[str]  # in promotion order
    install: str
    until: str
    lint: bool
    release_jobs: set[str]
    absent: tuple[str, ...] = ()  # names that exist in other projects, never in this one


def make_case(name: str, tmp_path: Path) -> Case:
    if name.startswith("template:"):  # a project as `workbench init --template T` writes it
        from workbench.scaffold import init_project

        template = name.split(":", 1)[1]
        init_project(tmp_path / template, template)
        three = template != "minimal"
        return Case(name, tmp_path / template, set(),
                    ["dev", "qa", "prod"] if three else ["dev", "prod"],
                    "python -m pip install -r requirements.txt",
                    "evaluate" if three else "train", False,
                    {"test", "dev", "qa", "prod"} if three else {"test", "dev", "prod"},
                    () if three else ("qa", "evaluate", "approve_qa", "load_test"))
    if name == "default":
        return Case(name, REPO, set(), ["dev", "qa", "prod"], 'python -m pip install ".[test]"',
                    "evaluate", True, {"build", "test", "dev", "qa", "prod"})
    if name == "dev_qa":
        write_dev_qa_project(tmp_path / "dev_qa")
        return Case(name, tmp_path / "dev_qa", set(RENAMES.values()), ["dev", "qa"],
                    "python -m pip install -r requirements.txt", "score", False,
                    {"build", "test", "dev", "qa"},
                    ("prod", "register", "evaluate", "approve_qa", "deploy_qa", "approve_prod",
                     "deploy_prod", "ruff"))
    write_minimal_project(tmp_path / "minimal")
    return Case(name, tmp_path / "minimal", {"train", "register", "deploy", "approve"},
                ["dev", "prod"], workbench_pin(), "train", False, {"test", "dev", "prod"},
                ("qa", "evaluate", "approve_qa", "approve_prod", "ruff"))


def generate(case: Case, out: Path, install: str | None = None) -> dict[str, str]:
    """Every system's files for the case's project, written under ``out``."""
    from workbench.ci.definitions import SYSTEMS, render, shape_of
    from workbench.config import load_config

    config = load_config(case.root / "configs")
    if not case.stages:
        case.stages = {s.name for s in config.pipeline.stages}
    shape = shape_of(config, case.root, install)
    files: dict[str, str] = {}
    for system in SYSTEMS:
        files.update(render(shape, system))
    for path, text in files.items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(text)
    return files


CASES = ["default", "dev_qa", "minimal", "template:classifier", "template:regression",
         "template:minimal"]
RELEASE, TRAIN = ".github/workflows/workbench-release.yml", ".github/workflows/workbench-train.yml"


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    return make_case(request.param, tmp_path)


# --- the checks --------------------------------------------------------------------------


def test_generated_files_pass_actionlint_and_the_schemas(case: Case, tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = generate(case, out)
    assert set(files) == {RELEASE, TRAIN, ".gitlab-ci.yml", "Jenkinsfile"}
    workflows = [out / RELEASE, out / TRAIN]
    linted = actionlint(*workflows)
    assert linted.returncode == 0 and json.loads(linted.stdout) == [], linted.stdout
    github = check_schema("vendor.github-workflows", *workflows)
    assert github.returncode == 0, github.stdout + github.stderr
    gitlab = check_schema("vendor.gitlab-ci", out / ".gitlab-ci.yml")
    assert gitlab.returncode == 0, gitlab.stdout + gitlab.stderr
    jenkins = files["Jenkinsfile"]
    assert jenkins.count("{") == jenkins.count("}") and jenkins.count("(") == jenkins.count(")")
    assert re.search(r"^pipeline \{\n\s+agent any", jenkins, re.M)


def _environment_mentions(files: dict[str, str]) -> set[str]:
    found: set[str] = set()
    for text in files.values():
        found |= set(re.findall(r"--(?:env|to) (\w+)", text))
        found |= set(re.findall(r'\.name == \\?"(\w+)', text))  # the approvals' environment
    for path in (RELEASE, TRAIN):
        workflow = yaml.safe_load(files[path])
        found |= {j["environment"] for j in workflow["jobs"].values() if "environment" in j
                  and "${{" not in j["environment"]}
        inputs = workflow.get("on", workflow.get(True))["workflow_dispatch"]["inputs"] \
            if path == TRAIN else {}
        found |= set(inputs.get("environment", {}).get("options", []))
    gitlab = yaml.safe_load(files[".gitlab-ci.yml"])
    found |= {j["environment"]["name"] for j in gitlab.values()
              if isinstance(j, dict) and "environment" in j}
    fixed = {"Install", "Lint", "Images", "Unit tests", "Validate", "Security scan", "Train"}
    found |= set(re.findall(r"stage\('([^']+)'\)", files["Jenkinsfile"])) - fixed
    return found


def test_no_job_names_an_environment_or_stage_the_project_lacks(case: Case,
                                                                 tmp_path: Path) -> None:
    files = generate(case, tmp_path / "out")
    assert _environment_mentions(files) == set(case.environments)
    for text in files.values():
        assert set(re.findall(r"--(?:until|from|stage) (\w+)", text)) <= case.stages
    for path, text in files.items():
        for name in case.absent:
            assert not re.search(rf"(?<![\w-]){name}(?![\w-])", text), f"{name} in {path}"
    # the environments' jobs, in promotion order, each behind its own gate
    release = yaml.safe_load(files[RELEASE])["jobs"]
    assert set(release) == case.release_jobs
    assert [j for j in release if j in case.environments] == case.environments
    for env in case.environments[1:]:
        assert release[env]["environment"] == env
        assert release[env]["permissions"]["id-token"] == "write"
    gitlab = yaml.safe_load(files[".gitlab-ci.yml"])
    assert gitlab["stages"][-len(case.environments):] == case.environments
    for env in case.environments[1:]:
        assert gitlab[env]["rules"][0]["when"] == "manual"
        assert gitlab[env]["id_tokens"] == {"WORKBENCH_ID_TOKEN": {"aud": "workbench"}}
    jenkins = files["Jenkinsfile"]
    assert re.findall(r"stage\('([^']+)'\)", jenkins)[-len(case.environments):] == \
        case.environments
    assert jenkins.count("input {") == jenkins.count("'workbench-jenkins-api'") == \
        len(case.environments) - 1


def test_the_install_step_matches_the_project(case: Case, tmp_path: Path) -> None:
    files = generate(case, tmp_path / "out")
    for path in (RELEASE, TRAIN):
        for name, job in yaml.safe_load(files[path])["jobs"].items():
            installs = [s["run"] for s in job["steps"] if s.get("name") == "Install"]
            images_only = name == "build" and not case.lint  # builds images, needs no Python
            assert installs == ([] if images_only else [case.install]), name
    gitlab = yaml.safe_load(files[".gitlab-ci.yml"])
    assert gitlab["default"]["before_script"] == [case.install]
    assert f"sh '. .venv/bin/activate && {case.install}'" in files["Jenkinsfile"]
    # ruff only when the install brings it
    assert ("ruff check ." in files[RELEASE]) is case.lint
    assert ("ruff check ." in files[".gitlab-ci.yml"]) is case.lint
    assert ("ruff check ." in files["Jenkinsfile"]) is case.lint
    # the security scan: bandit on the project's code, pip-audit on its dependencies
    scan = next(s["run"] for s in yaml.safe_load(files[RELEASE])["jobs"]["test"]["steps"]
                if s.get("name") == "Security scan")
    audit = "pip-audit -r requirements.txt" if (case.root / "requirements.txt").is_file() \
        else "pip-audit"
    assert scan.splitlines()[-1] == audit
    bandit = {"default": "bandit -q -c pyproject.toml -r benchmarks workbench",
              "dev_qa": "bandit -q -r features"}.get(case.name)  # templates: no Python code
    assert (bandit in scan.splitlines()) if bandit else "bandit -" not in scan


def test_the_train_job_runs_until_the_last_stage_before_a_side_effect(case: Case,
                                                                       tmp_path: Path) -> None:
    files = generate(case, tmp_path / "out")
    train = yaml.safe_load(files[TRAIN])["jobs"]["train"]
    runs = [s["run"] for s in train["steps"] if "workbench run" in s.get("run", "")]
    assert runs == [f"workbench run --env dev --until {case.until} --junit "
                    f"reports/junit-train.xml --summary reports/summary.md"]
    assert f"--until {case.until} " in yaml.safe_load(files[".gitlab-ci.yml"])["train"]["script"][2]
    assert f"--until {case.until} " in files["Jenkinsfile"]
    # the trained run goes on from the first stage with a side effect
    after = {"dev_qa": "publish"}.get(case.name, "register")
    assert f"--from {after} --base" in files[TRAIN]
    assert f"--from {after} --base" in files[".gitlab-ci.yml"]


def test_images_are_built_from_the_projects_dockerfiles(tmp_path: Path) -> None:
    files = generate(make_case("dev_qa", tmp_path), tmp_path / "out")
    build = yaml.safe_load(files[RELEASE])["jobs"]["build"]
    script = next(s["run"] for s in build["steps"] if s.get("name") == "Build images")
    assert 'docker build -f configs/docker/serve.Dockerfile -t "$image/workbench-serve:' \
           '$GITHUB_SHA" .' in script
    assert "configs/docker/runner.Dockerfile" in script
    assert build["permissions"] == {"contents": "read", "packages": "write"}
    assert "$CI_COMMIT_SHA" in files[".gitlab-ci.yml"] and "$GIT_COMMIT" in files["Jenkinsfile"]
    minimal = generate(make_case("minimal", tmp_path), tmp_path / "out2")
    assert "docker" not in minimal[RELEASE] and "docker" not in minimal["Jenkinsfile"]


def test_shapes_without_a_train_only_run_or_without_side_effects(tmp_path: Path) -> None:
    from workbench.ci.definitions import render, shape_of
    from workbench.config import load_config

    ws = write_minimal_project(tmp_path / "p")
    pipeline = ws.read_yaml("pipeline.yaml")
    # no side effect at all: the train-only run is the whole pipeline; no gate, no promotion
    ws.write_yaml("pipeline.yaml", {**pipeline, "stages": pipeline["stages"][:1]})
    ws.write_yaml("gates.yaml", {"policies": {}})
    shape = shape_of(load_config(ws.root / "configs"), ws.root)
    assert (shape.train_until, shape.first_side_effect, shape.promotions) == ("train", None, ())
    files = {**render(shape, "github"), **render(shape, "gitlab")}
    assert set(yaml.safe_load(files[RELEASE])["jobs"]) == {"test", "dev"}
    assert "|| [ $? -eq 3 ]" not in files[".gitlab-ci.yml"]  # no gate: 3 cannot happen
    assert set(yaml.safe_load(files[TRAIN])["jobs"]) == {"train"}
    # the first stage has a side effect: no train-only run anywhere
    stages = pipeline["stages"]
    first = {**stages[0], "outputs": {**stages[0]["outputs"], "alias_move": "dict"}}
    ws.write_yaml("pipeline.yaml", {**pipeline, "stages": [first, *stages[1:]]})
    ws.write_yaml("gates.yaml", {"groups": GATES["groups"],
                                 "policies": {"prod": GATES["policies"]["prod"]}})
    shape = shape_of(load_config(ws.root / "configs"), ws.root)
    assert shape.train_until is None and shape.notes
    assert set(render(shape, "github")) == {RELEASE}
    assert "TRAIN_ONLY" not in render(shape, "jenkins")["Jenkinsfile"]
    assert "WORKBENCH_TRAIN ==" not in render(shape, "gitlab")[".gitlab-ci.yml"]


def test_install_detection(tmp_path: Path) -> None:
    from workbench.ci.shape import install_command

    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "acme"\ndependencies = ["workbench"]\n'
        '[project.optional-dependencies]\ndev = ["ruff"]\n')
    from workbench.ci.shape import _read_pyproject

    command, names = install_command(tmp_path, _read_pyproject(tmp_path))
    assert command == "python -m pip install ." and "ruff" not in names  # no test extra
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "acme"\n[project.optional-dependencies]\ntest = ["Ruff>=0.6"]\n')
    command, names = install_command(tmp_path, _read_pyproject(tmp_path))
    assert command == 'python -m pip install ".[test]"' and "ruff" in names
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")  # no project
    command, names = install_command(tmp_path, _read_pyproject(tmp_path))
    assert command == workbench_pin() and "ruff" not in names
    (tmp_path / "dev.txt").write_text("-r base.txt\nruff==0.6.1 # lint\n")
    (tmp_path / "base.txt").write_text("# base\nworkbench\n")
    command, names = install_command(tmp_path, {}, "pip install -r dev.txt && pip check")
    assert command == "pip install -r dev.txt && pip check" and {"ruff", "workbench"} <= names


def test_ci_init_takes_an_install_command_and_notes_what_is_missing(tmp_path: Path) -> None:
    ws = write_minimal_project(tmp_path / "m")
    (ws.root / "ci-requirements.txt").write_text("workbench\nruff\n")
    command = "python -m pip install -r ci-requirements.txt"
    done = ws.cli("ci", "init", "github", "--install", command)
    assert done.returncode == 0, done.stderr
    release = yaml.safe_load((ws.root / RELEASE).read_text())
    assert [s["run"] for s in release["jobs"]["build"]["steps"] if s.get("name")] == [
        command, "ruff check ."]
    empty = ws.cli("ci", "init", "gitlab", "--install", " ")
    assert empty.returncode == 2 and "--install" in empty.stderr
    other = write_dev_qa_project(tmp_path / "d")
    noted = other.cli("ci", "init", "gitlab")
    assert noted.returncode == 0, noted.stderr
    assert "note: requirements.txt does not name workbench" in noted.stderr


def test_bandit_command_of_the_security_scan_runs_here(tmp_path: Path) -> None:
    files = generate(make_case("dev_qa", tmp_path), tmp_path / "out")
    scan = next(s["run"] for s in yaml.safe_load(files[RELEASE])["jobs"]["test"]["steps"]
                if s.get("name") == "Security scan")
    bandit = next(line for line in scan.splitlines() if line.startswith("bandit "))
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(["bash", "-c", bandit], cwd=tmp_path / "dev_qa", capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stdout + done.stderr


# --- the generated train job, run here ----------------------------------------------------


def run_github_job(ws: Workspace, workflow: dict[str, Any], job: str, values: dict[str, str],
                   tmp: Path) -> dict[str, str]:
    """Run ``job``'s ``run:`` steps in order as a runner would (not the Install step or the
    actions' ``uses:`` steps: the project and the venv are already here); return its outputs."""
    spec = workflow["jobs"][job]
    output = tmp / f"{job}.output"
    env = {**clean_environment(), "CI": "true", "GITHUB_OUTPUT": str(output),
           "GITHUB_STEP_SUMMARY": str(tmp / "step-summary.md"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for scope in (workflow.get("env", {}), spec.get("env", {})):
        env.update({k: expand(str(v), values) for k, v in scope.items()})
    for step in spec["steps"]:
        if "uses" in step or step.get("name") == "Install":
            continue
        done = subprocess.run(["bash", "-eo", "pipefail", "-c", expand(step["run"], values)],
                              cwd=ws.root, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{job}/{step.get('name')}: " \
                                     f"{(done.stdout + done.stderr)[-3000:]}"
    lines = output.read_text().splitlines() if output.exists() else []
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.slow
def test_the_train_job_of_the_generated_workflow_runs_on_a_fresh_project(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "WORKBENCH_PROJECT", "WORKBENCH_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    ws = write_minimal_project(tmp_path / "fresh")
    assert ws.cli("ci", "init", "github").returncode == 0
    shutil.rmtree(ws.root / ".workbench", ignore_errors=True)
    git = ["git", "-c", "user.name=CI", "-c", "user.email=ci@example.com"]
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    [*git, "commit", "-qm", "a fresh project"]):
        subprocess.run(command, cwd=ws.root, check=True, capture_output=True)
    assert not (ws.root / ".workbench").exists() and not (ws.root / "reports").exists()
    workflow = yaml.safe_load((ws.root / TRAIN).read_text())
    values = {"inputs.config": "configs/model.yaml", "inputs.environment": "prod",
              "secrets.WORKBENCH_NOTIFY_URL": "", "secrets.MLFLOW_TRACKING_URI": "",
              "env.PYTHON_VERSION": "3.11"}

    trained = run_github_job(ws, workflow, "train", values, tmp_path)
    assert trained["status"] == "succeeded"
    record = ws.run_record()
    assert record["id"] == trained["run_id"]
    assert {n: s["status"] for n, s in record["stages"].items()} == {
        "train": "succeeded", "register": "not_selected", "deploy": "not_selected",
        "approve": "not_selected"}
    assert (ws.root / "reports" / "junit-train.xml").is_file()

    # the next job goes on from the first side effect, reusing the trained stage, to the gate
    values["needs.train.outputs.run_id"] = trained["run_id"]
    continued = run_github_job(ws, workflow, "dev", values, tmp_path)
    assert continued["status"] == "awaiting_approval"
    record = ws.run_record()
    assert {n: s["status"] for n, s in record["stages"].items()} == {
        "train": "reused", "register": "succeeded", "deploy": "succeeded",
        "approve": "awaiting_approval"}
    assert record["stages"]["train"]["reused_from"] == trained["run_id"]
