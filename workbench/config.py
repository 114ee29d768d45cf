"""Configuration: pydantic models for the pipeline, environments and model, with friendly errors.

Three YAML files under ``configs/``:

- ``pipeline.yaml``: stages (notebook, parameters, upstream ``needs``, declared outputs, timeout)
  and the MLflow settings;
- ``environments.yaml``: dev/qa/prod with deploy target, port and the metric objectives a
  model must meet there (``objectives``, or the older ``thresholds`` on ``score``);
- ``model.yaml``: the registered model name, and the project's own keys (data, estimator,
  hyper-parameters...) that stages read;
- ``gates.yaml`` (optional): approver groups and the approval policy of each gated environment.

Every problem is reported as a :class:`Problem` naming the file, the key path and what was
expected; loading raises :class:`ConfigError` holding all of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)

from workbench.errors import WorkbenchError

PIPELINE_FILE = "pipeline.yaml"
ENVIRONMENTS_FILE = "environments.yaml"
MODEL_FILE = "model.yaml"
GATES_FILE = "gates.yaml"
SIGNERS_FILE = "allowed_signers"  # approvers' SSH keys, git's format (workbench.signatures)
CONFIG_FILES = (PIPELINE_FILE, ENVIRONMENTS_FILE, MODEL_FILE)
OPTIONAL_FILES = (GATES_FILE, SIGNERS_FILE)

OutputType = Literal["str", "int", "float", "bool", "list", "dict"]
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
REF_ROOTS = ("model", "env", "run")
RUN_FIELDS = ("id", "git_commit", "config_hash", "environment")
MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
# What the engine reads from a stage's outputs, by role (README: output roles). An output
# takes a role by declaring it (``version: {type: str, role: model_version}``), or by having
# the role's standard name (``STANDARD_NAMES``) when no output of its stage declares that role.
OutputRole = Literal["model_version", "trained_run", "metrics", "champion", "verdict",
                     "served_version", "endpoint", "alias_move", "load_test",
                     "data_validation"]
OUTPUT_ROLES: tuple[OutputRole, ...] = typing.get_args(OutputRole)
STANDARD_NAMES: dict[str, OutputRole] = {
    "model_version": "model_version",  # the registered model version (str): gates release it
    "mlflow_run_id": "trained_run",  # the MLflow run that trained the model: its trainer
    "metrics": "metrics",  # {name: number}: the evidence table, the run index, plots shown
    "champion": "champion",  # {name: number, "version": v}: the champion's, beside metrics
    "passed": "verdict",  # bool: the evaluation's verdict, shown with the metrics
    "served_version": "served_version",  # a deploy: the version now served
    "endpoint": "endpoint",  # a deploy: the URL it serves at
    "alias_move": "alias_move",  # a registry alias move: {"seq": ...} from the journal
    "data_validation": "data_validation",  # a data contract checked: {"contract_digest": ...}
}
# roles by which a stage reports a side effect: serving a model, moving a registry alias
SIDE_EFFECT_ROLES: frozenset[OutputRole] = frozenset({"served_version", "endpoint",
                                                      "alias_move"})


@dataclass(frozen=True)
class Problem:
    """One configuration mistake: where it is and what was expected."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class ConfigError(WorkbenchError):
    """The configuration is invalid; ``problems`` lists every mistake found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def user_message(self) -> str:
        count = len(self.problems)
        return (f"configuration invalid ({count} problem{'s' if count > 1 else ''}):\n"
                + "\n".join(f"  {p}" for p in self.problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Ref(Strict):
    """A parameter value taken from elsewhere: ``{from: train.model_uri}``."""

    source: str = Field(alias="from", pattern=r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")

    @property
    def root(self) -> str:
        return self.source.split(".", 1)[0]

    @property
    def keys(self) -> list[str]:
        return self.source.split(".")[1:]


# a literal list or mapping may hold references at any depth: ``[1, {from: run.id}]``
ParamValue = Ref | str | bool | int | float | list | dict | None
_REF = TypeAdapter(Ref)


def _read_refs(value: Any, loc: tuple[Any, ...], errors: list[Any]) -> Any:
    """``value`` with every ``{from: ...}`` mapping in it, at any depth, read as a :class:`Ref`;
    a bad one adds its errors to ``errors``, located at ``loc`` (its key path under
    ``parameters``), e.g. ``("hyperparameters", "alpha", "from")``."""
    if isinstance(value, dict) and "from" in value:
        try:
            return _REF.validate_python(value)
        except ValidationError as exc:
            errors += [{"type": e["type"], "loc": (*loc, *e["loc"]), "input": e["input"],
                        **({"ctx": e["ctx"]} if "ctx" in e else {})} for e in exc.errors()]
            return value
    if isinstance(value, dict):
        return {k: _read_refs(v, (*loc, k), errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_read_refs(v, (*loc, i), errors) for i, v in enumerate(value)]
    return value


# How a stage attempt can fail; each class has its own retry count (see :class:`Retry`).
FailureClass = Literal["startup", "kernel_died", "hang", "cell_timeout", "deadline",
                       "output_limit", "error"]
FAILURE_CLASSES: tuple[FailureClass, ...] = typing.get_args(FailureClass)
RetryCount = Annotated[int, Field(strict=True, ge=0, le=10)]
Seconds = Annotated[float, Field(gt=0)]


class Retry(Strict):
    """How many more attempts a stage gets after each class of failure (unset: inherit)."""

    startup: RetryCount | None = None  # the kernel did not start or answer in time
    kernel_died: RetryCount | None = None  # the kernel process died mid-run (e.g. OOM-killed)
    hang: RetryCount | None = None  # no output for ``hang_timeout`` seconds
    cell_timeout: RetryCount | None = None  # one cell ran longer than ``cell_timeout``
    deadline: RetryCount | None = None  # the whole stage ran longer than ``timeout``
    output_limit: RetryCount | None = None  # the cells output more than ``output_limit_mb``
    error: RetryCount | None = None  # a cell raised, or an output is missing or mistyped

    def merged(self, fallback: Retry) -> dict[str, int]:
        """Retries per class: this policy's value, else ``fallback``'s, else 0."""
        return {name: next((v for v in (getattr(self, name), getattr(fallback, name))
                            if v is not None), 0) for name in FAILURE_CLASSES}


class Output(Strict):
    """A declared output in its long form: ``{type: dict, role: metrics}``."""

    type: OutputType
    role: OutputRole | None = None


def _output_form(value: Any) -> str:
    return "long_form" if isinstance(value, dict | Output) else "short_form"


# an output is declared as its type (``score: float``) or as ``{type: ..., role: ...}``
OutputSpec = Annotated[Annotated[OutputType, Tag("short_form")]
                       | Annotated[Output, Tag("long_form")], Discriminator(_output_form)]


class Stage(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    notebook: str
    needs: list[str] = []
    parameters: dict[str, ParamValue] = {}
    outputs: dict[str, OutputSpec] = {}
    timeout: Seconds = 1800.0  # deadline of the whole stage
    startup_timeout: Seconds = 60.0  # the kernel must answer within this
    cell_timeout: Seconds | None = None  # bound on each cell (default: none)
    hang_timeout: Seconds | None = None  # no output for this long is a hang (default: off)
    # what the stage's cells may output in all (MB); more stops the stage, and the archived
    # notebook keeps a note in place of what was over
    output_limit_mb: Annotated[float, Field(gt=0, le=10_000)] = 50.0
    retry: Retry = Retry()  # per failure class; unset classes inherit the pipeline's
    environment: str | None = None  # env.* references resolve here (default: the run's)
    gate: str | None = None  # an approval gate for this environment (configs/gates.yaml)
    # reuse an earlier identical execution (README: stage cache); unset: yes, unless the stage
    # has a side effect (then true is an error: such a stage is never reused)
    cache: bool | None = None
    # modules a pre-warmed kernel imports before the stage runs (README: speed)
    preload: list[Annotated[str, Field(pattern=MODULE_PATTERN)]] = []

    @property
    def target_environment(self) -> str | None:
        """The environment this stage acts on, when it is not simply the run's."""
        return self.gate or self.environment

    @property
    def side_effect(self) -> str | None:
        """Why the stage acts on the world (and so is never reused from the cache), if it does:
        an approval gate, a stage acting on an environment (deploys, load tests, monitors), or
        one declaring a deploy or alias-move output."""
        if self.gate:
            return "it is an approval gate"
        if self.environment:
            return f"it acts on environment {self.environment!r}"
        found = sorted(name for role, name in self.roles.items() if role in SIDE_EFFECT_ROLES)
        if found:
            return f"it declares output {found[0]!r} (a deploy or a registry change)"
        return None

    @property
    def output_types(self) -> dict[str, OutputType]:
        """Each declared output's type."""
        return {name: spec.type if isinstance(spec, Output) else spec
                for name, spec in self.outputs.items()}

    @property
    def roles(self) -> dict[str, str]:
        """Role -> the output that plays it: declared roles, then standard names for the
        roles no output declares."""
        declared: dict[str, str] = {spec.role: name for name, spec in self.outputs.items()
                                    if isinstance(spec, Output) and spec.role}
        standard: dict[str, str] = {
            STANDARD_NAMES[name]: name for name, spec in self.outputs.items()
            if name in STANDARD_NAMES and not (isinstance(spec, Output) and spec.role)}
        return {**{r: n for r, n in standard.items() if r not in declared}, **declared}

    @property
    def cacheable(self) -> bool:
        return self.cache is not False and self.side_effect is None

    @field_validator("outputs")
    @classmethod
    def _one_output_a_role(cls, value: dict[str, OutputType | Output]
                           ) -> dict[str, OutputType | Output]:
        seen: dict[str, str] = {}
        for name, spec in value.items():
            if isinstance(spec, Output) and spec.role:
                if spec.role in seen:
                    raise ValueError(f"outputs {seen[spec.role]!r} and {name!r} both declare "
                                     f"role {spec.role!r}; one output plays a role")
                seen[spec.role] = name
        return value

    @field_validator("parameters", mode="before")
    @classmethod
    def _refs_first(cls, value: Any) -> Any:
        """Read ``{from: ...}`` mappings as references, at any depth of a literal list or
        mapping too; everything else as literals."""
        if not isinstance(value, dict):
            return value
        errors: list[Any] = []
        try:
            read = {k: _read_refs(v, (k,), errors) for k, v in value.items()}
        except RecursionError:
            raise ValueError("parameters are nested too deeply to read") from None
        if errors:
            raise ValidationError.from_exception_data("parameters", errors)
        return read


