"""Load-generator ceiling and local-target deploy time, as ratios measured in the same run.

Usage: ``.venv/bin/python benchmarks/operations.py [--rounds N] [--seconds S] [--json-out P]``.

* **Generator ceiling**: ``workbench.operations.loadtest`` (aiohttp, closed model, 64 clients)
  pinned to CPU 0 against a trivial aiohttp endpoint (``tests/tools/toy_endpoint.py``) pinned
  to CPU 1: requests per second on one core. Then the same generator against a real model
  server of a registered scikit-learn model, directly and through the environment's proxy.
  The headroom (ceiling / model-server throughput) says whether the generator could be the
  bottleneck in a load test here.
* **Deploy time**: a fresh ``workbench.deploy.local.serve`` (model server, ``/model`` version
  check, proxy) until it returns, against a plain ``mlflow models serve`` until its first
  ``/ping`` answers; both then answer one prediction. And a redeploy (new server beside the
  old one, switch, drain, stop) of a running endpoint. Variants alternate order per round.

The last line of stdout is the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
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

from workbench.config import LoadProfile, load_config  # noqa: E402
from workbench.deploy import local  # noqa: E402
from workbench.operations.loadtest import run_load  # noqa: E402
from workbench.project import Project  # noqa: E402
from workbench.registry.store import resolve  # noqa: E402

MODEL = "breast-cancer-classifier"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ping(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if local.ping(url, 1.0):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{url} never answered /ping")


def predict(url: str, body: bytes) -> None:
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200


def pinned(cpu: int) -> Any:
    def pin() -> None:
        if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > cpu:
            os.sched_setaffinity(0, {cpu})
    return pin


def generator_figures(seconds: float, body: bytes, model_url: str, proxy_url: str
                      ) -> dict[str, Any]:
    port = free_port()
    toy = subprocess.Popen([sys.executable, str(REPO / "tests/tools/toy_endpoint.py"),
                            str(port)], preexec_fn=pinned(1))  # noqa: PLW1509
    try:
        wait_ping(f"http://127.0.0.1:{port}")
        pinned(0)()
        profile = LoadProfile(concurrency=64, duration=f"{seconds}s", warmup="1s")
        ceiling = run_load(f"http://127.0.0.1:{port}/x", body, profile).summary()
    finally:
        toy.terminate()
        toy.wait(10)
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    profile = LoadProfile(concurrency=8, duration=f"{seconds}s", warmup="1s")
    direct = run_load(f"{model_url}/invocations", body, profile).summary()
    proxied = run_load(f"{proxy_url}/invocations", body, profile).summary()
    return {"ceiling_rps_one_core": ceiling["throughput_rps"],
            "ceiling_p50_ms": ceiling["p50_ms"], "ceiling_errors": ceiling["errors"],
            "model_server_rps": direct["throughput_rps"], "model_server_p50_ms":
            direct["p50_ms"], "through_proxy_rps": proxied["throughput_rps"],
            "through_proxy_p50_ms": proxied["p50_ms"],
            "headroom": round(ceiling["throughput_rps"] / max(direct["throughput_rps"], 1e-9),
                              1),
            "proxy_p50_overhead_ms": round(proxied["p50_ms"] - direct["p50_ms"], 3)}


def plain_mlflow_serve(project: Project, tracking_uri: str, body: bytes) -> tuple[float, float]:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                                f"models:/{MODEL}/1", "--env-manager", "local", "-h",
                                "127.0.0.1", "-p", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        wait_ping(f"http://127.0.0.1:{port}")
        ready = time.perf_counter() - started
        predict(f"http://127.0.0.1:{port}", body)
        return ready, time.perf_counter() - started
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def workbench_serve(project: Project, tracking_uri: str, body: bytes) -> tuple[float, float]:
    port = free_port()
    started = time.perf_counter()
    server = local.serve(project, "bench", port, MODEL, "1", tracking_uri)
    ready = time.perf_counter() - started
    try:
        predict(server.url, body)
        return ready, time.perf_counter() - started
    finally:
        local.stop(project, "bench")


REDEPLOY_GOAL_S = 2.0  # a new version on a running local endpoint, the fork server warm


def wait_for_forks(project: Project, environment: str, timeout: float = 120.0) -> bool:
    """Whether the endpoint's model-server fork server accepts connections within
    ``timeout`` (it warms up in the background after an endpoint's first redeploy)."""
    path = local.forks_socket(project, environment)
    deadline = time.monotonic() + timeout
    while path is not None and time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return True
            except OSError:
                time.sleep(0.1)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="wb-bench-ops-"))
    shutil.copytree(REPO / "configs", root / "configs")
    for name in ("MLFLOW_TRACKING_URI", "WORKBENCH_PROJECT"):
        os.environ.pop(name, None)
    subprocess.run([sys.executable, str(REPO / "tests/tools/register_versions.py"), str(root),
                    "1"], check=True, stdout=subprocess.DEVNULL)
    project = Project(root)
    tracking_uri = resolve(project, load_config(project.configs).pipeline.mlflow).tracking_uri
    from workbench.datasets import load_split

    _, X_test, _, _ = load_split("breast_cancer", 0.25, 0)
    body = json.dumps({"dataframe_split": X_test.head(5).to_dict(orient="split",
                                                                 index=False)}).encode()
    plain: list[tuple[float, float]] = []
    ours: list[tuple[float, float]] = []
    for round_ in range(args.rounds):
        order = [plain_mlflow_serve, workbench_serve]
        for variant in order if round_ % 2 == 0 else order[::-1]:
            (plain if variant is plain_mlflow_serve else ours).append(
                variant(project, tracking_uri, body))
    server = local.serve(project, "bench", free_port(), MODEL, "1", tracking_uri)
    try:
        started = time.perf_counter()
        server = local.serve(project, "bench", server.port, MODEL, "1", tracking_uri)
        redeploy_s = time.perf_counter() - started
        # That redeploy started the endpoint's fork server; once it listens, a redeploy forks
        # a warm model server instead of starting Python and MLflow (the "deploy in 2 s" goal).
        forks_ready = wait_for_forks(project, "bench")
        started = time.perf_counter()
        server = local.serve(project, "bench", server.port, MODEL, "1", tracking_uri)
        redeploy_forked_s = time.perf_counter() - started if forks_ready else None
        generator = generator_figures(args.seconds, body, server.backend_url, server.url)
    finally:
        local.stop(project, "bench")
        shutil.rmtree(root, ignore_errors=True)
    median = statistics.median
    figures = {
        "rounds": args.rounds,
        "deploy_ready_s": {"mlflow_models_serve": round(median(p[0] for p in plain), 2),
                           "workbench_local": round(median(o[0] for o in ours), 2)},
        "deploy_first_prediction_s": {"mlflow_models_serve": round(median(p[1] for p in plain),
                                                                   2),
                                      "workbench_local": round(median(o[1] for o in ours), 2)},
        "redeploy_s": round(redeploy_s, 2),
        "redeploy_forked_s": None if redeploy_forked_s is None else round(redeploy_forked_s, 2),
        **generator,
    }
    figures["deploy_ratio"] = round(figures["deploy_first_prediction_s"]["workbench_local"]
                                    / figures["deploy_first_prediction_s"]
                                    ["mlflow_models_serve"], 3)
    for key, value in figures.items():
        print(f"{key:28} {value}" + (f"   (goal <= {REDEPLOY_GOAL_S:g} s)"
                                     if key == "redeploy_forked_s" else ""))
    line = json.dumps(figures)
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2) + "\n")
    print(line)


if __name__ == "__main__":
    main()
