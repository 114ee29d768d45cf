"""``workbench rollback`` on a Kubernetes environment: rollout undo through the real client
against the API emulator, recorded like every rollback (journal, ledger, alias)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from conftest import REPO, Workspace, clean_environment
from k8s_emulator import NAMESPACE, DeploymentController, Emulator, running, use_kubernetes

from workbench.audit import ledger
from workbench.config import load_config
from workbench.governance.promotion import record_move
from workbench.identity import Identity
from workbench.k8s import target
from workbench.operations.rollback import RollbackError, rollback
from workbench.project import Project
from workbench.registry.store import resolve

PING = f"/api/v1/namespaces/{NAMESPACE}/services/mini-dev:http/proxy/ping"
TRACKING = "http://mlflow.example.test:5000"


@pytest.fixture
def emulator() -> Any:
    with Emulator() as emu:
        yield emu


@pytest.mark.slow
def test_rollback_on_kubernetes_undoes_the_rollout_and_is_recorded(mini_project: Workspace,
                                                                    emulator: Emulator) -> None:
    ws = mini_project
    use_kubernetes(ws, emulator, tracking_uri=TRACKING)
    registered = subprocess.run([sys.executable, str(REPO / "tests/tools/register_versions.py"),
                                 str(ws.root), "2"], capture_output=True, text=True,
                                env=clean_environment(), timeout=300)
    assert registered.returncode == 0, registered.stderr
    project, config = Project(ws.root), load_config(ws.root / "configs")
    tracking_uri = resolve(project, config.pipeline.mlflow).tracking_uri
    actor = Identity(name="erin", source="typed")
    emulator.answer(PING)
    with running(DeploymentController(emulator)):
        for version, previous in (("1", None), ("2", "1")):
            target.deploy(project, config, "dev", "mini", version, tracking_uri)
            record_move(project, f"run-{version}", alias="dev", model="mini",
                        from_version=previous, to_version=version, actor=actor,
                        via="stage register", approvals=[], bundle_digest=None)
        with pytest.raises(RollbackError, match="version 5 was never approved for dev"):
            rollback(project, config, "dev", actor, to="5")
        record = rollback(project, config, "dev", actor, reason="error rate after v2")

    assert (record.from_version, record.to_version) == ("2", "1")
    assert record.target == "kubernetes" and record.trigger == "manual"
    live = target.current(project, config, "dev")
    assert live is not None and live.version == "1"
    undo = [r for r in emulator.handler.sent() if r.method.value == "PATCH"][-1]
    template = json.loads(undo.body)[0]["value"]
    assert template["metadata"]["labels"]["workbench.io/model-version"] == "1"
    from mlflow import MlflowClient

    alias = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias("mini", "dev")
    assert str(alias.version) == "1"
    entries = [e for e in ledger.entries(project.reports) if e["event"] == "rollback"]
    assert [(e["data"]["from_version"], e["data"]["to_version"], e["data"]["reason"])
            for e in entries] == [("2", "1", "error rate after v2")]
    assert ledger.verify(project.reports).ok
