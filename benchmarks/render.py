"""What rendering archived notebooks to offline HTML costs a release.

Usage: ``.venv/bin/python benchmarks/render.py [--repeat N] [--json-out PATH] [--keep]``.

Notebooks: synthetic stage notebooks (20 code cells with highlighted source and text output, a
markdown summary, a markdown table, an HTML table, matplotlib PNG plots of ~50 KB, Jupyter
widget state), plus the stage notebooks of the newest run under ``reports/runs/`` if there is
one. Each is rendered:

* ``workbench``: ``workbench.reports.render.render_notebook`` (our template, one reused
  exporter, atomic write with fsync). Cold: a fresh interpreter importing the module, building
  the exporter and rendering every notebook once (so the first render pays for compiling the
  templates). Steady: this process, after a warm-up, median of ``--repeat`` renders;
* ``stock``: nbconvert's ``HTMLExporter`` with the stock lab template, reused, same read and
  write (no fsync), median of ``--repeat`` renders;
* ``cli``: ``jupyter nbconvert --to html`` on all the notebooks in one subprocess (the wall
  clock of the command, interpreter start included), median of 3.

A table goes to stdout; its last line is the same figures as one line of JSON.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import nbformat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
SYNTHETIC = ("train", "evaluate", "validate")
PLOTS = 3  # PNG figures per synthetic notebook


def plot_png(seed: int) -> str:
    """A matplotlib figure as base64 PNG, about 50 KB (a noisy scatter and two lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    x = rng.normal(size=1500)
    ax.scatter(x, 0.6 * x + rng.normal(size=1500), s=6, alpha=0.5, c=rng.random(1500))
    grid = np.linspace(-3, 3, 200)
    ax.plot(grid, 0.6 * grid, "r-", grid, np.tanh(grid), "g--")
    ax.set_title(f"calibration, fold {seed}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def widget_outputs() -> tuple[list[nbformat.NotebookNode], dict[str, Any]]:
    """Display outputs of a few widgets and their saved state, as ipywidgets produces them."""
    import ipywidgets as widgets
    import nbformat

    shown = [widgets.IntSlider(value=7, description="speed"),
             widgets.HTML(value="<b>recorded</b> #1"),
             widgets.Button(description="Approve", icon="check"),
             widgets.Dropdown(options=["dev", "qa", "prod"], value="qa", description="env")]
    outputs = [nbformat.v4.new_output("display_data", data=w._repr_mimebundle_())
               for w in shown]
    return outputs, widgets.Widget.get_manager_state(drop_defaults=False)


def synthetic_notebook(stage: str, seed: int) -> nbformat.NotebookNode:
    import nbformat

    source = "\n".join([
        "import numpy as np",
        "from sklearn.linear_model import LogisticRegression",
        f"rng = np.random.default_rng({seed})",
        "X = rng.normal(size=(1_000, 8))",
        "y = (X @ rng.normal(size=8) > 0).astype(int)",
        "model = LogisticRegression(max_iter=200).fit(X, y)  # fit on the training split",
        "scores = {'accuracy': model.score(X, y), 'n': len(y)}",
        "print(f\"{stage}: {scores}\")",
    ])
    cells: list[nbformat.NotebookNode] = [nbformat.v4.new_markdown_cell(
        f"# {stage.title()}\n\nStage notebook of the release pipeline: data, fit, metrics, "
        "plots.\n\n- parameters come from the run config\n- outputs are recorded as scraps")]
    table = "| metric | value |\n| --- | --- |\n" + "".join(
        f"| metric_{i} | {0.5 + i / 100:.3f} |\n" for i in range(12))
    html_table = "<table><tr><th>fold</th><th>auc</th></tr>" + "".join(
        f"<tr><td>{i}</td><td>{0.8 + i / 100:.3f}</td></tr>" for i in range(10)) + "</table>"
    plots = {3 + 5 * i: plot_png(seed * 10 + i) for i in range(PLOTS)}
    for index in range(20):
        outputs = [nbformat.v4.new_output(
            "stream", name="stdout", text=f"step {index}: " + ", ".join(
                f"loss={1 / (index + k + 1):.4f}" for k in range(6)) + "\n")]
        if index in plots:
            outputs.append(nbformat.v4.new_output(
                "display_data", data={"image/png": plots[index], "text/plain": "<Figure>"}))
        if index == 1:
            outputs.append(nbformat.v4.new_output("display_data", data={
                "text/markdown": f"**Summary**: {stage} accuracy 0.93", "text/plain": "..."}))
        if index == 2:
            outputs.append(nbformat.v4.new_output(
                "execute_result", data={"text/markdown": table, "text/plain": "..."},
                execution_count=index + 1))
        if index == 4:
            outputs.append(nbformat.v4.new_output(
                "execute_result", data={"text/html": html_table, "text/plain": "..."},
                execution_count=index + 1))
        cells.append(nbformat.v4.new_code_cell(source.replace("{stage}", stage),
                                               execution_count=index + 1, outputs=outputs))
    view_outputs, state = widget_outputs()
    cells.append(nbformat.v4.new_code_cell("display(speed, note, approve, env)",
                                           execution_count=21, outputs=view_outputs))
    return nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python", "pygments_lexer": "ipython3"},
        "widgets": {WIDGET_STATE: state}})


