"""The environment's stable endpoint: an HTTP reverse proxy in front of one model server.

``python -m workbench.deploy.proxy --port PORT --route FILE`` listens on 127.0.0.1:PORT and
forwards every request to the backend named in the route file (``{"port": N, "version": V}``),
which it re-reads whenever the file changes. A redeploy therefore never drops a request: the
new backend starts on a fresh port, passes its smoke test, the route file is switched, and the
old backend is stopped only once ``GET /-/route`` reports no request in flight on it. When the
route names an inference log, answered ``/invocations`` requests are sampled into it off the
request path (``workbench.deploy.inference_log``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from workbench.deploy.inference_log import SYNTHETIC_HEADER, InferenceLog

HOST = "127.0.0.1"
ROUTE_PATH = "/-/route"
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailers", "transfer-encoding", "upgrade", "host",
                        "content-length"})


class Router:
    """The backend to forward to, re-read from the route file when its mtime changes."""

    def __init__(self, route_file: Path) -> None:
        self.route_file = route_file
        self._stamp: int | None = None
        self.route: dict[str, Any] = {}
        self.inflight: Counter[int] = Counter()

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
                                  "logged": inference.written, "log_dropped": inference.dropped})

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.path == ROUTE_PATH:
            return await route_info(request)
        route = router.current()
        if not route:
            return web.Response(status=503, text="no model server is routed yet\n")
        port = int(route["port"])
        router.inflight[port] += 1  # no await before this: the switch sees every request
        try:
            body = await request.read()
            async with request.app["session"].request(
                    request.method, f"http://{HOST}:{port}{request.rel_url}",
                    headers=_headers(request.headers), data=body) as answer:
                payload = await answer.read()
                if route.get("log") and answer.status == 200 and request.method == "POST" \
                        and request.path.endswith("/invocations") \
                        and SYNTHETIC_HEADER not in request.headers:
                    inference.offer(route["log"], str(route.get("version", "")), body, payload)
                return web.Response(status=answer.status, body=payload,
                                    headers=_headers(answer.headers))
        except (ClientError, TimeoutError) as exc:
            return web.Response(status=502, text=f"model server on port {port}: {exc}\n")
        finally:
            router.inflight[port] -= 1
            if router.inflight[port] <= 0:
                del router.inflight[port]

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
