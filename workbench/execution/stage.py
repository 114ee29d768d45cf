"""One stage through papermill: typed parameters in, executed notebook and scraps out."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.execution.outputs import output_problems
from workbench.scraps import read_scraps

CellCallback = Callable[[int, int, str], None]


@dataclass
class StageResult:
    """What one stage execution produced."""

    succeeded: bool
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0


def _first_line(cell: Any) -> str:
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    return next((line.strip() for line in source.splitlines() if line.strip()), "")


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _kernel_name(notebook: Path) -> str:
    return _read(notebook).get("metadata", {}).get("kernelspec", {}).get("name", "python3")


KILL_AFTER = 10.0  # seconds an interrupted kernel gets before it is killed
POLL = 0.2


def _signal_kernel(kernel: Any, signum: int) -> None:
    """Signal the kernel process (its whole group when it leads one); safe from any thread."""
    process = getattr(getattr(kernel, "provisioner", None), "process", None)
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
        else:
            os.kill(process.pid, signum)


def _supervise(worker: threading.Thread, kernel: Any, timeout: float) -> bool:
    """Wait for the stage's worker thread; enforce the stage timeout; return whether it fired.

    The main thread waits here in short steps, so Ctrl-C and SIGTERM reach it at once (a signal
    delivered to one of nbclient's threads would otherwise leave it blocked in a zmq poll).
    nbclient's own timeouts are per cell, and papermill records an interrupted cell without
    raising, so the whole-stage timeout is enforced and detected here.
    """
    deadline = time.monotonic() + timeout
    fired = False
    try:
        while worker.is_alive():
            worker.join(POLL)
            overdue = time.monotonic() - deadline
            if overdue >= 0 and not fired:
                fired = True
                _signal_kernel(kernel, signal.SIGINT)
            if overdue >= KILL_AFTER:  # repeated: also catches a kernel that started late
                _signal_kernel(kernel, signal.SIGKILL)
    except BaseException:
        _signal_kernel(kernel, signal.SIGKILL)
        worker.join(KILL_AFTER)
        raise
    return fired


def _describe_failure(exc: BaseException) -> str:
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return f"cell {exc.exec_count} raised {exc.ename}: {exc.evalue}"
    if isinstance(exc, DeadKernelError):
        return f"kernel died: {exc}"
    return f"{type(exc).__name__}: {exc}"


def execute_stage(
    notebook: Path,
    output: Path,
    parameters: dict[str, Any],
    declared_outputs: dict[str, str],
    *,
    cwd: Path,
    timeout: float,
    on_cell: CellCallback | None = None,
) -> StageResult:
    """Execute ``notebook`` into ``output`` with papermill and check its declared outputs.

    ``parameters`` are Python values: papermill writes them as typed literals, so the string
    ``"007"`` stays a string. ``timeout`` bounds the whole stage, not just one cell. The executed
    notebook is written after every cell, so a failure leaves the partial notebook behind.
    """
    started = time.monotonic()
    import papermill
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    def cell_started(cell: Any, cell_index: int, **_: Any) -> None:
        if on_cell is not None:
            on_cell(cell_index, total, _first_line(cell))

    total = len(_read(notebook).get("cells", [])) + 1
    output.parent.mkdir(parents=True, exist_ok=True)
    # IPC sockets in a private folder instead of unencrypted TCP on localhost.
    with tempfile.TemporaryDirectory(prefix="workbench-kernel-") as sockets:
        # Async, as nbclient creates it itself: a blocking manager's client blocks nbclient's
        # event loop in iopub reads, so a dead kernel or a timeout is never noticed.
        kernel = AsyncKernelManager(kernel_name=_kernel_name(notebook), transport="ipc",
                                    ip=f"{sockets}/kernel")
        failure: list[BaseException] = []

        def work() -> None:
            try:
                papermill.execute_notebook(
                    str(notebook), str(output), parameters=parameters, cwd=str(cwd),
                    progress_bar=False, request_save_on_cell_execute=True, km=kernel,
                    on_cell_start=cell_started,
                )
            except Exception as exc:  # every failure is reported, the notebook stays on disk
                failure.append(exc)
            finally:
                with contextlib.suppress(Exception):
                    if kernel.has_kernel:  # nbclient leaves a manager it did not create running
                        run_sync(kernel.shutdown_kernel)(now=False)

        worker = threading.Thread(target=work, name=f"stage-{notebook.stem}", daemon=True)
        worker.start()
        timed_out = _supervise(worker, kernel, timeout)
    error = _describe_failure(failure[0]) if failure else None
    duration = time.monotonic() - started
    if timed_out:
        error = f"stage exceeded its timeout of {timeout:g} s"
    if error is not None:
        return StageResult(False, error=error, duration_s=duration)
    scraps = read_scraps(_read(output))
    outputs = {name: scraps[name] for name in declared_outputs if name in scraps}
    problems = output_problems(scraps, declared_outputs)
    if problems:
        return StageResult(False, outputs, "; ".join(problems), duration)
    return StageResult(True, outputs, None, duration)
