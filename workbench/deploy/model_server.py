"""One model version behind MLflow's scoring server, plus ``GET /model``: what is loaded.

``python -m workbench.deploy.model_server --model-uri models:/NAME/VERSION --name NAME
--version VERSION --port PORT`` serves MLflow's own FastAPI scoring app (``/ping``,
``/invocations``, ``/version``) and adds ``/model``, so a smoke test can check which registered
version and which model artifact (``model_uuid``) the endpoint really serves.
"""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(build_app(args.model_uri, args.name, args.version), host=HOST, port=args.port,
                log_level="warning", access_log=False, timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()
