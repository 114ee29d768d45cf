"""The notebook API: everything a stage notebook imports for platform work, in one module.

    from workbench import notebook as wb

    wb.glue("score", 0.97)                        # a scrap (a declared stage output)
    setup = wb.load_test_setup("qa", ...)         # endpoint, profile, SLO, request body
    result = wb.run_load(f"{setup.endpoint}/invocations", setup.body, setup.profile)

This is the stable, public surface for notebooks: the shipped notebooks use nothing else from
``workbench``, and the modules behind these names may move. By purpose:

Scraps
    :func:`glue` records a stage output.
Data and model
    :func:`load_split` (a project file or a bundled set, split the same way in every stage),
    :func:`task_of`, :func:`build_estimator` (any class or factory, the project's own too),
    :func:`validate_data` (the data contract checked on named data sets).
Model logging & registration
    :func:`connect` (the project's MLflow store), :func:`log_sklearn_model`,
    :func:`latest_model_uri`, :func:`record_evaluation`, :func:`recorded_evaluation`,
    :func:`register`.
Champion lookup
    :func:`champion`, :func:`version_by_alias`.
Metric objectives
    :func:`check_objectives` (each objective of an environment judged against the metrics and
    the champion's), :func:`objectives_from_thresholds`.
Deploy & smoke test
    :func:`deploy_model`, :func:`smoke_test`, :func:`check_served_version`,
    :func:`shadow_release` (mirror live traffic to a candidate and compare its answers).
Review form
    :func:`load_review` (evidence, form and summary of one release),
    :func:`resolve_review_mode` (interactive or headless).
Load test & monitor setup
    :func:`load_test_setup`, :func:`run_load`, :func:`evaluate_slo`, :func:`enforce`,
    :func:`as_dicts`, :func:`timeline`; :func:`monitor_setup`, :func:`watch`,
    :func:`breaches`, :func:`describe_breaches`.

Names are loaded on first use, so importing this module costs a kernel nothing beyond
:mod:`workbench.scraps` (no MLflow, no scikit-learn).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workbench.scraps import glue

if TYPE_CHECKING:
    from workbench.data_contract import validate_data
    from workbench.datasets import load_split, task_of
    from workbench.deploy import deploy_model
    from workbench.deploy.shadow import shadow_release
    from workbench.deploy.smoke import check_served_version, smoke_test
    from workbench.estimators import build_estimator
    from workbench.governance.review import load as load_review
    from workbench.governance.review import resolve_mode as resolve_review_mode
    from workbench.objectives import check as check_objectives
    from workbench.objectives import from_thresholds as objectives_from_thresholds
    from workbench.operations.loadtest import as_dicts, enforce, evaluate_slo, run_load, timeline
    from workbench.operations.monitor import breaches, watch
    from workbench.operations.monitor import describe as describe_breaches
    from workbench.operations.setup import load_test_setup, monitor_setup
    from workbench.registry.models import (
        champion,
        latest_model_uri,
        log_sklearn_model,
        record_evaluation,
        recorded_evaluation,
        register,
        version_by_alias,
    )
    from workbench.registry.store import connect

# name -> "module:attribute", imported when first used
_LAZY = {
    # data
    "load_split": "workbench.datasets:load_split",
    "task_of": "workbench.datasets:task_of",
    "build_estimator": "workbench.estimators:build_estimator",
    "validate_data": "workbench.data_contract:validate_data",
    # model logging & registration
    "connect": "workbench.registry.store:connect",
    "log_sklearn_model": "workbench.registry.models:log_sklearn_model",
    "latest_model_uri": "workbench.registry.models:latest_model_uri",
    "record_evaluation": "workbench.registry.models:record_evaluation",
    "recorded_evaluation": "workbench.registry.models:recorded_evaluation",
    "register": "workbench.registry.models:register",
    # champion lookup
    "champion": "workbench.registry.models:champion",
    "version_by_alias": "workbench.registry.models:version_by_alias",
    # metric objectives
    "check_objectives": "workbench.objectives:check",
    "objectives_from_thresholds": "workbench.objectives:from_thresholds",
    # deploy & smoke test
    "deploy_model": "workbench.deploy:deploy_model",
    "smoke_test": "workbench.deploy.smoke:smoke_test",
    "check_served_version": "workbench.deploy.smoke:check_served_version",
    "shadow_release": "workbench.deploy.shadow:shadow_release",
    # review form
    "load_review": "workbench.governance.review:load",
    "resolve_review_mode": "workbench.governance.review:resolve_mode",
    # load test & monitor setup
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

__all__ = [
    "as_dicts", "breaches", "build_estimator", "champion", "check_objectives",
    "check_served_version", "connect", "deploy_model", "describe_breaches", "enforce",
    "evaluate_slo", "glue", "latest_model_uri",
    "load_review", "load_split", "load_test_setup", "log_sklearn_model", "monitor_setup",
    "objectives_from_thresholds", "record_evaluation", "recorded_evaluation", "register",
    "resolve_review_mode", "run_load", "shadow_release", "smoke_test", "task_of", "timeline",
    "validate_data",
    "version_by_alias", "watch",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name].split(":")
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
