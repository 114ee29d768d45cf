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
