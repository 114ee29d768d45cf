"""Deploy targets. ``local`` (default) serves on 127.0.0.1 behind a stable proxy;
``kubernetes`` applies a Deployment and Service with the official client."""

from __future__ import annotations

from typing import Any


def deploy_to(project: Any, config: Any, environment: str, model_name: str, version: str,
              tracking_uri: str) -> Any:
    """Serve ``models:/<model_name>/<version>`` on ``environment``'s target; the endpoint
    (``url``, ``version``, ``describe()``) once it is up."""
    if environment not in config.environments:
        raise ValueError(f"unknown environment {environment!r}: configs/environments.yaml "
                         f"defines {sorted(config.environments)}")
    target = config.environments[environment].deploy
    if target.target == "kubernetes":
        from workbench.k8s import target as k8s

        return k8s.deploy(project, config, environment, model_name, version, tracking_uri)
    from workbench.deploy import local

    return local.serve(project, environment, target.port, model_name, version, tracking_uri)


def rollback_to(project: Any, config: Any, environment: str, model_name: str, version: str,
                tracking_uri: str) -> Any:
    """Serve an earlier ``version`` again: a zero-downtime redeploy on the local target, the
    previous ReplicaSet revision on Kubernetes (like ``kubectl rollout undo --to-revision``)."""
    if config.environments[environment].deploy.target == "kubernetes":
        from workbench.k8s import target as k8s

        return k8s.rollback_to(project, config, environment, version)
    return deploy_to(project, config, environment, model_name, version, tracking_uri)


def serving(project: Any, config: Any, environment: str) -> Any:
    """The environment's running endpoint (``url``, ``version``), or None."""
    if config.environments[environment].deploy.target == "kubernetes":
        from workbench.k8s import target as k8s

        return k8s.current(project, config, environment)
    from workbench.deploy import local

    return local.current(project, environment)


def deploy_model(environment: str, model_name: str, version: str) -> Any:
    """Deploy ``models:/<model_name>/<version>`` to the target configured for ``environment``.

    The one platform call the deploy notebook makes; returns the running endpoint.
    """
    from workbench.config import load_config
    from workbench.project import find_project
    from workbench.registry.store import resolve

    project = find_project()
    config = load_config(project.configs)
    tracking_uri = resolve(project, config.pipeline.mlflow).tracking_uri
    return deploy_to(project, config, environment, model_name, version, tracking_uri)
