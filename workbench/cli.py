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


def _reporter(as_json: bool) -> Any:
    from workbench.progress import JsonReporter, LiveReporter, PlainReporter

    if as_json:
        return JsonReporter()
    if sys.stdout.isatty():
        return LiveReporter()
    return PlainReporter()


def _drive(execute: Any, as_json: bool) -> Any:
    """Run ``execute(reporter)`` with progress output and CI-friendly signal handling."""
    from workbench.progress import LiveReporter

    signal.signal(signal.SIGTERM, _terminated)  # CI cancels with SIGTERM: record, then exit
    reporter = _reporter(as_json)
    with reporter if isinstance(reporter, LiveReporter) else nullcontext():
        return execute(reporter)


def _finish_run(record: Any, target: str | None = None) -> None:
    """Explain how the run ended and exit with its code (0, 1 failed, 3 awaiting approval)."""
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


@app.command()
def run(
    env: Annotated[str, typer.Option("--env", help="Environment to run for.")] = "dev",
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per event.")] = False,
) -> None:
    """Run the pipeline: every stage through papermill, archived under reports/runs/.

    The run stops at a gate without enough approvals (exit 3); `workbench resume` goes on.
    """
    from workbench.pipeline.runner import start_run
    from workbench.pipeline.validate import load_and_validate

    project = _project()
    config = load_and_validate(project)
    if env not in config.environments:
        raise UsageError(f"--env {env}: configs/environments.yaml defines "
                         f"{', '.join(config.environments)}")
    if env in config.gates.policies:
        raise UsageError(f"--env {env}: {env} is behind an approval gate; start in an "
                         f"ungated environment and promote (`workbench promote RUN --to {env}`)")
    record = _drive(lambda report: start_run(project, config, env, report), as_json)
    _finish_run(record)


RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run id, or 'latest'.")]


def _run_id(project: Project, run_id: str) -> str:
    from workbench.pipeline.state import latest_run

    return latest_run(project).id if run_id == "latest" else run_id


