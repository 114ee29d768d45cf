"""``workbench ci``: pipeline definitions for GitHub Actions, GitLab CI and Jenkins, generated
from the project's configuration."""

from __future__ import annotations

from typing import Annotated

import typer

from workbench.cli.app import UsageError, _project, app

ci_app = typer.Typer(no_args_is_help=True, help="CI pipeline definitions.")
app.add_typer(ci_app, name="ci")


@ci_app.command("init")
def init(
    system: Annotated[str, typer.Argument(help="github, gitlab or jenkins.")],
    force: Annotated[bool, typer.Option(help="Replace existing definitions.")] = False,
    install: Annotated[str | None, typer.Option(
        "--install", metavar="CMD", help="The command that installs the project (default: "
        "from requirements.txt or pyproject.toml, else workbench itself).")] = None,
) -> None:
    """Generate pipeline definitions from the project (its environments, gates, stages and
    files) and write them into its repository."""
    from workbench.ci.definitions import SYSTEMS, DefinitionExists, stale
    from workbench.ci.definitions import init as write_definitions
    from workbench.config import load_config

    if system not in SYSTEMS:
        raise UsageError(f"unknown CI system {system!r}; expected one of "
                         f"{', '.join(sorted(SYSTEMS))}")
    if install is not None and not install.strip():
        raise UsageError("--install: give the command that installs the project")
    project = _project()
    config = load_config(project.configs)
    try:
        written, shape = write_definitions(project.root, config, system, force, install)
    except DefinitionExists as exc:
        raise UsageError(str(exc)) from None
    for path in written:
        typer.echo(f"wrote {path.relative_to(project.root)}")
    for note in shape.notes:
        typer.echo(f"note: {note}", err=True)
    for old in stale(project.root, system, written):
        typer.echo(f"note: {old} is from an earlier `ci init`; this pipeline has no use for "
                   f"it: remove it", err=True)
