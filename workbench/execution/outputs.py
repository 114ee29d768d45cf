"""Check the scraps a stage produced against the outputs it declares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def fits(value: Any, declared: str) -> bool:
    """True when a scrap value has the declared output type (``True`` is not an ``int``)."""
    if isinstance(value, bool) and declared != "bool":
        return False
    return isinstance(value, PYTHON_TYPES[declared])


def output_problems(scraps: dict[str, Any], declared: Mapping[str, str]) -> list[str]:
    """Messages for every declared output that is missing or has the wrong type."""
    problems = []
    for name, kind in declared.items():
        if name not in scraps:
            problems.append(f"declared output {name!r} ({kind}) was not glued")
        elif not fits(scraps[name], kind):
            got = type_name(scraps[name])
            problems.append(f"output {name!r} should be {kind}, got {got} {scraps[name]!r:.60}")
    return problems
