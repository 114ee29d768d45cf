"""Approval records and the gate policy: who may decide, and whether a gate has passed.

Records live in ``reports/runs/<run-id>/approvals/`` (see :mod:`journal`): append-only, one
file each, never edited. Refused attempts are recorded too, and never count.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from workbench import clock, run_record
from workbench.audit import journal
from workbench.config import Config, Gates, parse_config
from workbench.errors import EXIT_FAILED, WorkbenchError
from workbench.governance.bundle import Bundle, compute, gate_stage
from workbench.identity import Identity
from workbench.project import Project
from workbench.records import ApprovalRecord, Decision
from workbench.run_record import RunRecord

APPROVALS_DIR = "approvals"


class ApprovalRefused(WorkbenchError, RuntimeError):
    """The policy does not let this person make this decision (the attempt is recorded)."""

    exit_code = EXIT_FAILED


class ApprovalUsageError(WorkbenchError, ValueError):
    """The request itself is incomplete or names something that does not exist."""


class Verdict(BaseModel):
    """Whether one environment's gate has passed for one bundle, and what is missing."""

    environment: str
    gate: str
    state: Literal["approved", "rejected", "awaiting"]
    bundle_digest: str
    policy_version: str
    quorum: int
    approved_by: list[str] = []
    approval_seqs: list[int] = []
    rejection: dict[str, Any] | None = None
    eligible: list[str] = []
    excluded: dict[str, str] = {}
    not_counted: list[dict[str, Any]] = []

    @property
    def missing(self) -> int:
        return max(0, self.quorum - len(self.approved_by))

    def describe(self, run_id: str) -> str:
        """One paragraph a person or a CI log can act on."""
        short = self.bundle_digest[:12]
        if self.state == "approved":
            return (f"gate {self.gate} ({self.environment}) approved for bundle {short} by "
                    f"{', '.join(self.approved_by)}")
        if self.state == "rejected":
            rejection = self.rejection or {}
            return (f"gate {self.gate} ({self.environment}) rejected by "
                    f"{rejection.get('approver')}: {rejection.get('comment')}")
        candidates = [n for n in self.eligible if n not in self.approved_by]
        lines = [f"gate {self.gate} ({self.environment}) is awaiting approval: needs "
                 f"{self.missing} more of {self.quorum} for bundle {short} "
                 f"(sha256:{self.bundle_digest})",
                 f"  may approve: {', '.join(candidates) or 'nobody left: check the policy'}"]
        lines += [f"  may not approve: {name} ({why})" for name, why in self.excluded.items()]
        lines += [f"  not counted: #{n['seq']} {n['approver']} ({n['reason']})"
                  for n in self.not_counted]
        lines.append(f"  approve with: workbench approve {run_id} --env {self.environment} "
                     f"--as NAME [--comment TEXT]")
        return "\n".join(lines)


def excluded_names(gates: Gates, environment: str, requester: Identity | None,
                   trainer: Identity | None) -> dict[str, str]:
    """Names the separation-of-duties rule keeps out of this environment's gate."""
    if gates.allows_self_approval(environment):
        return {}
    reasons: dict[str, list[str]] = {}
    if requester is not None:
        reasons.setdefault(requester.name, []).append("requested the release")
    if trainer is not None:
        reasons.setdefault(trainer.name, []).append("trained the model")
    return {name: " and ".join(why) for name, why in reasons.items()}


def evaluate(records: list[ApprovalRecord], gates: Gates, environment: str, gate: str,
             bundle_digest: str, requester: Identity | None, trainer: Identity | None,
             now: datetime | None = None) -> Verdict:
    """Apply the policy to the recorded decisions; pure, so every rule is testable alone."""
    now = now or datetime.now(UTC)
    policy = gates.policies[environment]
    allowed = gates.approvers(environment)
    excluded = excluded_names(gates, environment, requester, trainer)
    verdict = Verdict(environment=environment, gate=gate, state="awaiting",
                      bundle_digest=bundle_digest, policy_version=gates.version(environment),
                      quorum=policy.quorum, eligible=sorted(allowed - set(excluded)),
                      excluded={k: v for k, v in excluded.items() if k in allowed})
    for record in records:
        if record.environment != environment or record.kind != "approval":
            continue
        name = record.approver.name
        reason = _why_not_counted(record, allowed, excluded, bundle_digest, policy.valid_for_s,
                                  now)
        if reason:
            verdict.not_counted.append({"seq": record.seq, "approver": name,
                                        "decision": record.decision, "reason": reason})
        elif record.decision == "reject":
            verdict.state = "rejected"
            verdict.rejection = {"seq": record.seq, "approver": name,
                                 "comment": record.comment, "time": record.time}
        elif name not in verdict.approved_by:
            verdict.approved_by.append(name)
            verdict.approval_seqs.append(record.seq)
    if verdict.state != "rejected" and len(verdict.approved_by) >= policy.quorum:
        verdict.state = "approved"
    return verdict


