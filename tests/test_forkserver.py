"""The kernel fork server on real processes: a forked kernel behaves as a fresh one (folder,
environment, process group, fresh random state, exit statuses), what cannot be forked gets an
ordinary kernel, and the server never outlives its kernels or the run."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_core.utils import run_sync

from tests.conftest import processes_with
from workbench.execution.forkserver import ForkServer
from workbench.execution.warm import StageKernel, start_kernel

MARK = "WORKBENCH_TEST_FORKSERVER"


async def _run(kernel: StageKernel, code: str) -> str:
    """Execute ``code`` in the kernel; its stdout."""
    client = kernel.manager.client()
    client.start_channels()
    printed: list[str] = []

    def hook(message: dict[str, Any]) -> None:
        if message["msg_type"] == "stream":
            printed.append(message["content"]["text"])
        if message["msg_type"] == "error":
            printed.append("\n".join(message["content"]["traceback"]))

    try:
        await client.wait_for_ready(timeout=60)
        await client.execute_interactive(code, output_hook=hook, timeout=60)
    finally:
        client.stop_channels()
    return "".join(printed)


def run(kernel: StageKernel, code: str) -> Any:
    """Execute ``code``, which prints one JSON document; that document."""
    return json.loads(run_sync(_run)(kernel, code).strip().splitlines()[-1])


PROBE = """
import gc, json, os, sys
imported = "numpy" in sys.modules
import numpy
print(json.dumps({"cwd": os.getcwd(), "mark": os.environ.get("WORKBENCH_TEST_FORKSERVER"),
                  "pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0),
                  "numpy_before_cell": imported,
                  "random": numpy.random.random(), "count": get_ipython().execution_count,
                  "mpl": os.environ.get("MPLBACKEND"), "frozen": gc.get_freeze_count(),
                  "gc": gc.isenabled()}))
