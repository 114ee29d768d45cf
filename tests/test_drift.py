"""Drift baselines and checks (no kernels): profiles, the two statistics, the endpoint's
inference log (formats, dropped columns, sampling, rotation, reading since a time)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.deploy.inference_log import InferenceLog, line_of, read_lines, rows_of
from workbench.drift import PREDICTIONS, compare, ks_statistic, profile, stability_index


def _frame(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"area": rng.normal(100 + shift, 15, n),
                         "segment": rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])})


def test_a_profile_keeps_what_a_comparison_needs() -> None:
    rng = np.random.default_rng(0)
    frame = _frame(rng, 5000)
    found = profile(frame, np.where(frame["area"] > 100, "high", "low"))
    area, segment = found["columns"]["area"], found["columns"]["segment"]
    assert area["kind"] == "numeric" and len(area["sample"]) == 2000 and len(area["deciles"]) == 11
    assert abs(area["mean"] - 100) < 1
    assert segment["kind"] == "categorical" and abs(segment["frequencies"]["a"] - 0.5) < 0.03
    assert set(found["columns"][PREDICTIONS]["frequencies"]) == {"high", "low"}
    json.dumps(found)  # stored as JSON beside the model


def test_the_statistics_on_known_cases() -> None:
    assert ks_statistic([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.0
    assert ks_statistic([1.0, 2.0, 3.0], [10.0, 11.0, 12.0]) == 1.0
    assert stability_index({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}) == 0.0
    # (0.7 - 0.5) ln(0.7/0.5) + (0.3 - 0.5) ln(0.3/0.5) = 0.1695
    assert stability_index({"a": 0.5, "b": 0.5}, {"a": 0.7, "b": 0.3}) == pytest.approx(0.1695,
                                                                                       abs=1e-4)
    # a category the baseline never saw counts as "other"
    assert stability_index({"a": 1.0}, {"a": 0.5, "z": 0.5}) > 1


def test_same_data_does_not_drift_and_shifted_data_does() -> None:
    rng = np.random.default_rng(1)
    baseline = profile(_frame(rng, 3000), rng.normal(0, 1, 3000))
    same = compare(baseline, _frame(rng, 400), rng.normal(0, 1, 400))
    assert [r.drifted for r in same] == [False, False, False]
    shifted = _frame(rng, 400, shift=20)
    shifted["segment"] = rng.choice(["a", "b", "c", "d"], 400, p=[0.1, 0.1, 0.2, 0.6])
    found = {r.feature: r for r in compare(baseline, shifted, rng.normal(2, 1, 400))}
    assert found["area"].statistic == "ks" and found["area"].drifted
    assert found["segment"].statistic == "psi" and found["segment"].drifted
    assert found[PREDICTIONS].drifted
    assert "DRIFT" in found["area"].describe() and "ks 0." in found["area"].describe()


def test_too_few_rows_or_a_missing_feature_is_not_judged() -> None:
    rng = np.random.default_rng(2)
    baseline = profile(_frame(rng, 500))
    found = {r.feature: r for r in compare(baseline, _frame(rng, 10)[["area"]], min_rows=30)}
    assert found["area"].value is None and "10 rows logged, 30 needed" in found["area"].note
    assert found["segment"].value is None and found["segment"].note == \
        "not in the logged requests"
    assert not any(r.drifted for r in found.values())


@pytest.mark.parametrize("payload", [
    {"dataframe_split": {"columns": ["x", "id"], "data": [[1, 7], [2, 8]]}},
    {"dataframe_records": [{"x": 1, "id": 7}, {"x": 2, "id": 8}]},
    {"inputs": [{"x": 1, "id": 7}, {"x": 2, "id": 8}]},
])
def test_request_formats_read_as_rows_and_dropped_columns_never_written(payload: dict) -> None:
    assert rows_of(payload) == (["x", "id"], [[1, 7], [2, 8]])
    line = line_of(json.dumps(payload).encode(), b'{"predictions": [0, 1]}',
                   frozenset({"id"}), 12.5)
    assert line == {"t": 12.5, "columns": ["x"], "rows": [[1], [2]], "predictions": [0, 1]}


def test_the_log_samples_writes_off_the_request_and_rotates(tmp_path: Path) -> None:
    body = json.dumps({"dataframe_split": {"columns": ["x"], "data": [[1.5]]}}).encode()

    async def scenario() -> InferenceLog:
        log = InferenceLog()
        writer = asyncio.create_task(log.run())
        settings = {"dir": str(tmp_path), "sample": 1.0, "max_bytes": 400, "drop": []}
        for _ in range(20):
            log.offer(settings, "3", body, b'{"predictions": [1]}')
        log.offer({**settings, "sample": 1e-9}, "3", body, b'{"predictions": [1]}')  # skipped
        await log.queue.join()
        writer.cancel()
        return log

    log = asyncio.run(scenario())
    assert log.written == 20 and log.dropped == 0
    current, older = tmp_path / "3.jsonl", tmp_path / "3.1.jsonl"
    assert current.stat().st_size <= 400 and older.stat().st_size <= 400  # bounded
    kept = list(read_lines(tmp_path, "3"))
    assert 0 < len(kept) < 20 and all(line["rows"] == [[1.5]] for line in kept)
    assert list(read_lines(tmp_path, "3", since=kept[-1]["t"] + 1)) == []


def test_realised_performance_joins_labels_by_id_and_judges_the_objectives() -> None:
    from workbench.operations.drift_check import DriftError, realised_performance

    served = pd.DataFrame({"house_id": [1, 2, 3, 4], "rooms": [3, 4, 2, 5]})
    predictions = [100.0, 200.0, 150.0, 300.0]
    labels = pd.DataFrame({"house_id": [2, 3, 4, 99], "price": [210.0, 140.0, 300.0, 1.0]})
    objective = {"metric": "rmse", "direction": "minimize", "bound": 10.0}
    found = realised_performance(served, predictions, labels, "house_id", "price",
                                 "regression", [objective])
    assert (found["labelled_rows"], found["labels"]) == (3, 4)  # id 99 was never served
    assert found["metrics"]["rmse"] == pytest.approx((200 / 3) ** 0.5, abs=1e-6)
    assert found["metrics"]["mae"] == pytest.approx(20 / 3, abs=1e-6)
    assert found["passed"] is True and found["objectives"][0]["metric"] == "rmse"
    strict = realised_performance(served, predictions, labels, "house_id", "price",
                                  "regression", [{**objective, "bound": 5.0}])
    assert strict["passed"] is False and "is above the bound 5.0" in \
        strict["objectives"][0]["message"]
    classes = realised_performance(served, ["a", "b", "a", "b"],
                                   labels.assign(price=["b", "b", "b", "x"]), "house_id",
                                   "price", "classification", [])
    assert classes["metrics"]["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(DriftError, match="no column 'order_id' in the logged requests"):
        realised_performance(served, predictions, labels, "order_id", "price", "regression",
                             [])
    with pytest.raises(DriftError, match="none of the 1 labels matches a logged request"):
        realised_performance(served, predictions, labels[labels.house_id == 99], "house_id",
                             "price", "regression", [])


def test_a_secret_a_client_sends_is_never_written(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    secret = 's3cr3t-"token"-value'
    monkeypatch.setenv("WB_TEST_API_KEY", secret)
    body = json.dumps({"dataframe_split": {"columns": ["x", "note"],
                                           "data": [[1.0, secret]]}}).encode()

    async def scenario(drop: list[str]) -> None:
        log = InferenceLog()
        writer = asyncio.create_task(log.run())
        log.offer({"dir": str(tmp_path / str(len(drop))), "drop": drop,
                   "secrets": ["WB_TEST_API_KEY"]}, "1", body, b'{"predictions": [1]}')
        await log.queue.join()
        writer.cancel()

    for drop in ([], ["x"]):  # the raw line, and the parsed one
        asyncio.run(scenario(drop))
        text = (tmp_path / str(len(drop)) / "1.jsonl").read_text()
        assert "[REDACTED:WB_TEST_API_KEY]" in text and "s3cr3t" not in text
        [line] = list(read_lines(tmp_path / str(len(drop)), "1"))
        assert line["rows"][0][-1] == "[REDACTED:WB_TEST_API_KEY]"
