"""``workbench audit``: verify the ledger and the archive (in full, or from a checkpoint), print
the anchor to publish."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli.app import EXIT_FAILED, UsageError, _project, app

audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit trail.")
app.add_typer(audit_app, name="audit")


@audit_app.command()
def verify(
    anchor: Annotated[Path | None, typer.Option(help="A saved anchor (JSON from `workbench "
                                                "audit anchor`): also catches truncation and "
                                                "a rewritten ledger.")] = None,
    since: Annotated[Path | None, typer.Option(
        help="Verify incrementally from a checkpoint (JSON from `workbench audit anchor` of "
        "this version, kept outside the archive): the bytes before it must match its "
        "prefix_sha256; only the entries after it, the files they name and the folders of "
        "their runs (and rollbacks/, drift/) are checked; files of earlier entries are "
        "trusted. With --anchor too, that anchor must be at or after the checkpoint.")] = None,
    files: Annotated[bool, typer.Option(help="Re-hash every referenced file.")] = True,
    local: Annotated[bool, typer.Option("--local", help="With a shared archive (archive.url): "
                                        "verify this checkout's cache of it (reports/) instead "
                                        "of the store.")] = False,
) -> None:
    """Recompute every ledger hash and link and re-hash every archived file; name each problem
    (with --since: only what was appended after a checkpoint)."""
    from workbench.audit import coverage
    from workbench.audit.ledger import AnchorError, index
    from workbench.audit.ledger import verify as verify_ledger
    from workbench.audit.object_store import open_store
    from workbench.audit.shared import archive_settings

    project = _project(sync=False)
    saved = _read_anchor(anchor, "--anchor")
    checkpoint = _read_anchor(since, "--since")
    if saved and checkpoint and _seq(saved) < _seq(checkpoint):
        raise UsageError(f"--anchor {anchor}: at seq {saved['seq']}, before the --since "
                         f"checkpoint (seq {checkpoint['seq']}); a full verify checks it")
    started = time.perf_counter()
    shared = None if local else archive_settings(project)
    if shared is not None:  # the team's archive, in the store itself
        from workbench.audit import remote, remote_verify

        store = remote.RemoteArchive(open_store(*shared), project.reports)
        result = remote_verify.verify(store, saved, check_files=files, since=checkpoint)
        typer.echo(f"verified in the shared archive {store.url} (--local: this cache)",
                   err=True)
        _report(result, saved, started)
        return
    try:
        result = verify_ledger(project.reports, saved, check_files=files, since=checkpoint)
    except AnchorError as exc:
        raise UsageError(f"--since {since}: {exc}") from None
    if files:  # the archive beside the ledger: records, run records, files nothing recorded
        runs = result.runs if checkpoint is not None else None
        covered = coverage.check(project.reports, index(project.reports, runs), runs)
        result.problems += covered.problems
        for note in covered.notes:
            typer.echo(f"note: {note}", err=True)
        for what, count in covered.predating.items():
            typer.echo(f"note: {count} item(s) not checked for {what}: they predate that "
                       f"check", err=True)
    _report(result, saved, started)


def _report(result: Any, saved: dict[str, Any] | None, started: float) -> None:
    took = time.perf_counter() - started
    for problem in result.problems:
        typer.echo(f"FAIL {problem}", err=True)
    verdict = "verified" if result.ok else f"FAILED ({len(result.problems)} problems)"
    scope = (f" from seq {result.since}: {result.entries} new entries" if result.since is not None
             else f": {result.entries} entries")
    typer.echo(f"ledger {verdict}{scope}, {result.files} files "
               f"({result.bytes / 1e6:.1f} MB) in {took:.2f} s"
               + (f"; anchored at seq {saved['seq']}" if saved and result.ok else ""))
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


def _read_anchor(path: Path | None, option: str) -> dict[str, Any] | None:
    """The anchor saved in ``path`` (None without one); a UsageError naming the file."""
    if path is None:
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{option} {path}: not a readable anchor ({exc})") from None
    if not isinstance(saved, dict):
        raise UsageError(f"{option} {path}: expected a JSON object with seq and hash")
    return saved


def _seq(anchor: dict[str, Any]) -> int:
    seq = anchor.get("seq")
    return seq if isinstance(seq, int) else 0


@audit_app.command("anchor")
def anchor_command(
    output: Annotated[Path | None, typer.Option(help="Also write it to this file.")] = None,
) -> None:
    """Print the ledger's checkpoint to publish outside the archive: the head (seq and hash),
    the ledger's length there (offset) and the sha256 of those bytes (prefix_sha256), which
    `audit verify --since` starts from."""
    from workbench.audit.ledger import checkpoint

    text = json.dumps(checkpoint(_project().reports), sort_keys=True)
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
