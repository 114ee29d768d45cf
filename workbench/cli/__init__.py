"""The ``workbench`` command line: parses, calls the library, formats output.

Exit codes: 0 success, 1 a stage or gate failed, 2 usage or configuration error,
3 awaiting approval.
"""

# Importing a module registers its commands; the order here is the order of `--help`.
from workbench.cli import init, runs, gates, ops, audit, attest, evidence, reports, ci, k8s, archive  # noqa: I001, F401, E501
from workbench.cli import canary  # noqa: I001, F401  (workbench canary ...)
from workbench.cli.app import app, main

__all__ = ["app", "main"]
