"""Gate policy, approval records and identities, without kernels: every rule on its own."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GATES, Workspace
from workbench import identity
from workbench.audit import journal
from workbench.config import ConfigError, Gates, parse_duration
from workbench.governance.approvals import evaluate
from workbench.identity import Identity
from workbench.records import ApprovalRecord

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
BUNDLE = "b" * 64
CAROL = Identity(name="carol", source="github")


def record(seq: int, name: str, decision: str = "approve", environment: str = "prod",
           bundle: str = BUNDLE, age: timedelta = timedelta(minutes=5), accepted: bool = True
           ) -> ApprovalRecord:
    return ApprovalRecord.model_validate({
        "kind": "approval", "seq": seq, "environment": environment, "decision": decision,
        "accepted": accepted, "refused": None if accepted else "not an approver",
        "approver": {"name": name, "source": "typed"}, "comment": "why",
        "time": (NOW - age).isoformat(), "bundle_digest": bundle})


def verdict(records: list[ApprovalRecord], environment: str = "prod",
            gates: Gates | None = None, requester: Identity | None = CAROL,
            trainer: Identity | None = CAROL) -> Any:
    return evaluate(records, gates or Gates.model_validate(GATES), environment, "gate",
                    BUNDLE, requester, trainer, now=NOW)


def test_quorum_of_two_needs_two_distinct_people() -> None:
    one = verdict([record(1, "dave"), record(2, "dave")])
    assert one.state == "awaiting" and one.approved_by == ["dave"] and one.missing == 1
    two = verdict([record(1, "dave"), record(2, "dave"), record(3, "erin")])
    assert two.state == "approved" and two.approved_by == ["dave", "erin"]
    assert two.approval_seqs == [1, 3]


def test_self_approval_is_refused_where_the_policy_forbids_it() -> None:
    found = verdict([record(1, "carol"), record(2, "dave")])  # carol requested the release
    assert found.state == "awaiting"
    assert found.not_counted[0]["reason"] == \
        "may not approve: requested the release and trained the model"
    assert found.excluded == {"carol": "requested the release and trained the model"}
    assert "carol" not in found.eligible
    # qa allows self-approval by default; prod forbids it by default
    assert verdict([record(1, "carol", environment="qa")], "qa").state == "approved"
    gates = Gates.model_validate({**GATES, "policies": {**GATES["policies"], "prod": {
        **GATES["policies"]["prod"], "allow_self_approval": True}}})
    assert verdict([record(1, "carol"), record(2, "dave")], gates=gates).state == "approved"


def test_requester_and_trainer_are_both_kept_out() -> None:
    found = verdict([record(1, "carol"), record(2, "dave"), record(3, "erin")],
                    requester=Identity(name="dave", source="os"), trainer=CAROL)
    assert found.state == "awaiting" and found.approved_by == ["erin"]
    assert found.excluded == {"carol": "trained the model", "dave": "requested the release"}


def test_approval_for_another_bundle_does_not_count() -> None:
    found = verdict([record(1, "dave", bundle="a" * 64), record(2, "erin")])
    assert found.state == "awaiting" and found.approved_by == ["erin"]
    assert found.not_counted == [{"seq": 1, "approver": "dave", "decision": "approve",
                                  "reason": f"for another bundle {'a' * 12}"}]


def test_expired_approval_does_not_count() -> None:
    fresh, stale = timedelta(minutes=59), timedelta(minutes=61)  # prod: valid for 1h
    assert verdict([record(1, "dave", age=fresh), record(2, "erin", age=fresh)]
                   ).state == "approved"
    found = verdict([record(1, "dave", age=stale), record(2, "erin", age=fresh)])
    assert found.state == "awaiting" and found.not_counted[0]["reason"].startswith("expired")
    assert verdict([record(1, "dave", "reject", age=stale)]).state == "rejected", \
        "a rejection does not expire"


def test_unknown_approver_and_refused_attempts_do_not_count() -> None:
    found = verdict([record(1, "mallory"), record(2, "bob"), record(3, "dave", accepted=False),
                     record(4, "erin")])
    assert found.state == "awaiting" and found.approved_by == ["erin"]
    reasons = {n["approver"]: n["reason"] for n in found.not_counted}
    assert reasons["mallory"] == reasons["bob"] == "not an approver under the current policy"
    assert reasons["dave"].startswith("refused")


def test_a_valid_rejection_fails_the_gate_even_with_a_quorum() -> None:
    found = verdict([record(1, "dave"), record(2, "erin"), record(3, "dave", "reject")])
    assert found.state == "rejected" and found.rejection["approver"] == "dave"
    assert "rejected by dave: why" in found.describe("RUN")
    # a rejection that does not count (other environment, other bundle) changes nothing
    ignored = verdict([record(1, "dave"), record(2, "erin"),
                       record(3, "dave", "reject", bundle="c" * 64),
                       record(4, "erin", "reject", environment="qa")])
    assert ignored.state == "approved"


def test_awaiting_message_says_who_how_many_and_which_bundle() -> None:
    text = verdict([record(1, "dave")]).describe("20261127T000000Z-abcdef")
    assert "needs 1 more of 2" in text and f"sha256:{BUNDLE}" in text
    assert "may approve: erin" in text
    assert "may not approve: carol (requested the release and trained the model)" in text
    assert "workbench approve 20261127T000000Z-abcdef --env prod --as NAME" in text


def test_policy_version_changes_with_the_policy() -> None:
    gates = Gates.model_validate(GATES)
    stricter = Gates.model_validate({**GATES, "policies": {**GATES["policies"], "qa": {
        **GATES["policies"]["qa"], "quorum": 2}}})
    assert gates.version("qa") != stricter.version("qa")
    assert gates.version("prod") == stricter.version("prod")


@pytest.mark.parametrize(("policies", "message"), [
    ({"qa": {"approvers": ["group:nobody"]}},
     "configs/gates.yaml: policies: policy 'qa': unknown group 'group:nobody'"),
    ({"qa": {"approvers": ["alice"], "quorum": 2}},
     "configs/gates.yaml: policies: policy 'qa': quorum 2 is more than the 1 distinct"),
    ({"qa": {"approvers": ["alice"], "valid_for": "soon"}},
     "configs/gates.yaml: policies.qa.valid_for: expected a duration such as 30m"),
    ({"qa": {"approvers": []}}, "configs/gates.yaml: policies.qa.approvers: List should have"),
    ({"qa": {"approvers": ["alice"], "quorom": 1}},
     "configs/gates.yaml: policies.qa.quorom: unknown key; expected one of ['approvers', "
     "'quorum', 'strict', 'allow_self_approval', 'valid_for', 'require_comment', "
     "'identity_sources', 'require_signature', 'soak']"),
])
def test_bad_policies_are_reported(policies: dict[str, Any], message: str) -> None:
    import yaml

    from workbench.config import parse_config

    texts = {"pipeline.yaml": "name: p\nstages: [{name: a, notebook: a.ipynb}]\n",
             "environments.yaml": "environments: {dev: {deploy: {port: 5000}, "
                                  "thresholds: {min_score: 0.5}}}\n",
             "model.yaml": "name: m\ndataset: iris\n"
                           "estimator: sklearn.linear_model.LogisticRegression\n",
             "gates.yaml": yaml.safe_dump({"groups": {}, "policies": policies})}
    with pytest.raises(ConfigError) as caught:
        parse_config(texts)
    assert message in str(caught.value)


def test_durations() -> None:
    assert parse_duration("90s") == 90 and parse_duration("30m") == 1800
    assert parse_duration("24h") == 86400 and parse_duration("1.5d") == 129600
    with pytest.raises(ValueError):
        parse_duration("1w")


# --- identities ---------------------------------------------------------------------------


def test_identity_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in identity.PLATFORM_IDENTITIES:
        monkeypatch.delenv(name[0], raising=False)
    assert identity.current().source == "os"
    typed = identity.current("alice")
    assert (typed.name, typed.source) == ("alice", "typed") and typed.os_user
    assert typed.model_dump() == {"name": "alice", "source": "typed", "os_user": typed.os_user}


def test_a_platform_variable_set_by_hand_is_only_a_typed_name(monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """GITHUB_ACTOR, JUPYTERHUB_USER, BUILD_USER_ID, GITLAB_USER_LOGIN set by hand claim a name
    nobody vouches for: it counts as typed by the OS user, and says why."""
    for name in identity.PLATFORM_IDENTITIES:
        monkeypatch.delenv(name[0], raising=False)
    for variable, source in identity.PLATFORM_IDENTITIES:
        monkeypatch.setenv(variable, "dave")
        found = identity.current()
        assert (found.name, found.source) == ("dave", "typed"), variable
        assert found.unvouched and found.unvouched.startswith(f"{source}: "), found.unvouched
        assert found.person() == f"os:{found.os_user}" and identity.platform_identity() is None
        assert identity.current("carol").name == "carol"  # nothing vouched: no contradiction
        monkeypatch.delenv(variable)


# --- append-only records ------------------------------------------------------------------


def test_journal_appends_never_overwrite_and_detect_edits(tmp_path: Path) -> None:
    folder = tmp_path / "approvals"
    first = journal.append(folder, {"decision": "approve", "who": "alice"})
    second = journal.append(folder, {"decision": "reject", "who": "bob"})
    assert (first["seq"], second["seq"]) == (1, 2) and second["previous"] == first["digest"]
    assert journal.read(folder) == [first, second]
    path = folder / "0001.json"
    assert not os.access(path, os.W_OK) or os.geteuid() == 0  # read-only for non-root
    assert oct(path.stat().st_mode)[-3:] == "444"
    original = path.read_bytes()

    edited = json.loads(original)
    edited["decision"] = "reject"
    path.chmod(0o644)
    path.write_text(json.dumps(edited))
    with pytest.raises(journal.JournalError, match="0001.json: content does not match"):
        journal.read(folder)
    path.write_bytes(original)

    (folder / "0002.json").unlink()
    assert journal.read(folder) == [first]
    journal.append(folder, {"decision": "approve", "who": "carol"})
    (folder / "0001.json").chmod(0o644)
    (folder / "0001.json").unlink()
    with pytest.raises(journal.JournalError, match="0002.json: expected entry 1"):
        journal.read(folder)


def test_journal_appends_from_many_processes_keep_every_entry(tmp_path: Path) -> None:
    import multiprocessing

    folder = tmp_path / "approvals"
    pool = multiprocessing.get_context("spawn").Pool(4)
    try:
        pool.starmap(journal.append, [(folder, {"n": n}) for n in range(24)])
    finally:  # close and join: see test_audit's concurrent appends
        pool.close()
        pool.join()
    entries = journal.read(folder)
    assert sorted(e["n"] for e in entries) == list(range(24))
    assert [e["seq"] for e in entries] == list(range(1, 25))


# --- configuration checks of gates in the pipeline ----------------------------------------


def _problems(ws: Workspace) -> str:
    done = ws.cli("validate")
    assert done.returncode == 2, done.stdout + done.stderr
    return done.stderr


def test_gate_without_policy_and_ungated_environment_are_config_errors(
        gated_project: Workspace) -> None:
    ws = gated_project
    assert ws.cli("validate").returncode == 0
    gates = ws.read_yaml("gates.yaml")
    del gates["policies"]["prod"]
    ws.write_yaml("gates.yaml", gates)
    assert "stages[3](approve_prod).gate: no approval policy for 'prod' in " \
           "configs/gates.yaml" in _problems(ws)
    ws.write_yaml("gates.yaml", GATES)
    pipeline = ws.read_yaml("pipeline.yaml")
    pipeline["stages"][2]["needs"] = ["build"]  # release_qa no longer behind approve_qa
    ws.write_yaml("pipeline.yaml", pipeline)
    assert "stages[2](release_qa).environment: acts on 'qa', which has an approval policy, " \
           "but no stage with 'gate: qa' is upstream" in _problems(ws)
    pipeline["stages"][2]["needs"] = ["approve_qa"]
    pipeline["stages"][1]["gate"] = "staging"
    ws.write_yaml("pipeline.yaml", pipeline)
    assert "stages[1](approve_qa).gate: unknown environment 'staging'" in _problems(ws)


def test_gated_environment_cannot_be_run_directly(gated_project: Workspace) -> None:
    done = gated_project.cli("run", "--env", "qa")
    assert done.returncode == 2
    assert "qa is behind an approval gate" in done.stderr
    assert gated_project.runs() == []


def test_config_error_names_gates_file(gated_project: Workspace) -> None:
    (gated_project.root / "configs" / "gates.yaml").write_text("policies: [\n")
    assert "configs/gates.yaml: line" in _problems(gated_project)
    with pytest.raises(ConfigError):
        from workbench.config import load_config

        load_config(gated_project.root / "configs")
