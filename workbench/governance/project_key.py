"""The project's attestation key (``attestation:`` in ``configs/pipeline.yaml``).

- The public key is a file in the project (``public_key``, committed): PEM or OpenSSH form.
- The private key is never in the project, the archive, a log or MLflow: the environment
  variable ``private_key_env`` names a key file outside the project that only its owner may
  read (mode 0600), or holds the PEM text itself, which is accepted only when the variable is
  also listed under ``secrets:`` (so every archived file is redacted of it and checked).
- A private key that does not belong to the configured public key is refused before any
  signature is made with it.

Messages name the variable and the file, never the key's content.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from workbench.atomic import write_new
from workbench.config import Attestation, Config
from workbench.errors import WorkbenchError
from workbench.governance.dsse import key_id
from workbench.project import Project

DEFAULT_PUBLIC_KEY = "keys/attestation.pub"
PEM_START = "-----BEGIN"


class AttestationKeyError(WorkbenchError, ValueError):
    """The attestation key is configured but cannot be used (exit 2: a configuration error)."""


@dataclass(frozen=True)
class SigningKey:
    key: Ed25519PrivateKey
    source: str  # "$VAR (/path/to/key.pem)" or "$VAR": where it came from, for messages

    @property
    def keyid(self) -> str:
        return key_id(self.key.public_key())


def public_key_path(project: Project, settings: Attestation) -> Path | None:
    return project.root / settings.public_key if settings.public_key else None


def load_public(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM (SubjectPublicKeyInfo) or OpenSSH (``ssh-ed25519
    AAAA...``) file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AttestationKeyError(f"public key {path}: {exc.strerror or exc}") from None
    try:
        key: object = (serialization.load_ssh_public_key(data.strip())
                       if data.lstrip().startswith(b"ssh-")
                       else serialization.load_pem_public_key(data))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise AttestationKeyError(f"public key {path}: not a PEM or OpenSSH public key"
                                  ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise AttestationKeyError(f"public key {path}: a {type(key).__name__}; attestations "
                                  f"are signed with Ed25519 keys")
    return key


def _private_from(data: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key: object = (serialization.load_ssh_private_key(data, password=None)
                       if b"OPENSSH PRIVATE KEY" in data
                       else serialization.load_pem_private_key(data, password=None))
    except TypeError:
        raise AttestationKeyError(f"{where}: the private key is protected by a passphrase; "
                                  f"workbench reads unencrypted keys (keep the file mode "
                                  f"0600, or use a secret store)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise AttestationKeyError(f"{where}: not a PEM or OpenSSH private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AttestationKeyError(f"{where}: a {type(key).__name__}; attestations are "
                                  f"signed with Ed25519 keys")
    return key


def _read_key_file(project: Project, path: Path, variable: str) -> bytes:
    where = f"${variable} ({path})"
    resolved = path.expanduser().resolve()
    if resolved.is_relative_to(project.root.resolve()):
        raise AttestationKeyError(f"{where}: the private key is inside the project, where it "
                                  f"could be committed or archived; move it outside (see "
                                  f"`workbench attest keygen`)")
    try:
        mode = resolved.stat().st_mode
        if not stat.S_ISREG(mode):
            raise AttestationKeyError(f"{where}: not a file")
        if mode & 0o077:
            raise AttestationKeyError(f"{where}: readable by others (mode "
                                      f"{stat.S_IMODE(mode):o}); chmod 600 it")
        return resolved.read_bytes()
    except OSError as exc:
        raise AttestationKeyError(f"{where}: {exc.strerror or exc}") from None


def signing_key(project: Project, config: Config) -> SigningKey | None:
    """The private key the configuration points at, checked against the configured public
    key; None when the variable is not set (:class:`AttestationKeyError` then if the
    configuration requires a key)."""
    settings = config.pipeline.attestation
    variable = settings.private_key_env
    value = os.environ.get(variable, "").strip()
    if not value:
        if settings.required:
            raise AttestationKeyError(f"attestation.required: ${variable} is not set; set it to "
                                      f"the path of the project's private key file")
        return None
    if value.startswith(PEM_START):
        if variable not in config.pipeline.secrets:
            raise AttestationKeyError(
                f"${variable} holds a private key itself: list {variable} under secrets: in "
                f"configs/pipeline.yaml (so its value is redacted wherever it could appear), "
                f"or set it to the path of the key file")
        found = SigningKey(_private_from(value.encode(), f"${variable}"), f"${variable}")
    else:
        path = Path(value)
        data = _read_key_file(project, path, variable)
        found = SigningKey(_private_from(data, f"${variable} ({path})"),
                           f"${variable} ({path})")
    public_path = public_key_path(project, settings)
    if public_path is not None:
        public = load_public(public_path)
        if key_id(public) != found.keyid:
            raise AttestationKeyError(
                f"{found.source}: this private key does not belong to the public key "
                f"{settings.public_key} (key {key_id(public)[:16]}, the private key's is "
                f"{found.keyid[:16]})")
    return found


def default_private_path(project: Project) -> Path:
    """Where ``keygen`` puts the private key: the user's config folder, outside any project."""
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "workbench" / "keys" / f"{project.root.name}-attestation.pem"


def generate(project: Project, public_path: Path, private_path: Path, force: bool = False
             ) -> str:
    """A new Ed25519 key pair: the public key (PEM) written into the project at
    ``public_path``, the private key (PKCS#8 PEM, mode 0600) at ``private_path`` outside it.
    Returns the key id. Neither file is overwritten unless ``force`` (then the public one
    only: a private key file is never replaced)."""
    private_path = private_path.expanduser().resolve()
    if private_path.is_relative_to(project.root.resolve()):
        raise AttestationKeyError(f"{private_path}: inside the project; the private key must "
                                  f"live outside it (it would be committed or archived)")
    if private_path.exists():
        raise AttestationKeyError(f"{private_path} exists; choose another --private-key path "
                                  f"(a private key is never overwritten)")
    if public_path.exists() and not force:
        raise AttestationKeyError(f"{public_path} exists; --force replaces it (attestations "
                                  f"signed with the old key then verify only with the old "
                                  f"public key, e.g. from git history)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_new(private_path, private_pem, mode=0o600)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    if force:
        public_path.unlink(missing_ok=True)
    write_new(public_path, public_pem, mode=0o644)
    return key_id(key.public_key())
