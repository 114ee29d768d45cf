"""The shared archive's cost, as ratios measured in the same run.

Usage: ``.venv/bin/python benchmarks/shared_archive.py [--rounds N] [--entries N]
[--json-out PATH]``.

An S3-protocol server on 127.0.0.1 (moto, through ``tests/tools/s3_serve.py``) holds the shared
archive. Each round runs this repository's default pipeline through dev (``workbench run
--json``: train, evaluate, register, deploy; every stage executed) twice, in fresh projects: with
the archive in ``reports/`` alone (``local``) and with ``archive.url`` on the S3 server
(``shared``), in an order that alternates per round; each project's model server is stopped
after its run. Then ``--entries`` more entries (each naming a new 4 KB file) are appended to
the last shared project's ledger, and as many to the last local one's, through
``workbench.audit.ledger.append`` in this process (append throughput, shared vs local), and
``workbench audit verify`` checks the shared project in the store (``shared``) and its cache
(``--local``), each three times. Printed: medians of the release's wall clock and their ratio
(shared / local), append and verify throughputs (entries/s, MB/s of re-hashed files) and their
ratios; the last line of stdout is the figures as JSON.

A loopback S3 emulator has none of a real bucket's latency (tens of ms per request in a
region): the ratio is the cost of the protocol and of the extra requests, not of distance.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import cli_environment, free_port, make_project, reap_servers, stop_server  # noqa: E402

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "benchmark", "AWS_SECRET_ACCESS_KEY": "benchmark",
               "AWS_DEFAULT_REGION": "us-east-1"}
VERIFY_LINE = re.compile(r"(\d+) entries, (\d+) files \(([\d.]+) MB\) in ([\d.]+) s")


def start_store(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(  # noqa: S603 - our own launcher of moto's server
            [sys.executable, str(REPO / "tests" / "tools" / "s3_serve.py"), str(port)],
            stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **CREDENTIALS})
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="benchmark", aws_secret_access_key="benchmark")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.list_buckets()
            break
        except Exception:  # noqa: BLE001 - not listening yet
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"the S3 server did not start: {log.read_text()}") from None
            time.sleep(0.2)
    return process, endpoint


def environment(endpoint: str) -> dict[str, str]:
    return {**cli_environment(), **CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint}


def release(parent: Path, url: str | None, env: dict[str, str]) -> tuple[float, Path]:
    """Wall clock of ``workbench run`` through dev in a fresh project (shared when ``url``)."""
    root, ports = make_project(parent)
    if url:
        path = root / "configs" / "pipeline.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["archive"] = {"url": url}
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    try:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "workbench", "--project", str(root), "run",
                               "--json", "--no-cache"], capture_output=True, text=True,
                              env=env, cwd=root, timeout=1800, check=False)
        took = time.perf_counter() - started
        if done.returncode not in (0, 3):
            raise SystemExit(f"workbench run exited {done.returncode}:\n{done.stderr[-3000:]}")
        return took, root
    finally:
        stop_server(root)
        reap_servers(ports)


def verify(root: Path, env: dict[str, str], local: bool) -> dict[str, float]:
    command = [sys.executable, "-m", "workbench", "--project", str(root), "audit", "verify"]
    done = subprocess.run(command + (["--local"] if local else []), capture_output=True,
                          text=True, env=env, cwd=root, timeout=600, check=False)
    found = VERIFY_LINE.search(done.stdout)
    if done.returncode != 0 or not found:
        raise SystemExit(f"audit verify failed:\n{done.stdout}\n{done.stderr[-2000:]}")
    entries, files, megabytes, seconds = found.groups()
    return {"entries": int(entries), "files": int(files), "mb": float(megabytes),
            "seconds": float(seconds)}


def append_many(root: Path, count: int, env: dict[str, str]) -> float:
    """Append ``count`` entries (each with a new 4 KB file) to ``root``'s ledger; entries/s."""
    from workbench.audit import ledger

    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    reports = root / "reports"
    folder = reports / "bench"
    folder.mkdir(exist_ok=True)
    started = time.perf_counter()
    for number in range(count):
        path = folder / f"{number:06d}.txt"
        path.write_bytes(os.urandom(2048).hex().encode())
        ledger.append(reports, "benchmark", actor=None, run_id=None, data={"n": number},
                      files=[path])
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="workbench-shared-"))
    store, endpoint = start_store(scratch / "s3.log")
    env = environment(endpoint)
    times: dict[str, list[float]] = {"local": [], "shared": []}
    last: dict[str, Path] = {}
    try:
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="benchmark",
                     aws_secret_access_key="benchmark").create_bucket(Bucket=bucket)
        for index in range(args.rounds):
            order = ("local", "shared") if index % 2 == 0 else ("shared", "local")
            for kind in order:
                url = f"s3://{bucket}/round-{index}" if kind == "shared" else None
                took, root = release(scratch / f"{kind}-{index}", url, env)
                times[kind].append(took)
                last[kind] = root
                print(f"round {index + 1}: {kind} {took:.1f} s", file=sys.stderr, flush=True)
        appends = {kind: append_many(last[kind], args.entries, env)
                   for kind in ("local", "shared")}
        checks = {kind: [verify(last["shared"], env, kind == "local") for _ in range(3)]
                  for kind in ("local", "shared")}
    finally:
        store.terminate()
        store.wait(timeout=30)
    local, shared = statistics.median(times["local"]), statistics.median(times["shared"])
    figures: dict[str, Any] = {"release_local_s": local, "release_shared_s": shared,
                               "release_shared_over_local": shared / local,
                               "load": os.getloadavg()[0],
                               "append_local_per_s": appends["local"],
                               "append_shared_per_s": appends["shared"]}
    for kind, runs in checks.items():
        seconds = statistics.median(run["seconds"] for run in runs)
        figures[f"verify_{kind}"] = {**runs[0], "seconds": seconds,
                                     "entries_per_s": runs[0]["entries"] / max(seconds, 1e-6),
                                     "mb_per_s": runs[0]["mb"] / max(seconds, 1e-6)}
    figures["verify_shared_over_local_s"] = (figures["verify_shared"]["seconds"]
                                             / max(figures["verify_local"]["seconds"], 1e-6))
    print(f"release through dev: local {local:.1f} s, shared {shared:.1f} s, "
          f"ratio {figures['release_shared_over_local']:.2f}")
    for kind in ("local", "shared"):
        found = figures[f"verify_{kind}"]
        print(f"audit verify ({kind}): {found['entries']} entries, {found['files']} files "
              f"({found['mb']:.1f} MB) in {found['seconds']:.2f} s: "
              f"{found['entries_per_s']:.0f} entries/s, {found['mb_per_s']:.1f} MB/s")
    print(f"verify time shared / local: {figures['verify_shared_over_local_s']:.2f}")
    print(f"appends with a file: local {appends['local']:.0f}/s, shared {appends['shared']:.0f}/s")
    text = json.dumps(figures)
    if args.json_out:
        args.json_out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
