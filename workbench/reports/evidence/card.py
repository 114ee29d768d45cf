"""The model card: what the team writes (``configs/model_card.yaml``) and what the archive
knows (the release's data checks, metrics per objective and environment, approvals,
deployment history, drift), as plain data for the card's page and ``model-card.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from workbench import objectives, run_record
from workbench.config import Config
from workbench.errors import WorkbenchError
from workbench.project import Project
from workbench.run_record import RunRecord

CARD_FILE = "model_card.yaml"


class EvidenceError(WorkbenchError, ValueError):
    """The pack cannot be made (a bad card file, a run with no model version)."""


class CardFile(BaseModel):
    """``configs/model_card.yaml``: the team's own words. Every key is optional; the Annex IV
    index says which are missing."""

    model_config = ConfigDict(extra="forbid")

    owners: list[str] = []
    intended_use: str | None = None
    out_of_scope: str | None = None
    limitations: str | None = None
    risks: str | None = None
    instructions_for_use: str | None = None
    design_choices: str | None = None
    human_oversight: str | None = None
    predetermined_changes: str | None = None
    cybersecurity: str | None = None
    metrics_rationale: str | None = None
    standards: list[str] = []
    declaration_of_conformity: str | None = None
    post_market_monitoring: str | None = None


def read_card(project: Project) -> tuple[CardFile, str | None]:
    """The card file (empty when there is none) and its text."""
    path = project.configs / CARD_FILE
    if not path.is_file():
        return CardFile(), None
    label = f"configs/{CARD_FILE}"
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        return CardFile.model_validate(data), text
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EvidenceError(f"{label}: not readable YAML ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise EvidenceError(f"{label}: {problems}; keys: "
                            f"{', '.join(CardFile.model_fields)}") from None


class Facts(BaseModel):
    """What the archive says about the release, for the card."""

    model: str
    version: str
    run_id: str
    pipeline: str
    created: str
    finished: str | None
    git_commit: str
    config_hash: str
    requested_by: str | None
    trained_by: str | None
    model_settings: dict[str, Any]  # configs/model.yaml as the run saw it
    data_checks: list[dict[str, Any]]
    metrics: dict[str, Any]
    objectives: dict[str, list[dict[str, Any]]]  # environment -> each objective's verdict
    load_tests: list[dict[str, Any]]
    approvals: list[dict[str, Any]]
    deployments: list[dict[str, Any]]  # alias moves and rollbacks of this version, in order
    drift: list[dict[str, Any]]


def _who(identity: Any) -> str | None:
    return f"{identity.name} ({identity.source})" if identity is not None else None


def facts(project: Project, config: Config, record: RunRecord, events: list[dict[str, Any]],
          approvals: list[dict[str, Any]], drift: list[dict[str, Any]]) -> Facts:
    """The card's facts; ``events``: the ledger's alias moves and rollbacks of this version."""
    if record.model_version is None:
        raise EvidenceError(f"run {record.id} registered no model version: there is no "
                            f"release to document")
    done = [(n, e) for n, e in record.stages.items() if e.status in run_record.DONE]
    metrics = next((m for _, e in done if isinstance(m := e.output("metrics"), dict)), {})
    champion = next((c for _, e in done if isinstance(c := e.output("champion"), dict)), {})
    verdicts = {env: [v.as_dict() for v in objectives.check(settings.objectives, metrics,
                                                            champion)]
                for env, settings in config.environments.items() if settings.objectives}
    return Facts(
        model=record.model_version.name, version=record.model_version.version,
        run_id=record.id, pipeline=record.pipeline, created=record.created,
        finished=record.finished, git_commit=record.git_commit,
        config_hash=record.config_hash, requested_by=_who(record.requested_by),
        trained_by=_who(record.trained_by),
        model_settings=config.model.model_dump(),
        data_checks=[{"stage": n, **v} for n, e in done
                     if isinstance(v := e.output("data_validation"), dict)],
        metrics=metrics, objectives=verdicts,
        load_tests=[{"stage": n, **v} for n, e in done
                    if isinstance(v := e.output("load_test"), dict)],
        approvals=approvals, deployments=events, drift=drift)


def card_path(project: Project) -> Path:
    return project.configs / CARD_FILE
