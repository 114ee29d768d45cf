"""A model for the progressive-delivery tests, logged with MLflow's models-from-code: it
answers ``label = (first column > threshold) + offset`` per row, after sleeping ``sleep_s``,
or fails every request when ``fail`` is set (``model_config``)."""

import time

import mlflow
from mlflow.pyfunc import PythonModel


class ConfiguredModel(PythonModel):
    def load_context(self, context):  # noqa: ANN001, ANN201 - MLflow's interface
        self.config = dict(context.model_config or {})

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        if self.config.get("fail"):
            raise RuntimeError("this candidate fails on purpose")
        time.sleep(float(self.config.get("sleep_s", 0.0)))
        first = model_input.iloc[:, 0]
        threshold = float(self.config.get("threshold", 0.0))
        offset = int(self.config.get("offset", 0))
        return [int(value > threshold) + offset for value in first]


mlflow.models.set_model(ConfiguredModel())
