"""The read-only report server: a real server on 127.0.0.1, real HTTP requests.

http.client is used for the hostile paths because it sends the request target exactly as
written (urllib would normalise ``/../x`` away before it ever reached the server).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from tests.conftest import REPO, clean_environment
from workbench.reports.server import CONTENT_SECURITY_POLICY, TOKEN_COOKIE, make_server

SECRET = "s3cr3t-value-that-must-never-be-served-5b1e"
TOKEN = "tok-Zq8vR2mLx_4"
PAGE = "<!doctype html><title>Run r1</title><h1>Stage train of r1</h1>"


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Site:
    """A project on disk (reports/ plus a secret outside it) and every response it gave."""

    project: Path
    reports: Path
    port: int = 0
    seen: list[Response] = field(default_factory=list)

    def request(self, method: str, target: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            # skip_host: set Host ourselves (or leave it out); the target goes out verbatim.
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            sent = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
            for name, value in sent.items():
                if value is not None:
                    conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            raw = conn.getresponse()
            response = Response(raw.status, raw.headers, raw.read())
        finally:
            conn.close()
        self.seen.append(response)
        return response

    def get(self, target: str, **headers: str) -> Response:
        return self.request("GET", target, headers)


def build_site(project: Path) -> Site:
    """reports/ with pages, a notebook, assets, hidden files and symlinks in and out."""
    reports = project / "reports"
    (project / "configs").mkdir(parents=True)
    (project / "configs" / "secret.yaml").write_text(f"password: {SECRET}\n")
    run = reports / "runs" / "r1"
    run.mkdir(parents=True)
    (reports / "index.html").write_text(
        '<!doctype html><title>Reports</title><a href="runs/r1/train.html">r1</a>')
    (run / "index.html").write_text('<!doctype html><a href="train.html">train</a>')
    (run / "train.html").write_text(
        PAGE + '<a href="train.ipynb">notebook</a><img src="plot.png">'
        '<script src="../../static/app.js"></script>'
        '<link rel="stylesheet" href="../../static/style.css">')
    (run / "train.ipynb").write_text('{"cells": [], "nbformat": 4, "nbformat_minor": 5}')
    (run / "run.json").write_text('{"run_id": "r1"}')
    (run / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (run / "model.bin").write_bytes(os.urandom(1024))
    (run / "big.json").write_bytes(b"[" + b"0," * 400_000 + b"0]")  # > several chunks
    (reports / "static").mkdir()
    (reports / "static" / "app.js").write_text("document.title += ' ok';")
    (reports / "static" / "style.css").write_text("body { font-family: sans-serif; }")
    (reports / "runs" / "r2").mkdir()  # a directory without index.html
    (reports / "evil.com").mkdir()  # a directory named like a host (open-redirect bait)
    (reports / "evil.com" / "index.html").write_text("<p>not a redirect target</p>")
    # Hidden things: never served, even when they hold the secret.
    (reports / ".lock").write_text(SECRET)
    (reports / ".git").mkdir()
    (reports / ".git" / "config").write_text(SECRET)
    (run / ".hidden.html").write_text(SECRET)
    # Symlinks out of reports/: a directory, a file, a system directory, an index.html.
    (reports / "runs" / "evil").symlink_to(Path("..") / ".." / "configs")
    (reports / "runs" / "secret.yaml").symlink_to(project / "configs" / "secret.yaml")
    (reports / "runs" / "etc").symlink_to("/etc")
    (reports / "runs" / "r3").mkdir()
    (reports / "runs" / "r3" / "index.html").symlink_to(project / "configs" / "secret.yaml")
    # Symlinks that stay inside reports/: allowed (unless they land on a hidden file).
    (reports / "latest").symlink_to(Path("runs") / "r1")
    (reports / "home.html").symlink_to("index.html")
    (reports / "visible.txt").symlink_to(".lock")
    return Site(project=project, reports=reports)


def snapshot(root: Path) -> dict[str, tuple[bytes | str, int]]:
    """Every entry under root: content (or link target) and mtime, without following links."""
    state: dict[str, tuple[bytes | str, int]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            state[str(path)] = (os.readlink(path), info.st_mtime_ns)
        elif path.is_file():
            state[str(path)] = (path.read_bytes(), info.st_mtime_ns)
        else:
            state[str(path)] = ("<dir>", info.st_mtime_ns)
    return state


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """Start a server over a fresh site (optionally with a token); all are stopped after.

    On the way out, every response any test received is checked: no secret, no filesystem
    path, and the security headers on all of them (errors included).
    """
    started: list[tuple[object, threading.Thread, Site]] = []

    def _start(token: str | None = None) -> Site:
        site = build_site(tmp_path / f"project{len(started)}")
        server = make_server(site.reports, token=token)
        site.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        started.append((server, thread, site))
        return site

    yield _start
    for server, thread, site in started:
        server.shutdown()  # type: ignore[attr-defined]
        server.server_close()  # type: ignore[attr-defined]
        thread.join(timeout=5)
        assert not thread.is_alive()
        for response in site.seen:
            everything = response.body + str(response.headers).encode()
            assert SECRET.encode() not in everything
            assert str(site.project).encode() not in everything
            assert response.header("Content-Security-Policy") == CONTENT_SECURITY_POLICY
            assert response.header("X-Content-Type-Options") == "nosniff"


@pytest.fixture
def site(start: Callable[..., Site]) -> Site:
    return start()


# -- serving -------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "content_type", "file"), [
    ("/index.html", "text/html; charset=utf-8", "index.html"),
    ("/runs/r1/train.html", "text/html; charset=utf-8", "runs/r1/train.html"),
    ("/runs/r1/train.ipynb", "application/x-ipynb+json", "runs/r1/train.ipynb"),
    ("/runs/r1/run.json", "application/json", "runs/r1/run.json"),
    ("/runs/r1/plot.png", "image/png", "runs/r1/plot.png"),
    ("/runs/r1/model.bin", "application/octet-stream", "runs/r1/model.bin"),
    ("/runs/r1/big.json", "application/json", "runs/r1/big.json"),
    ("/static/app.js", "text/javascript; charset=utf-8", "static/app.js"),
    ("/static/style.css", "text/css; charset=utf-8", "static/style.css"),
    ("/", "text/html; charset=utf-8", "index.html"),
    ("/runs/r1/", "text/html; charset=utf-8", "runs/r1/index.html"),
    ("/runs/r1/train%2Ehtml", "text/html; charset=utf-8", "runs/r1/train.html"),
])
def test_serves_files_with_their_type(site: Site, target: str, content_type: str,
                                      file: str) -> None:
    response = site.get(target)
    expected = (site.reports / file).read_bytes()
    assert response.status == 200
    assert response.body == expected
    assert response.header("Content-Type") == content_type
    assert response.header("Content-Length") == str(len(expected))


def test_security_headers(site: Site) -> None:
    response = site.get("/runs/r1/train.html")
    csp = response.header("Content-Security-Policy")
    assert csp == CONTENT_SECURITY_POLICY
    directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
    assert directives["sandbox"] == ["allow-scripts", "allow-popups"]
    assert "allow-same-origin" not in csp
    assert directives["connect-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert response.header("X-Content-Type-Options") == "nosniff"
    assert response.header("Referrer-Policy") == "no-referrer"
    assert response.header("Cross-Origin-Opener-Policy") == "same-origin"
    assert response.header("Cache-Control") == "no-store"
    assert response.header("Server") == "workbench-reports"  # no Python version
    assert response.header("Set-Cookie") is None  # no token configured, no cookie


def test_head_sends_headers_only(site: Site) -> None:
    get = site.get("/runs/r1/plot.png")
    head = site.request("HEAD", "/runs/r1/plot.png")
    assert head.status == 200
    assert head.body == b""
    assert head.header("Content-Length") == get.header("Content-Length")
    assert head.header("Content-Type") == "image/png"


def test_directory_without_slash_redirects(site: Site) -> None:
    response = site.get("/runs/r1")
    assert response.status == 301
    assert response.header("Location") == "/runs/r1/"
    assert site.get("/runs/r1?x=1").header("Location") == "/runs/r1/?x=1"


def test_redirect_is_never_to_another_host(site: Site) -> None:
    for target in ("//evil.com", "/%2Fevil.com", "///evil.com"):
        response = site.get(target)
        assert response.status == 301, target
        assert response.header("Location") == "/evil.com/", target


@pytest.mark.parametrize("target", [
    "/runs/r2/",  # a directory without index.html: no listing
    "/runs/r2",
    "/runs/",
    "/static/",
    "/missing.html",
    "/runs/r1/train.html/",  # a file asked for as a directory
    "/%252e%252e/configs/secret.yaml",  # decoded once only: a literal "%2e%2e" folder
])
def test_no_listing_and_unknown_paths_are_404(site: Site, target: str) -> None:
    response = site.get(target)
    assert response.status == 404, target
    assert response.body == b"404 Not Found\n"


def test_symlink_inside_reports_is_served(site: Site) -> None:
    response = site.get("/latest/train.html")
    assert response.status == 200
    assert response.body == (site.reports / "runs" / "r1" / "train.html").read_bytes()
    assert site.get("/latest/").status == 200
    assert site.get("/home.html").body == (site.reports / "index.html").read_bytes()


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "/../configs/secret.yaml",
    "/%2e%2e/configs/secret.yaml",
    "/%2E%2E/configs/secret.yaml",
    "/runs/%2e%2e/%2e%2e/configs/secret.yaml",
    "/runs/../../configs/secret.yaml",
    "/..%2fconfigs/secret.yaml",
    "/%2e%2e%2f%2e%2e%2fconfigs%2fsecret.yaml",
    "/..%5cconfigs%5csecret.yaml",
    "/runs%5c..%5c..%5cconfigs%5csecret.yaml",
    "/runs/r1/train.html%00",
    "/runs/r1/train.html%00.png",
    "/%00/../configs/secret.yaml",
    "/%c0%ae%c0%ae/configs/secret.yaml",  # overlong UTF-8 dots: invalid, refused
    "/C:/Windows/win.ini",
    "/c:%5cconfigs%5csecret.yaml",
    "/./index.html",
    "/runs/r1/%0a/../../x",
    "http://127.0.0.1/../configs/secret.yaml",  # absolute-form target
    "../configs/secret.yaml",
    "*",
])
def test_traversal_is_refused(site: Site, target: str) -> None:
    response = site.get(target)
    assert response.status == 400, target
    assert response.body == b"400 Bad Request\n"


@pytest.mark.parametrize("target", [
    "/runs/evil/secret.yaml",  # symlinked directory pointing outside
    "/runs/evil/",
    "/runs/evil",
    "/runs/secret.yaml",  # symlinked file pointing outside
    "/runs/etc/passwd",  # symlink to a system directory
    "/runs/etc/hostname",
    "/runs/r3/",  # index.html that is a symlink out
    "/runs/r3/index.html",
    "/.lock",
    "/.git/config",
    "/.git/",
    "/%2egit/config",
    "/runs/r1/.hidden.html",
    "/visible.txt",  # symlink inside reports/ to a hidden file
    "/..;/configs/secret.yaml",
])
def test_escapes_and_hidden_files_are_404(site: Site, target: str) -> None:
    response = site.get(target)
    assert response.status == 404, target
    assert response.body == b"404 Not Found\n"
    assert site.request("HEAD", target).status == 404


def test_secret_is_reachable_on_disk_but_never_served(site: Site) -> None:
    # The symlinks really do point at the secret: the server is what keeps it in.
    assert SECRET in (site.reports / "runs" / "evil" / "secret.yaml").read_text()
    assert SECRET in (site.reports / "runs" / "secret.yaml").read_text()
    assert SECRET in (site.reports / "runs" / "r3" / "index.html").read_text()
    for target in ("/runs/evil/secret.yaml", "/runs/secret.yaml", "/runs/r3/"):
        assert SECRET.encode() not in site.get(target).body


def test_non_loopback_host_header_is_refused(site: Site) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read the site."""
    assert site.get("/index.html", Host="evil.example").status == 400
    assert site.get("/index.html", Host=f"evil.example:{site.port}").status == 400
    assert site.get("/index.html", Host="127.0.0.1.evil.example").status == 400
    assert site.get("/index.html", Host="[::2]").status == 400
    assert site.get("/index.html", Host="[::1]x").status == 400
    assert site.get("/index.html", Host="localhost:80:80").status == 400
    twice = raw_exchange(site.port, b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    b"Host: evil.example\r\n\r\n")
    assert twice.startswith(b"HTTP/1.0 400 ")  # two Host headers: which one would a proxy use?
    assert site.get("/index.html", Host=f"localhost:{site.port}").status == 200
    assert site.get("/index.html", Host=f"127.0.0.1:{site.port}").status == 200
    assert site.get("/index.html", Host=f"[::1]:{site.port}").status == 200