class MlflowSettings(Strict):
    experiment: str = Field(default="workbench", min_length=1)
    tracking_uri: str | None = None


SecretName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


NotifyEvent = Literal["run", "stage", "gate", "deploy", "rollback"]


class Notification(Strict):
    """A webhook told about release events; its URL comes from a secret, never a file."""

    kind: Literal["slack", "webhook"]
    url_secret: SecretName  # environment variable holding the webhook URL
    events: list[NotifyEvent] = ["run", "gate", "deploy", "rollback"]
    timeout: Annotated[float, Field(gt=0, le=60)] = 5.0


ATTESTATION_KEY_VAR = "WORKBENCH_ATTESTATION_KEY"


class Attestation(Strict):
    """The project's Ed25519 key that signs the attestation of every gate promotion
    (``workbench.governance.attestation``). The public half is a file in the project; the
    private half never is: an environment variable names the key file (outside the project,
    not readable by others) or holds the PEM text itself (then list the variable under
    ``secrets:``, so its value is redacted like any secret's)."""

    public_key: str | None = None  # path in the project, e.g. keys/attestation.pub
    private_key_env: SecretName = ATTESTATION_KEY_VAR
    # true: a gate promotion with no usable private key fails before the alias moves;
    # false: its attestation is written unsigned (and `attest verify` says so)
    required: bool = False

    @field_validator("public_key")
    @classmethod
    def _in_project(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith(("/", "~")) or ".." in Path(value).parts
                                  or not value.strip()):
            raise ValueError(f"public_key {value!r} must be a path inside the project, "
                             f"relative to its root (e.g. keys/attestation.pub)")
        return value

    @model_validator(mode="after")
    def _required_needs_key(self) -> Attestation:
        if self.required and self.public_key is None:
            raise ValueError("required: true needs public_key (the key signatures are "
                             "checked against); `workbench attest keygen` makes one")
        return self


