"""Soak time end to end: real kernels, the real approval notebook and MLflow registry; the soak's
clock is moved on through ``$WORKBENCH_SOAK_NOW`` (a policy with ``test_clock``), never slept."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import Workspace
from tests.test_promotion import alias_version

pytestmark = pytest.mark.slow


def test_prod_waits_for_its_soak_in_qa_then_releases(gated_project: Workspace) -> None:
    ws = gated_project
    gates = ws.read_yaml("gates.yaml")
    gates["policies"]["prod"].update(quorum=1, strict=False, valid_for="1h",
                                     soak={"in": "qa", "for": "2h", "test_clock": True})
    ws.write_yaml("gates.yaml", gates)
    assert ws.cli("run").returncode == 3
    run_id = ws.run_record()["id"]
    assert ws.cli("approve", run_id, "--env", "qa", "--as", "alice").returncode == 0
    at_prod = ws.cli("resume", run_id)
    assert at_prod.returncode == 3, at_prod.stdout + at_prod.stderr
    assert "needs 1 more of 1" in at_prod.stderr and "soak: v1 has served qa for" in \
        at_prod.stderr

    approved = ws.cli("approve", run_id, "--env", "prod", "--as", "dave")
    assert approved.returncode == 0, approved.stderr
    assert "gate approve_prod (prod) is awaiting its soak" in approved.stdout
    soaking = ws.cli("resume", run_id)
    assert soaking.returncode == 3, soaking.stdout + soaking.stderr
    assert re.search(r"soak: v1 has served qa for \d+s of 2h; (2h 0m|1h 59m) left",
                     soaking.stderr), soaking.stderr
    record = ws.run_record()
    assert record["stages"]["approve_prod"]["status"] == "awaiting_approval"
    assert record["stages"]["release_prod"]["status"] == "pending"
    listed = json.loads(ws.cli("approvals", run_id, "--json").stdout)["gates"]["prod"]
    assert listed["state"] == "awaiting" and listed["approved_by"] == ["dave"]
    assert listed["soak"]["environment"] == "qa" and listed["soak"]["passed"] is False
    assert listed["soak"]["version"] == "1" and listed["soak"]["left_s"] > 3600

    later = (datetime.now(UTC) + timedelta(hours=2, minutes=5)).isoformat()
    released = ws.cli("resume", run_id, env={"WORKBENCH_SOAK_NOW": later})
    assert released.returncode == 0, released.stdout + released.stderr
    record = ws.run_record()
    assert record["status"] == "succeeded"
    assert record["stages"]["release_prod"]["outputs"]["released"] == "prod:1"
    assert alias_version(record, "prod") == "1"
    gate = record["stages"]["approve_prod"]["gate"]
    assert gate["state"] == "approved" and gate["soak"]["passed"] is True
    assert gate["soak"]["clock"] == "WORKBENCH_SOAK_NOW"  # the run says whose clock it was
