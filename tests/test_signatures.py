"""SSH-signed decisions without kernels: the allowed signers file, real ``ssh-keygen``
signatures and every rule of the gate policy about them."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GATES
from workbench import signatures
from workbench.config import SIGNERS_FILE, ConfigError, Gates, parse_config
from workbench.governance.approvals import evaluate
from workbench.identity import Identity
from workbench.records import ApprovalRecord

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
BUNDLE = "b" * 64
REQUESTER = Identity(name="bob", source="github")


def keygen(folder: Path, name: str) -> Path:
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                   check=True)
    return key


def signer_line(names: str, key: Path, options: str = "") -> str:
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    return " ".join(part for part in (names, options, kind, blob) if part)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    return {name: keygen(folder, name) for name in ("dave", "erin", "mallory")}


@pytest.fixture(scope="module")
def signers_text(keys: dict[str, Path]) -> str:
    return "# who signs for whom\n" + "\n".join(
        [signer_line("dave", keys["dave"]), signer_line("erin,erin.b", keys["erin"],
                                                        'namespaces="workbench-approval"')]
    ) + "\n"


def decision(seq: int, name: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "approval", "seq": seq, "run_id": "r1", "environment": "prod",
            "decision": "approve", "accepted": True, "comment": "ok, ü",
            "approver": {"name": name, "source": "typed", "os_user": "shared"},
            "time": (NOW - timedelta(minutes=5)).isoformat(), "bundle_digest": BUNDLE,
            **fields}


def signed_record(seq: int, name: str, key: Path, **fields: Any) -> ApprovalRecord:
    data = decision(seq, name, **fields)
    data["signature"] = signatures.sign(signatures.message(data), key).model_dump()
    return ApprovalRecord.model_validate(data)


def checks(records: list[ApprovalRecord], text: str) -> dict[int, str | None]:
    return {r.seq: signatures.verify(signatures.message(r.body()), r.signature,
                                     r.approver.name, text)
            for r in records if r.signature is not None}


def gates(require: bool = True) -> Gates:
    prod = {**GATES["policies"]["prod"], "require_signature": require}
    return Gates.model_validate({**GATES, "policies": {**GATES["policies"], "prod": prod}})


def verdict(records: list[ApprovalRecord], text: str, require: bool = True) -> Any:
    return evaluate(records, gates(require), "prod", "gate", BUNDLE, REQUESTER, REQUESTER,
                    now=NOW, signed=checks(records, text))


# --- the allowed signers file ------------------------------------------------------------


def test_allowed_signers_lines_and_their_problems(signers_text: str) -> None:
    found, problems = signatures.parse(signers_text)
    assert problems == []
    assert [s.names for s in found] == [("dave",), ("erin", "erin.b")]
    assert found[1].key.startswith("ssh-ed25519 ") and found[1].line == 3
    assert signatures.names(signers_text) == {"dave", "erin", "erin.b"}
    _, problems = signatures.parse("dave ssh-dss AAAA\n*@example.com ssh-ed25519 AAAA\n"
                                   "ssh-ed25519 AAAA\n", "configs/allowed_signers")
    assert problems[0].startswith("configs/allowed_signers:1: expected NAMES [OPTIONS] KEYTYPE")
    assert problems[1].startswith("configs/allowed_signers:2: the first field must name")
    assert problems[2].startswith("configs/allowed_signers:3: the first field must name")


def test_config_snapshots_the_signers_and_names_every_problem(signers_text: str) -> None:
    texts = {"pipeline.yaml": "name: p\nstages:\n- {name: a, notebook: notebooks/a.ipynb}\n",
             "environments.yaml": "environments:\n  dev: {deploy: {target: local, port: 5001}}\n"
                                  "  prod: {deploy: {target: local, port: 5002}}\n",
             "model.yaml": "name: m\n"}
    gates_yaml = ("policies:\n  prod: {approvers: [dave, erin], quorum: 1, "
                  "require_signature: true}\n")
    config = parse_config({**texts, "gates.yaml": gates_yaml, SIGNERS_FILE: signers_text})
    assert config.signers == signers_text and config.sources[SIGNERS_FILE] == signers_text
    assert config.gates.requires_signature("prod")
    with pytest.raises(ConfigError) as missing:
        parse_config({**texts, "gates.yaml": gates_yaml})
    assert "configs/gates.yaml: policies.prod.require_signature: needs configs/allowed_signers" \
        in str(missing.value)
    with pytest.raises(ConfigError) as bad:
        parse_config({**texts, "gates.yaml": gates_yaml, SIGNERS_FILE: "dave ssh-foo AAAA\n"})
    assert "configs/allowed_signers: line 1: expected NAMES [OPTIONS] KEYTYPE BASE64" \
        in str(bad.value)


def test_policy_version_is_unchanged_unless_signatures_are_required() -> None:
    plain = Gates.model_validate(GATES)
    assert gates(require=False).version("prod") != plain.version("prod")  # false is a choice
    unset = Gates.model_validate({**GATES})
    assert unset.version("prod") == plain.version("prod")
    assert "require_signature" not in str(plain.policies["prod"].model_dump(exclude_none=True))
    assert gates().version("prod") != plain.version("prod")


# --- signing and verifying with ssh-keygen --------------------------------------------------


def test_a_signature_verifies_for_its_name_only(keys: dict[str, Path], signers_text: str
                                                ) -> None:
    data = decision(1, "dave")
    sealed = signatures.sign(signatures.message(data), keys["dave"])
    assert sealed.armored.startswith("-----BEGIN SSH SIGNATURE-----")
    assert sealed.fingerprint.startswith("SHA256:")
    assert signatures.verify(signatures.message(data), sealed, "dave", signers_text) is None
    assert signatures.verify(signatures.message(data), sealed, "erin", signers_text) == \
        "signed with a key configs/allowed_signers maps to dave, not to 'erin'"
    for changed in ({"comment": "edited"}, {"bundle_digest": "c" * 64},
                    {"decision": "reject"}, {"time": NOW.isoformat()},
                    {"diff_digest": "d" * 64}, {"approver": {"name": "erin"}}):
        problem = signatures.verify(signatures.message({**data, **changed}), sealed,
                                    str((changed.get("approver") or {}).get("name", "dave")),
                                    signers_text)
        assert problem is not None, changed
    edited = signatures.verify(signatures.message({**data, "comment": "x"}), sealed, "dave",
                               signers_text)
    assert edited is not None and edited.startswith("the signature does not match the decision")


def test_unlisted_keys_other_namespaces_and_missing_files_are_refused(
        keys: dict[str, Path], signers_text: str, tmp_path: Path) -> None:
    data = signatures.message(decision(1, "dave"))
    by_mallory = signatures.sign(data, keys["mallory"])
    assert signatures.verify(data, by_mallory, "dave", signers_text) == \
        "signed with a key configs/allowed_signers of this run does not list"
    assert signatures.verify(data, by_mallory, "zoe", signers_text) == \
        "configs/allowed_signers of this run maps no key to 'zoe'"
    assert signatures.verify(data, signatures.sign(data, keys["dave"]), "dave", "") == \
        "this run's configuration has no configs/allowed_signers to check it against"
    payload = tmp_path / "decision.json"
    payload.write_bytes(data)
    subprocess.run(["ssh-keygen", "-Y", "sign", "-q", "-f", str(keys["dave"]), "-n", "git",
                    str(payload)], check=True, capture_output=True)
    as_git = signatures.Signature(armored=(tmp_path / "decision.json.sig").read_text())
    assert signatures.verify(data, as_git, "dave", signers_text) is not None
    with pytest.raises(signatures.SignatureError, match="no-such-key: no such file"):
        signatures.sign(data, tmp_path / "no-such-key")


def test_a_namespace_option_in_the_file_is_applied(keys: dict[str, Path]) -> None:
    text = signer_line("dave", keys["dave"], 'namespaces="git"') + "\n"
    data = signatures.message(decision(1, "dave"))
    assert signatures.verify(data, signatures.sign(data, keys["dave"]), "dave", text) \
        is not None


# --- the policy, rule by rule -------------------------------------------------------------


def test_required_signature_refuses_a_typed_name_alone(keys: dict[str, Path],
                                                       signers_text: str) -> None:
    typed = [ApprovalRecord.model_validate(decision(1, "dave")),
             ApprovalRecord.model_validate(decision(2, "erin"))]
    found = verdict(typed, signers_text)
    assert found.state == "awaiting" and found.approved_by == []
    assert found.signature_required and "--sign KEY" in found.describe("r1")
    assert found.not_counted[0]["reason"] == \
        "unsigned: a typed name counts here only with the approver's SSH signature"
    assert verdict(typed[:1], signers_text, require=False).approved_by == ["dave"]


def test_signed_approvals_by_two_key_holders_make_a_quorum(keys: dict[str, Path],
                                                           signers_text: str) -> None:
    records = [signed_record(1, "dave", keys["dave"]), signed_record(2, "erin", keys["erin"])]
    found = verdict(records, signers_text)
    # typed on one OS account, but each proven by their own key: two people
    assert found.state == "approved" and found.approved_by == ["dave", "erin"]
    same_key = [signed_record(1, "dave", keys["dave"]), signed_record(2, "dave", keys["dave"])]
    assert verdict(same_key, signers_text).missing == 1
    unsigned_second = [records[0], ApprovalRecord.model_validate(decision(2, "erin"))]
    assert verdict(unsigned_second, signers_text, require=False).state == "approved"


def test_a_platform_identity_counts_without_a_signature(signers_text: str) -> None:
    vouched = [ApprovalRecord.model_validate({**decision(1, "dave"), "approver": {
        "name": "dave", "source": "github"}}), ApprovalRecord.model_validate({
            **decision(2, "erin"), "approver": {"name": "erin", "source": "gitlab"}})]
    assert verdict(vouched, signers_text).state == "approved"


def test_bad_signatures_never_count_required_or_not(keys: dict[str, Path],
                                                    signers_text: str) -> None:
    wrong_key = signed_record(1, "dave", keys["erin"])
    other_bundle = signed_record(2, "erin", keys["erin"], bundle_digest="a" * 64)
    moved = ApprovalRecord.model_validate({**decision(2, "erin"),
                                           "signature": other_bundle.signature})
    edited = signed_record(3, "erin", keys["erin"]).model_copy(update={"comment": "changed"})
    for require in (True, False):
        found = verdict([wrong_key, moved, edited], signers_text, require=require)
        assert found.state == "awaiting" and found.approved_by == []
        reasons = [n["reason"] for n in found.not_counted]
        assert reasons[0] == ("signature refused: signed with a key configs/allowed_signers "
                              "maps to erin, erin.b, not to 'dave'")
        assert reasons[1].startswith("signature refused: the signature does not match")
        assert reasons[2].startswith("signature refused: the signature does not match")
    unchecked = evaluate([signed_record(1, "dave", keys["dave"])], gates(), "prod", "gate",
                         BUNDLE, REQUESTER, REQUESTER, now=NOW)
    assert unchecked.not_counted[0]["reason"] == "signature not checked"


def test_separation_of_duties_still_applies_to_a_signed_name(keys: dict[str, Path],
                                                             signers_text: str) -> None:
    mine = [signed_record(1, "dave", keys["dave"])]
    found = evaluate(mine, gates(), "prod", "gate", BUNDLE,
                     Identity(name="dave", source="typed", os_user="shared"), None, now=NOW,
                     signed=checks(mine, signers_text))
    assert found.not_counted[0]["reason"] == "may not approve: requested the release"
