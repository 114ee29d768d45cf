"""``workbench drift``: what an environment's endpoint was asked, against the baseline profile
of the version it serves; the result is a record of ``reports/drift/``, in the ledger."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from workbench.audit import journal
from workbench.clock import utc_now
from workbench.config import Config
from workbench.drift import PREDICTIONS, PROFILE_FILE, FeatureDrift, compare
from workbench.errors import WorkbenchError
from workbench.identity import Identity
from workbench.project import Project
from workbench.records import DriftRecord

DRIFT_DIR = "drift"


class DriftError(WorkbenchError, RuntimeError):
    """Nothing to compare: no endpoint, no baseline profile or no inference log."""


@dataclass(frozen=True)
class DriftReport:
    record: DriftRecord
    results: list[FeatureDrift]
    policy: dict[str, Any]  # the environment's drift policy, as judged

    @property
    def failing(self) -> bool:
        """Drifted, and the policy fails (or rolls back) on a breach; or the realised
        performance misses an objective."""
        performance = self.record.performance
        return (bool(self.record.drifted) and self.policy["on_breach"] != "warn") or \
            bool(performance and not performance["passed"])

    @property
    def rolls_back(self) -> bool:
        """Drifted, and the policy rolls the environment back on a breach (the monitor)."""
        return bool(self.record.drifted) and self.policy["on_breach"] == "rollback"

    def breaches(self) -> list[dict[str, Any]]:
        """The drifted features as monitor breaches (none when the policy only warns)."""
        if not self.failing:
            return []
        return [{"metric": f"drift of {r.feature}", "statistic": r.statistic,
                 "observed": r.value, "threshold": r.threshold}
                for r in self.results if r.drifted]

    def describe(self) -> str:
        head = (f"{self.record.environment}: {self.record.model} v{self.record.version}, "
                f"{self.record.requests} logged requests ({self.record.rows} rows) against "
                f"the training baseline")
        lines = [head] + [f"  {r.describe()}" for r in self.results]
        verdict = (f"drift in {', '.join(self.record.drifted)}" if self.record.drifted
                   else "no drift")
        performance = self.record.performance
        if performance:
            lines.append(f"realised performance on {performance['labelled_rows']} labelled "
                         f"rows of {performance['labels']} labels: " + ", ".join(
                             f"{k} {v:.4g}" for k, v in performance["metrics"].items()))
            lines += [f"  {v['metric']}: {'pass' if v['passed'] else 'FAIL'}: {v['message']}"
                      for v in performance["objectives"]]
        return "\n".join([*lines, f"{verdict} (record #{self.record.seq}, reports/drift/)"])


def baseline_profile(tracking_uri: str, model: str, version: str) -> dict[str, Any]:
    """The baseline profile stored with a registered version's files."""
    from workbench.governance.bundle import version_location

    location = version_location(tracking_uri, model, version)
    parsed = urlparse(location)
    local = Path(unquote(parsed.path)) / PROFILE_FILE
    if parsed.scheme in ("", "file") and local.is_file():
        return dict(json.loads(local.read_text(encoding="utf-8")))
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="workbench-drift-") as folder:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model}/{version}/{PROFILE_FILE}", dst_path=folder)
        except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds for "absent"
            raise DriftError(f"{model} v{version} has no baseline profile ({PROFILE_FILE}): "
                             f"it was logged before drift baselines, or not with "
                             f"wb.log_sklearn_model ({exc})") from None
        return dict(json.loads(Path(path).read_text(encoding="utf-8")))


def served_frame(lines: list[dict[str, Any]]) -> tuple[Any, list[Any]]:
    """The logged requests as one DataFrame of inputs, and the predictions row by row."""
    import pandas as pd

    frames = [pd.DataFrame(line["rows"], columns=line["columns"]) for line in lines
              if line.get("rows")]
    predictions: list[Any] = []
    for line in lines:
        found = line.get("predictions") or []
        predictions += found if len(found) == len(line.get("rows") or []) else \
            [None] * len(line.get("rows") or [])
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return frame, predictions


