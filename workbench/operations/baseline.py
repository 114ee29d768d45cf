"""The production baseline for performance validation: the version an environment's alias
names, served on a temporary local model server so the live endpoint takes no test load."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from workbench.config import Config
from workbench.project import Project


@contextmanager
def baseline_server(project: Project, config: Config, environment: str, model_name: str,
                    tracking_uri: str) -> Iterator[tuple[str, str] | None]:
    """Yield ``(url, version)`` of a temporary server for ``environment``'s current version,
    or None when there is none (a first release); the server is stopped afterwards."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from workbench.deploy import local

    if not environment or environment not in config.environments:
        yield None
        return
    client: Any = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = str(client.get_model_version_by_alias(model_name, environment).version)
    except MlflowException:
        yield None
        return
    process, port, _log = local.start_model_server(project, f"{environment}-baseline",
                                                   model_name, version, tracking_uri, 180.0)
    try:
        yield f"http://{local.HOST}:{port}", version
    finally:
        local.stop_group(process.pid, 10)
