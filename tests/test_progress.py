"""Progress output: plain lines for logs, JSON for machines, a live table for terminals."""

from __future__ import annotations

import io
import json

from rich.console import Console

from workbench.progress import JsonReporter, LiveReporter, PlainReporter, make_event

EVENTS = [
    make_event("run_started", run_id="r1", pipeline="release", environment="dev",
               stages=["train", "deploy"], folder="reports/runs/r1"),
    make_event("stage_started", stage="train", notebook="notebooks/train.ipynb"),
    make_event("cell", stage="train", index=2, total=9, source="model = Estimator()"),
    make_event("stage_finished", stage="train", status="failed", duration_s=3.25,
               error="cell 3 raised ValueError: boom"),
    make_event("stage_skipped", stage="deploy", reason="upstream stage 'train' did not succeed"),
    make_event("run_finished", run_id="r1", status="failed", duration_s=4.0,
               folder="reports/runs/r1"),
]


def test_plain_reporter_writes_one_line_per_stage_event() -> None:
    stream = io.StringIO()
    reporter = PlainReporter(stream)
    for event in EVENTS:
        reporter(event)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5, "cell events are too fine-grained for a log"
    assert lines[2].endswith("stage train failed in 3.2 s: cell 3 raised ValueError: boom")
    assert "stage deploy skipped: upstream stage 'train' did not succeed" in lines[3]


def test_json_reporter_writes_every_event() -> None:
    stream = io.StringIO()
    reporter = JsonReporter(stream)
    for event in EVENTS:
        reporter(event)
    parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in parsed] == [e["event"] for e in EVENTS]
    assert parsed[2]["source"] == "model = Estimator()"


def test_live_reporter_shows_stages_and_current_cell() -> None:
    reporter = LiveReporter()
    reporter.console = Console(file=io.StringIO(), width=120, record=True)
    for event in EVENTS[:3]:
        reporter(event)
    reporter.console.print(reporter._table())
    text = reporter.console.export_text()
    assert "running" in text and "3/9 model = Estimator()" in text and "pending" in text
    for event in EVENTS[3:]:
        reporter(event)
    reporter.console.print(reporter._table())
    text = reporter.console.export_text()
    assert "failed" in text and "skipped" in text and "run r1 failed" in text
