"""Stage executors: where a stage's notebook runs.

``local`` runs papermill in this process (``execute_stage``). Other executors are looked up by
name and must have ``execute_stage``'s signature and return a ``StageResult``; the executed
notebook must be at ``output`` when they return, so it is archived like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from workbench.execution.stage import CellCallback, StageResult, execute_stage

EXECUTORS = ("local", "kubernetes")


class StageExecutor(Protocol):
    def __call__(self, notebook: Path, output: Path, parameters: dict[str, Any],
                 declared_outputs: dict[str, str], *, cwd: Path, timeout: float,
                 on_cell: CellCallback | None = None) -> StageResult: ...


class ExecutorError(RuntimeError):
    """An unknown executor, or one that is not configured for the environment."""


def executor_for(name: str, project: Any, config: Any, environment: str) -> StageExecutor:
    """The executor called ``name`` for stages acting on ``environment``."""
    if name == "local":
        return execute_stage
    if name == "kubernetes":
        from workbench.k8s.executor import make_executor

        return make_executor(project, config, environment)
    raise ExecutorError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
