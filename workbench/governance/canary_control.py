"""Manual control of a canary held at a step (``pause: manual``): promote or abort it, under
the environment's approval policy, each decision a record of a hash-chained journal.

Decisions live in ``reports/canary/<env>/`` (see :mod:`workbench.audit.journal`), one file
each, never edited, each with a ``canary_decision`` ledger entry that says its ``effect``:
``promote`` or ``abort`` when it completed what the policy asks, else none. The rollout
(:mod:`workbench.deploy.canary`) obeys only those entries, and only with the record file the
ledger recorded. Refused attempts are recorded too, and never count.

The rules (:func:`evaluate`, pure; :func:`refusal` applies the same ones when a decision is
made, so a decision that could not count is refused and recorded as such):

1. a decision concerns one rollout and one step: only the decisions on the step the rollout
   holds count (a promote of step 1 does not promote step 2);
2. a refused attempt never counts, nor a record the ledger does not vouch for;
3. who may decide: a name the environment's approval policy lists (``gates.yaml``, groups
   expanded); an environment without a policy lets anyone decide (quorum 1), and says so;
4. the policy's ``identity_sources`` apply: another source's decision does not count;
5. signatures as for approvals: a signed decision counts only if the signature verifies for
   its name under the configuration's ``allowed_signers``; under ``require_signature`` an
   unsigned typed or OS name does not count (a platform-vouched one does);
6. separation of duties, when the policy forbids self-approval: whoever requested the
   rollout's run or trained its model may abort, never promote;
7. promote takes effect with ``quorum`` promotes by distinct people (one person counts once,
   as :meth:`workbench.identity.Identity.person` or a verified signature says);
8. abort takes effect with one counted abort, whatever the promotes: stopping is the safe way,
   so one allowed person suffices, and an abort prevails over promotes of the same step.

The configuration that decides is the rollout's run's snapshot when the rollout ran in a run
(``workbench run``), else the project's ``configs/`` as they are now.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from workbench import clock, signatures
from workbench.audit import journal
from workbench.config import Config, Gates, load_config
from workbench.deploy import canary as rollout_state
from workbench.digests import canonical
from workbench.errors import EXIT_FAILED, UsageError, WorkbenchError
from workbench.governance.approvals import Trainers, duties, run_config
from workbench.identity import Identity
from workbench.project import Project
from workbench.records import StoredRecord
from workbench.signatures import Signature

Action = Literal["promote", "abort"]
ACTIONS: tuple[Action, ...] = ("promote", "abort")


class CanaryRefused(WorkbenchError, RuntimeError):
    """The policy does not let this person make this decision (the attempt is recorded)."""

    exit_code = EXIT_FAILED


class CanaryUsageError(UsageError, ValueError):
    """Nothing to decide: no canary held at a manual step there, or the request is
    incomplete."""


class CanaryDecisionRecord(StoredRecord):
    """A promote or abort of one step of one rollout (refused attempts too)."""

    kind: Literal["canary_decision"] = "canary_decision"
    environment: str
    model: str
    version: str  # the candidate
    serving_version: str
    rollout: str
    step: int
    weight: float
    decision: Action
    accepted: bool
    refused: str | None = None
    approver: Identity
    via: str = ""  # cli | notebook
    time: str
    comment: str | None = None
    run_id: str | None = None  # the run the rollout is part of
    policy_version: str = ""
    # sha256 of what the decision is about (rollout, step, weight, both versions): the
    # signature covers it in the place of an approval's bundle digest
    step_digest: str
    signature: Signature | None = None

    def body(self) -> dict[str, Any]:
        data = super().body()
        if data.get("signature") is None:
            data.pop("signature", None)
        return data


def step_digest(state: dict[str, Any], step: int) -> str:
    """What a decision on ``step`` of the rollout ``state`` binds to."""
    weight = next((s["weight"] for n, s in enumerate(state.get("steps") or [], start=1)
                   if n == step), state.get("weight"))
    return hashlib.sha256(canonical({"kind": "canary_step", "rollout": state.get("rollout"),
                                 "step": step, "weight": weight,
                                 "environment": state.get("environment"),
                                 "model": state.get("model"), "version": state.get("version"),
                                 "serving_version": state.get("serving_version")})).hexdigest()


def signed_message(record: dict[str, Any]) -> bytes:
    """The bytes a decision's SSH signature covers: the approval signing message
    (:func:`workbench.signatures.message`) with the step digest as the bundle it binds."""
    return signatures.message({**record, "bundle_digest": record.get("step_digest"),
                               "diff_digest": None})


class CanaryVerdict(BaseModel):
    """What the decisions on one held step add up to under the policy."""

    environment: str
    rollout: str
    step: int
    state: Literal["promote", "abort", "awaiting"]
    quorum: int
    policy: bool = True  # False: the environment has no approval policy (anyone, quorum 1)
    promoted_by: list[str] = []
    promote_seqs: list[int] = []
    aborted_by: str | None = None
    abort_seq: int | None = None
    eligible: list[str] = []  # who may promote ([] with no policy: anyone)
    excluded: dict[str, str] = {}  # approvers who may abort but not promote, and why
    not_counted: list[dict[str, Any]] = []
    signature_required: bool = False

    @property
    def missing(self) -> int:
        return max(0, self.quorum - len(self.promote_seqs))

    @property
    def by(self) -> list[str]:
        """Who made the effect."""
        if self.state == "abort":
            return [self.aborted_by or "?"]
        return list(self.promoted_by) if self.state == "promote" else []

    @property
    def counted(self) -> list[int]:
        """The decisions (seq) the effect rests on."""
        if self.state == "abort":
            return [self.abort_seq] if self.abort_seq is not None else []
        return list(self.promote_seqs) if self.state == "promote" else []

    def awaited(self) -> str:
        """What the step waits for, in words."""
        who = ", ".join(n for n in self.eligible if n not in self.promoted_by) \
            if self.policy else "anyone"
        if self.state == "promote":
            return f"promoted by {', '.join(self.promoted_by)}: the rollout moves on"
        if self.state == "abort":
            return f"aborted by {self.aborted_by}: the rollout goes back to the serving version"
        aborters = ", ".join(sorted({*self.eligible, *self.excluded})) if self.policy \
            else "anyone"
        sign = " (signed: --sign KEY)" if self.signature_required else ""
        lines = [f"promote needs {self.missing} more of quorum {self.quorum}"
                 + (f" from {who or 'nobody left: check the policy'}" if self.policy
                    else " from anyone (no approval policy for this environment)") + sign,
                 f"abort needs one of {aborters}{sign}"]
        lines += [f"may abort, not promote: {name} ({why})"
                  for name, why in self.excluded.items()]
        return "\n".join(lines)


def _allowed(gates: Gates, environment: str) -> set[str] | None:
    """Who may decide (None: anyone; the environment has no approval policy)."""
    return gates.approvers(environment) if environment in gates.policies else None


def evaluate(records: list[CanaryDecisionRecord], gates: Gates, environment: str,
             rollout: str, step: int, requester: Identity | None = None,
             trainers: Trainers = None, ledgered: set[int] | None = None,
             signed: dict[int, str | None] | None = None) -> CanaryVerdict:
    """Apply the policy to the recorded decisions on ``step`` of ``rollout`` (the module's
    rules); pure. ``ledgered``: the records (seq) the ledger vouches for (None: all);
    ``signed``: per signed record (seq), None if its signature verified, else why not."""
    policy = gates.policies.get(environment)
    allowed = _allowed(gates, environment)
    rule = duties(gates, environment, requester, trainers) if policy is not None else None
    names = rule.names if rule is not None else {}
    verdict = CanaryVerdict(
        environment=environment, rollout=rollout, step=step, state="awaiting",
        quorum=policy.quorum if policy is not None else 1, policy=policy is not None,
        eligible=sorted((allowed or set()) - set(names)),
        excluded={k: v for k, v in names.items() if allowed and k in allowed},
        signature_required=bool(policy and policy.require_signature))
    counted: dict[str, int] = {}  # person -> the promote that counted for them
    signed = signed or {}
    for record in records:
        if record.rollout != rollout or record.step != step or \
                record.environment != environment:
            continue  # rule 1
        reason = _why_not_counted(record, gates, environment, rule, ledgered, signed)
        person = _person(record, signed)
        if reason is None and record.decision == "promote" and person in counted:
            reason = f"the same person as #{counted[person]} ({person}): one person counts once"
        if reason is not None:
            verdict.not_counted.append({"seq": record.seq, "approver": record.approver.name,
                                        "decision": record.decision, "reason": reason})
        elif record.decision == "abort":
            if verdict.aborted_by is None:  # rule 8: the first counted abort
                verdict.aborted_by, verdict.abort_seq = record.approver.name, record.seq
        else:
            counted[person] = record.seq
            if record.approver.name not in verdict.promoted_by:
                verdict.promoted_by.append(record.approver.name)
            verdict.promote_seqs.append(record.seq)
    if verdict.aborted_by is not None:
        verdict.state = "abort"
    elif len(counted) >= verdict.quorum:  # rule 7
        verdict.state = "promote"
    return verdict


def _why_not_counted(record: CanaryDecisionRecord, gates: Gates, environment: str,
                     rule: Any, ledgered: set[int] | None, signed: dict[int, str | None]
                     ) -> str | None:
    if ledgered is not None and record.seq not in ledgered:
        return "not in the ledger: the record was written or changed by hand"
    if not record.accepted:
        return f"refused: {record.refused}"
    if record.signature is not None:
        if record.seq not in signed:
            return "signature not checked"
        if signed[record.seq]:
            return f"signature refused: {signed[record.seq]}"
    return _policy_refusal(gates, environment, record.decision, record.approver, rule,
                           signed=record.signature is not None, person=_person(record, signed))


def _person(record: CanaryDecisionRecord, signed: dict[int, str | None]) -> str:
    """Who decided, for counting distinct people: the holder of the name's SSH key when the
    signature verified (``ssh:NAME``), else :meth:`Identity.person`."""
    verified = record.signature is not None and record.seq in signed \
        and signed[record.seq] is None
    return f"ssh:{record.approver.name}" if verified else record.approver.person()


def _policy_refusal(gates: Gates, environment: str, decision: str, approver: Identity,
                    rule: Any, signed: bool, person: str | None) -> str | None:
    """Rules 3 to 6 for one person's decision (``signed``: with a verified signature)."""
    allowed = _allowed(gates, environment)
    if allowed is None:
        return None  # rule 3: no policy, anyone
    policy = gates.policies[environment]
    if approver.name not in allowed:
        return (f"{approver.name!r} is not an approver for {environment}; the policy allows "
                f"{sorted(allowed)}")
    sources = policy.identity_sources
    if sources is not None and approver.source not in sources:
        return (f"{approver.name!r} is a {approver.source} identity; the {environment} "
                f"policy counts {', '.join(sources)} identities only")
    if policy.require_signature and not signed and not approver.vouched:
        return (f"{approver.name!r} is a {approver.source} name and the {environment} policy "
                f"requires the approver's SSH signature: sign with --sign KEY")
    if decision == "promote" and rule is not None:
        excluded = rule.reason(approver, person)
        if excluded:
            return (f"{approver.name!r} {excluded} and the {environment} policy forbids "
                    f"self-approval: they may abort the canary, not promote it")
    return None


