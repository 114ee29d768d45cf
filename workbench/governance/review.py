"""What ``notebooks/approve.ipynb`` shows and does: evidence, the approval form, the summary.

Interactive (JupyterLab) it builds an ipywidgets form whose buttons call
:func:`workbench.governance.approvals.submit`, the same call as ``workbench approve``, and waits
for the decision with ``await`` so the kernel keeps handling the clicks. Headless (papermill, CI)
it never creates a widget and never waits: it reads the recorded decision.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import identity, run_record
from workbench.audit import ledger
from workbench.clock import stamped_id
from workbench.config import Config, Stage
from workbench.governance import approvals, release_diff
from workbench.governance.bundle import Bundle
from workbench.project import Project, find_project
from workbench.records import ApprovalRecord

MODES = ("auto", "interactive", "headless")
SIGNING_KEY_VARIABLE = "WORKBENCH_SIGNING_KEY"  # the form's default key, as the CLI's --sign


def resolve_mode(mode: str) -> str:
    """``auto``: interactive in a Jupyter server session (it sets JPY_SESSION_NAME), headless
    under papermill, nbconvert and ``workbench run``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    in_server = bool(os.environ.get("JPY_SESSION_NAME"))
    return "interactive" if in_server and not os.environ.get("WORKBENCH_RUN_ID") else "headless"


def _cell(text: object) -> str:
    """User text made safe for one Markdown table cell (no HTML, no column breaks)."""
    return html.escape(" ".join(str(text).split())).replace("|", "\\|")


def _markdown(text: str) -> None:
    from IPython.display import Markdown, display

    display(Markdown(text))


def _number(value: Any) -> str:
    """A metric as the evidence table shows it: 4 decimals for numbers, ``-`` for none."""
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) \
        else str(value)


