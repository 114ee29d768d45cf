"""Shared state in CI: when the project names a team archive (``archive.url`` in
configs/pipeline.yaml) and a tracking server (``mlflow.tracking_uri``, or the
``MLFLOW_TRACKING_URI`` secret), the generated jobs pass nothing between them. Each workbench
command pulls the archive into ``reports/`` at its start and pushes what it writes, and MLflow
is the server: a job needs the checkout, the install and credentials, as secrets named here
(names only; their values live in the CI's secret store).

Which credentials a store needs comes from its URL's scheme, one row per scheme in
:data:`ARCHIVES` and :data:`TRACKING`: a plugin's store scheme adds its row there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from workbench.config import Config

TRACKING_URI = "MLFLOW_TRACKING_URI"


@dataclass(frozen=True)
class Secret:
    """An environment variable a job gets from the CI's secret store, under the same name."""

    name: str
    purpose: str
    required: bool = True  # optional ones may stay unset (an empty value where the CI says so)
    file: bool = False  # a key file's content: the job's variable holds the file's path
    unless: str | None = None  # not needed when ``archive.<unless>`` is configured


@dataclass(frozen=True)
class Scheme:
    """What a store URL's scheme needs in a CI job."""

    secrets: tuple[Secret, ...] = ()
    extra: str | None = None  # the workbench extra that installs its client ...
    package: str | None = None  # ... and the package it brings
    local: bool = False  # a path on the runner: every runner must share it


# the archive's store, by URL scheme
ARCHIVES: dict[str, Scheme] = {
    "s3": Scheme((Secret("AWS_ACCESS_KEY_ID", "access key of the archive's bucket"),
                  Secret("AWS_SECRET_ACCESS_KEY", "its secret key"),
                  Secret("AWS_ENDPOINT_URL_S3", "an S3-compatible server (unset: AWS S3)",
                         required=False, unless="endpoint_url")),
                 extra="s3", package="boto3"),
    "gs": Scheme((Secret("GOOGLE_APPLICATION_CREDENTIALS",
                         "a service account's JSON key for the archive's bucket", file=True),)),
    "file": Scheme(local=True),
}
# MLflow's tracking store, by URI scheme (its URI itself: config or the MLFLOW_TRACKING_URI
# secret)
_BASIC = (Secret("MLFLOW_TRACKING_USERNAME", "the tracking server's user", required=False),
          Secret("MLFLOW_TRACKING_PASSWORD", "and password", required=False))
TRACKING: dict[str, Scheme] = {
    "http": Scheme(_BASIC),
    "https": Scheme(_BASIC),
    "databricks": Scheme((Secret("DATABRICKS_HOST", "the Databricks workspace URL"),
                          Secret("DATABRICKS_TOKEN", "a Databricks access token"))),
    "sqlite": Scheme(local=True),
    "file": Scheme(local=True),
    "": Scheme(local=True),  # a plain path
}


@dataclass(frozen=True)
class Shared:
    """The state the jobs share instead of passing artifacts, and the secrets they need."""

    archive: str  # the archive's URL
    tracking: str  # where MLflow's tracking URI comes from (for the reader)
    secrets: tuple[Secret, ...]
    extra: str | None = None  # the workbench extra the archive's store needs
    package: str | None = None

    @property
    def required(self) -> tuple[Secret, ...]:
        return tuple(s for s in self.secrets if s.required)

    @property
    def optional(self) -> tuple[Secret, ...]:
        return tuple(s for s in self.secrets if not s.required)


def scheme(url: str) -> str:
    """A URL's scheme, lower case ('' for a plain path)."""
    head, sep, _ = url.partition("://")
    if sep:
        return head.lower()
    head, sep, _ = url.partition(":")
    return head.lower() if sep and len(head) > 1 else ""


