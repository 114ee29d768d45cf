"""The parts of a release diff without kernels or a registry: parameters the project sets,
cell-level notebook changes, metric deltas by each objective's direction, and the renderers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench.config import parse_config
from workbench.governance import release_diff
from workbench.governance.release_diff import ReleaseDiff
from workbench.project import Project
from workbench.run_record import RunRecord

PIPELINE = """name: p
stages:
- name: train
  notebook: notebooks/train.ipynb
  parameters:
    alpha: 0.5
    layers: [8, 4]
    target: {from: model.target}
    run_id: {from: run.id}
- name: evaluate
  notebook: notebooks/evaluate.ipynb
  needs: [train]
  parameters: {uri: {from: train.model_uri}}
  outputs: {metrics: {type: dict, role: metrics}}
"""
ENVIRONMENTS = """environments:
  prod:
    deploy: {target: local, port: 5002}
    objectives:
    - {metric: rmse, direction: minimize, bound: 10}
    - {metric: r2, direction: maximize, max_regression_pct: 5}
"""
CONFIG = parse_config({"pipeline.yaml": PIPELINE, "environments.yaml": ENVIRONMENTS,
                       "model.yaml": "name: m\ntarget: price\n"})


def run(project: Project, run_id: str, parameters: dict[str, Any], cells: list[str],
        metrics: dict[str, Any]) -> RunRecord:
    folder = project.runs / run_id
    folder.mkdir(parents=True)
    injected = {"cell_type": "code", "source": "alpha = 1", "metadata":
                {"tags": ["injected-parameters"]}, "outputs": []}
    nb = {"cells": [injected, *({"cell_type": "code", "source": c.splitlines(keepends=True),
                                 "metadata": {}, "outputs": []} for c in cells)]}
    (folder / "train.ipynb").write_text(json.dumps(nb))
    return RunRecord.model_validate({
        "id": run_id, "pipeline": "p", "environment": "prod", "created": "2026-12-07T00:00:00Z",
        "git_commit": "0" * 40, "config_hash": "h", "config": {}, "tracking_uri": "",
        "experiment": "e", "stages": {
            "train": {"status": "succeeded", "notebook": "train.ipynb",
                      "parameters": parameters},
            "evaluate": {"status": "succeeded", "outputs": {"metrics": metrics},
                         "roles": {"metrics": "metrics"}}}})


def test_parameters_the_project_sets_are_compared_and_derived_ones_are_not(tmp_path: Path
                                                                           ) -> None:
    project = Project(tmp_path)
    old = run(project, "a", {"alpha": 0.5, "layers": [8, 4], "target": "price",
                             "run_id": "a"}, [], {})
    new = run(project, "b", {"alpha": 0.1, "layers": [8, 4], "target": "cost",
                             "run_id": "b"}, [], {})
    found = release_diff._parameters(CONFIG, new, old, ["train", "evaluate"])
    assert [(p.name, p.serving, p.candidate, p.change) for p in found] == [
        ("alpha", 0.5, 0.1, "changed"), ("target", "price", "cost", "changed")]


def test_cells_are_matched_in_order_and_the_injected_cell_is_left_out(tmp_path: Path) -> None:
    project = Project(tmp_path)
    old = run(project, "a", {}, ["import x", "fit(a)\nscore()", "plot()", "gone()"], {})
    new = run(project, "b", {}, ["import x", "new_cell()", "fit(b)\nscore()", "plot()"], {})
    found = release_diff._notebook(project, new, old, "train")
    assert found.notebook == "reports/runs/b/train.ipynb"
    # fit(a) became fit(b) (one cell later), new_cell() was inserted before it, gone() removed
    assert [(c.change, c.cell) for c in found.cells] == [
        ("added", 1), ("modified", 2), ("removed", 3)]
    added, modified, removed = found.cells
    assert modified.diff.splitlines()[2:] == ["@@ -1,2 +1,2 @@", "-fit(a)", "+fit(b)",
                                              " score()"]
    assert added.diff.splitlines()[-1] == "+new_cell()"
    assert removed.diff.splitlines()[-1] == "-gone()"
    same = release_diff._notebook(project, old, old, "train")
    assert same.cells == []


def test_metric_deltas_follow_each_objectives_direction() -> None:
    record = {"rmse": 9.0, "r2": 0.8, "mae": 3.0, "extra": 1.0}
    serving = {"rmse": 10.0, "r2": 0.9, "mae": 3.0}
    new = RunRecord.model_validate({
        "id": "b", "pipeline": "p", "environment": "prod", "created": "x", "git_commit": "0",
        "config_hash": "h", "config": {}, "tracking_uri": "", "experiment": "e", "stages": {
            "evaluate": {"status": "succeeded", "outputs": {"metrics": record},
                         "roles": {"metrics": "metrics"}}}})
    old = new.model_copy(deep=True)
    old.stages["evaluate"].outputs = {"metrics": serving}
    found = release_diff._metrics(CONFIG, new, old, "prod")
    assert [(m.metric, m.direction, m.moved) for m in found] == [
        ("rmse", "minimize", "better"), ("r2", "maximize", "worse"), ("mae", None, "same")]
    assert found[0].delta == -1.0 and found[0].delta_pct == -10.0
    assert abs(found[1].delta_pct + 11.111) < 0.01


def test_renderers_and_the_digest() -> None:
    diff = ReleaseDiff(environment="prod", model="m", candidate_run="b", candidate_version="2",
                       serving_run="a", serving_version="1", parameters=[
                           release_diff.ParameterChange(stage="train", name="alpha",
                                                        serving=0.5, candidate=0.1,
                                                        change="changed")])
    assert "parameter train.alpha: 0.5 -> 0.1" in release_diff.text(diff)
    assert "| train | alpha | 0.5 | 0.1 |" in release_diff.markdown(diff)
    other = diff.model_copy(update={"parameters": []})
    assert diff.digest != other.digest and len(diff.digest) == 64
    first = ReleaseDiff(environment="prod", model="m", candidate_run="b",
                        candidate_version="1", note="nothing serves prod yet")
    assert release_diff.text(first).endswith("against nothing: nothing serves prod yet")
    hostile = diff.model_copy(update={"parameters": [release_diff.ParameterChange(
        stage="train", name="x", serving="<script>|", candidate="a", change="changed")]})
    assert "<script>" not in release_diff.markdown(hostile)
