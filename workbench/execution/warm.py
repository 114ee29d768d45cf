"""Kernels for stages: started cold when a stage begins, or pre-warmed while earlier stages run.

Every kernel gets its own folder of IPC sockets (no TCP ports, so kernels started in parallel
cannot race for a port: papermill issue 511) and is started the way nbclient starts one (in
the project folder, with an in-memory IPython history). A warm kernel has also imported the
stage's declared ``preload`` modules in a silent request that stores no history and binds no
names, so the notebook executes exactly as on a cold kernel (execution counts start at 1, the
namespace is empty); it just finds those modules already in ``sys.modules``. A pool with
``fork_preload`` forks its kernels from a :class:`~workbench.execution.forkserver.ForkServer`
that imported those modules once, so that request has next to nothing left to do.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.execution import forked_calls, kernel_output
from workbench.execution.reaper import STAGE_VARIABLE, stage_tag

if TYPE_CHECKING:
    from workbench.execution.forkserver import ForkServer

HISTORY = ["--HistoryManager.hist_file=:memory:"]  # as nbclient starts its kernels
# In every IPython kernel of ours, cold or warm: keep jsonschema from importing the optional
# ``rfc3987_syntax`` (38 Lark grammars compiled at import, 2-3 s of every kernel that imports
# scrapbook, papermill or nbformat) for ``iri`` format checks notebooks never use. It binds no
# name and stores no history, so execution counts and the namespace are as without it.
SKIP_IRI = "__import__('sys').modules.setdefault('rfc3987_syntax', None)"
# And a quick exit: a kernel's process, once its stage is done, spends 2 s tearing down the
# objects of MLflow, scikit-learn and pandas after its atexit handlers have run; the run waits
# for its kernels to be gone. Registered first, this handler runs after every atexit handler
# the notebook's libraries register (atexit runs last-registered first); it then does what
# the handlers registered before it would (IPython's own, coverage's under the tests), flushes
# and leaves. Measured on a kernel that used MLflow and scikit-learn: 2.2 s -> 0.1 s.
QUICK_EXIT = (
    "__import__('atexit').register(lambda sys=__import__('sys'), os=__import__('os'): ("
    "(lambda shell: shell is not None and shell.atexit_operations())"
    "(__import__('IPython').get_ipython()), "
    "(lambda cov: cov is not None and (cov.stop(), cov.save()))"
    "(getattr(sys.modules.get('coverage'), 'Coverage', None) and "
    "sys.modules['coverage'].Coverage.current()), "
    "sys.stdout.flush(), sys.stderr.flush(), os._exit(0))) and None")  # no Out[] value
KERNEL_EXEC_LINES = f"--IPKernelApp.exec_lines=[\"{SKIP_IRI}\", \"{QUICK_EXIT}\"]"


@dataclass
class StageKernel:
    """A started kernel and the socket folder it owns."""

    manager: Any  # jupyter_client AsyncKernelManager
    sockets: tempfile.TemporaryDirectory[str]
    kernel_name: str
    preloaded: tuple[str, ...] = ()
    problems: list[str] = field(default_factory=list)  # preload imports that failed

    @property
    def forked(self) -> bool:
        """Whether the kernel was forked from the run's fork server."""
        return bool(getattr(getattr(self.manager, "provisioner", None), "forked", False))

    def alive(self) -> bool:
        process = getattr(getattr(self.manager, "provisioner", None), "process", None)
        return process is not None and process.poll() is None

    def close(self) -> None:
        """Stop the kernel (kill) and remove its sockets; safe to call more than once."""
        from jupyter_core.utils import run_sync

        with contextlib.suppress(Exception):
            if self.manager.has_kernel:
                run_sync(self.manager.shutdown_kernel)(now=True)
        with contextlib.suppress(Exception):
            run_sync(self.manager.cleanup_resources)()
        self.sockets.cleanup()


_retiring = ThreadPoolExecutor(max_workers=4, thread_name_prefix="retire-kernel")
_retired: list[Future[None]] = []
_retired_lock = threading.Lock()


def retire(kernel: StageKernel, then: Callable[[], None] | None = None) -> None:
    """Shut down a kernel whose stage is complete in the background: a graceful shutdown lets
    its atexit handlers run (1-3 s with MLflow loaded), which the next stage need not wait for.
    It is killed if it does not exit in jupyter_client's shutdown wait time; ``then`` runs once
    it is gone."""
    def shut_down() -> None:
        from jupyter_core.utils import run_sync

        with contextlib.suppress(Exception):
            if kernel.manager.has_kernel:
                run_sync(kernel.manager.shutdown_kernel)(now=False)
        kernel.close()
        if then is not None:
            then()

    with _retired_lock:
        _retired[:] = [f for f in _retired if not f.done()]
        _retired.append(_retiring.submit(shut_down))


