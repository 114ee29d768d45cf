"""The report site: static pages under ``reports/`` that open from disk or from the server.

- ``index.html``: the newest runs (model, version, environments reached, status, approvers,
  times), filterable and sortable in the page, with every older run a page away
  (``shards/runs-NNNNN.html``) and a search that loads every run's row on demand (see
  :mod:`workbench.reports.run_index`);
- ``runs/<run-id>/index.html``: stage timeline, parameters, metrics and plots, links to each
  stage's HTML and notebook, approvals, deployments, the run's ledger entries and whether they
  verify;
- ``environments.html``: per environment, what was deployed when, by whom, approved by whom,
  on which evidence — "what was in prod at time T"; each canary rollout's steps (weight, time,
  analysis verdict, each version's requests, error rate and p95) with an inline SVG plot of
  p95 latency and error rate per version over the steps;
- ``compare.html``: two runs' parameters and metrics side by side.

Pages carry their own data inline. What only some visits need (every run's row for a search,
an older run on the compare page) is in the index's shards, loaded by ``<script>`` elements:
that works from disk and under the server's CSP (``script-src 'self'``), where ``fetch`` would
not. Adding one run re-reads one record and rewrites one shard, so it costs the same at 100
runs as at 100,000.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import jinja2
from filelock import FileLock

from workbench import run_record
from workbench.atomic import write_text
from workbench.audit import ledger
from workbench.events import Bus, RunRecorded
from workbench.project import Project
from workbench.reports import ledger_view, run_index
from workbench.reports.script_data import script_json
from workbench.reports.templating import private_bytecode_cache

LEGACY_CACHE = ".site-cache.json"  # the unsharded summary cache of earlier versions
TEMPLATES = Path(__file__).parent / "site_templates"
# Compiled templates are kept in Jinja's own per-user cache folder (a private folder under the
# temp folder, checked by Jinja; keyed by each template's source), so that a command updating
# the site does not compile its templates again (0.1 s of an unchanged rerun).
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                          autoescape=jinja2.select_autoescape(["html", "j2"]),
                          trim_blocks=True, lstrip_blocks=True,
                          bytecode_cache=private_bytecode_cache())


def _render(template: str, target: Path, **values: Any) -> None:
    write_text(target, _env.get_template(template).render(**values))


def summarise(record: run_record.RunRecord) -> dict[str, Any]:
    """What the index shows of one run."""
    # In pipeline order (stages are stored in that order), not alphabetical: dev → qa → prod.
    reached = list(dict.fromkeys(s.gate["environment"] for s in record.stages.values()
                                 if s.gate and s.status == "succeeded"
                                 and s.gate.get("environment")))
    approvers = sorted({name for s in record.stages.values() if s.gate
                        for name in s.gate.get("approved_by", [])})
    metrics: dict[str, Any] = {}
    for entry in record.stages.values():
        if isinstance(entry.output("metrics"), dict):
            metrics.update(entry.output("metrics"))
    durations = [s.duration_s for s in record.stages.values() if s.duration_s]
    return {
        "id": record.id, "pipeline": record.pipeline, "status": record.status,
        "environment": record.environment, "environments": [record.environment, *reached],
        "model": record.model_version.name if record.model_version else "",
        "version": record.model_version.version if record.model_version else "",
        "approvers": approvers, "created": record.created, "finished": record.finished or "",
        "duration_s": round(sum(durations), 1), "git_commit": record.git_commit[:12],
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
        "parameters": {name: s.parameters for name, s in record.stages.items()},
    }


FIRST_PAGE = 200  # runs on index.html (and inline on compare.html); the rest load on demand


def _summary_of(project: Project) -> run_index.Summarise:
    def summary(run_id: str) -> dict[str, Any] | None:
        try:
            return summarise(run_record.load(project, run_id))
        except run_record.RunRecordError:
            return None  # unreadable: not listed (`workbench runs` names what is wrong)
    return summary


def _mtime_of(project: Project) -> Callable[[str], int | None]:
    def mtime(run_id: str) -> int | None:
        try:
            return (run_record.run_dir(project, run_id) / run_record.RUN_FILE).stat().st_mtime_ns
        except (OSError, ValueError):
            return None
    return mtime


def _run_ids(project: Project) -> list[str]:
    if not project.runs.is_dir():
        return []
    return [f.name for f in project.runs.iterdir() if not f.name.startswith(".")]


def build_index(project: Project, run_ids: Iterable[str] | None = None
                ) -> list[dict[str, Any]]:
    """Bring the run index up to date (``run_ids``: only these runs changed; None: scan the
    archive) and render ``index.html``, the changed shards' pages and ``compare.html``; return
    the first page's summaries, newest first."""
    summary, mtime = _summary_of(project), _mtime_of(project)
    if run_ids is None:
        (project.reports / LEGACY_CACHE).unlink(missing_ok=True)
        manifest = run_index.rebuild(project, _run_ids(project), summary, mtime)
    else:
        manifest = run_index.update(project, run_ids, summary, mtime)
    first = run_index.newest(project, manifest, FIRST_PAGE)
    pages = [{"n": shard.number, "count": shard.count, "first": shard.first[:15],
              "last": shard.last[:15]} for shard in reversed(manifest.shards)]
    common = {"total": manifest.total, "pages": pages, "manifest": script_json(manifest.as_dict()),
              "built": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    shard_pages = manifest.changed if run_ids is not None else \
        {shard.number for shard in manifest.shards}
    for number in sorted(shard_pages):
        runs = run_index.of_shard(project, number)
        name = run_index.shard_name(number, "runs")
        _render("index.html.j2", project.reports / run_index.PUBLIC / f"{name}.html",
                runs=runs, root="../", page=number, **common, **_listing(runs))
    _render("index.html.j2", project.reports / "index.html", runs=first, root="", page=None,
            **common, **_listing(first))
    _render("compare.html.j2", project.reports / "compare.html",
            data=script_json([{k: r.get(k) for k in run_index.COMPARED} for r in first]),
            manifest=script_json(manifest.as_dict()))
    return first


def _listing(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What a page of the index shows of its runs: their rows' data and pipelines."""
    return {"data": script_json([{k: r.get(k) for k in run_index.LISTED} for r in runs]),
            "pipelines": sorted({r["pipeline"] for r in runs if r.get("pipeline")})}


def every_summary(project: Project) -> list[dict[str, Any]]:
    """Every run's summary as last indexed, newest first (reads every shard)."""
    summaries = list(run_index.every(project, run_index.read_manifest(project)))
    return sorted(summaries, key=lambda s: (s.get("created") or "", s["id"]), reverse=True)


HISTORY_PAGE = 500  # newest history items per environment on environments.html


def environment_history(project: Project, newest: int | None = None
                        ) -> dict[str, list[dict[str, Any]]]:
    """Per environment, every alias move, deploy and rollback in ledger order, with its
    approvals (a rollback with its trigger and reason; a deploy with the seq of the alias move
    of its version, or None when no alias move preceded it). Read through the site's ledger
    cursor: only entries appended since the last build are parsed. ``newest``: only each
    environment's last so many (read from the end of its history)."""
    ledger_view.refresh(project, lambda run_id, environment, seqs: _approvals_of(
        project, run_id, environment, seqs))
    extra = 50 if newest else 0  # moves before the first shown, for its deploys' alias_move
    history = ledger_view.history(project, newest + extra if newest else None)
    for items in history.values():
        moves = [i for i in items if i["event"] in ("alias_move", "rollback")]
        for index, current in enumerate(moves):  # an environment may have deploys, no move
            current["until"] = moves[index + 1]["time"] if index + 1 < len(moves) else None
        latest: dict[str, Any] | None = None
        for item in items:  # in ledger order: the move in effect when each deploy happened
            if item["event"] in ("alias_move", "rollback"):
                latest = item
            elif item["event"] == "deploy":
                # the alias move (or rollback) in effect when it deployed, if it named the
                # version deployed; None: a deploy without an alias move, shown as such
                item["alias_move"] = latest["seq"] if latest is not None and \
                    latest["version"] == item["version"] else None
    return {environment: items[-newest:] if newest else items
            for environment, items in history.items()}


def _approvals_of(project: Project, run_id: str | None, environment: str | None,
                  seqs: list[int]) -> list[dict[str, Any]]:
    if not run_id or not seqs:
        return []
    from workbench.audit.journal import JournalError
    from workbench.governance.approvals import read_records

    try:
        records = read_records(project, run_id)
    except JournalError:
        return [{"name": "?", "comment": "approval records fail verification"}]
    return [{"name": r.approver.name, "source": r.approver.source, "time": r.time,
             "comment": r.comment, "bundle": r.bundle_digest[:12],
             "evidence": sorted(r.evidence)}
            for r in records if r.seq in seqs and r.environment == environment]


def build_environments(project: Project) -> None:
    """``environments.html``: each environment's newest :data:`HISTORY_PAGE` items (the time
    lookup covers those; ``workbench audit`` and the ledger keep the rest)."""
    shown = environment_history(project, HISTORY_PAGE)
    total = ledger_view.counts(project)
    older = {environment: max(total.get(environment, 0) - len(items), 0)
             for environment, items in shown.items()}
    _render("environments.html.j2", project.reports / "environments.html", history=shown,
            older=older, data=script_json(shown), drift=drift_history(project),
            canaries=canary_history(project))


# --- canary rollouts: their ledger's canary_step entries, read through a cursor of their own -

CANARY_VIEW = "canary-view.json"
CANARY_STEPS = "canary-steps"
CANARY_NEWEST = 200  # newest steps per environment read for environments.html
CANARY_ROLLOUTS = 20  # newest rollouts shown per environment


def canary_history(project: Project, newest: int = CANARY_NEWEST,
                   rollouts: int = CANARY_ROLLOUTS) -> dict[str, list[dict[str, Any]]]:
    """Per environment, its newest canary rollouts (newest first), each with its steps in
    order (from the ``canary_step`` ledger entries: weight, start and end, verdict, each
    version's traffic) and the geometry of its plot. Only the entries appended since the last
    build are parsed (a cursor like :mod:`ledger_view`'s, under ``reports/.site/``)."""
    _refresh_canary_steps(project)
    folder = project.reports / ".site" / CANARY_STEPS
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        items, last = [], 0
        for line in ledger_view._last_lines(path, newest):
            item = json.loads(line)
            if item["seq"] > last:  # a repeat after a crash: the first counts
                items.append(item)
                last = item["seq"]
        grouped = _rollouts(items)[-rollouts:]
        found[unquote(path.stem)] = [{**r, "plot": _canary_plot(r)} for r in reversed(grouped)]
    return found


def _refresh_canary_steps(project: Project) -> None:
    """Read the ledger from the cursor; append each ``canary_step`` entry's item to its
    environment's file."""
    path = ledger.ledger_path(project.reports)
    folder = project.reports / ".site"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".canary-view.lock")):
        try:
            stored = json.loads((folder / CANARY_VIEW).read_text(encoding="utf-8"))
            view = ledger_view.View(int(stored["offset"]), str(stored["hash"]))
        except (OSError, ValueError, KeyError, TypeError):
            view = ledger_view.View()
        if not path.exists() or not ledger_view._still_valid(path, view):
            view = ledger_view.View()  # the ledger was replaced: read it again
            shutil.rmtree(folder / CANARY_STEPS, ignore_errors=True)
        if not path.exists():
            return
        lines: dict[str, list[bytes]] = {}
        last = b""
        with path.open("rb") as handle:
            handle.seek(view.offset)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # a torn last line: not an entry (yet)
                view.offset += len(raw)
                last = raw
                if b'"canary_step"' not in raw:
                    continue  # only the entries of interest are parsed
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("event") == "canary_step":
                    item = _canary_item(entry)
                    lines.setdefault(str(item["environment"]), []).append(
                        json.dumps(item, separators=(",", ":")).encode() + b"\n")
        if not last:
            return
        try:
            view.hash = str(json.loads(last).get("hash", ""))
        except (ValueError, AttributeError):
            view.hash = ""  # garbage: the next build reads the ledger again
        for environment, chunk in lines.items():
            target = folder / CANARY_STEPS / (quote(environment, safe="") + ".jsonl")
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("ab") as handle:
                handle.write(b"".join(chunk))
        write_text(folder / CANARY_VIEW, json.dumps({"offset": view.offset,
                                                     "hash": view.hash}))


