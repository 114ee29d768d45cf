"""``workbench init``: start a project from a template shipped inside the package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import app


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder of the new project (created if "
                                              "missing; default: this one).")] = Path("."),
    template: Annotated[str, typer.Option("--template", "-t", help="Template to start from "
                                          "(`--list` shows them).")] = "classifier",
    list_templates: Annotated[bool, typer.Option("--list", help="Print the templates, one a "
                                                 "line, and exit.")] = False,
) -> None:
    """Write a new project: configs, notebooks without outputs, .gitignore, README."""
    from workbench import scaffold

    if list_templates:
        for found in scaffold.templates().values():
            typer.echo(f"{found.name}\t{found.description}")
        return
    written = scaffold.init_project(directory, template)
    shown = directory if str(directory) != "." else Path.cwd()
    typer.echo(f"{shown}: new project from template {template!r} ({len(written)} files)")
    step = "" if str(directory) == "." else f"cd {directory} && "
    typer.echo(f"next: {step}git init && workbench validate && workbench run")
