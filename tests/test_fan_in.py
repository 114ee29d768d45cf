"""Fan-in: ``{from: stage.output.key}`` reads into a dict output, also inside literal lists and
mappings; validation refuses keys into outputs that are not dicts, and a key the upstream
stage did not produce fails the stage before it starts, naming stage, parameter and key."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Workspace, notebook

SCORE = notebook('import scrapbook as sb\nsb.glue("stats", {"rmse": 41.5, "per_fold": [40, 43]})'
                 '\nsb.glue("label", "fold-a")')
SCORE_OUTPUTS = {"stats": "dict", "label": "str"}


def _pipeline(ws: Workspace, parameters: dict[str, object], declared: str) -> None:
    ws.write_notebook("score", SCORE)
    ws.write_notebook("report", notebook('import scrapbook as sb\nsb.glue("seen", repr(['
                                         + ", ".join(parameters) + "]))",
                                         parameters=declared))
    ws.write_yaml("pipeline.yaml", {"name": "fan_in", "stages": [
        {"name": "score", "notebook": "notebooks/score.ipynb", "outputs": SCORE_OUTPUTS},
        {"name": "report", "notebook": "notebooks/report.ipynb", "needs": ["score"],
         "parameters": parameters, "outputs": {"seen": "str"}}]})


def test_a_key_into_a_dict_output_validates(mini_project: Workspace) -> None:
    _pipeline(mini_project, {"rmse": {"from": "score.stats.rmse"},
                             "pair": [{"from": "score.stats.per_fold"}, {"from": "score.label"}]},
              "rmse: float = 0.0\npair: list = []")
    done = mini_project.cli("validate")
    assert done.returncode == 0, done.stderr


def test_a_key_into_an_output_that_is_not_a_dict_is_refused(mini_project: Workspace) -> None:
    _pipeline(mini_project, {"rmse": {"from": "score.label.first"}}, "rmse: float = 0.0")
    done = mini_project.cli("validate")
    assert done.returncode == 2
    assert "stages[1](report).parameters.rmse: 'from: score.label.first': output 'label' of " \
           "stage 'score' is a str, so it has no key 'first'" in done.stderr


@pytest.mark.slow
def test_keys_into_dict_outputs_reach_the_notebook_typed(mini_project: Workspace) -> None:
    _pipeline(mini_project, {"rmse": {"from": "score.stats.rmse"},
                             "pair": [{"from": "score.stats.per_fold"}, {"from": "score.label"}]},
              "rmse: float = 0.0\npair: list = []")
    done = mini_project.cli("run")
    assert done.returncode == 0, done.stdout + done.stderr
    record = mini_project.run_record()
    assert record["stages"]["report"]["parameters"] == {"rmse": 41.5,
                                                        "pair": [[40, 43], "fold-a"]}
    assert record["stages"]["report"]["outputs"]["seen"] == "[41.5, [[40, 43], 'fold-a']]"


@pytest.mark.slow
def test_a_key_the_upstream_stage_did_not_produce_fails_the_stage_by_name(
        mini_project: Workspace) -> None:
    _pipeline(mini_project, {"mae": {"from": "score.stats.mae"}}, "mae: float = 0.0")
    done = mini_project.cli("run")
    assert done.returncode == 1, done.stdout + done.stderr
    record = mini_project.run_record()
    report = record["stages"]["report"]
    assert record["status"] == "failed" and report["status"] == "failed"
    assert report["error"] == ("stage 'report', parameter 'mae': 'from: score.stats.mae': "
                               "there is no stats.mae in what stage 'score' output")
    assert "stats.mae" in done.stdout + done.stderr
    assert json.loads(json.dumps(record["stages"]["score"]["outputs"]))["stats"]["rmse"] == 41.5
