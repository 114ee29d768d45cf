"""The ``kubernetes`` deploy target: apply the serving manifests, wait for the rollout as
``kubectl rollout status`` does, health-check through the Service; roll back as
``kubectl rollout undo`` does; say what is deployed. Canary and shadow:
:mod:`workbench.k8s.progressive`."""

from __future__ import annotations

from typing import Any

from workbench.config import Config
from workbench.k8s import KubernetesError, checks, progressive
from workbench.k8s.client import api_client, apply
from workbench.k8s.config import Cluster, cluster_for
from workbench.k8s.manifests import deployment_name, resolved_version, serving_manifests
from workbench.k8s.rollout import (
    owned_replica_sets,
    patch_deployment,
    previous_revision,
    revision,
    undo_patch,
    wait_for_rollout,
    without_hash,
)
from workbench.k8s.serving import (  # re-exported: the target's API as it was
    Deployment,
    Progress,
    health_check,
    read_deployment,
    served_version,
    service_url,
)
from workbench.k8s.serving import described as _described
from workbench.k8s.serving import pods_tracking_uri as _pods_tracking_uri
from workbench.k8s.serving import serving_settings as _serving
from workbench.project import Project

__all__ = ["Deployment", "KubernetesTarget", "Progress", "current", "deploy", "health_check",
           "history", "read_deployment", "render", "rollback_to", "served_version",
           "service_url"]


def render(project: Project, config: Config, environment: str, model_name: str, version: str,
           tracking_uri: str) -> list[dict[str, Any]]:
    """The environment's serving manifests, validated (schema and project checks)."""
    cluster = cluster_for(project, environment, "serving")
    manifests = serving_manifests(cluster, environment, model_name, resolved_version(version),
                                  _pods_tracking_uri(cluster, environment, tracking_uri),
                                  config.pipeline.name)
    checks.validate(manifests, cluster.kubernetes_version)
    return manifests


def deploy(project: Project, config: Config, environment: str, model_name: str, version: str,
           tracking_uri: str, *, dry_run: bool | None = None,
           on_wait: Progress | None = None) -> Deployment:
    """Apply the manifests, wait for the rollout, health-check through the Service.

    ``dry_run`` (default: the environment's ``dry_run`` setting) sends every write with
    ``dryRun=All``: the API server validates and admits it, and changes nothing.
    """
    cluster = cluster_for(project, environment, "serving")
    dry = cluster.dry_run if dry_run is None else dry_run
    manifests = render(project, config, environment, model_name, version, tracking_uri)
    name, version = manifests[0]["metadata"]["name"], resolved_version(version)
    api = api_client(project, cluster)
    try:
        before = served_version(read_deployment(api, cluster.namespace, name))
        for manifest in manifests:
            apply(api, manifest, dry_run=dry)
        if dry:
            return Deployment(environment, cluster.namespace, name, model_name, version, None,
                              service_url(api, cluster, name), before, dry_run=True)
        live = wait_for_rollout(api, name, cluster.namespace, _serving(cluster).rollout_timeout_s,
                                cluster.poll_interval_s, on_wait)
        url = health_check(api, cluster, name)
        return _described(environment, live, url, model_name, before)
    finally:
        api.close()


def _target_name(project: Project, config: Config, environment: str) -> tuple[Cluster, str]:
    cluster = cluster_for(project, environment, "serving")
    return cluster, deployment_name(cluster, environment, config.model.name)


def current(project: Project, config: Config, environment: str) -> Deployment | None:
    """What the environment's Deployment serves now, or None when there is none."""
    cluster, name = _target_name(project, config, environment)
    api = api_client(project, cluster)
    try:
        live = read_deployment(api, cluster.namespace, name)
        if live is None:
            return None
        return _described(environment, live, service_url(api, cluster, name), config.model.name,
                          None)
    finally:
        api.close()


