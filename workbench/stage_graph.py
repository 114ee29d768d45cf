"""The stage graph: order, ancestry, references between stages and parameter resolution."""

from __future__ import annotations

import copy
import graphlib
from collections.abc import Iterator
from typing import Any

from workbench.config import PIPELINE_FILE, REF_ROOTS, RUN_FIELDS, Config, Problem, Ref, Stage
from workbench.errors import WorkbenchError

PIPELINE_LABEL = f"configs/{PIPELINE_FILE}"


class MissingValue(LookupError):
    """A reference points at a key that does not exist."""


def lookup(data: Any, keys: list[str]) -> Any:
    """Follow ``keys`` into nested mappings; raise :class:`MissingValue` naming the first gap."""
    node = data
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise MissingValue(".".join(keys[: depth + 1]))
        node = node[key]
    return node


def _where(index: int, stage: Stage, rest: str) -> str:
    return f"stages[{index}]({stage.name}).{rest}"


def stage_problem(index: int, stage: Stage, rest: str, message: str) -> Problem:
    """A problem at key ``rest`` of the ``index``-th stage of ``configs/pipeline.yaml``."""
    return Problem(PIPELINE_LABEL, _where(index, stage, rest), message)


def graph_problems(config: Config) -> list[Problem]:
    """Duplicate names, unknown or self ``needs``, and cycles."""
    problems: list[Problem] = []
    names = [s.name for s in config.pipeline.stages]
    for index, stage in enumerate(config.pipeline.stages):
        if names.index(stage.name) != index:
            problems.append(Problem(PIPELINE_LABEL, f"stages[{index}].name",
                                    f"duplicate stage name {stage.name!r}"))
        for j, need in enumerate(stage.needs):
            if need == stage.name:
                problems.append(Problem(PIPELINE_LABEL, _where(index, stage, f"needs[{j}]"),
                                        "a stage cannot need itself"))
            elif need not in names:
                problems.append(Problem(PIPELINE_LABEL, _where(index, stage, f"needs[{j}]"),
                                        f"unknown stage {need!r}; expected one of {names}"))
    if not problems:
        try:
            stage_order(config)
        except graphlib.CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            problems.append(Problem(PIPELINE_LABEL, "stages", f"dependency cycle: {cycle}"))
    return problems


def stage_order(config: Config) -> list[str]:
    """Stage names in an order that respects ``needs`` (config order breaks ties)."""
    sorter = graphlib.TopologicalSorter({s.name: s.needs for s in config.pipeline.stages})
    position = {s.name: i for i, s in enumerate(config.pipeline.stages)}
    order: list[str] = []
    sorter.prepare()
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    return order


def ancestors(config: Config) -> dict[str, set[str]]:
    """For each stage, every stage it depends on directly or transitively."""
    result: dict[str, set[str]] = {}
    for name in stage_order(config):
        stage = config.stage(name)
        result[name] = set(stage.needs).union(*(result[n] for n in stage.needs))
    return result


def descendants(config: Config, name: str) -> set[str]:
    """Every stage that depends on ``name`` directly or transitively."""
    return {s for s, up in ancestors(config).items() if name in up}


def gate_problems(config: Config) -> list[Problem]:
    """Gates and stage environments that name no environment or policy; ungated promotions."""
    problems: list[Problem] = []
    environments = list(config.environments)
    gates_label = "configs/gates.yaml"
    for env in config.gates.policies:
        if env not in config.environments:
            problems.append(Problem(gates_label, f"policies.{env}",
                                    f"unknown environment; expected one of {environments}"))
    upstream = ancestors(config)
    for index, stage in enumerate(config.pipeline.stages):
        for key in ("gate", "environment"):
            value: str | None = getattr(stage, key)
            if value is not None and value not in config.environments:
                problems.append(Problem(PIPELINE_LABEL, _where(index, stage, key),
                                        f"unknown environment {value!r}; expected one of "
                                        f"{environments}"))
        if stage.gate and stage.gate in config.environments and \
                stage.gate not in config.gates.policies:
            problems.append(Problem(PIPELINE_LABEL, _where(index, stage, "gate"),
                                    f"no approval policy for {stage.gate!r} in {gates_label}"))
        acted_on = stage.environment
        if acted_on in config.gates.policies and not any(
                config.stage(up).gate == acted_on for up in upstream[stage.name]):
            problems.append(Problem(PIPELINE_LABEL, _where(index, stage, "environment"),
                                    f"acts on {acted_on!r}, which has an approval policy, but "
                                    f"no stage with 'gate: {acted_on}' is upstream; add it to "
                                    f"needs"))
    return problems


