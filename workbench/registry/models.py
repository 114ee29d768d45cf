"""Model logging, lookup and registration: the MLflow calls the stage notebooks make."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.registry.client import client_for, version_holding

PIP_REQUIREMENTS_PACKAGES = ("mlflow", "scikit-learn", "pandas", "numpy", "skops")


def pip_requirements() -> list[str]:
    """Pinned requirements of the serving environment, stated explicitly.

    MLflow's automatic inference re-imports the model in a subprocess (4-6 s per model here).
    """
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in PIP_REQUIREMENTS_PACKAGES]


def log_sklearn_model(model: Any, X_sample: Any, name: str = "model") -> Any:
    """Log a fitted scikit-learn-style model with signature, input example and skops trusted
    types; the project's own modules it is made of travel with it (MLflow ``code_paths``), so
    evaluation, model servers and rollbacks load it without the project on their path. Pass
    the training inputs as ``X_sample``: their profile is the model's drift baseline."""
    import mlflow.sklearn
    import skops.io
    from mlflow.models import infer_signature

    from workbench.estimators import project_code_paths

    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    predicted = model.predict(X_sample)
    signature = infer_signature(X_sample, predicted)
    info = mlflow.sklearn.log_model(
        model, name=name, signature=signature, input_example=X_sample.head(3),
        pip_requirements=pip_requirements(), skops_trusted_types=trusted,
        code_paths=project_code_paths(model) or None,
    )
    log_baseline_profile(info.model_id, X_sample, predicted)
    return info


def log_baseline_profile(model_id: str, features: Any, predictions: Any) -> None:
    """Store the baseline profile of the model's training inputs and predictions among its
    own files (``workbench_profile.json``): drift checks compare served requests with it, and
    it is part of the model's artifact digest in every release bundle."""
    import json
    import tempfile
    from pathlib import Path

    from mlflow import MlflowClient

    from workbench.drift import PROFILE_FILE, profile

    with tempfile.TemporaryDirectory(prefix="workbench-profile-") as folder:
        path = Path(folder) / PROFILE_FILE
        path.write_text(json.dumps(profile(features, predictions)), encoding="utf-8")
        MlflowClient().log_model_artifact(model_id, str(path))


def latest_model_uri(experiment: str) -> str:
    """The most recently logged model of ``experiment`` (for notebooks run on their own)."""
    import mlflow

    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no experiment {experiment!r} yet: run train first")
    newest_first: list[dict[str, Any]] = [{"field_name": "creation_timestamp",
                                           "ascending": False}]
    models = mlflow.search_logged_models(
        experiment_ids=[found.experiment_id], order_by=newest_first,
        max_results=1, output_format="list",
    )
    if not models:
        raise LookupError(f"no model logged in experiment {experiment!r} yet: run train first")
    return models[0].model_uri


@dataclass(frozen=True)
class Champion:
    version: str
    model_uri: str


def champion(model_name: str, alias: str) -> Champion | None:
    """The version holding ``alias`` (the current champion), if the model and alias exist."""
    version = version_holding(client_for(), model_name, alias)
    if version is None:
        return None
    return Champion(version, f"models:/{model_name}/{version}")


def register(model_uri: str, model_name: str, tags: dict[str, str], alias: str
             ) -> tuple[str, str | None]:
    """Register ``model_uri`` as a new version, tag it and point ``alias`` at it.

    Returns the new version and the version the alias held before (None if it held none).
    """
    import mlflow

    from workbench.registry.aliases import move_alias

    version = str(mlflow.register_model(model_uri, model_name, tags=tags).version)
    previous = move_alias(client_for(), mlflow.get_tracking_uri(), model_name, alias, version)
    return version, previous


def version_by_alias(model_name: str, alias: str) -> str:
    """The version ``alias`` names; a LookupError saying so when it names none."""
    version = version_holding(client_for(), model_name, alias)
    if version is None:
        raise LookupError(f"no version of {model_name} holds alias {alias!r}")
    return version


def _source_run_id(model_uri: str) -> str:
    """The MLflow run that logged ``model_uri`` (``models:/m-...`` or ``runs:/<id>/...``)."""
    import mlflow

    if model_uri.startswith("runs:/"):
        return model_uri.removeprefix("runs:/").split("/", 1)[0]
    run_id = mlflow.get_logged_model(model_uri.removeprefix("models:/")).source_run_id
    if run_id is None:
        raise LookupError(f"{model_uri} was not logged by a run")
    return str(run_id)


def record_evaluation(model_uri: str, metrics: dict[str, float], passed: bool) -> str:
    """Attach evaluation metrics and the verdict to the run that trained ``model_uri``."""
    run_id = _source_run_id(model_uri)
    client = client_for()
    for name, value in metrics.items():
        client.log_metric(run_id, f"eval_{name}", value)
    client.set_tag(run_id, "workbench.evaluation.passed", str(passed).lower())
    return run_id


def recorded_evaluation(model_uri: str) -> tuple[bool, dict[str, float]]:
    """The verdict and metrics ``record_evaluation`` stored for ``model_uri``."""
    run = client_for().get_run(_source_run_id(model_uri))
    verdict = run.data.tags.get("workbench.evaluation.passed")
    if verdict is None:
        raise LookupError(f"{model_uri} has not been evaluated yet: run evaluate first")
    metrics = {k.removeprefix("eval_"): v for k, v in run.data.metrics.items()
               if k.startswith("eval_")}
    return verdict == "true", metrics
