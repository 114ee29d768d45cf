"""``configs/kubernetes.yaml``: cluster, namespace, serving and executor settings per environment.

The file is optional; the default project deploys locally. ``defaults`` is merged (deeply) into
every entry of ``environments``. Problems name the file and the key, as for the other configs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from workbench.config import (
    Config,
    ConfigError,
    Problem,
    Strict,
    _parse,
    decode_text,
    read_yaml,
)
from workbench.k8s.names import is_dns_label, is_dns_subdomain, parse_quantity
from workbench.project import Project

KUBERNETES_FILE = "kubernetes.yaml"
LABEL = f"configs/{KUBERNETES_FILE}"
EXAMPLE = "configs/kubernetes.example.yaml"
SUPPORTED_VERSIONS = tuple(f"1.{minor}" for minor in range(25, 38))  # kubernetes-validate's


def _dns_label(value: str) -> str:
    if not is_dns_label(value):
        raise ValueError(f"{value!r} is not a DNS-1123 label (lower-case letters, digits and "
                         f"'-', at most 63 characters, starting and ending alphanumeric)")
    return value


def _dns_subdomain(value: str) -> str:
    if not is_dns_subdomain(value):
        raise ValueError(f"{value!r} is not a DNS-1123 subdomain name")
    return value


def _quantity(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a quantity such as 250m or 512Mi, got {value!r}")
    if parse_quantity(value) <= 0:
        raise ValueError(f"quantity {value!r} must be positive")
    return str(value)


ResourceName = Literal["cpu", "memory", "ephemeral-storage"]


class Resources(Strict):
    requests: dict[ResourceName, str] = {}
    limits: dict[ResourceName, str] = {}

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _quantities(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: _quantity(amount) for key, amount in value.items()}
        return value

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for name, request in self.requests.items():
            limit = self.limits.get(name)
            if limit is not None and parse_quantity(request) > parse_quantity(limit):
                raise ValueError(f"{name}: request {request} is more than the limit {limit}")
        return self

    def manifest(self) -> dict[str, dict[str, str]]:
        return {key: {str(name): amount for name, amount in value.items()} for key, value in
                (("requests", self.requests), ("limits", self.limits)) if value}


Seconds = Annotated[int, Field(ge=1)]


class Probes(Strict):
    """Timing of the probes on the model server's ``/ping``."""

    period_s: Seconds = 10
    timeout_s: Seconds = 2
    failure_threshold: Seconds = 3
    startup_period_s: Seconds = 5
    startup_failure_threshold: Seconds = 60  # startup may take period x threshold (5 min)


Replicas = Annotated[int, Field(ge=0)]
Percent = Annotated[str, Field(pattern=r"^\d{1,3}%$")]


class Pdb(Strict):
    """A PodDisruptionBudget: exactly one of ``min_available`` and ``max_unavailable``."""

    min_available: Replicas | Percent | None = None
    max_unavailable: Replicas | Percent | None = None

    @model_validator(mode="after")
    def _one(self) -> Pdb:
        if (self.min_available is None) == (self.max_unavailable is None):
            raise ValueError("set exactly one of min_available and max_unavailable")
        return self


class Hpa(Strict):
    """A HorizontalPodAutoscaler (autoscaling/v2) on CPU utilisation."""

    min_replicas: Annotated[int, Field(ge=1)] = 2
    max_replicas: Annotated[int, Field(ge=1)] = 5
    cpu_utilization: Annotated[int, Field(ge=1, le=1000)] = 70  # percent of the CPU request

    @model_validator(mode="after")
    def _range(self) -> Hpa:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is less than min_replicas "
                             f"{self.min_replicas}")
        return self


class Service(Strict):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: Annotated[int, Field(ge=1, le=65535)] = 80
    # where this machine reaches the Service (an ingress or load balancer); default: through
    # the API server's service proxy, with the kubeconfig's credentials
    external_url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")] | None = None


class ParentRef(Strict):
    """A Gateway (or one of its listeners) the HTTPRoute attaches to."""

    name: str
    namespace: str | None = None  # default: the route's namespace
    section_name: str | None = None  # a listener of the Gateway

    @field_validator("name", "section_name")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return value if value is None else _dns_subdomain(value)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        return value if value is None else _dns_label(value)


HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class Route(Strict):
    """A Gateway API ``HTTPRoute`` (``gateway.networking.k8s.io/v1``) in front of the Service,
    which workbench renders and owns: every request matching ``path`` goes to the stable
    Service; during a canary, split by the backends' ``weight``s; during a shadow, mirrored to
    the candidate by a ``RequestMirror`` filter. The Gateway API CRDs and a Gateway
    implementation must be installed in the cluster."""

    name: str | None = None  # the HTTPRoute's name (default: the Deployment's)
    parent_refs: list[ParentRef] = Field(min_length=1, max_length=32)
    hostnames: list[Annotated[str, Field(pattern=HOSTNAME, max_length=253)]] = []
    path: str = Field(default="/", pattern=r"^/\S*$", max_length=1024)  # a PathPrefix match
    # RequestMirror is "extended" support in the Gateway API: false where the implementation
    # lacks it, and a shadow is refused
    request_mirror: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return value if value is None else _dns_subdomain(value)


class CanarySplit(Strict):
    """How a canary runs on Kubernetes (``deploy.canary`` in environments.yaml says its steps).

    Without a ``route`` the split is by replica ratio: the canary Deployment and the stable one
    share the Service, which spreads requests over their ready pods; ``replicas`` pods in all
    while the canary runs (default: ``serving.replicas``), of which round(replicas x weight /
    100) are the canary's, at least 1 and, below 100 %, at most replicas - 1 (the effective
    share, canary pods / replicas, is what each step reports). With a route the canary
    Deployment has ``replicas`` pods (default: ``serving.replicas``) and the route's weights
    split the traffic exactly.
    """

    replicas: Annotated[int, Field(ge=1)] | None = None
    max_restarts: Annotated[int, Field(ge=0)] = 0  # container restarts of candidate pods
    # a metrics source registered under this name (entry-point group
    # workbench.canary_metrics): each step's traffic per version, for deploy.canary.analysis
    metrics: str | None = None


class PodAccess(Strict):
    """What a pod runs as and may read: service account, image pull secrets, a Secret."""

    service_account: str | None = None
    image_pull_secrets: list[str] = []
    # serving: a Secret whose keys become environment variables (envFrom); executor: the
    # Secret holding the pipeline's secrets, one key per name
    secret: str | None = None

    @field_validator("service_account", "secret")
    @classmethod
    def _object_names(cls, value: str | None) -> str | None:
        return value if value is None else _dns_subdomain(value)

    @field_validator("image_pull_secrets")
    @classmethod
    def _pull_secrets(cls, value: list[str]) -> list[str]:
        return [_dns_subdomain(name) for name in value]


class Serving(PodAccess):
    """The model server: MLflow's scoring server with ``/model``
    (``python -m workbench.deploy.model_server``) in the serving image."""

    image: str = Field(min_length=1)
    name: str | None = None  # the Deployment's name (default: <model>-<environment>)
    replicas: Annotated[int, Field(ge=1)] = 2
    container_port: Annotated[int, Field(ge=1024, le=65535)] = 8080
    workers: Annotated[int, Field(ge=1)] = 1
    service: Service = Service()
    resources: Resources = Resources(requests={"cpu": "250m", "memory": "512Mi"},
                                     limits={"memory": "1Gi"})
    probes: Probes = Probes()
    revision_history_limit: Annotated[int, Field(ge=1)] = 10  # rollback reaches this far
    progress_deadline_s: Seconds = 600
    rollout_timeout_s: Annotated[float, Field(gt=0)] = 900.0
    health_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    pdb: Pdb | None = None
    hpa: Hpa | None = None
    tracking_uri: str | None = None  # MLflow as the pods reach it (default: the run's)
    route: Route | None = None  # a Gateway API HTTPRoute: canary by weights, shadow by mirror
    canary: CanarySplit = CanarySplit()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        # the canary's and the shadow's Deployments add -canary and -shadow to it
        return value if value is None else _dns_label(value)


class Executor(PodAccess):
    """Stages as Jobs: papermill in the runner image, notebooks through a shared store."""

    image: str = Field(min_length=1)
    # where Jobs write executed notebooks: an fsspec URL (s3://bucket/prefix), a file:// URL or
    # an absolute path that the pods and this machine share
    store: str = Field(pattern=r"^(/|[a-z][a-z0-9+.-]*://)\S*$")
    workdir: str = Field(default="/workspace", pattern=r"^/")  # the project inside the image
    resources: Resources = Resources(requests={"cpu": "500m", "memory": "1Gi"},
                                     limits={"memory": "2Gi"})
    tracking_uri: str | None = None  # MLflow as the Jobs reach it (default: the run's)
    backoff_limit: Annotated[int, Field(ge=0)] = 0
    ttl_after_finished_s: Annotated[int, Field(ge=0)] = 86400
    poll_interval_s: Annotated[float, Field(gt=0)] = 2.0
    keep_in_store: bool = False  # keep executed notebooks in the store (they are not redacted)