def wait_retired(timeout: float | None = None) -> None:
    """Wait until every kernel handed to :func:`retire` is gone."""
    from concurrent.futures import wait

    with _retired_lock:
        pending = list(_retired)
    wait(pending, timeout=timeout)


def preload_code(modules: Iterable[str]) -> str:
    """Import ``modules`` without binding a name; a missing one is reported, not raised."""
    names = ", ".join(repr(m) for m in modules)
    return ("def _workbench_preload():\n"
            "    import importlib\n"
            "    failed = []\n"
            f"    for name in ({names},):\n"
            "        try:\n"
            "            importlib.import_module(name)\n"
            "        except Exception as exc:\n"
            "            failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
            "    return failed\n"
            "_workbench_failed = _workbench_preload()\n"
            "del _workbench_preload\n"
            "if _workbench_failed:\n"
            "    import sys\n"
            "    print('\\n'.join(_workbench_failed), file=sys.stderr)\n"
            "del _workbench_failed\n")


def new_kernel(kernel_name: str, preload: Iterable[str] = (),
               fork_server: ForkServer | None = None, ready_timeout: float = 60.0
               ) -> StageKernel:
    """A kernel manager with its own IPC socket folder, not started yet; with a
    ``fork_server``, its kernel is forked from it when it can be."""
    sockets = tempfile.TemporaryDirectory(prefix="workbench-kernel-")
    # Async, as nbclient creates it itself: a blocking manager's client blocks nbclient's
    # event loop in iopub reads, so a dead kernel or a timeout is never noticed.
    options = {"kernel_name": kernel_name, "transport": "ipc", "ip": f"{sockets.name}/kernel"}
    manager: Any
    if fork_server is not None:
        from workbench.execution.forkserver import ForkingKernelManager

        manager = ForkingKernelManager(**options)
        manager.fork_server, manager.ready_timeout = fork_server, ready_timeout
    else:
        from jupyter_client.manager import AsyncKernelManager

        manager = AsyncKernelManager(**options)
    return StageKernel(manager, sockets, kernel_name, tuple(preload))


def launch(kernel: StageKernel, cwd: Path, env: dict[str, str] | None = None) -> None:
    """Start the kernel process in ``cwd``, as nbclient would; with ``env`` added to this
    process's environment (default: this process's environment as it is now)."""
    from jupyter_core.utils import run_sync

    extra = [*HISTORY, KERNEL_EXEC_LINES] if kernel.manager.ipykernel else list(HISTORY)
    options: dict[str, Any] = {"cwd": str(cwd), "extra_arguments": extra,
                               **kernel_output.stdio()}
    if env is not None:
        options["env"] = {**os.environ, **env}
    run_sync(kernel.manager.start_kernel)(**options)


def start_kernel(kernel_name: str, cwd: Path, startup_timeout: float,
                 preload: Iterable[str] = (), env: dict[str, str] | None = None,
                 fork_server: ForkServer | None = None) -> StageKernel:
    """Start a kernel (IPC transport, private socket folder) and run the preload imports
    (next to nothing left to import in a kernel forked from ``fork_server``)."""
    from jupyter_core.utils import run_sync

    kernel = new_kernel(kernel_name, preload, fork_server, startup_timeout)
    try:
        launch(kernel, cwd, env)
        if kernel.preloaded:
            kernel.problems = run_sync(_preload)(kernel.manager, kernel.preloaded,
                                                 startup_timeout)
    except BaseException:
        kernel.close()
        raise
    return kernel


async def _preload(manager: Any, modules: tuple[str, ...], timeout: float) -> list[str]:
    """Run the silent preload request and wait for its reply; return what failed."""
    client = manager.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=timeout)
        msg_id = client.execute(preload_code(modules), silent=True, store_history=False,
                                allow_stdin=False)
        problems: list[str] = []
        while True:
            message = await client.get_iopub_msg(timeout=timeout)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "stream":
                problems.extend(message["content"]["text"].splitlines())
            if message["msg_type"] == "status" and \
                    message["content"]["execution_state"] == "idle":
                break
        while True:  # the reply, so nothing of ours is left on the shell channel
            reply = await client.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        return problems
    finally:
        client.stop_channels()


