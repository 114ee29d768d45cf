"""What the report site and the audit checks cost on a large archive.

Usage: ``.venv/bin/python benchmarks/reports.py [--sizes 100 1000 10000 100000] [--files 2000]
[--repeat 3] [--json-out PATH] [--keep]``.

Everything is written into one temporary folder and measured in this run:

* index: ``workbench.reports.site.build_index`` over archives of ``--sizes`` synthetic runs
  (realistic ``run.json`` of 8 stages each: parameters, outputs, metrics, two gates). Cold: no
  run index (every record read and validated; once); warm: a full build with the index from
  the previous one and nothing changed (a ``stat`` per run); add one: one new run at each size
  by the event path a finished run takes (``build_index(project, [run_id])``); + pages: the
  whole site update of a finished run (``site.build(project, run_id)``: index, environments,
  its page), with a ledger of 10 entries per run (stages, outcome, alias moves, a deploy).
  Median of ``--repeat`` builds each (the operating system's file cache is warm in every
  case);
* verify: ``--files`` archived files of 50-200 KB (random bytes), each recorded in
  ``ledger.jsonl`` by ``workbench.audit.ledger.append``; then ``ledger.verify`` (chain and
  every file), ``ledger.verify(check_files=False)`` (chain only), a plain ``hashlib`` loop over
  the same files, and ``sha256sum`` over the same files in one subprocess. MB/s each;
* render: ``workbench.reports.render.render_notebook`` per stage notebook: the synthetic stage
  notebooks of ``benchmarks/render.py`` (code, markdown, tables, ~50 KB plots, widget state), a
  small gate-like notebook, and the stage notebooks of the newest run under ``reports/runs/``
  if there is one. First render in this process (the exporter compiles its templates) and the
  median of ``--repeat`` after it.

A table goes to stdout; its last line is the same figures as one line of JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workbench import run_record  # noqa: E402
from workbench.audit import ledger  # noqa: E402
from workbench.digests import canonical  # noqa: E402
from workbench.project import Project  # noqa: E402
from workbench.reports import run_index, site  # noqa: E402

MB = 1024 * 1024
STAGES = ("data", "train", "evaluate", "register", "approve_qa", "release_qa", "approve_prod",
          "release_prod")
STATUSES = ("succeeded",) * 14 + ("failed",) * 3 + ("awaiting_approval",) * 2 + ("paused",)
PEOPLE = ("alice", "bob", "carol", "dave", "erin")


# --- (a) the index over a synthetic archive -----------------------------------------------------

def template_record() -> dict[str, Any]:
    """One realistic run record (validated by the real model), as ``run_record.save`` writes it."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    stages: dict[str, run_record.StageRecord] = {}
    for index, name in enumerate(STAGES):
        began = start + timedelta(seconds=40 * index)
        entry = run_record.StageRecord(
            status="succeeded", notebook=f"{name}.ipynb", started=began.isoformat(),
            finished=(began + timedelta(seconds=30)).isoformat(), duration_s=12.5 + index,
            actor={"name": "carol", "source": "github", "os_user": "runner"},
            parameters={"model_name": "breast-cancer-classifier", "dataset": "breast_cancer",
                        "run_id": "RUN", "random_state": 42, "test_size": 0.25,
                        "min_score": 0.9, "max_regression": 0.05, "champion_alias": "dev",
                        "model_uri": "models:/m-39972e22bdf34054a233f6fa9adfedc5"})
        if name == "evaluate":
            entry.outputs = {"metrics": {"accuracy": 0.951, "f1_macro": 0.947, "roc_auc": 0.994,
                                         "score": 0.951}, "passed": True, "reasons": [],
                             "champion": {"version": "3", "score": 0.94}, "score": 0.951}
        elif name == "train":
            entry.outputs = {"mlflow_run_id": "9f" * 16, "model_uri": "models:/m-" + "ab" * 16,
                             "metrics": {"train_accuracy": 0.97, "train_loss": 0.081}}
        elif name.startswith("approve_"):
            environment = name.removeprefix("approve_")
            entry.gate = {"environment": environment, "gate": name, "state": "approved",
                          "bundle_digest": "b" * 64, "policy_version": "p" * 64,
                          "quorum": 2, "approved_by": ["dave", "erin"], "approval_seqs": [1, 2],
                          "eligible": list(PEOPLE), "excluded": {"carol": "requested"},
                          "not_counted": [], "alias_move": 3}
            entry.outputs = {"decision": "approved", "approvers": ["dave", "erin"],
                             "bundle_digest": "b" * 64}
        else:
            entry.outputs = {"released": f"{name}:4", "endpoint": "http://127.0.0.1:5001"}
        stages[name] = entry
    record = run_record.RunRecord(
        id="RUN", pipeline="release", environment="dev", status="succeeded",
        created=start.isoformat(), finished=(start + timedelta(minutes=6)).isoformat(),
        git_commit="c0ffee" * 6 + "abcd", config_hash="f" * 64,
        config={name: "d" * 64 for name in ("pipeline", "environments", "model", "gates")},
        tracking_uri="sqlite:///.workbench/mlflow/mlflow.db", experiment="release",
        stages=stages, mlflow_run_ids=["9f" * 16], model_version={"name": "mini",
                                                                   "version": "4"},
        requested_by={"name": "carol", "source": "github"},
        trained_by={"name": "carol", "source": "github"})
    return record.model_dump(mode="json")


