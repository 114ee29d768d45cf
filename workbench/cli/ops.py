"""Operations: ``workbench rollback`` and ``workbench drift``."""

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

    project = _project(write=True)
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
    """The report site's environments page shows the rollback or drift check (best effort: the
    record is complete already)."""
    import contextlib

    from workbench.reports.site import build_environments

    with contextlib.suppress(Exception):
        build_environments(project)


@app.command()
def drift(
    env: Annotated[str, typer.Option("--env", help="Environment whose endpoint to check.")],
    since: Annotated[str | None, typer.Option("--since", metavar="TIME", help="Only requests "
                     "logged since: an ISO time (2026-12-07T10:00) or a duration ago "
                     "(30m, 24h, 7d).")] = None,
    version: Annotated[str | None, typer.Option("--version", help="The version whose log to "
                       "check (default: the one ENV serves).")] = None,
    labels: Annotated[str | None, typer.Option("--labels", metavar="FILE", help="Outcomes "
                      "that arrived later (CSV or Parquet): the realised performance of the "
                      "logged predictions against ENV's objectives.")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="The column joining "
                         "labels to logged requests (default: inference_log.id_column).")
                         ] = None,
    label_column: Annotated[str | None, typer.Option("--label-column", help="The outcome's "
                            "column in FILE (default: model.yaml's target).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The record as JSON.")] = False,
) -> None:
    """Compare the requests ENV's endpoint logged with the served version's training baseline.

    Each feature (and the predictions) gets a named statistic against the environment's
    `drift` thresholds: Kolmogorov-Smirnov for numbers, the population stability index for
    categories. With --labels, the logged predictions joined with the outcomes that arrived
    later are scored and judged against ENV's objectives. The result is a record of
    `reports/drift/` in the ledger. Exit 1 on drift when the policy's `on_breach` is `fail`
    (the default) or `rollback`, or when the realised performance misses an objective; 2 when
    there is nothing to compare.
    """
    import json

    from workbench.config import load_config
    from workbench.identity import current
    from workbench.operations.drift_check import DriftError, check_drift

    project = _project()
    config = load_config(project.configs)
    try:
        outcomes = _read_labels(labels) if labels else None
        report = check_drift(project, config, env, current(None), since=_since(since),
                             version=version, labels=outcomes, id_column=id_column,
                             label_column=label_column)
    except DriftError as exc:
        raise UsageError(f"drift --env {env}: {exc}") from None
    _show_on_site(project)
    typer.echo(json.dumps(report.record.model_dump(mode="json"), indent=2) if as_json
               else report.describe())
    if report.failing:
        raise typer.Exit(1)


def _read_labels(path: str) -> Any:
    """The labels file as a DataFrame (CSV or Parquet, by suffix)."""
    from workbench.datasets import READERS, resolve_path

    file = resolve_path(path)
    reader = READERS.get(file.suffix.lower())
    if reader is None or not file.is_file():
        raise UsageError(f"--labels {path}: expected a CSV or Parquet file"
                         + ("" if file.is_file() else f"; there is no {file}"))
    return reader(file)


def _since(text: str | None) -> float:
    """``--since`` as epoch seconds (0: everything logged)."""
    import time
    from datetime import datetime

    from workbench.config import parse_duration

    if not text:
        return 0.0
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"--since {text!r}: expected an ISO time (2026-12-07T10:00) or a "
                         f"duration ago (30m, 24h, 7d)") from None
