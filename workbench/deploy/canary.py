"""The canary strategy on the local target: the candidate serves a growing share of requests
beside the serving version, and each step's analysis decides whether it goes on.

For each step of ``deploy.canary.steps`` the proxy's route gets the candidate at the step's
weight and a new analysis window; the step lasts its ``pause`` (longer, up to three times,
while the candidate has had fewer than ``min_requests``), then the analysis checks the
candidate's own traffic of that window against ``deploy.canary.analysis``: error rate, p95
latency, p95 against the serving version's. A breach (or too little traffic to judge) aborts:
every request goes back to the serving version, the candidate is stopped once nothing is in
flight on it, a rollback record says why (trigger ``canary``, observed, threshold), and the
stage fails. After the last step the candidate becomes the endpoint's only backend and the old
one is drained and stopped, as any redeploy. Each step is a ledger entry (``canary_step``).

The proxy retries a scoring request the candidate failed on the serving version, so clients
see no error while a failing candidate is being caught; the failure still counts against it.

Manual control: a step whose ``pause`` is ``manual`` holds (its split kept, its analysis
checked at every poll, a breach aborting as ever) until a promote or abort decision that the
environment's approval policy lets take effect (:mod:`workbench.governance.canary_control`
decides; it records each decision in ``reports/canary/<env>/`` and the ledger as
``canary_decision``, with its ``effect``). The rollout obeys only what the ledger vouches for:
the ``canary_decision`` entries appended since it began, for its rollout and step, whose
record file still has the digest the ledger recorded. Promote: the next step; abort: the
abort path of a breach, recorded with trigger ``manual``. While it runs, the rollout's state
(step, weights, window, the ledger offset it reads decisions from) is in
``.workbench/servers/<key>.canary.json`` for ``workbench canary status``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from filelock import FileLock

from workbench.atomic import write_json
from workbench.audit import journal, ledger
from workbench.clock import stamped_id, utc_now
from workbench.deploy import local
from workbench.deploy.local import DeployError, Server
from workbench.deploy.server_forks import alive
from workbench.digests import file_sha256
from workbench.identity import current as current_identity
from workbench.project import Project
from workbench.records import RollbackRecord

POLL_S = 0.2
EXTEND = 3.0  # a step waits up to this many times its pause for min_requests
RUN_VARIABLE = "WORKBENCH_RUN_ID"
DECISIONS_DIR = "canary"  # reports/canary/<environment>/: decisions on paused steps
DECISION_EVENT = "canary_decision"
STATE_SUFFIX = ".canary.json"
EFFECTS = ("promote", "abort")


class CanaryAborted(DeployError):
    """A step's analysis failed: the serving version kept (or got back) every request."""


@dataclass
class Step:
    """One step as it went: its weight, the measured share and each version's traffic."""

    number: int
    weight: float
    seconds: float
    candidate: dict[str, Any]
    serving: dict[str, Any]
    share: float | None  # the candidate's measured share of requests, percent
    breaches: list[str] = field(default_factory=list)
    started: str = ""  # UTC, when the step's window began
    rollout: str = ""
    trigger: str = "canary"  # what aborted it: the analysis (canary) or a person (manual)
    decision: dict[str, Any] | None = None  # the manual decision that ended a held step

    @property
    def passed(self) -> bool:
        return not self.breaches


@dataclass(frozen=True)
class Rollout:
    """What :func:`release` did: the endpoint as it ends and each step."""

    server: Server
    steps: list[Step]
    note: str = ""

    # the endpoint protocol, so that a deploy notebook treats it like any endpoint
    @property
    def url(self) -> str:
        return self.server.url

    @property
    def version(self) -> str:
        return self.server.version

    def describe(self) -> str:
        steps = ", ".join(f"{s.weight:g}% ({s.share:.1f}% measured)" if s.share is not None
                          else f"{s.weight:g}%" for s in self.steps)
        return f"{self.server.describe()}; canary {steps or self.note}"


