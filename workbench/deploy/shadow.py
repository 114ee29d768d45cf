"""Shadow a candidate on the local target: it serves every live request beside the serving
version for a window, and only the serving version's answers reach clients.

:func:`shadow` starts the candidate's model server, adds it to the endpoint's route as a
shadow (the proxy sends each scoring request to it once the client has its answer, and
compares the two answers: :class:`workbench.deploy.traffic.Comparison`), waits the window,
then takes it off the route and stops it. The result is the comparison: disagreement rate
(class labels: share of different labels; floats: the distribution of differences), each
side's p95 latency, the shadow's errors; a ledger entry ``shadow`` keeps it. Nothing changes
for clients: the serving version keeps every request, and a shadow that is slow or fails only
shows in the comparison.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, cast

from filelock import FileLock

from workbench.audit import ledger
from workbench.clock import stamped_id, utc_now
from workbench.deploy import local
from workbench.deploy.canary import await_window, write_route
from workbench.deploy.local import DeployError
from workbench.identity import current as current_identity
from workbench.project import Project

RUN_VARIABLE = "WORKBENCH_RUN_ID"


@dataclass(frozen=True)
class ShadowResult:
    environment: str
    model: str
    serving_version: str
    shadow_version: str
    seconds: float
    comparison: dict[str, Any]  # Comparison.summary(), plus the serving side's traffic

    @property
    def disagreement_rate(self) -> float | None:
        rate = self.comparison.get("disagreement_rate")
        return None if rate is None else float(rate)

    def metrics(self) -> dict[str, float]:
        """The comparison as metrics an objective can judge (``wb.check_objectives``), e.g.
        ``{metric: shadow_disagreement_rate, direction: minimize, bound: 0.02}`` or
        ``{metric: shadow_p95_ratio, direction: minimize, bound: 1.2}``; a figure the window
        did not measure is left out (and an objective on it fails as missing)."""
        return shadow_metrics(self.as_dict())

    def plot(self) -> Any:
        """A figure for the notebook: p95 latency live vs shadow, and the shadow's
        disagreement and error rates (a matplotlib ``Figure``; shown when it is a cell's
        last value)."""
        from matplotlib.figure import Figure  # no pyplot: the notebook's backend is untouched

        metrics = self.metrics()
        figure = Figure(figsize=(8, 3))
        latency, rates = figure.subplots(1, 2)
        latency.bar([f"live v{self.serving_version}", f"shadow v{self.shadow_version}"],
                    [metrics.get("live_p95_ms", 0.0), metrics.get("shadow_p95_ms", 0.0)],
                    color=["#4c72b0", "#dd8452"])
        latency.set_ylabel("p95 latency (ms)")
        latency.set_title(f"{self.environment}: {self.comparison.get('compared', 0)} "
                          f"requests compared")
        rates.bar(["disagreement", "shadow errors"],
                  [metrics.get("shadow_disagreement_rate", 0.0),
                   metrics.get("shadow_error_rate", 0.0)], color=["#c44e52", "#8172b2"])
        rates.set_ylim(0, max(0.05, *(v * 1.2 for v in (
            metrics.get("shadow_disagreement_rate", 0.0), metrics.get("shadow_error_rate", 0.0)))))
        rates.set_ylabel("share")
        figure.tight_layout()
        return figure

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "model": self.model,
                "serving_version": self.serving_version, "shadow_version": self.shadow_version,
                "seconds": self.seconds, **self.comparison}


def shadow_metrics(data: dict[str, Any]) -> dict[str, float]:
    """Metrics of a shadow's comparison (:meth:`ShadowResult.as_dict` or a ``shadow`` ledger
    entry's data): ``shadow_disagreement_rate`` (share of predictions that differ),
    ``shadow_error_rate`` (copies the shadow failed, of those sent), ``shadow_p95_ms``,
    ``live_p95_ms`` and ``shadow_p95_ratio`` (shadow p95 / live p95)."""
    found: dict[str, float] = {}
    if data.get("disagreement_rate") is not None:
        found["shadow_disagreement_rate"] = float(data["disagreement_rate"])
    sent = int(data.get("compared") or 0) + int(data.get("errors") or 0)
    if sent:
        found["shadow_error_rate"] = int(data.get("errors") or 0) / sent
    live, candidate = data.get("live_p95_ms"), data.get("shadow_p95_ms")
    if candidate is not None:
        found["shadow_p95_ms"] = float(candidate)
    if live is not None:
        found["live_p95_ms"] = float(live)
    if live and candidate is not None:
        found["shadow_p95_ratio"] = float(candidate) / float(live)
    return found


def shadow_markdown(data: dict[str, Any]) -> str:
    """One shadow window as a reviewer reads it (a Markdown table)."""
    metrics = shadow_metrics(data)

    def shown(name: str, unit: str = "", percent: bool = False) -> str:
        value = metrics.get(name)
        if value is None:
            return "not measured"
        return f"{value:.2%}" if percent else f"{value:.1f}{unit}" if unit else f"{value:.2f}"

    rows = [f"### Shadow of v{data.get('shadow_version')} beside v{data.get('serving_version')} "
            f"on {data.get('environment')}", "",
            "| measure | value |", "|---|---|",
            f"| window | {float(data.get('seconds') or 0):.0f} s, "
            f"{int(data.get('compared') or 0)} requests compared |",
            f"| disagreement (predictions that differ) | "
            f"{shown('shadow_disagreement_rate', percent=True)} |",
            f"| shadow errors | {int(data.get('errors') or 0)} "
            f"({shown('shadow_error_rate', percent=True)}) |",
            f"| p95 latency live / shadow | {shown('live_p95_ms', ' ms')} / "
            f"{shown('shadow_p95_ms', ' ms')} (ratio {shown('shadow_p95_ratio')}) |"]
    if data.get("p95_abs_difference") is not None:
        rows.append(f"| p95 absolute difference (regression) | "
                    f"{float(data['p95_abs_difference']):.4g} |")
    return "\n".join(rows)


def shadow(project: Project, key: str, environment: str, model_name: str, version: str,
           tracking_uri: str, window_s: float, inference: dict[str, Any] | None = None
           ) -> ShadowResult:
    """Mirror the endpoint's live traffic to ``version`` for ``window_s`` seconds (see the
    module doc); the endpoint must already serve another version."""
    with FileLock(project.servers / f"{key}.lock", timeout=local.DEPLOY_LOCK_S):
        old = local.current(project, key)
        if old is None:
            raise DeployError(f"environment {environment!r} serves nothing yet: a shadow needs "
                              f"live traffic to mirror")
        process, port, _log = local.start_model_server(project, key, model_name, str(version),
                                                       tracking_uri, 180.0)
        started = time.monotonic()
        try:
            window = f"shadow-{version}-{stamped_id(2)}"
            write_route(project, key, old, inference, window,
                        shadow={"port": port, "version": str(version)})
            await_window(old, window)
            while time.monotonic() - started < window_s:
                time.sleep(0.2)
            stats = local.get_json(f"{old.url}/-/route", timeout=5.0)
        finally:
            write_route(project, key, old, inference, f"after-{stamped_id(2)}")
            local.stop_group(process.pid, 10)
            local._pending_file(project, key).unlink(missing_ok=True)
    comparison = {**stats.get("shadow_stats", {}),
                  "serving": stats.get("stats", {}).get("versions", {}).get(old.version, {})}
    result = ShadowResult(environment, model_name, old.version, str(version),
                          round(time.monotonic() - started, 3), comparison)
    ledger.append(project.reports, "shadow", actor=current_identity().model_dump(),
                  run_id=os.environ.get(RUN_VARIABLE) or None,
                  data={**result.as_dict(), "time": utc_now()})
    return result


def shadow_release(environment: str, model_name: str, version: str, window: str = "60s"
                   ) -> ShadowResult:
    """The notebook call: shadow ``version`` on ``environment``'s endpoint for ``window`` (a
    duration such as ``"2m"``); the comparison to glue, plot and judge."""
    from workbench.config import load_config, parse_duration
    from workbench.project import find_project
    from workbench.registry.store import resolve

    project = find_project()
    config = load_config(project.configs)
    tracking_uri = resolve(project, config.pipeline.mlflow).tracking_uri
    kind = config.environments[environment].deploy.target
    if kind != "local":  # a target that mirrors traffic itself (Kubernetes: an HTTPRoute)
        from workbench.deploy.targets import TARGETS, DeployRequest

        target = TARGETS.get(kind)()
        if not hasattr(target, "shadow"):
            raise DeployError(f"environment {environment!r}: its target {kind} cannot mirror "
                              f"traffic to a shadow")
        request = DeployRequest(project, config, environment, model_name, version,
                                tracking_uri)
        return cast(ShadowResult, target.shadow(request, parse_duration(window)))
    key = local.server_key(project, config, environment)
    return shadow(project, key, environment, model_name, version, tracking_uri,
                  parse_duration(window))
