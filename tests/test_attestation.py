"""Attestations without kernels: the statement, DSSE signing and verifying, the project key,
tamper detection (payload, key, model files) and `workbench attest` on real files."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import GATED_PIPELINE, GATES, MINI_MODEL, Workspace
from workbench.audit import ledger
from workbench.clock import utc_now
from workbench.config import ConfigError, parse_config
from workbench.digests import canonical, file_sha256
from workbench.governance import attestation, attestation_check, dsse, project_key, promotion
from workbench.governance.approvals import Verdict
from workbench.governance.bundle import Bundle, listing_digest, tree_files
from workbench.identity import Identity
from workbench.project import Project
from workbench.records import ApprovalRecord
from workbench.run_record import ModelVersion, RunRecord, StageRecord, run_dir

RUN = "20261127T093000Z-abc123"
ALICE = Identity(name="alice", source="typed")
CAROL = Identity(name="carol", source="github")
ENVIRONMENTS = {"environments": {name: {"deploy": {"target": "local", "port": port}}
                                 for name, port in (("dev", 5101), ("qa", 5102),
                                                    ("prod", 5103))}}


def texts(attest: dict[str, Any] | None = None, secrets: list[str] | None = None
          ) -> dict[str, str]:
    pipeline = {**GATED_PIPELINE, **({"attestation": attest} if attest else {}),
                **({"secrets": secrets} if secrets else {})}
    return {"pipeline.yaml": yaml.safe_dump(pipeline), "model.yaml": yaml.safe_dump(MINI_MODEL),
            "environments.yaml": yaml.safe_dump(ENVIRONMENTS),
            "gates.yaml": yaml.safe_dump(GATES)}


def model_dir(root: Path) -> Path:
    """A model artifact folder as MLflow writes one (registered_model_meta left out of
    digests: MLflow rewrites it on load)."""
    (root / "sub").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "model.skops").write_bytes(b"\x00weights")
    (root / "sub" / "requirements.txt").write_text("scikit-learn\n")
    (root / "registered_model_meta").write_text("model_name: mini\n")
    return root


@pytest.fixture
def release(tmp_path: Path) -> dict[str, Any]:
    """A run past its qa gate, with its alias move recorded (journal and ledger): what the gate
    hands to :func:`attestation.attest`."""
    project = Project(tmp_path / "project")
    (project.root / "configs").mkdir(parents=True)
    config = parse_config(texts())
    folder = run_dir(project, RUN)
    folder.mkdir(parents=True)
    (folder / "build.ipynb").write_text("{}")
    files = tree_files(model_dir(tmp_path / "model"))
    record = RunRecord(
        id=RUN, pipeline="gated", environment="dev", created=utc_now(), git_commit="c" * 40,
        config_hash=config.digest, config=config.sources, tracking_uri="sqlite:///none.db",
        experiment="workbench", model_version=ModelVersion(name="mini", version="1"),
        stages={"build": StageRecord(status="succeeded", notebook="build.ipynb",
                                     parameters={"model_name": "mini"}),
                "approve_qa": StageRecord(status="running")})
    bundle = Bundle(environment="qa", digest="b" * 64, parts={
        "environment": "qa",
        "model": {"name": "mini", "version": "1", "artifact_digest": listing_digest(files)},
        "notebooks": {"build.ipynb": file_sha256(folder / "build.ipynb")},
        "config_hash": config.digest, "git_commit": "c" * 40,
        "parameters": {"build": {"model_name": "mini"}},
        "released": {"notebooks/release.ipynb": "r" * 64}})
    verdict = Verdict(environment="qa", gate="approve_qa", state="approved",
                      bundle_digest="b" * 64, policy_version="p" * 64, quorum=1,
                      approved_by=["alice"], approval_seqs=[1])
    move = promotion.record_move(project, RUN, alias="qa", model="mini", from_version=None,
                                 to_version="1", actor=CAROL, via="gate approve_qa",
                                 approvals=[1], bundle_digest="b" * 64)
    return {"project": project, "config": config, "record": record, "bundle": bundle,
            "verdict": verdict, "move": move, "files": files, "model": tmp_path / "model"}


def approval(seq: int = 1) -> ApprovalRecord:
    return ApprovalRecord(seq=seq, run_id=RUN, environment="qa", decision="approve",
                          accepted=True, approver=ALICE, via="cli", time=utc_now(),
                          bundle_digest="b" * 64)


def statement_of(release: dict[str, Any], approvals: list[ApprovalRecord]) -> dict[str, Any]:
    position = {"seq": 7, "hash": "h" * 64, "event": "alias_move", "ledger": "ledger.jsonl"}
    return attestation.build_statement(release["project"], release["config"],
                                       release["record"], release["verdict"],
                                       release["bundle"], release["move"], position,
                                       release["files"], approvals)


# --- DSSE -------------------------------------------------------------------------------------

def test_pae_is_the_dsse_specs_encoding() -> None:
    # the test vector of the DSSE protocol (secure-systems-lab/dsse, protocol.md)
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert dsse.pae("", b"") == b"DSSEv1 0  0 "


def test_a_sealed_envelope_verifies_and_any_change_breaks_it() -> None:
    key = Ed25519PrivateKey.generate()
    envelope = dsse.seal(b'{"a": 1}', key)
    assert envelope.payloadType == dsse.IN_TOTO_PAYLOAD_TYPE
    assert envelope.signatures[0].keyid == dsse.key_id(key.public_key())
    assert dsse.verify(envelope, key.public_key()) is None
    again = dsse.read(envelope.to_bytes(), "x.json")
    assert again == envelope and again.statement() == {"a": 1}

    raw_sig = base64.b64decode(envelope.signatures[0].sig)
    urlsafe = dsse.Envelope(payload=base64.urlsafe_b64encode(b'{"a": 1}').decode(),
                            payloadType=envelope.payloadType,
                            signatures=[dsse.Signature(sig=base64.urlsafe_b64encode(
                                raw_sig).decode())])
    assert dsse.verify(urlsafe, key.public_key()) is None, "DSSE allows URL-safe base64"

    changed = envelope.model_copy(update={"payload": base64.b64encode(b'{"a": 2}').decode()})
    assert "does not match the payload" in (dsse.verify(changed, key.public_key()) or "")
    retyped = envelope.model_copy(update={"payloadType": "application/json"})
    assert dsse.verify(retyped, key.public_key()) is not None, "the type is signed too"

    other = Ed25519PrivateKey.generate().public_key()
    wrong = dsse.verify(envelope, other) or ""
    assert wrong.startswith("bad signature: signed with key "
                            + dsse.key_id(key.public_key())[:16])
    assert dsse.verify(dsse.seal(b"{}", None), key.public_key()) == \
        "unsigned: the envelope has no signature"


def test_a_file_that_is_no_envelope_is_named() -> None:
    with pytest.raises(dsse.EnvelopeError, match="^notes.txt: not a DSSE envelope"):
        dsse.read(b"hello", "notes.txt")
    with pytest.raises(dsse.EnvelopeError, match="not a DSSE envelope"):
        dsse.read(b'{"payload": "***", "payloadType": "x", "signatures": []}', "bad.json")


# --- the statement ----------------------------------------------------------------------------

def test_statement_is_slsa_provenance_with_the_release_in_an_extension(release: dict[str, Any]
                                                                         ) -> None:
    statement = statement_of(release, [approval(1), approval(2)])
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert [s["name"] for s in statement["subject"]] == ["MLmodel", "model.skops",
                                                        "sub/requirements.txt"]
    assert statement["subject"][0]["digest"]["sha256"] == \
        file_sha256(release["model"] / "MLmodel")
    build = statement["predicate"]["buildDefinition"]
    assert build["buildType"].startswith("urn:workbench:")
    assert build["externalParameters"]["pipeline"] == "gated"
    assert build["externalParameters"]["environment"] == "qa"
    assert build["externalParameters"]["configHash"] == release["config"].digest
    names = {d["name"]: d for d in build["resolvedDependencies"]}
    assert names["git"]["digest"] == {"gitCommit": "c" * 40}
    assert names["stage:build"]["uri"] == f"reports/runs/{RUN}/build.ipynb"
    assert names["stage:build"]["annotations"]["notebook"] == "notebooks/build.ipynb"
    assert names["released:notebooks/release.ipynb"]["digest"] == {"sha256": "r" * 64}
    run = statement["predicate"]["runDetails"]
    assert run["metadata"]["invocationId"] == RUN
    assert run["metadata"]["finishedOn"].endswith("Z")
    extension = statement["predicate"]["workbench_release"]
    assert [a["approver"] for a in extension["approvals"]] == ["alice"], "only those counted"
    assert extension["approvals"][0]["seq"] == 1
    assert extension["approvals"][0]["bundleDigest"] == "b" * 64
    assert extension["aliasMove"]["seq"] == release["move"]["seq"]
    assert extension["ledger"]["seq"] == 7
    assert extension["model"]["artifactDigest"] == release["bundle"].parts["model"][
        "artifact_digest"]
    json.dumps(statement)  # plain JSON


def test_attest_archives_once_and_records_it_in_the_ledger(release: dict[str, Any]) -> None:
    key = project_key.SigningKey(Ed25519PrivateKey.generate(), "test")
    project = release["project"]
    attested = attestation.attest(project, release["config"], release["record"],
                                  release["verdict"], release["bundle"], release["move"],
                                  CAROL, key, release["files"])
    assert attested.path.parent == run_dir(project, RUN)
    assert attested.path.name == "attestation-0001-qa-v1.dsse.json"
    assert not attested.path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    envelope = dsse.read(attested.path.read_bytes(), attested.path.name)
    assert dsse.verify(envelope, key.key.public_key()) is None
    entry = [e for e in ledger.entries(project.reports) if e["event"] == "attestation"][-1]
    assert entry["seq"] == attested.ledger_seq
    assert entry["data"]["statement_sha256"] == attested.statement_sha256
    assert entry["data"]["signed"] is True and entry["data"]["keyid"] == key.keyid
    assert entry["files"] == {f"runs/{RUN}/{attested.path.name}": file_sha256(attested.path)}
    move_entry = [e for e in ledger.entries(project.reports) if e["event"] == "alias_move"][-1]
    position = envelope.statement()["predicate"]["workbench_release"]["ledger"]
    assert (position["seq"], position["hash"]) == (move_entry["seq"], move_entry["hash"])
    assert ledger.verify(project.reports).ok
    with pytest.raises(FileExistsError):  # written once, never overwritten
        attestation.attest(project, release["config"], release["record"], release["verdict"],
                           release["bundle"], release["move"], CAROL, key, release["files"])


# --- verifying --------------------------------------------------------------------------------

def checked(statement: dict[str, Any], key: Ed25519PrivateKey | None, trusted: Any,
            folder: Path | None, allow_unsigned: bool = False) -> attestation_check.Check:
    envelope = dsse.seal(canonical(statement), key)
    found = attestation_check.Check()
    attestation_check.check_signature(envelope, trusted, allow_unsigned, found)
    subjects = attestation_check.check_form(envelope.statement(), found)
    if folder is not None:
        attestation_check.check_files(subjects, folder, found)
    return found


def test_model_files_are_checked_one_by_one(release: dict[str, Any]) -> None:
    key = Ed25519PrivateKey.generate()
    statement = statement_of(release, [approval()])
    folder = release["model"]
    ok = checked(statement, key, key.public_key(), folder)
    assert ok.ok and ok.notes == [f"3 files match the subject ({folder})"]

    (folder / "registered_model_meta").write_text("model_name: other\n")  # MLflow's own
    assert checked(statement, key, key.public_key(), folder).ok

    (folder / "model.skops").write_bytes(b"\x00other weights")
    (folder / "sub" / "requirements.txt").unlink()
    (folder / "extra.py").write_text("print('hi')\n")
    found = checked(statement, key, key.public_key(), folder)
    assert [p.split(" (")[0] for p in found.problems] == [
        "file model.skops: sha256 differs",
        f"file sub/requirements.txt: missing from {folder}",
        f"file extra.py: in {folder} but not in the attestation"]


def test_a_changed_statement_wrong_key_or_no_signature_fails(release: dict[str, Any]) -> None:
    key = Ed25519PrivateKey.generate()
    statement = statement_of(release, [approval()])
    envelope = dsse.seal(canonical(statement), key)
    edited = {**statement, "subject": statement["subject"][:1]}
    forged = envelope.model_copy(update={"payload": base64.b64encode(canonical(edited)).decode()})
    found = attestation_check.Check()
    attestation_check.check_signature(forged, key.public_key(), False, found)
    attestation_check.check_form(forged.statement(), found)
    assert found.problems[0].startswith("bad signature")
    assert "does not add up to the model's artifact digest" in found.problems[1]

    other = Ed25519PrivateKey.generate()
    assert checked(statement, other, key.public_key(), None).problems[0].startswith(
        "bad signature: signed with key")
    unsigned = checked(statement, None, key.public_key(), None)
    assert unsigned.problems[0].startswith("unsigned")
    accepted = checked(statement, None, None, None, allow_unsigned=True)
    assert accepted.ok and "unsigned" in accepted.notes[0]


# --- the project key --------------------------------------------------------------------------

def test_keygen_writes_the_public_key_in_and_the_private_key_out(tmp_path: Path,
                                                                 monkeypatch: Any) -> None:
    project = Project(tmp_path / "project")
    (project.root / "configs").mkdir(parents=True)
    private = tmp_path / "home" / "keys" / "p.pem"
    keyid = project_key.generate(project, project.root / "keys/attestation.pub", private)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE" not in (project.root / "keys/attestation.pub").read_bytes()
    public = project_key.load_public(project.root / "keys/attestation.pub")
    assert dsse.key_id(public) == keyid
    with pytest.raises(project_key.AttestationKeyError, match="inside the project"):
        project_key.generate(project, project.root / "k.pub", project.root / "k.pem")
    with pytest.raises(project_key.AttestationKeyError, match="never overwritten"):
        project_key.generate(project, project.root / "k.pub", private)
    with pytest.raises(project_key.AttestationKeyError, match="--force replaces it"):
        project_key.generate(project, project.root / "keys/attestation.pub", tmp_path / "b.pem")

    config = parse_config(texts({"public_key": "keys/attestation.pub", "required": True}))
    monkeypatch.delenv("WORKBENCH_ATTESTATION_KEY", raising=False)
    with pytest.raises(project_key.AttestationKeyError, match="is not set"):
        project_key.signing_key(project, config)
    monkeypatch.setenv("WORKBENCH_ATTESTATION_KEY", str(private))
    found = project_key.signing_key(project, config)
    assert found is not None and found.keyid == keyid
    os.chmod(private, 0o644)
    with pytest.raises(project_key.AttestationKeyError, match=r"readable by others \(mode 644"):
        project_key.signing_key(project, config)
    os.chmod(private, 0o600)

    pem = private.read_text()
    monkeypatch.setenv("WORKBENCH_ATTESTATION_KEY", pem)
    with pytest.raises(project_key.AttestationKeyError, match="list WORKBENCH_ATTESTATION_KEY "
                       "under secrets:") as refused:
        project_key.signing_key(project, config)
    assert pem.splitlines()[1] not in str(refused.value), "never the key in a message"
    listed = parse_config(texts({"public_key": "keys/attestation.pub"},
                                secrets=["WORKBENCH_ATTESTATION_KEY"]))
    assert project_key.signing_key(project, listed) is not None

    other = tmp_path / "other.pem"
    project_key.generate(project, tmp_path / "other.pub", other)
    monkeypatch.setenv("WORKBENCH_ATTESTATION_KEY", str(other))
    with pytest.raises(project_key.AttestationKeyError, match="does not belong to the public "
                       "key keys/attestation.pub"):
        project_key.signing_key(project, config)


def test_attestation_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="attestation.public_key: .* must be a path inside"):
        parse_config(texts({"public_key": "/etc/key.pub"}))
    with pytest.raises(ConfigError, match="required: true needs public_key"):
        parse_config(texts({"required": True}))
    assert parse_config(texts()).pipeline.attestation.private_key_env == \
        "WORKBENCH_ATTESTATION_KEY"


def test_validate_names_a_public_key_that_is_not_there(gated_project: Workspace) -> None:
    from workbench.pipeline.validate import load_and_validate

    ws = gated_project
    ws.write_yaml("pipeline.yaml", {**ws.read_yaml("pipeline.yaml"), "attestation": {
        "public_key": "keys/attestation.pub"}})
    with pytest.raises(ConfigError, match=r"configs/pipeline.yaml: attestation.public_key: "
                       r"public key .*keys/attestation.pub: No such file"):
        load_and_validate(Project(ws.root))
    (ws.root / "keys").mkdir()
    (ws.root / "keys" / "attestation.pub").write_text("ssh-rsa AAAA\n")
    with pytest.raises(ConfigError, match="not a PEM or OpenSSH public key"):
        load_and_validate(Project(ws.root))


# --- the command ------------------------------------------------------------------------------

def test_attest_verify_command(gated_project: Workspace, tmp_path: Path,
                               release: dict[str, Any]) -> None:
    ws = gated_project
    made = ws.cli("attest", "keygen", "--private-key", str(tmp_path / "keys" / "a.pem"))
    assert made.returncode == 0, made.stderr
    assert "public key:  keys/attestation.pub (commit it)" in made.stdout
    assert "public_key: keys/attestation.pub" in made.stdout, "says what to configure"
    pipeline = ws.read_yaml("pipeline.yaml")
    ws.write_yaml("pipeline.yaml", {**pipeline, "attestation": {
        "public_key": "keys/attestation.pub"}})
    os.environ["WORKBENCH_ATTESTATION_KEY"] = str(tmp_path / "keys" / "a.pem")
    try:
        key = project_key.signing_key(Project(ws.root), parse_config(texts(
            {"public_key": "keys/attestation.pub"})))
    finally:
        del os.environ["WORKBENCH_ATTESTATION_KEY"]
    assert key is not None
    statement = statement_of(release, [approval()])
    signed = tmp_path / "signed.dsse.json"
    signed.write_bytes(dsse.seal(canonical(statement), key.key).to_bytes())
    folder = str(release["model"])

    ok = ws.cli("attest", "verify", str(signed), "--model-dir", folder)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "signature: ok (key " in ok.stdout and "keys/attestation.pub" in ok.stdout
    assert "mini v1 released to qa; approvals: alice (#1)" in ok.stdout
    assert ok.stdout.rstrip().endswith("attestation verified")

    (release["model"] / "MLmodel").write_text("flavors: {changed: true}\n")
    changed = ws.cli("attest", "verify", str(signed), "--model-dir", folder)
    assert changed.returncode == 1
    assert "FAIL file MLmodel: sha256 differs" in changed.stderr
    assert "attestation FAILED (1 problem)" in changed.stderr

    unsigned = tmp_path / "unsigned.dsse.json"
    unsigned.write_bytes(dsse.seal(canonical(statement), None).to_bytes())
    refused = ws.cli("attest", "verify", str(unsigned))
    assert refused.returncode == 1 and "FAIL unsigned" in refused.stderr
    accepted = ws.cli("attest", "verify", str(unsigned), "--allow-unsigned")
    assert accepted.returncode == 0 and "note: the attestation is unsigned" in accepted.stdout

    usage = ws.cli("attest", "verify", str(signed), "--model-dir", folder, "--from-registry")
    assert usage.returncode == 2 and "not both" in usage.stderr
    missing = ws.cli("attest", "verify", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "nope.json" in missing.stderr
