"""Rollback: serve the previous version approved for an environment and move its alias back.

Only a version that reached the environment through its gate (or, for an ungated environment,
through the pipeline) is a rollback target. Each rollback is journalled under
``reports/rollbacks/`` and in the ledger: trigger, observed values, threshold, from and to
version, actor, reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from workbench.audit import ledger
from workbench.config import Config
from workbench.governance import journal
from workbench.governance.identity import Identity
from workbench.project import Project

ROLLBACKS_DIR = "rollbacks"


class RollbackError(RuntimeError):
    """No version to roll back to, or the requested one was never approved there."""


def approved_versions(project: Project, model: str, environment: str, gated: bool
                      ) -> list[str]:
    """Versions that were promoted into ``environment``, in the order they first got there."""
    seen: list[str] = []
    for entry in ledger.entries(project.reports):
        data = entry.get("data") or {}
        if entry.get("event") != "alias_move" or data.get("model") != model \
                or data.get("alias") != environment:
            continue
        if gated and not data.get("approvals"):
            continue  # moved by hand or by a stage, not through the gate
        version = str(data.get("to_version"))
        if version not in seen:
            seen.append(version)
    return seen


def choose_target(approved: list[str], current: str | None, to: str | None,
                  environment: str) -> str:
    """The version to roll back to: ``to`` if it was approved, else the one approved before
    ``current``."""
    if to is not None:
        if to not in approved:
            raise RollbackError(
                f"version {to} was never approved for {environment}; approved: "
                f"{', '.join(approved) or 'none'}")
        if to == current:
            raise RollbackError(f"{environment} already serves version {to}")
        return to
    earlier = approved[:approved.index(current)] if current in approved else \
        [v for v in approved if v != current]
    if not earlier:
        raise RollbackError(
            f"no earlier version was approved for {environment} (approved: "
            f"{', '.join(approved) or 'none'}; serving {current or 'nothing'}); "
            f"nothing to roll back to")
    return earlier[-1]


def current_version(project: Project, config: Config, environment: str, client: Any
                    ) -> str | None:
    """The version the environment serves, else the one its alias names."""
    from mlflow.exceptions import MlflowException

    from workbench.deploy import serving

    running = serving(project, config, environment)
    if running is not None:
        return str(running.version)
    try:
        return str(client.get_model_version_by_alias(config.model.name, environment).version)
    except MlflowException:
        return None


def rollback(project: Project, config: Config, environment: str, actor: Identity, *,
             to: str | None = None, trigger: str = "manual", reason: str = "",
             observed: Any = None, threshold: Any = None, run_id: str | None = None
             ) -> dict[str, Any]:
    """Roll ``environment`` back; return the journalled record."""
    from mlflow import MlflowClient

    from workbench.deploy import rollback_to
    from workbench.registry.store import resolve

    if environment not in config.environments:
        raise RollbackError(f"unknown environment {environment!r}; configs/environments.yaml "
                            f"defines {', '.join(config.environments)}")
    model = config.model.name
    tracking_uri = resolve(project, config.pipeline.mlflow).tracking_uri
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    current = current_version(project, config, environment, client)
    approved = approved_versions(project, model, environment,
                                 gated=environment in config.gates.policies)
    target = choose_target(approved, current, to, environment)
    endpoint = rollback_to(project, config, environment, model, target, tracking_uri)
    if str(endpoint.version) != target:
        raise RollbackError(f"{environment} serves version {endpoint.version} after rolling "
                            f"back to {target}")
    from workbench.registry.aliases import move_alias

    move_alias(client, tracking_uri, model, environment, target)
    client.set_model_version_tag(model, target, f"workbench.{environment}.rolled_back_from",
                                 str(current))
    record = {"kind": "rollback", "environment": environment, "model": model,
              "from_version": current, "to_version": target, "trigger": trigger,
              "reason": reason or f"{trigger} rollback", "observed": observed,
              "threshold": threshold, "actor": actor.model_dump(), "run_id": run_id,
              "target": config.environments[environment].deploy.target,
              "endpoint": endpoint.url,
              "time": datetime.now(UTC).isoformat(timespec="milliseconds")}
    folder = project.reports / ROLLBACKS_DIR
    entry = journal.append(folder, record)
    ledger.append(project.reports, "rollback", actor=actor.model_dump(), run_id=run_id,
                  data={k: record[k] for k in ("environment", "model", "from_version",
                                               "to_version", "trigger", "reason", "observed",
                                               "threshold", "endpoint")},
                  files=[folder / f"{entry['seq']:04d}.json"])
    _notify(project, record)
    _update_site(project)
    return record


def _update_site(project: Project) -> None:
    """Show the rollback on the report site's environment history (best effort: the record
    is complete already)."""
    import contextlib

    from workbench.reports.site import build_environments

    with contextlib.suppress(Exception):
        build_environments(project)


def _notify(project: Project, record: dict[str, Any]) -> None:
    from workbench.operations.notify import notifier_for

    notifier = notifier_for(project)
    if notifier:
        notifier({"event": "rolled_back", **{k: v for k, v in record.items() if k != "kind"}})
        notifier.close()
