"""The endpoint's inference log: sampled requests and their predictions, written off the
request path.

The proxy offers each answered ``/invocations`` request to :class:`InferenceLog`; what a
request pays is one random draw and one non-blocking queue put (a full queue drops the sample
and counts it), never a disk write. A background task parses the samples, drops the configured
columns and appends one JSON line per request to ``<dir>/<version>.jsonl``; past ``max_bytes``
the file becomes ``<version>.1.jsonl`` (one older file kept), so a version's log stays within
twice that size.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

QUEUE = 1000  # samples waiting to be written; more are dropped, counted in ``dropped``
# the header of the workbench's own traffic (smoke tests, load tests, monitor probes): never
# logged, so that synthetic requests do not pass for what the endpoint is asked
SYNTHETIC_HEADER = "X-Workbench-Synthetic"
SYNTHETIC = {SYNTHETIC_HEADER: "1"}


def rows_of(payload: Any) -> tuple[list[str], list[list[Any]]]:
    """Column names and rows of an MLflow scoring request (``dataframe_split``,
    ``dataframe_records``, ``inputs`` or ``instances``)."""
    if isinstance(payload, dict) and isinstance(payload.get("dataframe_split"), dict):
        split = payload["dataframe_split"]
        return [str(c) for c in split.get("columns", [])], list(split.get("data", []))
    records = payload.get("dataframe_records") if isinstance(payload, dict) else None
    if records is None and isinstance(payload, dict):
        records = payload.get("inputs", payload.get("instances"))
    if isinstance(records, list) and records and isinstance(records[0], dict):
        columns = list(dict.fromkeys(str(k) for r in records for k in r))
        return columns, [[r.get(c) for c in columns] for r in records]
    if isinstance(records, list):
        width = len(records[0]) if records and isinstance(records[0], list) else 1
        rows = [r if isinstance(r, list) else [r] for r in records]
        return [str(i) for i in range(width)], rows
    return [], []


def line_of(body: bytes, answer: bytes, drop: frozenset[str], at: float) -> dict[str, Any]:
    """One log line: time, the request's columns and rows without the dropped columns, the
    predictions."""
    columns, rows = rows_of(json.loads(body))
    keep = [i for i, name in enumerate(columns) if name not in drop]
    predictions = json.loads(answer).get("predictions", [])
    return {"t": round(at, 3), "columns": [columns[i] for i in keep],
            "rows": [[row[i] if i < len(row) else None for i in keep] for row in rows],
            "predictions": predictions}


class InferenceLog:
    """Samples of one endpoint's answered requests, written by a background task."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[dict[str, Any], str, bytes, bytes, float]] = \
            asyncio.Queue(QUEUE)
        self.dropped = 0
        self.written = 0

    def offer(self, settings: dict[str, Any], version: str, body: bytes, answer: bytes) -> None:
        """Called on the request path: a draw and a put, nothing more."""
        if random.random() >= float(settings.get("sample", 1.0)):  # nosec B311 - sampling
            return
        try:
            self.queue.put_nowait((settings, version, body, answer, time.time()))
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        """Write what is offered until cancelled."""
        while True:
            item = await self.queue.get()
            try:
                await asyncio.to_thread(self._write, *item)
            except (OSError, ValueError, TypeError, AttributeError):
                self.dropped += 1  # an unparseable request is not logged
            finally:
                self.queue.task_done()

    def _write(self, settings: dict[str, Any], version: str, body: bytes, answer: bytes,
               at: float) -> None:
        line = line_of(body, answer, frozenset(settings.get("drop", ())), at)
        folder = Path(settings["dir"])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{version}.jsonl"
        text = json.dumps(line, separators=(",", ":"), default=str) + "\n"
        limit = int(settings.get("max_bytes", 50_000_000))
        if path.exists() and path.stat().st_size + len(text) > limit:
            os.replace(path, folder / f"{version}.1.jsonl")
        with path.open("a", encoding="utf-8") as out:
            out.write(text)
        self.written += 1


def read_lines(folder: Path, version: str, since: float = 0.0) -> Iterator[dict[str, Any]]:
    """The logged lines of ``version`` at or after ``since`` (epoch seconds), oldest first."""
    for name in (f"{version}.1.jsonl", f"{version}.jsonl"):
        path = folder / name
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as lines:
            for raw in lines:
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # a line cut short by a crash
                if float(line.get("t", 0)) >= since:
                    yield line