class ArchiveSettings(Strict):
    """Where the archive and its ledger live for a team: ``url`` is a store URL
    (``s3://bucket/prefix``, ``file:///shared/path``, or a scheme a plugin registers in
    ``workbench.archive_stores``). The local ``reports/`` is then a cache of it. Credentials
    come from the environment (e.g. ``AWS_ACCESS_KEY_ID``), never from a file; ``endpoint_url``
    points an S3 client at an S3-compatible server (MinIO, Ceph, an emulator)."""

    url: str | None = None
    endpoint_url: str | None = None

    @field_validator("url")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme, sep, rest = value.partition("://")
        if not sep or not scheme or not rest.strip("/"):
            raise ValueError(f"url {value!r} is not a store URL (e.g. s3://bucket/prefix or "
                             f"file:///shared/archive)")
        if "@" in rest.split("/", 1)[0]:
            raise ValueError("url must not carry credentials; set them in the environment "
                             "(e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
        return value


class Pipeline(Strict):
    name: str = Field(min_length=1)
    mlflow: MlflowSettings = MlflowSettings()
    # a team's shared archive (the local reports/ is then its cache); none: reports/ only
    archive: ArchiveSettings = ArchiveSettings()
    # names of environment variables holding secrets: kernels inherit them; they are never
    # parameters, and their values are redacted from everything archived or logged
    secrets: list[SecretName] = []
    notifications: list[Notification] = []
    retry: Retry = Retry()  # default retries per failure class, for every stage
    attestation: Attestation = Attestation()  # how gate promotions are signed
    stages: list[Stage] = Field(min_length=1)

    def retry_policy(self, stage: Stage) -> dict[str, int]:
        """The retries ``stage`` gets per failure class (its own, else the pipeline's)."""
        return stage.retry.merged(self.retry)


MANUAL_PAUSE = "manual"


class CanaryStep(Strict):
    """One step of a canary: the candidate's share of requests (percent), then how long its
    traffic is watched before the analysis decides (``pause``: a duration), or ``manual``:
    the step holds (its analysis still running, a breach still aborting) until a person
    promotes or aborts it (``workbench canary promote|abort``, under the environment's
    approval policy)."""

    weight: Annotated[float, Field(gt=0, le=100)]
    pause: str = "30s"

    @field_validator("pause")
    @classmethod
    def _duration(cls, value: str) -> str:
        if value.strip() == MANUAL_PAUSE:
            return MANUAL_PAUSE
        try:
            parse_duration(value)
        except ValueError:
            raise ValueError(f"expected a duration such as 30s, 5m or 1h, or {MANUAL_PAUSE!r} "
                             f"(hold until promoted or aborted), got {value!r}") from None
        return value

    @property
    def manual(self) -> bool:
        """The step holds until a promote or abort decision."""
        return self.pause == MANUAL_PAUSE

    @property
    def pause_s(self) -> float:
        """The pause in seconds (a manual step: infinite; it ends on a decision)."""
        return float("inf") if self.manual else parse_duration(self.pause)


class CanaryAnalysis(Strict):
    """What each step's analysis checks on each version's own traffic of that step: the
    candidate's error rate and p95 latency, absolute and against the serving version's."""

    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_p95_ms: Annotated[float, Field(gt=0)] | None = None
    max_p95_ratio: Annotated[float, Field(gt=0)] | None = None  # candidate / serving p95
    min_requests: Annotated[int, Field(ge=1)] = 20  # fewer in a step: inconclusive, aborted


class Canary(Strict):
    """``deploy.strategy: canary``: the candidate serves a growing share beside the serving
    version, step by step; a step whose analysis fails sends every request back to the serving
    version, stops the candidate and fails the stage. A last step below 100 ends with 100."""

    steps: list[CanaryStep] = Field(min_length=1)
    # requests with the same value of this header go to the same version (none: at random)
    sticky_header: str | None = None
    analysis: CanaryAnalysis = CanaryAnalysis()

    @field_validator("steps")
    @classmethod
    def _growing(cls, value: list[CanaryStep]) -> list[CanaryStep]:
        weights = [step.weight for step in value]
        if weights != sorted(weights) or len(set(weights)) != len(weights):
            raise ValueError(f"step weights must grow: {weights}")
        return value


class DeployTarget(Strict):
    target: Literal["local", "kubernetes"] = "local"
    port: Annotated[int, Field(ge=1024, le=65535)]
    strategy: Literal["replace", "canary"] = "replace"  # how a new version takes traffic
    canary: Canary | None = None

    @model_validator(mode="after")
    def _canary_needs_steps(self) -> DeployTarget:
        if self.strategy == "canary" and self.canary is None:
            raise ValueError("strategy: canary needs canary: {steps: [{weight, pause}, ...]}")
        return self


class Thresholds(Strict):
    """The older form of one objective: ``score`` (higher is better) at least ``min_score``,
    and at most ``max_regression`` below the champion's."""

    min_score: float  # any sign: R^2 may be negative
    max_regression: Annotated[float, Field(ge=0, le=1)] = 0.0

    def as_objective(self) -> Objective:
        """The objective these thresholds mean."""
        return Objective(metric="score", direction="maximize", bound=self.min_score,
                         max_regression=self.max_regression)


Direction = Literal["maximize", "minimize"]
# a number as YAML writes one (an int or a float, not a string or a bool), finite
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Allowance = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0)]