def cache_problems(config: Config) -> list[Problem]:
    """``cache: true`` on a stage that acts on the world: such a stage is never reused."""
    problems: list[Problem] = []
    for index, stage in enumerate(config.pipeline.stages):
        if stage.cache and stage.side_effect:
            problems.append(Problem(PIPELINE_LABEL, _where(index, stage, "cache"),
                                    f"stage {stage.name!r} is never reused from the cache: "
                                    f"{stage.side_effect}; remove 'cache: true'"))
    return problems


class SelectionError(WorkbenchError, ValueError):
    """A partial run names an unknown stage or selects nothing."""


def select(config: Config, stage: str | None = None, start: str | None = None,
           until: str | None = None) -> set[str]:
    """Stages a partial run executes: ``stage`` alone, or from ``start`` on and/or up to
    ``until``. Gates before a selected stage are always decided in the run itself."""
    names = stage_order(config)
    for option, value in (("--stage", stage), ("--from", start), ("--until", until)):
        if value is not None and value not in names:
            raise SelectionError(f"{option} {value}: no such stage; stages are "
                                 f"{', '.join(names)}")
    if stage is not None and (start or until):
        raise SelectionError("--stage cannot be combined with --from or --until")
    upstream = ancestors(config)
    chosen = {stage} if stage else set(names)
    if start:
        chosen &= {start} | descendants(config, start)
    if until:
        chosen &= {until} | upstream[until]
    if not chosen:
        raise SelectionError(f"--from {start} --until {until}: no stage is in both")
    chosen |= {up for name in chosen for up in upstream[name] if config.stage(up).gate}
    return chosen


def needed_upstream(config: Config, chosen: set[str]) -> set[str]:
    """Stages outside ``chosen`` whose outputs the chosen ones need (to be reused)."""
    upstream = ancestors(config)
    return {up for name in chosen for up in upstream[name]} - chosen


