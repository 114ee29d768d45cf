"""A Kubernetes API emulator on 127.0.0.1 (kmock) for the real ``kubernetes`` client, and the
controllers the tests play: the Deployment controller (ReplicaSets, revisions, rollout status
through ``/status``) and the Job controller (runs the Job's container command as the kubelet
would, then reports through ``/status``).

kmock's emulator stores objects and merges patches. The small additions here are what a real
API server does and the code under test relies on: a uid and ``metadata.generation`` on
create, a new generation when a write changes ``spec``, ``dryRun=All`` (answer, store
nothing), and ``labelSelector`` on lists.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import yaml
from kmock._internal.dicts import patch_dict
from kmock._internal.enums import action

TOKEN = "test-token-3d9c"  # noqa: S105 - the bearer token the kubeconfig hands the client
NAMESPACE = "ml-dev"
CONTROLLER_AGENT = "test-controller"
RESOURCES = {"apps/v1/deployments": "Deployment", "apps/v1/replicasets": "ReplicaSet",
             "v1/services": "Service", "v1/secrets": "Secret", "v1/pods": "Pod",
             "batch/v1/jobs": "Job", "policy/v1/poddisruptionbudgets": "PodDisruptionBudget",
             "autoscaling/v2/horizontalpodautoscalers": "HorizontalPodAutoscaler"}


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator with the API server behaviour listed in the module docstring."""

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.action == action.CREATE and \
                isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("namespace", request.namespace)
            meta.update(uid=str(uuid.uuid4()), generation=1, resourceVersion="1",
                        creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            if request.params.get("dryRun") == "All":
                return aiohttp.web.json_response(request.data, status=201)
        if request.resource is not None and request.action == action.UPDATE:
            key = (request.resource, request.namespace, request.name)
            if key in self.objects and not self.objects[key].deleted:
                current = self.objects[key].raw
                patched = patch_dict(copy.deepcopy(current), request.data)
                if request.params.get("dryRun") == "All":
                    return aiohttp.web.json_response(patched)
                if request.subresource is None and patched.get("spec") != current.get("spec"):
                    generation = current["metadata"].get("generation", 1) + 1
                    if isinstance(request.data, list):
                        request.data.append({"op": "add", "path": "/metadata/generation",
                                             "value": generation})
                    else:
                        request.data.setdefault("metadata", {})["generation"] = generation
        return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> Any:
        listed = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            listed["items"] = [item for item in listed["items"]
                               if _matches(item["metadata"].get("labels") or {}, selector)]
        return listed

    def sent(self, user_agent: str = "workbench/kubernetes") -> list[kmock.Request]:
        """The requests the code under test sent (not the controllers'), in order."""
        return [r for r in list(self._requests) if r.headers.get("User-Agent") == user_agent]


class Emulator:
    """The API server in a thread with its own event loop, on 127.0.0.1."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="kmock", daemon=True)
        self.handler: ApiServer
        self.url = ""

    def __enter__(self) -> Emulator:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the API emulator did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with ApiServer() as handler, kmock.Server(handler) as server:
            for resource, kind in RESOURCES.items():
                handler.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True)
            self.handler, self.url = handler, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def answer(self, path: str, body: bytes = b"\n") -> None:
        """A fixed 200 answer for GET ``path`` (e.g. the model server's /ping via the proxy)."""
        self._loop.call_soon_threadsafe(lambda: self.handler[f"get {path}"] << body)
        time.sleep(0.05)

    def objects(self, resource: str) -> dict[tuple[str, str], dict[str, Any]]:
        """Stored objects of ``resource`` (``apps/v1/deployments``) by (namespace, name)."""
        wanted = kmock.resource(resource)
        return {(ns, name): obj.raw for (res, ns, name), obj in list(self.handler.objects.items())
                if res == wanted and not obj.deleted}

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig whose current context is a dead end; ``emulator`` reaches this server."""
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "elsewhere",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}},
                         {"name": "elsewhere", "cluster": {"server": "http://127.0.0.1:9"}}],
            "users": [{"name": "tester", "user": {"token": TOKEN}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator",
                                                           "user": "tester"}},
                         {"name": "elsewhere", "context": {"cluster": "elsewhere",
                                                            "user": "tester"}}],
        }))
        return path


def controller_client(url: str) -> Any:
    from kubernetes import client

    api = client.ApiClient(client.Configuration(host=url))
    api.user_agent = CONTROLLER_AGENT
    return api


def _merge(api: Any, method: Callable[..., Any], *args: Any) -> Any:
    return method(*args, _content_type="application/merge-patch+json")


def _rest(api: Any, obj: Any) -> dict[str, Any]:
    return api.sanitize_for_serialization(obj)


class Controller(threading.Thread):
    """A loop that reconciles until stopped; subclasses say what one pass does."""

    interval = 0.02

    def __init__(self, url: str, namespace: str = NAMESPACE):
        super().__init__(daemon=True, name=type(self).__name__)
        self.api = controller_client(url)
        self.namespace = namespace
        self.stopped = threading.Event()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.reconcile()
            except Exception as exc:  # noqa: BLE001 - reported by the test after stop()
                self.errors.append(exc)
                return
            self.stopped.wait(self.interval)

    def reconcile(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)
        self.api.close()
        if self.errors:
            raise self.errors[0]


class DeploymentController(Controller):
    """Plays the Deployment controller: a ReplicaSet per pod template (reused on rollback, its
    revision bumped), the Deployment's revision annotation, and a rollout in phases through
    ``/status`` — one phase each time the code under test has read the status again.

    ``mode``: ``healthy``; ``stuck`` (the rollout reports ProgressDeadlineExceeded); ``idle``
    (never observes a new generation).
    """

    def __init__(self, emulator: Emulator, mode: str = "healthy"):
        super().__init__(emulator.url)
        self.emulator, self.mode = emulator, mode
        self.phases: dict[str, list[dict[str, Any]]] = {}
        self.reads_at_phase: dict[str, int] = {}
        self.finished: dict[str, float] = {}

    def _status_reads(self, name: str) -> int:
        return sum(1 for r in self.emulator.handler.sent()
                   if r.method == "GET" and r.url.path.endswith(f"/deployments/{name}/status"))

    def reconcile(self) -> None:
        from kubernetes import client

        apps = client.AppsV1Api(self.api)
        for deployment in _rest(self.api, apps.list_namespaced_deployment(self.namespace)
                                )["items"]:
            name = deployment["metadata"]["name"]
            generation = deployment["metadata"]["generation"]
            observed = (deployment.get("status") or {}).get("observedGeneration", 0)
            if self.mode == "idle":
                continue
            if generation != observed:
                self._observe(apps, deployment)
            elif self.phases.get(name) and self._status_reads(name) > self.reads_at_phase[name]:
                self._advance(apps, name)

    def _observe(self, apps: Any, deployment: dict[str, Any]) -> None:
        meta = deployment["metadata"]
        name, generation = meta["name"], meta["generation"]
        revision = self._replica_set_for(apps, deployment)
        _merge(self.api, apps.patch_namespaced_deployment, name, self.namespace,
               {"metadata": {"annotations": {"deployment.kubernetes.io/revision":
                                             str(revision)}}})
        wanted = deployment["spec"].get("replicas", 1)
        base = {"observedGeneration": generation}
        if self.mode == "stuck":
            self.phases[name] = [{**base, "replicas": wanted + 1, "updatedReplicas": 1,
                                  "availableReplicas": wanted, "conditions": [{
                                      "type": "Progressing", "status": "False",
                                      "reason": "ProgressDeadlineExceeded",
                                      "message": f'ReplicaSet "{name}" has timed out '
                                                 f'progressing.'}]}]
        else:
            progressing = {"type": "Progressing", "status": "True",
                           "reason": "ReplicaSetUpdated"}
            self.phases[name] = [
                {**base, "replicas": wanted, "updatedReplicas": 0, "availableReplicas": wanted,
                 "conditions": [progressing]},
                {**base, "replicas": wanted + 1, "updatedReplicas": wanted,
                 "availableReplicas": wanted},
                {**base, "replicas": wanted, "updatedReplicas": wanted,
                 "availableReplicas": wanted - 1},
                {**base, "replicas": wanted, "updatedReplicas": wanted,
                 "availableReplicas": wanted, "readyReplicas": wanted,
                 "conditions": [{**progressing, "reason": "NewReplicaSetAvailable"},
                                {"type": "Available", "status": "True",
                                 "reason": "MinimumReplicasAvailable"}]},
            ]
        self._advance(apps, name)

    def _advance(self, apps: Any, name: str) -> None:
        status = self.phases[name].pop(0)
        _merge(self.api, apps.patch_namespaced_deployment_status, name, self.namespace,
               {"status": status})
        self.reads_at_phase[name] = self._status_reads(name)
        if not self.phases[name]:
            self.finished[name] = time.monotonic()

    def _replica_set_for(self, apps: Any, deployment: dict[str, Any]) -> int:
        meta, spec = deployment["metadata"], deployment["spec"]
        template = spec["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        selector = ",".join(f"{k}={v}" for k, v in spec["selector"]["matchLabels"].items())
        listed = _rest(self.api, apps.list_namespaced_replica_set(self.namespace,
                                                                  label_selector=selector))
        owned = [rs for rs in listed["items"]
                 if any(ref.get("uid") == meta["uid"]
                        for ref in rs["metadata"].get("ownerReferences") or [])]
        revisions = [int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"])
                     for rs in owned]
        newest = max(revisions, default=0)
        for rs in owned:
            if rs["metadata"]["labels"].get("pod-template-hash") == digest:
                current = int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"])
                if current != newest:  # a rollback: the old ReplicaSet becomes the newest
                    _merge(self.api, apps.patch_namespaced_replica_set,
                           rs["metadata"]["name"], self.namespace,
                           {"metadata": {"annotations": {
                               "deployment.kubernetes.io/revision": str(newest + 1)}}})
                    return newest + 1
                return current
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                       if not k.startswith("deployment.kubernetes.io/")
                       and k != "workbench.io/last-applied"}
        labelled = copy.deepcopy(template)
        labelled["metadata"]["labels"]["pod-template-hash"] = digest
        apps.create_namespaced_replica_set(self.namespace, {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": f"{meta['name']}-{digest}", "namespace": self.namespace,
                         "labels": labelled["metadata"]["labels"],
                         "annotations": {**annotations,
                                         "deployment.kubernetes.io/revision": str(newest + 1)},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": meta["name"], "uid": meta["uid"],
                                              "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": {"replicas": spec.get("replicas", 1),
                     "selector": {"matchLabels": {**spec["selector"]["matchLabels"],
                                                  "pod-template-hash": digest}},
                     "template": labelled}})
        return newest + 1


class JobController(Controller):
    """Plays the Job controller and the kubelet: for each new Job, runs its container's
    command, args, working folder and environment (Secret references resolved through the
    API) as a local process, then reports the outcome through ``/status``.

    ``mounts`` maps container paths (the image's working folder, the ``/tmp`` emptyDir) to
    local folders. ``mode``: ``run``; ``fail`` (the pod never runs: BackoffLimitExceeded);
    ``deadline`` (activeDeadlineSeconds passed).
    """

    interval = 0.05

    def __init__(self, emulator: Emulator, mounts: dict[str, Path], mode: str = "run"):
        super().__init__(emulator.url)
        self.mounts, self.mode = mounts, mode
        self.handled: set[str] = set()
        self.runs: list[dict[str, Any]] = []

    def reconcile(self) -> None:
        from kubernetes import client

        batch = client.BatchV1Api(self.api)
        for job in _rest(self.api, batch.list_namespaced_job(self.namespace))["items"]:
            name = job["metadata"]["name"]
            if name in self.handled:
                continue
            self.handled.add(name)
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            _merge(self.api, batch.patch_namespaced_job_status, name, self.namespace,
                   {"status": {"active": 1, "startTime": started}})
            condition = self._execute(job)
            _merge(self.api, batch.patch_namespaced_job_status, name, self.namespace,
                   {"status": {"active": 0, **condition}})

    def _map(self, value: str) -> str:
        for inside, outside in self.mounts.items():
            if value == inside or value.startswith(inside + "/"):
                return str(outside) + value[len(inside):]
        return value

    def _env(self, container: dict[str, Any]) -> dict[str, str]:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        for entry in container.get("env", []):
            if "valueFrom" in entry:
                ref = entry["valueFrom"]["secretKeyRef"]
                secret = _rest(self.api, core.read_namespaced_secret(ref["name"],
                                                                     self.namespace))
                env[entry["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            else:
                env[entry["name"]] = self._map(entry["value"])
        return env

    def _execute(self, job: dict[str, Any]) -> dict[str, Any]:
        failed = {"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                                               "reason": "BackoffLimitExceeded",
                                               "message": "Job has reached the specified "
                                                          "backoff limit"}]}
        if self.mode == "fail":
            return failed
        if self.mode == "deadline":
            return {"failed": 1, "conditions": [{
                "type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline"}]}
        container = job["spec"]["template"]["spec"]["containers"][0]
        command = [sys.executable if part == "python" else part
                   for part in container["command"]] + container.get("args", [])
        for mount in self.mounts.values():
            mount.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(command, cwd=self._map(container["workingDir"]),
                              env=self._env(container), capture_output=True, text=True,
                              timeout=300, check=False)
        self.runs.append({"job": job["metadata"]["name"], "command": command,
                          "returncode": done.returncode, "stderr": done.stderr})
        if done.returncode != 0:
            return failed
        return {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}


@contextmanager
def running(*controllers: Controller) -> Iterator[None]:
    for controller in controllers:
        controller.start()
    try:
        yield
    finally:
        for controller in controllers:
            controller.stop()


def use_kubernetes(ws: Any, emulator: Emulator, **serving: Any) -> None:
    """Make a mini project's dev environment deploy to the emulator (``kubernetes.yaml``, a
    kubeconfig for it, ``target: kubernetes``), with ``serving`` settings added."""
    ws.write_yaml("pipeline.yaml", {"name": "mini", "stages": [
        {"name": "noop", "notebook": "notebooks/noop.ipynb"}]})
    environments = ws.read_yaml("environments.yaml")
    environments["environments"]["dev"]["deploy"]["target"] = "kubernetes"
    ws.write_yaml("environments.yaml", environments)
    write_settings(ws, emulator, **serving)


def write_settings(ws: Any, emulator: Emulator, **serving: Any) -> None:
    """``configs/kubernetes.yaml`` for dev on the emulator, fast polling and timeouts."""
    kubeconfig = emulator.kubeconfig(ws.root / "kubeconfig.yaml")
    ws.write_yaml("kubernetes.yaml", {
        "defaults": {"kubeconfig": str(kubeconfig), "context": "emulator",
                     "poll_interval_s": 0.02},
        "environments": {"dev": {"namespace": NAMESPACE, "serving": {
            "image": "registry.example.test/serve:1", "rollout_timeout_s": 20,
            "health_timeout_s": 5, **serving}}},
    })