class Objective(Strict):
    """What one metric of the evaluation must reach in an environment: an absolute ``bound``
    (``>=`` when maximized, ``<=`` when minimized) and/or at most so much worsening against
    the champion, absolute (``max_regression``) or in percent of the champion's value
    (``max_regression_pct``)."""

    metric: str = Field(min_length=1)  # a key of the evaluation notebook's metrics
    direction: Direction
    bound: Number | None = None
    max_regression: Allowance | None = None
    max_regression_pct: Allowance | None = None

    @model_validator(mode="after")
    def _checks_something(self) -> Objective:
        if self.bound is None and self.max_regression is None \
                and self.max_regression_pct is None:
            raise ValueError(f"the objective on {self.metric!r} checks nothing: give bound, "
                             f"max_regression or max_regression_pct")
        return self


Duration = Annotated[str, Field(pattern=r"^\s*\d+(\.\d+)?\s*[smhd]\s*$")]
Millis = Annotated[float, Field(gt=0)]


class Slo(Strict):
    """Service-level objectives a load test must meet before promotion past this environment."""

    p50_ms: Millis | None = None
    p95_ms: Millis | None = None
    p99_ms: Millis | None = None
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    min_throughput_rps: Annotated[float, Field(ge=0)] | None = None
    # candidate p95 / current production p95 under the same load; None: not compared
    max_latency_ratio: Annotated[float, Field(gt=0)] | None = None


class LoadProfile(Strict):
    """How the load test drives the endpoint: a fixed ``rate`` (open model) or as fast as
    ``concurrency`` clients go (closed model), for ``duration`` after ``warmup``."""

    rate: Annotated[float, Field(gt=0)] | None = None
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 8
    duration: Duration = "10s"
    warmup: Duration = "1s"
    rows: Annotated[int, Field(ge=1, le=10000)] = 5
    # the environment whose serving version gets the same load for comparison (the SLO's
    # max_latency_ratio); none: no comparison. Declared, never assumed from a name.
    baseline: str | None = None


class MonitorPolicy(Strict):
    """Post-deploy watch: a breach of either threshold rolls back when ``rollback`` is on."""

    window: Duration = "60s"
    interval: Duration = "1s"
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_p95_ms: Millis | None = None
    rollback: bool = True


class InferenceLogSettings(Strict):
    """What the local endpoint records of served requests (README: drift)."""

    sample: Annotated[float, Field(gt=0, le=1)] = 1.0  # share of answered requests logged
    max_mb: Annotated[float, Field(gt=0)] = 50.0  # per version; one older file is kept
    drop_columns: list[str] = []  # never written (personal data)
    # the request column that identifies a row (kept in the log, never a model feature):
    # labels that arrive later join on it (`workbench drift --labels FILE`)
    id_column: str | None = None


