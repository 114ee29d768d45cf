"""Kubernetes: a deploy target (Deployment, Service, PDB, HPA) and a stage executor (a Job per
stage), both through the official ``kubernetes`` client. Settings live in the optional
``configs/kubernetes.yaml`` (see ``configs/kubernetes.example.yaml``)."""

from __future__ import annotations


class KubernetesError(RuntimeError):
    """A Kubernetes operation failed: the message names the object and what was seen."""
