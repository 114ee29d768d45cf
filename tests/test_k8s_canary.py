"""Progressive delivery on the Kubernetes target through the real ``kubernetes`` client,
against the API emulator on 127.0.0.1 (kmock), the test playing the Deployment controller
(and, where a test needs it, the kubelet's pod status and a metrics source).

Canary split by replica ratio (10 -> 50 -> 100 % of 4 pods: 25, 50, 100 % effective) and by a
Gateway API HTTPRoute's backend weights (90/10, 50/50, 0/100), each completed and each aborted
at its first step, with the whole sequence of API requests asserted; shadow through the
route's RequestMirror filter, refused without a route; the rendered manifests (HTTPRoute
against its vendored CRD schema) under strict validation, each check with a negative control.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import kmock
import pytest
from conftest import Workspace
from k8s_emulator import (
    NAMESPACE,
    DeploymentController,
    Emulator,
    controller_client,
    running,
    use_kubernetes,
)
from kubernetes import client

from workbench.audit import journal, ledger
from workbench.config import ConfigError, load_config
from workbench.deploy import deploy_to
from workbench.deploy.canary import CanaryAborted
from workbench.k8s import checks, target
from workbench.k8s.config import kubernetes_problems, parse_kubernetes
from workbench.k8s.manifests import (
    TRACK,
    candidate_deployment,
    candidate_service,
    http_route,
    replica_split,
    route_weights,
    serving_manifests,
)
from workbench.k8s.progressive import METRICS, CanaryRollout, StepWindow
from workbench.project import Project

TRACKING = "http://mlflow.example.test:5000"
ROUTES = "gateway.networking.k8s.io/v1/httproutes"
ROUTE = {"parent_refs": [{"name": "public", "namespace": "gateways", "section_name": "https"}],
         "hostnames": ["models.example.test"]}
STEPS = [{"weight": 10, "pause": "0s"}, {"weight": 50, "pause": "0s"},
         {"weight": 100, "pause": "0s"}]
PROXY = "services/{}:http/proxy/ping"


@pytest.fixture
def emulator() -> Any:
    with Emulator() as emu:
        # the Gateway API CRD, installed (kmock serves any resource it is told about)
        emu.handler.resources[ROUTES] = kmock.ResourceInfo(kind="HTTPRoute", namespaced=True)
        yield emu


@pytest.fixture
def metrics() -> Any:
    """A metrics source the test drives: what it answers, and each window it was asked."""

    class Source:
        answer: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        windows: list[StepWindow] = []

        def traffic(self, window: StepWindow) -> tuple[dict[str, Any], dict[str, Any]]:
            self.windows.append(window)
            return self.answer

    source = Source()
    source.windows = []
    METRICS.register("test-metrics", lambda: source)
    yield source
    METRICS.unregister("test-metrics")


def configure(ws: Workspace, emulator: Emulator, steps: list[dict[str, Any]] = STEPS,
              analysis: dict[str, Any] | None = None, **serving: Any) -> tuple[Project, Any]:
    use_kubernetes(ws, emulator, **serving)
    environments = ws.read_yaml("environments.yaml")
    canary: dict[str, Any] = {"steps": steps}
    if analysis is not None:
        canary["analysis"] = analysis
    environments["environments"]["dev"]["deploy"].update(strategy="canary", canary=canary)
    ws.write_yaml("environments.yaml", environments)
    return Project(ws.root), load_config(ws.root / "configs")


def release(project: tuple[Project, Any], version: str) -> Any:
    return deploy_to(project[0], project[1], "dev", "mini", version, TRACKING)


def first_release(project: tuple[Project, Any], emulator: Emulator) -> Any:
    """Version 1, a first deploy (a plain one); then the request log starts again (cleared
    while no controller runs: kmock matches a request by finding it in that log)."""
    with running(DeploymentController(emulator)):
        first = release(project, "1")
    emulator.handler._requests.clear()
    return first


def body(request: Any) -> Any:
    return json.loads(request.body) if request.body else None


def short(method: str, path: str, sent: Any) -> str | None:
    """What a write did, in a few words: replicas, version, route weights, mirror."""
    if sent is None:
        return None
    if path.startswith("httproutes"):
        rule = sent["spec"]["rules"][0]
        weights = " ".join(f"{b['name']}={b['weight']}" for b in rule["backendRefs"])
        mirrors = [f["requestMirror"]["backendRef"]["name"] for f in rule.get("filters", [])]
        return weights + "".join(f" mirror->{m}" for m in mirrors)
    if sent == {"spec": {"replicas": sent.get("spec", {}).get("replicas")}}:
        return f"replicas={sent['spec']['replicas']}"
    if path.startswith("deployments"):
        labels = sent["spec"]["template"]["metadata"]["labels"]
        return (f"{sent['metadata']['name']} v{labels['workbench.io/model-version']} "
                f"{labels[TRACK]} replicas={sent['spec'].get('replicas')}")
    return sent["metadata"]["name"]


def sequence(emulator: Emulator) -> list[tuple[str, str, str | None]]:
    """Every request the code under test sent, in order, a path relative to the namespace;
    repeated reads of one path in a row (a rollout being waited for) shown once."""
    seen: list[tuple[str, str, str | None]] = []
    for request in emulator.handler.sent():
        method = str(request.method.value)
        path = request.url.path.split(f"/namespaces/{NAMESPACE}/", 1)[1]
        if path == "pods":
            path += "?" + request.params["labelSelector"]
        item = (method, path, short(method, path, body(request)) if method != "GET" else None)
        if not seen or item != seen[-1] or method != "GET":
            seen.append(item)
    return seen


def stable(emulator: Emulator) -> dict[str, Any]:
    return emulator.objects("apps/v1/deployments")[(NAMESPACE, "mini-dev")]


def ledger_events(project: Project, event: str) -> list[dict[str, Any]]:
    return [e["data"] for e in ledger.entries(project.reports) if e["event"] == event]


# --- rendering and strict validation ---------------------------------------------------------


def cluster(route: bool = True, **serving: Any) -> Any:
    settings = {"image": "registry.example.test/serve:1", "replicas": 4, **serving}
    if route:
        settings["route"] = ROUTE
    return parse_kubernetes(json.dumps({"environments": {"dev": {
        "namespace": NAMESPACE, "serving": settings}}})).cluster("dev")


def test_replicas_and_weights_round_as_documented():
    assert [replica_split(4, w) for w in (10, 50, 100)] == [(3, 1), (2, 2), (0, 4)]
    assert replica_split(10, 25) == (7, 3)  # 2.5 pods: halves round up
    assert replica_split(10, 1) == (9, 1) and replica_split(10, 99) == (1, 9)  # 1 pod per track
    assert [route_weights(w) for w in (10, 50, 100)] == [(90, 10), (50, 50), (0, 100)]
    assert route_weights(12.5) == (8750, 1250)  # basis points when a weight has decimals


def test_canary_and_route_manifests_pass_strict_validation():
    replicas_split = cluster(route=False)
    stable_set = serving_manifests(replicas_split, "dev", "mini", "2", TRACKING, "mini")
    canary = candidate_deployment(replicas_split, "dev", "mini", "3", TRACKING, "mini", 1)
    assert checks.schema_problems([*stable_set, canary], "1.31") == []
    assert checks.project_problems([*stable_set, canary]) == []
    # one Service over both tracks; the canary's own selector adds its track
    service = stable_set[1]
    assert stable_set[0]["spec"]["template"]["metadata"]["labels"][TRACK] == "stable"
    assert canary["metadata"]["name"] == "mini-dev-canary" and canary["spec"]["replicas"] == 1
    assert canary["spec"]["selector"]["matchLabels"] == {**service["spec"]["selector"],
                                                         TRACK: "canary"}
    labels = canary["spec"]["template"]["metadata"]["labels"]
    assert labels[TRACK] == "canary" and labels["workbench.io/model-version"] == "3"
    assert service["spec"]["selector"].items() <= labels.items()

    routed = cluster(hpa={"min_replicas": 2, "max_replicas": 4})
    stable_set = serving_manifests(routed, "dev", "mini", "2", TRACKING, "mini")
    assert [m["kind"] for m in stable_set] == ["Deployment", "Service",
                                               "HorizontalPodAutoscaler", "HTTPRoute"]
    canary = candidate_deployment(routed, "dev", "mini", "3", TRACKING, "mini", 2)
    canary_service = candidate_service(routed, "dev", "mini", "3", "mini")
    steps = [http_route(routed, "dev", "mini", "2", "mini", route_weights(w)) for w in
             (10, 50, 100, 12.5)]
    shadow = [candidate_deployment(routed, "dev", "mini", "3", TRACKING, "mini", 2, "shadow"),
              candidate_service(routed, "dev", "mini", "3", "mini", "shadow"),
              http_route(routed, "dev", "mini", "2", "mini", mirror=True)]
    everything = [*stable_set, canary, canary_service, *steps, *shadow]
    assert checks.schema_problems(everything, "1.31") == []
    assert checks.project_problems(everything) == []
    # the canary has its own instance and Service: the stable Service never selects it
    template = canary["spec"]["template"]["metadata"]["labels"]
    assert template["app.kubernetes.io/instance"] == "mini-dev-canary"
    assert not stable_set[1]["spec"]["selector"].items() <= template.items()
    assert canary_service["spec"]["selector"].items() <= template.items()
    assert canary["spec"]["replicas"] == 2  # the autoscaler owns the stable's, not the canary's
    route = steps[0]
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways",
                                            "sectionName": "https"}]
    assert route["spec"]["hostnames"] == ["models.example.test"]
    assert route["spec"]["rules"] == [{
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [{"name": "mini-dev", "port": 80, "weight": 90},
                        {"name": "mini-dev-canary", "port": 80, "weight": 10}]}]
    assert shadow[2]["spec"]["rules"][0]["filters"] == [{"type": "RequestMirror",
                                                        "requestMirror": {"backendRef": {
                                                            "name": "mini-dev-shadow",
                                                            "port": 80}}}]
    assert stable_set[-1]["spec"]["rules"][0]["backendRefs"] == [
        {"name": "mini-dev", "port": 80, "weight": 100}]

    # negative controls: each broken route is caught by the check named
    def broken(change: Any) -> dict[str, Any]:
        manifest = copy.deepcopy(route)
        change(manifest["spec"]["rules"][0])
        return manifest

    schema = [(lambda r: r.update(bogus=1), "'bogus' was unexpected"),  # strict
              (lambda r: r["backendRefs"][0].update(weight=1000001), "is greater than"),
              (lambda r: r["matches"][0]["path"].update(type="Glob"), "is not one of")]
    for change, message in schema:
        problems = checks.schema_problems([broken(change)], "1.31")
        assert len(problems) == 1 and message in problems[0], problems
        assert "Gateway API v1.2.1 HTTPRoute, strict" in problems[0]
    project = [
        (lambda r: r["backendRefs"][1].update(name="mini-dev-gone"),
         "Service 'mini-dev-gone' is not among the manifests"),
        (lambda r: r["backendRefs"][0].update(port=8080), "has no port 8080"),
        (lambda r: [b.update(weight=0) for b in r["backendRefs"]], "every weight is 0"),
        (lambda r: r.update(filters=[{"type": "RequestMirror", "requestMirror": {
            "backendRef": {"name": "mini-dev", "port": 80}}}]), "also takes live traffic")]
    for change, message in project:
        manifests = [*stable_set[:2], canary, canary_service, broken(change)]
        problems = checks.project_problems(manifests)
        assert len(problems) == 1 and message in problems[0], problems


# --- canary by replica ratio --------------------------------------------------------------


def test_canary_by_replica_ratio_steps_and_completes(mini_project, emulator):
    project = configure(mini_project, emulator, replicas=4)
    emulator.answer(f"/api/v1/namespaces/{NAMESPACE}/{PROXY.format('mini-dev')}")
    first = first_release(project, emulator)
    assert isinstance(first, CanaryRollout) and first.steps == [] and \
        first.note == "first deploy: nothing to compare with" and first.version == "1"
    with running(DeploymentController(emulator)):
        done = release(project, "2")

    canary = "deployments/mini-dev-canary"
    pods = "pods?app.kubernetes.io/instance=mini-dev,app.kubernetes.io/name=mini," \
           "workbench.io/track=canary"
    watch = [("GET", canary, None), ("GET", pods, None)]
    assert sequence(emulator) == [
        ("GET", "deployments/mini-dev", None),
        # 10 %: one canary pod of 4 (25 % effective), ready before the stable gives one up
        ("GET", canary, None), ("POST", "deployments", "mini-dev-canary v2 canary replicas=1"),
        ("GET", f"{canary}/status", None),
        ("PATCH", "deployments/mini-dev", "replicas=3"),
        ("GET", "deployments/mini-dev/status", None), *watch,
        # 50 %: 2 and 2
        ("PATCH", canary, "replicas=2"), ("GET", f"{canary}/status", None),
        ("PATCH", "deployments/mini-dev", "replicas=2"),
        ("GET", "deployments/mini-dev/status", None), *watch,
        # 100 %: the canary alone
        ("PATCH", canary, "replicas=4"), ("GET", f"{canary}/status", None),
        ("PATCH", "deployments/mini-dev", "replicas=0"),
        ("GET", "deployments/mini-dev/status", None), *watch,
        # complete: the stable Deployment to v2 at its own replicas, checked, canary deleted
        ("GET", "deployments/mini-dev", None),
        ("PATCH", "deployments/mini-dev", "mini-dev v2 stable replicas=4"),
        ("GET", "services/mini-dev", None), ("PATCH", "services/mini-dev", "mini-dev"),
        ("GET", "deployments/mini-dev/status", None),
        ("GET", PROXY.format("mini-dev"), None),
        ("DELETE", canary, None),
    ]
    assert [(s.weight, s.share, s.passed) for s in done.steps] == [
        (10, 25.0, True), (50, 50.0, True), (100, 100.0, True)]
    assert done.version == "2" and done.split == "replicas"
    assert "canary by replicas: 10% (25.0% effective), 50% (50.0% effective)" in \
        done.describe()
    assert set(emulator.objects("apps/v1/deployments")) == {(NAMESPACE, "mini-dev")}
    live = stable(emulator)
    assert live["spec"]["replicas"] == 4
    assert live["spec"]["template"]["metadata"]["labels"]["workbench.io/model-version"] == "2"
    recorded = ledger_events(project[0], "canary_step")
    assert [(e["step"], e["weight"], e["share"], e["verdict"], e["serving_version"])
            for e in recorded] == [(1, 10, 25.0, "pass", "1"), (2, 50, 50.0, "pass", "1"),
                                   (3, 100, 100.0, "pass", "1")]
    assert recorded[0]["candidate"] == {"split": "replicas", "replicas": 1,
                                        "ready_replicas": 1, "restarts": 0,
                                        "restarts_by_pod": {}}
    assert ledger.verify(project[0].reports).ok


def test_canary_aborted_at_its_first_step_leaves_the_stable_deployment_as_it_was(
        mini_project, emulator):
    project = configure(mini_project, emulator, replicas=4)
    emulator.answer(f"/api/v1/namespaces/{NAMESPACE}/{PROXY.format('mini-dev')}")
    first_release(project, emulator)
    before = copy.deepcopy(stable(emulator)["spec"]["template"])
    # the kubelet's word on the canary's pod: its container restarted three times
    client.CoreV1Api(controller_client(emulator.url)).create_namespaced_pod(NAMESPACE, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "mini-dev-canary-x1", "labels": {
                "app.kubernetes.io/name": "mini", "app.kubernetes.io/instance": "mini-dev",
                TRACK: "canary"}},
        "spec": {"containers": [{"name": "model-server", "image": "i"}]},
        "status": {"containerStatuses": [{"name": "model-server", "restartCount": 3,
                                          "ready": False, "image": "i", "imageID": "",
                                          "state": {}}]}})
    with running(DeploymentController(emulator)), \
            pytest.raises(CanaryAborted, match=r"aborted at step 1 \(10%\): 3 container "
                          r"restarts in canary pods > max_restarts 0 .*every request is back on "
                          r"v1"):
        release(project, "2")

    canary = "deployments/mini-dev-canary"
    assert [item for item in sequence(emulator) if item[0] != "GET"] == [
        ("POST", "deployments", "mini-dev-canary v2 canary replicas=1"),
        ("PATCH", "deployments/mini-dev", "replicas=3"),
        ("PATCH", "deployments/mini-dev", "replicas=4"),  # back to what it had, then ...
        ("DELETE", canary, None),  # ... the canary goes
    ]
    live = stable(emulator)
    assert live["spec"]["template"] == before and live["spec"]["replicas"] == 4
    assert set(emulator.objects("apps/v1/deployments")) == {(NAMESPACE, "mini-dev")}
    [step] = ledger_events(project[0], "canary_step")
    assert step["verdict"] == "abort" and step["candidate"]["restarts"] == 3
    [record] = journal.read(project[0].reports / "rollbacks")
    assert (record["trigger"], record["target"], record["from_version"],
            record["to_version"]) == ("canary", "kubernetes", "2", "1")
    assert record["threshold"] == {"max_restarts": 0, "ready": "every canary pod"}
    assert record["endpoint"].endswith("/services/mini-dev:http/proxy")
    assert [e["trigger"] for e in ledger_events(project[0], "rollback")] == ["canary"]


# --- canary by an HTTPRoute's weights -------------------------------------------------------


def test_canary_by_route_weights_steps_and_completes(mini_project, emulator, metrics):
    project = configure(mini_project, emulator, analysis={"max_error_rate": 0.01},
                        route=ROUTE, canary={"metrics": "test-metrics"})
    metrics.answer = ({"requests": 400, "errors": 0, "error_rate": 0.0, "p95_ms": 30.0},
                      {"requests": 3600, "errors": 0, "error_rate": 0.0, "p95_ms": 31.0})
    for service in ("mini-dev", "mini-dev-canary"):
        emulator.answer(f"/api/v1/namespaces/{NAMESPACE}/{PROXY.format(service)}")
    with running(DeploymentController(emulator)):
        release(project, "1")
    assert [w for w in sequence(emulator) if w[0] == "POST"][-1] == \
        ("POST", "httproutes", "mini-dev=100")  # a plain deploy puts the route in place
    emulator.handler._requests.clear()
    with running(DeploymentController(emulator)):
        done = release(project, "2")

    canary = "deployments/mini-dev-canary"
    route = "httproutes/mini-dev"
    pods = "pods?app.kubernetes.io/instance=mini-dev-canary,app.kubernetes.io/name=mini"
    watch = [("GET", canary, None), ("GET", pods, None)]
    assert sequence(emulator) == [
        ("GET", "deployments/mini-dev", None),
        # the canary beside the stable one, with its own Service, answering before any traffic
        ("GET", canary, None), ("POST", "deployments", "mini-dev-canary v2 canary replicas=2"),
        ("GET", "services/mini-dev-canary", None), ("POST", "services", "mini-dev-canary"),
        ("GET", f"{canary}/status", None), ("GET", PROXY.format("mini-dev-canary"), None),
        ("GET", route, None), ("PATCH", route, "mini-dev=90 mini-dev-canary=10"), *watch,
        ("GET", route, None), ("PATCH", route, "mini-dev=50 mini-dev-canary=50"), *watch,
        ("GET", route, None), ("PATCH", route, "mini-dev=0 mini-dev-canary=100"), *watch,
        # complete: stable to v2 while the canary has the traffic; then the route to it alone
        ("GET", "deployments/mini-dev", None),
        ("PATCH", "deployments/mini-dev", "mini-dev v2 stable replicas=2"),
        ("GET", "services/mini-dev", None), ("PATCH", "services/mini-dev", "mini-dev"),
        ("GET", "deployments/mini-dev/status", None), ("GET", PROXY.format("mini-dev"), None),
        ("GET", route, None), ("PATCH", route, "mini-dev=100"),
        ("DELETE", canary, None), ("DELETE", "services/mini-dev-canary", None),
    ]
    assert [(s.weight, s.share) for s in done.steps] == [(10, 10.0), (50, 50.0), (100, 100.0)]
    assert [(w.step, w.split, w.share, w.stable_version, w.candidate_version, w.candidate)
            for w in metrics.windows] == [
        (n, "route", share, "1", "2", "mini-dev-canary")
        for n, share in ((1, 10.0), (2, 50.0), (3, 100.0))]
    assert all(w.started <= w.ended for w in metrics.windows)
    [live_route] = emulator.objects(ROUTES).values()
    assert live_route["spec"]["rules"][0]["backendRefs"] == [
        {"name": "mini-dev", "port": 80, "weight": 100}]
    assert set(emulator.objects("v1/services")) == {(NAMESPACE, "mini-dev")}
    assert stable(emulator)["spec"]["template"]["metadata"]["labels"][
        "workbench.io/model-version"] == "2"
    steps = ledger_events(project[0], "canary_step")
    assert steps[0]["candidate"]["requests"] == 400 and steps[0]["serving"]["requests"] == 3600


def test_canary_by_route_aborted_by_its_traffic_never_touches_the_stable_deployment(
        mini_project, emulator, metrics):
    project = configure(mini_project, emulator, analysis={"max_error_rate": 0.01},
                        route=ROUTE, canary={"metrics": "test-metrics"})
    metrics.answer = ({"requests": 200, "errors": 9, "error_rate": 0.045, "p95_ms": 40.0},
                      {"requests": 1800, "errors": 0, "error_rate": 0.0, "p95_ms": 35.0})
    for service in ("mini-dev", "mini-dev-canary"):
        emulator.answer(f"/api/v1/namespaces/{NAMESPACE}/{PROXY.format(service)}")
    first_release(project, emulator)
    before = copy.deepcopy(stable(emulator))
    with running(DeploymentController(emulator)), \
            pytest.raises(CanaryAborted, match=r"step 1 \(10%\): error rate 0.0450 > "
                                               r"max_error_rate 0.01 \(9 of 200\)"):
        release(project, "2")

    route = "httproutes/mini-dev"
    assert [item for item in sequence(emulator) if item[0] != "GET"] == [
        ("POST", "deployments", "mini-dev-canary v2 canary replicas=2"),
        ("POST", "services", "mini-dev-canary"),
        ("PATCH", route, "mini-dev=90 mini-dev-canary=10"),
        ("PATCH", route, "mini-dev=100"),  # every request back on stable, then ...
        ("DELETE", "deployments/mini-dev-canary", None),  # ... the canary goes
        ("DELETE", "services/mini-dev-canary", None),
    ]
    assert stable(emulator) == before  # not a write to it
    [record] = journal.read(project[0].reports / "rollbacks")
    assert (record["trigger"], record["target"], record["observed"]["error_rate"]) == \
        ("canary", "kubernetes", 0.045)
    assert record["threshold"]["max_error_rate"] == 0.01


def test_what_the_kubernetes_canary_cannot_do_is_refused_before_anything_is_sent(
        mini_project, emulator):
    cases = [
        ({"analysis": {"max_p95_ms": 200}},
         "serving.canary.metrics: deploy.canary.analysis sets ['max_p95_ms']"),
        ({"hpa": {"min_replicas": 2, "max_replicas": 4}},
         "serving.hpa: a canary split by replica ratio needs fixed replica counts"),
        ({"replicas": 1}, "serving.canary.replicas: a canary split by replica ratio needs at "
                          "least 2 pods"),
        ({"canary": {"metrics": "nowhere"}},
         "serving.canary.metrics: unknown canary metrics source 'nowhere'"),
        ({"steps": [{"weight": 10, "pause": "manual"}]},
         "deploy.canary.steps.0.pause: manual steps run on the local target only"),
    ]
    for settings, message in cases:
        settings = dict(settings)
        analysis = settings.pop("analysis", None)
        steps = settings.pop("steps", STEPS)
        project = configure(mini_project, emulator, steps, analysis, **settings)
        with pytest.raises(ConfigError) as raised:
            release(project, "2")
        assert message in str(raised.value)
        if "nowhere" not in message:  # `workbench validate` says so too, before any run
            assert [str(p) for p in kubernetes_problems(*project) if message in str(p)]
    assert emulator.handler.sent() == []


# --- shadow -------------------------------------------------------------------------------


def request(project: tuple[Project, Any], version: str) -> Any:
    from workbench.deploy.targets import DeployRequest

    return DeployRequest(project[0], project[1], "dev", "mini", version, TRACKING)


def test_shadow_needs_a_route_that_can_mirror(mini_project, emulator):
    for serving, key in (({}, "environments.dev.serving.route: a shadow on Kubernetes mirrors "
                              "requests with a Gateway API HTTPRoute's RequestMirror filter"),
                         ({"route": {**ROUTE, "request_mirror": False}},
                          "environments.dev.serving.route.request_mirror: false")):
        project = configure(mini_project, emulator, **serving)
        with pytest.raises(ConfigError) as raised:
            target.KubernetesTarget().shadow(request(project, "2"), 0.0)
        assert key in str(raised.value) and "configs/kubernetes.yaml" in str(raised.value)
    assert emulator.handler.sent() == []


def test_shadow_mirrors_through_the_route_for_its_window_then_is_removed(mini_project,
                                                                         emulator):
    project = configure(mini_project, emulator, route=ROUTE)
    for service in ("mini-dev", "mini-dev-shadow"):
        emulator.answer(f"/api/v1/namespaces/{NAMESPACE}/{PROXY.format(service)}")
    first_release(project, emulator)
    before = copy.deepcopy(stable(emulator))
    with running(DeploymentController(emulator)):
        result = target.KubernetesTarget().shadow(request(project, "2"), 0.0)

    route = "httproutes/mini-dev"
    shadow = "deployments/mini-dev-shadow"
    assert sequence(emulator) == [
        ("GET", "deployments/mini-dev", None),
        ("GET", shadow, None), ("POST", "deployments", "mini-dev-shadow v2 shadow replicas=2"),
        ("GET", "services/mini-dev-shadow", None), ("POST", "services", "mini-dev-shadow"),
        ("GET", f"{shadow}/status", None), ("GET", PROXY.format("mini-dev-shadow"), None),
        # every request still answered by stable; a copy of each to the shadow
        ("GET", route, None), ("PATCH", route, "mini-dev=100 mirror->mini-dev-shadow"),
        ("GET", shadow, None),
        ("GET", "pods?app.kubernetes.io/instance=mini-dev-shadow,app.kubernetes.io/name=mini",
         None),
        # the window is over: the mirror off, the shadow deleted
        ("GET", route, None), ("PATCH", route, "mini-dev=100"),
        ("DELETE", shadow, None), ("DELETE", "services/mini-dev-shadow", None),
    ]
    assert stable(emulator) == before
    assert set(emulator.objects("apps/v1/deployments")) == {(NAMESPACE, "mini-dev")}
    assert (result.serving_version, result.shadow_version) == ("1", "2")
    assert result.disagreement_rate is None  # the Gateway drops the shadow's answers
    assert result.comparison["mirrored_by"] == "HTTPRoute RequestMirror"
    assert result.comparison["shadow_pods"]["ready_replicas"] == 2
    [entry] = ledger_events(project[0], "shadow")
    assert (entry["target"], entry["shadow_version"], entry["breaches"]) == \
        ("kubernetes", "2", [])