def check_signatures(signers: str, records: list[CanaryDecisionRecord]
                     ) -> dict[int, str | None]:
    """Each signed record (seq) -> None (verified for its name) or why not."""
    return {record.seq: signatures.verify(signed_message(record.body()), record.signature,
                                          record.approver.name, signers)
            for record in records if record.signature is not None}


# --- the project-level calls the CLI and the review form share -------------------------------


def held(project: Project, environment: str) -> dict[str, Any] | None:
    """The state of the rollout running on ``environment`` (None: none). With several (two
    pipelines deploying to one environment), the one of the configured model."""
    found = [s for s in rollout_state.read_states(project) if s.get("environment") == environment]
    if len(found) > 1:
        model = load_config(project.configs).model.name
        found = [s for s in found if s.get("model") == model] or found[:1]
    return found[0] if found else None


def config_of(project: Project, state: dict[str, Any]) -> Config:
    """The configuration that decides: the rollout's run's snapshot, else ``configs/``."""
    from workbench import run_record

    run_id = state.get("run_id")
    if run_id:
        try:
            return run_config(run_record.load(project, str(run_id)))
        except run_record.RunRecordError:
            pass
    return load_config(project.configs)


def _duties_of(project: Project, state: dict[str, Any], config: Config
               ) -> tuple[Identity | None, Trainers]:
    """The requester and trainers of the rollout's run, as the ledger vouches (none outside a
    run)."""
    from workbench import run_record
    from workbench.governance.trust import trusted

    run_id = state.get("run_id")
    if not run_id or environment_unpoliced(config, str(state.get("environment"))):
        return None, None
    try:
        record = run_record.load(project, str(run_id))
    except run_record.RunRecordError:
        return None, None
    trust = trusted(project, record, config)
    return trust.requester, trust.trainers


