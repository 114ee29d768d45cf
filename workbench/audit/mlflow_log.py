"""Each stage's archived notebook (and its HTML) as artifacts of that stage's MLflow run.

The stage's run is the one it reports as ``mlflow_run_id``; a stage without one gets a small
run of its own named ``<run-id>/<stage>``. Either is tagged with the ledger sequence number of
the stage's entry, so MLflow and the audit trail point at each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.pipeline import state


def log_stage(record: state.RunRecord, name: str, files: list[Path], ledger_seq: int
              ) -> str:
    """Log ``files`` under ``workbench/<stage>/``; return the MLflow run id used."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=record.tracking_uri)
    entry = record.stages[name]
    run_id = entry.outputs.get("mlflow_run_id")
    created = not (isinstance(run_id, str) and run_id)
    if created:
        experiment = client.get_experiment_by_name(record.experiment)
        if experiment is None:
            return ""
        tags: dict[str, Any] = {"workbench.run_id": record.id, "workbench.stage": name,
                                "workbench.status": entry.status}
        run = client.create_run(experiment.experiment_id, run_name=f"{record.id}/{name}",
                                tags=tags)
        run_id = run.info.run_id
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=f"workbench/{name}")
    client.set_tag(run_id, "workbench.ledger_seq", str(ledger_seq))
    client.set_tag(run_id, f"workbench.ledger_seq.{name}", str(ledger_seq))
    if created:
        client.set_terminated(run_id, "FINISHED" if entry.status == "succeeded" else "FAILED")
    return run_id
