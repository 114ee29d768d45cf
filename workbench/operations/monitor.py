"""Post-deploy monitoring: probe an endpoint for a window and judge it against thresholds.

Each probe is a health check (``/ping``), a served-version check (``/model``) and a real
prediction (``/invocations``); any failed part counts the probe as an error.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from workbench.config import MonitorPolicy, parse_duration
from workbench.deploy.inference_log import SYNTHETIC
from workbench.deploy.local import http_url
from workbench.operations.loadtest import percentile


@dataclass(frozen=True)
class Probe:
    at_s: float
    ok: bool
    latency_ms: float | None
    error: str | None = None


@dataclass
class MonitorResult:
    url: str
    expected_version: str
    probes: list[Probe] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        latencies = [p.latency_ms for p in self.probes if p.ok and p.latency_ms is not None]
        errors = [p for p in self.probes if not p.ok]
        count = len(self.probes)
        p95 = percentile(latencies, 95)
        return {"url": self.url, "expected_version": self.expected_version, "probes": count,
                "errors": len(errors), "error_rate": round(len(errors) / count, 6) if count
                else 1.0, "p95_ms": None if p95 is None else round(p95, 3),
                "first_error": errors[0].error if errors else None}


def _request(url: str, body: bytes | None, timeout: float) -> bytes:
    request = urllib.request.Request(http_url(url), data=body, method="POST" if body else "GET",
                                     headers={"Content-Type": "application/json",
                                              **SYNTHETIC})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # nosec B310
        return response.read()


def probe(url: str, expected_version: str, body: bytes, timeout: float = 10.0) -> Probe:
    """One probe; ``at_s`` is filled in by :func:`watch`."""
    try:
        _request(f"{url}/ping", None, timeout)
        served = json.loads(_request(f"{url}/model", None, timeout)).get("version")
        if str(served) != str(expected_version):
            return Probe(0, False, None, f"serves version {served}, expected {expected_version}")
        started = time.perf_counter()
        _request(f"{url}/invocations", body, timeout)
        return Probe(0, True, (time.perf_counter() - started) * 1000)
    except (OSError, ValueError) as exc:
        return Probe(0, False, None, f"{type(exc).__name__}: {exc}")


def watch(url: str, expected_version: str, body: bytes, policy: MonitorPolicy) -> MonitorResult:
    """Probe every ``policy.interval`` for ``policy.window``."""
    window, interval = parse_duration(policy.window), parse_duration(policy.interval)
    result = MonitorResult(url, str(expected_version))
    start = time.monotonic()
    tick = 0
    while (due := start + tick * interval) < start + window:
        time.sleep(max(0.0, due - time.monotonic()))
        sample = probe(url, expected_version, body)
        result.probes.append(Probe(round(time.monotonic() - start, 3), sample.ok,
                                   sample.latency_ms, sample.error))
        tick += 1
    return result


def breaches(summary: dict[str, Any], policy: MonitorPolicy) -> list[dict[str, Any]]:
    """Each threshold the window broke: metric, observed value, threshold."""
    found = []
    if summary["error_rate"] > policy.max_error_rate:
        found.append({"metric": "error_rate", "observed": summary["error_rate"],
                      "threshold": policy.max_error_rate})
    if policy.max_p95_ms is not None and (summary["p95_ms"] is None
                                          or summary["p95_ms"] > policy.max_p95_ms):
        found.append({"metric": "p95_ms", "observed": summary["p95_ms"],
                      "threshold": policy.max_p95_ms})
    return found


def describe(found: list[dict[str, Any]]) -> str:
    """The breaches :func:`breaches` found, as one line (``metric observed > threshold``)."""
    return "; ".join(f"{b['metric']} {b['observed']} > {b['threshold']}" for b in found)