def release_local(request: Any) -> Rollout:
    """The canary strategy for a deploy request on the local target."""
    settings = request.config.environments[request.environment]
    key = local.server_key(request.project, request.config, request.environment)
    return release(request.project, key, request.environment, settings.deploy.port,
                   request.model_name, request.version, request.tracking_uri,
                   settings.deploy.canary, local.inference_settings(request, key))


def release(project: Project, key: str, environment: str, port: int, model_name: str,
            version: str, tracking_uri: str, canary: Any,
            inference: dict[str, Any] | None) -> Rollout:
    """Bring ``version`` to the endpoint ``key`` step by step (see the module doc); a first
    deploy, or the version already served, is a plain deploy."""
    project.servers.mkdir(parents=True, exist_ok=True)
    with FileLock(project.servers / f"{key}.lock", timeout=local.DEPLOY_LOCK_S):
        old = local.current(project, key)
        if old is None or old.port != port or old.version == str(version):
            server = local._serve(project, key, port, model_name, version, tracking_uri, 180.0,
                                  inference)
            local._pending_file(project, key).unlink(missing_ok=True)
            why = "first deploy: nothing to compare with" if old is None else "plain redeploy"
            return Rollout(server, [], why)
        try:
            rollout = _steps(project, key, environment, old, model_name, str(version),
                             tracking_uri, canary, inference)
        finally:
            state_file(project, key).unlink(missing_ok=True)
        local._pending_file(project, key).unlink(missing_ok=True)
        return rollout


def _steps(project: Project, key: str, environment: str, old: Server, model_name: str,
           version: str, tracking_uri: str, canary: Any,
           inference: dict[str, Any] | None) -> Rollout:
    process, port, log = local.start_model_server(project, key, model_name, version,
                                                  tracking_uri, 180.0)
    steps: list[Step] = []
    control = Control.begin(project, key, environment, old, model_name, version, canary)
    try:
        for number, settings in enumerate(canary.steps, start=1):
            window = f"{version}-{number}-{stamped_id(2)}"
            write_route(project, key, old, inference, window, canary={
                "port": port, "version": version, "weight": settings.weight,
                "sticky_header": canary.sticky_header})
            await_window(old, window)
            started = control.step(number, settings, window)
            step = _hold(old, window, number, settings, canary.analysis, version, control) \
                if settings.manual else \
                _watch(old, window, number, settings, canary.analysis, version)
            step.started, step.rollout = started, control.rollout
            control.finished(step)
            steps.append(step)
            _record_step(project, environment, model_name, version, old.version, step)
            if not step.passed:
                _abort(project, key, old, inference, port, process.pid)
                _record_abort(project, environment, model_name, version, old, step,
                              canary.analysis.model_dump(), step.trigger)
                raise CanaryAborted(
                    f"canary of {model_name} v{version} on {environment} aborted at step "
                    f"{number} ({settings.weight:g}%): {'; '.join(step.breaches)}; every "
                    f"request is back on v{old.version}")
    except CanaryAborted:
        raise
    except BaseException:
        _abort(project, key, old, inference, port, process.pid)
        raise
    local._switch(project, key, old, port, version, inference)
    local.stop_group(old.backend_pid, 10)
    server = Server(key, old.pid, old.port, model_name, version,
                    f"models:/{model_name}/{version}", tracking_uri, time.time(), str(log),
                    process.pid, port, old.forks_pid)
    write_json(local._state_file(project, key), asdict(server))
    return Rollout(server, steps)


def write_route(project: Project, key: str, old: Server, inference: dict[str, Any] | None,
                window: str, **extra: dict[str, Any] | None) -> None:
    """The endpoint's route: the serving version, a new analysis window, and ``canary`` or
    ``shadow`` settings (None: none)."""
    route = local._route(old.backend_port, old.version, inference)
    route["window"] = window
    route.update({name: value for name, value in extra.items() if value is not None})
    write_json(local.route_file(project, key), route)


