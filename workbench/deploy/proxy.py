"""The environment's stable endpoint: an HTTP reverse proxy in front of one model server.

``python -m workbench.deploy.proxy --port PORT --route FILE`` listens on 127.0.0.1:PORT and
forwards every request to the backend named in the route file (``{"port": N, "version": V}``),
which it re-reads whenever the file changes. A redeploy therefore never drops a request: the
new backend starts on a fresh port, passes its smoke test, the route file is switched, and the
old backend is stopped only once ``GET /-/route`` reports no request in flight on it. When the
route names an inference log, answered ``/invocations`` requests are sampled into it off the
request path (``workbench.deploy.inference_log``).

Progressive delivery (``workbench.deploy.canary``) adds to the route file:

- ``canary: {port, version, weight, sticky_header}``: ``weight`` percent of requests go to the
  candidate instead (by a hash of the sticky header's value when the request has one, so a
  client keeps its version; else at random);
- ``shadow: {port, version}``: every ``/invocations`` request is also sent to the shadow once
  the client has its answer (off the request path, at most :data:`SHADOW_PENDING` at once;
  beyond that a copy is dropped and counted), and the two answers are compared;
- ``window``: an id; when it changes, the traffic statistics start again (one analysis
  window per canary step).

``GET /-/route`` reports, besides the route and the requests in flight per backend, each
version's requests, errors (5xx, or no answer) and latency percentiles in the window, and the
shadow comparison. Each answer carries the version that gave it (``X-Workbench-Version``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from workbench.deploy.inference_log import SYNTHETIC_HEADER, InferenceLog
from workbench.deploy.traffic import Comparison, Window

HOST = "127.0.0.1"
ROUTE_PATH = "/-/route"
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailers", "transfer-encoding", "upgrade", "host",
                        "content-length"})
VERSION_HEADER = "X-Workbench-Version"
SHADOW_PENDING = 256  # shadow copies in flight at most
SHADOW_TIMEOUT_S = 30.0


class Router:
    """The backend to forward to, re-read from the route file when its mtime changes."""

    def __init__(self, route_file: Path) -> None:
        self.route_file = route_file
        self._stamp: int | None = None
        self.route: dict[str, Any] = {}
        self.inflight: Counter[int] = Counter()
        self.window = Window("")
        self.shadow = Comparison()

    def backend(self, route: dict[str, Any], headers: Any) -> tuple[int, str]:
        """The (port, version) this request goes to: the canary's share, else the route's."""
        canary = route.get("canary")
        if canary:
            sticky = canary.get("sticky_header")
            key = headers.get(sticky) if sticky else None
            if key:
                point = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10000 / 100
            else:
                point = random.random() * 100  # nosec B311: traffic splitting, not security
            if point < float(canary["weight"]):
                return int(canary["port"]), str(canary.get("version", ""))
        return int(route["port"]), str(route.get("version", ""))

    def current(self) -> dict[str, Any]:
        try:
            stamp = os.stat(self.route_file).st_mtime_ns
        except OSError:
            return self.route  # keep serving the last good route
        if stamp != self._stamp:
            try:
                route = json.loads(self.route_file.read_text(encoding="utf-8"))
                int(route["port"])
            except (OSError, ValueError, KeyError, TypeError):
                return self.route  # a file being replaced is never half-read (atomic writes)
            self.route, self._stamp = route, stamp
            window = str(route.get("window", ""))
            if window != self.window.id:
                self.window = Window(window)
                self.shadow = Comparison()
        return self.route


def _headers(headers: Any) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key.lower() not in HOP_BY_HOP}


def make_app(router: Router, timeout: float = 120.0) -> web.Application:
    inference = InferenceLog()

    async def session_context(app: web.Application) -> Any:
        app["session"] = ClientSession(connector=TCPConnector(limit=0),
                                       timeout=ClientTimeout(total=timeout),
                                       auto_decompress=False)
        writer = asyncio.create_task(inference.run())
        yield
        writer.cancel()
        await app["session"].close()

    async def route_info(_request: web.Request) -> web.Response:
        route = router.current()
        return web.json_response({**route, "pid": os.getpid(),
                                  "inflight": {str(p): n for p, n in router.inflight.items()},
                                  "logged": inference.written, "log_dropped": inference.dropped,
                                  "stats": router.window.summary(),
                                  "shadow_stats": router.shadow.summary()})

    mirrors: set[asyncio.Task[None]] = set()

    def mirror(request: web.Request, shadow: dict[str, Any], body: bytes, live: bytes,
               live_ms: float) -> None:
        """Send a copy to the shadow once the client is answered; compare the two answers."""
        comparison = router.shadow
        if len(mirrors) >= SHADOW_PENDING:
            comparison.dropped += 1
            return

        async def send() -> None:
            started = time.perf_counter()
            try:
                async with request.app["session"].post(
                        f"http://{HOST}:{int(shadow['port'])}{request.rel_url}",
                        headers=_headers(request.headers), data=body,
                        timeout=ClientTimeout(total=SHADOW_TIMEOUT_S)) as answer:
                    payload = await answer.read()
                    status = answer.status
            except (ClientError, TimeoutError):
                payload, status = b"", 599
            comparison.add(live, live_ms, payload, status,
                           (time.perf_counter() - started) * 1000)

        task = asyncio.get_running_loop().create_task(send())
        mirrors.add(task)
        task.add_done_callback(mirrors.discard)

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.path == ROUTE_PATH:
            return await route_info(request)
        route = router.current()
        if not route:
            return web.Response(status=503, text="no model server is routed yet\n")
        port, version = router.backend(route, request.headers)
        window = router.window
        scored = request.method == "POST" and request.path.endswith("/invocations")
        router.inflight[port] += 1  # no await before this: the switch sees every request
        started = time.perf_counter()
        failed: tuple[str, float] | None = None  # the canary's version and time, if it failed
        try:
            body = await request.read()
            if port != int(route["port"]) and scored:  # the canary: when it fails, the
                answered = await _canary_attempt(request, port, body, version)  # serving
                took = (time.perf_counter() - started) * 1000  # version answers instead
                if answered is not None:
                    window.add(version, answered.status, took)
                    return answered
                failed = (version, took)
                router.inflight[port] -= 1
                if router.inflight[port] <= 0:
                    del router.inflight[port]
                port, version = int(route["port"]), str(route.get("version", ""))
                router.inflight[port] += 1
                started = time.perf_counter()
            async with request.app["session"].request(
                    request.method, f"http://{HOST}:{port}{request.rel_url}",
                    headers=_headers(request.headers), data=body) as answer:
                payload = await answer.read()
                took = (time.perf_counter() - started) * 1000
                if failed is not None:  # the candidate's fault only if this one answered
                    window.add(failed[0], 502 if answer.status < 400 else answer.status,
                               failed[1])
                    failed = None
                if scored:
                    window.add(version, answer.status, took)
                if route.get("log") and answer.status == 200 and scored \
                        and SYNTHETIC_HEADER not in request.headers:
                    inference.offer(route["log"], version, body, payload)
                response = web.Response(status=answer.status, body=payload,
                                        headers={**_headers(answer.headers),
                                                 VERSION_HEADER: version})
                if route.get("shadow") and scored and answer.status == 200:
                    # the client's answer is written out first; only then is the copy sent
                    await response.prepare(request)
                    await response.write_eof()
                    mirror(request, route["shadow"], body, payload, took)
                return response
        except (ClientError, TimeoutError) as exc:
            if failed is not None:
                window.add(failed[0], 502, failed[1])
            window.add(version, 502, (time.perf_counter() - started) * 1000)
            return web.Response(status=502, text=f"model server on port {port}: {exc}\n",
                                headers={VERSION_HEADER: version})
        finally:
            router.inflight[port] -= 1
            if router.inflight[port] <= 0:
                del router.inflight[port]

    async def _canary_attempt(request: web.Request, port: int, body: bytes, version: str
                              ) -> web.Response | None:
        """The canary's answer, or None when it gave none or an error (4xx too: MLflow's
        scoring server answers 400 when a model raises): then the caller asks the serving
        version, and the candidate is blamed only if that one answers."""
        try:
            async with request.app["session"].request(
                    request.method, f"http://{HOST}:{port}{request.rel_url}",
                    headers=_headers(request.headers), data=body) as answer:
                payload = await answer.read()
                if answer.status >= 400:
                    return None
                return web.Response(status=answer.status, body=payload,
                                    headers={**_headers(answer.headers),
                                             VERSION_HEADER: version})
        except (ClientError, TimeoutError):
            return None

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.cleanup_ctx.append(session_context)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--route", type=Path, required=True)
    args = parser.parse_args(argv)
    web.run_app(make_app(Router(args.route)), host=HOST, port=args.port, print=None,
                access_log=None, reuse_address=True, shutdown_timeout=10)


if __name__ == "__main__":
    main()
