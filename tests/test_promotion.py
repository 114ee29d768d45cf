"""Promotion through gates with the real CLI, real kernels and a real MLflow registry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import scrapbook

from tests.conftest import Workspace, clean_environment

pytestmark = pytest.mark.slow


def snapshot(folder: Path) -> dict[str, str]:
    """Digest of every approval and promotion record written so far."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for sub in ("approvals", "promotions") if (folder / sub).is_dir()
            for p in sorted((folder / sub).glob("*.json"))}


def assert_kept(folder: Path, before: dict[str, str]) -> dict[str, str]:
    """Nothing recorded earlier was rewritten or removed; return the new snapshot."""
    now = snapshot(folder)
    assert {k: now.get(k) for k in before} == before
    return now


def records(folder: Path, kind: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((folder / kind).glob("*.json"))]


def alias_version(record: dict[str, Any], alias: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=record["tracking_uri"])
    return str(client.get_model_version_by_alias("mini", alias).version)


def test_release_through_both_gates(gated_project: Workspace, oidc: Any) -> None:
    ws = gated_project
    started = ws.cli("run", env=oidc.github("carol"))  # GitHub vouches for carol
    assert started.returncode == 3, started.stdout + started.stderr
    record = ws.run_record()
    run_id, folder = record["id"], ws.runs()[-1]
    assert record["status"] == "awaiting_approval"
    assert record["requested_by"]["name"] == "carol" and record["requested_by"]["source"] == \
        "github"
    assert record["stages"]["approve_qa"]["status"] == "awaiting_approval"
    assert record["stages"]["release_qa"]["status"] == "pending"
    assert "gate approve_qa (qa) is awaiting approval: needs 1 more of 1" in started.stderr
    assert "may approve: alice, bob, carol, dave, erin" in started.stderr
    digest = record["stages"]["approve_qa"]["gate"]["bundle_digest"]
    assert f"sha256:{digest}" in started.stderr
    assert not (folder / "approve_qa.ipynb").exists(), "no decision yet, nothing archived"
    kept = snapshot(folder)  # the dev alias move of the build stage
    assert [r["alias"] for r in records(folder, "promotions")] == ["dev"]

    # Unknown approver: refused, recorded, never counted.
    refused = ws.cli("approve", run_id, "--env", "qa", "--as", "mallory")
    assert refused.returncode == 1
    assert "'mallory' is not an approver for qa" in refused.stderr
    kept = assert_kept(folder, kept)
    assert records(folder, "approvals")[-1]["accepted"] is False

    # A CI actor cannot approve in someone else's name.
    spoofed = ws.cli("approve", run_id, "--env", "qa", "--as", "alice", env=oidc.github("bob"))
    assert spoofed.returncode == 2 and "you are 'bob' according to github" in spoofed.stderr

    approved = ws.cli("approve", "latest", "--env", "qa", "--as", "alice",
                      "--comment", "metrics hold")
    assert approved.returncode == 0, approved.stderr
    assert "gate approve_qa (qa) approved for bundle" in approved.stdout
    kept = assert_kept(folder, kept)

    # Resume: the qa gate passes (the alias moves), release_qa runs, prod waits.
    resumed = ws.cli("resume", run_id)
    assert resumed.returncode == 3, resumed.stdout + resumed.stderr
    record = ws.run_record()
    assert record["stages"]["approve_qa"]["status"] == "succeeded"
    assert record["stages"]["release_qa"]["outputs"]["released"] == "qa:1"
    assert record["stages"]["approve_prod"]["status"] == "awaiting_approval"
    assert alias_version(record, "qa") == "1"
    gate_nb = scrapbook.read_notebook(str(folder / "approve_qa.ipynb"))
    assert gate_nb.scraps["decision"].data == "approved"
    assert gate_nb.scraps["approvers"].data == ["alice"]
    moves = records(folder, "promotions")
    assert moves[-1]["alias"] == "qa" and moves[-1]["to_version"] == "1"
    assert moves[-1]["from_version"] is None and moves[-1]["approvals"] == [2]
    assert moves[-1]["bundle_digest"] == digest
    kept = assert_kept(folder, kept)

    # Prod: separation of duties, a comment required, and a quorum of two distinct people.
    no_comment = ws.cli("approve", run_id, "--env", "prod", "--as", "dave")
    assert no_comment.returncode == 2 and "needs a comment" in no_comment.stderr
    self_approval = ws.cli("approve", run_id, "--env", "prod", "--as", "carol", "--comment",
                           "mine")
    assert self_approval.returncode == 1
    assert "'carol' requested the release and trained the model and the prod policy forbids " \
        "self-approval" in self_approval.stderr
    for _ in range(2):  # the same person twice is still one approval
        twice = ws.cli("approve", run_id, "--env", "prod", "--as", "dave", "--comment", "ok")
        assert twice.returncode == 0 and "needs 1 more of 2" in twice.stdout
    # Another name typed by the same OS user is the same person: it does not make a quorum.
    typed = ws.cli("approve", run_id, "--env", "prod", "--as", "erin", "--comment", "me too")
    assert typed.returncode == 0 and "needs 1 more of 2" in typed.stdout
    assert "erin (the same person as #4 (OS user" in typed.stdout
    waiting = ws.cli("resume", run_id)
    assert waiting.returncode == 3 and "may approve: erin" in waiting.stderr
    assert "may not approve: carol (requested the release and trained" in waiting.stderr
    kept = assert_kept(folder, kept)

    listing = ws.cli("approvals", run_id, "--json")
    gates = json.loads(listing.stdout)["gates"]
    assert gates["qa"]["state"] == "approved" and gates["prod"]["approved_by"] == ["dave"]

    # erin in her own CI job, vouched for by GitHub: a second person.
    assert ws.cli("approve", run_id, "--env", "prod", "--comment", "load fine",
                  env=oidc.github("erin")).returncode == 0
    finished = ws.cli("resume", run_id)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    record = ws.run_record()
    assert record["status"] == "succeeded"
    assert all(stage["status"] == "succeeded" for stage in record["stages"].values())
    assert alias_version(record, "prod") == "1"
    prod_move = records(folder, "promotions")[-1]
    assert prod_move["alias"] == "prod" and sorted(prod_move["approvals"]) == [4, 7]
    assert_kept(folder, kept)
    entries = records(folder, "approvals")
    assert [(e["decision"], e["approver"]["name"], e["approver"]["source"], e["accepted"])
            for e in entries] == [
        ("approve", "mallory", "typed", False), ("approve", "alice", "typed", True),
        ("approve", "carol", "typed", False), ("approve", "dave", "typed", True),
        ("approve", "dave", "typed", True), ("approve", "erin", "typed", True),
        ("approve", "erin", "github", True)]
    assert all(e["environment"] in ("qa", "prod") and e["evidence"] for e in entries)
    assert ws.cli("resume", run_id).returncode == 2, "a finished run is not resumed"


