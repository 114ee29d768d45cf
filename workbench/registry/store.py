"""Which MLflow tracking store a project uses, and making sure it exists before stages run.

Precedence: ``$MLFLOW_TRACKING_URI`` (CI overrides), then ``mlflow.tracking_uri`` in
``configs/pipeline.yaml`` (a team's server), then the embedded default: a SQLite file and an
artifact folder under ``.workbench/mlflow/`` in the project, addressed by absolute URI.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from workbench.config import MlflowSettings
from workbench.project import Project

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


def prepare(store: Store) -> str:
    """Create the database schema and the experiment once, in this process; return its id.

    Concurrent first creation of an MLflow SQLite store can corrupt it, so the runner calls this
    before any kernel starts; later callers find everything in place.
    """
    os.environ.update(TELEMETRY_OFF)
    if not store.embedded:
        return _ensure_experiment(store)
    db = Path(store.tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(db.parent / ".create.lock", timeout=300):  # two runs starting at once
        return _ensure_experiment(store)


def _ensure_experiment(store: Store) -> str:
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # schema chatter
    client = MlflowClient(tracking_uri=store.tracking_uri)
    experiment = client.get_experiment_by_name(store.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(store.experiment, artifact_location=store.artifact_location)


def connect() -> Store:
    """For notebooks: point MLflow at the project's store and experiment, wherever we run.

    Works the same under ``workbench run`` (which sets the environment), plain papermill and
    an interactive JupyterLab session (which find the project from the working directory).
    """
    import mlflow

    from workbench.audit.mlflow_guard import install
    from workbench.config import load_config
    from workbench.project import find_project

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
