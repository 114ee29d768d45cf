"""The local deploy target: a model server behind a stable proxy on 127.0.0.1.

An environment's endpoint is ``http://127.0.0.1:<deploy.port>``: a small reverse proxy
(``workbench.deploy.proxy``) in front of one model server (``workbench.deploy.model_server``,
MLflow's scoring app) on a port of its own. A redeploy starts the new version on a fresh port,
checks it answers and serves that exact version, switches the proxy, waits until no request is
in flight on the old server and only then stops it, so clients of the endpoint lose nothing.

State lives in ``.workbench/servers/<env>.json`` (pids, ports, version, logs) and
``<env>.route.json`` (the proxy's backend); ``workbench stop ENV`` ends both by pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from workbench.atomic import write_json
from workbench.deploy.server_forks import request_fork
from workbench.errors import EXIT_FAILED, WorkbenchError
from workbench.execution.reaper import STAGE_VARIABLE
from workbench.project import Project

HOST = "127.0.0.1"
DRAIN_TIMEOUT = 60.0


class DeployError(WorkbenchError, RuntimeError):
    """The model server could not be started, or its state is inconsistent."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class Server:
    """An environment's endpoint: the proxy (``pid``, ``port``) and the model server behind it."""

    environment: str
    pid: int
    port: int
    model_name: str
    version: str
    model_uri: str
    tracking_uri: str
    started: float
    log: str
    backend_pid: int = 0
    backend_port: int = 0
    forks_pid: int = 0  # the endpoint's model-server fork server (0: none)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def backend_url(self) -> str:
        return f"http://{HOST}:{self.backend_port}"

    def describe(self) -> str:
        return (f"{self.model_name} v{self.version} serving at {self.url} "
                f"(proxy pid {self.pid}, model server pid {self.backend_pid} on port "
                f"{self.backend_port})")


def _state_file(project: Project, environment: str) -> Path:
    return project.servers / f"{environment}.json"


def route_file(project: Project, environment: str) -> Path:
    return project.servers / f"{environment}.route.json"


def _is_ours(pid: int, module: str) -> bool:
    """True when ``pid`` is alive and runs ``module`` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return module.encode() in cmdline


def current(project: Project, environment: str) -> Server | None:
    """The recorded endpoint of ``environment`` if its proxy and model server still run."""
    path = _state_file(project, environment)
    if not path.is_file():
        return None
    try:
        server = Server(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError):
        return None  # a state file from an older layout: nothing of ours runs from it
    if _is_ours(server.pid, "workbench.deploy.proxy") and \
            _is_ours(server.backend_pid, "workbench.deploy.model_server"):
        return server
    return None


def http_url(url: str) -> str:
    """``url`` if it is http(s); urllib would also open file: and custom schemes."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"expected an http(s) URL, got {url!r}")
    return url


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(http_url(url), timeout=timeout) as response:  # nosec B310
        return json.loads(response.read())


