"""What a project's CI needs to know about it, read from the loaded configuration and the files
in its repository: environments in promotion order, the gate guarding each, where a train-only
run stops, how the project installs, and which build, test and scan steps apply.

The CI definitions (:mod:`workbench.ci.github`, :mod:`workbench.ci.gitlab`,
:mod:`workbench.ci.jenkins`) are rendered from a :class:`Shape` alone; they never name a stage or
an environment that the shape does not hold.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from workbench.ci.shared import Shared, shared_state
from workbench.config import Config
from workbench.stage_graph import stage_order

DEFAULT_BRANCH = "main"
PYTHON_VERSION = "3.11"
# the images the Kubernetes executor and deploy target run (configs/kubernetes.example.yaml),
# built from the project's Dockerfiles when it has them: image name -> Dockerfile
IMAGES = {"workbench-serve": "configs/docker/serve.Dockerfile",
          "workbench-runner": "configs/docker/runner.Dockerfile"}
# how the report site is published (`ci init --publish-site`): to the CI's own static pages
# (GitHub Pages, GitLab Pages, Jenkins' HTML publisher), or not at all
PUBLISH_SITE = ("pages", "none")
# top-level folders that are not the project's own code (bandit skips them)
NOT_CODE = {"tests", "test", "notebooks", "configs", "reports", "build", "dist", "venv",
            "env", "node_modules", "site-packages"}


@dataclass(frozen=True)
class Promotion:
    """A gated environment: its own CI job, behind the CI's approval and its gate stage."""

    environment: str
    gate: str  # the stage with ``gate: <environment>``
    quorum: int  # distinct approvers the policy needs
    requires_comment: bool


@dataclass(frozen=True)
class Shape:
    """Everything the generated CI definitions say about one project."""

    pipeline: str
    stages: tuple[str, ...]  # in execution order
    environments: tuple[str, ...]  # promotion order (configs/environments.yaml)
    base: str  # the environment `workbench run --env` starts in
    promotions: tuple[Promotion, ...]  # gated environments after ``base``, in order
    train_until: str | None  # the last stage before the first with a side effect
    first_side_effect: str | None  # where a trained run continues (`--from`)
    install: str  # the install command (shell)
    dependency_file: str | None  # requirements.txt or pyproject.toml (keys pip caches)
    lint: bool  # `ruff check .`: ruff is in the install
    unit_tests: bool  # a tests/ folder exists
    images: tuple[tuple[str, str], ...]  # (image name, Dockerfile) present in the project
    bandit_paths: tuple[str, ...]  # the project's Python code
    bandit_config: bool  # pyproject.toml has [tool.bandit]
    audit: str  # the pip-audit command for the project's dependencies
    notes: tuple[str, ...] = field(default=())  # for the user, printed by `ci init`
    # the archive and MLflow the jobs share (None: they pass reports/ and the embedded MLflow
    # store as artifacts)
    shared: Shared | None = None
    site: bool = False  # publish the report site from the shared archive

    @property
    def train_stages(self) -> tuple[str, ...]:
        """The stages a train-only run executes (in order)."""
        if self.train_until is None:
            return ()
        return self.stages[:self.stages.index(self.train_until) + 1]

    @property
    def first_gate(self) -> Promotion | None:
        return self.promotions[0] if self.promotions else None

    def promotion_after(self, environment: str) -> Promotion | None:
        names = [p.environment for p in self.promotions]
        index = names.index(environment) + 1 if environment in names else 0
        return self.promotions[index] if index < len(self.promotions) else None


class NotShared(ValueError):
    """An option that needs the shared state, for a project without it."""


