"""The git commit a run was made from."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def _git(root: Path, *args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run([git, *args], cwd=root, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def changed_files(root: Path) -> list[str]:
    """Tracked files with uncommitted changes (empty outside a git work tree)."""
    listing = _git(root, "diff", "--name-only", "HEAD")
    return [line for line in (listing or "").splitlines() if line.strip()]


def commit(root: Path) -> tuple[str, bool]:
    """(full commit SHA or ``"unknown"``, whether the work tree has uncommitted changes)."""
    sha = _git(root, "rev-parse", "HEAD")
    if sha is None:
        return "unknown", False
    return sha, bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
