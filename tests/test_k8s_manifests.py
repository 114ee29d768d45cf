"""Rendered Kubernetes manifests: strict schema validation for the configured version, the
project's own checks for what a schema cannot see (each with a broken manifest as a negative
control), the configuration file's problems, and ``workbench k8s render``."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import REPO, Workspace, notebook

from workbench.config import ConfigError
from workbench.k8s import checks
from workbench.k8s.config import Serving, parse_kubernetes
from workbench.k8s.jobs import ENTRY, job_name, stage_job
from workbench.k8s.manifests import (
    RESTRICTED_POD,
    ManifestError,
    deployment_name,
    serving_manifests,
)
from workbench.k8s.names import dns_label, is_dns_label, parse_quantity
from workbench.k8s.stage_job import decode_parameters
from workbench.pipeline.validate import load_and_validate
from workbench.project import Project

EXAMPLE = REPO / "configs" / "kubernetes.example.yaml"
TRACKING = "https://mlflow.example.test"
MODEL = "breast-cancer-classifier"


def example_cluster(env: str) -> Any:
    return parse_kubernetes(EXAMPLE.read_text()).cluster(env)


def rendered(env: str = "prod", version: str = "12") -> list[dict[str, Any]]:
    return serving_manifests(example_cluster(env), env, MODEL, version, TRACKING, "release")


@pytest.mark.parametrize("env", ["dev", "qa", "prod"])
def test_every_rendered_manifest_passes_strict_validation(env: str):
    manifests = rendered(env)
    version = example_cluster(env).kubernetes_version
    assert version == "1.31"
    assert checks.schema_problems(manifests, version) == []
    assert checks.project_problems(manifests) == []
    kinds = [m["kind"] for m in manifests]
    expected = ["Deployment", "Service"] + (["PodDisruptionBudget", "HorizontalPodAutoscaler"]
                                            if env == "prod" else [])
    assert kinds == expected


def test_the_deployment_keeps_routing_and_stamps_the_resolved_version():
    deployment, service, pdb, hpa = rendered("prod", "12")
    spec = deployment["spec"]
    selector = {"app.kubernetes.io/name": MODEL, "app.kubernetes.io/instance": f"{MODEL}-prod"}
    assert spec["selector"]["matchLabels"] == selector == service["spec"]["selector"] \
        == pdb["spec"]["selector"]["matchLabels"]
    template = spec["template"]["metadata"]
    for meta in (deployment["metadata"], template):
        assert meta["labels"]["app.kubernetes.io/version"] == "12"
        assert meta["labels"]["workbench.io/model-version"] == "12"
        assert meta["annotations"]["workbench.io/model-uri"] == f"models:/{MODEL}/12"
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert spec["revisionHistoryLimit"] == 10 and spec["progressDeadlineSeconds"] == 600
    assert "replicas" not in spec  # the autoscaler owns it in prod
    assert (hpa["apiVersion"], hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == \
        ("autoscaling/v2", 3, 10)
    assert pdb["spec"] == {"selector": {"matchLabels": selector}, "minAvailable": 2}
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "workbench.deploy.model_server"]
    assert container["args"][:6] == ["--model-uri", f"models:/{MODEL}/12", "--name", MODEL,
                                     "--version", "12"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ping", "port": "http"}
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                      "limits": {"memory": "2Gi"}}
    assert pod["securityContext"]["runAsNonRoot"] and \
        pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    dev = rendered("dev")[0]["spec"]
    assert dev["replicas"] == 1


@pytest.mark.parametrize("alias", ["champion", "@prod", "latest", "0", ""])
def test_an_alias_is_never_stamped(alias: str):
    with pytest.raises(ManifestError, match="never an alias"):
        rendered("dev", alias)


def _container(m: list[dict[str, Any]]) -> dict[str, Any]:
    return m[0]["spec"]["template"]["spec"]["containers"][0]


def _set(*path: Any) -> Callable[[list[dict[str, Any]]], None]:
    """Set the value at ``path`` (its last item) in the rendered manifests."""
    *keys, last, value = path

    def change(manifests: list[dict[str, Any]]) -> None:
        node: Any = manifests
        for key in keys:
            node = node[key]
        node[last] = value

    return change


# what the strict schema catches (an unknown field passes a non-strict schema)
SCHEMA_BREAKS = [
    (lambda m: _container(m).update(bogus=1), "'bogus' was unexpected"),
    (_set(0, "spec", "revisionHistoryLimit", "ten"), "'ten' is not of type 'integer'"),
    (lambda m: m[0]["spec"].pop("selector"), "'selector' is a required property"),
]

# what only the project's checks catch: the schema accepts every one of these
PROJECT_BREAKS = [
    (_set(0, "metadata", "name", "Model_Server"), "is not a DNS-1123 label"),
    (_set(1, "metadata", "name", "9-service"), "is not a DNS-1035 label"),
    (_set(0, "metadata", "namespace", "ML"), "metadata.namespace 'ML' is not a DNS-1123 label"),
    (_set(0, "spec", "template", "metadata", "labels", "app.kubernetes.io/instance", "other"),
     "does not match the pod template's labels"),
    (_set(0, "spec", "strategy", "rollingUpdate", "maxSurge", "0%"),
     "maxSurge and maxUnavailable are both 0"),
    (lambda m: _container(m)["resources"]["requests"].update(cpu="lots"),
     "'lots' is not a Kubernetes quantity"),
    (lambda m: _container(m)["resources"]["requests"].update(memory="4Gi"),
     "resources.requests.memory is more than its limit"),
    (lambda m: _container(m)["readinessProbe"]["httpGet"].update(port="admin"),
     "readinessProbe uses port 'admin'"),
    (lambda m: m[1]["spec"]["ports"][0].update(targetPort="metrics"), "targets 'metrics'"),
    (_set(1, "spec", "selector", "app.kubernetes.io/name", "other-model"),
     "selects no pod template"),
    (_set(0, "metadata", "labels", "workbench.io/environment", "x" * 64),
     "not a valid label value"),
    (_set(3, "spec", "scaleTargetRef", "name", "elsewhere"), "scaleTargetRef names 'elsewhere'"),
    (_set(0, "spec", "replicas", 3), "every apply would undo the autoscaler"),
]


@pytest.mark.parametrize(("breaks", "expected"), SCHEMA_BREAKS)
def test_strict_schema_catches(breaks: Callable[..., Any], expected: str):
    manifests = copy.deepcopy(rendered())
    breaks(manifests)
    problems = checks.schema_problems(manifests, "1.31")
    assert len(problems) == 1 and expected in problems[0], problems
    assert "(schema of Kubernetes 1.31, strict)" in problems[0]
    with pytest.raises(checks.ManifestInvalid, match="invalid manifests"):
        checks.validate(manifests, "1.31")


def test_only_strict_mode_refuses_an_unknown_field():
    manifest = copy.deepcopy(rendered()[0])
    _container([manifest]).update(imagePullPolicyy="Always")  # a typo
    kubernetes_validate.validate(manifest, "1.31", strict=False)  # passes unnoticed
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, "1.31", strict=True)


@pytest.mark.parametrize(("breaks", "expected"), PROJECT_BREAKS)
def test_project_checks_catch_what_the_schema_misses(breaks: Callable[..., Any], expected: str):
    manifests = copy.deepcopy(rendered())
    breaks(manifests)
    assert checks.schema_problems(manifests, "1.31") == []
    problems = checks.project_problems(manifests)
    assert any(expected in p for p in problems), problems


def test_stage_job_reads_secrets_from_a_secret_and_passes_typed_parameters():
    cluster = example_cluster("dev")
    parameters = {"code": "007", "n": 3, "ratio": 1e-05, "flags": [True, None], "cfg": {"a": 1}}
    name = job_name("train_model", "20261127T093000Z-3fa2c1")
    job = stage_job(cluster, name=name, run_id="20261127T093000Z-3fa2c1", stage="train_model",
                    environment="dev", notebook="notebooks/train.ipynb",
                    input_url="s3://b/run/train.input.ipynb", output_url="s3://b/run/train.ipynb",
                    parameters=parameters, env={"MLFLOW_TRACKING_URI": TRACKING},
                    secrets=["API_TOKEN"], timeout=900.5)
    checks.validate([job], cluster.kubernetes_version)
    assert name == "train-model-20261127t093000z-3fa2c1" and is_dns_label(name)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ENTRY == ["python", "-m", "workbench.k8s.stage_job"]
    token = next(e for e in container["env"] if e["name"] == "API_TOKEN")
    assert token == {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "workbench-pipeline-secrets", "key": "API_TOKEN"}}}
    args = container["args"]
    assert decode_parameters(args[args.index("--parameters") + 1]) == parameters
    assert job["spec"]["activeDeadlineSeconds"] == 901 and job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert len(job_name("s" * 60, "20261127T093000Z-3fa2c1", attempt=3)) <= 63


def test_names_and_quantities():
    long = "A Very_Long model name " * 5
    name = deployment_name(example_cluster("dev"), "prod", long)
    assert is_dns_label(name) and name[0].isalpha() and len(name) == 63
    assert dns_label("x" * 70) != dns_label("x" * 71)  # cut names stay apart
    assert deployment_name(example_cluster("dev"), "dev", "2024-model") == "m-2024-model-dev"
    assert parse_quantity("250m") == Decimal("0.25")
    assert parse_quantity("1Gi") == 2**30 and parse_quantity("1e3") == 1000
    assert parse_quantity("1E") == 10**18
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity("1 Gi")


@pytest.mark.parametrize(("text", "expected"), [
    ("environments: {dev: {namespace: ML}}",
     "configs/kubernetes.yaml: environments.dev.namespace: 'ML' is not a DNS-1123 label"),
    ("defaults: {serving: {image: i, replicas: 0}}\nenvironments: {dev: {namespace: a}}",
     "configs/kubernetes.yaml: defaults.serving.replicas: Input should be greater than or "
     "equal to 1"),
    ("environments: {dev: {namespace: a, kubernetes_version: '1.12'}}",
     "environments.dev.kubernetes_version: kubernetes_version '1.12' is not one "
     "kubernetes-validate has schemas for (1.25 to 1.37)"),
    ("environments: {dev: {namespace: a, serving: {image: i, pdb: {}}}}",
     "environments.dev.serving.pdb: set exactly one of min_available and max_unavailable"),
    ("environments: {dev: {namespace: a, serving: {image: i, resources: {requests: {cpu: 2}, "
     "limits: {cpu: 1}}}}}", "cpu: request 2 is more than the limit 1"),
    ("environments: {dev: {namespace: a, executor: {image: i, store: relative/path}}}",
     "environments.dev.executor.store: String should match pattern"),
    ("environments: {dev: {namespace: a, replica: 2}}",
     "environments.dev.replica: unknown key; expected one of ['kubeconfig', 'context'"),
    ("clusters: {}", "configs/kubernetes.yaml: clusters: unknown key"),
])
def test_configuration_problems_name_the_file_and_key(text: str, expected: str):
    with pytest.raises(ConfigError) as caught:
        parse_kubernetes(text)
    assert any(expected in str(p) for p in caught.value.problems), caught.value.problems


def test_the_example_configuration_is_valid():
    settings = parse_kubernetes(EXAMPLE.read_text())
    assert set(settings.environments) == {"dev", "qa", "prod"}
    assert settings.environments["qa"].serving.replicas == 2  # from defaults
    assert settings.environments["prod"].serving.hpa.max_replicas == 10


def test_dockerfiles_match_the_manifests():
    serve = (REPO / "configs" / "docker" / "serve.Dockerfile").read_text()
    runner = (REPO / "configs" / "docker" / "runner.Dockerfile").read_text()
    user = f"USER {RESTRICTED_POD['runAsUser']}"
    assert user in serve and user in runner  # runAsNonRoot needs a numeric non-root user
    assert f"EXPOSE {Serving(image='x').container_port}" in serve
    assert "workbench.k8s.stage_job" in runner and "WORKDIR /workspace" in runner


def _kubernetes_project(ws: Workspace, **serving: Any) -> None:
    ws.write_yaml("pipeline.yaml", {"name": "mini", "stages": [
        {"name": "noop", "notebook": "notebooks/noop.ipynb"}]})
    ws.write_notebook("noop", notebook("print('ok')"))
    environments = ws.read_yaml("environments.yaml")
    environments["environments"]["dev"]["deploy"]["target"] = "kubernetes"
    ws.write_yaml("environments.yaml", environments)
    if serving:
        ws.write_yaml("kubernetes.yaml", {"environments": {"dev": {
            "namespace": "ml-dev", "serving": serving}}})


def test_validate_requires_kubernetes_settings_for_a_kubernetes_target(mini_project):
    ws, project = mini_project, Project(mini_project.root)
    _kubernetes_project(ws)
    with pytest.raises(ConfigError) as caught:
        load_and_validate(project)
    assert [str(p) for p in caught.value.problems] == [
        "configs/kubernetes.yaml: file is missing; environment(s) dev deploy to kubernetes "
        "(configs/environments.yaml); see configs/kubernetes.example.yaml"]
    ws.write_yaml("kubernetes.yaml", {"environments": {"dev": {"namespace": "ml-dev"},
                                                       "staging": {"namespace": "ml-stg"}}})
    with pytest.raises(ConfigError) as caught:
        load_and_validate(project)
    assert sorted(str(p) for p in caught.value.problems) == [
        "configs/kubernetes.yaml: environments.dev.serving: missing: configs/environments.yaml "
        "deploys it to kubernetes (serving.image is required)",
        "configs/kubernetes.yaml: environments.staging: unknown environment; "
        "configs/environments.yaml defines ['dev']"]
    _kubernetes_project(ws, image="registry.example.test/serve:1")
    assert load_and_validate(project).pipeline.name == "mini"


def test_render_command_writes_validated_manifests(mini_project, tmp_path):
    ws = mini_project
    _kubernetes_project(ws, image="registry.example.test/serve:1", tracking_uri=TRACKING)
    out = tmp_path / "review"
    done = ws.cli("k8s", "render", "--env", "dev", "--model-version", "3", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["01-deployment-mini-dev.yaml",
                                                     "02-service-mini-dev.yaml"]
    assert "valid for Kubernetes 1.31 (strict schema)" in done.stdout
    deployment = yaml.safe_load((out / "01-deployment-mini-dev.yaml").read_text())
    assert deployment["metadata"]["labels"]["workbench.io/model-version"] == "3"
    assert checks.project_problems([deployment, yaml.safe_load(
        (out / "02-service-mini-dev.yaml").read_text())]) == []
    refused = ws.cli("k8s", "render", "--env", "dev", "--model-version", "champion")
    assert refused.returncode == 1 and "never an alias" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_parameters_survive_the_trip_as_base64_json():
    values = {"s": "007", "f": 1e-05, "b": False, "none": None}
    text = base64.b64encode(json.dumps(values).encode()).decode()
    assert decode_parameters(text) == values
    with pytest.raises(ValueError, match="JSON object"):
        decode_parameters(base64.b64encode(b"[1]").decode())
