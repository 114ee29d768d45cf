"""Rollback: serve the previous version approved for an environment and move its alias back.

Only a version that reached the environment through its gate (or, for an ungated environment,
through the pipeline) is a rollback target. Each rollback is journalled under
``reports/rollbacks/`` and in the ledger: trigger, observed values, threshold, from and to
version, actor, reason.
"""

from __future__ import annotations

from typing import Any

from workbench.audit import journal, ledger
from workbench.clock import utc_now
from workbench.config import Config
from workbench.errors import WorkbenchError
from workbench.events import RolledBack
from workbench.identity import Identity
from workbench.project import Project
from workbench.records import CHAIN_FIELDS, RollbackRecord

ROLLBACKS_DIR = "rollbacks"


class RollbackError(WorkbenchError, RuntimeError):
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
    from workbench.deploy import serving
    from workbench.registry.client import version_holding

    running = serving(project, config, environment)
    if running is not None:
        return str(running.version)
    return version_holding(client, config.model.name, environment)


def rollback(project: Project, config: Config, environment: str, actor: Identity, *,
             to: str | None = None, trigger: str = "manual", reason: str = "",
             observed: Any = None, threshold: Any = None, run_id: str | None = None
             ) -> RollbackRecord:
    """Roll ``environment`` back; return the record (kept in ``reports/rollbacks/``)."""
    from workbench.deploy import rollback_to
    from workbench.registry.aliases import move_alias
    from workbench.registry.client import client_for
    from workbench.registry.store import resolve

    if environment not in config.environments:
        raise RollbackError(f"unknown environment {environment!r}; configs/environments.yaml "
                            f"defines {', '.join(config.environments)}")
    model = config.model.name
    tracking_uri = resolve(project, config.pipeline.mlflow).tracking_uri
    client = client_for(tracking_uri)
    current = current_version(project, config, environment, client)
    approved = approved_versions(project, model, environment,
                                 gated=environment in config.gates.policies)
    target = choose_target(approved, current, to, environment)
    endpoint = rollback_to(project, config, environment, model, target, tracking_uri)
    if str(endpoint.version) != target:
        raise RollbackError(f"{environment} serves version {endpoint.version} after rolling "
                            f"back to {target}")
    move_alias(client, tracking_uri, model, environment, target)
    client.set_model_version_tag(model, target, f"workbench.{environment}.rolled_back_from",
                                 str(current))
    record = RollbackRecord(environment=environment, model=model, from_version=current,
                            to_version=target, trigger=trigger,
                            reason=reason or f"{trigger} rollback", observed=observed,
                            threshold=threshold, actor=actor, run_id=run_id,
                            target=config.environments[environment].deploy.target,
                            endpoint=endpoint.url, time=utc_now())
    body = record.body()
    entry, _ = journal.append_recorded(
        project.reports, project.reports / ROLLBACKS_DIR, body, event="rollback",
        actor=actor.model_dump(), run_id=run_id,
        ledger_data=lambda _stored: {k: body[k] for k in (
            "environment", "model", "from_version", "to_version", "trigger", "reason",
            "observed", "threshold", "endpoint")})
    stored = RollbackRecord.model_validate(entry)
    _notify(project, stored)
    return stored


def _notify(project: Project, record: RollbackRecord) -> None:
    from workbench.operations.notify import notifier_for

    notifier = notifier_for(project)
    if notifier:
        fields = record.model_dump(mode="json", exclude={"kind", *CHAIN_FIELDS})
        notifier.on_event(RolledBack(**fields))
        notifier.close()
