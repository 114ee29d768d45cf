"""What changed between a candidate release and the version its environment serves now.

The review (JupyterLab form, ``workbench approvals``/``diff``, the gate's archived notebook)
shows it, and an approval records its digest (:attr:`ReleaseDiff.digest`): the reviewer
approved *this* change. Parts, each against the run that released the serving version (the
version the environment's alias points at, and that version's ``workbench.<env>.run`` tag):

- parameters: each stage's resolved parameters that the project sets (literal values, and
  values from ``model.*`` and ``env.*``); values taken from another stage's output or from
  ``run.*`` differ in every run by nature and are left out;
- data: the data contracts checked (file and digest) and the data sets' check counts;
- notebooks: a cell-level diff of each executed stage notebook's source (papermill's injected
  parameters cell left out: the parameters part covers it), cells matched in order;
- metrics: each of the environment's objectives, serving value, candidate value, delta and
  whether it moved the right way; then the other metrics both have;
- plots: the images of each metrics stage, side by side (their sha256 in the digest).

Written here rather than with nbdime: only cell sources are compared and the result must be
plain data (for the digest and for three renderers); difflib does both in a few lines.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel

from workbench import run_record
from workbench.config import Config, Ref
from workbench.project import Project
from workbench.run_record import RunRecord

INJECTED = "injected-parameters"  # papermill's tag of the cell it inserts
MISSING = "(none)"


class ParameterChange(BaseModel):
    stage: str
    name: str
    serving: Any = None
    candidate: Any = None
    change: Literal["changed", "added", "removed"]


class DataChange(BaseModel):
    stage: str
    what: str  # the contract file, or a data set's checks
    serving: str | None
    candidate: str | None


class CellChange(BaseModel):
    change: Literal["modified", "added", "removed"]
    cell: int  # its position in the candidate's notebook (in the serving one when removed)
    cell_type: str
    diff: str  # a unified diff of the source


class NotebookChange(BaseModel):
    stage: str
    notebook: str
    cells: list[CellChange]


class MetricDelta(BaseModel):
    metric: str
    direction: Literal["maximize", "minimize"] | None  # None: not an objective here
    serving: float | None
    candidate: float | None
    delta: float | None
    delta_pct: float | None
    moved: Literal["better", "worse", "same"] | None


class Plots(BaseModel):
    stage: str
    serving: list[str]  # sha256 of each PNG (the images are read from the notebooks to show)
    candidate: list[str]


class ReleaseDiff(BaseModel):
    environment: str
    model: str
    candidate_run: str
    candidate_version: str | None
    serving_run: str | None = None
    serving_version: str | None = None
    note: str | None = None  # why there is nothing to compare, when there is not
    parameters: list[ParameterChange] = []
    data: list[DataChange] = []
    notebooks: list[NotebookChange] = []
    metrics: list[MetricDelta] = []
    plots: list[Plots] = []

    @property
    def digest(self) -> str:
        """sha256 of the diff's canonical JSON: what an approval records it was shown."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def counts(self) -> str:
        """One line: how much changed."""
        cells = sum(len(n.cells) for n in self.notebooks)
        moved = [m for m in self.metrics if m.moved in ("better", "worse")]
        return (f"{len(self.parameters)} parameter(s), {len(self.data)} data item(s), {cells} "
                f"notebook cell(s) changed; {len(moved)} metric(s) moved")


# --- computing it ---------------------------------------------------------------------------


def serving(tracking_uri: str, model: str, environment: str) -> tuple[str | None, str | None]:
    """(version, run id) the environment serves: its alias, and the run that released it."""
    from workbench.registry.store import alias_holder

    embedded = alias_holder(tracking_uri, model, environment)
    if embedded is not None:
        version, tags = embedded
        run = tags.get(f"workbench.{environment}.run") or tags.get("workbench.run_id")
        return version, run if version else None
    from workbench.registry.client import client_for, version_holding

    client = client_for(tracking_uri)
    version = version_holding(client, model, environment)
    if version is None:
        return None, None
    tags = client.get_model_version(model, version).tags or {}
    return version, tags.get(f"workbench.{environment}.run") or tags.get("workbench.run_id")


