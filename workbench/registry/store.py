"""Which MLflow tracking store a project uses, and making sure it exists before stages run.

Precedence: ``$MLFLOW_TRACKING_URI`` (CI overrides), then ``mlflow.tracking_uri`` in
``configs/pipeline.yaml`` (a team's server), then the embedded default: a SQLite file and an
artifact folder under ``.workbench/mlflow/`` in the project, addressed by absolute URI.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from workbench.atomic import fsync_dir
from workbench.config import ConfigError, MlflowSettings, Problem
from workbench.project import Project
from workbench.registry.client import sqlite_file

__all__ = ["Store", "StoreUnreachable", "connect", "prepare", "resolve", "sqlite_file"]

TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclass(frozen=True)
class Store:
    """A resolved tracking store."""

    tracking_uri: str
    experiment: str
    artifact_location: str | None  # set for the embedded store only
    embedded: bool

    @property
    def environment(self) -> dict[str, str]:
        """Variables a kernel or model server needs to reach this store."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_EXPERIMENT_NAME": self.experiment,
            **TELEMETRY_OFF,
        }


def embedded_db(project: Project) -> Path:
    return project.mlflow_dir / "mlflow.db"


def resolve(project: Project, settings: MlflowSettings) -> Store:
    configured = os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking_uri
    if configured:
        return Store(configured, settings.experiment, None, embedded=False)
    return Store(
        tracking_uri=f"sqlite:///{embedded_db(project)}",
        experiment=settings.experiment,
        artifact_location=(project.mlflow_dir / "artifacts").as_uri(),
        embedded=True,
    )


class StoreUnreachable(ConfigError):
    """The configured tracking server does not accept connections (exit 2, nothing ran)."""


def prepare(store: Store) -> str:
    """Create the database schema and the experiment once, in this process; return its id.

    A SQLite store is created under a lock (runs starting at once) and under a temporary name,
    renamed into place once complete: MLflow's schema migrations are not one transaction, so a
    kill during them would otherwise leave a database no later run can open. A tracking server
    that refuses connections is reported at once instead of after MLflow's minutes of retries.
    """
    os.environ.update(TELEMETRY_OFF)
    db = sqlite_file(store.tracking_uri)
    if db is None:
        check_reachable(store.tracking_uri)
        return _ensure_experiment(store)
    db.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(db.parent / ".create.lock", timeout=300):  # two runs starting at once
        if not db.exists():
            _create_database(db, store)
        known = _prepared_before(db, store)
        if known is not None:
            return known
        experiment_id = _ensure_experiment(store)
        _remember_prepared(db, store)
        return experiment_id


def prepared(store: Store) -> bool:
    """Whether :func:`prepare` has nothing left to do that needs MLflow: an embedded store
    this MLflow version prepared before, whose experiment exists."""
    db = sqlite_file(store.tracking_uri)
    return db is not None and db.is_file() and _prepared_before(db, store) is not None


def prepare_from(fields: dict[str, Any]) -> None:
    """:func:`prepare` of ``Store(**fields)``: what a process forked for it runs."""
    prepare(Store(**fields))


PREPARED = ".prepared.json"


def _mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


def _schema_and_experiment(db: Path, name: str) -> tuple[str | None, str | None]:
    """The store's schema revision and the active experiment called ``name``, read directly."""
    import sqlite3

    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        row = connection.execute("SELECT experiment_id FROM experiments WHERE name = ? AND "
                                 "lifecycle_stage = 'active'", (name,)).fetchone()
    finally:
        connection.close()
    return (revision[0] if revision else None), (str(row[0]) if row else None)


def _prepared_before(db: Path, store: Store) -> str | None:
    """The experiment id, when this MLflow version already prepared this store (schema
    revision unchanged) and the experiment exists: then MLflow, 3-7 s to import and open the
    store, is not needed before the first stage."""
    import json
    import sqlite3

    try:
        remembered = json.loads((db.parent / PREPARED).read_text(encoding="utf-8"))
        revision, experiment_id = _schema_and_experiment(db, store.experiment)
    except (OSError, ValueError, sqlite3.Error):
        return None
    if experiment_id is None or remembered.get("revision") != revision or \
            remembered.get("mlflow") != _mlflow_version():
        return None
    return experiment_id


def _remember_prepared(db: Path, store: Store) -> None:
    import sqlite3

    from workbench.atomic import write_json

    try:
        revision, _ = _schema_and_experiment(db, store.experiment)
    except sqlite3.Error:
        return
    write_json(db.parent / PREPARED, {"mlflow": _mlflow_version(), "revision": revision})


