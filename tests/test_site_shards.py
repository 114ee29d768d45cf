"""The report site's sharded run index: one run added rewrites one shard; the first page stays
small; every run is still a search (or a page) away, from disk and from the server."""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.test_report_site import inline_data, make_record, parse
from workbench import run_record
from workbench.project import Project
from workbench.reports import run_index, server, site


def run_ids(count: int, start: int = 0) -> list[str]:
    """Ids like the engine's, one per day of 2026 (so shards follow time)."""
    return [f"2026{1 + (day // 28) % 12:02d}{1 + day % 28:02d}T080000Z-{day:06x}"
            for day in range(start, start + count)]


def archive(project: Project, ids: list[str]) -> None:
    for index, run_id in enumerate(ids):
        run_record.save(project, make_record(run_id, qa=["bob"], prod=["carol", "dave"],
                                             version=str(index + 1), note=f"n{index}"))


def indexed(project: Project) -> dict[int, list[str]]:
    manifest = run_index.read_manifest(project)
    return {s.number: sorted(run_index.read_shard(project, s.number)) for s in manifest.shards}


@pytest.fixture
def small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_index, "SHARD_SIZE", 3)
    monkeypatch.setattr(site, "FIRST_PAGE", 4)


def test_shards_fill_in_order_and_the_first_page_is_the_newest(
        tmp_path: Path, small_shards: None) -> None:
    project = Project(tmp_path / "p")
    ids = run_ids(8)
    archive(project, ids)
    first = site.build_index(project)
    assert [r["id"] for r in first] == ids[::-1][:4]
    assert indexed(project) == {1: ids[0:3], 2: ids[3:6], 3: ids[6:8]}
    manifest = run_index.read_manifest(project)
    assert manifest.total == 8 and [(s.first, s.last) for s in manifest.shards] == [
        (ids[0], ids[2]), (ids[3], ids[5]), (ids[6], ids[7])]

    index = parse(project.reports / "index.html")
    assert index.row_ids["runs"] == ids[::-1][:4]
    assert [r["id"] for r in inline_data(index)] == ids[::-1][:4]
    html = (project.reports / "index.html").read_text(encoding="utf-8")
    assert "8 runs, the newest 4 here" in html and "search all 8 runs" in html
    for number, members in indexed(project).items():
        page = project.reports / "shards" / f"runs-{number:05d}.html"
        assert parse(page).row_ids["runs"] == members[::-1], page
        assert f'href="../runs/{members[0]}/index.html"' in page.read_text(encoding="utf-8")
        script = (project.reports / "shards" / f"runs-{number:05d}.js").read_text()
        assert script.startswith(f"workbenchRuns({number},")
        rows = json.loads(script[script.index(",") + 1:script.rindex(")")])
        assert [r["id"] for r in rows] == members[::-1]
        assert "parameters" not in rows[0]
        compared = (project.reports / "shards" / f"compare-{number:05d}.js").read_text()
        payload = json.loads(compared[compared.index(",") + 1:compared.rindex(")")])
        assert payload[0]["parameters"]["build"]["note"].startswith("n")


def test_one_new_run_rewrites_one_shard(tmp_path: Path, small_shards: None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    project = Project(tmp_path / "p")
    ids = run_ids(9)
    archive(project, ids[:7])
    site.build_index(project)
    written: list[str] = []
    real_write = run_index.write_text
    monkeypatch.setattr(run_index, "write_text",
                        lambda path, text: (written.append(path.name), real_write(path, text)))
    loaded: list[str] = []
    real_load = run_record.load
    monkeypatch.setattr(run_record, "load",
                        lambda p, r: (loaded.append(r), real_load(p, r))[1])

    archive(project, [ids[7]])
    site.build_index(project, [ids[7]])
    assert loaded == [ids[7]]
    assert sorted(written) == ["compare-00003.js", "manifest.json", "runs-00003.js",
                               "shard-00003.json"]
    assert indexed(project)[3] == [ids[6], ids[7]]
    assert parse(project.reports / "index.html").row_ids["runs"][0] == ids[7]

    # An old run rewritten (a resume, an approval): its own shard, nothing else.
    written.clear()
    loaded.clear()
    record = real_load(project, ids[1])
    record.status = "failed"
    run_record.save(project, record)
    site.build_index(project, [ids[1]])
    assert loaded == [ids[1]]
    assert "shard-00001.json" in written and "shard-00003.json" not in written
    assert run_index.read_shard(project, 1)[ids[1]]["summary"]["status"] == "failed"

    # Unchanged: nothing is read or written (the pages themselves are re-rendered).
    written.clear()
    loaded.clear()
    site.build_index(project, [ids[7]])
    assert loaded == [] and written == []

    # A full build finds a run written without an event, and drops a vanished one.
    archive(project, [ids[8]])
    gone = run_record.run_dir(project, ids[0])
    (gone / run_record.RUN_FILE).unlink()
    site.build_index(project)
    shards = indexed(project)
    assert ids[0] not in shards[1] and ids[8] in shards[3]
    assert run_index.read_manifest(project).total == 8


def test_a_run_older_than_every_shard_widens_the_first(tmp_path: Path,
                                                      small_shards: None) -> None:
    project = Project(tmp_path / "p")
    ids = run_ids(5, start=10)
    archive(project, ids)
    site.build_index(project)
    early = run_ids(1)[0]
    archive(project, [early])
    site.build_index(project, [early])
    assert indexed(project)[1] == sorted([early, *ids[:3]])
    assert run_index.read_manifest(project).shards[0].first == early


def _index_one(root: str, run_id: str) -> None:
    project = Project(Path(root))
    site.build_index(project, [run_id])


def test_concurrent_updates_lose_no_run(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    ids = run_ids(8)
    archive(project, ids)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_index_one, args=(str(project.root), run_id))
               for run_id in ids]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert sorted(run_id for members in indexed(project).values() for run_id in members) \
        == sorted(ids)


