"""Offline HTML reports: real nbconvert, a real kernel, Debian's chromium through Playwright.

A notebook is executed for real (nbclient, widget state stored), rendered with the
``workbench`` template into a folder laid out like ``reports/`` and opened from a local HTTP
server on 127.0.0.1, with every request elsewhere aborted and recorded: the page needs none,
the markdown summary shows with and without JavaScript, and the widgets show their final state.
"""

from __future__ import annotations

import base64
import functools
import http.server
import os
import re
import stat
import struct
import threading
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nbformat
import pytest
from nbconvert import HTMLExporter
from nbconvert.preprocessors import ExecutePreprocessor

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, local_only
from workbench.reports import render

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
RUN_ID = "20260101T000000Z-c0ffee"
SUMMARY = "accuracy 0.93 on the holdout set"
PNG_SIZE = (48, 24)


def png(width: int, height: int) -> bytes:
    """A solid teal RGB PNG, written by hand (no imaging library needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + b"\x00\x80\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0,
                                                              0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def build_notebook() -> nbformat.NotebookNode:
    image = base64.b64encode(png(*PNG_SIZE)).decode()
    cells = [
        nbformat.v4.new_markdown_cell("# Evaluation\n\nEnergy check: $E = mc^2$"),
        nbformat.v4.new_code_cell(
            "from IPython.display import Image, Markdown, display\n"
            f"display(Markdown('**Summary**: {SUMMARY}'))\n"
            "Markdown('| metric | value |\\n| --- | --- |\\n| f1 | 0.91 |')"),
        nbformat.v4.new_code_cell(f"display(Image(data=__import__('base64').b64decode('{image}')))"),
        nbformat.v4.new_code_cell(
            "import ipywidgets as widgets\n"
            "speed = widgets.IntSlider(value=3, min=0, max=10, description='speed')\n"
            "note = widgets.HTML(value='<i>pending</i>')\n"
            "approve = widgets.Button(description='Approve', icon='check')\n"
            "display(speed, note, approve)"),
        # The page must show this final state, not the values the widgets were displayed with.
        nbformat.v4.new_code_cell("speed.value = 7\nnote.value = '<b>recorded</b> #1'"),
        nbformat.v4.new_code_cell("snippet = '<script>window.__pwned = 1</script>'\nsnippet"),
    ]
    return nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The notebook, executed with a real kernel; widget state saved in its metadata."""
    folder = tmp_path_factory.mktemp("executed")
    nb = build_notebook()
    ExecutePreprocessor(timeout=120, kernel_name="python3", store_widget_state=True).preprocess(
        nb, {"metadata": {"path": str(folder)}})
    path = folder / "evaluate.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def site(executed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like ``reports/``: ``runs/<run-id>/evaluate.html`` and ``static/``."""
    root = tmp_path_factory.mktemp("reports")
    render.copy_static(root)
    seconds = render.render_notebook(executed, root / "runs" / RUN_ID / "evaluate.html",
                                     static_url="../../static", title="Evaluation report",
                                     run_id=RUN_ID, stage="evaluate")
    assert 0 < seconds < 60
    return root


