"""The recorder: the one writer of a run's record (``run.json``) and of its ledger entries.

For every event of a run it saves the run record first, then appends the ledger entry, then
tells the listeners (see :mod:`workbench.events`). So ``run.json`` is never behind what the
ledger says of a stage, which is what crash recovery (:mod:`workbench.pipeline.recover`)
relies on. The one exception is the run's end: ``run_<status>`` is appended before the record
says so, because a record that says "finished" is never recovered, and the ledger must then
already hold the outcome.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

from workbench import run_record
from workbench.audit import ledger, remote
from workbench.audit.redact import Secrets
from workbench.digests import file_sha256
from workbench.events import AliasMoved, Bus, Deployed, RunRecorded, StageRecorded
from workbench.identity import Identity
from workbench.project import Project
from workbench.run_record import Attempt, RunRecord


class Recorder:
    """Records one run: ``save``, then the ledger, then the listeners."""

    def __init__(self, project: Project, record: RunRecord, bus: Bus,
                 secrets: Secrets | None = None):
        self.project, self.record, self.bus = project, record, bus
        self.secrets = secrets or Secrets({})
        self._lock = threading.RLock()  # stages finishing in parallel threads record in turn

    # ---------------------------------------------------------------- the run record only

    def save(self) -> Path:
        """Save the run record as it is now (a status change with no ledger entry)."""
        with self._lock:
            path = run_record.save(self.project, self.record)
            remote.save_state(self.project.reports, self.record.id)
            return path

    # ---------------------------------------------------------------- run events

    def run_started(self, actor: Identity, data: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.save()
            return self._append("run_started", actor.model_dump(), data)

    def run_finished(self, actor: Identity, ledger_has_it: bool = False) -> None:
        """The run's outcome: the ledger first (unless ``ledger_has_it``: a recovered run
        that had finished), then the record; then ``run_recorded`` for the listeners."""
        record = self.record
        with self._lock:
            body = run_record.serialized(record)
            digest = hashlib.sha256(body).hexdigest()  # of the record about to be written
            if not ledger_has_it:
                self._append("run_" + record.status, actor.model_dump(),
                             {"status": record.status,
                              "model_version": record.model_version and
                              record.model_version.model_dump(),
                              "record_sha256": digest})
            else:  # the outcome was recorded before the crash; the record as written now is
                self._append("run_record_saved", actor.model_dump(),
                             {"status": record.status, "record_sha256": digest})
            run_record.save(self.project, record, body)
            remote.save_state(self.project.reports, record.id)
        self.bus.emit(RunRecorded(project=self.project, record=record))

    def run_recovered(self, actor: Identity, notes: list[str]) -> dict[str, Any]:
        with self._lock:
            return self._append("run_recovered", actor.model_dump(), {"notes": notes})

    # ---------------------------------------------------------------- stage events

    def stage(self, name: str, archived: Path | None, publish: bool = True) -> dict[str, Any]:
        """A stage that ran (or was reused): the record, its ``stage_executed`` or
        ``stage_reused`` entry (with the archived notebook's digest), then the listeners
        (``publish``: whether its HTML and MLflow artifacts are wanted; not for a stage cut
        short by Ctrl-C, whose run is ending)."""
        record = self.record
        entry = record.stages[name]
        data: dict[str, Any] = {"stage": name, "status": entry.status,
                                "duration_s": entry.duration_s, "error": entry.error,
                                "notebook": entry.notebook, "reused_from": entry.reused_from}
        if entry.cache_key:
            data["cache_key"] = entry.cache_key
        if entry.reuse:
            data["reuse"] = entry.reuse
        if entry.status == "reused":  # the pointer to the original, with the digest it has now
            original = run_record.notebook_path(self.project, record, name)
            if original is not None and original.is_file():
                data["notebook_sha256"] = file_sha256(original)
        else:
            data.update(failure=entry.failure, attempt=len(entry.attempts) + 1)
        event = "stage_reused" if entry.status == "reused" else "stage_executed"
        actor = entry.actor.model_dump() if entry.actor else None
        with self._lock:
            self.save()
            appended = self._append(event, actor, data, [archived] if archived else [])
        self.bus.emit(StageRecorded(project=self.project, record=record, stage=name,
                                    archived=archived, seq=appended["seq"], publish=publish,
                                    secrets=self.secrets))
        return appended

    def attempt(self, name: str, attempt: Attempt) -> dict[str, Any]:
        """An attempt that did not count (retried, or cut short), with its notebook."""
        entry = self.record.stages[name]
        archived = run_record.run_dir(self.project, self.record.id) / attempt.notebook \
            if attempt.notebook else None
        data = {"stage": name, "attempt": attempt.number, "failure": attempt.failure,
                "error": attempt.error, "notebook": attempt.notebook}
        actor = entry.actor.model_dump() if entry.actor else None
        with self._lock:
            self.save()
            return self._append("stage_attempt", actor, data, [archived] if archived else [])

    def deploy(self, name: str, environment: str, actor: Identity) -> None:
        """A stage that served a model (an output in role ``served_version``) is a
        ``deploy``."""
        record = self.record
        entry = record.stages[name]
        served, endpoint = entry.output("served_version"), entry.output("endpoint")
        if served is None:
            return
        model = record.model_version.name if record.model_version else None
        version = str(served)
        with self._lock:
            self._append("deploy", actor.model_dump(),
                         {"stage": name, "environment": environment, "model": model,
                          "version": version, "endpoint": endpoint})
        self.bus.emit(Deployed(stage=name, run_id=record.id, environment=environment,
                               model=model, version=version, endpoint=endpoint))

    def alias_output(self, name: str, actor: Identity) -> dict[str, Any] | None:
        """An alias a stage moved itself (an output in role ``alias_move``: alias, from,
        to)."""
        from workbench.governance.promotion import record_move

        record = self.record
        move = record.stages[name].output("alias_move")
        if not isinstance(move, dict) or not move.get("alias") or record.model_version is None:
            return None
        previous = move.get("from")
        with self._lock:
            return record_move(self.project, record.id, alias=str(move["alias"]),
                               model=record.model_version.name,
                               from_version=str(previous) if previous else None,
                               to_version=str(move.get("to")), actor=actor,
                               via=f"stage {name}", approvals=[], bundle_digest=None)

    def alias_moved(self, move: dict[str, Any]) -> None:
        """Tell the listeners of an alias move the governance layer recorded."""
        self.bus.emit(AliasMoved(alias=move["alias"], model=move["model"],
                                 from_version=move["from_version"],
                                 to_version=move["to_version"]))

    # ----------------------------------------------------------------

    def _append(self, event: str, actor: dict[str, Any] | None, data: dict[str, Any],
                files: list[Path] | None = None) -> dict[str, Any]:
        return ledger.append(self.project.reports, event, actor=actor, run_id=self.record.id,
                             data=data, files=files)
