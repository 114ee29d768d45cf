"""The official ``kubernetes`` client: built from kubeconfig and context, and the create-or-patch
apply that every write goes through.

Apply never depends on server-side apply or PUT: it reads the object, creates it when it is
absent, and otherwise sends a JSON merge patch of the desired manifest (lists replaced whole),
with ``null`` for keys an earlier apply set and this one no longer does (the previous manifest
is kept in the ``workbench.io/last-applied`` annotation, as ``kubectl apply`` keeps its own).
Custom resources (the Gateway API's HTTPRoute) go the same way through ``CustomObjectsApi``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from workbench.k8s import KubernetesError
from workbench.k8s.config import Cluster
from workbench.project import Project

LAST_APPLIED = "workbench.io/last-applied"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
USER_AGENT = "workbench/kubernetes"
KEEP = {("spec", "replicas")}  # never reset: an autoscaler may own it
DRY_RUN = "All"


def api_client(project: Project, cluster: Cluster) -> Any:
    """An ``ApiClient`` for the environment: its kubeconfig and context, else in-cluster."""
    import os

    from kubernetes import client, config

    path = cluster.kubeconfig_path(project)
    if path is None and not os.environ.get("KUBECONFIG") and \
            not os.path.exists(os.path.expanduser(config.KUBE_CONFIG_DEFAULT_LOCATION)) and \
            os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        api = client.ApiClient(configuration)
    else:
        try:
            api = config.new_client_from_config(
                config_file=str(path) if path else None, context=cluster.context,
                persist_config=False)
        except (config.ConfigException, OSError) as exc:
            where = path or os.environ.get("KUBECONFIG") or config.KUBE_CONFIG_DEFAULT_LOCATION
            raise KubernetesError(f"cannot load kubeconfig {where} (context "
                                  f"{cluster.context or 'current'}): {exc}") from exc
    api.user_agent = USER_AGENT
    return api


def to_dict(api: Any, obj: Any) -> dict[str, Any]:
    """A client model as the API's own JSON (camelCase keys)."""
    return api.sanitize_for_serialization(obj) if obj is not None else {}


def is_not_found(exc: BaseException) -> bool:
    from kubernetes.client.exceptions import ApiException

    return isinstance(exc, ApiException) and exc.status == 404


