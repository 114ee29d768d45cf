"""Overhead of ``workbench run`` over the same four notebooks executed with papermill directly.

Usage: ``.venv/bin/python benchmarks/pipeline.py [--rounds N] [--json-out PATH] [--keep]``.

Each round runs two variants, each in its own fresh copy of ``configs/`` and ``notebooks/``
(empty embedded MLflow store, free deploy ports), and alternates which variant goes first:

* baseline: ``papermill.execute_notebook`` in this process, stage after stage, with the
  parameters ``workbench run`` would pass (``resolve_parameters`` fed with scraps read back from
  the executed notebooks), cwd at the project root and the kernel environment from
  ``Store.environment`` plus ``WORKBENCH_PROJECT``;
* workbench: ``python -m workbench --project ROOT run --json`` as a subprocess, wall clock of
  the whole command, per-stage durations from its ``stage_finished`` events.

The model server that each deploy stage starts is stopped after each variant. The figures go
to a table on stdout and, as JSON, to the last line of stdout (and ``--json-out`` if given).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
ENVIRONMENT = "dev"
CLI_TIMEOUT_S = 3600.0
STOP_TIMEOUT_S = 120.0
ISOLATED_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WORKBENCH_PROJECT",
                      "WORKBENCH_RUN_ID", "WORKBENCH_ENVIRONMENT")


class BenchmarkError(RuntimeError):
    """A variant did not complete the pipeline, so its timings mean nothing."""


@dataclass
class VariantResult:
    """Timings of one variant in one round, in seconds."""

    stages: dict[str, float]
    total_s: float  # baseline: store setup + stages; workbench: wall clock of the command
    setup_s: float = 0.0  # baseline only: creating the MLflow store before the first stage
    # workbench only, from wall-clock stamps: launch -> run record created (interpreter, imports,
    # validation, MLflow store setup, git), created -> finished minus the stage timers, and
    # finished -> process exit.
    breakdown: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def stage_sum_s(self) -> float:
        return sum(self.stages.values())

    @property
    def outside_stages_s(self) -> float:
        return self.total_s - self.stage_sum_s


@dataclass
class Round:
    """Both variants of one round and the order they ran in."""

    index: int
    order: str
    baseline: VariantResult
    workbench: VariantResult

    @property
    def ratio(self) -> float:
        return self.workbench.total_s / self.baseline.total_s


# --------------------------------------------------------------------------------------------
# Projects, ports, environment, servers


def free_port() -> int:
    """A TCP port nobody listens on right now (as tests/conftest.py picks them)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_project(parent: Path) -> tuple[Path, list[int]]:
    """Copy this repository's configs and notebooks under ``parent``; give every env a port."""
    root = parent / "project"
    ignore = shutil.ignore_patterns(".ipynb_checkpoints")
    shutil.copytree(REPO / "configs", root / "configs", ignore=ignore)
    shutil.copytree(REPO / "notebooks", root / "notebooks", ignore=ignore)
    path = root / "configs" / "environments.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    ports = []
    for env in data["environments"].values():
        env["deploy"]["port"] = free_port()
        ports.append(env["deploy"]["port"])
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return root, ports


