"""The notebook API: what stage notebooks import for platform work, one module.

    from workbench import notebook as wb

    wb.glue("score", 0.97)                        # a scrap (a declared stage output)
    setup = wb.load_test_setup("qa", ...)         # endpoint, profile, SLO, request body
    result = wb.run_load(f"{setup.endpoint}/invocations", setup.body, setup.profile)

Names are loaded on first use, so importing this module costs a kernel nothing beyond
:mod:`workbench.scraps`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workbench.scraps import glue

if TYPE_CHECKING:
    from workbench.operations.loadtest import as_dicts, enforce, evaluate_slo, run_load, timeline
    from workbench.operations.monitor import breaches, watch
    from workbench.operations.monitor import describe as describe_breaches
    from workbench.operations.setup import load_test_setup, monitor_setup

# name -> "module:attribute", imported when first used
_LAZY = {
    "load_test_setup": "workbench.operations.setup:load_test_setup",
    "monitor_setup": "workbench.operations.setup:monitor_setup",
    "run_load": "workbench.operations.loadtest:run_load",
    "evaluate_slo": "workbench.operations.loadtest:evaluate_slo",
    "enforce": "workbench.operations.loadtest:enforce",
    "as_dicts": "workbench.operations.loadtest:as_dicts",
    "timeline": "workbench.operations.loadtest:timeline",
    "watch": "workbench.operations.monitor:watch",
    "breaches": "workbench.operations.monitor:breaches",
    "describe_breaches": "workbench.operations.monitor:describe",
}

__all__ = ["as_dicts", "breaches", "describe_breaches", "enforce", "evaluate_slo", "glue",
           "load_test_setup", "monitor_setup", "run_load", "timeline", "watch"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name].split(":")
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