def history(project: Project, config: Config, environment: str) -> list[tuple[int, str, int]]:
    """``(revision, model version, ready replicas)`` of every revision kept, oldest first."""
    cluster, name = _target_name(project, config, environment)
    api = api_client(project, cluster)
    try:
        live = read_deployment(api, cluster.namespace, name)
        if live is None:
            return []
        return [(revision(rs) or 0, served_version(rs) or "?",
                 (rs.get("status") or {}).get("readyReplicas", 0))
                for rs in owned_replica_sets(api, live)]
    finally:
        api.close()


def rollback_to(project: Project, config: Config, environment: str, version: str | None, *,
                dry_run: bool | None = None, on_wait: Progress | None = None) -> Deployment:
    """Roll back like ``kubectl rollout undo``: to the previous revision (``version`` None), or
    to the newest revision whose pod template serves ``version`` (like ``--to-revision``)."""
    cluster, name = _target_name(project, config, environment)
    dry = cluster.dry_run if dry_run is None else dry_run
    api = api_client(project, cluster)
    try:
        live = read_deployment(api, cluster.namespace, name)
        if live is None:
            raise KubernetesError(f"nothing to roll back: Deployment {cluster.namespace}/{name} "
                                  f"does not exist")
        if live["spec"].get("paused"):
            raise KubernetesError(f"Deployment {cluster.namespace}/{name} is paused; resume it "
                                  f"before rolling back")
        before = served_version(live)
        target = _rollback_target(owned_replica_sets(api, live), version, cluster, name)
        url = service_url(api, cluster, name)
        if without_hash(target["spec"]["template"]) == without_hash(live["spec"]["template"]):
            return _described(environment, live, url, config.model.name, before, changed=False)
        patched = patch_deployment(api, live, undo_patch(live, target), dry)
        if dry:
            return Deployment(environment, cluster.namespace, name, config.model.name,
                              served_version(target) or "?", None, url, before, dry_run=True)
        done = wait_for_rollout(api, name, cluster.namespace, _serving(cluster).rollout_timeout_s,
                                cluster.poll_interval_s, on_wait)
        health_check(api, cluster, name)
        return _described(environment, done or patched, url, config.model.name, before)
    finally:
        api.close()


def _rollback_target(replica_sets: list[dict[str, Any]], version: str | None, cluster: Cluster,
                     name: str) -> dict[str, Any]:
    if version is None:
        return previous_revision(replica_sets).replica_set
    version = resolved_version(version)
    matches = [rs for rs in replica_sets if served_version(rs) == version]
    if not matches:
        kept = ", ".join(f"{revision(rs)} (v{served_version(rs)})" for rs in replica_sets)
        raise KubernetesError(f"no revision of Deployment {cluster.namespace}/{name} serves "
                              f"model version {version}; revisions kept: {kept or 'none'}")
    return matches[-1]


class KubernetesTarget:
    """The ``kubernetes`` deploy target (registered through the ``workbench.deploy_targets``
    entry-point group)."""

    def deploy(self, request: Any) -> Deployment:
        return deploy(request.project, request.config, request.environment, request.model_name,
                      request.version, request.tracking_uri)

    def rollback(self, request: Any) -> Deployment:
        return rollback_to(request.project, request.config, request.environment,
                           request.version)

    def current(self, project: Project, config: Config, environment: str
                ) -> Deployment | None:
        return current(project, config, environment)

    def canary(self, request: Any) -> progressive.CanaryRollout:
        """``deploy.strategy: canary`` here (:mod:`workbench.k8s.progressive`): a canary
        Deployment beside the stable one, split by replica ratio or an HTTPRoute's weights;
        a first deploy, the version already served or a dry run is a plain deploy."""
        return progressive.canary(request.project, request.config, request.environment,
                                  request.model_name, request.version, request.tracking_uri,
                                  plain=lambda: self.deploy(request))

    def shadow(self, request: Any, window_s: float) -> Any:
        """Mirror the environment's traffic to ``request.version`` for ``window_s`` seconds
        through the HTTPRoute's RequestMirror filter (refused without ``serving.route``)."""
        return progressive.shadow(request.project, request.config, request.environment,
                                  request.model_name, request.version, request.tracking_uri,
                                  window_s)