def newest_run() -> list[Path]:
    runs = sorted(p for p in (REPO / "reports" / "runs").glob("*/") if p.is_dir())
    return sorted(runs[-1].glob("*.ipynb")) if runs else []


def worker(variant: str, repeat: int, out: Path, sources: list[Path]) -> dict[str, Any]:
    """In a fresh interpreter: import, set up, render each notebook once (cold), then per
    notebook a warm-up and the median of ``repeat`` renders (steady)."""
    import warnings

    warnings.filterwarnings("ignore")  # nbconvert warns about scrapbook's scrap mimetype
    start = time.perf_counter()  # nbformat, nbconvert and their dependencies are not loaded yet
    if variant == "workbench":
        from workbench.reports import render

        imported = time.perf_counter()
        render.exporter()

        def once(source: Path, target: Path) -> None:
            render.render_notebook(source, target, "../static")
    else:  # stock: the same read and write (without fsync), nbconvert's lab template
        import nbformat
        from nbconvert import HTMLExporter

        imported = time.perf_counter()
        stock = HTMLExporter(template_name="lab")

        def once(source: Path, target: Path) -> None:
            body, _ = stock.from_notebook_node(nbformat.read(source, as_version=4))
            target.write_text(body, encoding="utf-8")

    setup = time.perf_counter()
    figures: dict[str, Any] = {"import_s": imported - start, "setup_s": setup - imported,
                               "cold_s": [], "steady_s": [], "html_kb": []}
    targets = [out / variant / f"{i}-{source.stem}.html" for i, source in enumerate(sources)]
    targets[0].parent.mkdir(parents=True, exist_ok=True)
    for source, target in zip(sources, targets, strict=True):
        begin = time.perf_counter()
        once(source, target)
        figures["cold_s"].append(time.perf_counter() - begin)
        figures["html_kb"].append(target.stat().st_size / 1024)
    for source, target in zip(sources, targets, strict=True):
        once(source, target)  # warm-up
        times = []
        for _ in range(repeat):
            begin = time.perf_counter()
            once(source, target)
            times.append(time.perf_counter() - begin)
        figures["steady_s"].append(statistics.median(times))
    return figures


def run_worker(variant: str, repeat: int, out: Path, sources: list[Path]) -> dict[str, Any]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--worker", variant, "--repeat",
                           str(repeat), "--out", str(out), *map(str, sources)],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{variant} worker failed:\n{done.stderr}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["process_wall_s"] = time.perf_counter() - start
    return figures


