"""The evidence pack of a release that reached prod, on real kernels and a real MLflow store:
`workbench evidence` makes it (signed with the project's attestation key), `evidence verify`
accepts it and names any one file changed, its Annex IV index says what is where and what is
missing, and its pages open offline in Debian's chromium."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, Workspace, local_only
from workbench.reports.evidence import annex

pytestmark = pytest.mark.slow

CARD = {"owners": ["ml-platform@example.org"],
        "intended_use": "Sorting iris flowers in the greenhouse, with a person checking.",
        "limitations": "Trained on 150 flowers of three species only.",
        "risks": "A new species is labelled as one of the three."}


def rewrite(source: Path, target: Path, change: dict[str, bytes | None]) -> None:
    """A copy of the zip with members replaced (bytes) or left out (None)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = change.get(name, old.read(name))
            if data is not None:
                new.writestr(name, data)


@pytest.fixture
def released(gated_project: Workspace, tmp_path: Path) -> tuple[Workspace, str, dict[str, str]]:
    """A run through qa and prod, with a project attestation key and a model card."""
    ws = gated_project
    gates = ws.read_yaml("gates.yaml")
    gates["policies"]["prod"].update({"quorum": 1, "strict": False})
    ws.write_yaml("gates.yaml", gates)
    private = tmp_path / "keys" / "attestation.pem"
    made = ws.cli("attest", "keygen", "--private-key", str(private))
    assert made.returncode == 0, made.stdout + made.stderr
    pipeline = ws.read_yaml("pipeline.yaml")
    pipeline["attestation"] = {"public_key": "keys/attestation.pub"}
    ws.write_yaml("pipeline.yaml", pipeline)
    (ws.root / "configs" / "model_card.yaml").write_text(yaml.safe_dump(CARD))
    signing = {"WORKBENCH_ATTESTATION_KEY": str(private)}
    assert ws.cli("run", env=signing).returncode == 3
    run_id = ws.run_record()["id"]
    qa = ws.cli("promote", run_id, "--to", "qa", "--as", "alice", "--comment", "ok",
                env=signing)
    assert qa.returncode == 0, qa.stdout + qa.stderr
    approved = ws.cli("approve", run_id, "--env", "prod", "--as", "dave", "--comment", "ok")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    finished = ws.cli("resume", run_id, env=signing)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return ws, run_id, signing


