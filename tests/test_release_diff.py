"""Approve the diff: a second release's review shows exactly what changed against the version
the environment serves (a hyperparameter, a notebook cell, the metric deltas), on real kernels
and a real MLflow registry, and the approval records the digest of the diff it was shown."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import BUILD_STAGE, Workspace, notebook

pytestmark = pytest.mark.slow

BUILD = BUILD_STAGE.replace("LogisticRegression(max_iter=300)",
                            "LogisticRegression(C=C, max_iter=300)")
assert "C=C" in BUILD
PARAMETERS = 'model_name: str = "mini"\nrun_id: str = ""\nC: float = 1.0'


def write_build(ws: Workspace, extra: str = "") -> None:
    ws.write_notebook("build", notebook(BUILD + extra, parameters=PARAMETERS))


def diff(ws: Workspace, run_id: str) -> dict[str, Any]:
    shown = ws.cli("diff", run_id, "--env", "qa", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return dict(json.loads(shown.stdout))


def test_second_release_review_shows_what_changed(gated_project: Workspace) -> None:
    ws = gated_project
    pipeline = ws.read_yaml("pipeline.yaml")
    pipeline["stages"][0]["parameters"]["C"] = 1.0
    ws.write_yaml("pipeline.yaml", pipeline)
    write_build(ws)
    assert ws.cli("run").returncode == 3
    first = ws.run_record()["id"]
    assert diff(ws, first)["note"] == "nothing serves qa yet: this is its first release"
    assert ws.cli("promote", first, "--to", "qa", "--as", "alice").returncode == 0

    # the second release: a weaker regularisation setting and one more line in a cell
    pipeline["stages"][0]["parameters"]["C"] = 0.01
    ws.write_yaml("pipeline.yaml", pipeline)
    write_build(ws, 'print(f"trained with C={C}")\n')
    assert ws.cli("run").returncode == 3
    second = ws.run_record()["id"]
    found = diff(ws, second)
    assert (found["serving_run"], found["serving_version"]) == (first, "1")
    assert (found["candidate_run"], found["candidate_version"]) == (second, "2")
    assert found["parameters"] == [{"stage": "build", "name": "C", "serving": 1.0,
                                    "candidate": 0.01, "change": "changed"}]
    [changed] = found["notebooks"]
    assert changed["stage"] == "build" and len(changed["cells"]) == 1
    cell = changed["cells"][0]
    assert cell["change"] == "modified" and cell["cell_type"] == "code"
    added = [line for line in cell["diff"].splitlines() if line.startswith("+")
             and not line.startswith("+++")]
    assert added == ['+print(f"trained with C={C}")']
    score = found["metrics"][0]
    assert score["metric"] == "score" and score["direction"] == "maximize"
    assert score["candidate"] < score["serving"] and score["moved"] == "worse"
    assert score["delta"] == pytest.approx(score["candidate"] - score["serving"])
    assert [m["metric"] for m in found["metrics"]] == ["score", "accuracy"]
    assert found["data"] == []

    listing = ws.cli("approvals", second)
    assert "parameter build.C: 1 -> 0.01" in listing.stdout
    assert "metric score:" in listing.stdout and "[maximize: worse]" in listing.stdout
    assert '+print(f"trained with C={C}")' in listing.stdout

    stale = ws.cli("approve", second, "--env", "qa", "--as", "alice", "--diff", "0" * 64)
    assert stale.returncode == 2 and "are no longer the ones shown" in stale.stderr
    approved = ws.cli("approve", second, "--env", "qa", "--as", "alice", "--diff",
                      found["digest"])
    assert approved.returncode == 0, approved.stdout + approved.stderr
    records = json.loads(ws.cli("approvals", second, "--json").stdout)["records"]
    assert records[-1]["diff_digest"] == found["digest"]

    # the gate's archived notebook shows the same changes (it is what the run page links)
    assert ws.cli("resume", second).returncode == 3  # on to the prod gate
    gate = json.loads((ws.runs()[-1] / "approve_qa.ipynb").read_text())
    shown = "".join("".join(o.get("data", {}).get("text/markdown", ""))
                    for c in gate["cells"] for o in c.get("outputs", []))
    assert "### Changes against what qa serves" in shown
    assert "| build | C | 1 | 0.01 |" in shown
    assert f"sha256:{found['digest'][:12]}" in shown
