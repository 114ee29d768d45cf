"""The release bundle: a digest over exactly what a gate releases.

Parts: the model version and a digest of its artifact files, the executed notebooks of every
stage upstream of the gate (the evaluation among them), the config snapshot, the git commit and
the resolved parameters of those stages. An approval binds to the digest; change any part and
earlier approvals stop counting.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel

from workbench import run_record
from workbench.config import Config
from workbench.digests import canonical, file_sha256
from workbench.errors import WorkbenchError
from workbench.project import Project
from workbench.stage_graph import ancestors


class BundleError(WorkbenchError, RuntimeError):
    """The bundle cannot be computed (no model version yet, archive missing, ...)."""


class Bundle(BaseModel):
    environment: str
    digest: str
    parts: dict[str, Any]


def tree_digest(root: Path) -> str:
    """sha256 over every file below ``root``: relative path and content digest, sorted."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    listing = [(p.relative_to(root).as_posix(), file_sha256(p)) for p in files]
    return hashlib.sha256(canonical(listing)).hexdigest()


def model_artifact_digest(tracking_uri: str, name: str, version: str) -> str:
    """Digest of a registered version's artifact files (read in place when they are local:
    on the embedded store without importing MLflow at all)."""
    uri = version_location(tracking_uri, name, version)
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") and Path(unquote(parsed.path)).is_dir():
        return tree_digest(Path(unquote(parsed.path)))
    import mlflow

    with tempfile.TemporaryDirectory(prefix="workbench-bundle-") as tmp:
        mlflow.set_tracking_uri(tracking_uri)
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                    dst_path=tmp)
        return tree_digest(Path(local))


def version_location(tracking_uri: str, name: str, version: str) -> str:
    """Where a registered version's files are (what MLflow's download URI is)."""
    from workbench.registry.store import registered_location

    found = registered_location(tracking_uri, name, version)
    if found is not None:
        return found
    from mlflow.exceptions import MlflowException

    from workbench.registry.client import client_for

    try:
        return str(client_for(tracking_uri).get_model_version_download_uri(name, version))
    except MlflowException as exc:
        raise BundleError(f"model {name} v{version} is not in the registry at "
                          f"{tracking_uri}: {exc.message}") from exc


def gate_stage(config: Config, environment: str) -> str:
    found = [s.name for s in config.pipeline.stages if s.gate == environment]
    if not found:
        raise BundleError(f"the pipeline has no gate for {environment!r}")
    return found[0]


def compute(project: Project, config: Config, record: run_record.RunRecord, environment: str
            ) -> Bundle:
    """The bundle the gate for ``environment`` would release for this run, as of now."""
    gate = gate_stage(config, environment)
    if record.model_version is None:
        raise BundleError(f"run {record.id} has no registered model version yet; the stages "
                          f"before gate {gate!r} must succeed first")
    upstream = [name for name in record.stages if name in ancestors(config)[gate]]
    notebooks: dict[str, str] = {}
    parameters: dict[str, Any] = {}
    for name in upstream:
        entry = record.stages[name]
        path = run_record.notebook_path(project, record, name)
        if entry.status not in run_record.DONE or path is None:
            raise BundleError(f"stage {name!r} (before gate {gate!r}) has not succeeded")
        if not path.is_file():
            raise BundleError(f"{path} is missing from the archive")
        notebooks[path.name] = file_sha256(path)
        parameters[name] = entry.parameters
    model = record.model_version
    parts = {
        "environment": environment,
        "model": {"name": model.name, "version": model.version,
                  "artifact_digest": model_artifact_digest(record.tracking_uri, model.name,
                                                           model.version)},
        "notebooks": notebooks,
        "config_hash": record.config_hash,
        "git_commit": record.git_commit,
        "parameters": parameters,
    }
    return Bundle(environment=environment, parts=parts,
                  digest=hashlib.sha256(canonical(parts)).hexdigest())
