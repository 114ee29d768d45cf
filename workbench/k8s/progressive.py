"""Progressive delivery on the Kubernetes target: the canary and the shadow.

**Canary** (``deploy.strategy: canary``): a canary Deployment (``<name>-canary``) of the new
version beside the stable one. Its share of requests grows with the steps of
``deploy.canary``, split one of two ways:

- by replica ratio (no ``serving.route``): both Deployments' pods are behind the one Service,
  which spreads requests over ready pods, so the share is canary pods / all pods
  (:func:`workbench.k8s.manifests.replica_split` says the rounding; each step records the
  effective share it gives);
- by a Gateway API HTTPRoute's backend weights (``serving.route``): the canary has its own
  Service, and the route sends the step's weight to it.

Each step: the split is set and waited for (the canary's rollout as ``kubectl rollout
status`` judges it), watched for its ``pause``, then judged. **What the analysis sees**: on
Kubernetes there is no proxy of ours in the request path, so it sees what the API server
reports about the candidate's pods — every pod ready (the kubelet's readiness probe on
``/ping``), container restarts at most ``serving.canary.max_restarts``, a rollout that
finishes — and, only when ``serving.canary.metrics`` names a metrics source (a
:class:`MetricsSource` registered in :data:`METRICS` or the ``workbench.canary_metrics``
entry-point group, e.g. a Prometheus query of the ingress's metrics), each version's traffic
of the step, judged by ``deploy.canary.analysis`` exactly as on the local target
(:func:`workbench.deploy.canary.breaches`). Without a metrics source it does not see
requests, errors or latency at all; a ``deploy.canary.analysis`` that sets a rule is then
refused rather than silently ignored.

A breach aborts: the route back to 100 % stable (or the stable Deployment back to its
replicas), the canary Deployment (and Service) deleted, a rollback record with trigger
``canary`` and target ``kubernetes``, and the stage fails. After the last step the stable
Deployment is updated to the new version and waited for, then the route goes back to 100 %
stable, and the canary is deleted. Each step is a ``canary_step`` ledger entry, as on the
local target (:mod:`workbench.deploy.canary` keeps the records).

**Shadow** (needs ``serving.route``, with ``request_mirror`` true): a ``<name>-shadow``
Deployment and Service of the candidate, the route's ``RequestMirror`` filter copying every
request to it for the window, then the route without the filter and the shadow deleted. The
Gateway discards the shadow's answers, so they are not compared; the result reports the
shadow's pods and, with a metrics source, each side's traffic.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from workbench.audit import ledger
from workbench.clock import utc_now
from workbench.config import Config, ConfigError, Problem
from workbench.deploy.canary import CanaryAborted, Step, _record_abort, _record_step, breaches
from workbench.deploy.shadow import ShadowResult
from workbench.identity import current as current_identity
from workbench.k8s import KubernetesError, checks
from workbench.k8s.client import MERGE_PATCH, api_client, api_error, apply, delete, to_dict
from workbench.k8s.config import LABEL, Cluster, Serving, canary_problems, cluster_for
from workbench.k8s.manifests import (
    CANARY,
    PING,
    PORT_NAME,
    SHADOW,
    candidate_deployment,
    candidate_name,
    candidate_service,
    deployment_name,
    http_route,
    replica_split,
    resolved_version,
    route_weights,
    serving_manifests,
)
from workbench.k8s.rollout import RolloutFailed, wait_for_rollout
from workbench.k8s.serving import (
    Deployment,
    described,
    health_check,
    pods_tracking_uri,
    read_deployment,
    served_version,
    service_url,
)
from workbench.k8s.serving import serving_settings as _serving
from workbench.plugins import Registry, UnknownPlugin
from workbench.project import Project

RUN_VARIABLE = "WORKBENCH_RUN_ID"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class StepWindow:
    """One step (or a shadow's window) for a metrics source: who, which split, when."""

    environment: str
    namespace: str
    stable: str  # the stable Deployment (and Service)
    candidate: str  # the canary's (or shadow's) Deployment
    stable_version: str
    candidate_version: str
    step: int  # 0: a shadow's window
    weight: float
    share: float  # the effective share of requests the split gives the candidate, percent
    split: str  # replicas, route or mirror
    started: float  # time.time() at its start and end
    ended: float


class MetricsSource(Protocol):
    """Where the analysis reads traffic on Kubernetes (requests do not pass through us)."""

    def traffic(self, window: StepWindow) -> tuple[dict[str, Any], dict[str, Any]]:
        """The candidate's and the stable version's traffic in ``window``, as the local
        proxy's statistics have it: ``requests``, ``errors``, ``error_rate``, ``p95_ms``."""
        ...


METRICS: Registry[Callable[[], MetricsSource]] = Registry("canary metrics source",
                                                          "workbench.canary_metrics")


@dataclass(frozen=True)
class CanaryRollout:
    """What a canary on Kubernetes did: the stable Deployment as it ends, each step."""

    deployment: Deployment
    steps: list[Step]
    split: str = ""  # replicas or route; empty: no canary ran (a plain deploy)
    note: str = ""

    @property
    def url(self) -> str:
        return self.deployment.url

    @property
    def version(self) -> str:
        return self.deployment.version

    def describe(self) -> str:
        steps = ", ".join(f"{s.weight:g}% ({s.share:.1f}% effective)" if s.share is not None
                          else f"{s.weight:g}%" for s in self.steps)
        how = f"canary by {self.split}: {steps}" if self.steps else f"canary: {self.note}"
        return f"{self.deployment.describe()}; {how}"


def _problem(environment: str, key: str, message: str) -> ConfigError:
    return ConfigError([Problem(LABEL, f"environments.{environment}.serving.{key}", message)])


def metrics_source(serving: Serving, environment: str) -> MetricsSource | None:
    name = serving.canary.metrics
    if name is None:
        return None
    try:
        return METRICS.get(name)()
    except UnknownPlugin as exc:
        raise _problem(environment, "canary.metrics", str(exc)) from None


def _refusals(settings: Any, cluster: Cluster, environment: str) -> None:
    """What the Kubernetes target cannot do as configured, before anything is sent."""
    problems = canary_problems(environment, cluster, settings)
    if problems:
        raise ConfigError(problems)


def canary(project: Project, config: Config, environment: str, model_name: str, version: str,
           tracking_uri: str, *, plain: Callable[[], Deployment],
           on_wait: Progress | None = None) -> CanaryRollout:
    """Bring ``version`` to the environment step by step (see the module doc). A first
    deploy, the version already served, or a dry run is the target's plain deploy
    (``plain``)."""
    settings = config.environments[environment].deploy.canary
    if settings is None:
        raise ConfigError([Problem("configs/environments.yaml",
                                   f"environments.{environment}.deploy.canary",
                                   "missing: strategy canary needs its steps")])
    cluster = cluster_for(project, environment, "serving")
    serving = _serving(cluster)
    version = resolved_version(version)
    _refusals(settings, cluster, environment)
    source = metrics_source(serving, environment)
    name = deployment_name(cluster, environment, model_name)
    pods_uri = pods_tracking_uri(cluster, environment, tracking_uri)
    split: _Split = (_RouteSplit if serving.route else _ReplicaSplit)(
        project, config, cluster, environment, model_name, version, pods_uri, on_wait)
    checks.validate(split.manifests([s.weight for s in settings.steps]),
                    cluster.kubernetes_version)
    api = api_client(project, cluster)
    try:
        live = read_deployment(api, cluster.namespace, name)
        before = served_version(live)
        if live is None or before == version or cluster.dry_run:
            why = ("first deploy: nothing to compare with" if live is None else
                   "dry run: the canary's manifests were validated, nothing changed"
                   if cluster.dry_run else "plain redeploy")
            return CanaryRollout(plain(), [], "", why)
        split.begin(api, live)
        steps = _steps(split, settings, source)
        return CanaryRollout(split.complete(), steps, split.kind)
    finally:
        api.close()


def _steps(split: _Split, settings: Any, source: MetricsSource | None) -> list[Step]:
    """The step loop: set the split, watch, judge, record; abort on a breach."""
    steps: list[Step] = []
    try:
        for number, step_settings in enumerate(settings.steps, start=1):
            step = split.step(number, step_settings, settings.analysis, source)
            steps.append(step)
            _record_step(split.project, split.environment, split.model, split.version,
                         split.stable_version, step)
            if not step.passed:
                split.abort()
                endpoint: Any = split.endpoint()
                _record_abort(split.project, split.environment, split.model, split.version,
                              endpoint, step, split.threshold(settings.analysis, source),
                              target="kubernetes")
                raise CanaryAborted(
                    f"canary of {split.model} v{split.version} on {split.environment} aborted "
                    f"at step {number} ({step.weight:g}%): {'; '.join(step.breaches)}; every "
                    f"request is back on v{split.stable_version}")
    except CanaryAborted:
        raise
    except BaseException:
        split.abort()  # an API error, a timeout, Ctrl-C: every request back on stable
        raise
    return steps


def _scale(api: Any, namespace: str, name: str, replicas: int) -> None:
    from kubernetes import client

    try:
        client.AppsV1Api(api).patch_namespaced_deployment(
            name, namespace, {"spec": {"replicas": replicas}}, _content_type=MERGE_PATCH)
    except Exception as exc:
        raise api_error(f"scaling Deployment {namespace}/{name} to {replicas}", exc) from exc


def _ping(api: Any, namespace: str, service: str) -> str | None:
    """None when ``/ping`` answers 200 through the API server's proxy to ``service`` (always
    that way: ``serving.service.external_url`` reaches the stable Service, not this one)."""
    from kubernetes import client

    try:
        raw: Any = client.CoreV1Api(api).connect_get_namespaced_service_proxy_with_path(
            f"{service}:{PORT_NAME}", namespace, PING.lstrip("/"), _request_timeout=5,
            _preload_content=False)
        return None if raw.status == 200 else f"HTTP {raw.status}"
    except Exception as exc:  # noqa: BLE001 - every failure is a "not yet"
        return str(api_error("GET /ping", exc))


@dataclass
class _Split:
    """A canary's moves on the cluster; subclasses say how traffic is split."""

    project: Project
    config: Config
    cluster: Cluster
    environment: str
    model: str
    version: str  # the candidate's
    tracking_uri: str  # as the pods reach MLflow
    on_wait: Progress | None
    track: str = CANARY  # or SHADOW
    kind: str = ""
    api: Any = None
    stable: dict[str, Any] = field(default_factory=dict)  # the live stable Deployment
    stable_version: str = ""
    candidate_exists: bool = False

    def __post_init__(self) -> None:
        """Subclasses set their own state here."""

    @property
    def serving(self) -> Serving:
        return _serving(self.cluster)

    @property
    def namespace(self) -> str:
        return self.cluster.namespace

    @property
    def name(self) -> str:
        return deployment_name(self.cluster, self.environment, self.model)

    @property
    def candidate(self) -> str:
        return candidate_name(self.cluster, self.environment, self.model, self.track)

    def stable_manifests(self) -> list[dict[str, Any]]:
        """The stable objects for the new version (the completion applies them)."""
        return serving_manifests(self.cluster, self.environment, self.model, self.version,
                                 self.tracking_uri, self.config.pipeline.name)

    def candidate_manifest(self, replicas: int) -> dict[str, Any]:
        return candidate_deployment(self.cluster, self.environment, self.model, self.version,
                                    self.tracking_uri, self.config.pipeline.name, replicas,
                                    self.track)

    def manifests(self, weights: list[float]) -> list[dict[str, Any]]:
        """Everything the canary may send, for validation before any of it is."""
        raise NotImplementedError

    def begin(self, api: Any, stable: dict[str, Any]) -> None:
        self.api, self.stable = api, stable
        self.stable_version = served_version(stable) or "?"

    def wait(self, name: str) -> dict[str, Any]:
        return wait_for_rollout(self.api, name, self.namespace, self.serving.rollout_timeout_s,
                                self.cluster.poll_interval_s, self.on_wait)

    def endpoint(self) -> Deployment:
        return described(self.environment, self.stable, service_url(self.api, self.cluster,
                                                                     self.name), self.model,
                          None)

    def shift(self, weight: float) -> float:
        """Give the canary ``weight`` percent; return the effective share, percent."""
        raise NotImplementedError

    def selector(self) -> str:
        match = self.candidate_manifest(1)["spec"]["selector"]["matchLabels"]
        return ",".join(f"{key}={value}" for key, value in sorted(match.items()))

    def step(self, number: int, settings: Any, analysis: Any,
             source: MetricsSource | None) -> Step:
        """Set the step's split, watch it for its pause, judge it."""
        started, clock = time.time(), time.monotonic()
        try:
            share = self.shift(settings.weight)
        except RolloutFailed as exc:  # the candidate cannot become ready: a verdict on it
            return Step(number, settings.weight, round(time.monotonic() - clock, 3),
                        {"split": self.kind}, {}, None, [f"the canary's rollout failed: {exc}"])
        pods, found = self.watch(settings.pause_s)
        candidate: dict[str, Any] = {"split": self.kind, **pods}
        serving: dict[str, Any] = {}
        if source is not None:
            window = StepWindow(self.environment, self.namespace, self.name, self.candidate,
                                self.stable_version, self.version, number, settings.weight,
                                share, self.kind, started, time.time())
            traffic, serving = source.traffic(window)
            candidate.update(traffic)
            found += breaches(analysis, traffic, serving)
        return Step(number, settings.weight, round(time.monotonic() - clock, 3), candidate,
                    dict(serving), round(share, 3), found)

    def watch(self, pause_s: float) -> tuple[dict[str, Any], list[str]]:
        """Watch the candidate's pods for ``pause_s`` (a breach ends it early): its ready
        and wanted replicas, container restarts."""
        deadline = time.monotonic() + pause_s
        while True:
            pods = self.pods()
            found = self.pod_breaches(pods)
            if found or time.monotonic() >= deadline:
                return pods, found
            time.sleep(self.cluster.poll_interval_s)

    def pods(self) -> dict[str, Any]:
        """What the API server says of the candidate: replicas wanted and ready, and its pods'
        container restarts (by pod)."""
        from kubernetes import client

        apps, core = client.AppsV1Api(self.api), client.CoreV1Api(self.api)
        try:
            live = to_dict(self.api, apps.read_namespaced_deployment(self.candidate,
                                                                     self.namespace))
            listed = to_dict(self.api, core.list_namespaced_pod(
                self.namespace, label_selector=self.selector()))
        except Exception as exc:
            raise api_error(f"reading the {self.track} {self.namespace}/{self.candidate}",
                            exc) from exc
        restarts = {pod["metadata"]["name"]: sum(int(c.get("restartCount", 0)) for c in
                                                 (pod.get("status") or {}).get(
                                                     "containerStatuses") or [])
                    for pod in listed.get("items", [])}
        status = live.get("status") or {}
        return {"replicas": int(live["spec"].get("replicas") or 0),
                "ready_replicas": int(status.get("readyReplicas") or 0),
                "restarts": sum(restarts.values()),
                "restarts_by_pod": {pod: n for pod, n in restarts.items() if n}}

    def pod_breaches(self, pods: dict[str, Any]) -> list[str]:
        found = []
        if pods["ready_replicas"] < pods["replicas"]:
            found.append(f"{pods['ready_replicas']} of {pods['replicas']} {self.track} pods "
                         f"ready")
        limit = self.serving.canary.max_restarts
        if pods["restarts"] > limit:
            found.append(f"{pods['restarts']} container restarts in {self.track} pods > "
                         f"max_restarts {limit} ({pods['restarts_by_pod']})")
        return found

    def threshold(self, analysis: Any, source: MetricsSource | None) -> dict[str, Any]:
        """What the abort was judged against, for the rollback record."""
        rules: dict[str, Any] = {"max_restarts": self.serving.canary.max_restarts,
                                 "ready": "every canary pod"}
        if source is not None:
            rules.update(analysis.model_dump())
        return rules

    def remove_candidate(self) -> None:
        if self.candidate_exists:
            delete(self.api, "Deployment", self.namespace, self.candidate)
            self.candidate_exists = False

    def abort(self) -> None:
        raise NotImplementedError

    def complete(self) -> Deployment:
        raise NotImplementedError

    def roll_stable(self, manifests: list[dict[str, Any]]) -> Deployment:
        """Apply the stable objects of the new version; wait; health-check the Service."""
        for manifest in manifests:
            apply(self.api, manifest)
        live = self.wait(self.name)
        url = health_check(self.api, self.cluster, self.name)
        return described(self.environment, live, url, self.model, self.stable_version)


class _ReplicaSplit(_Split):
    """The split by replica ratio behind the one Service (see the module doc)."""

    def __post_init__(self) -> None:
        self.kind = "replicas"
        self.total = self.serving.canary.replicas or self.serving.replicas
        self.stable_replicas = 1  # the stable's before the canary
        self.stable_scaled = False  # from the first scale on, an abort scales it back

    def manifests(self, weights: list[float]) -> list[dict[str, Any]]:
        return [*self.stable_manifests(),
                self.candidate_manifest(replica_split(self.total, weights[0])[1])]

    def begin(self, api: Any, stable: dict[str, Any]) -> None:
        super().begin(api, stable)
        self.stable_replicas = int(stable["spec"].get("replicas", 1))

    def shift(self, weight: float) -> float:
        stable, canary = replica_split(self.total, weight)
        if not self.candidate_exists:
            self.candidate_exists = True  # from the create on, an abort deletes it
            apply(self.api, self.candidate_manifest(canary))
        else:
            _scale(self.api, self.namespace, self.candidate, canary)
        self.wait(self.candidate)  # the canary's pods ready before the stable gives any up
        self.stable_scaled = True
        _scale(self.api, self.namespace, self.name, stable)
        self.stable = self.wait(self.name)
        return 100.0 * canary / self.total

    def abort(self) -> None:
        """The stable Deployment back to its replicas (and ready), then the canary deleted."""
        if self.stable_scaled:
            _scale(self.api, self.namespace, self.name, self.stable_replicas)
            self.stable = self.wait(self.name)
            self.stable_scaled = False
        self.remove_candidate()

    def complete(self) -> Deployment:
        """The stable Deployment to the new version at its own replica count (the canary keeps
        serving while it rolls), then the canary deleted."""
        done = self.roll_stable(self.stable_manifests())
        self.remove_candidate()
        return done


class _RouteSplit(_Split):
    """The split by an HTTPRoute's backend weights (see the module doc)."""

    def __post_init__(self) -> None:
        self.kind = "route"
        self.replicas = self.serving.canary.replicas or self.serving.replicas

    def candidate_objects(self) -> list[dict[str, Any]]:
        return [self.candidate_manifest(self.replicas),
                candidate_service(self.cluster, self.environment, self.model, self.version,
                                  self.config.pipeline.name, self.track)]

    def route(self, weight: float | None, mirror: bool = False) -> dict[str, Any]:
        """The route: the step's weights, or (None) every request to the stable Service;
        ``mirror``: a copy of each to the shadow."""
        return http_route(self.cluster, self.environment, self.model,
                          self.stable_version or self.version, self.config.pipeline.name,
                          None if weight is None else route_weights(weight), mirror)

    def start_candidate(self) -> None:
        """The candidate's Deployment and Service, its rollout, its Service answering."""
        self.candidate_exists = True  # from the first write on, an abort removes it
        for manifest in self.candidate_objects():
            apply(self.api, manifest)
        self.wait(self.candidate)
        self._health()

    def manifests(self, weights: list[float]) -> list[dict[str, Any]]:
        return [*self.stable_manifests(), *self.candidate_objects(),
                *(self.route(weight) for weight in weights)]

    def shift(self, weight: float) -> float:
        if not self.candidate_exists:
            self.start_candidate()
        stable, canary = route_weights(weight)
        apply(self.api, self.route(weight))
        return 100.0 * canary / (stable + canary)

    def _health(self) -> None:
        """The canary's Service answers ``/ping`` before the route sends it anything."""
        deadline = time.monotonic() + self.serving.health_timeout_s
        while (problem := _ping(self.api, self.namespace, self.candidate)) is not None:
            if time.monotonic() >= deadline:
                raise RolloutFailed(f"service {self.namespace}/{self.candidate} did not answer "
                                    f"{PING} within {self.serving.health_timeout_s:g} s: "
                                    f"{problem}")
            time.sleep(self.cluster.poll_interval_s)

    def remove_candidate(self) -> None:
        if self.candidate_exists:
            super().remove_candidate()
            delete(self.api, "Service", self.namespace, self.candidate)

    def abort(self) -> None:
        """Every request back to the stable Service, then the canary deleted; the stable
        Deployment is never touched."""
        if self.candidate_exists:
            apply(self.api, self.route(None))
        self.remove_candidate()

    def complete(self) -> Deployment:
        """The stable Deployment to the new version (the route still on the canary), then
        the route to it alone, then the canary deleted."""
        objects = self.stable_manifests()
        done = self.roll_stable([m for m in objects if m["kind"] != "HTTPRoute"])
        self.stable_version = self.version
        apply(self.api, self.route(None))
        self.remove_candidate()
        return done


# --- shadow -------------------------------------------------------------------------------


def shadow(project: Project, config: Config, environment: str, model_name: str, version: str,
           tracking_uri: str, window_s: float, *, on_wait: Progress | None = None
           ) -> ShadowResult:
    """Mirror the environment's traffic to ``version`` for ``window_s`` seconds through the
    HTTPRoute (see the module doc); the environment must already serve another version."""
    cluster = cluster_for(project, environment, "serving")
    serving = _serving(cluster)
    if serving.route is None:
        raise _problem(environment, "route", "a shadow on Kubernetes mirrors requests with a "
                       "Gateway API HTTPRoute's RequestMirror filter, and a Service alone "
                       "cannot mirror: configure the route (parent_refs: the Gateway) to shadow")
    if not serving.route.request_mirror:
        raise _problem(environment, "route.request_mirror", "false: this Gateway does not "
                       "support the RequestMirror filter, so a shadow cannot run here")
    version = resolved_version(version)
    source = metrics_source(serving, environment)
    split = _RouteSplit(project, config, cluster, environment, model_name, version,
                        pods_tracking_uri(cluster, environment, tracking_uri), on_wait,
                        track=SHADOW)
    api = api_client(project, cluster)
    try:
        live = read_deployment(api, cluster.namespace, split.name)
        if live is None:
            raise KubernetesError(f"environment {environment!r} serves nothing yet: a shadow "
                                  f"needs live traffic to mirror")
        split.begin(api, live)
        mirrored, plain = split.route(None, mirror=True), split.route(None)
        checks.validate([*split.stable_manifests(), *split.candidate_objects(), mirrored,
                         plain], cluster.kubernetes_version)
        started, clock = time.time(), time.monotonic()
        try:
            split.start_candidate()
            apply(api, mirrored)
            pods, found = split.watch(window_s)
            traffic = None if source is None else source.traffic(StepWindow(
                environment, cluster.namespace, split.name, split.candidate,
                split.stable_version, version, 0, 0.0, 0.0, "mirror", started, time.time()))
        finally:
            split.abort()  # the route without the mirror, the shadow deleted
    finally:
        api.close()
    comparison = {"target": "kubernetes", "mirrored_by": "HTTPRoute RequestMirror",
                  "compared": None, "disagreement_rate": None,  # the Gateway drops its answers
                  "shadow_pods": pods, "breaches": found,
                  "shadow": traffic[0] if traffic else None,
                  "serving": traffic[1] if traffic else None}
    result = ShadowResult(environment, model_name, split.stable_version, version,
                          round(time.monotonic() - clock, 3), comparison)
    ledger.append(project.reports, "shadow", actor=current_identity().model_dump(),
                  run_id=os.environ.get(RUN_VARIABLE) or None,
                  data={**result.as_dict(), "time": utc_now()})
    return result
