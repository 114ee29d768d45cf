"""The project's own data and model (no kernels): CSV and Parquet files with a declared target
and task, any importable estimator class or factory (the project's own modules included), and
the code a logged model must carry."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from workbench.config import load_config
from workbench.datasets import DataError, load_frame, load_split, task_of
from workbench.estimators import EstimatorError, build_estimator, project_code_paths
from workbench.scaffold import init_project

MODULE = "wbtest_estimators"  # the project's own package in these tests


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project (minimal template) holding a CSV, a Parquet copy and a package of its own;
    the working folder is its notebooks/ folder, as when a notebook is opened by hand."""
    root = tmp_path / "own"
    init_project(root, "minimal")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"rooms": rng.integers(1, 8, 120), "area": rng.normal(80, 20, 120)})
    frame["price"] = 30 * frame["rooms"] + 2 * frame["area"] + rng.normal(0, 5, 120)
    frame["label"] = np.where(frame["price"] > frame["price"].median(), "high", "low")
    (root / "data").mkdir()
    frame.to_csv(root / "data" / "houses.csv", index=False)
    frame.to_parquet(root / "data" / "houses.parquet")
    package = root / MODULE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "from sklearn.linear_model import Ridge\n\n\n"
        "class ShiftedRidge(Ridge):\n"
        "    def __init__(self, alpha=1.0, shift=0.0, random_state=None):\n"
        "        super().__init__(alpha=alpha, random_state=random_state)\n"
        "        self.shift = shift\n\n"
        "    def predict(self, X):\n"
        "        return super().predict(X) + self.shift\n\n\n"
        "def make_ridge(alpha=1.0):\n"
        "    return ShiftedRidge(alpha=alpha)\n")
    monkeypatch.chdir(root / "notebooks")
    monkeypatch.delenv("WORKBENCH_PROJECT", raising=False)
    yield root
    for name in [m for m in sys.modules if m == MODULE or m.startswith(f"{MODULE}.")]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if p != str(root.resolve())]


@pytest.mark.parametrize("file", ["data/houses.csv", "data/houses.parquet"])
def test_a_project_file_is_split_by_its_declared_target(project: Path, file: str) -> None:
    X_train, X_test, y_train, y_test = load_split(file, 0.25, 42, target="price",
                                                  task="regression")
    assert list(X_train.columns) == ["rooms", "area", "label"]  # the target is not a feature
    assert (len(X_train), len(X_test)) == (90, 30)
    assert y_train.name == "price"
    again = load_split(file, 0.25, 42, target="price", task="regression")[1]
    assert again.index.tolist() == X_test.index.tolist()  # the same rows in every stage


def test_a_classification_split_is_stratified(project: Path) -> None:
    _, _, y_train, y_test = load_split("data/houses.csv", 0.5, 1, target="label",
                                       task="classification")
    assert y_train.value_counts().to_dict() == y_test.value_counts().to_dict()


def test_an_absolute_path_reads_outside_the_working_folder(project: Path) -> None:
    X, y = load_frame(str(project / "data" / "houses.csv"), "price")
    assert len(X) == len(y) == 120


def test_the_task_is_declared_never_guessed(project: Path) -> None:
    with pytest.raises(DataError, match=r"declare the task of 'data/houses.csv' in "
                                        r"configs/model.yaml"):
        load_split("data/houses.csv", 0.25, 42, target="price")
    with pytest.raises(DataError, match="task 'forecast' is not one of classification, "
                                        "regression"):
        task_of("data/houses.csv", "forecast")
    # a bundled set documents its own task; a declaration still wins
    assert task_of("diabetes") == "regression" and task_of("iris") == "classification"
    assert task_of("diabetes", "classification") == "classification"


def test_data_mistakes_name_the_key_to_fix(project: Path) -> None:
    with pytest.raises(DataError, match=r"no file .*data/missing.csv \(configs/model.yaml: "
                                        r"dataset\)"):
        load_frame("data/missing.csv", "price")
    with pytest.raises(DataError, match=r"has no column 'cost' to predict; its columns: rooms, "
                                        r"area, price, label \(configs/model.yaml: target\)"):
        load_frame("data/houses.csv", "cost")
    with pytest.raises(DataError, match=r"neither a scikit-learn bundled set .* nor a file "
                                        r"this reads \(.csv, .parquet, .pq\)"):
        load_frame("mnist", "target")


def test_a_bundled_set_still_loads(project: Path) -> None:
    X_train, X_test, _, _ = load_split("iris", 0.2, 0, task="classification")
    assert (len(X_train), len(X_test)) == (120, 30)


def test_the_projects_own_class_and_factory_build(project: Path) -> None:
    model = build_estimator(f"{MODULE}.models.ShiftedRidge", {"alpha": 0.5, "shift": 3.0}, 7)
    assert type(model).__module__ == f"{MODULE}.models"
    assert (model.alpha, model.shift, model.random_state) == (0.5, 3.0, 7)
    made = build_estimator(f"{MODULE}.models:make_ridge", {"alpha": 2.0}, 7)
    assert made.alpha == 2.0 and made.random_state is None  # the factory takes no random_state
    mlp = build_estimator("sklearn.neural_network.MLPRegressor",
                          {"hidden_layer_sizes": [10, 10], "max_iter": 50}, 3)
    assert mlp.hidden_layer_sizes == [10, 10] and mlp.random_state == 3
    kept = build_estimator("sklearn.linear_model.Ridge", {"random_state": 1}, 9)
    assert kept.random_state == 1  # set by the hyperparameters: not overridden


def test_estimator_mistakes_are_named(project: Path) -> None:
    with pytest.raises(EstimatorError, match="cannot import 'no_such_package'"):
        build_estimator("no_such_package.Model")
    with pytest.raises(EstimatorError, match=f"module '{MODULE}.models' has no 'Nope'"):
        build_estimator(f"{MODULE}.models.Nope")
    with pytest.raises(EstimatorError, match=r"expected module.Name"):
        build_estimator("Ridge")
    with pytest.raises(EstimatorError, match=r"hyperparameters \{'depth': 3\}: .*unexpected "
                                             r"keyword argument 'depth'.*configs/model.yaml"):
        build_estimator("sklearn.linear_model.Ridge", {"depth": 3})


def test_a_model_of_project_classes_carries_their_package(project: Path) -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    own = build_estimator(f"{MODULE}.models.ShiftedRidge")
    assert project_code_paths(own) == [str((project / MODULE).resolve())]
    nested = make_pipeline(StandardScaler(), own)
    assert project_code_paths(nested) == [str((project / MODULE).resolve())]
    assert project_code_paths(build_estimator("sklearn.linear_model.Ridge")) == []


def test_model_yaml_is_the_projects_own_but_its_name(project: Path) -> None:
    model_file = project / "configs" / "model.yaml"
    data = yaml.safe_load(model_file.read_text())
    data.update({"dataset": "data/houses.csv", "target": "price", "task": "regression",
                 "estimator": "xgboost.XGBRegressor",
                 "hyperparameters": {"max_depth": 4, "layers": [10, 10],
                                     "callbacks": {"early_stopping": 5}},
                 "features": {"drop": ["label"]}})
    model_file.write_text(yaml.safe_dump(data))
    config = load_config(project / "configs")
    dumped = config.model.model_dump()
    assert dumped["hyperparameters"]["layers"] == [10, 10]
    assert dumped["features"] == {"drop": ["label"]}
    assert config.model.name == data["name"]
