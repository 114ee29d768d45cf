"""Who is acting, and where that identity came from."""

from __future__ import annotations

import getpass
import os

from pydantic import BaseModel

from workbench.errors import WorkbenchError

# Identities vouched for by the platform, most specific first: (environment variable, source).
PLATFORM_IDENTITIES = (
    ("JUPYTERHUB_USER", "jupyterhub"),
    ("GITHUB_ACTOR", "github"),
    ("GITLAB_USER_LOGIN", "gitlab"),
    ("BUILD_USER_ID", "jenkins"),
)


class IdentityError(WorkbenchError, ValueError):
    """A claimed identity contradicts the one the platform vouches for."""


class Identity(BaseModel):
    name: str
    source: str  # jupyterhub | github | gitlab | jenkins | os | typed
    os_user: str | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.source})"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def platform_identity() -> Identity | None:
    """The identity a JupyterHub or CI system gives this process, if any."""
    for variable, source in PLATFORM_IDENTITIES:
        value = os.environ.get(variable, "").strip()
        if value:
            return Identity(name=value, source=source, os_user=_os_user())
    return None


def current(claimed: str | None = None) -> Identity:
    """The acting identity: the platform's, else a typed name, else the OS user.

    A typed name that differs from the platform's identity is refused: in CI or on JupyterHub
    nobody approves in someone else's name.
    """
    platform = platform_identity()
    claimed = claimed.strip() if claimed else None
    if platform is not None:
        if claimed and claimed != platform.name:
            raise IdentityError(f"you are {platform.name!r} according to {platform.source}; "
                                f"cannot act as {claimed!r}")
        return platform
    user = _os_user()
    if claimed:
        return Identity(name=claimed, source="typed", os_user=user)
    return Identity(name=user, source="os", os_user=user)
