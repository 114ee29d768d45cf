"""Verifying an attestation offline: the envelope's signature with the project's public key,
the statement's form, and its subject against a model's files (a folder, or the registry).

Every problem is named: a bad signature, an unsigned envelope, a file whose digest differs, a
file missing, a file the statement does not list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from workbench.governance import dsse
from workbench.governance.attestation import EXTENSION, PREDICATE_TYPE, STATEMENT_TYPE
from workbench.governance.bundle import listing_digest, tree_files


@dataclass
class Check:
    """What a verification found: problems fail it; notes are said, never fail it."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_signature(envelope: dsse.Envelope, public: Ed25519PublicKey | None,
                    allow_unsigned: bool, found: Check) -> None:
    if not envelope.signatures and allow_unsigned:
        found.notes.append("the attestation is unsigned (accepted: --allow-unsigned)")
        return
    if envelope.payloadType != dsse.IN_TOTO_PAYLOAD_TYPE:
        found.problems.append(f"payload type {envelope.payloadType!r}, not "
                              f"{dsse.IN_TOTO_PAYLOAD_TYPE!r}")
    if not envelope.signatures:
        found.problems.append("unsigned: the attestation has no signature (no key was "
                              "configured when it was made; --allow-unsigned accepts it)")
        return
    if public is None:
        found.problems.append("no public key to check the signature with")
        return
    problem = dsse.verify(envelope, public)
    if problem is not None:
        found.problems.append(problem)


def check_form(statement: dict[str, Any], found: Check) -> dict[str, str]:
    """The statement's subject (name -> sha256) after checking its form."""
    if statement.get("_type") != STATEMENT_TYPE:
        found.problems.append(f"not an in-toto statement v1 (_type {statement.get('_type')!r})")
    if statement.get("predicateType") != PREDICATE_TYPE:
        found.problems.append(f"predicate type {statement.get('predicateType')!r}, not "
                              f"{PREDICATE_TYPE!r}")
    subjects: dict[str, str] = {}
    for item in statement.get("subject") or []:
        name = item.get("name") if isinstance(item, dict) else None
        digest = (item.get("digest") or {}).get("sha256") if isinstance(item, dict) else None
        if not isinstance(name, str) or not isinstance(digest, str):
            found.problems.append(f"a subject without a name and sha256 digest: {item!r}")
            continue
        subjects[name] = digest
    if not subjects:
        found.problems.append("the statement has no subject")
    model = release(statement).get("model")
    recorded = model.get("artifactDigest") if isinstance(model, dict) else None
    if subjects and recorded and listing_digest(sorted(subjects.items())) != recorded:
        found.problems.append("the subject does not add up to the model's artifact digest the "
                              "approvals bound to")
    return subjects


def release(statement: dict[str, Any]) -> dict[str, Any]:
    """The statement's ``workbench_release`` extension (empty when absent)."""
    found = (statement.get("predicate") or {}).get(EXTENSION)
    return found if isinstance(found, dict) else {}


def check_files(subjects: dict[str, str], root: Path, found: Check) -> None:
    """Each attested file must be in ``root`` with its digest; no other file may be there."""
    present = dict(tree_files(root))
    for name, digest in sorted(subjects.items()):
        actual = present.get(name)
        if actual is None:
            found.problems.append(f"file {name}: missing from {root}")
        elif actual != digest:
            found.problems.append(f"file {name}: sha256 differs (attested {digest[:16]}, "
                                  f"found {actual[:16]})")
    for name in sorted(set(present) - set(subjects)):
        found.problems.append(f"file {name}: in {root} but not in the attestation")
    if found.ok:
        found.notes.append(f"{len(subjects)} files match the subject ({root})")
