"""Papermill plumbing for stage execution: an engine that notes when the kernel last produced
output (for hang detection) and atomic writes of the executed notebook.

Papermill saves the output notebook after every cell with a plain ``open(path, "w")``; a kill
during that write would leave a torn file that a later ``workbench resume`` could take for a
notebook. Registering :class:`AtomicHandler` for the output path makes every save a complete
replacement (temporary file, then rename).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ENGINE = "workbench"
_registered: set[str] = set()
_lock = threading.Lock()


class Activity:
    """When the running notebook last showed life: a cell started or an output arrived."""

    def __init__(self, output_limit: int | None = None) -> None:
        self.last = time.monotonic()
        self.cell: int | None = None  # index of the cell executing (or last executed)
        self.source = ""  # its first line, for messages
        self.output_bytes = 0  # what the cells have output so far (text and data)
        self.output_limit = output_limit

    def cell_started(self, index: int, source: str) -> None:
        self.cell, self.source, self.last = index, source, time.monotonic()

    def output(self, size: int = 0) -> None:
        self.last = time.monotonic()
        self.output_bytes += size

    @property
    def over_output_limit(self) -> bool:
        return self.output_limit is not None and self.output_bytes > self.output_limit

    @property
    def started(self) -> bool:
        """Whether any cell has started, i.e. the kernel came up and answered."""
        return self.cell is not None

    def quiet_for(self) -> float:
        return time.monotonic() - self.last


class AtomicHandler:
    """A papermill I/O handler for local files whose writes replace the file atomically."""

    def read(self, path: str) -> str:
        return Path(path).read_text(encoding="utf-8")

    def listdir(self, path: str) -> list[str]:
        return [os.path.join(path, name) for name in os.listdir(path)]

    def write(self, buf: str, path: str) -> None:
        target = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(buf)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def pretty_path(self, path: str) -> str:
        return path


def output_size(output: Any) -> int:
    """About how many bytes an output holds (its text, or its data by type)."""
    if not isinstance(output, dict):
        return 0
    size = len(str(output.get("text", ""))) + len(str(output.get("traceback", "")))
    data = output.get("data")
    if isinstance(data, dict):
        size += sum(len(str(value)) for value in data.values())
    return size


def write_atomically(path: Path) -> None:
    """Route papermill's writes of ``path`` through :class:`AtomicHandler`."""
    from papermill.iorw import papermill_io

    key = str(path)
    with _lock:
        if key not in _registered:
            papermill_io.register(key, AtomicHandler())
            _registered.add(key)


def register_engine() -> None:
    """Register the ``workbench`` papermill engine (once per process)."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger
    from papermill.utils import merge_kwargs, remove_args

    with _lock:
        if ENGINE in _registered:
            return

        class WatchedClient(PapermillNotebookClient):
            """Papermill's client, telling an :class:`Activity` about every output."""

            def __init__(self, nb_man: Any, activity: Activity | None = None, **kw: Any):
                super().__init__(nb_man, **kw)
                self.activity = activity

            def process_message(self, *args: Any, **kwargs: Any) -> Any:
                output = super().process_message(*args, **kwargs)
                if output is not None and self.activity is not None:
                    self.activity.output(output_size(output))
                return output

        class WatchedEngine(NBClientEngine):
            """nbclient execution as papermill does it, with a :class:`WatchedClient`."""

            @classmethod
            def execute_managed_notebook(cls, nb_man: Any, kernel_name: str,
                                         log_output: bool = False, stdout_file: Any = None,
                                         stderr_file: Any = None, start_timeout: float = 60,
                                         execution_timeout: float | None = None,
                                         activity: Activity | None = None, **kwargs: Any
                                         ) -> Any:
                kwargs = remove_args(["input_path"], **kwargs)
                safe = remove_args(["timeout", "startup_timeout"], **kwargs)
                final = merge_kwargs(safe, timeout=execution_timeout or kwargs.get("timeout"),
                                     startup_timeout=start_timeout, kernel_name=kernel_name,
                                     log=logger, log_output=log_output, stdout_file=stdout_file,
                                     stderr_file=stderr_file)
                return WatchedClient(nb_man, activity=activity, **final).execute()

        papermill_engines.register(ENGINE, WatchedEngine)
        _registered.add(ENGINE)
