"""``workbench canary status|promote|abort --env ENV``: manual control of a canary held at a
step (``pause: manual``), under the environment's approval policy
(:mod:`workbench.governance.canary_control`).

Exit codes: 0 the decision was recorded (or the status shown), 1 the policy refused it (the
attempt is recorded), 2 nothing to decide (no canary held at a manual step on ENV) or a
usage error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from workbench.cli.app import SignOption, _project, app

canary_app = typer.Typer(no_args_is_help=True, help="Manual control of a canary rollout held "
                         "at a step (pause: manual).")
app.add_typer(canary_app, name="canary")

EnvOption = Annotated[str, typer.Option("--env", help="Environment whose canary this is.")]
AsOption = Annotated[str | None, typer.Option("--as", help="Your name (default: the CI or "
                                              "JupyterHub user, else the OS user).")]
CommentOption = Annotated[str | None, typer.Option("--comment", help="Why; kept in the "
                                                   "record.")]


@canary_app.command()
def status(env: EnvOption,
           as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False) -> None:
    """The canary on ENV: its step, weights, this window's traffic per version, the
    decisions so far and what the held step awaits."""
    from workbench import clock
    from workbench.governance import canary_control

    found = canary_control.status(_project(), env)
    if as_json:
        typer.echo(json.dumps(None if found is None else {
            **found.model_dump(mode="json"),
            "awaited": found.verdict.awaited() if found.verdict else None}, indent=2))
        return
    if found is None:
        typer.echo(f"no canary is running on {env}")
        return
    typer.echo(canary_control.describe(found, clock.utc_now()))


def _decide(env: str, decision: Literal["promote", "abort"], name: str | None,
            comment: str | None, sign: Path | None) -> None:
    from workbench import identity
    from workbench.governance import canary_control

    who = identity.reviewer(name, env)
    entry, verdict = canary_control.submit(_project(write=True), env, decision, who, comment,
                                           via="cli", sign_with=sign)
    signed = f", signed ({entry.signature.fingerprint})" if entry.signature else ""
    typer.echo(f"recorded #{entry.seq}: {decision} by {who} for the canary of {entry.model} "
               f"v{entry.version} on {env}, step {entry.step} ({entry.weight:g}%){signed}")
    typer.echo(verdict.awaited())


@canary_app.command()
def promote(env: EnvOption, approver: AsOption = None, comment: CommentOption = None,
            sign: SignOption = None) -> None:
    """Promote the step the canary on ENV holds: once the policy's quorum of approvers has,
    the rollout goes on to its next step."""
    _decide(env, "promote", approver, comment, sign)


@canary_app.command()
def abort(env: EnvOption, approver: AsOption = None, comment: CommentOption = None,
          sign: SignOption = None) -> None:
    """Abort the canary on ENV at the step it holds: one approver suffices; every request
    goes back to the serving version and the candidate is stopped (a rollback record with
    trigger manual)."""
    _decide(env, "abort", approver, comment, sign)