class DriftPolicy(Strict):
    """How served inputs and predictions are judged against the version's baseline profile:
    Kolmogorov-Smirnov for numeric features, the population stability index for the rest."""

    ks_threshold: Annotated[float, Field(gt=0, le=1)] = 0.2
    psi_threshold: Annotated[float, Field(gt=0)] = 0.2
    min_rows: Annotated[int, Field(ge=1)] = 30  # logged rows needed to judge a feature
    # warn: shown only; fail: `workbench drift` exits 1 and the monitor stage fails;
    # rollback: as fail, and the monitor rolls the environment back
    on_breach: Literal["warn", "fail", "rollback"] = "fail"


class Environment(Strict):
    deploy: DeployTarget
    thresholds: Thresholds | None = None  # the older form of an objective on ``score``
    # the objectives as written in the file (``objectives:``); :attr:`objectives` adds the
    # one ``thresholds`` means
    declared_objectives: list[Objective] = Field(default=[], alias="objectives")
    slo: Slo = Slo()
    load_test: LoadProfile = LoadProfile()
    monitor: MonitorPolicy = MonitorPolicy()
    inference_log: InferenceLogSettings | None = None  # off unless declared
    drift: DriftPolicy = DriftPolicy()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def objectives(self) -> list[Objective]:
        """Every objective a model must meet here: the one ``thresholds`` means (first), then
        ``objectives``; none when the environment declares neither. A computed field, so
        ``{from: env.objectives}`` reads this list."""
        implied = [self.thresholds.as_objective()] if self.thresholds else []
        return [*implied, *self.declared_objectives]


class Environments(Strict):
    environments: dict[str, Environment] = Field(min_length=1)

    @field_validator("environments")
    @classmethod
    def _names(cls, value: dict[str, Environment]) -> dict[str, Environment]:
        for name in value:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"environment name {name!r} must match {NAME_PATTERN}")
        ports = [env.deploy.port for env in value.values()]
        if len(ports) != len(set(ports)):
            raise ValueError(f"deploy ports must differ between environments, got {ports}")
        for name, env in value.items():
            baseline = env.load_test.baseline
            if baseline is not None and (baseline not in value or baseline == name):
                raise ValueError(f"{name}.load_test.baseline: {baseline!r} is not another "
                                 f"environment ({', '.join(n for n in value if n != name)})")
        return value


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"24h"``, ``"7d"`` -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if not match:
        raise ValueError(f"expected a duration such as 30m, 24h or 7d, got {text!r}")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


IdentitySource = Literal["jupyterhub", "github", "gitlab", "jenkins", "os", "typed"]


