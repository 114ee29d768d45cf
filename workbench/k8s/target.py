"""The ``kubernetes`` deploy target: apply the serving manifests, wait for the rollout as
``kubectl rollout status`` does, health-check through the Service; roll back as
``kubectl rollout undo`` does; say what is deployed."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench.config import Config
from workbench.k8s import KubernetesError, checks
from workbench.k8s.client import api_client, api_error, apply, is_not_found, to_dict
from workbench.k8s.config import Cluster, Serving, cluster_for, is_local_uri
from workbench.k8s.manifests import (
    PING,
    PORT_NAME,
    VERSION_LABEL,
    deployment_name,
    resolved_version,
    serving_manifests,
)
from workbench.k8s.rollout import (
    owned_replica_sets,
    patch_deployment,
    previous_revision,
    revision,
    undo_patch,
    wait_for_rollout,
    without_hash,
)
from workbench.project import Project

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Deployment:
    """What an environment serves on Kubernetes."""

    environment: str
    namespace: str
    name: str
    model_name: str
    version: str  # the model version now served (or that would be, in a dry run)
    revision: int | None  # deployment.kubernetes.io/revision
    url: str  # where the Service answers: the external URL, or the API server's service proxy
    previous_version: str | None = None  # what was served before this deploy or rollback
    ready_replicas: int = 0
    dry_run: bool = False
    changed: bool = True  # False: a rollback found the version already in place

    @property
    def endpoint(self) -> str:
        return self.url

    def describe(self) -> str:
        what = f"{self.model_name} v{self.version}"
        where = f"deployment {self.namespace}/{self.name}"
        rev = f" revision {self.revision}" if self.revision is not None else ""
        before = (f" (was v{self.previous_version})"
                  if self.previous_version and self.previous_version != self.version else "")
        note = " [dry run: nothing changed]" if self.dry_run else ""
        if not self.changed:
            note = " [already serving it: nothing changed]"
        return f"{what} on {where}{rev}{before}, {self.url}{note}"


def _serving(cluster: Cluster) -> Serving:
    if cluster.serving is None:
        raise KubernetesError("configs/kubernetes.yaml: the environment has no serving section")
    return cluster.serving


def service_url(api: Any, cluster: Cluster, name: str) -> str:
    """The external URL when configured, else the API server's proxy to the Service's port."""
    external = _serving(cluster).service.external_url
    if external:
        return external.rstrip("/")
    host = api.configuration.host.rstrip("/")
    return f"{host}/api/v1/namespaces/{cluster.namespace}/services/{name}:{PORT_NAME}/proxy"


def _ping(api: Any, cluster: Cluster, name: str) -> str | None:
    """None when ``/ping`` answers 200 through the Service, else why not."""
    external = _serving(cluster).service.external_url
    try:
        if external:
            url = external.rstrip("/") + PING  # http(s) only: Service.external_url's pattern
            with urllib.request.urlopen(url, timeout=5) as response:  # nosec B310
                return None if response.status == 200 else f"HTTP {response.status}"
        from kubernetes import client

        raw: Any = client.CoreV1Api(api).connect_get_namespaced_service_proxy_with_path(
            f"{name}:{PORT_NAME}", cluster.namespace, PING.lstrip("/"), _request_timeout=5,
            _preload_content=False)  # the model server's answer, not an API object
        return None if raw.status == 200 else f"HTTP {raw.status}"
    except Exception as exc:  # noqa: BLE001 - every failure is a "not yet"
        return str(api_error("GET /ping", exc))


def health_check(api: Any, cluster: Cluster, name: str) -> str:
    """Wait until the model server answers ``/ping`` through the Service; return its URL."""
    serving = _serving(cluster)
    deadline = time.monotonic() + serving.health_timeout_s
    while True:
        problem = _ping(api, cluster, name)
        if problem is None:
            return service_url(api, cluster, name)
        if time.monotonic() >= deadline:
            raise KubernetesError(f"service {cluster.namespace}/{name} did not answer {PING} "
                                  f"within {serving.health_timeout_s:g} s: {problem}")
        time.sleep(cluster.poll_interval_s)


def served_version(deployment: dict[str, Any] | None) -> str | None:
    if not deployment:
        return None
    labels = deployment["spec"]["template"].get("metadata", {}).get("labels") or {}
    return labels.get(VERSION_LABEL)


def read_deployment(api: Any, namespace: str, name: str) -> dict[str, Any] | None:
    from kubernetes import client

    try:
        return to_dict(api, client.AppsV1Api(api).read_namespaced_deployment(name, namespace))
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise api_error(f"reading Deployment {namespace}/{name}", exc) from exc


def _pods_tracking_uri(cluster: Cluster, environment: str, tracking_uri: str) -> str:
    uri = _serving(cluster).tracking_uri or tracking_uri
    if is_local_uri(uri):
        raise KubernetesError(f"the model servers would read models from {uri}, which only this "
                              f"machine reaches; set mlflow.tracking_uri (configs/pipeline.yaml) "
                              f"or environments.{environment}.serving.tracking_uri "
                              f"(configs/kubernetes.yaml) to a tracking server")
    return uri


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


def _described(environment: str, live: dict[str, Any], url: str, model_name: str,
               previous: str | None, **extra: Any) -> Deployment:
    meta = live["metadata"]
    return Deployment(environment, meta["namespace"], meta["name"], model_name,
                      served_version(live) or "?", revision(live), url, previous,
                      (live.get("status") or {}).get("readyReplicas", 0), **extra)


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
