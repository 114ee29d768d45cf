"""``python -m workbench`` is the same as the ``workbench`` command."""

from workbench.cli.entry import entry

entry()
