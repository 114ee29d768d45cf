"""The static report site: built from an archive, served by the real CLI, read in Chromium.

* Fast: a synthetic archive (run records written with ``run_record.save``, journals and ledger
  entries written through the library) is built with :func:`site.build`; the index rows, the
  escaping of hostile text and the summary cache are checked on the files.
* Slow: one real release through both gates (real kernels, real MLflow registry), then
  ``workbench reports serve --token`` as a subprocess and Debian's chromium through Playwright,
  with every request that leaves 127.0.0.1 aborted and recorded.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import (
    BUILD_STAGE,
    CHROMIUM,
    CHROMIUM_ARGS,
    Workspace,
    clean_environment,
    free_port,
    notebook,
)
from workbench import run_record
from workbench.audit import journal, ledger
from workbench.governance import promotion
from workbench.identity import Identity
from workbench.project import Project
from workbench.reports import run_index, site

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
TOKEN = "site-Tok3n_x9"
STAGES = ("build", "approve_qa", "release_qa", "approve_prod", "release_prod")


# --- synthetic archive -----------------------------------------------------------------------

def tiny_png() -> str:
    """A 2x2 grey PNG, base64, written by hand."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\x80\x80\x80" * 2 for _ in range(2))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return base64.b64encode(png).decode()


def gate(environment: str, state_: str, approved_by: list[str], quorum: int) -> dict[str, Any]:
    return {"environment": environment, "gate": f"approve_{environment}", "state": state_,
            "bundle_digest": "b" * 64, "policy_version": "p" * 64, "quorum": quorum,
            "approved_by": approved_by, "approval_seqs": list(range(1, len(approved_by) + 1))}


def make_record(run_id: str, status: str = "succeeded", *, version: str | None = "1",
                qa: list[str] | None = None, prod: list[str] | None = None,
                error: str | None = None, note: str = "") -> run_record.RunRecord:
    """A gated run: build, approve_qa, release_qa, approve_prod, release_prod.

    ``qa``/``prod``: who approved that gate (None: the gate never opened); a gate passes when
    the run succeeded or, for qa, when prod was reached. ``error`` fails the build stage.
    """
    day = datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ")
    stages: dict[str, run_record.StageRecord] = {}
    for index, name in enumerate(STAGES):
        started = (day + timedelta(minutes=index)).isoformat() + "+00:00"
        stages[name] = run_record.StageRecord(
            status="pending", notebook=f"{name}.ipynb", started=started,
            finished=started, duration_s=1.5 + index,
            parameters={"run_id": run_id, "note": note} if name == "build" else {})
    build = stages["build"]
    build.status = "failed" if error else "succeeded"
    build.error = error
    build.outputs = {} if error else {"model_version": version,
                                      "metrics": {"accuracy": 0.9, "score": 0.91}}
    for environment, approvers, names in (("qa", qa, STAGES[1:3]), ("prod", prod, STAGES[3:])):
        if approvers is None:
            continue
        passed = len(approvers) >= (1 if environment == "qa" else 2)
        stages[names[0]].gate = gate(environment, "approved" if passed else "awaiting",
                                     approvers, 1 if environment == "qa" else 2)
        stages[names[0]].status = "succeeded" if passed else "awaiting_approval"
        if passed:
            stages[names[1]].status = "succeeded"
    for entry in stages.values():
        if entry.status == "pending":
            entry.notebook = entry.started = entry.finished = entry.duration_s = None
    return run_record.RunRecord(
        id=run_id, pipeline="gated", environment="dev", status=status,
        created=day.isoformat() + "+00:00", finished=None if status == "awaiting_approval"
        else (day + timedelta(minutes=6)).isoformat() + "+00:00",
        git_commit="c0ffee" * 6 + "abcd", config_hash="f" * 64, config={}, tracking_uri="",
        experiment="gated", stages=stages,
        model_version=run_record.ModelVersion(name="mini", version=version) if version else None,
        requested_by=Identity(name="carol", source="github"))


