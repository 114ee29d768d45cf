"""The kernel fork server's own process (``python -m workbench.execution.zygote``).

It imports the run's ``preload`` modules once, then forks one IPython kernel per request: the
child becomes a kernel exactly as ``python -m ipykernel_launcher -f <connection file>`` would
(its own session, the requested environment and folder, ``sys.argv``), except that the heavy
imports are already in ``sys.modules``. The server reaps its children and reports their exit
status, since only a parent can read it. Protocol: JSON lines over the socket ``--fd``.

    -> {"ready": true}                                   once the imports are done
    -> {"ready": false, "problem": "..."}                cannot fork safely (then exits)
    <- {"id": 1, "argv": [...], "env": {...}, "cwd": "..."}
    -> {"id": 1, "pid": 1234}                            the kernel process
    -> {"exited": 1234, "code": -9}                      Popen-style: -N for signal N
    <- {"id": 2, "call": "module:function", "payload": {...}, "cwd": "...", "result": "..."}
    -> {"id": 2, "pid": 1235}                            a short task (see run_call)

End of input: the workbench process is done with the server. It then waits for its kernels
to exit (they are being shut down) and exits; if the workbench process itself is gone, at once
(its kernels notice that their parent is gone and exit, as every kernel of ours does).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"  # what ipykernel sets
LAUNCHER = "ipykernel_launcher"
# The kernel's own modules (0.2-0.3 s): imported, never instantiated (no zmq context, no event
# loop, no thread exists before a fork).
KERNEL_MODULES = ("ipykernel.kernelapp", "ipykernel.ipkernel")


def preload(modules: list[str]) -> None:
    """Import ``modules`` the way a kernel would find them: the inline matplotlib backend is
    chosen as ipykernel chooses it before anything imports matplotlib. A module that fails
    to import is left to the kernel's own preload request, which reports it."""
    if not os.environ.get("MPLBACKEND"):
        os.environ["MPLBACKEND"] = INLINE_BACKEND
    for name in modules:
        with contextlib.suppress(Exception):  # the kernel's preload request reports it
            importlib.import_module(name)


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode("utf-8") + b"\n")


class Server:
    """The request loop; :meth:`serve` returns the kernel's main function in a forked child and
    None in the server when it is time to exit."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.parent = os.getppid()
        self.children: set[int] = set()
        self.buffer = b""
        self.closing = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a wakeup byte per child exit
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)

    def serve(self) -> Callable[[], int] | None:
        while True:
            for key, _ in self.selector.select(timeout=1.0):
                if key.fileobj is self.wake_r:
                    os.read(self.wake_r, 4096)
                elif not self.closing:
                    child = self._read_requests()
                    if child is not None:
                        return child
            self._reap()
            if self.closing and (not self.children or os.getppid() != self.parent):
                return None

    def _read_requests(self) -> Callable[[], int] | None:
        data = self.sock.recv(65536)
        if not data:
            self.closing = True
            self.selector.unregister(self.sock)
            return None
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            child = self._spawn(json.loads(line))
            if child is not None:
                return child
        return None

    def _spawn(self, request: dict[str, Any]) -> Callable[[], int] | None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._forget()
            if "call" in request:
                return lambda: run_call(request)
            return lambda: run_kernel(request)
        self.children.add(pid)
        _send(self.sock, {"id": request["id"], "pid": pid})
        return None

    def _forget(self) -> None:
        """In the child: none of the server's sockets, pipes or signal handling."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.selector.close()
        self.sock.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            with contextlib.suppress(OSError):  # else the workbench process is gone
                _send(self.sock, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _reseed() -> None:
    """Random state a fresh interpreter would not share with its siblings: Python's ``random``
    reseeds itself after a fork; NumPy's global generator does not."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def run_kernel(request: dict[str, Any]) -> int:
    """Become the kernel ``request`` asks for; its exit status."""
    import runpy

    os.setsid()  # its own process group, as jupyter_client starts kernels
    gc.enable()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if sys.path and sys.path[0] == os.getcwd():  # ``-m`` put the folder first: the kernel's
        sys.path[0] = request["cwd"]
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ["JPY_PARENT_PID"] = str(os.getppid())  # it exits when this server is gone
    _reseed()
    # ipykernel reads JPY_PARENT_PID into a trait default when it is imported, which was here,
    # before the fork: without the option its parent poller would never start, and a kernel
    # whose workbench was killed would live on
    sys.argv = [LAUNCHER, *request["argv"][3:], f"--IPKernelApp.parent_handle={os.getppid()}"]
    try:
        runpy.run_module(LAUNCHER, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run_call(request: dict[str, Any]) -> NoReturn:
    """Run ``module:function(payload)``, a short task that needs the preloaded modules (the
    workbench process's MLflow work), in ``cwd``, and leave with :func:`quick_exit`: status 0,
    or 1 with ``{"error": ...}`` written to the ``result`` file."""
    gc.enable()
    os.chdir(request["cwd"])
    module, _, name = str(request["call"]).partition(":")
    code = 0
    try:
        getattr(importlib.import_module(module), name)(request.get("payload"))
    except BaseException as exc:  # noqa: BLE001 - reported to the caller
        code = 1
        if request.get("result"):
            with open(request["result"], "w", encoding="utf-8") as handle:
                json.dump({"error": f"{type(exc).__name__}: {exc}"}, handle)
    quick_exit(code)


def quick_exit(code: int) -> NoReturn:
    """Leave once threads and atexit handlers are done, without the interpreter's teardown of
    every object: in a forked task that teardown writes to (so copies) every page it shares
    with the server (measured: 150 MB more in each), and the run waits for the server's."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()  # joins non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="workbench kernel fork server")
    parser.add_argument("--fd", type=int, required=True, help="the socket to serve")
    parser.add_argument("--kernel", default=LAUNCHER, help="the kernel module it forks")
    parser.add_argument("--preload", default="[]", help="JSON list of modules to import")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    # as the gc docs advise for fork without exec: no collection leaves holes in the imported
    # modules' pages, and none in a kernel touches (and so copies) every page it inherited
    gc.disable()
    preload([*json.loads(args.preload), *KERNEL_MODULES])
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    try:
        if threads:  # a fork copies only this thread: locks the others hold would stay locked
            _send(sock, {"ready": False, "problem": "importing the preload modules started "
                                                    f"threads ({', '.join(threads)})"})
            return 0
        gc.freeze()
        _send(sock, {"ready": True})
    except OSError:  # the workbench process went away while this one imported
        return 0
    child = Server(sock).serve()
    if child is None:
        quick_exit(0)
    return child()


if __name__ == "__main__":
    sys.exit(main())