def environment_unpoliced(config: Config, environment: str) -> bool:
    return environment not in config.gates.policies


def read_records(project: Project, environment: str, rollout: str | None = None
                 ) -> list[CanaryDecisionRecord]:
    """The decisions recorded for ``environment`` (of one rollout), verified."""
    records = [CanaryDecisionRecord.model_validate(entry) for entry in
               journal.read(rollout_state.decisions_dir(project, environment))]
    return [r for r in records if rollout is None or r.rollout == rollout]


def _ledgered(project: Project, state: dict[str, Any]) -> set[int]:
    found, _ = rollout_state.vouched_decisions(project.reports, str(state["rollout"]),
                                               int(state.get("ledger_offset") or 0))
    return {int(d["seq"]) for d in found if isinstance(d.get("seq"), int)}


def _require_held(project: Project, environment: str) -> dict[str, Any]:
    state = held(project, environment)
    if state is None:
        raise CanaryUsageError(f"no canary is running on {environment}: nothing to promote or "
                               f"abort (`workbench canary status --env {environment}`)")
    if state.get("status") != "paused":
        pause = state.get("pause")
        raise CanaryUsageError(
            f"the canary of {state.get('model')} v{state.get('version')} on {environment} is "
            f"at step {state.get('step')} ({state.get('weight'):g}%), a timed step (pause "
            f"{pause}): it ends by itself; decisions are taken at a manual step "
            f"(pause: manual)" if state.get("status") == "watching" else
            f"the canary on {environment} is between steps; try again in a moment")
    return state