def write_notebooks(project: Project, record: run_record.RunRecord) -> list[Path]:
    """The executed notebook of every stage that ran; the build one carries a plot."""
    paths = []
    for name, entry in record.stages.items():
        if not entry.notebook:
            continue
        nb = notebook(f"print('{name}')")
        if name == "build":
            nb["cells"][1]["outputs"] = [{"output_type": "display_data", "metadata": {},
                                          "data": {"image/png": tiny_png(),
                                                   "text/plain": "<Figure>"}}]
        path = run_record.run_dir(project, record.id) / entry.notebook
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(nb))
        paths.append(path)
    return paths


def approve(project: Project, run_id: str, environment: str, name: str, comment: str) -> int:
    """An accepted approval in the run's journal and the ledger; returns its seq."""
    folder = run_record.run_dir(project, run_id) / "approvals"
    entry = journal.append(folder, {
        "kind": "approval", "run_id": run_id, "environment": environment,
        "decision": "approve", "accepted": True, "refused": None,
        "approver": {"name": name, "source": "typed", "os_user": None}, "via": "cli",
        "time": "2026-01-01T00:00:00.000+00:00", "comment": comment,
        "bundle_digest": "b" * 64, "evidence": {"build.ipynb": "0" * 64},
        "policy_version": "p" * 64})
    ledger.append(project.reports, "approval", actor={"name": name, "source": "typed"},
                  run_id=run_id, data={"environment": environment, "seq": entry["seq"]},
                  files=[folder / f"{entry['seq']:04d}.json"])
    return entry["seq"]


class Tables(HTMLParser):
    """Cell texts of every ``<table id=...>``'s body rows, the ``data-*`` of each row, and the
    text of every ``<script>`` element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: dict[str, list[list[str]]] = {}
        self.row_ids: dict[str, list[str | None]] = {}
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._table: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None
        self._script: tuple[dict[str, str | None], list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._table = attributes.get("id") or f"table{len(self.rows)}"
            self.rows[self._table], self.row_ids[self._table] = [], []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._table and self._in_body:
            self.rows[self._table].append([])
            self.row_ids[self._table].append(attributes.get("data-id"))
        elif tag == "td" and self._table and self._in_body:
            self._cell = []
        elif tag == "script":
            self._script = (attributes, [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table:
            self.rows[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None
        elif tag == "script" and self._script is not None:
            self.scripts.append((self._script[0], "".join(self._script[1])))
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._script is not None:
            self._script[1].append(data)


def parse(path: Path) -> Tables:
    parser = Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def inline_data(parsed: Tables) -> Any:
    [data] = [text for attrs, text in parsed.scripts if attrs.get("id") == "data"]
    assert "</" not in data, "inline JSON must not be able to close its <script> element"
    return json.loads(data)


OLD, FAILED, WAITING = ("20260101T080000Z-aaaaaa", "20260102T080000Z-bbbbbb",
                        "20260103T080000Z-cccccc")


def synthetic_archive(project: Project) -> None:
    """Three runs: a full release (qa and prod approved), a failed build whose error is hostile
    HTML, and a run waiting at the prod gate whose only prod approver's name is hostile."""
    old = make_record(OLD, qa=["alice"], prod=["dave", "erin"])
    for record in (old, make_record(FAILED, "failed", version=None, error=HOSTILE, note=HOSTILE),
                   make_record(WAITING, "awaiting_approval", version="2", qa=["alice"],
                               prod=[HOSTILE])):
        run_record.save(project, record)
        for path in write_notebooks(project, record):
            ledger.append(project.reports, "stage_executed", actor=None, run_id=record.id,
                          data={"stage": path.stem}, files=[path])
    qa = approve(project, OLD, "qa", "alice", "metrics hold")
    dave = approve(project, OLD, "prod", "dave", HOSTILE)
    erin = approve(project, OLD, "prod", "erin", "load fine")
    actor = Identity(name="carol", source="github")
    for alias, approvals in (("qa", [qa]), ("prod", [dave, erin])):
        promotion.record_move(project, OLD, alias=alias, model="mini", from_version=None,
                              to_version="1", actor=actor, via=f"gate approve_{alias}",
                              approvals=approvals, bundle_digest="b" * 64)