def plan(config: Config, root: Path, install: str | None = None,
         tracking_uri_secret: bool = False, publish_site: str = "none") -> Shape:
    """The shape of the project at ``root`` whose configuration is ``config``; ``install``
    replaces the install command found from the repository's files; ``tracking_uri_secret``:
    MLflow's tracking URI comes from the ``MLFLOW_TRACKING_URI`` secret; ``publish_site``:
    one of :data:`PUBLISH_SITE` (needs the shared state)."""
    if publish_site not in PUBLISH_SITE:
        raise ValueError(f"publish_site {publish_site!r}: expected one of {PUBLISH_SITE}")
    if tracking_uri_secret and config.pipeline.archive.url is None:
        raise NotShared("--tracking-uri-secret: configs/pipeline.yaml has no archive.url, so "
                        "the jobs pass reports/ and the MLflow store as artifacts; set "
                        "archive.url to share them")
    shared, shared_notes = shared_state(config, tracking_uri_secret)
    if publish_site != "none" and shared is None:
        raise NotShared(f"--publish-site {publish_site}: the site is built from the shared "
                        f"archive; configs/pipeline.yaml needs archive.url and "
                        f"mlflow.tracking_uri (or --tracking-uri-secret)")
    order = stage_order(config)
    gates = {s.gate: s.name for s in config.pipeline.stages if s.gate}
    base = next((e for e in config.environments
                 if e not in gates and e not in config.gates.policies),
                next(iter(config.environments)))
    promotions = tuple(
        Promotion(env, gates[env], config.gates.policies[env].quorum,
                  config.gates.requires_comment(env))
        for env in config.environments
        if env in gates and env in config.gates.policies
        and config.environment_rank(env) > config.environment_rank(base))
    first_effect = next((n for n in order if config.stage(n).side_effect), None)
    before = order[:order.index(first_effect)] if first_effect else order
    until = before[-1] if before else None  # no side effect at all: the whole pipeline
    notes: list[str] = list(shared_notes)
    if until is None:
        notes.append(f"no train-only run: the first stage, {first_effect}, acts on the world "
                     f"({config.stage(order[0]).side_effect})")
    pyproject = _read_pyproject(root)
    extra = shared.extra if shared else None
    command, installed = install_command(root, pyproject, install, extra)
    dist, _ = workbench_distribution()
    if not (installed & {_normal(dist), "workbench"}) and install is None \
            and (root / "requirements.txt").is_file():
        notes.append(f"requirements.txt does not name {dist}: the CI jobs run `workbench`, "
                     f"so add it there (or pass --install)")
    if shared and shared.extra and shared.package and not (
            installed & {shared.package, f"{_normal(dist)}[{shared.extra}]",
                         f"workbench[{shared.extra}]"}):
        where = "requirements.txt" if (root / "requirements.txt").is_file() \
            else "the project's dependencies"
        notes.append(f"the install does not bring {shared.package}, which the archive "
                     f"{shared.archive} needs: name {dist}[{shared.extra}] in {where} (or "
                     f"pass --install)")
    if shared and publish_site == "none":
        notes.append("the report site is not published: `--publish-site pages` publishes it "
                     "from the archive (GitHub Pages are public unless your plan restricts "
                     "them; see README, CI with shared state)")
    return Shape(
        pipeline=config.pipeline.name, stages=tuple(order),
        environments=tuple(config.environments), base=base, promotions=promotions,
        train_until=until, first_side_effect=first_effect if until else None,
        install=command, lint="ruff" in installed,
        dependency_file=next((f for f in ("requirements.txt", "pyproject.toml")
                              if (root / f).is_file()), None),
        unit_tests=(root / "tests").is_dir(),
        images=tuple((name, path) for name, path in IMAGES.items() if (root / path).is_file()),
        bandit_paths=tuple(code_paths(root)),
        bandit_config="bandit" in pyproject.get("tool", {}),
        audit=("pip-audit -r requirements.txt" if (root / "requirements.txt").is_file()
               else "pip-audit"),
        notes=tuple(notes), shared=shared, site=publish_site == "pages",
    )


# --- installing the project -----------------------------------------------------------------