class KernelPool:
    """Kernels being warmed for stages that are about to run.

    ``warm(stage, ...)`` starts one in the background; ``take(stage)`` hands it over (waiting
    for it to finish warming) or returns None, and the caller then owns it. ``close()`` stops
    every kernel nobody took.

    At most ``limit`` kernels are kept warm. Forked kernels start in a fraction of a second, so
    a pool that forks also counts the kernels it handed over while they live (running, or
    shutting down after their stage): it keeps warm at most ``limit`` minus those, and always
    one for what comes next (a forked kernel holds copies of the fork server's pages it wrote
    to: 50 MB even idle, measured).
    """

    def __init__(self, limit: int, on_problem: Callable[[str, str], None] | None = None,
                 env: dict[str, str] | None = None, fork_preload: Iterable[str] = (),
                 cwd: Path | None = None):
        self.limit = max(1, limit)
        self.env = env  # added to the environment of every kernel started here
        self.fork_preload, self.cwd = tuple(fork_preload), cwd
        self.fork_server: ForkServer | None = None  # started with the first kernel warmed
        self._threads = ThreadPoolExecutor(max_workers=self.limit,
                                           thread_name_prefix="warm-kernel")
        self._kernels: dict[str, Future[StageKernel]] = {}
        self._taken: list[StageKernel] = []  # handed over by a forking pool, maybe alive
        self._lock = threading.Lock()
        self._on_problem = on_problem
        self._told_problem = False

    def warming(self) -> set[str]:
        with self._lock:
            return set(self._kernels)

    def warm(self, stage: str, kernel_name: str, cwd: Path, startup_timeout: float,
             preload: Iterable[str], starting: bool = False) -> bool:
        """Start warming a kernel for ``stage`` unless one is already there or the pool is full
        (see the class doc); return whether ``stage`` has one (now). ``starting``: the stage
        starts now, so a pool that forks forks its kernel whatever it holds (a fraction of a
        second, against seconds of imports in a kernel of its own); any other pool leaves
        that to the stage."""
        with self._lock:
            if stage in self._kernels:
                return True
            if starting:
                if not self._forks():
                    return False
            elif len(self._kernels) >= max(1, self.limit - self._alive_taken()):
                return False
            if self.fork_server is None and self.fork_preload:
                self.fork_server = _fork_server(self.fork_preload, self.cwd, self.env)
                self.fork_preload = ()  # one attempt
                if self.fork_server is not None:
                    forked_calls.offer(self.fork_server)
            env = {**(self.env or {}), STAGE_VARIABLE: stage_tag(
                (self.env or {}).get("WORKBENCH_RUN_ID", ""), stage)}
            self._kernels[stage] = self._threads.submit(
                start_kernel, kernel_name, cwd, startup_timeout, tuple(preload), env,
                self.fork_server)
            return True

    def take(self, stage: str, kernel_name: str) -> StageKernel | None:
        """The warm kernel of ``stage``, if it started, is alive and runs ``kernel_name``."""
        with self._lock:
            future = self._kernels.pop(stage, None)
        if future is None:
            return None
        try:
            kernel = future.result()
        except Exception as exc:  # noqa: BLE001 - the stage starts its own kernel instead
            self._problem(stage, f"pre-warming its kernel failed ({exc}); starting one now")
            return None
        if kernel.kernel_name != kernel_name or not kernel.alive():
            kernel.close()
            return None
        server = self.fork_server
        if server is not None and server.problem and not self._told_problem:
            self._told_problem = True
            self._problem(stage, f"kernels are started, not forked: {server.problem}")
        for problem in kernel.problems:
            self._problem(stage, f"preload: {problem}")
        if kernel.forked:
            with self._lock:
                self._taken.append(kernel)
        return kernel

    def _forks(self) -> bool:
        """Whether kernels come from a fork server (one that is up, or still to start)."""
        server = self.fork_server
        if server is None:
            return bool(self.fork_preload and self.cwd is not None)
        return not server.gone and not server.problem

    def _alive_taken(self) -> int:
        """How many kernels this pool forked and handed over still live (under the lock)."""
        self._taken[:] = [kernel for kernel in self._taken if kernel.alive()]
        return len(self._taken)

    def discard(self, stage: str) -> None:
        """Stop the kernel warmed for ``stage`` (it will not run here after all)."""
        with self._lock:
            future = self._kernels.pop(stage, None)
        if future is not None:
            future.add_done_callback(_close_result)

    def close(self, wait: float = 0.0) -> None:
        """Stop every kernel nobody took; no more kernels are forked. The fork server exits
        once the kernels it forked are gone; ``wait`` seconds are given to that."""
        with self._lock:
            futures, self._kernels = list(self._kernels.values()), {}
        for future in futures:
            future.add_done_callback(_close_result)
        self._threads.shutdown(wait=True)
        with self._lock:
            self.fork_preload = ()  # none is started after this
        if self.fork_server is not None:
            forked_calls.withdraw(self.fork_server)
            self.fork_server.close(timeout=wait)

    def _problem(self, stage: str, message: str) -> None:
        if self._on_problem is not None:
            self._on_problem(stage, message)


def _fork_server(preload: tuple[str, ...], cwd: Path | None,
                 env: dict[str, str] | None) -> ForkServer | None:
    """A fork server that imports ``preload``, when there is anything to preload (and it
    starts: stages fall back to kernels of their own otherwise)."""
    if not preload or cwd is None:
        return None
    from workbench.execution.forkserver import ForkServer

    try:
        return ForkServer(preload, cwd, env)
    except OSError:
        return None


def _close_result(future: Future[StageKernel]) -> None:
    with contextlib.suppress(Exception):
        future.result().close()