class SoakPolicy(Strict):
    """``soak: {in: qa, for: 24h}``: the version must have served ``in`` (an environment
    earlier in the promotion order) healthy for ``for`` before this gate can pass."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    within: str = Field(alias="in", min_length=1)
    duration: str = Field(alias="for")
    # for tests only: the soak's "now" is $WORKBENCH_SOAK_NOW when set (an ISO time); part of
    # the policy (and its version), so no production policy honours it unless it says so
    test_clock: bool = False

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str) -> str:
        if parse_duration(value) <= 0:
            raise ValueError(f"a soak needs a duration above zero, got {value!r}")
        return value

    @property
    def duration_s(self) -> float:
        return parse_duration(self.duration)


class GatePolicy(Strict):
    """Who may approve a release into one environment, and what an approval needs."""

    approvers: list[str] = Field(min_length=1)  # names, or group:<name> from ``groups``
    quorum: Annotated[int, Field(ge=1)] = 1
    # a production gate: unless set below, no self-approval and a comment required; unset on
    # all three: the environment named prod is taken as strict (a warning says so)
    strict: bool | None = None
    allow_self_approval: bool | None = None  # requester or trainer approves; default: not strict
    valid_for: str = "7d"
    require_comment: bool | None = None  # default: strict; a rejection always needs one
    # identity sources whose approvals count here (default: any); e.g. [github, jupyterhub]
    identity_sources: list[IdentitySource] | None = None
    # a typed or OS name counts only with the approver's SSH signature (configs/allowed_signers);
    # identities a platform vouched for (CI, JupyterHub) count as before
    require_signature: bool | None = None
    # the version must first serve an earlier environment healthy for a while (SoakPolicy)
    soak: SoakPolicy | None = None

    @field_validator("valid_for")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def valid_for_s(self) -> float:
        return parse_duration(self.valid_for)


class Gates(Strict):
    groups: dict[str, list[str]] = {}
    policies: dict[str, GatePolicy] = {}

    @field_validator("policies")
    @classmethod
    def _groups_exist(cls, value: dict[str, GatePolicy], info: Any) -> dict[str, GatePolicy]:
        groups = info.data.get("groups", {})
        for env, policy in value.items():
            for entry in policy.approvers:
                if entry.startswith("group:") and entry.removeprefix("group:") not in groups:
                    raise ValueError(f"policy {env!r}: unknown group {entry!r}; "
                                     f"groups defines {sorted(groups)}")
            names = _expand(policy.approvers, groups)
            if policy.quorum > len(names):
                raise ValueError(f"policy {env!r}: quorum {policy.quorum} is more than the "
                                 f"{len(names)} distinct approvers {sorted(names)}")
        return value

    def soak_problems(self, environments: list[str], label: str) -> list[Problem]:
        """Each ``soak.in`` that names no environment before its policy's own in the promotion
        order (``environments``: the order of configs/environments.yaml)."""
        problems = []
        for env, policy in self.policies.items():
            soak = policy.soak
            if soak is None or env not in environments:
                continue  # an unknown policy environment is reported by `validate`
            earlier = environments[:environments.index(env)]
            if soak.within not in earlier:
                problems.append(Problem(label, f"policies.{env}.soak.in", f"{soak.within!r} "
                                        f"is not an environment before {env!r} in the "
                                        f"promotion order; expected one of {earlier}"))
        return problems

    def approvers(self, environment: str) -> set[str]:
        """Every name that may approve for ``environment`` (groups expanded)."""
        return _expand(self.policies[environment].approvers, self.groups)

    def is_strict(self, environment: str) -> bool:
        """Whether the environment's gate is a production gate (its policy's ``strict``; a
        policy that declares none of strict, allow_self_approval, require_comment: the one
        named prod, as before ``strict`` existed)."""
        policy = self.policies[environment]
        return environment == "prod" if policy.strict is None else policy.strict

    def declares_strictness(self, environment: str) -> bool:
        policy = self.policies[environment]
        return any(v is not None for v in (policy.strict, policy.allow_self_approval,
                                           policy.require_comment))

    def allows_self_approval(self, environment: str) -> bool:
        allowed = self.policies[environment].allow_self_approval
        return not self.is_strict(environment) if allowed is None else allowed

    def requires_signature(self, environment: str) -> bool:
        return bool(self.policies[environment].require_signature)

    def requires_comment(self, environment: str) -> bool:
        required = self.policies[environment].require_comment
        return self.is_strict(environment) if required is None else required

    def version(self, environment: str) -> str:
        """sha256 of the policy that applies (with its groups expanded): its version."""
        policy = self.policies[environment].model_dump()
        policy["approvers"] = sorted(self.approvers(environment))
        if policy.get("strict") is None:  # the version of policies that predate it
            policy.pop("strict", None)
        for later in ("identity_sources", "require_signature", "soak"):  # unset: the version of
            if policy.get(later) is None:  # policies without it stays what earlier releases
                policy.pop(later, None)  # computed
        blob = json.dumps(policy, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def _expand(entries: list[str], groups: dict[str, list[str]]) -> set[str]:
    names: set[str] = set()
    for entry in entries:
        if entry.startswith("group:"):
            names.update(groups.get(entry.removeprefix("group:"), []))
        else:
            names.add(entry)
    return names


class Model(BaseModel):
    """``model.yaml``: the registered model's ``name``, which the engine acts on (runs, gates,
    aliases, rollback, deploys), and any other keys of the project's own (data, estimator,
    hyperparameters of any YAML type...). Stages read those as ``{from: model.KEY}``; their
    types are checked against the notebooks' annotations, not against a schema of ours."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Config(Strict):
    """The whole, validated configuration of a project."""

    pipeline: Pipeline
    environments: dict[str, Environment]
    model: Model
    gates: Gates = Gates()
    sources: dict[str, str]

    @property
    def signers(self) -> str:
        """The text of ``configs/allowed_signers`` (empty without one)."""
        return self.sources.get(SIGNERS_FILE, "")

    @property
    def digest(self) -> str:
        """sha256 over the raw config files: the config hash recorded with every run."""
        return sources_digest(self.sources)

    def stage(self, name: str) -> Stage:
        found = next((s for s in self.pipeline.stages if s.name == name), None)
        if found is None:
            raise KeyError(f"no stage named {name!r}")
        return found

    def environment_rank(self, name: str) -> int:
        """Position in the promotion order: the order of configs/environments.yaml."""
        return list(self.environments).index(name)


def sources_digest(sources: dict[str, str]) -> str:
    """sha256 over config files' texts (file name -> text): a run's config hash."""
    return hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()


def _signer_problems(text: str, label: str) -> list[Problem]:
    """Each line of an allowed signers file that is not one signer."""
    from workbench.signatures import parse

    problems = []
    for found in parse(text, label)[1]:
        where, _, why = found.partition(": ")
        problems.append(Problem(label, f"line {where.rsplit(':', 1)[-1]}", why))
    return problems


def _key_path(loc: tuple[Any, ...], data: Any) -> str:
    """Render a pydantic error location, naming list items by their ``name`` when they have one."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node) and isinstance(node[item], dict):
                name = node[item].get("name")
                label = f"[{item}]({name})" if name else label
                node = node[item]
            else:
                node = None
            parts.append(label)
            continue
        if item in {"Ref", "str", "bool", "int", "float", "list", "dict", "none", "short_form",
                    "long_form"}:
            continue  # union branch names say nothing to the user
        parts.append(f".{item}" if parts else str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Keys the mapping at ``loc`` may have, following the field types; [] when not known."""
    node: Any = model
    for item in (*loc, None):
        options = typing.get_args(node) if typing.get_origin(node) in (Union, UnionType) else [node]
        node = next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)),
                    options[0])
        if isinstance(node, type) and issubclass(node, BaseModel):
            keys = {f.alias or name: f for name, f in node.model_fields.items()}
            if item is None:
                return list(keys)
            node = keys[item].annotation if item in keys else None
        elif typing.get_origin(node) in (list, dict) and item is not None:
            node = typing.get_args(node)[-1]
        else:
            return []
    return []


