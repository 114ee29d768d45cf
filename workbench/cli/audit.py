"""``workbench audit``: verify the ledger and the archive, print the anchor to publish."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.app import EXIT_FAILED, UsageError, _project, app

audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit trail.")
app.add_typer(audit_app, name="audit")


@audit_app.command()
def verify(
    anchor: Annotated[Path | None, typer.Option(help="A saved anchor (JSON from `workbench "
                                                "audit anchor`): also catches truncation and "
                                                "a rewritten ledger.")] = None,
    files: Annotated[bool, typer.Option(help="Re-hash every referenced file.")] = True,
) -> None:
    """Recompute every ledger hash and link and re-hash every archived file; name each problem."""
    from workbench.audit import coverage
    from workbench.audit.ledger import index
    from workbench.audit.ledger import verify as verify_ledger

    project = _project()
    saved = None
    if anchor is not None:
        try:
            saved = json.loads(anchor.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--anchor {anchor}: not a readable anchor ({exc})") from None
        if not isinstance(saved, dict):
            raise UsageError(f"--anchor {anchor}: expected a JSON object with seq and hash")
    started = time.perf_counter()
    result = verify_ledger(project.reports, saved, check_files=files)
    if files:  # the archive beside the ledger: records, run records, files nothing recorded
        covered = coverage.check(project.reports, index(project.reports))
        result.problems += covered.problems
        for what, count in covered.predating.items():
            typer.echo(f"note: {count} item(s) not checked for {what}: they predate that "
                       f"check", err=True)
    took = time.perf_counter() - started
    for problem in result.problems:
        typer.echo(f"FAIL {problem}", err=True)
    verdict = "verified" if result.ok else f"FAILED ({len(result.problems)} problems)"
    typer.echo(f"ledger {verdict}: {result.entries} entries, {result.files} files "
               f"({result.bytes / 1e6:.1f} MB) in {took:.2f} s"
               + (f"; anchored at seq {saved['seq']}" if saved and result.ok else ""))
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


@audit_app.command("anchor")
def anchor_command(
    output: Annotated[Path | None, typer.Option(help="Also write it to this file.")] = None,
) -> None:
    """Print the ledger's head (seq and hash) to publish outside the archive."""
    from workbench.audit.ledger import head

    text = json.dumps(head(_project().reports), sort_keys=True)
    if output is not None:
        output.write_text(text + "\n", encoding="utf-8")
    typer.echo(text)


@audit_app.command()
def repair() -> None:
    """Set aside a torn or garbage tail of the ledger (lines that are no valid entries), and
    record that; never cuts history (an edited entry in the middle is refused)."""
    from workbench.audit.ledger import TORN_DIR
    from workbench.audit.ledger import repair as repair_ledger
    from workbench.identity import current

    project = _project()
    done = repair_ledger(project.reports, current().model_dump(), garbage=True)
    if done is None:
        typer.echo("the ledger ends in a valid entry: nothing to repair")
        return
    typer.echo(f"set aside {done['data']['bytes']} bytes after offset {done['data']['offset']} "
               f"in reports/{TORN_DIR}/; recorded as seq {done['seq']} (ledger_repaired)")