def _stats(old: Server) -> dict[str, Any]:
    return dict(local.get_json(f"{old.url}/-/route", timeout=5.0))


def await_window(old: Server, window: str, timeout: float = 30.0) -> None:
    """Return once the proxy counts traffic in ``window`` (it re-reads its route file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _stats(old).get("stats", {}).get("window") == window:
            return
        time.sleep(0.02)
    raise DeployError(f"the proxy on {old.url} did not take its new route within "
                      f"{timeout:g} s")


def _watch(old: Server, window: str, number: int, settings: Any, analysis: Any,
           version: str) -> Step:
    """Watch one step's window for its pause (an error-rate breach ends it early)."""
    started = time.monotonic()
    pause = settings.pause_s
    while True:
        versions = _stats(old).get("stats", {}).get("versions", {})
        candidate = versions.get(version, {})
        requests = int(candidate.get("requests", 0))
        elapsed = time.monotonic() - started
        failing = requests >= analysis.min_requests and \
            float(candidate.get("error_rate", 0.0)) > analysis.max_error_rate
        if failing or (elapsed >= pause and requests >= analysis.min_requests) \
                or elapsed >= EXTEND * pause:
            break
        time.sleep(POLL_S)
    serving = versions.get(old.version, {})
    total = requests + int(serving.get("requests", 0))
    step = Step(number, settings.weight, round(elapsed, 3), candidate, serving,
                100.0 * requests / total if total else None)
    step.breaches = breaches(analysis, candidate, serving)
    return step


def breaches(analysis: Any, candidate: dict[str, Any], serving: dict[str, Any]) -> list[str]:
    """Each analysis rule the candidate's traffic of a step broke, in words with the numbers;
    pure, so every rule is testable alone."""
    found: list[str] = []
    requests = int(candidate.get("requests", 0))
    if requests < analysis.min_requests:
        return [f"inconclusive: {requests} requests reached the candidate, fewer than "
                f"min_requests {analysis.min_requests}"]
    rate = float(candidate.get("error_rate", 0.0))
    if rate > analysis.max_error_rate:
        found.append(f"error rate {rate:.4f} > max_error_rate {analysis.max_error_rate:g} "
                     f"({candidate.get('errors')} of {requests})")
    p95 = candidate.get("p95_ms")
    if analysis.max_p95_ms is not None and p95 is not None and p95 > analysis.max_p95_ms:
        found.append(f"p95 {p95:.1f} ms > max_p95_ms {analysis.max_p95_ms:g}")
    base = serving.get("p95_ms")
    if analysis.max_p95_ratio is not None and p95 is not None and base:
        ratio = p95 / base
        if ratio > analysis.max_p95_ratio:
            found.append(f"p95 {p95:.1f} ms is {ratio:.2f}x the serving version's "
                         f"{base:.1f} ms > max_p95_ratio {analysis.max_p95_ratio:g}")
    return found


def _abort(project: Project, key: str, old: Server, inference: dict[str, Any] | None,
           port: int, pid: int) -> None:
    """Every request back to the serving version; the candidate stopped once idle."""
    window = f"aborted-{stamped_id(2)}"
    write_route(project, key, old, inference, window)
    deadline = time.monotonic() + local.DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            route = _stats(old)
        except (OSError, ValueError):
            break  # the proxy is gone: nothing can reach the candidate through it
        if route.get("stats", {}).get("window") == window and \
                not route.get("inflight", {}).get(str(port)):
            break
        time.sleep(0.02)
    local.stop_group(pid, 10)


def _record_step(project: Project, environment: str, model: str, version: str,
                 serving: str, step: Step) -> None:
    ledger.append(project.reports, "canary_step", actor=current_identity().model_dump(),
                  run_id=os.environ.get(RUN_VARIABLE) or None,
                  data={"environment": environment, "model": model, "version": version,
                        "serving_version": serving, "step": step.number,
                        "weight": step.weight, "seconds": step.seconds,
                        "share": step.share, "verdict": "pass" if step.passed else "abort",
                        "breaches": step.breaches, "candidate": step.candidate,
                        "serving": step.serving, "time": utc_now(), "started": step.started,
                        "rollout": step.rollout, "trigger": step.trigger,
                        "decision": step.decision})


