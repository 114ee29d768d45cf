"""Deploy targets and strategies: where a model version is served, and how traffic moves to it.

A target (``local``: a model server behind a proxy on 127.0.0.1; ``kubernetes``: a Deployment
and Service, registered through the ``workbench.deploy_targets`` entry-point group, as a third
party's would be) implements :class:`DeployTarget` on one :class:`DeployRequest`. A strategy
(:data:`STRATEGIES`, entry-point group ``workbench.deploy_strategies``) decides how a release
reaches the target: ``replace`` (the default) hands the whole endpoint to the new version at
once, without dropping a request. Progressive strategies (shadow, canary) plug in here,
without touching the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from workbench.deploy.local import LocalTarget
from workbench.errors import WorkbenchError
from workbench.plugins import Registry, UnknownPlugin


class TargetError(WorkbenchError, ValueError):
    """An unknown environment, target or strategy."""


@dataclass(frozen=True)
class DeployRequest:
    """Serve ``models:/<model_name>/<version>`` on ``environment``'s target."""

    project: Any  # workbench.project.Project
    config: Any  # workbench.config.Config
    environment: str
    model_name: str
    version: str
    tracking_uri: str


class Endpoint(Protocol):
    """What serves an environment: where it answers and which version it serves."""

    @property
    def url(self) -> str: ...

    @property
    def version(self) -> str: ...

    def describe(self) -> str: ...


class DeployTarget(Protocol):
    def deploy(self, request: DeployRequest) -> Endpoint:
        """Serve ``request.version``; return once the endpoint answers with it."""

    def rollback(self, request: DeployRequest) -> Endpoint:
        """Serve an earlier, already released ``request.version`` again."""

    def current(self, project: Any, config: Any, environment: str) -> Endpoint | None:
        """What serves ``environment`` now, or None."""


class DeployStrategy(Protocol):
    def release(self, target: DeployTarget, request: DeployRequest) -> Endpoint:
        """Bring ``request.version`` to the environment through ``target``."""


class Replace:
    """The whole endpoint moves to the new version at once (the target drops no request)."""

    def release(self, target: DeployTarget, request: DeployRequest) -> Endpoint:
        return target.deploy(request)


class Canary:
    """The new version takes a growing share of traffic, step by step, each step analysed
    (``deploy.canary``; :mod:`workbench.deploy.canary`), on a target that can split traffic."""

    def release(self, target: DeployTarget, request: DeployRequest) -> Endpoint:
        if isinstance(target, LocalTarget):
            from workbench.deploy.canary import release_local

            return release_local(request)
        progressive = getattr(target, "canary", None)  # another target's own canary
        if progressive is None:
            raise TargetError(f"environment {request.environment!r}: its deploy target "
                              f"{type(target).__name__} cannot run a canary (the local target "
                              f"can); use strategy: replace there")
        endpoint: Endpoint = progressive(request)
        return endpoint


# Each registry holds classes (or factories taking no argument): one instance per use.
TARGETS: Registry[Callable[[], DeployTarget]] = Registry("deploy target",
                                                         "workbench.deploy_targets")
TARGETS.register("local", LocalTarget)
STRATEGIES: Registry[Callable[[], DeployStrategy]] = Registry("deploy strategy",
                                                              "workbench.deploy_strategies")
STRATEGIES.register("replace", Replace)
STRATEGIES.register("canary", Canary)


def target_named(name: str) -> DeployTarget:
    """The deploy target registered as ``name`` (``local`` is built in)."""
    try:
        return TARGETS.get(name)()
    except UnknownPlugin as exc:
        raise TargetError(str(exc)) from None


def target_of(config: Any, environment: str) -> DeployTarget:
    """The target ``environment`` deploys to (``deploy.target`` in environments.yaml)."""
    if environment not in config.environments:
        raise TargetError(f"unknown environment {environment!r}: configs/environments.yaml "
                          f"defines {sorted(config.environments)}")
    return target_named(config.environments[environment].deploy.target)


def strategy_named(name: str) -> DeployStrategy:
    try:
        return STRATEGIES.get(name)()
    except UnknownPlugin as exc:
        raise TargetError(str(exc)) from None
