"""The one error base: every failure workbench reports to a person carries a message meant for
them and the exit code the command ends with.

Exit codes: 0 success, 1 a stage or gate failed (or a record does not verify), 2 a usage or
configuration error (nothing ran), 3 awaiting approval. The command line catches
:class:`WorkbenchError` alone and prints ``error: <message>``; anything else is a bug, shown
with its type (and a traceback with ``--debug``).
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AWAITING = 0, 1, 2, 3


class WorkbenchError(Exception):
    """A failure with a message for the user; ``exit_code`` says how the command ends."""

    exit_code: int = EXIT_USAGE

    def user_message(self) -> str:
        """What the command line prints after ``error:``."""
        return str(self)


class UsageError(WorkbenchError):
    """A user mistake on the command line: one clear message, exit 2."""


class FailedError(WorkbenchError):
    """Something was tried and failed (a stage, a gate, a check): exit 1."""

    exit_code = EXIT_FAILED
