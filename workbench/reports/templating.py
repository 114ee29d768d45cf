"""Where compiled Jinja templates are kept between commands."""

from __future__ import annotations

import jinja2


def private_bytecode_cache() -> jinja2.BytecodeCache | None:
    """Jinja's file cache of compiled templates in its default folder: one per user under the
    temp folder, which Jinja creates with mode 0700 and refuses when another user owns it or
    others may write to it. Entries are keyed by each template's name and source checksum, so
    an edited template is compiled again. None (compile every time) where that folder cannot
    be had."""
    try:
        return jinja2.FileSystemBytecodeCache()
    except (OSError, RuntimeError):
        return None
