"""The shared store between this machine and the stage Jobs: absolute paths and ``file://`` URLs
directly, every other scheme (``s3://``, ``gs://``, ``abfs://`` ...) through fsspec, which the
runner image installs with its filesystems (``pip install fsspec s3fs`` here as well)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from workbench.errors import EXIT_FAILED, WorkbenchError


class StoreError(WorkbenchError, RuntimeError):
    """The store cannot be reached with what is installed, or an object is missing."""

    exit_code = EXIT_FAILED


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])


def local_path(url: str) -> Path | None:
    """The local path behind ``url``, or None for a remote scheme."""
    if url.startswith("/"):
        return Path(url)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return None


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as exc:
        raise StoreError(f"{url}: a {urlparse(url).scheme}:// store needs fsspec and its "
                         f"filesystem (e.g. pip install fsspec s3fs)") from exc
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise StoreError(f"{url}: {exc}") from exc


def read_bytes(url: str) -> bytes:
    path = local_path(url)
    try:
        if path is not None:
            return path.read_bytes()
        fs, inner = _filesystem(url)
        return fs.cat_file(inner)
    except FileNotFoundError as exc:
        raise StoreError(f"{url} does not exist") from exc


def write_bytes(url: str, data: bytes) -> None:
    path = local_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)  # readers never see half a notebook
        return
    fs, inner = _filesystem(url)
    fs.pipe_file(inner, data)


def exists(url: str) -> bool:
    path = local_path(url)
    if path is not None:
        return path.is_file()
    fs, inner = _filesystem(url)
    return bool(fs.exists(inner))


def delete(url: str) -> None:
    path = local_path(url)
    if path is not None:
        path.unlink(missing_ok=True)
        return
    fs, inner = _filesystem(url)
    if fs.exists(inner):
        fs.rm_file(inner)


class PapermillHandler:
    """A papermill I/O handler over this module, for the store's scheme."""

    @staticmethod
    def read(url: str) -> str:
        return read_bytes(url).decode("utf-8")

    @staticmethod
    def write(buf: str, url: str) -> None:
        write_bytes(url, buf.encode("utf-8"))

    @staticmethod
    def listdir(url: str) -> list[str]:
        raise StoreError(f"{url}: listing is not supported")

    @staticmethod
    def pretty_path(url: str) -> str:
        return url
