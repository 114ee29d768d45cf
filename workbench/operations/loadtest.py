"""Load tests: drive an endpoint with aiohttp at a fixed rate or concurrency and measure it.

With a ``rate`` (open model) request *i* is due at ``start + i / rate`` whatever the server
does, and its latency counts from that due time, so a slow server cannot hide its queueing
(no coordinated omission). Without one (closed model) ``concurrency`` clients send back to
back. Requests in the warm-up are sent but not counted.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.config import LoadProfile, parse_duration
from workbench.deploy.inference_log import SYNTHETIC
from workbench.errors import EXIT_FAILED, WorkbenchError

MAX_IN_FLIGHT = 1024
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Sample:
    at_s: float  # due time, seconds after the measured phase began
    latency_ms: float
    ok: bool
    status: int  # HTTP status; 0 when no answer came


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class LoadResult:
    url: str
    profile: dict[str, Any]
    duration_s: float
    samples: list[Sample] = field(default_factory=list)
    first_error: str | None = None

    @property
    def errors(self) -> int:
        return sum(1 for s in self.samples if not s.ok)

    def summary(self) -> dict[str, Any]:
        """Counts, error rate, throughput and latency percentiles (of successful requests)."""
        latencies = [s.latency_ms for s in self.samples if s.ok]
        count = len(self.samples)

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {"url": self.url, "requests": count, "errors": self.errors,
                "error_rate": round(self.errors / count, 6) if count else 1.0,
                "throughput_rps": round(count / self.duration_s, 3) if self.duration_s else 0.0,
                "p50_ms": rounded(percentile(latencies, 50)),
                "p95_ms": rounded(percentile(latencies, 95)),
                "p99_ms": rounded(percentile(latencies, 99)),
                "max_ms": rounded(max(latencies, default=None)),
                "duration_s": round(self.duration_s, 3), "profile": self.profile,
                "first_error": self.first_error}


async def _drive(url: str, body: bytes, profile: LoadProfile, synthetic: bool) -> LoadResult:
    import aiohttp

    duration, warmup = parse_duration(profile.duration), parse_duration(profile.warmup)
    result = LoadResult(url, profile.model_dump(), duration)
    headers = {"Content-Type": "application/json", **(SYNTHETIC if synthetic else {})}
    limit = MAX_IN_FLIGHT if profile.rate else profile.concurrency
    connector = aiohttp.TCPConnector(limit=limit, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = loop.time() + warmup  # the measured phase begins here

        async def one(due: float) -> None:
            status, ok = 0, False
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status, ok = response.status, response.status == 200
                    if not ok and result.first_error is None:
                        result.first_error = f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                if result.first_error is None:
                    result.first_error = f"{type(exc).__name__}: {exc}"
            finished = loop.time()
            if due >= start:
                result.samples.append(Sample(round(due - start, 6),
                                             (finished - due) * 1000, ok, status))

        if profile.rate:
            pending: set[asyncio.Task[None]] = set()
            period, index = 1.0 / profile.rate, 0
            origin = loop.time()
            while (due := origin + index * period) < start + duration:
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.ensure_future(one(due))
                pending.add(task)
                task.add_done_callback(pending.discard)
                index += 1
            if pending:
                await asyncio.gather(*pending)
        else:
            async def client() -> None:
                while (due := loop.time()) < start + duration:
                    await one(due)

            await asyncio.gather(*(client() for _ in range(profile.concurrency)))
    return result


def run_load(url: str, body: bytes, profile: LoadProfile, synthetic: bool = True) -> LoadResult:
    """POST ``body`` to ``url`` under ``profile``; every measured request becomes a sample.
    Requests say they are the workbench's own (``synthetic``): an endpoint's inference log
    leaves them out.

    Runs its own event loop, on a worker thread when this thread has one running already
    (a Jupyter kernel does).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_drive(url, body, profile, synthetic))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-test") as pool:
        return pool.submit(asyncio.run, _drive(url, body, profile, synthetic)).result()


@dataclass(frozen=True)
class Check:
    name: str
    observed: float | None
    threshold: float
    passed: bool
    bound: str = "max"  # the observed value must stay at or below (max) or above (min)

    def describe(self) -> str:
        shown = "n/a" if self.observed is None else f"{self.observed:g}"
        sign = "<=" if self.bound == "max" else ">="
        verdict = "ok" if self.passed else "BREACH"
        return f"{self.name} {shown} (SLO {sign} {self.threshold:g}): {verdict}"


def _upper(name: str, observed: float | None, threshold: float | None) -> Iterable[Check]:
    if threshold is not None:
        yield Check(name, observed, threshold, observed is not None and observed <= threshold)


def evaluate_slo(summary: dict[str, Any], slo: Any, baseline: dict[str, Any] | None = None
                 ) -> tuple[list[Check], float | None]:
    """Every SLO check with the observed value; and the p95 ratio against ``baseline``."""
    checks = [*_upper("p50_ms", summary["p50_ms"], slo.p50_ms),
              *_upper("p95_ms", summary["p95_ms"], slo.p95_ms),
              *_upper("p99_ms", summary["p99_ms"], slo.p99_ms),
              *_upper("error_rate", summary["error_rate"], slo.max_error_rate)]
    if slo.min_throughput_rps is not None:
        observed = summary["throughput_rps"]
        checks.append(Check("throughput_rps", observed, slo.min_throughput_rps,
                            observed >= slo.min_throughput_rps, bound="min"))
    ratio = None
    if baseline and baseline.get("p95_ms") and summary["p95_ms"] is not None:
        ratio = round(summary["p95_ms"] / baseline["p95_ms"], 4)
    if slo.max_latency_ratio is not None and baseline is not None:
        checks.extend(_upper("latency_ratio_p95", ratio, slo.max_latency_ratio))
    return checks, ratio


class SloBreach(WorkbenchError, AssertionError):
    """A load test missed its environment's SLO; promotion past it is blocked."""

    exit_code = EXIT_FAILED


def enforce(environment: str, checks: list[Check]) -> None:
    """Raise :class:`SloBreach` naming every breached objective with its numbers."""
    breached = [c.describe() for c in checks if not c.passed]
    if breached:
        raise SloBreach(f"{environment} load test breached its SLO: " + "; ".join(breached))


def as_dicts(checks: list[Check]) -> list[dict[str, Any]]:
    """The SLO checks as plain dicts, ready to glue as a scrap."""
    return [asdict(c) for c in checks]


def timeline(samples: list[Sample], bucket_s: float = 1.0) -> list[dict[str, Any]]:
    """Per-second buckets: requests, errors and p95 latency, for the latency-over-time plot."""
    buckets: dict[int, list[Sample]] = {}
    for sample in samples:
        buckets.setdefault(int(sample.at_s // bucket_s), []).append(sample)
    return [{"t_s": key * bucket_s, "requests": len(group),
             "errors": sum(1 for s in group if not s.ok),
             "p95_ms": percentile([s.latency_ms for s in group if s.ok], 95)}
            for key, group in sorted(buckets.items())]