def ping(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(http_url(f"{url}/ping"), timeout=timeout  # nosec B310
                                    ) as response:
            return response.status == 200
    except OSError:
        return False


def served_model(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """What the endpoint says it serves (``GET /model``): name, version, model_uuid, run_id."""
    return get_json(f"{url}/model", timeout)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _group_alive(pgid: int) -> bool:
    """True while any process of the group still runs (zombies do not count)."""
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(pgid: int, grace: float) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``grace``; wait until it is gone."""
    if pgid <= 0:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        while _group_alive(pgid) and time.monotonic() < deadline + 5:
            time.sleep(0.05)


def stop(project: Project, environment: str, grace: float = 10.0) -> Server | None:
    """Stop the environment's proxy and model server; return what was stopped.

    Returns once every process is gone, so the ports are free for a successor.
    """
    path = _state_file(project, environment)
    server = current(project, environment)
    keep = {server.pid, server.backend_pid} if server is not None else set()
    for pid in _orphans(project, environment, keep):
        stop_group(pid, grace)
    _pending_file(project, environment).unlink(missing_ok=True)
    if server is None and path.is_file():  # one of the two died: stop the other one too
        with contextlib.suppress(ValueError, TypeError, OSError):
            stale = json.loads(path.read_text(encoding="utf-8"))
            for pid, module in ((stale.get("pid", 0), "workbench.deploy.proxy"),
                                (stale.get("backend_pid", 0), "workbench.deploy.model_server"),
                                (stale.get("forks_pid", 0), "--fork-server")):
                if _is_ours(pid, module):
                    stop_group(pid, grace)
    if server is not None:
        if _forks_alive(server.forks_pid):
            stop_group(server.forks_pid, grace)
        stop_group(server.pid, grace)
        stop_group(server.backend_pid, grace)
    path.unlink(missing_ok=True)
    route_file(project, environment).unlink(missing_ok=True)
    return server


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


ENDPOINT_VARIABLE = "WORKBENCH_ENDPOINT"  # <project>::<environment>, in every server of ours


def _marker(project: Project, environment: str) -> str:
    return f"{project.root}::{environment}"


class Process(Protocol):
    """A started server: a child (``Popen``) or a process the fork server forked."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...


class Forked:
    """A model server forked by the endpoint's fork server (its child, not ours)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not _is_ours(self.pid, "workbench.deploy.model_server"):
            self.returncode = -1  # its exit status went to the fork server, its parent
        return self.returncode


def forks_socket(project: Project, environment: str) -> Path | None:
    """Where the endpoint's fork server listens: beside its state when that path fits a Unix
    socket's 107 bytes, else in a private folder of this user under the temp folder; None
    when no such folder can be trusted (then deploys start servers the ordinary way)."""
    path = project.servers / f"{environment}.forks.sock"
    if len(str(path).encode()) < 100:
        return path
    folder = Path(tempfile.gettempdir()) / f"workbench-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    private = folder / (hashlib.sha256(str(path).encode()).hexdigest()[:20] + ".sock")
    return private if len(str(private).encode()) < 100 else None


def _forks_alive(pid: int) -> bool:
    return pid > 0 and _is_ours(pid, "--fork-server")


def _start_forks(project: Project, environment: str, owner: int, model_uri: str,
                 env: dict[str, str]) -> int:
    """Start the endpoint's fork server in the background (it warms up while the endpoint
    serves); its pid, or 0 when it cannot have a socket."""
    path = forks_socket(project, environment)
    if path is None:
        return 0
    log = project.servers / f"{environment}.forks.log"
    process = _spawn(project, environment, [
        sys.executable, "-m", "workbench.deploy.model_server", "--fork-server", str(path),
        "--owner", str(owner), "--warm-with", model_uri], log, env)
    return process.pid


def _spawn(project: Project, environment: str, command: list[str], log: Path,
           env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a server of the environment's endpoint, marked so that ``stop`` finds it after any
    crash, and recorded before it is waited for (``<env>.pending.json``). It outlives the stage
    that deployed it, so it does not carry the stage's process tag (which the stage's end
    would stop)."""
    service = {key: value for key, value in env.items() if key != STAGE_VARIABLE}
    service[ENDPOINT_VARIABLE] = _marker(project, environment)
    with open(log, "ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=service,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    _note_pending(project, environment, process.pid)
    return process


def _note_pending(project: Project, environment: str, pid: int) -> None:
    """Record a server before it is waited for, so that ``stop`` finds it after a crash."""
    pending = _pending_file(project, environment)
    try:
        known = json.loads(pending.read_text(encoding="utf-8")).get("pids", [])
    except (OSError, ValueError, AttributeError):
        known = []
    write_json(pending, {"pids": [*known, pid]})


def _pending_file(project: Project, environment: str) -> Path:
    return project.servers / f"{environment}.pending.json"


def _orphans(project: Project, environment: str, keep: set[int]) -> list[int]:
    """Servers of ours for ``environment`` that no endpoint record names (a crash between
    their start and the record, or a deploy that died): by their marker, or the pending
    record."""
    marker = f"{ENDPOINT_VARIABLE}={_marker(project, environment)}".encode()
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found.add(int(proc.name))
        except (OSError, ValueError):
            continue
    try:
        pending = json.loads(_pending_file(project, environment).read_text(encoding="utf-8"))
        found |= {pid for pid in pending.get("pids", []) if isinstance(pid, int) and (
            _is_ours(pid, "workbench.deploy.proxy") or
            _is_ours(pid, "workbench.deploy.model_server"))}
    except (OSError, ValueError, AttributeError):
        pass
    return sorted(found - keep - {os.getpid()})


def _wait_ready(process: Process, url: str, what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeployError(f"{what} exited with code {process.returncode}; log {log}:\n"
                              f"{_log_tail(log)}")
        if ping(url, timeout=1.0):
            return
        time.sleep(0.1)
    stop_group(process.pid, 5)
    raise DeployError(f"{what} not ready on {url} after {timeout:g} s; log {log}:\n"
                      f"{_log_tail(log)}")


def model_server_env(tracking_uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true"}


def start_model_server(project: Project, environment: str, model_name: str, version: str,
                        tracking_uri: str, timeout: float, forks: bool = True
                        ) -> tuple[Process, int, Path]:
    """A model server of ``version`` on a free port, answering and serving that version:
    forked by the endpoint's fork server when one answers (``forks``), else started anew."""
    port = _free_port()
    log = project.servers / f"{environment}.model-{port}.log"
    env = model_server_env(tracking_uri)
    arguments = ["--model-uri", f"models:/{model_name}/{version}", "--name", model_name,
                 "--version", str(version), "--port", str(port)]
    socket_path = forks_socket(project, environment) if forks else None
    pid = request_fork(socket_path, arguments, {
        **{k: v for k, v in env.items() if k != STAGE_VARIABLE},
        ENDPOINT_VARIABLE: _marker(project, environment)}, log, project.root) \
        if socket_path is not None else None
    process: Process
    if pid is not None:
        _note_pending(project, environment, pid)
        process = Forked(pid)
    else:
        process = _spawn(project, environment, [
            sys.executable, "-m", "workbench.deploy.model_server", *arguments], log, env)
    url = f"http://{HOST}:{port}"
    try:
        _wait_ready(process, url, f"model server for {environment!r} ({model_name} "
                    f"v{version})", log, timeout)
        served = served_model(url)
        if str(served.get("version")) != str(version):
            raise DeployError(f"model server on {url} reports version {served.get('version')}"
                              f", expected {version}")
    except BaseException:
        stop_group(process.pid, 5)
        raise
    return process, port, log


def _route(port: int, version: str, log: dict[str, Any] | None) -> dict[str, Any]:
    """The proxy's route file: the backend, its version and, when on, the inference log."""
    return {"port": port, "version": str(version), **({"log": log} if log else {})}


def inference_folder(project: Project, key: str) -> Path:
    """Where the endpoint ``key`` (see :func:`server_key`) logs what it serves."""
    return project.local_state / "inference" / key


def _switch(project: Project, environment: str, old: Server, port: int, version: str,
            log: dict[str, Any] | None) -> None:
    """Point the proxy at ``port``; return once no request is in flight on the old server."""
    write_json(route_file(project, environment), _route(port, version, log))
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            route = get_json(f"{old.url}/-/route", timeout=2.0)
            if int(route.get("port", 0)) == port and \
                    not route.get("inflight", {}).get(str(old.backend_port)):
                return
        time.sleep(0.02)
    raise DeployError(f"proxy of {environment!r} on {old.url} did not switch to port {port} "
                      f"within {DRAIN_TIMEOUT:g} s")


def serve(project: Project, environment: str, port: int, model_name: str, version: str,
          tracking_uri: str, ready_timeout: float = 180.0,
          inference: dict[str, Any] | None = None) -> Server:
    """Serve ``models:/<name>/<version>`` on the environment's endpoint without dropping traffic.

    The new model server must be up and report ``version`` before any request reaches it; if
    it fails, the old one keeps serving and the error names its log. Deploys to one
    environment take turns (a lock beside its record), so two runs never interleave theirs.
    """
    from filelock import FileLock

    project.servers.mkdir(parents=True, exist_ok=True)
    with FileLock(project.servers / f"{environment}.lock", timeout=DEPLOY_LOCK_S):
        server = _serve(project, environment, port, model_name, version, tracking_uri,
                        ready_timeout, inference)
        _pending_file(project, environment).unlink(missing_ok=True)  # the record names them
        return server


DEPLOY_LOCK_S = 600.0


def _serve(project: Project, environment: str, port: int, model_name: str, version: str,
           tracking_uri: str, ready_timeout: float, inference: dict[str, Any] | None
           ) -> Server:
    old = current(project, environment)
    if old is None:
        stop(project, environment)  # leftovers of a half-dead endpoint
        if not _port_free(port):
            raise DeployError(f"environment {environment!r}: port {port} on {HOST} is in use "
                              f"by another process; free it or change deploy.port")
    elif old.port != port:
        stop(project, environment)
        old = None
    backend, backend_port, backend_log = start_model_server(
        project, environment, model_name, version, tracking_uri, ready_timeout)
    if old is None:
        write_json(route_file(project, environment), _route(backend_port, version, inference))
        log = project.servers / f"{environment}.proxy.log"
        proxy = _spawn(project, environment, [
            sys.executable, "-m", "workbench.deploy.proxy", "--port", str(port), "--route",
            str(route_file(project, environment))], log, dict(os.environ))
        try:
            _wait_ready(proxy, f"http://{HOST}:{port}", f"proxy for {environment!r}", log, 60)
        except BaseException:
            stop_group(backend.pid, 5)
            raise
        proxy_pid = proxy.pid
    else:
        try:
            _switch(project, environment, old, backend_port, version, inference)
        except BaseException:  # keep the old version serving
            write_json(route_file(project, environment),
                       _route(old.backend_port, old.version, inference))
            stop_group(backend.pid, 5)
            raise
        stop_group(old.backend_pid, 10)
        proxy_pid = old.pid
    # The fork server pays off from an endpoint's second redeploy on; one that is deployed
    # once (a CI job's, a test's) never pays for its warm-up.
    forks = 0
    if old is not None:
        forks = old.forks_pid if _forks_alive(old.forks_pid) else _start_forks(
            project, environment, proxy_pid, f"models:/{model_name}/{version}",
            model_server_env(tracking_uri))
    server = Server(environment, proxy_pid, port, model_name, str(version),
                    f"models:/{model_name}/{version}", tracking_uri, time.time(),
                    str(backend_log), backend.pid, backend_port, forks)
    write_json(_state_file(project, environment), asdict(server))
    return server


def server_key(project: Project, config: Any, environment: str) -> str:
    """What the local endpoint's state files are named by: the environment in a project of one
    pipeline (``<env>.json``, as before), ``<model>@<env>`` in a project of several, so two
    pipelines deploying to one environment keep their own servers."""
    from workbench.config import pipeline_names

    if not pipeline_names(project.configs):
        return environment
    return f"{config.model.name}@{environment}"


def inference_settings(request: Any, key: str) -> dict[str, Any] | None:
    """The route's inference log settings for a deploy request (None: off)."""
    log = request.config.environments[request.environment].inference_log
    return {"dir": str(inference_folder(request.project, key)), "sample": log.sample,
            "max_bytes": int(log.max_mb * 1_000_000), "drop": list(log.drop_columns),
            "secrets": list(request.config.pipeline.secrets)} if log else None


class LocalTarget:
    """The ``local`` deploy target (see the module doc); its canary strategy is in
    :mod:`workbench.deploy.canary`."""

    def deploy(self, request: Any) -> Server:
        settings = request.config.environments[request.environment]
        key = server_key(request.project, request.config, request.environment)
        return serve(request.project, key, settings.deploy.port, request.model_name,
                     request.version, request.tracking_uri,
                     inference=inference_settings(request, key))

    def rollback(self, request: Any) -> Server:
        """A rollback is a zero-downtime redeploy of the earlier version (never a canary)."""
        return self.deploy(request)


    def current(self, project: Project, config: Any, environment: str) -> Server | None:
        return current(project, server_key(project, config, environment))