def refs_in(value: Any, path: str = "") -> Iterator[tuple[str, Ref]]:
    """Every reference in a parameter's value, at any depth of its lists and mappings, with its
    key path appended to ``path`` (``""`` for the value itself, ``".alpha"``, ``"[1]"``)."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, Ref):
            yield where, node
        elif isinstance(node, dict):
            stack.extend((f"{where}.{key}", item) for key, item in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", item) for i, item in reversed(list(enumerate(node))))


def reference_problems(config: Config) -> list[Problem]:
    """References to unknown roots, keys, run fields, or outputs no upstream stage declares
    (references nested in a literal list or mapping too, named by their full key path)."""
    problems: list[Problem] = []
    upstream = ancestors(config)
    for index, stage in enumerate(config.pipeline.stages):
        for param, value in stage.parameters.items():
            for where, ref in refs_in(value, f"parameters.{param}"):
                message = _reference_problem(config, stage, ref, upstream[stage.name])
                if message:
                    problems.append(Problem(PIPELINE_LABEL, _where(index, stage, where),
                                            message))
    return problems


def _reference_problem(config: Config, stage: Stage, ref: Ref, upstream: set[str]) -> str | None:
    keys = ref.keys
    if ref.root == "model":
        try:
            lookup(config.model.model_dump(), keys)
        except MissingValue as exc:
            return f"'from: {ref.source}': configs/model.yaml has no key {exc}"
        return None
    if ref.root == "env":
        for env_name, env in config.environments.items():
            try:
                lookup({"name": env_name, **env.model_dump()}, keys)
            except MissingValue as exc:
                return (f"'from: {ref.source}': environment {env_name!r} in "
                        f"configs/environments.yaml has no key {exc}")
        return None
    if ref.root == "run":
        if len(keys) != 1 or keys[0] not in RUN_FIELDS:
            fields = list(RUN_FIELDS)
            return f"'from: {ref.source}': expected run.<field>, field one of {fields}"
        return None
    names = {s.name for s in config.pipeline.stages}
    if ref.root not in names:
        return (f"'from: {ref.source}': {ref.root!r} is neither a stage nor one of "
                f"{list(REF_ROOTS)}")
    if ref.root not in upstream:
        return (f"'from: {ref.source}': stage {ref.root!r} is not upstream of {stage.name!r}; "
                f"add it to needs")
    declared = config.stage(ref.root).output_types
    if not keys or keys[0] not in declared:
        return (f"'from: {ref.source}': stage {ref.root!r} declares no output "
                f"{'.'.join(keys)!r}; it declares {sorted(declared)}")
    if len(keys) > 1 and declared[keys[0]] != "dict":
        return (f"'from: {ref.source}': output {keys[0]!r} of stage {ref.root!r} is a "
                f"{declared[keys[0]]}, so it has no key {'.'.join(keys[1:])!r}; only a dict "
                f"output is read into")
    return None


def resolve_parameters(
    stage: Stage,
    config: Config,
    environment: str,
    run: dict[str, str],
    outputs: dict[str, dict[str, Any]],
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Concrete, typed parameter values for one stage of one run. ``overrides`` (the run's
    ``-p`` values, checked by :mod:`workbench.pipeline.overrides`, keyed ``"stage.param"`` or
    ``"model.key"``) replace a parameter of the stage, or a value of ``configs/model.yaml``
    that references see."""
    overrides = overrides or {}
    environment = stage.target_environment or environment
    env = {"name": environment, **config.environments[environment].model_dump()}
    model = overridden_model(config.model.model_dump(), overrides)
    roots: dict[str, Any] = {"model": model, "env": env, "run": run, **outputs}
    resolved: dict[str, Any] = {}
    for name, value in stage.parameters.items():
        if f"{stage.name}.{name}" in overrides:
            continue
        try:
            resolved[name] = _resolve(value, roots)
        except MissingValue as exc:
            raise UnresolvedReference(f"stage {stage.name!r}, parameter {name!r}: {exc}") \
                from None
    prefix = f"{stage.name}."
    for key, value in overrides.items():
        if key.startswith(prefix) and stage.name != "model":
            resolved[key[len(prefix):]] = copy.deepcopy(value)
    return resolved


def overridden_model(model: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``configs/model.yaml``'s values with the ``model.KEY`` overrides (dotted keys go into
    nested mappings) put in place; ``model`` itself is left as it was."""
    wanted = {key: value for key, value in overrides.items() if key.startswith("model.")}
    if not wanted:
        return model
    result = copy.deepcopy(model)
    for key, value in sorted(wanted.items()):
        *path, last = key.split(".")[1:]
        node = result
        for part in path:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(value)
    return result


class UnresolvedReference(WorkbenchError, LookupError):
    """A reference into an upstream output found no value there at run time (a key of a
    dict output that the stage did not produce): the stage fails, naming it."""


def _resolve(value: Any, roots: dict[str, Any]) -> Any:
    """``value`` with each reference in it, at any depth, replaced by what it points at."""
    if isinstance(value, Ref):
        try:
            return lookup(roots[value.root], value.keys)
        except MissingValue as exc:
            raise MissingValue(f"'from: {value.source}': there is no {exc!s} in what stage "
                               f"{value.root!r} output" if value.root not in REF_ROOTS else
                               f"'from: {value.source}': no key {exc!s}") from None
    if isinstance(value, dict):
        return {key: _resolve(item, roots) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, roots) for item in value]
    return value


def strictness_warnings(config: Config) -> list[Problem]:
    """Gated environments whose policy declares neither ``strict`` nor the two rules it sets:
    their meaning would come from their name."""
    warnings: list[Problem] = []
    for env in config.gates.policies:
        if env in config.environments and not config.gates.declares_strictness(env):
            taken = "strict (no self-approval, a comment required) because it is named prod" \
                if env == "prod" else "not strict: its requester may approve it"
            warnings.append(Problem("configs/gates.yaml", f"policies.{env}",
                                    f"declares none of strict, allow_self_approval, "
                                    f"require_comment; it is taken as {taken}. Declare "
                                    f"`strict: true` for a production gate, `strict: false` "
                                    f"otherwise"))
    return warnings