def run_id(index: int) -> str:
    moment = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=17 * index)
    return moment.strftime("%Y%m%dT%H%M%SZ") + f"-{index:06x}"


def write_run(project: Project, template: dict[str, Any], index: int, rng: random.Random
              ) -> None:
    """A varied copy of the template as ``runs/<id>/run.json`` (indented, like run_record.save)."""
    record = json.loads(json.dumps(template))
    rid = run_id(index)
    record["id"], record["status"] = rid, rng.choice(STATUSES)
    record["created"] = datetime.strptime(rid[:16], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=UTC).isoformat()
    record["model_version"]["version"] = str(index + 1)
    for entry in record["stages"].values():
        entry["parameters"]["run_id"] = rid
        entry["duration_s"] = round(rng.uniform(2, 60), 3)
        if entry["gate"]:
            entry["gate"]["approved_by"] = sorted(rng.sample(PEOPLE, 2))
    record["stages"]["evaluate"]["outputs"]["metrics"]["accuracy"] = rng.uniform(0.85, 0.99)
    if record["status"] != "succeeded":  # stopped somewhere before prod
        for name in STAGES[rng.randrange(2, 7):]:
            record["stages"][name].update(status="pending", outputs={}, gate=None,
                                          notebook=None, duration_s=None)
    path = run_record.run_dir(project, rid) / run_record.RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def timed(action: Callable[[], Any], repeat: int, before: Callable[[], Any] | None = None
          ) -> float:
    """Median seconds of ``action`` over ``repeat`` calls (``before`` runs untimed each time)."""
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class SyntheticLedger:
    """Ledger entries of each synthetic run, as a release writes them (its stages, the outcome,
    two alias moves and a deploy), sealed into one chain and appended without fsync."""

    def __init__(self, reports: Path) -> None:
        self.path = ledger.ledger_path(reports)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.head: dict[str, Any] | None = None

    def add(self, rid: str, version: str, entries: int = 10) -> None:
        actor = {"name": "carol", "source": "github"}
        bodies = [{"event": "stage_executed", "data": {"stage": name}} for name in STAGES[:6]]
        bodies += [{"event": "run_recorded", "data": {"status": "succeeded"}},
                   {"event": "alias_move", "data": {"alias": "qa", "model": "mini",
                                                    "to_version": version}},
                   {"event": "alias_move", "data": {"alias": "prod", "model": "mini",
                                                    "to_version": version}},
                   {"event": "deploy", "data": {"environment": "prod", "model": "mini",
                                                "version": version}}]
        lines = []
        for body in bodies[:entries]:
            self.head = ledger.CHAIN.seal({"time": datetime.now(UTC).isoformat(), "actor": actor,
                                           "run_id": rid, "files": {}, **body}, self.head)
            lines.append(canonical(self.head) + b"\n")
        with self.path.open("ab") as handle:
            handle.write(b"".join(lines))


