"""JSON that is safe inside a ``<script>`` element of a report page."""

from __future__ import annotations

import json
from typing import Any


def script_json(data: Any) -> str:
    """Compact JSON with no ``<`` or ``>``, so no value can close the element it sits in."""
    return json.dumps(data, default=str, separators=(",", ":")).replace(
        "<", "\\u003c").replace(">", "\\u003e")
