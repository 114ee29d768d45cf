"""End to end in a real browser: approve a gate with the form of ``approve.ipynb`` in JupyterLab.

``workbench run`` stops at the qa gate; ``workbench lab`` serves the project; Debian's chromium
(driven by Playwright) opens the approval notebook, runs it, fills in the form and clicks
Approve; the decision lands on disk as an approval record, the notebook saves its widget state,
and ``workbench resume`` then releases to qa and stops at the prod gate.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    Workspace,
    clean_environment,
    free_port,
    wait_until,
)

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
COMMENT = "metrics look fine; checked in JupyterLab"

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.2,
             log: Path | None = None) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` (and the tail of
    JupyterLab's ``log``) after ``timeout``."""
    return wait_until(what, probe, timeout, every, detail=(
        lambda: f"\n--- JupyterLab log ---\n{log.read_text()[-4000:]}") if log else None)


@dataclass
class Lab:
    url: str
    token: str
    log: Path
    process: subprocess.Popen[bytes]

    def api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None


def _status(lab: Lab) -> bool:
    if lab.process.poll() is not None:
        pytest.fail(f"JupyterLab exited with {lab.process.returncode}:\n"
                    f"{lab.log.read_text()[-4000:]}")
    try:
        return bool(lab.api("/api/status"))
    except OSError:  # not listening yet (URLError, ConnectionError, timeouts)
        return False


def _stop(lab: Lab) -> None:
    """Shut the kernels down through the API (each runs in a session of its own, outside the
    server's process group), then end the server's process group, which we started."""
    if lab.process.poll() is not None:
        return
    with suppress(OSError, ValueError):  # URLError is an OSError
        for kernel in lab.api("/api/kernels"):
            lab.api(f"/api/kernels/{kernel['id']}", method="DELETE")
    os.killpg(lab.process.pid, signal.SIGTERM)
    try:
        lab.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(lab.process.pid, signal.SIGKILL)
        lab.process.wait(timeout=10)


@contextmanager
def jupyterlab(ws: Workspace, home: Path) -> Iterator[Lab]:
    """``workbench lab`` on a free port, with Jupyter's own folders isolated below ``home``."""
    folders = {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
               "JUPYTER_RUNTIME_DIR": "runtime", "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
               "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces", "IPYTHONDIR": "ipython"}
    env = clean_environment()
    for variable, name in folders.items():
        (home / name).mkdir(parents=True)
        env[variable] = str(home / name)
    # No news or update checks: they would pop notifications (and try the network).
    notification = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = free_port(), secrets.token_hex(16)
    extra = [f"--IdentityProvider.token={token}"]
    if os.geteuid() == 0:  # CI containers; Jupyter refuses root without it
        extra.append("--allow-root")
    log = home / "jupyterlab.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "workbench", "--project", str(ws.root), "lab",
             "--port", str(port), "--no-browser", "--", *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ws.root,
            start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token, log, process)
    try:
        wait_for("JupyterLab to answer /api/status", lambda: _status(lab), 90, log=log)
        yield lab
    finally:
        _stop(lab)


def _new_records(folder: Path, before: set[str]) -> list[dict[str, Any]]:
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))
            if p.name not in before]


def _saved_widget_state(path: Path) -> dict[str, Any] | None:
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError):  # mid-write
        return None
    return nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE)