def cli(sources: list[Path], out: Path, rounds: int) -> float:
    """Median wall clock of one ``jupyter nbconvert --to html`` command on all ``sources``."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", "--log-level=ERROR",
                        "--output-dir", str(out), *map(str, sources)],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="renders per steady median")
    parser.add_argument("--cli-rounds", type=int, default=3, help="CLI runs (median)")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--worker", choices=("workbench", "stock"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("sources", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeat, args.out, args.sources)))
        return 0

    import nbformat

    work = Path(tempfile.mkdtemp(prefix="render-bench-"))
    try:
        notebooks: dict[str, Path] = {}
        for seed, stage in enumerate(SYNTHETIC, start=1):
            path = work / "synthetic" / f"{stage}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(synthetic_notebook(stage, seed), path)
            notebooks[f"synthetic/{stage}"] = path
        for path in newest_run():
            notebooks[f"run/{path.stem}"] = path
        sources = list(notebooks.values())
        ipynb_kb = [path.stat().st_size / 1024 for path in sources]
        ours = run_worker("workbench", args.repeat, work / "html", sources)
        stock = run_worker("stock", args.repeat, work / "html", sources)
        cli_s = cli(sources, work / "html" / "cli", args.cli_rounds)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = [{"notebook": name, "ipynb_kb": ipynb_kb[i],
             "html_kb": ours["html_kb"][i], "stock_html_kb": stock["html_kb"][i],
             "cold_s": ours["cold_s"][i], "steady_s": ours["steady_s"][i],
             "stock_cold_s": stock["cold_s"][i], "stock_steady_s": stock["steady_s"][i]}
            for i, name in enumerate(notebooks)]
    print(f"{'notebook':<22}{'ipynb KB':>9}{'html KB':>8}{'cold s':>8}{'steady s':>9}   "
          f"{'stock cold':>10}{'stock steady':>13}{'steady ratio':>13}")
    for row in rows:
        print(f"{row['notebook']:<22}{row['ipynb_kb']:>9.0f}{row['html_kb']:>8.0f}{row['cold_s']:>8.3f}"
              f"{row['steady_s']:>9.3f}   {row['stock_cold_s']:>10.3f}"
              f"{row['stock_steady_s']:>13.3f}{row['steady_s'] / row['stock_steady_s']:>13.2f}")

    def total(figures: dict[str, Any], key: str) -> float:
        return sum(figures[key])

    summary = {
        "notebooks": len(rows),
        "workbench_import_s": ours["import_s"], "workbench_setup_s": ours["setup_s"],
        "workbench_first_render_s": ours["cold_s"][0],
        "workbench_first_steady_s": ours["steady_s"][0],
        "workbench_cold_batch_s": ours["import_s"] + ours["setup_s"] + total(ours, "cold_s"),
        "workbench_steady_batch_s": total(ours, "steady_s"),
        "stock_cold_batch_s": stock["import_s"] + stock["setup_s"] + total(stock, "cold_s"),
        "stock_steady_batch_s": total(stock, "steady_s"),
        "cli_batch_s": cli_s,
    }
    summary |= {
        "ratio_steady_workbench_vs_stock": summary["workbench_steady_batch_s"]
        / summary["stock_steady_batch_s"],
        "ratio_cold_workbench_vs_stock": summary["workbench_cold_batch_s"]
        / summary["stock_cold_batch_s"],
        "ratio_cold_workbench_vs_cli": summary["workbench_cold_batch_s"] / cli_s,
        "ratio_steady_workbench_vs_cli": summary["workbench_steady_batch_s"] / cli_s,
    }
    print()
    print(f"workbench, fresh interpreter: import {ours['import_s']:.2f} s, exporter "
          f"{ours['setup_s']:.3f} s, first render {ours['cold_s'][0]:.2f} s (the same notebook "
          f"steady: {ours['steady_s'][0]:.2f} s)")
    print(f"all {len(rows)} notebooks          {'cold':>8} {'steady':>8}")
    print(f"  workbench            {summary['workbench_cold_batch_s']:>8.2f} "
          f"{summary['workbench_steady_batch_s']:>8.2f}")
    print(f"  stock HTMLExporter   {summary['stock_cold_batch_s']:>8.2f} "
          f"{summary['stock_steady_batch_s']:>8.2f}")
    print(f"  jupyter nbconvert    {cli_s:>8.2f}        -   (one command, median of "
          f"{args.cli_rounds})")
    print(f"ratios: workbench/stock steady {summary['ratio_steady_workbench_vs_stock']:.2f}, "
          f"cold {summary['ratio_cold_workbench_vs_stock']:.2f}; workbench/CLI cold "
          f"{summary['ratio_cold_workbench_vs_cli']:.2f}, steady "
          f"{summary['ratio_steady_workbench_vs_cli']:.2f}")
    figures = {"rows": rows, "summary": summary, "repeat": args.repeat,
               "cli_rounds": args.cli_rounds, "cpus": os.cpu_count()}
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