def test_a_hostile_field_stays_data_in_the_shard_scripts(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    run_id = run_ids(1)[0]
    run_record.save(project, make_record(run_id, "failed", version=None,
                                         note="</script><script>alert(1)</script>"))
    site.build_index(project)
    for name in ("runs-00001.js", "compare-00001.js"):
        text = (project.reports / "shards" / name).read_text(encoding="utf-8")
        assert "<" not in text and ">" not in text, name


def test_first_page_stays_small_at_scale(tmp_path: Path) -> None:
    """2,000 runs: the first page carries FIRST_PAGE rows, whatever the archive's size."""
    project = Project(tmp_path / "p")
    ids = run_ids(2000)
    template = make_record(ids[0], qa=["bob"], prod=["carol", "dave"]).model_dump(mode="json")
    for run_id in ids:
        path = run_record.run_dir(project, run_id) / run_record.RUN_FILE
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({**template, "id": run_id}), encoding="utf-8")
    first = site.build_index(project)
    assert len(first) == site.FIRST_PAGE
    assert len(inline_data(parse(project.reports / "index.html"))) == site.FIRST_PAGE
    assert run_index.read_manifest(project).total == 2000
    assert len(indexed(project)) == 2000 // run_index.SHARD_SIZE


# --- in a real browser: from disk and from the server ----------------------------------------

@pytest.fixture
def browser_site(tmp_path: Path, small_shards: None) -> Iterator[tuple[Project, list[str]]]:
    project = Project(tmp_path / "p")
    ids = run_ids(8)
    archive(project, ids)
    site.build(project)
    yield project, ids


def test_search_every_run_and_page_through_in_chromium(
        browser_site: tuple[Project, list[str]]) -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install chromium)"
    from playwright.sync_api import expect, sync_playwright

    project, ids = browser_site
    httpd = server.make_server(project.reports)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    bases = {"disk": project.reports.resolve().as_uri(),
             "server": f"http://127.0.0.1:{httpd.server_address[1]}"}
    errors: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=CHROMIUM_ARGS)
            try:
                for where, base in bases.items():
                    page = browser.new_page()
                    page.set_default_timeout(20_000)
                    page.on("pageerror", lambda exc, w=where: errors.append(f"{w}: {exc}"))
                    page.goto(f"{base}/index.html")
                    rows = page.locator("#runs tbody tr")
                    expect(rows).to_have_count(4)
                    # The oldest run is on no inline page: found once every shard is loaded.
                    page.locator("#filter").fill(ids[0])
                    expect(rows).to_have_count(0)
                    page.locator("#everywhere").check()
                    expect(rows).to_have_count(1)
                    expect(rows.first).to_have_attribute("data-id", ids[0])
                    page.locator("#filter").fill("")
                    expect(rows).to_have_count(8)
                    page.locator('#runs th[data-key="id"]').click()
                    assert page.eval_on_selector_all(
                        "#runs tbody tr", "rows => rows.map(r => r.dataset.id)") == ids
                    # The oldest page, by its link; its run link resolves.
                    page.locator("#pages summary").click()
                    page.locator('#pages a[href$="runs-00001.html"]').click()
                    page.wait_for_url("**/shards/runs-00001.html")
                    expect(rows).to_have_count(3)
                    page.locator(f'a[href="../runs/{ids[1]}/index.html"]').click()
                    page.wait_for_url(f"**/runs/{ids[1]}/index.html")
                    expect(page.locator("h1")).to_contain_text(ids[1])
                    # Compare: an old run, from its shard's script.
                    page.goto(f"{base}/compare.html?a={ids[0]}&b={ids[7]}")
                    expect(page.locator("#ha")).to_have_text(ids[0])
                    expect(page.locator("#hb")).to_have_text(ids[7])
                    changed = page.locator("#diff tr.hit td:nth-child(2)")
                    expect(changed).to_contain_text(["build.note"])
                    page.close()
            finally:
                browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    assert errors == []
