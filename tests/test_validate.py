"""``workbench validate`` and the checks ``workbench run`` makes before any kernel starts.

Every bad configuration is a copy of this repository's project with one mistake in it. Both
``validate`` and ``run`` must reject it with exit code 2 and one message naming the file, the
key path and what was expected, without a traceback and without starting a run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Workspace, notebook

from workbench.config import load_config
from workbench.execution.parameters import Declared, NotebookError, declared_parameters
from workbench.stage_graph import ancestors, descendants, stage_order

PIPELINE = "configs/pipeline.yaml"
ENVIRONMENTS = "configs/environments.yaml"
MODEL = "configs/model.yaml"


# --- edits that each break a copy of the real project in one way --------------------------------


def edit_yaml(name: str, change: Callable[[Any], None]) -> Callable[[Workspace], None]:
    """An edit that loads ``configs/<name>``, applies ``change`` in place and writes it back."""
    def apply(ws: Workspace) -> None:
        data = ws.read_yaml(name)
        change(data)
        ws.write_yaml(name, data)

    return apply


def edit_pipeline(change: Callable[[dict[str, Any]], None]) -> Callable[[Workspace], None]:
    return edit_yaml("pipeline.yaml", change)


def stage(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in data["stages"] if s["name"] == name)


def set_param(name: str, param: str, value: Any) -> Callable[[Workspace], None]:
    return edit_pipeline(lambda data: stage(data, name)["parameters"].__setitem__(param, value))


def set_stage_key(name: str, key: str, value: Any) -> Callable[[Workspace], None]:
    return edit_pipeline(lambda data: stage(data, name).__setitem__(key, value))


def _line_after_name() -> int:
    """1-based number of the line after ``name:`` in the real pipeline.yaml."""
    lines = (REPO / "configs" / "pipeline.yaml").read_text().splitlines()
    return next(i for i, line in enumerate(lines) if line.startswith("name:")) + 2


def tab_indented_line(ws: Workspace) -> None:
    """A YAML syntax error: a tab-indented key right after ``name: release``."""
    path = ws.root / "configs" / "pipeline.yaml"
    lines = path.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("name:")) + 1
    lines.insert(at, "\tbroken: true\n")
    path.write_text("".join(lines))


def rename_stage_key(name: str, old: str, new: str) -> Callable[[Workspace], None]:
    def change(data: dict[str, Any]) -> None:
        entry = stage(data, name)
        entry[new] = entry.pop(old)

    return edit_pipeline(change)


def drop_stage_key(name: str, key: str) -> Callable[[Workspace], None]:
    return edit_pipeline(lambda data: stage(data, name).pop(key))


def delete_file(relative: str) -> Callable[[Workspace], None]:
    return lambda ws: (ws.root / relative).unlink()


def untag_parameters_cell(ws: Workspace) -> None:
    path = ws.root / "notebooks" / "evaluate.ipynb"
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags:
            tags.remove("parameters")
    path.write_text(json.dumps(nb))


def broken_parameters_cell(ws: Workspace) -> None:
    ws.write_notebook("register", notebook("print(alias)",
                                           parameters='alias: str = "dev"\nversion: str = ('))


def duplicate_stage_name(data: dict[str, Any]) -> None:
    data["stages"].append(dict(stage(data, "deploy")))


def same_port(data: dict[str, Any]) -> None:
    envs = data["environments"]
    envs["qa"]["deploy"]["port"] = envs["dev"]["deploy"]["port"]


def set_env(env: str, section: str, key: str, value: Any) -> Callable[[Workspace], None]:
    return edit_yaml("environments.yaml",
                     lambda data: data["environments"][env][section].__setitem__(key, value))


def set_model(key: str, value: Any) -> Callable[[Workspace], None]:
    return edit_yaml("model.yaml", lambda data: data.__setitem__(key, value))


@dataclass(frozen=True)
class Case:
    """One broken project and the problem line it must produce: ``file: path: ...expected...``."""

    edit: Callable[[Workspace], None]
    file: str
    path: str
    expected: str


CASES: dict[str, Case] = {
    "yaml-syntax-error": Case(
        tab_indented_line, PIPELINE, f"line {_line_after_name()}, column 1",
        "invalid YAML: found character '\\t' that cannot start any token"),
    "unknown-top-level-key": Case(
        edit_pipeline(lambda data: data.__setitem__("version", 2)), PIPELINE, "version",
        "unknown key; expected one of ['name', 'mlflow', 'archive', 'secrets', 'notifications', "
        "'retry', 'attestation', 'stages']"),
    "unknown-stage-key-typo": Case(
        rename_stage_key("evaluate", "parameters", "paramters"), PIPELINE,
        "stages[1](evaluate).paramters",
        "unknown key; expected one of ['name', 'notebook', 'needs', 'parameters', 'outputs', "
        "'timeout', 'startup_timeout', 'cell_timeout', 'hang_timeout', 'output_limit_mb', 'retry', "
        "'environment', 'gate', 'cache', 'preload']"),
    "timeout-wrong-type": Case(
        set_stage_key("train", "timeout", "soon"), PIPELINE, "stages[0](train).timeout",
        'Input should be a valid number, unable to parse string as a number (got "soon")'),
    "timeout-negative": Case(
        set_stage_key("register", "timeout", -5), PIPELINE, "stages[2](register).timeout",
        "Input should be greater than 0 (got -5)"),
    "stage-without-notebook": Case(
        drop_stage_key("register", "notebook"), PIPELINE, "stages[2](register).notebook",
        "required key is missing"),
    "notebook-file-missing": Case(
        delete_file("notebooks/evaluate.ipynb"), PIPELINE, "stages[1](evaluate).notebook",
        "notebook notebooks/evaluate.ipynb does not exist"),
    "notebook-without-parameters-cell": Case(
        untag_parameters_cell, PIPELINE, "stages[1](evaluate).notebook",
        "notebooks/evaluate.ipynb has no code cell tagged 'parameters'"),
    "notebook-parameters-cell-syntax-error": Case(
        broken_parameters_cell, PIPELINE, "stages[2](register).notebook",
        "notebooks/register.ipynb parameters cell line 2: '(' was never closed"),
    "parameter-not-declared": Case(
        set_param("train", "learning_rate", 0.1), PIPELINE,
        "stages[0](train).parameters.learning_rate",
        "notebooks/train.ipynb declares no parameter 'learning_rate' in its parameters cell"),
    "literal-wrong-type": Case(
        set_param("train", "random_state", "forty"), PIPELINE,
        "stages[0](train).parameters.random_state",
        "expected int for notebooks/train.ipynb, got str from 'forty'"),
    "literal-bool-for-int": Case(
        set_param("deploy", "random_state", True), PIPELINE,
        "stages[3](deploy).parameters.random_state",
        "expected int for notebooks/deploy.ipynb, got bool from True"),
    "reference-wrong-type": Case(
        set_param("evaluate", "min_score", {"from": "env.name"}), PIPELINE,
        "stages[1](evaluate).parameters.min_score",
        "expected float for notebooks/evaluate.ipynb, got str from env.name"),
    "reference-unknown-model-key": Case(
        set_param("train", "test_size", {"from": "model.holdout"}), PIPELINE,
        "stages[0](train).parameters.test_size",
        "'from: model.holdout': configs/model.yaml has no key holdout"),
    "reference-unknown-env-key": Case(
        set_param("evaluate", "min_score", {"from": "env.thresholds.min_scor"}), PIPELINE,
        "stages[1](evaluate).parameters.min_score",
        "'from: env.thresholds.min_scor': environment 'dev' in configs/environments.yaml "
        "has no key thresholds.min_scor"),
    "reference-undeclared-output": Case(
        set_param("evaluate", "model_uri", {"from": "train.model_path"}), PIPELINE,
        "stages[1](evaluate).parameters.model_uri",
        "'from: train.model_path': stage 'train' declares no output 'model_path'; "
        "it declares ['mlflow_run_id', 'model_uri', 'train_metrics']"),
    "reference-not-upstream": Case(
        set_param("train", "pipeline_run_id", {"from": "register.model_version"}), PIPELINE,
        "stages[0](train).parameters.pipeline_run_id",
        "'from: register.model_version': stage 'register' is not upstream of 'train'; "
        "add it to needs"),
    "reference-unknown-stage": Case(
        set_param("evaluate", "model_uri", {"from": "trian.model_uri"}), PIPELINE,
        "stages[1](evaluate).parameters.model_uri",
        "'from: trian.model_uri': 'trian' is neither a stage nor one of ['model', 'env', 'run']"),
    "reference-bad-run-field": Case(
        set_param("register", "git_commit", {"from": "run.commit"}), PIPELINE,
        "stages[2](register).parameters.git_commit",
        "'from: run.commit': expected run.<field>, field one of "
        "['id', 'git_commit', 'config_hash', 'environment']"),
    "reference-without-key": Case(
        set_param("register", "alias", {"from": "env"}), PIPELINE,
        "stages[2](register).parameters.alias.from",
        r"""String should match pattern '^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$' (got "env")"""),
    "reference-extra-key": Case(
        set_param("deploy", "version", {"from": "register.model_version", "default": "1"}),
        PIPELINE, "stages[3](deploy).parameters.version.default",
        "unknown key; expected one of ['from']"),
    "needs-unknown-stage": Case(
        set_stage_key("deploy", "needs", ["registr"]), PIPELINE, "stages[3](deploy).needs[0]",
        "unknown stage 'registr'; expected one of ['train', 'evaluate', 'register', 'deploy', "
        "'approve_qa', 'deploy_qa', 'load_test', 'approve_prod', 'deploy_prod', 'monitor']"),
    "needs-itself": Case(
        set_stage_key("evaluate", "needs", ["train", "evaluate"]), PIPELINE,
        "stages[1](evaluate).needs[1]", "a stage cannot need itself"),
    "dependency-cycle": Case(
        set_stage_key("train", "needs", ["deploy"]), PIPELINE, "stages",
        "dependency cycle: "),
    "duplicate-stage-name": Case(
        edit_pipeline(duplicate_stage_name), PIPELINE, "stages[10].name",
        "duplicate stage name 'deploy'"),
    "stage-name-pattern": Case(
        edit_pipeline(lambda data: stage(data, "deploy").__setitem__("name", "Deploy")),
        PIPELINE, "stages[3](Deploy).name", "String should match pattern '^[a-z][a-z0-9_]*$'"),
    "output-type-unknown": Case(
        edit_pipeline(lambda data: stage(data, "train")["outputs"].__setitem__(
            "model_uri", "tensor")),
        PIPELINE, "stages[0](train).outputs.model_uri",
        "Input should be 'str', 'int', 'float', 'bool', 'list' or 'dict' (got \"tensor\")"),
    "no-stages": Case(
        edit_pipeline(lambda data: data.__setitem__("stages", [])), PIPELINE, "stages",
        "List should have at least 1 item after validation, not 0"),
    "model-name-pattern": Case(
        set_model("name", "my model!"), MODEL, "name", "String should match pattern"),
    "model-key-missing": Case(
        edit_yaml("model.yaml", lambda data: data.pop("estimator")), PIPELINE,
        "stages[0](train).parameters.estimator",
        "'from: model.estimator': configs/model.yaml has no key estimator"),
    "unknown-mlflow-key": Case(
        edit_pipeline(lambda data: data["mlflow"].__setitem__("tracking_url", "http://x")),
        PIPELINE, "mlflow.tracking_url",
        "unknown key; expected one of ['experiment', 'tracking_uri']"),
    "model-key-of-another-type": Case(  # typed by the notebook it feeds, not by our schema
        set_model("hyperparameters", [10, 10]), PIPELINE,
        "stages[0](train).parameters.hyperparameters",
        "expected dict for notebooks/train.ipynb, got list from model.hyperparameters"),
    "port-out-of-range": Case(
        set_env("qa", "deploy", "port", 80), ENVIRONMENTS, "environments.qa.deploy.port",
        "Input should be greater than or equal to 1024 (got 80)"),
    "ports-not-unique": Case(
        edit_yaml("environments.yaml", same_port), ENVIRONMENTS, "environments",
        "deploy ports must differ between environments, got ["),
    "threshold-not-a-number": Case(
        set_env("prod", "thresholds", "min_score", "high"), ENVIRONMENTS,
        "environments.prod.thresholds.min_score",
        "Input should be a valid number"),
    "objective-direction-unknown": Case(
        edit_yaml("environments.yaml", lambda data: data["environments"]["qa"].__setitem__(
            "objectives", [{"metric": "f1_macro", "direction": "maximize", "bound": 0.9},
                           {"metric": "mae", "direction": "lower", "bound": 50}])),
        ENVIRONMENTS, "environments.qa.objectives[1].direction",
        "Input should be 'maximize' or 'minimize' (got \"lower\")"),
    "model-config-missing": Case(
        delete_file("configs/model.yaml"), MODEL, "", "file is missing"),
    "config-not-a-mapping": Case(
        lambda ws: (ws.root / "configs" / "environments.yaml").write_text("- dev\n- qa\n"),
        ENVIRONMENTS, "", "expected a mapping at the top, got list"),
}


def problem_lines(stderr: str) -> list[str]:
    """The indented problem lines under ``error: configuration invalid (N problems):``."""
    return [line.strip() for line in stderr.splitlines() if line.startswith("  ")]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_configuration_is_rejected_before_any_run(name: str,
                                                      release_project: Workspace) -> None:
    case = CASES[name]
    ws = release_project
    case.edit(ws)
    where = f"{case.file}: {case.path}: " if case.path else f"{case.file}: "

    commands = ("validate", "run")
    with ThreadPoolExecutor(len(commands)) as pool:  # two ~1 s interpreter starts in parallel
        results = dict(zip(commands, pool.map(ws.cli, commands), strict=True))
    for command, result in results.items():
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (command, result.stderr)
        assert result.stderr.startswith("error: configuration invalid (1 problem):\n"), (
            command, result.stderr)
        problems = problem_lines(result.stderr)
        assert len(problems) == 1, (command, result.stderr)
        assert problems[0].startswith(where), (command, where, problems[0])
        assert case.expected in problems[0][len(where):], (command, case.expected, problems[0])
        assert result.stdout == "", (command, result.stdout)

    assert not (ws.root / "reports" / "runs").exists()
    assert not (ws.root / ".workbench" / "mlflow" / "mlflow.db").exists()


def test_real_project_is_valid(release_project: Workspace) -> None:
    result = release_project.cli("validate")
    assert result.returncode == 0, result.stderr
    assert ("configuration valid; pipeline 'release' (train, evaluate, register, deploy, "
            "approve_qa, deploy_qa, load_test, approve_prod, deploy_prod, monitor); "
            "environments dev, qa, prod") in result.stdout
    assert not (release_project.root / "reports" / "runs").exists()


# --- unit tests: parameters cell ----------------------------------------------------------------


@pytest.mark.parametrize(("annotation", "accepted", "rejected"), [
    ("str", ["", "007", "x"], [7, 7.0, True, None, [], {}]),
    ("int", [0, 7, -3], [True, False, "007", 7.5, None, []]),
    ("float", [0.5, 1, -2], [True, "0.5", None, {}]),
    ("bool", [True, False], [0, 1, "true", None]),
    ("dict", [{}, {"a": 1}], [[], "{}", None]),
    ("list", [[], [1, "a"]], [(), {}, "[]", None]),
    ("dict[str, int]", [{"a": 1}], [[], None]),
    ("list[str]", [["a"]], [{}, "a"]),
    ("Optional[bool]", [True, False, None], [0, 1, "yes"]),
    ("bool | None", [True, False, None], [0, 1, "yes"]),
    ("Optional[dict[str, int]]", [{}, None], [[], True]),
    ("float | None", [0.5, 3, None], [True, "0.5"]),
    ("str | int", ["a", 4], [True, None, 4.5]),
    ("None | list", [None, []], [{}, False]),
])
def test_declared_accepts(annotation: str, accepted: list[Any], rejected: list[Any]) -> None:
    declared = Declared("p", annotation, None)
    for value in accepted:
        assert declared.accepts(value), (annotation, value)
    for value in rejected:
        assert not declared.accepts(value), (annotation, value)


def test_declared_unannotated_uses_default_type() -> None:
    assert Declared("n", None, 3).accepts(4)
    assert not Declared("n", None, 3).accepts(True)
    assert not Declared("n", None, 3).accepts("3")
    assert Declared("x", None, 0.5).accepts(1)
    assert Declared("s", None, "").accepts("007")
    assert Declared("anything", None, None).accepts(object())


def test_declared_unmodelled_annotation_accepts_anything() -> None:
    for annotation in ("Any", "pd.DataFrame", "Literal['a']", "tuple[int, int]"):
        assert Declared("p", annotation, None).accepts(object()), annotation


def test_declared_parameters_of_written_notebook(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.write_notebook("nb", notebook(
        "print(a)",
        parameters=(
            "from typing import Optional\n"
            "import math\n"
            "a: int = 1  # a comment\n"
            "b = 'x'\n"
            "c: Optional[float] = None\n"
            "d: dict = {'k': [1, 2]}\n"
            "e: float = math.pi\n"
            "f, g = 1, 2\n"
            "h: list[str]\n"
            "print(a)\n"
        ),
    ))
    found = declared_parameters(tmp_path / "notebooks" / "nb.ipynb")
    assert found == {
        "a": Declared("a", "int", 1),
        "b": Declared("b", None, "x"),
        "c": Declared("c", "Optional[float]", None),
        "d": Declared("d", "dict", {"k": [1, 2]}),
        "e": Declared("e", "float", None),
        "h": Declared("h", "list[str]", None),
    }
    assert found["c"].accepts(None) and found["c"].accepts(2.5)
    assert found["b"].accepts("007") and not found["a"].accepts("007")


def test_declared_parameters_of_real_notebooks() -> None:
    train = declared_parameters(REPO / "notebooks" / "train.ipynb")
    assert list(train) == ["dataset", "target", "task", "estimator", "hyperparameters", "test_size",
                           "random_state", "pipeline_run_id"]
    assert train["random_state"] == Declared("random_state", "int", 42)
    register = declared_parameters(REPO / "notebooks" / "register.ipynb")
    assert register["passed"].annotation == "Optional[bool]"
    assert register["passed"].accepts(None) and not register["passed"].accepts("yes")


def test_declared_parameters_errors(tmp_path: Path) -> None:
    untagged = notebook("x = 1")
    untagged["cells"][0]["metadata"]["tags"] = []
    (tmp_path / "untagged.ipynb").write_text(json.dumps(untagged))
    with pytest.raises(NotebookError, match="no code cell tagged 'parameters'"):
        declared_parameters(tmp_path / "untagged.ipynb")

    (tmp_path / "broken.ipynb").write_text("{not json")
    with pytest.raises(NotebookError, match="cannot read notebook"):
        declared_parameters(tmp_path / "broken.ipynb")

    with pytest.raises(NotebookError, match="cannot read notebook"):
        declared_parameters(tmp_path / "absent.ipynb")

    bad = notebook(parameters="a: int = 1\nb = (\n")
    (tmp_path / "bad.ipynb").write_text(json.dumps(bad))
    with pytest.raises(NotebookError, match="parameters cell line 2"):
        declared_parameters(tmp_path / "bad.ipynb")


# --- unit tests: stage graph on the real configuration ------------------------------------------


def test_stage_order_and_ancestors_of_real_config() -> None:
    config = load_config(REPO / "configs")
    dev = ["train", "evaluate", "register", "deploy"]
    promotion = ["approve_qa", "deploy_qa", "load_test", "approve_prod", "deploy_prod",
                 "monitor"]
    assert stage_order(config) == dev + promotion
    assert ancestors(config) == {
        "train": set(),
        "evaluate": {"train"},
        "register": {"train", "evaluate"},
        "deploy": {"train", "evaluate", "register"},
        **{name: set(dev + promotion[:i]) for i, name in enumerate(promotion)},
    }
    assert descendants(config, "evaluate") == {"register", "deploy", *promotion}
    assert descendants(config, "deploy_prod") == {"monitor"}
    assert descendants(config, "monitor") == set()
    assert [config.stage(n).target_environment for n in promotion] == [
        "qa", "qa", "qa", "prod", "prod", "prod"]


def test_stage_order_follows_needs_not_file_order(tmp_path: Path) -> None:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    ws = Workspace(tmp_path)
    data = ws.read_yaml("pipeline.yaml")
    data["stages"] = data["stages"][:4][::-1]  # deploy, register, evaluate, train
    ws.write_yaml("pipeline.yaml", data)
    config = load_config(tmp_path / "configs")
    assert [s.name for s in config.pipeline.stages] == ["deploy", "register", "evaluate", "train"]
    assert stage_order(config) == ["train", "evaluate", "register", "deploy"]
    assert ancestors(config)["deploy"] == {"train", "evaluate", "register"}
    assert descendants(config, "train") == {"evaluate", "register", "deploy"}
