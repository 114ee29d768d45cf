"""The model a project trains: any importable class or factory, the project's own modules
included, built from the hyperparameters of ``configs/model.yaml`` (any YAML values).

A model made from a class of the project's own code carries that code with it when it is
logged (:func:`project_code_paths`), so the evaluation, the model server and a later rollback
load it without the project on their path.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from workbench.datasets import project_root
from workbench.errors import WorkbenchError


class EstimatorError(WorkbenchError, ValueError):
    """The configured estimator cannot be imported or built: the message names it."""


def importable_project(root: Path | None = None) -> Path:
    """Put the project root first on ``sys.path`` (its modules import as in a stage, also
    when a notebook is opened by hand in its own folder); the root."""
    found = (root or project_root()).resolve()
    if str(found) not in sys.path:
        sys.path.insert(0, str(found))
    return found


def import_object(spec: str) -> Any:
    """The object ``spec`` names: ``package.module.Name`` or ``package.module:Name``."""
    module_name, _, attribute = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not module_name or not attribute:
        raise EstimatorError(f"estimator {spec!r}: expected module.Name, e.g. "
                             f"sklearn.linear_model.Ridge or my_project.models.MyModel")
    importable_project()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EstimatorError(f"estimator {spec!r}: cannot import {module_name!r} ({exc}); "
                             f"a module of the project is imported from its root "
                             f"{project_root()}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise EstimatorError(f"estimator {spec!r}: module {module_name!r} has no "
                             f"{attribute!r}") from None


def _takes(factory: Any, name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def build_estimator(spec: str, hyperparameters: dict[str, Any] | None = None,
                    random_state: int | None = None) -> Any:
    """``spec(**hyperparameters)``; ``random_state`` is passed too when the class or factory
    takes one and the hyperparameters do not set it."""
    factory = import_object(spec)
    if not callable(factory):
        raise EstimatorError(f"estimator {spec!r} is a {type(factory).__name__}, not a class "
                             f"or factory")
    settings = dict(hyperparameters or {})
    if random_state is not None and "random_state" not in settings \
            and _takes(factory, "random_state"):
        settings["random_state"] = random_state
    try:
        return factory(**settings)
    except TypeError as exc:
        raise EstimatorError(f"estimator {spec!r} with hyperparameters {settings}: {exc} "
                             f"(configs/model.yaml: hyperparameters)") from exc


def _top_level_modules(model: Any) -> set[str]:
    """Top-level module names of the classes inside ``model`` (its own, its pipeline steps'
    and nested estimators', as far as their ``get_params`` or attributes show)."""
    names: set[str] = set()
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 4:
            return
        seen.add(id(obj))
        module = type(obj).__module__ or ""
        names.add(module.split(".")[0])
        children: Iterable[Any] = ()
        if hasattr(obj, "get_params"):
            try:
                children = obj.get_params(deep=False).values()
            except Exception:  # noqa: BLE001 - a foreign object's get_params
                children = ()
        elif isinstance(obj, (list, tuple)):
            children = obj
        for child in children:
            if isinstance(child, (list, tuple)) or hasattr(child, "fit"):
                visit(child, depth + 1)

    visit(model, 0)
    return names


def project_code_paths(model: Any, root: Path | None = None) -> list[str]:
    """Files and packages of the project (below ``root``) whose classes ``model`` is made of:
    what MLflow's ``code_paths`` must carry so that the model loads anywhere."""
    base = (root or project_root()).resolve()
    paths: list[str] = []
    for name in sorted(_top_level_modules(model)):
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None)
        if not origin:
            continue
        where = Path(origin).resolve()
        if where.name == "__init__.py":
            where = where.parent
        if where.is_relative_to(base) and ".venv" not in where.relative_to(base).parts \
                and "site-packages" not in where.parts:
            paths.append(str(where))
    return paths
