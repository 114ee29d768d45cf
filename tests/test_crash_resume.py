"""Crash safety: runs killed with SIGKILL at random points are resumed to completion.

Real ``workbench run`` processes on a small three-stage project (real kernels, the embedded
MLflow store, created fresh by each project's first run) are killed, process group and all, at
seeded random times; then ``workbench resume`` continues them, and is itself killed at random
times too, until one resume finishes. After every kill the archive and the ledger must be
consistent; after the last resume each stage must have run to completion exactly once after the
last kill, completed stages never again, and ``workbench audit verify`` must pass.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import (
    MINI_ENVIRONMENTS,
    MINI_MODEL,
    Workspace,
    clean_environment,
    notebook,
    processes_with,
    wait_until_gone,
)
from workbench.audit import ledger

STAGES = ("a", "b", "c")
MIN_KILLS = 24
SEED = 20261127
LOG = "executions.log"
EVENTS = 24  # progress events of a whole run: run, 3 x (start, 5 cells, end), finish

STAGE_START = """import os, time
run = os.environ.get("WORKBENCH_RUN_ID", "-")
with open("executions.log", "a") as log:
    log.write(f"start {stage} {run}\\n")
"""
STAGE_WORK = """for step in range(3):
    print("working", stage, step, flush=True)
    time.sleep(0.15)
"""
STAGE_END = """from workbench.scraps import glue
glue("n", len(stage))
with open("executions.log", "a") as log:
    log.write(f"end {stage} {run}\\n")