@pytest.mark.slow
def test_approve_in_jupyterlab(gated_project: Workspace, tmp_path: Path) -> None:
    assert CHROMIUM.exists(), (f"{CHROMIUM} is missing: install Debian's chromium "
                               "(apt-get install chromium) to run the JupyterLab test")
    from playwright.sync_api import expect, sync_playwright

    ws = gated_project
    # What `workbench lab` reads to save widget state with notebooks (the fixture lacks it).
    shutil.copytree(REPO / "configs" / "jupyterlab", ws.root / "configs" / "jupyterlab")

    started = ws.cli("run")
    assert started.returncode == 3, started.stdout + started.stderr
    run_dir = ws.runs()[-1]
    run_id = run_dir.name
    approvals_dir = run_dir / "approvals"
    before = {p.name for p in approvals_dir.glob("*.json")} if approvals_dir.is_dir() else set()
    assert not before, "a fresh run has no decisions yet"
    latest = ws.cli("approvals", "latest", "--json")
    assert latest.returncode == 0, latest.stdout + latest.stderr
    digest = json.loads(latest.stdout)["gates"]["qa"]["bundle_digest"]
    saved = ws.root / "notebooks" / "approve.ipynb"
    assert _saved_widget_state(saved) is None

    with jupyterlab(ws, tmp_path / "jupyter") as lab, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(f"{lab.url}/lab/tree/notebooks/approve.ipynb?token={lab.token}")
            notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
            expect(notebook.locator(".jp-Cell").first).to_be_visible(timeout=90_000)
            # The status bar names the kernel and its state: "No Kernel | Initializing", then
            # "Python 3 (ipykernel) | Connecting", "... | Unknown", and "Idle" only once the
            # kernel itself has reported. (The toolbar's execution indicator starts at "idle"
            # before there is any kernel: running cells then opens a "Select Kernel" dialog.)
            kernel = page.locator("#jp-main-statusbar").get_by_role(
                "button", name=re.compile(r"^Python 3.*\| Idle$"))
            expect(kernel).to_be_visible(timeout=90_000)

            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

            approver = notebook.get_by_label("Approver", exact=True)
            expect(approver).to_be_editable(timeout=120_000)
            status = notebook.locator(".widget-html-content")
            expect(status).to_have_text("awaiting: 1 more approval(s) needed")
            # The form's cell is still running (awaiting the click), and so is the summary's.
            expect(notebook.locator(".jp-InputPrompt", has_text="[*]")).to_have_count(2)
            approver.fill("alice")
            notebook.get_by_label("Comment", exact=True).fill(COMMENT)
            # (not get_by_role: the Font Awesome icon is part of the button's accessible name)
            notebook.locator("button.widget-button", has_text=re.compile(r"^\s*Approve\s*$")
                             ).click()

            records = wait_for("the approval record",
                               lambda: _new_records(approvals_dir, before), 60)
            expect(status).to_have_text("recorded #1: approve by alice; gate is approved")
            expect(approver).to_be_disabled()
            expect(notebook.locator(".jp-RenderedMarkdown h2",
                                    has_text="Approved: qa")).to_be_visible(timeout=60_000)
            expect(notebook.locator(".jp-InputPrompt", has_text="[*]")).to_have_count(0)

            page.keyboard.press("Control+s")
            saved_state = wait_for("the widget state saved into notebooks/approve.ipynb",
                                   lambda: _saved_widget_state(saved), 60)
        except Exception:
            shot = tmp_path / "lab-failure.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}\nJupyterLab log: {lab.log}")
            raise
        finally:
            browser.close()

    assert len(records) == 1, records
    record = records[0]
    assert record["decision"] == "approve"
    assert record["accepted"] is True, record.get("refused")
    assert record["approver"]["name"] == "alice"
    assert record["approver"]["source"] == "typed"
    assert record["via"] == "notebook"
    assert record["environment"] == "qa"
    assert record["run_id"] == run_id
    assert record["comment"] == COMMENT
    assert record["bundle_digest"] == digest

    # saveState (configs/jupyterlab/overrides.json, passed on by `workbench lab`) stored the
    # form with the notebook: the models, the values typed, and the view the output points at.
    models = saved_state["state"]
    kinds = {m["model_name"] for m in models.values()}
    assert {"TextModel", "TextareaModel", "ButtonModel", "HTMLModel", "VBoxModel"} <= kinds
    values = {m["state"].get("description"): m["state"].get("value") for m in models.values()
              if m["model_name"] in ("TextModel", "TextareaModel")}
    assert values["Approver"] == "alice" and values["Comment"] == COMMENT
    assert not values["SSH key"]  # not signed: the policy does not ask for it
    views = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
             for c in json.loads(saved.read_text())["cells"] for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1 and views[0] in models, views

    resumed = ws.cli("resume", "latest")
    assert resumed.returncode == 3, resumed.stdout + resumed.stderr
    record = ws.run_record()
    stages = record["stages"]
    assert stages["approve_qa"]["status"] == "succeeded"
    assert stages["approve_qa"]["outputs"] == {"decision": "approved", "approvers": ["alice"],
                                               "bundle_digest": digest}
    assert stages["release_qa"]["status"] == "succeeded"
    assert stages["approve_prod"]["status"] == "awaiting_approval"
    moves = [json.loads(p.read_text()) for p in sorted((run_dir / "promotions").glob("*.json"))
             if p.name >= "0002.json"]
    to_qa = [m for m in moves if m["alias"] == "qa"]
    assert len(to_qa) == 1, moves
    assert to_qa[0]["to_version"] == record["model_version"]["version"]
    assert to_qa[0]["bundle_digest"] == digest
    assert to_qa[0]["approvals"] == [1]
