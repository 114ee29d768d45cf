"""Deploy targets. ``local`` (default) serves with ``mlflow models serve`` on 127.0.0.1."""

from __future__ import annotations

from typing import Any


def deploy_model(environment: str, model_name: str, version: str) -> Any:
    """Deploy ``models:/<model_name>/<version>`` to the target configured for ``environment``.

    The one platform call the deploy notebook makes; returns the running server record.
    """
    from workbench.config import load_config
    from workbench.deploy import local
    from workbench.project import find_project
    from workbench.registry.store import resolve

    project = find_project()
    config = load_config(project.configs)
    if environment not in config.environments:
        raise ValueError(f"unknown environment {environment!r}: configs/environments.yaml "
                         f"defines {sorted(config.environments)}")
    target = config.environments[environment].deploy
    if target.target != "local":
        raise NotImplementedError(f"deploy target {target.target!r} is not available yet")
    tracking_uri = resolve(project, config.pipeline.mlflow).tracking_uri
    return local.serve(project, environment, target.port, model_name, version, tracking_uri)