def test_rejection_expiry_and_changed_bundle(gated_project: Workspace) -> None:
    ws = gated_project
    gates = ws.read_yaml("gates.yaml")
    gates["policies"]["qa"]["valid_for"] = "4s"
    ws.write_yaml("gates.yaml", gates)
    assert ws.cli("run").returncode == 3
    run_id, folder = ws.run_record()["id"], ws.runs()[-1]

    assert ws.cli("approve", run_id, "--env", "qa", "--as", "alice").returncode == 0
    time.sleep(5)  # past valid_for: the one wait whose length is the point of the check
    expired = ws.cli("resume", run_id)
    assert expired.returncode == 3 and "not counted: #1 alice (expired" in expired.stderr

    # The rest on a run whose approvals stay valid however slow this machine is.
    gates["policies"]["qa"]["valid_for"] = "1h"
    ws.write_yaml("gates.yaml", gates)
    assert ws.cli("run").returncode == 3
    run_id, folder = ws.run_record()["id"], ws.runs()[-1]

    # Any change to what is released voids earlier approvals: here the notebook of the stage
    # the qa gate releases (release_qa), edited after bob approved.
    assert ws.cli("approve", run_id, "--env", "qa", "--as", "bob").returncode == 0
    release = ws.root / "notebooks" / "release.ipynb"
    original = release.read_bytes()
    release.write_bytes(original.replace(b"released v", b"shipped v"))
    changed = ws.cli("resume", run_id)
    assert changed.returncode == 2, changed.stdout + changed.stderr
    assert "changed since it was approved: notebooks/release.ipynb (approval #1 for qa)" in \
        changed.stderr
    assert ws.run_record()["stages"]["release_qa"]["status"] == "pending", "nothing ran"
    listing = ws.cli("approvals", run_id)
    assert "not counted: #1 bob (for another bundle" in listing.stdout
    release.write_bytes(original)  # restored: bob's approval counts again
    assert "approved for bundle" in ws.cli("approvals", run_id).stdout
    kept = snapshot(folder)

    no_reason = ws.cli("reject", run_id, "--env", "qa", "--as", "dave")
    assert no_reason.returncode == 2  # --comment is required to reject
    rejected = ws.cli("reject", run_id, "--env", "qa", "--as", "dave", "--comment",
                      "drift on the new segment")
    assert rejected.returncode == 0
    stopped = ws.cli("resume", run_id)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "rejected by dave: drift on the new segment" in stopped.stderr
    record = ws.run_record()
    assert record["status"] == "failed"
    assert record["stages"]["approve_qa"]["status"] == "failed"
    assert record["stages"]["release_qa"]["status"] == "skipped"
    assert scrapbook.read_notebook(str(folder / "approve_qa.ipynb")).scraps[
        "decision"].data == "rejected"
    assert [r["alias"] for r in records(folder, "promotions")] == ["dev"], "qa alias unmoved"
    assert_kept(folder, kept)
    assert ws.cli("resume", run_id).returncode == 2