def _traffic_of(numbers: Any) -> dict[str, Any]:
    numbers = numbers if isinstance(numbers, dict) else {}
    return {key: numbers.get(key) for key in ("requests", "errors", "error_rate", "p95_ms")}


def _canary_item(entry: dict[str, Any]) -> dict[str, Any]:
    """What the history keeps of one ``canary_step`` entry."""
    data = entry.get("data") or {}
    ended = str(data.get("time") or entry.get("time") or "")
    started = data.get("started") or ""
    if not started and ended and isinstance(data.get("seconds"), int | float):
        from datetime import datetime, timedelta

        started = (datetime.fromisoformat(ended) - timedelta(seconds=data["seconds"])
                   ).isoformat(timespec="milliseconds")  # before steps recorded their start
    return {"seq": entry.get("seq"), "run_id": entry.get("run_id"),
            "environment": data.get("environment") or "?", "model": data.get("model"),
            "version": str(data.get("version")), "serving_version":
            str(data.get("serving_version")), "rollout": data.get("rollout") or "",
            "step": data.get("step"), "weight": data.get("weight"),
            "seconds": data.get("seconds"), "share": data.get("share"),
            "verdict": data.get("verdict"), "breaches": data.get("breaches") or [],
            "trigger": data.get("trigger") or ("canary" if data.get("verdict") == "abort"
                                               else None),
            "decision": data.get("decision"), "started": started, "ended": ended,
            "candidate": _traffic_of(data.get("candidate")),
            "serving": _traffic_of(data.get("serving"))}


