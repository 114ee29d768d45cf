"""The Kubernetes deploy target through the real ``kubernetes`` client, over HTTP, against an API
emulator on 127.0.0.1 (kmock). The test plays the Deployment controller through ``/status``;
every assertion is on requests the client really sent or objects the emulator really holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Workspace
from k8s_emulator import (
    NAMESPACE,
    TOKEN,
    DeploymentController,
    Emulator,
    controller_client,
    running,
    use_kubernetes,
    write_settings,
)

from workbench.config import load_config
from workbench.k8s import KubernetesError, target
from workbench.k8s.client import LAST_APPLIED, merge_patch
from workbench.k8s.manifests import ManifestError
from workbench.k8s.rollout import RolloutFailed, rollout_status
from workbench.project import Project

TRACKING = "http://mlflow.example.test:5000"
PING = f"/api/v1/namespaces/{NAMESPACE}/services/mini-dev:http/proxy/ping"
DEPLOYMENT = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/mini-dev"


@pytest.fixture
def emulator() -> Any:
    with Emulator() as emu:
        yield emu


@pytest.fixture
def project(mini_project: Workspace, emulator: Emulator) -> tuple[Project, Any]:
    use_kubernetes(mini_project, emulator)
    return Project(mini_project.root), load_config(mini_project.root / "configs")


def body(request: Any) -> Any:
    return json.loads(request.body)  # as sent: the emulator adds uid etc. to its own copy


def calls(emulator: Emulator) -> list[tuple[str, str]]:
    return [(str(r.method.value), r.url.path) for r in emulator.handler.sent()]


def deploy(project: tuple[Project, Any], version: str, **options: Any) -> target.Deployment:
    return target.deploy(project[0], project[1], "dev", "mini", version, TRACKING, **options)


def test_deploy_creates_waits_like_kubectl_and_checks_health(project, emulator):
    emulator.answer(PING)
    controller = DeploymentController(emulator)
    waits: list[str] = []
    with running(controller):
        first = deploy(project, "1", on_wait=waits.append)
    # read, then create: no server-side apply, no PUT
    sent = calls(emulator)
    assert sent[:3] == [("GET", DEPLOYMENT), ("GET", DEPLOYMENT),
                        ("POST", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments")]
    assert ("POST", f"/api/v1/namespaces/{NAMESPACE}/services") in sent
    assert sent[-1] == ("GET", PING)  # the health check went through the Service
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}"  # the kubeconfig's context
               for r in emulator.handler.sent())
    created = body(next(r for r in emulator.handler.sent() if r.method.value == "POST"))
    rendered = target.render(*project, "dev", "mini", "1", TRACKING)[0]
    assert json.loads(created["metadata"]["annotations"].pop(LAST_APPLIED)) == rendered
    assert created == rendered
    # waited as `kubectl rollout status` does, phase by phase, until the controller was done
    shown = [w for i, w in enumerate(waits) if "spec update" not in w and waits[i - 1:i] != [w]]
    assert shown == [
        "0 out of 2 new replicas have been updated", "1 old replicas are pending termination",
        "1 of 2 updated replicas are available"]
    assert "mini-dev" in controller.finished
    assert first.version == "1" and first.revision == 1 and first.previous_version is None
    assert first.url == f"{emulator.url}/api/v1/namespaces/{NAMESPACE}/services/mini-dev:http/proxy"
    assert "mini v1 on deployment ml-dev/mini-dev revision 1" in first.describe()
    assert set(emulator.objects("v1/services")) == {(NAMESPACE, "mini-dev")}

    emulator.handler._requests.clear()
    with running(DeploymentController(emulator)):
        second = deploy(project, "2")
    patches = [r for r in emulator.handler.sent() if r.method.value == "PATCH"]
    assert [r.url.path for r in patches] == [DEPLOYMENT,
                                             f"/api/v1/namespaces/{NAMESPACE}/services/mini-dev"]
    assert {r.headers["Content-Type"] for r in patches} == {"application/merge-patch+json"}
    assert not [r for r in emulator.handler.sent() if r.method.value in ("PUT", "POST")]
    template = body(patches[0])["spec"]["template"]["metadata"]
    assert template["labels"]["workbench.io/model-version"] == "2"
    assert template["annotations"]["workbench.io/model-uri"] == "models:/mini/2"
    assert (second.version, second.revision, second.previous_version) == ("2", 2, "1")
    assert len(emulator.objects("apps/v1/replicasets")) == 2
    assert target.current(*project, "dev").version == "2"


def test_progress_deadline_exceeded_fails_the_deploy(project, emulator):
    emulator.answer(PING)
    with running(DeploymentController(emulator, mode="stuck")), \
            pytest.raises(RolloutFailed, match="exceeded its progress deadline.*timed out"):
        deploy(project, "1")
    assert ("GET", PING) not in calls(emulator)  # no health check of a failed rollout


def test_rollout_that_is_never_observed_times_out(mini_project, project, emulator):
    write_settings(mini_project, emulator, rollout_timeout_s=0.3)
    with running(DeploymentController(emulator, mode="idle")), \
            pytest.raises(RolloutFailed, match="within 0.3 s: waiting for the deployment spec"):
        deploy(project, "1")


def test_health_check_through_the_service_must_answer(mini_project, project, emulator):
    write_settings(mini_project, emulator, health_timeout_s=0.2)
    with running(DeploymentController(emulator)), \
            pytest.raises(KubernetesError, match="did not answer /ping within 0.2 s: .*404"):
        deploy(project, "1")


def test_rollback_like_kubectl_rollout_undo(project, emulator):
    emulator.answer(PING)
    with running(DeploymentController(emulator)):
        for version in ("1", "2", "3"):
            deploy(project, version)
    # a ReplicaSet with the same labels that another Deployment owns must never be chosen
    from kubernetes import client

    stranger = client.AppsV1Api(controller_client(emulator.url))
    own = next(iter(emulator.objects("apps/v1/replicasets").values()))
    foreign = json.loads(json.dumps(own))
    foreign["metadata"] = {"name": "mini-dev-foreign", "labels": own["metadata"]["labels"],
                           "annotations": {"deployment.kubernetes.io/revision": "99"},
                           "ownerReferences": [{**own["metadata"]["ownerReferences"][0],
                                                "uid": "another-deployment"}]}
    foreign["spec"]["template"]["metadata"]["labels"]["workbench.io/model-version"] = "7"
    stranger.create_namespaced_replica_set(NAMESPACE, foreign)

    emulator.handler._requests.clear()
    with running(DeploymentController(emulator)):
        undone = target.rollback_to(*project, "dev", None)
    listed = next(r for r in emulator.handler.sent() if r.url.path.endswith("/replicasets"))
    assert listed.params["labelSelector"] == \
        "app.kubernetes.io/instance=mini-dev,app.kubernetes.io/name=mini"
    patch = next(r for r in emulator.handler.sent() if r.method.value == "PATCH")
    assert patch.headers["Content-Type"] == "application/json-patch+json"
    ops = body(patch)
    assert [(op["op"], op["path"]) for op in ops] == [("replace", "/spec/template"),
                                                      ("replace", "/metadata/annotations")]
    labels = ops[0]["value"]["metadata"]["labels"]
    assert labels["workbench.io/model-version"] == "2" and "pod-template-hash" not in labels
    assert ops[1]["value"]["workbench.io/model-version"] == "2"
    assert (undone.version, undone.previous_version, undone.revision) == ("2", "3", 4)
    assert target.current(*project, "dev").version == "2"

    with running(DeploymentController(emulator)):
        to_one = target.rollback_to(*project, "dev", "1")  # like --to-revision
    assert (to_one.version, to_one.previous_version, to_one.revision) == ("1", "2", 5)
    assert [(n, v) for n, v, _ in target.history(*project, "dev")] == [(3, "3"), (4, "2"),
                                                                       (5, "1")]
    same = target.rollback_to(*project, "dev", "1")
    assert not same.changed and "already serving" in same.describe()
    with pytest.raises(KubernetesError, match=r"serves model version 7; revisions kept: 3 \(v3\)"):
        target.rollback_to(*project, "dev", "7")  # only the foreign ReplicaSet has it
    with pytest.raises(ManifestError, match="never an alias"):
        target.rollback_to(*project, "dev", "champion")


def test_dry_run_sends_dry_run_all_and_changes_nothing(project, emulator):
    result = deploy(project, "4", dry_run=True)
    writes = [r for r in emulator.handler.sent() if r.method.value in ("POST", "PATCH")]
    assert len(writes) == 2 and all(r.params["dryRun"] == "All" for r in writes)
    assert emulator.objects("apps/v1/deployments") == {}
    assert not [r for r in emulator.handler.sent() if r.url.path.endswith("/status")]
    assert result.dry_run and result.version == "4" and "dry run" in result.describe()
    assert target.current(*project, "dev") is None


def test_aliases_and_local_model_stores_are_refused(project, emulator):
    with pytest.raises(ManifestError, match="'prod' is not a resolved version"):
        deploy(project, "prod")
    with pytest.raises(KubernetesError, match="only this machine reaches"):
        target.deploy(*project, "dev", "mini", "1", "sqlite:////tmp/mlflow.db")
    assert emulator.handler.sent() == []


def test_rollout_status_decides_as_kubectl():
    def deployment(generation: int, wanted: int | None, **status: Any) -> dict[str, Any]:
        spec = {} if wanted is None else {"replicas": wanted}
        return {"metadata": {"name": "d", "generation": generation}, "spec": spec,
                "status": status}

    assert rollout_status(deployment(2, 1, observedGeneration=1))[1] is False
    assert rollout_status(deployment(1, None, observedGeneration=1, replicas=1,
                                     updatedReplicas=1, availableReplicas=1))[1]
    with pytest.raises(RolloutFailed):
        rollout_status(deployment(1, 1, observedGeneration=1, conditions=[
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]))


def test_merge_patch_removes_what_an_earlier_apply_set():
    previous = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 3, "x": 1}}
    desired = {"metadata": {"labels": {"a": "1"}}, "spec": {"y": [1]}}
    assert merge_patch(previous, desired) == {
        "metadata": {"labels": {"a": "1", "b": None}}, "spec": {"y": [1], "x": None}}


def _live_cluster() -> bool:
    if not os.environ.get("KUBECONFIG"):
        return False
    try:
        from kubernetes import client, config

        api = config.new_client_from_config(persist_config=False)
        client.VersionApi(api).get_code(_request_timeout=3)
        return True
    except Exception:  # noqa: BLE001 - unreachable or unusable: skip
        return False


@pytest.mark.live_k8s
@pytest.mark.skipif(not _live_cluster(), reason="KUBECONFIG does not reach a live cluster")
def test_live_cluster_accepts_the_manifests_in_a_server_side_dry_run(mini_project: Workspace):
    """Against a real API server: every manifest is admitted (dryRun=All, nothing changes)."""
    ws = mini_project
    ws.write_yaml("pipeline.yaml", {"name": "mini", "stages": [
        {"name": "noop", "notebook": "notebooks/noop.ipynb"}]})
    ws.write_yaml("kubernetes.yaml", {"environments": {"dev": {
        "kubeconfig": os.environ["KUBECONFIG"].split(os.pathsep)[0],
        "namespace": os.environ.get("WORKBENCH_K8S_NAMESPACE", "default"),
        "serving": {"image": "registry.example.test/serve:1"}}}})
    project = Project(Path(ws.root))
    result = target.deploy(project, load_config(ws.root / "configs"), "dev", "mini", "1",
                           TRACKING, dry_run=True)
    assert result.dry_run and result.version == "1"
