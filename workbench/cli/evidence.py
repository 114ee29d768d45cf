"""``workbench evidence``: a release's evidence pack, and its offline verification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import EXIT_FAILED, UsageError, _project, _run_id, app

VERIFY = "verify"


@app.command()
def evidence(
    what: Annotated[str, typer.Argument(metavar="RUN | verify", help="The run whose release "
                                        "to pack ('latest' for the newest), or 'verify'.")],
    pack: Annotated[Path | None, typer.Argument(metavar="[FILE.zip]", help="With verify: "
                                                "the pack to check.")] = None,
    env: Annotated[str | None, typer.Option("--env", help="The release into ENV (default: "
                                            "the furthest environment the run reached).")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the pack here (default: "
                                                "reports/runs/RUN/evidence-ENV-<stamp>.zip, "
                                                "recorded in the ledger).")] = None,
    key: Annotated[Path | None, typer.Option(help="With verify: the attestation public key "
                                             "(default: the project's, else the pack's "
                                             "own copy).")] = None,
    anchor: Annotated[Path | None, typer.Option(help="With verify: an anchor published "
                                                "outside (`workbench audit anchor`) the "
                                                "pack's ledger segment must contain.")] = None,
) -> None:
    """Pack a release's evidence (model card, notebooks as HTML, approval and rollback
    records, attestations, ledger entries with their chain to an anchor, an EU AI Act Annex IV
    / SR 11-7 index) into one zip; or `evidence verify FILE.zip` it offline."""
    if what == VERIFY:
        if pack is None:
            raise UsageError("evidence verify: name the pack (FILE.zip)")
        _verify(pack, key, anchor)
        return
    if pack is not None:
        raise UsageError(f"evidence {what} {pack}: only `evidence verify` takes a file")
    from workbench.reports.evidence.pack import build

    project = _project()
    made = build(project, _run_id(project, what), env, output)
    shown = made.path
    if shown.is_relative_to(project.root):
        shown = shown.relative_to(project.root)
    typer.echo(f"evidence pack {shown}: {made.files} files, "
               f"{'signed' if made.signed else 'not signed (no attestation key at hand)'}; "
               f"{made.missing} Annex IV / SR 11-7 item(s) missing (see annex-iv.html)")


def _verify(pack: Path, key: Path | None, anchor: Path | None) -> None:
    from workbench.reports.evidence.check import verify

    saved = None
    if anchor is not None:
        try:
            saved = json.loads(anchor.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--anchor {anchor}: not a readable anchor ({exc})") from None
    found = verify(pack, key or _project_key(), saved)
    for note in found.notes:
        typer.echo(f"note: {note}", err=True)
    for problem in found.problems:
        typer.echo(f"FAIL {problem}", err=True)
    if not found.ok:
        typer.echo(f"evidence pack {pack}: FAILED ({len(found.problems)} problems)")
        raise typer.Exit(EXIT_FAILED)
    typer.echo(f"evidence pack {pack}: verified ({found.files} files, {found.entries} ledger "
               f"entries)")


def _project_key() -> Path | None:
    """The project's attestation public key, when run inside a project that configures one."""
    from workbench.config import ConfigError, load_config
    from workbench.project import ProjectNotFoundError, find_project

    try:
        project = find_project()
        public = load_config(project.configs).pipeline.attestation.public_key
    except (ProjectNotFoundError, ConfigError):
        return None
    return project.root / public if public and (project.root / public).is_file() else None