class Cluster(Strict):
    """One environment's cluster settings."""

    kubeconfig: str | None = None  # None: $KUBECONFIG, else ~/.kube/config, else in-cluster
    context: str | None = None  # None: the kubeconfig's current context
    namespace: str
    kubernetes_version: str = "1.31"  # manifests are validated against this version's schema
    dry_run: bool = False  # every write is sent with dryRun=All: the server changes nothing
    poll_interval_s: Annotated[float, Field(gt=0)] = 2.0
    serving: Serving | None = None
    executor: Executor | None = None

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return _dns_label(value)

    @field_validator("kubernetes_version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        text = str(value).removeprefix("v")
        if text not in SUPPORTED_VERSIONS:
            raise ValueError(f"kubernetes_version {value!r} is not one kubernetes-validate has "
                             f"schemas for ({SUPPORTED_VERSIONS[0]} to {SUPPORTED_VERSIONS[-1]})")
        return text

    def kubeconfig_path(self, project: Project) -> Path | None:
        if self.kubeconfig is None:
            return None
        path = Path(self.kubeconfig).expanduser()
        return path if path.is_absolute() else project.root / path


class KubernetesConfig(Strict):
    """The parsed file: one :class:`Cluster` per environment, ``defaults`` merged in."""

    environments: dict[str, Cluster]

    def cluster(self, environment: str) -> Cluster:
        if environment not in self.environments:
            raise ConfigError([Problem(LABEL, f"environments.{environment}",
                                       f"no Kubernetes settings for environment {environment!r}; "
                                       f"the file defines {sorted(self.environments)}")])
        return self.environments[environment]


def merge(base: Any, override: Any) -> Any:
    """``override`` deeply merged over ``base`` (mappings merge, everything else replaces)."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def _located(problem: Problem, env: str, data: dict[str, Any], defaults: dict[str, Any]) -> Problem:
    """Name the key where the user wrote it: the environment's entry or ``defaults``."""
    head = problem.path.split(".", 1)[0].split("[", 1)[0]
    where = "defaults" if head and head not in data and head in defaults else f"environments.{env}"
    path = f"{where}.{problem.path}" if problem.path else where
    return Problem(problem.file, path, problem.message)


def parse_kubernetes(text: str | None) -> KubernetesConfig:
    """Validate the file's text; raise :class:`ConfigError` naming every problem."""
    data, problems = read_yaml(text, LABEL)
    if problems:
        raise ConfigError(problems)
    unknown = sorted(set(data) - {"defaults", "environments"})
    problems = [Problem(LABEL, key, "unknown key; expected one of ['defaults', 'environments']")
                for key in unknown]
    defaults = data.get("defaults") or {}
    environments = data.get("environments")
    if not isinstance(defaults, dict):
        problems.append(Problem(LABEL, "defaults", "expected a mapping"))
    if not isinstance(environments, dict) or not environments:
        problems.append(Problem(LABEL, "environments", "expected a mapping of environment "
                                                       "name to settings"))
    if problems:
        raise ConfigError(problems)
    clusters: dict[str, Cluster] = {}
    for env, entry in environments.items():
        entry = entry or {}
        if not isinstance(entry, dict):
            problems.append(Problem(LABEL, f"environments.{env}", "expected a mapping"))
            continue
        cluster, found = _parse(Cluster, merge(defaults, entry), LABEL)
        problems += [_located(p, env, entry, defaults) for p in found]
        if cluster is not None:
            clusters[env] = cluster
    if problems:
        raise ConfigError(problems)
    return KubernetesConfig(environments=clusters)


def read_kubernetes(project: Project) -> KubernetesConfig | None:
    """The project's Kubernetes settings, or None when it has no ``configs/kubernetes.yaml``."""
    path = project.configs / KUBERNETES_FILE
    if not path.is_file():
        return None
    text, problems = decode_text(path.read_bytes(), LABEL)
    if text is None:
        raise ConfigError(problems)
    return parse_kubernetes(text)


def kubernetes_environments(config: Config) -> list[str]:
    return [name for name, env in config.environments.items() if env.deploy.target == "kubernetes"]


def kubernetes_problems(project: Project, config: Config) -> list[Problem]:
    """Everything wrong with the Kubernetes settings, as far as it can be told before running."""
    wanted = kubernetes_environments(config)
    try:
        settings = read_kubernetes(project)
    except ConfigError as exc:
        return exc.problems
    if settings is None:
        if not wanted:
            return []
        return [Problem(LABEL, "", f"file is missing; environment(s) {', '.join(wanted)} deploy "
                                   f"to kubernetes (configs/environments.yaml); see {EXAMPLE}")]
    problems = []
    for env, cluster in settings.environments.items():
        where = f"environments.{env}"
        if env not in config.environments:
            problems.append(Problem(LABEL, where, f"unknown environment; configs/"
                                    f"environments.yaml defines {sorted(config.environments)}"))
        if cluster.executor and config.pipeline.secrets and not cluster.executor.secret:
            problems.append(Problem(LABEL, f"{where}.executor.secret", "required: the pipeline "
                                    f"declares secrets {config.pipeline.secrets}; name the "
                                    f"Kubernetes Secret holding them"))
    for env in wanted:
        if env not in settings.environments:
            problems.append(Problem(LABEL, f"environments.{env}", "missing: configs/"
                                    "environments.yaml deploys it to kubernetes"))
        elif settings.environments[env].serving is None:
            problems.append(Problem(LABEL, f"environments.{env}.serving", "missing: configs/"
                                    "environments.yaml deploys it to kubernetes (serving.image "
                                    "is required)"))
        elif config.environments[env].deploy.strategy == "canary":
            problems += canary_problems(env, settings.environments[env],
                                        config.environments[env].deploy.canary)
    return problems


def canary_problems(environment: str, cluster: Cluster, canary: Any) -> list[Problem]:
    """What a canary on Kubernetes cannot do as configured (``canary``: ``deploy.canary``)."""
    serving = cluster.serving
    if serving is None or canary is None:
        return []
    where = f"environments.{environment}.serving"
    problems = [Problem("configs/environments.yaml",
                        f"environments.{environment}.deploy.canary.steps.{number}.pause",
                        "manual steps run on the local target only; give the Kubernetes "
                        "target a duration")
                for number, step in enumerate(canary.steps) if getattr(step, "manual", False)]
    rules = sorted(canary.analysis.model_fields_set)
    if rules and serving.canary.metrics is None:
        problems.append(Problem(LABEL, f"{where}.canary.metrics", f"deploy.canary.analysis "
                                f"sets {rules} (configs/environments.yaml), which needs each "
                                f"version's traffic: on Kubernetes the requests do not pass "
                                f"through workbench, so name a metrics source here (entry-point "
                                f"group workbench.canary_metrics), or drop the rules (the "
                                f"canary is then judged by its pods' readiness and restarts "
                                f"only)"))
    if serving.route is None and serving.hpa is not None:
        problems.append(Problem(LABEL, f"{where}.hpa", "a canary split by replica ratio needs "
                                "fixed replica counts, and the autoscaler owns them; configure "
                                "serving.route (split by an HTTPRoute's weights) or drop hpa"))
    if serving.route is None and canary.steps[0].weight < 100 and \
            (serving.canary.replicas or serving.replicas) < 2:
        problems.append(Problem(LABEL, f"{where}.canary.replicas", "a canary split by replica "
                                "ratio needs at least 2 pods in all (one per track); set "
                                "canary.replicas"))
    return problems


def cluster_for(project: Project, environment: str, need: str) -> Cluster:
    """The environment's settings, with the ``need``-ed section (``serving``/``executor``)."""
    settings = read_kubernetes(project)
    if settings is None:
        raise ConfigError([Problem(LABEL, "", f"file is missing; it is needed for {need} on "
                                              f"Kubernetes (see {EXAMPLE})")])
    cluster = settings.cluster(environment)
    if getattr(cluster, need) is None:
        raise ConfigError([Problem(LABEL, f"environments.{environment}.{need}",
                                   f"missing: needed for {need} on Kubernetes")])
    return cluster


def is_local_uri(uri: str) -> bool:
    """True for MLflow stores only this machine reaches: SQLite files, file: URIs and paths."""
    scheme = uri.split("://", 1)[0].split(":", 1)[0].lower() if ":" in uri else ""
    return scheme in ("", "sqlite", "file") or len(scheme) == 1  # a Windows drive letter
