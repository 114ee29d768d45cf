"""Manifests of the serving target: Deployment, Service, and optionally a PodDisruptionBudget and a
HorizontalPodAutoscaler (autoscaling/v2), from ``configs/kubernetes.yaml``.

Selectors use ``app.kubernetes.io/name`` and ``instance`` only, so a rollout or a rollback that
changes the model version keeps routing; the resolved version (never an alias) is stamped in the
labels and annotations of the Deployment and of its pod template.

Progressive delivery adds a candidate beside the stable Deployment: ``<name>-canary`` (or
``<name>-shadow``), its pods labelled ``workbench.io/track: canary`` (``shadow``) where the
stable ones are ``stable``. Split by replica ratio (no route), the canary's pods keep the
stable ``name`` and ``instance`` labels, so the one Service selects both tracks; the canary's
own selector adds the track, and the stable selector (immutable, so unchanged) also matches the
canary's pods, which is harmless: controllers act only on what they own (ownerReferences),
and each ReplicaSet's selector carries its ``pod-template-hash``. With a Gateway API
``HTTPRoute`` (``serving.route``), the candidate has its own ``instance`` and Service, out of
the stable Service's selection, and the route's backend weights (or its ``RequestMirror``
filter) decide what reaches it.
"""

from __future__ import annotations

import math
import re
from typing import Any

from workbench.errors import EXIT_FAILED, WorkbenchError
from workbench.k8s.config import Cluster, Route, Serving
from workbench.k8s.names import dns_label, label_value

NAME, INSTANCE = "app.kubernetes.io/name", "app.kubernetes.io/instance"
VERSION_LABEL = "workbench.io/model-version"
MODEL_ANNOTATION = "workbench.io/model-name"
URI_ANNOTATION = "workbench.io/model-uri"
CONTAINER = "model-server"
PORT_NAME = "http"
PING = "/ping"
RESOLVED_VERSION = re.compile(r"^[1-9]\d*$")
TRACK = "workbench.io/track"
STABLE, CANARY, SHADOW = "stable", "canary", "shadow"
ROUTE_API = "gateway.networking.k8s.io/v1"


class ManifestError(WorkbenchError, ValueError):
    """The manifests cannot be rendered from these inputs (e.g. an alias instead of a version)."""

    exit_code = EXIT_FAILED


def resolved_version(version: str | int) -> str:
    """``version`` if it is a registered model version number; aliases are refused."""
    text = str(version)
    if not RESOLVED_VERSION.match(text):
        raise ManifestError(f"model version {text!r} is not a resolved version number; "
                            f"Kubernetes manifests stamp the version itself, never an alias")
    return text


def deployment_name(cluster: Cluster, environment: str, model_name: str) -> str:
    """The Deployment's (and Service's) name: ``serving.name`` or ``<model>-<environment>``."""
    if cluster.serving is not None and cluster.serving.name:
        return cluster.serving.name
    name = dns_label(f"{model_name}-{environment}")
    return name if name[0].isalpha() else f"m-{name}"[:63]  # Service names start with a letter


def selector(cluster: Cluster, environment: str, model_name: str) -> dict[str, str]:
    """The labels that select the serving pods: name and instance, nothing that changes."""
    return {NAME: label_value(dns_label(model_name)),
            INSTANCE: deployment_name(cluster, environment, model_name)}


def labels(cluster: Cluster, environment: str, model_name: str, version: str,
           part_of: str) -> dict[str, str]:
    return {**selector(cluster, environment, model_name),
            "app.kubernetes.io/version": version,
            "app.kubernetes.io/component": CONTAINER,
            "app.kubernetes.io/part-of": label_value(part_of),
            "app.kubernetes.io/managed-by": "workbench",
            "workbench.io/environment": environment,
            VERSION_LABEL: version}


def _metadata(name: str, namespace: str, object_labels: dict[str, str],
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(object_labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                  "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"}}
# the pod's own emptyDir: the root filesystem stays read-only, HOME and temp files go here
POD_TMP = "/tmp"  # nosec B108
ALL_INTERFACES = "0.0.0.0"  # nosec B104
TMP_VOLUME = {"name": "tmp", "emptyDir": {}}
TMP_MOUNT = {"name": "tmp", "mountPath": POD_TMP}


