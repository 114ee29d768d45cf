"""``workbench.notebook`` is the notebooks' one platform API: used alone, complete, documented.

Fast: nothing here starts a kernel.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.inputtransformer2 import TransformerManager

from workbench import notebook as wb

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb")) + sorted(
    (REPO / "workbench" / "templates").rglob("*.ipynb"))
API = "workbench.notebook"


def code_cells(path: Path) -> list[tuple[str, ast.Module]]:
    """Each code cell's id and syntax tree (IPython magics turned into plain Python first)."""
    cells = []
    for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        python = TransformerManager().transform_cell(source)
        tree = compile(python, f"{path.name}[{index}]", "exec",
                       flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        cells.append((cell.get("id", str(index)), tree))
    return cells


def private_imports(tree: ast.Module) -> list[str]:
    """Every import of ``workbench`` other than ``workbench.notebook``, as written."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (alias.name == "workbench" or alias.name.startswith("workbench.")) \
                        and alias.name != API:
                    found.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "workbench":
                found += [f"from workbench import {alias.name}" for alias in node.names
                          if alias.name != "notebook"]
            elif node.module.startswith("workbench."):
                found.append(f"from {node.module} import ...")
    return found


def test_there_are_notebooks_to_check() -> None:
    names = {path.name for path in NOTEBOOKS}
    assert {"train.ipynb", "evaluate.ipynb", "register.ipynb", "deploy.ipynb",
            "approve.ipynb", "load_test.ipynb", "monitor.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO)))
def test_notebooks_import_only_the_notebook_api(path: Path) -> None:
    found = [f"cell {cell_id}: {line}" for cell_id, tree in code_cells(path)
             for line in private_imports(tree)]
    assert not found, f"{path.name} imports private workbench modules: {found}"


def test_the_import_check_catches_each_form() -> None:
    tree = ast.parse("import workbench.datasets\nimport workbench\n"
                     "from workbench.registry.models import champion\n"
                     "from workbench import scraps, notebook\n"
                     "from workbench import notebook as wb\nimport workbench.notebook\n")
    assert private_imports(tree) == [
        "import workbench.datasets", "import workbench",
        "from workbench.registry.models import ...", "from workbench import scraps"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO)))
def test_notebooks_call_only_exported_names(path: Path) -> None:
    used = {node.attr for _, tree in code_cells(path) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "wb"}
    assert used <= set(wb.__all__), f"{path.name} uses wb.{sorted(used - set(wb.__all__))}"


@pytest.mark.parametrize("name", wb.__all__)
def test_every_exported_name_resolves_and_is_documented(name: str) -> None:
    value = getattr(wb, name)
    assert callable(value), name
    assert (value.__doc__ or "").strip(), f"wb.{name} has no docstring"


def test_all_dir_and_the_lazy_table_agree() -> None:
    assert sorted(wb.__all__) == wb.__all__ == dir(wb)
    assert len(set(wb.__all__)) == len(wb.__all__)
    assert set(wb.__all__) == set(wb._LAZY) | {"glue"}
    with pytest.raises(AttributeError):
        _ = wb.no_such_name


def test_the_type_checking_imports_match_the_lazy_table() -> None:
    """mypy sees the same objects the lazy table loads."""
    tree = ast.parse(Path(wb.__file__).read_text(encoding="utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    typed = {alias.asname or alias.name: f"{node.module}:{alias.name}"
             for node in block.body if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    assert typed == wb._LAZY
    for target in wb._LAZY.values():
        module, attribute = target.split(":")
        assert hasattr(importlib.import_module(module), attribute), target


def test_importing_the_api_loads_neither_mlflow_nor_sklearn() -> None:
    probe = ("import sys\nimport workbench.notebook as wb\nwb.glue\n"
             "print(sorted(m for m in ('mlflow', 'sklearn') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=True, cwd=REPO)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_readme_reference_lists_every_name() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Notebook API reference\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert match, "README.md has no '## Notebook API reference' section"
    missing = [name for name in wb.__all__ if f"`{name}`" not in match.group(1)]
    assert not missing, f"README's notebook API reference does not list {missing}"
