"""Attestations: a signed in-toto statement for every gate promotion.

When a gate moves an environment's alias to a model version, the release gets an in-toto
Statement v1 (SLSA provenance v1 predicate) wrapped in a DSSE envelope (:mod:`dsse`) signed
with the project's key (:mod:`project_key`):

- ``subject``: every file of the model version's artifact, named by its path inside the
  artifact, with its sha256 (the files MLflow rewrites on load left out, as in the bundle);
- ``buildDefinition``: the pipeline, environment, model, config hash and a digest of the
  resolved parameters; the git commit, the configuration, each archived stage notebook before
  the gate and each project notebook the gate releases, with their digests;
- ``runDetails``: the builder, the run id, when the run started and when the alias moved;
- ``workbench_release`` (an extension field, SLSA's ``<vendor>_<name>`` form): the gate, the
  bundle digest, the approvals it counted, the alias move and its ledger entry (seq, hash).

The envelope is archived once, read-only, as ``reports/runs/<run-id>/attestation-NNNN-<env>
-v<version>.dsse.json`` (NNNN: the alias move's record), recorded in the ledger (event
``attestation``, naming the file with its digest and the statement's digest, so ``workbench
audit verify`` re-hashes it), and logged to MLflow as an artifact of the model version's run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import __version__, run_record
from workbench.atomic import write_new
from workbench.audit import ledger
from workbench.config import Config
from workbench.digests import canonical
from workbench.errors import EXIT_FAILED, WorkbenchError
from workbench.governance import dsse
from workbench.governance.bundle import Bundle, listing_digest, model_files, tree_files
from workbench.governance.project_key import SigningKey
from workbench.identity import Identity
from workbench.project import Project
from workbench.records import ApprovalRecord
from workbench.run_record import RunRecord

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:workbench:build-type:gate-promotion:v1"
BUILDER_PREFIX = "urn:workbench:builder:"
EXTENSION = "workbench_release"
PREFIX = "attestation-"
SUFFIX = ".dsse.json"
EVENT = "attestation"


class AttestationError(WorkbenchError, RuntimeError):
    """An attestation cannot be made (the model's files changed since the bundle was
    computed, the alias move is not in the ledger)."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class Attested:
    path: Path  # the archived envelope
    statement_sha256: str  # of the signed payload
    signed: bool
    keyid: str | None
    ledger_seq: int


def rfc3339(stamp: str) -> str:
    """A workbench timestamp (``...+00:00``) as in-toto writes one (``...Z``)."""
    return stamp.replace("+00:00", "Z")


def attestation_path(project: Project, run_id: str, move_seq: int, environment: str,
                     version: str) -> Path:
    return (run_record.run_dir(project, run_id)
            / f"{PREFIX}{move_seq:04d}-{environment}-v{version}{SUFFIX}")


def _ledger_position(project: Project, run_id: str, move_seq: int) -> dict[str, Any]:
    """The ledger entry that recorded the alias move's record: its seq and hash."""
    from workbench.governance.promotion import PROMOTIONS_DIR

    name = f"runs/{run_id}/{PROMOTIONS_DIR}/{move_seq:04d}.json"
    index = ledger.index(project.reports, {run_id})
    recorded = index.recorded(name)
    entry = next((e for e in index.of_run(run_id, "alias_move")
                  if recorded is not None and e.get("seq") == recorded[1]), None)
    if entry is None:
        raise AttestationError(f"reports/{name}: no ledger entry records this alias move")
    return {"seq": entry["seq"], "hash": entry["hash"], "event": "alias_move",
            "ledger": ledger.LEDGER_FILE}


def _approvals(records: list[ApprovalRecord], seqs: list[int]) -> list[dict[str, Any]]:
    """The approvals the gate counted, as the statement lists them."""
    counted = []
    for record in records:
        if record.seq not in seqs:
            continue
        item = {"seq": record.seq, "approver": record.approver.name,
                "source": record.approver.source, "time": rfc3339(record.time),
                "bundleDigest": record.bundle_digest, "via": record.via,
                "policyVersion": record.policy_version}
        signature = record.model_dump(mode="json").get("signature")
        if isinstance(signature, dict) and signature.get("fingerprint"):
            item["signatureFingerprint"] = signature["fingerprint"]
        counted.append(item)
    return counted


def _dependencies(project: Project, config: Config, record: RunRecord, bundle: Bundle
                  ) -> list[dict[str, Any]]:
    """The git commit, the configuration, the archived notebooks of the stages before the
    gate and the project notebooks it releases, each with its digest."""
    found: list[dict[str, Any]] = []
    if record.git_commit != "unknown":
        found.append({"name": "git", "digest": {"gitCommit": record.git_commit},
                      "annotations": {"dirty": record.git_dirty}})
    found.append({"name": "config", "uri": "configs/",
                  "digest": {"sha256": record.config_hash},
                  "annotations": {"files": sorted(record.config)}})
    notebooks: dict[str, str] = bundle.parts["notebooks"]
    for stage in bundle.parts["parameters"]:
        path = run_record.notebook_path(project, record, stage)
        if path is None or path.name not in notebooks:
            continue
        found.append({"name": f"stage:{stage}",
                      "uri": path.relative_to(project.root).as_posix(),
                      "digest": {"sha256": notebooks[path.name]},
                      "annotations": {"notebook": config.stage(stage).notebook,
                                      "executed": True}})
    for notebook, digest in bundle.parts.get("released", {}).items():
        if digest != "missing":
            found.append({"name": f"released:{notebook}", "uri": notebook,
                          "digest": {"sha256": digest}, "annotations": {"released": True}})
    return found