def test_a_prod_release_packs_verifies_and_names_a_changed_file(
        released: tuple[Workspace, str, dict[str, str]], tmp_path: Path) -> None:
    ws, run_id, signing = released
    archived = ws.cli("evidence", run_id, env=signing)  # default: prod, into the archive
    assert archived.returncode == 0, archived.stdout + archived.stderr
    assert "signed" in archived.stdout and "not signed" not in archived.stdout
    [kept] = sorted((ws.runs()[-1]).glob("evidence-prod-*.zip"))
    page = (ws.runs()[-1] / "index.html").read_text()
    assert f'href="{kept.name}"' in page  # the run page links the release's pack
    assert ws.cli("audit", "verify").returncode == 0  # the pack is a recorded archive file

    pack = tmp_path / "pack.zip"
    made = ws.cli("evidence", run_id, "--env", "prod", "--output", str(pack), env=signing)
    assert made.returncode == 0, made.stdout + made.stderr
    checked = ws.cli("evidence", "verify", str(pack))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "verified" in checked.stdout and "manifest signed by key" in checked.stderr

    with zipfile.ZipFile(pack) as z:
        names = set(z.namelist())
        card = json.loads(z.read("model-card.json"))
        rows = json.loads(z.read("index.json"))["items"]
        approval = next(n for n in names if "/approvals/" in n)
        manifest = json.loads(z.read("manifest.json"))
    for expected in ("index.html", "model-card.html", "annex-iv.html", "ledger/segment.jsonl",
                     "ledger/anchor.json", "environment.json", "keys/attestation.pub",
                     "manifest.dsse.json", f"archive/runs/{run_id}/run.json",
                     f"archive/runs/{run_id}/build.html", f"archive/runs/{run_id}/build.ipynb",
                     f"archive/runs/{run_id}/approve_prod.html", "archive/static/embed.js"):
        assert expected in names, expected
    assert any(n.startswith(f"archive/runs/{run_id}/attestation-") for n in names)
    facts = card["facts"]
    assert facts["version"] == "1" and facts["metrics"]["accuracy"] > 0.9
    assert [(a["environment"], a["approver"]["name"]) for a in facts["approvals"]] == [
        ("qa", "alice"), ("prod", "dave")]
    assert [(e["event"], e["alias"], e["to_version"]) for e in facts["deployments"]
            if e["event"] == "alias_move"][-2:] == [("alias_move", "qa", "1"),
                                                    ("alias_move", "prod", "1")]
    assert card["card"]["intended_use"] == CARD["intended_use"]

    # the index: every item, present where the pack has it, missing where it has not
    by_ref = {(r["framework"], r["ref"]): r for r in rows}
    assert len(rows) == len(annex.ITEMS)
    intended = by_ref[(annex.ANNEX_IV, "1(a)")]
    assert intended["state"] == "present"
    assert "model card: intended_use" in intended["where"]
    assert by_ref[(annex.ANNEX_IV, "8")]["state"] == "missing"
    assert by_ref[(annex.ANNEX_IV, "8")]["missing"] == [
        "configs/model_card.yaml: declaration_of_conformity"]
    logging = by_ref[(annex.ANNEX_IV, "Art. 12")]
    assert logging["state"] == "present" and "ledger/segment.jsonl" in logging["where"]

    # any one file changed: named
    changed = tmp_path / "changed.zip"
    with zipfile.ZipFile(pack) as z:
        html = z.read("model-card.html")
    rewrite(pack, changed, {"model-card.html": html.replace(b"Model card", b"Model cards")})
    refused = ws.cli("evidence", "verify", str(changed))
    assert refused.returncode == 1
    assert "FAIL model-card.html: changed since the pack was made" in refused.stderr
    # an approval edited, the manifest made to match and its signature dropped: the ledger
    # segment still names it
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(pack) as z:
        record = z.read(approval).replace(b'"ok"', b'"fine by me"')
    files = {**manifest["files"], approval: hashlib.sha256(record).hexdigest()}
    rewrite(pack, forged, {approval: record, "manifest.dsse.json": None,
                           "manifest.json": json.dumps({**manifest, "files": files}).encode()})
    named = ws.cli("evidence", "verify", str(forged))
    assert named.returncode == 1
    assert f"FAIL {approval}: not the file the ledger recorded" in named.stderr
    assert "the pack is not signed" in named.stderr
    # an anchor published before the release is in the segment; a made-up one is not
    anchor = tmp_path / "anchor.json"
    anchor.write_text(json.dumps({"seq": 10 ** 6, "hash": "0" * 64}))
    unknown = ws.cli("evidence", "verify", str(pack), "--anchor", str(anchor))
    assert unknown.returncode == 1 and "--anchor: seq 1000000" in unknown.stderr

    _open_offline(pack, tmp_path / "opened", run_id)


def _open_offline(pack: Path, folder: Path, run_id: str) -> None:
    """The pack's pages in chromium from disk, nothing fetched from anywhere else."""
    from playwright.sync_api import expect, sync_playwright

    with zipfile.ZipFile(pack) as z:
        z.extractall(folder)
    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 900})
            context.route("**/*", local_only(outside, hosts=()))
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto((folder / "index.html").as_uri(), wait_until="load")
            expect(page.locator("h1")).to_contain_text("Evidence pack: mini v1 to prod")
            page.screenshot(path=str(folder / "index.png"), full_page=True)
            page.get_by_role("link", name="Model card").first.click()
            expect(page.locator("h1")).to_have_text("Model card: mini v1")
            expect(page.locator("#intended_use + p")).to_have_text(CARD["intended_use"])
            page.screenshot(path=str(folder / "model-card.png"), full_page=True)
            page.get_by_role("link", name="Annex IV / SR 11-7 index").click()
            expect(page.locator("#index tr.item")).to_have_count(len(annex.ITEMS))
            page.screenshot(path=str(folder / "annex-iv.png"), full_page=True)
            page.goto((folder / "archive" / "runs" / run_id / "build.html").as_uri(),
                      wait_until="load")
            expect(page.locator(".wb-run-header")).to_contain_text(run_id)
            context.close()
        finally:
            browser.close()
    assert outside == []
    for shot in ("index.png", "model-card.png", "annex-iv.png"):
        assert (folder / shot).stat().st_size > 10_000, shot