def _record_abort(project: Project, environment: str, model: str, version: str, old: Server,
                  step: Step, threshold: dict[str, Any], trigger: str = "canary",
                  target: str = "local") -> None:
    """A rollback record of an aborted canary; ``old`` is the serving endpoint (anything with
    ``version`` and ``url``: the Kubernetes target passes its Deployment)."""
    actor = current_identity()
    record = RollbackRecord(
        environment=environment, model=model, from_version=version, to_version=old.version,
        trigger=trigger, reason=f"canary step {step.number} ({step.weight:g}%): "
        + "; ".join(step.breaches), observed=step.candidate, threshold=threshold, actor=actor,
        run_id=os.environ.get(RUN_VARIABLE) or None, target=target, endpoint=old.url,
        time=utc_now())
    body = record.body()
    journal.append_recorded(
        project.reports, project.reports / "rollbacks", body, event="rollback",
        actor=actor.model_dump(), run_id=body["run_id"],
        ledger_data=lambda _stored: {k: body[k] for k in (
            "environment", "model", "from_version", "to_version", "trigger", "reason",
            "observed", "threshold", "endpoint")})


# --- manual control: the state a paused rollout shows, the decisions it obeys ---------------


def state_file(project: Project, key: str) -> Path:
    """The running rollout's state for ``workbench canary status`` (gone once it ends)."""
    return project.servers / f"{key}{STATE_SUFFIX}"


def decisions_dir(project: Project, environment: str) -> Path:
    """The hash-chained journal of decisions on ``environment``'s paused canary steps."""
    return project.reports / DECISIONS_DIR / quote(environment, safe="")


def read_states(project: Project) -> list[dict[str, Any]]:
    """The state of every rollout whose process still runs (a state left by a process that
    died is no rollout)."""
    found = []
    for path in sorted(project.servers.glob(f"*{STATE_SUFFIX}")) \
            if project.servers.is_dir() else []:
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # replaced atomically: never half-written; unreadable: none
        if isinstance(state, dict) and alive(int(state.get("pid") or 0)):
            found.append(state)
    return found


def ledger_size(reports: Path) -> int:
    path = ledger.ledger_path(reports)
    return path.stat().st_size if path.exists() else 0


def vouched_decisions(reports: Path, rollout: str, offset: int, end: int | None = None
                      ) -> tuple[list[dict[str, Any]], int]:
    """The ``canary_decision`` ledger entries of ``rollout`` in the ledger's bytes from
    ``offset`` (to ``end``; None: its end), each with ``record``: its decision file, which must
    still have the digest the entry recorded and say what the entry says (else it is left
    out); and the offset read up to (complete lines only)."""
    path = ledger.ledger_path(reports)
    if not path.exists():
        return [], offset
    found: list[dict[str, Any]] = []
    with path.open("rb") as handle:
        handle.seek(offset)
        chunk = handle.read() if end is None else handle.read(max(0, end - offset))
    complete = chunk[:chunk.rfind(b"\n") + 1]
    for line in complete.splitlines():
        if DECISION_EVENT.encode() not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        data = entry.get("data") if isinstance(entry, dict) else None
        if entry.get("event") != DECISION_EVENT or not isinstance(data, dict) or \
                data.get("rollout") != rollout:
            continue
        record = _vouched_record(reports, entry, data)
        if record is not None:
            found.append({**data, "ledger_seq": entry.get("seq"), "record": record})
    return found, offset + len(complete)


