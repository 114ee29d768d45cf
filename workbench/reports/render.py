"""Offline HTML of archived notebooks: nbconvert with the project's ``workbench`` template.

The pages load nothing from the network. nbconvert's stock lab template would load require.js,
MathJax, mermaid.js and the Jupyter widget manager from CDNs; the ``workbench`` template (in
``templates/workbench/``) drops all of them:

* widgets render their saved final state with the vendored ``@jupyter-widgets/html-manager``
  embed script (``static/embed.js``, see ``static/README.md``), referenced with a relative URL
  chosen by the caller, so pages work from disk and from a same-origin server;
* MathJax is not loaded: math stays as TeX source text (``$x^2$``); mermaid diagrams likewise;
* markdown, images, HTML and text outputs are rendered here, so they show without JavaScript;
  until a widget is rendered (without JavaScript) its final state shows as text;
* the lab CSS is inlined, as in the stock lab template.

One configured :class:`~nbconvert.HTMLExporter` is built per process and reused: a process's
first render costs about a second more than the next ones (compiling the Jinja templates, the
lexers' and CSS selectors' regular expressions, lazy imports); see ``benchmarks/render.py``.
"""

from __future__ import annotations

import filecmp
import posixpath
import threading
import time
import warnings
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
from nbconvert import HTMLExporter

from workbench.atomic import write_bytes

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
TEMPLATE_NAME = "workbench"
EMBED_SCRIPT = "embed.js"

# HTMLExporter.from_notebook_node registers per-notebook filters on the shared exporter.
_EXPORTER_LOCK = threading.Lock()


@cache
def exporter() -> HTMLExporter:
    """This process's exporter for the ``workbench`` template; it compiles its templates (Jinja
    environment, the lab template chain) on its first render and keeps them."""
    return HTMLExporter(
        template_name=TEMPLATE_NAME,
        extra_template_basedirs=[str(TEMPLATES)],
        # Unused by the template; empty so that no CDN address can leak into a page.
        require_js_url="",
        mathjax_url="",
        mermaid_js_url="",
        mermaid_layout_elk_js_url="",
        jquery_url="",
        jupyter_widgets_base_url="",
        widget_renderer_url="",
    )


def render_notebook(source: Path, target: Path, static_url: str, title: str | None = None, *,
                    run_id: str | None = None, stage: str | None = None) -> float:
    """Render the notebook ``source`` to ``target`` (HTML, written atomically).

    ``static_url`` is the URL of the static folder (see :func:`copy_static`) relative to
    ``target``, e.g. ``"../../static"`` for ``reports/runs/<run-id>/<stage>.html``; pages with
    widget state load ``<static_url>/embed.js``. ``title`` sets the page title (default: the
    notebook's ``title`` metadata, else the file name); ``run_id`` and ``stage`` add a header.
    Math is not typeset (no MathJax): it shows as TeX text. Returns the seconds it took.
    """
    start = time.perf_counter()
    parts = urlsplit(static_url)
    if parts.scheme or parts.netloc:
        raise ValueError(f"static_url must be a relative URL, not {static_url!r}")
    nb = nbformat.read(source, as_version=4)
    if title:
        nb.metadata["title"] = title
    resources = {
        "metadata": {"name": source.stem, "path": str(source.parent)},
        "workbench": {"embed_url": posixpath.join(static_url, EMBED_SCRIPT), "run_id": run_id,
                      "stage": stage},
    }
    # warnings: scraps are data, not meant to be displayed; nbconvert warns about each one
    with _EXPORTER_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your element with mimetype",
                                category=UserWarning)
        body, _ = exporter().from_notebook_node(nb, resources=resources)
    _publish(target, body.encode("utf-8"))
    return time.perf_counter() - start


def copy_static(reports_dir: Path) -> Path:
    """Copy the vendored static files (widget embed script, fonts, licenses) to
    ``reports_dir/static/``, replacing only missing or changed files; returns that folder."""
    folder = reports_dir / "static"
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(STATIC.iterdir()):
        copy = folder / path.name
        if not path.is_file() or (copy.is_file() and filecmp.cmp(path, copy, shallow=False)):
            continue
        _publish(copy, path.read_bytes())
    return folder


def _publish(path: Path, data: bytes) -> None:
    """Write ``data`` atomically, mode 0644: pages and static files are served."""
    write_bytes(path, data, mode=0o644)
