"""Operations: ``workbench rollback``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from workbench.cli.app import UsageError, _project, app


@app.command()
def rollback(
    env: Annotated[str, typer.Option("--env", help="Environment to roll back.")],
    to: Annotated[str | None, typer.Option("--to", metavar="VERSION", help="Version to serve "
                  "(default: the one approved for ENV before the current one).")] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why; kept in the record.")] = "",
    claimed: Annotated[str | None, typer.Option("--as", metavar="NAME", help="Who rolls back "
                       "(default: the platform's or the OS user).")] = None,
) -> None:
    """Serve the previous approved version of ENV again and move ENV's alias back.

    Only versions approved for ENV are targets. The rollback is recorded with its trigger,
    from and to versions, actor and reason (`reports/rollbacks/`, the ledger).
    """
    from workbench.config import load_config
    from workbench.identity import current
    from workbench.operations.rollback import RollbackError
    from workbench.operations.rollback import rollback as roll_back

    project = _project()
    config = load_config(project.configs)
    try:
        record = roll_back(project, config, env, current(claimed), to=to, trigger="manual",
                           reason=reason)
    except RollbackError as exc:
        raise UsageError(f"rollback --env {env}: {exc}") from None
    _show_on_site(project)
    typer.echo(f"rolled back {env}: {record.model} v{record.from_version} -> "
               f"v{record.to_version}, serving at {record.endpoint}")


def _show_on_site(project: Any) -> None:
    """The report site's environment history shows the rollback (best effort: the record is
    complete already)."""
    import contextlib

    from workbench.reports.site import build_environments

    with contextlib.suppress(Exception):
        build_environments(project)
