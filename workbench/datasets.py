"""The data a project trains on: a file of the project (CSV, Parquet) or a set that ships inside
scikit-learn, split the same way in every stage.

The target column and the task are the project's declarations (``configs/model.yaml``), never
read off the data: a file's task must be declared. A scikit-learn bundled set documents its own
task (``diabetes`` is a regression set), which stands in when none is declared.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

TASKS = ("classification", "regression")
# scikit-learn's bundled sets (``sklearn.datasets.load_<name>``) and the task each documents
BUNDLED = {"iris": "classification", "wine": "classification",
           "breast_cancer": "classification", "digits": "classification",
           "diabetes": "regression"}


def _read_csv(path: Path) -> Any:
    import pandas

    return pandas.read_csv(path)


def _read_parquet(path: Path) -> Any:
    import pandas

    return pandas.read_parquet(path)


# how a file is read, by its suffix; add a reader here to take another format
READERS: dict[str, Callable[[Path], Any]] = {".csv": _read_csv, ".parquet": _read_parquet,
                                             ".pq": _read_parquet}


class DataError(WorkbenchError, ValueError):
    """The configured data cannot be read as declared: the message says which key to fix."""


def task_of(dataset: str, task: str = "") -> str:
    """The task of ``dataset``: ``task`` when declared (``classification`` or ``regression``),
    else the task a scikit-learn bundled set documents; a file's task must be declared."""
    if task:
        if task not in TASKS:
            raise DataError(f"task {task!r} is not one of {', '.join(TASKS)} "
                            f"(configs/model.yaml: task)")
        return task
    if dataset in BUNDLED:
        return BUNDLED[dataset]
    raise DataError(f"declare the task of {dataset!r} in configs/model.yaml (task: "
                    f"classification or task: regression): it is never guessed from the data")


def project_root(start: Path | None = None) -> Path:
    """The project this code runs in (a stage's working folder, or a notebook's folder opened
    by hand in JupyterLab): where relative data paths and the project's own modules live."""
    from workbench.project import ProjectNotFoundError, find_project

    try:
        return find_project(start).root
    except ProjectNotFoundError:  # outside a project: the working folder
        return Path.cwd()


def resolve_path(dataset: str, root: Path | None = None) -> Path:
    """``dataset`` as a file: absolute, or relative to the project root."""
    path = Path(dataset).expanduser()
    return path if path.is_absolute() else (root or project_root()) / path


def load_frame(dataset: str, target: str = "target") -> tuple[Any, Any]:
    """``(X, y)`` as pandas objects: ``dataset`` is a CSV or Parquet file of the project (its
    ``target`` column is ``y``, every other column a feature) or a scikit-learn bundled set."""
    if dataset in BUNDLED:
        from sklearn import datasets

        loader = getattr(datasets, f"load_{dataset}")
        return loader(return_X_y=True, as_frame=True)
    path = resolve_path(dataset)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"dataset {dataset!r} is neither a scikit-learn bundled set "
                        f"({', '.join(BUNDLED)}) nor a file this reads "
                        f"({', '.join(READERS)}) (configs/model.yaml: dataset)")
    if not path.is_file():
        raise DataError(f"dataset {dataset!r}: no file {path} (configs/model.yaml: dataset)")
    frame = reader(path)
    if target not in frame.columns:
        shown = ", ".join(map(str, list(frame.columns)[:20]))
        raise DataError(f"dataset {dataset!r} has no column {target!r} to predict; its "
                        f"columns: {shown} (configs/model.yaml: target)")
    return frame.drop(columns=[target]), frame[target]


def load_split(dataset: str, test_size: float, random_state: int, *, target: str = "target",
               task: str = "") -> tuple[Any, Any, Any, Any]:
    """``(X_train, X_test, y_train, y_test)`` as pandas objects, the same rows in every stage
    given the same arguments; stratified by the target for a classification task."""
    from sklearn.model_selection import train_test_split

    kind = task_of(dataset, task)
    X, y = load_frame(dataset, target)
    stratify = y if kind == "classification" else None
    return train_test_split(X, y, test_size=test_size, random_state=random_state,
                            stratify=stratify)
