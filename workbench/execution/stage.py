"""One stage through papermill: typed parameters in, executed notebook and scraps out."""

from __future__ import annotations

import json
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


def _describe_failure(exc: BaseException, timeout: float) -> str:
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return f"cell {exc.exec_count} raised {exc.ename}: {exc.evalue}"
    if isinstance(exc, CellTimeoutError):
        return f"stage exceeded its timeout of {timeout:g} s"
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
    import papermill

    started = time.monotonic()
    deadline = started + timeout

    def remaining(_cell: Any) -> float:
        return max(deadline - time.monotonic(), 0.001)

    def cell_started(cell: Any, cell_index: int, **_: Any) -> None:
        if on_cell is not None:
            on_cell(cell_index, total, _first_line(cell))

    total = len(json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])) + 1
    output.parent.mkdir(parents=True, exist_ok=True)
    error: str | None = None
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            cwd=str(cwd),
            progress_bar=False,
            request_save_on_cell_execute=True,
            timeout_func=remaining,
            on_cell_start=cell_started,
        )
    except Exception as exc:  # every failure is reported, the notebook stays on disk
        error = _describe_failure(exc, timeout)
    duration = time.monotonic() - started
    if error is not None:
        return StageResult(False, error=error, duration_s=duration)
    scraps = read_scraps(json.loads(output.read_text(encoding="utf-8")))
    outputs = {name: scraps[name] for name in declared_outputs if name in scraps}
    problems = output_problems(scraps, declared_outputs)
    if problems:
        return StageResult(False, outputs, "; ".join(problems), duration)
    return StageResult(True, outputs, None, duration)
