"""Smoke test: a real prediction request that must match the model's own prediction."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from workbench.deploy.inference_log import SYNTHETIC
from workbench.deploy.local import http_url
from workbench.errors import EXIT_FAILED, WorkbenchError


class SmokeTestError(WorkbenchError, AssertionError):
    """The endpoint did not answer, or answered differently from the model itself."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class SmokeResult:
    url: str
    rows: int
    served: list[Any]
    expected: list[Any]
    latency_ms: float

    @property
    def passed(self) -> bool:
        return self.served == self.expected


def _plain(values: Any) -> list[Any]:
    """Predictions as plain JSON values, so numpy scalars compare equal to served ones."""
    return json.loads(json.dumps(list(values.tolist() if hasattr(values, "tolist") else values)))


def request_body(frame: Any) -> bytes:
    """The body of a scoring request for ``frame`` (a pandas DataFrame): MLflow's
    ``dataframe_split`` JSON."""
    return json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)}).encode()


def predict_remote(url: str, frame: Any, timeout: float = 30.0) -> tuple[list[Any], float]:
    """POST ``frame`` (a pandas DataFrame) to ``<url>/invocations``; predictions and latency."""
    body = request_body(frame)
    request = urllib.request.Request(http_url(f"{url}/invocations"), data=body, method="POST",
                                     headers={"Content-Type": "application/json", **SYNTHETIC})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # nosec B310
            payload = json.loads(response.read())
    except OSError as exc:
        raise SmokeTestError(f"{url}/invocations did not answer: {exc}") from exc
    latency = (time.perf_counter() - started) * 1000
    return _plain(payload["predictions"]), latency


def smoke_test(url: str, model_uri: str, frame: Any) -> SmokeResult:
    """Compare the endpoint's predictions for ``frame`` with the model loaded locally."""
    import mlflow.pyfunc

    expected = _plain(mlflow.pyfunc.load_model(model_uri).predict(frame))
    served, latency = predict_remote(url, frame)
    result = SmokeResult(url, len(frame), served, expected, latency)
    if not result.passed:
        raise SmokeTestError(f"{url} served {served} but {model_uri} predicts {expected}")
    return result


def check_served_version(url: str, model_name: str, version: str) -> dict[str, Any]:
    """Assert the endpoint serves exactly ``model_name`` version ``version``.

    Compares the endpoint's ``/model`` with the registry: the version it was started with and
    the ``model_uuid`` of the artifact it loaded (so a server that loaded other files fails).
    """
    from mlflow.models import get_model_info

    from workbench.deploy.local import served_model

    try:
        served = served_model(url)
    except (OSError, ValueError) as exc:
        raise SmokeTestError(f"{url}/model did not say which model it serves: {exc}") from exc
    expected_uuid = get_model_info(f"models:/{model_name}/{version}").model_uuid
    if served.get("name") != model_name or str(served.get("version")) != str(version):
        raise SmokeTestError(f"{url} serves {served.get('name')} v{served.get('version')}, "
                             f"expected {model_name} v{version}")
    if served.get("model_uuid") != expected_uuid:
        raise SmokeTestError(f"{url} serves artifact {served.get('model_uuid')}, but "
                             f"{model_name} v{version} is {expected_uuid}")
    return served