def _create_database(db: Path, store: Store) -> None:
    """Build a new SQLite store beside ``db`` and move it into place complete."""
    for stale in db.parent.glob(f".{db.name}.*.creating*"):  # left by a killed creation
        stale.unlink()
    building = db.parent / f".{db.name}.{os.getpid()}.creating"
    _schema_from_template(building)
    _ensure_experiment(Store(f"sqlite:///{building}", store.experiment,
                             store.artifact_location, store.embedded))
    fd = os.open(building, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(building, db)
    fsync_dir(db.parent)


def _template_path() -> Path:
    """Where an empty store with this MLflow version's schema is kept for new projects."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "workbench" / f"mlflow-{_mlflow_version()}-schema.db"


def _schema_from_template(building: Path) -> None:
    """Give a new store its schema by copying an empty store MLflow created earlier with the
    same version, instead of replaying MLflow's ~50 schema migrations (5-8 s). Without a usable
    template, MLflow creates the schema and the result becomes the template."""
    import shutil
    import sqlite3

    template = _template_path()
    try:
        if template.is_file() and _schema_and_experiment(template, "")[0]:
            shutil.copyfile(template, building)
            return
    except (OSError, sqlite3.Error):
        pass
    from workbench.registry.client import client_for

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    client_for(f"sqlite:///{building}").search_experiments(max_results=1)
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_name(f".{template.name}.{os.getpid()}")
        shutil.copyfile(building, partial)
        os.replace(partial, template)
    except OSError:
        pass  # no writable cache folder: every new store is created by MLflow


def registered_location(tracking_uri: str, name: str, version: str) -> str | None:
    """Where a registered version's files are, read straight from an embedded (SQLite) store
    as MLflow's own ``get_model_version_download_uri`` reads it (``storage_location``, else
    ``source``), so that approving a release needs no MLflow import; None for any other store,
    or when the row is not there (MLflow then says why)."""
    def read(connection: Any) -> Any:
        return connection.execute(
            "SELECT storage_location, source FROM model_versions WHERE name = ? AND "
            "version = ? AND current_stage != 'Deleted_Internal'",
            (name, int(version))).fetchone()

    row = _read_embedded(tracking_uri, read)
    return (row[0] or row[1]) if row and (row[0] or row[1]) else None


def _read_embedded(tracking_uri: str, read: Callable[[Any], Any]) -> Any:
    """``read(connection)`` on an embedded store's database opened read-only; None for any
    other store, a missing database, or an error."""
    import sqlite3

    db = sqlite_file(tracking_uri)
    if db is None or not db.is_file():
        return None
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return read(connection)
        finally:
            connection.close()
    except (sqlite3.Error, ValueError):
        return None


def alias_holder(tracking_uri: str, name: str, alias: str
                 ) -> tuple[str | None, dict[str, str]] | None:
    """(version ``alias`` points at or None, that version's tags), read straight from an
    embedded (SQLite) store as :func:`registered_location` reads, so that reviewing a release
    needs no MLflow import; None for any other store (ask MLflow then)."""
    def read(connection: Any) -> tuple[str | None, dict[str, str]]:
        row = connection.execute(
            "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
            (name, alias)).fetchone()
        tags = connection.execute(
            "SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?",
            (name, row[0])).fetchall() if row else []
        return (str(row[0]) if row else None), {str(k): str(v) for k, v in tags}

    found: tuple[str | None, dict[str, str]] | None = _read_embedded(tracking_uri, read)
    return found


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`StoreUnreachable` if an http(s) tracking URI refuses connections."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        source = "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") \
            else "configs/pipeline.yaml"
        where = "" if source.startswith("$") else "mlflow.tracking_uri"
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise StoreUnreachable([Problem(source, where, f"the MLflow tracking server "
                                        f"{tracking_uri} is unreachable ({reason}); start it, "
                                        f"correct the URI, or remove it to use the embedded "
                                        f"store")]) from None


def _ensure_experiment(store: Store) -> str:
    from workbench.registry.client import client_for

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # schema chatter
    client = client_for(store.tracking_uri)
    experiment = client.get_experiment_by_name(store.experiment)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":  # its runs must be loggable again
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return client.create_experiment(store.experiment, artifact_location=store.artifact_location)


def connect() -> Store:
    """For notebooks: point MLflow at the project's store and experiment, wherever we run.

    Works the same under ``workbench run`` (which sets the environment), plain papermill and
    an interactive JupyterLab session (which find the project from the working directory).
    """
    import mlflow

    from workbench.config import load_config
    from workbench.project import find_project
    from workbench.registry.secret_guard import install

    project = find_project()
    config = load_config(project.configs)
    install(config.pipeline.secrets)  # secret values never reach MLflow params or tags
    store = resolve(project, config.pipeline.mlflow)
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or store.experiment
    store = Store(store.tracking_uri, experiment, store.artifact_location, store.embedded)
    prepare(store)
    mlflow.set_tracking_uri(store.tracking_uri)
    mlflow.set_experiment(store.experiment)
    return store
