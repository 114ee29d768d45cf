"""Where a workbench project lives on disk and where its generated state goes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import WorkbenchError

PROJECT_ENV_VAR = "WORKBENCH_PROJECT"
MARKER = Path("configs") / "pipeline.yaml"
PIPELINES_MARKER = Path("configs") / "pipelines"  # a project of several pipelines


def is_project(root: Path) -> bool:
    """``root`` holds ``configs/pipeline.yaml`` or a ``configs/pipelines/`` folder."""
    return (root / MARKER).is_file() or (root / PIPELINES_MARKER).is_dir()


class ProjectNotFoundError(WorkbenchError, RuntimeError):
    """No ``configs/pipeline.yaml`` above the starting directory."""


@dataclass(frozen=True)
class Project:
    """The fixed layout of a project and the derived locations of generated state."""

    root: Path

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def runs(self) -> Path:
        return self.reports / "runs"

    @property
    def local_state(self) -> Path:
        """``.workbench/``: this machine's mutable state (the embedded MLflow store, model
        servers, the stage cache's index, staged notebooks); git-ignored."""
        return self.root / ".workbench"

    @property
    def servers(self) -> Path:
        return self.local_state / "servers"

    @property
    def mlflow_dir(self) -> Path:
        return self.local_state / "mlflow"


def find_project(start: Path | None = None) -> Project:
    """Locate the project: ``start`` or ``$WORKBENCH_PROJECT`` or the current folder, upwards."""
    explicit = os.environ.get(PROJECT_ENV_VAR)
    if start is None and explicit:
        root = Path(explicit).resolve()
        if not is_project(root):
            raise ProjectNotFoundError(f"{PROJECT_ENV_VAR}={explicit}: no {MARKER} there")
        return Project(root)
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if is_project(candidate):
            return Project(candidate)
    raise ProjectNotFoundError(f"no {MARKER} in {here} or any parent directory; start a "
                               f"project with `workbench init DIR` (`workbench init --list` "
                               f"shows the templates)")
