"""A read-only HTTP server for the static report site under a project's ``reports/`` folder.

Built on the standard library's :class:`http.server.ThreadingHTTPServer` with a small
:class:`http.server.BaseHTTPRequestHandler` subclass rather than a web framework: it adds no
dependency, and the whole request path (method check, token check, path resolution, headers)
is a few dozen lines that can be read and tested in full. ``SimpleHTTPRequestHandler`` is not
used because it lists directories and its path translation is not the check we want.

Rules:

* Binds to loopback only (``127.0.0.0/8``, ``::1``, ``localhost``); anything else is a
  ``ValueError``. Requests whose ``Host`` header names something other than a loopback
  address are refused too, so a DNS-rebinding page cannot read the site.
* ``GET`` and ``HEAD`` only; every other method gets ``405`` with ``Allow: GET, HEAD``.
* The URL path is percent-decoded once. NUL and other control bytes, backslashes, ``..`` and
  drive-letter segments are refused; so is any segment starting with ``.`` (``.git``,
  ``.lock`` files). The path is then resolved with :func:`os.path.realpath` and must stay
  inside ``realpath(root)`` (a ``commonpath`` check), so a symlink that leaves ``reports/`` is
  refused. Symlinks whose target stays inside ``reports/`` (and is not hidden) are served.
* A directory serves its ``index.html``, or ``404``; there are no listings. Error bodies are
  the bare status phrase, never a filesystem path.
* Every response carries a Content-Security-Policy whose ``sandbox`` lacks
  ``allow-same-origin``: a rendered notebook runs in an opaque origin and cannot read other
  pages, cookies or storage of the site. Plus ``nosniff``, ``no-referrer``, COOP and
  ``Cache-Control: no-store`` (on every response, not only HTML: the site may be token-gated).
* Optional token: ``?token=T`` (which also sets an ``HttpOnly`` cookie so relative links keep
  working), ``Authorization: Bearer T``, or that cookie. Compared with
  :func:`hmac.compare_digest`. Missing or wrong gives ``401`` and nothing of the site.
* One log line per request on stderr (client, method, path, status) with the query string
  removed, so the token never reaches a log.

Known limits:

* With a token, a browser does not send the cookie with the sub-resource requests (CSS, JS,
  images) of a sandboxed page: its opaque origin makes them cross-site (seen in Chromium 150,
  with ``SameSite=Lax``, ``Strict`` and ``None; Secure`` alike). So the files directly in
  ``/static/`` — the vendored widget script, fonts and their licenses, no report data — are
  served without the token; everything else needs it. Pages inline their data and images;
  links between pages (top-level navigations) carry the cookie. For the same reason the run
  index's shards (``/shards/*.js``, loaded by a search of every run) need the site opened from
  disk or served without a token; the shards' pages (``/shards/*.html``) are links and work.
* A file is opened with ``O_NOFOLLOW`` after the ``realpath`` check, which closes the
  last-component race but not a swap of an intermediate directory by someone who can write
  to ``reports/``; a hard link inside ``reports/`` to a file elsewhere looks like any other.
"""

from __future__ import annotations

import hmac
import ipaddress
import mimetypes
import os
import signal
import socket
import stat
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PureWindowsPath
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, quote, unquote

__all__ = ["CONTENT_SECURITY_POLICY", "TOKEN_COOKIE", "ReportHandler", "ReportServer",
           "make_server", "serve", "server_url"]

# 'unsafe-eval': the vendored widget manager compiles its JSON schemas with eval. The sandbox
# (no allow-same-origin) is what keeps any page's script away from the site.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'none'; form-action 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; sandbox allow-scripts allow-popups"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
TOKEN_COOKIE = "workbench_reports_token"  # nosec B105
# URL-safe and cookie-safe: what secrets.token_urlsafe() produces, plus '.' and '~'.
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_CHUNK = 64 * 1024
# Explicit types so the answer does not depend on the machine's /etc/mime.types; anything else
# falls back to mimetypes and then to application/octet-stream (never sniffed: nosniff).
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".ipynb": "application/x-ipynb+json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".log": "text/plain; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".xml": "application/xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".pdf": "application/pdf",
}
_LOG_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


class _Refused(Exception):
    """A request path that is not served: the status to answer with (and a redirect target)."""

    def __init__(self, status: HTTPStatus, location: str | None = None) -> None:
        super().__init__(status.phrase)
        self.status = status
        self.location = location


PUBLIC_PREFIX = "/static/"  # vendored scripts, fonts and licenses; no report data


def _is_public(raw_path: str) -> bool:
    """``/static/<name>`` with no traversal tricks: served without the token."""
    if not raw_path.startswith(PUBLIC_PREFIX):
        return False
    rest = unquote(raw_path[len(PUBLIC_PREFIX):])
    return bool(rest) and "/" not in rest and "\\" not in rest and not rest.startswith(".") \
        and "\x00" not in rest


