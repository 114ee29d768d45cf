"""A project's own model on its own data, released end to end (slow: real kernels, MLflow,
model servers): a regressor class of the project's own package trained on a CSV, judged by
RMSE (minimize, with a bound and a relative regression against the champion), through dev and
qa; a second release 10 % worse on RMSE is stopped by the objective."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import Workspace, free_port

ESTIMATOR = '''"""The team's own regressor: ridge regression with an optional constant shift."""

from sklearn.linear_model import Ridge


class ShiftedRidge(Ridge):
    def __init__(self, alpha=1.0, shift=0.0, random_state=None):
        super().__init__(alpha=alpha, random_state=random_state)
        self.shift = shift

    def predict(self, X):
        return super().predict(X) + self.shift
'''


def _houses(path: Path) -> None:
    rng = np.random.default_rng(11)
    rows = 400
    frame = pd.DataFrame({"rooms": rng.integers(1, 8, rows).astype(float),
                          "area_m2": rng.normal(90, 25, rows),
                          "age_years": rng.uniform(0, 60, rows)})
    frame["price_k"] = (40 * frame["rooms"] + 2.5 * frame["area_m2"] - 0.8 * frame["age_years"]
                        + rng.normal(0, 20, rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def _project(tmp_path: Path) -> Workspace:
    done = Workspace(tmp_path).cli("init", str(tmp_path / "houses"), "--template", "regression")
    assert done.returncode == 0, done.stderr
    ws = Workspace(tmp_path / "houses")
    _houses(ws.root / "data" / "houses.csv")
    package = ws.root / "house_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ridge.py").write_text(ESTIMATOR)
    model = ws.read_yaml("model.yaml")
    model.update({"name": "house-prices", "dataset": "data/houses.csv", "target": "price_k",
                  "task": "regression", "estimator": "house_models.ridge.ShiftedRidge",
                  "hyperparameters": {"alpha": 0.5, "shift": 0.0}, "random_state": 7})
    ws.write_yaml("model.yaml", model)
    environments = ws.read_yaml("environments.yaml")
    rmse = {"metric": "rmse", "direction": "minimize", "bound": 60.0, "max_regression_pct": 5}
    for name, env in environments["environments"].items():
        env["deploy"]["port"] = free_port()
        env.pop("thresholds", None)
        env["objectives"] = [rmse] if name != "prod" else [{**rmse, "bound": 50.0}]
    ws.write_yaml("environments.yaml", environments)
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.email=ds@example.com", "-c", "user.name=ds", "commit", "-qm",
                  "house prices"]):
        subprocess.run(["git", *args], cwd=ws.root, check=True, capture_output=True)
    return ws


@pytest.mark.slow
def test_own_estimator_on_a_csv_through_dev_and_qa_then_a_worse_one_is_stopped(
        tmp_path: Path, oidc: Any) -> None:
    ws = _project(tmp_path)
    ci = oidc.github("release-bot")
    try:
        first = ws.cli("run", env=ci)
        assert first.returncode == 3, first.stdout + first.stderr  # at qa's gate, dev deployed
        record = ws.run_record()
        evaluate = record["stages"]["evaluate"]["outputs"]
        rmse = evaluate["metrics"]["rmse"]
        assert 10 < rmse < 60, evaluate["metrics"]  # noise sd 20 on a linear price
        assert [(v["metric"], v["direction"], v["passed"]) for v in evaluate["objectives"]] \
            == [("rmse", "minimize", True)]
        version = record["model_version"]["version"]
        assert record["stages"]["deploy"]["outputs"]["served_version"] == version

        approved = ws.cli("approve", "latest", "--env", "qa", "--comment", "rmse ok",
                          env=oidc.github("alice"))
        assert approved.returncode == 0, approved.stdout + approved.stderr
        resumed = ws.cli("resume", "latest", env=ci)
        assert resumed.returncode == 3, resumed.stdout + resumed.stderr  # now at prod's gate
        record = ws.run_record()
        assert record["stages"]["deploy_qa"]["outputs"]["served_version"] == version
        assert record["stages"]["deploy_qa"]["outputs"]["smoke_passed"] is True
        assert record["stages"]["load_test"]["status"] == "succeeded"
        # the model carries the project's package: the servers loaded it from the artifact
        artifacts = list((ws.root / ".workbench" / "mlflow").rglob("code/house_models/ridge.py"))
        assert artifacts, "the logged model does not carry house_models"

        # a release 10 % worse on RMSE: the same model shifted by half its error
        shift = round(0.5 * rmse, 3)
        second = ws.cli("run", "--until", "register", "-p",
                        f"model.hyperparameters={{alpha: 0.5, shift: {shift}}}", env=ci)
        output = second.stdout + second.stderr
        assert second.returncode == 1, output
        worse = ws.run_record()
        assert worse["id"] != record["id"]
        outputs = worse["stages"]["evaluate"]["outputs"]
        assert outputs["passed"] is False
        new, champion = outputs["metrics"]["rmse"], outputs["champion"]["rmse"]
        assert outputs["champion"]["version"] == version
        assert new > champion * 1.05
        [reason] = outputs["reasons"]
        assert reason.startswith(f"rmse {new:.4f}".rstrip("0")) and \
            f"is worse than the champion's {champion:.4f}".rstrip("0") in reason and \
            reason.endswith("(allowed 5.0%)"), reason
        assert reason in output  # the failure names it on the terminal too
        assert worse["stages"]["register"]["status"] == "failed"
    finally:
        for environment in ("dev", "qa"):
            ws.cli("stop", environment)
