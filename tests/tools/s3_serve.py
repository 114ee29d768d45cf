"""moto's S3-protocol server with its conditional writes made atomic.

moto honours ``If-None-Match: *`` and ``If-Match`` on PutObject, but checks the condition and
writes the object as two steps, without a lock; served from threads, two racing creates of one
key can both succeed, which S3 itself never allows. This launcher serves moto's application
with one lock around every conditional PUT (everything else stays concurrent), so the tests see
S3's guarantee. Usage: ``python s3_serve.py PORT``.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

CONDITIONS = ("HTTP_IF_NONE_MATCH", "HTTP_IF_MATCH")


def atomic_conditional_writes(app: Any) -> Any:
    lock = threading.Lock()

    def serve(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") == "PUT" and any(k in environ for k in CONDITIONS):
            with lock:
                return list(app(environ, start_response))
        return app(environ, start_response)

    return serve


def main() -> None:
    port = int(sys.argv[1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, atomic_conditional_writes(app), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