def indexed(project: Project) -> list[str]:
    """Every run id in the site's sharded index."""
    manifest = run_index.read_manifest(project)
    return [run for shard in manifest.shards for run in run_index.read_shard(project, shard.number)]


def test_site_from_a_synthetic_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = Project(tmp_path / "project")
    synthetic_archive(project)
    index = site.build(project)
    reports = project.reports

    # Index: newest first, one row per run, the columns the brief promises.
    parsed = parse(index)
    assert parsed.row_ids["runs"] == [WAITING, FAILED, OLD]
    rows = {run_id: cells for run_id, cells in zip(parsed.row_ids["runs"],
                                                      parsed.rows["runs"], strict=True)}
    assert rows[OLD][:6] == [OLD, "mini", "1", "dev → qa → prod", "succeeded",
                             "alice, dave, erin"]
    assert rows[FAILED][:6] == [FAILED, "", "", "dev", "failed", ""]
    assert rows[WAITING][:6] == [WAITING, "mini", "2", "dev → qa", "awaiting_approval",
                                 f"{HOSTILE}, alice"]
    assert rows[OLD][6:] == ["2026-01-01T08:00:00", "17.5"]  # started; sum of stage times
    data = inline_data(parsed)
    assert [r["id"] for r in data] == [WAITING, FAILED, OLD]
    assert "parameters" not in data[1], "the index does not carry what only compare uses"
    compare = (reports / "compare.html").read_text()
    assert HOSTILE not in compare and "\\u003cscript\\u003e" in compare
    assert data[2]["metrics"] == {"accuracy": 0.9, "score": 0.91}

    # Hostile text is escaped everywhere it shows, and never appears as a tag.
    pages = [index, reports / "environments.html", reports / "compare.html",
             *sorted(reports.glob("runs/*/index.html"))]
    assert len(pages) == 6
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert HOSTILE not in html and "<script>alert" not in html.lower(), page
        parsed_page = parse(page)
        assert all("alert(1)" not in text or attrs.get("type") == "application/json"
                   for attrs, text in parsed_page.scripts), page
    assert ESCAPED in index.read_text(encoding="utf-8")  # the hostile approver's name
    failed_page = reports / "runs" / FAILED / "index.html"
    assert ESCAPED in failed_page.read_text(encoding="utf-8")  # the stage error
    assert parse(failed_page).rows["stages"][0][:2] == ["build", "failed"]
    assert HOSTILE in parse(failed_page).rows["stages"][0][5]

    old_page = parse(reports / "runs" / OLD / "index.html")
    assert [row[:2] for row in old_page.rows["stages"]] == [[s, "succeeded"] for s in STAGES]
    assert "qa gate: approved, 1 of 1 (alice)" in old_page.rows["stages"][1][5]
    assert "prod gate: approved, 2 of 2 (dave, erin)" in old_page.rows["stages"][3][5]
    assert [(row[3], row[4], row[6]) for row in old_page.rows["approvals"]] == [
        ("alice (typed)", "", "metrics hold"), ("dave (typed)", "", HOSTILE),
        ("erin (typed)", "", "load fine")]  # none signed
    verdicts = [row[-1] for row in old_page.rows["ledger"]]
    assert len(verdicts) == 5 + 3 + 2 and set(verdicts) == {"ok"}
    old_html = (reports / "runs" / OLD / "index.html").read_text(encoding="utf-8")
    assert old_html.count('src="data:image/png;base64,') == 1  # the build stage's plot
    assert 'href="build.html"' not in old_html  # not rendered yet: no dead link
    environments = (reports / "environments.html").read_text(encoding="utf-8")
    assert f"dave (typed, 2026-01-01T00:00:00: “{ESCAPED}”" in environments
    history = inline_data(parse(reports / "environments.html"))
    assert [(i["version"], [a["name"] for a in i["approvals"]]) for i in history["prod"]] == [
        ("1", ["dave", "erin"])]

    # A changed archived file shows in the run page's "verifies" column.
    (reports / "runs" / OLD / "release_qa.ipynb").write_text("{}")
    site.build_run_page(project, OLD)
    verdicts = [row[-1] for row in parse(reports / "runs" / OLD / "index.html").rows["ledger"]]
    assert verdicts.count(f"runs/{OLD}/release_qa.ipynb changed") == 1
    assert verdicts.count("ok") == len(verdicts) - 1

    # The summary cache: nothing changed, nothing re-read; one new run, one read.
    assert sorted(indexed(project)) == [OLD, FAILED, WAITING]
    loaded: list[str] = []
    real_load = run_record.load

    def counting_load(project: Project, run_id: str) -> run_record.RunRecord:
        loaded.append(run_id)
        return real_load(project, run_id)

    monkeypatch.setattr(run_record, "load", counting_load)
    assert [r["id"] for r in site.build_index(project)] == [WAITING, FAILED, OLD]
    assert loaded == []
    new = "20260104T080000Z-dddddd"
    run_record.save(project, make_record(new, qa=["bob"], prod=["carol", "erin"], version="3"))
    runs = site.build_index(project)
    assert loaded == [new]
    assert [r["id"] for r in runs] == [new, WAITING, FAILED, OLD]
    assert sorted(indexed(project)) == sorted([new, OLD, FAILED, WAITING])
    assert parse(index).rows["runs"][0][:6] == [new, "mini", "3", "dev → qa → prod",
                                                "succeeded", "bob, carol, erin"]
    # A rewritten record is re-read (and only it); an unreadable one is skipped.
    loaded.clear()
    record = real_load(project, WAITING)
    record.status = "failed"
    run_record.save(project, record)
    broken = project.runs / "20260105T080000Z-eeeeee"
    broken.mkdir()
    (broken / run_record.RUN_FILE).write_text("{not json")
    runs = site.build_index(project)
    assert sorted(loaded) == [WAITING, broken.name]
    assert [(r["id"], r["status"]) for r in runs][:2] == [(new, "succeeded"),
                                                         (WAITING, "failed")]


