"""Deploy targets (see :mod:`workbench.deploy.targets`). ``local`` (default) serves on
127.0.0.1 behind a stable proxy; ``kubernetes`` applies a Deployment and Service with the
official client. The functions here are what notebooks and operations call."""

from __future__ import annotations

from typing import Any


def _request(project: Any, config: Any, environment: str, model_name: str, version: str,
             tracking_uri: str) -> Any:
    from workbench.deploy.targets import DeployRequest

    return DeployRequest(project, config, environment, model_name, str(version), tracking_uri)


def deploy_to(project: Any, config: Any, environment: str, model_name: str, version: str,
              tracking_uri: str, strategy: str | None = None) -> Any:
    """Serve ``models:/<model_name>/<version>`` on ``environment``'s target the way its
    ``deploy.strategy`` says (``strategy`` overrides it); the endpoint (``url``, ``version``,
    ``describe()``) once it is up."""
    from workbench.deploy.targets import strategy_named, target_of

    target = target_of(config, environment)
    strategy = strategy or config.environments[environment].deploy.strategy
    return strategy_named(strategy).release(
        target, _request(project, config, environment, model_name, version, tracking_uri))


def rollback_to(project: Any, config: Any, environment: str, model_name: str, version: str,
                tracking_uri: str) -> Any:
    """Serve an earlier ``version`` again: a zero-downtime redeploy on the local target, the
    previous ReplicaSet revision on Kubernetes (like ``kubectl rollout undo --to-revision``)."""
    from workbench.deploy.targets import target_of

    return target_of(config, environment).rollback(
        _request(project, config, environment, model_name, version, tracking_uri))


def serving(project: Any, config: Any, environment: str) -> Any:
    """The environment's running endpoint (``url``, ``version``), or None."""
    from workbench.deploy.targets import target_of

    return target_of(config, environment).current(project, config, environment)


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
