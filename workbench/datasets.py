"""Datasets that ship inside scikit-learn, split the same way in every stage."""

from __future__ import annotations

from typing import Any

REGRESSION = {"diabetes"}


def task_of(dataset: str) -> str:
    """``"regression"`` or ``"classification"``: what kind of model ``dataset`` calls for."""
    return "regression" if dataset in REGRESSION else "classification"


def load_split(dataset: str, test_size: float, random_state: int) -> tuple[Any, Any, Any, Any]:
    """``(X_train, X_test, y_train, y_test)`` as pandas objects; stratified for classifiers."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    loader = getattr(datasets, f"load_{dataset}", None)
    if loader is None:
        raise ValueError(f"unknown dataset {dataset!r}: expected a scikit-learn load_* dataset")
    X, y = loader(return_X_y=True, as_frame=True)
    stratify = y if task_of(dataset) == "classification" else None
    return train_test_split(X, y, test_size=test_size, random_state=random_state,
                            stratify=stratify)
