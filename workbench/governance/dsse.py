"""DSSE envelopes signed with Ed25519: what an attestation is stored as.

The Dead Simple Signing Envelope (github.com/secure-systems-lab/dsse, protocol v1): the
signature covers the pre-authentication encoding of the payload type and the payload
(:func:`pae`), never a re-serialised JSON, so what is verified is exactly the bytes that were
signed. ``keyid`` names the key (sha256 of its raw 32 public bytes, hex); it is a hint, never
trusted: a signature counts only if it verifies with the key the verifier was given.

Ed25519 is the ``cryptography`` package's; the envelope itself is a few lines of JSON and
base64, which is why no DSSE library is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ValidationError

from workbench.errors import EXIT_FAILED, WorkbenchError

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


class EnvelopeError(WorkbenchError, ValueError):
    """A file that is no DSSE envelope (or whose payload is no JSON statement)."""

    exit_code = EXIT_FAILED


class Signature(BaseModel):
    keyid: str = ""
    sig: str  # base64


class Envelope(BaseModel):
    payload: str  # base64 of the payload bytes
    payloadType: str  # noqa: N815 - DSSE's own field names
    signatures: list[Signature] = []

    @property
    def payload_bytes(self) -> bytes:
        return b64decode(self.payload)

    def statement(self) -> dict[str, Any]:
        """The payload as JSON (an in-toto statement)."""
        try:
            data = json.loads(self.payload_bytes)
        except (binascii.Error, ValueError) as exc:
            raise EnvelopeError(f"the payload is not base64 JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise EnvelopeError("the payload is not a JSON object")
        return data

    def to_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(), indent=2) + "\n").encode()


def b64decode(text: str) -> bytes:
    """Standard or URL-safe base64 (DSSE accepts either), strictly."""
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text, validate=True)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: ``DSSEv1 SP LEN(type) SP type SP LEN(body) SP
    body`` (lengths in ASCII decimal)."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def seal(payload: bytes, key: Ed25519PrivateKey | None,
         payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> Envelope:
    """The envelope of ``payload``, signed with ``key`` (no key: no signatures)."""
    signatures = []
    if key is not None:
        sig = key.sign(pae(payload_type, payload))
        signatures.append(Signature(keyid=key_id(key.public_key()),
                                    sig=base64.b64encode(sig).decode()))
    return Envelope(payload=base64.b64encode(payload).decode(), payloadType=payload_type,
                    signatures=signatures)


def read(data: bytes, label: str) -> Envelope:
    """An envelope from a file's bytes; :class:`EnvelopeError` naming ``label``."""
    try:
        envelope = Envelope.model_validate_json(data)
        envelope.payload_bytes  # noqa: B018 - checks the base64
    except (ValidationError, ValueError, binascii.Error) as exc:
        raise EnvelopeError(f"{label}: not a DSSE envelope ({_first_line(exc)})") from exc
    return envelope


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def verify(envelope: Envelope, public: Ed25519PublicKey) -> str | None:
    """None if a signature of ``envelope`` verifies with ``public``; else why not."""
    if not envelope.signatures:
        return "unsigned: the envelope has no signature"
    wanted = key_id(public)
    message = pae(envelope.payloadType, envelope.payload_bytes)
    for signature in envelope.signatures:
        try:
            public.verify(b64decode(signature.sig), message)
            return None
        except (InvalidSignature, binascii.Error, ValueError):
            continue
    others = sorted({s.keyid[:16] for s in envelope.signatures if s.keyid != wanted})
    if others:
        return (f"bad signature: signed with key {', '.join(others)}, not with the trusted "
                f"key {wanted[:16]}")
    return (f"bad signature: the signature by key {wanted[:16]} does not match the payload "
            f"(the statement was changed after it was signed)")
