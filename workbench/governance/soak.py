"""Soak time: a gate that passes only once the version served an earlier environment, healthy,
for a while (``soak: {in: qa, for: 24h}`` in a policy of ``configs/gates.yaml``).

The facts come from the ledger only, never from a file anyone can edit:

- the version's *stint* in the soak environment begins with the latest entry that made it the
  one serving there: an ``alias_move`` of the environment's alias to it (through the gate, when
  the environment has a policy) or a ``rollback`` to it; it ends with the entry that made
  another version serve (superseded: the time served until then still counts);
- healthy means nothing since the stint began says otherwise: no ``rollback`` away from the
  version there (by the monitor or by hand), no failing ``drift`` record of the version there
  (drifted under a policy whose ``on_breach`` is not ``warn``, or a missed objective on
  labels), and no failed stage of the gated run that acts on that environment (a monitor or
  load test of its own). Any of them is a breach: the version does not soak until it is
  promoted there again.

:func:`soak_facts` reads the entries; :func:`judge` weighs the facts against the policy at a
given time (both pure); :func:`facts_for` puts them together for a run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, computed_field

from workbench import clock
from workbench.audit import ledger
from workbench.config import Config, SoakPolicy
from workbench.errors import WorkbenchError
from workbench.project import Project
from workbench.run_record import RunRecord

# For tests only: an ISO time taken as the soak's "now", honoured only under a policy that
# declares ``test_clock: true`` (so no production policy honours it unless its reviewed
# configuration says so). Approval expiry, ledger times and every record keep the real clock.
CLOCK_VAR = "WORKBENCH_SOAK_NOW"


class SoakClockError(WorkbenchError, ValueError):
    """``$WORKBENCH_SOAK_NOW`` is set under a policy that honours it, but is no ISO time."""


@dataclass(frozen=True)
class Scope:
    """Which ledger entries concern one version's soak in one environment."""

    model: str
    version: str
    environment: str
    gated: bool  # the environment has a policy: only alias moves through its gate count
    drift_warns: bool  # its drift policy only warns (``on_breach: warn``): drift is no breach
    run_id: str = ""  # the run being gated, and its stages acting on the environment
    stages: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SoakFacts:
    """What the ledger says about a version in the soak environment (see the module doc)."""

    version: str | None  # None: the run has no model version, so nothing soaks
    started: str | None = None  # when its latest stint there began (the entry's time)
    start_seq: int | None = None
    ended: str | None = None  # when that stint ended (another version served), if it did
    ended_by: str | None = None  # what ended it
    breach: dict[str, Any] | None = None  # {"seq", "time", "what"}: why it did not soak
    now: datetime | None = None  # the soak's clock as a test set it (None: the real one)
    clock: str | None = None  # where ``now`` came from, when a test set it


class SoakVerdict(BaseModel):
    """A gate's soak, judged at ``judged_at``: part of the verdict (and its JSON)."""

    environment: str  # where the version must soak
    required: str  # the policy's duration, as written
    required_s: float
    version: str | None = None
    started: str | None = None
    ended: str | None = None
    ended_by: str | None = None
    breach: dict[str, Any] | None = None
    served_s: float = 0.0
    judged_at: str
    clock: str | None = None  # set when a test set the clock (``$WORKBENCH_SOAK_NOW``)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        return self.started is not None and self.breach is None and \
            self.served_s >= self.required_s

    @computed_field  # type: ignore[prop-decorator]
    @property
    def left_s(self) -> float:
        return max(0.0, self.required_s - self.served_s)

    def describe(self) -> str:
        """One line: how long the version served, and how long is left (or why never)."""
        who, env = f"v{self.version}" if self.version else "the run's model", self.environment
        if self.breach is not None:
            line = (f"soak: {who} {self.breach['what']} at {self.breach['time'][:19]} (ledger "
                    f"#{self.breach['seq']}): it does not soak")
        elif self.started is None:
            line = f"soak: {who} has not served {env} yet; it must serve there {self.required}"
        else:
            line = self._served()
        if self.clock:
            line += f" [clock {self.judged_at[:19]} from ${self.clock}: for tests only]"
        return line

    def _served(self) -> str:
        who, env = f"v{self.version}", self.environment
        served = _span(self.served_s)
        if self.ended is not None:
            until = f"until {self.ended_by} at {self.ended[:19]}"
            if self.passed:
                return f"soak: {who} served {env} for {served} of {self.required} ({until}): soaked"
            return (f"soak: {who} served {env} for only {served} of {self.required}, {until}: "
                    f"it can no longer soak there")
        if self.passed:
            return f"soak: {who} has served {env} for {served} of {self.required}: soaked"
        return (f"soak: {who} has served {env} for {served} of {self.required}; "
                f"{_span(self.left_s, up=True)} left")


