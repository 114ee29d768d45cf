"""One stage through papermill: typed parameters in, executed notebook and scraps out."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.execution.engine import ENGINE, Activity, register_engine, write_atomically
from workbench.execution.failures import annotate, classify, describe
from workbench.execution.notebook_file import kernel_name as notebook_kernel
from workbench.execution.notebook_file import read_notebook
from workbench.execution.outputs import output_problems
from workbench.execution.reaper import STAGE_VARIABLE, stop_stage_processes
from workbench.execution.warm import StageKernel, launch, new_kernel, retire
from workbench.run_record import Failure
from workbench.scraps import read_scraps

CellCallback = Callable[[int, int, str], None]


@dataclass
class StageResult:
    """What one stage execution produced; ``failure`` classes a failed one (see
    :mod:`workbench.execution.failures`)."""

    succeeded: bool
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0
    failure: Failure | None = None


@dataclass(frozen=True)
class KernelLimits:
    """Bounds on one attempt besides the stage's whole deadline."""

    startup_timeout: float = 60.0  # the kernel must start and answer within this
    cell_timeout: float | None = None  # one cell (papermill's execution timeout)
    hang_timeout: float | None = None  # no output for this long while a cell runs
    output_limit_mb: float | None = None  # what all cells may output, in MB


def _first_line(cell: Any) -> str:
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    return next((line.strip() for line in source.splitlines() if line.strip()), "")


KILL_AFTER = 10.0  # seconds an interrupted kernel gets before it is killed
POLL = 0.2


def _kernel_process(kernel: Any) -> Any:
    return getattr(getattr(kernel, "provisioner", None), "process", None)


def _signal_kernel(kernel: Any, signum: int) -> None:
    """Signal the kernel process (its whole group when it leads one); safe from any thread."""
    process = _kernel_process(kernel)
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
        else:
            os.kill(process.pid, signum)


def _supervise(worker: threading.Thread, kernel: Any, timeout: float, activity: Activity,
               hang_timeout: float | None, cancel: threading.Event | None = None
               ) -> Failure | None:
    """Wait for the stage's worker thread; enforce the stage deadline and the hang limit.

    Returns what fired (``deadline``, ``hang``, or ``interrupted`` when ``cancel`` is set:
    the kernel is killed at once then), if anything. The kernel is interrupted
    first and killed ``KILL_AFTER`` seconds later if it is still there. The main thread waits
    here in short steps, so Ctrl-C and SIGTERM reach it at once (a signal delivered to one of
    nbclient's threads would otherwise leave it blocked in a zmq poll). nbclient's own timeouts
    are per cell, and papermill records an interrupted cell without raising, so the deadline and
    hangs are detected here.
    """
    deadline = time.monotonic() + timeout
    fired: Failure | None = None
    fired_at = 0.0
    try:
        while worker.is_alive():
            worker.join(POLL)
            now = time.monotonic()
            if fired is None:
                if cancel is not None and cancel.is_set():
                    fired = "interrupted"
                elif now >= deadline:
                    fired = "deadline"
                elif hang_timeout and activity.started and activity.quiet_for() >= hang_timeout:
                    fired = "hang"
                elif activity.over_output_limit:
                    fired = "output_limit"
                if fired is not None:
                    fired_at = now
                    _signal_kernel(kernel, signal.SIGKILL if fired == "interrupted"
                                   else signal.SIGINT)
            elif now - fired_at >= KILL_AFTER:  # repeated: also catches a late kernel
                _signal_kernel(kernel, signal.SIGKILL)
    except BaseException:
        _signal_kernel(kernel, signal.SIGKILL)
        worker.join(KILL_AFTER)
        raise
    return fired


def _stop_kernel(kernel: Any) -> None:
    """Make sure the kernel is gone: every way out of a stage ends here."""
    process = _kernel_process(kernel)
    if process is not None and process.poll() is None:
        _signal_kernel(kernel, signal.SIGKILL)
        with contextlib.suppress(Exception):
            process.wait(KILL_AFTER)


def _skip_iri_format_checks() -> None:
    """Keep jsonschema from importing ``rfc3987_syntax`` (when nothing imported it yet).

    That optional package compiles 38 Lark grammars at import, 3-5 s of every process that
    imports papermill or nbformat; it only serves jsonschema's ``iri`` format checks, which
    notebook validation never uses. A failed import is what jsonschema expects without it.
    """
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


