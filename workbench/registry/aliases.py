"""Moving a registered model's alias safely when several runs or commands do it at once.

MLflow's SQL store sets an alias by reading whether it exists and then inserting or updating
it; two processes moving one alias of an embedded (SQLite) store at the same moment collide
on the alias table's UNIQUE constraint, and each must also read the version the alias held
before its own move. On the embedded store moves therefore take a file lock beside the
database; on any store a collision is retried once (the second attempt finds the row).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from workbench.registry.client import sqlite_file, version_holding

LOCK_TIMEOUT_S = 300


@contextlib.contextmanager
def alias_lock(tracking_uri: str) -> Iterator[None]:
    """One alias move at a time on an embedded store (nothing to lock on a server)."""
    db = sqlite_file(tracking_uri)
    if db is None:
        yield
        return
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(db.parent / ".aliases.lock", timeout=LOCK_TIMEOUT_S):
        yield


def move_alias(client: Any, tracking_uri: str, model: str, alias: str, version: str
               ) -> str | None:
    """Point ``alias`` at ``version`` under :func:`alias_lock`; the version it held before
    (None if it held none)."""
    with alias_lock(tracking_uri):
        previous = version_holding(client, model, alias)
        set_alias(client, model, alias, version)
    return previous


# How a unique-key collision reads, in the store's error and in a tracking server's REST error
# alike: SQLite "(sqlite3.IntegrityError) UNIQUE constraint failed", PostgreSQL
# "(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint".
COLLISIONS = ("UNIQUE constraint", "IntegrityError", "UniqueViolation", "duplicate key value")


def set_alias(client: Any, model: str, alias: str, version: str) -> None:
    """``client.set_registered_model_alias``, retried once if another writer inserted the
    alias between MLflow's read and its insert."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_registered_model_alias(model, alias, version)
    except MlflowException as exc:
        if not any(marker in str(exc) for marker in COLLISIONS):
            raise
        client.set_registered_model_alias(model, alias, version)