def submit(project: Project, environment: str, decision: Action, approver: Identity,
           comment: str | None, via: str, sign_with: Path | None = None
           ) -> tuple[CanaryDecisionRecord, CanaryVerdict]:
    """Record a decision on the step the canary on ``environment`` holds; return it and the
    step's verdict after it. Raise :class:`CanaryRefused` if the policy forbids it (after
    recording the refused attempt), :class:`CanaryUsageError` if nothing is held there."""
    if decision not in ACTIONS:
        raise CanaryUsageError(f"a canary decision is one of {', '.join(ACTIONS)}, not "
                               f"{decision!r}")
    state = _require_held(project, environment)
    config = config_of(project, state)
    gates = config.gates
    comment = (comment or "").strip() or None
    if comment is None and environment in gates.policies and \
            gates.requires_comment(environment):
        raise CanaryUsageError(f"a decision for {environment} needs a comment (--comment "
                               f"TEXT)")
    requester, trainers = _duties_of(project, state, config)
    step = int(state["step"])
    record = CanaryDecisionRecord(
        environment=environment, model=str(state["model"]), version=str(state["version"]),
        serving_version=str(state["serving_version"]), rollout=str(state["rollout"]),
        step=step, weight=float(state["weight"]), decision=decision, accepted=True,
        approver=approver, via=via, time=clock.utc_now(), comment=comment,
        run_id=state.get("run_id"), step_digest=step_digest(state, step),
        policy_version=gates.version(environment) if environment in gates.policies else "")
    if sign_with is not None:  # before any refusal: a key that cannot sign records nothing
        record.signature = signatures.sign(signed_message(record.body()), sign_with)
    unsigned = None
    if record.signature is not None:
        problem = signatures.verify(signed_message(record.body()), record.signature,
                                    approver.name, config.signers)
        unsigned = f"signature of {approver.name!r} refused: {problem}" if problem else None
    rule = duties(gates, environment, requester, trainers) \
        if environment in gates.policies else None
    person = f"ssh:{approver.name}" if record.signature is not None and not unsigned else None
    refused = unsigned or _policy_refusal(gates, environment, decision, approver, rule,
                                          signed=person is not None, person=person)
    record.accepted, record.refused = refused is None, refused
    outcome: dict[str, CanaryVerdict] = {}

    def ledger_data(stored: dict[str, Any]) -> dict[str, Any]:
        # evaluated after this record is in the journal: the last of two racing decisions
        # sees both
        records = read_records(project, environment, record.rollout)
        ledgered = _ledgered(project, state) | {int(stored["seq"])}
        outcome["verdict"] = verdict = evaluate(
            records, gates, environment, record.rollout, step, requester, trainers,
            ledgered=ledgered, signed=check_signatures(config.signers, records))
        effect = verdict.state if verdict.state in ACTIONS and refused is None else None
        return {"environment": environment, "model": record.model, "version": record.version,
                "rollout": record.rollout, "step": step, "decision": decision,
                "accepted": refused is None, "seq": stored["seq"], "effect": effect,
                "by": verdict.by if effect else [], "counted": verdict.counted if effect
                else [], "comment": comment}

    entry, _ = journal.append_recorded(
        project.reports, rollout_state.decisions_dir(project, environment), record.body(),
        event=rollout_state.DECISION_EVENT, actor=approver.model_dump(),
        run_id=record.run_id, ledger_data=ledger_data)
    stored = CanaryDecisionRecord.model_validate(entry)
    if refused:
        raise CanaryRefused(f"refused and recorded as #{stored.seq}: {refused}")
    return stored, outcome["verdict"]