def compute(project: Project, config: Config, record: RunRecord, environment: str
            ) -> ReleaseDiff:
    """The candidate run ``record`` against what ``environment`` serves now."""
    model = record.model_version
    found = ReleaseDiff(environment=environment, model=config.model.name,
                        candidate_run=record.id,
                        candidate_version=model.version if model else None)
    version, run_id = serving(record.tracking_uri, config.model.name, environment)
    found.serving_version, found.serving_run = version, run_id
    if version is None:
        found.note = f"nothing serves {environment} yet: this is its first release"
        return found
    if run_id is None or run_id == record.id:
        found.note = (f"{environment} serves v{version} of this run already"
                      if run_id == record.id else
                      f"{environment} serves v{version}, which no run of this archive released")
        return found
    try:
        base = run_record.load(project, run_id)
    except Exception:  # noqa: BLE001 - any unreadable record: say so, compare nothing
        found.note = f"{environment} serves v{version} from run {run_id}, not in this archive"
        return found
    stages = [n for n, e in record.stages.items() if e.status in run_record.DONE
              and n in base.stages and base.stages[n].status in run_record.DONE]
    found.parameters = _parameters(config, record, base, stages)
    found.data = _data(record, base, stages)
    found.notebooks = [c for n in stages if (c := _notebook(project, record, base, n)).cells]
    found.metrics = _metrics(config, record, base, environment)
    found.plots = [p for n in stages if (p := _plots(project, record, base, n))]
    return found


def _own(value: Any) -> bool:
    """Whether a configured parameter value is the project's setting (not another stage's
    output, nor the run's identity)."""
    return not isinstance(value, Ref) or value.root in ("model", "env")


def _parameters(config: Config, record: RunRecord, base: RunRecord, stages: list[str]
                ) -> list[ParameterChange]:
    changes: list[ParameterChange] = []
    for name in stages:
        declared = {s.name: s for s in config.pipeline.stages}.get(name)
        own = {k for k, v in declared.parameters.items() if _own(v)} if declared else set()
        new, old = record.stages[name].parameters, base.stages[name].parameters
        for key in sorted(own & (set(new) | set(old))):
            if key not in old:
                changes.append(ParameterChange(stage=name, name=key, candidate=new[key],
                                               change="added"))
            elif key not in new:
                changes.append(ParameterChange(stage=name, name=key, serving=old[key],
                                               change="removed"))
            elif _canonical(new[key]) != _canonical(old[key]):
                changes.append(ParameterChange(stage=name, name=key, serving=old[key],
                                               candidate=new[key], change="changed"))
    return changes


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _data(record: RunRecord, base: RunRecord, stages: list[str]) -> list[DataChange]:
    changes: list[DataChange] = []
    for name in stages:
        new, old = (record.stages[name].output("data_validation"),
                    base.stages[name].output("data_validation"))
        new, old = (new if isinstance(new, dict) else {}), (old if isinstance(old, dict) else {})
        if not new and not old:
            continue
        for what, key in (("contract", "contract"), ("contract digest", "contract_digest")):
            if new.get(key) != old.get(key):
                changes.append(DataChange(stage=name, what=what, serving=_text(old.get(key)),
                                          candidate=_text(new.get(key))))
        new_checks, old_checks = new.get("checks") or {}, old.get("checks") or {}
        for data in sorted(set(new_checks) | set(old_checks)):
            if new_checks.get(data) != old_checks.get(data):
                changes.append(DataChange(stage=name, what=f"{data}: checks",
                                          serving=_text(old_checks.get(data)),
                                          candidate=_text(new_checks.get(data))))
    return changes


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _cells(project: Project, record: RunRecord, stage: str) -> tuple[str, list[tuple[str, str]]]:
    """(archived path, [(cell type, source)]) of a stage's executed notebook, without the
    injected parameters cell."""
    path = run_record.notebook_path(project, record, stage)
    if path is None or not path.is_file():
        return "", []
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = []
    for cell in nb.get("cells", []):
        if INJECTED in (cell.get("metadata", {}).get("tags") or []):
            continue
        source = cell.get("source", "")
        cells.append((str(cell.get("cell_type")),
                      "".join(source) if isinstance(source, list) else str(source)))
    return path.relative_to(project.root).as_posix(), cells


