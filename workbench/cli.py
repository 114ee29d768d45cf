"""The ``workbench`` command line: parses, calls the library, formats output.

Exit codes: 0 success, 1 a stage or gate failed, 2 usage or configuration error,
3 awaiting approval.
"""

from __future__ import annotations

import json
import signal
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.config import ConfigError
from workbench.project import Project, ProjectNotFoundError, find_project

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AWAITING = 0, 1, 2, 3

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Notebook-driven ML release workbench.")
state: dict[str, Any] = {"debug": False, "project": None}


class UsageError(Exception):
    """A user mistake: one clear message, exit 2."""


def _project() -> Project:
    start = state["project"]
    return find_project(Path(start) if start is not None else None)


@app.callback()
def _options(
    project: Annotated[Path | None, typer.Option(help="Project folder (default: search "
                                                 "upwards from the current folder).")] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    state["project"], state["debug"] = project, debug


@app.command()
def validate() -> None:
    """Check configs and notebooks without starting a kernel."""
    from workbench.pipeline.validate import load_and_validate

    project = _project()
    config = load_and_validate(project)
    stages = ", ".join(s.name for s in config.pipeline.stages)
    typer.echo(f"{project.root}: configuration valid; pipeline {config.pipeline.name!r} "
               f"({stages}); environments {', '.join(config.environments)}")


@app.command()
def run(
    env: Annotated[str, typer.Option("--env", help="Environment to run for.")] = "dev",
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per event.")] = False,
) -> None:
    """Run the pipeline: every stage through papermill, archived under reports/runs/."""
    from workbench.pipeline.runner import run_pipeline
    from workbench.pipeline.validate import load_and_validate
    from workbench.progress import JsonReporter, LiveReporter, PlainReporter

    project = _project()
    config = load_and_validate(project)
    if env not in config.environments:
        raise UsageError(f"--env {env}: configs/environments.yaml defines "
                         f"{', '.join(config.environments)}")
    signal.signal(signal.SIGTERM, _terminated)  # CI cancels with SIGTERM: record, then exit
    if as_json:
        reporter: Any = JsonReporter()
    elif sys.stdout.isatty():
        reporter = LiveReporter()
    else:
        reporter = PlainReporter()
    with reporter if isinstance(reporter, LiveReporter) else nullcontext():
        record = run_pipeline(project, config, env, reporter)
    raise typer.Exit(EXIT_OK if record.status == "succeeded" else EXIT_FAILED)


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


@app.command()
def runs(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List runs, newest first."""
    from workbench.pipeline.state import list_runs

    records = list_runs(_project())
    if as_json:
        typer.echo(json.dumps([_summary(r) for r in records], indent=2))
        return
    if not records:
        typer.echo("no runs yet")
    for record in records:
        version = f" v{record.model_version.version}" if record.model_version else ""
        typer.echo(f"{record.id}  {record.status:<9}  {record.environment:<5}  "
                   f"{record.created[:19]}  {record.git_commit[:10]}{version}")


def _summary(record: Any) -> dict[str, Any]:
    return {"id": record.id, "status": record.status, "environment": record.environment,
            "created": record.created, "git_commit": record.git_commit,
            "model_version": record.model_version.model_dump() if record.model_version else None}


@app.command()
def status(
    run_id: Annotated[str | None, typer.Argument(help="Run id (default: the latest).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one run: stages, timings, outputs, MLflow ids, model version."""
    from workbench.pipeline import state as run_state

    project = _project()
    record = run_state.load(project, run_id) if run_id else run_state.latest_run(project)
    if as_json:
        typer.echo(record.model_dump_json(indent=2))
        return
    typer.echo(f"run {record.id}: {record.status} (pipeline {record.pipeline}, "
               f"environment {record.environment})")
    typer.echo(f"  created {record.created}  finished {record.finished or '-'}")
    dirty = " (uncommitted changes)" if record.git_dirty else ""
    typer.echo(f"  git {record.git_commit}{dirty}  config {record.config_hash[:12]}")
    typer.echo(f"  mlflow {record.tracking_uri}  runs {', '.join(record.mlflow_run_ids) or '-'}")
    if record.model_version:
        typer.echo(f"  model {record.model_version.name} v{record.model_version.version}")
    typer.echo(f"  folder {run_state.run_dir(project, record.id)}")
    for name, stage in record.stages.items():
        took = f"{stage.duration_s:.1f} s" if stage.duration_s is not None else ""
        typer.echo(f"  - {name:<12} {stage.status:<9} {took:>8}  {stage.notebook or ''}")
        if stage.error:
            typer.echo(f"      error: {stage.error}")
        for key, value in stage.outputs.items():
            typer.echo(f"      {key} = {json.dumps(value)[:100]}")


@app.command()
def stop(env: Annotated[str, typer.Argument(help="Environment whose model server to stop.")]
         ) -> None:
    """Stop the local model server of an environment."""
    from workbench.deploy import local

    stopped = local.stop(_project(), env)
    if stopped is None:
        typer.echo(f"no model server running for {env}")
    else:
        typer.echo(f"stopped {env}: {stopped.model_name} v{stopped.version} "
                   f"(pid {stopped.pid}, {stopped.url})")


def main() -> None:
    """Console entry point: map user mistakes to one clear message and exit code 2."""
    from workbench.pipeline.state import RunRecordError

    try:
        code = app(standalone_mode=False)  # returns the code of a raised typer.Exit
    except typer.Exit as done:
        code = done.exit_code
    except ConfigError as exc:
        count = len(exc.problems)
        _fail(exc, f"configuration invalid ({count} problem{'s' if count > 1 else ''}):\n"
                   + "\n".join(f"  {p}" for p in exc.problems))
    except (ProjectNotFoundError, RunRecordError, UsageError) as exc:
        _fail(exc, str(exc))
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(EXIT_USAGE)
        if isinstance(exc, click.exceptions.Abort):
            typer.echo("interrupted", err=True)
            sys.exit(130)
        if state["debug"]:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (use --debug for a traceback)", err=True)
        sys.exit(EXIT_FAILED)


    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _fail(exc: Exception, message: str) -> None:
    if state["debug"]:
        raise exc
    typer.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)