def urlsplit_path(raw: str) -> str:
    """The path of a request target, without query and fragment."""
    return raw.partition("?")[0].partition("#")[0]


def _is_loopback(host: str) -> bool:
    """True for ``localhost`` and literal loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_header_ok(value: str | None) -> bool:
    """Whether a ``Host`` header names a loopback address (absent is accepted: HTTP/1.0)."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith("["):  # [::1]:8000
        host, sep, port = value[1:].partition("]")
        if not sep or (port and not port.startswith(":")):
            return False
        return _is_loopback(host) and (not port or port[1:].isdigit())
    host, _, port = value.partition(":")
    return _is_loopback(host) and (not port or port.isdigit())


def _content_type(path: str) -> str:
    """The Content-Type for a file name; unknown types are opaque bytes."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _CONTENT_TYPES:
        return _CONTENT_TYPES[suffix]
    guessed, encoding = mimetypes.guess_type(path, strict=False)
    if guessed is None or encoding is not None:
        return "application/octet-stream"
    return guessed


def _inside(root: str, path: str) -> bool:
    """Whether real path ``path`` is ``root`` or below it (by components, not string prefix)."""
    return os.path.commonpath([root, path]) == root


def _resolve(root: str, raw_path: str) -> str:
    """Map a request path (no query) to a real file under ``root`` (itself a real path).

    Raises :class:`_Refused`: ``400`` for malformed or traversal paths, ``404`` for anything
    missing, hidden or outside ``root``, ``301`` for a directory asked for without its ``/``.
    """
    if not raw_path.startswith("/"):
        raise _Refused(HTTPStatus.BAD_REQUEST)
    try:
        decoded = unquote(raw_path, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise _Refused(HTTPStatus.BAD_REQUEST) from None
    if "\\" in decoded or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise _Refused(HTTPStatus.BAD_REQUEST)
    segments = [s for s in decoded.split("/") if s]
    for segment in segments:
        if segment in (".", "..") or PureWindowsPath(segment).anchor:
            raise _Refused(HTTPStatus.BAD_REQUEST)
        if segment.startswith("."):
            raise _Refused(HTTPStatus.NOT_FOUND)
    target = os.path.realpath(os.path.join(root, *segments))
    if not _inside(root, target) or _hidden(root, target):
        raise _Refused(HTTPStatus.NOT_FOUND)
    if os.path.isdir(target):
        target = os.path.realpath(os.path.join(target, "index.html"))
        if not _inside(root, target) or _hidden(root, target) or not os.path.isfile(target):
            raise _Refused(HTTPStatus.NOT_FOUND)
        if segments and not decoded.endswith("/"):
            # Rebuilt from the clean segments: never "//host/", so never an open redirect.
            raise _Refused(HTTPStatus.MOVED_PERMANENTLY, quote("/" + "/".join(segments) + "/"))
    elif decoded.endswith("/"):
        raise _Refused(HTTPStatus.NOT_FOUND)  # a file asked for as a directory
    if not os.path.isfile(target):
        raise _Refused(HTTPStatus.NOT_FOUND)
    return target


def _hidden(root: str, path: str) -> bool:
    """Whether any component of ``path`` below ``root`` starts with a dot."""
    relative = os.path.relpath(path, root)
    return relative != "." and any(p.startswith(".") for p in relative.split(os.sep))


class ReportServer(ThreadingHTTPServer):
    """The threading server, holding the real site root and the optional token."""

    daemon_threads = True
    root: str
    token: str | None


class _ReportServer6(ReportServer):
    address_family = socket.AF_INET6


class ReportHandler(BaseHTTPRequestHandler):
    """Serves files under ``server.root``; GET and HEAD only."""

    server: ReportServer
    server_version = "workbench-reports"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: no unread-body confusion
    timeout = 30  # seconds a slow client may hold a thread

    # -- dispatch (other methods: http.server calls send_error(501), answered as 405) ------

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _method_not_allowed(self) -> None:
        self._send_error(HTTPStatus.METHOD_NOT_ALLOWED, [("Allow", "GET, HEAD")])

    def _serve(self, body: bool) -> None:
        raw_path, _, query = self.path.partition("?")
        raw_path = raw_path.partition("#")[0]
        # HTTP/0.9 has no response headers (so no CSP): not served.
        hosts = self.headers.get_all("Host") or []
        if self.request_version == "HTTP/0.9" or len(hosts) > 1 or not _host_header_ok(
                hosts[0] if hosts else None):
            self._send_error(HTTPStatus.BAD_REQUEST)
            return
        authorised, set_cookie = self._authorise(query)
        if not authorised and _is_public(raw_path):
            authorised = True  # vendored assets only: sandboxed pages load them cookie-less
        if not authorised:
            self._send_error(HTTPStatus.UNAUTHORIZED,
                             [("WWW-Authenticate", 'Bearer realm="workbench reports"')])
            return
        extra = [("Set-Cookie", set_cookie)] if set_cookie else []
        try:
            target = _resolve(self.server.root, raw_path)
        except _Refused as refused:
            if refused.location is not None:
                extra.append(("Location", refused.location + (f"?{query}" if query else "")))
            self._send_error(refused.status, extra)
            return
        self._send_file(target, extra, body)

    # -- token ---------------------------------------------------------------------------

    def _authorise(self, query: str) -> tuple[bool, str | None]:
        """Whether the request carries the token; and a Set-Cookie value when it came by query."""
        token = self.server.token
        if token is None:
            return True, None
        expected = token.encode()
        queried = parse_qs(query, keep_blank_values=True).get("token", [])
        if any(hmac.compare_digest(v.encode(), expected) for v in queried):
            return True, f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Lax; Path=/"
        scheme, _, credential = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(),
                                                              expected):
            return True, None
        for header in self.headers.get_all("Cookie") or []:
            for pair in header.split(";"):
                name, _, value = pair.strip().partition("=")
                if name == TOKEN_COOKIE and hmac.compare_digest(value.encode(), expected):
                    return True, None
        return False, None

    # -- responses -----------------------------------------------------------------------

    def _send_file(self, target: str, extra: list[tuple[str, str]], body: bool) -> None:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(target, flags)
        except OSError:
            self._send_error(HTTPStatus.NOT_FOUND, extra)
            return
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                self._send_error(HTTPStatus.NOT_FOUND, extra)
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", _content_type(target))
            self.send_header("Content-Length", str(info.st_size))
            if _is_public(urlsplit_path(self.path)):
                # Sandboxed pages have an opaque origin: fonts need CORS to load from /static/.
                self.send_header("Access-Control-Allow-Origin", "*")
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            if not body:
                return
            remaining = info.st_size  # never send more than Content-Length promised
            try:
                while remaining > 0 and (chunk := handle.read(min(_CHUNK, remaining))):
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def _send_error(self, status: HTTPStatus, extra: list[tuple[str, str]] | None = None) -> None:
        """A plain-text error: the status phrase only, never a path or the request line."""
        payload = f"{status.value} {status.phrase}\n".encode()
        if self.request_version == "HTTP/0.9":  # a malformed or 0.9 request line: answer
            self.request_version = "HTTP/1.0"  # with a status line and headers all the same
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        for name, value in extra or []:
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(payload)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None
                   ) -> None:
        """http.server's own errors (bad request line, 501...) in the same terse form."""
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.BAD_REQUEST
        if status == HTTPStatus.NOT_IMPLEMENTED:  # an unknown method
            self._method_not_allowed()
            return
        self._send_error(status)

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def version_string(self) -> str:
        return self.server_version

    # -- logging -------------------------------------------------------------------------

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """``client - [time] METHOD /path STATUS``: no query string, so never the token."""
        path = (getattr(self, "path", None) or "-").partition("?")[0].partition("#")[0]
        method = getattr(self, "command", None) or "-"
        status = code.value if isinstance(code, HTTPStatus) else code
        line = f"{self.address_string()} - [{self.log_date_time_string()}] {method} {path} {status}"
        sys.stderr.write(line.translate(_LOG_ESCAPES) + "\n")

    def log_error(self, format: str, *args: Any) -> None:
        """Dropped: http.server puts the raw request line (token included) in these."""

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} - {(format % args).translate(_LOG_ESCAPES)}\n")


