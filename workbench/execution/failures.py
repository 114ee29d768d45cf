"""What went wrong in a stage attempt: its failure class, one clear message, and an executed
notebook that says the same.

Classes: ``startup`` (the kernel did not start or answer), ``kernel_died`` (its process ended
mid-run, e.g. killed for memory), ``hang`` (no output for ``hang_timeout`` s), ``cell_timeout``
(one cell over ``cell_timeout``), ``deadline`` (the stage over ``timeout``), ``error`` (a cell
raised, or outputs are missing). ``interrupted`` is recorded by the runner for an attempt cut
short by Ctrl-C, SIGTERM or a crash of the workbench itself.

Papermill marks every cell "completed" without an error banner after a cell timeout, and a
kernel killed from outside leaves no trace in the notebook; :func:`annotate` rewrites the
staged notebook's metadata and adds a banner so the archived copy tells what happened.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from workbench.execution.engine import Activity, AtomicHandler
from workbench.run_record import Failure

BANNER_TAG = "workbench-failure"
PAPERMILL_MARKER = "papermill-error-cell-tag"  # papermill's error banner and anchor cells


def classify(fired: Failure | None, exc: BaseException | None, activity: Activity) -> Failure:
    """The failure class of an attempt: what our supervisor fired, else what was raised."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillException, PapermillExecutionError

    if fired is not None:
        return fired
    if exc is None or isinstance(exc, PapermillExecutionError):
        return "error"
    if isinstance(exc, CellTimeoutError):
        return "cell_timeout"
    if not activity.started:
        return "error" if isinstance(exc, PapermillException) else "startup"
    if isinstance(exc, DeadKernelError):
        return "kernel_died"
    return "error"


def _where(activity: Activity) -> str:
    if activity.cell is None:
        return ""
    shown = f" ({activity.source[:60]})" if activity.source else ""
    return f" in cell {activity.cell}{shown}"


def _exit_status(returncode: int | None) -> str:
    if returncode is None:
        return ""
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() \
            else str(-returncode)
        hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
        return f"; the kernel was killed by {name}{hint}"
    return f"; the kernel exited with code {returncode}"


def describe(failure: str, exc: BaseException | None, activity: Activity, *,
             timeout: float, cell_timeout: float | None, hang_timeout: float | None,
             startup_timeout: float, returncode: int | None = None,
             output_limit_mb: float | None = None) -> str:
    """One line naming the class, where it happened and the limit that applied."""
    from papermill.exceptions import PapermillExecutionError

    where = _where(activity)
    if failure == "deadline":
        return f"stage exceeded its timeout of {timeout:g} s"
    if failure == "interrupted":
        return f"interrupted{where}: the run was stopped"
    if failure == "output_limit":
        return (f"output limit: the cells output {activity.output_bytes / 1e6:.1f} MB{where}, "
                f"more than the stage's output_limit_mb of {output_limit_mb:g}; the kernel was "
                f"stopped")
    if failure == "hang":
        return f"hang: no output for {hang_timeout:g} s{where}; the kernel was stopped"
    if failure == "cell_timeout":
        return f"cell timeout: ran longer than {cell_timeout:g} s{where}"
    if failure == "kernel_died":
        return f"kernel died{where}{_exit_status(returncode)}"
    if failure == "startup":
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else "no reply"
        return (f"kernel failed to start (limit {startup_timeout:g} s): "
                f"{_first_line(detail)}{_exit_status(returncode)}")
    if isinstance(exc, PapermillExecutionError):
        return f"cell {exc.exec_count} raised {exc.ename}: {exc.evalue}"
    return f"{type(exc).__name__}: {exc}" if exc is not None else "failed"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


def annotate(path: Path, failure: str, message: str, activity: Activity,
             trim_to: int | None = None) -> None:
    """Record the failure in the staged notebook (metadata, cell states and a banner); with
    ``trim_to``, replace the largest outputs by a note until the notebook's outputs fit."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # nothing usable was written; the record says what happened
    if trim_to is not None:
        trim_outputs(nb, trim_to)
    nb.setdefault("metadata", {})["workbench"] = {"failure": failure, "message": message,
                                                  "cell": activity.cell}
    if failure != "error":  # papermill already banners and marks a cell that raised
        _mark_cells(nb.get("cells", []), activity.cell)
        nb["cells"] = [_banner(failure, message), *nb.get("cells", [])]
    AtomicHandler().write(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                          str(path))


def trim_outputs(nb: dict[str, Any], limit: int) -> int:
    """Replace the largest outputs of ``nb`` by a short note until what is left is at most
    ``limit`` bytes; return how many were replaced."""
    from workbench.execution.engine import output_size

    outputs = [(output_size(out), cell, index) for cell in nb.get("cells", [])
               for index, out in enumerate(cell.get("outputs", []))]
    total = sum(size for size, _, _ in outputs)
    replaced = 0
    for size, cell, index in sorted(outputs, key=lambda item: -item[0]):
        if total <= limit:
            break
        cell["outputs"][index] = {"name": "stderr", "output_type": "stream", "text":
                                  f"[workbench: {size / 1e6:.1f} MB of output removed: over "
                                  f"the stage's output limit]\n"}
        total -= size
        replaced += 1
    return replaced


def _mark_cells(cells: list[dict[str, Any]], failed: int | None) -> None:
    """Mark the failed cell and the ones after it; ``failed`` counts cells as executed,
    without the marker cells papermill inserts after an error."""
    index = -1
    for cell in cells:
        if PAPERMILL_MARKER in cell.get("metadata", {}).get("tags", []):
            continue
        index += 1
        meta = cell.get("metadata", {}).get("papermill")
        if not isinstance(meta, dict):
            continue
        if index == failed:
            meta["status"], meta["exception"] = "failed", True
        elif failed is None or index > failed:
            meta["status"] = "pending"  # never ran, whatever papermill's cleanup said


def _banner(failure: str, message: str) -> dict[str, Any]:
    return {"cell_type": "markdown", "id": BANNER_TAG,
            "metadata": {"tags": [BANNER_TAG]},
            "source": f"**Stage failed ({failure})**: {message}"}