def _describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    if err["type"] == "extra_forbidden":
        keys = _keys_at(model, err["loc"][:-1])
        return f"unknown key; expected one of {keys}" if keys else "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "value_error":
        return str(err.get("ctx", {}).get("error", err["msg"]))  # our validators' own words
    got = err.get("input")
    shown = json.dumps(got, default=str) if not isinstance(got, dict) else "a mapping"
    return f"{err['msg']} (got {shown})"


def _parse(model: type[BaseModel], data: Any, file: str) -> tuple[Any, list[Problem]]:
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        seen: dict[str, Problem] = {}
        for err in exc.errors():
            path = _key_path(err["loc"], data)
            seen.setdefault(path, Problem(file, path, _describe(dict(err), model)))
        return None, list(seen.values())


MAX_YAML_VALUES = 100_000  # what aliases may expand a file to (an alias bomb is refused)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys (YAML says a key is unique; PyYAML keeps
    the last) and documents whose aliases expand beyond :data:`MAX_YAML_VALUES` values."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        expanded = _expanded_size(node, {})
        if expanded > MAX_YAML_VALUES:
            raise yaml.YAMLError(f"its aliases expand to more than {MAX_YAML_VALUES} values "
                                 f"(an alias bomb?)")
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                try:
                    key = self.construct_object(key_node, deep=True)
                    hash(key)
                except TypeError:
                    continue  # PyYAML's own error follows
                if key in seen:
                    first = seen[key].start_mark.line + 1
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first}); a key may "
                        f"appear once", key_node.start_mark)
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Any, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is expanded (counted once per
    distinct node, so a bomb costs linear time to measure)."""
    stack: list[tuple[Any, bool]] = [(node, False)]
    while stack:
        current, children_done = stack.pop()
        if id(current) in sizes:
            continue
        children = _children(current)
        if children_done or not children:
            sizes[id(current)] = min(1 + sum(sizes[id(c)] for c in children),
                                     MAX_YAML_VALUES + 1)
            continue
        stack.append((current, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(node)]


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def decode_text(data: bytes, label: str) -> tuple[str | None, list[Problem]]:
    """A config file's bytes as text; a file that is not UTF-8 is a problem naming the byte."""
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 1].hex()
        hint = " (it looks like UTF-16: save it as UTF-8)" if data[:2] in (b"\xff\xfe",
                                                                            b"\xfe\xff") else ""
        return None, [Problem(label, "", f"is not UTF-8 text: byte 0x{bad} at offset "
                                         f"{exc.start}{hint}")]


def read_yaml(text: str | None, label: str) -> tuple[Any, list[Problem]]:
    """Parse one YAML file's text; syntax errors, duplicate keys, alias bombs and nesting too
    deep to read become problems with line and column."""
    if text is None:
        return None, [Problem(label, "", "file is missing")]
    try:
        # a SafeLoader subclass
        data = yaml.load(text, Loader=_StrictLoader)  # nosec B506
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [Problem(label, where, f"invalid YAML: {problem}")]
    except RecursionError:
        return None, [Problem(label, "", "invalid YAML: nested too deeply to read")]
    if not isinstance(data, dict):
        kind = type(data).__name__
        return None, [Problem(label, "", f"expected a mapping at the top, got {kind}")]
    return data, []


def parse_file(model: type[BaseModel], text: str | None, label: str) -> Any:
    """One YAML file of the project read as ``model`` (a data contract, say); every problem
    named by file and key path in one :class:`ConfigError`."""
    data, problems = read_yaml(text, label)
    if problems:
        raise ConfigError(problems)
    parsed, problems = _parse(model, data, label)
    if problems:
        raise ConfigError(problems)
    return parsed


PIPELINES_DIR = "pipelines"  # configs/pipelines/<name>/: one folder per pipeline
PIPELINE_ENV_VAR = "WORKBENCH_PIPELINE"  # the pipeline selected when none is passed


def pipeline_names(configs_dir: Path) -> list[str]:
    """The pipelines of a project with ``configs/pipelines/<name>/pipeline.yaml`` folders,
    sorted; empty for a project of one pipeline (``configs/pipeline.yaml``)."""
    folder = configs_dir / PIPELINES_DIR
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / PIPELINE_FILE).is_file())


def pipeline_files(configs_dir: Path, pipeline: str | None) -> dict[str, tuple[Path, str]]:
    """Each config file of ``pipeline`` (its folder's own, else the shared one in
    ``configs/``) with the label problems name it by."""
    files: dict[str, tuple[Path, str]] = {}
    for file in (*CONFIG_FILES, *OPTIONAL_FILES):
        files[file] = (configs_dir / file, f"configs/{file}")
        if pipeline is not None:
            own = configs_dir / PIPELINES_DIR / pipeline / file
            if own.is_file():
                files[file] = (own, f"configs/{PIPELINES_DIR}/{pipeline}/{file}")
    return files