def _drop_index(project: Project) -> None:
    """No run index: the next full build reads and validates every record."""
    for name in (run_index.PRIVATE, run_index.PUBLIC):
        shutil.rmtree(project.reports / name, ignore_errors=True)


def bench_index(work: Path, sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    template = template_record()
    rng = random.Random(7)
    project = Project(work / "archive")
    chain = SyntheticLedger(project.reports)
    rows, written = [], 0
    for size in sorted(sizes):
        start = time.perf_counter()
        for index in range(written, size):
            write_run(project, template, index, rng)
            chain.add(run_id(index), str(index + 1))
        written = size
        generated_s = time.perf_counter() - start
        _drop_index(project)  # once: reading every record is a one-off (an upgrade, a clone)
        cold = timed(lambda: site.build_index(project), 1)
        warm = timed(lambda: site.build_index(project), repeat)
        # One more run, by the event path a finished run takes (only its record is read, its
        # shard and the first page rewritten).
        adds, whole = [], []
        site.build_environments(project)  # the site's ledger view up to date, as after a run
        for _ in range(repeat):
            write_run(project, template, written, rng)
            new = run_id(written)
            chain.add(new, str(written + 1))
            written += 1
            start = time.perf_counter()
            first = site.build_index(project, [new])
            adds.append(time.perf_counter() - start)
            assert first[0]["id"] == new
        for _ in range(repeat):  # what a finished run's site update costs in all
            write_run(project, template, written, rng)
            new = run_id(written)
            chain.add(new, str(written + 1))
            written += 1
            start = time.perf_counter()
            site.build(project, new)
            whole.append(time.perf_counter() - start)
        shards = sorted((project.reports / run_index.PUBLIC).glob("*.js"))
        rows.append({
            "runs": size, "run_json_kb": (project.runs / run_id(0) / run_record.RUN_FILE)
            .stat().st_size / 1024, "generate_s": generated_s, "cold_s": cold,
            "warm_s": warm, "add_one_s": statistics.median(adds),
            "add_one_site_s": statistics.median(whole),
            "ledger_mb": ledger.ledger_path(project.reports).stat().st_size / MB,
            "environments_html_mb": (project.reports / "environments.html").stat().st_size / MB,
            "index_html_mb": (project.reports / "index.html").stat().st_size / MB,
            "compare_html_mb": (project.reports / "compare.html").stat().st_size / MB,
            "shards": len(run_index.read_manifest(project).shards),
            "largest_shard_js_mb": max(p.stat().st_size for p in shards) / MB,
            "all_runs_js_mb": sum(p.stat().st_size for p in shards if p.name.startswith("runs"))
            / MB})
    return rows


# --- (b) ledger.verify against sha256sum ----------------------------------------------------------

def bench_verify(work: Path, files: int, repeat: int) -> dict[str, Any]:
    reports = work / "audit" / "reports"
    rng = random.Random(11)
    paths = []
    start = time.perf_counter()
    for index in range(files):
        path = reports / "runs" / run_id(index // 8) / f"{STAGES[index % 8]}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(50 * 1024, 200 * 1024)))
        paths.append(path)
    written_s = time.perf_counter() - start
    start = time.perf_counter()
    for path in paths:
        ledger.append(reports, "stage_executed", actor={"name": "carol", "source": "github"},
                      run_id=path.parent.name, data={"stage": path.stem}, files=[path])
    append_s = time.perf_counter() - start
    total = sum(p.stat().st_size for p in paths)

    def verify() -> None:
        result = ledger.verify(reports)
        assert result.ok and result.files == files and result.bytes == total, result.problems

    def hashlib_only() -> None:
        for path in paths:
            ledger.file_sha256(path)

    def coreutils() -> None:
        # One process over every file, its output (a line per file) read and discarded.
        subprocess.run(["sha256sum", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)

    coreutils()  # warm-up: every file in the page cache before the first timing
    samples: dict[str, list[float]] = {"verify": [], "hashlib": [], "sha256sum": []}
    for round_ in range(repeat):  # interleaved, so drift hits all three alike
        order = [("verify", verify), ("hashlib", hashlib_only), ("sha256sum", coreutils)]
        for name, action in order[round_ % 3:] + order[:round_ % 3]:
            start = time.perf_counter()
            action()
            samples[name].append(time.perf_counter() - start)
    figures = {name: statistics.median(times) for name, times in samples.items()}
    chain_s = timed(lambda: ledger.verify(reports, check_files=False), repeat)
    mb = total / MB
    return {"files": files, "mb": mb, "ledger_mb": ledger.ledger_path(reports).stat().st_size
            / MB, "write_files_s": written_s, "append_s": append_s,
            "appends_per_s": files / append_s, "verify_s": figures["verify"],
            "verify_chain_only_s": chain_s, "hashlib_s": figures["hashlib"],
            "sha256sum_s": figures["sha256sum"],
            "verify_mb_s": mb / figures["verify"], "hashlib_mb_s": mb / figures["hashlib"],
            "sha256sum_mb_s": mb / figures["sha256sum"],
            "ratio_verify_vs_sha256sum": figures["verify"] / figures["sha256sum"]}


# --- (c) rendering stage notebooks -------------------------------------------------------------

def load_render_benchmark() -> Any:
    """``benchmarks/render.py`` as a module, for its notebook generator."""
    spec = importlib.util.spec_from_file_location("bench_render", REPO / "benchmarks" /
                                                  "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gate_notebook() -> Any:
    """A small notebook like an approval stage: parameters, a few lines of text output."""
    import nbformat

    cells = [nbformat.v4.new_code_cell('run_id = ""\nenvironment = "qa"', execution_count=1,
                                       metadata={"tags": ["parameters"]})]
    for index in range(4):
        cells.append(nbformat.v4.new_code_cell(
            f"print(verdict[{index}])", execution_count=index + 2, outputs=[
                nbformat.v4.new_output("stream", name="stdout",
                                       text=f"approval {index}: dave approved bundle b...\n")]))
    return nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def bench_render(work: Path, repeat: int) -> list[dict[str, Any]]:
    import warnings

    import nbformat

    warnings.filterwarnings("ignore")  # nbconvert on scrapbook's scrap mimetype
    from workbench.reports.render import render_notebook

    generator = load_render_benchmark()
    folder = work / "render" / "runs" / "r"
    folder.mkdir(parents=True)
    notebooks: dict[str, Path] = {}
    for seed, stage in enumerate(generator.SYNTHETIC, start=1):
        notebooks[f"synthetic/{stage}"] = folder / f"{stage}.ipynb"
        nbformat.write(generator.synthetic_notebook(stage, seed), notebooks[f"synthetic/{stage}"])
    notebooks["synthetic/gate"] = folder / "gate.ipynb"
    nbformat.write(gate_notebook(), notebooks["synthetic/gate"])
    for path in generator.newest_run():
        notebooks[f"run/{path.stem}"] = path
    rows = []
    for name, source in notebooks.items():
        target = folder / f"{name.replace('/', '_')}.html"
        first = render_notebook(source, target, "../../static")
        steady = statistics.median(render_notebook(source, target, "../../static")
                                   for _ in range(repeat))
        rows.append({"notebook": name, "ipynb_kb": source.stat().st_size / 1024,
                     "html_kb": target.stat().st_size / 1024, "first_s": first,
                     "steady_s": steady})
    return rows


# --- output ---------------------------------------------------------------------------------------

def print_tables(figures: dict[str, Any]) -> None:
    print("\n(a) site.build_index, seconds (cold once; warm and add one: median of "
          f"{figures['repeat']}; OS file cache warm throughout)")
    print(f"{'runs':>7}{'run.json KB':>13}{'cold':>9}{'warm':>9}{'add one':>9}"
          f"{'+ pages':>9}{'index MB':>10}{'compare MB':>12}{'envs MB':>9}{'shards':>8}"
          f"{'shard MB':>10}{'all rows MB':>13}{'ledger MB':>11}")
    for row in figures["index"]:
        print(f"{row['runs']:>7}{row['run_json_kb']:>13.1f}{row['cold_s']:>9.2f}"
              f"{row['warm_s']:>9.2f}{row['add_one_s']:>9.3f}{row['add_one_site_s']:>9.3f}"
              f"{row['index_html_mb']:>10.2f}{row['compare_html_mb']:>12.2f}"
              f"{row['environments_html_mb']:>9.2f}{row['shards']:>8}"
              f"{row['largest_shard_js_mb']:>10.2f}{row['all_runs_js_mb']:>13.1f}"
              f"{row['ledger_mb']:>11.0f}")
    print("goals: first page (index.html) <= 1 MB at 100,000 runs; adding a run costs the "
          "same at every size (add one: the index; + pages: the whole site update of a "
          "finished run: index, environments and its own page)")
    largest = figures["index"][-1]
    print(f"per run at {largest['runs']}: cold {1000 * largest['cold_s'] / largest['runs']:.2f} "
          f"ms, warm {1000 * largest['warm_s'] / largest['runs']:.3f} ms")
    v = figures["verify"]
    print(f"\n(b) verify {v['files']} files, {v['mb']:.0f} MB, each in the ledger "
          f"({v['ledger_mb']:.1f} MB of ledger)")
    print(f"{'':<34}{'seconds':>9}{'MB/s':>9}")
    for label, key in (("ledger.verify (chain + files)", "verify"),
                       ("hashlib loop, same files", "hashlib"),
                       ("sha256sum, same files", "sha256sum")):
        print(f"{label:<34}{v[key + '_s']:>9.2f}{v[key + '_mb_s']:>9.0f}")
    print(f"{'ledger.verify, chain only':<34}{v['verify_chain_only_s']:>9.3f}")
    print(f"ratio verify / sha256sum: {v['ratio_verify_vs_sha256sum']:.2f}; ledger.append: "
          f"{v['appends_per_s']:.0f} entries/s (each hashes its file and fsyncs)")
    print(f"\n(c) render_notebook per stage, seconds (steady: median of {figures['repeat']})")
    print(f"{'notebook':<28}{'ipynb KB':>9}{'html KB':>9}{'first':>8}{'steady':>8}")
    for row in figures["render"]:
        print(f"{row['notebook']:<28}{row['ipynb_kb']:>9.0f}{row['html_kb']:>9.0f}"
              f"{row['first_s']:>8.2f}{row['steady_s']:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000, 100000],
                        help="archive sizes (runs) for the index")
    parser.add_argument("--files", type=int, default=2000, help="files for verify")
    parser.add_argument("--repeat", type=int, default=3, help="timings per median")
    parser.add_argument("--json-out", type=Path, help="also write the JSON figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.files < 1 or min(args.sizes) < 1:
        parser.error("--repeat, --files and --sizes must be at least 1")
    if shutil.which("sha256sum") is None:
        parser.error("sha256sum (coreutils) is not on PATH")
    work = Path(tempfile.mkdtemp(prefix="reports-bench-"))
    started = time.perf_counter()
    try:
        figures: dict[str, Any] = {"repeat": args.repeat, "cpus": os.cpu_count()}
        figures["index"] = bench_index(work, args.sizes, args.repeat)
        figures["verify"] = bench_verify(work, args.files, args.repeat)
        figures["render"] = bench_render(work, args.repeat)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    figures["wall_s"] = time.perf_counter() - started
    print_tables(figures)
    print(f"\nwhole benchmark: {figures['wall_s']:.0f} s")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
