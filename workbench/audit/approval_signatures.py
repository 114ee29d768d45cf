"""``audit verify``'s check of the approvers' SSH signatures in a run's ``approvals/`` folder.

Offline, from the archive alone: each signed record is verified against the
``configs/allowed_signers`` of the run's configuration snapshot (``run.json``, whose digest
the ledger recorded when the run started). Rules:

- an accepted record whose signature does not verify for its approver is a problem: it was
  changed after signing, carries another decision's signature or a key not mapped to that
  name, or was written by someone other than ``workbench approve``;
- an accepted record without a signature, from a typed or OS name, at a gate whose policy
  requires signatures is a problem: ``workbench approve`` refuses those;
- a refused attempt (``accepted: false``) never counted: a failing signature there is a note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import signatures
from workbench.config import ConfigError, Gates, parse_config
from workbench.identity import VOUCHED_SOURCES

APPROVALS = "approvals"


@dataclass
class Found:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check(reports: Path, folder: Path) -> Found:
    """Every signature problem of the run folder ``folder`` (see the module doc)."""
    found = Found()
    paths = sorted((folder / APPROVALS).glob("*.json")) if (folder / APPROVALS).is_dir() else []
    if not paths:
        return found
    signers, gates = snapshot(folder)
    for path in paths:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # an unreadable record is named by the ledger's coverage check
        if isinstance(record, dict):
            check_record(f"reports/{path.relative_to(reports).as_posix()}", record, signers,
                         gates, found)
    return found


def snapshot(folder: Path) -> tuple[str, Gates | None]:
    """The run's allowed signers text and approval policies, as configured at its start."""
    try:
        sources = json.loads((folder / "run.json").read_text(encoding="utf-8"))["config"]
        config = parse_config(dict(sources))
    except (OSError, ValueError, KeyError, TypeError, ConfigError):
        return "", None  # an unreadable snapshot is named by the coverage check
    return config.signers, config.gates


def check_record(name: str, record: dict[str, Any], signers: str, gates: Gates | None,
                 found: Found, signed: dict[str, Any] | None = None) -> None:
    """The rules above for one record (``name`` as messages show it); ``signed``: what its
    signature covers, when that is not the record itself (a canary decision signs its step
    digest as the bundle)."""
    approver = record.get("approver") if isinstance(record.get("approver"), dict) else {}
    who = str((approver or {}).get("name"))
    seal = record.get("signature")
    accepted = record.get("accepted") is True
    if seal is None:
        environment = record.get("environment")
        required = (gates is not None and environment in gates.policies
                    and gates.requires_signature(str(environment)))
        if accepted and required and (approver or {}).get("source") not in VOUCHED_SOURCES:
            found.problems.append(f"{name}: accepted without a signature from {who!r}, "
                                  f"but the {environment} policy requires one")
        return
    try:
        signature = signatures.Signature.model_validate(seal)
    except ValueError:
        found.problems.append(f"{name}: its signature is not one (format, namespace, "
                              f"armored text)")
        return
    problem = signatures.verify(signatures.message(record if signed is None else signed),
                                signature, who, signers)
    if problem is None:
        return
    if accepted:
        found.problems.append(f"{name}: signature of {who!r} does not verify: {problem}")
    else:
        found.notes.append(f"{name}: a refused attempt by {who!r} (never counted): "
                           f"{problem}")
