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
    tracking_uri_secret: Annotated[bool, typer.Option(
        "--tracking-uri-secret", help="MLflow's tracking URI comes from the "
        "MLFLOW_TRACKING_URI secret, not configs/pipeline.yaml (with archive.url: the jobs "
        "share the archive and MLflow instead of passing artifacts).")] = False,
    publish_site: Annotated[str, typer.Option(
        "--publish-site", metavar="pages|none", help="Publish the report site from the shared "
        "archive to the CI's static pages (GitHub Pages, GitLab Pages, Jenkins' HTML "
        "Publisher), or not.")] = "none",
) -> None:
    """Generate pipeline definitions from the project (its environments, gates, stages and
    files) and write them into its repository. With archive.url and a tracking URI the jobs
    share that state (no artifacts) and this prints the secrets to set (names only)."""
    from workbench.ci.definitions import SYSTEMS, DefinitionExists, secrets_to_set, stale
    from workbench.ci.definitions import init as write_definitions
    from workbench.ci.shape import PUBLISH_SITE, NotShared
    from workbench.config import load_config

    if system not in SYSTEMS:
        raise UsageError(f"unknown CI system {system!r}; expected one of "
                         f"{', '.join(sorted(SYSTEMS))}")
    if install is not None and not install.strip():
        raise UsageError("--install: give the command that installs the project")
    if publish_site not in PUBLISH_SITE:
        raise UsageError(f"--publish-site {publish_site!r}: expected one of "
                         f"{', '.join(PUBLISH_SITE)}")
    project = _project(sync=False)  # reads configs/ and the repository, not the archive
    config = load_config(project.configs)
    try:
        written, shape = write_definitions(project.root, config, system, force, install,
                                           tracking_uri_secret, publish_site)
    except (DefinitionExists, NotShared) as exc:
        raise UsageError(str(exc)) from None
    for path in written:
        typer.echo(f"wrote {path.relative_to(project.root)}")
    for line in secrets_to_set(shape, system):
        typer.echo(line)
    for note in shape.notes:
        typer.echo(f"note: {note}", err=True)
    for old in stale(project.root, system, written):
        typer.echo(f"note: {old} is from an earlier `ci init`; this pipeline has no use for "
                   f"it: remove it", err=True)
