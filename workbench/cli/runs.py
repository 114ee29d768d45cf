"""Commands that start, continue and inspect runs."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from workbench.cli.app import (
    JobsOption,
    JunitOption,
    NoCacheOption,
    NoForkOption,
    NoWarmOption,
    RunArg,
    SignOption,
    SummaryOption,
    UsageError,
    _drive,
    _finish_run,
    _project,
    _run_id,
    app,
    run_options,
)


@app.command()
def validate() -> None:
    """Check configs and notebooks without starting a kernel (every pipeline of a project of
    several, unless --pipeline names one)."""
    import os

    from workbench.config import PIPELINE_ENV_VAR, ConfigError, pipeline_names
    from workbench.pipeline.validate import load_and_validate, validation_warnings

    project = _project(sync=False)
    selected = os.environ.get(PIPELINE_ENV_VAR) or None
    names: list[str | None] = [selected] if selected else [*pipeline_names(project.configs)]
    problems = []
    for name in names or [None]:
        try:
            config = load_and_validate(project, name)
        except ConfigError as exc:
            problems += exc.problems
            continue
        for warning in validation_warnings(config):
            typer.echo(f"warning: {warning}", err=True)
        stages = ", ".join(s.name for s in config.pipeline.stages)
        typer.echo(f"{project.root}: configuration valid; pipeline {config.pipeline.name!r} "
                   f"({stages}); environments {', '.join(config.environments)}; model "
                   f"{config.model.name!r}")
    if problems:
        raise ConfigError(problems)


@app.command()
def run(
    env: Annotated[str, typer.Option("--env", help="Environment to run for.")] = "dev",
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per event.")] = False,
    stage: Annotated[str | None, typer.Option("--stage", help="Run only this stage.")] = None,
    start: Annotated[str | None, typer.Option("--from", help="Run this stage and everything "
                                              "after it.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Run this stage and everything "
                                              "before it.")] = None,
    base: Annotated[str | None, typer.Option("--base", metavar="RUN", help="Run to reuse "
                    "unselected stages from (default: the newest that has them).")] = None,
    junit: JunitOption = None,
    summary: SummaryOption = None,
    executor: Annotated[str, typer.Option("--executor", help="Where stages run: local "
                        "(papermill here) or kubernetes (a Job per stage).")] = "local",
    jobs: JobsOption = None,
    no_warm: NoWarmOption = False,
    no_cache: NoCacheOption = False,
    no_fork: NoForkOption = False,
    params: Annotated[list[str] | None, typer.Option(
        "-p", "--param", metavar="STAGE.PARAM=VALUE",
        help="Override a parameter for this run (repeatable): VALUE is YAML, typed by the "
             "notebook's annotation; model.KEY=VALUE overrides a configs/model.yaml value "
             "that stages reference.")] = None,
) -> None:
    """Run the pipeline: every stage through papermill, archived under reports/runs/.

    The run stops at a gate without enough approvals (exit 3); `workbench resume` goes on.
    A partial run (--stage, --from, --until) reuses the other stages it needs from an
    earlier run, recorded as reused with a pointer to the original. Independent stages run
    side by side (--jobs); a stage whose inputs are unchanged since an earlier execution is
    reused from the stage cache unless --no-cache (never a deploy, gate, load test or monitor).
    """
    from workbench.pipeline import overrides
    from workbench.pipeline.runner import find_base, start_run
    from workbench.pipeline.validate import load_and_validate
    from workbench.stage_graph import SelectionError, needed_upstream, select

    project = _project(write=True)
    config = load_and_validate(project)
    given = overrides.from_command_line(project, config, params or [])
    if env not in config.environments:
        raise UsageError(f"--env {env}: configs/environments.yaml defines "
                         f"{', '.join(config.environments)}")
    if env in config.gates.policies:
        raise UsageError(f"--env {env}: {env} is behind an approval gate; start in an "
                         f"ungated environment and promote (`workbench promote RUN --to {env}`)")
    from workbench.execution.executors import EXECUTORS

    if executor not in EXECUTORS:
        raise UsageError(f"--executor {executor}: choose one of {', '.join(EXECUTORS.names())}")
    chosen = base_run = None
    if stage or start or until:
        try:
            chosen = select(config, stage, start, until)
        except SelectionError as exc:
            raise UsageError(str(exc)) from None
        needed = needed_upstream(config, chosen)
        if needed or base:  # a selection that needs nothing from earlier runs reuses nothing
            base_run = find_base(project, config, needed,
                                 _run_id(project, base) if base else None)
    options = run_options(jobs, no_warm, no_cache, no_fork)
    record = _drive(lambda report: start_run(project, config, env, report, chosen, base_run,
                                             executor, options, given), as_json)
    _finish_run(record, junit=junit, summary=summary)


@app.command()
def rerun(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="Run id, or 'latest'.")],
    failed: Annotated[bool, typer.Option("--failed", help="Only the failed stages and those "
                                         "they held up.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    junit: JunitOption = None,
    summary: SummaryOption = None,
    jobs: JobsOption = None,
    no_warm: NoWarmOption = False,
    no_cache: NoCacheOption = False,
    no_fork: NoForkOption = False,
) -> None:
    """Run again as a new run; with --failed, reuse every stage that succeeded in RUN (and
    its parameter overrides, -p)."""
    from workbench import run_record
    from workbench.pipeline import overrides
    from workbench.pipeline.runner import start_run
    from workbench.pipeline.validate import load_and_validate
    from workbench.stage_graph import ancestors

    if not failed:
        raise UsageError("rerun needs --failed (to run everything again, use `workbench run`)")
    project = _project(write=True)
    config = load_and_validate(project)
    earlier = run_record.load(project, _run_id(project, run_id))
    redo = {n for n, e in earlier.stages.items() if e.status in ("failed", "skipped")}
    if not redo:
        raise UsageError(f"run {earlier.id} has no failed stage (it is {earlier.status})")
    unknown = sorted(set(earlier.stages) ^ {s.name for s in config.pipeline.stages})
    if unknown:
        raise UsageError(f"the pipeline's stages changed since run {earlier.id} "
                         f"({', '.join(unknown)}); start a new run")
    for name in sorted(redo):
        gate = earlier.stages[name].gate
        if gate and gate.get("state") == "rejected":
            raise UsageError(f"gate {name} was rejected in run {earlier.id}; a rejected "
                             f"release is not rerun: start a new run")
    for name, entry in earlier.stages.items():
        if entry.status in ("pending", "awaiting_approval"):
            redo.add(name)  # never started: part of the rerun too
    upstream = ancestors(config)
    redo |= {up for name in redo for up in upstream[name] if config.stage(up).gate}
    options = run_options(jobs, no_warm, no_cache, no_fork)
    given = overrides.from_record(project, config, earlier.overrides)
    record = _drive(lambda report: start_run(project, config, earlier.environment, report,
                                             redo, earlier, earlier.executor, options, given),
                    as_json)
    _finish_run(record, junit=junit, summary=summary)


@app.command()
def resume(run_id: RunArg, as_json: Annotated[bool, typer.Option("--json")] = False,
           junit: JunitOption = None, summary: SummaryOption = None) -> None:
    """Continue a run that stopped at a gate, or whose process died (killed, out of memory),
    with the configuration it started with; completed stages are not executed again."""
    from workbench.pipeline.runner import resume_run

    project = _project(write=True)
    run_id = _run_id(project, run_id)
    record = _drive(lambda report: resume_run(project, run_id, report), as_json)
    _finish_run(record, junit=junit, summary=summary)



@app.command()
def promote(
    run_id: RunArg,
    to: Annotated[str, typer.Option("--to", help="Environment to promote into.")],
    approver: Annotated[str | None, typer.Option("--as", help="Approve first, as NAME.")] = None,
    comment: Annotated[str | None, typer.Option(help="Comment for that approval.")] = None,
    sign: SignOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    junit: JunitOption = None,
    summary: SummaryOption = None,
) -> None:
    """Short path: (optionally approve, then) resume up to and including ENV, no further."""
    from workbench.cli.gates import _decide
    from workbench.pipeline.runner import resume_run

    project = _project(write=True)
    run_id = _run_id(project, run_id)
    if approver is not None:
        _decide(project, run_id, to, "approve", approver, comment, sign)
    record = _drive(lambda report: resume_run(project, run_id, report, until=to), as_json)
    _finish_run(record, target=to, junit=junit, summary=summary)


@app.command()
def runs(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List runs, newest first (of the --pipeline given, if any)."""
    import os

    from workbench.config import PIPELINE_ENV_VAR
    from workbench.run_record import list_runs

    wanted = os.environ.get(PIPELINE_ENV_VAR) or None
    records = [r for r in list_runs(_project()) if wanted is None or r.pipeline == wanted]
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
    run_id: Annotated[str | None, typer.Argument(metavar="[RUN]", help="Run id, or 'latest' "
                                                  "(the default).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one run: stages, timings, outputs, MLflow ids, model version."""
    from workbench import run_record

    project = _project()
    record = run_record.load(project, _run_id(project, run_id or "latest"))
    if as_json:
        typer.echo(record.model_dump_json(indent=2))
        return
    typer.echo(f"run {record.id}: {record.status} (pipeline {record.pipeline}, "
               f"environment {record.environment})")
    typer.echo(f"  created {record.created}  finished {record.finished or '-'}")
    dirty = " (uncommitted changes)" if record.git_dirty else ""
    typer.echo(f"  git {record.git_commit}{dirty}  config {record.config_hash[:12]}")
    typer.echo(f"  mlflow {record.tracking_uri}  runs {', '.join(record.mlflow_run_ids) or '-'}")
    if record.overrides:
        shown = "  ".join(f"{key}={json.dumps(value)}" for key, value in record.overrides.items())
        typer.echo(f"  overrides {shown}")
    if record.model_version:
        typer.echo(f"  model {record.model_version.name} v{record.model_version.version}")
    typer.echo(f"  folder {run_record.run_dir(project, record.id)}")
    for name, stage in record.stages.items():
        took = f"{stage.duration_s:.1f} s" if stage.duration_s is not None else ""
        typer.echo(f"  - {name:<12} {stage.status:<9} {took:>8}  {stage.notebook or ''}")
        if stage.error:
            kind = f" ({stage.failure})" if stage.failure else ""
            typer.echo(f"      error{kind}: {stage.error}")
        for attempt in stage.attempts:
            typer.echo(f"      attempt {attempt.number} ({attempt.failure}): "
                       f"{attempt.error or ''} {attempt.notebook or ''}".rstrip())
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
    from workbench.config import load_config, pipeline_names
    from workbench.deploy import local

    project = _project()
    key = env  # a project of several pipelines keeps a server per model (--pipeline)
    if pipeline_names(project.configs):
        key = local.server_key(project, load_config(project.configs), env)
    stopped = local.stop(project, key)
    if stopped is None:
        typer.echo(f"no model server running for {env}")
    else:
        typer.echo(f"stopped {env}: {stopped.model_name} v{stopped.version} "
                   f"(pid {stopped.pid}, {stopped.url})")


