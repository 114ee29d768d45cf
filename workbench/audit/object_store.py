"""Object stores a team's archive lives on, behind one small protocol, registered by URL scheme.

An archive store holds named objects (keys like ``ledger/000000000042.json``) and offers the
two conditional writes the shared ledger needs: *create only if absent* (S3
``If-None-Match: *``, GCS ``ifGenerationMatch=0``) and *replace only if unchanged* (S3
``If-Match: ETAG``, GCS ``ifGenerationMatch=N``). Built in: ``s3://`` (boto3) and
``file://`` (a shared folder: hard links and a lock). A third party adds a scheme the way
papermill adds I/O handlers (the built-in ones are registered this way too, in
``pyproject.toml``)::

    [project.entry-points."workbench.archive_stores"]
    gs = "mypackage.gcs:GcsStore"      # called as GcsStore(url, endpoint_url)

Every error a person sees names the URL with credentials redacted and exits 2: an archive that
cannot be reached, read or written is a configuration problem, found before any kernel starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Protocol

from workbench.errors import EXIT_USAGE, WorkbenchError
from workbench.plugins import Registry


class StoreError(WorkbenchError, RuntimeError):
    """The archive store cannot be reached, read or written (message names the URL)."""

    exit_code = EXIT_USAGE


class LostRace(Exception):
    """A conditional write lost: the object exists (create) or changed (replace). Not an
    error for a person: the caller re-reads and retries, or reports a conflict."""


class ObjectStore(Protocol):
    """What the shared archive needs of a store. Keys are ``/``-separated, relative to the
    archive's prefix; ``list`` returns keys in lexicographic order (as S3 does)."""

    url: str

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and its version tag (ETag), or None if there is none."""

    def put_new(self, key: str, data: bytes) -> str:
        """Create ``key``; :class:`LostRace` if it exists. Returns its tag."""

    def put(self, key: str, data: bytes, if_match: str | None = None) -> str:
        """Write ``key`` (only if its tag is still ``if_match``, when given: otherwise
        :class:`LostRace`). Returns the new tag."""

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """Keys under ``prefix`` after ``start_after``, in order, page by page."""

    def delete(self, key: str) -> None: ...


StoreFactory = Callable[[str, "str | None"], ObjectStore]
STORES: Registry[StoreFactory] = Registry("archive store", "workbench.archive_stores")


def redacted(url: str) -> str:
    """``url`` without a password or token in its authority (``s3://key:secret@b`` ->
    ``s3://***@b``) or its query string."""
    url = re.sub(r"^([a-z0-9+.-]+://)[^/@]*@", r"\1***@", url, flags=re.IGNORECASE)
    return url.split("?", 1)[0]


def open_store(url: str, endpoint_url: str | None = None) -> ObjectStore:
    """The store for ``url`` (by its scheme)."""
    scheme = url.partition("://")[0].lower()
    if scheme not in STORES:
        raise StoreError(f"archive.url {redacted(url)}: no archive store for {scheme}:// "
                         f"(built in: s3, file; a plug-in registers others in the "
                         f"workbench.archive_stores entry-point group)")
    return STORES.get(scheme)(url, endpoint_url)