def select_pipeline(configs_dir: Path, pipeline: str | None = None) -> str | None:
    """The pipeline ``pipeline`` (or ``$WORKBENCH_PIPELINE``) names, checked; ``None`` for a
    project of one pipeline. Several pipelines and none named is a :class:`ConfigError`."""
    names = pipeline_names(configs_dir)
    wanted = pipeline or os.environ.get(PIPELINE_ENV_VAR) or None
    where = f"configs/{PIPELINES_DIR}/"
    if not names:
        if wanted is None:
            return None
        if (configs_dir / PIPELINE_FILE).is_file():  # the one pipeline, by its own name
            return None
        raise ConfigError([Problem(where, "", f"no pipeline {wanted!r}: the project has no "
                                   f"pipeline folders")])
    if wanted is None:
        if len(names) == 1:
            return names[0]
        raise ConfigError([Problem(where, "", f"the project has {len(names)} pipelines; choose "
                                   f"one with --pipeline NAME: {', '.join(names)}")])
    if wanted not in names:
        raise ConfigError([Problem(where, "", f"no pipeline {wanted!r}; the pipelines are: "
                                   f"{', '.join(names)}")])
    return wanted


def load_config(configs_dir: Path, pipeline: str | None = None) -> Config:
    """Load and validate the config files of one pipeline (see :func:`select_pipeline`);
    raise :class:`ConfigError` listing all problems."""
    selected = select_pipeline(configs_dir, pipeline)
    files = pipeline_files(configs_dir, selected)
    texts: dict[str, str | None] = {}
    unreadable: list[Problem] = []
    for file, (path, label) in files.items():
        if not path.is_file():
            texts[file] = None
            continue
        texts[file], found = decode_text(path.read_bytes(), label)
        unreadable += found
    if unreadable:
        raise ConfigError(unreadable)
    key = (("", selected), *texts.items())  # the pipeline, then the files
    if key not in _parsed:  # a command reads the same files more than once
        _parsed.clear()
        labels = {file: label for file, (_, label) in files.items()}
        config = parse_config(texts, labels)
        if selected is not None:
            _check_pipeline(configs_dir, selected, config, labels)
        _parsed[key] = config
    return _parsed[key]


def _check_pipeline(configs_dir: Path, selected: str, config: Config,
                    labels: dict[str, str]) -> None:
    """A pipeline folder's name is its pipeline's ``name:``; no two pipelines share a model."""
    problems: list[Problem] = []
    if config.pipeline.name != selected:
        problems.append(Problem(labels[PIPELINE_FILE], "name", f"is {config.pipeline.name!r}, "
                                f"but the folder is {selected!r}: they must agree"))
    for other in pipeline_names(configs_dir):
        if other == selected:
            continue
        path, label = pipeline_files(configs_dir, other)[MODEL_FILE]
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # that pipeline's own problems are reported when it is loaded
        if isinstance(data, dict) and data.get("name") == config.model.name:
            problems.append(Problem(labels[MODEL_FILE], "name", f"{config.model.name!r} is "
                                    f"also the model of pipeline {other!r} ({label}); each "
                                    f"pipeline needs its own model name"))
    if problems:
        raise ConfigError(problems)


_parsed: dict[tuple[tuple[str, str | None], ...], Config] = {}  # the configs last parsed


def parse_config(texts: dict[str, str | None], labels: dict[str, str] | None = None) -> Config:
    """Validate config file contents (``None``: the file is missing), e.g. a run's snapshot;
    ``labels`` name the files in problems (default ``configs/<file>``)."""
    problems: list[Problem] = []
    parsed: dict[str, Any] = {}
    sources: dict[str, str] = {}
    models: dict[str, type[BaseModel]] = {
        PIPELINE_FILE: Pipeline, ENVIRONMENTS_FILE: Environments, MODEL_FILE: Model,
        GATES_FILE: Gates,
    }
    signers = texts.get(SIGNERS_FILE)
    if signers is not None:
        sources[SIGNERS_FILE] = signers
        problems += _signer_problems(signers, (labels or {}).get(SIGNERS_FILE,
                                                                   f"configs/{SIGNERS_FILE}"))
    for file, model in models.items():
        label = (labels or {}).get(file, f"configs/{file}")
        text = texts.get(file)
        if text is None and file in OPTIONAL_FILES:
            continue
        data, found = read_yaml(text, label)
        problems += found
        if data is None or text is None:
            continue
        sources[file] = text
        parsed[file], found = _parse(model, data, label)
        problems += found
    gates = parsed.get(GATES_FILE)
    if isinstance(gates, Gates) and signers is None:
        label = (labels or {}).get(GATES_FILE, f"configs/{GATES_FILE}")
        problems += [Problem(label, f"policies.{env}.require_signature", f"needs "
                             f"configs/{SIGNERS_FILE}, mapping approvers to their SSH public "
                             f"keys (git's allowed signers format)")
                     for env, policy in gates.policies.items() if policy.require_signature]
    environments = parsed.get(ENVIRONMENTS_FILE)
    if isinstance(gates, Gates) and isinstance(environments, Environments):
        problems += gates.soak_problems(list(environments.environments),
                                        (labels or {}).get(GATES_FILE, f"configs/{GATES_FILE}"))
    if problems:
        raise ConfigError(problems)
    return Config(
        pipeline=parsed[PIPELINE_FILE],
        environments=parsed[ENVIRONMENTS_FILE].environments,
        model=parsed[MODEL_FILE],
        gates=parsed.get(GATES_FILE, Gates()),
        sources=sources,
    )
