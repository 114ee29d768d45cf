"""Approval records and the gate policy: who may decide, and whether a gate has passed.

Records live in ``reports/runs/<run-id>/approvals/`` (see :mod:`journal`): append-only, one
file each, never edited. Refused attempts are recorded too, and never count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from workbench import clock, run_record, signatures
from workbench.audit import journal
from workbench.config import Config, GatePolicy, Gates, parse_config
from workbench.digests import file_sha256
from workbench.errors import EXIT_FAILED, WorkbenchError
from workbench.governance import release_diff
from workbench.governance.bundle import Bundle, compute, gate_stage
from workbench.governance.soak import SoakFacts, SoakVerdict, facts_for, judge
from workbench.governance.trust import Trusted, trusted
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
    signature_required: bool = False
    soak: SoakVerdict | None = None  # the policy's soak, judged (None: it requires none)

    @property
    def missing(self) -> int:
        return max(0, self.quorum - len(self.approved_by))

    @property
    def soaking(self) -> bool:
        """The policy's soak is not over (the gate waits for it, whatever the approvals)."""
        return self.soak is not None and not self.soak.passed

    def describe(self, run_id: str) -> str:
        """One paragraph a person or a CI log can act on."""
        short = self.bundle_digest[:12]
        soak = [f"  {self.soak.describe()}"] if self.soak is not None else []
        if self.state == "approved":
            return "\n".join([f"gate {self.gate} ({self.environment}) approved for bundle "
                              f"{short} by {', '.join(self.approved_by)}", *soak])
        if self.state == "rejected":
            rejection = self.rejection or {}
            return (f"gate {self.gate} ({self.environment}) rejected by "
                    f"{rejection.get('approver')}: {rejection.get('comment')}")
        if self.missing == 0:  # only the soak is missing
            return "\n".join([f"gate {self.gate} ({self.environment}) is awaiting its soak: "
                              f"approved for bundle {short} (sha256:{self.bundle_digest}) by "
                              f"{', '.join(self.approved_by)}", *soak,
                              f"  then continue with: workbench resume {run_id}"])
        candidates = [n for n in self.eligible if n not in self.approved_by]
        lines = [f"gate {self.gate} ({self.environment}) is awaiting approval: needs "
                 f"{self.missing} more of {self.quorum} for bundle {short} "
                 f"(sha256:{self.bundle_digest})", *soak,
                 f"  may approve: {', '.join(candidates) or 'nobody left: check the policy'}"]
        lines += [f"  may not approve: {name} ({why})" for name, why in self.excluded.items()]
        lines += [f"  not counted: #{n['seq']} {n['approver']} ({n['reason']})"
                  for n in self.not_counted]
        sign = " --sign KEY" if self.signature_required else ""
        lines.append(f"  approve with: workbench approve {run_id} --env {self.environment} "
                     f"--as NAME{sign} [--comment TEXT]")
        return "\n".join(lines)


Trainers = Identity | Sequence[Identity] | None


def _as_list(trainers: Trainers) -> list[Identity]:
    if trainers is None:
        return []
    return [trainers] if isinstance(trainers, Identity) else list(trainers)


@dataclass(frozen=True)
class Duties:
    """Who the separation-of-duties rule keeps out of an environment's gate: by name, and by
    person (an OS user typing another name is still that OS user)."""

    names: dict[str, str]
    people: dict[str, str]

    def reason(self, approver: Identity, person: str | None = None) -> str | None:
        """Why ``approver`` (``person``: who they are proven to be, default
        :meth:`Identity.person`) is kept out, or None."""
        if approver.name in self.names:
            return self.names[approver.name]
        person = person or approver.person()
        if person in self.people:
            return f"{self.people[person]} (the same {_person_kind(person)})"
        return None


def _person_kind(person: str) -> str:
    kind, _, who = person.partition(":")
    if kind == "ssh":
        return f"holder of {who}'s SSH key"
    return f"OS user {who}" if kind == "os" else f"{kind} account {who}"


def signed_person(record: ApprovalRecord, signed: dict[int, str | None]) -> str:
    """Who made the decision, for counting distinct people: the holder of the approver's SSH
    key when the signature verified (``ssh:NAME``), else :meth:`Identity.person`."""
    verified = record.signature is not None and record.seq in signed \
        and signed[record.seq] is None
    return f"ssh:{record.approver.name}" if verified else record.approver.person()


