"""Soak time (issue 19, part 4): a gate refused before the soak and passing after it, every rule
on its own and without kernels; the time is injected, never slept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import GATES
from workbench.audit import ledger
from workbench.config import ConfigError, Gates, SoakPolicy, parse_config
from workbench.governance import soak
from workbench.governance.approvals import Verdict, evaluate
from workbench.governance.soak import Scope, SoakFacts, soak_facts
from workbench.identity import Identity
from workbench.records import ApprovalRecord

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
BUNDLE = "b" * 64
CAROL = Identity(name="carol", source="github")
SOAK = {"in": "qa", "for": "24h"}
SCOPE = Scope(model="mini", version="3", environment="qa", gated=True, drift_warns=False,
              run_id="run-1", stages=frozenset({"monitor_qa"}))


def gates(valid_for: str = "1h", **soak_policy: Any) -> Gates:
    """GATES with prod requiring a soak (``SOAK`` unless given)."""
    prod = {**GATES["policies"]["prod"], "valid_for": valid_for, "soak": soak_policy or SOAK}
    return Gates.model_validate({**GATES, "policies": {**GATES["policies"], "prod": prod}})


def approval(seq: int, name: str, decision: str = "approve", comment: str = "why"
             ) -> ApprovalRecord:
    return ApprovalRecord.model_validate({
        "kind": "approval", "seq": seq, "environment": "prod", "decision": decision,
        "accepted": True, "approver": {"name": name, "source": "typed"}, "comment": comment,
        "time": (NOW - timedelta(minutes=5)).isoformat(), "bundle_digest": BUNDLE})


QUORUM = [approval(1, "dave"), approval(2, "erin")]


def verdict(soaked: SoakFacts | None, records: list[ApprovalRecord] | None = None,
            now: datetime = NOW, policy: Gates | None = None) -> Verdict:
    return evaluate(QUORUM if records is None else records, policy or gates(), "prod",
                    "approve_prod", BUNDLE, CAROL, CAROL, now=now, soaked=soaked)


def started(ago: timedelta, **fields: Any) -> SoakFacts:
    return SoakFacts(version="3", started=(NOW - ago).isoformat(), start_seq=7, **fields)


# --- the rule, in evaluate --------------------------------------------------------------------


def test_gate_refused_before_the_soak_and_passing_after_it() -> None:
    facts = started(timedelta(hours=5, minutes=12))
    before = verdict(facts)
    assert before.state == "awaiting" and before.missing == 0 and before.soaking
    assert before.soak is not None and before.soak.left_s == pytest.approx(18 * 3600 + 48 * 60)
    text = before.describe("RUN")
    assert "gate approve_prod (prod) is awaiting its soak" in text
    assert "soak: v3 has served qa for 5h 12m of 24h; 18h 48m left" in text
    assert "workbench resume RUN" in text
    # the same facts, 18h 48m later (the time injected, not slept): the gate passes, with
    # approvals still valid then (prod's 1h would have expired them: approve after the soak)
    after = verdict(facts, now=NOW + timedelta(hours=18, minutes=48),
                    policy=gates(valid_for="2d"))
    assert after.state == "approved" and after.soak is not None and after.soak.passed
    assert "soak: v3 has served qa for 24h 0m of 24h: soaked" in after.describe("RUN")


def test_a_version_that_never_served_the_soak_environment_waits() -> None:
    found = verdict(SoakFacts(version="3"))
    assert found.state == "awaiting"
    assert "soak: v3 has not served qa yet; it must serve there 24h" in found.describe("RUN")
    unknown = verdict(None)  # no facts passed: never served
    assert unknown.state == "awaiting"
    assert "soak: the run's model has not served qa yet" in unknown.describe("RUN")


def test_a_breach_means_it_does_not_soak_however_long_it_served() -> None:
    breach = {"seq": 9, "time": (NOW - timedelta(hours=1)).isoformat(),
              "what": "was rolled back in qa to v2 (monitor: monitor breach)"}
    found = verdict(started(timedelta(days=3), breach=breach))
    assert found.state == "awaiting" and found.soak is not None and not found.soak.passed
    assert ("soak: v3 was rolled back in qa to v2 (monitor: monitor breach) at "
            "2026-11-27T11:00:00 (ledger #9): it does not soak") in found.describe("RUN")


def test_superseded_counts_the_time_it_served_until_then() -> None:
    ended = (NOW - timedelta(hours=20)).isoformat()
    short = verdict(started(timedelta(hours=21), ended=ended, ended_by="v4 served there"))
    assert short.state == "awaiting"
    assert "served qa for only 1h 0m of 24h, until v4 served there" in short.describe("RUN")
    assert "it can no longer soak there" in short.describe("RUN")
    long = verdict(started(timedelta(hours=50), ended=ended, ended_by="v4 served there"))
    assert long.state == "approved" and long.soak is not None and long.soak.served_s == 30 * 3600


def test_the_soak_does_not_replace_the_quorum_or_a_rejection() -> None:
    soaked = started(timedelta(days=2))
    one = verdict(soaked, [approval(1, "dave")])
    assert one.state == "awaiting" and one.missing == 1
    assert "needs 1 more of 2" in one.describe("RUN") and "soaked" in one.describe("RUN")
    rejected = verdict(started(timedelta(hours=1)), [*QUORUM, approval(3, "erin", "reject")])
    assert rejected.state == "rejected"


def test_the_soak_is_in_the_verdict_json_and_read_back() -> None:
    found = verdict(started(timedelta(hours=5)))
    data = found.model_dump(mode="json")
    assert data["soak"]["environment"] == "qa" and data["soak"]["required"] == "24h"
    assert data["soak"]["passed"] is False and data["soak"]["left_s"] == 19 * 3600
    assert data["soak"]["started"] == (NOW - timedelta(hours=5)).isoformat()
    assert Verdict.model_validate(data).describe("RUN") == found.describe("RUN")
    assert verdict(None, policy=Gates.model_validate(GATES)).soak is None


def test_a_clock_set_by_a_test_applies_to_the_soak_only() -> None:
    # the approvals are 5 minutes old and prod's valid for 1h: the approvals' expiry keeps the
    # real clock even when the soak's clock is two days on
    later = NOW + timedelta(days=2)
    found = verdict(started(timedelta(hours=1), now=later, clock=soak.CLOCK_VAR))
    assert found.state == "approved" and found.approved_by == ["dave", "erin"]
    assert "[clock 2026-11-29T12:00:00 from $WORKBENCH_SOAK_NOW: for tests only]" in \
        found.describe("RUN")


# --- the policy ---------------------------------------------------------------------------


TEXTS = {"pipeline.yaml": "name: p\nstages: [{name: a, notebook: a.ipynb}]\n",
         "environments.yaml": "environments: {dev: {deploy: {port: 5000}}, "
                              "qa: {deploy: {port: 5001}}, prod: {deploy: {port: 5002}}}\n",
         "model.yaml": "name: m\n"}


def policies(prod: dict[str, Any]) -> dict[str, str]:
    gates_yaml = {"policies": {"qa": {"approvers": ["alice"]},
                               "prod": {"approvers": ["carol"], **prod}}}
    return {**TEXTS, "gates.yaml": yaml.safe_dump(gates_yaml)}


def test_a_soak_policy_parses() -> None:
    config = parse_config(policies({"soak": {"in": "dev", "for": "90m"}}))
    policy = config.gates.policies["prod"].soak
    assert policy == SoakPolicy(within="dev", duration="90m")
    assert policy is not None and policy.duration_s == 5400 and not policy.test_clock


@pytest.mark.parametrize(("soak_policy", "message"), [
    ({"in": "staging", "for": "1h"}, "configs/gates.yaml: policies.prod.soak.in: 'staging' is "
     "not an environment before 'prod' in the promotion order; expected one of ['dev', 'qa']"),
    ({"in": "prod", "for": "1h"}, "policies.prod.soak.in: 'prod' is not an environment before"),
    ({"in": "qa", "for": "a while"},
     "configs/gates.yaml: policies.prod.soak.for: expected a duration such as 30m"),
    ({"in": "qa", "for": "0h"}, "policies.prod.soak.for: a soak needs a duration above zero"),
    ({"in": "qa"}, "configs/gates.yaml: policies.prod.soak.for: required key is missing"),
    ({"in": "qa", "for": "1h", "during": 1}, "policies.prod.soak.during: unknown key; "
     "expected one of ['in', 'for', 'test_clock']"),
])
def test_bad_soak_policies_name_the_key(soak_policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(policies({"soak": soak_policy}))
    assert message in str(caught.value)


def test_a_soak_after_the_gated_environment_is_refused() -> None:
    texts = policies({})
    texts["gates.yaml"] = yaml.safe_dump({"policies": {
        "qa": {"approvers": ["alice"], "soak": {"in": "prod", "for": "1h"}},
        "prod": {"approvers": ["carol"]}}})
    with pytest.raises(ConfigError) as caught:
        parse_config(texts)
    assert "policies.qa.soak.in: 'prod' is not an environment before 'qa'" in str(caught.value)


def test_policy_version_is_unchanged_without_a_soak() -> None:
    plain = Gates.model_validate(GATES)
    # what releases before soak time recorded for these policies
    assert plain.version("qa") == \
        "2422268011390b8ecabce90d46d1a74f625fe253227ec10f3fb67dd406d1f1b5"
    assert plain.version("prod") == \
        "812c79ff8c131e0d3b11e55fd40bfae3998a46e7a7aac456677e47b2ee55d2b6"
    assert gates().version("prod") != plain.version("prod")
    assert gates().version("qa") == plain.version("qa")
    assert gates(**{**SOAK, "test_clock": True}).version("prod") != gates().version("prod")


# --- the facts, from ledger entries ---------------------------------------------------------


def at(hours: float) -> str:
    return (NOW - timedelta(hours=hours)).isoformat()


def move(seq: int, hours: float, to: str, approvals: list[int] | None = None,
         alias: str = "qa") -> dict[str, Any]:
    return {"seq": seq, "time": at(hours), "event": "alias_move", "run_id": "run-1",
            "data": {"model": "mini", "alias": alias, "from_version": None, "to_version": to,
                     "approvals": [1] if approvals is None else approvals}}


def rollback(seq: int, hours: float, frm: str, to: str) -> dict[str, Any]:
    return {"seq": seq, "time": at(hours), "event": "rollback", "run_id": None,
            "data": {"environment": "qa", "model": "mini", "from_version": frm,
                     "to_version": to, "trigger": "monitor", "reason": "monitor breach"}}


def drift(seq: int, hours: float, drifted: list[str], **extra: Any) -> dict[str, Any]:
    return {"seq": seq, "time": at(hours), "event": "drift", "run_id": None,
            "data": {"environment": "qa", "model": "mini", "version": "3", "requests": 50,
                     "rows": 50, "drifted": drifted, **extra}}


def stage(seq: int, hours: float, name: str, status: str, run: str = "run-1"
          ) -> dict[str, Any]:
    return {"seq": seq, "time": at(hours), "event": "stage_executed", "run_id": run,
            "data": {"stage": name, "status": status}}


def test_the_stint_starts_with_the_gated_alias_move() -> None:
    facts = soak_facts([move(1, 30, "2"), move(2, 10, "3", approvals=[]), move(3, 5, "3"),
                        move(4, 4, "3", alias="prod"), move(5, 3, "3")], SCOPE)
    assert facts.started == at(5) and facts.start_seq == 3  # a move by hand does not count
    assert facts.ended is None and facts.breach is None  # moved again to it: the same stint
    ungated = soak_facts([move(2, 10, "3", approvals=[])],
                         Scope(**{**SCOPE.__dict__, "gated": False}))
    assert ungated.started == at(10)


def test_superseded_ends_the_stint_and_a_new_promotion_starts_another() -> None:
    facts = soak_facts([move(1, 30, "3"), move(2, 20, "4")], SCOPE)
    assert facts.started == at(30) and facts.ended == at(20)
    assert facts.ended_by == "v4 served there (ledger #2)"
    again = soak_facts([move(1, 30, "3"), rollback(2, 20, "3", "2"), move(3, 2, "3")], SCOPE)
    assert again.started == at(2) and again.breach is None and again.ended is None


def test_a_rollback_away_from_it_is_a_breach_and_back_to_it_a_start() -> None:
    facts = soak_facts([move(1, 30, "3"), rollback(2, 20, "3", "2")], SCOPE)
    assert facts.breach == {"seq": 2, "time": at(20), "what": "was rolled back in qa to v2 "
                            "(monitor: monitor breach)"}
    back = soak_facts([move(1, 30, "4"), rollback(2, 20, "4", "3")], SCOPE)
    assert back.started == at(20) and back.breach is None


def test_failing_drift_and_failed_stages_in_the_environment_are_breaches() -> None:
    drifted = soak_facts([move(1, 30, "3"), drift(2, 20, ["petal_width"])], SCOPE)
    assert drifted.breach is not None and drifted.breach["what"] == "drifted in qa (petal_width)"
    warns = Scope(**{**SCOPE.__dict__, "drift_warns": True})
    assert soak_facts([move(1, 30, "3"), drift(2, 20, ["petal_width"])], warns).breach is None
    missed = soak_facts([move(1, 30, "3"), drift(2, 20, [], performance_passed=False)], warns)
    assert missed.breach is not None and "missed an objective" in missed.breach["what"]
    failed = soak_facts([move(1, 30, "3"), stage(2, 20, "monitor_qa", "failed")], SCOPE)
    assert failed.breach is not None and failed.breach["what"] == \
        "failed stage monitor_qa in qa (run run-1)"
    for harmless in (stage(2, 20, "monitor_qa", "succeeded"), stage(2, 20, "other", "failed"),
                     stage(2, 20, "monitor_qa", "failed", run="run-2")):
        assert soak_facts([move(1, 30, "3"), harmless], SCOPE).breach is None
    before = soak_facts([drift(1, 40, ["x"]), rollback(2, 35, "3", "2"), move(3, 30, "3")],
                        SCOPE)
    assert before.breach is None and before.started == at(30)  # only since it began


def test_facts_for_reads_the_ledger_and_honours_the_test_clock_only_when_declared(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.config import Config

    reports = tmp_path / "reports"
    ledger.append(reports, "alias_move", actor=None, run_id="run-1",
                  data={"model": "mini", "alias": "qa", "from_version": None,
                        "to_version": "3", "approvals": [1]})
    config = parse_config({**TEXTS, "gates.yaml": yaml.safe_dump(
        {"policies": {"qa": {"approvers": ["alice"]}, "prod": {"approvers": ["carol"]}}})})
    assert isinstance(config, Config)

    class Record:  # what facts_for reads of a run record
        id = "run-1"
        model_version = type("MV", (), {"name": "mini", "version": "3"})()

    class Project:
        pass

    project = Project()
    project.reports = reports  # type: ignore[attr-defined]
    plain = SoakPolicy(within="qa", duration="1h")
    clocked = SoakPolicy(within="qa", duration="1h", test_clock=True)
    monkeypatch.setenv(soak.CLOCK_VAR, "2099-01-01T00:00:00")
    found = soak.facts_for(project, config, Record(), plain)  # type: ignore[arg-type]
    assert found.version == "3" and found.started is not None and found.now is None
    honoured = soak.facts_for(project, config, Record(), clocked)  # type: ignore[arg-type]
    assert honoured.now == datetime(2099, 1, 1, tzinfo=UTC)
    assert honoured.clock == soak.CLOCK_VAR
    monkeypatch.setenv(soak.CLOCK_VAR, "tomorrow")
    with pytest.raises(soak.SoakClockError, match="expected an ISO time"):
        soak.facts_for(project, config, Record(), clocked)  # type: ignore[arg-type]
    monkeypatch.delenv(soak.CLOCK_VAR)
    assert soak.facts_for(project, config, Record(), clocked).now is None  # type: ignore[arg-type]
