"""Bad input an insider or a careless notebook gives, without kernels: each is one clear
message naming the file or field, a bounded output and an exit code; nothing is written where
it must not be (the kernel-backed cases are in tests/test_gate_integrity.py)."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Workspace, clean_environment, notebook
from workbench.audit import ledger

PIPELINE = {"name": "mini", "secrets": ["API_TOKEN"],
            "stages": [{"name": "a", "notebook": "notebooks/a.ipynb"}]}


@pytest.fixture
def project(mini_project: Workspace) -> Workspace:
    mini_project.write_yaml("pipeline.yaml", PIPELINE)
    mini_project.write_notebook("a", notebook("print(1)", parameters="x: int = 1"))
    return mini_project


def _write(ws: Workspace, name: str, data: bytes) -> None:
    (ws.root / "configs" / name).write_bytes(data)


# --- 10, 19, 20: configuration files ---------------------------------------------------------


def test_duplicate_keys_are_refused_with_both_lines(project: Workspace) -> None:
    _write(project, "gates.yaml", b"policies:\n  qa:\n    approvers: [alice, bob]\n"
                                  b"    quorum: 2\n    quorum: 1\n")
    done = project.cli("validate")
    assert done.returncode == 2
    assert "configs/gates.yaml: line 5, column 5: invalid YAML: duplicate key 'quorum' " \
        "(first at line 4)" in done.stderr


def test_an_alias_bomb_is_refused_quickly_with_a_short_message(project: Workspace) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for name, previous in zip("bcdefghi", "abcdefgh", strict=True):
        levels.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]")
    model = "name: mini\ndataset: iris\nestimator: sklearn.linear_model.LogisticRegression\n" \
            "hyperparameters:\n" + "".join(f"  {line}\n" for line in levels)
    _write(project, "model.yaml", model.encode())
    started = time.monotonic()
    done = project.cli("validate", timeout=60)
    assert done.returncode == 2 and time.monotonic() - started < 20
    assert "configs/model.yaml: invalid YAML: its aliases expand to more than 100000 values" \
        in done.stderr
    assert len(done.stderr) < 2000


@pytest.mark.parametrize(("data", "expected"), [
    (b"name: p\nstages: " + b"[" * 10000 + b"]" * 10000 + b"\n",
     "configs/pipeline.yaml: invalid YAML: nested too deeply to read"),
    ("name: caf\u00e9\n".encode("latin-1") + b"stages: []\n",
     "configs/pipeline.yaml: is not UTF-8 text: byte 0xe9 at offset 9"),
    ("name: p\n".encode("utf-16"),
     "configs/pipeline.yaml: is not UTF-8 text: byte 0xff at offset 0 (it looks like UTF-16: "
     "save it as UTF-8)"),
])
def test_unreadable_configuration_names_the_file(project: Workspace, data: bytes,
                                                 expected: str) -> None:
    _write(project, "pipeline.yaml", data)
    done = project.cli("validate")
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("content", "expected"), [
    ({"cells": 5}, "is not a notebook: 'cells' must be a list, got int"),
    ({"cells": [5]}, "is not a notebook: cell 0 is not a mapping"),
    ({"cells": [{"cell_type": "code", "source": 7}]}, "cell 0 'source' must be text"),
    ([], "is not a notebook: expected a JSON object, got list"),
])
def test_a_malformed_notebook_is_named(project: Workspace, content: object, expected: str
                                       ) -> None:
    (project.root / "notebooks" / "a.ipynb").write_text(json.dumps(content))
    done = project.cli("validate")
    assert done.returncode == 2 and expected in done.stderr, done.stderr
    assert "stages[0](a).notebook: notebooks/a.ipynb" in done.stderr


# --- 13: secrets that cannot be kept apart from the configuration ----------------------------


def test_a_secret_whose_value_appears_in_the_configuration_is_refused(project: Workspace
                                                                       ) -> None:
    pipeline = dict(PIPELINE, name="mini-pipeline-value")
    project.write_yaml("pipeline.yaml", pipeline)
    done = project.cli("run", env={"API_TOKEN": "mini-pipeline-value"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "configs/pipeline.yaml contains the value of secret API_TOKEN" in done.stderr
    assert not (project.root / "reports" / "runs").exists(), "nothing ran, nothing recorded"


def test_a_short_secret_is_refused() -> None:
    from workbench.audit.redact import SecretError, Secrets

    with pytest.raises(SecretError, match="shorter than 8 characters"):
        import os

        os.environ["WB_TEST_SHORTISH"] = "prod123"
        try:
            Secrets.from_environment(["WB_TEST_SHORTISH"])
        finally:
            del os.environ["WB_TEST_SHORTISH"]


def test_character_references_and_escapes_do_not_hide_a_secret() -> None:
    from workbench.audit.redact import SecretError, Secrets, redact_notebook_text

    secret = "s3cr3t-Value-9f8e7d"
    secrets = Secrets({"API_TOKEN": secret})
    hidden = "".join(f"&#{ord(c)};" for c in secret)
    for shown in (hidden, hidden.replace("&", "&amp;"), "".join(f"%{ord(c):02X}" for c in secret)):
        nb = {"cells": [{"outputs": [{"data": {"text/html": shown}}]}]}
        with pytest.raises(SecretError, match="remains after redaction"):
            redact_notebook_text(json.dumps(nb), secrets, "nb")


# --- 14: files MLflow rewrites when a version is loaded --------------------------------------


def test_the_artifact_digest_ignores_what_mlflow_writes_on_load(tmp_path: Path) -> None:
    from workbench.governance.bundle import tree_digest

    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    (tmp_path / "model.skops").write_bytes(b"\x00weights")
    before = tree_digest(tmp_path)
    (tmp_path / "registered_model_meta").write_text("model_name: m\nmodel_version: '1'\n")
    assert tree_digest(tmp_path) == before
    (tmp_path / "registered_model_meta").write_text("model_name: m\nmodel_version: '2'\n")
    assert tree_digest(tmp_path) == before
    (tmp_path / "model.skops").write_bytes(b"\x00other")
    assert tree_digest(tmp_path) != before, "the model's own files still count"


# --- 15: the ledger's head --------------------------------------------------------------------


@pytest.mark.parametrize("tail", [b"garbage\n", b'{"seq": 99, "hash": "abc"}\n'])
def test_a_ledger_ending_in_garbage_blocks_runs_until_repaired(project: Workspace,
                                                               tail: bytes) -> None:
    reports = project.root / "reports"
    for n in range(3):
        ledger.append(reports, "note", actor=None, run_id=None, data={"n": n})
    path = reports / ledger.LEDGER_FILE
    path.write_bytes(path.read_bytes() + tail)
    blocked = project.cli("run")
    assert blocked.returncode == 1 and "JSONDecodeError" not in blocked.stderr
    assert "its last entry (seq " in blocked.stderr and "workbench audit repair" in \
        blocked.stderr
    with pytest.raises(ledger.LedgerError):
        ledger.append(reports, "note", actor=None, run_id=None)  # never after a forged head
    repaired = project.cli("audit", "repair")
    assert repaired.returncode == 0 and "recorded as seq 4 (ledger_repaired)" in repaired.stdout
    assert project.cli("audit", "verify").returncode == 0
    kept = list((reports / ledger.TORN_DIR).iterdir())
    assert [p.read_bytes() for p in kept] == [tail]
    assert project.cli("audit", "repair").stdout.startswith("the ledger ends in a valid entry")


def test_repair_never_cuts_history(project: Workspace) -> None:
    reports = project.root / "reports"
    for n in range(4):
        ledger.append(reports, "note", actor=None, run_id=None, data={"n": n})
    path = reports / ledger.LEDGER_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"n":1', b'"n":7')  # an edit in the middle
    path.write_bytes(b"".join(lines))
    refused = project.cli("audit", "repair")
    assert refused.returncode == 1 and "an edit of the history" in refused.stderr
    assert path.read_bytes() == b"".join(lines), "nothing was cut"


# --- 16: run ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("run_id", ["../../outside", "..", "a/b", ".hidden"])
def test_a_run_id_that_is_a_path_is_refused_before_anything_is_written(project: Workspace,
                                                                        run_id: str) -> None:
    before = sorted(p for p in project.root.parent.rglob("*"))
    done = project.cli("approve", run_id, "--env", "qa", "--as", "alice")
    assert done.returncode == 2 and "is not a run id" in done.stderr, done.stderr
    assert sorted(p for p in project.root.parent.rglob("*")) == before


# --- 20: the report server's port -------------------------------------------------------------


def test_reports_serve_on_a_busy_or_impossible_port(project: Workspace) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = project.cli("reports", "serve", "--port", str(port), timeout=60)
    assert done.returncode == 2 and f"127.0.0.1:{port} is in use" in done.stderr
    done = project.cli("reports", "serve", "--port", "70000", timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Invalid value for '--port': Input should be less than or equal to 65535" in \
        done.stderr


def test_a_full_disk_is_one_message() -> None:
    """ENOSPC from a write, or SQLite's 'database or disk is full' (under SQLAlchemy's own
    exception), becomes one line and exit 1."""
    probe = (
        "import errno, importlib\n"
        "cli = importlib.import_module('workbench.cli.app')\n"
        "def full(*a, **k):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device', 'reports/ledger.jsonl')\n"
        "cli.app = full\n"
        "cli.main()\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=clean_environment(), timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: no space left on the device (writing "
                                   "reports/ledger.jsonl); free some and run the command again "
                                   "(use --debug for a traceback)")
    from workbench.cli.app import _disk_full

    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as inner:
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full") from inner
    except RuntimeError as outer:
        assert _disk_full(outer) == " (writing the MLflow store)"
    assert _disk_full(ValueError("x")) is None


# --- 21 ---------------------------------------------------------------------------------------


def test_status_takes_latest(project: Workspace) -> None:
    done = project.cli("status", "latest")
    assert done.returncode == 2 and "no runs yet" in done.stderr, done.stderr


# --- 4: each platform vouches, or the name is typed -------------------------------------------


def _json_server(routes: dict[str, object]) -> tuple[object, str]:
    """A tiny HTTP server on 127.0.0.1 answering GET path -> JSON (and the headers it saw)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(dict(self.headers))
            body = json.dumps(routes.get(self.path.split("?")[0], {})).encode()
            self.send_response(200 if self.path.split("?")[0] in routes else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.seen = seen  # type: ignore[attr-defined]
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_jupyterhub_vouches_through_its_api() -> None:
    from workbench.vouching import jupyterhub

    server, url = _json_server({"/hub/api/user": {"name": "hubuser"}})
    try:
        env = {"JUPYTERHUB_USER": "hubuser", "JUPYTERHUB_API_URL": f"{url}/hub/api",
               "JUPYTERHUB_API_TOKEN": "token-of-hubuser"}
        assert jupyterhub(env).name == "hubuser"
        assert server.seen[-1]["Authorization"] == "token token-of-hubuser"  # type: ignore
        assert jupyterhub({**env, "JUPYTERHUB_USER": "dave"}).name is None
        assert jupyterhub({"JUPYTERHUB_USER": "hubuser"}).why_not.startswith("no JupyterHub")
    finally:
        server.shutdown()  # type: ignore[attr-defined]


def test_gitlab_vouches_with_its_signed_id_token() -> None:
    from tests.tools.oidc import Issuer
    from workbench.vouching import gitlab

    with Issuer() as issuer:
        env = {"GITLAB_USER_LOGIN": "carol", "CI_SERVER_URL": issuer.url,
               "WORKBENCH_ID_TOKEN": issuer.mint("carol")}
        assert gitlab(env).name == "carol"
        assert gitlab({**env, "WORKBENCH_ID_TOKEN": issuer.mint("dave")}).name is None
        forged = issuer.mint("carol", key=issuer.other)
        assert "did not verify" in (gitlab({**env, "WORKBENCH_ID_TOKEN": forged}).why_not or "")
        other_audience = issuer.mint("carol", audience="someone-else")
        assert gitlab({**env, "WORKBENCH_ID_TOKEN": other_audience}).name is None


def test_jenkins_vouches_for_the_input_submitter_through_the_build_api() -> None:
    from workbench.vouching import jenkins

    build = {"actions": [{"_class": "hudson.model.CauseAction",
                          "causes": [{"userId": "carol"}]},
                         {"_class": "org.jenkinsci.plugins.workflow.support.steps.input."
                                    "ApproverAction", "userId": "dave"}]}
    server, url = _json_server({"/job/release/7/api/json": build})
    try:
        env = {"BUILD_USER_ID": "dave", "BUILD_URL": f"{url}/job/release/7/",
               "JENKINS_USER_ID": "ci", "JENKINS_API_TOKEN": "api-token-1"}
        assert jenkins(env).name == "dave"
        assert server.seen[-1]["Authorization"].startswith("Basic ")  # type: ignore
        assert jenkins({**env, "BUILD_USER_ID": "carol"}).name is None, \
            "with an input approver recorded, only that person approved"
        assert jenkins({**env, "BUILD_USER_ID": "erin"}).name is None
    finally:
        server.shutdown()  # type: ignore[attr-defined]
