"""Reading a notebook file as JSON, checking it has a notebook's shape, and the kernel it
asks for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

DEFAULT_KERNEL = "python3"


class NotebookError(WorkbenchError, ValueError):
    """The notebook cannot be used as a stage (unreadable, no parameters cell, bad cell)."""


def read_notebook(path: Path) -> dict[str, Any]:
    """The notebook at ``path`` as a dict (raises OSError or ValueError)."""
    return json.loads(path.read_text(encoding="utf-8"))


def shape_problem(nb: Any) -> str | None:
    """What keeps ``nb`` (parsed JSON) from being a notebook, or None: the few things every
    reader of ours relies on (a cell list of mappings with a source text and metadata)."""
    if not isinstance(nb, dict):
        return f"is not a notebook: expected a JSON object, got {type(nb).__name__}"
    cells = nb.get("cells", [])
    if not isinstance(cells, list):
        return f"is not a notebook: 'cells' must be a list, got {type(cells).__name__}"
    if not isinstance(nb.get("metadata", {}), dict):
        return "is not a notebook: 'metadata' must be a mapping"
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict):
            return f"is not a notebook: cell {index} is not a mapping"
        source = cell.get("source", "")
        if not isinstance(source, str) and not (
                isinstance(source, list) and all(isinstance(line, str) for line in source)):
            return f"is not a notebook: cell {index} 'source' must be text or a list of lines"
        if not isinstance(cell.get("metadata", {}), dict):
            return f"is not a notebook: cell {index} 'metadata' must be a mapping"
        if not isinstance(cell.get("outputs", []), list):
            return f"is not a notebook: cell {index} 'outputs' must be a list"
    return None


def load_checked(path: Path) -> dict[str, Any]:
    """The notebook at ``path``, or :class:`NotebookError` saying why it is not one."""
    try:
        nb = read_notebook(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise NotebookError(f"cannot read notebook: {exc}") from exc
    except RecursionError:
        raise NotebookError("is not a notebook: nested too deeply to read") from None
    except ValueError as exc:
        raise NotebookError(f"cannot read notebook: it is not valid JSON ({exc})") from exc
    problem = shape_problem(nb)
    if problem:
        raise NotebookError(problem)
    return nb


def kernel_name(nb: dict[str, Any]) -> str:
    """The kernel a notebook asks for in ``metadata.kernelspec.name`` (default python3)."""
    metadata = nb.get("metadata") if isinstance(nb, dict) else None
    spec = metadata.get("kernelspec") if isinstance(metadata, dict) else None
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) and name else DEFAULT_KERNEL


def kernel_name_of(path: Path) -> str:
    """The kernel the notebook at ``path`` asks for; python3 when it cannot be read."""
    try:
        return kernel_name(read_notebook(path))
    except (OSError, ValueError):
        return DEFAULT_KERNEL
