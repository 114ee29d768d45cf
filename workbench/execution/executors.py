"""Stage executors: where a stage's notebook runs, behind one small protocol.

An executor gets one :class:`ExecutionRequest` and returns a
:class:`~workbench.execution.stage.StageResult`; the executed notebook must be at
``request.output`` when it returns, so it is redacted and archived like any other. Executors
are registered by name in :data:`EXECUTORS` (``local``: papermill in this process; workbench's
``kubernetes`` Job executor comes through the ``workbench.executors`` entry-point group, as
third-party ones do). A registered item is a class (or factory) with ``runs_here`` (whether
its kernels are this machine's, so warm and forked kernels apply) and
``create(project, config, environment)``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from workbench.errors import WorkbenchError
from workbench.execution.reaper import stage_tag
from workbench.execution.stage import CellCallback, KernelLimits, StageResult, execute_stage
from workbench.execution.warm import StageKernel
from workbench.plugins import Registry, UnknownPlugin


class ExecutorError(WorkbenchError, RuntimeError):
    """An unknown executor, or one that is not configured for the environment."""


@dataclass
class ExecutionRequest:
    """Everything one attempt of one stage needs."""

    notebook: Path  # the project's notebook
    output: Path  # where the executed notebook must be written (the staging folder)
    parameters: dict[str, Any]  # resolved and typed
    declared_outputs: Mapping[str, str]  # output name -> type name
    cwd: Path  # the project root: the kernel's working folder
    timeout: float  # the whole stage's deadline
    run_id: str = ""
    stage: str = ""
    environment: str = ""
    on_cell: CellCallback | None = None
    limits: KernelLimits = field(default_factory=KernelLimits)
    kernel: StageKernel | None = None  # pre-warmed (executors that run here)
    cancel: threading.Event | None = None  # set by another thread: stop the stage now


class StageExecutor(Protocol):
    """Runs one stage attempt."""

    def execute(self, request: ExecutionRequest) -> StageResult: ...


class ExecutorPlugin(Protocol):
    """What :data:`EXECUTORS` holds."""

    runs_here: ClassVar[bool]

    @classmethod
    def create(cls, project: Any, config: Any, environment: str) -> StageExecutor: ...


class LocalExecutor:
    """papermill in this process, on a kernel of this machine (warm or forked when offered)."""

    runs_here: ClassVar[bool] = True

    @classmethod
    def create(cls, project: Any, config: Any, environment: str) -> LocalExecutor:
        return cls()

    def execute(self, request: ExecutionRequest) -> StageResult:
        return execute_stage(request.notebook, request.output, request.parameters,
                             request.declared_outputs, cwd=request.cwd, timeout=request.timeout,
                             on_cell=request.on_cell, limits=request.limits,
                             kernel=request.kernel, cancel=request.cancel,
                             process_tag=stage_tag(request.run_id, request.stage)
                             if request.run_id and request.stage else None)


EXECUTORS: Registry[type[ExecutorPlugin]] = Registry("executor", "workbench.executors")
EXECUTORS.register("local", LocalExecutor)


def executor_plugin(name: str) -> type[ExecutorPlugin]:
    """The executor registered as ``name``; :class:`ExecutorError` names the known ones."""
    try:
        return EXECUTORS.get(name)
    except UnknownPlugin as exc:
        raise ExecutorError(str(exc)) from None


def executor_for(name: str, project: Any, config: Any, environment: str) -> StageExecutor:
    """The executor called ``name`` for stages acting on ``environment``."""
    return executor_plugin(name).create(project, config, environment)
