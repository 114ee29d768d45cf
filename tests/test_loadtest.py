"""The load generator and SLO checks against a stand-in endpoint on 127.0.0.1 (no kernels)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import REPO, free_port

from workbench.config import LoadProfile, MonitorPolicy, Slo
from workbench.operations import loadtest, monitor

TOY = REPO / "tests" / "tools" / "toy_endpoint.py"


@contextmanager
def toy_endpoint(*args: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(TOY), str(port), *args])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/stats", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def answered(url: str) -> int:
    return json.loads(urllib.request.urlopen(f"{url}/stats", timeout=5).read())["requests"]


def test_open_model_holds_the_rate_and_counts_every_request() -> None:
    with toy_endpoint() as url:
        result = loadtest.run_load(f"{url}/invocations", b"{}",
                                   LoadProfile(rate=100, duration="2s", warmup="0.5s"))
        served = answered(url)
    summary = result.summary()
    assert summary["requests"] == 200  # exactly rate x duration, whatever the server does
    assert served == 250  # the 50 warm-up requests were sent too, and not counted
    assert summary["errors"] == 0 and summary["error_rate"] == 0.0
    assert summary["throughput_rps"] == 100.0
    assert 0 < summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert [s.at_s for s in result.samples] == sorted(s.at_s for s in result.samples)


def test_latency_counts_queueing_on_a_slow_server() -> None:
    """Open model: a server slower than the rate shows its queueing in the latencies."""
    with toy_endpoint("--delay-ms", "40") as url:
        closed = loadtest.run_load(f"{url}/x", b"{}", LoadProfile(concurrency=2,
                                                                 duration="1s", warmup="0s"))
    summary = closed.summary()
    assert summary["p50_ms"] >= 40
    # two clients, 40 ms each: at most ~50 requests a second
    assert summary["throughput_rps"] <= 55


def test_errors_are_counted_and_named() -> None:
    with toy_endpoint("--fail-every", "4") as url:
        result = loadtest.run_load(f"{url}/x", b"{}", LoadProfile(rate=80, duration="1s",
                                                                   warmup="0s"))
    summary = result.summary()
    assert summary["requests"] == 80 and summary["errors"] == 20
    assert summary["error_rate"] == 0.25 and summary["first_error"] == "HTTP 500"


def test_unreachable_endpoint_is_all_errors() -> None:
    result = loadtest.run_load(f"http://127.0.0.1:{free_port()}/x", b"{}",
                               LoadProfile(rate=20, duration="0.5s", warmup="0s"))
    summary = result.summary()
    assert summary["requests"] == 10 and summary["error_rate"] == 1.0
    assert summary["p95_ms"] is None and "Connect" in summary["first_error"]


def test_slo_checks_give_the_numbers() -> None:
    summary = {"p50_ms": 10.0, "p95_ms": 120.0, "p99_ms": 300.0, "error_rate": 0.02,
               "throughput_rps": 40.0}
    slo = Slo(p95_ms=100, p99_ms=500, max_error_rate=0.01, min_throughput_rps=50,
              max_latency_ratio=1.5)
    checks, ratio = loadtest.evaluate_slo(summary, slo, baseline={"p95_ms": 60.0})
    assert ratio == 2.0
    failed = {c.name: (c.observed, c.threshold) for c in checks if not c.passed}
    assert failed == {"p95_ms": (120.0, 100), "error_rate": (0.02, 0.01),
                      "throughput_rps": (40.0, 50), "latency_ratio_p95": (2.0, 1.5)}
    with pytest.raises(loadtest.SloBreach) as breach:
        loadtest.enforce("qa", checks)
    message = str(breach.value)
    assert message.startswith("qa load test breached its SLO")
    assert "p95_ms 120 (SLO <= 100): BREACH" in message
    assert "throughput_rps 40 (SLO >= 50): BREACH" in message
    assert "p99_ms" not in message  # met objectives are not reported as breaches
    # no baseline (a first release): the ratio is not checked
    checks, ratio = loadtest.evaluate_slo({**summary, "error_rate": 0.0, "p95_ms": 50.0,
                                           "throughput_rps": 60.0}, slo, baseline=None)
    assert ratio is None and all(c.passed for c in checks)
    loadtest.enforce("qa", checks)


def test_percentiles_interpolate() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadtest.percentile(values, 50) == 50.5
    assert loadtest.percentile(values, 95) == pytest.approx(95.05)
    assert loadtest.percentile([], 95) is None


def test_monitor_flags_a_failing_endpoint() -> None:
    with toy_endpoint() as url:
        watched = monitor.watch(url, "1", b"{}", MonitorPolicy(window="1s", interval="0.2s"))
    summary = watched.summary()
    assert summary["probes"] == 5
    # the toy's /model names no version: every probe fails the served-version check
    assert summary["error_rate"] == 1.0
    assert summary["first_error"] == "serves version None, expected 1"
    found = monitor.breaches(summary, MonitorPolicy(max_error_rate=0.1, max_p95_ms=100))
    assert [b["metric"] for b in found] == ["error_rate", "p95_ms"]
    assert "error_rate 1.0 > 0.1" in monitor.describe(found)
