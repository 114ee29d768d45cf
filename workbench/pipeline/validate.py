"""``workbench validate``: every check that can run before a kernel starts."""

from __future__ import annotations

from typing import Any

from workbench.config import Config, ConfigError, Problem, Ref, load_config
from workbench.execution.parameters import Declared, NotebookError, read_parameters_cell
from workbench.pipeline.role_checks import role_problems, role_warnings
from workbench.project import Project
from workbench.stage_graph import (
    PIPELINE_LABEL,
    cache_problems,
    gate_problems,
    graph_problems,
    lookup,
    reference_problems,
    strictness_warnings,
)

SAMPLE_OF_TYPE: dict[str, Any] = {
    "str": "", "int": 0, "float": 0.0, "bool": False, "list": [], "dict": {},
}


def load_and_validate(project: Project, pipeline: str | None = None) -> Config:
    """Load the configuration (of ``pipeline``, see :func:`~workbench.config.load_config`) and
    run every static check; raise :class:`ConfigError`."""
    config = load_config(project.configs, pipeline)
    problems = graph_problems(config)
    if not problems:
        problems = gate_problems(config) or reference_problems(config)
        problems += cache_problems(config) + role_problems(config)
    problems += notebook_problems(project, config)
    problems += _kubernetes_problems(project, config)  # configs/kubernetes.yaml, when used
    problems += _contract_problems(project, config)
    problems += _attestation_problems(project, config)
    if problems:
        raise ConfigError(problems)
    return config


def validation_warnings(config: Config) -> list[Problem]:
    """What runs but may not mean what was intended: printed by ``workbench validate``."""
    return role_warnings(config) + strictness_warnings(config)


def _contract_problems(project: Project, config: Config) -> list[Problem]:
    """The data contract files that stages checking data name (a literal ``contract``
    parameter of a stage with a ``data_validation`` output), read as the stage will."""
    from workbench.data_contract import ContractError, load_contract

    problems: list[Problem] = []
    for stage in config.pipeline.stages:
        path = stage.parameters.get("contract")
        if "data_validation" not in stage.roles or not isinstance(path, str):
            continue
        try:
            load_contract(path, project.root)
        except ConfigError as exc:
            problems += exc.problems
        except ContractError as exc:
            problems.append(Problem(PIPELINE_LABEL, f"stages({stage.name}).parameters.contract",
                                    str(exc)))
    return problems


def _attestation_problems(project: Project, config: Config) -> list[Problem]:
    """The configured attestation public key must be an Ed25519 key file in the project."""
    if config.pipeline.attestation.public_key is None:
        return []
    from workbench.governance.project_key import AttestationKeyError, load_public

    try:
        load_public(project.root / config.pipeline.attestation.public_key)
    except AttestationKeyError as exc:
        return [Problem(PIPELINE_LABEL, "attestation.public_key",
                        f"{exc} (`workbench attest keygen` makes one)")]
    return []


def _kubernetes_problems(project: Project, config: Config) -> list[Problem]:
    """The Kubernetes settings' problems, when a Kubernetes target or the file exists (the
    check's module is not imported otherwise: every command validates)."""
    wanted = any(env.deploy.target == "kubernetes" for env in config.environments.values())
    if not wanted and not (project.configs / "kubernetes.yaml").is_file():
        return []
    from workbench.k8s.config import kubernetes_problems

    return kubernetes_problems(project, config)


def _candidate_values(config: Config, value: Any) -> list[Any]:
    """Values a parameter may take at run time, as far as they are known before running."""
    if not isinstance(value, Ref):
        return [value]
    if value.root == "model":
        return [lookup(config.model.model_dump(), value.keys)]
    if value.root == "env":
        return [lookup({"name": n, **e.model_dump()}, value.keys)
                for n, e in config.environments.items()]
    if value.root == "run":
        return [""]
    if len(value.keys) > 1:
        return []  # a key of a dict output: its type is known when the upstream stage ran
    return [SAMPLE_OF_TYPE[config.stage(value.root).output_types[value.keys[0]]]]


def _expected(declared: Declared) -> str:
    if declared.annotation:
        return declared.annotation
    return type(declared.default).__name__


def notebook_problems(project: Project, config: Config) -> list[Problem]:
    """Missing notebooks, unknown parameters, values that do not fit the declared type, and
    parameters-cell lines papermill does not read as Python does (papermill's own inspector
    decides what it calls an unknown parameter)."""
    problems: list[Problem] = []
    for index, stage in enumerate(config.pipeline.stages):
        where = f"stages[{index}]({stage.name})"
        path = project.root / stage.notebook
        if not path.is_file():
            problems.append(Problem(PIPELINE_LABEL, f"{where}.notebook",
                                    f"notebook {stage.notebook} does not exist"))
            continue
        try:
            cell = read_parameters_cell(path, cache=project.local_state / "cache")
        except NotebookError as exc:
            problems.append(Problem(PIPELINE_LABEL, f"{where}.notebook", f"{stage.notebook} {exc}"))
            continue
        declared = cell.declared
        problems += [Problem(PIPELINE_LABEL, f"{where}.notebook", f"{stage.notebook} {unread}")
                     for unread in cell.unread]
        for name, value in stage.parameters.items():
            key = f"{where}.parameters.{name}"
            if name not in declared:
                problems.append(Problem(PIPELINE_LABEL, key,
                    f"{stage.notebook} declares no parameter {name!r} in its parameters cell; "
                    f"it declares {sorted(declared)}"))
                continue
            if name not in cell.papermill:
                problems.append(Problem(PIPELINE_LABEL, key,
                    f"papermill would call {name!r} an unknown parameter: it does not read it "
                    f"from line {declared[name].line} of the parameters cell of "
                    f"{stage.notebook}"))
                continue
            try:
                candidates = _candidate_values(config, value)
            except (LookupError, KeyError):
                continue  # already reported as a reference problem
            for candidate in candidates:
                if not declared[name].accepts(candidate):
                    shown = value.source if isinstance(value, Ref) else repr(value)
                    problems.append(Problem(PIPELINE_LABEL, key,
                        f"expected {_expected(declared[name])} for {stage.notebook}, "
                        f"got {type(candidate).__name__} from {shown}"))
                    break
    return problems
