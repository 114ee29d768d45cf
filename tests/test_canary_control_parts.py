"""Manual control of a canary without servers: the ``manual`` pause in the configuration, the
decision policy rule by rule, the status text, and the decisions a rollout obeys (only what
the ledger vouches for) against a rollout state written as a running rollout writes it;
``audit verify`` covers the decision journal."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.conftest import Workspace, notebook
from workbench.audit import coverage, ledger
from workbench.config import Canary, Gates
from workbench.deploy import canary as rollout
from workbench.governance import canary_control as control
from workbench.governance.canary_control import (
    CanaryDecisionRecord,
    CanaryRefused,
    CanaryStatus,
    CanaryUsageError,
    evaluate,
)
from workbench.identity import Identity
from workbench.project import Project
from workbench.signatures import Signature

ROLLOUT, STEP = "3-20260301T100000Z-abcdef", 2
GATES = Gates.model_validate({
    "groups": {"sre": ["alice", "bob", "carol"]},
    "policies": {"prod": {"approvers": ["group:sre"], "quorum": 2},
                 "qa": {"approvers": ["alice", "bob"], "quorum": 1,
                        "identity_sources": ["github"]},
                 "signed": {"approvers": ["alice", "bob"], "quorum": 1,
                            "require_signature": True},
                 "strict": {"approvers": ["alice", "bob", "carol"], "quorum": 1,
                            "strict": True}}})


def who(name: str, source: str = "typed", os_user: str | None = None) -> Identity:
    return Identity(name=name, source=source, os_user=os_user or f"{name}-os")


def decision(seq: int, name: str, action: str = "promote", *, environment: str = "prod",
             step: int = STEP, rollout_id: str = ROLLOUT, accepted: bool = True,
             source: str = "typed", os_user: str | None = None, signed: bool = False
             ) -> CanaryDecisionRecord:
    return CanaryDecisionRecord(
        seq=seq, environment=environment, model="m", version="3", serving_version="2",
        rollout=rollout_id, step=step, weight=50, decision=action, accepted=accepted,
        refused=None if accepted else "not an approver", approver=who(name, source, os_user),
        via="cli", time="2026-03-01T10:00:00+00:00", step_digest="d" * 64,
        signature=Signature(armored="-----BEGIN SSH SIGNATURE-----") if signed else None)


def verdict(records: list[CanaryDecisionRecord], environment: str = "prod",
            **options: Any) -> control.CanaryVerdict:
    return evaluate(records, GATES, environment, ROLLOUT, STEP, **options)


def test_a_manual_pause_is_configuration() -> None:
    steps = Canary.model_validate({"steps": [{"weight": 10, "pause": "manual"},
                                             {"weight": 100, "pause": "1m"}]}).steps
    assert steps[0].manual and steps[0].pause_s == float("inf")
    assert not steps[1].manual and steps[1].pause_s == 60.0
    with pytest.raises(ValidationError, match="or 'manual'"):
        Canary.model_validate({"steps": [{"weight": 10, "pause": "by hand"}]})


def test_rule_1_only_the_held_step_of_this_rollout_counts() -> None:
    found = verdict([decision(1, "alice", step=1), decision(2, "bob", rollout_id="other"),
                     decision(3, "carol", environment="qa"), decision(4, "alice")])
    assert found.state == "awaiting" and found.promote_seqs == [4] and found.missing == 1


def test_rule_2_refused_and_unledgered_decisions_never_count() -> None:
    found = verdict([decision(1, "alice", accepted=False), decision(2, "bob")],
                    ledgered={1})
    assert found.state == "awaiting" and found.promote_seqs == []
    assert [(n["seq"], n["reason"]) for n in found.not_counted] == [
        (1, "refused: not an approver"),
        (2, "not in the ledger: the record was written or changed by hand")]


def test_rule_3_who_may_decide_and_anyone_without_a_policy() -> None:
    found = verdict([decision(1, "mallory", "abort"), decision(2, "alice"),
                     decision(3, "bob")])
    assert found.state == "promote" and found.promoted_by == ["alice", "bob"]
    assert found.not_counted[0]["reason"].startswith("'mallory' is not an approver for prod")
    assert found.eligible == ["alice", "bob", "carol"]
    unpoliced = verdict([decision(1, "mallory", environment="dev")], environment="dev")
    assert unpoliced.state == "promote" and not unpoliced.policy and unpoliced.quorum == 1
    assert "from anyone (no approval policy" in verdict([], environment="dev").awaited()


def test_rule_4_identity_sources() -> None:
    found = verdict([decision(1, "alice", environment="qa")], environment="qa")
    assert found.state == "awaiting"
    assert "the qa policy counts github identities only" in found.not_counted[0]["reason"]
    vouched = verdict([decision(1, "alice", environment="qa", source="github")],
                      environment="qa")
    assert vouched.state == "promote"


def test_rule_5_signatures() -> None:
    unsigned = verdict([decision(1, "alice", environment="signed")], environment="signed")
    assert unsigned.state == "awaiting" and unsigned.signature_required
    assert "requires the approver's SSH signature" in unsigned.not_counted[0]["reason"]
    platform = verdict([decision(1, "alice", environment="signed", source="github")],
                       environment="signed")
    assert platform.state == "promote"  # a platform-vouched name counts without one
    record = decision(1, "alice", environment="signed", signed=True)
    assert verdict([record], environment="signed", signed={1: None}).state == "promote"
    bad = verdict([record], environment="signed", signed={1: "signed with bob's key"})
    assert bad.not_counted[0]["reason"] == "signature refused: signed with bob's key"
    assert verdict([record], environment="signed").not_counted[0]["reason"] == \
        "signature not checked"


def test_rule_6_the_requester_may_abort_but_not_promote() -> None:
    requester = who("carol", os_user="carol-os")
    promoted = verdict([decision(1, "carol", environment="strict")], environment="strict",
                       requester=requester)
    assert promoted.state == "awaiting" and promoted.excluded == {
        "carol": "requested the release"}
    assert "forbids self-approval: they may abort the canary, not promote it" in \
        promoted.not_counted[0]["reason"]
    aborted = verdict([decision(1, "carol", "abort", environment="strict")],
                      environment="strict", requester=requester)
    assert aborted.state == "abort" and aborted.aborted_by == "carol"
    assert "may abort, not promote: carol (requested the release)" in \
        verdict([], environment="strict", requester=requester).awaited()


def test_rule_7_promote_needs_a_quorum_of_people() -> None:
    one_person = verdict([decision(1, "alice", os_user="shared"),
                          decision(2, "bob", os_user="shared")])
    assert one_person.state == "awaiting" and one_person.promote_seqs == [1]
    assert "one person counts once" in one_person.not_counted[0]["reason"]
    assert one_person.awaited().splitlines()[0] == \
        "promote needs 1 more of quorum 2 from bob, carol"
    two = verdict([decision(1, "alice"), decision(2, "bob")])
    assert two.state == "promote" and two.by == ["alice", "bob"] and two.counted == [1, 2]


def test_rule_8_one_abort_suffices_and_prevails() -> None:
    found = verdict([decision(1, "alice"), decision(2, "bob"), decision(3, "carol", "abort"),
                     decision(4, "alice", "abort")])
    assert found.state == "abort" and found.by == ["carol"] and found.counted == [3]
    assert found.awaited().startswith("aborted by carol")


def test_status_text() -> None:
    state = {"rollout": ROLLOUT, "environment": "prod", "model": "m", "version": "3",
             "serving_version": "2", "run_id": None, "step": 2, "weight": 50.0,
             "pause": "manual", "status": "paused", "step_started": "2026-03-01T10:00:00+00:00",
             "steps": [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "manual"},
                       {"weight": 100, "pause": "1m"}],
             "analysis": {"max_error_rate": 0.01, "max_p95_ms": 300, "max_p95_ratio": None,
                          "min_requests": 20},
             "done": [{"step": 1, "weight": 10, "verdict": "pass", "share": 9.8,
                       "decision": None}]}
    stats = {"window": "3-2-x", "versions": {
        "3": {"requests": 120, "errors": 1, "error_rate": 1 / 120, "p95_ms": 41.25},
        "2": {"requests": 118, "errors": 0, "error_rate": 0.0, "p95_ms": 20.0}}}
    records = [decision(1, "mallory", accepted=False), decision(2, "alice")]
    found = CanaryStatus(state=state, stats=stats, records=records,
                         verdict=verdict(records, ledgered={1, 2}))
    text = control.describe(found, now="2026-03-01T10:01:30+00:00")
    assert text.splitlines() == [
        f"canary of m v3 on prod (rollout {ROLLOUT})",
        "  steps: 10% (30s) -> 50% (manual) -> 100% (1m)",
        "  step 2 of 3: 50% to v3, 50% to v2; held at a manual step since "
        "2026-03-01T10:00:00, 90 s",
        "  step 1 (10%): pass",
        "  this window (3-2-x):",
        "    v3 (candidate): 120 requests, 1 errors (rate 0.0083), p95 41.2 ms",
        "    v2 (serving): 118 requests, 0 errors (rate 0.0000), p95 20.0 ms",
        "  analysis (a breach aborts): max_error_rate 0.01, max_p95_ms 300, min_requests 20",
        "  decisions:",
        "    #1 2026-03-01T10:00:00 step 2 promote by mallory (typed): REFUSED: not an "
        "approver",
        "    #2 2026-03-01T10:00:00 step 2 promote by alice (typed): counted",
        "  awaiting: promote needs 1 more of quorum 2 from bob, carol",
        "  abort needs one of alice, bob, carol",
        "  decide with: workbench canary promote|abort --env prod --as NAME [--comment TEXT]"]
    unreachable = control.describe(CanaryStatus(state={**state, "status": "watching",
                                                        "pause": "30s"}, stats=None))
    assert "timed (pause 30s)" in unreachable
    assert "this window: the endpoint's proxy did not answer" in unreachable
    assert unreachable.endswith("no decision awaited: the step ends by itself")


# --- decisions against a rollout state, as a running rollout writes it ------------------------


@pytest.fixture
def held(mini_project: Workspace) -> Workspace:
    """A project whose prod canary is held at manual step 2 by this process."""
    ws = mini_project
    ws.write_yaml("environments.yaml", {"environments": {
        "prod": {"deploy": {"port": 5998, "strategy": "canary", "canary": {
            "steps": [{"weight": 10, "pause": "1s"}, {"weight": 50, "pause": "manual"}]}}},
        "dev": {"deploy": {"port": 5997}}}})
    ws.write_yaml("pipeline.yaml", {"name": "p", "stages": [
        {"name": "one", "notebook": "notebooks/one.ipynb"}]})
    ws.write_notebook("one", notebook("print(1)"))
    ws.write_yaml("gates.yaml", {"policies": {"prod": {"approvers": ["alice", "bob"],
                                                       "quorum": 1}}})
    project = Project(ws.root)
    ledger.append(project.reports, "stage_executed", actor=None, run_id="r0", data={})
    state = {"rollout": ROLLOUT, "key": "prod", "environment": "prod", "model": "m",
             "version": "3", "serving_version": "2", "url": "http://127.0.0.1:9",
             "pid": os.getpid(), "run_id": None, "started": "2026-03-01T10:00:00+00:00",
             "ledger_offset": rollout.ledger_size(project.reports),
             "steps": [{"weight": 10, "pause": "1s"}, {"weight": 50, "pause": "manual"}],
             "analysis": {}, "done": [], "step": STEP, "weight": 50.0, "pause": "manual",
             "window": "w", "step_started": "2026-03-01T10:00:00+00:00", "status": "paused"}
    project.servers.mkdir(parents=True)
    rollout.state_file(project, "prod").write_text(json.dumps(state))
    return ws


def reader(project: Project) -> rollout.Control:
    state = json.loads(rollout.state_file(project, "prod").read_text())
    return rollout.Control(project, "prod", state, int(state["ledger_offset"]))


def test_decisions_are_recorded_and_the_rollout_obeys_only_what_the_ledger_vouches_for(
        held: Workspace) -> None:
    project = Project(held.root)
    folder = rollout.decisions_dir(project, "prod")
    obeys = reader(project)
    with pytest.raises(CanaryRefused, match=r"refused and recorded as #1: 'mallory' is not an "
                       r"approver for prod; the policy allows \['alice', 'bob'\]"):
        control.submit(project, "prod", "promote", who("mallory"), "ok", via="cli")
    assert obeys.decision(STEP) is None  # a refused attempt takes no effect
    # a decision written by hand into the journal (chained, but in no ledger entry)
    from workbench.audit import journal

    forged = decision(0, "bob").body()
    journal.append(folder, {**forged, "rollout": ROLLOUT})
    assert obeys.decision(STEP) is None
    entry, found = control.submit(project, "prod", "promote", who("alice"), "looks fine",
                                  via="cli")
    assert (entry.seq, found.state, found.by) == (3, "promote", ["alice"])
    assert found.not_counted[-1]["reason"].startswith("not in the ledger")
    taken = obeys.decision(STEP)
    assert taken is not None and (taken["effect"], taken["by"], taken["counted"]) == (
        "promote", ["alice"], [3])
    assert obeys.decision(STEP) is None  # read once: later reads start after it
    events = [e for e in ledger.entries(project.reports) if e["event"] == "canary_decision"]
    assert [(e["data"]["seq"], e["data"]["accepted"], e["data"]["effect"]) for e in events] \
        == [(1, False, None), (3, True, "promote")]
    assert set(events[1]["files"]) == {"canary/prod/0003.json"}
    record = json.loads((folder / "0003.json").read_text())
    assert record["approver"]["name"] == "alice" and record["comment"] == "looks fine"
    assert record["step_digest"] == control.step_digest(
        json.loads(rollout.state_file(project, "prod").read_text()), STEP)

    # a vouched entry for another step never takes effect on this one
    assert reader(project).decision(STEP + 1) is None
    # audit verify: the hand-written record is named, incrementally too
    index = ledger.index(project.reports)
    problems = coverage.check(project.reports, index).problems
    assert problems == ["reports/canary/prod/0002.json: in no ledger entry (a record written "
                        "by hand, or one the ledger lost)"]
    incremental = coverage.check(project.reports, ledger.index(project.reports, set()), set())
    assert incremental.problems == problems
    (folder / "0002.json").chmod(0o644)
    (folder / "0003.json").chmod(0o644)
    (folder / "0003.json").write_text((folder / "0003.json").read_text().replace(
        "looks fine", "looks great"))
    assert reader(project).decision(STEP) is None  # changed since the ledger recorded it
    assert any("canary/prod/0003.json: content changed" in p
               for p in coverage.check(project.reports, ledger.index(project.reports)).problems)


def test_nothing_to_decide_is_a_usage_error(held: Workspace) -> None:
    project = Project(held.root)
    with pytest.raises(CanaryUsageError, match="no canary is running on dev"):
        control.submit(project, "dev", "abort", who("alice"), None, via="cli")
    # prod is strict (its name, no strict: false): a decision there needs a comment
    with pytest.raises(CanaryUsageError, match="a decision for prod needs a comment"):
        control.submit(project, "prod", "abort", who("alice"), "  ", via="cli")
    path = rollout.state_file(project, "prod")
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "status": "watching", "step": 1, "weight": 10.0,
                                "pause": "1s"}))
    with pytest.raises(CanaryUsageError, match=r"a timed step \(pause 1s\): it ends by itself"):
        control.submit(project, "prod", "abort", who("alice"), "why", via="cli")
    path.write_text(json.dumps({**state, "pid": 2 ** 22 + 17}))  # its process is gone
    assert control.held(project, "prod") is None
    assert not (project.reports / "canary").exists()  # nothing was recorded


def test_the_cli_shows_status_and_records_decisions(held: Workspace) -> None:
    # the state names this test's process, which the CLI sees alive
    shown = held.cli("canary", "status", "--env", "prod")
    assert shown.returncode == 0, shown.stderr
    assert "held at a manual step" in shown.stdout
    assert "this window: the endpoint's proxy did not answer" in shown.stdout
    assert "promote needs 1 more of quorum 1 from alice, bob" in shown.stdout
    refused = held.cli("canary", "promote", "--env", "prod", "--as", "mallory", "--comment",
                       "ship it")
    assert refused.returncode == 1
    assert "error: refused and recorded as #1: 'mallory' is not an approver" in refused.stderr
    aborted = held.cli("canary", "abort", "--env", "prod", "--as", "bob", "--comment", "p99")
    assert aborted.returncode == 0, aborted.stderr
    assert aborted.stdout.splitlines() == [
        "recorded #2: abort by bob (typed) for the canary of m v3 on prod, step 2 (50%)",
        "aborted by bob: the rollout goes back to the serving version"]
    nothing = held.cli("canary", "promote", "--env", "dev", "--as", "alice", "--comment", "x")
    assert nothing.returncode == 2 and "no canary is running on dev" in nothing.stderr
    as_json = json.loads(held.cli("canary", "status", "--env", "prod", "--json").stdout)
    assert [(r["seq"], r["decision"], r["accepted"]) for r in as_json["records"]] == [
        (1, "promote", False), (2, "abort", True)]
    assert as_json["verdict"]["state"] == "abort"
    assert held.cli("canary", "status", "--env", "dev").stdout.strip() == \
        "no canary is running on dev"


def test_signed_decisions_verify_and_audit_checks_them(held: Workspace, tmp_path: Path
                                                       ) -> None:
    key = tmp_path / "alice_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f",
                    str(key)], check=True)
    public = key.with_suffix(".pub").read_text().split()
    (held.root / "configs" / "allowed_signers").write_text(
        f"alice {public[0]} {public[1]}\n")
    held.write_yaml("gates.yaml", {"policies": {"prod": {
        "approvers": ["alice", "bob"], "quorum": 1, "require_signature": True}}})
    project = Project(held.root)
    with pytest.raises(CanaryRefused, match="requires the approver's SSH signature"):
        control.submit(project, "prod", "promote", who("alice"), "ok", via="cli")
    with pytest.raises(CanaryRefused, match="signature of 'bob' refused"):
        control.submit(project, "prod", "promote", who("bob"), "ok", via="cli", sign_with=key)
    entry, found = control.submit(project, "prod", "promote", who("alice"), "ok", via="cli",
                                  sign_with=key)
    assert entry.signature is not None and found.state == "promote"
    assert reader(project).decision(STEP) is not None
    # outside a run there is no configuration snapshot in the archive: a note, no problem
    checked = coverage.check(project.reports, ledger.index(project.reports))
    assert checked.problems == []
    assert checked.notes == ["reports/canary/prod/0003.json: signed by 'alice' during a "
                             "rollout outside a run: no configuration snapshot to check it "
                             "against offline"]


def test_the_review_form_has_canary_buttons_while_one_is_held(held: Workspace) -> None:
    from types import SimpleNamespace

    from workbench.governance.review import ApprovalForm

    project = Project(held.root)
    verdict_ = SimpleNamespace(signature_required=False, state="awaiting", missing=1)
    form = ApprovalForm(SimpleNamespace(project=project, environment="prod", verdict=verdict_))
    assert form.canary_status.value == "canary of m v3 held at step 2 (50%): promote or abort it"
    form.approver.value, form.comment.value = "mallory", "ship it"
    form.promote_canary.click()
    assert form.canary_status.value.startswith("<b>not recorded</b>: refused and recorded as "
                                               "#1: &#x27;mallory&#x27; is not an approver")
    form.approver.value = "alice"
    form.promote_canary.click()
    assert form.canary_status.value == ("<b>recorded</b> #2: promote of canary step 2 by "
                                        "alice; promoted by alice: the rollout moves on")
    assert reader(project).decision(STEP) is not None
    assert [r.via for r in control.read_records(project, "prod")] == ["notebook", "notebook"]
    elsewhere = ApprovalForm(SimpleNamespace(project=project, environment="dev",
                                             verdict=verdict_))
    assert not hasattr(elsewhere, "promote_canary")  # nothing held there: no buttons
