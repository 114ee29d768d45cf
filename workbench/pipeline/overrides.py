"""Per-run parameter overrides: ``workbench run -p STAGE.PARAM=VALUE`` and ``-p model.KEY=VALUE``.

A value is read as YAML (``5`` is an int, ``[a, b]`` a list, ``{x: 1}`` a dict) and then typed
by the notebook's annotation exactly as a configured value is (see
:meth:`~workbench.execution.parameters.Declared.accepts`): a parameter that takes a ``str``
receives the text as written (``007`` stays ``"007"``). A stage override replaces that stage's
parameter, configured or only a notebook default; a model override replaces the value every
``{from: model.KEY}`` reference sees (not what the workbench itself reads from
``configs/model.yaml``). Everything is checked before anything runs; a mistake is a
:class:`OverrideError` (exit 2) naming the stage and the parameter.

The checked overrides are kept in the run record (``overrides``, keyed ``"stage.param"`` and
``"model.key"``), recorded in the ledger's ``run_started`` entry, and applied by
:func:`workbench.stage_graph.resolve_parameters`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from workbench.config import Config, Ref, _StrictLoader
from workbench.errors import WorkbenchError
from workbench.execution.parameters import Declared, NotebookError, read_parameters_cell
from workbench.pipeline.validate import _expected
from workbench.project import Project
from workbench.stage_graph import MissingValue, lookup, overridden_model, refs_in

MODEL_ROOT = "model"
# configs/model.yaml keys the workbench itself acts on (the registered model's name: gates,
# bundles, rollback, deploy targets), so a run cannot see another value than its references
ENGINE_KEYS = frozenset({"name"})


class OverrideError(WorkbenchError, ValueError):
    """A ``-p`` override names an unknown stage, parameter or model key, or has the wrong type."""


@dataclass(frozen=True)
class Given:
    """One override as given: ``key`` (``stage.param`` or ``model.key``), its text as written
    (``None`` when it comes typed already, from an earlier run's record) and its YAML value."""

    key: str
    text: str | None
    value: Any

    @property
    def shown(self) -> str:
        written = self.text if self.text is not None else json.dumps(self.value)
        return f"-p {self.key}={written}"


def parse(items: Iterable[str]) -> list[Given]:
    """``STAGE.PARAM=VALUE`` items as given on the command line; VALUE read as YAML."""
    found: list[Given] = []
    seen: set[str] = set()
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        root, dot, rest = key.partition(".")
        if not sep or not dot or not root or not rest:
            raise OverrideError(f"-p {item}: expected STAGE.PARAM=VALUE or model.KEY=VALUE")
        if key in seen:
            raise OverrideError(f"-p {item}: {key} is given more than once")
        seen.add(key)
        try:
            value = yaml.load(text, Loader=_StrictLoader) if text.strip() else ""  # nosec B506
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            raise OverrideError(f"-p {item}: the value is not valid YAML: {problem}") from None
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            value = text  # a date, a timestamp, .nan: not JSON; only a str parameter takes it
        found.append(Given(key, text, value))
    return found


def _value_for(declared: list[Declared], given: Given) -> Any:
    """The YAML value, or the text as written when the parameters take a ``str`` and not the
    YAML value (or the YAML value is a string: quotes and all are kept)."""
    if given.text is None or not declared:
        return given.value
    raw = given.text
    if all(d.accepts(raw) and (isinstance(given.value, str) or not d.accepts(given.value))
           for d in declared):
        return raw
    return given.value


def _mismatch(given: Given, stage: str, declared: Declared, notebook: str, value: Any,
              via: str = "") -> OverrideError:
    return OverrideError(f"{given.shown}: stage {stage!r} declares {declared.name}: "
                         f"{_expected(declared)} in {notebook}{via}; got "
                         f"{type(value).__name__} {value!r}")


class _Notebooks:
    """Parameters cells, read once each."""

    def __init__(self, project: Project):
        self.project = project
        self.cells: dict[str, Any] = {}

    def cell(self, notebook: str) -> Any:
        if notebook not in self.cells:
            try:
                self.cells[notebook] = read_parameters_cell(
                    self.project.root / notebook, cache=self.project.local_state / "cache")
            except (NotebookError, OSError) as exc:
                raise OverrideError(f"{notebook}: {exc}") from None
        return self.cells[notebook]


def check(project: Project, config: Config, given: list[Given]) -> dict[str, Any]:
    """The overrides typed and checked against the notebooks and ``configs/model.yaml``;
    :class:`OverrideError` names the first that does not fit."""
    notebooks = _Notebooks(project)
    stages = [s.name for s in config.pipeline.stages]
    typed: dict[str, Any] = {}
    for item in given:
        root, _, rest = item.key.partition(".")
        if root == MODEL_ROOT:
            continue  # below, once the stage overrides are known (model is not a stage name:
            # `from: model.KEY` always means configs/model.yaml)
        if root not in stages:
            raise OverrideError(f"{item.shown}: no stage {root!r}; stages are "
                                f"{', '.join(stages)} (or model.KEY for configs/model.yaml)")
        stage = config.stage(root)
        cell = notebooks.cell(stage.notebook)
        declared = cell.declared.get(rest)
        if declared is None or rest not in cell.papermill:
            why = "declares no parameter" if declared is None else \
                "has a parameter papermill does not read:"
            raise OverrideError(f"{item.shown}: stage {root!r} {why} {rest!r} in the parameters "
                                f"cell of {stage.notebook}; it declares "
                                f"{', '.join(sorted(cell.papermill)) or 'none'}")
        value = _value_for([declared], item)
        if not declared.accepts(value):
            raise _mismatch(item, root, declared, stage.notebook, value)
        typed[item.key] = value
    model_items = [i for i in given if i.key.partition(".")[0] == MODEL_ROOT]
    if model_items:
        typed.update(_check_model(config, notebooks, model_items, typed))
    return typed


def _referencing(config: Config, notebooks: _Notebooks, keys: list[str],
                 stage_overrides: dict[str, Any]) -> list[tuple[str, str, Ref, Declared | None]]:
    """(stage, parameter, reference, declared: None when nested in a literal) for each
    reference into ``model.<keys>`` or under it or above it that no stage override replaces."""
    found: list[tuple[str, str, Ref, Declared | None]] = []
    for stage in config.pipeline.stages:
        for param, value in stage.parameters.items():
            if f"{stage.name}.{param}" in stage_overrides:
                continue
            for where, ref in refs_in(value):
                shorter = min(len(ref.keys), len(keys))
                if ref.root != MODEL_ROOT or ref.keys[:shorter] != keys[:shorter]:
                    continue
                declared = notebooks.cell(stage.notebook).declared.get(param) \
                    if where == "" else None
                found.append((stage.name, param, ref, declared))
    return found


def _check_model(config: Config, notebooks: _Notebooks, items: list[Given],
                 stage_overrides: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    current = config.model.model_dump()
    for item in items:
        keys = item.key.split(".")[1:]
        if keys[0] in ENGINE_KEYS:
            raise OverrideError(f"{item.shown}: the workbench itself uses model.{keys[0]} (the "
                                f"registered model's name: gates, rollback, deploys), so it "
                                f"cannot differ for one run; change configs/model.yaml")
        try:
            configured = lookup(current, keys)
        except MissingValue as exc:
            gap = str(exc).split(".")
            parent = lookup(current, gap[:-1]) if len(gap) > 1 else current
            known = ", ".join(sorted(parent)) if isinstance(parent, dict) else "none"
            raise OverrideError(f"{item.shown}: configs/model.yaml has no key {exc}; it has "
                                f"{known}") from None
        users = _referencing(config, notebooks, keys, stage_overrides)
        direct = [d for _, _, ref, d in users if d is not None and ref.keys == keys]
        if direct:
            value = _value_for(direct, item)
        else:
            value = item.text if isinstance(configured, str) and item.text is not None \
                else item.value
        typed[item.key] = value
    model = overridden_model(current, typed)
    try:
        type(config.model).model_validate(model)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        key = next((i for i in items if where.startswith(i.key.split(".", 1)[1])), items[0])
        raise OverrideError(f"{key.shown}: configs/model.yaml {where}: {error['msg']}") \
            from None
    for item in items:
        keys = item.key.split(".")[1:]
        for stage_name, param, ref, declared in _referencing(config, notebooks, keys,
                                                             stage_overrides):
            notebook = config.stage(stage_name).notebook
            try:
                seen = lookup(model, ref.keys)
            except MissingValue as exc:
                raise OverrideError(f"{item.shown}: stage {stage_name!r}, parameter {param!r} "
                                    f"reads 'from: {ref.source}', and the override has no key "
                                    f"{exc}") from None
            if declared is not None and not declared.accepts(seen):
                raise _mismatch(item, stage_name, declared, notebook, seen,
                                f" (from: {ref.source})")
    return typed


def from_command_line(project: Project, config: Config, items: Iterable[str]) -> dict[str, Any]:
    """``-p`` items parsed, typed and checked (see :func:`check`)."""
    return check(project, config, parse(items))


def from_record(project: Project, config: Config, overrides: dict[str, Any]) -> dict[str, Any]:
    """An earlier run's overrides (already typed), checked against today's notebooks."""
    return check(project, config, [Given(key, None, value) for key, value in overrides.items()])
