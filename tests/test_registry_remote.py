"""The registry as teams run it: an ``mlflow server`` with its backend store in PostgreSQL and
its artifacts in S3 (tests/mlflow_remote.py), against the embedded store (SQLite and a local
artifact folder) as the control.

Each behaviour runs on both stores with the same assertions: versions and their tags, aliases
moved and read back, the release bundle's artifact digest (computed from the files as the
registry hands them out, equal to the digest of the files as stored: the local folder, or the
S3 objects read straight from the bucket, and to the digest of the files that were logged), and
concurrent registrations of one model (tests/tools/register_versions.py in several processes,
then many writers at one instant). Last, a gated release of a small project whose
``mlflow.tracking_uri`` names the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from conftest import REPO, Workspace, clean_environment
from mlflow_remote import RemoteMlflow, mlflow_remote  # noqa: F401 - fixture
from pg_server import pg_server  # noqa: F401 - fixture
from s3_server import s3_server  # noqa: F401 - fixture

from workbench.config import load_config
from workbench.governance.bundle import (
    REWRITTEN_ON_LOAD,
    listing_digest,
    model_artifact_digest,
    tree_digest,
    tree_files,
)
from workbench.project import Project
from workbench.registry import store as mlflow_store
from workbench.registry.aliases import move_alias, set_alias
from workbench.registry.client import version_holding
from workbench.registry.models import Champion, champion, register, version_by_alias

pytestmark = pytest.mark.slow  # a PostgreSQL cluster, an S3 server, mlflow server, subprocesses


@dataclass
class Registry:
    """One store under test: its project, resolved store and a client."""

    kind: str  # "embedded" or "remote"
    ws: Workspace
    store: mlflow_store.Store
    experiment_id: str
    model: str
    server: RemoteMlflow | None

    @property
    def uri(self) -> str:
        return self.store.tracking_uri

    @property
    def client(self) -> Any:
        from workbench.registry.client import client_for

        return client_for(self.uri)

    def log_files(self, folder: Path | None = None) -> str:
        """A run holding ``folder`` (else a one-line MLmodel) as its ``model`` artifacts; the
        model URI to register."""
        client = self.client
        run = client.create_run(self.experiment_id)
        if folder is None:
            client.log_text(run.info.run_id, "flavors: {}\n", "model/MLmodel")
        else:
            client.log_artifacts(run.info.run_id, str(folder), "model")
        client.set_terminated(run.info.run_id)
        return f"runs:/{run.info.run_id}/model"

    def stored_files(self, version: str) -> list[tuple[str, str]]:
        """(path, sha256) of a registered version's files where the store keeps them: the
        embedded store's folder, or the objects in the server's bucket read with boto3 (the
        mlflow-artifacts: location is a key prefix of ``--artifacts-destination``)."""
        import hashlib

        location = self.client.get_model_version_download_uri(self.model, version)
        parsed = urlparse(location)
        if self.server is None:
            assert parsed.scheme in ("", "file"), location
            return tree_files(Path(unquote(parsed.path)))
        assert parsed.scheme == "mlflow-artifacts", location
        prefix = parsed.path.strip("/") + "/"
        objects = self.server.objects(prefix)
        assert objects, f"nothing in s3://{self.server.bucket}/{prefix}"
        files = [(key.removeprefix(prefix), hashlib.sha256(body).hexdigest())
                 for key, body in objects.items() if key.removeprefix(prefix)
                 not in REWRITTEN_ON_LOAD]
        return sorted(files, key=lambda item: PurePosixPath(item[0]))  # as tree_files sorts


@pytest.fixture(params=["embedded", "remote"])
def registry(request: pytest.FixtureRequest, release_project: Workspace) -> Iterator[Registry]:
    """The default project with its own model and experiment names, on the embedded store or
    (``mlflow.tracking_uri`` in configs/pipeline.yaml) on the team server; MLflow's global
    tracking URI points at it during the test (``register`` and the notebooks' helpers use it),
    and is restored afterwards."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    ws = release_project
    server: RemoteMlflow | None = None
    tag = uuid.uuid4().hex[:8]
    model = ws.read_yaml("model.yaml")
    model["name"] = f"clf-{tag}"
    ws.write_yaml("model.yaml", model)
    pipeline = ws.read_yaml("pipeline.yaml")
    pipeline["mlflow"]["experiment"] = f"registry-{tag}"
    if request.param == "remote":
        server = request.getfixturevalue("mlflow_remote")
        pipeline["mlflow"]["tracking_uri"] = server.url
    ws.write_yaml("pipeline.yaml", pipeline)
    project = Project(ws.root)
    store = mlflow_store.resolve(project, load_config(project.configs).pipeline.mlflow)
    assert store.embedded is (server is None)
    experiment_id = mlflow_store.prepare(store)
    before = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(store.tracking_uri)
    try:
        yield Registry(request.param, ws, store, experiment_id, model["name"], server)
    finally:
        mlflow.set_tracking_uri(before)  # None: unset (and $MLFLOW_TRACKING_URI with it)


def test_versions_aliases_and_tags(registry: Registry) -> None:
    r, client = registry, registry.client
    moves = [register(r.log_files(), r.model, {"workbench.run_id": f"run-{k}"}, "dev")
             for k in (1, 2, 3)]
    assert moves == [("1", None), ("2", "1"), ("3", "2")], "versions 1..3, dev moved along"
    assert version_by_alias(r.model, "dev") == "3"
    assert champion(r.model, "dev") == Champion("3", f"models:/{r.model}/3")

    # another alias moves on its own, backwards too; each move says what it replaced
    assert move_alias(client, r.uri, r.model, "qa", "1") is None
    assert move_alias(client, r.uri, r.model, "qa", "3") == "1"
    assert move_alias(client, r.uri, r.model, "qa", "2") == "3"
    # (the alias -> version map's values are ints on the embedded store, strings through
    # the server's REST API: compare them as text, as workbench reads every version)
    aliases = client.get_registered_model(r.model).aliases
    assert {alias: str(v) for alias, v in aliases.items()} == {"dev": "3", "qa": "2"}
    assert client.get_model_version(r.model, "2").aliases == ["qa"]
    assert client.get_model_version(r.model, "3").aliases == ["dev"]
    assert client.get_model_version(r.model, "1").aliases == []
    assert client.get_model_version_by_alias(r.model, "qa").tags == {"workbench.run_id": "run-2"}

    # tags: as registered, then set (unicode and newlines kept), replaced, deleted
    registered = {str(v.version): v.tags
                  for v in client.search_model_versions(f"name = '{r.model}'")}
    assert registered == {str(k): {"workbench.run_id": f"run-{k}"} for k in (1, 2, 3)}
    note = "approvée par Zoë\nline two: ✓"
    client.set_model_version_tag(r.model, "2", "workbench.qa.note", note)
    client.set_model_version_tag(r.model, "2", "workbench.run_id", "run-2b")
    client.delete_model_version_tag(r.model, "1", "workbench.run_id")
    client.set_registered_model_tag(r.model, "owner", "team-a")
    assert client.get_model_version(r.model, "2").tags == {"workbench.run_id": "run-2b",
                                                           "workbench.qa.note": note}
    assert client.get_model_version(r.model, "1").tags == {}
    assert client.get_registered_model(r.model).tags == {"owner": "team-a"}
    found = client.search_model_versions(f"name = '{r.model}' and tag.`workbench.run_id` = "
                                         "'run-3'")
    assert [str(v.version) for v in found] == ["3"]

    # an alias taken away, an unknown alias, an unknown model: nobody holds them
    client.delete_registered_model_alias(r.model, "qa")
    assert version_holding(client, r.model, "qa") is None
    assert version_holding(client, f"{r.model}-missing", "dev") is None
    assert champion(r.model, "qa") is None
    with pytest.raises(LookupError, match="holds alias 'qa'"):
        version_by_alias(r.model, "qa")
    assert version_holding(client, r.model, "dev") == "3", "the other alias stays"


def model_folder(root: Path) -> Path:
    """Files of the kinds a model folder holds (and a few names that need quoting in URLs):
    binary, empty, nested, spaces, non-ASCII."""
    root.mkdir()
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "data").mkdir()
    (root / "data" / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "empty.txt").write_bytes(b"")
    (root / "nested" / "a" / "b").mkdir(parents=True)
    (root / "nested" / "a" / "b" / "c.json").write_text(json.dumps({"k": [1, 2, 3]}))
    (root / "notes with spaces.txt").write_text("spaces\n")
    (root / "précis-✓.txt").write_text("non-ASCII name\n")
    return root


