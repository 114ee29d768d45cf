"""Metric objectives per environment: the pure check rule by rule, the configuration (with key
paths in its errors, and ``thresholds`` as the objective it means), and one release whose
evaluation fails an objective (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Workspace, free_port
from workbench import notebook as wb
from workbench.config import (
    ENVIRONMENTS_FILE,
    MODEL_FILE,
    PIPELINE_FILE,
    Config,
    ConfigError,
    Objective,
    parse_config,
)
from workbench.objectives import Verdict, check, from_thresholds
from workbench.stage_graph import resolve_parameters


def one(metric: str = "m", direction: str = "maximize", **limits: Any) -> dict[str, Any]:
    return {"metric": metric, "direction": direction, **limits}


def verdict(objective: dict[str, Any], metrics: dict[str, Any],
            champion: dict[str, Any] | None = None) -> Verdict:
    [found] = check([objective], metrics, champion)
    return found


# ---------------------------------------------------------------- the rules (pure)

def test_maximize_with_a_bound_passes_at_or_above_it_and_fails_below() -> None:
    assert verdict(one("r2", bound=0.40), {"r2": 0.40}).passed
    assert verdict(one("r2", bound=0.40), {"r2": 0.41}).passed
    failed = verdict(one("r2", bound=0.40), {"r2": 0.38})
    assert not failed.passed
    assert failed.message == "r2 0.38 is below the bound 0.4"
    assert failed.reasons == ("r2 0.38 is below the bound 0.4",)
    assert (failed.metric, failed.direction, failed.bound, failed.value, failed.champion) == (
        "r2", "maximize", 0.40, 0.38, None)


def test_minimize_with_a_bound_passes_at_or_below_it_and_fails_above() -> None:
    assert verdict(one("rmse", "minimize", bound=70), {"rmse": 70.0}).passed
    assert verdict(one("rmse", "minimize", bound=70), {"rmse": 12.5}).passed
    failed = verdict(one("rmse", "minimize", bound=70), {"rmse": 71.25})
    assert not failed.passed and failed.message == "rmse 71.25 is above the bound 70.0"


def test_absolute_regression_against_the_champion() -> None:
    maximize = one("accuracy", max_regression=0.02)
    assert verdict(maximize, {"accuracy": 0.90}, {"accuracy": 0.91}).passed
    assert verdict(maximize, {"accuracy": 0.95}, {"accuracy": 0.91}).passed  # better
    failed = verdict(maximize, {"accuracy": 0.85}, {"accuracy": 0.90, "version": "3"})
    assert not failed.passed and failed.champion == 0.90
    assert failed.message == "accuracy 0.85 is worse than the champion's 0.9 by 0.05 " \
                             "(allowed 0.02)"
    minimize = one("mae", "minimize", max_regression=1.5)
    assert verdict(minimize, {"mae": 41.0}, {"mae": 40.0}).passed
    assert verdict(minimize, {"mae": 30.0}, {"mae": 40.0}).passed
    failed = verdict(minimize, {"mae": 42.0}, {"mae": 40.0})
    assert failed.message == "mae 42.0 is worse than the champion's 40.0 by 2.0 (allowed 1.5)"


def test_relative_regression_is_in_percent_of_the_champions_value() -> None:
    objective = one("rmse", "minimize", max_regression_pct=5)
    assert verdict(objective, {"rmse": 63.0}, {"rmse": 60.0}).passed  # exactly 5%
    failed = verdict(objective, {"rmse": 66.0}, {"rmse": 60.0})
    assert not failed.passed
    assert failed.message == "rmse 66.0 is worse than the champion's 60.0 by 10.0% (allowed 5.0%)"
    maximize = one("auc", max_regression_pct=1)
    assert verdict(maximize, {"auc": 0.99}, {"auc": 0.995}).passed
    assert not verdict(maximize, {"auc": 0.98}, {"auc": 0.995}).passed


def test_every_broken_rule_is_a_reason() -> None:
    failed = verdict(one("r2", bound=0.5, max_regression=0.01, max_regression_pct=1),
                     {"r2": 0.3}, {"r2": 0.6})
    assert len(failed.reasons) == 3
    assert failed.message == "; ".join(failed.reasons)
    assert "below the bound 0.5" in failed.reasons[0]
    assert "by 0.3 (allowed 0.01)" in failed.reasons[1]
    assert "by 50.0% (allowed 1.0%)" in failed.reasons[2]


def test_with_no_champion_only_the_bound_applies() -> None:
    objective = one("r2", bound=0.2, max_regression=0.0, max_regression_pct=0)
    for champion in (None, {}, {"version": "1", "mae": 3.0}):  # none, or none with r2
        found = verdict(objective, {"r2": 0.25}, champion)
        assert found.passed and found.champion is None
        assert "no champion value to compare with" in found.message
    only_regression = verdict(one("r2", max_regression=0.01), {"r2": -5.0})
    assert only_regression.passed  # a first release: nothing to regress against


def test_a_passing_verdict_says_what_it_met() -> None:
    found = verdict(one("r2", bound=0.3, max_regression=0.05), {"r2": 0.45}, {"r2": 0.44})
    assert found.passed and found.reasons == ()
    assert found.message == "r2 0.45 meets its objective (maximize; bound >= 0.3, " \
                            "champion's 0.44)"


def test_a_metric_the_evaluation_did_not_output_fails_naming_it() -> None:
    found = verdict(one("rmse", "minimize", bound=10), {"r2": 0.4, "mae": 3.0})
    assert not found.passed and found.value is None
    assert found.message == "metric 'rmse' is not among the evaluation's metrics (mae, r2)"
    for bad in (None, "12", True, math.nan, math.inf):
        found = verdict(one("rmse", "minimize", bound=10), {"rmse": bad})
        assert not found.passed and "is not a finite number" in found.message, bad


def test_negative_values_work_both_ways() -> None:
    # R^2 below zero: the bound and the relative allowance use the champion's magnitude
    assert verdict(one("r2", bound=-0.5), {"r2": -0.2}).passed
    assert not verdict(one("r2", bound=-0.1), {"r2": -0.2}).passed
    relative = one("r2", max_regression_pct=10)
    assert verdict(relative, {"r2": -0.21}, {"r2": -0.2}).passed  # 5% worse
    failed = verdict(relative, {"r2": -0.3}, {"r2": -0.2})
    assert failed.message == "r2 -0.3 is worse than the champion's -0.2 by 50.0% (allowed 10.0%)"
    assert verdict(relative, {"r2": -0.1}, {"r2": -0.2}).passed  # better
    loss = one("log_loss_delta", "minimize", bound=-1.0)
    assert verdict(loss, {"log_loss_delta": -2.0}).passed
    assert not verdict(loss, {"log_loss_delta": -0.5}).passed


def test_a_champion_at_zero_allows_no_relative_worsening() -> None:
    objective = one("drift", "minimize", max_regression_pct=50)
    assert verdict(objective, {"drift": 0.0}, {"drift": 0.0}).passed
    failed = verdict(objective, {"drift": 0.1}, {"drift": 0.0})
    assert not failed.passed and "champion's 0.0" in failed.message


def test_objectives_are_judged_in_order_and_as_models_or_mappings() -> None:
    verdicts = check([Objective(metric="a", direction="maximize", bound=1),
                      one("b", "minimize", bound=1)], {"a": 2, "b": 2})
    assert [(v.metric, v.passed) for v in verdicts] == [("a", True), ("b", False)]
    assert check([], {"a": 1}) == []
    with pytest.raises(ValueError, match=r"objectives\[0\] is not an objective"):
        check([one("a", "upwards", bound=1)], {"a": 1})


def test_a_verdict_is_plain_data_to_glue() -> None:
    found = verdict(one("mae", "minimize", bound=1.0), {"mae": 44.5}).as_dict()
    assert found == {"metric": "mae", "direction": "minimize", "bound": 1.0,
                     "max_regression": None, "max_regression_pct": None, "value": 44.5,
                     "champion": None, "passed": False,
                     "reasons": ["mae 44.5 is above the bound 1.0"],
                     "message": "mae 44.5 is above the bound 1.0"}
    assert json.loads(json.dumps(found)) == found


def _old_thresholds(score: float, min_score: float, max_regression: float,
                    champion: float | None) -> bool:
    """What evaluate.ipynb decided before objectives existed."""
    reasons = []
    if score < min_score:
        reasons.append("below")
    if champion is not None and score < champion - max_regression:
        reasons.append("regresses")
    return not reasons


@pytest.mark.parametrize("min_score", [0.0, 0.5, 0.9, -0.3])
@pytest.mark.parametrize("max_regression", [0.0, 0.01, 0.05])
def test_thresholds_mean_the_objective_on_score(min_score: float, max_regression: float) -> None:
    objective = from_thresholds(min_score, max_regression)
    assert objective == Objective(metric="score", direction="maximize", bound=min_score,
                                  max_regression=max_regression)
    assert wb.objectives_from_thresholds is from_thresholds and wb.check_objectives is check
    for score in (-1.0, -0.3, 0.0, 0.49, 0.5, 0.85, 0.89, 0.9, 0.9000001, 1.0):
        for champion in (None, 0.0, 0.5, 0.88, 0.9, 0.91, 0.95, 1.0):
            [found] = check([objective], {"score": score},
                            {} if champion is None else {"score": champion, "version": "1"})
            assert found.passed == _old_thresholds(score, min_score, max_regression, champion), (
                score, champion)


# ---------------------------------------------------------------- configuration

def _config(environments: dict[str, Any]) -> Config:
    texts = {name: (REPO / "configs" / name).read_text() for name in (PIPELINE_FILE,
                                                                      MODEL_FILE)}
    texts[ENVIRONMENTS_FILE] = yaml.safe_dump({"environments": environments})
    return parse_config(texts)


def _problems(environments: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _config(environments)
    return [str(p) for p in caught.value.problems]


def _env(port: int, **keys: Any) -> dict[str, Any]:
    return {"deploy": {"target": "local", "port": port}, **keys}


def test_objectives_are_read_with_thresholds_first() -> None:
    config = _config({
        "dev": _env(5101, thresholds={"min_score": 0.9, "max_regression": 0.05}),
        "qa": _env(5102, thresholds={"min_score": -0.25},
                   objectives=[one("mae", "minimize", max_regression_pct=5),
                               one("r2", bound=-1)]),
        "prod": _env(5103, objectives=[one("rmse", "minimize", bound=60, max_regression=2)]),
        "sandbox": _env(5104),
    })
    envs = config.environments
    assert envs["dev"].objectives == [Objective(metric="score", direction="maximize",
                                                bound=0.9, max_regression=0.05)]
    assert [(o.metric, o.bound) for o in envs["qa"].objectives] == [
        ("score", -0.25), ("mae", None), ("r2", -1.0)]
    assert envs["prod"].thresholds is None
    assert [o.metric for o in envs["prod"].objectives] == ["rmse"]
    assert envs["sandbox"].objectives == []
    # what {from: env.objectives} reads: the whole list, as plain mappings
    assert envs["qa"].model_dump()["objectives"][1] == {
        "metric": "mae", "direction": "minimize", "bound": None, "max_regression": None,
        "max_regression_pct": 5.0}


def test_the_evaluate_stage_gets_the_environments_objectives() -> None:
    config = _config({"dev": _env(5101, thresholds={"min_score": 0.9}),
                      "qa": _env(5102, objectives=[one("f1_macro", bound=0.8)])})
    stage = config.stage("evaluate")
    assert "objectives" in stage.output_types
    outputs = {"train": {"model_uri": "runs:/x/model"}}
    run = {"id": "r", "git_commit": "", "config_hash": "", "environment": "dev"}
    for environment, expected in (("dev", "score"), ("qa", "f1_macro")):
        resolved = resolve_parameters(stage, config, environment, run, outputs)
        assert [o["metric"] for o in resolved["objectives"]] == [expected]
        assert "min_score" not in resolved


@pytest.mark.parametrize(("objective", "path", "expected"), [
    (one("mae", "down", bound=1), "objectives[1].direction",
     "Input should be 'maximize' or 'minimize'"),
    ({"direction": "maximize", "bound": 1}, "objectives[1].metric", "required key is missing"),
    (one("", bound=1), "objectives[1].metric", "at least 1 character"),
    (one("mae", "minimize"), "objectives[1]",
     "the objective on 'mae' checks nothing: give bound, max_regression or max_regression_pct"),
    (one("mae", "minimize", bound="low"), "objectives[1].bound", "valid number"),
    (one("mae", "minimize", bound=True), "objectives[1].bound", "valid number"),
    (one("mae", "minimize", bound=math.nan), "objectives[1].bound", "finite number"),
    (one("mae", "minimize", max_regression=-1), "objectives[1].max_regression",
     "greater than or equal to 0"),
    (one("mae", "minimize", max_regression_pct=-5), "objectives[1].max_regression_pct",
     "greater than or equal to 0"),
    (one("mae", "minimize", bound=1, floor=0), "objectives[1].floor",
     "unknown key; expected one of ['metric', 'direction', 'bound', 'max_regression', "
     "'max_regression_pct']"),
])
def test_a_bad_objective_is_named_by_file_and_key_path(objective: dict[str, Any], path: str,
                                                       expected: str) -> None:
    problems = _problems({"dev": _env(5101, thresholds={"min_score": 0.9}),
                          "qa": _env(5102, objectives=[one("r2", bound=0.3), objective])})
    assert len(problems) == 1, problems
    where = f"configs/environments.yaml: environments.qa.{path}: "
    assert problems[0].startswith(where), problems
    assert expected in problems[0], problems


def test_objectives_must_be_a_list_and_thresholds_keep_their_checks() -> None:
    problems = _problems({"qa": _env(5102, objectives={"metric": "r2"},
                                     thresholds={"max_regression": 2})})
    assert any(p.startswith("configs/environments.yaml: environments.qa.objectives: ")
               for p in problems), problems
    assert "configs/environments.yaml: environments.qa.thresholds.min_score: required key " \
           "is missing" in problems
    assert any(p.startswith("configs/environments.yaml: environments.qa.thresholds."
                            "max_regression: ") for p in problems), problems


def test_min_score_may_be_any_number_now() -> None:
    config = _config({"dev": _env(5101, thresholds={"min_score": -0.5}),
                      "qa": _env(5102, thresholds={"min_score": 93})})
    assert [o.bound for e in config.environments.values() for o in e.objectives] == [-0.5, 93]


# ---------------------------------------------------------------- a release (slow)

def _regression_project(tmp_path: Path) -> tuple[Workspace, dict[str, Any]]:
    """A project from the regression template with free ports; its environments.yaml."""
    done = Workspace(tmp_path).cli("init", str(tmp_path / "project"), "--template",
                                   "regression")
    assert done.returncode == 0, done.stderr
    ws = Workspace(tmp_path / "project")
    environments = ws.read_yaml("environments.yaml")
    for env in environments["environments"].values():
        env["deploy"]["port"] = free_port()
    return ws, environments


@pytest.mark.slow
def test_a_release_stops_when_an_objective_fails(tmp_path: Path) -> None:
    """The regression template, dev given an objective on mae it cannot meet: the evaluation
    fails naming mae, the bound and the value; register refuses; the run exits 1."""
    ws, environments = _regression_project(tmp_path)
    environments["environments"]["dev"]["objectives"] = [
        {"metric": "mae", "direction": "minimize", "bound": 1.0}]
    ws.write_yaml("environments.yaml", environments)

    run = ws.cli("run")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "evaluation did not pass" in run.stdout + run.stderr
    record = ws.run_record()
    assert record["status"] == "failed"
    evaluate = record["stages"]["evaluate"]
    assert evaluate["status"] == "succeeded"
    outputs = evaluate["outputs"]
    assert outputs["passed"] is False
    mae = outputs["metrics"]["mae"]
    assert mae > 1.0
    [reason] = outputs["reasons"]  # R^2 meets dev's thresholds; mae does not meet its bound
    assert reason.startswith("mae ") and "is above the bound 1.0" in reason
    assert f"{mae:.4f}".rstrip("0")[:4] in reason
    assert [(v["metric"], v["passed"]) for v in outputs["objectives"]] == [
        ("score", True), ("mae", False)]
    assert outputs["objectives"][1]["value"] == mae and outputs["objectives"][1]["bound"] == 1.0
    assert record["stages"]["register"]["status"] == "failed"
    # the verdicts are in the archived notebook's rendered output (what the site shows)
    archived = (ws.runs()[-1] / "evaluate.ipynb").read_text()
    assert "| objective | direction | bound | value | champion | verdict |" in archived
    assert reason in archived


@pytest.mark.slow
def test_an_environment_that_declares_no_objective_judges_none(tmp_path: Path) -> None:
    """dev with neither thresholds nor objectives: the evaluation applies no objective (not the
    notebook's by-hand defaults, which the diabetes regressor's R^2 of ~0.4 would fail)."""
    ws, environments = _regression_project(tmp_path)
    environments["environments"]["dev"].pop("thresholds", None)
    environments["environments"]["dev"].pop("objectives", None)
    ws.write_yaml("environments.yaml", environments)

    run = ws.cli("run", "--until", "evaluate")
    assert run.returncode == 0, run.stdout + run.stderr
    outputs = ws.run_record()["stages"]["evaluate"]["outputs"]
    assert outputs["objectives"] == [] and outputs["reasons"] == []
    assert outputs["passed"] is True and outputs["metrics"]["score"] < 0.9
