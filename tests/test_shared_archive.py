"""A team's shared archive end to end, on an S3-protocol server (moto) on 127.0.0.1: fresh
clones sharing only an archive URL and a tracking URI drive one release between them, a third
verifies it in the store; the store stopped mid-run loses nothing and the run resumes;
8 processes append to one shared ledger at once."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Workspace, clean_environment, wait_until
from s3_server import S3Server, s3_server  # noqa: F401 - the session fixture

from workbench.audit import ledger, remote, remote_verify

pytestmark = pytest.mark.slow


def _clone(source: Workspace, root: Path, url: str, tracking: str) -> Workspace:
    """A fresh checkout of ``source``'s project (configs and notebooks, nothing else)."""
    root.mkdir(parents=True)
    shutil.copytree(source.root / "configs", root / "configs")
    shutil.copytree(source.root / "notebooks", root / "notebooks")
    clone = Workspace(root)
    pipeline = clone.read_yaml("pipeline.yaml")
    pipeline["archive"] = {"url": url}
    pipeline["mlflow"] = {"tracking_uri": tracking}
    clone.write_yaml("pipeline.yaml", pipeline)
    return clone


def _run_id(result: subprocess.CompletedProcess[str]) -> str:
    for line in (result.stdout + result.stderr).splitlines():
        for word in line.replace(":", " ").split():
            if len(word) > 16 and word[:8].isdigit() and "T" in word:
                return word
    raise AssertionError(f"no run id in:\n{result.stdout}\n{result.stderr}")


Done = subprocess.CompletedProcess[str]


def _ok(result: Done, code: int = 0) -> Done:
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}{result.stderr}"
    return result


def _events(store: remote.RemoteArchive) -> list[dict[str, Any]]:
    return [json.loads(store.store.get(key)[0])  # type: ignore[index]
            for key in store.store.list(remote.LEDGER_PREFIX)]


