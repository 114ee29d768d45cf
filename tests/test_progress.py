"""Progress output: plain lines for logs, JSON for machines, a live table for terminals."""

from __future__ import annotations

import io
import json

from rich.console import Console

from workbench.cli.progress import JsonReporter, LiveReporter, PlainReporter
from workbench.events import (
    Bus,
    CellStarted,
    RunFinished,
    RunStarted,
    StageFinished,
    StageRecorded,
    StageSkipped,
    StageStarted,
)

EVENTS = [
    RunStarted(run_id="r1", pipeline="release", environment="dev", stages=["train", "deploy"],
               statuses={}, folder="reports/runs/r1"),
    StageStarted(stage="train", notebook="notebooks/train.ipynb"),
    CellStarted(stage="train", index=2, total=9, source="model = Estimator()"),
    StageFinished(stage="train", status="failed", duration_s=3.25,
                  error="cell 3 raised ValueError: boom"),
    StageSkipped(stage="deploy", reason="upstream stage 'train' did not succeed"),
    RunFinished(run_id="r1", status="failed", duration_s=4.0, folder="reports/runs/r1"),
]


def test_plain_reporter_writes_one_line_per_stage_event() -> None:
    stream = io.StringIO()
    reporter = PlainReporter(stream)
    for event in EVENTS:
        reporter.on_event(event)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5, "cell events are too fine-grained for a log"
    assert lines[2].endswith("stage train failed in 3.2 s: cell 3 raised ValueError: boom")
    assert "stage deploy skipped: upstream stage 'train' did not succeed" in lines[3]


def test_json_reporter_writes_every_event() -> None:
    stream = io.StringIO()
    reporter = JsonReporter(stream)
    for event in EVENTS:
        reporter.on_event(event)
    parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in parsed] == [e.kind for e in EVENTS]
    assert parsed[2]["source"] == "model = Estimator()"
    assert list(parsed[1]) == ["event", "time", "stage", "notebook"], "a gate's start has no kernel"
    assert list(parsed[3])[:4] == ["event", "time", "stage", "status"]


def test_live_reporter_shows_stages_and_current_cell() -> None:
    reporter = LiveReporter()
    reporter.console = Console(file=io.StringIO(), width=120, record=True)
    for event in EVENTS[:3]:
        reporter.on_event(event)
    reporter.console.print(reporter._table())
    text = reporter.console.export_text()
    assert "running" in text and "3/9 model = Estimator()" in text and "pending" in text
    for event in EVENTS[3:]:
        reporter.on_event(event)
    reporter.console.print(reporter._table())
    text = reporter.console.export_text()
    assert "failed" in text and "skipped" in text and "run r1 failed" in text


def test_internal_events_are_never_printed() -> None:
    stream = io.StringIO()
    reporter = JsonReporter(stream)
    reporter.on_event(StageRecorded(project=None, record=None, stage="train", archived=None,
                                    seq=1))
    assert stream.getvalue() == ""


def test_a_failing_listener_becomes_a_warning_and_never_stops_the_others() -> None:
    class Broken:
        def on_stage_started(self, event: StageStarted) -> None:
            raise RuntimeError("disk full")

    stream = io.StringIO()
    bus = Bus([Broken(), JsonReporter(stream)])
    bus.emit(EVENTS[1])
    parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in parsed] == ["warning", "stage_started"]
    assert parsed[0]["message"] == "Broken failed on stage_started: RuntimeError: disk full"
