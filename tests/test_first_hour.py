"""A new user's first hour: `workbench init` from the templates shipped in the package, the
output roles `validate` checks, and a release of each template from a built wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Workspace, clean_environment, free_port

TEMPLATES = ("classifier", "minimal", "regression")


def _init(tmp_path: Path, template: str, name: str = "project") -> Workspace:
    folder = tmp_path / name
    done = Workspace(tmp_path).cli("init", str(folder), "--template", template)
    assert done.returncode == 0, done.stderr
    return Workspace(folder)


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- init (fast: no kernels)

def test_list_names_each_template_with_a_description(tmp_path: Path) -> None:
    done = Workspace(tmp_path).cli("init", "--list")
    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert [name for name, _ in lines] == list(TEMPLATES)
    assert all(len(description) > 20 for _, description in lines)


@pytest.mark.parametrize("template", TEMPLATES)
def test_each_template_is_a_complete_valid_project(tmp_path: Path, template: str) -> None:
    ws = _init(tmp_path, template)
    files = _tree(ws.root)
    for needed in (".gitignore", "README.md", "requirements.txt", "reports/.gitignore",
                   "configs/pipeline.yaml", "configs/environments.yaml", "configs/model.yaml"):
        assert needed in files, needed
    assert b".workbench/" in files[".gitignore"]
    assert b"workbench" in files["requirements.txt"]
    pipeline = yaml.safe_load(files["configs/pipeline.yaml"])
    used = {stage["notebook"] for stage in pipeline["stages"]}
    shipped = {p for p in files if p.startswith("notebooks/")}
    assert used == shipped  # every notebook a stage runs, and no other
    for path in shipped:
        for cell in json.loads(files[path])["cells"]:
            assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, path
    done = ws.cli("validate")
    assert done.returncode == 0, done.stderr
    assert "configuration valid" in done.stdout


def test_the_regression_template_is_a_regressor_with_r2_thresholds(tmp_path: Path) -> None:
    ws = _init(tmp_path, "regression")
    assert ws.read_yaml("model.yaml")["estimator"].endswith("Regressor")
    assert "R^2" in (ws.root / "configs" / "environments.yaml").read_text()


def test_init_refuses_a_folder_that_holds_a_project_and_touches_nothing(tmp_path: Path) -> None:
    ws = _init(tmp_path, "minimal")
    (ws.root / "configs" / "model.yaml").write_text("name: mine\n")
    before = _tree(ws.root)
    done = Workspace(tmp_path).cli("init", str(ws.root), "--template", "classifier")
    assert done.returncode == 2
    assert "already holds a workbench project" in done.stderr
    assert _tree(ws.root) == before


def test_init_refuses_to_write_over_a_users_file(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "README.md").write_text("my notes\n")
    done = Workspace(tmp_path).cli("init", str(folder))
    assert done.returncode == 2
    assert "README.md already exist" in done.stderr
    assert _tree(folder) == {"README.md": b"my notes\n"}


def test_an_unknown_template_is_named(tmp_path: Path) -> None:
    done = Workspace(tmp_path).cli("init", str(tmp_path / "x"), "--template", "tensorflow")
    assert done.returncode == 2
    assert "no template 'tensorflow'" in done.stderr and "classifier" in done.stderr
    assert not (tmp_path / "x").exists()


def test_outside_a_project_the_error_says_how_to_start_one(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "workbench", "status"], capture_output=True,
                          text=True, cwd=tmp_path, env=clean_environment(), timeout=60)
    assert done.returncode == 2
    assert "workbench init" in done.stderr


# ---------------------------------------------------------------- output roles (fast)

def _edit_stage(ws: Workspace, name: str, edit: Any) -> None:
    pipeline = ws.read_yaml("pipeline.yaml")
    edit(next(s for s in pipeline["stages"] if s["name"] == name))
    ws.write_yaml("pipeline.yaml", pipeline)


def test_a_gate_with_no_model_version_upstream_is_an_error_naming_it(tmp_path: Path) -> None:
    ws = _init(tmp_path, "minimal")
    _edit_stage(ws, "register", lambda s: s["outputs"].__setitem__(
        "version", s["outputs"].pop("model_version")))
    _edit_stage(ws, "deploy", lambda s: s["parameters"].__setitem__(
        "version", {"from": "register.version"}))
    _edit_stage(ws, "deploy_prod", lambda s: s["parameters"].__setitem__(
        "version", {"from": "register.version"}))
    done = ws.cli("validate")
    assert done.returncode == 2
    assert "stages[3](approve_prod).gate: gate 'prod' releases a registered model version, " \
           "but no stage up to it declares one" in done.stderr
    assert "stages[1](register).outputs: declares 'alias_move'" in done.stderr
    # declaring the role on the renamed output is all it takes
    _edit_stage(ws, "register", lambda s: s["outputs"].__setitem__(
        "version", {"type": "str", "role": "model_version"}))
    done = ws.cli("validate")
    assert done.returncode == 0, done.stderr


def test_a_gate_whose_evidence_has_no_metrics_is_a_warning(tmp_path: Path) -> None:
    ws = _init(tmp_path, "minimal")
    _edit_stage(ws, "train", lambda s: s["outputs"].__setitem__("train_metrics", "dict"))
    done = ws.cli("validate")
    assert done.returncode == 0, done.stderr
    assert "warning: configs/pipeline.yaml: stages[3](approve_prod).gate: the evidence of " \
           "gate 'prod' shows no metrics" in done.stderr


def test_roles_are_checked_for_type_and_uniqueness(tmp_path: Path) -> None:
    ws = _init(tmp_path, "minimal")
    _edit_stage(ws, "train", lambda s: s["outputs"].__setitem__(
        "model_uri", {"type": "str", "role": "metrics"}))
    done = ws.cli("validate")
    assert done.returncode == 2
    assert "outputs 'model_uri' and 'train_metrics' both declare role 'metrics'" in done.stderr
    _edit_stage(ws, "train", lambda s: s["outputs"].__setitem__(
        "train_metrics", {"type": "list", "role": "metrics"}) or s["outputs"].__setitem__(
        "model_uri", "str"))
    done = ws.cli("validate")
    assert done.returncode == 2
    assert "stages[0](train).outputs.train_metrics: plays role 'metrics', which takes dict, " \
           "not list" in done.stderr
    _edit_stage(ws, "train", lambda s: s["outputs"].__setitem__(
        "train_metrics", {"type": "dict", "role": "accuracy"}))
    done = ws.cli("validate")
    assert done.returncode == 2
    assert "stages[0](train).outputs.train_metrics.role: Input should be 'model_version'" \
           in done.stderr


# ---------------------------------------------------------------- end to end (slow)

def _approvers(ws: Workspace, environment: str) -> list[str]:
    gates = ws.read_yaml("gates.yaml")
    policy = gates["policies"][environment]
    names: list[str] = []
    for entry in policy["approvers"]:
        names += gates["groups"][entry[6:]] if entry.startswith("group:") else [entry]
    return list(dict.fromkeys(names))[: policy.get("quorum", 1)]


def _awaiting(ws: Workspace) -> str | None:
    record = ws.run_record()
    waiting = [s for s in record["stages"].values() if s["status"] == "awaiting_approval"]
    return waiting[0]["gate"]["environment"] if waiting else None


def _free_ports(ws: Workspace) -> None:
    environments = ws.read_yaml("environments.yaml")
    for env in environments["environments"].values():
        env["deploy"]["port"] = free_port()
    ws.write_yaml("environments.yaml", environments)


def _git_commit(root: Path) -> None:
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.email=ds@example.com", "-c", "user.name=ds", "commit", "-qm",
                  "new project"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def release_through_every_gate(ws: Workspace, cli: Any, oidc: Any) -> dict[str, Any]:
    """`run`, then approve and resume at each gate until the run ends; the last record."""
    ci = oidc.github("release-bot")
    done = cli("run", env=ci)
    for _ in range(5):
        environment = _awaiting(ws)
        if environment is None:
            break
        assert done.returncode == 3, done.stdout + done.stderr
        for name in _approvers(ws, environment):
            approved = cli("approve", "latest", "--env", environment, "--comment", "ok",
                           env=oidc.github(name))
            assert approved.returncode == 0, approved.stdout + approved.stderr
        done = cli("resume", "latest", env=ci)
    assert done.returncode == 0, done.stdout + done.stderr
    record = ws.run_record()
    assert record["status"] == "succeeded"
    return record


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new virtual environment with workbench installed from a wheel built from a copy of
    this tree (not an editable install); its dependencies come from the test venv."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        path, copy = REPO / rel, source / rel
        if not path.exists() and not path.is_symlink():
            continue  # deleted in the work tree
        copy.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            copy.symlink_to(os.readlink(path))
        else:
            shutil.copy2(path, copy)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(base / "dist"), str(source)],
                   check=True, capture_output=True, timeout=600)
    wheel = next((base / "dist").glob("workbench-*.whl"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    # the dependencies: the test venv's site-packages, after the new venv's own (whose
    # workbench, from the wheel, comes first); the editable install's .pth is not read there
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                "get_paths()['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "deps-from-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield venv


@pytest.mark.slow
@pytest.mark.parametrize("template", TEMPLATES)
def test_a_new_user_releases_each_template_from_the_wheel(
        tmp_path: Path, wheel_venv: Path, oidc: Any, template: str) -> None:
    env = {**clean_environment(), "PATH": f"{wheel_venv / 'bin'}{os.pathsep}"
                                          f"{os.environ['PATH']}",
           # the borrowed dependencies' data files (nbconvert's templates) stay in their prefix
           "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter")}
    env.pop("COV_CORE_SOURCE", None)
    where = subprocess.run(["workbench", "--help"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=120)
    assert where.returncode == 0, where.stderr
    located = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", "import workbench; "
                              "print(workbench.__file__)"], capture_output=True, text=True,
                             env=env, cwd=tmp_path, check=True).stdout
    assert str(wheel_venv) in located  # the wheel's package, not this checkout

    folder = tmp_path / f"my-{template}"
    made = subprocess.run(["workbench", "init", str(folder), "--template", template],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert made.returncode == 0, made.stderr
    ws = Workspace(folder)
    _free_ports(ws)
    _git_commit(folder)

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["workbench", *args], capture_output=True, text=True,
                              env={**base_env, **(env or {})}, cwd=folder, timeout=900)

    base_env = env
    try:
        first = ws.read_yaml("pipeline.yaml")["stages"][0]["name"]
        partial = cli("run", "--until", first)
        assert partial.returncode == 0, partial.stdout + partial.stderr
        record = release_through_every_gate(ws, cli, oidc)
        assert record["model_version"]["version"]
        gates = [s for s in record["stages"].values() if s.get("gate")]
        assert gates and all(s["gate"]["state"] == "approved" for s in gates)
        verified = cli("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        built = cli("reports", "build")
        assert built.returncode == 0, built.stdout + built.stderr
        assert (folder / "reports" / "index.html").is_file()
        for system in ("github", "gitlab", "jenkins"):
            generated = cli("ci", "init", system)
            assert generated.returncode == 0, generated.stdout + generated.stderr
        workflows = "".join(p.read_text() for p in (folder / ".github").rglob("*.yml"))
        assert "pip install -r requirements.txt" in workflows
        assert "--until " in workflows  # the train-only job
    finally:
        for environment in ws.read_yaml("environments.yaml")["environments"]:
            cli("stop", environment)


@pytest.mark.slow
def test_renamed_stage_and_output_with_a_role_release_the_same(tmp_path: Path, oidc: Any
                                                                ) -> None:
    """Rename the registering stage and its version output (declaring the role), update the
    references and the notebook's glue call: the release works the same."""
    ws = _init(tmp_path, "minimal")
    _free_ports(ws)
    text = (ws.root / "configs" / "pipeline.yaml").read_text()
    text = text.replace("- name: register", "- name: publish").replace(
        "needs: [register]", "needs: [publish]").replace(
        "register.model_version", "publish.candidate").replace(
        "      model_version: str                                  # role model_version "
        "(standard name)", "      candidate: {type: str, role: model_version}")
    assert "candidate: {type: str, role: model_version}" in text
    (ws.root / "configs" / "pipeline.yaml").write_text(text)
    notebook = ws.root / "notebooks" / "register.ipynb"
    source = notebook.read_text()
    assert '\\"model_version\\"' in source
    notebook.write_text(source.replace('\\"model_version\\"', '\\"candidate\\"'))
    _git_commit(ws.root)
    try:
        record = release_through_every_gate(ws, lambda *a, env=None: ws.cli(*a, env=env), oidc)
        assert record["stages"]["publish"]["outputs"]["candidate"] == \
            record["model_version"]["version"]
        assert record["stages"]["publish"]["roles"]["model_version"] == "candidate"
        assert record["stages"]["deploy_prod"]["outputs"]["served_version"] == \
            record["model_version"]["version"]
    finally:
        for environment in ("dev", "prod"):
            ws.cli("stop", environment)
