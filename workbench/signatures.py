"""SSH signatures of decisions: the ``ssh-keygen -Y sign`` signatures git signs commits with.

A project maps approver names to public keys in ``configs/allowed_signers`` (git's allowed
signers format: ``NAMES [OPTIONS] KEYTYPE BASE64 [COMMENT]``, one key a line, NAMES comma
separated). The file is part of the configuration a run snapshots, so a gate checks signatures
against the keys the run started with, and ``workbench audit verify`` can check them offline
from the archive alone.

Signing and verifying are OpenSSH's (``ssh-keygen``), as in git; we only build the message and
read the answer. Rules:

1. The message is the decision's canonical JSON (:func:`message`): every field that makes the
   decision (run, environment, decision, approver, bundle, time, comment, diff shown). Editing
   any of them in the record breaks the signature.
2. The namespace is :data:`NAMESPACE`: a signature made for git or for anything else does not
   verify as an approval.
3. A signature counts for a name only if ``ssh-keygen -Y verify`` accepts it for that name in
   the run's allowed signers (their options, such as ``valid-before``, apply).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from workbench.errors import WorkbenchError

NAMESPACE = "workbench-approval"
SIGNERS_FILE = "allowed_signers"
FORMAT = "sshsig"
# the decision's fields a signature covers, in the record's own names
SIGNED_FIELDS = ("run_id", "environment", "decision", "approver", "bundle_digest", "time",
                 "comment", "diff_digest")
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
             "sk-ecdsa-sha2-nistp256@openssh.com")
_TIMEOUT_S = 30


class SignatureError(WorkbenchError, RuntimeError):
    """A decision could not be signed (no ssh-keygen, an unreadable key, a refused passphrase)."""


class Signature(BaseModel):
    """A signature as an approval record keeps it."""

    format: str = FORMAT
    namespace: str = NAMESPACE
    fingerprint: str = ""  # SHA256:... of the key that signed, as ssh-keygen prints it
    armored: str  # -----BEGIN SSH SIGNATURE----- ...


@dataclass(frozen=True)
class Signer:
    """One line of an allowed signers file."""

    names: tuple[str, ...]
    key: str  # KEYTYPE BASE64
    line: int


def parse(text: str, label: str = f"configs/{SIGNERS_FILE}") -> tuple[list[Signer], list[str]]:
    """The signers of an allowed signers file, and a problem for each line that is not one
    (``label:LINE: why``)."""
    signers: list[Signer] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = _split(line)
        names = words[0].split(",") if words else []
        at = next((i for i, word in enumerate(words) if word in KEY_TYPES), None)
        if at is None or at + 1 >= len(words):
            problems.append(f"{label}:{number}: expected NAMES [OPTIONS] KEYTYPE BASE64, with "
                            f"KEYTYPE one of {', '.join(KEY_TYPES[:3])}...")
            continue
        if at == 0 or any(not name or any(c in name for c in "*?!") for name in names):
            problems.append(f"{label}:{number}: the first field must name the approvers "
                            f"(comma separated, no patterns)")
            continue
        signers.append(Signer(tuple(names), f"{words[at]} {words[at + 1]}", number))
    return signers, problems


def _split(line: str) -> list[str]:
    """Words of a line; a double-quoted option value (``namespaces="a,b"``) stays one word."""
    return re.findall(r'(?:[^\s"]+|"[^"]*")+', line)


def names(text: str) -> set[str]:
    """Every approver name the file maps a key to."""
    return {name for signer in parse(text)[0] for name in signer.names}


def message(fields: dict[str, Any]) -> bytes:
    """The bytes a decision's signature covers: its :data:`SIGNED_FIELDS`, canonical JSON
    (the approver by name)."""
    approver = fields.get("approver")
    if isinstance(approver, dict):
        approver = approver.get("name")
    chosen = {key: fields.get(key) for key in SIGNED_FIELDS}
    chosen["approver"] = approver
    chosen["namespace"] = NAMESPACE
    return json.dumps(chosen, sort_keys=True, separators=(",", ":")).encode()


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        raise SignatureError("ssh-keygen was not found: SSH signatures need OpenSSH's client "
                             "(Debian: apt-get install openssh-client)")
    return found


def sign(data: bytes, key: Path) -> Signature:
    """Sign ``data`` with ``key``: a private key file, or a public key whose private half an
    ssh-agent holds (as git's ``user.signingkey``)."""
    if not key.expanduser().is_file():
        raise SignatureError(f"signing key {key}: no such file")
    with tempfile.TemporaryDirectory(prefix="workbench-sign-") as folder:
        payload = Path(folder) / "decision.json"
        payload.write_bytes(data)
        done = subprocess.run(  # nosec B603
            [_ssh_keygen(), "-Y", "sign", "-f", str(key.expanduser()), "-n", NAMESPACE,
             str(payload)], capture_output=True, text=True, timeout=_TIMEOUT_S,
            stdin=subprocess.DEVNULL, check=False)
        armored = payload.with_suffix(".json.sig")
        if done.returncode != 0 or not armored.is_file():
            why = " ".join(done.stderr.split()) or f"exit {done.returncode}"
            raise SignatureError(f"signing with {key} failed: {why} (a key with a passphrase "
                                 f"needs ssh-agent: ssh-add the key, then sign with its .pub)")
        text = armored.read_text(encoding="ascii")
    return Signature(armored=text, fingerprint=_fingerprint(data, text) or "")


def verify(data: bytes, signature: Signature, name: str, signers_text: str) -> str | None:
    """None if ``signature`` is ``name``'s signature of ``data`` under ``signers_text``; else
    why not, in words that name the key's owner where the file knows it."""
    if signature.format != FORMAT or signature.namespace != NAMESPACE:
        return (f"a {signature.format} signature for namespace {signature.namespace!r}; "
                f"approvals take {FORMAT} signatures for {NAMESPACE!r}")
    return _verify(hashlib.sha256(data).hexdigest(), data, signature.armored, name,
                   signers_text)


@lru_cache(maxsize=512)
def _verify(_digest: str, data: bytes, armored: str, name: str, signers_text: str
            ) -> str | None:
    if not signers_text.strip() or name not in names(signers_text):
        return (f"configs/{SIGNERS_FILE} of this run maps no key to {name!r}"
                if signers_text.strip() else
                f"this run's configuration has no configs/{SIGNERS_FILE} to check it against")
    with tempfile.TemporaryDirectory(prefix="workbench-verify-") as folder:
        signers = Path(folder) / SIGNERS_FILE
        signers.write_text(signers_text, encoding="utf-8")
        sig = Path(folder) / "decision.sig"
        sig.write_text(armored, encoding="ascii")
        ok = _run(["-Y", "verify", "-f", str(signers), "-I", name, "-n", NAMESPACE,
                   "-s", str(sig)], data)
        if ok.returncode == 0:
            return None
        owners = _run(["-Y", "find-principals", "-f", str(signers), "-s", str(sig)], b"")
        found = [line.strip() for line in owners.stdout.splitlines() if line.strip()]
    if found and name not in ",".join(found).split(","):
        return f"signed with a key configs/{SIGNERS_FILE} maps to {', '.join(found)}, " \
               f"not to {name!r}"
    if _fingerprint(data, armored) is None:
        return "the signature does not match the decision: the record was changed after it " \
               "was signed, or the signature was made for another decision"
    if not found:
        return f"signed with a key configs/{SIGNERS_FILE} of this run does not list"
    return "ssh-keygen refused it: " + (" ".join(ok.stderr.split()) or "no reason given")


def _fingerprint(data: bytes, armored: str) -> str | None:
    """The signing key's fingerprint if ``armored`` is a valid signature of ``data`` by any
    key (no signers file consulted), else None."""
    with tempfile.TemporaryDirectory(prefix="workbench-verify-") as folder:
        sig = Path(folder) / "decision.sig"
        sig.write_text(armored, encoding="ascii")
        done = _run(["-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(sig)], data)
    if done.returncode != 0:
        return None
    found = re.search(r"(SHA256:[A-Za-z0-9+/=]+)", done.stdout + done.stderr)
    return found.group(1) if found else ""


@dataclass(frozen=True)
class _Answer:
    returncode: int
    stdout: str
    stderr: str


def _run(arguments: list[str], data: bytes) -> _Answer:
    """ssh-keygen with ``data`` on its standard input (bytes: a comment may be any text)."""
    done = subprocess.run([_ssh_keygen(), *arguments], input=data,  # nosec B603
                          capture_output=True, timeout=_TIMEOUT_S, check=False)
    return _Answer(done.returncode, done.stdout.decode(errors="replace"),
                   done.stderr.decode(errors="replace"))
