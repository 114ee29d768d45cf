"""The ``parameters`` cell of a notebook: what it declares, and whether a value fits.

We parse the cell with :mod:`ast` instead of ``papermill.inspect_notebook``: it reads the
annotations exactly (papermill's inspector works on text) and it avoids importing papermill
and nbformat (about 3 s here) in ``workbench validate``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.execution.notebook_file import NotebookError, load_checked
from workbench.execution.outputs import PYTHON_TYPES as SIMPLE_TYPES

__all__ = ["Declared", "NotebookError", "declared_parameters", "parameters_cell"]


@dataclass(frozen=True)
class Declared:
    """One parameter of a notebook's ``parameters`` cell."""

    name: str
    annotation: str | None
    default: Any

    def accepts(self, value: Any) -> bool:
        """True when ``value`` fits the annotation (or the default's type when unannotated)."""
        allowed = _allowed_types(self.annotation) if self.annotation else None
        if allowed is None:
            if self.default is None:
                return True
            allowed = SIMPLE_TYPES.get(type(self.default).__name__, (type(self.default),))
        if isinstance(value, bool) and bool not in allowed:
            return False  # bool is an int subclass; never let True pass as 1
        return isinstance(value, allowed)


def _allowed_types(annotation: str) -> tuple[type, ...] | None:
    """Types allowed by an annotation like ``str``, ``float | None``, ``Optional[dict[str, int]]``.

    ``None`` means an annotation we do not model, which accepts anything.
    """
    try:
        node = ast.parse(annotation, mode="eval").body
    except SyntaxError:
        return None
    return _types_of(node)


def _types_of(node: ast.expr) -> tuple[type, ...] | None:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _types_of(node.left), _types_of(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.Constant) and node.value is None:
        return (type(None),)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        if node.value.id == "Optional":
            inner = _types_of(node.slice)
            return None if inner is None else (*inner, type(None))
        return SIMPLE_TYPES.get(node.value.id)
    if isinstance(node, ast.Name):
        return SIMPLE_TYPES.get(node.id)
    return None


def parameters_cell(nb: dict[str, Any]) -> str | None:
    """Source of the first code cell tagged ``parameters``, if any."""
    for cell in nb.get("cells", []):
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("cell_type") == "code" and "parameters" in tags:
            source = cell.get("source", "")
            return "".join(source) if isinstance(source, list) else source
    return None


def declared_parameters(path: Path) -> dict[str, Declared]:
    """Parameters declared in the notebook at ``path``; raises :class:`NotebookError`."""
    nb = load_checked(path)
    source = parameters_cell(nb)
    if source is None:
        raise NotebookError("has no code cell tagged 'parameters'")
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise NotebookError(f"parameters cell line {exc.lineno}: {exc.msg}") from exc
    except (RecursionError, MemoryError):
        raise NotebookError("parameters cell is nested too deeply to read") from None
    found: dict[str, Declared] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name, annotation = node.target.id, ast.unparse(node.annotation)
            value = node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
            node.targets[0], ast.Name
        ):
            name, annotation, value = node.targets[0].id, None, node.value
        else:
            continue
        try:
            default = ast.literal_eval(value) if value is not None else None
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            default = None  # computed default: known name, type from annotation only
        found[name] = Declared(name, annotation, default)
    return found
