"""Where kernels' own standard output and error go during a run: a log, never the terminal.

A kernel process writes to its inherited stdout and stderr besides the notebook: ipykernel's
start-up banners ("NOTE: When using the `ipython kernel` entry point ...", "To connect another
client to this kernel ..."), and anything a cell writes below Python's streams
(``os.write(1, ...)``, ``sys.__stderr__``, a C library). Inherited as they are, these lines
break the live table on a terminal and can carry a secret's value into a CI log. While a run
captures them, every kernel (cold, warm or forked, and the fork server) writes into a pipe
instead; one thread reads it line by line, redacts every known secret value and appends the
line to the run's kernel log (``.workbench/logs/<run-id>/kernels.log``, beside the other local
state, never in ``reports/``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

LOG_NAME = "kernels.log"
_current: KernelOutput | None = None
_lock = threading.Lock()


class KernelOutput:
    """A pipe whose write end kernels get as stdout and stderr, copied redacted into ``path``."""

    def __init__(self, path: Path, redact: Callable[[str], str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.redact = path, redact
        read_end, self.fd = os.pipe()
        os.set_inheritable(self.fd, True)
        self._thread = threading.Thread(target=self._copy, args=(read_end,),
                                        name="kernel-output", daemon=True)
        self._thread.start()

    def _copy(self, read_end: int) -> None:
        with open(read_end, "rb") as source, open(self.path, "ab") as sink:
            for line in source:  # ends once every kernel and our own copy have closed it
                text = line.decode("utf-8", errors="replace")
                sink.write(self.redact(text).encode("utf-8"))
                sink.flush()

    def close(self, timeout: float = 5.0) -> None:
        """Close our write end; the copy ends when the last kernel holding it has exited."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self._thread.join(timeout)


@contextlib.contextmanager
def captured(path: Path, redact: Callable[[str], str]) -> Iterator[KernelOutput]:
    """Send the output of every kernel started meanwhile to ``path`` (redacted)."""
    global _current
    output = KernelOutput(path, redact)
    with _lock:
        previous, _current = _current, output
    try:
        yield output
    finally:
        with _lock:
            _current = previous
        output.close()


def stdio() -> dict[str, int]:
    """``stdout``/``stderr`` for a kernel's (or the fork server's) ``Popen`` while a run
    captures kernel output; empty otherwise (the process inherits ours)."""
    with _lock:
        current = _current
    return {"stdout": current.fd, "stderr": current.fd} if current is not None else {}