def _probe(serving: Serving, startup: bool = False) -> dict[str, Any]:
    timing = serving.probes
    return {"httpGet": {"path": PING, "port": PORT_NAME},
            "periodSeconds": timing.startup_period_s if startup else timing.period_s,
            "timeoutSeconds": timing.timeout_s,
            "failureThreshold": (timing.startup_failure_threshold if startup
                                 else timing.failure_threshold)}


def _container(serving: Serving, model_uri: str, tracking_uri: str) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": serving.image,
        # MLflow's scoring server plus GET /model (which version and artifact it loaded)
        "command": ["python", "-m", "workbench.deploy.model_server"],
        "args": ["--model-uri", model_uri, "--name", model_uri.split("/")[-2],
                 "--version", model_uri.split("/")[-1], "--host", ALL_INTERFACES,
                 "--port", str(serving.container_port), "--workers", str(serving.workers)],
        "env": [{"name": "MLFLOW_TRACKING_URI", "value": serving.tracking_uri or tracking_uri},
                {"name": "MLFLOW_DISABLE_TELEMETRY", "value": "true"},
                {"name": "HOME", "value": POD_TMP}],
        "ports": [{"name": PORT_NAME, "containerPort": serving.container_port,
                   "protocol": "TCP"}],
        "startupProbe": _probe(serving, startup=True),
        "readinessProbe": _probe(serving),
        "livenessProbe": _probe(serving),
        "securityContext": RESTRICTED_CONTAINER,
        "volumeMounts": [TMP_MOUNT],
    }
    if serving.secret:
        container["envFrom"] = [{"secretRef": {"name": serving.secret}}]
    resources = serving.resources.manifest()
    if resources:
        container["resources"] = resources
    return container


def pod_spec_extras(service_account: str | None, pull_secrets: list[str]) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    if service_account:
        extras["serviceAccountName"] = service_account
    if pull_secrets:
        extras["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
    return extras


def deployment(cluster: Cluster, environment: str, model_name: str, version: str,
               tracking_uri: str, part_of: str) -> dict[str, Any]:
    serving = _serving(cluster, environment)
    version = resolved_version(version)
    name = deployment_name(cluster, environment, model_name)
    model_uri = f"models:/{model_name}/{version}"
    stamped = labels(cluster, environment, model_name, version, part_of)
    annotations = {MODEL_ANNOTATION: model_name, VERSION_LABEL: version, URI_ANNOTATION: model_uri}
    pod = {"automountServiceAccountToken": False,
           **pod_spec_extras(serving.service_account, serving.image_pull_secrets),
           "securityContext": RESTRICTED_POD,
           "containers": [_container(serving, model_uri, tracking_uri)],
           "volumes": [TMP_VOLUME]}
    spec: dict[str, Any] = {
        "revisionHistoryLimit": serving.revision_history_limit,
        "progressDeadlineSeconds": serving.progress_deadline_s,
        "selector": {"matchLabels": selector(cluster, environment, model_name)},
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": {**stamped, TRACK: STABLE},
                                  "annotations": annotations}, "spec": pod},
    }
    if serving.hpa is None:  # with an autoscaler the replica count is the autoscaler's
        spec = {"replicas": serving.replicas, **spec}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _metadata(name, cluster.namespace, stamped, annotations), "spec": spec}


def service(cluster: Cluster, environment: str, model_name: str, version: str,
            part_of: str) -> dict[str, Any]:
    serving = _serving(cluster, environment)
    name = deployment_name(cluster, environment, model_name)
    object_labels = labels(cluster, environment, model_name, resolved_version(version), part_of)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _metadata(name, cluster.namespace, object_labels),
            "spec": {"type": serving.service.type,
                     "selector": selector(cluster, environment, model_name),
                     "ports": [{"name": PORT_NAME, "port": serving.service.port,
                                "targetPort": PORT_NAME, "protocol": "TCP"}]}}


