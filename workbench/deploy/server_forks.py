"""An endpoint's model-server fork server: a redeploy forks a warm process instead of starting
Python, MLflow, FastAPI and the model's flavour from nothing (5-11 s on 2 cores).

``python -m workbench.deploy.model_server --fork-server SOCKET --owner PID --warm-with URI``
imports MLflow's scoring app and uvicorn, loads the model ``URI`` once (so that its flavour and
everything the flavour imports are in ``sys.modules``; the model itself is dropped), then
serves a Unix socket (mode 0600, in ``.workbench/servers/``). Each connection is one request,
one JSON line each way::

    <- {"argv": [...model_server arguments...], "env": {...}, "log": "PATH", "cwd": "..."}
    -> {"pid": 1234}              the model server: its own session, output to PATH
    -> {"error": "..."}           nothing was forked

Ownership: the local target starts it beside an endpoint's first model server, records its
pid in the endpoint's state file and stops it with the endpoint (``workbench stop``). It exits
by itself once the endpoint's proxy (``--owner``) is gone, so a crash leaves nothing behind; a
model server it forked lives on as the endpoint's backend and is stopped like any other. If
importing started a thread (a fork copies only the forking thread), it refuses to serve and
exits: deploys then start model servers the ordinary way.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

ACCEPT_STEP_S = 0.5  # how often the loop looks at its owner and reaps its children


def warm_up(model_uri: str) -> None:
    """Import what a model server of ``model_uri`` imports: the scoring app and the flavour."""
    import fastapi  # noqa: F401  (the scoring app's framework)
    import mlflow.pyfunc
    import uvicorn  # noqa: F401
    from mlflow.pyfunc import scoring_server  # noqa: F401

    with contextlib.suppress(Exception):  # a model that fails to load fails in its server
        mlflow.pyfunc.load_model(model_uri)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (exists and is no zombie)."""
    if pid <= 0:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass


def _reply(connection: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        connection.sendall(json.dumps(message).encode("utf-8") + b"\n")


def _read_message(connection: socket.socket) -> Any:
    """One JSON line from the connection (ValueError when it is not JSON)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data)


def _read_request(connection: socket.socket) -> dict[str, Any]:
    request = _read_message(connection)
    if not isinstance(request, dict) or not isinstance(request.get("argv"), list):
        raise ValueError("expected {\"argv\": [...], \"env\": {...}, \"log\": PATH}")
    return dict(request)


ENGINE_HOLDERS = ("mlflow.store.tracking.sqlalchemy_store",
                  "mlflow.store.model_registry.sqlalchemy_store")


def _fresh_connections() -> None:
    """In a child: database connections of its own. MLflow keeps one SQLAlchemy engine per
    database in a class-level map; a pooled connection opened by the parent must not be used
    by a child (SQLAlchemy's advice for ``fork``: dispose without closing the parent's)."""
    for name in ENGINE_HOLDERS:
        store = getattr(sys.modules.get(name), "SqlAlchemyStore", None)
        for engine in list(getattr(store, "_engine_map", {}).values()):
            with contextlib.suppress(Exception):
                engine.dispose(close=False)


ServerMain = Callable[[list[str]], None]  # the model server's ``main(argv)``


def become_model_server(request: dict[str, Any], server_main: ServerMain) -> int:
    """In the forked child: the model server ``request`` asks for; its exit status."""
    os.setsid()  # its own process group: the endpoint stops it by it
    gc.enable()
    _fresh_connections()
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(devnull)
    os.close(log)
    os.chdir(request.get("cwd") or os.getcwd())
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in (request.get("env") or {}).items()})
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:  # Python's random reseeds itself after a fork; NumPy does not
        numpy_random.seed()
    try:
        server_main([str(a) for a in request["argv"]])
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 0
    return 0


def serve(path: Path, owner: int, model_uri: str, server_main: ServerMain) -> int:
    """Warm up, then fork a model server (``server_main``) per request until the owner is
    gone."""
    gc.disable()  # no collection dirties the imported pages the children share
    warm_up(model_uri)
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if threads:
        print(f"not forking model servers: warming up started threads ({', '.join(threads)})",
              file=sys.stderr, flush=True)
        return 0
    gc.freeze()
    signal.signal(signal.SIGCHLD, lambda *_: None)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_mask)
    listener.listen(8)
    listener.settimeout(ACCEPT_STEP_S)
    print(f"forking model servers on {path}", flush=True)
    try:
        while alive(owner):
            _reap()
            try:
                connection, _ = listener.accept()
            except (TimeoutError, InterruptedError):
                continue
            with connection:
                connection.settimeout(10)
                try:
                    request = _read_request(connection)
                except (OSError, ValueError) as exc:
                    _reply(connection, {"error": f"bad request: {exc}"})
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    listener.close()
                    connection.close()
                    code = 1
                    try:
                        code = become_model_server(request, server_main)
                    finally:
                        os._exit(code)
                _reply(connection, {"pid": pid})
    finally:
        listener.close()
        path.unlink(missing_ok=True)
    return 0


def request_fork(path: Path, argv: list[str], env: dict[str, str], log: Path, cwd: Path,
                 timeout: float = 10.0) -> int | None:
    """Ask the fork server at ``path`` for a model server; its pid, or None when there is no
    server answering there (the caller starts one the ordinary way)."""
    if not path.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect(str(path))
            client.sendall(json.dumps({"argv": argv, "env": env, "log": str(log),
                                       "cwd": str(cwd)}).encode("utf-8") + b"\n")
            reply = _read_message(client)
    except (OSError, ValueError):
        return None
    pid = reply.get("pid") if isinstance(reply, dict) else None
    return pid if isinstance(pid, int) and pid > 0 else None
