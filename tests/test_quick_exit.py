"""Processes of ours leave without the interpreter's teardown, but only after everything an exit
must do: non-daemon threads, every atexit handler (a notebook's own too), flushed output."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_forkserver import run
from workbench.execution.warm import retire, start_kernel, wait_retired


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def test_exit_now_finishes_threads_and_atexit_handlers_first(tmp_path: Path) -> None:
    done = _python("""
        import atexit, sys, threading, time
        from workbench.cli.entry import exit_now
        atexit.register(lambda: open("atexit.txt", "w").write("ran"))
        def slow() -> None:
            time.sleep(0.3)
            open("thread.txt", "w").write("finished")
        threading.Thread(target=slow).start()
        print("buffered, not yet flushed", end="")
        sys.stderr.write("to stderr")
        exit_now(3)
        """, tmp_path)
    assert done.returncode == 3
    assert (tmp_path / "thread.txt").read_text() == "finished"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert done.stdout == "buffered, not yet flushed" and done.stderr == "to stderr"


@pytest.mark.parametrize(("raised", "code", "stderr"), [
    ("None", 0, ""), ("4", 4, ""), ("'a message'", 1, "a message\n")])
def test_entry_gives_the_exit_status_sys_exit_would(tmp_path: Path, raised: str, code: int,
                                                    stderr: str) -> None:
    done = _python(f"""
        import sys
        import workbench.cli.entry as entry
        def main() -> None:
            sys.exit({raised})
        entry.main = main
        entry.entry()
        """, tmp_path)
    assert (done.returncode, done.stderr) == (code, stderr)


def test_the_workbench_command_exits_with_its_status(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "workbench", "--project", str(tmp_path),
                           "runs"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "configs/pipeline.yaml" in done.stderr  # the message reached stderr before the exit


@pytest.mark.slow
def test_a_kernel_runs_the_notebooks_atexit_handlers_then_leaves(tmp_path: Path) -> None:
    kernel = start_kernel("python3", tmp_path, 60.0)
    marker = tmp_path / "notebook-atexit.txt"
    try:
        # The exit hook binds no name and leaves no output value behind.
        names = run(kernel, "import json\nprint(json.dumps([repr(_), sorted(dir())]))")
        assert names[0] == "''" and "sys" not in names[1] and "os" not in names[1]
        pid = run(kernel, f"""
import atexit, json, os
atexit.register(lambda: open({str(marker)!r}, "w").write("flushed by the notebook"))
print(json.dumps(os.getpid()))
""")
        retire(kernel)
        wait_retired(timeout=30)
    finally:
        kernel.close()
    assert marker.read_text() == "flushed by the notebook"
    assert not Path(f"/proc/{pid}").exists()
