"""An MLflow tracking server as teams run it, on 127.0.0.1 for tests: ``mlflow server`` with its
backend store in PostgreSQL (tests/pg_server.py) and its artifacts in an S3 bucket (moto's
S3-protocol server, tests/s3_server.py), served through the server (``mlflow-artifacts:``), so
clients need no S3 credentials, as on a team's server.

A test module using it imports the three fixtures::

    from mlflow_remote import mlflow_remote
    from pg_server import pg_server
    from s3_server import s3_server
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pg_server import PgServer
from s3_server import S3Server

WORKERS = 2  # two processes answer requests: concurrent writers really meet in the database


@dataclass
class RemoteMlflow:
    url: str  # the tracking URI clients use
    database: str  # the backend store's URI
    bucket: str  # where the artifacts are: s3://BUCKET/
    s3: S3Server
    process: subprocess.Popen[bytes]
    log: Path

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """The bucket's objects below ``prefix``: key -> content, read straight from S3."""
        client = self.s3.client()
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                     Prefix=prefix):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"]
                found[item["Key"]] = body.read()
        return found

    def tail(self, size: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-size:]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start(database: str, s3: S3Server, bucket: str, port: int, home: Path,
          timeout: float = 180) -> RemoteMlflow:
    """Start ``mlflow server`` (its own process group, so its workers stop with it) and wait
    until it answers ``/health``."""
    env = {**os.environ, **s3.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = home / "server.log"
    with log.open("wb") as handle:
        # The default security middleware allows the Host 127.0.0.1 (any port) and loopback
        # CORS origins; nothing to loosen for clients on this machine.
        process = subprocess.Popen(  # noqa: S603 - our own interpreter's mlflow
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(WORKERS), "--backend-store-uri", database,
             "--artifacts-destination", f"s3://{bucket}/"],
            cwd=home, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    server = RemoteMlflow(f"http://127.0.0.1:{port}", database, bucket, s3, process, log)
    deadline = time.monotonic() + timeout
    while not _answers(server.url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(server)
            raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s:\n"
                               f"{server.tail()}")
        time.sleep(0.2)
    return server


def stop(server: RemoteMlflow) -> None:
    """SIGTERM to the server's process group (its PID), then wait for it."""
    process = server.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def mlflow_remote(pg_server: PgServer, s3_server: S3Server,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteMlflow]:
    """One tracking server for the session: its own database and bucket; tests keep apart by
    model and experiment names."""
    server = start(pg_server.new_database("mlflow"), s3_server, s3_server.new_bucket("mlflow"),
                   _free_port(), tmp_path_factory.mktemp("mlflow-remote"))
    try:
        yield server
    finally:
        stop(server)


def client(server: RemoteMlflow) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)