# -- methods -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                    "PROPFIND", "MKCOL", "BREW"])
def test_other_methods_are_405_and_change_nothing(site: Site, method: str) -> None:
    before = snapshot(site.project)
    for target in ("/index.html", "/runs/r1/new.html", "/runs/r1/", "/../configs/secret.yaml"):
        response = site.request(method, target, body=b"<p>overwritten</p>")
        assert response.status == 405, (method, target)
        assert response.header("Allow") == "GET, HEAD"
    assert snapshot(site.project) == before


# -- token ---------------------------------------------------------------------------------


def test_token_required(start: Callable[..., Site]) -> None:
    site = start(TOKEN)
    for target in ("/runs/r1/train.html", "/", "/missing.html", "/runs/evil/secret.yaml"):
        response = site.get(target)
        assert response.status == 401, target  # same answer whether or not the file exists
        assert response.header("WWW-Authenticate", ) == 'Bearer realm="workbench reports"'
        assert response.header("Set-Cookie") is None
        assert b"Stage train" not in response.body
    assert site.request("HEAD", "/runs/r1/train.html").status == 401


@pytest.mark.parametrize("credentials", [
    {"target": "/runs/r1/train.html?token=wrong"},
    {"target": "/runs/r1/train.html?token="},
    {"target": f"/runs/r1/train.html?token={TOKEN}x"},
    {"target": f"/runs/r1/train.html?token={TOKEN[:-1]}"},
    {"target": f"/runs/r1/train.html?Token={TOKEN}"},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Cookie": f"{TOKEN_COOKIE}=wrong"},
    {"Cookie": f"other={TOKEN}"},
    {"X-Token": TOKEN},
])
def test_wrong_token_is_401(start: Callable[..., Site], credentials: dict[str, str]) -> None:
    site = start(TOKEN)
    target = credentials.pop("target", "/runs/r1/train.html")
    response = site.get(target, **credentials)
    assert response.status == 401
    assert b"Stage train" not in response.body
    assert response.header("Set-Cookie") is None