"""  # the variable is MARK


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(MARK, tmp_path.name)
    started = ForkServer(["numpy.random", "json"], tmp_path, {MARK: tmp_path.name})
    yield started
    started.kill()


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_forked_kernels_behave_like_fresh_ones(server: ForkServer, tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    first = start_kernel("python3", work, 60, ("numpy",), {MARK: "first"}, server)
    second = start_kernel("python3", work, 60, ("numpy",), {MARK: "second"}, server)
    cold = start_kernel("python3", work, 60, (), {MARK: "cold"})
    try:
        assert first.forked and second.forked and not cold.forked
        one, two, fresh = run(first, PROBE), run(second, PROBE), run(cold, PROBE)
        assert one["cwd"] == two["cwd"] == str(work)  # the kernel's folder, not the server's
        assert (one["mark"], two["mark"]) == ("first", "second")  # each its own environment
        assert one["ppid"] == two["ppid"] == server.process.pid
        assert one["pgid"] == one["pid"] and two["pgid"] == two["pid"]  # own process groups
        assert one["numpy_before_cell"] is True and fresh["numpy_before_cell"] is False
        assert one["random"] != two["random"]  # NumPy's global generator was reseeded
        # as in a fresh kernel: no history before the first cell, the inline backend
        assert one["count"] == two["count"] == fresh["count"]
        assert one["mpl"] == fresh["mpl"] == "module://matplotlib_inline.backend_inline"
        # what the server imported is frozen for the garbage collector (a collection in the
        # kernel would copy every page it inherited); the kernel's own objects are collected
        assert one["frozen"] > 0 and fresh["frozen"] == 0 and one["gc"] and two["gc"]

        # exit statuses come from the server, as Popen would give them
        process = first.manager.provisioner.process
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
        assert not first.alive()
        handle = second.manager.provisioner.process
        # graceful: the kernel exits 0. The exit is awaited here, not through jupyter_client's
        # shutdown, which sends SIGTERM after half its wait time (a busy CI machine took over
        # 30 s once).
        run_sync(second.manager.request_shutdown)()
        assert handle.wait(300) == 0
    finally:
        for kernel in (first, second, cold):
            kernel.close()
    server.close(timeout=15)
    assert server.process.returncode == 0  # it exits once its kernels are gone
    assert not processes_with(MARK, tmp_path.name, b"ipykernel")


@pytest.mark.slow
def test_what_cannot_be_forked_gets_an_ordinary_kernel(server: ForkServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "jupyter" / "kernels" / "other"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f",
                 "{connection_file}"], "display_name": "other", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    other = start_kernel("other", tmp_path, 60, (), None, server)  # not this exact command
    try:
        assert not other.forked and run(other, PROBE)["ppid"] == os.getpid()
    finally:
        other.close()
    server.kill()  # a server that is gone: the kernel starts the ordinary way
    plain = start_kernel("python3", tmp_path, 60, ("numpy",), None, server)
    try:
        assert not plain.forked and run(plain, PROBE)["ppid"] == os.getpid()
    finally:
        plain.close()


def test_a_server_that_forked_nothing_stops_at_once(tmp_path: Path) -> None:
    slow = tmp_path / "slow_import_here.py"
    slow.write_text("import time\ntime.sleep(60)\n")
    server = ForkServer(["slow_import_here"], tmp_path, {"PYTHONPATH": str(tmp_path)})
    started = time.monotonic()
    server.close(timeout=10)  # in the middle of its imports
    assert server.process.returncode is not None and time.monotonic() - started < 10
    assert _gone(server.process.pid)


@pytest.mark.slow
def test_a_preload_that_starts_a_thread_is_not_forked_from(tmp_path: Path) -> None:
    (tmp_path / "starts_a_thread.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), name='poller', daemon=True).start()\n")
    server = ForkServer(["starts_a_thread"], tmp_path, {"PYTHONPATH": str(tmp_path)})
    try:
        kernel = start_kernel("python3", tmp_path, 60, (), None, server)
        try:
            assert not kernel.forked and run(kernel, PROBE)["ppid"] == os.getpid()
        finally:
            kernel.close()
        assert server.problem == "importing the preload modules started threads (poller)"
        assert server.process.wait(15) == 0  # it said so and exited
    finally:
        server.kill()


@pytest.mark.slow
def test_a_forked_kernel_ends_when_its_server_is_gone(server: ForkServer, tmp_path: Path
                                                      ) -> None:
    """A killed workbench takes its fork server with it; the server's kernels must follow
    (ipykernel's parent poller: its trait default was read before the fork, so the kernel is
    told its parent explicitly)."""
    kernel = start_kernel("python3", tmp_path, 60, (), fork_server=server)
    try:
        found = run(kernel, PROBE)
        assert found["ppid"] == server.process.pid
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        assert _gone(found["pid"], timeout=15), "the kernel outlived its fork server"
    finally:
        kernel.close()


TASKS = """
import json, os, sys


def record(payload):
    with open(payload["out"], "w") as handle:
        json.dump({"cwd": os.getcwd(), "ppid": os.getppid(),
                   "numpy": "numpy.random" in sys.modules}, handle)


def fail(payload):
    raise ValueError(f"no good: {payload['why']}")
"""


@pytest.mark.slow
def test_a_task_forked_from_the_server_runs_with_its_imports(tmp_path: Path) -> None:
    """The workbench process's MLflow work runs in a process forked from the server (see
    forked_calls): it finds the preloaded modules, runs in the folder asked, reports failure
    with its message, and leaves at once."""
    (tmp_path / "tasks_here.py").write_text(TASKS)
    work = tmp_path / "work"
    work.mkdir()
    server = ForkServer(["numpy.random"], tmp_path, {"PYTHONPATH": str(tmp_path)})
    try:
        out = tmp_path / "out.json"
        assert server.call("tasks_here:record", {"out": str(out)}, str(work), 120) is None
        found = json.loads(out.read_text())
        assert found == {"cwd": str(work), "ppid": server.process.pid, "numpy": True}
        error = server.call("tasks_here:fail", {"why": "testing"}, str(work), 120)
        assert error == "ValueError: no good: testing"
        assert server.call("tasks_here:nothing", {}, str(work), 120) == \
            "AttributeError: module 'tasks_here' has no attribute 'nothing'"
    finally:
        server.close(timeout=15)
    assert server.process.returncode == 0  # no task left behind