def _notebook(project: Project, record: RunRecord, base: RunRecord, stage: str
              ) -> NotebookChange:
    path, new = _cells(project, record, stage)
    _, old = _cells(project, base, stage)
    found = NotebookChange(stage=stage, notebook=path, cells=[])
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            continue
        pairs = _pairs(old, new, range(a0, a1), range(b0, b1))
        changes = [(j, _cell("modified", j, old[i], new[j])) for i, j in pairs.items()]
        changes += [(i, _cell("removed", i, old[i], ("", ""))) for i in range(a0, a1)
                    if i not in pairs]
        matched = set(pairs.values())
        changes += [(j, _cell("added", j, ("", ""), new[j])) for j in range(b0, b1)
                    if j not in matched]
        found.cells += [change for _, change in sorted(changes, key=lambda c: c[0])]
    return found


SIMILAR = 0.5  # a changed cell shares at least this share of its text with what it was


def _pairs(old: list[tuple[str, str]], new: list[tuple[str, str]], olds: range,
           news: range) -> dict[int, int]:
    """Old cell -> the new cell it became, within one changed block: in order, each to the
    most similar cell of its type left after the last pair, if similar enough."""
    pairs: dict[int, int] = {}
    start = news.start
    for i in olds:
        scored = [(difflib.SequenceMatcher(a=old[i][1], b=new[j][1]).ratio(), j)
                  for j in range(start, news.stop) if new[j][0] == old[i][0]]
        best = max(scored, default=(0.0, -1))
        if best[0] >= SIMILAR:
            pairs[i] = best[1]
            start = best[1] + 1
    return pairs


def _cell(change: Literal["modified", "added", "removed"], index: int, old: tuple[str, str],
          new: tuple[str, str]) -> CellChange:
    lines = difflib.unified_diff(old[1].splitlines(), new[1].splitlines(),
                                 "serving", "candidate", lineterm="", n=2)
    return CellChange(change=change, cell=index, cell_type=new[0] or old[0],
                      diff="\n".join(lines))


