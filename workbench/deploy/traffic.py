"""What the endpoint's proxy measures of its traffic: per version in an analysis window
(requests, errors, latency), and a shadow's answers against the live ones.

Both are plain counters the proxy updates on its event loop (no locks needed) and reports at
``GET /-/route``; the canary's analysis and the shadow's report read them from there.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

SAMPLES = 20_000  # latencies kept per version and window (the newest)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` percentile (0-100) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Traffic:
    """One version's requests in a window."""

    requests: int = 0
    errors: int = 0  # answered 5xx, or not answered at all
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))

    def summary(self) -> dict[str, Any]:
        values = list(self.latencies_ms)
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": self.errors / self.requests if self.requests else 0.0,
                **{f"p{q}_ms": percentile(values, q) for q in (50, 95, 99)}}


class Window:
    """Requests per version since the window began."""

    def __init__(self, window_id: str) -> None:
        self.id = window_id
        self.started = time.time()
        self.versions: dict[str, Traffic] = {}

    def add(self, version: str, status: int, latency_ms: float) -> None:
        traffic = self.versions.setdefault(version, Traffic())
        traffic.requests += 1
        traffic.errors += status >= 500
        traffic.latencies_ms.append(latency_ms)

    def summary(self) -> dict[str, Any]:
        return {"window": self.id, "since": self.started,
                "versions": {v: t.summary() for v, t in self.versions.items()}}


def predictions(payload: bytes) -> list[Any] | None:
    """The flat list of predictions in a scoring answer (``{"predictions": [...]}`` or a
    bare list), or None when it is not one."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if isinstance(data, dict):
        data = data.get("predictions")
    if not isinstance(data, list):
        return None
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            flat.extend(item)
        elif isinstance(item, dict):
            flat.extend(item[k] for k in sorted(item))
        else:
            flat.append(item)
    return flat


def _number(value: Any) -> bool:
    """A regression output: a float (integers are class labels, compared for equality)."""
    return isinstance(value, float)


@dataclass
class Comparison:
    """A shadow's answers against the live ones, request by request."""

    compared: int = 0
    disagreed: int = 0  # requests with at least one differing prediction
    predictions: int = 0
    differing: int = 0  # predictions that differ (labels: not equal; floats: beyond 1e-9)
    errors: int = 0  # the shadow answered 5xx or not at all
    unreadable: int = 0  # an answer that was no list of predictions
    dropped: int = 0  # copies not sent: too many in flight
    differences: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    live_ms: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    shadow_ms: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))

    def add(self, live: bytes, live_ms: float, shadow: bytes, status: int,
            shadow_ms: float) -> None:
        self.live_ms.append(live_ms)
        if status >= 500 or status == 0:
            self.errors += 1
            return
        self.shadow_ms.append(shadow_ms)
        ours, theirs = predictions(live), predictions(shadow)
        if ours is None or theirs is None or len(ours) != len(theirs):
            self.unreadable += 1
            return
        self.compared += 1
        self.predictions += len(ours)
        differing = 0
        for a, b in zip(ours, theirs, strict=True):
            if _number(a) and _number(b):
                self.differences.append(float(b) - float(a))
                differing += abs(float(b) - float(a)) > 1e-9 * max(1.0, abs(float(a)))
            else:
                differing += a != b
        self.differing += differing
        self.disagreed += differing > 0

    def summary(self) -> dict[str, Any]:
        spread = [abs(d) for d in self.differences]
        return {
            "compared": self.compared, "disagreed": self.disagreed,
            "predictions": self.predictions, "differing": self.differing,
            "disagreement_rate": self.differing / self.predictions if self.predictions else None,
            "errors": self.errors, "unreadable": self.unreadable, "dropped": self.dropped,
            "mean_difference": sum(self.differences) / len(self.differences)
            if self.differences else None,
            "p95_abs_difference": percentile(spread, 95),
            "live_p95_ms": percentile(list(self.live_ms), 95),
            "shadow_p95_ms": percentile(list(self.shadow_ms), 95)}
