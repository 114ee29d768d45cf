"""The ledger and the archive: tampering of any kind is caught and named; secrets never land."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Workspace, notebook
from workbench.audit import ledger


def make_archive(reports: Path, runs: int = 2) -> list[dict[str, Any]]:
    """A small archive: per run two notebooks, each recorded in the ledger."""
    entries = []
    for r in range(runs):
        folder = reports / "runs" / f"run{r}"
        folder.mkdir(parents=True)
        for stage in ("train", "evaluate"):
            path = folder / f"{stage}.ipynb"
            path.write_text(json.dumps({"run": r, "stage": stage}))
            entries.append(ledger.append(reports, "stage_executed", actor={"name": "ci"},
                                         run_id=f"run{r}", data={"stage": stage},
                                         files=[path]))
    return entries


def problems(reports: Path, anchor: dict[str, Any] | None = None) -> list[str]:
    return ledger.verify(reports, anchor).problems


def test_an_intact_archive_verifies(tmp_path: Path) -> None:
    entries = make_archive(tmp_path)
    result = ledger.verify(tmp_path, ledger.head(tmp_path))
    assert result.ok and (result.entries, result.files) == (4, 4)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert entries[1]["prev"] == entries[0]["hash"] and entries[0]["prev"] == ledger.GENESIS
    assert ledger.head(tmp_path)["hash"] == entries[-1]["hash"]


def test_edited_deleted_or_swapped_archive_files_are_named(tmp_path: Path) -> None:
    make_archive(tmp_path)
    run0 = tmp_path / "runs" / "run0"
    (run0 / "train.ipynb").write_text('{"run": 0, "stage": "train", "edited": true}')
    (tmp_path / "runs" / "run1" / "evaluate.ipynb").unlink()
    train1, evaluate1 = tmp_path / "runs/run1/train.ipynb", run0 / "evaluate.ipynb"
    a, b = train1.read_bytes(), evaluate1.read_bytes()
    train1.write_bytes(b)
    evaluate1.write_bytes(a)  # reordered: two files swapped
    found = problems(tmp_path)
    assert "reports/runs/run0/train.ipynb (seq 1): content changed since it was recorded" \
        in found
    assert "reports/runs/run1/evaluate.ipynb (seq 4): missing" in found
    assert "reports/runs/run0/evaluate.ipynb (seq 2): content changed since it was recorded" \
        in found
    assert "reports/runs/run1/train.ipynb (seq 3): content changed since it was recorded" \
        in found
    assert len(found) == 4


def _lines(reports: Path) -> list[bytes]:
    return (reports / ledger.LEDGER_FILE).read_bytes().splitlines(keepends=True)


def _write(reports: Path, lines: list[bytes]) -> None:
    (reports / ledger.LEDGER_FILE).write_bytes(b"".join(lines))


def test_edited_ledger_entry_is_named(tmp_path: Path) -> None:
    make_archive(tmp_path)
    lines = _lines(tmp_path)
    lines[1] = lines[1].replace(b'"actor":{"name":"ci"}', b'"actor":{"name":"mallory"}')
    _write(tmp_path, lines)
    assert problems(tmp_path) == [
        "ledger.jsonl line 2 (seq 2): content does not match its hash (edited)"]


def test_deleted_and_reordered_ledger_entries_are_named(tmp_path: Path) -> None:
    make_archive(tmp_path)
    lines = _lines(tmp_path)
    _write(tmp_path, [lines[0], lines[2], lines[3]])
    assert problems(tmp_path)[0] == ("ledger.jsonl line 2 (seq 3): expected seq 2 (an entry "
                                     "was removed, inserted or reordered)")
    _write(tmp_path, [lines[0], lines[2], lines[1], lines[3]])
    found = problems(tmp_path)
    assert found[0].startswith("ledger.jsonl line 2 (seq 3): expected seq 2")
    assert any(p.startswith("ledger.jsonl line 3 (seq 2)") for p in found)


def test_recomputed_chain_is_caught_only_by_the_anchor(tmp_path: Path) -> None:
    make_archive(tmp_path)
    anchor = ledger.head(tmp_path)
    # Truncation: drop the last entry. The rest is a valid chain on its own.
    lines = _lines(tmp_path)
    _write(tmp_path, lines[:-1])
    assert problems(tmp_path) == []
    assert problems(tmp_path, anchor) == [
        "anchor: the ledger ends at seq 3 but the anchor is at seq 4 (truncated)"]
    # Rewrite: change history and recompute every hash: self-consistent, but not the anchor.
    _write(tmp_path, [])
    (tmp_path / ledger.LEDGER_FILE).unlink()
    for path in sorted((tmp_path / "runs").rglob("*.ipynb")):
        ledger.append(tmp_path, "stage_executed", actor={"name": "mallory"}, run_id="x",
                      files=[path])
    assert problems(tmp_path) == []
    found = problems(tmp_path, anchor)
    assert len(found) == 1 and found[0].startswith("anchor: entry seq 4 has hash")
    assert found[0].endswith("(the ledger was rewritten)")


def test_torn_last_entry_is_reported_and_blocks_appends(tmp_path: Path) -> None:
    make_archive(tmp_path, runs=1)
    with (tmp_path / ledger.LEDGER_FILE).open("ab") as handle:
        handle.write(b'{"seq": 3, "half')
    assert problems(tmp_path) == ["ledger.jsonl line 3: incomplete entry (torn write)"]
    with pytest.raises(ledger.LedgerError, match="incomplete entry"):
        ledger.append(tmp_path, "x", actor=None, run_id=None)


def _append_many(reports: Path, worker: int) -> None:
    for n in range(25):
        ledger.append(reports, "stress", actor={"name": f"w{worker}"}, run_id=None,
                      data={"n": n})


def test_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    pool = multiprocessing.get_context("spawn").Pool(4)
    try:
        pool.starmap(_append_many, [(tmp_path, w) for w in range(4)])
    finally:
        # close and join, not the context manager's terminate: a worker stopped by SIGTERM
        # while coverage (sigterm = true) saves its data can hang the join
        pool.close()
        pool.join()
    result = ledger.verify(tmp_path)
    assert result.ok and result.entries == 100
    seen = {(e["actor"]["name"], e["data"]["n"]) for e in ledger.entries(tmp_path)}
    assert len(seen) == 100


def test_audit_cli_verify_and_anchor(tmp_path: Path) -> None:
    import sys

    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "pipeline.yaml").write_text("name: x\n")
    make_archive(root / "reports")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workbench", "--project", str(root),
                               "audit", *args], capture_output=True, text=True, timeout=120)

    anchored = cli("anchor", "--output", str(tmp_path / "anchor.json"))
    assert anchored.returncode == 0 and json.loads(anchored.stdout)["seq"] == 4
    ok = cli("verify", "--anchor", str(tmp_path / "anchor.json"))
    assert ok.returncode == 0 and "ledger verified: 4 entries, 4 files" in ok.stdout
    (root / "reports/runs/run1/train.ipynb").write_text("{}")
    bad = cli("verify")
    assert bad.returncode == 1
    assert "FAIL reports/runs/run1/train.ipynb (seq 3): content changed" in bad.stderr
    broken_anchor = tmp_path / "bad.json"
    broken_anchor.write_text("[1]")
    assert cli("verify", "--anchor", str(broken_anchor)).returncode == 2


# --- secrets --------------------------------------------------------------------------------

SECRET = "s3cr3t-Value-9f8e7d"

LEAKY_STAGE = """import os

