"""The production baseline for performance validation: the version an environment's alias
names, served on a temporary local model server so the live endpoint takes no test load."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from workbench.config import Config
from workbench.project import Project


@contextmanager
def baseline_server(project: Project, config: Config, environment: str, model_name: str,
                    tracking_uri: str) -> Iterator[tuple[str, str] | None]:
    """Yield ``(url, version)`` of a temporary server for ``environment``'s current version,
    or None when there is none (a first release); the server is stopped afterwards."""
    from workbench.deploy import local
    from workbench.registry.client import client_for, version_holding

    if not environment or environment not in config.environments:
        yield None
        return
    version = version_holding(client_for(tracking_uri), model_name, environment)
    if version is None:
        yield None
        return
    process, port, _log = local.start_model_server(project, f"{environment}-baseline",
                                                   model_name, version, tracking_uri, 180.0)
    try:
        yield f"http://{local.HOST}:{port}", version
    finally:
        local.stop_group(process.pid, 10)
