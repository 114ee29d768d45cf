"""The bad-input corpus: every mistake gets one clear message and its documented exit code
(2 usage or configuration, 1 a failed stage, gate or check, 3 awaiting approval), and nothing
already archived is lost or rewritten.

Each case copies one project that already has an archive (a gated run stopped at its qa gate
with one approval recorded), breaks one thing, runs one command in-process, and compares every
archived file before and after. Only the port case starts a kernel.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    GATES,
    IDENTITY_VARIABLES,
    MINI_MODEL,
    REPO,
    Workspace,
    free_port,
    gate_stage,
    notebook,
    release_stage,
)

BUILD = """import mlflow
from workbench.registry.models import register
from workbench.registry.store import connect
from workbench.scraps import glue

connect()
with mlflow.start_run() as run:
    mlflow.log_text("flavors: {}\\n", "model/MLmodel")
    mlflow.log_metric("score", 0.9)
version, previous = register(f"runs:/{run.info.run_id}/model", model_name,
                             {"workbench.run_id": run_id}, "dev")
glue("mlflow_run_id", run.info.run_id)
glue("model_version", version)
glue("metrics", {"score": 0.9})
"""

PIPELINE = {"name": "gated", "stages": [
    {"name": "build", "notebook": "notebooks/build.ipynb",
     "parameters": {"model_name": {"from": "model.name"}, "run_id": {"from": "run.id"}},
     "outputs": {"mlflow_run_id": "str", "model_version": "str", "metrics": "dict"}},
    gate_stage("approve_qa", "build", "qa"),
    release_stage("release_qa", "approve_qa", "qa"),
]}

PIPELINE_FILE, ENVIRONMENTS_FILE = "configs/pipeline.yaml", "configs/environments.yaml"
MODEL_FILE, GATES_FILE = "configs/model.yaml", "configs/gates.yaml"


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, str]:
    """A project with an archive: a gated run stopped at the qa gate, approved by alice."""
    root = tmp_path_factory.mktemp("bad-input") / "project"
    ws = Workspace(root)
    (root / "configs").mkdir(parents=True)
    ws.write_yaml("environments.yaml", {"environments": {
        env: {"deploy": {"target": "local", "port": free_port()},
              "thresholds": {"min_score": 0.5}} for env in ("dev", "qa")}})
    ws.write_yaml("model.yaml", MINI_MODEL)
    ws.write_yaml("gates.yaml", {"groups": GATES["groups"],
                                 "policies": {"qa": GATES["policies"]["qa"]}})
    ws.write_yaml("pipeline.yaml", PIPELINE)
    ws.write_notebook("build", notebook(
        BUILD, parameters='model_name: str = "mini"\nrun_id: str = ""'))
    ws.write_notebook("release", notebook(
        "print(environment, version)", parameters='environment: str = "qa"\nversion: str = ""'))
    shutil.copy(REPO / "notebooks" / "approve.ipynb", root / "notebooks" / "approve.ipynb")
    started = ws.cli("run")
    assert started.returncode == 3, started.stdout + started.stderr
    run_id = ws.run_record()["id"]
    approved = ws.cli("approve", run_id, "--env", "qa", "--as", "alice", "--comment", "ok")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    return ws, run_id


# --- edits: each breaks one thing ---------------------------------------------------------------


def text(relative: str, content: str | bytes) -> Callable[[Workspace, str], None]:
    def edit(ws: Workspace, _: str) -> None:
        path = ws.root / relative
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return edit


def append_text(relative: str, content: str) -> Callable[[Workspace, str], None]:
    def edit(ws: Workspace, _: str) -> None:
        with (ws.root / relative).open("a") as handle:
            handle.write(content)
    return edit


def yaml_edit(name: str, change: Callable[[Any], None]) -> Callable[[Workspace, str], None]:
    def edit(ws: Workspace, _: str) -> None:
        data = ws.read_yaml(name)
        change(data)
        ws.write_yaml(name, data)
    return edit


def stage_edit(stage: str, change: Callable[[dict[str, Any]], None]
               ) -> Callable[[Workspace, str], None]:
    return yaml_edit("pipeline.yaml", lambda data: change(
        next(s for s in data["stages"] if s["name"] == stage)))


def set_stage(stage: str, key: str, value: Any) -> Callable[[Workspace, str], None]:
    return stage_edit(stage, lambda s: s.__setitem__(key, value))


def set_param(stage: str, name: str, value: Any) -> Callable[[Workspace, str], None]:
    return stage_edit(stage, lambda s: s["parameters"].__setitem__(name, value))


def set_key(name: str, path: str, value: Any) -> Callable[[Workspace, str], None]:
    """Set ``a.b.c`` in ``configs/<name>``."""
    def change(data: Any) -> None:
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        data[last] = value
    return yaml_edit(name, change)


def notebook_file(name: str, content: str) -> Callable[[Workspace, str], None]:
    return text(f"notebooks/{name}.ipynb", content)


def untag_parameters(ws: Workspace, _: str) -> None:
    path = ws.root / "notebooks" / "release.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"][0]["metadata"]["tags"] = []
    path.write_text(json.dumps(nb))


def run_file(relative: str, change: Callable[[Path], None]) -> Callable[[Workspace, str], None]:
    """Change a file of the archived run (``relative`` to its folder)."""
    def edit(ws: Workspace, run_id: str) -> None:
        path = ws.root / "reports" / "runs" / run_id / relative
        path.chmod(0o644)
        change(path)
    return edit


def edit_approval(path: Path) -> None:
    path.write_text(path.read_text().replace('"comment": "ok"', '"comment": "fine by me"'))


def forge_approval(path: Path) -> None:
    forged = json.loads(path.read_text())
    forged.update(seq=2, approver={"name": "carol", "source": "typed"})
    (path.parent / "0002.json").write_text(json.dumps(forged))


def edit_ledger(ws: Workspace, _: str) -> None:
    path = ws.root / "reports" / "ledger.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[0] = lines[0].replace(b'"pipeline":"gated"', b'"pipeline":"other"')
    path.write_bytes(b"".join(lines))


def anchor_file(content: str) -> Callable[[Workspace, str], None]:
    return lambda ws, _: (ws.root / "reports" / "anchor.json").write_text(content)


def unreachable_uri(ws: Workspace, _: str) -> None:
    set_key("pipeline.yaml", "mlflow", {"tracking_uri": f"http://127.0.0.1:{free_port()}"})(
        ws, _)


def nothing(ws: Workspace, _: str) -> None:
    pass


# --- the corpus ---------------------------------------------------------------------------------

RUN = "{run}"  # replaced by the archived run's id
ANCHOR = "{root}/reports/anchor.json"  # {root}: the project's folder


@dataclass(frozen=True)
class Case:
    edit: Callable[[Workspace, str], None]
    args: tuple[str, ...]
    code: int
    message: str  # in the output, after the file/field/stage it names
    names: str = ""  # the file, field or stage the message must name
    env: dict[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {
    # YAML syntax: the file, line and column
    "yaml-unclosed-bracket": Case(append_text(PIPELINE_FILE, "\nsecrets: [API_TOKEN\n"),
                                  ("validate",), 2, "invalid YAML", PIPELINE_FILE),
    "yaml-bad-indentation": Case(text(ENVIRONMENTS_FILE, "environments:\n  dev:\n    deploy: 1\n"
                                      "   thresholds: 2\n"), ("run",), 2, "invalid YAML",
                                 f"{ENVIRONMENTS_FILE}: line 4"),
    "yaml-unterminated-quote": Case(text(MODEL_FILE, 'name: "mini\ndataset: iris\n'),
                                    ("validate",), 2, "invalid YAML", MODEL_FILE),
    "yaml-tab-in-gates": Case(text(GATES_FILE, "groups: {}\n\tpolicies: {}\n"), ("run",), 2,
                              "invalid YAML", f"{GATES_FILE}: line 2"),
    "yaml-empty-pipeline": Case(text(PIPELINE_FILE, ""), ("validate",), 2,
                                "expected a mapping at the top, got NoneType", PIPELINE_FILE),
    "yaml-scalar-model": Case(text(MODEL_FILE, "just words\n"), ("run",), 2,
                              "expected a mapping at the top, got str", MODEL_FILE),
    # wrong types
    "retry-count-text": Case(set_stage("build", "retry", {"kernel_died": "twice"}),
                             ("validate",), 2, "Input should be a valid integer",
                             "stages[0](build).retry.kernel_died"),
    "retry-count-negative": Case(set_key("pipeline.yaml", "retry", {"startup": -1}), ("run",),
                                 2, "greater than or equal to 0", "retry.startup"),
    "retry-count-bool": Case(set_stage("build", "retry", {"hang": True}), ("validate",), 2,
                             "Input should be a valid integer", "stages[0](build).retry.hang"),
    "hang-timeout-zero": Case(set_stage("build", "hang_timeout", 0), ("run",), 2,
                              "greater than 0", "stages[0](build).hang_timeout"),
    "cell-timeout-text": Case(set_stage("build", "cell_timeout", "1m"), ("validate",), 2,
                              "valid number", "stages[0](build).cell_timeout"),
    "needs-not-a-list": Case(set_stage("approve_qa", "needs", "build"), ("run",), 2,
                             "valid list", "stages[1](approve_qa).needs"),
    "parameters-not-a-mapping": Case(set_stage("build", "parameters", ["model_name"]),
                                     ("validate",), 2, "valid dictionary",
                                     "stages[0](build).parameters"),
    "outputs-not-a-mapping": Case(set_stage("build", "outputs", ["model_version"]), ("run",), 2,
                                  "valid dictionary", "stages[0](build).outputs"),
    "port-out-of-range": Case(set_key("environments.yaml", "environments.dev.deploy.port",
                                      70000), ("validate",), 2, "less than or equal to 65535",
                              "environments.dev.deploy.port"),
    "model-name-with-spaces": Case(set_key("model.yaml", "name", "my model"), ("run",), 2,
                                   "String should match pattern", f"{MODEL_FILE}: name"),
    "quorum-zero": Case(set_key("gates.yaml", "policies.qa.quorum", 0), ("validate",), 2,
                        "greater than or equal to 1", "policies.qa.quorum"),
    "valid-for-not-a-duration": Case(set_key("gates.yaml", "policies.qa.valid_for", "1 week"),
                                     ("run",), 2, "expected a duration", GATES_FILE),
    "secret-name-invalid": Case(set_key("pipeline.yaml", "secrets", ["API-TOKEN"]),
                                ("validate",), 2, "String should match pattern",
                                "secrets[0]"),
    # unknown keys: the key and what was expected
    "retry-unknown-class": Case(set_stage("build", "retry", {"oom": 1}), ("run",), 2,
                                "unknown key; expected one of ['startup', 'kernel_died', "
                                "'hang', 'cell_timeout', 'deadline', 'output_limit', 'error']",
                                "stages[0](build).retry.oom"),
    "retry-unknown-class-pipeline": Case(set_key("pipeline.yaml", "retry", {"crash": 2}),
                                         ("validate",), 2, "unknown key", "retry.crash"),
    "stage-key-typo": Case(set_stage("build", "hang_timout", 30), ("run",), 2,
                           "unknown key; expected one of", "stages[0](build).hang_timout"),
    "deploy-unknown-key": Case(set_key("environments.yaml", "environments.dev.deploy.host",
                                       "0.0.0.0"), ("validate",), 2, "unknown key",
                               "environments.dev.deploy.host"),
    "gates-policy-typo": Case(set_key("gates.yaml", "policies.qa.quorom", 2), ("run",), 2,
                              "unknown key", "policies.qa.quorom"),
    # model.yaml's other keys are the project's own: a stage's reference to one it lacks is
    # named with the stage and parameter
    "model-key-referenced-but-missing": Case(
        yaml_edit("pipeline.yaml", lambda data: data["stages"][0]["parameters"].__setitem__(
            "epochs", {"from": "model.epochs"})), ("validate",), 2,
        "configs/model.yaml has no key epochs", "stages[0](build).parameters.epochs"),
    # notebooks: the stage and the notebook
    "notebook-missing": Case(lambda ws, _: (ws.root / "notebooks/release.ipynb").unlink(),
                             ("run",), 2, "notebook notebooks/release.ipynb does not exist",
                             "stages[2](release_qa).notebook"),
    "notebook-without-parameters-cell": Case(untag_parameters, ("validate",), 2,
                                             "has no code cell tagged 'parameters'",
                                             "stages[2](release_qa).notebook"),
    "notebook-not-json": Case(notebook_file("release", "{this is not json"), ("run",), 2,
                              "cannot read notebook", "stages[2](release_qa).notebook"),
    "notebook-parameters-syntax-error": Case(
        notebook_file("release", json.dumps(notebook("x", parameters="version: str = ("))),
        ("validate",), 2, "parameters cell line 1", "stages[2](release_qa).notebook"),
    "parameter-not-declared": Case(set_param("build", "epochs", 3), ("run",), 2,
                                   "declares no parameter 'epochs'",
                                   "stages[0](build).parameters.epochs"),
    "parameter-wrong-type": Case(set_param("build", "model_name", 7), ("validate",), 2,
                                 "expected str for notebooks/build.ipynb, got int",
                                 "stages[0](build).parameters.model_name"),
    "reference-wrong-type": Case(set_param("release_qa", "version", {"from": "build.metrics"}),
                                 ("run",), 2, "expected str for notebooks/release.ipynb, "
                                 "got dict", "stages[2](release_qa).parameters.version"),
    # the stage graph
    "cyclic-pipeline": Case(set_stage("build", "needs", ["release_qa"]), ("validate",), 2,
                            "dependency cycle: ", f"{PIPELINE_FILE}: stages"),
    "needs-unknown-stage": Case(set_stage("release_qa", "needs", ["aprove_qa"]), ("run",), 2,
                                "unknown stage 'aprove_qa'", "stages[2](release_qa).needs[0]"),
    "duplicate-stage": Case(yaml_edit("pipeline.yaml", lambda d: d["stages"].append(
        dict(d["stages"][0]))), ("validate",), 2, "duplicate stage name 'build'",
        "stages[3].name"),
    "gate-without-policy": Case(set_key("gates.yaml", "policies", {}), ("run",), 2,
                                "no approval policy for 'qa'", "stages[1](approve_qa).gate"),
    "ungated-promotion": Case(set_stage("release_qa", "needs", ["build"]), ("validate",), 2,
                              "no stage with 'gate: qa' is upstream",
                              "stages[2](release_qa).environment"),
    # approvals: the run, the environment, the record
    "approve-unknown-environment": Case(nothing, ("approve", RUN, "--env", "staging", "--as",
                                                  "alice"), 2, "approval policies for ['qa']",
                                        "--env staging"),
    "approve-unknown-run": Case(nothing, ("approve", "nope", "--env", "qa", "--as", "alice"),
                                2, "does not exist", "no run 'nope'"),
    "reject-without-comment": Case(nothing, ("reject", RUN, "--env", "qa", "--as", "bob"), 2,
                                   "comment", "Missing option '--comment'"),
    "approve-not-eligible": Case(nothing, ("approve", RUN, "--env", "qa", "--as", "mallory"),
                                 1, "refused and recorded", "mallory"),
    "approval-file-edited": Case(run_file("approvals/0001.json", edit_approval),
                                 ("approvals", RUN), 1, "content does not match its digest",
                                 "approvals/0001.json"),
    "approval-file-renamed": Case(run_file("approvals/0001.json",
                                           lambda p: p.rename(p.with_name("0002.json"))),
                                  ("approvals", RUN), 1, "an entry is missing or renamed",
                                  "approvals/0002.json"),
    "approval-file-forged": Case(run_file("approvals/0001.json", forge_approval),
                                 ("approvals", RUN), 1, "approvals/0002.json",
                                 "approvals/0002.json"),
    "resume-with-edited-approval": Case(run_file("approvals/0001.json", edit_approval),
                                        ("resume", RUN), 1, "content does not match its digest",
                                        "approvals/0001.json"),
    # the archive and the ledger
    "archived-notebook-edited": Case(run_file("build.ipynb", lambda p: p.write_text(
        p.read_text().replace("0.9", "1.0"))), ("audit", "verify"), 1,
        "content changed since it was recorded", "/build.ipynb"),
    "archived-notebook-deleted": Case(run_file("build.ipynb", Path.unlink),
                                      ("audit", "verify"), 1, "missing", "/build.ipynb"),
    "tampered-archive-fails-the-gate": Case(run_file("build.ipynb", lambda p: p.write_text(
        p.read_text().replace("0.9", "1.0"))), ("resume", RUN), 1,
        "changed since the ledger recorded it", "gate approve_qa (qa)"),
    "ledger-entry-edited": Case(edit_ledger, ("audit", "verify"), 1,
                                "content does not match its hash (edited)",
                                "ledger.jsonl line 1"),
    "ledger-torn-tail": Case(append_text("reports/ledger.jsonl", '{"seq": 99, "ev'), ("run",),
                             1, "ends with an incomplete entry", "ledger.jsonl"),
    "anchor-not-json": Case(anchor_file("{seq"), ("audit", "verify", "--anchor", ANCHOR), 2,
                            "not a readable anchor", "anchor.json"),
    "anchor-ahead-of-ledger": Case(anchor_file('{"seq": 999, "hash": "00"}'),
                                   ("audit", "verify", "--anchor", ANCHOR), 1,
                                   "(truncated)", "anchor: the ledger ends at seq"),
    # MLflow, CLI usage
    "mlflow-unreachable-config": Case(unreachable_uri, ("run",), 2, "is unreachable",
                                      f"{PIPELINE_FILE}: mlflow.tracking_uri"),
    "mlflow-unreachable-env": Case(nothing, ("run",), 2, "is unreachable",
                                   "$MLFLOW_TRACKING_URI",
                                   env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),
    "run-unknown-environment": Case(nothing, ("run", "--env", "prod"), 2,
                                    "configs/environments.yaml defines dev, qa", "--env prod"),
    "run-gated-environment": Case(nothing, ("run", "--env", "qa"), 2,
                                  "is behind an approval gate", "--env qa"),
    "run-unknown-stage": Case(nothing, ("run", "--stage", "train"), 2, "no such stage",
                              "--stage train"),
    "run-unknown-executor": Case(nothing, ("run", "--executor", "slurm"), 2,
                                 "choose one of local", "--executor slurm"),
    "status-unknown-run": Case(nothing, ("status", "nope"), 2, "does not exist",
                               "no run 'nope'"),
    "resume-unknown-run": Case(nothing, ("resume", "20200101T000000Z-000000"), 2,
                               "does not exist", "20200101T000000Z-000000"),
    "promote-unknown-environment": Case(nothing, ("promote", RUN, "--to", "staging"), 2,
                                        "unknown environment 'staging'", "staging"),
    "rerun-without-failed": Case(nothing, ("rerun", RUN), 2, "rerun needs --failed",
                                 "--failed"),
}

KERNEL_CASES = ("port-in-use",)


# --- running a case -----------------------------------------------------------------------------

MUTABLE = {"run.json", "ledger.jsonl"}  # rewritten or appended by design
VIEWS = {"static", ".site", "shards"}  # the site's regenerated files and its run index


def archive_snapshot(reports: Path) -> dict[str, str]:
    """sha256 of every archived file (run records, rendered pages, the site's index and locks
    excepted)."""
    return {p.relative_to(reports).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(reports.rglob("*")) if p.is_file() and p.name not in MUTABLE
            and p.suffix not in (".html", ".lock") and not VIEWS & set(p.parts)}


def invoke(root: Path, args: tuple[str, ...], capsys: pytest.CaptureFixture[str]
           ) -> tuple[int, str]:
    """``workbench --project ROOT ARGS`` in this process: (exit code, stdout + stderr)."""
    from workbench.cli import main

    saved_argv, saved_term = sys.argv, signal.getsignal(signal.SIGTERM)
    sys.argv = ["workbench", "--project", str(root), *args]
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    finally:
        sys.argv = saved_argv
        signal.signal(signal.SIGTERM, saved_term)
    out = capsys.readouterr()
    return code, out.out + out.err


def play(case: Case, archived: tuple[Workspace, str], tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    source, run_id = archived
    root = tmp_path / "project"
    shutil.copytree(source.root, root, symlinks=True)
    ws = Workspace(root)
    for name in ("MLFLOW_TRACKING_URI", "WORKBENCH_PROJECT", "WORKBENCH_RUN_ID",
                 *IDENTITY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    case.edit(ws, run_id)
    reports = root / "reports"
    before = archive_snapshot(reports)
    ledger_before = (reports / "ledger.jsonl").read_bytes()
    runs_before = sorted(p.name for p in (reports / "runs").iterdir())
    args = tuple(a.replace(RUN, run_id).replace("{root}", str(root)) for a in case.args)
    code, output = invoke(root, args, capsys)

    assert code == case.code, output
    assert "Traceback" not in output, output
    where = output.find(case.names)
    assert where >= 0, f"the message should name {case.names!r}:\n{output}"
    assert case.message in output, output
    after = archive_snapshot(reports)
    changed = {name for name, digest in before.items() if after.get(name) != digest}
    assert not changed, f"archived files lost or rewritten: {changed}"
    assert (reports / "ledger.jsonl").read_bytes().startswith(ledger_before)
    if code == 2:  # nothing ran
        assert sorted(p.name for p in (reports / "runs").iterdir()) == runs_before
        assert (reports / "ledger.jsonl").read_bytes() == ledger_before
    return output


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, archived: tuple[Workspace, str], tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    play(CASES[name], archived, tmp_path, monkeypatch, capsys)


@pytest.mark.slow
def test_port_in_use(archived: tuple[Workspace, str], tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                     ) -> None:
    """A deploy onto a port another process holds fails its stage (exit 1), naming the port."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        def edit(ws: Workspace, _: str) -> None:
            set_key("environments.yaml", "environments.dev.deploy.port", port)(ws, _)
            ws.write_notebook("deploy", notebook(
                "from workbench.deploy import deploy_model\n"
                "deploy_model('dev', 'mini', '1')", parameters="x: int = 0"))
            ws.write_yaml("pipeline.yaml", {"name": "deploying", "stages": [
                {"name": "deploy", "notebook": "notebooks/deploy.ipynb"}]})

        output = play(Case(edit, ("run",), 1, f"port {port} on 127.0.0.1 is in use",
                           "stage deploy failed"), archived, tmp_path, monkeypatch, capsys)
        assert output.count("is in use") <= 3, output


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) + len(KERNEL_CASES) >= 40
    assert all(case.names and case.message for case in CASES.values())
