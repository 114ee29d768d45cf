"""What ``workbench validate`` checks of the output roles (README: output roles).

The engine reads a few values from stage outputs: the registered model version a gate
releases, the MLflow run that trained it, the metrics the evidence shows, what a deploy
served. Each is found by its role, never guessed; these checks make a pipeline that would
leave the engine without one fail (or warn) before anything runs, naming the stage.
"""

from __future__ import annotations

from workbench.config import Config, OutputType, Problem
from workbench.stage_graph import ancestors, stage_problem

# the types an output may have to play each role
ROLE_TYPES: dict[str, tuple[OutputType, ...]] = {
    "model_version": ("str", "int"), "trained_run": ("str",), "metrics": ("dict",),
    "champion": ("dict",), "verdict": ("bool",), "served_version": ("str", "int"),
    "endpoint": ("str",), "alias_move": ("dict",), "load_test": ("dict",),
    "data_validation": ("dict",),
}
HOW = ("an output with `role: model_version` (or named model_version) in the stage that "
       "registers the model")


def _with_role(config: Config, names: set[str], role: str) -> list[str]:
    return [s.name for s in config.pipeline.stages if s.name in names and role in s.roles]


def role_problems(config: Config) -> list[Problem]:
    """Roles on outputs of the wrong type; gates, registry moves and deploys that no stage up
    to them gives a model version."""
    problems: list[Problem] = []
    upstream = ancestors(config)
    for index, stage in enumerate(config.pipeline.stages):
        types = stage.output_types
        for role, name in stage.roles.items():
            if types[name] not in ROLE_TYPES[role]:
                takes = " or ".join(ROLE_TYPES[role])
                problems.append(stage_problem(
                    index, stage, f"outputs.{name}",
                    f"plays role {role!r}, which takes {takes}, not {types[name]}"))
        reach = upstream[stage.name] | {stage.name}
        if _with_role(config, reach, "model_version"):
            continue
        if stage.gate:
            problems.append(stage_problem(
                index, stage, "gate",
                f"gate {stage.gate!r} releases a registered model version, but no stage up "
                f"to it declares one: add {HOW}"))
        acts = sorted(r for r in ("alias_move", "served_version") if r in stage.roles)
        if acts:
            problems.append(stage_problem(
                index, stage, "outputs",
                f"declares {acts[0]!r} (an alias move or a deploy of a registered model), but "
                f"no stage up to it declares the model version: add {HOW}"))
    return problems


def role_warnings(config: Config) -> list[Problem]:
    """What runs but leaves reviewers with less: a gate whose evidence has no metrics."""
    upstream = ancestors(config)
    return [stage_problem(index, stage, "gate",
                          f"the evidence of gate {stage.gate!r} shows no metrics: no stage "
                          f"before it declares an output with `role: metrics` (or named "
                          f"metrics)")
            for index, stage in enumerate(config.pipeline.stages)
            if stage.gate and not _with_role(config, upstream[stage.name], "metrics")]
