"""A Markdown summary of a run for CI pages (``GITHUB_STEP_SUMMARY`` when it is set)."""

from __future__ import annotations

import os
from pathlib import Path

from workbench.run_record import RunRecord

MARKS = {"succeeded": "✅", "reused": "♻️", "failed": "❌", "skipped": "⏭️",
         "awaiting_approval": "⏸️", "pending": "…", "not_selected": "—", "running": "▶️"}


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def to_markdown(record: RunRecord) -> str:
    model = (f" · model `{record.model_version.name}` v{record.model_version.version}"
             if record.model_version else "")
    lines = [f"### workbench run `{record.id}`: {record.status}", "",
             f"pipeline `{record.pipeline}` · environment `{record.environment}` · git "
             f"`{record.git_commit[:12]}`{model}", "",
             "| stage | status | time | notes |", "|---|---|---|---|"]
    for name, stage in record.stages.items():
        took = f"{stage.duration_s:.1f} s" if stage.duration_s is not None else ""
        note = stage.error or ""
        if stage.reused_from:
            note = f"reused from `{stage.reused_from}`"
        if stage.gate:
            gate = stage.gate
            who = ", ".join(gate["approved_by"]) or "nobody yet"
            note = (f"{gate['state']}: {len(gate['approved_by'])} of {gate['quorum']} "
                    f"({who}); bundle `{gate['bundle_digest'][:12]}`") + (
                        f"; {note}" if note else "")
        lines.append(f"| {name} | {MARKS.get(stage.status, '')} {stage.status} | {took} | "
                     f"{_cell(note)} |")
    if record.status == "awaiting_approval":
        lines += ["", f"Approve with `workbench approve {record.id} --env ENV`, then "
                      f"`workbench resume {record.id}`."]
    return "\n".join(lines) + "\n"


def write(record: RunRecord, path: Path | None) -> list[Path]:
    """Append the summary to ``path`` and to ``$GITHUB_STEP_SUMMARY``; return where it went."""
    targets = [p for p in (path, os.environ.get("GITHUB_STEP_SUMMARY")) if p]
    written: list[Path] = []
    text = to_markdown(record)
    for target in dict.fromkeys(Path(t) for t in targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as handle:
            handle.write(text)
        written.append(target)
    return written


def write_outputs(record: RunRecord) -> None:
    """The run id and status for later CI steps: ``$GITHUB_OUTPUT`` (``run_id``, ``status``)
    and ``$WORKBENCH_DOTENV`` (``WORKBENCH_RUN_ID``, ``WORKBENCH_RUN_STATUS``; GitLab's dotenv
    report, Jenkins' readFile), when set."""
    targets = {
        "GITHUB_OUTPUT": f"run_id={record.id}\nstatus={record.status}\n",
        "WORKBENCH_DOTENV": f"WORKBENCH_RUN_ID={record.id}\nWORKBENCH_RUN_STATUS={record.status}\n",
    }
    for variable, text in targets.items():
        path = os.environ.get(variable)
        if not path:
            continue
        if variable == "WORKBENCH_DOTENV":  # one run per file: later values replace earlier
            Path(path).write_text(text, encoding="utf-8")
        else:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(text)
