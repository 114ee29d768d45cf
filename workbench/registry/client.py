"""The one way workbench talks to an MLflow store: a client for a tracking URI, and the few
registry questions every layer asks (which version holds an alias)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def client_for(tracking_uri: str | None = None) -> Any:
    """An ``MlflowClient`` for ``tracking_uri`` (tracking and registry alike); None: the
    URI MLflow is set to (a notebook's, after ``connect()``)."""
    from mlflow import MlflowClient

    if tracking_uri is None:
        return MlflowClient()
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def version_holding(client: Any, model: str, alias: str) -> str | None:
    """The version ``alias`` of ``model`` points at, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model, alias).version)
    except MlflowException:
        return None


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for any other store)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None
