"""``workbench attest``: make the project's attestation key; verify an attestation offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli.app import EXIT_FAILED, UsageError, _project, app

attest_app = typer.Typer(no_args_is_help=True, help="Signed attestations of releases.")
app.add_typer(attest_app, name="attest")


@attest_app.command()
def keygen(
    public_key: Annotated[Path | None, typer.Option(
        "--public-key", metavar="PATH", help="Where the public key goes, in the project "
        "(default: attestation.public_key, else keys/attestation.pub).")] = None,
    private_key: Annotated[Path | None, typer.Option(
        "--private-key", metavar="PATH", help="Where the private key goes, outside the project "
        "(default: ~/.config/workbench/keys/<project>-attestation.pem).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing public key file.")] = False,
) -> None:
    """Make the project's Ed25519 attestation key pair: the public key into the project (commit
    it), the private key into a file only you can read, outside the project."""
    from workbench.config import load_config
    from workbench.governance.project_key import (
        DEFAULT_PUBLIC_KEY,
        default_private_path,
        generate,
    )

    project = _project()
    settings = load_config(project.configs).pipeline.attestation
    configured = settings.public_key
    public = project.root / (public_key or configured or DEFAULT_PUBLIC_KEY)
    if not public.resolve().is_relative_to(project.root.resolve()):
        raise UsageError(f"--public-key {public_key}: must be inside the project")
    private = private_key or default_private_path(project)
    keyid = generate(project, public, private, force=force)
    shown = public.resolve().relative_to(project.root.resolve()).as_posix()
    typer.echo(f"key {keyid[:16]}")
    typer.echo(f"public key:  {shown} (commit it)")
    typer.echo(f"private key: {private.expanduser().resolve()} (mode 0600; never commit or "
               f"share it)")
    if configured != shown:
        typer.echo(f"\nadd to configs/pipeline.yaml:\n  attestation:\n    public_key: {shown}")
    typer.echo(f"\nto sign, set the variable to the key file's path (in CI: a secret file):\n"
               f"  export {settings.private_key_env}={private.expanduser().resolve()}")


@attest_app.command()
def verify(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="An attestation (a DSSE "
                                         "envelope, reports/runs/RUN/attestation-*.dsse.json).")],
    model_dir: Annotated[Path | None, typer.Option(
        "--model-dir", metavar="DIR", help="Check the subject against the model's files in "
        "DIR (the model artifact's root, e.g. `mlflow artifacts download -u models:/M/V`).")
    ] = None,
    from_registry: Annotated[bool, typer.Option(
        "--from-registry", help="Check the subject against the attested version's files in "
        "the project's MLflow registry.")] = False,
    key: Annotated[Path | None, typer.Option(
        "--key", metavar="PUBKEY", help="The public key to trust (default: the project's "
        "attestation.public_key).")] = None,
    allow_unsigned: Annotated[bool, typer.Option(
        "--allow-unsigned", help="Accept an attestation made without a key.")] = False,
) -> None:
    """Verify an attestation offline: its signature with the project's public key, then its
    subject against the model's files; exit 1 naming each failure."""
    from workbench.governance import attestation_check as check
    from workbench.governance import dsse

    if model_dir is not None and from_registry:
        raise UsageError("give --model-dir DIR or --from-registry, not both")
    if model_dir is not None and not model_dir.is_dir():
        raise UsageError(f"--model-dir {model_dir}: not a folder")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"{file}: {exc.strerror or exc}") from None
    envelope = dsse.read(data, str(file))
    try:
        statement = envelope.statement()
    except dsse.EnvelopeError as exc:
        raise dsse.EnvelopeError(f"{file}: {exc}") from None
    found = check.Check()
    public, key_name = _trusted_key(key, envelope, allow_unsigned)
    check.check_signature(envelope, public, allow_unsigned, found)
    subjects = check.check_form(statement, found)
    release = check.release(statement)
    if model_dir is not None:
        check.check_files(subjects, model_dir, found)
    elif from_registry:
        _check_registry(release, subjects, found)
    else:
        found.notes.append("the model's files were not checked (--model-dir DIR or "
                           "--from-registry)")
    _report(file, release, envelope, public, key_name, found)


def _trusted_key(option: Path | None, envelope: Any, allow_unsigned: bool
                 ) -> tuple[Any, str | None]:
    """The public key to check with, and what to call it: ``--key``, else the project's."""
    from workbench.config import load_config
    from workbench.governance.project_key import load_public, public_key_path

    if option is not None:
        return load_public(option), str(option)
    if not envelope.signatures and allow_unsigned:
        return None, None
    project = _project()
    path = public_key_path(project, load_config(project.configs).pipeline.attestation)
    if path is None:
        raise UsageError("no public key to verify with: configure attestation.public_key in "
                         "configs/pipeline.yaml (`workbench attest keygen`) or pass --key FILE")
    return load_public(path), path.relative_to(project.root).as_posix()


def _check_registry(release: dict[str, Any], subjects: dict[str, str], found: Any) -> None:
    from workbench.config import load_config
    from workbench.governance import attestation_check as check
    from workbench.governance.bundle import BundleError, model_files
    from workbench.registry.store import resolve

    model = _mapping(release.get("model"))
    name, version = model.get("name"), model.get("version")
    if not name or not version:
        found.problems.append("the statement names no model version to look up")
        return
    project = _project()
    uri = resolve(project, load_config(project.configs).pipeline.mlflow).tracking_uri
    try:
        with model_files(uri, str(name), str(version)) as root:
            check.check_files(subjects, root, found)
    except BundleError as exc:
        found.problems.append(str(exc))


def _report(file: Path, release: dict[str, Any], envelope: Any, public: Any,
            key_name: str | None, found: Any) -> None:
    from workbench.governance.dsse import key_id

    model, ledger = _mapping(release.get("model")), _mapping(release.get("ledger"))
    approvals = ", ".join(f"{a.get('approver')} (#{a.get('seq')})"
                          for a in release.get("approvals") or [] if isinstance(a, dict))
    typer.echo(f"attestation {file}: {model.get('name')} v{model.get('version')} released to "
               f"{release.get('environment')}; approvals: {approvals or 'none'}; ledger seq "
               f"{ledger.get('seq')}")
    if public is not None and envelope.signatures and not any(
            p.startswith(("bad signature", "unsigned")) for p in found.problems):
        typer.echo(f"signature: ok (key {key_id(public)[:16]}, {key_name})")
    for note in found.notes:
        typer.echo(f"note: {note}")
    for problem in found.problems:
        typer.echo(f"FAIL {problem}", err=True)
    if not found.ok:
        typer.echo(f"attestation FAILED ({len(found.problems)} problem"
                   f"{'s' if len(found.problems) > 1 else ''})", err=True)
        raise typer.Exit(EXIT_FAILED)
    typer.echo("attestation verified")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