def _rollouts(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps grouped into rollouts, in ledger order: by rollout id, or (steps recorded before
    it) by model and versions, a new rollout whenever the step number does not grow."""
    found: list[dict[str, Any]] = []
    for item in items:
        key = item["rollout"] or f"{item['model']}:{item['version']}:{item['serving_version']}"
        last = found[-1] if found else None
        if last is None or last["key"] != key or \
                int(item.get("step") or 0) <= int(last["steps"][-1].get("step") or 0):
            last = {"key": key, "rollout": item["rollout"], "model": item["model"],
                    "version": item["version"], "serving_version": item["serving_version"],
                    "run_id": item["run_id"], "steps": []}
            found.append(last)
        last["steps"].append(item)
    for rollout in found:
        steps = rollout["steps"]
        aborted = next((s for s in steps if s["verdict"] == "abort"), None)
        rollout["started"], rollout["ended"] = steps[0]["started"], steps[-1]["ended"]
        rollout["outcome"] = (f"aborted at step {aborted['step']} ({aborted['weight']:g}%, "
                              f"{aborted['trigger'] or 'canary'}): "
                              f"{'; '.join(aborted['breaches'])}") if aborted else \
            f"{len(steps)} step(s) passed"
        rollout["aborted"] = aborted is not None
    return found


PLOT_W, PLOT_H, PLOT_PAD = 320, 130, 28


def _canary_plot(rollout: dict[str, Any]) -> list[dict[str, Any]]:
    """Two panels (p95 latency in ms, error rate in %) of one rollout: per version, a line
    over its steps (a point where it had traffic), with axis ticks and labels."""
    steps = rollout["steps"]
    count = len(steps)
    xs = [PLOT_PAD + (index * (PLOT_W - 2 * PLOT_PAD) / (count - 1) if count > 1
                      else (PLOT_W - 2 * PLOT_PAD) / 2) for index in range(count)]
    panels = []
    for metric, title, scale, unit in (("p95_ms", "p95 latency", 1.0, "ms"),
                                       ("error_rate", "error rate", 100.0, "%")):
        series = []
        for role, version in (("candidate", rollout["version"]),
                              ("serving", rollout["serving_version"])):
            values = [_scaled(step[role], metric, scale) for step in steps]
            series.append((role, version, values))
        top = max([v for _, _, values in series for v in values if v is not None],
                  default=0.0) or 1.0
        lines = []
        for role, version, values in series:
            dots = [{"x": round(x, 1), "y": round(PLOT_H - PLOT_PAD - value / top
                                                  * (PLOT_H - 2 * PLOT_PAD), 1),
                     "title": f"v{version} ({role}) step {step['step']} "
                              f"({step['weight']:g}%): {value:.{1 if unit == 'ms' else 2}f} "
                              f"{unit}"}
                    for x, value, step in zip(xs, values, steps, strict=True)
                    if value is not None]
            lines.append({"role": role, "version": version, "dots": dots,
                          "points": " ".join(f"{d['x']},{d['y']}" for d in dots)})
        panels.append({"metric": metric, "title": f"{title} ({unit})", "top": top,
                       "top_label": f"{top:.{1 if unit == 'ms' else 2}f}", "lines": lines,
                       "width": PLOT_W, "height": PLOT_H, "pad": PLOT_PAD,
                       "ticks": [{"x": round(x, 1), "label": f"{step['weight']:g}%"}
                                 for x, step in zip(xs, steps, strict=True)]})
    return panels


def _scaled(traffic: dict[str, Any], metric: str, scale: float) -> float | None:
    """One version's measure in a step (None: it had no request in that step)."""
    value = traffic.get(metric)
    if not traffic.get("requests") or not isinstance(value, int | float):
        return None
    return float(value) * scale


def drift_history(project: Project, per_environment: int = 20) -> dict[str, list[dict[str, Any]]]:
    """Per environment, its newest drift checks (``reports/drift/``), newest first, each
    drifted feature with the bars of its two distributions."""
    from workbench.audit import journal

    folder = project.reports / "drift"
    if not folder.is_dir():
        return {}
    try:
        entries = journal.read(folder)
    except journal.JournalError:
        return {}  # `audit verify` names what is wrong; the page shows the rest
    found: dict[str, list[dict[str, Any]]] = {}
    for entry in reversed(entries):
        checks = found.setdefault(str(entry.get("environment")), [])
        if len(checks) >= per_environment:
            continue
        features = entry.get("features") or []
        checks.append({**entry, "plots": [_drift_bars(f) for f in features
                                          if f.get("drifted") and f.get("bins")]})
    return found


def _drift_bars(feature: dict[str, Any], width: int = 360, height: int = 90) -> dict[str, Any]:
    """Bar geometry of a drifted feature: per bin, the baseline's and the served share."""
    bins = feature["bins"]
    top = max([*feature["baseline_shares"], *feature["current_shares"], 1e-9])
    step = width / max(len(bins), 1)
    bars = []
    for index, label in enumerate(bins):
        for offset, (kind, share) in enumerate((("baseline", feature["baseline_shares"][index]),
                                               ("served", feature["current_shares"][index]))):
            tall = round(share / top * (height - 12), 1)
            bars.append({"x": round(index * step + offset * step / 2 + 1, 1),
                         "y": round(height - tall, 1), "w": round(step / 2 - 2, 1),
                         "h": tall, "kind": kind, "title": f"{label}: {kind} {share:.1%}"})
    name = "predictions" if feature["feature"] == "__prediction__" else feature["feature"]
    return {"name": name, "statistic": feature["statistic"], "value": feature["value"],
            "threshold": feature["threshold"], "bars": bars, "width": width,
            "height": height}


def _plots(path: Path, limit: int = 6) -> list[str]:
    """PNG outputs of an archived notebook, as data URIs."""
    found: list[str] = []
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png and len(found) < limit:
                text = "".join(png) if isinstance(png, list) else png
                base64.b64decode(text[:8])  # sanity: it is base64
                found.append("data:image/png;base64," + text.replace("\n", ""))
    return found


def build_run_page(project: Project, run_id: str) -> Path:
    from workbench.governance.approvals import read_records
    from workbench.governance.promotion import read_moves

    record = run_record.load(project, run_id)
    folder = run_record.run_dir(project, run_id)
    ledger_view.refresh(project, lambda run, environment, seqs: _approvals_of(
        project, run, environment, seqs))
    entries = ledger_view.run_entries(project, run_id)
    status = _entry_status(project.reports, entries)
    stages = []
    start = min((s.started for s in record.stages.values() if s.started), default=None)
    for name, entry in record.stages.items():
        notebook = run_record.notebook_path(project, record, name)
        rel = None
        if notebook is not None:
            rel = Path("..") / notebook.parent.name / notebook.name if entry.reused_from \
                else Path(notebook.name)
        stages.append({
            "name": name, "status": entry.status, "duration_s": entry.duration_s or 0,
            "started": entry.started, "error": entry.error, "reused_from": entry.reused_from,
            "failure": entry.failure, "attempts": [a.model_dump() for a in entry.attempts],
            "parameters": entry.parameters, "outputs": entry.outputs, "gate": entry.gate,
            "ipynb": rel.as_posix() if rel else None,
            "html": rel.with_suffix(".html").as_posix()
            if rel and notebook and notebook.with_suffix(".html").exists() else None,
            "plots": _plots(notebook) if notebook and notebook.is_file()
            and entry.output("metrics") else [],
        })
    longest = max((entry.duration_s or 0.0 for entry in record.stages.values()),
                  default=0.0) or 1
    approvals = _verified(lambda: read_records(project, run_id))
    promotions = _verified(lambda: read_moves(project, run_id))
    deploys = [e for e in entries if e["event"] == "deploy"]
    target = folder / "index.html"
    packs = sorted(p.name for p in folder.glob("evidence-*.zip"))  # workbench evidence
    attestations = sorted(p.name for p in folder.glob("attestation-*.json"))
    _render("run.html.j2", target, record=record, stages=stages, longest=longest,
            approvals=approvals, promotions=promotions, deploys=deploys, entries=entries,
            entry_status=status, started=start, packs=packs, attestations=attestations)
    return target


def _verified(read: Callable[[], Sequence[Any]]) -> Sequence[Any]:
    """A record folder's typed entries, or one row naming why they fail verification."""
    from workbench.audit.journal import JournalError

    try:
        return read()
    except JournalError as exc:
        return [{"seq": "?", "error": str(exc)}]


def _entry_status(reports: Path, entries: list[dict[str, Any]]) -> dict[int, str]:
    """Per ledger entry of a run: ``ok`` or what fails (its own hash and its files)."""
    result: dict[int, str] = {}
    for entry in entries:
        problems = []
        if entry.get("hash") != ledger.entry_hash(entry):
            problems.append("entry edited")
        for name, digest in (entry.get("files") or {}).items():
            path = reports / name
            if not path.is_file():
                problems.append(f"{name} missing")
            elif ledger.file_sha256(path) != digest:
                problems.append(f"{name} changed")
        result[entry["seq"]] = "; ".join(problems) or "ok"
    return result


def build(project: Project, run_id: str | None = None) -> Path:
    """Rebuild the index, history and compare pages, and one run's page (or every run's)."""
    project.reports.mkdir(parents=True, exist_ok=True)
    build_index(project, [run_id] if run_id else None)
    build_environments(project)
    targets = [run_id] if run_id else [r["id"] for r in every_summary(project)]
    for target in targets:
        build_run_page(project, target)
    return project.reports / "index.html"


def render_missing(project: Project) -> int:
    """Render every archived notebook that has no HTML beside it yet (scanned for secrets and
    recorded in the ledger as a run renders its own); return how many."""
    from workbench.audit.redact import Secrets
    from workbench.reports.publisher import render_stage

    count = 0
    for notebook in sorted(project.runs.glob("*/*.ipynb")) if project.runs.is_dir() else []:
        if notebook.parent.name.startswith(".") or notebook.with_suffix(".html").exists():
            continue
        try:
            record = run_record.load(project, notebook.parent.name)
        except run_record.RunRecordError:
            continue  # not a run's folder: nothing of ours to render
        names = _secret_names(record.config)
        render_stage(project, record, notebook.stem, notebook, Secrets.from_environment(names))
        count += 1
    return count


def _secret_names(sources: dict[str, str]) -> list[str]:
    """The secrets a run's configuration names (none when it cannot be read)."""
    from workbench.config import ConfigError, parse_config

    try:
        return list(parse_config(dict(sources)).pipeline.secrets)
    except ConfigError:
        return []


class SiteBuilder:
    """Rebuilds the report site's index, history and the run's page once its outcome is
    recorded."""

    def __init__(self) -> None:
        self._bus: Bus | None = None

    def bind(self, bus: Bus) -> None:
        self._bus = bus

    def on_run_recorded(self, event: RunRecorded) -> None:
        try:
            build(event.project, event.record.id)
        except Exception as exc:  # noqa: BLE001 - the run and its archive are complete already
            if self._bus is not None:
                self._bus.warn(f"report site not updated: {exc}")
