"""Commands of approval gates and promotion, and JupyterLab."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli.app import RunArg, SignOption, UsageError, _project, _run_id, app
from workbench.project import Project


def _decide(project: Project, run_id: str, env: str, decision: Any, name: str | None,
            comment: str | None, sign: Path | None, diff_shown: str | None = None) -> None:
    from workbench import identity, run_record
    from workbench.governance import approvals

    who = identity.reviewer(name, env)
    record = run_record.load(project, run_id)
    entry, bundle, trust = approvals.submit(project, record, env, decision, who, comment,
                                            via="cli", sign_with=sign, diff_shown=diff_shown)
    verdict, _ = approvals.status(project, record, env, bundle=bundle, trust=trust)
    signed = f", signed ({entry.signature.fingerprint})" if entry.signature else ""
    typer.echo(f"recorded #{entry.seq}: {decision} by {who} for {env}, bundle "
               f"{entry.bundle_digest[:12]}{signed}, changes shown "
               f"{(entry.diff_digest or '')[:12]} (workbench diff {run_id} --env {env})")
    typer.echo(verdict.describe(run_id))


EnvOption = Annotated[str, typer.Option("--env", help="Environment whose gate this is for.")]
AsOption = Annotated[str | None, typer.Option("--as", help="Your name (default: the CI or "
                                              "JupyterHub user, else the OS user).")]


DiffOption = Annotated[str | None, typer.Option(
    "--diff", metavar="DIGEST", help="The digest `workbench diff` showed you: refused if the "
    "changes against what the environment serves are no longer those.")]


@app.command()
def approve(run_id: RunArg, env: EnvOption, approver: AsOption = None,
            comment: Annotated[str | None, typer.Option(help="Why.")] = None,
            sign: SignOption = None, diff: DiffOption = None) -> None:
    """Approve a run's release bundle for an environment."""
    project = _project(write=True)
    _decide(project, _run_id(project, run_id), env, "approve", approver, comment, sign,
            diff)


@app.command("diff")
def diff_command(run_id: RunArg, env: EnvOption,
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What a run's release changes against the version ENV serves now: parameters, data,
    notebook cells, metric deltas per objective (its digest is what an approval records)."""
    from workbench.governance import approvals, release_diff
    from workbench.run_record import load

    project = _project()
    record = load(project, _run_id(project, run_id))
    config = approvals.run_config(record)
    if env not in config.environments:
        raise UsageError(f"--env {env}: the run's configuration has environments "
                         f"{sorted(config.environments)}")
    found = release_diff.compute(project, config, record, env)
    if as_json:
        typer.echo(json.dumps({**found.model_dump(mode="json"), "digest": found.digest},
                              indent=2))
        return
    typer.echo(release_diff.text(found))


@app.command()
def reject(run_id: RunArg, env: EnvOption,
           comment: Annotated[str, typer.Option(help="Why (required).")],
           approver: AsOption = None, sign: SignOption = None) -> None:
    """Reject a run's release bundle for an environment: the gate fails when the run resumes."""
    project = _project(write=True)
    _decide(project, _run_id(project, run_id), env, "reject", approver, comment, sign)


@app.command()
def approvals(run_id: RunArg, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every decision recorded for a run, and each gate's verdict for the current bundle."""
    from workbench.governance import approvals as gov
    from workbench.governance.bundle import BundleError
    from workbench.governance.trust import TrustError
    from workbench.run_record import load

    project = _project()
    run_id = _run_id(project, run_id)
    record = load(project, run_id)
    records = gov.read_records(project, run_id)
    verdicts: dict[str, Any] = {}
    for env in gov.run_config(record).gates.policies:
        try:
            verdicts[env] = gov.status(project, record, env)[0]
        except (BundleError, TrustError) as exc:
            verdicts[env] = str(exc)
    if as_json:
        typer.echo(json.dumps({"records": [r.model_dump(mode="json") for r in records],
                               "gates": {env: v if isinstance(v, str) else v.model_dump()
                                         for env, v in verdicts.items()}}, indent=2))
        return
    if not records:
        typer.echo(f"no decisions recorded for run {run_id}")
    for r in records:
        status = "" if r.accepted else f"  REFUSED: {r.refused}"
        status = (f"  signed {r.signature.fingerprint}" if r.signature else "") + status
        typer.echo(f"#{r.seq} {r.time[:19]} {r.environment:<5} {r.decision:<7} "
                   f"{r.approver.name} ({r.approver.source}) bundle "
                   f"{r.bundle_digest[:12]}{status}")
        if r.comment:
            typer.echo(f"    {r.comment}")
    for env, verdict in verdicts.items():
        typer.echo(f"{env}: {verdict}" if isinstance(verdict, str) else verdict.describe(run_id))
        if not isinstance(verdict, str) and verdict.state == "awaiting":
            from workbench.governance.release_diff import compute, text

            typer.echo(text(compute(project, gov.run_config(record), record, env)))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def lab(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8888,
    no_browser: Annotated[bool, typer.Option("--no-browser")] = False,
    review: Annotated[str | None, typer.Option(metavar="RUN", help="Open a copy of the "
                      "approval notebook of the --env gate (the notebook of the stage with "
                      "'gate: ENV') for RUN, kept in the run's reviews/ folder.")] = None,
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
    # JupyterLab takes over this process and its signals; argv is ours, no shell involved.
    os.execv(sys.executable, argv)  # nosec B606


