"""``workbench evidence verify``: an evidence pack checked offline, every problem named.

Rules, in order:

1. the zip is safe to read: member names are plain relative paths (no ``..``, no absolute or
   drive paths, no backslashes), at most :data:`MAX_BYTES` uncompressed in all;
2. ``manifest.json`` lists every other member with its sha256, and nothing else: a changed,
   added or removed file is named;
3. ``manifest.dsse.json``, when present, is the manifest signed (DSSE, Ed25519) by the
   attestation key: the key given, else the project's configured one, else the pack's own copy
   (then the note says to compare its id with the project's); no signature is a note;
4. ``ledger/segment.jsonl`` is one hash chain (each entry's hash over its fields, each linked to
   the one before, seq without gaps) ending at ``ledger/anchor.json``; an anchor given from
   outside must be that head or an entry of the segment with the same hash;
5. every ``archive/`` file but ``static/`` and the pages rendered for the pack has the digest
   the last segment entry naming it recorded (``run.json``: the ``record_sha256`` of the run's
   last outcome entry);
6. each attestation in the archive verifies with the same key (unsigned ones are notes).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from workbench.audit.ledger import CHAIN, GENESIS
from workbench.governance import dsse
from workbench.governance.project_key import AttestationKeyError, load_public
from workbench.reports.evidence.pack import ARCHIVE, MANIFEST, MANIFEST_SIGNATURE, MANIFEST_TYPE

MAX_BYTES = 4 << 30


@dataclass
class Checked:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: int = 0
    entries: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: Path, key: Path | None = None, anchor: dict[str, Any] | None = None
           ) -> Checked:
    """Every problem of the pack at ``path`` (see the module doc)."""
    found = Checked()
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        found.problems.append(f"{path}: not a readable zip ({exc})")
        return found
    with archive:
        members = _members(archive, found)
        if not found.ok:
            return found
        files = {name: archive.read(name) for name in members}
    found.files = len(files)
    manifest = _manifest(files, found)
    if manifest is None:
        return found
    public = _signature(files, key, found)
    recorded = _segment(files, anchor, found)
    _archived(files, manifest, recorded, found)
    _attestations(files, public, found)
    return found


def _members(archive: zipfile.ZipFile, found: Checked) -> list[str]:
    names, total = [], 0
    for info in archive.infolist():
        name = info.filename
        parts = PurePosixPath(name).parts
        if info.is_dir():
            continue
        if name.startswith("/") or "\\" in name or ".." in parts or ":" in name or not parts:
            found.problems.append(f"{name}: not a plain relative path: refused")
            continue
        total += info.file_size
        names.append(name)
    if total > MAX_BYTES:
        found.problems.append(f"the pack unpacks to {total} bytes, more than {MAX_BYTES}")
    return names


def _manifest(files: dict[str, bytes], found: Checked) -> dict[str, Any] | None:
    try:
        manifest = json.loads(files[MANIFEST])
        listed = dict(manifest["files"])
    except (KeyError, ValueError, TypeError):
        found.problems.append(f"{MANIFEST}: missing or not a manifest")
        return None
    for name, data in sorted(files.items()):
        if name in (MANIFEST, MANIFEST_SIGNATURE):
            continue
        if name not in listed:
            found.problems.append(f"{name}: not in the manifest (added after the pack was made)")
        elif hashlib.sha256(data).hexdigest() != listed[name]:
            found.problems.append(f"{name}: changed since the pack was made (sha256 differs "
                                  f"from the manifest)")
    for name in sorted(set(listed) - set(files)):
        found.problems.append(f"{name}: listed in the manifest but missing from the pack")
    return dict(manifest)


def _signature(files: dict[str, bytes], key: Path | None, found: Checked
               ) -> Ed25519PublicKey | None:
    public, where = _public_key(files, key, found)
    if MANIFEST_SIGNATURE not in files:
        found.notes.append("the pack is not signed (no attestation key was at hand when it "
                           "was made): its files are checked against the manifest and the "
                           "ledger segment only")
        return public
    try:
        envelope = dsse.read(files[MANIFEST_SIGNATURE], MANIFEST_SIGNATURE)
    except dsse.EnvelopeError as exc:
        found.problems.append(str(exc))
        return public
    if envelope.payloadType != MANIFEST_TYPE or envelope.payload_bytes != files[MANIFEST]:
        found.problems.append(f"{MANIFEST_SIGNATURE}: signs another manifest than "
                              f"{MANIFEST}")
    elif public is None:
        found.problems.append(f"{MANIFEST_SIGNATURE}: no public key to check it with "
                              f"(--key PATH)")
    else:
        problem = dsse.verify(envelope, public)
        if problem:
            found.problems.append(f"{MANIFEST_SIGNATURE}: {problem}")
        else:
            found.notes.append(f"manifest signed by key {dsse.key_id(public)[:16]} ({where})")
    return public


def _public_key(files: dict[str, bytes], key: Path | None, found: Checked
                ) -> tuple[Ed25519PublicKey | None, str]:
    if key is not None:
        try:
            return load_public(key), f"--key {key}"
        except AttestationKeyError as exc:
            found.problems.append(str(exc))
            return None, ""
    own = sorted(name for name in files if name.startswith("keys/"))
    if not own:
        return None, ""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="workbench-evidence-") as folder:
        copy = Path(folder) / PurePosixPath(own[0]).name
        copy.write_bytes(files[own[0]])
        try:
            return (load_public(copy), f"the pack's {own[0]}: compare its id with your "
                    f"project's key, or pass --key")
        except AttestationKeyError as exc:
            found.problems.append(f"{own[0]}: {exc}")
            return None, ""


def _segment(files: dict[str, bytes], anchor: dict[str, Any] | None, found: Checked
             ) -> dict[str, tuple[str, int]]:
    """Path (under reports/) -> (sha256, seq) as the segment last recorded it; plus each run's
    last ``record_sha256`` under ``runs/<id>/run.json``."""
    recorded: dict[str, tuple[str, int]] = {}
    try:
        head = json.loads(files["ledger/anchor.json"])
        lines = files["ledger/segment.jsonl"].splitlines()
    except (KeyError, ValueError):
        found.problems.append("ledger/: the segment or its anchor is missing")
        return recorded
    previous: dict[str, Any] | None = None
    hashes: dict[int, str] = {}
    for number, line in enumerate(lines, start=1):
        where = f"ledger/segment.jsonl line {number}"
        try:
            entry = json.loads(line)
            seq = int(entry["seq"])
        except (ValueError, KeyError, TypeError):
            found.problems.append(f"{where}: not a ledger entry")
            return recorded
        if CHAIN.digest(entry) != entry.get("hash"):
            found.problems.append(f"{where} (seq {seq}): its hash does not match its content")
        if previous is not None and (seq != previous["seq"] + 1
                                     or entry.get("prev") != previous.get("hash")):
            found.problems.append(f"{where} (seq {seq}): not linked to seq {previous['seq']}")
        if previous is None and seq == 1 and entry.get("prev") != GENESIS:
            found.problems.append(f"{where}: the first entry must link to the genesis hash")
        hashes[seq] = str(entry.get("hash"))
        for name, digest in (entry.get("files") or {}).items():
            recorded[str(name)] = (str(digest), seq)
        record = (entry.get("data") or {}).get("record_sha256")
        if record and entry.get("run_id"):
            recorded[f"runs/{entry['run_id']}/run.json"] = (str(record), seq)
        previous = entry
    found.entries = len(lines)
    if previous is None or previous["seq"] != head.get("seq") \
            or previous.get("hash") != head.get("hash"):
        found.problems.append(f"ledger/anchor.json: the segment does not end at the anchor "
                              f"(seq {head.get('seq')})")
    if anchor is not None:
        wanted, digest = anchor.get("seq"), anchor.get("hash")
        if not isinstance(wanted, int) or hashes.get(wanted) != digest:
            found.problems.append(f"--anchor: seq {wanted} with hash {str(digest)[:16]} is not "
                                  f"an entry of the pack's ledger segment (seq "
                                  f"{min(hashes, default=0)}-{max(hashes, default=0)})")
    return recorded


def _archived(files: dict[str, bytes], manifest: dict[str, Any],
              recorded: dict[str, tuple[str, int]], found: Checked) -> None:
    rendered = set(manifest.get("rendered_for_pack") or [])
    for name, data in sorted(files.items()):
        if not name.startswith(ARCHIVE) or name in rendered:
            continue
        path = name[len(ARCHIVE):]
        if path.startswith("static/"):
            continue
        known = recorded.get(path)
        if known is None:
            found.problems.append(f"{name}: named by no entry of the ledger segment")
        elif hashlib.sha256(data).hexdigest() != known[0]:
            found.problems.append(f"{name}: not the file the ledger recorded (seq {known[1]})")


def _attestations(files: dict[str, bytes], public: Ed25519PublicKey | None,
                  found: Checked) -> None:
    for name in sorted(n for n in files if n.startswith(ARCHIVE)
                       and PurePosixPath(n).name.startswith("attestation-")):
        try:
            envelope = dsse.read(files[name], name)
        except dsse.EnvelopeError as exc:
            found.problems.append(str(exc))
            continue
        if not envelope.signatures:
            found.notes.append(f"{name}: unsigned attestation")
        elif public is not None and (problem := dsse.verify(envelope, public)):
            found.problems.append(f"{name}: {problem}")
