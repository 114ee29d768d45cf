"""Progress of a run: a live table on a terminal, plain lines off one, JSON lines on request."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol, TextIO

Event = dict[str, Any]


class Reporter(Protocol):
    def __call__(self, event: Event) -> None: ...


def make_event(kind: str, **fields: Any) -> Event:
    return {"event": kind, "time": datetime.now().astimezone().isoformat(timespec="seconds"),
            **fields}


class JsonReporter:
    """One JSON object per line, every event including cells: for machines."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def __call__(self, event: Event) -> None:
        self.stream.write(json.dumps(event, default=str) + "\n")
        self.stream.flush()


def describe(event: Event) -> str | None:
    """A one-line text for an event, or None for events too fine-grained for a log."""
    kind = event["event"]
    if kind == "run_started":
        return (f"run {event['run_id']} started: pipeline {event['pipeline']}, "
                f"environment {event['environment']}, stages {', '.join(event['stages'])}")
    if kind == "stage_started":
        return f"stage {event['stage']} started ({event['notebook']})"
    if kind == "stage_finished":
        line = f"stage {event['stage']} {event['status']} in {event['duration_s']:.1f} s"
        return f"{line}: {event['error']}" if event.get("error") else line
    if kind == "stage_skipped":
        return f"stage {event['stage']} skipped: {event['reason']}"
    if kind == "warning":
        return f"warning: {event['message']}"
    if kind == "gate_awaiting":
        return f"stage {event['stage']} awaiting approval for {event['environment']}"
    if kind == "alias_moved":
        was = f" (was v{event['from_version']})" if event.get("from_version") else ""
        return (f"alias {event['alias']} of {event['model']} now points at "
                f"v{event['to_version']}{was}")
    if kind == "deployed":
        return (f"deployed {event['model']} v{event['version']} to {event['environment']} "
                f"at {event['endpoint']}")
    if kind == "rolled_back":
        return (f"rolled back {event['environment']} from v{event['from_version']} to "
                f"v{event['to_version']}: {event['reason']}")
    if kind == "run_finished":
        return (f"run {event['run_id']} {event['status']} in {event['duration_s']:.1f} s; "
                f"archived under {event['folder']}")
    return None


def ci_log_style() -> str | None:
    """``github`` or ``gitlab`` when running there: their logs fold per stage."""
    if os.environ.get("GITHUB_ACTIONS") == "true":
        return "github"
    if os.environ.get("GITLAB_CI") == "true":
        return "gitlab"
    return None


class PlainReporter:
    """One plain line per stage-level event: for logs and CI.

    On GitHub Actions and GitLab CI each stage's lines, cell by cell, fold into a group.
    """

    def __init__(self, stream: TextIO | None = None, style: str | None = None):
        self.stream = stream or sys.stdout
        self.style = style

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def _open(self, stage: str) -> None:
        if self.style == "github":
            self._write(f"::group::stage {stage}")
        elif self.style == "gitlab":
            self._write(f"\x1b[0Ksection_start:{int(time.time())}:stage_{stage}"
                        f"[collapsed=true]\r\x1b[0Kstage {stage}")

    def _close(self, stage: str) -> None:
        if self.style == "github":
            self._write("::endgroup::")
        elif self.style == "gitlab":
            self._write(f"\x1b[0Ksection_end:{int(time.time())}:stage_{stage}\r\x1b[0K")

    def __call__(self, event: Event) -> None:
        kind = event["event"]
        if kind == "stage_started":
            self._open(event["stage"])
        if kind == "cell" and self.style:
            self._write(f"  cell {event['index'] + 1}/{event['total']}: {event['source']}")
        text = describe(event)
        if text is not None:
            self._write(f"[{event['time'][11:19]}] {text}")
        if kind == "stage_finished":
            self._close(event["stage"])


class LiveReporter(AbstractContextManager):
    """A live rich table of stages, their status, elapsed time and the current cell."""

    STYLES = {"pending": "dim", "running": "bold yellow", "succeeded": "green",
              "failed": "bold red", "skipped": "dim", "awaiting_approval": "bold magenta"}

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.rows: dict[str, dict[str, Any]] = {}
        self.live = Live(self._table(), console=self.console, refresh_per_second=4,
                         get_renderable=self._table)

    def __enter__(self) -> LiveReporter:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(*exc)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(expand=False)
        for column in ("stage", "status", "time", "current cell"):
            table.add_column(column)
        for name, row in self.rows.items():
            elapsed = row.get("duration_s")
            if elapsed is None and row.get("start"):
                elapsed = time.monotonic() - row["start"]
            status = row["status"]
            table.add_row(name, f"[{self.STYLES[status]}]{status}[/]",
                          f"{elapsed:.1f} s" if elapsed is not None else "",
                          row.get("cell", ""))
        return table

    def __call__(self, event: Event) -> None:
        kind = event["event"]
        if kind == "run_started":
            done = event.get("statuses", {})
            self.rows = {name: {"status": done.get(name, "pending")} for name in event["stages"]}
        elif kind == "stage_started":
            self.rows[event["stage"]] = {"status": "running", "start": time.monotonic()}
        elif kind == "cell":
            self.rows[event["stage"]]["cell"] = (
                f"{event['index'] + 1}/{event['total']} {event['source'][:50]}")
        elif kind == "stage_finished":
            row = self.rows[event["stage"]]
            row.update(status=event["status"], duration_s=event["duration_s"],
                       cell=(event.get("error") or "")[:80])
        elif kind == "stage_skipped":
            self.rows[event["stage"]] = {"status": "skipped", "cell": event["reason"]}
        elif kind == "gate_awaiting":
            self.rows[event["stage"]] = {"status": "awaiting_approval",
                                         "cell": f"needs approval for {event['environment']}"}
        elif kind == "alias_moved" or kind == "run_finished":
            self.console.print(describe(event))
