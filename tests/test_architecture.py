"""The package's shape: layers import only downwards, packages form no circle, extension points
are registries a third party can add to, and side effects have one owner."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "workbench"


def test_lower_layers_never_import_higher_ones_and_packages_form_no_circle() -> None:
    """The contracts in pyproject.toml ([tool.importlinter]), checked by import-linter: a
    module importing a higher layer, or two packages importing each other, fails here."""
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-logo",
                           "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_the_run_record_and_the_ledger_have_one_writer_in_the_pipeline() -> None:
    """Inside the pipeline only the recorder saves run.json or appends to the ledger (the
    crash-recovery rule "run.json first, then the ledger" lives in one place)."""
    for module in sorted((PACKAGE / "pipeline").glob("*.py")):
        if module.name == "recorder.py":
            continue
        source = module.read_text(encoding="utf-8")
        for writer in ("run_record.save(", "ledger.append(", "journal.append("):
            assert writer not in source, f"{module.name} calls {writer}"


def test_the_scheduler_writes_no_file() -> None:
    """The scheduler decides; the recorder and the listeners write."""
    source = (PACKAGE / "pipeline" / "scheduler.py").read_text()
    for forbidden in ("write_text(", "write_bytes(", "write_json(", "open(", "ledger.",
                      "cache.remember("):
        assert forbidden not in source, forbidden


def test_an_executor_plug_in_registered_by_name_runs_a_stage(tmp_path: Path) -> None:
    """A third-party executor needs nothing but the registry: it gets one request object."""
    from workbench.execution.executors import (
        EXECUTORS,
        ExecutionRequest,
        ExecutorError,
        executor_for,
    )
    from workbench.execution.stage import StageResult

    seen: list[ExecutionRequest] = []

    class Echo:
        runs_here = False

        @classmethod
        def create(cls, project: object, config: object, environment: str) -> Echo:
            return cls()

        def execute(self, request: ExecutionRequest) -> StageResult:
            seen.append(request)
            return StageResult(True, {"echo": request.parameters["x"]})

    EXECUTORS.register("echo", Echo)
    try:
        executor = executor_for("echo", None, None, "dev")
        request = ExecutionRequest(notebook=tmp_path / "a.ipynb", output=tmp_path / "b.ipynb",
                                   parameters={"x": 3}, declared_outputs={}, cwd=tmp_path,
                                   timeout=5, stage="a")
        assert executor.execute(request).outputs == {"echo": 3} and seen == [request]
        assert "echo" in EXECUTORS.names() and "kubernetes" in EXECUTORS.names()
    finally:
        EXECUTORS.unregister("echo")
    with pytest.raises(ExecutorError, match="unknown executor 'echo'; choose one of local"):
        executor_for("echo", None, None, "dev")


def test_the_kubernetes_plug_ins_come_through_entry_points_like_a_third_partys() -> None:
    from workbench.deploy.targets import TARGETS, target_named
    from workbench.events import LISTENERS
    from workbench.execution.executors import EXECUTORS

    assert EXECUTORS.get("kubernetes").__module__ == "workbench.k8s.executor"
    assert type(target_named("kubernetes")).__module__ == "workbench.k8s.target"
    assert TARGETS.names()[:2] == ["local", "kubernetes"]
    assert {"stage_cache", "stage_publisher", "report_site"} <= set(LISTENERS.names())


def test_a_deploy_strategy_plugs_in_without_touching_the_scheduler(tmp_path: Path) -> None:
    """The seam progressive delivery uses: a strategy decides how a release reaches a target."""
    from workbench.deploy import deploy_to
    from workbench.deploy.targets import STRATEGIES, DeployRequest
    from workbench.errors import WorkbenchError

    released: list[DeployRequest] = []

    class Recorded:
        def release(self, target: object, request: DeployRequest) -> str:
            released.append(request)
            return f"{request.environment}:{request.version}"

    class Config:
        environments = {"dev": type("Env", (), {"deploy": type("D", (), {"target": "local"})})}

    STRATEGIES.register("recorded", Recorded)
    try:
        assert deploy_to(None, Config, "dev", "m", "7", "sqlite://", "recorded") == "dev:7"
        assert released[0].model_name == "m"
    finally:
        STRATEGIES.unregister("recorded")
    with pytest.raises(WorkbenchError, match="unknown deploy strategy 'recorded'"):
        deploy_to(None, Config, "dev", "m", "7", "sqlite://", "recorded")


def test_every_user_facing_error_has_the_one_base() -> None:
    """The command line catches WorkbenchError alone: every error class of the package that a
    person is meant to read derives from it."""

    missing = []
    for module in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith(
                    ("Error", "Refused", "Breach", "Unreachable", "Invalid", "Failed")) \
                    and not node.name.startswith("_") and node.name != "WorkbenchError":
                bases = {ast.unparse(b) for b in node.bases}
                if not bases & {"WorkbenchError", "UsageError", "FailedError", "ConfigError",
                                "KubernetesError", "UnknownPlugin", "TargetError"}:
                    missing.append(f"{module.relative_to(REPO)}: {node.name}({bases})")
    assert not missing, missing
    source = (PACKAGE / "cli" / "app.py").read_text(encoding="utf-8")
    assert source.count("except WorkbenchError") == 1