def _metrics_of(record: RunRecord) -> dict[str, Any]:
    for entry in record.stages.values():
        metrics = entry.output("metrics")
        if entry.status in run_record.DONE and isinstance(metrics, dict):
            return metrics
    return {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _metrics(config: Config, record: RunRecord, base: RunRecord, environment: str
             ) -> list[MetricDelta]:
    new, old = _metrics_of(record), _metrics_of(base)
    objectives = config.environments[environment].objectives \
        if environment in config.environments else []
    found: list[MetricDelta] = []
    seen: set[str] = set()
    for objective in objectives:
        found.append(_delta(objective.metric, objective.direction, new, old))
        seen.add(objective.metric)
    for metric in sorted((set(new) & set(old)) - seen):
        found.append(_delta(metric, None, new, old))
    return found


def _delta(metric: str, direction: Any, new: dict[str, Any], old: dict[str, Any]
           ) -> MetricDelta:
    candidate, serving = _number(new.get(metric)), _number(old.get(metric))
    delta = pct = None
    moved: Literal["better", "worse", "same"] | None = None
    if candidate is not None and serving is not None:
        delta = candidate - serving
        pct = 100.0 * delta / abs(serving) if serving else None
        if delta == 0:
            moved = "same"
        elif direction is not None:
            moved = "better" if (delta > 0) == (direction == "maximize") else "worse"
    return MetricDelta(metric=metric, direction=direction, serving=serving,
                       candidate=candidate, delta=delta, delta_pct=pct, moved=moved)


def images(project: Project, record: RunRecord, stage: str) -> list[str]:
    """The PNG images (base64) in a stage's executed notebook, in order."""
    path = run_record.notebook_path(project, record, stage)
    if path is None or not path.is_file():
        return []
    found = []
    for cell in json.loads(path.read_text(encoding="utf-8")).get("cells", []):
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                found.append("".join(png) if isinstance(png, list) else str(png))
    return found


def _plots(project: Project, record: RunRecord, base: RunRecord, stage: str) -> Plots | None:
    if not record.stages[stage].output("metrics"):
        return None
    new, old = images(project, record, stage), images(project, base, stage)
    if not new and not old:
        return None
    return Plots(stage=stage, serving=[_png_digest(p) for p in old],
                 candidate=[_png_digest(p) for p in new])


def _png_digest(data: str) -> str:
    return hashlib.sha256(base64.b64decode(data)).hexdigest()


# --- showing it -----------------------------------------------------------------------------


def _value(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if not isinstance(value, str) else value


def text(diff: ReleaseDiff) -> str:
    """The diff for a terminal or a CI log."""
    head = (f"{diff.environment}: candidate v{diff.candidate_version} (run "
            f"{diff.candidate_run}) against")
    if diff.note:
        return f"{head} nothing: {diff.note}"
    lines = [f"{head} v{diff.serving_version} serving (run {diff.serving_run}); diff "
             f"sha256:{diff.digest[:12]}", f"  {diff.counts()}"]
    for p in diff.parameters:
        lines.append(f"  parameter {p.stage}.{p.name}: {_value(p.serving)} -> "
                     f"{_value(p.candidate)}")
    for d in diff.data:
        lines.append(f"  data {d.stage} {d.what}: {d.serving or MISSING} -> "
                     f"{d.candidate or MISSING}")
    for m in diff.metrics:
        change = "" if m.delta is None else f" ({m.delta:+.6g}" + (
            f", {m.delta_pct:+.2f}%" if m.delta_pct is not None else "") + ")"
        goal = f" [{m.direction}: {m.moved}]" if m.direction else ""
        lines.append(f"  metric {m.metric}: {_value(m.serving)} -> {_value(m.candidate)}"
                     f"{change}{goal}")
    for n in diff.notebooks:
        for c in n.cells:
            lines.append(f"  notebook {n.notebook} cell {c.cell} ({c.cell_type}) {c.change}:")
            lines += [f"    {line}" for line in c.diff.splitlines()[2:]]  # no file header
    return "\n".join(lines)


def markdown(diff: ReleaseDiff) -> str:
    """The diff for the review notebook (and its rendered HTML)."""
    from html import escape

    def cell(value: Any) -> str:
        return escape(" ".join(_value(value).split())).replace("|", "\\|")

    title = f"### Changes against what {diff.environment} serves"
    if diff.note:
        return f"{title}\n\nNothing to compare: {escape(diff.note)}."
    parts = [title, "", f"Candidate v{diff.candidate_version} (run `{diff.candidate_run}`) "
             f"against v{diff.serving_version} (run `{diff.serving_run}`); diff "
             f"`sha256:{diff.digest[:12]}` (an approval records it). {diff.counts()}."]
    if diff.parameters:
        parts += ["", "| stage | parameter | serving | candidate |", "|---|---|---|---|"]
        parts += [f"| {p.stage} | {cell(p.name)} | {cell(p.serving)} | {cell(p.candidate)} |"
                  for p in diff.parameters]
    if diff.data:
        parts += ["", "| stage | data | serving | candidate |", "|---|---|---|---|"]
        parts += [f"| {d.stage} | {cell(d.what)} | {cell(d.serving)} | {cell(d.candidate)} |"
                  for d in diff.data]
    if diff.metrics:
        parts += ["", "| metric | objective | serving | candidate | delta | |",
                  "|---|---|---|---|---|---|"]
        for m in diff.metrics:
            delta = "" if m.delta is None else f"{m.delta:+.4g}" + (
                f" ({m.delta_pct:+.2f}%)" if m.delta_pct is not None else "")
            parts.append(f"| {cell(m.metric)} | {m.direction or ''} | {cell(m.serving)} | "
                         f"{cell(m.candidate)} | {delta} | {m.moved or ''} |")
    for n in diff.notebooks:
        for c in n.cells:
            fence = "````" if "```" in c.diff else "```"
            parts += ["", f"`{n.notebook}` cell {c.cell} ({c.cell_type}) **{c.change}**:",
                      f"{fence}diff", c.diff, fence]
    return "\n".join(parts)


def plots_html(project: Project, diff: ReleaseDiff, record: RunRecord) -> str:
    """The plots of each metrics stage side by side (serving left, candidate right)."""
    if not diff.plots or diff.serving_run is None:
        return ""
    base = run_record.load(project, diff.serving_run)
    rows = []
    for plot in diff.plots:
        old, new = images(project, base, plot.stage), images(project, record, plot.stage)
        for i in range(max(len(old), len(new))):
            left = f'<img src="data:image/png;base64,{old[i]}">' if i < len(old) else ""
            right = f'<img src="data:image/png;base64,{new[i]}">' if i < len(new) else ""
            rows.append(f"<tr><td>{left}</td><td>{right}</td></tr>")
    return (f"<table><tr><th>serving v{diff.serving_version}</th><th>candidate "
            f"v{diff.candidate_version}</th></tr>{''.join(rows)}</table>")
