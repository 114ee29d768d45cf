"""Register one version per model configuration of ``canary_model.py`` (MLflow models from
code) in a project's embedded store (for tests).

``python register_configured.py PROJECT '[{"sleep_s": 0.3}, {"fail": true}]'`` prints the new
versions as JSON, in that order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pandas as pd

from workbench.config import load_config
from workbench.project import Project
from workbench.registry import store as mlflow_store
from workbench.registry.models import pip_requirements

MODEL_FILE = Path(__file__).with_name("canary_model.py")


def main() -> None:
    project = Project(Path(sys.argv[1]))
    configurations = json.loads(sys.argv[2])
    config = load_config(project.configs)
    store = mlflow_store.resolve(project, config.pipeline.mlflow)
    experiment_id = mlflow_store.prepare(store)
    mlflow.set_tracking_uri(store.tracking_uri)
    example = pd.DataFrame({"x": [0.5, -0.5]})
    versions = []
    for settings in configurations:
        with mlflow.start_run(experiment_id=experiment_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_FILE),
                                           model_config=settings, input_example=example,
                                           registered_model_name=config.model.name,
                                           pip_requirements=pip_requirements())
            versions.append(str(info.registered_model_version))
    print(json.dumps(versions))


if __name__ == "__main__":
    main()
