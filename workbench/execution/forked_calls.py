"""Short tasks of the workbench process forked from the run's fork server.

The fork server imported MLflow for the kernels; the few things the ``workbench`` process
itself does with MLflow during a run (creating a new store's experiment, logging each stage's
notebook and HTML as artifacts) would import it a second time there, and keep it: 130-200 MB
more in the run's process tree for the rest of the run. While a run's server is offered here,
such a task runs in a process forked from it instead, and exits when done.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.execution.forkserver import ForkServer

CALL_TIMEOUT = 300.0  # seconds for the server to be ready and the task to finish
_offered: list[ForkServer] = []
_lock = threading.Lock()


def offer(server: ForkServer) -> None:
    """Let tasks fork from ``server`` until it is withdrawn."""
    with _lock:
        _offered.append(server)


def withdraw(server: ForkServer) -> None:
    with _lock:
        if server in _offered:
            _offered.remove(server)


def available() -> bool:
    """Whether a fork server is offered that can fork (it may still be importing)."""
    with _lock:
        return any(not s.gone and not s.problem for s in _offered)


def call(target: str, payload: Any, cwd: Path, timeout: float = CALL_TIMEOUT
         ) -> tuple[bool, str | None]:
    """Run ``target`` (``module:function``) on ``payload`` in a process forked from the
    offered server: (True, None) once it succeeded, (True, error) when it failed, (False,
    None) when no server can fork it (the caller then does it itself)."""
    from workbench.execution.forkserver import ForkServerError

    with _lock:
        servers = [s for s in _offered if not s.gone and not s.problem]
    if not servers:
        return False, None
    try:
        return True, servers[-1].call(target, payload, str(cwd), timeout)
    except ForkServerError:
        return False, None