class Links(HTMLParser):
    """Every src/href attribute, the text of every <style>, and the <script> tags."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.scripts: list[dict[str, str | None]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [(tag, name, value or "") for name, value in attrs
                      if name in ("src", "href", "srcset", "poster", "data", "action")]
        if tag == "script":
            self.scripts.append(dict(attrs))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def links(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    return parser


def external(parsed: Links) -> list[str]:
    """Addresses outside the page's own origin: absolute URLs other than data:, and CSS
    imports or url()s with a host."""
    found = [f"<{tag} {name}={url!r}>" for tag, name, url in parsed.urls
             if (urlsplit(url).scheme not in ("", "data")) or urlsplit(url).netloc]
    for css in parsed.styles:
        found += re.findall(r"@import[^;]*|url\(\s*['\"]?(?:[a-z]+:)?//[^)]*\)", css, re.I)
    return found


def test_page_refers_to_nothing_outside(site: Path, executed: Path) -> None:
    html = (site / "runs" / RUN_ID / "evaluate.html").read_text(encoding="utf-8")
    parsed = links(html)
    assert parsed.urls, "the parser found no src/href at all"
    assert external(parsed) == []
    scripts = [s["src"] for s in parsed.scripts if s.get("src")]
    assert scripts == ["../../static/embed.js"]
    assert (site / "runs" / RUN_ID / scripts[0]).resolve() == (site / "static" / "embed.js")
    assert not re.search(r"require\.js|mathjax|unpkg|jsdelivr|cdnjs", html, re.I)
    assert "<title>Evaluation report</title>" in html
    assert f'<dd class="wb-run-id">{RUN_ID}</dd>' in html
    # Code is escaped (pygments) even though the template skips bleach on it.
    assert "<script>window.__pwned" not in html
    assert "data:image/png;base64," in html
    # The same notebook through nbconvert's stock lab template does load from CDNs: the check
    # above would have caught it.
    stock, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(executed, 4))
    assert any("require.js" in url or "unpkg.com" in url for url in external(links(stock)))


def test_render_writes_atomically_and_reuses_the_exporter(executed: Path, tmp_path: Path) -> None:
    target = tmp_path / "runs" / "r1" / "evaluate.html"
    render.render_notebook(executed, target, static_url="../../static/")
    first = target.stat()
    assert stat.S_IMODE(first.st_mode) == 0o644
    html = target.read_text(encoding="utf-8")
    render.render_notebook(executed, target, static_url="../../static/")
    assert target.stat().st_ino != first.st_ino, "replaced, not rewritten in place"
    assert target.read_text(encoding="utf-8") == html, "same notebook, same page"
    assert sorted(p.name for p in target.parent.iterdir()) == ["evaluate.html"]
    assert 'src="../../static/embed.js"' in html
    assert '<header class="wb-run-header">' not in html, "no run id or stage given"
    assert render.exporter() is render.exporter()
    for absolute in ("https://cdn.example.org/static", "//cdn.example.org/static"):
        with pytest.raises(ValueError, match="relative"):
            render.render_notebook(executed, target, static_url=absolute)


def test_copy_static_copies_once_and_repairs(tmp_path: Path) -> None:
    folder = render.copy_static(tmp_path)
    assert folder == tmp_path / "static"
    names = {p.name for p in folder.iterdir()}
    assert {"embed.js", "embed.js.LICENSE.txt", "LICENSE", "README.md"} <= names
    assert names == {p.name for p in render.STATIC.iterdir()}
    embed = folder / "embed.js"
    inode = embed.stat().st_ino
    render.copy_static(tmp_path)
    assert embed.stat().st_ino == inode, "unchanged files are not copied again"
    embed.write_text("tampered")
    render.copy_static(tmp_path)
    assert embed.read_bytes() == (render.STATIC / "embed.js").read_bytes()
    # The license notice travels with the script.
    assert embed.read_text(encoding="utf-8").startswith(
        "/*! For license information please see embed.js.LICENSE.txt */")


def summary(page: Any) -> Any:
    """The markdown output of the summary (its code cell's source contains the text too)."""
    return page.locator(".jp-OutputArea-output.jp-RenderedMarkdown").get_by_text(SUMMARY)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; remembers the paths asked for instead of logging them."""

    paths: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        self.paths.append(self.path)


@pytest.fixture
def server(site: Path) -> Iterator[tuple[str, list[str]]]:
    paths: list[str] = []
    handler = type("Handler", (QuietHandler,), {"paths": paths})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(handler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", paths
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.mark.slow
def test_page_in_chromium_offline(server: tuple[str, list[str]], site: Path,
                                  tmp_path: Path) -> None:
    assert CHROMIUM.exists(), (f"{CHROMIUM} is missing: install Debian's chromium "
                               "(apt-get install chromium) to run the browser test")
    from playwright.sync_api import expect, sync_playwright

    base, served = server
    url = f"{base}/runs/{RUN_ID}/evaluate.html"
    blocked: list[str] = []
    errors: list[str] = []

    only_local = local_only(blocked)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            # JavaScript on: the embed script renders the widgets' final state.
            context = browser.new_context(viewport={"width": 1200, "height": 900})
            context.route("**/*", only_local)
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("response", lambda response: errors.append(
                f"{response.status} {response.url}") if response.status >= 400 else None)
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
                    else None)
            page.goto(url, wait_until="load")
            expect(summary(page)).to_be_visible()
            expect(page.locator(".wb-run-header")).to_contain_text(RUN_ID)
            slider = page.locator(".widget-slider")
            expect(slider.locator(".widget-label")).to_have_text("speed")
            expect(slider.locator(".widget-readout")).to_have_text("7")
            expect(page.locator(".widget-html-content b")).to_have_text("recorded")
            expect(page.locator(".widget-html-content")).to_contain_text("recorded #1")
            # A Font Awesome icon: the font comes from static/, next to embed.js.
            expect(page.locator("button.widget-button i.fa-check")).to_be_visible()
            page.wait_for_function("() => [...document.fonts].some(font => font.status === "
                                   "'loaded' && font.family.includes('Font Awesome'))")
            expect(page.locator(".wb-widget-state")).to_have_count(3)
            for fallback in page.locator(".wb-widget-state").all():
                expect(fallback).to_be_hidden()
            image = page.locator('img[src^="data:image/png"]')
            expect(image).to_be_visible()
            assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == list(
                PNG_SIZE)
            expect(page.get_by_text("$E = mc^2$")).to_be_visible()  # TeX text, no MathJax
            assert page.evaluate("() => window.__pwned") is None
            page.screenshot(path=str(tmp_path / "with-javascript.png"), full_page=True)
            assert "/static/embed.js" in served
            assert any(path.startswith("/static/") and path.endswith(".woff2")
                       for path in served), served

            # Opened from disk: the relative script URL works there too.
            page.goto((site / "runs" / RUN_ID / "evaluate.html").as_uri(), wait_until="load")
            expect(page.locator(".widget-slider .widget-readout")).to_have_text("7")
            context.close()

            # JavaScript off: the markdown summary, table and image are plain HTML.
            context = browser.new_context(java_script_enabled=False,
                                          viewport={"width": 1200, "height": 900})
            context.route("**/*", only_local)
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(url, wait_until="load")
            expect(summary(page)).to_be_visible()
            expect(page.get_by_role("cell", name="0.91")).to_be_visible()
            expect(page.locator('img[src^="data:image/png"]')).to_be_visible()
            expect(page.locator(".widget-slider")).to_have_count(0)
            # The final state as text (the text/plain output says value=3), shown until a
            # widget is rendered over it.
            expect(page.get_by_text('IntSlider "speed": 7')).to_be_visible()
            expect(page.get_by_text('HTML: "<b>recorded</b> #1"')).to_be_visible()
            page.screenshot(path=str(tmp_path / "without-javascript.png"), full_page=True)
            context.close()
        finally:
            browser.close()

    assert blocked == [], f"requests outside 127.0.0.1: {blocked}"
    assert errors == [], f"errors in the page: {errors}"
    assert os.path.getsize(tmp_path / "with-javascript.png") > 0
