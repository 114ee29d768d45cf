"""The endpoint's inference log: sampled requests and their predictions, written off the
request path.

The proxy offers each answered ``/invocations`` request to :class:`InferenceLog`; what a
request pays is one random draw and one non-blocking queue put (a full queue drops the sample
and counts it), never a disk write. A background task takes the samples in batches, drops the
configured columns (with none to drop, the line holds the request and answer as they were,
unparsed), replaces the value of every secret of the pipeline by its marker, and appends one
JSON line per request to ``<dir>/<version>.jsonl``; before the file would pass ``max_bytes``
it becomes ``<version>.1.jsonl`` (one older file kept), so a version's log stays within twice
that size.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

QUEUE = 5000  # samples waiting to be written; more are dropped, counted in ``dropped``
BATCH = 500  # samples written per thread hop at most
GATHER_S = 0.05  # how long the writer lets samples gather before a batch
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


@functools.lru_cache(maxsize=8)
def _secrets(names: tuple[str, ...]) -> Any:
    """The values of the pipeline's secrets in this process's environment (the deploying
    kernel's, which the proxy inherits), read once."""
    from workbench.audit.redact import SecretError, Secrets

    try:
        return Secrets.from_environment(names)
    except SecretError:  # a secret too short to tell apart: the stages refuse to run with it
        return Secrets({})


def _redacted(text: str, names: tuple[str, ...]) -> str:
    """``text`` with every secret's value (as written, and as JSON escapes it) replaced by
    its marker: a client that sends a secret never gets it written to the log."""
    secrets = _secrets(names) if names else None
    if not secrets:
        return text
    for name, value in secrets.values.items():
        for form in {value, json.dumps(value)[1:-1]}:
            text = text.replace(form, secrets.marker(name))
    return text


def _raw_line(body: bytes, answer: bytes, at: float) -> str:
    """A log line holding the request and the answer as they were (both JSON the model server
    read and wrote): nothing to parse on the way, :func:`read_lines` reads them as rows."""
    if b"\n" in body or b"\n" in answer or b"\r" in body or b"\r" in answer:
        json_body = json.dumps(json.loads(body), separators=(",", ":"))
        json_answer = json.dumps(json.loads(answer), separators=(",", ":"))
    else:
        json_body, json_answer = body.decode(), answer.decode()
    return f'{{"t":{at:.3f},"request":{json_body},"answer":{json_answer}}}\n'


class InferenceLog:
    """Samples of one endpoint's answered requests, written by a background task."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[dict[str, Any], str, bytes, bytes, float]] = \
            asyncio.Queue(QUEUE)
        self.dropped = 0
        self.written = 0

    def offer(self, settings: dict[str, Any], version: str, body: bytes, answer: bytes) -> None:
        """Called on the request path: a draw and a put, nothing more."""
        # sampling, not security: the standard generator is what it needs
        if random.random() >= float(settings.get("sample", 1.0)):  # nosec B311
            return
        try:
            self.queue.put_nowait((settings, version, body, answer, time.time()))
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        """Write what is offered, in batches (one thread hop and one append per file each),
        until cancelled."""
        while True:
            batch = [await self.queue.get()]
            await asyncio.sleep(GATHER_S)  # let a busy endpoint's samples gather into a batch
            while len(batch) < BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                await asyncio.to_thread(self._write, batch)
            except OSError:
                self.dropped += len(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()

    def _write(self, batch: list[tuple[dict[str, Any], str, bytes, bytes, float]]) -> None:
        lines: dict[tuple[str, str, int], list[str]] = {}
        for settings, version, body, answer, at in batch:
            try:
                text = _raw_line(body, answer, at) if not settings.get("drop") else \
                    json.dumps(line_of(body, answer, frozenset(settings["drop"]), at),
                               separators=(",", ":"), default=str) + "\n"
            except (ValueError, TypeError, AttributeError):
                self.dropped += 1  # an unparseable request is not logged
                continue
            text = _redacted(text, tuple(settings.get("secrets", ())))
            key = (str(settings["dir"]), version, int(settings.get("max_bytes", 50_000_000)))
            lines.setdefault(key, []).append(text)
        for (folder, version, limit), texts in lines.items():
            self._append(Path(folder), version, limit, texts)

    def _append(self, folder: Path, version: str, limit: int, texts: list[str]) -> None:
        """Append ``texts`` to the version's file, rotating it first when they would not fit:
        the file never passes ``limit`` bytes (a line longer than that is dropped)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{version}.jsonl"
        size = path.stat().st_size if path.exists() else 0
        pending: list[str] = []
        for text in texts:
            length = len(text.encode())
            if length > limit:
                self.dropped += 1
                continue
            if size + length > limit:
                self._flush(path, pending)
                pending, size = [], 0
                os.replace(path, folder / f"{version}.1.jsonl")
            pending.append(text)
            size += length
        self._flush(path, pending)

    def _flush(self, path: Path, texts: list[str]) -> None:
        if texts:
            with path.open("a", encoding="utf-8") as out:
                out.write("".join(texts))
            self.written += len(texts)


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
                if float(line.get("t", 0)) < since:
                    continue
                if "request" in line:  # written as it came: read as rows now
                    columns, rows = rows_of(line["request"])
                    answer = line.get("answer")
                    line = {"t": line["t"], "columns": columns, "rows": rows,
                            "predictions": answer.get("predictions", [])
                            if isinstance(answer, dict) else []}
                yield line