def cli_environment() -> dict[str, str]:
    """This process's environment without anything that would redirect MLflow or the project."""
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED_VARIABLES}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def stop_server(root: Path) -> str:
    """``workbench stop dev`` for the project at ``root``; return what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "--project", str(root), "stop", ENVIRONMENT],
        capture_output=True, text=True, env=cli_environment(), cwd=root,
        timeout=STOP_TIMEOUT_S, check=False,
    )
    return (done.stdout + done.stderr).strip()


def leftover_servers(ports: list[int]) -> list[int]:
    """Pids of ``mlflow models serve`` processes still bound to one of our ports."""
    wanted = {str(port) for port in ports}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "models" in argv and "serve" in argv and "-p" in argv:
            port = argv[argv.index("-p") + 1] if argv.index("-p") + 1 < len(argv) else ""
            if port in wanted:
                found.append(int(entry.name))
    return found


def reap_servers(ports: list[int]) -> None:
    """Safety net: end (by pid) any model server of ours that ``workbench stop`` left behind."""
    for pid in leftover_servers(ports):
        print(f"warning: model server pid {pid} survived 'workbench stop'; terminating it",
              file=sys.stderr)
        try:
            os.killpg(pid, signal.SIGTERM)  # served with start_new_session: pid is the group
        except ProcessLookupError:
            continue
        except PermissionError:
            os.kill(pid, signal.SIGTERM)


# --------------------------------------------------------------------------------------------
# Variants


def run_baseline(root: Path, scratch: Path) -> VariantResult:
    """The four notebooks through ``papermill.execute_notebook``, as workbench would feed them."""
    import papermill

    from workbench import gitinfo, run_record
    from workbench.pipeline.runner import kernel_environment
    from workbench.pipeline.validate import load_and_validate
    from workbench.project import PROJECT_ENV_VAR, Project
    from workbench.registry import store as mlflow_store
    from workbench.scraps import read_scraps
    from workbench.stage_graph import resolve_parameters, stage_order

    # How the parameters are derived; not timed (a plain papermill user has them already).
    project = Project(root)
    config = load_and_validate(project)
    sha, _dirty = gitinfo.commit(root)
    run = {"id": run_record.new_run_id(), "git_commit": sha, "config_hash": config.digest,
           "environment": ENVIRONMENT}
    store = mlflow_store.resolve(project, config.pipeline.mlflow)
    kernel_env = {**store.environment, PROJECT_ENV_VAR: str(root)}
    scratch.mkdir(parents=True, exist_ok=True)

    outputs: dict[str, dict[str, Any]] = {}
    stages: dict[str, float] = {}
    started = time.perf_counter()
    mlflow_store.prepare(store)  # what start_run does first; keeps stage times comparable
    setup = time.perf_counter() - started
    with kernel_environment(kernel_env):
        for name in stage_order(config):
            stage = config.stage(name)
            if stage.gate:
                break  # `workbench run` stops at the first gate too (awaiting approval)
            parameters = resolve_parameters(stage, config, ENVIRONMENT, run, outputs)
            executed = scratch / f"{name}.ipynb"
            stage_started = time.perf_counter()
            try:
                papermill.execute_notebook(
                    str(root / stage.notebook), str(executed), parameters=parameters,
                    cwd=str(root), progress_bar=False,
                )
            except Exception as exc:  # a failed stage invalidates the round
                raise BenchmarkError(f"baseline stage {name} failed: {exc}") from exc
            stages[name] = time.perf_counter() - stage_started
            scraps = read_scraps(json.loads(executed.read_text(encoding="utf-8")))
            outputs[name] = {key: scraps[key] for key in stage.outputs if key in scraps}
    total = time.perf_counter() - started
    if outputs.get("deploy", {}).get("smoke_passed") is not True:
        raise BenchmarkError(f"baseline deploy did not pass its smoke test: {outputs}")
    return VariantResult(stages, total, setup_s=setup, outputs=outputs)


def _events(stdout: str) -> list[dict[str, Any]]:
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    return events


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def run_workbench(root: Path) -> VariantResult:
    """``python -m workbench --project ROOT run --json`` timed from outside, as a user sees it."""
    command = [sys.executable, "-m", "workbench", "--project", str(root), "run", "--json"]
    launched = time.time()
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=cli_environment(),
                          cwd=root, timeout=CLI_TIMEOUT_S, check=False)
    wall = time.perf_counter() - started
    exited = time.time()
    events = _events(done.stdout)
    finished = [e for e in events if e["event"] == "stage_finished"]
    stages = {e["stage"]: float(e["duration_s"]) for e in finished}
    record: dict[str, Any] = {}
    runs = sorted((root / "reports" / "runs").glob("*/run.json"))
    if runs:
        record = json.loads(runs[-1].read_text(encoding="utf-8"))
    if not stages and record:  # no usable events: fall back on the run record
        stages = {name: float(s["duration_s"]) for name, s in record["stages"].items()
                  if s.get("duration_s") is not None}
    if done.returncode != 0 or record.get("status") != "succeeded":
        failed = [e for e in finished if e.get("status") != "succeeded"]
        raise BenchmarkError(f"workbench run exited {done.returncode}: {failed or ''}\n"
                             f"{done.stderr[-2000:]}")
    outputs = {name: s.get("outputs", {}) for name, s in record.get("stages", {}).items()}
    created, finished = _epoch(record["created"]), _epoch(record["finished"])
    breakdown = {"startup_s": created - launched,
                 "in_run_outside_stages_s": finished - created - sum(stages.values()),
                 "shutdown_s": exited - finished}
    return VariantResult(stages, wall, breakdown=breakdown, outputs=outputs)


def run_variant(kind: str, parent: Path) -> VariantResult:
    """One variant in a fresh project under ``parent``; its model server is stopped after."""
    root, ports = make_project(parent)
    try:
        if kind == "baseline":
            return run_baseline(root, parent / "executed")
        return run_workbench(root)
    finally:
        stop_server(root)
        reap_servers(ports)


def run_round(index: int, keep: bool) -> Round:
    """Both variants, baseline first in even rounds and workbench first in odd ones."""
    order = ("baseline", "workbench") if index % 2 == 0 else ("workbench", "baseline")
    results: dict[str, VariantResult] = {}
    scratch = Path(tempfile.mkdtemp(prefix=f"workbench-bench-{index}-"))
    try:
        for kind in order:
            print(f"round {index + 1}: {kind} ...", file=sys.stderr, flush=True)
            results[kind] = run_variant(kind, scratch / kind)
            print(f"round {index + 1}: {kind} {results[kind].total_s:.1f} s", file=sys.stderr,
                  flush=True)
    finally:
        if keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return Round(index + 1, "AB" if order[0] == "baseline" else "BA",
                 results["baseline"], results["workbench"])


def warm_up() -> float:
    """Import what the baseline uses in-process, so no round pays it; return the seconds."""
    started = time.perf_counter()
    import mlflow.tracking  # noqa: F401
    import papermill  # noqa: F401

    import workbench.pipeline.validate  # noqa: F401
    import workbench.registry.store  # noqa: F401
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# Report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(rounds: list[Round], imports_s: float) -> dict[str, Any]:
    """Median of every figure across rounds, plus each round's raw figures."""
    names = list(rounds[0].baseline.stages)
    per_stage = {}
    for name in names:
        base = _median([r.baseline.stages[name] for r in rounds])
        bench = _median([r.workbench.stages.get(name, float("nan")) for r in rounds])
        per_stage[name] = {"baseline_s": base, "workbench_s": bench, "overhead_s": bench - base}
    base_total = _median([r.baseline.total_s for r in rounds])
    bench_total = _median([r.workbench.total_s for r in rounds])
    cli_fixed = _median([r.workbench.outside_stages_s for r in rounds])
    parts = {key: _median([r.workbench.breakdown[key] for r in rounds])
             for key in rounds[0].workbench.breakdown}
    return {
        "rounds": len(rounds),
        "statistic": "median" if len(rounds) > 1 else "single round",
        "stages": per_stage,
        "baseline": {
            "stage_sum_s": _median([r.baseline.stage_sum_s for r in rounds]),
            "store_setup_s": _median([r.baseline.setup_s for r in rounds]),
            "outside_stages_s": _median([r.baseline.outside_stages_s for r in rounds]),
            "total_s": base_total,
        },
        "workbench": {
            "stage_sum_s": _median([r.workbench.stage_sum_s for r in rounds]),
            "cli_fixed_overhead_s": cli_fixed,
            "cli_fixed_breakdown": parts,
            "total_s": bench_total,
        },
        "overhead_total_s": bench_total - base_total,
        "ratio": bench_total / base_total,
        "baseline_process_imports_s": imports_s,
        "per_round": [
            {"round": r.index, "order": r.order, "ratio": r.ratio,
             "baseline": {k: v for k, v in asdict(r.baseline).items() if k != "outputs"},
             "workbench": {k: v for k, v in asdict(r.workbench).items() if k != "outputs"}}
            for r in rounds
        ],
    }


