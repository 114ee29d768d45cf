"""The prod gate as an insider and a careless notebook try it, on real kernels and a real
MLflow store: approvals that were never given, a policy edited in the run record, one person
typing two names, identities set by hand, evidence edited after the fact, secrets leaking past
the archive's redaction, processes and output that outlive or outgrow their stage."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Workspace, clean_environment, notebook, wait_until_gone
from workbench.audit import journal

pytestmark = pytest.mark.slow

ME = getpass.getuser()


def at_prod_gate(ws: Workspace, env: dict[str, str] | None = None) -> tuple[str, Path]:
    """A run released to qa (alice approved), its prod gate not decided yet."""
    started = ws.cli("run", env=env)
    assert started.returncode == 3, started.stdout + started.stderr
    run_id = ws.run_record()["id"]
    promoted = ws.cli("promote", run_id, "--to", "qa", "--as", "alice")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    return run_id, ws.runs()[-1]


def prod_bundle(ws: Workspace, run_id: str) -> str:
    listing = json.loads(ws.cli("approvals", run_id, "--json").stdout)
    return str(listing["gates"]["prod"]["bundle_digest"])


def verify(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return ws.cli("audit", "verify", *args)


# --- 1: approval files written by hand ----------------------------------------------------


def test_forged_approval_files_never_count_and_verify_names_them(gated_project: Workspace
                                                                 ) -> None:
    ws = gated_project
    run_id, folder = at_prod_gate(ws)
    anchor = ws.root / "anchor.json"
    assert ws.cli("audit", "anchor", "--output", str(anchor)).returncode == 0
    digest = prod_bundle(ws, run_id)
    records = sorted((folder / "approvals").glob("*.json"))
    previous = json.loads(records[-1].read_text())["digest"]
    for seq, name in ((len(records) + 1, "carol"), (len(records) + 2, "dave")):
        entry = {"kind": "approval", "run_id": run_id, "environment": "prod",
                 "decision": "approve", "accepted": True, "refused": None,
                 "approver": {"name": name, "source": "github", "os_user": "runner"},
                 "via": "cli", "time": time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00",
                                                     time.gmtime()),
                 "comment": "looks fine", "bundle_digest": digest, "evidence": {},
                 "policy_version": "", "seq": seq, "previous": previous}
        entry["digest"] = journal.digest_of(entry)
        previous = entry["digest"]
        (folder / "approvals" / f"{seq:04d}.json").write_text(json.dumps(entry, indent=2))

    listing = ws.cli("approvals", run_id)
    assert "not counted: #2 carol (not in the ledger: the record was written or changed by " \
        "hand)" in listing.stdout, listing.stdout
    resumed = ws.cli("resume", run_id)
    assert resumed.returncode == 3, resumed.stdout + resumed.stderr
    assert ws.run_record()["stages"]["release_prod"]["status"] == "pending", "prod not reached"
    for checked in (verify(ws), verify(ws, "--anchor", str(anchor))):
        assert checked.returncode == 1
        assert f"runs/{run_id}/approvals/0002.json: in no ledger entry" in checked.stderr
        assert f"runs/{run_id}/approvals/0003.json: in no ledger entry" in checked.stderr


# --- 2: the policy copy in run.json ---------------------------------------------------------


def test_an_edited_policy_in_the_run_record_is_refused(gated_project: Workspace) -> None:
    ws = gated_project
    run_id, folder = at_prod_gate(ws)
    record = json.loads((folder / "run.json").read_text())
    gates = yaml.safe_load(record["config"]["gates.yaml"])
    gates["policies"]["prod"] = {"approvers": [ME], "quorum": 1, "allow_self_approval": True,
                                 "require_comment": False}
    record["config"]["gates.yaml"] = yaml.safe_dump(gates)
    (folder / "run.json").write_text(json.dumps(record, indent=2))

    approved = ws.cli("approve", run_id, "--env", "prod", "--as", ME)
    assert approved.returncode == 1
    assert f"reports/runs/{run_id}/run.json: its configuration snapshot has digest" in \
        approved.stderr and "was edited" in approved.stderr
    assert len(list((folder / "approvals").glob("*.json"))) == 1, "nothing recorded"
    resumed = ws.cli("resume", run_id)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert "the snapshot (and the approval policy in it) was edited" in resumed.stderr
    assert json.loads((folder / "run.json").read_text())["stages"]["release_prod"][
        "status"] == "pending", "refused before anything ran"
    checked = verify(ws)
    assert checked.returncode == 1
    assert f"reports/runs/{run_id}/run.json: content changed since the run recorded it" in \
        checked.stderr


# --- 3 and 4: one person, many names ---------------------------------------------------------


def test_names_typed_by_one_os_user_are_one_person(gated_project: Workspace, oidc: Any) -> None:
    ws = gated_project
    run_id, _ = at_prod_gate(ws)  # requested by the OS user who types below
    for name in ("carol", "dave"):
        refused = ws.cli("approve", run_id, "--env", "prod", "--as", name, "--comment", "ok")
        assert refused.returncode == 1
        assert f"'{name}' requested the release and trained the model (the same OS user " \
            f"{ME})" in refused.stderr, refused.stderr
    assert ws.cli("resume", run_id).returncode == 3

    # A release bob requested in CI: one OS user typing carol and dave is one approval.
    run_id, _ = at_prod_gate(ws, env=oidc.github("bob"))
    for name in ("carol", "dave"):
        assert ws.cli("approve", run_id, "--env", "prod", "--as", name, "--comment",
                      "ok").returncode == 0
    waiting = ws.cli("resume", run_id)
    assert waiting.returncode == 3, waiting.stdout + waiting.stderr
    assert "needs 1 more of 2" in waiting.stderr
    assert f"dave (the same person as #2 (OS user {ME}): one person counts once)" in \
        waiting.stderr
    assert ws.cli("approve", run_id, "--env", "prod", "--comment", "ok",
                  env=oidc.github("dave")).returncode == 0
    assert ws.cli("resume", run_id).returncode == 0


def test_identities_set_by_hand_are_typed_names(gated_project: Workspace, oidc: Any) -> None:
    ws = gated_project
    run_id, folder = at_prod_gate(ws, env=oidc.github("bob"))
    for env in ({"GITHUB_ACTOR": "carol"}, {"BUILD_USER_ID": "dave"},
                {"JUPYTERHUB_USER": "dave"}, oidc.github("dave", forged=True)):
        done = ws.cli("approve", run_id, "--env", "prod", "--comment", "ok", env=env)
        assert done.returncode == 0, done.stderr
    records = [json.loads(p.read_text()) for p in sorted((folder / "approvals").glob("*.json"))]
    claimed = [r["approver"] for r in records if r["environment"] == "prod"]
    assert [(c["name"], c["source"]) for c in claimed] == [
        ("carol", "typed"), ("dave", "typed"), ("dave", "typed"), ("dave", "typed")]
    assert claimed[0]["unvouched"].startswith("github: no GitHub Actions OIDC token")
    assert claimed[1]["unvouched"].startswith("jenkins: no Jenkins API credentials")
    assert claimed[2]["unvouched"].startswith("jupyterhub: no JupyterHub API token")
    assert "did not verify" in claimed[3]["unvouched"]
    waiting = ws.cli("resume", run_id)
    assert waiting.returncode == 3 and "needs 1 more of 2" in waiting.stderr

    # ... and the requester cannot dodge separation of duties by claiming another name.
    started = ws.cli("run", env={"GITHUB_ACTOR": "erin"})
    assert started.returncode == 3
    assert ws.run_record()["requested_by"]["source"] == "typed"


def test_a_policy_can_count_vouched_identities_only(gated_project: Workspace, oidc: Any
                                                    ) -> None:
    ws = gated_project
    gates = ws.read_yaml("gates.yaml")
    gates["policies"]["prod"]["identity_sources"] = ["github"]
    ws.write_yaml("gates.yaml", gates)
    run_id, _ = at_prod_gate(ws, env=oidc.github("bob"))
    typed = ws.cli("approve", run_id, "--env", "prod", "--as", "dave", "--comment", "ok")
    assert typed.returncode == 1
    assert "'dave' is a typed identity; the prod policy counts github identities only" in \
        typed.stderr
    for name in ("dave", "erin"):
        assert ws.cli("approve", run_id, "--env", "prod", "--comment", "ok",
                      env=oidc.github(name)).returncode == 0
    assert ws.cli("resume", run_id).returncode == 0


# --- 6 and 7: what an approval covers ------------------------------------------------------


def test_evidence_edited_after_it_was_archived_is_refused_by_name(gated_project: Workspace
                                                                  ) -> None:
    ws = gated_project
    assert ws.cli("run").returncode == 3
    run_id, folder = ws.run_record()["id"], ws.runs()[-1]
    build = folder / "build.ipynb"
    build.write_text(build.read_text().replace('"score"', '"scoree"'))
    refused = ws.cli("approve", run_id, "--env", "qa", "--as", "alice")
    assert refused.returncode == 1
    assert f"reports/runs/{run_id}/build.ipynb changed since the ledger recorded it" in \
        refused.stderr
    assert not (folder / "approvals").exists(), "nothing recorded"
    resumed = ws.cli("resume", run_id)
    assert resumed.returncode == 1 and "build.ipynb changed since the ledger" in resumed.stderr
    assert ws.run_record()["stages"]["release_qa"]["status"] == "skipped"


def test_a_gated_environment_runs_only_committed_code(gated_project: Workspace) -> None:
    ws = gated_project
    git = shutil.which("git")
    assert git is not None
    env = {**clean_environment(), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    for command in (["init", "-q"], ["add", "configs", "notebooks"], ["commit", "-qm", "p"]):
        subprocess.run([git, *command], cwd=ws.root, env=env, check=True)
    assert ws.cli("run").returncode == 3
    run_id = ws.run_record()["id"]
    assert ws.cli("approve", run_id, "--env", "qa", "--as", "alice").returncode == 0
    release = ws.root / "notebooks" / "release.ipynb"
    original = release.read_text()
    nb = json.loads(original)
    nb["cells"].append(notebook("print('added after the approval')")["cells"][1])
    release.write_text(json.dumps(nb))
    refused = ws.cli("promote", run_id, "--to", "qa")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "notebooks/release.ipynb (approval #1 for qa)" in refused.stderr
    release.write_text(original)
    (ws.root / "configs" / "model.yaml").write_text(
        (ws.root / "configs" / "model.yaml").read_text() + "# a note\n")
    dirty = ws.cli("promote", run_id, "--to", "qa")
    assert dirty.returncode == 2 and "uncommitted changes (configs/model.yaml)" in dirty.stderr
    subprocess.run([git, "checkout", "--", "configs/model.yaml"], cwd=ws.root, env=env,
                   check=True)
    assert ws.cli("promote", run_id, "--to", "qa").returncode == 0


# --- 5, 8, 9: secrets past the notebook's redaction ----------------------------------------

SECRET = "s3cr3t-Value-9f8e7d-long"


def _secret_project(ws: Workspace, code: str) -> None:
    ws.write_yaml("pipeline.yaml", {"name": "leaky", "secrets": ["API_TOKEN"], "stages": [
        {"name": "leak", "notebook": "notebooks/leak.ipynb", "outputs": {"done": "bool"}}]})
    ws.write_notebook("leak", notebook(code + "\nfrom workbench.scraps import glue\n"
                                       "glue('done', True)", parameters="x: int = 1"))


def test_a_secret_as_html_entities_never_reaches_a_page(mini_project: Workspace) -> None:
    _secret_project(mini_project, "import os\nfrom IPython.display import HTML, display\n"
                    "S = os.environ['API_TOKEN']\n"
                    "display(HTML(''.join('&#%d;' % ord(c) for c in S)))")
    done = mini_project.cli("run", env={"API_TOKEN": SECRET})
    assert done.returncode == 1, done.stdout + done.stderr
    stage = mini_project.run_record()["stages"]["leak"]
    assert "the value of secret API_TOKEN remains after redaction" in stage["error"]
    folder = mini_project.runs()[-1]
    assert not (folder / "leak.ipynb").exists() and not (folder / "leak.html").exists()
    for path in (mini_project.root / "reports").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_kernel_output_below_python_never_reaches_the_terminal(mini_project: Workspace
                                                               ) -> None:
    _secret_project(mini_project, "import os, sys\nS = os.environ['API_TOKEN']\n"
                    "os.write(1, (S + '\\n').encode())\nos.write(2, (S + '\\n').encode())\n"
                    "sys.__stderr__.write(S + '\\n')\nsys.__stderr__.flush()")
    done = mini_project.cli("run", env={"API_TOKEN": SECRET})
    assert done.returncode == 0, done.stdout + done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "ipython kernel" not in done.stdout + done.stderr, "no kernel banners either"
    run_id = mini_project.run_record()["id"]
    log = (mini_project.root / ".workbench" / "logs" / run_id / "kernels.log").read_text()
    assert SECRET not in log and log.count("[REDACTED:API_TOKEN]") >= 3


def test_secrets_anywhere_in_mlflow_fail_the_stage_and_are_removed(mini_project: Workspace
                                                                   ) -> None:
    code = """import os