def test_bundle_digest_equals_the_digest_of_the_stored_and_the_logged_files(
        registry: Registry, tmp_path: Path) -> None:
    import mlflow
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from workbench.registry.models import log_sklearn_model

    r = registry
    # files logged from a local folder: every digest is the folder's own
    folder = model_folder(tmp_path / "model")
    version, _ = register(r.log_files(folder), r.model, {}, "dev")
    expected = tree_digest(folder)
    assert model_artifact_digest(r.uri, r.model, version) == expected
    assert r.stored_files(version) == tree_files(folder)
    assert listing_digest(r.stored_files(version)) == expected

    # a model as the train notebook logs it (with its drift profile added afterwards)
    X, y = load_iris(return_X_y=True, as_frame=True)
    with mlflow.start_run(experiment_id=r.experiment_id):
        logged = log_sklearn_model(LogisticRegression(max_iter=300).fit(X, y), X)
    version, _ = register(logged.model_uri, r.model, {}, "dev")
    stored = r.stored_files(version)
    assert {"MLmodel", "model.skops", "workbench_profile.json"} <= {p for p, _ in stored}
    digest = model_artifact_digest(r.uri, r.model, version)
    assert digest == listing_digest(stored)
    assert model_artifact_digest(r.uri, r.model, version) == digest, "loading changes nothing"
    fetched = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.model_uri,
                                                       dst_path=str(tmp_path / "fetched")))
    assert tree_digest(fetched) == digest