def _why_not_counted(record: ApprovalRecord, allowed: set[str], excluded: dict[str, str],
                     bundle_digest: str, valid_for_s: float, now: datetime) -> str | None:
    name = record.approver.name
    if not record.accepted:
        return f"refused: {record.refused}"
    if record.bundle_digest != bundle_digest:
        return f"for another bundle {record.bundle_digest[:12]}"
    if name not in allowed:
        return "not an approver under the current policy"
    if name in excluded:
        return f"may not approve: {excluded[name]}"
    age = (now - clock.parse(record.time)).total_seconds()
    if record.decision == "approve" and age > valid_for_s:  # a rejection stands
        return f"expired: given {record.time}, valid for {valid_for_s:.0f} s"
    return None


# --- the project-level calls the CLI, the runner and the approval notebook share ------------


def run_config(record: RunRecord) -> Config:
    """The configuration a run was started with: a run is released as it was configured."""
    return _parsed_snapshot(tuple(sorted(record.config.items())))


@lru_cache(maxsize=8)
def _parsed_snapshot(texts: tuple[tuple[str, str], ...]) -> Config:
    return parse_config(dict(texts))


def approvals_dir(project: Project, run_id: str) -> Path:
    return run_record.run_dir(project, run_id) / APPROVALS_DIR


def read_records(project: Project, run_id: str) -> list[ApprovalRecord]:
    """Every decision recorded for the run, verified (see :mod:`workbench.audit.journal`)."""
    return [ApprovalRecord.model_validate(entry)
            for entry in journal.read(approvals_dir(project, run_id))]


def _check_environment(config: Config, environment: str) -> str:
    if environment not in config.gates.policies:
        gated = sorted(config.gates.policies)
        raise ApprovalUsageError(f"--env {environment}: this run's configuration has approval "
                                 f"policies for {gated or 'no environment'}")
    return gate_stage(config, environment)


def status(project: Project, record: RunRecord, environment: str,
           bundle: Bundle | None = None) -> tuple[Verdict, Bundle]:
    """The gate's verdict for the run's current bundle (``bundle``: one just computed)."""
    config = run_config(record)
    gate = _check_environment(config, environment)
    bundle = bundle or compute(project, config, record, environment)
    verdict = evaluate(read_records(project, record.id), config.gates, environment, gate,
                       bundle.digest, record.requested_by, record.trained_by)
    return verdict, bundle


def submit(project: Project, record: RunRecord, environment: str, decision: Decision,
           approver: Identity, comment: str | None, via: str
           ) -> tuple[ApprovalRecord, Bundle]:
    """Record a decision on the run's current bundle; return it and the bundle it binds to.
    Raise :class:`ApprovalRefused` if the policy forbids it (after recording the refused
    attempt)."""
    config = run_config(record)
    _check_environment(config, environment)
    gates = config.gates
    comment = (comment or "").strip() or None
    if comment is None and (decision == "reject" or gates.requires_comment(environment)):
        what = "a rejection" if decision == "reject" else f"a decision for {environment}"
        raise ApprovalUsageError(f"{what} needs a comment (--comment TEXT)")
    bundle = compute(project, config, record, environment)
    refused = None
    excluded = excluded_names(gates, environment, record.requested_by, record.trained_by)
    if approver.name not in gates.approvers(environment):
        refused = (f"{approver.name!r} is not an approver for {environment}; the policy "
                   f"allows {sorted(gates.approvers(environment))}")
    elif approver.name in excluded:
        refused = (f"{approver.name!r} {excluded[approver.name]} and the {environment} policy "
                   f"forbids self-approval")
    approval = ApprovalRecord(
        run_id=record.id, environment=environment, decision=decision,
        accepted=refused is None, refused=refused, approver=approver, via=via,
        time=clock.utc_now(), comment=comment, bundle_digest=bundle.digest,
        evidence=bundle.parts["notebooks"], policy_version=gates.version(environment))
    entry, _ = journal.append_recorded(
        project.reports, approvals_dir(project, record.id), approval.body(), event="approval",
        actor=approver.model_dump(), run_id=record.id,
        ledger_data=lambda stored: {"environment": environment, "decision": decision,
                                    "accepted": refused is None, "seq": stored["seq"],
                                    "bundle_digest": bundle.digest})
    stored = ApprovalRecord.model_validate(entry)
    if refused:
        raise ApprovalRefused(f"refused and recorded as #{stored.seq}: {refused}")
    return stored, bundle
