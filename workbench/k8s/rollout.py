"""Rollouts as ``kubectl`` judges and undoes them.

:func:`rollout_status` is ``kubectl rollout status``'s decision for a Deployment;
:func:`revisions` and :func:`undo_patch` are ``kubectl rollout undo``'s: the Deployment's own
ReplicaSets (listed by its selector, kept when their controller owner's uid is the Deployment's),
ordered by the ``deployment.kubernetes.io/revision`` annotation, and a JSON patch that puts a
ReplicaSet's pod template back into the Deployment.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench.k8s import KubernetesError
from workbench.k8s.client import DRY_RUN, JSON_PATCH, LAST_APPLIED, api_error, to_dict

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
TIMED_OUT = "ProgressDeadlineExceeded"
# the annotations `kubectl rollout undo` leaves as the Deployment has them
KEEP_ON_UNDO = {LAST_APPLIED, "kubectl.kubernetes.io/last-applied-configuration", REVISION,
                "deployment.kubernetes.io/revision-history",
                "deployment.kubernetes.io/desired-replicas",
                "deployment.kubernetes.io/max-replicas",
                "deprecated.deployment.rollback.to"}


class RolloutFailed(KubernetesError):
    """The rollout cannot finish: its progress deadline passed, or our timeout did."""


def rollout_status(deployment: dict[str, Any]) -> tuple[str, bool]:
    """``(message, done)`` as ``kubectl rollout status`` decides; raise :class:`RolloutFailed`
    when the Deployment reports ``ProgressDeadlineExceeded``."""
    name = deployment["metadata"]["name"]
    status = deployment.get("status") or {}
    if deployment["metadata"].get("generation", 0) > status.get("observedGeneration", 0):
        return "waiting for the deployment spec update to be observed", False
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == TIMED_OUT:
            raise RolloutFailed(f"deployment {name!r} exceeded its progress deadline: "
                                f"{condition.get('message', '')}".rstrip(": "))
    wanted = deployment["spec"].get("replicas")
    updated = status.get("updatedReplicas", 0)
    if wanted is not None and updated < wanted:
        return f"{updated} out of {wanted} new replicas have been updated", False
    if status.get("replicas", 0) > updated:
        return f"{status.get('replicas', 0) - updated} old replicas are pending termination", False
    available = status.get("availableReplicas", 0)
    if available < updated:
        return f"{available} of {updated} updated replicas are available", False
    return f"deployment {name!r} successfully rolled out", True


def wait_for_rollout(api: Any, name: str, namespace: str, timeout: float, interval: float,
                     on_wait: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Poll the Deployment's status until :func:`rollout_status` says done; return it."""
    from kubernetes import client

    apps = client.AppsV1Api(api)
    deadline = time.monotonic() + timeout
    message = "not read yet"
    while True:
        try:
            deployment = to_dict(api, apps.read_namespaced_deployment_status(name, namespace))
        except Exception as exc:
            raise api_error(f"reading Deployment {namespace}/{name}", exc) from exc
        shown = message
        message, done = rollout_status(deployment)
        if done:
            return deployment
        if on_wait is not None and message != shown:
            on_wait(message)
        if time.monotonic() >= deadline:
            raise RolloutFailed(f"deployment {namespace}/{name} did not finish its rollout "
                                f"within {timeout:g} s: {message}")
        time.sleep(interval)


def revision(obj: dict[str, Any]) -> int | None:
    value = (obj.get("metadata", {}).get("annotations") or {}).get(REVISION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def owned_replica_sets(api: Any, deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """The Deployment's ReplicaSets, oldest revision first."""
    from kubernetes import client

    meta = deployment["metadata"]
    match = deployment["spec"]["selector"].get("matchLabels", {})
    selector = ",".join(f"{key}={value}" for key, value in sorted(match.items()))
    try:
        listed = client.AppsV1Api(api).list_namespaced_replica_set(
            meta["namespace"], label_selector=selector)
    except Exception as exc:
        raise api_error(f"listing ReplicaSets of {meta['namespace']}/{meta['name']}",
                        exc) from exc
    owned = [rs for rs in to_dict(api, listed).get("items", [])
             if any(ref.get("controller") and ref.get("uid") == meta.get("uid")
                    for ref in rs["metadata"].get("ownerReferences") or [])]
    return sorted((rs for rs in owned if revision(rs) is not None),
                  key=lambda rs: revision(rs) or 0)


def without_hash(template: dict[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(template)
    (template.get("metadata", {}).get("labels") or {}).pop(HASH_LABEL, None)
    return template


@dataclass(frozen=True)
class Target:
    """The ReplicaSet to roll back to."""

    replica_set: dict[str, Any]
    revision: int


def previous_revision(replica_sets: list[dict[str, Any]]) -> Target:
    """The revision before the newest, like ``kubectl rollout undo`` without ``--to-revision``."""
    if len(replica_sets) < 2:
        raise KubernetesError("no rollout history found: the Deployment has no earlier revision")
    chosen = replica_sets[-2]
    return Target(chosen, revision(chosen) or 0)


def undo_patch(deployment: dict[str, Any], replica_set: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch ``kubectl rollout undo`` sends: the ReplicaSet's template (without its
    hash label), and the Deployment's annotations with the ReplicaSet's copied over."""
    current = deployment["metadata"].get("annotations") or {}
    annotations = {key: value for key, value in current.items() if key in KEEP_ON_UNDO}
    annotations.update({key: value for key, value in
                        (replica_set["metadata"].get("annotations") or {}).items()
                        if key not in KEEP_ON_UNDO})
    return [{"op": "replace", "path": "/spec/template",
             "value": without_hash(replica_set["spec"]["template"])},
            {"op": "replace", "path": "/metadata/annotations", "value": annotations}]


def patch_deployment(api: Any, deployment: dict[str, Any], patch: list[dict[str, Any]],
                     dry_run: bool) -> dict[str, Any]:
    from kubernetes import client

    meta = deployment["metadata"]
    try:
        patched = client.AppsV1Api(api).patch_namespaced_deployment(
            meta["name"], meta["namespace"], patch, _content_type=JSON_PATCH,
            dry_run=DRY_RUN if dry_run else None)
    except Exception as exc:
        raise api_error(f"rolling back Deployment {meta['namespace']}/{meta['name']}",
                        exc) from exc
    return to_dict(api, patched)