import mlflow
from mlflow import MlflowClient
from workbench.registry.store import connect
connect()
S = os.environ['API_TOKEN']
with mlflow.start_run() as run:
    mlflow.set_tag(S, 'key')  # a tag key: the guard redacts values only
    mlflow.log_metric(S, 1.0)
    mlflow.log_text(S, 'notes.txt')
run_id = run.info.run_id
client = MlflowClient()
client.create_registered_model('leaky-model', description=f'owner token {S}')
"""
    _secret_project(mini_project, code)
    done = mini_project.cli("run", env={"API_TOKEN": SECRET})
    assert done.returncode == 1, done.stdout + done.stderr
    error = mini_project.run_record()["stages"]["leak"]["error"]
    assert "the value of secret API_TOKEN reached MLflow" in error
    assert "the run was deleted from the store" in error
    db = mini_project.root / ".workbench" / "mlflow" / "mlflow.db"
    assert SECRET.encode() not in db.read_bytes(), "the value is gone from the store"
    artifacts = mini_project.root / ".workbench" / "mlflow" / "artifacts"
    for path in artifacts.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# --- 11: files nothing recorded ------------------------------------------------------------


def test_verify_names_files_no_entry_accounts_for(gated_project: Workspace) -> None:
    ws = gated_project
    assert ws.cli("run").returncode == 3
    folder = ws.runs()[-1]
    assert verify(ws).returncode == 0
    (folder / "leak.txt").write_text("what a notebook dropped here")
    page = folder / "build.html"
    page.write_text(page.read_text().replace("</body>", "<p>edited</p></body>"))
    checked = verify(ws)
    assert checked.returncode == 1
    assert f"reports/runs/{folder.name}/leak.txt: in no ledger entry" in checked.stderr
    assert f"reports/runs/{folder.name}/build.html" in checked.stderr and \
        "content changed since it was recorded" in checked.stderr


# --- 17, 18: what a stage leaves behind ----------------------------------------------------


def test_processes_a_stage_starts_in_any_session_end_with_it(mini_project: Workspace) -> None:
    marker = f"workbench-test-orphan-{os.getpid()}"
    code = f"""import os, subprocess, sys
subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', '{marker}'],
                 start_new_session=True)
if os.fork() == 0:  # a double fork into a new session
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)',
                                  '{marker}'])
    os._exit(0)
os.wait()
"""
    mini_project.write_yaml("pipeline.yaml", {"name": "spawner", "stages": [
        {"name": "spawn", "notebook": "notebooks/spawn.ipynb"}]})
    mini_project.write_notebook("spawn", notebook(code, parameters="x: int = 1"))
    done = mini_project.cli("run")
    assert done.returncode == 0, done.stdout + done.stderr
    left = wait_until_gone("WORKBENCH_PROJECT", str(mini_project.root), marker.encode(),
                           timeout=20)
    assert left == [], left


def test_output_beyond_the_stage_limit_stops_it_and_stays_bounded(mini_project: Workspace
                                                                   ) -> None:
    mini_project.write_yaml("pipeline.yaml", {"name": "loud", "stages": [
        {"name": "loud", "notebook": "notebooks/loud.ipynb", "output_limit_mb": 5}]})
    mini_project.write_notebook("loud", notebook("print('x' * 2_000_000)",
                                                 "for _ in range(100):\n"
                                                 "    print('y' * 1_000_000)",
                                                 parameters="x: int = 1"))
    done = mini_project.cli("run")
    assert done.returncode == 1
    stage = mini_project.run_record()["stages"]["loud"]
    assert stage["failure"] == "output_limit"
    assert "more than the stage's output_limit_mb of 5; the kernel was stopped" in stage["error"]
    archived = mini_project.runs()[-1] / "loud.ipynb"
    assert archived.stat().st_size < 6_000_000
    assert "MB of output removed: over the stage's output limit" in archived.read_text()


# --- 12: servers a killed deploy left --------------------------------------------------------


def test_stop_finds_a_model_server_a_killed_deploy_left(release_project: Workspace) -> None:
    ws = release_project
    env = {**clean_environment()}
    process = subprocess.Popen([sys.executable, "-m", "workbench", "--project", str(ws.root),
                                "run", "--until", "deploy"], cwd=ws.root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pending = ws.root / ".workbench" / "servers" / "dev.pending.json"
    deadline = time.monotonic() + 300
    while not pending.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert pending.exists(), "the deploy recorded its server before waiting for it"
    process.kill()
    process.wait()
    marker = f"{ws.root}::dev"
    assert wait_until_gone("WORKBENCH_ENDPOINT", marker, timeout=1)  # still running, unseen
    stopped = ws.cli("stop", "dev")
    assert stopped.returncode == 0, stopped.stderr
    assert wait_until_gone("WORKBENCH_ENDPOINT", marker, timeout=20) == []
    assert not pending.exists()
