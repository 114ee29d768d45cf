"""Kernels left behind by a run whose process died.

A kernel exits on its own shortly after its parent dies (ipykernel polls its parent), but one
stuck in C code may not. Kernels of a run carry ``WORKBENCH_RUN_ID`` and ``WORKBENCH_PROJECT``
in their environment (the runner sets them), so a resumed run can find and stop them by pid.
Model servers inherit the same variables but are meant to outlive the run: only processes whose
command line is an IPython kernel are stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc")


def _environment(pid: int) -> dict[str, str]:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _is_kernel(pid: int) -> bool:
    try:
        cmdline = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    return b"ipykernel" in cmdline


STAGE_VARIABLE = "WORKBENCH_STAGE"  # <run-id>/<stage>: every process a stage's kernel starts
# inherits it (also one started in a new session), so the stage can end them all


def stage_tag(run_id: str, stage: str) -> str:
    return f"{run_id}/{stage}"


def _processes(project_root: Path, match: Callable[[dict[str, str]], bool]) -> list[int]:
    if not PROC.is_dir():
        return []
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        env = _environment(int(entry.name))
        if env.get("WORKBENCH_PROJECT") == str(project_root) and match(env):
            found.append(int(entry.name))
    return found


def _kill(pids: list[int]) -> list[int]:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    return pids


def stop_stage_processes(project_root: Path, tag: str) -> list[int]:
    """Kill every process still running that a stage (``tag``) started: its kernel is done, so
    anything it left (a child in a new session, a double fork) ends with it."""
    return _kill(_processes(project_root, lambda env: env.get(STAGE_VARIABLE) == tag))


def stop_run_stage_processes(project_root: Path, run_id: str) -> list[int]:
    """Kill what any stage of ``run_id`` left running (a dead run's, before it resumes)."""
    prefix = f"{run_id}/"
    return _kill(_processes(project_root,
                            lambda env: env.get(STAGE_VARIABLE, "").startswith(prefix)))


def run_kernels(project_root: Path, run_id: str) -> list[int]:
    """Pids of live kernels started for ``run_id`` of the project at ``project_root``."""
    return [pid for pid in _processes(project_root,
                                      lambda env: env.get("WORKBENCH_RUN_ID") == run_id)
            if _is_kernel(pid)]


def stop_run_kernels(project_root: Path, run_id: str) -> list[int]:
    """Kill the kernels (with their process groups) a dead run left; return their pids."""
    return _kill(run_kernels(project_root, run_id))
