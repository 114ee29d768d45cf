"""The report site's environment history shows each canary rollout: its steps (weight, start
and end, verdict or the manual decision, each version's requests, error rate and p95) and an
inline SVG plot of p95 latency and error rate per version over the steps; built from the
archive's ``canary_step`` ledger entries, reading only what was appended since the last
build."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from workbench.audit import ledger
from workbench.project import Project
from workbench.reports import site

ACTOR = {"name": "deployer", "source": "os", "os_user": "deployer"}
VOID = {"br", "meta", "input", "img", "link", "hr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: str = ""

    def all(self, tag: str, **attrs: str) -> list[Node]:
        found = []
        for child in self.children:
            if child.tag == tag and all(attrs[k] in child.attrs.get(k.rstrip("_"), "").split()
                                        or child.attrs.get(k.rstrip("_")) == attrs[k]
                                        for k in attrs):
                found.append(child)
            found += child.all(tag, **attrs)
        return found

    def words(self) -> str:
        return " ".join((self.text + " " + " ".join(c.words() for c in self.children)).split())


class Tree(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Node("root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        while len(self.stack) > 1:
            if self.stack.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        self.stack[-1].text += data


def page(project: Project) -> Node:
    tree = Tree()
    tree.feed((project.reports / "environments.html").read_text(encoding="utf-8"))
    return tree.root


def traffic(requests: int, errors: int, p95: float | None) -> dict[str, Any]:
    return {"requests": requests, "errors": errors,
            "error_rate": errors / requests if requests else 0.0, "p50_ms": None,
            "p95_ms": p95, "p99_ms": None}


def step(reports: Path, number: int, weight: float, candidate: dict[str, Any],
         serving: dict[str, Any], *, version: str = "3", rollout: str | None = "3-r1",
         verdict: str = "pass", decision: dict[str, Any] | None = None,
         breaches: list[str] | None = None, trigger: str | None = None,
         environment: str = "prod") -> None:
    data: dict[str, Any] = {
        "environment": environment, "model": "canaried", "version": version,
        "serving_version": "2", "step": number, "weight": weight, "seconds": 30.0,
        "share": weight, "verdict": verdict, "breaches": breaches or [],
        "candidate": candidate, "serving": serving,
        "time": f"2026-03-01T10:0{number}:30.000+00:00"}
    if rollout is not None:  # steps recorded before manual control had none of these
        data.update({"rollout": rollout, "started": f"2026-03-01T10:0{number}:00.000+00:00",
                     "trigger": trigger or "canary", "decision": decision})
    ledger.append(reports, "canary_step", actor=ACTOR, run_id=None, data=data)


def test_canary_steps_table_and_plot(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    reports = project.reports
    # an older rollout, recorded before steps had a rollout id or a start time: aborted
    step(reports, 1, 10, traffic(40, 6, 310.0), traffic(360, 0, 20.0), version="2b",
         rollout=None, verdict="abort", breaches=["error rate 0.1500 > max_error_rate 0"])
    ledger.append(reports, "stage_executed", actor=ACTOR, run_id="r1", data={"stage": "x"})
    # a rollout held at a manual step 2, promoted by alice, then completed
    step(reports, 1, 10, traffic(50, 0, 40.0), traffic(450, 0, 20.0))
    step(reports, 2, 50, traffic(250, 1, 45.0), traffic(250, 0, 22.0),
         decision={"effect": "promote", "by": ["alice"], "decisions": [1]})
    step(reports, 3, 100, traffic(500, 0, 48.0), traffic(0, 0, None))
    site.build_environments(project)

    root = page(project)
    sections = root.all("section", class_="canary")
    assert [s.attrs["data-rollout"] for s in sections] == ["3-r1", "canaried:2b:2"]  # newest first
    newest, older = sections
    assert "canaried v3 beside v2: 3 step(s) passed" in newest.all("h3")[0].words()
    assert "aborted at step 1 (10%, canary): error rate 0.1500 > max_error_rate 0" in \
        older.all("h3")[0].words()

    [table] = newest.all("table", class_="canary-steps")
    header = [th.words() for th in table.all("th")]
    assert header == ["step", "weight", "started", "ended", "verdict", "share", "v3 requests",
                      "error rate", "p95 ms", "v2 requests", "error rate", "p95 ms"]
    rows = [[td.words() for td in tr.all("td")] for tr in table.all("tbody")[0].all("tr")]
    assert rows == [
        ["1", "10%", "2026-03-01T10:01:00", "2026-03-01T10:01:30", "pass", "10.0%",
         "50", "0.0000", "40.0", "450", "0.0000", "20.0"],
        ["2", "50%", "2026-03-01T10:02:00", "2026-03-01T10:02:30",
         "pass (promote by alice)", "50.0%", "250", "0.0040", "45.0", "250", "0.0000", "22.0"],
        ["3", "100%", "2026-03-01T10:03:00", "2026-03-01T10:03:30", "pass", "100.0%",
         "500", "0.0000", "48.0", "0", "-", "-"]]
    # the older step's start is its end less its seconds
    [old_row] = older.all("table", class_="canary-steps")[0].all("tbody")[0].all("tr")
    cells = [td.words() for td in old_row.all("td")]
    assert cells[2:5] == ["2026-03-01T10:01:00", "2026-03-01T10:01:30",
                          "abort error rate 0.1500 > max_error_rate 0"]

    # the plot: p95 and error rate, a line per version, a point per step it had traffic in
    figures = newest.all("figure", class_="canary-plot")
    assert [f.attrs["data-metric"] for f in figures] == ["p95_ms", "error_rate"]
    p95, errors = figures
    assert "p95 latency (ms)" in p95.words() and "error rate (%)" in errors.words()
    assert [t.words() for t in p95.all("text")] == ["48.0", "0", "10%", "50%", "100%"]
    candidate = p95.all("g", class_="line-candidate")[0]
    serving = p95.all("g", class_="line-serving")[0]
    assert (candidate.attrs["data-version"], serving.attrs["data-version"]) == ("3", "2")
    assert len(candidate.all("circle")) == 3 and len(serving.all("circle")) == 2  # 100 %: none
    ys = [float(c.attrs["cy"]) for c in candidate.all("circle")]
    assert ys[0] > ys[1] > ys[2]  # 40 < 45 < 48 ms: higher up the plot (SVG y grows down)
    assert float(candidate.all("circle")[2].attrs["cy"]) == site.PLOT_PAD  # the top value
    points = candidate.all("polyline")[0].attrs["points"].split()
    assert len(points) == 3 and points[0].startswith(f"{site.PLOT_PAD}.0,")
    titles = [c.all("title")[0].words() for c in candidate.all("circle")]
    assert titles[1] == "v3 (candidate) step 2 (50%): 45.0 ms"
    error_titles = [c.all("title")[0].words() for c in
                    errors.all("g", class_="line-candidate")[0].all("circle")]
    assert error_titles[1] == "v3 (candidate) step 2 (50%): 0.40 %"
    # a single step: one point, no line
    single = older.all("figure", class_="canary-plot")[0]
    assert single.all("polyline") == [] and len(single.all("circle")) == 2


def test_later_builds_read_only_new_entries_and_survive_a_replaced_ledger(
        tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    reports = project.reports
    step(reports, 1, 25, traffic(30, 0, 10.0), traffic(90, 0, 9.0), rollout="5-a",
         version="5")
    assert [len(r["steps"]) for r in site.canary_history(project)["prod"]] == [1]
    view = json.loads((reports / ".site" / site.CANARY_VIEW).read_text())
    assert view["offset"] == ledger.ledger_path(reports).stat().st_size

    step(reports, 2, 100, traffic(120, 0, 11.0), traffic(0, 0, None), rollout="5-a",
         version="5")
    step(reports, 1, 10, traffic(30, 0, 10.0), traffic(90, 0, 9.0), rollout="q-1",
         version="9", environment="qa")
    history = site.canary_history(project)
    assert [(r["rollout"], len(r["steps"])) for r in history["prod"]] == [("5-a", 2)]
    assert [r["version"] for r in history["qa"]] == ["9"]
    lines = (reports / ".site" / site.CANARY_STEPS / "prod.jsonl").read_text().splitlines()
    assert len(lines) == 2  # each entry once: the second build read only what was appended

    # a ledger replaced by another one: the view is read again from its start
    ledger.ledger_path(reports).unlink()
    step(reports, 1, 50, traffic(60, 0, 12.0), traffic(60, 0, 9.0), rollout="7-z",
         version="7")
    history = site.canary_history(project)
    assert [r["rollout"] for r in history["prod"]] == ["7-z"] and "qa" not in history