def duties(gates: Gates, environment: str, requester: Identity | None,
           trainers: Trainers) -> Duties:
    """The separation-of-duties rule for ``environment`` (nothing when it allows self-approval)."""
    if gates.allows_self_approval(environment):
        return Duties({}, {})
    names: dict[str, list[str]] = {}
    people: dict[str, list[str]] = {}
    roles = [(requester, "requested the release")] if requester is not None else []
    roles += [(trainer, "trained the model") for trainer in _as_list(trainers)]
    for who, role in roles:
        for key, table in ((who.name, names), (who.person(), people)):
            if role not in table.setdefault(key, []):
                table[key].append(role)
    return Duties({k: " and ".join(v) for k, v in names.items()},
                  {k: " and ".join(v) for k, v in people.items()})


def excluded_names(gates: Gates, environment: str, requester: Identity | None,
                   trainers: Trainers) -> dict[str, str]:
    """Names the separation-of-duties rule keeps out of this environment's gate."""
    return duties(gates, environment, requester, trainers).names


def evaluate(records: list[ApprovalRecord], gates: Gates, environment: str, gate: str,
             bundle_digest: str, requester: Identity | None, trainers: Trainers,
             now: datetime | None = None, ledgered: set[int] | None = None,
             signed: dict[int, str | None] | None = None,
             soaked: SoakFacts | None = None) -> Verdict:
    """Apply the policy to the recorded decisions; pure, so every rule is testable alone.

    ``ledgered``: the records (seq) the ledger vouches for (None: all of them); quorum counts
    distinct people, so names one OS user typed count once. ``signed``: for each signed record
    (seq), None if its signature verified for its approver, else why not (see
    :func:`check_signatures`); a signature not checked there never counts. ``soaked``: what
    the ledger says of the version in the policy's soak environment (see
    :mod:`workbench.governance.soak`; None: it never served there); until the soak is over
    the gate awaits it, even with its quorum."""
    now = now or datetime.now(UTC)
    policy = gates.policies[environment]
    allowed = gates.approvers(environment)
    rule = duties(gates, environment, requester, trainers)
    verdict = Verdict(environment=environment, gate=gate, state="awaiting",
                      bundle_digest=bundle_digest, policy_version=gates.version(environment),
                      quorum=policy.quorum, eligible=sorted(allowed - set(rule.names)),
                      signature_required=bool(policy.require_signature),
                      excluded={k: v for k, v in rule.names.items() if k in allowed})
    counted: dict[str, int] = {}  # person -> the seq that counted for them
    for record in records:
        if record.environment != environment or record.kind != "approval":
            continue
        name = record.approver.name
        reason = _why_not_counted(record, allowed, rule, bundle_digest, policy, now, ledgered,
                                  signed or {})
        person = signed_person(record, signed or {})
        if reason is None and record.decision == "approve" and person in counted:
            reason = (f"the same person as #{counted[person]} "
                      f"({_person_kind(person)}): one person counts once")
        if reason:
            verdict.not_counted.append({"seq": record.seq, "approver": name,
                                        "decision": record.decision, "reason": reason})
        elif record.decision == "reject":
            verdict.state = "rejected"
            verdict.rejection = {"seq": record.seq, "approver": name,
                                 "comment": record.comment, "time": record.time}
        else:
            counted[person] = record.seq
            if name not in verdict.approved_by:
                verdict.approved_by.append(name)
            verdict.approval_seqs.append(record.seq)
    if policy.soak is not None:
        verdict.soak = judge(policy.soak, soaked, now)
    if verdict.state != "rejected" and len(counted) >= policy.quorum and not verdict.soaking:
        verdict.state = "approved"
    return verdict