@app.command()
def resume(run_id: RunArg, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Continue a run that stopped at a gate, with the configuration it started with."""
    from workbench.pipeline.runner import resume_run

    project = _project()
    run_id = _run_id(project, run_id)
    record = _drive(lambda report: resume_run(project, run_id, report), as_json)
    _finish_run(record)


@app.command()
def promote(
    run_id: RunArg,
    to: Annotated[str, typer.Option("--to", help="Environment to promote into.")],
    approver: Annotated[str | None, typer.Option("--as", help="Approve first, as NAME.")] = None,
    comment: Annotated[str | None, typer.Option(help="Comment for that approval.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Short path: (optionally approve, then) resume up to and including ENV, no further."""
    from workbench.pipeline.runner import resume_run

    project = _project()
    run_id = _run_id(project, run_id)
    if approver is not None:
        _decide(project, run_id, to, "approve", approver, comment)
    record = _drive(lambda report: resume_run(project, run_id, report, until=to), as_json)
    _finish_run(record, target=to)


def _decide(project: Project, run_id: str, env: str, decision: Any, name: str | None,
            comment: str | None) -> None:
    from workbench.governance import approvals, identity

    who = identity.current(name)
    entry = approvals.submit(project, run_id, env, decision, who, comment, via="cli")
    verdict, _ = approvals.status(project, run_id, env)
    typer.echo(f"recorded #{entry['seq']}: {decision} by {who} for {env}, bundle "
               f"{entry['bundle_digest'][:12]}")
    typer.echo(verdict.describe(run_id))


EnvOption = Annotated[str, typer.Option("--env", help="Environment whose gate this is for.")]
AsOption = Annotated[str | None, typer.Option("--as", help="Your name (default: the CI or "
                                              "JupyterHub user, else the OS user).")]


@app.command()
def approve(run_id: RunArg, env: EnvOption, approver: AsOption = None,
            comment: Annotated[str | None, typer.Option(help="Why.")] = None) -> None:
    """Approve a run's release bundle for an environment."""
    project = _project()
    _decide(project, _run_id(project, run_id), env, "approve", approver, comment)


@app.command()
def reject(run_id: RunArg, env: EnvOption,
           comment: Annotated[str, typer.Option(help="Why (required).")],
           approver: AsOption = None) -> None:
    """Reject a run's release bundle for an environment: the gate fails when the run resumes."""
    project = _project()
    _decide(project, _run_id(project, run_id), env, "reject", approver, comment)


@app.command()
def approvals(run_id: RunArg, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every decision recorded for a run, and each gate's verdict for the current bundle."""
    from workbench.governance import approvals as gov
    from workbench.governance.bundle import BundleError
    from workbench.pipeline.state import load

    project = _project()
    run_id = _run_id(project, run_id)
    record = load(project, run_id)
    records = gov.read_records(project, run_id)
    verdicts: dict[str, Any] = {}
    for env in gov.run_config(record).gates.policies:
        try:
            verdicts[env] = gov.status(project, run_id, env)[0]
        except BundleError as exc:
            verdicts[env] = str(exc)
    if as_json:
        typer.echo(json.dumps({"records": records, "gates": {
            env: v if isinstance(v, str) else v.model_dump() for env, v in verdicts.items()}},
            indent=2))
        return
    if not records:
        typer.echo(f"no decisions recorded for run {run_id}")
    for r in records:
        status = "" if r["accepted"] else f"  REFUSED: {r['refused']}"
        typer.echo(f"#{r['seq']} {r['time'][:19]} {r['environment']:<5} {r['decision']:<7} "
                   f"{r['approver']['name']} ({r['approver']['source']}) bundle "
                   f"{r['bundle_digest'][:12]}{status}")
        if r.get("comment"):
            typer.echo(f"    {r['comment']}")
    for env, verdict in verdicts.items():
        typer.echo(f"{env}: {verdict}" if isinstance(verdict, str) else verdict.describe(run_id))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def lab(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8888,
    no_browser: Annotated[bool, typer.Option("--no-browser")] = False,
    review: Annotated[str | None, typer.Option(metavar="RUN", help="Open a copy of "
                      "approve.ipynb for RUN, kept in the run's reviews/ folder.")] = None,
    env: Annotated[str, typer.Option("--env", help="Environment to review for.")] = "qa",
) -> None:
    """Open JupyterLab on the project (127.0.0.1 only; widget state is saved with notebooks).

    Extra arguments go to JupyterLab, e.g. `workbench lab -- --IdentityProvider.token=T`.
    """
    import os

    project = _project()
    opened = None
    if review is not None:
        from workbench.governance.review import prepare_review

        opened = prepare_review(project, _run_id(project, review), env)
        typer.echo(f"review notebook: {opened}")
    settings = project.configs / "jupyterlab"
    argv = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={project.root}",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0"]
    if settings.is_dir():
        argv.append(f"--LabApp.app_settings_dir={settings}")
    if opened is not None:
        argv.append(f"--LabApp.default_url=/lab/tree/{opened.relative_to(project.root)}")
    if no_browser:
        argv.append("--no-browser")
    argv += ctx.args
    os.environ["WORKBENCH_PROJECT"] = str(project.root)
    sys.stdout.flush()
    os.execv(sys.executable, argv)  # JupyterLab takes over this process, and its signals


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
        if stage.gate:
            gate = stage.gate
            who = ", ".join(gate["approved_by"]) or "nobody yet"
            typer.echo(f"      gate {gate['environment']}: {gate['state']}, approved by {who} "
                       f"({len(gate['approved_by'])} of {gate['quorum']}), bundle "
                       f"{gate['bundle_digest'][:12]}")
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
            ResumeError, BundleError) as exc:
        _fail(exc, str(exc))
    except (ApprovalRefused, JournalError) as exc:
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