def _vouched_record(reports: Path, entry: dict[str, Any], data: dict[str, Any]
                    ) -> dict[str, Any] | None:
    files = entry.get("files") or {}
    if not isinstance(files, dict) or len(files) != 1:
        return None
    name, digest = next(iter(files.items()))
    path = reports / str(name)
    try:
        if file_sha256(path) != digest:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = isinstance(record, dict) and all(
        record.get(field_) == data.get(field_)
        for field_ in ("rollout", "step", "decision", "accepted", "environment", "seq"))
    return record if same else None


@dataclass
class Control:
    """One rollout's state file and the decisions it reads from the ledger."""

    project: Project
    key: str
    state: dict[str, Any]
    offset: int  # the ledger's length when the rollout began: decisions come after it

    @property
    def rollout(self) -> str:
        return str(self.state["rollout"])

    @classmethod
    def begin(cls, project: Project, key: str, environment: str, old: Server, model: str,
              version: str, canary: Any) -> Control:
        offset = ledger_size(project.reports)
        state = {"rollout": f"{version}-{stamped_id(3)}", "key": key,
                 "environment": environment, "model": model, "version": version,
                 "serving_version": old.version, "url": old.url, "pid": os.getpid(),
                 "run_id": os.environ.get(RUN_VARIABLE) or None, "started": utc_now(),
                 "ledger_offset": offset,
                 "steps": [{"weight": s.weight, "pause": s.pause} for s in canary.steps],
                 "analysis": canary.analysis.model_dump(), "done": []}
        return cls(project, key, state, offset)

    def _write(self) -> None:
        self.project.servers.mkdir(parents=True, exist_ok=True)
        write_json(state_file(self.project, self.key), self.state)

    def step(self, number: int, settings: Any, window: str) -> str:
        """A step's window began: say so in the state file; return when (UTC)."""
        started = utc_now()
        self.state.update({"step": number, "weight": settings.weight, "pause": settings.pause,
                           "window": window, "step_started": started,
                           "status": "paused" if settings.manual else "watching"})
        self._write()
        return started

    def finished(self, step: Step) -> None:
        self.state["done"].append({"step": step.number, "weight": step.weight,
                                   "verdict": "pass" if step.passed else "abort",
                                   "share": step.share, "decision": step.decision})
        self.state["status"] = "deciding"
        self._write()

    def decision(self, number: int) -> dict[str, Any] | None:
        """The first vouched decision appended since the last call that takes effect on step
        ``number`` (promote or abort), or None."""
        found, self.offset = vouched_decisions(self.project.reports, self.rollout, self.offset)
        return next((d for d in found if d.get("step") == number and d.get("accepted")
                     and d.get("effect") in EFFECTS), None)


def _hold(old: Server, window: str, number: int, settings: Any, analysis: Any, version: str,
          control: Control) -> Step:
    """Hold a manual step until a decision takes effect, or the analysis (checked at every
    poll once the candidate has ``min_requests``) finds a breach."""
    started = time.monotonic()
    decided: dict[str, Any] | None = None
    while True:
        versions = _stats(old).get("stats", {}).get("versions", {})
        candidate = versions.get(version, {})
        serving = versions.get(old.version, {})
        requests = int(candidate.get("requests", 0))
        found = breaches(analysis, candidate, serving) \
            if requests >= analysis.min_requests else []
        if found:
            break
        decided = control.decision(number)
        if decided is not None:
            break
        time.sleep(POLL_S)
    total = requests + int(serving.get("requests", 0))
    step = Step(number, settings.weight, round(time.monotonic() - started, 3), candidate,
                serving, 100.0 * requests / total if total else None, found)
    if decided is not None:
        step.decision = {"effect": decided["effect"], "by": decided.get("by") or [],
                         "decisions": decided.get("counted") or [decided.get("seq")],
                         "ledger_seq": decided.get("ledger_seq"),
                         "comment": decided.get("comment")}
        if decided["effect"] == "abort":
            comment = decided.get("comment")
            step.trigger = "manual"
            step.breaches = [f"manual abort by {', '.join(step.decision['by'])} (decision "
                             f"#{decided.get('seq')})" + (f": {comment}" if comment else "")]
    return step