def api_error(action: str, exc: BaseException) -> KubernetesError:
    """One line naming what was attempted and what the API server said."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        try:
            message = json.loads(exc.body or "{}").get("message") or exc.reason
        except (TypeError, ValueError):
            message = exc.reason
        return KubernetesError(f"{action}: HTTP {exc.status}: {message}")
    return KubernetesError(f"{action}: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class Kind:
    """How to read, create and patch one kind with the typed client."""

    api: str
    read: str
    create: str
    patch: str


KINDS = {
    "Deployment": Kind("AppsV1Api", "read_namespaced_deployment",
                       "create_namespaced_deployment", "patch_namespaced_deployment"),
    "Service": Kind("CoreV1Api", "read_namespaced_service", "create_namespaced_service",
                    "patch_namespaced_service"),
    "PodDisruptionBudget": Kind("PolicyV1Api", "read_namespaced_pod_disruption_budget",
                                "create_namespaced_pod_disruption_budget",
                                "patch_namespaced_pod_disruption_budget"),
    "HorizontalPodAutoscaler": Kind("AutoscalingV2Api",
                                    "read_namespaced_horizontal_pod_autoscaler",
                                    "create_namespaced_horizontal_pod_autoscaler",
                                    "patch_namespaced_horizontal_pod_autoscaler"),
    "Job": Kind("BatchV1Api", "read_namespaced_job", "create_namespaced_job",
                "patch_namespaced_job"),
}


@dataclass(frozen=True)
class Custom:
    """A custom resource (a CRD's kind), read, created, patched and deleted through
    ``CustomObjectsApi`` with the same signatures as a typed API's methods."""

    group: str
    version: str
    plural: str


CUSTOM = {"HTTPRoute": Custom("gateway.networking.k8s.io", "v1", "httproutes")}


class _CustomObjects:
    """``CustomObjectsApi`` for one :class:`Custom` kind, shaped like a typed API. Answers are
    read as JSON whatever their status (the generated client maps only some statuses of
    custom objects to a body); errors still raise ``ApiException``."""

    def __init__(self, api: Any, custom: Custom):
        from kubernetes import client

        self.objects, self.custom = client.CustomObjectsApi(api), custom

    def _where(self, namespace: str) -> tuple[str, str, str, str]:
        return self.custom.group, self.custom.version, namespace, self.custom.plural

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        return dict(json.loads(response.data or b"{}"))

    def read(self, name: str, namespace: str) -> dict[str, Any]:
        return self._json(self.objects.get_namespaced_custom_object(
            *self._where(namespace), name, _preload_content=False))

    def create(self, namespace: str, body: dict[str, Any], **options: Any) -> dict[str, Any]:
        return self._json(self.objects.create_namespaced_custom_object(
            *self._where(namespace), body, _preload_content=False, **options))

    def patch(self, name: str, namespace: str, body: Any, **options: Any) -> dict[str, Any]:
        return self._json(self.objects.patch_namespaced_custom_object(
            *self._where(namespace), name, body, _preload_content=False, **options))

    def delete(self, name: str, namespace: str, **options: Any) -> dict[str, Any]:
        return self._json(self.objects.delete_namespaced_custom_object(
            *self._where(namespace), name, _preload_content=False, **options))


CUSTOM_KIND = Kind("CustomObjectsApi", "read", "create", "patch")
DELETE = {"Deployment": ("AppsV1Api", "delete_namespaced_deployment"),
          "Service": ("CoreV1Api", "delete_namespaced_service")}


def _typed(api: Any, kind: str) -> tuple[Any, Kind]:
    from kubernetes import client

    if kind in CUSTOM:
        return _CustomObjects(api, CUSTOM[kind]), CUSTOM_KIND
    spec = KINDS[kind]
    return getattr(client, spec.api)(api), spec


def delete(api: Any, kind: str, namespace: str, name: str, dry_run: bool = False) -> bool:
    """Delete an object (its dependents in the background, as ``kubectl delete`` does);
    False when it was already gone."""
    from kubernetes import client

    options: dict[str, Any] = {"propagation_policy": "Background"}
    if dry_run:
        options["dry_run"] = DRY_RUN
    try:
        if kind in CUSTOM:
            _CustomObjects(api, CUSTOM[kind]).delete(name, namespace, **options)
        else:
            typed, method = DELETE[kind]
            getattr(getattr(client, typed)(api), method)(name, namespace, **options)
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise api_error(f"deleting {kind} {namespace}/{name}", exc) from exc
    return True


def merge_patch(previous: Any, desired: Any, path: tuple[str, ...] = ()) -> Any:
    """``desired`` plus ``None`` for every key of ``previous`` it no longer has (RFC 7386)."""
    if not isinstance(previous, dict) or not isinstance(desired, dict):
        return desired
    patch = {key: merge_patch(previous.get(key), value, (*path, key))
             for key, value in desired.items()}
    for key in previous.keys() - desired.keys():
        if (*path, key) not in KEEP:
            patch[key] = None
    return patch


def _with_last_applied(manifest: dict[str, Any]) -> dict[str, Any]:
    annotated = json.loads(json.dumps(manifest))
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    annotated["metadata"].setdefault("annotations", {})[LAST_APPLIED] = blob
    return annotated


def apply(api: Any, manifest: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    """Create ``manifest``'s object, or patch the live one to match it; return the result."""
    typed, kind = _typed(api, manifest["kind"])
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    where = f"{manifest['kind']} {namespace}/{name}"
    options = {"dry_run": DRY_RUN} if dry_run else {}
    desired = _with_last_applied(manifest)
    try:
        live = to_dict(api, getattr(typed, kind.read)(name, namespace))
    except Exception as exc:
        if not is_not_found(exc):
            raise api_error(f"reading {where}", exc) from exc
        live = None
    try:
        if live is None:
            created = getattr(typed, kind.create)(namespace, desired, **options)
            return to_dict(api, created)
        annotations = live.get("metadata", {}).get("annotations") or {}
        previous = json.loads(annotations.get(LAST_APPLIED, "{}"))
        patch = merge_patch(previous, desired)
        patched = getattr(typed, kind.patch)(name, namespace, patch, _content_type=MERGE_PATCH,
                                             **options)
        return to_dict(api, patched)
    except KubernetesError:
        raise
    except Exception as exc:
        raise api_error(f"applying {where}", exc) from exc