@dataclass
class Review:
    """One run's release into one environment, as a reviewer sees it."""

    project: Project
    record: run_record.RunRecord
    environment: str
    verdict: approvals.Verdict
    bundle: Bundle
    submitted: list[ApprovalRecord] = field(default_factory=list)
    diff: release_diff.ReleaseDiff | None = None  # against what the environment serves

    def changes(self) -> release_diff.ReleaseDiff:
        """What this release changes against what the environment serves (computed once: the
        reviewer approves the diff they were shown)."""
        if self.diff is None:
            config = approvals.run_config(self.record)
            self.diff = release_diff.compute(self.project, config, self.record,
                                             self.environment)
        return self.diff

    # --- evidence ---------------------------------------------------------------------------

    def show_evidence(self) -> None:
        """Release, policy, metrics against the champion, plots, load tests, decisions so far."""
        model = self.record.model_version
        config = approvals.run_config(self.record)
        policy = config.gates.policies[self.environment]
        self_ok = config.gates.allows_self_approval(self.environment)
        lines = [f"## Release of run `{self.record.id}` to **{self.environment}**", "",
                 f"- model: `{model.name}` version **{model.version}**" if model else "",
                 f"- bundle: `sha256:{self.bundle.digest}`",
                 f"- git commit `{self.record.git_commit[:12]}`, config "
                 f"`{self.record.config_hash[:12]}`",
                 f"- policy: {policy.quorum} approval(s) from "
                 f"{', '.join(sorted(config.gates.approvers(self.environment)))}; valid for "
                 f"{policy.valid_for}; self-approval "
                 f"{'allowed' if self_ok else 'not allowed'}"]
        _markdown("\n".join(line for line in lines if line))
        self._show_changes()
        self._show_data_checks()
        self._show_metrics()
        self._show_plots()
        self._show_load_tests()
        self._show_shadows()
        self._show_decisions()

    def _show_changes(self) -> None:
        """The diff against the serving version, its plots side by side."""
        from IPython.display import HTML, display

        diff = self.changes()
        _markdown(release_diff.markdown(diff))
        side_by_side = release_diff.plots_html(self.project, diff, self.record)
        if side_by_side:
            display(HTML(side_by_side))

    def _show_data_checks(self) -> None:
        """The data contracts checked before training: the contract file, its digest (part of
        the bundle) and the verdict per data set."""
        for name, entry in self.record.stages.items():
            checked = entry.output("data_validation")
            if entry.status not in run_record.DONE or not isinstance(checked, dict):
                continue
            counts = ", ".join(f"{data}: {n} checks" for data, n in
                               (checked.get("checks") or {}).items())
            verdict = "passed" if checked.get("passed") else "failed"
            _markdown(f"### Data contract checked by `{name}`\n\n"
                      f"`{checked.get('contract')}` (sha256 "
                      f"`{str(checked.get('contract_digest'))[:12]}`): **{verdict}** "
                      f"({counts})")

    def _show_metrics(self) -> None:
        for name, entry in self.record.stages.items():
            metrics = entry.output("metrics")
            if entry.status not in run_record.DONE or not isinstance(metrics, dict):
                continue
            champion = entry.output("champion")
            champion = champion if isinstance(champion, dict) else {}
            head = f"### Metrics from `{name}`"
            if champion.get("version"):
                head += f" against champion v{champion['version']}"
            rows = [head, "", "| metric | candidate | champion |", "|---|---|---|"]
            for key, value in metrics.items():
                rows.append(f"| {key} | {_number(value)} | {_number(champion.get(key))} |")
            verdict = entry.output("verdict")
            if verdict is not None:
                rows += ["", f"Evaluation **{'passed' if verdict else 'failed'}**."]
            _markdown("\n".join(rows))

    def _show_plots(self) -> None:
        from IPython.display import Image, display

        for name, entry in self.record.stages.items():
            path = run_record.notebook_path(self.project, self.record, name)
            if path is None or not entry.output("metrics") or not path.is_file():
                continue
            for cell in json.loads(path.read_text(encoding="utf-8")).get("cells", []):
                for output in cell.get("outputs", []):
                    png = output.get("data", {}).get("image/png")
                    if png:
                        text = "".join(png) if isinstance(png, list) else png
                        display(Image(data=base64.b64decode(text)))

    def _show_load_tests(self) -> None:
        for name, entry in self.record.stages.items():
            legacy = not entry.roles and name.startswith("load_test")  # older records
            if (entry.output("load_test") is not None or legacy) \
                    and entry.status in run_record.DONE:
                rows = [f"### Load test `{name}`", "", "| measure | value |", "|---|---|"]
                rows += [f"| {key} | {value} |" for key, value in entry.outputs.items()]
                _markdown("\n".join(rows))

    def _show_shadows(self) -> None:
        """Every shadow window this run ran (ledger ``shadow`` entries): what the candidate
        would have answered to live traffic, against the serving version."""
        from workbench.deploy.shadow import shadow_markdown

        for entry in ledger.index(self.project.reports, {self.record.id}).of_run(
                self.record.id, "shadow"):
            _markdown(shadow_markdown(entry.get("data") or {}))

    def _show_decisions(self) -> None:
        records = [r for r in approvals.read_records(self.project, self.record.id)
                   if r.environment == self.environment]
        if not records:
            _markdown("No decisions recorded yet.")
            return
        rows = ["### Decisions recorded", "", "| # | decision | by | time | comment | counts |",
                "|---|---|---|---|---|---|"]
        uncounted = {n["seq"]: n["reason"] for n in self.verdict.not_counted}
        for r in records:
            counts = "no: " + uncounted[r.seq] if r.seq in uncounted else "yes"
            rows.append(f"| {r.seq} | {r.decision} | {_cell(r.approver.name)} "
                        f"({r.approver.source}) | {r.time[:19]} | "
                        f"{_cell(r.comment or '')} | {_cell(counts)} |")
        _markdown("\n".join(rows))

    # --- deciding -----------------------------------------------------------------------------

    def decide(self, decision: approvals.Decision, name: str, comment: str | None,
               via: str = "notebook", sign_with: Path | None = None) -> ApprovalRecord:
        """Record a decision through the library call the CLI uses (signed with the SSH key
        ``sign_with`` when given)."""
        who = identity.current(name or None)
        entry, bundle, trust = approvals.submit(self.project, self.record, self.environment,
                                                decision, who, comment, via=via,
                                                sign_with=sign_with,
                                                diff_shown=self.changes().digest)
        self.submitted.append(entry)
        self.verdict, self.bundle = approvals.status(self.project, self.record,
                                                     self.environment, bundle=bundle,
                                                     trust=trust)
        return entry

    def refresh(self) -> approvals.Verdict:
        """The verdict as of now."""
        self.verdict, self.bundle = approvals.status(self.project, self.record,
                                                     self.environment)
        return self.verdict

    def form(self) -> ApprovalForm:
        return ApprovalForm(self)

    # --- the end ------------------------------------------------------------------------------

    def summary(self) -> str:
        """The decision as Markdown (readable in rendered HTML without JavaScript); also glued
        as the stage's outputs ``decision``, ``approvers`` and ``bundle_digest``."""
        from workbench.scraps import glue

        verdict = self.refresh()
        title = {"approved": "Approved", "rejected": "Rejected",
                 "awaiting": "Awaiting approval"}[verdict.state]
        text = (f"## {title}: {self.environment}\n\n"
                + "\n".join(f"    {line}" for line in verdict.describe(self.record.id)
                            .splitlines()))
        _markdown(text)
        glue("decision", verdict.state)
        glue("approvers", verdict.approved_by)
        glue("bundle_digest", verdict.bundle_digest)
        return text


