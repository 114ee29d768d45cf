"""The command line's shared parts: the app, options, run reporting, exit codes, entry point.

Exit codes: 0 success, 1 a stage or gate failed, 2 usage or configuration error,
3 awaiting approval.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.errors import (
    EXIT_AWAITING,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    WorkbenchError,
)
from workbench.project import Project, find_project

__all__ = ["EXIT_AWAITING", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "UsageError", "app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Notebook-driven ML release workbench.")
options: dict[str, Any] = {"debug": False, "project": None}  # the global options given


def _project(write: bool = False, sync: bool = True) -> Project:
    """The project; with a shared archive (``archive.url``), its cache pulled first (once per
    command) and, with ``write``, the store's writes proven before anything runs."""
    start = options["project"]
    project = find_project(Path(start) if start is not None else None)
    if sync:
        done = options.setdefault("synced", set())
        if (project.root, write) not in done and (project.root, True) not in done:
            from workbench.audit.shared import prepare

            prepare(project, write=write)
            done.add((project.root, write))
    return project


@app.callback()
def _options(
    project: Annotated[Path | None, typer.Option(help="Project folder (default: search "
                                                 "upwards from the current folder).")] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
    pipeline: Annotated[str | None, typer.Option(
        "--pipeline", "-P", metavar="NAME", help="The pipeline (configs/pipelines/NAME/) of a "
        "project of several; may also follow the command.")] = None,
) -> None:
    options["project"], options["debug"] = project, debug
    if pipeline is not None:  # load_config, here and in the kernels, selects it
        from workbench.config import PIPELINE_ENV_VAR

        os.environ[PIPELINE_ENV_VAR] = pipeline


PIPELINE_FLAGS = ("--pipeline", "-P")


def hoist_pipeline(argv: list[str]) -> list[str]:
    """``--pipeline NAME`` given after the command (``workbench run --pipeline a``) moved in
    front of it, where the global option is parsed; nothing after ``--`` is touched."""
    moved: list[str] = []
    rest: list[str] = []
    items = iter(argv)
    for item in items:
        if item == "--":
            rest += [item, *items]
            break
        if item in PIPELINE_FLAGS:
            moved += [item, next(items, "")]
        elif item.startswith("--pipeline="):
            moved.append(item)
        else:
            rest.append(item)
    return moved + rest


def _reporter(as_json: bool) -> Any:
    from workbench.cli.progress import JsonReporter, LiveReporter, PlainReporter, ci_log_style

    if as_json:
        return JsonReporter()
    if sys.stdout.isatty() and ci_log_style() is None:
        return LiveReporter()
    return PlainReporter(style=ci_log_style())


def _drive(execute: Any, as_json: bool) -> Any:
    """Run ``execute(listeners)`` with progress output, notifications (``pipeline.yaml``'s
    ``notifications``) and CI-friendly signal handling (the run adds its standard listeners:
    the stage cache's index, HTML and MLflow artifacts, the report site)."""
    from workbench.cli.progress import LiveReporter
    from workbench.operations.notify import notifier_for

    signal.signal(signal.SIGTERM, _terminated)  # CI cancels with SIGTERM: record, then exit
    reporter = _reporter(as_json)
    notifier = notifier_for(_project(), warn=lambda text: typer.echo(f"warning: {text}",
                                                                       err=True))
    listeners: list[Any] = [reporter]
    if notifier:
        listeners.append(notifier)
    with reporter if isinstance(reporter, LiveReporter) else nullcontext():
        return execute(listeners)


JunitOption = Annotated[Path | None, typer.Option("--junit", metavar="PATH",
                        help="Write JUnit XML: one test case per stage and gate.")]
SummaryOption = Annotated[Path | None, typer.Option("--summary", metavar="PATH", help="Append "
                          "a Markdown summary (also to $GITHUB_STEP_SUMMARY when set).")]
JobsOption = Annotated[int | None, typer.Option("--jobs", "-j", min=1, metavar="N", help="At most "
                       "N stages at once (default: the cores this process may use).")]
NoWarmOption = Annotated[bool, typer.Option("--no-warm", help="Do not pre-start the kernels of "
                         "the stages that come next.")]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="Execute every stage, even one "
                          "the stage cache has an identical execution of.")]
NoForkOption = Annotated[bool, typer.Option("--no-fork", help="Start each pre-started kernel "
                         "as its own interpreter instead of forking it from a process that "
                         "imported the stages' preload modules once.")]


def run_options(jobs: int | None, no_warm: bool, no_cache: bool, no_fork: bool = False
                ) -> Any:
    """The run's :class:`~workbench.run_record.RunOptions` from the command line."""
    from workbench.pipeline.runner import default_jobs
    from workbench.run_record import RunOptions

    return RunOptions(jobs=jobs or default_jobs(), warm=not no_warm, cache=not no_cache,
                      fork=not no_fork)


