"""Run events and the listeners that react to them.

The scheduler decides and the recorder writes the run record and the ledger; everything else
that reacts to a run (the progress display, notifications, HTML and MLflow artifacts, the
report site, the stage cache's index) is a *listener* of the typed events below, the way
kedro's hooks and nbclient's ``on_*`` callbacks work.

A listener is any object with methods named ``on_<kind>`` for the events it wants (for
example ``on_stage_finished(event)``), and/or ``on_event(event)`` for every event. It may
also have ``bind(bus)`` (called when it is added: to emit warnings of its own),
``drain(timeout)`` (finish background work: called before a stage that measures, and before
the run ends) and ``close()``. A listener that raises never fails a release: the
bus turns the exception into a :class:`Warned` event for the other listeners.

Every run gets the *standard* listeners, registered by name in :data:`LISTENERS` (entry-point
group ``workbench.listeners``: workbench's own stage-cache index, HTML and MLflow publisher and
report site come that way, as a plug-in's would), plus those its caller adds (the command
line's progress display and notifications).

Public events become the JSON lines of ``workbench run --json`` (``to_dict``: ``event``,
``time`` and the fields in order); internal ones (``public = False``) carry what listeners
need, such as an archived notebook's path, and are never printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from workbench.clock import local_now
from workbench.plugins import Registry

_OMIT: Any = object()  # a field left out of the JSON form (an event that never had it)


@dataclass(kw_only=True)
class Event:
    """What happened, and when (local time, to the second)."""

    kind: ClassVar[str] = "event"
    public: ClassVar[bool] = True
    time: str = field(default_factory=local_now)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``event``, ``time``, then each field that is set, in order."""
        found: dict[str, Any] = {"event": self.kind, "time": self.time}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name != "time" and value is not _OMIT:
                found[item.name] = value
        return found

    def describe(self) -> str | None:
        """One line for a log, or None for events too fine-grained for one."""
        return None