class ApprovalForm:
    """Approver, comment, Approve and Reject: a click records the decision at once. While a
    canary on the environment is held at a manual step, Promote canary and Abort canary too
    (the same fields; :func:`workbench.governance.canary_control.submit`, as ``workbench
    canary promote|abort``)."""

    def __init__(self, review: Review):
        import ipywidgets as widgets

        self.review = review
        platform = identity.platform_identity()
        self.approver = widgets.Text(value=platform.name if platform else "",
                                     description="Approver", placeholder="your name",
                                     disabled=platform is not None)
        self.comment = widgets.Textarea(description="Comment", placeholder="why (required to "
                                        "reject, and at a strict gate)")
        required = review.verdict.signature_required
        self.key = widgets.Text(value=os.environ.get(SIGNING_KEY_VARIABLE, ""),
                                description="SSH key", placeholder="~/.ssh/id_ed25519 (sign "
                                "the decision" + (": required here)" if required else ")"))
        self.approve_button = widgets.Button(description="Approve", button_style="success",
                                             icon="check")
        self.reject_button = widgets.Button(description="Reject", button_style="danger",
                                            icon="times")
        self.status = widgets.HTML(value=f"<b>{review.verdict.state}</b>: "
                                         f"{review.verdict.missing} more approval(s) needed")
        self.approve_button.on_click(lambda _b: self._submit("approve"))
        self.reject_button.on_click(lambda _b: self._submit("reject"))
        self.widget = widgets.VBox([self.approver, self.comment, self.key,
                                    widgets.HBox([self.approve_button, self.reject_button]),
                                    self.status, *self._canary_controls(widgets)])
        self.done = False

    def _canary_controls(self, widgets: Any) -> list[Any]:
        """Promote and abort buttons for a canary held at a manual step (none otherwise)."""
        from workbench.governance import canary_control

        try:
            held = canary_control.held(self.review.project, self.review.environment)
        except Exception:  # noqa: BLE001 - the approval form works without them
            held = None
        if held is None or held.get("status") != "paused":
            return []
        self.promote_canary = widgets.Button(description="Promote canary", icon="forward",
                                             button_style="warning")
        self.abort_canary = widgets.Button(description="Abort canary", icon="stop",
                                           button_style="danger")
        self.canary_status = widgets.HTML(value=html.escape(
            f"canary of {held.get('model')} v{held.get('version')} held at step "
            f"{held.get('step')} ({float(held.get('weight') or 0):g}%): promote or abort it"))
        self.promote_canary.on_click(lambda _b: self._decide_canary("promote"))
        self.abort_canary.on_click(lambda _b: self._decide_canary("abort"))
        return [widgets.HBox([self.promote_canary, self.abort_canary]), self.canary_status]

    def _decide_canary(self, decision: Any) -> None:
        from workbench.governance import canary_control

        try:
            key = self.key.value.strip()
            entry, verdict = canary_control.submit(
                self.review.project, self.review.environment, decision,
                identity.current(self.approver.value or None), self.comment.value,
                via="notebook", sign_with=Path(key).expanduser() if key else None)
        except Exception as exc:  # shown in the form; the person can correct and retry
            self.canary_status.value = f"<b>not recorded</b>: {html.escape(str(exc))}"
            return
        self.canary_status.value = (f"<b>recorded</b> #{entry.seq}: {decision} of canary step "
                                    f"{entry.step} by {html.escape(entry.approver.name)}; "
                                    f"{html.escape(verdict.awaited().splitlines()[0])}")

    def _submit(self, decision: approvals.Decision) -> None:
        try:
            key = self.key.value.strip()
            entry = self.review.decide(decision, self.approver.value, self.comment.value,
                                       sign_with=Path(key).expanduser() if key else None)
        except Exception as exc:  # shown in the form; the person can correct and retry
            self.status.value = f"<b>not recorded</b>: {html.escape(str(exc))}"
            return
        self.done = True
        for item in (self.approver, self.comment, self.key, self.approve_button,
                     self.reject_button):
            item.disabled = True
        signed = f", signed {entry.signature.fingerprint}" if entry.signature else ""
        self.status.value = (f"<b>recorded</b> #{entry.seq}: {decision} by "
                             f"{html.escape(entry.approver.name)}{html.escape(signed)}; gate is "
                             f"<b>{self.review.verdict.state}</b>")

    async def wait(self, timeout_s: float, poll_s: float = 0.1) -> bool:
        """Wait for a click without blocking the kernel; False if ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        while not self.done and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
        if not self.done:
            self.status.value = f"<b>no decision</b> within {timeout_s:.0f} s"
        return self.done


def load(run_id: str = "", environment: str = "qa") -> Review:
    """The review of ``run_id`` (empty: the latest run) for ``environment``."""
    project = find_project()
    record = run_record.load(project, run_id) if run_id else run_record.latest_run(project)
    verdict, bundle = approvals.status(project, record, environment)
    return Review(project, record, environment, verdict, bundle)


REVIEWS_DIR = "reviews"


def gate_of(config: Config, environment: str) -> Stage:
    """The stage gating ``environment`` (``gate: <env>``): its notebook is the review form."""
    found = next((s for s in config.pipeline.stages if s.gate == environment), None)
    if found is None:
        gated = sorted({s.gate for s in config.pipeline.stages if s.gate})
        raise approvals.ApprovalUsageError(
            f"--env {environment}: no stage of the pipeline has 'gate: {environment}', so "
            f"there is no approval notebook to review it with; gated environments: "
            f"{', '.join(gated) or 'none'}")
    return found


def prepare_review(project: Project, run_id: str, environment: str) -> Path:
    """A copy of the approval notebook for one run and environment (the notebook of the stage
    gating it in the run's configuration), parameters injected, in
    ``reports/runs/<run-id>/reviews/``: what the reviewer saw is kept beside the run, and the
    committed notebook stays without outputs."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    record = run_record.load(project, run_id)  # the run must exist
    # the run is released as it was configured: that gate stage is what resume runs
    gate = gate_of(approvals.run_config(record), environment)
    source = project.root / gate.notebook
    if not source.is_file():
        raise approvals.ApprovalUsageError(f"--env {environment}: gate stage {gate.name!r} "
                                           f"names notebook {gate.notebook}, which does not "
                                           f"exist")
    approvals.status(project, record, environment)  # the run must be at this gate
    nb = parameterize_notebook(load_notebook_node(str(source)),  # papermill's own reader
                               {"run_id": run_id, "environment": environment,
                                "mode": "interactive"})
    stamp = stamped_id(2)
    target = run_record.run_dir(project, run_id) / REVIEWS_DIR / f"{environment}-{stamp}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("x", encoding="utf-8") as handle:  # never overwrite a saved review
        nbformat.write(nb, handle)
    return target