def _report_ci(record: Any, junit: Path | None, summary: Path | None) -> None:
    from workbench.ci import junit as junit_xml
    from workbench.ci import summary as markdown

    if junit is not None:
        junit_xml.write(record, junit)
    markdown.write(record, summary)
    markdown.write_outputs(record)


def _finish_run(record: Any, target: str | None = None, junit: Path | None = None,
                summary: Path | None = None) -> None:
    """Explain how the run ended and exit with its code (0, 1 failed, 3 awaiting approval)."""
    _report_ci(record, junit, summary)
    for name, stage in record.stages.items():
        if stage.status == "awaiting_approval" and stage.gate:
            from workbench.governance.approvals import Verdict

            typer.echo(Verdict.model_validate(stage.gate).describe(record.id), err=True)
        elif stage.status == "failed":
            typer.echo(f"stage {name} failed: {stage.error}", err=True)
    if record.status == "awaiting_approval":
        typer.echo(f"run {record.id} is awaiting approval; continue with "
                   f"`workbench resume {record.id}`", err=True)
        raise typer.Exit(EXIT_AWAITING)
    if record.status == "paused":
        typer.echo(f"run {record.id} promoted to {target}; later environments wait for "
                   f"`workbench promote {record.id} --to ENV`")
    raise typer.Exit(EXIT_OK if record.status in ("succeeded", "paused") else EXIT_FAILED)


RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run id, or 'latest'.")]
SignOption = Annotated[Path | None, typer.Option(
    "--sign", metavar="KEY", envvar="WORKBENCH_SIGNING_KEY",
    help="Sign the decision with your SSH key (a private key file, or its .pub when ssh-agent "
         "holds it), as git signs commits; configs/allowed_signers maps it to your name.")]


def _run_id(project: Project, run_id: str) -> str:
    """The run ``run_id`` names (``latest``: of the pipeline ``--pipeline`` selects, if any);
    a run of another pipeline than ``--pipeline`` names is a usage error."""
    from workbench.config import PIPELINE_ENV_VAR
    from workbench.run_record import RunRecordError, list_runs, load

    wanted = os.environ.get(PIPELINE_ENV_VAR) or None
    if run_id == "latest":
        runs = [r for r in list_runs(project) if wanted is None or r.pipeline == wanted]
        if not runs:
            raise RunRecordError(f"no runs yet under {project.runs}"
                                 + (f" of pipeline {wanted!r}" if wanted else ""))
        return runs[0].id
    if wanted is not None:
        try:
            pipeline = load(project, run_id).pipeline
        except RunRecordError:
            return run_id  # the command names the missing run itself
        if pipeline != wanted:
            raise UsageError(f"run {run_id} is of pipeline {pipeline!r}, not --pipeline "
                             f"{wanted!r}; commands on a run take its pipeline from the run")
    return run_id


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)



def main() -> None:
    """Console entry point: a :class:`~workbench.errors.WorkbenchError` is one clear message
    and its exit code (a traceback only with ``--debug``)."""
    try:
        # returns the code of a raised typer.Exit
        code = app(args=hoist_pipeline(sys.argv[1:]), standalone_mode=False)
    except typer.Exit as done:
        code = done.exit_code
    except WorkbenchError as exc:
        _fail(exc, exc.user_message(), exc.exit_code)
    except Exception as exc:
        if _is_usage_error(exc):  # a missing or bad option: click's own message, exit 2
            exc.show()  # type: ignore[attr-defined]
            sys.exit(EXIT_USAGE)
        if isinstance(exc, typer.Abort):
            typer.echo("interrupted", err=True)
            sys.exit(130)
        if options["debug"]:
            raise
        full = _disk_full(exc)
        if full is not None:  # what was archived before is kept; nothing half-written counts
            typer.echo(f"error: no space left on the device{full}; free some and run the "
                       f"command again (use --debug for a traceback)", err=True)
            sys.exit(EXIT_FAILED)
        typer.echo(f"error: {type(exc).__name__}: {exc} (use --debug for a traceback)", err=True)
        sys.exit(EXIT_FAILED)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _disk_full(exc: BaseException) -> str | None:
    """`` (writing FILE)`` (or empty) when ``exc`` or an exception it came from says the disk
    is full (ENOSPC, or SQLite's "database or disk is full"); None otherwise."""
    import errno

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return f" (writing {seen.filename})" if seen.filename else ""
        if "database or disk is full" in str(seen):
            return " (writing the MLflow store)"
        seen = seen.__cause__ or seen.__context__
    return None


def _is_usage_error(exc: Exception) -> bool:
    """Click's usage errors (typer >= 0.17 carries its own copy of click's exceptions)."""
    import click

    kinds: tuple[type[Exception], ...] = (click.ClickException,)
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        kinds += (TyperClickException,)
    except ImportError:  # older typer uses click itself
        pass
    return isinstance(exc, kinds)


def _fail(exc: Exception, message: str, code: int = EXIT_USAGE) -> None:
    if options["debug"]:
        raise exc
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)
