"""One model version behind MLflow's scoring server, plus ``GET /model``: what is loaded.

``python -m workbench.deploy.model_server --model-uri models:/NAME/VERSION --name NAME
--version VERSION --port PORT`` serves MLflow's own FastAPI scoring app (``/ping``,
``/invocations``, ``/version``) and adds ``/model``, so a smoke test can check which registered
version and which model artifact (``model_uuid``) the endpoint really serves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

HOST = "127.0.0.1"


def model_identity(model: Any, name: str, version: str, model_uri: str) -> dict[str, Any]:
    """What ``/model`` reports: the registered name and version and the loaded artifact."""
    metadata = model.metadata
    return {"name": name, "version": str(version), "model_uri": model_uri,
            "model_uuid": getattr(metadata, "model_uuid", None),
            "run_id": getattr(metadata, "run_id", None)}


def build_app(model_uri: str, name: str, version: str) -> Any:
    """MLflow's scoring app for ``model_uri`` with the ``/model`` route added."""
    import mlflow.pyfunc
    from fastapi.responses import Response
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(model_uri)
    app = scoring_server.init(model)
    identity = json.dumps(model_identity(model, name, version, model_uri))

    @app.get("/model")
    async def served_model() -> Response:
        return Response(content=identity, media_type="application/json")

    return app


ENV_PREFIX = "WORKBENCH_SERVE_"


def app_from_environment() -> Any:
    """The app for ``WORKBENCH_SERVE_MODEL_URI``/``_NAME``/``_VERSION`` (uvicorn's factory, so
    several workers can each build their own)."""
    return build_app(os.environ[f"{ENV_PREFIX}MODEL_URI"], os.environ[f"{ENV_PREFIX}NAME"],
                     os.environ[f"{ENV_PREFIX}VERSION"])


def main(argv: list[str] | None = None) -> None:
    if argv is None and "--fork-server" in sys.argv:
        _fork_server(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=HOST, help="default 127.0.0.1; 0.0.0.0 in a pod")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    import uvicorn

    os.environ.update({f"{ENV_PREFIX}MODEL_URI": args.model_uri, f"{ENV_PREFIX}NAME": args.name,
                       f"{ENV_PREFIX}VERSION": str(args.version)})
    uvicorn.run("workbench.deploy.model_server:app_from_environment", factory=True,
                host=args.host, port=args.port, workers=args.workers, log_level="warning",
                access_log=False, timeout_graceful_shutdown=10)


def _fork_server(argv: list[str]) -> None:
    """``--fork-server SOCKET --owner PID --warm-with URI``: see
    :mod:`workbench.deploy.server_forks` (run as this module, so that every process it forks
    is a ``workbench.deploy.model_server`` process by its command line)."""
    from pathlib import Path

    from workbench.deploy import server_forks

    parser = argparse.ArgumentParser(description="an endpoint's model-server fork server")
    parser.add_argument("--fork-server", required=True, type=Path)
    parser.add_argument("--owner", required=True, type=int)
    parser.add_argument("--warm-with", required=True)
    args = parser.parse_args(argv)
    sys.exit(server_forks.serve(args.fork_server, args.owner, args.warm_with, main))


if __name__ == "__main__":
    main()