def _span(seconds: float, up: bool = False) -> str:
    """``5h 12m``, ``12m``, ``40s``: floored (``up``: rounded up, for what is left)."""
    whole = math.ceil(seconds) if up else math.floor(seconds)
    minutes = (math.ceil(whole / 60) if up else whole // 60) if whole >= 60 else 0
    if minutes == 0:
        return f"{whole}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


def judge(policy: SoakPolicy, facts: SoakFacts | None, now: datetime) -> SoakVerdict:
    """The soak at ``now`` (or the clock a test set in ``facts``); no facts: not served yet."""
    facts = facts or SoakFacts(version=None)
    at = facts.now or now
    served = 0.0
    if facts.started is not None:
        end = clock.parse(facts.ended) if facts.ended is not None else at
        served = max(0.0, (end - clock.parse(facts.started)).total_seconds())
    return SoakVerdict(environment=policy.within, required=policy.duration,
                       required_s=policy.duration_s, version=facts.version,
                       started=facts.started, ended=facts.ended, ended_by=facts.ended_by,
                       breach=facts.breach, served_s=round(served, 3),
                       judged_at=at.isoformat(timespec="seconds"), clock=facts.clock)


# --- the facts, from ledger entries -------------------------------------------------------------


def soak_facts(entries: Iterable[dict[str, Any]], scope: Scope) -> SoakFacts:
    """One pass over ledger entries (in ledger order): the version's latest stint in the
    environment and the first breach since it began."""
    facts = SoakFacts(version=scope.version)
    serving: str | None = None
    for entry in entries:
        served = _serves(entry, scope)
        if facts.started is not None and facts.breach is None:
            breach = _breach(entry, scope)
            if breach:
                facts = replace(facts, breach={"seq": entry.get("seq"),
                                               "time": str(entry.get("time")), "what": breach})
        if served is None or served == serving:
            continue
        if served == scope.version:
            facts = SoakFacts(version=scope.version, started=str(entry.get("time")),
                              start_seq=_seq(entry))
        elif serving == scope.version and facts.ended is None:
            facts = replace(facts, ended=str(entry.get("time")),
                            ended_by=f"v{served} served there (ledger #{entry.get('seq')})")
        serving = served
    return facts


def _seq(entry: dict[str, Any]) -> int | None:
    seq = entry.get("seq")
    return seq if isinstance(seq, int) else None


def _serves(entry: dict[str, Any], scope: Scope) -> str | None:
    """The version ``entry`` made the environment serve, or None."""
    data = entry.get("data") or {}
    if data.get("model") != scope.model:
        return None
    event = entry.get("event")
    if event == "alias_move" and data.get("alias") == scope.environment and \
            (data.get("approvals") or not scope.gated):
        return str(data.get("to_version"))
    if event == "rollback" and data.get("environment") == scope.environment:
        return str(data.get("to_version"))
    return None


def _breach(entry: dict[str, Any], scope: Scope) -> str | None:
    """How ``entry`` shows the version unhealthy in the environment, or None."""
    data = entry.get("data") or {}
    event, env = entry.get("event"), scope.environment
    if event == "stage_executed":
        if entry.get("run_id") == scope.run_id and data.get("stage") in scope.stages and \
                data.get("status") == "failed":
            return f"failed stage {data.get('stage')} in {env} (run {scope.run_id})"
        return None
    if data.get("model") != scope.model or data.get("environment") != env:
        return None
    if event == "rollback" and str(data.get("from_version")) == scope.version:
        return (f"was rolled back in {env} to v{data.get('to_version')} "
                f"({data.get('trigger')}: {data.get('reason')})")
    if event == "drift" and str(data.get("version")) == scope.version:
        drifted = list(data.get("drifted") or [])
        if drifted and not scope.drift_warns:
            return f"drifted in {env} ({', '.join(map(str, drifted))})"
        if data.get("performance_passed") is False:
            return f"missed an objective on labelled requests in {env}"
    return None


# --- for one run ------------------------------------------------------------------------------


def scope_for(config: Config, record: RunRecord, policy: SoakPolicy) -> Scope | None:
    """What to look for in the ledger for ``record``'s model version (None: it has none)."""
    if record.model_version is None:
        return None
    env = policy.within
    settings = config.environments.get(env)
    return Scope(model=record.model_version.name, version=str(record.model_version.version),
                 environment=env, gated=env in config.gates.policies,
                 drift_warns=settings is not None and settings.drift.on_breach == "warn",
                 run_id=record.id,
                 stages=frozenset(s.name for s in config.pipeline.stages
                                  if s.environment == env))


def clock_override(policy: SoakPolicy) -> datetime | None:
    """``$WORKBENCH_SOAK_NOW`` when ``policy`` honours it (``test_clock: true``) and it is set."""
    text = os.environ.get(CLOCK_VAR, "").strip()
    if not policy.test_clock or not text:
        return None
    try:
        at = clock.parse(text)
    except ValueError as exc:
        raise SoakClockError(f"${CLOCK_VAR}: expected an ISO time, got {text!r}") from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def facts_for(project: Project, config: Config, record: RunRecord, policy: SoakPolicy
              ) -> SoakFacts:
    """The soak facts of ``record``'s model version, from one pass over the ledger."""
    scope = scope_for(config, record, policy)
    found = SoakFacts(version=None) if scope is None else \
        soak_facts(ledger.entries(project.reports), scope)
    at = clock_override(policy)
    return found if at is None else replace(found, now=at, clock=CLOCK_VAR)