def test_promote_stops_at_the_target_and_tampering_is_caught(gated_project: Workspace,
                                                             oidc: Any) -> None:
    ws = gated_project
    assert ws.cli("run").returncode == 3
    run_id, folder = ws.run_record()["id"], ws.runs()[-1]
    # prod is approved in advance; promote --to qa must still not release to prod.
    for name in ("dave", "erin"):
        assert ws.cli("approve", run_id, "--env", "prod", "--comment", "pre-approved",
                      env=oidc.github(name)).returncode == 2, "prod is not reachable yet"
    promoted = ws.cli("promote", run_id, "--to", "qa", "--as", "bob")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert f"run {run_id} promoted to qa" in promoted.stdout
    record = ws.run_record()
    assert record["status"] == "paused"
    assert record["stages"]["release_qa"]["status"] == "succeeded"
    assert record["stages"]["approve_prod"]["status"] == "pending"

    # An edited approval record is refused, named, and stops the gate.
    for name in ("dave", "erin"):
        assert ws.cli("approve", run_id, "--env", "prod", "--comment", "ok",
                      env=oidc.github(name)).returncode == 0
    first = folder / "approvals" / "0001.json"
    first.chmod(0o644)
    first.write_text(first.read_text().replace('"bob"', '"eve"'))
    tampered = ws.cli("promote", run_id, "--to", "prod")
    assert tampered.returncode == 1
    assert "approvals/0001.json: content does not match its digest (edited)" in tampered.stderr
    assert ws.cli("approvals", run_id).returncode == 1


def test_approval_notebook_runs_headless_under_plain_papermill(gated_project: Workspace
                                                              ) -> None:
    ws = gated_project
    assert ws.cli("run").returncode == 3
    env = clean_environment()
    env.pop("CI", None)
    out = ws.root / "review.ipynb"
    papermill = str(Path(sys.executable).parent / "papermill")
    done = subprocess.run([papermill, "notebooks/approve.ipynb", str(out), "-p", "environment",
                           "qa"], cwd=ws.root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    nb = json.loads(out.read_text())
    text = json.dumps(nb)
    assert "application/vnd.jupyter.widget-view+json" not in text, "no widgets headless"
    assert "## Awaiting approval: qa" in text and "headless: reading the recorded decision" in text
    assert scrapbook.read_notebook(str(out)).scraps["decision"].data == "awaiting"
    assert not (ws.runs()[-1] / "approvals").exists(), "reading never records"
    assert os.environ.get("JPY_SESSION_NAME") is None


def test_review_copy_keeps_the_committed_notebook_clean(gated_project: Workspace,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.governance.review import prepare_review
    from workbench.project import Project

    ws = gated_project
    assert ws.cli("run").returncode == 3
    run_id = ws.run_record()["id"]
    monkeypatch.chdir(ws.root)
    project = Project(ws.root)
    first, second = (prepare_review(project, run_id, "qa") for _ in range(2))
    assert first != second and first.parent == ws.runs()[-1] / "reviews"
    nb = json.loads(first.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1
    source = "".join(injected[0]["source"])
    assert f'run_id = "{run_id}"' in source and 'mode = "interactive"' in source
    committed = (ws.root / "notebooks" / "approve.ipynb").read_text()
    assert committed == (Path(__file__).parents[1] / "notebooks" / "approve.ipynb").read_text()
    from workbench.governance.bundle import BundleError

    with pytest.raises(BundleError, match="has not succeeded"):
        prepare_review(project, run_id, "prod")  # not at the prod gate yet


PROBE = """import atexit, sys
atexit.register(lambda: sys.stderr.write("\\nmlflow imported: %s\\n" % ("mlflow" in sys.modules)))
sys.argv = ["workbench", *sys.argv[1:]]
from workbench.cli import main
main()
"""


def test_governance_and_inspection_commands_never_import_mlflow(gated_project: Workspace
                                                                 ) -> None:
    """approve, approvals, runs, status, validate and audit verify on the embedded store read
    what they need without importing MLflow (3-5 s of every command before)."""
    ws = gated_project
    assert ws.cli("run").returncode == 3
    commands = [("approvals", "latest"), ("approve", "latest", "--env", "qa", "--as", "alice"),
                ("approvals", "latest", "--json"), ("runs",), ("status",), ("status", "latest"),
                ("validate",), ("audit", "verify")]
    for command in commands:
        done = subprocess.run([sys.executable, "-c", PROBE, "--project", str(ws.root), *command],
                              capture_output=True, text=True, timeout=120,
                              env=clean_environment(), cwd=ws.root)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert "mlflow imported: False" in done.stderr, (command, done.stderr)
    resumed = ws.cli("resume", "latest")  # the gate itself does talk to MLflow: it moves an alias
    assert resumed.returncode == 3, resumed.stdout + resumed.stderr
    assert ws.run_record()["stages"]["release_qa"]["status"] == "succeeded"
