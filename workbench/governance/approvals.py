"""Approval records and the gate policy: who may decide, and whether a gate has passed.

Records live in ``reports/runs/<run-id>/approvals/`` (see :mod:`journal`): append-only, one
file each, never edited. Refused attempts are recorded too, and never count.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from workbench.audit import ledger
from workbench.config import Config, Gates, parse_config
from workbench.governance import journal
from workbench.governance.bundle import Bundle, compute, gate_stage
from workbench.governance.identity import Identity
from workbench.pipeline import state
from workbench.project import Project

APPROVALS_DIR = "approvals"
Decision = Literal["approve", "reject"]


class ApprovalRefused(RuntimeError):
    """The policy does not let this person make this decision (the attempt is recorded)."""


class ApprovalUsageError(ValueError):
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


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


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


def evaluate(records: list[dict[str, Any]], gates: Gates, environment: str, gate: str,
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
        if record.get("environment") != environment or record.get("kind") != "approval":
            continue
        name = record["approver"]["name"]
        reason = _why_not_counted(record, allowed, excluded, bundle_digest, policy.valid_for_s,
                                  now)
        if reason:
            verdict.not_counted.append({"seq": record["seq"], "approver": name,
                                        "decision": record["decision"], "reason": reason})
        elif record["decision"] == "reject":
            verdict.state = "rejected"
            verdict.rejection = {"seq": record["seq"], "approver": name,
                                 "comment": record.get("comment"), "time": record["time"]}
        elif name not in verdict.approved_by:
            verdict.approved_by.append(name)
            verdict.approval_seqs.append(record["seq"])
    if verdict.state != "rejected" and len(verdict.approved_by) >= policy.quorum:
        verdict.state = "approved"
    return verdict


def _why_not_counted(record: dict[str, Any], allowed: set[str], excluded: dict[str, str],
                     bundle_digest: str, valid_for_s: float, now: datetime) -> str | None:
    name = record["approver"]["name"]
    if not record.get("accepted", False):
        return f"refused: {record.get('refused')}"
    if record["bundle_digest"] != bundle_digest:
        return f"for another bundle {record['bundle_digest'][:12]}"
    if name not in allowed:
        return "not an approver under the current policy"
    if name in excluded:
        return f"may not approve: {excluded[name]}"
    age = (now - _parse_time(record["time"])).total_seconds()
    if record["decision"] == "approve" and age > valid_for_s:  # a rejection stands
        return f"expired: given {record['time']}, valid for {valid_for_s:.0f} s"
    return None


# --- the project-level calls the CLI and the approval notebook share -------------------------


def run_config(record: state.RunRecord) -> Config:
    """The configuration a run was started with: a run is released as it was configured."""
    return parse_config(dict(record.config))


def approvals_dir(project: Project, run_id: str) -> Path:
    return state.run_dir(project, run_id) / APPROVALS_DIR


def read_records(project: Project, run_id: str) -> list[dict[str, Any]]:
    return journal.read(approvals_dir(project, run_id))


def _check_environment(config: Config, environment: str) -> str:
    if environment not in config.gates.policies:
        gated = sorted(config.gates.policies)
        raise ApprovalUsageError(f"--env {environment}: this run's configuration has approval "
                                 f"policies for {gated or 'no environment'}")
    return gate_stage(config, environment)


def status(project: Project, run_id: str, environment: str,
           bundle: Bundle | None = None) -> tuple[Verdict, Bundle]:
    """The gate's verdict for the run's current bundle."""
    record = state.load(project, run_id)
    config = run_config(record)
    gate = _check_environment(config, environment)
    bundle = bundle or compute(project, config, record, environment)
    verdict = evaluate(read_records(project, run_id), config.gates, environment, gate,
                       bundle.digest, record.requested_by, record.trained_by)
    return verdict, bundle


def submit(project: Project, run_id: str, environment: str, decision: Decision,
           approver: Identity, comment: str | None, via: str) -> dict[str, Any]:
    """Record a decision on the run's current bundle; raise :class:`ApprovalRefused` if the
    policy forbids it (after recording the refused attempt)."""
    record = state.load(project, run_id)
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
    entry = journal.append(approvals_dir(project, run_id), {
        "kind": "approval",
        "run_id": run_id,
        "environment": environment,
        "decision": decision,
        "accepted": refused is None,
        "refused": refused,
        "approver": approver.model_dump(),
        "via": via,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "comment": comment,
        "bundle_digest": bundle.digest,
        "evidence": bundle.parts["notebooks"],
        "policy_version": gates.version(environment),
    })
    folder = approvals_dir(project, run_id)
    ledger.append(project.reports, "approval", actor=approver.model_dump(), run_id=run_id,
                  data={"environment": environment, "decision": decision,
                        "accepted": refused is None, "seq": entry["seq"],
                        "bundle_digest": bundle.digest},
                  files=[folder / f"{entry['seq']:04d}.json"])
    if refused:
        raise ApprovalRefused(f"refused and recorded as #{entry['seq']}: {refused}")
    return entry
