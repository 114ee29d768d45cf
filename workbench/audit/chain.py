"""The one recipe of every append-only, hash-chained record workbench keeps.

An entry is a JSON object with a sequence number (1, 2, ...), the hash of the entry before it
(the link) and its own hash: sha256 over its canonical JSON without the hash field. Two
stores use it, each keeping the field names of its file format:

- the ledger (``reports/ledger.jsonl``): one canonical line per entry, fields ``seq``,
  ``prev`` (64 zeros before the first) and ``hash`` (:mod:`workbench.audit.ledger`);
- record folders (approvals, promotions, rollbacks): one read-only file per entry,
  ``NNNN.json``, fields ``seq``, ``previous`` (null before the first) and ``digest``
  (:mod:`workbench.audit.journal`).

An edit changes an entry's hash; a removal, an insertion or a reordering breaks a sequence
number or a link; so every change after the fact is named when the chain is checked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from workbench.digests import canonical


@dataclass(frozen=True)
class Chain:
    """Field names and the value linked from the first entry; the recipe itself is shared."""

    hash_field: str
    link_field: str
    genesis: str | None

    def digest(self, entry: dict[str, Any]) -> str:
        """sha256 over the canonical JSON of ``entry`` without its hash field."""
        body = {k: v for k, v in entry.items() if k != self.hash_field}
        return hashlib.sha256(canonical(body)).hexdigest()

    def seal(self, data: dict[str, Any], head: dict[str, Any] | None) -> dict[str, Any]:
        """``data`` as the entry after ``head`` (None: the first): sequence number, link and
        hash added."""
        entry = {**data, "seq": (head["seq"] if head else 0) + 1,
                 self.link_field: head[self.hash_field] if head else self.genesis}
        entry[self.hash_field] = self.digest(entry)
        return entry

    def problems(self, entry: dict[str, Any], expected_seq: int, previous: str | None
                 ) -> list[str]:
        """What is wrong with ``entry`` as the entry after one whose hash is ``previous``:
        an edit, a broken sequence, a broken link (phrases; the store says where)."""
        found = []
        if entry.get(self.hash_field) != self.digest(entry):
            found.append(f"content does not match its {self.hash_field} (edited)")
        if entry.get("seq") != expected_seq:
            found.append(f"expected seq {expected_seq} (an entry was removed, inserted or "
                         f"reordered)")
        elif entry.get(self.link_field) != previous:
            found.append("does not link to the entry before it")
        return found