REGISTRARS, EACH = 3, 1  # processes of tests/tools/register_versions.py, versions per process
AT_ONCE = 8  # writers meeting at one instant (threads behind a barrier)


def at_once(count: int, work: Callable[[int], Any]) -> tuple[list[Any], list[str]]:
    """``work(i)`` for i < count in threads released together: (results, errors)."""
    barrier = threading.Barrier(count)
    results: list[Any] = []
    errors: list[str] = []

    def one(i: int) -> None:
        barrier.wait(timeout=60)
        try:
            results.append(work(i))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion
            errors.append(f"{type(exc).__name__}: {str(exc)[:400]}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    return results, errors


def test_concurrent_registrations_of_one_model(registry: Registry) -> None:
    r = registry
    tool = str(REPO / "tests/tools/register_versions.py")
    processes = [subprocess.Popen([sys.executable, tool, str(r.ws.root), str(EACH)],
                                  env=clean_environment(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for _ in range(REGISTRARS)]
    done = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0] * REGISTRARS, [e[-3000:] for _, e in done]
    lists = [[int(v) for v in json.loads(out.splitlines()[-1])] for out, _ in done]
    assert all(mine == sorted(mine) for mine in lists), lists
    total = REGISTRARS * EACH
    assert sorted(v for mine in lists for v in mine) == list(range(1, total + 1)), lists
    client = r.client
    versions = client.search_model_versions(f"name = '{r.model}'")
    assert sorted(int(v.version) for v in versions) == list(range(1, total + 1))
    assert len({v.run_id for v in versions}) == total, "each version from its own run"
    assert {v.status for v in versions} == {"READY"}

    # many writers at one instant: versions distinct and consecutive, none lost
    source = r.log_files()
    run_id = source.removeprefix("runs:/").split("/", 1)[0]
    location = f"{client.get_run(run_id).info.artifact_uri}/model"
    created, errors = at_once(AT_ONCE, lambda i: client.create_model_version(
        r.model, location, run_id=run_id, tags={"writer": str(i)}).version)
    assert errors == []
    assert sorted(int(v) for v in created) == list(range(total + 1, total + AT_ONCE + 1))
    writers = {str(v.version): v.tags["writer"] for v in client.search_model_versions(
        f"name = '{r.model}'") if int(v.version) > total}
    assert sorted(writers.values(), key=int) == [str(i) for i in range(AT_ONCE)]

    # ... and setting a new alias at one instant: every writer succeeds, one version holds it.
    # (What each move reports it replaced is only exact on the embedded store, whose moves
    # take a file lock; on a server, overlapping moves of one alias may report the same
    # previous version, so that is not asserted here.)
    for round_ in range(3):
        alias = f"race{round_}"
        _, errors = at_once(AT_ONCE, lambda i, alias=alias: set_alias(
            client, r.model, alias, str(total + 1 + i)))
        assert errors == [], f"{alias}: {errors}"
        assert int(version_holding(client, r.model, alias) or 0) in \
            range(total + 1, total + AT_ONCE + 1)


def test_a_gated_release_on_the_team_server(gated_project: Workspace,
                                            mlflow_remote: RemoteMlflow) -> None:  # noqa: F811 - fixture
    """`workbench run` of a small project whose mlflow.tracking_uri is the server: the build
    stage trains and registers there (its kernel has no S3 credentials: artifacts go through
    the server), the qa gate's bundle digest is computed from the files in S3, approving and
    resuming recompute it to the same value and move the qa alias on the server, and a review
    reads what qa serves from the server."""
    from mlflow import MlflowClient

    ws, server = gated_project, mlflow_remote
    name = f"gated-{uuid.uuid4().hex[:8]}"
    model = ws.read_yaml("model.yaml")
    model["name"] = name
    ws.write_yaml("model.yaml", model)
    pipeline = ws.read_yaml("pipeline.yaml")
    pipeline["mlflow"] = {"experiment": name, "tracking_uri": server.url}
    ws.write_yaml("pipeline.yaml", pipeline)
    assert not set(server.s3.env()) & set(clean_environment()), "no S3 settings for the CLI"

    started = ws.cli("run")
    assert started.returncode == 3, started.stdout + started.stderr  # awaiting qa approval
    record = ws.run_record()
    assert record["tracking_uri"] == server.url
    assert not (ws.root / ".workbench" / "mlflow").exists(), "embedded store must stay unused"
    assert record["model_version"] == {"name": name, "version": "1"}
    digest = record["stages"]["approve_qa"]["gate"]["bundle_digest"]
    assert f"sha256:{digest}" in started.stderr

    client = MlflowClient(tracking_uri=server.url)
    dev = client.get_model_version_by_alias(name, "dev")
    assert str(dev.version) == "1" and dev.tags["workbench.run_id"] == record["id"]
    location = urlparse(client.get_model_version_download_uri(name, "1"))
    assert location.scheme == "mlflow-artifacts"
    stored = server.objects(location.path.strip("/") + "/")
    assert {k.rsplit("/", 1)[-1] for k in stored} >= {"MLmodel", "model.skops",
                                                      "workbench_profile.json"}

    approved = ws.cli("approve", "latest", "--env", "qa", "--as", "alice",
                      "--comment", "metrics hold")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert f"approved for bundle {digest[:12]}" in approved.stdout
    resumed = ws.cli("resume", record["id"])
    assert resumed.returncode == 3, resumed.stdout + resumed.stderr  # prod waits now
    record = ws.run_record()
    assert record["stages"]["approve_qa"]["status"] == "succeeded"
    assert record["stages"]["approve_qa"]["gate"]["bundle_digest"] == digest
    assert record["stages"]["release_qa"]["outputs"]["released"] == "qa:1"
    assert str(client.get_model_version_by_alias(name, "qa").version) == "1"
    moves = [json.loads(p.read_text()) for p in sorted((ws.runs()[-1] / "promotions")
                                                       .glob("*.json"))]
    assert [(m["alias"], m["to_version"], m["bundle_digest"]) for m in moves][-1] == \
        ("qa", "1", digest)
    # what qa serves, as a review reads it from the server (alias, then the version's tags)
    shown = ws.cli("diff", record["id"], "--env", "qa", "--json")
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)
    assert (found["serving_version"], found["serving_run"]) == ("1", record["id"])