def _why_not_counted(record: ApprovalRecord, allowed: set[str], rule: Duties,
                     bundle_digest: str, policy: GatePolicy, now: datetime,
                     ledgered: set[int] | None, signed: dict[int, str | None]) -> str | None:
    name = record.approver.name
    if ledgered is not None and record.seq not in ledgered:
        return "not in the ledger: the record was written or changed by hand"
    if not record.accepted:
        return f"refused: {record.refused}"
    if record.bundle_digest != bundle_digest:
        return f"for another bundle {record.bundle_digest[:12]}"
    if name not in allowed:
        return "not an approver under the current policy"
    sources = policy.identity_sources
    if sources is not None and record.approver.source not in sources:
        return (f"identity source {record.approver.source} does not count here (the policy "
                f"counts {', '.join(sources)})")
    unsigned = _signature_problem(record, policy, signed)
    if unsigned:
        return unsigned
    excluded = rule.reason(record.approver, signed_person(record, signed))
    if excluded:
        return f"may not approve: {excluded}"
    age = (now - clock.parse(record.time)).total_seconds()
    if record.decision == "approve" and age > policy.valid_for_s:  # a rejection stands
        return f"expired: given {record.time}, valid for {policy.valid_for_s:.0f} s"
    return None


def _signature_problem(record: ApprovalRecord, policy: GatePolicy,
                       signed: dict[int, str | None]) -> str | None:
    """Why the record's signature (or its lack) keeps it from counting, or None."""
    if record.signature is not None:
        if record.seq not in signed:
            return "signature not checked"
        problem = signed[record.seq]
        return f"signature refused: {problem}" if problem else None
    if policy.require_signature and not record.approver.vouched:
        return (f"unsigned: a {record.approver.source} name counts here only with the "
                f"approver's SSH signature")
    return None


def check_signatures(config: Config, records: list[ApprovalRecord]) -> dict[int, str | None]:
    """Verify each signed record against the run's ``configs/allowed_signers``: seq -> None
    (verified for its approver) or why not."""
    return {record.seq: signatures.verify(signatures.message(record.body()), record.signature,
                                          record.approver.name, config.signers)
            for record in records if record.signature is not None}


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
           bundle: Bundle | None = None, trust: Trusted | None = None
           ) -> tuple[Verdict, Bundle]:
    """The gate's verdict for the run's current bundle (``bundle``, ``trust``: computed just
    before for the same decision). Only what the ledger vouches for counts (see
    :mod:`workbench.governance.trust`), the soak facts too (:mod:`workbench.governance.soak`:
    one more pass over the ledger, only for a policy with a soak)."""
    config = run_config(record)
    gate = _check_environment(config, environment)
    trust = trust or trusted(project, record, config)
    bundle = bundle or compute(project, config, record, environment, trust)
    records = read_records(project, record.id)
    soak = config.gates.policies[environment].soak
    verdict = evaluate(records, config.gates, environment, gate, bundle.digest,
                       trust.requester, trust.trainers,
                       ledgered=trust.ledgered(project, records, record.id),
                       signed=check_signatures(config, records),
                       soaked=facts_for(project, config, record, soak) if soak else None)
    return verdict, bundle


def submit(project: Project, record: RunRecord, environment: str, decision: Decision,
           approver: Identity, comment: str | None, via: str, sign_with: Path | None = None,
           diff_shown: str | None = None) -> tuple[ApprovalRecord, Bundle, Trusted]:
    """Record a decision on the run's current bundle; return it, the bundle it binds to and
    what the ledger vouched for. Raise :class:`ApprovalRefused` if the policy forbids it
    (after recording the refused attempt). ``sign_with``: the approver's SSH key (a private
    key file, or a public one whose private half ssh-agent holds) to sign the decision.

    The decision records the digest of the changes against what the environment serves
    (:mod:`workbench.governance.release_diff`); ``diff_shown``: the digest of the diff the
    approver was shown, refused if the changes are no longer those."""
    config = run_config(record)
    _check_environment(config, environment)
    gates = config.gates
    comment = (comment or "").strip() or None
    if comment is None and (decision == "reject" or gates.requires_comment(environment)):
        what = "a rejection" if decision == "reject" else f"a decision for {environment}"
        raise ApprovalUsageError(f"{what} needs a comment (--comment TEXT)")
    trust = trusted(project, record, config)
    bundle = compute(project, config, record, environment, trust)
    diff = release_diff.compute(project, config, record, environment).digest
    if diff_shown is not None and diff_shown != diff:
        raise ApprovalUsageError(f"the changes against what {environment} serves are no "
                                 f"longer the ones shown (diff {diff_shown[:12]}, now "
                                 f"{diff[:12]}): review them again (workbench diff "
                                 f"{record.id} --env {environment})")
    approval = ApprovalRecord(
        run_id=record.id, environment=environment, decision=decision, accepted=True,
        approver=approver, via=via, time=clock.utc_now(), comment=comment,
        bundle_digest=bundle.digest, evidence=bundle.evidence,
        policy_version=gates.version(environment), diff_digest=diff)
    if sign_with is not None:  # before any refusal: a key that cannot sign records nothing
        approval.signature = signatures.sign(signatures.message(approval.body()), sign_with)
    unsigned = _unsigned_refusal(config, environment, approval)
    person = f"ssh:{approver.name}" if approval.signature and not unsigned else None
    refused = _refusal(gates, environment, approver,
                       duties(gates, environment, trust.requester, trust.trainers),
                       unsigned, person)
    approval.accepted, approval.refused = refused is None, refused
    entry, recorded = journal.append_recorded(
        project.reports, approvals_dir(project, record.id), approval.body(), event="approval",
        actor=approver.model_dump(), run_id=record.id,
        ledger_data=lambda stored: {"environment": environment, "decision": decision,
                                    "accepted": refused is None, "seq": stored["seq"],
                                    "bundle_digest": bundle.digest})
    trust.index.files.update({name: (digest, recorded["seq"])
                              for name, digest in recorded["files"].items()})
    stored = ApprovalRecord.model_validate(entry)
    if refused:
        raise ApprovalRefused(f"refused and recorded as #{stored.seq}: {refused}")
    return stored, bundle, trust