class CanaryStatus(BaseModel):
    """A running rollout as ``workbench canary status`` shows it."""

    state: dict[str, Any]
    stats: dict[str, Any] | None = None  # the proxy's window (None: it did not answer)
    records: list[CanaryDecisionRecord] = []
    verdict: CanaryVerdict | None = None  # the held step's (None: not held)


def status(project: Project, environment: str) -> CanaryStatus | None:
    """The rollout on ``environment`` now: state, this window's traffic per version, the
    decisions on it and the held step's verdict (None: no rollout running there)."""
    from workbench.deploy import local

    state = held(project, environment)
    if state is None:
        return None
    try:
        stats = dict(local.get_json(f"{state['url']}/-/route", timeout=5.0).get("stats") or {})
    except (OSError, ValueError):
        stats = None
    records = read_records(project, environment, str(state["rollout"]))
    verdict = None
    if state.get("status") == "paused":
        config = config_of(project, state)
        requester, trainers = _duties_of(project, state, config)
        verdict = evaluate(records, config.gates, environment, str(state["rollout"]),
                           int(state["step"]), requester, trainers,
                           ledgered=_ledgered(project, state),
                           signed=check_signatures(config.signers, records))
    return CanaryStatus(state=state, stats=stats, records=records, verdict=verdict)


