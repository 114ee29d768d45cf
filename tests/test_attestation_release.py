"""A real release through a gate makes a signed attestation: in the archive, the ledger and
MLflow; `workbench attest verify` accepts it, and names a model file changed afterwards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import Workspace

pytestmark = pytest.mark.slow


def test_a_gate_promotion_is_attested_and_verifies(gated_project: Workspace,
                                                   tmp_path: Path) -> None:
    ws = gated_project
    private = tmp_path / "keys" / "attestation.pem"  # outside the project
    made = ws.cli("attest", "keygen", "--private-key", str(private))
    assert made.returncode == 0, made.stderr
    ws.write_yaml("pipeline.yaml", {**ws.read_yaml("pipeline.yaml"), "attestation": {
        "public_key": "keys/attestation.pub", "required": True}})
    signing = {"WORKBENCH_ATTESTATION_KEY": str(private)}

    started = ws.cli("run", env=signing)
    assert started.returncode == 3, started.stdout + started.stderr
    run_id, folder = ws.run_record()["id"], ws.runs()[-1]
    assert not list(folder.glob("attestation-*")), "nothing is attested before a gate passes"
    approved = ws.cli("approve", run_id, "--env", "qa", "--as", "alice", "--comment", "ok")
    assert approved.returncode == 0, approved.stderr
    promoted = ws.cli("promote", run_id, "--to", "qa", env=signing)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    record = ws.run_record()
    assert record["stages"]["release_qa"]["status"] == "succeeded"

    # In the archive, once, read-only, and named by the ledger with its digest.
    [path] = folder.glob("attestation-*-qa-v1.dsse.json")
    assert record["stages"]["approve_qa"]["gate"]["attestation"] == path.name
    assert not path.stat().st_mode & 0o222
    entries = [json.loads(line) for line in
               (ws.root / "reports" / "ledger.jsonl").read_text().splitlines()]
    [entry] = [e for e in entries if e["event"] == "attestation"]
    assert entry["data"]["signed"] is True and entry["data"]["environment"] == "qa"
    assert f"runs/{run_id}/{path.name}" in entry["files"]
    envelope = json.loads(path.read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert len(envelope["signatures"]) == 1
    audit = ws.cli("audit", "verify")
    assert audit.returncode == 0, audit.stdout + audit.stderr

    # In MLflow: an artifact of the model version's run, and a tag on the version.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=record["tracking_uri"])
    version = client.get_model_version("mini", "1")
    assert version.tags["workbench.qa.attestation"] == \
        f"sha256:{entry['data']['statement_sha256']}"
    logged = Path(client.download_artifacts(
        version.run_id, f"workbench/attestations/{path.name}", str(tmp_path / "mlflow")))
    assert logged.read_bytes() == path.read_bytes()

    # Verified offline with the project's key, against the registry and against a folder.
    verified = ws.cli("attest", "verify", str(path), "--from-registry")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "signature: ok" in verified.stdout
    assert "released to qa; approvals: alice" in verified.stdout
    from workbench.governance.bundle import version_location

    files = Path(version_location(record["tracking_uri"], "mini", "1").removeprefix("file://"))
    copy = shutil.copytree(files, tmp_path / "model")
    assert ws.cli("attest", "verify", str(path), "--model-dir", str(copy)).returncode == 0

    # One model file changed afterwards: verify fails, naming it.
    with (files / "MLmodel").open("a") as handle:
        handle.write("# edited\n")
    tampered = ws.cli("attest", "verify", str(path), "--from-registry")
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    assert "FAIL file MLmodel: sha256 differs" in tampered.stderr
    assert "attestation FAILED (1 problem)" in tampered.stderr
