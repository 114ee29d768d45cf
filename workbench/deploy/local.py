"""The local deploy target: ``mlflow models serve`` on 127.0.0.1 as a managed process.

Each environment has at most one server. Its pid, port, model version and log path are kept
in ``.workbench/servers/<env>.json``; ``workbench stop ENV`` ends it by that pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.atomic import write_json
from workbench.project import Project

HOST = "127.0.0.1"


class DeployError(RuntimeError):
    """The model server could not be started, or its state is inconsistent."""


@dataclass(frozen=True)
class Server:
    environment: str
    pid: int
    port: int
    model_name: str
    version: str
    model_uri: str
    tracking_uri: str
    started: float
    log: str

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _state_file(project: Project, environment: str) -> Path:
    return project.servers / f"{environment}.json"


def _is_our_server(pid: int) -> bool:
    """True when ``pid`` is alive and is an ``mlflow models serve`` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"mlflow" in cmdline and b"serve" in cmdline


def current(project: Project, environment: str) -> Server | None:
    """The recorded server of ``environment`` if it is still running."""
    path = _state_file(project, environment)
    if not path.is_file():
        return None
    server = Server(**json.loads(path.read_text(encoding="utf-8")))
    return server if _is_our_server(server.pid) else None


def http_url(url: str) -> str:
    """``url`` if it is http(s); urllib would also open file: and custom schemes."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"expected an http(s) URL, got {url!r}")
    return url


def ping(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(http_url(f"{url}/ping"), timeout=timeout  # nosec B310
                                    ) as response:
            return response.status == 200
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _group_alive(pgid: int) -> bool:
    """True while any process of the server's group still runs (zombies do not count)."""
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop(project: Project, environment: str, grace: float = 10.0) -> Server | None:
    """Stop the environment's server (its whole process group); return what was stopped.

    Returns once every process of the group is gone, so the port is free for a successor.
    """
    path = _state_file(project, environment)
    server = current(project, environment)
    if server is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _group_alive(server.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(server.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            while _group_alive(server.pid) and time.monotonic() < deadline + 5:
                time.sleep(0.1)
    path.unlink(missing_ok=True)
    return server


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def serve(project: Project, environment: str, port: int, model_name: str, version: str,
          tracking_uri: str, ready_timeout: float = 180.0) -> Server:
    """Replace the environment's server with one serving ``models:/<name>/<version>``."""
    stop(project, environment)
    if not _port_free(port):
        raise DeployError(f"environment {environment!r}: port {port} on {HOST} is in use "
                          f"by another process; free it or change deploy.port")
    project.servers.mkdir(parents=True, exist_ok=True)
    log = project.servers / f"{environment}.log"
    model_uri = f"models:/{model_name}/{version}"
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
               "--env-manager", "local", "-h", HOST, "-p", str(port)]
    with open(log, "ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(environment, process.pid, port, model_name, str(version), model_uri,
                    tracking_uri, time.time(), str(log))
    write_json(_state_file(project, environment), asdict(server))
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _state_file(project, environment).unlink(missing_ok=True)
            raise DeployError(f"model server for {environment!r} exited with code "
                              f"{process.returncode}; log {log}:\n{_log_tail(log)}")
        if ping(server.url):
            return server
        time.sleep(0.25)
    stop(project, environment)
    raise DeployError(f"model server for {environment!r} not ready on {server.url} after "
                      f"{ready_timeout:g} s; log {log}:\n{_log_tail(log)}")