def print_table(summary: dict[str, Any]) -> None:
    """The human-readable figures."""
    row = "{:<26} {:>12} {:>12} {:>12}"
    base, bench = summary["baseline"], summary["workbench"]
    print(f"\nworkbench run vs papermill directly: {summary['rounds']} round(s), "
          f"{summary['statistic']} of each figure, seconds")
    print(row.format("stage", "baseline", "workbench", "overhead"))
    print("-" * 65)
    for name, figures in summary["stages"].items():
        print(row.format(name, f"{figures['baseline_s']:.2f}", f"{figures['workbench_s']:.2f}",
                         f"{figures['overhead_s']:+.2f}"))
    print("-" * 65)
    print(row.format("sum of stages", f"{base['stage_sum_s']:.2f}", f"{bench['stage_sum_s']:.2f}",
                     f"{bench['stage_sum_s'] - base['stage_sum_s']:+.2f}"))
    print(row.format("outside stages", f"{base['outside_stages_s']:.2f}",
                     f"{bench['cli_fixed_overhead_s']:.2f}",
                     f"{bench['cli_fixed_overhead_s'] - base['outside_stages_s']:+.2f}"))
    print(row.format("total", f"{base['total_s']:.2f}", f"{bench['total_s']:.2f}",
                     f"{summary['overhead_total_s']:+.2f}"))
    print()
    print(f"ratio workbench_total / baseline_total: {summary['ratio']:.3f}")
    print(f"CLI fixed overhead (wall - sum of stages): {bench['cli_fixed_overhead_s']:.2f} s")
    parts = bench["cli_fixed_breakdown"]
    print(f"  startup to run record (interpreter, imports, validate, MLflow store setup, git): "
          f"{parts['startup_s']:.2f} s")
    print(f"  inside the run, outside stage timers (first papermill import, records): "
          f"{parts['in_run_outside_stages_s']:.2f} s")
    print(f"  run finished to process exit: {parts['shutdown_s']:.2f} s")
    print(f"baseline outside stages is MLflow store setup: {base['store_setup_s']:.2f} s; "
          f"this process imported papermill/mlflow once beforehand in "
          f"{summary['baseline_process_imports_s']:.2f} s (not in the baseline total)")
    if summary["rounds"] > 1:
        ratios = ", ".join(f"{r['order']} {r['ratio']:.3f}" for r in summary["per_round"])
        print(f"per-round ratios: {ratios}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the rounds, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds of both variants")
    parser.add_argument("--json-out", type=Path, help="also write the JSON figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for key in ISOLATED_VARIABLES:
        os.environ.pop(key, None)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    imports_s = warm_up()
    try:
        rounds = [run_round(index, args.keep) for index in range(args.rounds)]
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    summary = summarize(rounds, imports_s)
    print_table(summary)
    text = json.dumps(summary)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
