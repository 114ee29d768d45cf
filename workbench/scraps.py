"""Scraps in scrapbook's own notebook format, without importing scrapbook.

scrapbook is unmaintained and costs several seconds to import in every kernel here (it pulls in
papermill, nbformat and jsonschema). :func:`glue` writes exactly what ``scrapbook.glue`` writes
for text and JSON data, so ``scrapbook.read_notebook(path).scraps`` still reads every archived
stage; :func:`read_scraps` reads the same outputs back with nothing but :mod:`json`.
"""

from __future__ import annotations

import json
import math
from typing import Any

PAYLOAD_PREFIX = "application/scrapbook.scrap"
SCRAP_VERSION = 1


def _encoder_for(data: Any) -> str:
    if isinstance(data, str):
        return "text"
    if isinstance(data, (list, dict, int, float, bool)) or data is None:
        _check_json(data)
        return "json"
    raise TypeError(
        f"scrap data must be str, int, float, bool, None, list or dict, got {type(data).__name__}"
    )


def _check_json(data: Any) -> None:
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"scrap data is not plain JSON: {exc}") from exc


def glue(name: str, data: Any) -> None:
    """Record ``data`` under ``name`` in the running notebook, as ``scrapbook.glue`` does."""
    from IPython.display import display

    if isinstance(data, float) and not math.isfinite(data):
        raise TypeError(f"scrap {name!r}: {data} cannot be stored as JSON")
    encoder = _encoder_for(data)
    payload = {"name": name, "data": data, "encoder": encoder, "version": SCRAP_VERSION}
    display(
        {f"{PAYLOAD_PREFIX}.{encoder}+json": payload},
        metadata={"scrapbook": {"name": name, "data": True, "display": False}},
        raw=True,
    )


def read_scraps(nb: dict[str, Any]) -> dict[str, Any]:
    """All scraps glued in an executed notebook (a dict as loaded from JSON), last one wins."""
    scraps: dict[str, Any] = {}
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            for mime, payload in output.get("data", {}).items():
                if mime.startswith(PAYLOAD_PREFIX) and isinstance(payload, dict):
                    scraps[payload["name"]] = _decode(payload)
    return scraps


def _decode(payload: dict[str, Any]) -> Any:
    data = payload.get("data")
    if payload.get("encoder") == "json" and isinstance(data, str):
        try:
            return json.loads(data)  # scrapbook's own decoder does the same
        except ValueError:
            return data
    return data