def shared_state(config: Config, tracking_uri_secret: bool = False
                 ) -> tuple[Shared | None, list[str]]:
    """The shared state of the project's CI jobs (None: they pass ``reports/`` and the
    embedded MLflow store as artifacts, as without an archive), and notes for the user."""
    pipeline = config.pipeline
    url, uri = pipeline.archive.url, pipeline.mlflow.tracking_uri
    notes: list[str] = []
    if url is None:
        return None, notes
    if uri is None and not tracking_uri_secret:
        notes.append(f"archive.url is {url} but MLflow has no tracking URI: the jobs still "
                     f"pass reports/ and the MLflow store as artifacts. Set mlflow.tracking_uri "
                     f"in configs/pipeline.yaml, or pass --tracking-uri-secret to read it from "
                     f"the {TRACKING_URI} secret, and they share the archive and MLflow instead")
        return None, notes
    archive = ARCHIVES.get(scheme(url))
    secrets: list[Secret] = []
    if archive is None:
        notes.append(f"archive.url {url}: workbench knows no credentials for "
                     f"{scheme(url)}:// stores; give the jobs the ones your store reads")
        archive = Scheme()
    elif archive.local:
        notes.append(f"archive.url {url} is a path on the runner: every job must run where "
                     f"that path is shared (self-hosted runners or agents)")
    secrets += [s for s in archive.secrets
                if not (s.unless and getattr(pipeline.archive, s.unless, None))]
    if tracking_uri_secret:
        secrets.append(Secret(TRACKING_URI, "MLflow's tracking server URI"))
        tracking = f"the {TRACKING_URI} secret"
        secrets += TRACKING["https"].secrets
    else:
        uri = uri or ""
        # a URI's user and password, if a file holds them, are not repeated in the CI's files
        shown = re.sub(r"^([A-Za-z0-9+.-]+://)[^/@]*@", r"\1***@", uri)
        tracking = f"mlflow.tracking_uri ({shown})"
        store = TRACKING.get(scheme(uri), Scheme())
        if store.local:
            notes.append(f"mlflow.tracking_uri {uri} is on the runner's disk: jobs on other "
                         f"machines do not share it (use a tracking server, or a path every "
                         f"runner shares)")
        secrets += store.secrets
    secrets += [Secret(name, "read by the pipeline's stages (secrets: in pipeline.yaml)")
                for name in pipeline.secrets]
    secrets += [Secret(n.url_secret, f"the {n.kind} notification's URL")
                for n in pipeline.notifications]
    attestation = pipeline.attestation
    if attestation.public_key:
        secrets.append(Secret(attestation.private_key_env, "the attestation private key (PEM)",
                              required=attestation.required, file=True))
    unique = {s.name: s for s in reversed(secrets)}  # the first of a name wins
    ordered = tuple(unique[name] for name in dict.fromkeys(s.name for s in secrets))
    return Shared(url, tracking, ordered, archive.extra, archive.package), notes


# --- where each CI keeps its secrets ----------------------------------------------------------

WHERE = {
    "github": "GitHub repository secrets (Settings > Secrets and variables > Actions)",
    "gitlab": "GitLab CI/CD variables (Settings > CI/CD > Variables), masked",
    "jenkins": "Jenkins credentials (Manage Jenkins > Credentials), each with its name as ID",
}


def _kind(secret: Secret, system: str) -> str:
    if system == "gitlab":
        return " (a File variable)" if secret.file else ""
    if system == "jenkins":
        return " (Secret file)" if secret.file else " (Secret text)"
    return " (the file's content)" if secret.file else ""


def instructions(shared: Shared, system: str) -> list[str]:
    """What to set, for ``system``: names and purposes, never values."""
    lines = [f"Shared state: the jobs pass no artifacts; each workbench command pulls the "
             f"archive {shared.archive} into reports/ and pushes what it writes; MLflow from "
             f"{shared.tracking}."]
    if not shared.secrets:
        return [*lines, "Secrets: none."]
    lines.append(f"Set these {WHERE[system]}:")
    lines += [f"  {s.name}{_kind(s, system)}: {s.purpose}" for s in shared.required]
    if shared.optional:
        unset = {"github": "empty when unset", "gitlab": "set them if needed",
                 "jenkins": "uncomment their lines in environment {} to bind them"}[system]
        lines.append(f"Optional ({unset}):")
        lines += [f"  {s.name}{_kind(s, system)}: {s.purpose}" for s in shared.optional]
    return lines