def _key(value: Any) -> str:
    """An id as text, the same whether JSON or a file gave it as 12, 12.0 or "12"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def realised_performance(frame: Any, predictions: list[Any], labels: Any, id_column: str,
                         label_column: str, task: str, objectives: list[Any]
                         ) -> dict[str, Any]:
    """The served predictions joined on ``id_column`` with the outcomes that arrived later
    (``labels``, a DataFrame), scored with the evaluation's metrics and judged against the
    environment's ``objectives`` (absolute bounds: there is no champion to compare with)."""
    import pandas as pd
    from sklearn import metrics as skm

    from workbench.objectives import check

    for name, where in ((id_column, "the logged requests"), (id_column, "the labels"),
                        (label_column, "the labels")):
        columns = frame.columns if where == "the logged requests" else labels.columns
        if name not in columns:
            raise DriftError(f"no column {name!r} in {where} (columns: "
                             f"{', '.join(map(str, list(columns)[:20]))})")
    served = pd.DataFrame({"id": frame[id_column].map(_key), "predicted": predictions})
    truth = pd.DataFrame({"id": labels[id_column].map(_key), "actual": labels[label_column]})
    joined = served.dropna(subset=["predicted"]).drop_duplicates("id", keep="last").merge(
        truth.drop_duplicates("id", keep="last"), on="id")
    if joined.empty:
        raise DriftError(f"none of the {len(truth)} labels matches a logged request by "
                         f"{id_column!r}")
    actual, predicted = joined["actual"], joined["predicted"]
    if task == "classification":
        found = {"accuracy": skm.accuracy_score(actual.astype(str), predicted.astype(str)),
                 "f1_macro": skm.f1_score(actual.astype(str), predicted.astype(str),
                                          average="macro")}
        found["score"] = found["accuracy"]
    else:
        found = {"rmse": skm.root_mean_squared_error(actual, predicted),
                 "mae": skm.mean_absolute_error(actual, predicted),
                 "r2": skm.r2_score(actual, predicted) if len(joined) > 1 else float("nan")}
        found["score"] = found["r2"]
    metrics = {name: round(float(value), 6) for name, value in found.items()}
    verdicts = [v.as_dict() for v in check(objectives, metrics)]
    return {"labelled_rows": len(joined), "labels": len(truth), "metrics": metrics,
            "objectives": verdicts, "passed": all(v["passed"] for v in verdicts)}


def check_drift(project: Project, config: Config, environment: str, actor: Identity, *,
                since: float = 0.0, version: str | None = None, labels: Any = None,
                id_column: str | None = None, label_column: str | None = None
                ) -> DriftReport:
    """Compare what ``environment`` logged since ``since`` with the served version's baseline
    (``version`` given: that version's log); with ``labels`` (a DataFrame of outcomes that
    arrived later), also the realised performance against the environment's objectives;
    record the result in the ledger."""
    import pandas as pd

    from workbench.deploy import serving
    from workbench.deploy.inference_log import read_lines
    from workbench.deploy.local import inference_folder, server_key
    from workbench.registry.store import resolve

    if environment not in config.environments:
        raise DriftError(f"unknown environment {environment!r}; configs/environments.yaml "
                         f"defines {', '.join(config.environments)}")
    settings = config.environments[environment]
    if version is None:
        running = serving(project, config, environment)
        if running is None:
            raise DriftError(f"nothing is deployed to {environment}; pass --version to check "
                             f"what an earlier version logged")
        version = str(running.version)
    folder = inference_folder(project, server_key(project, config, environment))
    lines = list(read_lines(folder, version, since))
    if not lines:
        hint = "" if settings.inference_log else (
            f"; {environment} logs no requests: declare inference_log in "
            f"configs/environments.yaml")
        raise DriftError(f"no logged requests of {config.model.name} v{version} on "
                         f"{environment} in {folder}{hint}")
    model = config.model.name
    baseline = baseline_profile(resolve(project, config.pipeline.mlflow).tracking_uri, model,
                                version)
    frame, predictions = served_frame(lines)
    features = frame[[c for c in frame.columns if c in baseline["columns"]]]
    for column in features.columns:  # JSON numbers may come as text; categories stay text
        numeric = pd.to_numeric(features[column], errors="coerce")
        if numeric.notna().sum() == features[column].notna().sum():
            features = features.assign(**{column: numeric})
    known = [p for p in predictions if p is not None]
    policy = settings.drift
    results = compare(baseline, features, known if PREDICTIONS in baseline["columns"] and known
                      else None, ks_threshold=policy.ks_threshold,
                      psi_threshold=policy.psi_threshold, min_rows=policy.min_rows)
    drifted = [r.feature for r in results if r.drifted]
    performance = None
    if labels is not None:
        model_keys = config.model.model_dump()
        joined_on = id_column or (settings.inference_log.id_column
                                  if settings.inference_log else None)
        outcome = label_column or model_keys.get("target")
        if not joined_on or not outcome:
            raise DriftError("labels need the column that identifies a row (--id-column, or "
                             "inference_log.id_column) and the outcome's column "
                             "(--label-column, or model.yaml's target)")
        performance = realised_performance(
            frame, predictions, labels, joined_on, str(outcome),
            str(model_keys.get("task") or "regression"),
            [o.model_dump() for o in settings.objectives])
    record = DriftRecord(environment=environment, model=model, version=version, since=since,
                         requests=len(lines), rows=len(frame),
                         features=[r.as_dict() for r in results], drifted=drifted,
                         actor=actor, time=utc_now(), performance=performance)
    body = record.body()
    entry, _ = journal.append_recorded(
        project.reports, project.reports / DRIFT_DIR, body, event="drift",
        actor=actor.model_dump(), run_id=None,
        ledger_data=lambda _stored: {**{k: body[k] for k in (
            "environment", "model", "version", "requests", "rows", "drifted")},
            **({"performance_passed": performance["passed"]} if performance else {})})
    return DriftReport(DriftRecord.model_validate(entry), results, policy.model_dump())
