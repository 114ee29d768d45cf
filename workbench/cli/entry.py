"""The console script: :func:`workbench.cli.app.main`, then an exit that skips the interpreter's
teardown.

Once a command is done, everything that must happen at exit happens here in the order Python
itself follows: non-daemon threads finish (and ``concurrent.futures`` pools wind down), every
``atexit`` handler runs (logging, MLflow, coverage under the tests), stdout and stderr are
flushed. What is skipped is the teardown after that: freeing every object of a process that
has imported MLflow, scikit-learn and pandas, which took 1.3-1.5 s after the run record was
written and does nothing for the user. ``main`` itself is unchanged, for callers in the same
process (the tests).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading

from workbench.cli.app import main


def _code(value: object) -> int:
    """The exit status ``sys.exit(value)`` would give (printing a message as it would)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1


def exit_now(code: int) -> None:
    """Finish what an exit must finish, then leave without the teardown."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None:  # not CPython's threading: the ordinary exit
        sys.exit(code)
    shutdown()  # joins non-daemon threads, runs threading's own exit hooks
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or a broken pipe
            stream.flush()
    os._exit(code)


def entry() -> None:
    """``workbench``: run the command, then :func:`exit_now` with its exit status."""
    try:
        main()
        code = 0
    except SystemExit as done:
        code = _code(done.code)
    exit_now(code)