def _refusal(gates: Gates, environment: str, approver: Identity, rule: Duties,
             unsigned: str | None = None, person: str | None = None) -> str | None:
    """Why the policy refuses ``approver`` any decision here, or None (``unsigned``: why the
    signature, or its lack, is refused; ``person``: who a verified signature proves)."""
    allowed = gates.approvers(environment)
    sources = gates.policies[environment].identity_sources
    if approver.name not in allowed:
        return (f"{approver.name!r} is not an approver for {environment}; the policy allows "
                f"{sorted(allowed)}")
    if sources is not None and approver.source not in sources:
        why = f" ({approver.unvouched})" if approver.unvouched else ""
        return (f"{approver.name!r} is a {approver.source} identity{why}; the {environment} "
                f"policy counts {', '.join(sources)} identities only")
    if unsigned:
        return unsigned
    excluded = rule.reason(approver, person)
    if excluded:
        return (f"{approver.name!r} {excluded} and the {environment} policy forbids "
                f"self-approval")
    return None


def _unsigned_refusal(config: Config, environment: str, approval: ApprovalRecord) -> str | None:
    """Why the decision's signature, or its lack under a policy requiring one, is refused."""
    who = approval.approver
    if approval.signature is not None:
        problem = signatures.verify(signatures.message(approval.body()), approval.signature,
                                    who.name, config.signers)
        return f"signature of {who.name!r} refused: {problem}" if problem else None
    if config.gates.requires_signature(environment) and not who.vouched:
        return (f"{who.name!r} is a {who.source} name and the {environment} policy requires "
                f"the approver's SSH signature: sign with --sign KEY (a key configs/"
                f"{signatures.SIGNERS_FILE} maps to {who.name!r})")
    return None


def changed_since_approval(project: Project, record: RunRecord) -> list[str]:
    """What changed in the files an approval covers, for every gate whose released stages are
    still to run: ``path (approval #N for ENV)`` for each notebook whose digest differs from
    the one the latest accepted approval recorded as evidence."""
    from workbench.governance.bundle import released_stages

    config = run_config(record)
    records = read_records(project, record.id)
    changed: list[str] = []
    for environment in config.gates.policies:
        gate = next((s.name for s in config.pipeline.stages if s.gate == environment), None)
        if gate is None or not any(record.stages[name].status == "pending"
                                   for name in released_stages(config, gate)):
            continue
        accepted = [r for r in records if r.environment == environment and r.accepted
                    and r.decision == "approve"]
        if not accepted:
            continue
        latest = accepted[-1]
        for name in released_stages(config, gate):
            notebook = config.stage(name).notebook
            if notebook not in latest.evidence:
                continue  # an approval of an earlier version, which recorded no such file
            path = project.root / notebook
            now = file_sha256(path) if path.is_file() else "missing"
            if now != latest.evidence[notebook]:
                changed.append(f"{notebook} (approval #{latest.seq} for {environment})")
    return changed
