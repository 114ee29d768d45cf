"""``workbench ci init``: write ready CI pipeline definitions into the user's repository."""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"

# system -> [(template file, where it goes in the repository)]
LAYOUT: dict[str, list[tuple[str, str]]] = {
    "github": [("github/workbench-release.yml", ".github/workflows/workbench-release.yml"),
               ("github/workbench-train.yml", ".github/workflows/workbench-train.yml")],
    "gitlab": [("gitlab/gitlab-ci.yml", ".gitlab-ci.yml")],
    "jenkins": [("jenkins/Jenkinsfile", "Jenkinsfile")],
}


class TemplateExists(FileExistsError):
    """A definition is already there and ``force`` was not given."""


def init(root: Path, system: str, force: bool = False) -> list[Path]:
    """Write ``system``'s definitions under ``root``; never overwrite unless ``force``."""
    if system not in LAYOUT:
        raise ValueError(f"unknown CI system {system!r}; expected one of {sorted(LAYOUT)}")
    targets = [(TEMPLATES / source, root / target) for source, target in LAYOUT[system]]
    existing = [str(t.relative_to(root)) for _, t in targets if t.exists()]
    if existing and not force:
        raise TemplateExists(f"{', '.join(existing)} already exist; use --force to replace")
    for source, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    return [t for _, t in targets]