def install_command(root: Path, pyproject: dict[str, Any], override: str | None = None,
                    extra: str | None = None) -> tuple[str, set[str]]:
    """The command that installs the project, and the (normalised) names of what it installs
    as far as the repository tells (``name[extra]`` too, for a requirement with extras):
    requirements.txt, else pyproject.toml (with its ``test`` extra when it has one), else
    workbench itself from the package index (with ``extra``, e.g. ``s3``, when given)."""
    if override is not None:
        command = override
    elif (root / "requirements.txt").is_file():
        command = "python -m pip install -r requirements.txt"
    elif "project" in pyproject:
        extras = pyproject["project"].get("optional-dependencies", {})
        command = 'python -m pip install ".[test]"' if "test" in extras else \
            "python -m pip install ."
    else:
        dist, version = workbench_distribution()
        wanted = f"{dist}[{extra}]" if extra else dist
        command = f'python -m pip install "{wanted}=={version}"' if version else \
            f'python -m pip install "{wanted}"' if extra else f"python -m pip install {dist}"
    return command, installed_names(root, pyproject, command)


def installed_names(root: Path, pyproject: dict[str, Any], command: str) -> set[str]:
    """Names of the packages a pip command installs, as far as the repository tells."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    names: set[str] = set()
    pending_file = collecting = False
    for word in words:
        if word in ("&&", "||", ";", "|"):
            collecting = False
        elif word == "install":
            collecting = True
        elif not collecting:
            continue
        elif pending_file:
            names |= requirement_names(root / word)
            pending_file = False
        elif word in ("-r", "--requirement"):
            pending_file = True
        elif word.startswith(("-r", "--requirement=")) and len(word) > 2:
            names |= requirement_names(root / word.split("=", 1)[-1].removeprefix("-r"))
        elif word == "." or word.startswith((".[", "./[")):
            project = pyproject.get("project", {})
            for requirement in project.get("dependencies", []):
                names |= _names(requirement)
            wanted = re.findall(r"[\w.-]+", word.partition("[")[2])
            for extra in wanted:
                for requirement in project.get("optional-dependencies", {}).get(extra, []):
                    names |= _names(requirement)
            if "name" in project:
                names.add(_normal(project["name"]))
        elif not word.startswith("-"):
            names |= _names(word)
    return names - {""}


def requirement_names(path: Path, seen: set[Path] | None = None) -> set[str]:
    """Package names in a requirements file (following ``-r`` includes)."""
    seen = seen if seen is not None else set()
    if path in seen or not path.is_file():
        return set()
    seen.add(path)
    names: set[str] = set()
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            names |= requirement_names(path.parent / line.split(None, 1)[1], seen)
        elif not line.startswith("-"):
            names |= _names(line)
    return names


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return _normal(match.group(1)) if match else ""


def _names(requirement: str) -> set[str]:
    """A requirement's name, and ``name[extra]`` for each extra it asks for."""
    name = _name(requirement)
    match = re.match(r"\s*[A-Za-z0-9][A-Za-z0-9._-]*\s*\[([^\]]*)\]", requirement)
    extras = re.findall(r"[\w.-]+", match.group(1)) if match and name else []
    return {name, *(f"{name}[{_normal(e)}]" for e in extras)}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def workbench_distribution() -> tuple[str, str | None]:
    """The distribution that provides this package (its name in pyproject.toml), and the
    version installed here."""
    package = __name__.split(".", 1)[0]
    names = metadata.packages_distributions().get(package, [])
    for dist in names:
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    source = Path(__file__).resolve().parents[2] / "pyproject.toml"  # a source checkout
    project = _read_pyproject(source.parent).get("project", {})
    return project.get("name", package), project.get("version")


def _read_pyproject(root: Path) -> dict[str, Any]:
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


# --- the project's own code -----------------------------------------------------------------


def code_paths(root: Path) -> list[str]:
    """Top-level Python files and folders holding Python code: what bandit scans (tests,
    notebooks, configs, virtual environments and hidden folders excluded)."""
    found: list[str] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith((".", "_")) or entry.name in NOT_CODE:
            continue
        python_file = entry.is_file() and entry.suffix == ".py"
        python_folder = entry.is_dir() and not (entry / "pyvenv.cfg").exists() \
            and next(entry.rglob("*.py"), None) is not None
        if python_file or python_folder:
            found.append(entry.name)
    return found
