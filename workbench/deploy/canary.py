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
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from filelock import FileLock

from workbench.atomic import write_json
from workbench.audit import journal, ledger
from workbench.clock import stamped_id, utc_now
from workbench.deploy import local
from workbench.deploy.local import DeployError, Server
from workbench.identity import current as current_identity
from workbench.project import Project
from workbench.records import RollbackRecord

POLL_S = 0.2
EXTEND = 3.0  # a step waits up to this many times its pause for min_requests
RUN_VARIABLE = "WORKBENCH_RUN_ID"


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
        rollout = _steps(project, key, environment, old, model_name, str(version),
                         tracking_uri, canary, inference)
        local._pending_file(project, key).unlink(missing_ok=True)
        return rollout


def _steps(project: Project, key: str, environment: str, old: Server, model_name: str,
           version: str, tracking_uri: str, canary: Any,
           inference: dict[str, Any] | None) -> Rollout:
    process, port, log = local.start_model_server(project, key, model_name, version,
                                                  tracking_uri, 180.0)
    steps: list[Step] = []
    try:
        for number, settings in enumerate(canary.steps, start=1):
            window = f"{version}-{number}-{stamped_id(2)}"
            write_route(project, key, old, inference, window, canary={
                "port": port, "version": version, "weight": settings.weight,
                "sticky_header": canary.sticky_header})
            await_window(old, window)
            step = _watch(old, window, number, settings, canary.analysis, version)
            steps.append(step)
            _record_step(project, environment, model_name, version, old.version, step)
            if not step.passed:
                _abort(project, key, old, inference, port, process.pid)
                _record_abort(project, environment, model_name, version, old, step,
                              canary.analysis.model_dump())
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
                        "serving": step.serving, "time": utc_now()})


def _record_abort(project: Project, environment: str, model: str, version: str, old: Server,
                  step: Step, threshold: dict[str, Any]) -> None:
    actor = current_identity()
    record = RollbackRecord(
        environment=environment, model=model, from_version=version, to_version=old.version,
        trigger="canary", reason=f"canary step {step.number} ({step.weight:g}%): "
        + "; ".join(step.breaches), observed=step.candidate, threshold=threshold, actor=actor,
        run_id=os.environ.get(RUN_VARIABLE) or None, target="local", endpoint=old.url,
        time=utc_now())
    body = record.body()
    journal.append_recorded(
        project.reports, project.reports / "rollbacks", body, event="rollback",
        actor=actor.model_dump(), run_id=body["run_id"],
        ledger_data=lambda _stored: {k: body[k] for k in (
            "environment", "model", "from_version", "to_version", "trigger", "reason",
            "observed", "threshold", "endpoint")})
