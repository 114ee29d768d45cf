"""``workbench reports``: build the static report site, serve it read-only on 127.0.0.1."""

from __future__ import annotations

import errno
import time
from typing import Annotated

import typer

from workbench.cli.app import UsageError, _project, app

reports_app = typer.Typer(no_args_is_help=True, help="The report site under reports/.")
app.add_typer(reports_app, name="reports")


@reports_app.command()
def build(
    render: Annotated[bool, typer.Option(help="Also render archived notebooks that have no "
                                         "HTML yet.")] = True,
) -> None:
    """Rebuild the index, every run page, the environment history and the compare page."""
    from workbench.reports import site

    project = _project()
    started = time.perf_counter()
    rendered = site.render_missing(project) if render else 0
    index = site.build(project)
    typer.echo(f"built {index} ({rendered} notebooks rendered) in "
               f"{time.perf_counter() - started:.1f} s")


@reports_app.command()
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 8000,
    token: Annotated[str | None, typer.Option(envvar="WORKBENCH_REPORTS_TOKEN",
                                              help="Require this access token.")] = None,
) -> None:
    """Serve reports/ read-only on 127.0.0.1 (nothing outside it; CSP sandbox on every page)."""
    from workbench.reports import site
    from workbench.reports.server import serve as serve_reports

    project = _project()
    if not (project.reports / "index.html").exists():
        site.build(project)
    try:
        serve_reports(project.reports, host="127.0.0.1", port=port, token=token)
    except ValueError as exc:  # a token with unusable characters
        raise UsageError(f"--token: {exc}") from None
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise UsageError(f"--port {port}: 127.0.0.1:{port} is in use by another process; "
                         f"choose another port") from None
