"""What an environment serves on Kubernetes, read through the API: the stable Deployment, its
Service's URL and health, the model version its pod template stamps. The target
(:mod:`workbench.k8s.target`) and progressive delivery (:mod:`workbench.k8s.progressive`)
both build on it."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench.k8s import KubernetesError
from workbench.k8s.client import api_error, is_not_found, to_dict
from workbench.k8s.config import Cluster, Serving, is_local_uri
from workbench.k8s.manifests import PING, PORT_NAME, VERSION_LABEL
from workbench.k8s.rollout import revision

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


def serving_settings(cluster: Cluster) -> Serving:
    if cluster.serving is None:
        raise KubernetesError("configs/kubernetes.yaml: the environment has no serving section")
    return cluster.serving


def service_url(api: Any, cluster: Cluster, name: str) -> str:
    """The external URL when configured, else the API server's proxy to the Service's port."""
    external = serving_settings(cluster).service.external_url
    if external:
        return external.rstrip("/")
    host = api.configuration.host.rstrip("/")
    return f"{host}/api/v1/namespaces/{cluster.namespace}/services/{name}:{PORT_NAME}/proxy"


def _ping(api: Any, cluster: Cluster, name: str) -> str | None:
    """None when ``/ping`` answers 200 through the Service, else why not."""
    external = serving_settings(cluster).service.external_url
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
    serving = serving_settings(cluster)
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


def pods_tracking_uri(cluster: Cluster, environment: str, tracking_uri: str) -> str:
    uri = serving_settings(cluster).tracking_uri or tracking_uri
    if is_local_uri(uri):
        raise KubernetesError(f"the model servers would read models from {uri}, which only this "
                              f"machine reaches; set mlflow.tracking_uri (configs/pipeline.yaml) "
                              f"or environments.{environment}.serving.tracking_uri "
                              f"(configs/kubernetes.yaml) to a tracking server")
    return uri


def described(environment: str, live: dict[str, Any], url: str, model_name: str,
               previous: str | None, **extra: Any) -> Deployment:
    meta = live["metadata"]
    return Deployment(environment, meta["namespace"], meta["name"], model_name,
                      served_version(live) or "?", revision(live), url, previous,
                      (live.get("status") or {}).get("readyReplicas", 0), **extra)
