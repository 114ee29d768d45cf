"""The Job that runs one stage: papermill in the runner image (``workbench.k8s.stage_job``).

Secrets reach the container only as environment variables taken from a Kubernetes Secret
(``valueFrom.secretKeyRef``); parameters travel in the arguments as base64 JSON.
"""

from __future__ import annotations

import math
from typing import Any

from workbench.k8s.config import Cluster, Executor
from workbench.k8s.manifests import (
    RESTRICTED_POD,
    TMP_MOUNT,
    TMP_VOLUME,
    pod_spec_extras,
)
from workbench.k8s.names import dns_label, label_value
from workbench.k8s.stage_job import encode_parameters

CONTAINER = "stage"
ENTRY = ["python", "-m", "workbench.k8s.stage_job"]
# papermill's kernels write to HOME and the working folder, so the root filesystem stays writable
RUNNER_CONTAINER = {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"}}


def job_name(stage: str, run_id: str, attempt: int = 1) -> str:
    suffix = f"-{attempt}" if attempt > 1 else ""
    return dns_label(f"{stage}-{run_id}", limit=63 - len(suffix)) + suffix


def job_labels(name: str, run_id: str, stage: str, environment: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "workbench-stage",
            "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": "stage",
            "app.kubernetes.io/managed-by": "workbench",
            "workbench.io/run-id": label_value(run_id),
            "workbench.io/stage": label_value(stage),
            "workbench.io/environment": environment}


def secret_env(names: list[str], secret: str | None) -> list[dict[str, Any]]:
    """One variable per secret name, each read from the Secret's key of the same name."""
    if names and not secret:
        raise ValueError(f"the pipeline declares secrets {names}; set executor.secret in "
                         f"configs/kubernetes.yaml to the Kubernetes Secret holding them")
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name}}}
            for name in names]


def stage_job(cluster: Cluster, *, name: str, run_id: str, stage: str, environment: str,
              notebook: str, input_url: str, output_url: str, parameters: dict[str, Any],
              env: dict[str, str], secrets: list[str], timeout: float) -> dict[str, Any]:
    """The Job manifest for one stage execution."""
    executor: Executor | None = cluster.executor
    if executor is None:
        raise ValueError(f"configs/kubernetes.yaml: environments.{environment}.executor is "
                         f"missing")
    labels = job_labels(name, run_id, stage, environment)
    plain = [{"name": key, "value": value} for key, value in sorted(env.items())
             if key not in secrets]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": executor.image,
        "workingDir": executor.workdir,
        "command": list(ENTRY),
        "args": ["--stage", stage, "--input", input_url, "--output", output_url,
                 "--parameters", encode_parameters(parameters)],  # the kernel runs in workdir
        "env": plain + secret_env(secrets, executor.secret),
        "securityContext": RUNNER_CONTAINER,
        "volumeMounts": [TMP_MOUNT],
    }
    resources = executor.resources.manifest()
    if resources:
        container["resources"] = resources
    pod = {"restartPolicy": "Never", "automountServiceAccountToken": False,
           **pod_spec_extras(executor.service_account, executor.image_pull_secrets),
           "securityContext": RESTRICTED_POD, "containers": [container],
           "volumes": [TMP_VOLUME]}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": cluster.namespace, "labels": labels,
                     "annotations": {"workbench.io/notebook": notebook,
                                     "workbench.io/output": output_url}},
        "spec": {"backoffLimit": executor.backoff_limit,
                 "activeDeadlineSeconds": max(1, math.ceil(timeout)),
                 "ttlSecondsAfterFinished": executor.ttl_after_finished_s,
                 "template": {"metadata": {"labels": labels}, "spec": pod}},
    }
