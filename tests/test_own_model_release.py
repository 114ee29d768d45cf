"""A project's own model on its own data, released end to end (slow: real kernels, MLflow,
model servers): a regressor class of the project's own package trained on a CSV checked by the
project's data contract, judged by RMSE (minimize, with a bound and a relative regression
against the champion), through dev and qa; a breach of the contract stops the run before
training; a second release 10 % worse on RMSE is stopped by the objective."""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import Workspace, free_port, wait_until

ESTIMATOR = '''"""The team's own regressor: ridge regression with an optional constant shift."""

from sklearn.linear_model import Ridge


class ShiftedRidge(Ridge):
    def __init__(self, alpha=1.0, shift=0.0, random_state=None):
        super().__init__(alpha=alpha, random_state=random_state)
        self.shift = shift

    def predict(self, X):
        return super().predict(X) + self.shift
'''


CONTRACT = """rows: {min: 50}
other_columns: refused
columns:
  rooms: {type: float, min: 1, max: 10}
  area_m2: {type: float, min: 10, max: 400}
  age_years: {type: float, min: 0, max: 150}
  price_k: {type: float}
"""


def _houses(path: Path, area_unit: float = 1.0) -> None:
    rng = np.random.default_rng(11)
    rows = 400
    frame = pd.DataFrame({"rooms": rng.integers(1, 8, rows).astype(float),
                          "area_m2": rng.normal(90, 25, rows),
                          "age_years": rng.uniform(0, 60, rows)})
    frame["area_m2"] = frame["area_m2"].clip(lower=20)
    frame["price_k"] = (40 * frame["rooms"] + 2.5 * frame["area_m2"] - 0.8 * frame["age_years"]
                        + rng.normal(0, 20, rows))
    frame["area_m2"] *= area_unit  # an export that changed the unit of one column
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def _commit(root: Path, message: str) -> None:
    for args in (["add", "-A"], ["-c", "user.email=ds@example.com", "-c", "user.name=ds",
                                 "commit", "-qm", message]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def _project(tmp_path: Path) -> Workspace:
    done = Workspace(tmp_path).cli("init", str(tmp_path / "houses"), "--template", "regression")
    assert done.returncode == 0, done.stderr
    ws = Workspace(tmp_path / "houses")
    _houses(ws.root / "data" / "houses.csv", area_unit=1000)
    (ws.root / "configs" / "data_contract.yaml").write_text(CONTRACT)
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
    # qa's endpoint logs what it serves, without the age column, for drift checks
    environments["environments"]["qa"]["inference_log"] = {
        "sample": 1.0, "drop_columns": ["age_years"], "id_column": "house_id"}
    ws.write_yaml("environments.yaml", environments)
    subprocess.run(["git", "init", "-q"], cwd=ws.root, check=True, capture_output=True)
    _commit(ws.root, "house prices")
    return ws


def _now() -> float:
    import time

    return time.time()


def _iso(at: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(at).isoformat(timespec="milliseconds")


def _send(endpoint: str, frame: pd.DataFrame, ws: Workspace) -> int:
    """Score ``frame`` on the endpoint in requests of 50 rows; wait until the proxy has
    written them to its inference log; the number of requests."""
    route = f"{endpoint}/-/route"
    before = json.loads(urllib.request.urlopen(route, timeout=30).read())["logged"]
    sent = 0
    for start in range(0, len(frame), 50):
        part = frame.iloc[start:start + 50]
        body = json.dumps({"dataframe_split": {"columns": list(part.columns),
                                               "data": part.values.tolist()}}).encode()
        request = urllib.request.Request(f"{endpoint}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert len(json.loads(answer.read())["predictions"]) == len(part)
        sent += 1
    wait_until("the inference log to take every request", lambda: json.loads(
        urllib.request.urlopen(route, timeout=30).read())["logged"] >= before + sent)
    return sent


@pytest.mark.slow
def test_own_estimator_on_a_csv_through_dev_and_qa_then_a_worse_one_is_stopped(
        tmp_path: Path, oidc: Any) -> None:
    ws = _project(tmp_path)
    ci = oidc.github("release-bot")
    try:
        # a unit change (x1000) in one column breaks the contract: nothing is trained
        broken = ws.cli("run", env=ci)
        output = broken.stdout + broken.stderr
        assert broken.returncode == 1, output
        record = ws.run_record()
        assert record["stages"]["validate_data"]["status"] == "failed"
        assert record["stages"]["train"]["status"] in ("pending", "skipped")
        error = record["stages"]["validate_data"]["error"]
        assert "(2 failed checks): training: column 'area_m2': max 400: 300 values outside " \
               "it: " in error and "held-out: column 'area_m2': max 400: 100 values" in error
        assert "column 'area_m2': max 400" in output
        failed_run = ws.runs()[-1]
        archived = (failed_run / "validate_data.ipynb").read_text()
        assert "| training | area_m2 | max 400 | **fail** | 300 values outside it" in archived
        assert "| training | rooms | min 1 | pass |" in archived  # every check, in a table

        # the same CSV with the contract updated to the new unit passes
        contract = ws.root / "configs" / "data_contract.yaml"
        contract.write_text(CONTRACT.replace("area_m2: {type: float, min: 10, max: 400}",
                                             "area_m2: {type: float, min: 10000, max: 400000}"))
        _commit(ws.root, "area in square decimetres... now in the contract")
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
        # the approval binds to the contract that was checked: its digest is in the bundle
        from workbench.governance import approvals
        from workbench.project import Project
        from workbench.run_record import load

        project = Project(ws.root)
        _, bundle = approvals.status(project, load(project, record["id"]), "qa")
        contract_digest = hashlib.sha256(contract.read_bytes()).hexdigest()
        assert bundle.parts["data_contracts"] == {"validate_data": {
            "contract": "configs/data_contract.yaml", "digest": contract_digest}}

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

        # drift: what qa's endpoint is asked, against the version's training baseline
        endpoint = record["stages"]["deploy_qa"]["outputs"]["endpoint"]
        data = pd.read_csv(ws.root / "data" / "houses.csv")
        houses = data.drop(columns=["price_k"]).assign(house_id=data.index)  # ignored by it
        before = _now()
        asked = houses.sample(300, random_state=1)
        assert _send(endpoint, asked, ws) == 6
        log_file = ws.root / ".workbench" / "inference" / "qa" / f"{version}.jsonl"
        # the smoke and load tests' requests (synthetic) were not logged: these 6 only
        assert len(log_file.read_text().splitlines()) == 6
        nothing = ws.cli("drift", "--env", "qa", "--since", _iso(_now()))
        assert nothing.returncode == 2  # nothing logged since then
        assert "no logged requests of house-prices v1 on qa" in nothing.stderr
        checked = ws.cli("drift", "--env", "qa", "--since", _iso(before))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "feature 'age_years': not in the logged requests" in checked.stdout  # dropped
        assert "feature 'area_m2': ks" in checked.stdout and "no drift" in checked.stdout
        # the outcomes arrive later: the realised performance against qa's objectives
        labels = data.loc[asked.index, ["price_k"]].assign(house_id=asked.index)
        labels.to_csv(ws.root / "labels.csv", index=False)
        scored = ws.cli("drift", "--env", "qa", "--since", _iso(before), "--labels",
                        str(ws.root / "labels.csv"), "--json")
        assert scored.returncode == 0, scored.stdout + scored.stderr
        performance = json.loads(scored.stdout)["performance"]
        assert performance["labelled_rows"] == 300 and performance["passed"] is True
        assert abs(performance["metrics"]["rmse"] - rmse) < 10  # as evaluated on held-out
        (ws.root / "labels.csv").write_text(labels.assign(price_k=labels.price_k + 100)
                                            .to_csv(index=False))
        missed = ws.cli("drift", "--env", "qa", "--since", _iso(before), "--labels",
                        str(ws.root / "labels.csv"))
        assert missed.returncode == 1, missed.stdout + missed.stderr
        assert "rmse: FAIL: rmse " in missed.stdout and "is above the bound 60.0" in \
            missed.stdout and "no drift" in missed.stdout
        later = _now()
        shifted = houses.sample(300, random_state=2).assign(area_m2=lambda f: f.area_m2 * 2.5)
        assert _send(endpoint, shifted, ws) == 6
        drifted = ws.cli("drift", "--env", "qa", "--since", _iso(later), "--json")
        assert drifted.returncode == 1, drifted.stdout + drifted.stderr
        found = json.loads(drifted.stdout)
        assert found["requests"] == 6 and found["rows"] == 300
        assert set(found["drifted"]) == {"area_m2", "__prediction__"}  # that feature alone
        page = (ws.root / "reports" / "environments.html").read_text()
        assert "<strong>drift</strong> in area_m2, predictions" in page
        assert 'aria-label="area_m2: training and served distributions"' in page
        assert "no drift" in page  # the earlier check, listed too
        assert "age_years" not in log_file.read_text()  # a dropped column never reaches disk
        assert len(list((ws.root / "reports" / "drift").glob("*.json"))) == 4
        verified = ws.cli("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        # the site and the ledger show both runs' check tables: the failed and the passed
        built = ws.cli("reports", "build")
        assert built.returncode == 0, built.stderr
        ledger = [json.loads(line) for line in
                  (ws.root / "reports" / "ledger.jsonl").read_text().splitlines()]
        passed_run = ws.root / "reports" / "runs" / record["id"]
        for run, verdict in ((failed_run, "fail"), (passed_run, "pass")):
            page = (run / "validate_data.html").read_text()
            assert "<td>area_m2</td>" in page and f"{verdict}</" in page
            executed = [e for e in ledger if e["run_id"] == run.name and e["event"] ==
                        "stage_executed" and e["data"]["stage"] == "validate_data"]
            notebook = run / "validate_data.ipynb"
            assert executed[-1]["files"][f"runs/{run.name}/validate_data.ipynb"] == \
                hashlib.sha256(notebook.read_bytes()).hexdigest()

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
