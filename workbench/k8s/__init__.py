"""Kubernetes: a deploy target (Deployment, Service, PDB, HPA) and a stage executor (a Job per
stage), both through the official ``kubernetes`` client. Settings live in the optional
``configs/kubernetes.yaml`` (see ``configs/kubernetes.example.yaml``)."""

from __future__ import annotations

from workbench.errors import EXIT_FAILED, WorkbenchError


class KubernetesError(WorkbenchError, RuntimeError):
    """A Kubernetes operation failed: the message names the object and what was seen."""

    exit_code = EXIT_FAILED
