"""``workbench k8s``: render, apply and inspect an environment's Kubernetes serving target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli.app import UsageError, _project, app

k8s_app = typer.Typer(no_args_is_help=True, help="Kubernetes: render manifests for review, "
                                                 "apply them, show what is deployed.")
app.add_typer(k8s_app, name="k8s")

EnvOption = Annotated[str, typer.Option("--env", help="Environment (configs/kubernetes.yaml).")]
VersionOption = Annotated[str | None, typer.Option(
    "--model-version", metavar="VERSION",
    help="Registered model version (default: the one holding the environment's alias).")]


def _context(env: str) -> tuple[Any, Any, str]:
    from workbench.pipeline.validate import load_and_validate
    from workbench.registry.store import resolve

    project = _project()
    config = load_and_validate(project)
    if env not in config.environments:
        raise UsageError(f"--env {env}: configs/environments.yaml defines "
                         f"{', '.join(config.environments)}")
    return project, config, resolve(project, config.pipeline.mlflow).tracking_uri


def _version(config: Any, env: str, tracking_uri: str, version: str | None) -> str:
    if version is not None:
        return version
    database = tracking_uri.removeprefix("sqlite:///")
    if tracking_uri.startswith("sqlite:///") and not Path(database).is_file():
        raise UsageError(f"no model registry at {tracking_uri} yet; pass --model-version")
    from workbench.registry.client import client_for, version_holding

    try:
        found = version_holding(client_for(tracking_uri), config.model.name, env)
    except Exception as exc:  # noqa: BLE001 - any registry failure: ask for the version
        raise UsageError(f"the registry at {tracking_uri} could not be read ({exc}); pass "
                         f"--model-version") from None
    if found is None:
        raise UsageError(f"no version of {config.model.name} holds alias {env!r}; pass "
                         f"--model-version")
    return found


@k8s_app.command()
def render(
    env: EnvOption,
    output: Annotated[Path | None, typer.Option(
        "--output", help="Folder for the manifests (default: .workbench/k8s/ENV).")] = None,
    model_version: VersionOption = None,
) -> None:
    """Write the environment's serving manifests for review, validated in strict mode."""
    import yaml

    from workbench.k8s.config import cluster_for
    from workbench.k8s.target import render as render_manifests

    project, config, tracking_uri = _context(env)
    version = _version(config, env, tracking_uri, model_version)
    manifests = render_manifests(project, config, env, config.model.name, version,
                                 tracking_uri)
    folder = output or project.local_state / "k8s" / env
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    for index, manifest in enumerate(manifests, 1):
        name = f"{index:02d}-{manifest['kind'].lower()}-{manifest['metadata']['name']}.yaml"
        (folder / name).write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
        typer.echo(f"wrote {folder / name}")
    version_checked = cluster_for(project, env, "serving").kubernetes_version
    typer.echo(f"{len(manifests)} manifests for {config.model.name} v{version} valid for "
               f"Kubernetes {version_checked} (strict schema) and the project's checks")


@k8s_app.command("apply")
def apply_command(
    env: EnvOption,
    model_version: VersionOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Send every write with dryRun=All "
                                          "and print the manifests; nothing changes.")] = False,
) -> None:
    """Deploy a model version: apply, wait for the rollout, health-check through the Service."""
    import yaml

    from workbench.k8s.target import deploy
    from workbench.k8s.target import render as render_manifests

    project, config, tracking_uri = _context(env)
    version = _version(config, env, tracking_uri, model_version)
    if dry_run:
        manifests = render_manifests(project, config, env, config.model.name, version,
                                     tracking_uri)
        typer.echo(yaml.safe_dump_all(manifests, sort_keys=False))
    deployment = deploy(project, config, env, config.model.name, version, tracking_uri,
                        dry_run=True if dry_run else None,
                        on_wait=lambda message: typer.echo(f"  waiting: {message}"))
    typer.echo(deployment.describe())


@k8s_app.command()
def status(env: EnvOption) -> None:
    """Show the environment's Deployment: model version, revision, replicas, history."""
    from workbench.k8s.target import current, history

    project, config, _ = _context(env)
    deployment = current(project, config, env)
    if deployment is None:
        typer.echo(f"nothing deployed for {env}")
        return
    typer.echo(deployment.describe())
    typer.echo(f"  ready replicas: {deployment.ready_replicas}")
    for number, version, ready in history(project, config, env):
        mark = "*" if number == deployment.revision else " "
        typer.echo(f"  {mark} revision {number}: v{version} ({ready} ready)")
