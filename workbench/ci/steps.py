"""Shell steps the three CI systems share."""

from __future__ import annotations

from workbench.ci.shape import Shape

COPY_CONFIG = ('if [ "$MODEL_CONFIG" != configs/model.yaml ]; then '
               'cp "$MODEL_CONFIG" configs/model.yaml; fi')


def security_script(shape: Shape) -> str:
    """bandit over the project's Python code, pip-audit over its dependencies."""
    lines = ["python -m pip install bandit pip-audit"]
    if shape.bandit_paths:
        config = " -c pyproject.toml" if shape.bandit_config else ""
        lines.append(f"bandit -q{config} -r {' '.join(shape.bandit_paths)}")
    lines.append(shape.audit)
    return "\n".join(lines) + "\n"


# the site job: the whole shared archive into reports/, then the site built from it
SITE_COMMANDS = ("archive pull", "reports build")
SITE_TITLE = "Report site"


def site_copy(folder: str) -> str:
    """reports/ copied to ``folder`` for static pages, without its hidden files (the site's
    private state; the report server never serves them either)."""
    return f"rm -rf {folder} && mkdir {folder} && cp -R reports/* {folder}/"
