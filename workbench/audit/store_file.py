"""``file://`` archive store: a folder shared by the machines (an NFS or SMB mount, or one
machine's disk). Create-if-absent is a hard link of a complete temp file (atomic, never
replaces); replace-if-unchanged compares the content digest (the tag) under a lock file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from filelock import FileLock

from workbench.atomic import write_bytes, write_new
from workbench.audit.object_store import LostRace, StoreError

LOCK = ".store.lock"


def _tag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileStore:
    def __init__(self, url: str, endpoint_url: str | None = None):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"archive.url {url}: a file:// URL names a local path "
                             f"(file:///shared/archive), not host {parsed.netloc!r}")
        self.url = url
        self.root = Path(unquote(parsed.path))

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StoreError(f"{self.url}: key {key!r} leaves the archive")
        return path

    def _root_ready(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"archive.url {self.url}: cannot create the folder: "
                             f"{exc.strerror or exc}") from exc

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"archive.url {self.url}: cannot read {key}: "
                             f"{exc.strerror or exc}") from exc
        return data, _tag(data)

    def put_new(self, key: str, data: bytes) -> str:
        self._root_ready()
        try:
            write_new(self._path(key), data)
        except FileExistsError:
            raise LostRace(key) from None
        except OSError as exc:
            raise StoreError(f"archive.url {self.url}: cannot write {key}: "
                             f"{exc.strerror or exc}") from exc
        return _tag(data)

    def put(self, key: str, data: bytes, if_match: str | None = None) -> str:
        self._root_ready()
        path = self._path(key)
        try:
            with FileLock(self.root / LOCK, timeout=60):
                if if_match is not None:
                    try:
                        current = _tag(path.read_bytes())
                    except FileNotFoundError:
                        current = None
                    if current != if_match:
                        raise LostRace(key)
                write_bytes(path, data)
        except OSError as exc:
            raise StoreError(f"archive.url {self.url}: cannot write {key}: "
                             f"{exc.strerror or exc}") from exc
        return _tag(data)

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        self._root_ready()  # a new archive starts as an empty folder
        base = self._path(prefix) if prefix else self.root
        folder = base if prefix.endswith("/") or not prefix else base.parent
        if not folder.is_dir():
            return
        keys = []
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                if name.startswith("."):
                    continue  # temp files of a write in progress, the lock
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix) and key > start_after:
                    keys.append(key)
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