"""


def make_project(root: Path) -> Workspace:
    ws = Workspace(root)
    (root / "configs").mkdir(parents=True)
    ws.write_yaml("environments.yaml", MINI_ENVIRONMENTS)
    ws.write_yaml("model.yaml", MINI_MODEL)
    stages = []
    for index, name in enumerate(STAGES):
        ws.write_notebook(name, notebook(STAGE_START, STAGE_WORK, STAGE_END,
                                         parameters=f'stage: str = "{name}"'))
        stages.append({"name": name, "notebook": f"notebooks/{name}.ipynb",
                       "needs": [STAGES[index - 1]] if index else [],
                       "parameters": {"stage": name}, "outputs": {"n": "int"}})
    ws.write_yaml("pipeline.yaml", {"name": "crashy", "stages": stages})
    return ws


@dataclass
class Trial:
    """One project: runs, each killed and resumed at random points, then resumed to the end."""

    ws: Workspace
    rng: random.Random
    kills: list[str] = field(default_factory=list)  # where each kill landed
    runs: int = 0
    resumes: int = 0
    run_id: str | None = None  # the run being played
    known: set[str] = field(default_factory=set)  # runs that existed before it

    def kill_point(self) -> tuple[int, float]:
        """A random point of a run: after its ``n``-th progress event (0: from its start),
        plus a random delay, so kills spread over every phase however fast the machine is.
        One in four lands in the command's first second (setup: before the run exists, the
        MLflow store, the first kernel), which on a fast machine is over before any event."""
        if self.rng.random() < 0.25:
            return 0, self.rng.uniform(0, 1.0)
        events = self.rng.randrange(EVENTS)
        return events, self.rng.uniform(0, 12.0 if events == 0 else 1.5)

    def kill_at(self, point: tuple[int, float], *args: str) -> int | None:
        """Run the CLI (``--json`` progress) and SIGKILL its process group at ``point``;
        return its exit code if it ended first, None if it was killed."""
        events, delay = point
        with (self.ws.root / "cli.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "workbench", "--project", str(self.ws.root), *args,
                 "--json"], cwd=self.ws.root, env=clean_environment(), stdout=subprocess.PIPE,
                stderr=log, start_new_session=True)
        reached = threading.Event()

        def read() -> None:  # drains stdout, so the CLI never blocks on a full pipe
            assert process.stdout is not None
            for count, _ in enumerate(process.stdout, start=1):
                if count >= events:
                    reached.set()
            reached.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if events:
            reached.wait(300)
        try:
            return process.wait(delay)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        finally:
            reader.join(30)
            assert process.stdout is not None
            process.stdout.close()
        self.kills.append(self.where())
        self.check_after_kill()
        return None

    def folder(self) -> Path:
        assert self.run_id is not None
        return self.ws.root / "reports" / "runs" / self.run_id

    def record(self) -> dict:
        return json.loads((self.folder() / "run.json").read_text())

    def recorded_runs(self) -> set[str]:
        folder = self.ws.root / "reports" / "runs"
        return {p.name for p in folder.iterdir() if (p / "run.json").exists()} \
            if folder.is_dir() else set()

    def where(self) -> str:
        """Which phase the kill interrupted, read from what is on disk."""
        ledger_file = self.ws.root / "reports" / ledger.LEDGER_FILE
        if ledger_file.exists() and not ledger_file.read_bytes().endswith(b"\n"):
            return "mid ledger append"
        if list((self.ws.root / ".workbench" / "mlflow").glob(".mlflow.db.*.creating")):
            return "creating the MLflow store"
        if self.run_id is None:
            created = sorted(self.recorded_runs() - self.known)
            if not created:
                return "before the run existed"
            self.run_id = created[-1]
        record = self.record()
        running = [n for n, s in record["stages"].items() if s["status"] == "running"]
        if running:
            staged = self.ws.root / ".workbench" / "staging" / record["id"] / f"{running[0]}.ipynb"
            if (self.folder() / f"{running[0]}.ipynb").exists():
                return "stage archived, outcome not yet recorded"
            return "stage executing cells" if _cells_started(staged) else \
                "stage starting (kernel)"
        if record["status"] == "running":
            done = [n for n, s in record["stages"].items() if s["status"] == "succeeded"]
            return "between stages" if len(done) < len(STAGES) else "finishing the run"
        return f"after the run ({record['status']})"

    def check_after_kill(self) -> None:
        """Whatever the kill interrupted: kernels go, and what the ledger says is true."""
        left = wait_until_gone("WORKBENCH_PROJECT", str(self.ws.root), b"ipykernel", timeout=15)
        assert not left, f"kernels outlived the killed run: {left}"
        problems = ledger.verify(self.ws.root / "reports").problems
        assert all("incomplete entry (torn write)" in p for p in problems), problems
        for run in self.recorded_runs():
            json.loads((self.ws.root / "reports" / "runs" / run / "run.json").read_text())

    def executions(self) -> list[tuple[str, str]]:
        """(start|end, stage) lines the current run's kernels wrote."""
        path = self.ws.root / LOG
        lines = [line.split() for line in path.read_text().splitlines()] if path.exists() \
            else []
        return [(kind, stage) for kind, stage, run in lines if run == self.run_id]

    def resume(self, kill: tuple[int, float] | None) -> None:
        """``workbench resume latest``, killed at ``kill`` unless None; checks that no stage
        already complete starts again, and that a finished resume ran each other one once."""
        completed = {n for n, s in self.record()["stages"].items() if s["status"] == "succeeded"}
        before = len(self.executions())
        self.resumes += 1
        if kill is None:
            done = self.ws.cli("resume", "latest", timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            code: int | None = 0
        else:
            code = self.kill_at(kill, "resume", "latest")
            assert code in (None, 0), (self.ws.root / "cli.log").read_text()[-3000:]
        new = self.executions()[before:]
        again = [stage for kind, stage in new if kind == "start" and stage in completed]
        assert not again, f"completed stages executed again: {again}"
        if code is not None:
            for name in STAGES:
                ends = sum(1 for kind, stage in new if (kind, stage) == ("end", name))
                assert ends == (0 if name in completed else 1), (name, new)

    def play(self, kills: int) -> None:
        """One run: killed at a random point, resumed and killed again up to ``kills`` times
        in all, then resumed to completion."""
        self.runs += 1
        self.run_id = None
        while self.run_id is None:  # again if killed before the run was created
            self.known = self.recorded_runs()
            code = self.kill_at(self.kill_point(), "run", "--no-cache")  # every run executes
            assert code in (None, 0), (self.ws.root / "cli.log").read_text()[-3000:]
            created = sorted(self.recorded_runs() - self.known)
            self.run_id = self.run_id or (created[-1] if created else None)
        for _ in range(kills - 1):
            if self.record()["status"] != "running":
                break
            self.resume(self.kill_point())
        if self.record()["status"] == "running":
            self.resume(None)
        self.check_final()

    def check_final(self) -> None:
        record = self.record()
        folder = self.folder()
        assert record["status"] == "succeeded", record
        reports = self.ws.root / "reports"
        verified = self.ws.cli("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        entries = [e for e in ledger.entries(reports) if e["run_id"] == record["id"]]
        events = Counter((e["event"], e["data"].get("stage")) for e in entries)
        recorded = {name for e in ledger.entries(reports) for name in e["files"]}
        for name in STAGES:
            stage = record["stages"][name]
            assert stage["status"] == "succeeded" and stage["outputs"] == {"n": 1}
            assert events[("stage_executed", name)] == 1, events
            assert events[("stage_attempt", name)] == len(stage["attempts"])
            assert [a["number"] for a in stage["attempts"]] == \
                list(range(1, len(stage["attempts"]) + 1))
            assert all(a["failure"] == "interrupted" for a in stage["attempts"])
            starts = sum(1 for kind, s in self.executions() if (kind, s) == ("start", name))
            assert 1 <= starts <= len(stage["attempts"]) + 1
            for attempt in stage["attempts"]:
                if attempt["notebook"]:
                    assert f"runs/{record['id']}/{attempt['notebook']}" in recorded
        assert [e["event"] for e in entries].count("run_succeeded") == 1
        archived = {p.name for p in folder.glob("*.ipynb")}
        assert {f"runs/{record['id']}/{n}" for n in archived} <= recorded, \
            "an archived notebook is not in the ledger"
        assert not [p.name for p in folder.iterdir()
                    if p.name.startswith(".") and p.name != ".run.lock"]
        staging = self.ws.root / ".workbench" / "staging" / record["id"]
        assert not staging.exists() or not any(staging.iterdir())
        assert not processes_with("WORKBENCH_PROJECT", str(self.ws.root), b"ipykernel")


def _cells_started(staged: Path) -> bool:
    try:
        cells = json.loads(staged.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return False
    return any((c["metadata"].get("papermill") or {}).get("start_time") for c in cells)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_runs_killed_at_random_points_resume_to_completion(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    trials = [Trial(make_project(tmp_path / f"p{i}"), random.Random(rng.random()))
              for i in range(2)]

    def play(trial: Trial) -> None:
        while len(trial.kills) < MIN_KILLS // len(trials) and trial.runs < 12:
            trial.play(kills=3)

    started = time.monotonic()
    with ThreadPoolExecutor(len(trials)) as pool:  # two projects at once: kills are wall-clock
        list(pool.map(play, trials))
    kills = [where for trial in trials for where in trial.kills]
    print(f"\n{len(kills)} kills in {sum(t.runs for t in trials)} runs, "
          f"{sum(t.resumes for t in trials)} resumes, {time.monotonic() - started:.0f} s:")
    for where, count in Counter(kills).most_common():
        print(f"  {count:3d}  {where}")
    assert len(kills) >= MIN_KILLS
    assert len(set(kills)) >= 4, "kills should land in different phases of a run"


# --- every crash window, built exactly: the state a kill at that point leaves ----------------


class FakeExecutor:
    """An executor plug-in that executes nothing: writes the notebook as the staged output and
    returns ``n``. Registered as ``fake`` through the executor seam, as a third party's would
    be; it runs nothing on this machine, so no kernel is warmed for it."""

    runs_here = False
    calls: list[str] = []  # stages executed, across instances (reset by each test)

    @classmethod
    def create(cls, project: object, config: object, environment: str) -> FakeExecutor:
        return cls()

    def execute(self, request: object) -> object:
        from workbench.execution.stage import StageResult

        FakeExecutor.calls.append(request.parameters["stage"])  # type: ignore[attr-defined]
        request.output.write_text(request.notebook.read_text())  # type: ignore[attr-defined]
        return StageResult(True, {"n": 1}, None, 0.01)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A project whose one run finished (with the fake executor, so without kernels)."""
    from workbench.config import load_config
    from workbench.execution.executors import EXECUTORS
    from workbench.pipeline import runner
    from workbench.project import Project

    ws = make_project(tmp_path_factory.mktemp("windows") / "project")
    EXECUTORS.register("fake", FakeExecutor)
    record = runner.start_run(Project(ws.root), load_config(ws.root / "configs"), "dev",
                              [lambda _: None], executor="fake")
    assert record.status == "succeeded"
    yield ws.root, record.id
    EXECUTORS.unregister("fake")


def drop_ledger_tail(reports: Path, count: int) -> None:
    path = reports / ledger.LEDGER_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-count]))


def drop_ledger_from_outcome_of(reports: Path, stage: str) -> None:
    """Cut the ledger back to before ``stage``'s stage_executed entry (and all after it: its
    page, the run's outcome), as a kill just before that append leaves it."""
    path = reports / ledger.LEDGER_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    cut = max(i for i, line in enumerate(lines) if json.loads(line)["event"] ==
              "stage_executed" and json.loads(line)["data"]["stage"] == stage)
    path.write_bytes(b"".join(lines[:cut]))


def set_running(run: Path, stage: str | None = None) -> None:
    """run.json as it was before the end of the run (and before ``stage``'s outcome)."""
    record = json.loads((run / "run.json").read_text())
    record["status"], record["finished"] = "running", None
    if stage:
        record["stages"][stage].update(status="running", outputs={}, finished=None,
                                       duration_s=None)
    (run / "run.json").write_text(json.dumps(record))


def outcome_not_recorded(root: Path, run: Path) -> None:
    """Killed after c's notebook was archived, before run.json recorded its outcome."""
    drop_ledger_from_outcome_of(root / "reports", "c")  # c's entries and run_succeeded
    set_running(run, "c")
    (run / "c.html").unlink()


def staged_not_archived(torn: bool) -> Callable[[Path, Path], None]:
    """Killed mid-stage: the staged notebook complete (or, without atomic saves, torn)."""
    def window(root: Path, run: Path) -> None:
        outcome_not_recorded(root, run)
        staged = root / ".workbench" / "staging" / run.name / "c.ipynb"
        staged.parent.mkdir(parents=True, exist_ok=True)
        text = (run / "c.ipynb").read_text()
        staged.write_text(text[: len(text) // 2] if torn else text)
        (run / "c.ipynb").unlink()
    return window


def ledger_entry_missing(root: Path, run: Path) -> None:
    """Killed after run.json recorded c's outcome, before the ledger entry was appended."""
    drop_ledger_from_outcome_of(root / "reports", "c")
    set_running(run)
    (run / "c.html").unlink()


def torn_ledger_tail(root: Path, run: Path) -> None:
    """Killed in the middle of appending run_succeeded."""
    path = root / "reports" / ledger.LEDGER_FILE
    last = path.read_bytes().splitlines(keepends=True)[-1]
    drop_ledger_tail(root / "reports", 1)
    with path.open("ab") as handle:
        handle.write(last[: len(last) // 2])
    set_running(run)


def finished_not_saved(root: Path, run: Path) -> None:
    """Killed after the ledger said run_succeeded, before run.json did."""
    set_running(run)
    (run / ".run.json.x1y2z3").write_text('{"half": ')  # an interrupted atomic write
    (run / ".c.ipynb.a1b2c3").write_text("{")


WINDOWS: dict[str, tuple[Callable[[Path, Path], None], list[str], str | None]] = {
    # window: (the state, stages executed again, what becomes of the interrupted attempt)
    "stage-archived-outcome-not-recorded": (outcome_not_recorded, ["c"], "c.attempt-1.ipynb"),
    "mid-stage-staged-notebook": (staged_not_archived(torn=False), ["c"], "c.attempt-1.ipynb"),
    "mid-stage-torn-staged-notebook": (staged_not_archived(torn=True), ["c"], None),
    "outcome-recorded-ledger-entry-missing": (ledger_entry_missing, [], None),
    "mid-ledger-append": (torn_ledger_tail, [], None),
    "run-finished-record-not-saved": (finished_not_saved, [], None),
}


@pytest.mark.parametrize("window", list(WINDOWS))
def test_every_crash_window_resumes_consistently(window: str, finished: tuple[Path, str],
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.pipeline import runner
    from workbench.project import Project

    make_state, again, attempt_file = WINDOWS[window]
    source, run_id = finished
    root = tmp_path / "project"
    shutil.copytree(source, root)
    run = root / "reports" / "runs" / run_id
    make_state(root, run)
    monkeypatch.setattr(FakeExecutor, "calls", [])
    record = runner.resume_run(Project(root), run_id, [lambda _: None])

    assert record.status == "succeeded" and FakeExecutor.calls == again
    reports = root / "reports"
    verified = ledger.verify(reports)
    assert verified.ok, verified.problems
    entries = [e for e in ledger.entries(reports) if e["run_id"] == run_id]
    events = Counter((e["event"], e["data"].get("stage")) for e in entries)
    assert events[("run_succeeded", None)] == 1 and events[("run_recovered", None)] == 1
    assert all(events[("stage_executed", name)] == 1 for name in STAGES), events
    recorded = {name for e in ledger.entries(reports) for name in e["files"]}
    assert {f"runs/{run_id}/{p.name}" for p in run.glob("*.ipynb")} <= recorded
    assert (run / "c.html").exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".run.lock"]
    attempts = record.stages["c"].attempts
    if again:
        assert [(a.number, a.failure, a.notebook) for a in attempts] == [
            (1, "interrupted", attempt_file)]
        if attempt_file is None:
            assert "incomplete and was discarded" in (attempts[0].error or "")
    else:
        assert attempts == []
    if window == "mid-ledger-append":
        repaired = next(e for e in entries if e["event"] == "ledger_repaired")
        kept = reports / next(iter(repaired["files"]))
        assert kept.is_file() and repaired["data"]["bytes"] == kept.stat().st_size


def test_a_killed_mlflow_store_creation_is_started_over(tmp_path: Path) -> None:
    """A store whose creation was killed never becomes mlflow.db: the next run starts over."""
    from workbench.config import MlflowSettings
    from workbench.project import Project
    from workbench.registry import store

    project = Project(tmp_path)
    folder = project.mlflow_dir
    folder.mkdir(parents=True)
    (folder / ".mlflow.db.4242.creating").write_bytes(b"SQLite format 3\0half a schema")
    (folder / ".mlflow.db.4242.creating-journal").write_bytes(b"journal")
    resolved = store.resolve(project, MlflowSettings())
    assert store.prepare(resolved)
    assert sorted(p.name for p in folder.iterdir()) == [".create.lock", ".prepared.json",
                                                        "mlflow.db"]
    from mlflow import MlflowClient

    assert MlflowClient(resolved.tracking_uri).get_experiment_by_name("workbench") is not None


def test_a_live_run_is_never_recovered(finished: tuple[Path, str], tmp_path: Path) -> None:
    """A run whose process still holds its lock is refused, whatever run.json says."""
    from filelock import FileLock

    from workbench.pipeline import runner
    from workbench.project import Project

    source, run_id = finished
    root = tmp_path / "project"
    shutil.copytree(source, root)
    run = root / "reports" / "runs" / run_id
    set_running(run, "c")
    before = (run / "run.json").read_bytes()
    with FileLock(run / runner.RUN_LOCK), pytest.raises(runner.ResumeError,
                                                         match="being executed by another"):
        runner.resume_run(Project(root), run_id, lambda _: None)
    assert (run / "run.json").read_bytes() == before
