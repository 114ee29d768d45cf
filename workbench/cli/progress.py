"""Progress of a run on the command line: a live table on a terminal, plain lines off one,
JSON lines on request. Each reporter is a run listener (see :mod:`workbench.events`)."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import AbstractContextManager
from typing import Any, TextIO

from workbench.events import Event


class JsonReporter:
    """One JSON object per line, every public event including cells: for machines."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def on_event(self, event: Event) -> None:
        if event.public:
            self.stream.write(json.dumps(event.to_dict(), default=str) + "\n")
            self.stream.flush()


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

    def on_event(self, event: Event) -> None:
        if not event.public:
            return
        fields = event.to_dict()
        if event.kind == "stage_started":
            self._open(fields["stage"])
        if event.kind == "cell" and self.style:
            self._write(f"  cell {fields['index'] + 1}/{fields['total']}: {fields['source']}")
        text = event.describe()
        if text is not None:
            self._write(f"[{event.time[11:19]}] {text}")
        if event.kind == "stage_finished":
            self._close(fields["stage"])


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

    def __exit__(self, *exc: Any) -> None:
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
            table.add_row(name, f"[{self.STYLES.get(status, '')}]{status}[/]",
                          f"{elapsed:.1f} s" if elapsed is not None else "",
                          row.get("cell", ""))
        return table

    def on_event(self, event: Event) -> None:
        if not event.public:
            return
        kind, fields = event.kind, event.to_dict()
        if kind == "run_started":
            done = fields.get("statuses", {})
            self.rows = {name: {"status": done.get(name, "pending")} for name in fields["stages"]}
        elif kind == "stage_started":
            self.rows[fields["stage"]] = {"status": "running", "start": time.monotonic()}
        elif kind == "cell":
            self.rows.setdefault(fields["stage"], {"status": "running"})["cell"] = (
                f"{fields['index'] + 1}/{fields['total']} {fields['source'][:50]}")
        elif kind == "stage_finished":
            row = self.rows.setdefault(fields["stage"], {"status": "running"})
            row.update(status=fields["status"], duration_s=fields["duration_s"],
                       cell=(fields.get("error") or "")[:80])
        elif kind == "stage_skipped":
            self.rows[fields["stage"]] = {"status": "skipped", "cell": fields["reason"]}
        elif kind == "gate_awaiting":
            self.rows[fields["stage"]] = {"status": "awaiting_approval",
                                          "cell": f"needs approval for {fields['environment']}"}
        elif kind in ("alias_moved", "run_finished"):
            self.console.print(event.describe())