import mlflow
from IPython.display import Markdown, display
from workbench.registry.store import connect
from workbench.scraps import glue

token = os.environ["API_TOKEN"]
print("the token is", token)
display(Markdown(f"**token**: `{token}`"))
connect()
with mlflow.start_run() as run:
    mlflow.log_param("api_token", token)
    mlflow.log_params({"also": token})
    mlflow.set_tag("note", f"uses {token}")
glue("mlflow_run_id", run.info.run_id)
glue("echo", token)
"""


@pytest.mark.slow
def test_secret_printed_by_a_notebook_appears_nowhere(mini_project: Workspace,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ws = mini_project
    ws.write_yaml("pipeline.yaml", {"name": "leaky", "secrets": ["API_TOKEN"], "stages": [
        {"name": "leak", "notebook": "notebooks/leak.ipynb",
         "outputs": {"mlflow_run_id": "str", "echo": "str"}},
        {"name": "fail", "notebook": "notebooks/fail.ipynb", "needs": ["leak"]}]})
    ws.write_notebook("leak", notebook(LEAKY_STAGE))
    ws.write_notebook("fail", notebook(
        "import os\nraise RuntimeError('bad token ' + os.environ['API_TOKEN'])"))
    done = ws.cli("run", env={"API_TOKEN": SECRET})
    assert done.returncode == 1, done.stdout + done.stderr
    assert SECRET not in done.stdout + done.stderr
    record = ws.run_record()
    assert record["stages"]["leak"]["status"] == "succeeded"
    assert record["stages"]["leak"]["outputs"]["echo"] == "[REDACTED:API_TOKEN]"
    assert "[REDACTED:API_TOKEN]" in record["stages"]["fail"]["error"]
    archived = (ws.runs()[-1] / "leak.ipynb").read_text()
    assert archived.count("[REDACTED:API_TOKEN]") >= 3  # print, markdown, scrap

    # Nowhere under reports/ or in the MLflow store (database and artifacts), in any form.
    leaks = []
    for root in (ws.root / "reports", ws.root / ".workbench" / "mlflow"):
        for path in root.rglob("*"):
            if path.is_file() and SECRET.encode() in path.read_bytes():
                leaks.append(str(path.relative_to(ws.root)))
    assert leaks == []
    assert not list((ws.root / ".workbench" / "staging").rglob("*.ipynb")), "staging cleaned"
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=record["tracking_uri"]).get_run(
        record["stages"]["leak"]["outputs"]["mlflow_run_id"])
    assert run.data.params["api_token"] == "[REDACTED:API_TOKEN]"
    assert run.data.params["also"] == "[REDACTED:API_TOKEN]"
    assert run.data.tags["note"] == "uses [REDACTED:API_TOKEN]"
    assert run.data.tags["workbench.ledger_seq"].isdigit()
    artifacts = [a.path for a in MlflowClient(tracking_uri=record["tracking_uri"])
                 .list_artifacts(run.info.run_id, "workbench/leak")]
    assert "workbench/leak/leak.ipynb" in artifacts
    assert ledger.verify(ws.root / "reports").ok


@pytest.mark.slow
def test_a_secret_is_never_a_parameter(mini_project: Workspace) -> None:
    ws = mini_project
    ws.write_yaml("pipeline.yaml", {"name": "p", "secrets": ["API_TOKEN"], "stages": [
        {"name": "a", "notebook": "notebooks/a.ipynb", "parameters": {"value": SECRET}}]})
    ws.write_notebook("a", notebook("print(len(value))", parameters='value: str = ""'))
    done = ws.cli("run", env={"API_TOKEN": SECRET})
    assert done.returncode == 2  # refused before anything runs: it is in the configuration
    assert "configs/pipeline.yaml contains the value of secret API_TOKEN" in done.stderr
    assert not (ws.root / "reports" / "runs").exists(), "no run was started"
    from workbench.audit.redact import SecretError, Secrets

    with pytest.raises(SecretError, match="a parameter holds the value of secret API_TOKEN"):
        Secrets({"API_TOKEN": SECRET}).check_parameters("a", {"value": [f"x{SECRET}"]})


def test_redaction_covers_keys_and_refuses_encoded_leftovers() -> None:
    from workbench.audit.redact import SecretError, Secrets, redact_notebook_text

    secrets = Secrets({"TOKEN": SECRET})
    nb = {"cells": [{"source": f"x = '{SECRET}'", "metadata": {SECRET: 1}}],
          "metadata": {"papermill": {"parameters": {"t": SECRET}}}}
    cleaned = redact_notebook_text(json.dumps(nb), secrets, "nb")
    assert SECRET not in cleaned and cleaned.count("[REDACTED:TOKEN]") == 3
    import base64

    encoded = base64.b64encode(SECRET.encode()).decode()
    with pytest.raises(SecretError, match="remains after redaction"):
        redact_notebook_text(json.dumps({"cells": [{"source": encoded}]}), secrets, "nb")
    with pytest.raises(SecretError, match="shorter than 8"):
        import os

        os.environ["WB_TEST_SHORT"] = "abc"
        try:
            Secrets.from_environment(["WB_TEST_SHORT"])
        finally:
            del os.environ["WB_TEST_SHORT"]


def test_archiving_one_stage_keeps_the_staging_folder_of_a_stage_about_to_write(
        tmp_path: Path) -> None:
    """Parallel stages share the run's staging folder: archiving the one that finished must not
    remove it from under one whose kernel is still starting (its first save would fail)."""
    from workbench.audit import archive
    from workbench.audit.redact import Secrets
    from workbench.execution.engine import AtomicHandler
    from workbench.project import Project

    project = Project(tmp_path)
    run_id = "20260101T000000Z-abcdef"
    (project.runs / run_id).mkdir(parents=True)
    waiting = archive.staging_path(project, run_id, "starting.ipynb")  # nothing written yet
    finished = archive.staging_path(project, run_id, "finished.ipynb")
    finished.write_text(json.dumps(notebook("print(1)")), encoding="utf-8")

    archived = archive.archive_notebook(project, run_id, finished, Secrets({}))

    assert archived.is_file() and not finished.exists()
    AtomicHandler().write(json.dumps(notebook("print(2)")), str(waiting))
    assert json.loads(waiting.read_text(encoding="utf-8"))["cells"]
    waiting.unlink()
    archive.remove_staging(project, run_id)  # the run's end: an empty folder goes
    assert not waiting.parent.exists()
