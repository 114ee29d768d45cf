"""A stand-in model endpoint for load-generator tests and benchmarks.

``python toy_endpoint.py PORT [--delay-ms N] [--fail-every K]``: answers every request with a
fixed prediction after ``N`` ms; with ``--fail-every K`` every K-th request gets HTTP 500.
``GET /stats`` returns how many requests it answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--fail-every", type=int, default=0)
    args = parser.parse_args()
    counts = {"requests": 0}

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(counts)

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        counts["requests"] += 1
        if args.delay_ms:
            await asyncio.sleep(args.delay_ms / 1000)
        if args.fail_every and counts["requests"] % args.fail_every == 0:
            return web.Response(status=500, text="deliberate failure")
        return web.Response(text=json.dumps({"predictions": [0]}),
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
