"""Bringing a run whose process died (SIGKILL, out of memory, a lost machine) back to a state
``workbench resume`` can continue from.

A run is dead when its ``run.json`` says ``running`` but nobody holds its run lock (the OS
releases it with the process). What the runner writes, in order, for each stage attempt:
``run.json`` (stage running), the staged notebook (replaced atomically after every cell), the
archived notebook (a new file, never replaced), ``run.json`` (the outcome), then the ledger
entry. So ``run.json`` is never behind the archive's recorded files, and the ledger never ahead
of ``run.json``. Recovery, repeated safely if it is itself killed:

- a torn last ledger line is set aside and recorded (:func:`workbench.audit.ledger.repair`);
- kernels the dead process left are stopped; temporary files of interrupted writes removed;
- a stage left ``running`` did not complete, whatever it had done: its partial notebook (the
  staged copy, or one archived but not yet recorded) is archived as
  ``<stage>.attempt-<n>.ipynb`` with a ``stage_attempt`` ledger entry (failure
  ``interrupted``, or the class the notebook itself records), and the stage runs again. A
  staged notebook that is not valid JSON is discarded, and the attempt says so;
- an outcome ``run.json`` holds but the ledger lacks (killed between the two) is appended now,
  as are the deploy and alias-move records a succeeded stage implies. Completed stages are
  never executed again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from workbench import run_record
from workbench.atomic import fsync_dir
from workbench.audit import archive, ledger
from workbench.audit.redact import SecretError, Secrets
from workbench.clock import utc_now
from workbench.config import FAILURE_CLASSES
from workbench.events import StageViewsMissing
from workbench.execution.reaper import stop_run_kernels, stop_run_stage_processes
from workbench.identity import Identity
from workbench.pipeline.recorder import Recorder
from workbench.project import Project
from workbench.run_record import Failure

INTERRUPTED = "the run's process ended during this attempt (killed or crashed); resumed"
# entries that say nothing of a run's outcome: the recovery's own, and records of views
BOOKKEEPING = ("run_recovered", "ledger_repaired", "run_record_saved", "stage_rendered")


def was_interrupted(record: run_record.RunRecord) -> bool:
    """Whether the run's process died: its record says ``running`` although the caller holds
    the run lock (which the OS releases with the process that held it)."""
    return record.status == "running"


class _Ledger:
    """What the ledger already holds: this run's entries and every recorded file."""

    def __init__(self, reports: Path, run_id: str):
        self.entries: list[dict[str, Any]] = []
        self.files: set[str] = set()
        for entry in ledger.entries(reports):
            self.files.update(entry.get("files") or {})
            if entry.get("run_id") == run_id:
                self.entries.append(entry)

    def has(self, event: str, stage: str | None = None, **data: Any) -> bool:
        for entry in self.entries:
            found = entry.get("data") or {}
            if entry.get("event") == event and (stage is None or found.get("stage") == stage) \
                    and all(found.get(k, v) == v for k, v in data.items()):
                return True
        return False


def recover(project: Project, recorder: Recorder, secrets: Secrets, actor: Identity,
            environment_of: Callable[[str], str], started_data: dict[str, Any]) -> list[str]:
    """Make the dead run's records consistent and its interrupted stages pending again;
    return what was done, one line each (also recorded as a ``run_recovered`` entry).
    ``record.stages`` is updated in place; the caller saves the record."""
    record = recorder.record
    who = actor.model_dump()
    notes: list[str] = []
    torn = ledger.repair(project.reports, who, record.id)
    if torn:
        kept = next(iter(torn["files"]))
        notes.append(f"the ledger ended in a torn entry ({torn['data']['bytes']} bytes): set "
                     f"aside as reports/{kept}, recorded as seq {torn['seq']}")
    killed = stop_run_kernels(project.root, record.id)
    killed += [pid for pid in stop_run_stage_processes(project.root, record.id)
               if pid not in killed]
    if killed:
        notes.append(f"stopped kernels left running: pid {', '.join(map(str, killed))}")
    _remove_temporary_files(project, record)
    known = _Ledger(project.reports, record.id)
    if not known.has("run_started"):
        recorder.run_started(actor, started_data)
        notes.append("run_started was missing from the ledger: recorded")
    for name, entry in record.stages.items():
        if entry.status == "running":
            notes.append(_interrupted(project, recorder, name, secrets, known))
        else:
            notes += _reconcile(project, recorder, name, known, actor, environment_of)
    recorder.run_recovered(actor, notes)
    return notes


def _remove_temporary_files(project: Project, record: run_record.RunRecord) -> None:
    """Temporary files of the run's own writes that a kill interrupted: ``.run.json.*`` and
    ``.<stage>.*`` beside the archive, anything in its staging folder (complete files are
    never dot-named; other writers' temporary files are left alone)."""
    prefixes = (f".{run_record.RUN_FILE}.", *(f".{name}." for name in record.stages))
    for path in _files(run_record.run_dir(project, record.id)):
        if path.name.startswith(prefixes):
            path.unlink(missing_ok=True)
    for path in _files(project.local_state / archive.STAGING / record.id):
        if path.name.startswith("."):
            path.unlink(missing_ok=True)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []


def _relative(project: Project, path: Path) -> str:
    return path.relative_to(project.reports).as_posix()


def _interrupted(project: Project, recorder: Recorder, name: str, secrets: Secrets,
                 known: _Ledger) -> str:
    """Archive what the interrupted attempt left, record it, and make the stage pending."""
    record = recorder.record
    entry = record.stages[name]
    number = len(entry.attempts) + 1
    folder = run_record.run_dir(project, record.id)
    target = folder / archive.attempt_name(name, number)
    final = folder / (entry.notebook or f"{name}.ipynb")
    staged = project.local_state / archive.STAGING / record.id / f"{name}.ipynb"
    note = f"stage {name}: attempt {number} was interrupted"
    failure, error = "interrupted", INTERRUPTED
    if not target.exists() and final.is_file() and _relative(project, final) not in known.files:
        os.replace(final, target)  # archived, never recorded: it is this attempt's notebook
        fsync_dir(folder)
    if target.exists():
        staged.unlink(missing_ok=True)
    elif staged.is_file():
        if _is_json(staged):
            try:
                archive.archive_notebook(project, record.id, staged, secrets, target.name)
            except SecretError as exc:
                error = f"{INTERRUPTED}; its notebook was not archived: {exc}"
        else:
            staged.unlink()
            error = f"{INTERRUPTED}; its partial notebook was incomplete and was discarded"
    if target.exists():
        failure, error = _recorded_failure(target) or (failure, error)
        note += f"; its notebook is archived as {target.name}"
    attempt = run_record.Attempt(number=number, failure=cast(Failure, failure), error=error,
                                 notebook=target.name if target.exists() else None,
                                 started=entry.started, finished=utc_now())
    if not known.has("stage_attempt", name, attempt=number):
        recorder.attempt(name, attempt)
    entry.attempts.append(attempt)
    entry.status, entry.notebook, entry.started, entry.finished = "pending", None, None, None
    entry.duration_s, entry.error, entry.failure, entry.outputs = None, None, None, {}
    return note + "; it runs again"


def _is_json(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def _recorded_failure(path: Path) -> tuple[str, str] | None:
    """The failure class and message the attempt's notebook records (see ``annotate``)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        return None
    info = found.get("workbench") if isinstance(found, dict) else None
    if isinstance(info, dict) and info.get("failure") in FAILURE_CLASSES:
        return info["failure"], str(info.get("message") or info["failure"])
    return None


def _reconcile(project: Project, recorder: Recorder, name: str, known: _Ledger,
               actor: Identity, environment_of: Callable[[str], str]) -> list[str]:
    """Append what ``run.json`` records for a finished stage but the ledger lacks."""
    record = recorder.record
    entry = record.stages[name]
    notes: list[str] = []
    folder = run_record.run_dir(project, record.id)
    for attempt in entry.attempts:
        if not known.has("stage_attempt", name, attempt=attempt.number):
            recorder.attempt(name, attempt)
            notes.append(f"stage {name}: attempt {attempt.number} recorded in the ledger")
    if entry.status == "reused" and not known.has("stage_reused", name):
        recorder.stage(name, None)
        notes.append(f"stage {name}: reuse recorded in the ledger")
    if entry.status not in ("succeeded", "failed"):
        return notes
    archived = folder / entry.notebook if entry.notebook else None
    archived = archived if archived is not None and archived.is_file() else None
    if not known.has("stage_executed", name, status=entry.status,
                     attempt=len(entry.attempts) + 1):
        recorder.stage(name, archived)  # its HTML and MLflow artifacts follow (listeners)
        notes.append(f"stage {name}: its {entry.status} outcome recorded in the ledger")
    elif archived is not None and not archived.with_suffix(".html").exists():
        recorder.bus.emit(StageViewsMissing(project=project, record=record, stage=name,
                                            archived=archived, secrets=recorder.secrets))
    if entry.status == "succeeded":
        notes += _side_effects(project, recorder, name, known, actor, environment_of)
    return notes


def _side_effects(project: Project, recorder: Recorder, name: str, known: _Ledger,
                  actor: Identity, environment_of: Callable[[str], str]) -> list[str]:
    """The alias-move and deploy records a succeeded stage's outputs imply."""
    from workbench.governance.promotion import read_moves

    record = recorder.record
    notes = []
    entry = record.stages[name]
    if isinstance(entry.output("alias_move"), dict) and record.model_version is not None and \
            not any(m.via == f"stage {name}" for m in read_moves(project, record.id)):
        recorder.alias_output(name, actor)
        notes.append(f"stage {name}: its alias move recorded")
    if entry.output("served_version") is not None and not known.has("deploy", name):
        recorder.deploy(name, environment_of(name), actor)
        notes.append(f"stage {name}: its deploy recorded in the ledger")
    return notes