def make_server(root: Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None
                ) -> ThreadingHTTPServer:
    """A bound, not yet running, server for the site in ``root`` (``port=0``: any free port).

    Raises ``ValueError`` for a non-loopback ``host``, a ``root`` that is not a directory, or
    a token that is empty or has characters outside ``[A-Za-z0-9._~-]``.
    """
    if not _is_loopback(host):
        raise ValueError(f"refusing to serve reports on {host!r}: only loopback addresses")
    if token is not None and (not token or not set(token) <= _TOKEN_CHARS):
        raise ValueError("the token must be non-empty and use only A-Z a-z 0-9 . _ ~ -")
    real_root = os.path.realpath(root)
    if not os.path.isdir(real_root):
        raise ValueError(f"not a directory: {root}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = _ReportServer6 if family == socket.AF_INET6 else ReportServer
    server = server_class((host, port), ReportHandler)
    server.root = real_root
    server.token = token
    return server


def server_url(server: ThreadingHTTPServer, token: str | None = None) -> str:
    """The site's address, with ``?token=`` when there is one."""
    address, port = server.server_address[:2]
    text = address.decode() if isinstance(address, bytes) else str(address)
    host = f"[{text}]" if ":" in text else text
    return f"http://{host}:{port}/" + (f"?token={token}" if token else "")


def serve(root: Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None
          ) -> None:
    """Serve the site until Ctrl-C or SIGTERM, printing its address (token included) first."""
    server = make_server(root, host, port, token)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, stop)
    try:
        print(f"Serving {root} at {server_url(server, token)}  (Ctrl-C to stop)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("Stopped.", flush=True)
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