@pytest.fixture
def shared(s3_server: S3Server, gated_project: Workspace, tmp_path: Path,  # noqa: F811
           monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """An archive URL and a tracking URI two clones share, the env that reaches them."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.new_bucket()
    url = f"s3://{bucket}/team-archive"
    (tmp_path / "mlflow").mkdir()
    tracking = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    yield {"url": url, "tracking": tracking, "env": s3_server.env(), "source": gated_project,
           "store": remote.RemoteArchive(_store(url, s3_server), tmp_path / "unused")}


def _store(url: str, server: S3Server) -> Any:
    from workbench.audit.object_store import open_store

    return open_store(url, server.endpoint)


def test_two_clones_share_one_release_and_a_third_verifies_it(shared: dict[str, Any],
                                                              tmp_path: Path) -> None:
    a = _clone(shared["source"], tmp_path / "clone-a", shared["url"], shared["tracking"])
    b = _clone(shared["source"], tmp_path / "clone-b", shared["url"], shared["tracking"])
    env = shared["env"]

    first = _run_id(_ok(a.cli("run", env=env), 3))  # A: build, then awaits the qa gate
    _ok(b.cli("approve", first, "--env", "qa", "--as", "alice", env=env))
    _ok(b.cli("resume", first, env=env), 3)  # B: through qa, then awaits prod
    assert json.loads((b.root / "reports/runs" / first / "run.json").read_text())["status"] \
        == "awaiting_approval"
    second = _run_id(_ok(a.cli("run", env=env), 3))
    _ok(b.cli("approve", second, "--env", "qa", "--as", "bob", env=env))
    _ok(b.cli("resume", second, env=env), 3)
    try:  # A rolls qa back to the first run's version, approved for qa before
        rolled = _ok(a.cli("rollback", "--env", "qa", "--as", "carol", "--reason", "test",
                           env=env))
        assert "rolled back qa" in rolled.stdout
    finally:
        a.cli("stop", "qa", env=env)

    events = [e["event"] for e in _events(shared["store"])]
    assert events.count("run_started") == 2 and "rollback" in events
    assert events.count("approval") >= 2 or any("approv" in e for e in events)
    # both clones see one ledger: A's cache, pulled, is B's byte for byte after B pulls too
    _ok(a.cli("archive", "pull", env=env))
    _ok(b.cli("archive", "pull", env=env))
    assert (a.root / "reports/ledger.jsonl").read_bytes() == \
        (b.root / "reports/ledger.jsonl").read_bytes()
    assert json.loads((a.root / "reports/runs" / first / "run.json").read_text())["status"] \
        == "awaiting_approval"  # A sees what B did to its run
    _ok(a.cli("audit", "verify", "--local", env=env))

    c = _clone(shared["source"], tmp_path / "clone-c", shared["url"], shared["tracking"])
    verified = _ok(c.cli("audit", "verify", env=env))
    assert "verified" in verified.stdout and "shared archive" in verified.stderr
    assert not (c.root / "reports" / "ledger.jsonl").exists()  # verified in the store itself
    _ok(c.cli("reports", "build", env=env))
    index = (c.root / "reports" / "index.html").read_text()
    site = index + "".join(p.read_text() for p in (c.root / "reports").glob("shards/*"))
    assert first in site and second in site
    environments = (c.root / "reports" / "environments.html").read_text()
    assert "rollback" in environments.lower()


def test_an_unreachable_store_stops_a_command_before_any_kernel(shared: dict[str, Any],
                                                                tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    a = _clone(shared["source"], tmp_path / "clone-a", shared["url"], shared["tracking"])
    env = {**shared["env"], "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{dead}"}
    result = a.cli("run", env=env)
    assert result.returncode == 2
    assert shared["url"] in result.stderr and "cannot reach" in result.stderr
    assert "testing" not in result.stderr  # the secret key is never printed
    assert not (a.root / "reports" / "runs").exists()  # nothing ran
    denied = a.cli("run", env={**shared["env"], "AWS_ACCESS_KEY_ID": ""}, timeout=120)
    assert denied.returncode == 2 and shared["url"] in denied.stderr


class Forwarder:
    """A TCP forwarder on 127.0.0.1 in front of the store: ``stop`` makes the store
    unreachable (connections refused and cut), ``start`` brings it back on the same port."""

    def __init__(self, upstream: int):
        self.upstream, self.port = upstream, 0
        self.listener: socket.socket | None = None
        self.open: list[socket.socket] = []

    def start(self) -> Forwarder:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port, self.listener = listener.getsockname()[1], listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            self.open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for connection in self.open:
            try:
                connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            except OSError:
                pass
        self.open.clear()


def test_a_store_stopped_mid_run_loses_nothing_and_the_run_resumes(
        shared: dict[str, Any], s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    forwarder = Forwarder(s3_server.port).start()
    env = {**shared["env"], "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{forwarder.port}"}
    a = _clone(shared["source"], tmp_path / "clone-a", shared["url"], shared["tracking"])
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "workbench", "--project", str(a.root), "run"],
        env={**clean_environment(), **env}, cwd=a.root, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        wait_until("the run's first entry in the store",
                   lambda: any(e["event"] == "run_started" for e in _events(shared["store"])))
        forwarder.stop()
        out, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode not in (0, 3), out + err
    assert shared["url"] in err, err
    stored_before = _events(shared["store"])
    run_id = stored_before[0]["run_id"]
    assert (a.root / "reports/runs" / run_id / "build.ipynb").is_file()  # kept in the cache

    forwarder.start()
    resumed = a.cli("resume", run_id, env=env)
    assert resumed.returncode == 3, resumed.stdout + resumed.stderr  # on to the qa gate
    after = _events(shared["store"])
    assert after[:len(stored_before)] == stored_before  # nothing written was rewritten
    assert any(e["event"] == "stage_executed" and e["data"].get("stage") == "build"
               for e in after), [e["event"] for e in after]
    checked = remote_verify.verify(shared["store"])
    assert checked.ok, checked.problems
    _ok(a.cli("audit", "verify", env=env))
    forwarder.stop()


def _append_many(reports: str, count: int, who: int, environ: dict[str, str]) -> None:
    os.environ.update(environ)
    for number in range(count):
        ledger.append(Path(reports), "load", actor={"name": f"w{who}"}, run_id=None,
                      data={"n": number})


def test_eight_processes_append_400_entries_to_one_shared_chain(
        s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    url = f"s3://{s3_server.new_bucket()}/ledger-load"
    caches = []
    for number in range(8):
        reports = tmp_path / f"c{number}" / "reports"
        reports.mkdir(parents=True)
        remote.attach(reports, url, s3_server.endpoint)
        caches.append(reports)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many,
                               args=(str(reports), 50, number, s3_server.env()))
               for number, reports in enumerate(caches)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
        assert worker.exitcode == 0
    os.environ.update(s3_server.env())
    archive = remote.attached(caches[0])
    assert archive is not None
    result = remote_verify.verify(archive)
    assert result.ok, result.problems[:5]
    assert result.entries == 400
    names = [e["actor"]["name"] for e in _events(archive)]
    assert {name: names.count(name) for name in set(names)} == {f"w{n}": 50 for n in range(8)}
    remote.pull(archive)
    assert ledger.verify(caches[0]).entries == 400

