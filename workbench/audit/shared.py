"""A command's first step with a shared archive (``archive.url`` in ``pipeline.yaml``): mark
``reports/`` as its cache, pull what other machines appended, and, for a command that will
write, prove the store takes writes, all before any kernel starts.

A project without ``archive.url`` pays one read of its pipeline files' text and nothing else.
"""

from __future__ import annotations

import os
import socket
import uuid

from workbench.audit import ledger, remote
from workbench.project import MARKER, PIPELINES_MARKER, Project

PROBES = "probes/"


def _mentions_archive(project: Project) -> bool:
    files = [project.root / MARKER, *sorted((project.root / PIPELINES_MARKER).glob(
        "*/pipeline.yaml"))]
    for path in files:
        try:
            if b"archive" in path.read_bytes():
                return True
        except OSError:
            continue
    return False


def archive_settings(project: Project) -> tuple[str, str | None] | None:
    """The configured store URL and endpoint, or None (the archive is ``reports/`` alone)."""
    if not _mentions_archive(project):
        return None
    from workbench.config import load_config

    settings = load_config(project.configs).pipeline.archive
    return (settings.url, settings.endpoint_url) if settings.url else None


def prepare(project: Project, write: bool = False) -> remote.RemoteArchive | None:
    """Attach and pull (see the module); with ``write``, also a probe write and delete. Raises
    :class:`~workbench.audit.object_store.StoreError` (exit 2) naming the URL when the store
    cannot be reached, read or written."""
    settings = archive_settings(project)
    if settings is None:
        remote.detach(project.reports)
        return None
    archive = remote.attach(project.reports, *settings)
    if ledger.ends_torn(project.reports):  # this cache's copy of an append was cut short:
        ledger.repair(project.reports, None)  # set aside; the store's entries pulled again
    remote.pull(archive)
    if write:
        probe(archive)
    return archive


def probe(archive: remote.RemoteArchive) -> None:
    """Write and delete one small object: a store that refuses writes is found now."""
    key = f"{PROBES}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    archive.store.put_new(key, b"workbench write probe\n")
    archive.store.delete(key)
