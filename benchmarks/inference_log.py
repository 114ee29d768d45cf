"""What the endpoint's inference log costs a request, as ratios in one run.

Usage: ``.venv/bin/python benchmarks/inference_log.py [--rounds N] [--seconds S]
[--max-kb K] [--json-out P]``.

The environment's proxy (``workbench.deploy.proxy``) in front of a stand-in model endpoint
(``tests/tools/toy_endpoint.py``, pinned to CPU 1, so the proxy's own cost is what shows), driven
by the load generator (closed model, 16 clients, requests of 20 rows that are not marked as
the workbench's own) pinned to CPU 0. Each round measures the proxy with its route's log off
and on (sample 1.0: every request logged), alternating which goes first. Figures: p50, p99 and
throughput with the log on over off (medians of the rounds), requests logged and dropped, and
the log's size on disk against its configured bound (``max_bytes`` per version, one older file
kept: at most twice that).

The last line of stdout is the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workbench.config import LoadProfile  # noqa: E402
from workbench.operations.loadtest import run_load  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_answer(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


def pinned(cpu: int) -> Any:
    def pin() -> None:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
            os.sched_setaffinity(0, {cpu})
    return pin


def body_of(rows: int) -> bytes:
    columns = [f"feature_{i}" for i in range(10)]
    data = [[round(0.1 * r + i, 3) for i in range(10)] for r in range(rows)]
    return json.dumps({"dataframe_split": {"columns": columns, "data": data}}).encode()


def measure(proxy_url: str, body: bytes, seconds: float) -> dict[str, Any]:
    profile = LoadProfile(concurrency=16, duration=f"{seconds}s", warmup="1s")
    return run_load(f"{proxy_url}/invocations", body, profile, synthetic=False).summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-kb", type=float, default=512.0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="wb-bench-log-"))
    backend_port, proxy_port = free_port(), free_port()
    route = work / "route.json"
    log_dir = work / "inference"
    max_bytes = int(args.max_kb * 1024)
    body = body_of(20)
    backend = subprocess.Popen([sys.executable, str(REPO / "tests/tools/toy_endpoint.py"),
                                str(backend_port)], preexec_fn=pinned(1))  # noqa: PLW1509
    route.write_text(json.dumps({"port": backend_port, "version": "1"}))
    proxy = subprocess.Popen([sys.executable, "-m", "workbench.deploy.proxy", "--port",
                              str(proxy_port), "--route", str(route)],
                             preexec_fn=pinned(1))  # noqa: PLW1509
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    rounds: list[dict[str, Any]] = []
    try:
        wait_answer(f"http://127.0.0.1:{backend_port}/stats")
        wait_answer(f"{proxy_url}/-/route")
        pinned(0)()
        for index in range(args.rounds):
            found: dict[str, Any] = {}
            for mode in (("off", "on") if index % 2 == 0 else ("on", "off")):
                routed = {"port": backend_port, "version": "1"}
                if mode == "on":
                    routed["log"] = {"dir": str(log_dir), "sample": 1.0,
                                     "max_bytes": max_bytes, "drop": []}
                tmp = route.with_suffix(".tmp")
                tmp.write_text(json.dumps(routed))
                os.replace(tmp, route)
                found[mode] = measure(proxy_url, body, args.seconds)
            rounds.append(found)
            print(f"round {index + 1}: off p50 {found['off']['p50_ms']} ms p99 "
                  f"{found['off']['p99_ms']} ms {found['off']['throughput_rps']:.0f} rps; on "
                  f"p50 {found['on']['p50_ms']} ms p99 {found['on']['p99_ms']} ms "
                  f"{found['on']['throughput_rps']:.0f} rps", flush=True)
        state = json.loads(urllib.request.urlopen(f"{proxy_url}/-/route", timeout=10).read())
    finally:
        for process in (proxy, backend):
            process.terminate()
            process.wait(10)
    size = sum(p.stat().st_size for p in log_dir.glob("*.jsonl")) if log_dir.is_dir() else 0

    def ratio(key: str) -> float:
        return round(statistics.median(r["on"][key] / max(r["off"][key], 1e-9)
                                       for r in rounds), 3)

    figures = {
        "rounds": args.rounds, "seconds": args.seconds, "rows_per_request": 20,
        "p50_ratio_on_off": ratio("p50_ms"), "p99_ratio_on_off": ratio("p99_ms"),
        "throughput_ratio_on_off": ratio("throughput_rps"),
        "p50_ms_off": statistics.median(r["off"]["p50_ms"] for r in rounds),
        "p50_ms_on": statistics.median(r["on"]["p50_ms"] for r in rounds),
        "logged": state.get("logged"), "dropped": state.get("log_dropped"),
        "log_bytes": size, "log_bound_bytes": 2 * max_bytes,
        "log_within_bound": size <= 2 * max_bytes,
    }
    print(json.dumps(figures))
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
