"""The endpoint proxy's cost with progressive delivery, as ratios measured in the same run.

Usage: ``.venv/bin/python benchmarks/traffic.py [--rounds N] [--seconds S] [--json-out P]``.

Two stand-in model servers (``tests/tools/toy_endpoint.py`` answering after ``--delay-ms``, a
model server's work) and the real proxy (``python -m workbench.deploy.proxy``). The load
generator (``workbench.operations.loadtest``) drives each variant for S seconds as fast as 8
clients go (throughput), then S seconds at a fixed ``--rate`` (latency, below saturation), in
an order that rotates per round:

* ``direct``: straight to the serving model server;
* ``proxy``: through the proxy, one backend (what every endpoint does today);
* ``split``: through the proxy with a canary at 50 % (the second server);
* ``mirror``: through the proxy with the second server as a shadow (each request copied to it
  after the client is answered, the answers compared).

Printed per variant: throughput, p50 and p99; then the proxy's added p50/p99 against direct,
and the goal of the shadow: a client's p50 and p99 with a shadow attached within 10 % of the
proxy's without (``SHADOW_LATENCY_GOAL``). The last line of stdout is the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.operations import free_port, wait_ping  # noqa: E402
from workbench.config import LoadProfile  # noqa: E402
from workbench.operations.loadtest import run_load  # noqa: E402

SHADOW_LATENCY_GOAL = 1.10  # mirror p50 (and p99) / proxy p50 (and p99)
VARIANTS = ("direct", "proxy", "split", "mirror")
BODY = json.dumps({"dataframe_split": {"columns": ["x"], "data": [[0.5]]}}).encode()


def start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def measure(url: str, seconds: float, rate: float) -> dict[str, float]:
    """Throughput as fast as 8 clients go; latency at a fixed ``rate`` below saturation (a
    saturated proxy's latency is its queue, not the cost of a request)."""
    closed = LoadProfile(concurrency=8, duration=f"{seconds}s", warmup="1s")
    most = run_load(f"{url}/invocations", BODY, closed).summary()
    opened = LoadProfile(rate=rate, duration=f"{seconds}s", warmup="1s")
    steady = run_load(f"{url}/invocations", BODY, opened).summary()
    return {"rps": most["throughput_rps"], "p50_ms": steady["p50_ms"],
            "p99_ms": steady["p99_ms"], "errors": most["errors"] + steady["errors"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second for "
                        "the latency figures (open model)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="workbench-traffic-"))
    serving, other, proxy = free_port(), free_port(), free_port()
    route = folder / "route.json"
    routes = {"proxy": {"port": serving, "version": "1"},
              "split": {"port": serving, "version": "1",
                        "canary": {"port": other, "version": "2", "weight": 50}},
              "mirror": {"port": serving, "version": "1",
                         "shadow": {"port": other, "version": "2"}}}
    route.write_text(json.dumps(routes["proxy"]))
    toy = str(REPO / "tests" / "tools" / "toy_endpoint.py")
    processes = [start([sys.executable, toy, str(port), "--delay-ms", str(args.delay_ms)],
                       folder / f"toy-{port}.log") for port in (serving, other)]
    processes.append(start([sys.executable, "-m", "workbench.deploy.proxy", "--port",
                            str(proxy), "--route", str(route)], folder / "proxy.log"))
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    try:
        for port in (serving, other, proxy):
            wait_ping(f"http://127.0.0.1:{port}")
        for number in range(args.rounds):
            order = VARIANTS[number % 4:] + VARIANTS[:number % 4]
            for variant in order:
                if variant != "direct":
                    route.write_text(json.dumps({**routes[variant], "window": f"{number}"
                                                 f"-{variant}"}))
                    _await_route(proxy, f"{number}-{variant}")
                port = serving if variant == "direct" else proxy
                results[variant].append(measure(f"http://127.0.0.1:{port}", args.seconds,
                                                args.rate))
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
    figures = report(results)
    for variant in VARIANTS:
        row = figures[variant]
        print(f"{variant:>7}: {row['rps']:8.0f} req/s  p50 {row['p50_ms']:6.2f} ms  "
              f"p99 {row['p99_ms']:6.2f} ms  errors {row['errors']:.0f}")
    print(f"proxy adds p50 {figures['proxy_added_p50_ms']:+.2f} ms, p99 "
          f"{figures['proxy_added_p99_ms']:+.2f} ms; split adds p50 "
          f"{figures['split_added_p50_ms']:+.2f} ms over the proxy")
    print(f"shadow attached / not: p50 {figures['mirror_p50_ratio']:.3f}, p99 "
          f"{figures['mirror_p99_ratio']:.3f} (goal <= {SHADOW_LATENCY_GOAL})")
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))


def report(results: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """The median of each measure over the rounds, and the ratios."""
    figures: dict[str, Any] = {variant: {key: statistics.median(r[key] for r in rounds)
                                         for key in rounds[0]}
                               for variant, rounds in results.items()}
    direct, proxy = figures["direct"], figures["proxy"]
    figures.update({
        "proxy_added_p50_ms": round(proxy["p50_ms"] - direct["p50_ms"], 3),
        "proxy_added_p99_ms": round(proxy["p99_ms"] - direct["p99_ms"], 3),
        "split_added_p50_ms": round(figures["split"]["p50_ms"] - proxy["p50_ms"], 3),
        "mirror_p50_ratio": round(figures["mirror"]["p50_ms"] / proxy["p50_ms"], 3),
        "mirror_p99_ratio": round(figures["mirror"]["p99_ms"] / proxy["p99_ms"], 3),
        "shadow_latency_goal": SHADOW_LATENCY_GOAL})
    return figures


def _await_route(port: int, window: str) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/route",  # nosec B310
                                    timeout=5) as answer:
            if json.loads(answer.read()).get("stats", {}).get("window") == window:
                return
        time.sleep(0.02)
    raise RuntimeError(f"the proxy never took route {window}")


if __name__ == "__main__":
    main()
