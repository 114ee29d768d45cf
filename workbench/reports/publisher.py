"""Publishing a run as it goes: every archived stage rendered to HTML and logged to MLflow, by a
listener of the run's events (:mod:`workbench.events`; the site's own listener is
:class:`workbench.reports.site.SiteBuilder`). Neither can fail a release whose record is
already safe in the archive and the ledger: a failure is a warning.

Each stage's archived notebook (and its HTML) become artifacts of that stage's MLflow run: the
one it reports as ``mlflow_run_id``, or a small run of its own named ``<run-id>/<stage>``. That
run is tagged with the ledger sequence number of the stage's entry, so MLflow and the audit
trail point at each other.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from workbench.audit import ledger
from workbench.audit.redact import Secrets
from workbench.errors import EXIT_FAILED, WorkbenchError
from workbench.events import Bus, StageRecorded, StageViewsMissing
from workbench.execution import forked_calls
from workbench.project import Project
from workbench.run_record import RunRecord


class LeakInView(WorkbenchError, RuntimeError):
    """A rendered page would show a secret's value (in a form the notebook's checks missed)."""

    exit_code = EXIT_FAILED


def render_stage(project: Project, record: RunRecord, name: str, archived: Path,
                 secrets: Secrets | None = None) -> Path:
    """``<stage>.html`` beside the archived notebook, through the project's offline template;
    scanned like the notebook (character references and escapes decoded) before it is kept,
    then recorded in the ledger (``stage_rendered``) so ``audit verify`` covers it."""
    from workbench.reports.render import copy_static, render_notebook

    copy_static(project.reports)
    target = archived.with_suffix(".html")
    render_notebook(archived, target, static_url="../../static",
                    title=f"{record.id} / {name}", run_id=record.id, stage=name)
    leaked = secrets.found_in(target.read_text(encoding="utf-8", errors="replace")) \
        if secrets else []
    if leaked:
        target.unlink(missing_ok=True)
        raise LeakInView(f"its page would show the value of secret {leaked[0]}; not published")
    ledger.append(project.reports, "stage_rendered", actor=None, run_id=record.id,
                  data={"stage": name, "notebook": archived.name}, files=[target])
    return target


def log_stage(record: RunRecord, name: str, files: list[Path], ledger_seq: int,
              cwd: Path | None = None) -> None:
    """Log ``files`` under ``workbench/<stage>/`` of the stage's MLflow run: in a process forked
    from the run's kernel fork server while there is one (MLflow is imported there already;
    this process then never imports it), else here."""
    entry = record.stages[name]
    payload = {"tracking_uri": record.tracking_uri, "experiment": record.experiment,
               "run_id": record.id, "stage": name, "status": entry.status,
               "trained_run": entry.output("trained_run"),
               "files": [str(path) for path in files], "ledger_seq": ledger_seq}
    forked, error = forked_calls.call(f"{__name__}:log_files", payload, cwd or Path.cwd())
    if not forked:
        log_files(payload)
    elif error is not None:
        raise RuntimeError(error)


def log_files(payload: dict[str, Any]) -> str:
    """What :func:`log_stage` does with MLflow; returns the MLflow run's id."""
    from workbench.registry.client import client_for

    client = client_for(payload["tracking_uri"])
    name = payload["stage"]
    run_id = payload["trained_run"]
    created = not (isinstance(run_id, str) and run_id)
    if created:
        experiment = client.get_experiment_by_name(payload["experiment"])
        if experiment is None:
            return ""
        tags: dict[str, Any] = {"workbench.run_id": payload["run_id"], "workbench.stage": name,
                                "workbench.status": payload["status"]}
        run = client.create_run(experiment.experiment_id,
                                run_name=f"{payload['run_id']}/{name}", tags=tags)
        run_id = run.info.run_id
    for path in payload["files"]:
        client.log_artifact(run_id, path, artifact_path=f"workbench/{name}")
    client.set_tag(run_id, "workbench.ledger_seq", str(payload["ledger_seq"]))
    client.set_tag(run_id, f"workbench.ledger_seq.{name}", str(payload["ledger_seq"]))
    if created:
        client.set_terminated(run_id, "FINISHED" if payload["status"] == "succeeded"
                              else "FAILED")
    return str(run_id)


def publish_views(project: Project, record: RunRecord, name: str, archived: Path, seq: int,
                  secrets: Secrets | None = None) -> list[str]:
    """The HTML rendering and the MLflow artifacts of a stage already in the ledger (entry
    ``seq``); returns warnings instead of raising."""
    warnings: list[str] = []
    files = [archived]
    try:
        files.append(render_stage(project, record, name, archived, secrets))
    except LeakInView as exc:
        warnings.append(f"stage {name}: {exc}")
    except Exception as exc:  # noqa: BLE001 - reported, the archive is already complete
        warnings.append(f"stage {name}: HTML rendering failed: {exc}")
    try:
        log_stage(record, name, files, seq, project.root)
    except Exception as exc:  # noqa: BLE001 - reported, the archive is already complete
        warnings.append(f"stage {name}: logging to MLflow failed: {exc}")
    return warnings


class StagePublisher:
    """Renders and logs each recorded stage on a background thread, off the critical path;
    ``drain`` waits for it (the scheduler does before a stage that measures, and at the end)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")
        self._pending: list[Future[None]] = []
        self._bus: Bus | None = None

    def bind(self, bus: Bus) -> None:
        self._bus = bus

    def on_stage_recorded(self, event: StageRecorded) -> None:
        if event.archived is not None and event.publish:
            self._pending.append(self._pool.submit(self._publish, event))

    def on_stage_views_missing(self, event: StageViewsMissing) -> None:
        """A recovered run's stage whose HTML was never rendered: render it now."""
        try:
            render_stage(event.project, event.record, event.stage, event.archived,
                         event.secrets)
        except Exception as exc:  # noqa: BLE001 - the record is complete; HTML is a view
            self._warn(f"stage {event.stage}: HTML rendering failed: {exc}")

    def _publish(self, event: StageRecorded) -> None:
        if event.archived is None:
            return
        for warning in publish_views(event.project, event.record, event.stage, event.archived,
                                     event.seq, event.secrets):
            self._warn(warning)

    def _warn(self, message: str) -> None:
        if self._bus is not None:
            self._bus.warn(message)

    def drain(self, timeout: float | None = None) -> None:
        pending, self._pending = self._pending, []
        wait(pending, timeout=timeout)

    def close(self) -> None:
        self.drain()
        self._pool.shutdown(wait=True)