def test_token_by_query_sets_cookie(start: Callable[..., Site]) -> None:
    site = start(TOKEN)
    response = site.get(f"/runs/r1/train.html?token={TOKEN}")
    assert response.status == 200
    assert PAGE.encode() in response.body
    assert response.header("Set-Cookie") == (
        f"{TOKEN_COOKIE}={TOKEN}; HttpOnly; SameSite=Lax; Path=/")
    assert site.get(f"/runs/r1/train.html?a=1&token={TOKEN}").status == 200


def test_cookie_alone_and_relative_links(start: Callable[..., Site]) -> None:
    """After ?token= once, the page's relative links work with the cookie and no query."""
    site = start(TOKEN)
    page_url = f"http://127.0.0.1:{site.port}/runs/r1/train.html?token={TOKEN}"
    first = site.get(urlsplit(page_url).path + "?" + urlsplit(page_url).query)
    cookie = first.header("Set-Cookie").split(";")[0]
    links = re.findall(r'(?:href|src)="([^"]+)"', first.body.decode())
    assert len(links) == 4
    for link in links:
        url = urlsplit(urljoin(page_url, link))
        assert url.query == ""  # relative links drop the ?token=
        public = url.path.startswith("/static/") and url.path.count("/") == 2
        assert site.get(url.path).status == (200 if public else 401), url.path
        followed = site.get(url.path, Cookie=cookie)
        assert followed.status == 200, link
        assert followed.header("Set-Cookie") is None
    # Other cookies alongside, and a second Cookie header, are fine too.
    assert site.get("/", Cookie=f"a=b; {cookie}; c=d").status == 200


