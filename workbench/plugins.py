"""Extension points: small registries of named implementations, the way papermill registers
its engines and I/O handlers.

Each registry has a name and an entry-point group. Implementations are registered by name,
directly (``registry.register("local", LocalExecutor)``) or by a third-party distribution
through its entry points::

    [project.entry-points."workbench.executors"]
    slurm = "mypackage.slurm:SlurmExecutor"

Entry points are read the first time a name is not found among the registered ones, so a
command that only uses built-in implementations never scans the installed distributions.
workbench's own Kubernetes executor and deploy target are registered through entry points
too (``pyproject.toml``), which keeps the lower layers free of imports of ``workbench.k8s``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, TypeVar

from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

T = TypeVar("T")


class UnknownPlugin(WorkbenchError, LookupError):
    """No implementation is registered under the name asked for."""


class Registry(Generic[T]):
    """Named implementations of one extension point."""

    def __init__(self, kind: str, group: str):
        self.kind = kind  # what an implementation is, for messages: "executor", ...
        self.group = group  # the entry-point group third parties register under
        self._items: dict[str, T] = {}
        self._points: dict[str, EntryPoint] | None = None  # read once, loaded when used
        self._lock = threading.Lock()

    def register(self, name: str, item: T) -> T:
        """Register ``item`` as ``name`` (replacing an earlier registration)."""
        with self._lock:
            self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        with self._lock:
            self._items.pop(name, None)

    def get(self, name: str) -> T:
        """The implementation registered as ``name``; :class:`UnknownPlugin` names the known."""
        with self._lock:
            if name in self._items:
                return self._items[name]
        point = self._entry_points().get(name)
        if point is None:
            raise UnknownPlugin(f"unknown {self.kind} {name!r}; choose one of "
                                f"{', '.join(self.names())}")
        try:
            loaded = point.load()
        except Exception as exc:  # a broken plug-in is named, never a traceback
            raise UnknownPlugin(f"{self.kind} {name!r} ({point.value}, entry point group "
                                f"{self.group}) could not be loaded: "
                                f"{type(exc).__name__}: {exc}") from exc
        with self._lock:
            return self._items.setdefault(name, loaded)

    def names(self) -> list[str]:
        """Every name: registered ones first, then those of entry points (not loaded)."""
        with self._lock:
            names = list(self._items)
        return names + [n for n in self._entry_points() if n not in names]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def _entry_points(self) -> dict[str, EntryPoint]:
        if self._points is None:
            from importlib.metadata import entry_points

            self._points = {point.name: point for point in entry_points(group=self.group)}
        return self._points
