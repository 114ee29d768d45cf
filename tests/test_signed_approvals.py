"""A prod gate that requires SSH-signed approvals, with the real CLI, real kernels, a real
MLflow registry and real ``ssh-keygen`` signatures: typed names refused and recorded, a key of
someone else refused, forged and edited signed records refused by the gate and named by
``workbench audit verify``, and the JupyterLab form's signing path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Workspace
from workbench import signatures
from workbench.audit import journal

pytestmark = pytest.mark.slow


def keygen(folder: Path, name: str) -> Path:
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                   check=True)
    return key


def allowed(key: Path, names: str) -> str:
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    return f"{names} {kind} {blob}\n"


def approvals(ws: Workspace, run_id: str) -> dict[str, Any]:
    listing = ws.cli("approvals", run_id, "--json")
    assert listing.returncode == 0, listing.stderr
    return dict(json.loads(listing.stdout))


@pytest.fixture
def signing_project(gated_project: Workspace, tmp_path: Path) -> tuple[Workspace, dict[str, Path]]:
    ws = gated_project
    folder = tmp_path / "keys"
    folder.mkdir()
    keys = {name: keygen(folder, name) for name in ("dave", "erin", "mallory")}
    (ws.root / "configs" / "allowed_signers").write_text(
        "# approvers' SSH keys (git's allowed signers format)\n"
        + allowed(keys["dave"], "dave") + allowed(keys["erin"], "erin"))
    gates = ws.read_yaml("gates.yaml")
    gates["policies"]["prod"]["require_signature"] = True
    ws.write_yaml("gates.yaml", gates)
    return ws, keys


def test_prod_counts_signed_approvals_only(signing_project: tuple[Workspace, dict[str, Path]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ws, keys = signing_project
    assert ws.cli("run").returncode == 3
    run_id, folder = ws.run_record()["id"], ws.runs()[-1]
    qa = ws.cli("promote", run_id, "--to", "qa", "--as", "alice")  # qa: typed names count
    assert qa.returncode == 0, qa.stdout + qa.stderr

    typed = ws.cli("approve", run_id, "--env", "prod", "--as", "dave", "--comment", "ok")
    assert typed.returncode == 1
    assert "'dave' is a typed name and the prod policy requires the approver's SSH signature" \
        in typed.stderr
    not_his = ws.cli("approve", run_id, "--env", "prod", "--as", "dave", "--comment", "ok",
                     "--sign", str(keys["erin"]))
    assert not_his.returncode == 1
    assert "signature of 'dave' refused: signed with a key configs/allowed_signers maps to " \
        "erin, not to 'dave'" in not_his.stderr
    signed = ws.cli("approve", run_id, "--env", "prod", "--as", "dave", "--comment", "ok",
                    "--sign", str(keys["dave"]))
    assert signed.returncode == 0, signed.stdout + signed.stderr
    assert "signed (SHA256:" in signed.stdout and "needs 1 more of 2" in signed.stdout
    assert "--sign KEY" in signed.stdout  # how to approve, said where it is required
    listing = approvals(ws, run_id)
    prod = [r for r in listing["records"] if r["environment"] == "prod"]
    assert [(r["approver"]["name"], r["accepted"], r["signature"] is not None)
            for r in prod] == [("dave", False, False), ("dave", False, True),
                               ("dave", True, True)]
    assert listing["gates"]["prod"]["approved_by"] == ["dave"]
    assert verify(ws).returncode == 0  # refused attempts are notes, never failures

    # An insider with the archive and the library appends a record for erin carrying her
    # signature of another bundle: ledgered, but the gate refuses it and verify names it.
    bundle = listing["gates"]["prod"]["bundle_digest"]
    forged = {**prod[-1], "approver": {"name": "erin", "source": "typed"}, "comment": "fine"}
    forged["signature"] = signatures.sign(
        signatures.message({**forged, "bundle_digest": "0" * 64}), keys["erin"]).model_dump()
    body = {k: v for k, v in forged.items() if k not in ("seq", "previous", "digest")}
    journal.append_recorded(ws.root / "reports", folder / "approvals", body, event="approval",
                            actor=body["approver"], run_id=run_id,
                            ledger_data=lambda stored: {"environment": "prod",
                                                        "decision": "approve",
                                                        "accepted": True, "seq": stored["seq"],
                                                        "bundle_digest": bundle})
    gate = approvals(ws, run_id)["gates"]["prod"]
    assert gate["state"] == "awaiting" and gate["approved_by"] == ["dave"]
    assert gate["not_counted"][-1]["reason"].startswith(
        "signature refused: the signature does not match the decision")
    checked = verify(ws)
    assert checked.returncode == 1
    forged_file = f"reports/runs/{run_id}/approvals/{len(listing['records']) + 1:04d}.json"
    assert f"FAIL {forged_file}: signature of 'erin' does not verify" in checked.stderr
    assert checked.stderr.count("FAIL ") == 1, checked.stderr

    # erin signs in the JupyterLab form (the widget's key field), in this process
    monkeypatch.setenv("WORKBENCH_PROJECT", str(ws.root))
    from workbench.governance import review

    form = review.load(run_id, "prod").form()
    form.approver.value, form.comment.value = "erin", "load test fine"
    form.key.value = str(keys["erin"])
    form.approve_button.click()
    assert form.done, form.status.value
    assert "signed SHA256:" in form.status.value and "approved" in form.status.value

    # dave's record edited after he signed: not counted, and named
    daves = folder / "approvals" / f"{prod[-1]['seq']:04d}.json"
    kept = daves.read_text()
    daves.write_text(kept.replace('"comment": "ok"', '"comment": "ok, all of it"'))
    refused = ws.cli("resume", run_id)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"approvals/{daves.name}: content does not match its digest (edited)" in \
        refused.stderr
    named = verify(ws).stderr
    assert f"FAIL reports/runs/{run_id}/approvals/{daves.name}: content changed" in named
    assert f"FAIL reports/runs/{run_id}/approvals/{daves.name}: signature of 'dave' does " \
        f"not verify: the signature does not match the decision" in named
    daves.write_text(kept)
    finished = ws.cli("resume", run_id)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    moves = sorted((folder / "promotions").glob("*.json"))
    assert json.loads(moves[-1].read_text())["alias"] == "prod"


def verify(ws: Workspace) -> subprocess.CompletedProcess[str]:
    return ws.cli("audit", "verify")
