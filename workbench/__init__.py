"""workbench: a notebook-driven ML release workbench.

Kept import-light on purpose: notebooks import ``workbench.scraps`` in every kernel.
"""

__version__ = "0.1.0"
