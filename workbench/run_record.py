"""Run records: ``reports/runs/<run-id>/run.json``, rewritten atomically after every stage."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from workbench.atomic import write_bytes
from workbench.clock import stamped_id
from workbench.config import STANDARD_NAMES, FailureClass
from workbench.errors import WorkbenchError
from workbench.identity import Identity
from workbench.project import Project

RUN_FILE = "run.json"
# reused: taken from an earlier run (``reused_from``); not_selected: left out of a partial run
StageStatus = Literal["pending", "running", "succeeded", "failed", "skipped",
                      "awaiting_approval", "reused", "not_selected"]
DONE: tuple[StageStatus, ...] = ("succeeded", "reused")
# paused: stopped on purpose before later environments (``workbench promote --to``)
RunStatus = Literal["running", "succeeded", "failed", "awaiting_approval", "paused"]
RESUMABLE: tuple[RunStatus, ...] = ("awaiting_approval", "paused")


class RunRecordError(WorkbenchError, RuntimeError):
    """A run folder or its ``run.json`` is missing or unreadable."""


def new_run_id() -> str:
    """Sortable and unique: UTC time plus random hex, e.g. ``20261127T093000Z-3fa2c1``."""
    return stamped_id(3)


# a kernel failure class, or "interrupted": Ctrl-C, SIGTERM or a crash of the workbench
Failure = FailureClass | Literal["interrupted"]


class Attempt(BaseModel):
    """An earlier attempt of a stage that did not count: retried after a failure, or cut
    short by a crash and resumed. Its partial notebook is archived as ``notebook``."""

    number: int
    failure: Failure
    error: str | None = None
    notebook: str | None = None  # <stage>.attempt-<number>.ipynb; None if nothing was written
    started: str | None = None
    finished: str | None = None
    duration_s: float | None = None


class StageRecord(BaseModel):
    status: StageStatus = "pending"
    failure: Failure | None = None  # why the (last) attempt failed
    attempts: list[Attempt] = []  # earlier attempts, oldest first; this one is number len+1
    notebook: str | None = None
    parameters: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    started: str | None = None
    finished: str | None = None
    duration_s: float | None = None
    error: str | None = None
    actor: Identity | None = None
    reused_from: str | None = None  # the run whose archived notebook and outputs are reused
    reuse: Literal["selection", "cache"] | None = None  # why: left out of a partial run, or
    # the stage cache had an identical execution (same ``cache_key``)
    cache_key: str | None = None  # content address of a cacheable stage's inputs
    # pre-started (and preloaded) kernel, one forked from the run's fork server, or neither
    kernel: Literal["warm", "forked", "cold"] | None = None
    gate: dict[str, Any] | None = None  # a gate stage's verdict: state, bundle, approvals
    # role -> the output that plays it, as the pipeline declared (README: output roles);
    # empty in records written before roles were recorded: the standard names apply there
    roles: dict[str, str] = {}

    def output(self, role: str) -> Any:
        """The value of the output that plays ``role``, or None."""
        name = self.roles.get(role) if self.roles else _STANDARD_NAME_OF.get(role)
        return self.outputs.get(name) if name else None


_STANDARD_NAME_OF: dict[str, str] = {role: name for name, role in STANDARD_NAMES.items()}


class ModelVersion(BaseModel):
    name: str
    version: str


class RunOptions(BaseModel):
    """How a run executes (kept so that ``resume`` goes on the same way)."""

    jobs: int = 1  # stages at most at once
    warm: bool = True  # pre-start kernels of the stages that come next
    cache: bool = True  # reuse identical earlier executions of cacheable stages
    fork: bool = True  # fork pre-started kernels from a process that imported the preloads


class RunRecord(BaseModel):
    id: str
    pipeline: str
    environment: str
    status: RunStatus = "running"
    created: str
    finished: str | None = None
    git_commit: str
    git_dirty: bool = False
    config_hash: str
    config: dict[str, str]
    tracking_uri: str
    experiment: str
    stages: dict[str, StageRecord]
    mlflow_run_ids: list[str] = []
    model_version: ModelVersion | None = None
    requested_by: Identity | None = None
    trained_by: Identity | None = None
    executor: str = "local"
    options: RunOptions = RunOptions()
    # ``workbench run -p``: "stage.param" or "model.key" -> the typed value (kept by resume,
    # recorded in the ledger's run_started entry; workbench.pipeline.overrides)
    overrides: dict[str, Any] = {}


RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    """``run_id`` if it can name a run folder (letters, digits, ``.``, ``_``, ``-``; never a
    path), else :class:`RunRecordError`: checked before anything is read or written."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise RunRecordError(f"{run_id!r} is not a run id (expected letters, digits, '.', '_' "
                             f"or '-', such as 20261127T093000Z-3fa2c1)")
    return run_id


def run_dir(project: Project, run_id: str) -> Path:
    return project.runs / check_run_id(run_id)


def notebook_path(project: Project, record: RunRecord, name: str) -> Path | None:
    """Where a stage's executed notebook is archived (an earlier run's, when reused)."""
    entry = record.stages[name]
    if not entry.notebook:
        return None
    return run_dir(project, entry.reused_from or record.id) / entry.notebook


_saving = threading.Lock()  # stages finishing in parallel threads save one at a time


def serialized(record: RunRecord) -> bytes:
    """The bytes ``save`` writes for ``record`` (so their digest can be recorded first)."""
    return (json.dumps(record.model_dump(mode="json"), indent=2, default=str) + "\n").encode()


def save(project: Project, record: RunRecord, data: bytes | None = None) -> Path:
    """Write the run record atomically (``data``: its :func:`serialized` bytes, if made)."""
    path = run_dir(project, record.id) / RUN_FILE
    with _saving:
        write_bytes(path, data if data is not None else serialized(record))
    return path


def load(project: Project, run_id: str) -> RunRecord:
    path = run_dir(project, run_id) / RUN_FILE
    if not path.is_file():
        raise RunRecordError(f"no run {run_id!r}: {path} does not exist")
    try:
        return RunRecord.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        count = exc.error_count()
        raise RunRecordError(f"{path} is not a valid run record ({count} errors)") from exc


def list_runs(project: Project) -> list[RunRecord]:
    """Every readable run, newest first by creation time (unreadable folders are skipped,
    never touched). Ids alone do not order runs created within the same second: their
    suffix is random."""
    if not project.runs.is_dir():
        return []
    records = []
    for folder in project.runs.iterdir():
        if (folder / RUN_FILE).is_file():
            try:
                records.append(load(project, folder.name))
            except RunRecordError:
                continue
    return sorted(records, key=lambda record: (record.created, record.id), reverse=True)


def latest_run(project: Project) -> RunRecord:
    runs = list_runs(project)
    if not runs:
        raise RunRecordError(f"no runs yet under {project.runs}")
    return runs[0]
