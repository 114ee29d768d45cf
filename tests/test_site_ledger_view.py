"""The site's cursor over the ledger: a build parses only the entries appended since the last
one, and shows the same history and run entries as a read of the whole ledger would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from workbench.audit import ledger
from workbench.project import Project
from workbench.reports import ledger_view, site

ACTOR = {"name": "carol", "source": "github"}


def move(reports: Path, run_id: str, alias: str, to: str, was: str | None = None) -> None:
    ledger.append(reports, "alias_move", actor=ACTOR, run_id=run_id,
                  data={"alias": alias, "model": "m", "to_version": to, "from_version": was})


def deploy(reports: Path, run_id: str, environment: str, version: str) -> None:
    ledger.append(reports, "deploy", actor=ACTOR, run_id=run_id,
                  data={"environment": environment, "model": "m", "version": version})


def no_approvals(run_id: str | None, environment: str | None, seqs: list[int]
                 ) -> list[dict[str, Any]]:
    return []


def from_scratch(project: Project) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """History and each run's entry seqs, by a fresh view over the whole ledger."""
    shutil.rmtree(project.reports / ".site", ignore_errors=True)
    history = site.environment_history(project)
    runs = {e["run_id"] for e in ledger.entries(project.reports) if e.get("run_id")}
    return history, {r: [e["seq"] for e in ledger_view.run_entries(project, r)] for r in runs}


def test_incremental_view_matches_a_full_read(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    project = Project(tmp_path / "p")
    reports = project.reports
    move(reports, "r1", "dev", "1")
    deploy(reports, "r1", "dev", "1")
    ledger.append(reports, "stage_executed", actor=None, run_id="r1", data={"stage": "x"})
    history = site.environment_history(project)
    assert [(i["event"], i["version"], i.get("alias_move")) for i in history["dev"]] == [
        ("alias_move", "1", None), ("deploy", "1", 1)]
    assert history["dev"][0]["until"] is None

    # Appends after the cursor: only they are parsed.
    size = ledger.ledger_path(reports).stat().st_size
    move(reports, "r2", "dev", "2", "1")
    deploy(reports, "r2", "qa", "2")  # a deploy with no alias move in qa
    move(reports, "r2", "prod", "2")
    parsed: list[bytes] = []
    real_loads = json.loads

    def counting(text: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(text, bytes) and b'"hash"' in text:  # ledger lines, not history items
            parsed.append(text)
        return real_loads(text, *args, **kwargs)

    monkeypatch.setattr(ledger_view.json, "loads", counting)
    incremental = site.environment_history(project)
    seqs = sorted({real_loads(line)["seq"] for line in parsed})
    assert seqs[0] == 3 and 4 in seqs and 6 in seqs, "the entry at the cursor, then only new"
    monkeypatch.setattr(ledger_view.json, "loads", real_loads)
    assert ledger_view._load(project).offset == ledger.ledger_path(reports).stat().st_size > size
    assert incremental["dev"][0]["until"] == incremental["dev"][2]["time"]
    assert incremental["qa"][0]["alias_move"] is None
    incremental_runs = {r: [e["seq"] for e in ledger_view.run_entries(project, r)]
                        for r in ("r1", "r2")}
    assert incremental_runs == {"r1": [1, 2, 3], "r2": [4, 5, 6]}
    assert (incremental, incremental_runs) == from_scratch(project)


def test_a_replaced_ledger_is_read_again_from_the_start(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    reports = project.reports
    move(reports, "r1", "dev", "1")
    move(reports, "r1", "qa", "1")
    site.environment_history(project)
    assert [e["seq"] for e in ledger_view.run_entries(project, "r1")] == [1, 2]
    # Another ledger in its place (a restored backup, another archive): longer, different.
    ledger.ledger_path(reports).unlink()
    move(reports, "r9", "prod", "7")
    move(reports, "r9", "prod", "8", "7")
    move(reports, "r9", "prod", "9", "8")
    history = site.environment_history(project)
    assert sorted(history) == ["prod"]
    assert [i["version"] for i in history["prod"]] == ["7", "8", "9"]
    assert ledger_view.run_entries(project, "r1") == []
    assert [e["seq"] for e in ledger_view.run_entries(project, "r9")] == [1, 2, 3]


def test_a_torn_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    reports = project.reports
    move(reports, "r1", "dev", "1")
    with ledger.ledger_path(reports).open("ab") as handle:
        handle.write(b'{"seq": 2, "half')
    ledger_view.refresh(project, no_approvals)
    view = ledger_view._load(project)
    assert view.offset == ledger.ledger_path(reports).stat().st_size - len(b'{"seq": 2, "half')
    assert [e["seq"] for e in ledger_view.run_entries(project, "r1")] == [1]


def test_a_run_id_is_never_a_path(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    reports = project.reports
    ledger.append(reports, "stage_executed", actor=None, run_id="../../escape", data={})
    ledger_view.refresh(project, no_approvals)
    assert not (tmp_path / "escape.json").exists()
    assert not list(tmp_path.rglob("escape.json"))
    assert ledger_view.run_entries(project, "../../escape") == []


def test_history_page_shows_the_newest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(site, "HISTORY_PAGE", 3)
    project = Project(tmp_path / "p")
    for version in range(1, 6):
        move(project.reports, f"r{version}", "prod", str(version))
    site.build_environments(project)
    html = (project.reports / "environments.html").read_text(encoding="utf-8")
    assert "the newest 3 entries; 2 older ones are in the ledger" in html
    assert 'data-seq="5"' in html and 'data-seq="2"' not in html


def test_last_lines_across_block_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    lines = [(f'{{"seq":{i},"pad":"' + "x" * (i * 997 % 150_000) + '"}\n').encode()
             for i in range(1, 60)]
    path.write_bytes(b"".join(lines) + b'{"torn')
    for count in (1, 2, 7, 58, 59, 80):
        assert ledger_view._last_lines(path, count) == lines[-count:], count
    assert ledger_view._last_lines(path, None) == lines
    assert ledger_view._last_lines(path, 0) == []
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert ledger_view._last_lines(empty, 5) == []
