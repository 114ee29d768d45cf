"""Timestamps, written one way everywhere: records, ledger entries, ids, progress events."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def utc_now() -> str:
    """Now in UTC, ISO 8601 with milliseconds: what every record and ledger entry stores."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def local_now() -> str:
    """Now in the local time zone, to the second: what progress events show."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def parse(text: str) -> datetime:
    """A timestamp written by :func:`utc_now` (or any ISO 8601 time) back as a datetime."""
    return datetime.fromisoformat(text)


def stamped_id(random_bytes: int = 3) -> str:
    """Sortable by time and unique: UTC time plus random hex, e.g. ``20261127T093000Z-3fa2c1``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(random_bytes)