def execute_stage(
    notebook: Path,
    output: Path,
    parameters: dict[str, Any],
    declared_outputs: Mapping[str, str],
    *,
    cwd: Path,
    timeout: float,
    on_cell: CellCallback | None = None,
    limits: KernelLimits | None = None,
    kernel: StageKernel | None = None,
    cancel: threading.Event | None = None,
    process_tag: str | None = None,
) -> StageResult:
    """Execute ``notebook`` into ``output`` with papermill and check its declared outputs.

    ``parameters`` are Python values: papermill writes them as typed literals, so the string
    ``"007"`` stays a string. ``timeout`` bounds the whole stage, not just one cell; ``limits``
    adds the kernel start-up, per-cell and hang limits. The executed notebook is replaced
    atomically after every cell, so a failure (or a kill) leaves a complete partial notebook.
    A failed result carries its failure class, also written into the notebook. ``kernel`` is
    a pre-warmed kernel to execute on (one is started otherwise); either way it is stopped
    before this returns. ``cancel`` set by another thread interrupts the stage.
    ``process_tag`` marks every process the kernel starts; they are ended with the stage.
    """
    started = time.monotonic()
    limits = limits or KernelLimits()
    _skip_iri_format_checks()
    import papermill
    from jupyter_core.utils import run_sync

    activity = Activity(int(limits.output_limit_mb * 1e6) if limits.output_limit_mb else None)

    def cell_started(cell: Any, cell_index: int, **_: Any) -> None:
        activity.cell_started(cell_index, _first_line(cell))
        if on_cell is not None:
            on_cell(cell_index, total, _first_line(cell))

    total = len(read_notebook(notebook).get("cells", [])) + 1
    output.parent.mkdir(parents=True, exist_ok=True)
    register_engine()
    write_atomically(output)
    kernel_name = notebook_kernel(read_notebook(notebook))
    if kernel is None or kernel.kernel_name != kernel_name:
        kernel = new_kernel(kernel_name)
    manager = kernel.manager
    failure: list[BaseException] = []
    exit_code: list[int | None] = []

    def work() -> None:
        try:
            if not manager.has_kernel:
                launch(kernel, cwd, {STAGE_VARIABLE: process_tag} if process_tag else None)
            # papermill's own ``cwd`` would chdir this whole process, which stages running in
            # parallel threads cannot share; the kernel was started in ``cwd`` instead.
            papermill.execute_notebook(
                str(notebook), str(output), parameters=parameters, cwd=None,
                progress_bar=False, request_save_on_cell_execute=True, km=manager,
                on_cell_start=cell_started, engine_name=ENGINE, activity=activity,
                start_timeout=limits.startup_timeout,
                execution_timeout=limits.cell_timeout,
            )
        except Exception as exc:  # every failure is reported, the notebook stays on disk
            failure.append(exc)
        finally:
            process = _kernel_process(manager)
            exit_code.append(process.poll() if process is not None else None)
            if failure:  # nbclient leaves a manager it did not create running
                with contextlib.suppress(Exception):
                    run_sync(manager.shutdown_kernel)(now=True)

    worker = threading.Thread(target=work, name=f"stage-{notebook.stem}-{id(kernel):x}",
                              daemon=True)
    worker.start()
    fired: Failure | None = "interrupted"  # unless the supervisor returns
    try:
        fired = _supervise(worker, manager, timeout, activity, limits.hang_timeout, cancel)
    finally:
        def sweep() -> None:  # what the stage started and left running ends with it
            if process_tag:
                stop_stage_processes(cwd, process_tag)

        if fired is None and not failure:
            retire(kernel, then=sweep)  # shut down gracefully (atexit runs) off the clock
        else:
            _stop_kernel(manager)
            kernel.close()
            sweep()
    returncode = exit_code[0] if exit_code else None
    duration = time.monotonic() - started
    exc = failure[0] if failure else None
    if fired is not None or exc is not None:
        kind = classify(fired, exc, activity)
        error = describe(kind, exc, activity, timeout=timeout, returncode=returncode,
                         cell_timeout=limits.cell_timeout, hang_timeout=limits.hang_timeout,
                         startup_timeout=limits.startup_timeout,
                         output_limit_mb=limits.output_limit_mb)
        if output.exists():
            annotate(output, kind, error, activity,
                     trim_to=int(limits.output_limit_mb * 1e6) if kind == "output_limit" and
                     limits.output_limit_mb else None)
        return StageResult(False, error=error, duration_s=duration, failure=kind)
    scraps = read_scraps(read_notebook(output))
    outputs = {name: scraps[name] for name in declared_outputs if name in scraps}
    problems = output_problems(scraps, declared_outputs)
    if problems:
        error = "; ".join(problems)
        annotate(output, "error", error, activity)
        return StageResult(False, outputs, error, duration, failure="error")
    return StageResult(True, outputs, None, duration)
