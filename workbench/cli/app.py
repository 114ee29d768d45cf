"""The command line's shared parts: the app, options, run reporting, exit codes, entry point.

Exit codes: 0 success, 1 a stage or gate failed, 2 usage or configuration error,
3 awaiting approval.
"""

from __future__ import annotations

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



def _reporter(as_json: bool) -> Any:
    from workbench.progress import JsonReporter, LiveReporter, PlainReporter, ci_log_style

    if as_json:
        return JsonReporter()
    if sys.stdout.isatty() and ci_log_style() is None:
        return LiveReporter()
    return PlainReporter(style=ci_log_style())


def _drive(execute: Any, as_json: bool) -> Any:
    """Run ``execute(reporter)`` with progress output, notifications (``pipeline.yaml``'s
    ``notifications``) and CI-friendly signal handling."""
    from workbench.operations.notify import NotifyingReporter, notifier_for
    from workbench.progress import LiveReporter

    signal.signal(signal.SIGTERM, _terminated)  # CI cancels with SIGTERM: record, then exit
    reporter = _reporter(as_json)
    notifier = notifier_for(_project(), warn=lambda text: typer.echo(f"warning: {text}",
                                                                       err=True))
    try:
        with reporter if isinstance(reporter, LiveReporter) else nullcontext():
            return execute(NotifyingReporter(reporter, notifier) if notifier else reporter)
    finally:
        if notifier:
            notifier.close()


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
    """The run's :class:`~workbench.pipeline.state.RunOptions` from the command line."""
    from workbench.pipeline.runner import default_jobs
    from workbench.pipeline.state import RunOptions

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


def _run_id(project: Project, run_id: str) -> str:
    from workbench.pipeline.state import latest_run

    return latest_run(project).id if run_id == "latest" else run_id



def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)



def main() -> None:
    """Console entry point: map user mistakes to one clear message and exit code 2."""
    from workbench.audit.ledger import LedgerError
    from workbench.audit.redact import SecretError
    from workbench.execution.executors import ExecutorError
    from workbench.governance.approvals import ApprovalRefused, ApprovalUsageError
    from workbench.governance.bundle import BundleError
    from workbench.governance.identity import IdentityError
    from workbench.governance.journal import JournalError
    from workbench.pipeline.runner import ResumeError
    from workbench.pipeline.state import RunRecordError

    try:
        code = app(standalone_mode=False)  # returns the code of a raised typer.Exit
    except typer.Exit as done:
        code = done.exit_code
    except ConfigError as exc:
        count = len(exc.problems)
        _fail(exc, f"configuration invalid ({count} problem{'s' if count > 1 else ''}):\n"
                   + "\n".join(f"  {p}" for p in exc.problems))
    except (ProjectNotFoundError, RunRecordError, UsageError, ApprovalUsageError, IdentityError,
            ResumeError, BundleError, SecretError, ExecutorError) as exc:
        _fail(exc, str(exc))
    except (ApprovalRefused, JournalError, LedgerError) as exc:
        _fail(exc, str(exc), EXIT_FAILED)
    except Exception as exc:
        if _is_usage_error(exc):  # a missing or bad option: click's own message, exit 2
            exc.show()  # type: ignore[attr-defined]
            sys.exit(EXIT_USAGE)
        if isinstance(exc, typer.Abort):
            typer.echo("interrupted", err=True)
            sys.exit(130)
        if state["debug"]:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (use --debug for a traceback)", err=True)
        sys.exit(EXIT_FAILED)


    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _is_usage_error(exc: Exception) -> bool:
    """Click's usage errors (typer >= 0.17 carries its own copy of click's exceptions)."""
    import click

    try:
        from typer._click.exceptions import ClickException as TyperClickException
    except ImportError:  # older typer uses click itself
        TyperClickException = click.ClickException  # noqa: N806
    return isinstance(exc, click.ClickException | TyperClickException)


def _fail(exc: Exception, message: str, code: int = EXIT_USAGE) -> None:
    if state["debug"]:
        raise exc
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)
