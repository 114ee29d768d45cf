"""The release bundle: a digest over exactly what a gate releases.

Parts: the model version and a digest of its artifact files, the executed notebooks of every
stage upstream of the gate (the evaluation among them, each checked against the digest the
ledger recorded), the config snapshot (its digest recomputed), the git commit, the resolved
parameters of those stages, and the notebooks of the stages the gate releases (up to the next
gate: what will run on this approval). An approval binds to the digest; change any part and
earlier approvals stop counting.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel

from workbench import run_record
from workbench.config import Config, sources_digest
from workbench.digests import canonical, file_sha256
from workbench.errors import WorkbenchError
from workbench.project import Project
from workbench.stage_graph import ancestors

if TYPE_CHECKING:
    from workbench.governance.trust import Trusted


class BundleError(WorkbenchError, RuntimeError):
    """The bundle cannot be computed (no model version yet, archive missing, ...)."""


class Bundle(BaseModel):
    environment: str
    digest: str
    parts: dict[str, Any]

    @property
    def evidence(self) -> dict[str, str]:
        """What a reviewer approves, file by file: the archived notebooks of the stages before
        the gate and the project notebooks of the stages it releases (digests)."""
        return {**self.parts["notebooks"], **self.parts.get("released", {})}


# Written into a model's own folder by MLflow whenever a registered version is loaded
# (``models_artifact_repo``): which name and version loaded it last, not part of the model.
REWRITTEN_ON_LOAD = frozenset({"registered_model_meta"})


def tree_files(root: Path) -> list[tuple[str, str]]:
    """(relative path, sha256) of every file below ``root``, sorted by path (the files MLflow
    rewrites on load left out)."""
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and p.relative_to(root).as_posix() not in REWRITTEN_ON_LOAD)
    return [(p.relative_to(root).as_posix(), file_sha256(p)) for p in files]


def listing_digest(listing: list[tuple[str, str]]) -> str:
    """The digest of a :func:`tree_files` listing: what a bundle's ``artifact_digest`` is."""
    return hashlib.sha256(canonical(listing)).hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over every file below ``root``: relative path and content digest, sorted (the
    files MLflow rewrites on load left out)."""
    return listing_digest(tree_files(root))


@contextmanager
def model_files(tracking_uri: str, name: str, version: str) -> Iterator[Path]:
    """A local folder holding a registered version's artifact files: the files themselves
    when they are local (on the embedded store without importing MLflow at all), else a
    download into a temporary folder, removed afterwards."""
    uri = version_location(tracking_uri, name, version)
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") and Path(unquote(parsed.path)).is_dir():
        yield Path(unquote(parsed.path))
        return
    import mlflow

    with tempfile.TemporaryDirectory(prefix="workbench-bundle-") as tmp:
        mlflow.set_tracking_uri(tracking_uri)
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                    dst_path=tmp)
        yield Path(local)


def model_artifact_digest(tracking_uri: str, name: str, version: str) -> str:
    """Digest of a registered version's artifact files (see :func:`model_files`)."""
    with model_files(tracking_uri, name, version) as root:
        return tree_digest(root)


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


def released_stages(config: Config, gate: str) -> list[str]:
    """The stages an approval at ``gate`` lets run: those after it, up to (not including) the
    next gates, in pipeline order."""
    upstream = ancestors(config)
    later_gates = {name for name, ups in upstream.items()
                   if gate in ups and config.stage(name).gate}
    return [s.name for s in config.pipeline.stages
            if gate in upstream[s.name] and not s.gate
            and not later_gates & upstream[s.name]]


def _released_files(project: Project, config: Config, gate: str) -> dict[str, str]:
    """The project files the released stages will execute (their notebooks), by path, with
    their digest as they are now: what an approval covers besides the evidence."""
    found: dict[str, str] = {}
    for name in released_stages(config, gate):
        notebook = config.stage(name).notebook
        path = project.root / notebook
        found[notebook] = file_sha256(path) if path.is_file() else "missing"
    return found


def _data_contracts(config: Config, record: run_record.RunRecord,
                    upstream: list[str]) -> dict[str, dict[str, str]]:
    """The data contracts checked before the gate (outputs with role ``data_validation``):
    stage -> the contract file and the digest of the text it was checked against."""
    found: dict[str, dict[str, str]] = {}
    for name in upstream:
        output = config.stage(name).roles.get("data_validation")
        value = record.stages[name].outputs.get(output) if output else None
        if isinstance(value, dict) and value.get("contract_digest"):
            found[name] = {"contract": str(value.get("contract", "")),
                           "digest": str(value["contract_digest"])}
    return found


def compute(project: Project, config: Config, record: run_record.RunRecord, environment: str,
            trust: Trusted) -> Bundle:
    """The bundle the gate for ``environment`` would release for this run, as of now: every
    part recomputed, every archived notebook checked against the digest the ledger recorded."""
    gate = gate_stage(config, environment)
    upstream = [name for name in record.stages if name in ancestors(config)[gate]]
    if record.model_version is None:
        unfinished = [n for n in upstream if record.stages[n].status not in run_record.DONE]
        if unfinished:
            raise BundleError(f"run {record.id} has no registered model version yet: stage "
                              f"{unfinished[0]!r} before gate {gate!r} has not succeeded")
        declaring = [n for n in upstream if "model_version" in config.stage(n).roles]
        raise BundleError(
            f"run {record.id} has no registered model version: every stage before gate "
            f"{gate!r} succeeded, but " + (
                f"stage {declaring[-1]!r} gave no value for its model version output "
                f"{config.stage(declaring[-1]).roles['model_version']!r}" if declaring else
                "none declares an output with `role: model_version` (README: output roles)"))
    notebooks: dict[str, str] = {}
    parameters: dict[str, Any] = {}
    for name in upstream:
        entry = record.stages[name]
        path = run_record.notebook_path(project, record, name)
        if entry.status not in run_record.DONE or path is None:
            raise BundleError(f"stage {name!r} (before gate {gate!r}) has not succeeded")
        if not path.is_file():
            raise BundleError(f"{path} is missing from the archive")
        trust.check_evidence(project, path)
        notebooks[path.name] = file_sha256(path)
        parameters[name] = entry.parameters
    model = record.model_version
    parts = {
        "environment": environment,
        "model": {"name": model.name, "version": model.version,
                  "artifact_digest": model_artifact_digest(record.tracking_uri, model.name,
                                                           model.version)},
        "notebooks": notebooks,
        "config_hash": sources_digest(config.sources),
        "git_commit": record.git_commit,
        "parameters": parameters,
        "released": _released_files(project, config, gate),
    }
    contracts = _data_contracts(config, record, upstream)
    if contracts:  # a part only when checked: earlier bundles keep their digests
        parts["data_contracts"] = contracts
    return Bundle(environment=environment, parts=parts,
                  digest=hashlib.sha256(canonical(parts)).hexdigest())
