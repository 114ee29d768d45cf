"""``workbench ci``: pipeline definitions for GitHub Actions, GitLab CI and Jenkins."""

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
) -> None:
    """Write ready pipeline definitions into the project's repository."""
    from workbench.ci.templates import LAYOUT, TemplateExists
    from workbench.ci.templates import init as write_templates

    if system not in LAYOUT:
        raise UsageError(f"unknown CI system {system!r}; expected one of "
                         f"{', '.join(sorted(LAYOUT))}")
    project = _project()
    try:
        written = write_templates(project.root, system, force)
    except TemplateExists as exc:
        raise UsageError(str(exc)) from None
    for path in written:
        typer.echo(f"wrote {path.relative_to(project.root)}")