def test_only_direct_static_files_skip_the_token(start: Callable[..., Site]) -> None:
    """Vendored assets load cookie-less (sandboxed pages send no cookie); nothing else does."""
    site = start(TOKEN)
    public = site.get("/static/app.js")
    assert public.status == 200 and public.header("Access-Control-Allow-Origin") == "*"
    private = site.get(f"/runs/r1/run.json?token={TOKEN}")
    assert private.status == 200 and private.header("Access-Control-Allow-Origin") is None
    for path in ("/static/", "/static/../runs/r1/run.json", "/static/%2e%2e/runs/r1/run.json",
                 "/static/..%2fruns/r1/run.json", "/static/.hidden", "/staticx/app.js",
                 "/runs/r1/run.json"):
        response = site.get(path)
        assert response.status in (400, 401, 404), path
        assert b"run_id" not in response.body, path


def test_bearer_token(start: Callable[..., Site]) -> None:
    site = start(TOKEN)
    response = site.get("/runs/r1/run.json", Authorization=f"Bearer {TOKEN}")
    assert response.status == 200
    assert response.body == b'{"run_id": "r1"}'
    assert response.header("Set-Cookie") is None
    assert site.get("/", Authorization=f"bearer {TOKEN}").status == 200


def test_token_does_not_bypass_path_checks(start: Callable[..., Site]) -> None:
    site = start(TOKEN)
    assert site.get(f"/../configs/secret.yaml?token={TOKEN}").status == 400
    assert site.get(f"/runs/evil/secret.yaml?token={TOKEN}").status == 404
    assert site.request("POST", f"/index.html?token={TOKEN}").status == 405


