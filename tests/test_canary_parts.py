"""Progressive delivery without servers: the proxy's split (weights, stickiness), its traffic
statistics and shadow comparison, the canary analysis rule by rule, and the configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from workbench.config import Canary, CanaryAnalysis, DeployTarget
from workbench.deploy.canary import breaches
from workbench.deploy.proxy import Router
from workbench.deploy.traffic import Comparison, Window, percentile, predictions

ROUTE = {"port": 1000, "version": "1",
         "canary": {"port": 2000, "version": "2", "weight": 25, "sticky_header": "X-Client"}}


def test_requests_split_by_weight_and_stick_by_key(tmp_path: Path) -> None:
    router = Router(tmp_path / "route.json")
    chosen = [router.backend(ROUTE, {"X-Client": f"client-{n}"}) for n in range(4000)]
    share = sum(1 for port, _ in chosen if port == 2000) / len(chosen)
    assert abs(share - 0.25) < 0.03  # 4000 keys: about 5 standard deviations
    for n in range(50):  # the same key, the same version, every time
        assert len({router.backend(ROUTE, {"X-Client": f"k{n}"}) for _ in range(20)}) == 1
    unkeyed = [router.backend(ROUTE, {})[1] for _ in range(4000)]
    assert abs(unkeyed.count("2") / 4000 - 0.25) < 0.03
    assert router.backend({"port": 1000, "version": "1"}, {}) == (1000, "1")


def test_a_new_window_starts_counting_again(tmp_path: Path) -> None:
    path = tmp_path / "route.json"
    path.write_text(json.dumps({**ROUTE, "window": "a"}))
    router = Router(path)
    router.current()
    router.window.add("2", 200, 10.0)
    router.window.add("2", 503, 30.0)
    assert router.window.summary()["versions"]["2"]["error_rate"] == 0.5
    path.write_text(json.dumps({**ROUTE, "window": "b", "canary": {**ROUTE["canary"],
                                                                   "weight": 50}}))
    import os
    os.utime(path, ns=(1, 1))  # a new stamp even on a coarse clock
    router.current()
    assert router.window.id == "b" and router.window.summary()["versions"] == {}


def test_percentiles_and_traffic_summary() -> None:
    assert percentile([], 95) is None
    assert percentile([float(n) for n in range(1, 101)], 95) == 95.0
    window = Window("w")
    for n in range(100):
        window.add("3", 200, float(n))
    summary = window.summary()["versions"]["3"]
    assert summary["requests"] == 100 and summary["errors"] == 0
    assert summary["p50_ms"] == 49.0 and summary["p95_ms"] == 94.0


def test_shadow_comparison_counts_labels_and_numbers() -> None:
    assert predictions(b'{"predictions": [1, 2]}') == [1, 2]
    assert predictions(b"[[1, 2], [3]]") == [1, 2, 3]
    assert predictions(b"not json") is None
    comparison = Comparison()
    comparison.add(b'{"predictions": [0, 1, 1, 0]}', 5.0, b'{"predictions": [0, 1, 0, 0]}',
                   200, 7.0)
    comparison.add(b'{"predictions": [1.0, 2.0]}', 5.0, b'{"predictions": [1.0, 2.5]}',
                   200, 9.0)
    comparison.add(b'{"predictions": [1]}', 5.0, b"", 599, 30000.0)
    summary = comparison.summary()
    assert (summary["compared"], summary["disagreed"], summary["predictions"],
            summary["differing"], summary["errors"]) == (2, 2, 6, 2, 1)
    assert summary["disagreement_rate"] == pytest.approx(2 / 6)
    assert summary["mean_difference"] == pytest.approx(0.25)


def analysis(**rules: Any) -> CanaryAnalysis:
    return CanaryAnalysis(**{"min_requests": 10, **rules})


def traffic(requests: int = 100, errors: int = 0, p95: float | None = 50.0) -> dict[str, Any]:
    return {"requests": requests, "errors": errors, "error_rate": errors / requests
            if requests else 0.0, "p95_ms": p95}


def test_each_analysis_rule_alone() -> None:
    assert breaches(analysis(), traffic(), traffic()) == []
    assert breaches(analysis(), traffic(requests=9), traffic()) == [
        "inconclusive: 9 requests reached the candidate, fewer than min_requests 10"]
    assert breaches(analysis(max_error_rate=0.01), traffic(errors=2), traffic()) == [
        "error rate 0.0200 > max_error_rate 0.01 (2 of 100)"]
    assert breaches(analysis(max_error_rate=0.05), traffic(errors=2), traffic()) == []
    assert breaches(analysis(max_p95_ms=40), traffic(), traffic()) == [
        "p95 50.0 ms > max_p95_ms 40"]
    assert breaches(analysis(max_p95_ratio=1.2), traffic(p95=61.0), traffic(p95=50.0)) == [
        "p95 61.0 ms is 1.22x the serving version's 50.0 ms > max_p95_ratio 1.2"]
    assert breaches(analysis(max_p95_ratio=1.2), traffic(p95=61.0), {}) == []  # 100 %: none
    assert len(breaches(analysis(max_p95_ms=40, max_error_rate=0.0), traffic(errors=1),
                        traffic())) == 2


def test_canary_configuration_is_checked() -> None:
    with pytest.raises(ValidationError, match="strategy: canary needs canary"):
        DeployTarget.model_validate({"port": 5000, "strategy": "canary"})
    with pytest.raises(ValidationError, match="step weights must grow"):
        Canary.model_validate({"steps": [{"weight": 50}, {"weight": 10}]})
    with pytest.raises(ValidationError, match="expected a duration"):
        Canary.model_validate({"steps": [{"weight": 10, "pause": "soon"}]})
    steps = Canary.model_validate({"steps": [{"weight": 10, "pause": "2m"}]}).steps
    assert steps[0].pause_s == 120.0
