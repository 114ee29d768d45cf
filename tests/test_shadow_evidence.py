"""A shadow's comparison as metrics an objective judges, and as evidence on the next gate's
review (fast: ledger entries and the pure functions, no servers)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from workbench.audit import ledger
from workbench.deploy.shadow import shadow_markdown, shadow_metrics
from workbench.governance import review
from workbench.objectives import check
from workbench.project import Project

WINDOW = {"environment": "prod", "model": "m", "serving_version": "3", "shadow_version": "4",
          "seconds": 60.2, "compared": 190, "errors": 10, "disagreement_rate": 0.05,
          "live_p95_ms": 20.0, "shadow_p95_ms": 30.0, "p95_abs_difference": None}


def test_the_comparison_as_metrics() -> None:
    assert shadow_metrics(WINDOW) == pytest.approx({
        "shadow_disagreement_rate": 0.05, "shadow_error_rate": 0.05, "shadow_p95_ms": 30.0,
        "live_p95_ms": 20.0, "shadow_p95_ratio": 1.5})
    # a window that compared nothing measured no rate: an objective on it fails as missing
    empty = shadow_metrics({**WINDOW, "compared": 0, "errors": 0, "disagreement_rate": None,
                            "live_p95_ms": None, "shadow_p95_ms": None})
    assert empty == {}
    verdict = check([{"metric": "shadow_disagreement_rate", "direction": "minimize",
                      "bound": 0.02}], empty)[0]
    assert not verdict.passed and verdict.value is None


def test_objectives_on_a_shadow() -> None:
    objectives = [{"metric": "shadow_disagreement_rate", "direction": "minimize", "bound": 0.1},
                  {"metric": "shadow_p95_ratio", "direction": "minimize", "bound": 1.2}]
    verdicts = check(objectives, shadow_metrics(WINDOW))
    assert [v.passed for v in verdicts] == [True, False]
    assert "1.5" in verdicts[1].message


def test_the_review_shows_every_shadow_of_the_run(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    project = Project(tmp_path)
    project.reports.mkdir(parents=True)
    ledger.append(project.reports, "shadow", actor=None, run_id="run-a", data=WINDOW)
    ledger.append(project.reports, "shadow", actor=None, run_id="run-b",
                  data={**WINDOW, "shadow_version": "9"})
    shown: list[str] = []
    monkeypatch.setattr(review, "_markdown", shown.append)
    record: Any = SimpleNamespace(id="run-a")
    review.Review(project, record, "prod", verdict=None, bundle=None)._show_shadows()  # type: ignore[arg-type]
    assert len(shown) == 1 and shown[0] == shadow_markdown(WINDOW)
    assert "Shadow of v4 beside v3 on prod" in shown[0]
    assert "5.00%" in shown[0] and "20.0 ms / 30.0 ms (ratio 1.50)" in shown[0]
    assert "190 requests compared" in shown[0]


def test_the_plot_shows_both_latencies_and_the_rates() -> None:
    from workbench.deploy.shadow import ShadowResult

    result = ShadowResult("prod", "m", "3", "4", 60.2, {
        key: value for key, value in WINDOW.items()
        if key not in ("environment", "model", "serving_version", "shadow_version", "seconds")})
    figure = result.plot()
    latency, rates = figure.axes
    assert [t.get_text() for t in latency.get_xticklabels()] == ["live v3", "shadow v4"]
    assert [p.get_height() for p in latency.patches] == [20.0, 30.0]
    assert [p.get_height() for p in rates.patches] == pytest.approx([0.05, 0.05])
    assert "190 requests compared" in latency.get_title()
