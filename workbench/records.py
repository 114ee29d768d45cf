"""Typed records of the decisions around a release: approvals, alias moves and rollbacks.

Each is kept as one file of a hash-chained record folder (:mod:`workbench.audit.journal`):
``reports/runs/<run-id>/approvals/``, ``.../promotions/`` and ``reports/rollbacks/``. A
record is written from :meth:`StoredRecord.body` (the fields below, exactly the file format
of earlier versions) and read back from a verified entry with ``model_validate``; fields a
newer version adds are kept, not refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from workbench.identity import Identity
from workbench.signatures import Signature

CHAIN_FIELDS = frozenset({"seq", "previous", "digest"})
Decision = Literal["approve", "reject"]


class StoredRecord(BaseModel):
    """An entry of a record folder: its own fields plus the chain's (set when appended)."""

    model_config = ConfigDict(extra="allow")

    seq: int = 0
    previous: str | None = None
    digest: str = ""

    def body(self) -> dict[str, Any]:
        """What is appended: every field but the chain's."""
        return self.model_dump(mode="json", exclude=set(CHAIN_FIELDS))


class ApprovalRecord(StoredRecord):
    """A decision on one run's release bundle for one environment (refused attempts too:
    they never count)."""

    kind: Literal["approval"] = "approval"
    run_id: str = ""
    environment: str
    decision: Decision
    accepted: bool
    refused: str | None = None  # why the policy refused it
    approver: Identity
    via: str = ""  # cli | notebook
    time: str
    comment: str | None = None
    bundle_digest: str
    evidence: dict[str, str] = {}  # archived notebook -> sha256, as shown
    policy_version: str = ""
    # the approver's SSH signature of the decision (workbench.signatures.message)
    signature: Signature | None = None
    diff_digest: str | None = None  # sha256 of the review's diff against the serving version

    def body(self) -> dict[str, Any]:
        """The stored form; fields added later are left out when unset (earlier records' form)."""
        data = super().body()
        for later in ("signature", "diff_digest"):
            if data.get(later) is None:
                data.pop(later, None)
        return data


class AliasMoveRecord(StoredRecord):
    """An environment's alias moved to a version: through a gate, or by a stage itself."""

    kind: Literal["alias_move"] = "alias_move"
    run_id: str
    model: str
    alias: str
    from_version: str | None = None
    to_version: str
    actor: Identity
    via: str  # "gate <stage>" or "stage <stage>"
    time: str
    approvals: list[int] = []  # the approval records (seq) the gate counted
    bundle_digest: str | None = None


class RollbackRecord(StoredRecord):
    """An environment served an earlier approved version again."""

    kind: Literal["rollback"] = "rollback"
    environment: str
    model: str
    from_version: str | None = None
    to_version: str
    trigger: str  # manual | monitor
    reason: str
    observed: Any = None
    threshold: Any = None
    actor: Identity
    run_id: str | None = None
    target: str
    endpoint: str
    time: str


class DriftRecord(StoredRecord):
    """Served inputs and predictions of one version compared with its baseline profile."""

    kind: Literal["drift"] = "drift"
    environment: str
    model: str
    version: str
    since: float = 0.0  # epoch seconds: the oldest logged request considered
    requests: int  # logged requests compared
    rows: int
    features: list[dict[str, Any]]  # each feature's statistic, value, threshold, verdict
    drifted: list[str]
    actor: Identity
    time: str
    # realised performance, when labels were given: labelled rows, metrics, objective verdicts
    performance: dict[str, Any] | None = None
