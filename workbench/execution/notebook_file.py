"""Reading a notebook file as JSON, and the kernel it asks for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEFAULT_KERNEL = "python3"


def read_notebook(path: Path) -> dict[str, Any]:
    """The notebook at ``path`` as a dict (raises OSError or ValueError)."""
    return json.loads(path.read_text(encoding="utf-8"))


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
