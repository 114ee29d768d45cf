"""Pre-warmed kernels forked from one process that imported the run's ``preload`` modules once.

On a small machine the import work of each stage's kernel (MLflow, scikit-learn, skops,
matplotlib: 5-6 s of CPU each) is the critical path of a run. A :class:`ForkServer` pays it
once: its process (:mod:`workbench.execution.zygote`) imports the union of the run's preloads,
then forks a kernel per request in a fraction of a second. The kernel is the ordinary
``ipykernel_launcher`` with the arguments, environment and folder jupyter_client gives it; only
the imports are already done, which the notebook cannot tell from a warm kernel's silent
preload request. jupyter_client drives it through :class:`ForkedProvisioner`, whose process
handle answers like :class:`subprocess.Popen` from the exit statuses the server reports.

Only kernels whose command is ``<this interpreter> -m ipykernel_launcher ...`` are forked;
any other kernel, or any trouble with the server, falls back to an ordinary launch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast

from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner

from workbench.errors import EXIT_FAILED, WorkbenchError
from workbench.execution import kernel_output
from workbench.execution.zygote import LAUNCHER

SPAWN_TIMEOUT = 30.0  # seconds for a fork once the server is ready
LOST = 1  # the exit status given to a kernel whose server vanished before reporting it


class ForkServerError(WorkbenchError, RuntimeError):
    """The fork server cannot start a kernel (not ready in time, or gone)."""

    exit_code = EXIT_FAILED


class ForkedProcess:
    """A kernel forked by the server, answering like :class:`subprocess.Popen`."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, server: ForkServer):
        self.pid = pid
        self.returncode: int | None = None
        self._server = server
        self._done = threading.Event()

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._done.set()

    def poll(self) -> int | None:
        if self.returncode is None and self._server.gone and not _exists(self.pid):
            self._exited(LOST)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            left = 0.1 if end is None else min(0.1, end - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired([LAUNCHER, str(self.pid)], timeout or 0)
            self._done.wait(left)
        return code

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ForkServer:
    """The fork server process and its connection (see the module doc). Thread-safe."""

    def __init__(self, preload: Sequence[str], cwd: Path, env: dict[str, str] | None = None):
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "workbench.execution.zygote", "--fd",
                   str(theirs.fileno()), "--kernel", LAUNCHER, "--preload",
                   json.dumps(list(preload))]
        sink = kernel_output.stdio()  # the run's kernel log, which forked kernels inherit
        try:
            # its own session, as kernels have: a Ctrl-C in the terminal is the run's to handle
            self.process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), cwd=cwd,
                                            env={**os.environ, **(env or {})},
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            stdout=sink.get("stdout"), stderr=sink.get("stderr"))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._gone = threading.Event()
        self._closed = False
        self._next_id = 0
        self.problem: str | None = None  # why it does not fork, once it said so
        self._pending: dict[int, Future[ForkedProcess]] = {}
        self._processes: dict[int, ForkedProcess] = {}
        self._reader = threading.Thread(target=self._read, name="fork-server", daemon=True)
        self._reader.start()

    @property
    def gone(self) -> bool:
        return self._gone.is_set()

    def usable_for(self, command: Sequence[str]) -> bool:
        """Whether ``command`` is an ipykernel of this interpreter (what the server forks)."""
        if self.gone or self.problem or len(command) < 3 or \
                list(command[1:3]) != ["-m", LAUNCHER]:
            return False
        try:
            return os.path.samefile(command[0], sys.executable)
        except OSError:
            return False

    def spawn(self, command: Sequence[str], env: dict[str, str], cwd: str,
              ready_timeout: float) -> ForkedProcess:
        """Fork a kernel running ``command``; waits up to ``ready_timeout`` for the imports."""
        return self._fork({"argv": list(command), "env": env, "cwd": cwd}, ready_timeout)

    def call(self, target: str, payload: Any, cwd: str, timeout: float) -> str | None:
        """Run ``target`` (``module:function``, given ``payload``) in a process forked from the
        server, which imported what it needs (MLflow) so that this process need not; waits up
        to ``timeout`` in all. None once it succeeded, else what went wrong. Raises
        :class:`ForkServerError` when the server cannot fork (the caller does it itself)."""
        end = time.monotonic() + timeout
        fd, result = tempfile.mkstemp(prefix="workbench-call-", suffix=".json")
        os.close(fd)
        try:
            process = self._fork({"call": target, "payload": payload, "cwd": cwd,
                                  "result": result}, timeout)
            try:
                code = process.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                return f"{target} did not finish in {timeout:g} s"
            if code == 0:
                return None
            text = Path(result).read_text(encoding="utf-8")
            return str(json.loads(text)["error"]) if text else f"{target} exited {code}"
        finally:
            Path(result).unlink(missing_ok=True)

    def _fork(self, fields: dict[str, Any], ready_timeout: float) -> ForkedProcess:
        if not self._ready.wait(ready_timeout) or self.gone or self.problem:
            raise ForkServerError(self.problem or "the kernel fork server is not ready")
        future: Future[ForkedProcess] = Future()
        with self._lock:
            if self._closed:
                raise ForkServerError("the kernel fork server is closed")
            self._next_id += 1
            request = {"id": self._next_id, **fields}
            self._pending[self._next_id] = future
            try:
                self._sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
            except OSError as exc:
                self._pending.pop(self._next_id, None)
                raise ForkServerError(f"the kernel fork server is gone ({exc})") from None
        try:
            return future.result(SPAWN_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the caller starts the kernel itself
            raise ForkServerError(f"the kernel fork server did not fork ({exc})") from None

    def _read(self) -> None:
        try:
            with self._sock.makefile("rb") as lines:
                for line in lines:
                    self._dispatch(json.loads(line))
        except (OSError, ValueError):
            pass
        finally:
            self._gone.set()
            self._ready.set()  # nobody waits for a server that is gone
            with self._lock:
                pending, self._pending = list(self._pending.values()), {}
            for future in pending:
                future.set_exception(ForkServerError("the kernel fork server is gone"))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "ready" in message:
            if not message["ready"]:
                self.problem = str(message.get("problem") or "it cannot fork")
            self._ready.set()
        elif "pid" in message:
            process = ForkedProcess(int(message["pid"]), self)
            with self._lock:
                self._processes[process.pid] = process
                future = self._pending.pop(int(message["id"]), None)
            if future is not None:
                future.set_result(process)
        elif "exited" in message:
            pid = int(message["exited"])
            with self._lock:
                exited = self._processes.pop(pid) if pid in self._processes else None
            if exited is not None:
                exited._exited(int(message["code"]))

    def close(self, timeout: float = 0.0) -> None:
        """No more kernels: the server exits once the kernels it forked have exited (at once
        if it forked none, even in the middle of its imports). Waits up to ``timeout`` seconds
        for that; safe to call more than once."""
        with self._lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(OSError):
                    if self._next_id:
                        self._sock.shutdown(socket.SHUT_WR)
                    else:
                        self.process.kill()
        if timeout > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        if self.process.poll() is not None:
            self._reader.join(timeout=1.0)
            with contextlib.suppress(OSError):
                self._sock.close()

    def kill(self) -> None:
        """Stop the server at once (its kernels then exit on their own)."""
        self.close()
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.wait()


class ForkedProvisioner(LocalProvisioner):
    """jupyter_client's local provisioner, forking eligible kernels from a :class:`ForkServer`
    instead of starting a new interpreter."""

    server: ForkServer | None = None
    ready_timeout: float = 60.0
    forked: bool = False

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        server = self.server
        if server is None or not server.usable_for(cmd):
            return await super().launch_kernel(cmd, **kwargs)
        options = self._scrub_kwargs(kwargs)
        env = dict(options.get("env") or os.environ)
        cwd = str(options.get("cwd") or os.getcwd())
        try:
            process = await asyncio.to_thread(server.spawn, cmd, env, cwd, self.ready_timeout)
        except ForkServerError:
            return await super().launch_kernel(cmd, **kwargs)
        self.process = cast(Any, process)  # answers like Popen (see ForkedProcess)
        self.pid, self.pgid, self.cwd = process.pid, process.pid, cwd
        self.forked = True
        return self.connection_info


class ForkingKernelManager(AsyncKernelManager):
    """An async kernel manager whose kernel comes from ``fork_server`` when it can."""

    fork_server: ForkServer | None = None
    ready_timeout: float = 60.0

    async def _async_pre_start_kernel(self, **kw: Any) -> Any:
        spec = self.kernel_spec
        if self.provisioner is None and self.fork_server is not None and spec is not None \
                and not (spec.metadata or {}).get("kernel_provisioner"):
            self.kernel_id = self.kernel_id or kw.pop("kernel_id", str(uuid.uuid4()))
            provisioner = ForkedProvisioner(kernel_id=self.kernel_id, kernel_spec=spec,
                                            parent=self)
            provisioner.server, provisioner.ready_timeout = self.fork_server, self.ready_timeout
            self.provisioner = provisioner
        return await super()._async_pre_start_kernel(**kw)
