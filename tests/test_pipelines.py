"""Several pipelines in one project: configs/pipelines/<name>/ folders, selected by --pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Workspace, _isolated_env
from workbench.cli.app import hoist_pipeline
from workbench.config import PIPELINE_ENV_VAR, ConfigError, load_config, pipeline_names
from workbench.project import find_project
from workbench.scaffold import init_project


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _dump(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def two_pipelines(root: Path) -> Workspace:
    """The minimal template split into a classifier and a regressor pipeline; environments and
    gates stay shared in configs/."""
    init_project(root, "minimal")
    configs = root / "configs"
    pipeline, model = _yaml(configs / "pipeline.yaml"), _yaml(configs / "model.yaml")
    (configs / "pipeline.yaml").unlink()
    (configs / "model.yaml").unlink()
    for name, model_name, dataset, task, estimator in (
            ("clf", "cancer-classifier", "breast_cancer", "classification",
             "sklearn.ensemble.RandomForestClassifier"),
            ("reg", "diabetes-regressor", "diabetes", "regression",
             "sklearn.ensemble.RandomForestRegressor")):
        _dump(configs / "pipelines" / name / "pipeline.yaml", {**pipeline, "name": name})
        _dump(configs / "pipelines" / name / "model.yaml",
              {**model, "name": model_name, "dataset": dataset, "task": task,
               "estimator": estimator, "hyperparameters": {"n_estimators": 20}})
    return Workspace(root)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    _isolated_env(monkeypatch)
    monkeypatch.delenv(PIPELINE_ENV_VAR, raising=False)
    return two_pipelines(tmp_path / "two")


def test_each_pipeline_loads_its_own_files_and_the_shared_ones(project: Workspace) -> None:
    configs = project.root / "configs"
    assert pipeline_names(configs) == ["clf", "reg"]
    clf, reg = load_config(configs, "clf"), load_config(configs, "reg")
    assert (clf.pipeline.name, clf.model.name, clf.model.dataset) == (
        "clf", "cancer-classifier", "breast_cancer")
    assert (reg.pipeline.name, reg.model.name, reg.model.dataset) == (
        "reg", "diabetes-regressor", "diabetes")
    assert list(clf.environments) == list(reg.environments) == ["dev", "prod"]  # shared
    assert clf.gates.policies["prod"].quorum == 1
    assert clf.digest != reg.digest


def test_a_pipeline_folder_overrides_a_shared_file(project: Workspace) -> None:
    configs = project.root / "configs"
    environments = _yaml(configs / "environments.yaml")
    environments["environments"]["dev"]["deploy"]["port"] = 5399
    _dump(configs / "pipelines" / "reg" / "environments.yaml", environments)
    assert load_config(configs, "reg").environments["dev"].deploy.port == 5399
    assert load_config(configs, "clf").environments["dev"].deploy.port == 5301


def test_several_pipelines_and_none_chosen_lists_them(project: Workspace,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    configs = project.root / "configs"
    with pytest.raises(ConfigError, match="choose one with --pipeline NAME: clf, reg"):
        load_config(configs)
    with pytest.raises(ConfigError, match="no pipeline 'nope'; the pipelines are: clf, reg"):
        load_config(configs, "nope")
    monkeypatch.setenv(PIPELINE_ENV_VAR, "reg")  # what a kernel of a `--pipeline reg` run sees
    assert load_config(configs).model.name == "diabetes-regressor"


def test_one_pipeline_folder_is_selected_without_a_name(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PIPELINE_ENV_VAR, raising=False)
    workspace = two_pipelines(tmp_path / "one")
    shutil.rmtree(workspace.root / "configs" / "pipelines" / "reg")
    assert load_config(workspace.root / "configs").pipeline.name == "clf"


def test_problems_name_the_pipeline_folder_file(project: Workspace) -> None:
    configs = project.root / "configs"
    model_file = configs / "pipelines" / "reg" / "model.yaml"
    _dump(model_file, {**_yaml(model_file), "name": "no such name!"})
    with pytest.raises(ConfigError) as raised:
        load_config(configs, "reg")
    assert "configs/pipelines/reg/model.yaml: name" in str(raised.value)
    pipeline_file = configs / "pipelines" / "clf" / "pipeline.yaml"
    _dump(pipeline_file, {**_yaml(pipeline_file), "name": "other"})
    with pytest.raises(ConfigError, match="configs/pipelines/clf/pipeline.yaml: name: is "
                                          "'other', but the folder is 'clf'"):
        load_config(configs, "clf")


def test_two_pipelines_may_not_share_a_model_name(project: Workspace) -> None:
    configs = project.root / "configs"
    model_file = configs / "pipelines" / "reg" / "model.yaml"
    _dump(model_file, {**_yaml(model_file), "name": "cancer-classifier"})
    with pytest.raises(ConfigError) as raised:
        load_config(configs, "reg")
    assert ("configs/pipelines/reg/model.yaml: name: 'cancer-classifier' is also the model of "
            "pipeline 'clf' (configs/pipelines/clf/model.yaml)") in str(raised.value)


def test_a_project_of_pipeline_folders_is_found(project: Workspace) -> None:
    assert not (project.root / "configs" / "pipeline.yaml").exists()
    assert find_project(project.root / "notebooks").root == project.root.resolve()


def test_pipeline_option_may_follow_the_command() -> None:
    assert hoist_pipeline(["run", "--pipeline", "a", "--env", "dev"]) == [
        "--pipeline", "a", "run", "--env", "dev"]
    assert hoist_pipeline(["status", "-P", "b", "--json"]) == ["-P", "b", "status", "--json"]
    assert hoist_pipeline(["lab", "--", "--pipeline", "x"]) == ["lab", "--", "--pipeline", "x"]
    assert hoist_pipeline(["run", "-p", "train.x=1"]) == ["run", "-p", "train.x=1"]


def test_validate_checks_every_pipeline_and_run_needs_a_choice(project: Workspace) -> None:
    checked = project.cli("validate")
    assert checked.returncode == 0, checked.stderr
    assert "pipeline 'clf'" in checked.stdout and "pipeline 'reg'" in checked.stdout
    assert "model 'diabetes-regressor'" in checked.stdout
    one = project.cli("validate", "--pipeline", "reg")
    assert one.returncode == 0, one.stderr
    assert "pipeline 'reg'" in one.stdout and "pipeline 'clf'" not in one.stdout
    missing = project.cli("run")
    assert missing.returncode == 2
    assert "choose one with --pipeline NAME: clf, reg" in missing.stderr
    unknown = project.cli("run", "--pipeline", "nope")
    assert unknown.returncode == 2
    assert "no pipeline 'nope'" in unknown.stderr
    assert not (project.root / "reports" / "runs").exists() or not any(
        (project.root / "reports" / "runs").iterdir())


def test_validate_names_the_broken_pipeline(project: Workspace) -> None:
    model_file = project.root / "configs" / "pipelines" / "clf" / "model.yaml"
    _dump(model_file, {**_yaml(model_file), "name": "not a name!"})
    checked = project.cli("validate")
    assert checked.returncode == 2
    assert "configs/pipelines/clf/model.yaml: name" in checked.stderr
    assert "pipeline 'reg'" in checked.stdout  # the other one is still checked



def test_local_servers_are_kept_per_model_in_a_project_of_several(project: Workspace,
                                                                  tmp_path: Path) -> None:
    from workbench.deploy.local import server_key
    from workbench.project import Project

    configs = project.root / "configs"
    several = Project(project.root)
    assert server_key(several, load_config(configs, "clf"), "dev") == "cancer-classifier@dev"
    assert server_key(several, load_config(configs, "reg"), "dev") == "diabetes-regressor@dev"
    single = tmp_path / "single"
    init_project(single, "minimal")  # one pipeline: the state files keep their old names
    assert server_key(Project(single), load_config(single / "configs"), "dev") == "dev"


def test_stop_needs_the_pipeline_in_a_project_of_several(project: Workspace) -> None:
    unchosen = project.cli("stop", "dev")
    assert unchosen.returncode == 2
    assert "choose one with --pipeline NAME" in unchosen.stderr
    chosen = project.cli("stop", "dev", "--pipeline", "reg")
    assert chosen.returncode == 0, chosen.stderr
    assert "no model server running for dev" in chosen.stdout


@pytest.mark.slow
def test_two_pipelines_release_side_by_side(project: Workspace) -> None:
    """A classifier and a regressor run at once to their gates, are approved and resumed;
    each model keeps its own aliases, the one ledger verifies, the site shows both."""
    import json
    import subprocess
    import sys

    from tests.conftest import clean_environment, free_port

    configs = project.root / "configs"
    gates = _yaml(configs / "gates.yaml")
    gates["policies"]["prod"]["allow_self_approval"] = True  # one OS user approves here
    _dump(configs / "gates.yaml", gates)
    for name in ("clf", "reg"):  # each pipeline serves on its own ports
        environments = _yaml(configs / "environments.yaml")
        for env in environments["environments"].values():
            env["deploy"]["port"] = free_port()
        _dump(configs / "pipelines" / name / "environments.yaml", environments)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"]):
        subprocess.run(command, cwd=project.root, check=True, capture_output=True)
    started = {name: subprocess.Popen(
        [sys.executable, "-m", "workbench", "--project", str(project.root), "run",
         "--pipeline", name], cwd=project.root, env=clean_environment(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("clf", "reg")}
    try:
        for name, process in started.items():
            out, err = process.communicate(timeout=600)
            assert process.returncode == 3, f"{name}: {out}\n{err}"
        records = {json.loads((run / "run.json").read_text())["pipeline"]:
                   json.loads((run / "run.json").read_text()) for run in project.runs()}
        assert set(records) == {"clf", "reg"}
        for name, record in records.items():
            approved = project.cli("approve", record["id"], "--env", "prod", "--as", "alice",
                                   "--comment", f"{name} looks right")
            assert approved.returncode == 0, approved.stderr
            resumed = project.cli("resume", record["id"])
            assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{project.root / '.workbench' / 'mlflow' / 'mlflow.db'}")
        for model in ("cancer-classifier", "diabetes-regressor"):
            aliases = client.get_registered_model(model).aliases
            assert set(aliases) >= {"dev", "prod"}, (model, aliases)
        other = project.cli("resume", records["clf"]["id"], "--pipeline", "reg")
        assert other.returncode == 2
        assert "is of pipeline 'clf', not --pipeline 'reg'" in other.stderr
        listed = project.cli("runs", "--pipeline", "clf")
        assert records["clf"]["id"] in listed.stdout
        assert records["reg"]["id"] not in listed.stdout
        latest = project.cli("status", "latest", "--pipeline", "reg", "--json")
        assert latest.returncode == 0, latest.stderr
        assert records["reg"]["id"] in latest.stdout
        assert records["clf"]["id"] not in latest.stdout
        again = project.cli("run", "--pipeline", "clf")  # a second classifier release
        assert again.returncode == 3, again.stdout + again.stderr
        second = json.loads((project.runs()[-1] / "run.json").read_text())
        assert second["pipeline"] == "clf"
        assert project.cli("approve", second["id"], "--env", "prod", "--as", "alice",
                           "--comment", "second").returncode == 0
        assert project.cli("resume", second["id"]).returncode == 0
        before = client.get_registered_model("diabetes-regressor").aliases
        clf_prod = client.get_registered_model("cancer-classifier").aliases["prod"]
        rolled = project.cli("rollback", "--env", "prod", "--pipeline", "clf",
                             "--reason", "test", "--as", "alice")
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        after = client.get_registered_model("cancer-classifier").aliases["prod"]
        assert int(after) < int(clf_prod)  # the classifier went back
        assert client.get_registered_model("diabetes-regressor").aliases == before
        servers = project.root / ".workbench" / "servers"
        assert (servers / "cancer-classifier@prod.json").is_file()
        assert (servers / "diabetes-regressor@prod.json").is_file()
        verified = project.cli("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        built = project.cli("reports", "build")
        assert built.returncode == 0, built.stderr
        site = (project.root / "reports" / "index.html").read_text()
        assert '<select id="pipeline"><option value="">every pipeline</option>' in site
        for name, model in (("clf", "cancer-classifier"), ("reg", "diabetes-regressor")):
            assert f"<option>{name}</option>" in site
            assert f'<td class="pipeline">{name}</td>' in site
            assert f"<td>{model}</td>" in site
            assert records[name]["id"] in site
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
        for name in ("clf", "reg"):
            for env in ("dev", "prod"):
                project.cli("stop", env, "--pipeline", name)
