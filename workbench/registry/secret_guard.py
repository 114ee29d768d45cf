"""Keep secret values out of MLflow: params and tags are redacted before they are sent.

MLflow params cannot be changed once logged, so redaction has to happen on the way in. Kernels
install the guard through :func:`workbench.registry.store.connect`. A stage can still reach
MLflow around it (a tag key, a metric name, an artifact, a registered model's description, a
run logged with the guard off), so after every stage the runner scans what it may have written
(:func:`scan`) and removes any value found (:func:`purge`); the stage then fails.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
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


ARTIFACT_LIMIT = 20_000_000  # bytes of one artifact file read to look for a secret


@dataclass(frozen=True)
class Leak:
    """A secret's value in the MLflow store: where, and what was done about it."""

    secret: str
    where: str  # "run 3fa2... param 'token'", "registered model m description", ...
    removed: str = ""  # "the run was deleted from the store", ...

    def describe(self) -> str:
        return f"the value of secret {self.secret} reached MLflow ({self.where})" + (
            f"; {self.removed}" if self.removed else "")


def _run_texts(client: Any, run: Any) -> list[tuple[str, str]]:
    """(where, text) of everything a run holds as text: name, params, tags, metric names."""
    found = [("run name", run.info.run_name or "")]
    found += [(f"param {key!r}", f"{key}\n{value}") for key, value in run.data.params.items()]
    found += [(f"tag {key!r}", f"{key}\n{value}") for key, value in run.data.tags.items()]
    found += [(f"metric {key!r}", key) for key in run.data.metrics]
    return found


def _artifact_leaks(client: Any, run_id: str, secrets: Secrets, path: str = ""
                    ) -> list[str]:
    """Names of the secrets in the run's artifact files (read where they lie when local)."""
    from urllib.parse import unquote, urlparse

    root = client.get_run(run_id).info.artifact_uri
    parsed = urlparse(root)
    if parsed.scheme not in ("", "file"):
        return []  # a remote artifact store: its files are not downloaded to be searched
    base = Path(unquote(parsed.path))
    found: set[str] = set()
    for file in (base / path).rglob("*") if (base / path).is_dir() else []:
        if file.is_file() and file.stat().st_size <= ARTIFACT_LIMIT:
            found.update(secrets.found_in(file.read_bytes().decode("utf-8", errors="replace")))
    return sorted(found)


def scan(tracking_uri: str, run_ids: list[str], since_ms: int, secrets: Secrets) -> list[Leak]:
    """Every secret value in what a stage may have written to MLflow: the runs it names and
    every run started since ``since_ms`` (names, params, tags, metric names, artifacts), and
    the registered models and versions changed since then (descriptions, tags)."""
    if not secrets:
        return []
    from workbench.registry.client import client_for

    client = client_for(tracking_uri)
    runs = {run_id: client.get_run(run_id) for run_id in run_ids}
    experiments = [e.experiment_id for e in client.search_experiments()]
    if experiments:
        for run in client.search_runs(experiments, f"attributes.start_time >= {since_ms}"):
            runs.setdefault(run.info.run_id, run)
    leaks: list[Leak] = []
    for run_id, run in runs.items():
        for where, text in _run_texts(client, run):
            leaks += [Leak(name, f"run {run_id} {where}") for name in secrets.found_in(text)]
        leaks += [Leak(name, f"run {run_id} artifacts")
                  for name in _artifact_leaks(client, run_id, secrets)]
    for model in client.search_registered_models():
        if (model.last_updated_timestamp or 0) < since_ms:
            continue
        texts = [("description", model.description or "")] + [
            (f"tag {k!r}", f"{k}\n{v}") for k, v in (model.tags or {}).items()]
        for version in client.search_model_versions(f"name = '{model.name}'"):
            if (version.last_updated_timestamp or 0) >= since_ms:
                texts += [(f"version {version.version} description", version.description or "")]
                texts += [(f"version {version.version} tag {k!r}", f"{k}\n{v}")
                          for k, v in (version.tags or {}).items()]
        leaks += [Leak(name, f"registered model {model.name} {where}")
                  for where, text in texts for name in secrets.found_in(text)]
    return leaks


def purge(tracking_uri: str, leaks: list[Leak], secrets: Secrets) -> list[Leak]:
    """Remove each leaked value from the store: a run that holds one is deleted (permanently
    on the embedded store, with its artifacts); a registered model's or version's description
    and tags are redacted. Returns the leaks with what was done."""
    from workbench.registry.client import client_for, sqlite_file

    client = client_for(tracking_uri)
    done: list[Leak] = []
    deleted: set[str] = set()
    for leak in leaks:
        if leak.where.startswith("run "):
            run_id = leak.where.split()[1]
            if run_id not in deleted:
                deleted.add(run_id)
                _delete_run(client, run_id, permanent=sqlite_file(tracking_uri) is not None)
            removed = "the run was deleted from the store"
        else:
            _redact_registered(client, leak, secrets)
            removed = "the value was redacted in the registry"
        done.append(Leak(leak.secret, leak.where, removed))
    database = sqlite_file(tracking_uri)
    if database is not None and done:  # freed pages still hold the bytes until rewritten
        import sqlite3

        connection = sqlite3.connect(database, timeout=60)
        try:
            connection.execute("VACUUM")
        finally:
            connection.close()
    return done


def _delete_run(client: Any, run_id: str, permanent: bool) -> None:
    import shutil
    from urllib.parse import unquote, urlparse

    artifacts = urlparse(client.get_run(run_id).info.artifact_uri)
    client.delete_run(run_id)
    if permanent:  # what ``mlflow gc`` does: the rows and the files go
        client._tracking_client.store._hard_delete_run(run_id)
        if artifacts.scheme in ("", "file"):
            shutil.rmtree(Path(unquote(artifacts.path)).parent, ignore_errors=True)


def _redact_registered(client: Any, leak: Leak, secrets: Secrets) -> None:
    model = leak.where.split()[2]
    found = client.get_registered_model(model)
    client.update_registered_model(model, description=secrets.redact_text(found.description or ""))
    for key, value in (found.tags or {}).items():
        if secrets.found_in(f"{key}\n{value}"):
            client.delete_registered_model_tag(model, key)
    for version in client.search_model_versions(f"name = '{model}'"):
        if secrets.found_in(version.description or ""):
            client.update_model_version(model, version.version,
                                        description=secrets.redact_text(version.description))
        for key, value in (version.tags or {}).items():
            if secrets.found_in(f"{key}\n{value}"):
                client.delete_model_version_tag(model, version.version, key)