def pod_disruption_budget(cluster: Cluster, environment: str, model_name: str, version: str,
                          part_of: str) -> dict[str, Any] | None:
    serving = _serving(cluster, environment)
    if serving.pdb is None:
        return None
    name = deployment_name(cluster, environment, model_name)
    spec: dict[str, Any] = {"selector": {"matchLabels": selector(cluster, environment,
                                                                 model_name)}}
    if serving.pdb.min_available is not None:
        spec["minAvailable"] = serving.pdb.min_available
    else:
        spec["maxUnavailable"] = serving.pdb.max_unavailable
    object_labels = labels(cluster, environment, model_name, resolved_version(version), part_of)
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _metadata(name, cluster.namespace, object_labels), "spec": spec}


def autoscaler(cluster: Cluster, environment: str, model_name: str, version: str,
               part_of: str) -> dict[str, Any] | None:
    serving = _serving(cluster, environment)
    if serving.hpa is None:
        return None
    name = deployment_name(cluster, environment, model_name)
    object_labels = labels(cluster, environment, model_name, resolved_version(version), part_of)
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(name, cluster.namespace, object_labels),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": name},
                     "minReplicas": serving.hpa.min_replicas,
                     "maxReplicas": serving.hpa.max_replicas,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization",
                                                   "averageUtilization":
                                                       serving.hpa.cpu_utilization}}}]}}


def serving_manifests(cluster: Cluster, environment: str, model_name: str, version: str,
                      tracking_uri: str, part_of: str) -> list[dict[str, Any]]:
    """Every serving object of the environment, in the order they are applied (the route,
    when configured, last: every request to the stable Service)."""
    rendered = [deployment(cluster, environment, model_name, version, tracking_uri, part_of),
                service(cluster, environment, model_name, version, part_of),
                pod_disruption_budget(cluster, environment, model_name, version, part_of),
                autoscaler(cluster, environment, model_name, version, part_of),
                http_route(cluster, environment, model_name, version, part_of)
                if _serving(cluster, environment).route else None]
    return [manifest for manifest in rendered if manifest is not None]


# --- progressive delivery: the candidate beside the stable Deployment, and the route ----------


def candidate_name(cluster: Cluster, environment: str, model_name: str, track: str) -> str:
    """``<name>-canary`` or ``<name>-shadow`` (a hash keeps a cut name apart)."""
    return dns_label(f"{deployment_name(cluster, environment, model_name)}-{track}")


def candidate_deployment(cluster: Cluster, environment: str, model_name: str, version: str,
                         tracking_uri: str, part_of: str, replicas: int,
                         track: str = CANARY) -> dict[str, Any]:
    """The candidate's Deployment: the stable one's pod for ``version``, ``replicas`` pods,
    labelled with ``track``. Without a route (a canary split by replica ratio) its pods keep
    the stable ``instance`` label, so the stable Service selects them too; with a route (and
    always for a shadow) they get the candidate's own, which only its own Service selects."""
    manifest = deployment(cluster, environment, model_name, version, tracking_uri, part_of)
    name = candidate_name(cluster, environment, model_name, track)
    own_service = track != CANARY or _serving(cluster, environment).route is not None
    match = {**selector(cluster, environment, model_name),
             **({INSTANCE: name} if own_service else {TRACK: track})}
    template = manifest["spec"]["template"]["metadata"]
    template["labels"] = {**template["labels"], **match, TRACK: track}
    manifest["metadata"].update(name=name, labels=dict(template["labels"]))
    spec = {key: value for key, value in manifest["spec"].items() if key != "replicas"}
    spec["selector"] = {"matchLabels": match}
    manifest["spec"] = {"replicas": replicas, **spec}
    return manifest


def candidate_service(cluster: Cluster, environment: str, model_name: str, version: str,
                      part_of: str, track: str = CANARY) -> dict[str, Any]:
    """The candidate's own Service (route backends and mirrors name Services, not pods)."""
    manifest = service(cluster, environment, model_name, version, part_of)
    name = candidate_name(cluster, environment, model_name, track)
    manifest["metadata"].update(name=name, labels={**manifest["metadata"]["labels"],
                                                   INSTANCE: name, TRACK: track})
    manifest["spec"]["selector"] = {**manifest["spec"]["selector"], INSTANCE: name}
    return manifest