def _traffic(version: str, role: str, numbers: dict[str, Any] | None) -> str:
    numbers = numbers or {}
    p95 = numbers.get("p95_ms")
    return (f"v{version} ({role}): {int(numbers.get('requests', 0))} requests, "
            f"{int(numbers.get('errors', 0))} errors "
            f"(rate {float(numbers.get('error_rate', 0.0)):.4f}), p95 "
            + (f"{p95:.1f} ms" if isinstance(p95, int | float) else "-"))


def describe(found: CanaryStatus, now: str | None = None) -> str:
    """The status as text a person or a CI log can act on; pure."""
    state = found.state
    environment, step, weight = state["environment"], state.get("step"), state.get("weight")
    steps = state.get("steps") or []
    version, serving = state["version"], state["serving_version"]
    lines = [f"canary of {state['model']} v{version} on {environment} (rollout "
             f"{state['rollout']}{', run ' + state['run_id'] if state.get('run_id') else ''})",
             "  steps: " + " -> ".join(f"{s['weight']:g}% ({s['pause']})" for s in steps)]
    if step is None:
        lines.append("  starting")
        return "\n".join(lines)
    held_since = str(state.get("step_started") or "")
    share = float(weight or 0)
    waited = ""
    if now and held_since:
        seconds = (clock.parse(now) - clock.parse(held_since)).total_seconds()
        waited = f", {max(0.0, seconds):.0f} s"
    kind = {"paused": "held at a manual step", "watching": f"timed (pause {state.get('pause')})",
            "deciding": "between steps"}.get(str(state.get("status")), str(state.get("status")))
    lines.append(f"  step {step} of {len(steps)}: {share:g}% to v{version}, "
                 f"{100 - share:g}% to v{serving}; {kind} since {held_since[:19]}"
                 f"{waited}")
    for done in state.get("done") or []:
        by = (done.get("decision") or {}).get("by")
        lines.append(f"  step {done['step']} ({done['weight']:g}%): {done['verdict']}"
                     + (f" ({(done.get('decision') or {}).get('effect')} by "
                        f"{', '.join(by)})" if by else ""))
    if found.stats is None:
        lines.append("  this window: the endpoint's proxy did not answer")
    else:
        versions = found.stats.get("versions") or {}
        lines.append(f"  this window ({found.stats.get('window')}):")
        lines.append("    " + _traffic(version, "candidate", versions.get(version)))
        lines.append("    " + _traffic(serving, "serving", versions.get(serving)))
    analysis = state.get("analysis") or {}
    if analysis:
        rules = [f"{key} {value:g}" for key, value in analysis.items()
                 if isinstance(value, int | float) and not isinstance(value, bool)]
        lines.append(f"  analysis (a breach aborts): {', '.join(rules)}")
    uncounted = {n["seq"]: n["reason"] for n in (found.verdict.not_counted
                                                 if found.verdict else [])}
    if found.records:
        lines.append("  decisions:")
    for r in found.records:
        mark = f"REFUSED: {r.refused}" if not r.accepted else \
            f"not counted: {uncounted[r.seq]}" if r.seq in uncounted else "counted"
        signed = f", signed {r.signature.fingerprint}" if r.signature else ""
        lines.append(f"    #{r.seq} {r.time[:19]} step {r.step} {r.decision} by "
                     f"{r.approver.name} ({r.approver.source}{signed}): {mark}"
                     + (f"; “{r.comment}”" if r.comment else ""))
    if found.verdict is not None:
        lines.append("  awaiting: " + found.verdict.awaited().replace("\n", "\n  "))
        sign = " --sign KEY" if found.verdict.signature_required else ""
        lines.append(f"  decide with: workbench canary promote|abort --env {environment} "
                     f"--as NAME{sign} [--comment TEXT]")
    elif not found.records:
        lines.append("  no decision awaited: the step ends by itself")
    return "\n".join(lines)
