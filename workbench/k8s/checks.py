"""Checks of rendered manifests: the JSON schema of the configured Kubernetes version
(``kubernetes-validate``, strict: unknown fields are errors), plus what a schema cannot say —
DNS-1123 names, selectors that match the pod template, a rolling update that can make progress,
valid quantities, probes and Services that point at ports that exist."""

from __future__ import annotations

import re
from typing import Any

from workbench.errors import EXIT_FAILED, WorkbenchError
from workbench.k8s.names import (
    is_dns_label,
    is_dns_subdomain,
    is_label_value,
    parse_quantity,
)

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # Service names
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                       r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
WORKLOADS = ("Deployment", "Job")


class ManifestInvalid(WorkbenchError, ValueError):
    """Rendered manifests failed validation; ``problems`` names each one."""

    exit_code = EXIT_FAILED

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid manifests:\n" + "\n".join(f"  {p}" for p in problems))


def _where(manifest: dict[str, Any]) -> str:
    return f"{manifest.get('kind', '?')}/{manifest.get('metadata', {}).get('name', '?')}"


def schema_problems(manifests: list[dict[str, Any]], version: str) -> list[str]:
    """Validate each manifest against ``version``'s strict schema with kubernetes-validate."""
    try:
        import kubernetes_validate
    except ImportError as exc:
        raise ManifestInvalid(["kubernetes-validate is not installed: pip install "
                               "'workbench[k8s]'"]) from exc
    problems = []
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.absolute_path) or "(top)"
            problems.append(f"{_where(manifest)}: {path}: {exc.message} (schema of Kubernetes "
                            f"{exc.version}, strict)")
        except (kubernetes_validate.SchemaNotFoundError,
                kubernetes_validate.VersionNotSupportedError) as exc:
            problems.append(f"{_where(manifest)}: {exc.message}")
    return problems


def _name_problems(manifest: dict[str, Any]) -> list[str]:
    where = _where(manifest)
    meta = manifest.get("metadata", {})
    name, namespace = meta.get("name", ""), meta.get("namespace")
    problems = []
    if manifest.get("kind") == "Service":
        if not (len(name) <= 63 and DNS_1035.match(name)):
            problems.append(f"{where}: metadata.name {name!r} is not a DNS-1035 label (a "
                            f"Service name starts with a letter, at most 63 characters)")
    elif manifest.get("kind") in WORKLOADS and not is_dns_label(name):
        problems.append(f"{where}: metadata.name {name!r} is not a DNS-1123 label (its pods' "
                        f"names and labels derive from it)")
    elif not is_dns_subdomain(name):
        problems.append(f"{where}: metadata.name {name!r} is not a DNS-1123 subdomain")
    if namespace is not None and not is_dns_label(namespace):
        problems.append(f"{where}: metadata.namespace {namespace!r} is not a DNS-1123 label")
    return problems


def _label_problems(where: str, labels: dict[str, Any], field: str) -> list[str]:
    problems = []
    for key, value in (labels or {}).items():
        if not (len(key.rsplit("/", 1)[-1]) <= 63 and LABEL_KEY.match(key)):
            problems.append(f"{where}: {field}: label key {key!r} is invalid")
        if not isinstance(value, str) or not is_label_value(value):
            problems.append(f"{where}: {field}: label {key}={value!r} is not a valid label "
                            f"value (at most 63 of [-A-Za-z0-9_.], alphanumeric at both ends)")
    return problems


def _selector_problems(where: str, selector: dict[str, Any], template: dict[str, str],
                       field: str) -> list[str]:
    match = (selector or {}).get("matchLabels", {}) if "matchLabels" in (selector or {}) \
        else (selector or {})
    if not match:
        return [f"{where}: {field} is empty: it would select every pod in the namespace"]
    missing = {k: v for k, v in match.items() if template.get(k) != v}
    if missing:
        return [f"{where}: {field} {match} does not match the pod template's labels "
                f"(differs at {sorted(missing)})"]
    return []


def _zero(value: Any) -> bool:
    return value in (0, "0", "0%")


