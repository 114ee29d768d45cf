"""Content-addressed stage cache: reuse an earlier execution whose inputs were the same.

A stage's key is the SHA-256 of everything that decides what it computes:

- the notebook's bytes and the stage's declared outputs;
- its resolved parameters, except those taken from ``run.*`` (the run's id, commit and config
  digest are provenance, not inputs: a reused stage keeps the values of the run that executed
  it), and the content of every parameter that names a file of the project;
- the outputs of every stage upstream of it;
- the MLflow store and experiment it talks to;
- the environment: every installed distribution and version, the source of editable installs
  (this project's own package), the Python version and the kernel spec.

The index (``.workbench/cache/<key>.json``) only points at an archived execution; the run
record and the archive stay the truth. A hit is taken only if that run's record says the stage
succeeded and its archived notebook still has the digest recorded when it was indexed; anything
else is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from workbench import run_record
from workbench.atomic import write_json
from workbench.config import Ref, Stage
from workbench.digests import file_sha256
from workbench.events import StageRecorded
from workbench.execution.notebook_file import kernel_name

KEY_VERSION = 1
CACHE_DIR = "cache"
ENVIRONMENT_FILE = "environment.json"
SOURCE_SUFFIXES = (".py", ".pyi")


@dataclass(frozen=True)
class Hit:
    """An earlier execution to reuse."""

    run_id: str
    stage: str
    notebook: str
    sha256: str
    outputs: dict[str, Any]
    actor: Any = None  # who executed it (an Identity)


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def _site_signature() -> list[tuple[str, int]]:
    """Cheap fingerprint of the import path: installing or removing a distribution changes the
    modification time of the folder holding its ``.dist-info``."""
    signature = []
    for entry in sys.path:
        try:
            signature.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            continue
    return signature


def _distributions() -> tuple[list[str], list[Path]]:
    """``name==version`` of every installed distribution, and the package folders of editable
    ones (their code changes without a new version)."""
    import importlib.metadata as metadata
    from urllib.parse import unquote, urlparse

    names, editable = set(), []
    for dist in metadata.distributions():
        names.add(f"{(dist.metadata['Name'] or '').lower()}=={dist.version}")
        try:
            direct = json.loads(dist.read_text("direct_url.json") or "{}")
        except (OSError, ValueError):
            continue
        url = direct.get("url", "")
        if direct.get("dir_info", {}).get("editable") and url.startswith("file://"):
            source = Path(unquote(urlparse(url).path))
            packages = (dist.read_text("top_level.txt") or "").split()
            editable += [source / name for name in packages if (source / name).is_dir()]
    return sorted(names), editable


def _source_digest(folder: Path) -> str:
    """Digest of the Python sources in a package folder of an editable install."""
    digest = hashlib.sha256()
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if name.endswith(SOURCE_SUFFIXES):
                path = Path(directory, name)
                digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@lru_cache(maxsize=4)
def environment_digest(state_dir: Path) -> str:
    """Digest of the installed distributions (remembered in ``state_dir`` against the import
    path's signature, since listing them costs a few tenths of a second) plus the current source
    of editable installs (always re-read: editing this project's code changes the key)."""
    remembered = state_dir / CACHE_DIR / ENVIRONMENT_FILE
    signature = _site_signature()
    packages = editable = None
    try:
        saved = json.loads(remembered.read_text(encoding="utf-8"))
        if saved.get("signature") == [list(item) for item in signature]:
            packages, editable = saved["packages"], [Path(p) for p in saved["editable"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if packages is None or editable is None:
        names, editable = _distributions()
        packages = hashlib.sha256(_canonical(names)).hexdigest()
        write_json(remembered, {"signature": signature, "packages": packages,
                                "editable": [str(p) for p in editable]})
    sources = {str(folder): _source_digest(folder) for folder in editable if folder.is_dir()}
    return hashlib.sha256(_canonical({"python": sys.version, "packages": packages,
                                      "sources": sources})).hexdigest()


def _kernel_spec(notebook_text: str) -> dict[str, Any]:
    """The notebook's kernel and how it is launched (its interpreter is part of the
    environment)."""
    return _launch_spec(kernel_name(json.loads(notebook_text)))


@lru_cache(maxsize=16)
def _launch_spec(name: str) -> dict[str, Any]:
    """The kernel spec's argv and language, read from its ``kernel.json`` (jupyter_client's
    spec manager costs a tenth of a second to import); ipykernel's built-in spec otherwise."""
    from jupyter_core.paths import jupyter_path

    for folder in jupyter_path("kernels"):
        spec = Path(folder) / name / "kernel.json"
        try:
            data = json.loads(spec.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return {"name": name, "argv": data.get("argv"), "language": data.get("language")}
    native = [sys.executable, "-m", "ipykernel_launcher"] if name == "python3" else None
    return {"name": name, "argv": native}


def _file_inputs(value: Any, root: Path) -> dict[str, str]:
    """Digests of project files named by parameter values (a dataset path, say)."""
    found: dict[str, str] = {}
    if isinstance(value, str) and value and len(value) < 4096 and "\n" not in value:
        path = (root / value)
        try:
            inside = path.resolve().is_relative_to(root.resolve())
            if inside and path.is_file():
                found[value] = file_sha256(path)
        except (OSError, ValueError):
            pass
    elif isinstance(value, dict):
        for item in value.values():
            found.update(_file_inputs(item, root))
    elif isinstance(value, list):
        for item in value:
            found.update(_file_inputs(item, root))
    return found


def stage_key(stage: Stage, root: Path, state_dir: Path, parameters: dict[str, Any],
              upstream_outputs: dict[str, dict[str, Any]], tracking: dict[str, str]) -> str:
    """The cache key of ``stage`` with these resolved ``parameters`` (see the module doc)."""
    notebook = (root / stage.notebook).read_bytes()
    provenance = {name for name, value in stage.parameters.items()
                  if isinstance(value, Ref) and value.root == "run"}
    inputs = {name: value for name, value in parameters.items() if name not in provenance}
    material = {
        "version": KEY_VERSION,
        "stage": stage.name,
        "notebook": hashlib.sha256(notebook).hexdigest(),
        "kernel": _kernel_spec(notebook.decode("utf-8", errors="replace")),
        "outputs": stage.output_types,
        "parameters": inputs,
        "files": _file_inputs(inputs, root),
        "upstream": upstream_outputs,
        "tracking": tracking,
        "environment": environment_digest(state_dir),
    }
    return hashlib.sha256(_canonical(material)).hexdigest()


def _entry_path(state_dir: Path, key: str) -> Path:
    return state_dir / CACHE_DIR / f"{key}.json"


def remember(state_dir: Path, key: str, run_id: str, stage: str, archived: Path) -> None:
    """Index a successful execution under ``key``."""
    write_json(_entry_path(state_dir, key), {"key": key, "run_id": run_id, "stage": stage,
                                             "notebook": archived.name,
                                             "sha256": file_sha256(archived)})


def lookup(project: Any, key: str) -> Hit | None:
    """The indexed execution for ``key``, if its record and archived notebook are intact."""
    try:
        entry = json.loads(_entry_path(project.local_state, key).read_text(encoding="utf-8"))
        record = run_record.load(project, entry["run_id"])
        stage = record.stages[entry["stage"]]
        archived = run_record.run_dir(project, record.id) / entry["notebook"]
        if stage.status != "succeeded" or stage.notebook != entry["notebook"] \
                or stage.cache_key != key or file_sha256(archived) != entry["sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError, run_record.RunRecordError):
        return None
    return Hit(run_id=record.id, stage=entry["stage"], notebook=entry["notebook"],
               sha256=entry["sha256"], outputs=dict(stage.outputs), actor=stage.actor)


class CacheIndexer:
    """A run listener: indexes each stage that succeeded with a cache key, once it is
    recorded (see :mod:`workbench.events`)."""

    def on_stage_recorded(self, event: StageRecorded) -> None:
        entry = event.record.stages[event.stage]
        if entry.status == "succeeded" and entry.cache_key and event.archived is not None:
            remember(event.project.local_state, entry.cache_key, event.record.id, event.stage,
                     event.archived)
