"""``workbench archive``: the team's shared archive (``archive.url`` in ``pipeline.yaml``) and
this checkout's cache of it (``reports/``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from workbench.cli.app import UsageError, _project, app

if TYPE_CHECKING:
    from workbench.audit.remote import RemoteArchive

archive_app = typer.Typer(no_args_is_help=True, help="The shared archive and its local cache.")
app.add_typer(archive_app, name="archive")


def _shared() -> RemoteArchive:
    from workbench.audit import remote
    from workbench.audit.shared import archive_settings

    project = _project(sync=False)
    settings = archive_settings(project)
    if settings is None:
        raise UsageError("no shared archive: set archive: {url: s3://BUCKET/PREFIX} in "
                         "configs/pipeline.yaml (the archive is reports/ alone until then)")
    return remote.attach(project.reports, *settings)


@archive_app.command()
def pull() -> None:
    """Bring reports/ up to the shared archive: new ledger entries, the files they name and
    their runs' records (every command does this when it starts)."""
    from workbench.audit import remote

    archive = _shared()
    new = remote.pull(archive)
    head = remote._local_head(archive)
    typer.echo(f"pulled {len(new)} entries from {archive.url}; reports/ is at seq "
               f"{head['seq'] if head else 0}")


@archive_app.command()
def push() -> None:
    """Adopt this checkout's ledger, files and run records into an empty shared archive (a
    project moving from a local archive to a team's)."""
    from workbench.audit import remote

    archive = _shared()
    count = remote.adopt(archive)
    typer.echo(f"adopted {count} ledger entries into {archive.url}")


@archive_app.command()
def status() -> None:
    """Where the shared archive is, and how far this cache and the store are."""
    from workbench.audit import remote

    archive = _shared()
    keys = list(archive.store.list(remote.LEDGER_PREFIX))
    head = remote._local_head(archive)
    typer.echo(f"shared archive: {archive.url}\nstore: {len(keys)} ledger entries\n"
               f"reports/ (cache): seq {head['seq'] if head else 0}")