def test_token_never_logged(start: Callable[..., Site], capsys: pytest.CaptureFixture[str]
                            ) -> None:
    site = start(TOKEN)
    site.get(f"/runs/r1/train.html?token={TOKEN}")
    site.get("/runs/r1/train.html?token=wrong-guess")
    site.get("/static/app.js", Cookie=f"{TOKEN_COOKIE}={TOKEN}")
    site.get("/runs/r1/run.json", Authorization=f"Bearer {TOKEN}")
    site.request("HEAD", f"/missing?token={TOKEN}")
    site.request("PUT", f"/index.html?token={TOKEN}")
    site.get(f"/../x?token={TOKEN}")
    site.get(f"/runs/r1?token={TOKEN}")  # redirect: Location keeps the query, the log does not
    # Malformed request lines: http.server's own error path must not echo them either.
    for line in (f"GET /?token={TOKEN} HTTP/1.1 extra", f"GET /?token={TOKEN} HTTP/9.9"):
        answer = raw_exchange(site.port, f"{line}\r\n\r\n".encode())
        assert answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.0 505 ")), answer
        assert TOKEN.encode() not in answer
    err = capsys.readouterr().err
    assert TOKEN not in err
    lines = err.splitlines()
    assert any(line.endswith("GET /runs/r1/train.html 200") for line in lines), err
    assert any(line.endswith("GET /runs/r1/train.html 401") for line in lines), err
    assert any(line.endswith("HEAD /missing 404") for line in lines), err
    assert any(line.endswith("PUT /index.html 405") for line in lines), err
    assert any(line.endswith("GET /runs/r1 301") for line in lines), err
    assert len(lines) == 10, err


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send bytes as they are and read the whole answer (the server closes the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("request_line", [
    b"GET /index.html\r\n\r\n",  # HTTP/0.9: would mean a body with no headers, so no CSP
    b"GET /index.html HTTP/1.1 extra\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /index.html HTTP/x.y\r\n\r\n",
])
def test_malformed_requests_get_headers_and_no_content(site: Site, request_line: bytes) -> None:
    answer = raw_exchange(site.port, request_line)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 "), answer
    assert f"Content-Security-Policy: {CONTENT_SECURITY_POLICY}".encode() in head
    assert body == b"400 Bad Request\n"


def test_log_escapes_control_characters(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    raw_exchange(site.port, b"GET /\x1b[31mred HTTP/1.0\r\n\r\n")
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "\\x1b[31mred" in err


# -- construction and serve() --------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.com",
                                  "", "::ffff:127.0.0.1", "localhost.evil.example"])
def test_non_loopback_host_is_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        make_server(tmp_path, host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_are_accepted(tmp_path: Path, host: str) -> None:
    (tmp_path / "index.html").write_text("hi")
    try:
        server = make_server(tmp_path, host=host)
    except OSError as error:
        if host != "::1":
            raise
        # Only IPv6 may be missing: some containers have no ::1 interface at all.
        pytest.skip(f"this machine has no IPv6 loopback to bind: {error}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        address, port = server.server_address[:2]
        conn = http.client.HTTPConnection(str(address), port, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"hi"
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("token", ["", "has space", "semi;colon", "quo\"te", "nön-ascii"])
def test_unsafe_tokens_are_refused(tmp_path: Path, token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        make_server(tmp_path, token=token)


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        make_server(tmp_path / "missing")


def test_serve_prints_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    site = build_site(tmp_path / "project")
    code = ("import sys; from pathlib import Path; from workbench.reports.server import serve; "
            "serve(Path(sys.argv[1]), port=0, token=sys.argv[2])")
    process = subprocess.Popen([sys.executable, "-c", code, str(site.reports), TOKEN],
                               cwd=REPO, env=clean_environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", line)
        assert match, line
        assert match.group(2) == TOKEN
        site.port = int(match.group(1))
        assert site.get(f"/?token={TOKEN}").status == 200
        assert site.get("/").status == 401
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0, err
    assert "Stopped" in out
    assert TOKEN not in err
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", site.port), timeout=2).close()
