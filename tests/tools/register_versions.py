"""Register N versions of a project's model in its embedded MLflow store (for tests).

``python register_versions.py PROJECT N``: version k is a logistic regression with C = k, so
each version is a distinct artifact; prints the versions as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
from sklearn.linear_model import LogisticRegression

from workbench.config import load_config
from workbench.datasets import load_split
from workbench.project import Project
from workbench.registry import store as mlflow_store
from workbench.registry.models import pip_requirements


def main() -> None:
    project = Project(Path(sys.argv[1]))
    count = int(sys.argv[2])
    config = load_config(project.configs)
    store = mlflow_store.resolve(project, config.pipeline.mlflow)
    experiment_id = mlflow_store.prepare(store)
    mlflow.set_tracking_uri(store.tracking_uri)
    X_train, X_test, y_train, _ = load_split(config.model.dataset, 0.25, 0)
    versions = []
    for k in range(1, count + 1):
        with mlflow.start_run(experiment_id=experiment_id):
            model = LogisticRegression(C=float(k), max_iter=5000).fit(X_train, y_train)
            info = mlflow.sklearn.log_model(model, name="model", input_example=X_test.head(2),
                                            registered_model_name=config.model.name,
                                            pip_requirements=pip_requirements())
            versions.append(str(info.registered_model_version))
    print(json.dumps(versions))


if __name__ == "__main__":
    main()