def route_name(cluster: Cluster, environment: str, model_name: str) -> str:
    route = _route(cluster, environment)
    return route.name or deployment_name(cluster, environment, model_name)


def route_weights(weight: float) -> tuple[int, int]:
    """``(stable, canary)`` backend weights for the canary's ``weight`` percent: whole
    percents, or basis points (1/100 %) when the weight has decimals (rounded to the nearest
    basis point). Gateway API weights are proportions: no rounding to replicas."""
    if float(weight).is_integer():
        return 100 - int(weight), int(weight)
    canary = math.floor(weight * 100 + 0.5)
    return 10000 - canary, canary


def replica_split(total: int, weight: float) -> tuple[int, int]:
    """``(stable, canary)`` replicas for ``weight`` percent of ``total`` pods: the canary gets
    ``total * weight / 100`` rounded to the nearest (halves up), at least one, and, below
    100 %, at most ``total - 1`` (the stable track keeps a pod until the canary completes);
    at 100 % every pod is the canary's. The effective share is canary / total."""
    if weight >= 100:
        return 0, total
    if total < 2:
        raise ManifestError(f"a canary split by replica ratio needs at least 2 pods in all, "
                            f"not {total}: set serving.canary.replicas")
    canary = min(max(math.floor(total * weight / 100 + 0.5), 1), total - 1)
    return total - canary, canary


def http_route(cluster: Cluster, environment: str, model_name: str, version: str,
               part_of: str, canary: tuple[int, int] | None = None,
               mirror: bool = False) -> dict[str, Any]:
    """The Gateway API HTTPRoute (``serving.route``): every request matching its path to the
    stable Service; with ``canary`` ``(stable, canary)`` weights, split between the stable and
    the canary Service; with ``mirror``, each request also copied to the shadow's Service
    (the ``RequestMirror`` filter: its answers are discarded)."""
    serving, route = _serving(cluster, environment), _route(cluster, environment)
    port = serving.service.port
    stable = deployment_name(cluster, environment, model_name)
    backends = [{"name": stable, "port": port, "weight": 100 if canary is None else canary[0]}]
    if canary is not None:
        backends.append({"name": candidate_name(cluster, environment, model_name, CANARY),
                         "port": port, "weight": canary[1]})
    rule: dict[str, Any] = {"matches": [{"path": {"type": "PathPrefix", "value": route.path}}]}
    if mirror:
        rule["filters"] = [{"type": "RequestMirror", "requestMirror": {"backendRef": {
            "name": candidate_name(cluster, environment, model_name, SHADOW), "port": port}}}]
    rule["backendRefs"] = backends
    parents = []
    for parent in route.parent_refs:
        ref = {"name": parent.name}
        if parent.namespace:
            ref["namespace"] = parent.namespace
        if parent.section_name:
            ref["sectionName"] = parent.section_name
        parents.append(ref)
    spec: dict[str, Any] = {"parentRefs": parents}
    if route.hostnames:
        spec["hostnames"] = list(route.hostnames)
    spec["rules"] = [rule]
    object_labels = labels(cluster, environment, model_name, resolved_version(version), part_of)
    return {"apiVersion": ROUTE_API, "kind": "HTTPRoute",
            "metadata": _metadata(route_name(cluster, environment, model_name),
                                  cluster.namespace, object_labels),
            "spec": spec}


def _route(cluster: Cluster, environment: str) -> Route:
    route = _serving(cluster, environment).route
    if route is None:
        raise ManifestError(f"configs/kubernetes.yaml: environments.{environment}.serving.route "
                            f"is missing")
    return route


def _serving(cluster: Cluster, environment: str) -> Serving:
    if cluster.serving is None:
        raise ManifestError(f"configs/kubernetes.yaml: environments.{environment}.serving is "
                            f"missing")
    return cluster.serving