@dataclass(kw_only=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    run_id: str
    pipeline: str
    environment: str
    stages: list[str]
    statuses: dict[str, str]
    folder: str

    def describe(self) -> str:
        return (f"run {self.run_id} started: pipeline {self.pipeline}, environment "
                f"{self.environment}, stages {', '.join(self.stages)}")


@dataclass(kw_only=True)
class StageStarted(Event):
    kind: ClassVar[str] = "stage_started"
    stage: str
    notebook: str
    kernel: str | None = _OMIT  # warm, forked or cold; left out for a gate

    def describe(self) -> str:
        return f"stage {self.stage} started ({self.notebook})"


@dataclass(kw_only=True)
class CellStarted(Event):
    kind: ClassVar[str] = "cell"
    stage: str
    index: int
    total: int
    source: str


@dataclass(kw_only=True)
class StageFinished(Event):
    kind: ClassVar[str] = "stage_finished"
    stage: str
    status: str
    duration_s: float
    error: str | None
    kernel: str | None = _OMIT
    reused_from: str | None = _OMIT  # a stage taken from the stage cache
    cache_key: str | None = _OMIT

    def describe(self) -> str:
        line = f"stage {self.stage} {self.status} in {self.duration_s:.1f} s"
        return f"{line}: {self.error}" if self.error else line


@dataclass(kw_only=True)
class StageSkipped(Event):
    kind: ClassVar[str] = "stage_skipped"
    stage: str
    reason: str

    def describe(self) -> str:
        return f"stage {self.stage} skipped: {self.reason}"


@dataclass(kw_only=True)
class Warned(Event):
    kind: ClassVar[str] = "warning"
    stage: str | None
    message: str

    def describe(self) -> str:
        return f"warning: {self.message}"


@dataclass(kw_only=True)
class GateAwaiting(Event):
    kind: ClassVar[str] = "gate_awaiting"
    stage: str
    environment: str
    message: str

    def describe(self) -> str:
        return f"stage {self.stage} awaiting approval for {self.environment}"


@dataclass(kw_only=True)
class AliasMoved(Event):
    kind: ClassVar[str] = "alias_moved"
    alias: str
    model: str
    from_version: str | None
    to_version: str

    def describe(self) -> str:
        was = f" (was v{self.from_version})" if self.from_version else ""
        return f"alias {self.alias} of {self.model} now points at v{self.to_version}{was}"


@dataclass(kw_only=True)
class Deployed(Event):
    kind: ClassVar[str] = "deployed"
    stage: str
    run_id: str
    environment: str
    model: str | None
    version: str
    endpoint: Any

    def describe(self) -> str:
        return (f"deployed {self.model} v{self.version} to {self.environment} at "
                f"{self.endpoint}")


@dataclass(kw_only=True)
class RolledBack(Event):
    """A rollback, with everything its record holds (``time`` is the record's)."""

    kind: ClassVar[str] = "rolled_back"
    environment: str
    model: str
    from_version: str | None
    to_version: str
    trigger: str
    reason: str
    observed: Any = None
    threshold: Any = None
    actor: dict[str, Any] | None = None
    run_id: str | None = None
    target: str | None = None
    endpoint: str | None = None

    def describe(self) -> str:
        return (f"rolled back {self.environment} from v{self.from_version} to "
                f"v{self.to_version}: {self.reason}")


@dataclass(kw_only=True)
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    run_id: str
    status: str
    duration_s: float
    folder: str

    def describe(self) -> str:
        return (f"run {self.run_id} {self.status} in {self.duration_s:.1f} s; archived under "
                f"{self.folder}")


@dataclass(kw_only=True)
class StageRecorded(Event):
    """A stage's outcome is in the run record and the ledger (entry ``seq``); ``archived`` is
    its notebook in the archive (None for a reused stage or one that archived nothing)."""

    kind: ClassVar[str] = "stage_recorded"
    public: ClassVar[bool] = False
    project: Any
    record: Any  # the RunRecord, as it is now
    stage: str
    archived: Path | None
    seq: int
    publish: bool = True  # HTML and MLflow artifacts wanted (not for a run being interrupted)
    secrets: Any = None  # the run's known secret values (Secrets): nothing shown may hold one


@dataclass(kw_only=True)
class StageViewsMissing(Event):
    """A stage recorded before the run's process died, whose HTML was never rendered."""

    kind: ClassVar[str] = "stage_views_missing"
    public: ClassVar[bool] = False
    project: Any
    record: Any
    stage: str
    archived: Path
    secrets: Any = None


@dataclass(kw_only=True)
class RunRecorded(Event):
    """The run's outcome is in the ledger and its record (before ``run_finished``)."""

    kind: ClassVar[str] = "run_recorded"
    public: ClassVar[bool] = False
    project: Any
    record: Any


class Bus:
    """Delivers events to listeners, one event at a time (stages in parallel threads emit
    too), in the order the listeners were added."""

    def __init__(self, listeners: Iterable[Any] = ()):
        self.listeners: list[Any] = []
        self._lock = threading.RLock()  # a listener may emit (a warning) while it handles one
        for listener in listeners:
            self.add(listener)

    def add(self, listener: Any) -> None:
        self.listeners.append(listener)
        bind = getattr(listener, "bind", None)
        if bind is not None:
            bind(self)

    def emit(self, event: Event) -> None:
        with self._lock:
            for listener in list(self.listeners):
                handler = getattr(listener, f"on_{event.kind}", None) or \
                    getattr(listener, "on_event", None)
                if handler is None:
                    continue
                try:
                    handler(event)
                except Exception as exc:  # noqa: BLE001 - a listener never fails a release
                    if isinstance(event, Warned):
                        continue  # no warning about a warning
                    self.emit(Warned(stage=getattr(event, "stage", None),
                                      message=f"{type(listener).__name__} failed on "
                                              f"{event.kind}: {type(exc).__name__}: {exc}"))

    def warn(self, message: str, stage: str | None = None) -> None:
        self.emit(Warned(stage=stage, message=message))

    def drain(self, timeout: float | None = None) -> None:
        """Wait for the listeners' background work (HTML, MLflow artifacts, ...)."""
        for listener in list(self.listeners):
            drain = getattr(listener, "drain", None)
            if drain is not None:
                drain(timeout)

    def close(self) -> None:
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):
                close = getattr(listener, "close", None)
                if close is not None:
                    close()


class CallbackListener:
    """A plain callable, given each public event's JSON form (the library's simplest use:
    ``start_run(..., listeners=[CallbackListener(print)])``)."""

    def __init__(self, callback: Any):
        self.callback = callback

    def on_event(self, event: Event) -> None:
        if event.public:
            self.callback(event.to_dict())


LISTENERS: Registry[Any] = Registry("run listener", "workbench.listeners")


def standard_listeners() -> list[Any]:
    """One instance of every registered run listener (each a class taking no argument)."""
    return [LISTENERS.get(name)() for name in LISTENERS.names()]
