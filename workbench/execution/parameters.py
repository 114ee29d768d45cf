"""The ``parameters`` cell of a notebook: what it declares, and whether a value fits.

We parse the cell with :mod:`ast` for the types: it reads the annotations exactly (papermill's
inspector works on text). Which names are parameters at all is papermill's call, though: it
warns "Passed unknown parameter" for a name its own inspector does not find, and "Unable to
parse line" for a line it cannot read. :func:`read_parameters_cell` therefore also runs
papermill's inspector (``PythonTranslator.inspect``, what ``papermill.execute_notebook`` uses)
and names every line where the two disagree, so that ``workbench validate`` refuses what
papermill would not read instead of silently diverging.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import logging
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.atomic import write_text
from workbench.execution.notebook_file import NotebookError, load_checked
from workbench.execution.outputs import PYTHON_TYPES as SIMPLE_TYPES

__all__ = ["Declared", "NotebookError", "ParametersCell", "Unread", "declared_parameters",
           "papermill_reading", "parameters_cell", "read_parameters_cell"]


@dataclass(frozen=True)
class Declared:
    """One parameter of a notebook's ``parameters`` cell."""

    name: str
    annotation: str | None
    default: Any
    line: int = field(default=0, compare=False)  # where the cell declares it (1-based)

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
    return read_parameters_cell(path, papermill=False).declared


@dataclass(frozen=True)
class Unread:
    """A line of the parameters cell papermill does not read as the Python code does."""

    line: int  # 1-based, in the cell
    text: str
    why: str

    def __str__(self) -> str:
        return f"parameters cell line {self.line} ({self.text.strip()!r}): {self.why}"


@dataclass(frozen=True)
class ParametersCell:
    """A notebook's parameters cell: what it declares (:mod:`ast`), the names papermill finds
    in it, and the lines papermill does not read as declared."""

    declared: dict[str, Declared]
    papermill: frozenset[str]
    unread: tuple[Unread, ...]


_UNPARSED = re.compile(r"Unable to parse line (\d+) '(.*)'\.", re.DOTALL)  # papermill's words


def cached_papermill_reading(source: str, cache: Path | None
                             ) -> tuple[frozenset[str], list[tuple[int, str]]]:
    """:func:`papermill_reading`, kept in ``cache`` (a folder) by the digest of the source and
    papermill's version, so that a command over unchanged notebooks does not import papermill
    (0.3-0.4 s of an unchanged rerun). An unreadable entry is read again."""
    if cache is None:
        return papermill_reading(source)
    from importlib.metadata import version

    key = hashlib.sha256(f"{version('papermill')}\0{source}".encode()).hexdigest()
    path = cache / "papermill-reading" / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        stored = json.loads(path.read_text(encoding="utf-8"))
        return frozenset(stored["names"]), [(int(n), str(t)) for n, t in stored["unparsed"]]
    names, unparsed = papermill_reading(source)
    with contextlib.suppress(OSError):  # a read-only project still validates
        write_text(path, json.dumps({"names": sorted(names), "unparsed": unparsed}))
    return names, unparsed


def papermill_reading(source: str) -> tuple[frozenset[str], list[tuple[int, str]]]:
    """The parameter names papermill's own inspector finds in a parameters cell, and the lines
    it warns it cannot parse (line number, text); its warnings are returned, not logged."""
    # as workbench.execution.stage does: jsonschema's optional iri checks cost seconds to import
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    from papermill import translators
    from papermill.translators import PythonTranslator

    logger = translators.logger  # the inspector's own logger ("papermill.translators")

    unparsed: list[tuple[int, str]] = []
    here = threading.get_ident()

    def keep(record: logging.LogRecord) -> bool:
        match = _UNPARSED.fullmatch(record.getMessage())
        if record.thread != here or match is None:
            return True
        unparsed.append((int(match.group(1)), match.group(2)))
        return False  # reported by the caller, not printed

    logger.addFilter(keep)
    try:
        found = PythonTranslator.inspect({"source": source})
    finally:
        logger.removeFilter(keep)
    return frozenset(p.name for p in found), unparsed


def _disagreements(source: str, declared: dict[str, Declared], names: frozenset[str],
                   unparsed: list[tuple[int, str]]) -> tuple[Unread, ...]:
    """The lines papermill cannot parse, and those declaring a parameter papermill misses."""
    lines = source.splitlines()
    on_line = {d.line: d.name for d in declared.values()}
    found: list[Unread] = []
    for number, text in unparsed:
        name = on_line.get(number)
        lost = f"; it does not see parameter {name!r} (it would call it unknown)" \
            if name and name not in names else ""
        found.append(Unread(number, text, "papermill cannot parse it (a parameter line may have "
                            "one '=', and one in a comment or a string counts) and warns "
                            f"'Unable to parse line' on every run{lost}"))
    seen = {number for number, _ in unparsed}
    for item in declared.values():
        if item.name in names or item.line in seen:
            continue
        text = lines[item.line - 1] if 0 < item.line <= len(lines) else item.name
        if "=" not in text:
            why = "it has no default: papermill only reads 'name = value' lines"
        elif item.annotation:  # a line with one '=' and no annotation always matches
            why = (f"papermill's parser does not read the annotation {item.annotation!r} (it "
                   f"takes names, brackets and commas: e.g. Optional[X] for X | None)")
        else:
            why = "papermill's parameter pattern does not match it"
        found.append(Unread(item.line, text, f"{why}, so papermill does not see parameter "
                            f"{item.name!r} (it would call it unknown)"))
    return tuple(sorted(found, key=lambda u: u.line))


def read_parameters_cell(path: Path, papermill: bool = True, cache: Path | None = None
                         ) -> ParametersCell:
    """The parameters cell of the notebook at ``path``; raises :class:`NotebookError`.
    Without ``papermill``, papermill's reading is left out (and papermill not imported); with
    a ``cache`` folder, papermill's reading of an unchanged cell is read from there."""
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
        found[name] = Declared(name, annotation, default, node.lineno)
    if not papermill:
        return ParametersCell(found, frozenset(found), ())
    names, unparsed = cached_papermill_reading(source, cache)
    return ParametersCell(found, names, _disagreements(source, found, names, unparsed))
