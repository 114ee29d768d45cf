"""Checks of rendered manifests: the JSON schema of the configured Kubernetes version
(``kubernetes-validate``, strict: unknown fields are errors), plus what a schema cannot say —
DNS-1123 names, selectors that match the pod template, a rolling update that can make progress,
valid quantities, probes and Services that point at ports that exist.

A Gateway API ``HTTPRoute`` is a custom resource, which kubernetes-validate has no schema for:
it is validated against the CRD's own schema, vendored in ``schemas/httproute-v1.json``
(Gateway API v1.2.1, standard channel), made strict the way kubernetes-validate makes its own
(``additionalProperties: false`` wherever an object lists its properties). The CRD's CEL rules
(``x-kubernetes-validations``) are not evaluated; the project's checks cover what matters here:
every backend and mirror names a Service among the manifests, on a port it has, the weights
do not send everything nowhere, and a mirror never targets a Service that takes live traffic.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
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
# custom resources: (apiVersion, kind) -> the vendored schema of its CRD, and what it is
CUSTOM_SCHEMAS = {("gateway.networking.k8s.io/v1", "HTTPRoute"):
                  ("httproute-v1.json", "Gateway API v1.2.1 HTTPRoute")}
SCHEMAS = Path(__file__).with_name("schemas")


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
        if (manifest.get("apiVersion"), manifest.get("kind")) in CUSTOM_SCHEMAS:
            problems += custom_problems(manifest)
            continue
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


def _strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` wherever an object lists properties."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if "properties" in strict and "additionalProperties" not in strict:
        strict["additionalProperties"] = False
    return strict


@functools.lru_cache(maxsize=4)
def _custom_validator(file: str) -> Any:
    import jsonschema  # type: ignore[import-untyped]  # kubernetes-validate depends on it

    schema = _strict(json.loads((SCHEMAS / file).read_text(encoding="utf-8")))
    return jsonschema.Draft7Validator(schema)


def custom_problems(manifest: dict[str, Any]) -> list[str]:
    """A custom resource against its CRD's vendored schema, strict (see the module doc)."""
    file, what = CUSTOM_SCHEMAS[(str(manifest.get("apiVersion")), str(manifest.get("kind")))]
    try:
        validator = _custom_validator(file)
    except (ImportError, OSError, ValueError) as exc:
        return [f"{_where(manifest)}: cannot load the schema of {what} ({file}): {exc}"]
    problems = []
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(part) for part in error.absolute_path) or "(top)"
        problems.append(f"{_where(manifest)}: {path}: {error.message} (schema of {what}, "
                        f"strict)")
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
        if kind == "HTTPRoute":
            problems += _route_problems(manifest, manifests)
    return problems


def _route_problems(route: dict[str, Any], manifests: list[dict[str, Any]]) -> list[str]:
    """Backends and mirrors name Services among the manifests, on their ports; some weight
    is not 0; a mirror's Service takes no live traffic from the route."""
    where = _where(route)
    services = {m["metadata"]["name"]: {p.get("port") for p in m.get("spec", {}).get("ports", [])}
                for m in manifests if m.get("kind") == "Service"}
    problems = []
    for number, rule in enumerate(route.get("spec", {}).get("rules", [])):
        at = f"{where}: spec.rules.{number}"
        backends = rule.get("backendRefs", [])
        mirrors = [f.get("requestMirror", {}).get("backendRef", {})
                   for f in rule.get("filters", []) if f.get("type") == "RequestMirror"]
        for field, ref in [("backendRefs", b) for b in backends] + \
                [("filters.requestMirror", m) for m in mirrors]:
            name, port = ref.get("name"), ref.get("port")
            if ref.get("kind", "Service") != "Service" or ref.get("group", "") != "":
                continue  # another kind of backend: not ours to check
            if name not in services:
                problems.append(f"{at}.{field}: Service {name!r} is not among the manifests "
                                f"({sorted(services)})")
            elif port not in services[name]:
                problems.append(f"{at}.{field}: Service {name!r} has no port {port!r}")
        if backends and not any(b.get("weight", 1) for b in backends):
            problems.append(f"{at}.backendRefs: every weight is 0: the route would answer "
                            f"every request with an error")
        live = {b.get("name") for b in backends if b.get("weight", 1)}
        for mirror in mirrors:
            if mirror.get("name") in live:
                problems.append(f"{at}.filters.requestMirror: Service {mirror.get('name')!r} "
                                f"also takes live traffic from this rule")
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
