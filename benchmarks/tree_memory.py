"""The memory of a process tree over time: summed RSS and PSS, and who holds it at the peak.

:class:`TreeMemory` samples a command's process and all its descendants (found through the
parent pids in ``/proc/*/stat``): the summed RSS every ``interval`` seconds, and every
``pss_every`` samples each process's ``/proc/<pid>/smaps_rollup`` (reading it costs about 2 ms
per large process). At the highest summed PSS it keeps every process's rollup and role (the
workbench command, the fork server, a kernel forked from it, a model server, ...), so a report
can say where the peak comes from. A process once in the tree counts as long as it lives (same
pid and start time): a model server still counts after the kernel that started it exited.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# the smaps_rollup lines kept per process (kB in the file, bytes here)
ROLLUP_FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Shared_Dirty",
                 "Private_Clean", "Private_Dirty")
ZYGOTE = "workbench.execution.zygote"


def stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, start time) of ``pid`` from /proc, None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[1]), int(fields[19])


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def rollup(pid: int) -> dict[str, int]:
    """The process's ``smaps_rollup`` figures in bytes (empty if it is gone)."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                key, _, rest = line.partition(b":")
                name = key.decode()
                if name in ROLLUP_FIELDS:
                    found[name] = int(rest.split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return {}
    return found


def argv_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode(errors="replace").rstrip("\0").split("\0")
    except OSError:
        return []


def role(argv: list[str], parent_argv: list[str]) -> str:
    """What a process of a run's tree is, from its command line and its parent's."""
    def has(*words: str) -> bool:
        return all(word in argv for word in words)

    if ZYGOTE in argv:  # a forked kernel keeps the command line of the server it came from
        return "forked kernel" if ZYGOTE in parent_argv else "fork server"
    if "ipykernel_launcher" in argv:
        return "kernel"
    if has("workbench.deploy.proxy"):
        return "proxy"
    if has("workbench.deploy.model_server"):
        return "model server"
    if has("models", "serve"):
        return "mlflow models serve"
    if "--child" in argv and any(arg.endswith("speed.py") for arg in argv):
        return f"{argv[argv.index('--child') + 1]} process" if argv[-1] != "--child" \
            else "baseline process"
    if has("-m", "workbench"):
        return "workbench command"
    name = os.path.basename(argv[0]) if argv else "?"
    return " ".join([name, *argv[1:3]])[:60]


@dataclass
class Process:
    """One process of the tree at the sampled moment."""

    pid: int
    role: str
    memory: dict[str, int] = field(default_factory=dict)  # smaps_rollup, bytes

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "role": self.role,
                **{f"{key.lower()}_mb": round(value / 2**20, 1)
                   for key, value in self.memory.items()}}


class TreeMemory(threading.Thread):
    """Samples the tree of ``pid`` until :meth:`finish` (see the module doc)."""

    def __init__(self, pid: int, interval: float = 0.1, pss_every: int = 5):
        super().__init__(daemon=True)
        self.pid, self.interval, self.pss_every = pid, interval, pss_every
        self.peak_bytes = 0
        self.peak_pss_bytes = 0
        self.peak_at: float | None = None  # seconds after the sampling started
        self.at_peak: list[Process] = []  # every process at the PSS peak, largest first
        self.timeline: list[tuple[float, float, int]] = []  # (s, PSS MB, processes)
        self.samples = 0
        self._members: dict[int, int] = {}  # pid -> start time
        self._parents: dict[int, int] = {}
        self._argv: dict[tuple[int, int], list[str]] = {}
        self._done = threading.Event()
        self._origin = time.monotonic()

    def _tree(self) -> dict[int, int]:
        table: dict[int, tuple[int, int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                found = stat(entry)
                if found is not None:
                    table[int(entry)] = found
        children: dict[int, list[int]] = {}
        for pid, (ppid, _start) in table.items():
            children.setdefault(ppid, []).append(pid)
        members = {pid: start for pid, start in self._members.items()
                   if pid in table and table[pid][1] == start}
        stack = [self.pid, *members]
        while stack:
            pid = stack.pop()
            if pid in table and pid not in members:
                members[pid] = table[pid][1]
                self._parents[pid] = table[pid][0]
            stack.extend(child for child in children.get(pid, []) if child not in members)
        self._members = members
        return members

    def _argv_of(self, pid: int) -> list[str]:
        key = (pid, self._members.get(pid, 0))
        if key not in self._argv:
            self._argv[key] = argv_of(pid)
        return self._argv[key]

    def _pss(self, members: dict[int, int]) -> None:
        processes = []
        for pid in members:
            memory = rollup(pid)
            if memory:
                parent = self._parents.get(pid, 0)
                parent_argv = self._argv_of(parent) if parent in members else []
                processes.append(Process(pid, role(self._argv_of(pid), parent_argv), memory))
        total = sum(p.memory.get("Pss", 0) for p in processes)
        now = time.monotonic() - self._origin
        self.timeline.append((round(now, 2), round(total / 2**20, 1), len(processes)))
        if total > self.peak_pss_bytes:
            self.peak_pss_bytes, self.peak_at = total, now
            self.at_peak = sorted(processes, key=lambda p: -p.memory.get("Pss", 0))

    def sample(self) -> int:
        """One sample: the tree's summed RSS in bytes now (and its PSS every few samples)."""
        members = self._tree()
        if self.samples % self.pss_every == 0:
            self._pss(members)
        return sum(rss_bytes(pid) for pid in members)

    def run(self) -> None:
        while not self._done.is_set():
            self.peak_bytes = max(self.peak_bytes, self.sample())
            self.samples += 1
            self._done.wait(self.interval)

    @property
    def peak_pss_mb(self) -> float | None:
        return self.peak_pss_bytes / 2**20 if self.peak_pss_bytes else None

    def report(self) -> dict[str, Any]:
        """The PSS peak: when, and every process then (for JSON)."""
        return {"peak_at_s": None if self.peak_at is None else round(self.peak_at, 2),
                "processes": [p.as_dict() for p in self.at_peak],
                "timeline": self.timeline}

    def finish(self) -> float:
        """Stop sampling; return the peak summed RSS in MB (2**20 bytes)."""
        self._done.set()
        self.join()
        return self.peak_bytes / 2**20


def by_role(processes: list[dict[str, Any]]) -> list[tuple[str, int, float, float]]:
    """(role, count, PSS MB, private dirty MB) summed per role, largest PSS first."""
    groups: dict[str, list[float]] = {}
    for process in processes:
        group = groups.setdefault(process["role"], [0, 0.0, 0.0])
        group[0] += 1
        group[1] += process.get("pss_mb", 0.0)
        group[2] += process.get("private_dirty_mb", 0.0)
    return sorted(((name, int(n), pss, dirty) for name, (n, pss, dirty) in groups.items()),
                  key=lambda row: -row[2])
