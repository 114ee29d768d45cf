"""``workbench ci init``: CI pipeline definitions generated from the project (its environments,
gates and stages, how it installs, what it has to build, test and scan), written into its
repository."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from workbench.ci import github, gitlab, jenkins
from workbench.ci.shape import Shape, plan
from workbench.ci.shared import instructions
from workbench.config import Config, ConfigError
from workbench.stage_graph import gate_problems, graph_problems

# system -> the function rendering its files (path in the repository -> text)
SYSTEMS: dict[str, Callable[[Shape], dict[str, str]]] = {
    "github": github.render,
    "gitlab": gitlab.render,
    "jenkins": jenkins.render,
}
# every file a system may write (a project whose pipeline has no train-only run gets no
# training workflow)
FILES: dict[str, tuple[str, ...]] = {
    "github": (github.RELEASE, github.TRAIN),
    "gitlab": (gitlab.PATH,),
    "jenkins": (jenkins.PATH,),
}


class DefinitionExists(FileExistsError):
    """A definition is already there and ``force`` was not given."""


def shape_of(config: Config, root: Path, install: str | None = None,
             tracking_uri_secret: bool = False, publish_site: str = "none") -> Shape:
    """The project's shape; its stage graph and gates must be valid (as `validate` checks).
    Raises :class:`workbench.ci.shape.NotShared` for an option that needs the shared state
    (``archive.url`` and a tracking URI) in a project without it."""
    problems = graph_problems(config) or gate_problems(config)
    if problems:
        raise ConfigError(problems)
    return plan(config, root, install, tracking_uri_secret, publish_site)


def render(shape: Shape, system: str) -> dict[str, str]:
    if system not in SYSTEMS:
        raise ValueError(f"unknown CI system {system!r}; expected one of {sorted(SYSTEMS)}")
    return SYSTEMS[system](shape)


def secrets_to_set(shape: Shape, system: str) -> list[str]:
    """What to set in ``system``'s secret store for the jobs (names only; none without the
    shared state)."""
    return instructions(shape.shared, system) if shape.shared else []


def init(root: Path, config: Config, system: str, force: bool = False,
         install: str | None = None, tracking_uri_secret: bool = False,
         publish_site: str = "none") -> tuple[list[Path], Shape]:
    """Write ``system``'s definitions for the project at ``root``; never overwrite unless
    ``force``. Returns the files written and the shape they were generated from."""
    shape = shape_of(config, root, install, tracking_uri_secret, publish_site)
    files = render(shape, system)
    targets = [root / path for path in files]
    existing = [str(t.relative_to(root)) for t in targets if t.exists()]
    if existing and not force:
        raise DefinitionExists(f"{', '.join(existing)} already exist; use --force to replace")
    for target, text in zip(targets, files.values(), strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return targets, shape


def stale(root: Path, system: str, written: list[Path]) -> list[str]:
    """Definitions of ``system`` an earlier `ci init` wrote that this project no longer gets."""
    return [path for path in FILES[system]
            if (root / path).exists() and root / path not in written]
