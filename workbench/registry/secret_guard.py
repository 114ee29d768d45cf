"""Keep secret values out of MLflow: params and tags are redacted before they are sent.

MLflow params cannot be changed once logged, so redaction has to happen on the way in. Kernels
install the guard through :func:`workbench.registry.store.connect`; the runner checks the
stage's MLflow run afterwards (:func:`leaked_in_run`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from workbench.audit.redact import Secrets

# The name of a variable listing secret names, not a secret.
SECRET_NAMES_VAR = "WORKBENCH_SECRET_NAMES"  # nosec B105
_installed: dict[str, Any] = {}


def install(names: list[str]) -> Secrets:
    """Wrap MlflowClient's param and tag calls so that secret values never leave the kernel."""
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunTag

    extra = [n for n in os.environ.get(SECRET_NAMES_VAR, "").split(",") if n]
    secrets = Secrets.from_environment(sorted(set(names) | set(extra)))
    _installed["secrets"] = secrets
    if _installed.get("patched") or not secrets:
        return secrets

    def current() -> Secrets:
        return _installed["secrets"]

    def clean(value: Any) -> Any:
        return current().redact_text(value) if isinstance(value, str) else value

    original_param, original_tag = MlflowClient.log_param, MlflowClient.set_tag
    original_batch = MlflowClient.log_batch

    @functools.wraps(original_param)
    def log_param(self: Any, run_id: str, key: str, value: Any, *args: Any, **kw: Any) -> Any:
        return original_param(self, run_id, key, clean(str(value)), *args, **kw)

    @functools.wraps(original_tag)
    def set_tag(self: Any, run_id: str, key: str, value: Any, *args: Any, **kw: Any) -> Any:
        return original_tag(self, run_id, key, clean(str(value)), *args, **kw)

    @functools.wraps(original_batch)
    def log_batch(self: Any, run_id: str, metrics: Any = (), params: Any = (), tags: Any = (),
                  *args: Any, **kw: Any) -> Any:
        params = [Param(p.key, clean(p.value)) for p in params or []]
        tags = [RunTag(t.key, clean(t.value)) for t in tags or []]
        return original_batch(self, run_id, metrics, params, tags, *args, **kw)

    MlflowClient.log_param, MlflowClient.set_tag = log_param, set_tag  # type: ignore[method-assign]
    MlflowClient.log_batch = log_batch  # type: ignore[method-assign]
    _installed["patched"] = True
    return secrets


def leaked_in_run(tracking_uri: str, run_id: str, secrets: Secrets) -> list[str]:
    """Names of secrets whose value is in the run's params, tags or run name."""
    if not secrets:
        return []
    from workbench.registry.client import client_for

    run = client_for(tracking_uri).get_run(run_id)
    texts = [run.info.run_name or "", *run.data.params.values(), *run.data.params,
             *run.data.tags.values()]
    return secrets.found_in("\n".join(texts))
