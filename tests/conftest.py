"""Shared fixtures: throw-away projects on disk and a way to run the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def notebook(*cells: str, parameters: str = "") -> dict[str, Any]:
    """A minimal notebook: a ``parameters`` cell, then one code cell per string."""
    def cell(source: str, tags: list[str] | None = None) -> dict[str, Any]:
        return {"cell_type": "code", "execution_count": None, "id": f"c{abs(hash(source))}",
                "metadata": {"tags": tags or []}, "outputs": [], "source": source}

    return {
        "cells": [cell(parameters, ["parameters"]), *(cell(c) for c in cells)],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}, "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


@dataclass
class Workspace:
    """A project folder plus helpers to edit its configs and run the CLI against it."""

    root: Path

    def write_yaml(self, name: str, data: Any) -> None:
        (self.root / "configs" / name).write_text(yaml.safe_dump(data, sort_keys=False))

    def read_yaml(self, name: str) -> Any:
        return yaml.safe_load((self.root / "configs" / name).read_text())

    def write_notebook(self, name: str, nb: dict[str, Any]) -> None:
        path = self.root / "notebooks" / f"{name}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(nb))

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("MLFLOW_TRACKING_URI", "WORKBENCH_PROJECT")}
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        return subprocess.run([sys.executable, "-m", "workbench", "--project", str(self.root),
                               *args], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=self.root)

    def runs(self) -> list[Path]:
        folder = self.root / "reports" / "runs"
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def run_record(self) -> dict[str, Any]:
        return json.loads((self.runs()[-1] / "run.json").read_text())


def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WORKBENCH_PROJECT", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def release_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """A copy of this repository's configs and notebooks, deploying on free ports."""
    _isolated_env(monkeypatch)
    root = tmp_path / "project"
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    workspace = Workspace(root)
    environments = workspace.read_yaml("environments.yaml")
    for env in environments["environments"].values():
        env["deploy"]["port"] = free_port()
    workspace.write_yaml("environments.yaml", environments)
    yield workspace
    for env in environments["environments"]:
        if (root / ".workbench" / "servers" / f"{env}.json").exists():
            workspace.cli("stop", env)


MINI_ENVIRONMENTS = {"environments": {"dev": {"deploy": {"target": "local", "port": 5999},
                                              "thresholds": {"min_score": 0.5}}}}
MINI_MODEL = {"name": "mini", "dataset": "iris",
              "estimator": "sklearn.linear_model.LogisticRegression"}


@pytest.fixture
def mini_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """An empty project with small environment and model configs; tests add the pipeline."""
    _isolated_env(monkeypatch)
    root = tmp_path / "mini"
    (root / "configs").mkdir(parents=True)
    workspace = Workspace(root)
    workspace.write_yaml("environments.yaml", MINI_ENVIRONMENTS)
    workspace.write_yaml("model.yaml", MINI_MODEL)
    return workspace
