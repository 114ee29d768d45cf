"""Longest test files first: a pytest plugin for the slow tier's pytest-xdist workers.

With ``--dist loadfile --no-loadscope-reorder``, xdist hands out whole test files in the order
they were collected. Collected in the order of ``tests/durations.json`` (seconds per file,
measured), the longest files start at once and the short ones fill the workers' last minutes,
instead of one long file starting last and running alone (longest-processing-time-first
scheduling). A file the measurement does not know goes first, as if it were long.

``WORKBENCH_TEST_DURATIONS=PATH`` writes this run's seconds per file to ``PATH`` in the same
shape (setup, call and teardown of each test), to refresh ``tests/durations.json``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
OUTPUT_VARIABLE = "WORKBENCH_TEST_DURATIONS"


def measured_seconds(path: Path = DURATIONS) -> dict[str, float]:
    """Seconds per test file (``tests/test_x.py``), from the measurement on record."""
    try:
        seconds = json.loads(path.read_text(encoding="utf-8"))["seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {str(name): float(value) for name, value in seconds.items()
            if isinstance(value, (int, float))}


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def longest_files_first(items: list[Any], seconds: dict[str, float]) -> list[Any]:
    """``items`` grouped by file, the files in decreasing measured seconds (unknown files
    first), each file's tests in their own order; stable otherwise."""
    order: dict[str, int] = {}
    for item in items:
        order.setdefault(file_of(item.nodeid), len(order))
    ranked = sorted(order, key=lambda name: (-seconds.get(name, float("inf")), order[name]))
    rank = {name: position for position, name in enumerate(ranked)}
    return sorted(items, key=lambda item: rank[file_of(item.nodeid)])


class FileDurations:
    """Adds up the seconds of each test file's reports (in the controller, when xdist runs)."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[file_of(report.nodeid)] += report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput"):  # an xdist worker: the controller writes
            return
        ranked = dict(sorted(((k, round(v, 1)) for k, v in self.seconds.items()),
                             key=lambda kv: -kv[1]))
        self.output.write_text(json.dumps({"measured": "seconds per test file",
                                           "seconds": ranked}, indent=1) + "\n",
                               encoding="utf-8")


def pytest_configure(config: pytest.Config) -> None:
    output = os.environ.get(OUTPUT_VARIABLE)
    if output:
        config.pluginmanager.register(FileDurations(Path(output)), "workbench-file-durations")


def pytest_collection_modifyitems(config: pytest.Config, items: list[Any]) -> None:
    items[:] = longest_files_first(items, measured_seconds())