def build_statement(project: Project, config: Config, record: RunRecord, verdict: Any,
                    bundle: Bundle, move: dict[str, Any], position: dict[str, Any],
                    files: list[tuple[str, str]], approvals: list[ApprovalRecord]
                    ) -> dict[str, Any]:
    """The in-toto statement of one gate promotion (``verdict``: the gate's
    :class:`~workbench.governance.approvals.Verdict`; ``files``: the model's artifact files
    and their digests; ``move``: the alias move's record)."""
    model = bundle.parts["model"]
    environment = verdict.environment
    parameters = hashlib.sha256(canonical(bundle.parts["parameters"])).hexdigest()
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in files],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "pipeline": record.pipeline, "environment": environment,
                    "model": {"name": model["name"], "version": model["version"]},
                    "configHash": record.config_hash,
                    "parametersDigest": {"sha256": parameters},
                },
                "internalParameters": {"executor": record.executor},
                "resolvedDependencies": _dependencies(project, config, record, bundle),
            },
            "runDetails": {
                "builder": {"id": BUILDER_PREFIX + record.executor,
                            "version": {"workbench": __version__}},
                "metadata": {"invocationId": record.id,
                             "startedOn": rfc3339(record.created),
                             "finishedOn": rfc3339(move["time"])},
            },
            EXTENSION: {
                "environment": environment,
                "gate": verdict.gate,
                "model": {"name": model["name"], "version": model["version"],
                          "uri": f"models:/{model['name']}/{model['version']}",
                          "artifactDigest": model["artifact_digest"]},
                "bundleDigest": verdict.bundle_digest,
                "policyVersion": verdict.policy_version,
                "quorum": verdict.quorum,
                "approvals": _approvals(approvals, verdict.approval_seqs),
                "aliasMove": {"seq": move["seq"], "digest": move["digest"],
                              "alias": move["alias"], "from": move["from_version"],
                              "to": move["to_version"], "actor": move["actor"]["name"],
                              "time": rfc3339(move["time"])},
                "ledger": position,
            },
        },
    }


def artifact_files(record: RunRecord, bundle: Bundle) -> list[tuple[str, str]]:
    """The model version's artifact files and digests, as the bundle the approvals bound
    to saw them (:class:`AttestationError` if they changed since)."""
    model = bundle.parts["model"]
    with model_files(record.tracking_uri, model["name"], model["version"]) as root:
        files = tree_files(root)
    if listing_digest(files) != model["artifact_digest"]:
        raise AttestationError(f"model {model['name']} v{model['version']}: its artifact files "
                               f"changed since the release bundle was computed; not attested")
    return files


def attest(project: Project, config: Config, record: RunRecord, verdict: Any, bundle: Bundle,
           move: dict[str, Any], actor: Identity, key: SigningKey | None,
           files: list[tuple[str, str]]) -> Attested:
    """Build, sign (when ``key``), archive and ledger the attestation of the alias move
    ``move`` the gate's ``verdict`` allowed (``files``: :func:`artifact_files`, taken before
    the alias moved)."""
    from workbench.governance.approvals import read_records

    position = _ledger_position(project, record.id, move["seq"])
    statement = build_statement(project, config, record, verdict, bundle, move, position,
                                files, read_records(project, record.id))
    payload = canonical(statement)
    envelope = dsse.seal(payload, key.key if key else None)
    model = bundle.parts["model"]
    path = attestation_path(project, record.id, move["seq"], verdict.environment,
                            model["version"])
    write_new(path, envelope.to_bytes(), mode=0o444)
    digest = hashlib.sha256(payload).hexdigest()
    keyid = key.keyid if key else None
    entry = ledger.append(project.reports, EVENT, actor=actor.model_dump(), run_id=record.id,
                          files=[path],
                          data={"environment": verdict.environment, "model": model["name"],
                                "version": model["version"], "statement_sha256": digest,
                                "alias_move": position["seq"], "signed": key is not None,
                                "keyid": keyid})
    return Attested(path=path, statement_sha256=digest, signed=key is not None, keyid=keyid,
                    ledger_seq=entry["seq"])


def log_to_mlflow(record: RunRecord, environment: str, attested: Attested) -> str:
    """Log the envelope as an artifact (``workbench/attestations/``) of the MLflow run that
    made the model version (or of a small run of its own), and tag the version with the
    statement's digest; return the MLflow run id."""
    from workbench.registry.client import client_for

    if record.model_version is None:
        raise AttestationError(f"run {record.id} has no model version")
    name, version = record.model_version.name, record.model_version.version
    client = client_for(record.tracking_uri)
    run_id = client.get_model_version(name, version).run_id
    created = not run_id
    if created:
        experiment = client.get_experiment_by_name(record.experiment)
        if experiment is None:
            raise AttestationError(f"no MLflow experiment {record.experiment!r}")
        run_id = client.create_run(experiment.experiment_id,
                                   run_name=f"{record.id}/attestation-{environment}",
                                   tags={"workbench.run_id": record.id}).info.run_id
    client.log_artifact(run_id, str(attested.path), artifact_path="workbench/attestations")
    client.set_model_version_tag(name, version, f"workbench.{environment}.attestation",
                                 f"sha256:{attested.statement_sha256}")
    if created:
        client.set_terminated(run_id, "FINISHED")
    return str(run_id)