# --- a real release, the real server, a real browser -------------------------------------------

WIDGET_CELL = """import ipywidgets as widgets

display(widgets.IntSlider(value=7, description="speed"))
"""


def release(ws: Workspace, oidc: Any) -> str:
    """Run the gated pipeline through both gates with the CLI (requested by carol in CI, prod
    approved by dave and erin in CI jobs of their own); return the run id."""
    def cli(*args: str, expect: int, env: dict[str, str] | None = None) -> None:
        done = ws.cli(*args, env=env)
        assert done.returncode == expect, f"{args}: {done.stdout}{done.stderr}"

    cli("run", expect=3, env=oidc.github("carol"))
    run_id = ws.run_record()["id"]
    cli("approve", run_id, "--env", "qa", "--as", "alice", "--comment", "metrics hold", expect=0)
    cli("resume", run_id, expect=3)
    cli("approve", run_id, "--env", "prod", "--comment", f"ok {HOSTILE}", expect=0,
        env=oidc.github("dave"))
    cli("approve", run_id, "--env", "prod", "--comment", "load fine", expect=0,
        env=oidc.github("erin"))
    cli("resume", run_id, expect=0)
    assert ws.run_record()["status"] == "succeeded"
    return run_id


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path,
                  timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"reports serve exited with {process.returncode}: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    pytest.fail(f"reports serve did not listen on {port} within {timeout} s: {log.read_text()}")