def _container_problems(where: str, pod: dict[str, Any]) -> list[str]:
    problems = []
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        at = f"{where}: container {container.get('name')!r}"
        ports = {p.get("name") for p in container.get("ports", []) if p.get("name")}
        ports |= {p.get("containerPort") for p in container.get("ports", [])}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = container.get(kind, {}).get("httpGet", {}).get("port")
            if port is not None and port not in ports:
                problems.append(f"{at}: {kind} uses port {port!r}, which the container does "
                                f"not declare ({sorted(map(str, ports))})")
        resources = container.get("resources", {})
        parsed: dict[str, dict[str, Any]] = {}
        for section in ("requests", "limits"):
            for resource, amount in resources.get(section, {}).items():
                try:
                    parsed.setdefault(section, {})[resource] = parse_quantity(amount)
                except ValueError as exc:
                    problems.append(f"{at}: resources.{section}.{resource}: {exc}")
        for resource, request in parsed.get("requests", {}).items():
            limit = parsed.get("limits", {}).get(resource)
            if limit is not None and request > limit:
                problems.append(f"{at}: resources.requests.{resource} is more than its limit")
    return problems


def _workload_problems(manifest: dict[str, Any]) -> list[str]:
    where = _where(manifest)
    spec = manifest.get("spec", {})
    template = spec.get("template", {})
    template_labels = template.get("metadata", {}).get("labels", {})
    problems = _label_problems(where, template_labels, "spec.template.metadata.labels")
    problems += _container_problems(where, template.get("spec", {}))
    if manifest.get("kind") != "Deployment":
        return problems
    problems += _selector_problems(where, spec.get("selector", {}), template_labels,
                                   "spec.selector")
    rolling = spec.get("strategy", {}).get("rollingUpdate", {})
    if spec.get("strategy", {}).get("type", "RollingUpdate") == "RollingUpdate" and \
            _zero(rolling.get("maxSurge", 1)) and _zero(rolling.get("maxUnavailable", 1)):
        problems.append(f"{where}: spec.strategy.rollingUpdate: maxSurge and maxUnavailable "
                        f"are both 0, so a rollout can never make progress")
    return problems


def _reference_problems(manifests: list[dict[str, Any]]) -> list[str]:
    """Services, budgets and autoscalers must reach a Deployment among the manifests."""
    deployments = {m["metadata"]["name"]: m for m in manifests if m.get("kind") == "Deployment"}
    problems = []
    for manifest in manifests:
        where, spec = _where(manifest), manifest.get("spec", {})
        kind = manifest.get("kind")
        if kind in ("Service", "PodDisruptionBudget"):
            field = "spec.selector"
            if not any(not _selector_problems(where, spec.get("selector", {}),
                                              d["spec"]["template"]["metadata"].get("labels",
                                                                                    {}), field)
                       for d in deployments.values()):
                problems.append(f"{where}: {field} selects no pod template of the Deployment(s) "
                                f"{sorted(deployments)}")
        if kind == "Service":
            for port in spec.get("ports", []):
                target = port.get("targetPort")
                declared = {p.get(key) for d in deployments.values()
                            for c in d["spec"]["template"]["spec"]["containers"]
                            for p in c.get("ports", []) for key in ("name", "containerPort")}
                if target is not None and target not in declared:
                    problems.append(f"{where}: port {port.get('name')!r} targets {target!r}, "
                                    f"which no container declares")
        if kind == "HorizontalPodAutoscaler":
            target = spec.get("scaleTargetRef", {}).get("name")
            if target not in deployments:
                problems.append(f"{where}: scaleTargetRef names {target!r}, not a Deployment "
                                f"among the manifests")
            elif "replicas" in deployments[target]["spec"]:
                problems.append(f"{where}: the Deployment sets spec.replicas as well; every "
                                f"apply would undo the autoscaler")
    return problems


def project_problems(manifests: list[dict[str, Any]]) -> list[str]:
    """The project's own checks of what schema validation misses."""
    problems: list[str] = []
    for manifest in manifests:
        problems += _name_problems(manifest)
        problems += _label_problems(_where(manifest),
                                    manifest.get("metadata", {}).get("labels", {}),
                                    "metadata.labels")
        if manifest.get("kind") in WORKLOADS:
            problems += _workload_problems(manifest)
    return problems + _reference_problems(manifests)


def validate(manifests: list[dict[str, Any]], version: str) -> None:
    """Raise :class:`ManifestInvalid` naming every problem, schema and project checks alike."""
    problems = schema_problems(manifests, version) + project_problems(manifests)
    if problems:
        raise ManifestInvalid(problems)