@contextlib.contextmanager
def served(ws: Workspace, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``workbench reports serve`` in its own session; stopped by its process group."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "workbench", "--project", str(ws.root), "reports", "serve",
             "--port", str(port), "--token", TOKEN], stdout=out, stderr=subprocess.STDOUT,
            env=clean_environment(), cwd=ws.root, start_new_session=True)
    try:
        wait_for_port(port, process, log)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def get(port: int, target: str, headers: dict[str, str] | None = None
        ) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def ledger_time(ws: Workspace, event: str, alias: str) -> datetime:
    for entry in ledger.entries(ws.root / "reports"):
        if entry["event"] == event and entry["data"].get("alias") == alias:
            return datetime.fromisoformat(entry["time"]).replace(tzinfo=None)
    raise AssertionError(f"no {event} {alias} in the ledger")


def local_input(moment: datetime) -> str:
    """A value for ``<input type=datetime-local step=1>`` (the page reads it as UTC)."""
    return moment.replace(microsecond=0).isoformat()


@pytest.mark.slow
def test_release_site_in_chromium(gated_project: Workspace, tmp_path: Path, oidc: Any
                                  ) -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install chromium)"
    from playwright.sync_api import ConsoleMessage, Route, expect, sync_playwright

    ws = gated_project
    # The build stage also shows a widget, so its page needs the vendored embed script.
    ws.write_notebook("build", notebook(BUILD_STAGE, WIDGET_CELL,
                                        parameters='model_name: str = "mini"\nrun_id: str = ""'))
    run_id = release(ws, oidc)
    project = Project(ws.root)
    # Two archived runs beside the real one, so that filtering and sorting have work to do.
    run_record.save(project, make_record(OLD, qa=["bob"], prod=["carol", "dave"], version="0"))
    run_record.save(project, make_record(FAILED, "failed", version=None, error=HOSTILE))
    built = ws.cli("reports", "build")
    assert built.returncode == 0, built.stdout + built.stderr
    entries = [e for e in ledger.entries(project.reports) if e["run_id"] == run_id]
    qa_moved, prod_moved = ledger_time(ws, "alias_move", "qa"), ledger_time(ws, "alias_move",
                                                                           "prod")
    between = qa_moved + timedelta(seconds=2)
    assert between < prod_moved - timedelta(seconds=1)

    port = free_port()
    log = tmp_path / "serve.log"
    blocked: list[str] = []
    responses: list[tuple[str, int]] = []
    console: list[str] = []
    dialogs: list[str] = []
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def only_local(route: Route) -> None:
        parts = urlsplit(route.request.url)
        if parts.scheme in ("data", "blob") or parts.hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            console.append(f"{message.type}: {message.text} @ {message.location.get('url')}")

    with served(ws, port, log), sync_playwright() as pw:
        base = f"http://127.0.0.1:{port}"
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route("**/*", only_local)
            context.on("response", lambda r: responses.append((r.url, r.status)))
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.on("console", on_console)
            page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

            # The index: the run, its model, version, environments, status and approvers.
            first = page.goto(f"{base}/?token={TOKEN}", wait_until="load")
            assert first is not None and first.status == 200
            rows = page.locator("#runs tbody tr")
            expect(rows).to_have_count(3)
            row = page.locator(f'#runs tbody tr[data-id="{run_id}"]')
            expect(row.locator("td")).to_have_text([
                run_id, "mini", "1", "dev → qa → prod", "succeeded", "alice, dave, erin",
                ws.run_record()["created"][:19], str(site.summarise(
                    run_record.load(project, run_id))["duration_s"])])

            def visible() -> list[str]:
                return page.eval_on_selector_all(
                    "#runs tbody tr", "rows => rows.filter(r => !r.hidden)"
                    ".map(r => r.dataset.id)")

            assert visible() == [run_id, FAILED, OLD]  # newest first

            page.locator("#filter").fill("erin")
            expect(page.locator("#runs tbody tr:not([hidden])")).to_have_count(1)
            assert visible() == [run_id]
            page.locator("#filter").fill("nobody-has-this")
            expect(page.locator("#runs tbody tr:not([hidden])")).to_have_count(0)
            page.locator("#filter").fill("dave")
            expect(page.locator("#runs tbody tr:not([hidden])")).to_have_count(2)
            assert visible() == [run_id, OLD]
            page.locator("#filter").fill("")
            page.locator("#status").select_option("failed")
            expect(page.locator("#runs tbody tr:not([hidden])")).to_have_count(1)
            assert visible() == [FAILED]
            page.locator("#status").select_option("")
            expect(page.locator("#runs tbody tr:not([hidden])")).to_have_count(3)
            # Sorting: first click ascending, second descending; by version numerically.
            page.locator('#runs th[data-key="id"]').click()
            assert visible() == [OLD, FAILED, run_id]
            page.locator('#runs th[data-key="id"]').click()
            assert visible() == [run_id, FAILED, OLD]
            page.locator('#runs th[data-key="status"]').click()
            assert visible()[0] == FAILED and visible()[1:] in ([run_id, OLD], [OLD, run_id])
            page.screenshot(path=str(shots / "index.png"), full_page=True)

            # The run page, reached by its link: the cookie carries the token.
            page.locator(f'#runs a[href="runs/{run_id}/index.html"]').click()
            page.wait_for_url(f"**/runs/{run_id}/index.html")
            expect(page.locator("h1")).to_contain_text(run_id)
            expect(page.locator("h1")).to_contain_text("succeeded")
            stages = page.locator("#stages tbody tr")
            expect(stages).to_have_count(len(STAGES))
            for index, name in enumerate(STAGES):
                expect(stages.nth(index).locator("td").nth(0)).to_have_text(name)
                expect(stages.nth(index).locator("td").nth(1)).to_have_text("succeeded")
                expect(stages.nth(index).locator('a[href$=".html"]')).to_have_count(1)
            notes = stages.locator("td:nth-child(6)")
            expect(notes.nth(1)).to_contain_text("qa gate: approved, 1 of 1 (alice)")
            expect(notes.nth(3)).to_contain_text("prod gate: approved, 2 of 2 (dave, erin)")
            approvals = page.locator("#approvals tbody tr")
            expect(approvals).to_have_count(3)
            expect(approvals.locator("td:nth-child(4)")).to_have_text(
                ["alice (typed)", "dave (github)", "erin (github)"])
            expect(approvals.locator("td:nth-child(5)")).to_have_text(["", "", ""])  # unsigned
            expect(approvals.locator("td:nth-child(6)").first).not_to_be_empty()
            expect(approvals.locator("td:nth-child(7)")).to_have_text(
                ["metrics hold", f"ok {HOSTILE}", "load fine"])  # shown as text, not run
            expect(approvals.locator("td:nth-child(2)")).to_have_text(["qa", "prod", "prod"])
            verdicts = page.locator("#ledger tbody tr td:last-child")
            expect(verdicts).to_have_count(len(entries))
            assert set(verdicts.all_inner_texts()) == {"ok"}
            assert page.locator("#ledger tbody tr td:nth-child(1)").all_inner_texts() == [
                str(e["seq"]) for e in entries]
            page.screenshot(path=str(shots / "run.png"), full_page=True)

            # A stage's rendered notebook, through its link; the widget needs /static/embed.js.
            stages.nth(0).locator('a[href$=".html"]').click()
            page.wait_for_url(f"**/runs/{run_id}/build.html")
            expect(page).to_have_title(f"{run_id} / build")
            expect(page.get_by_text("Created version '1' of model 'mini'")).to_be_visible()
            # Rendered from its saved state by the embed script (the CSP must allow its eval).
            slider = page.locator(".widget-slider")
            expect(slider.locator(".widget-label")).to_have_text("speed")
            expect(slider.locator(".widget-readout")).to_have_text("7")
            expect(page.get_by_text('IntSlider "speed": 7')).to_be_hidden()
            page.screenshot(path=str(shots / "stage-build.png"), full_page=True)
            assert (f"{base}/static/embed.js", 200) in responses

            # Environments: what was where at a time.
            page.goto(f"{base}/environments.html", wait_until="load")
            for environment in ("dev", "qa", "prod"):
                expect(page.locator(f'table[data-env="{environment}"] tbody tr')).to_have_count(
                    1)
            expect(page.locator('table[data-env="prod"]')).to_contain_text("mini v1")
            expect(page.locator('table[data-env="prod"]')).to_contain_text("dave (github")
            page.locator("#at").fill(local_input(between))
            expect(page.locator("#answer")).to_contain_text(f"qa: v1 (run {run_id})")
            expect(page.locator("#answer")).not_to_contain_text("prod")
            page.locator("#at").fill(local_input(prod_moved + timedelta(seconds=2)))
            expect(page.locator("#answer")).to_contain_text(f"prod: v1 (run {run_id})")
            expect(page.locator("#answer")).to_contain_text(f"dev: v1 (run {run_id})")
            expect(page.locator('table[data-env="prod"] tr.hit')).to_have_count(1)
            page.locator("#at").fill(local_input(qa_moved - timedelta(days=1)))
            expect(page.locator("#answer")).to_have_text("nothing deployed then")
            page.locator("#at").fill(local_input(prod_moved + timedelta(seconds=2)))
            page.screenshot(path=str(shots / "environments.png"), full_page=True)

            # Compare: defaults to the two newest runs; the same run twice differs nowhere.
            page.goto(f"{base}/compare.html", wait_until="load")
            expect(page.locator("#ha")).to_have_text(FAILED)
            expect(page.locator("#hb")).to_have_text(run_id)
            expect(page.locator("#diff tbody tr.hit").first).to_be_visible()
            expect(page.locator("#diff tbody")).to_contain_text("build.model_name")
            page.screenshot(path=str(shots / "compare.png"), full_page=True)
            page.locator("#a").select_option(run_id)
            expect(page.locator("#ha")).to_have_text(run_id)
            expect(page.locator("#diff tbody tr.hit")).to_have_count(0)
            expect(page.locator("#diff tbody tr").first).to_be_visible()
            context.close()
        finally:
            browser.close()

        # Without the token: 401 and nothing of the site; the vendored assets stay public.
        for target in ("/", "/index.html", f"/runs/{run_id}/index.html", "/?token=wrong"):
            status, body = get(port, target)
            assert status == 401, target
            assert run_id.encode() not in body
        assert get(port, "/", {"Cookie": "workbench_reports_token=nope"})[0] == 401
        assert get(port, "/", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert get(port, "/static/embed.js")[0] == 200

    assert blocked == [], f"requests outside 127.0.0.1: {blocked}"
    assert dialogs == [], f"a page ran script it was only meant to show: {dialogs}"
    served_log = log.read_text()
    assert TOKEN not in served_log.split("\n", 1)[1], "the token must not reach the request log"
    unexpected = [m for m in console if not expected_console(m)]
    assert unexpected == [], f"console errors: {unexpected}\n(all: {console})"
    statuses = {url: status for url, status in responses}
    assert all(status == 200 for url, status in statuses.items()
               if not url.endswith("/favicon.ico")), statuses
    for name in ("index", "run", "stage-build", "environments", "compare"):
        assert (shots / f"{name}.png").stat().st_size > 0


def expected_console(message: str) -> bool:
    """Console lines a correct site still produces: ajv (inside the vendored widget manager)
    warns about its own widget-state schema in strict mode. Errors are never expected."""
    return message.startswith("warning: strict mode: ") and message.endswith("/static/embed.js")
