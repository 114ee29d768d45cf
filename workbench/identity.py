"""Who is acting, and where that identity came from.

Sources: ``jupyterhub``, ``github``, ``gitlab``, ``jenkins`` when that platform vouches for
the name (see :mod:`workbench.vouching`); ``typed`` for a name given with ``--as`` (or claimed
by a platform variable nobody confirmed); ``os`` for the operating-system user. A typed name is
whatever someone typed: the OS user who typed it is kept beside it (``os_user``), and that OS
user is the *person* the policy counts (:meth:`Identity.person`).
"""

from __future__ import annotations

import getpass
import os
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

from workbench.errors import WorkbenchError

VOUCHED_SOURCES = ("jupyterhub", "github", "gitlab", "jenkins")
SOURCES = (*VOUCHED_SOURCES, "os", "typed")
# the variables by which a platform claims a name, most specific first
PLATFORM_IDENTITIES = (
    ("JUPYTERHUB_USER", "jupyterhub"),
    ("GITHUB_ACTOR", "github"),
    ("GITLAB_USER_LOGIN", "gitlab"),
    ("BUILD_USER_ID", "jenkins"),
)
# what vouching reads besides those: tokens, URLs and the issuer (the cache key)
_VOUCHING_VARIABLES = ("JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN", "GITHUB_ACTIONS",
                       "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
                       "GITHUB_REPOSITORY", "WORKBENCH_OIDC_ISSUER", "WORKBENCH_ID_TOKEN",
                       "CI_SERVER_URL", "BUILD_URL", "JENKINS_USER_ID", "JENKINS_API_TOKEN")


class IdentityError(WorkbenchError, ValueError):
    """A claimed identity contradicts the one the platform vouches for."""


class Identity(BaseModel):
    name: str
    source: str  # jupyterhub | github | gitlab | jenkins | os | typed
    os_user: str | None = None
    # a platform's claim of this name that the platform did not confirm, and why
    unvouched: str | None = None

    @model_serializer(mode="wrap")
    def _without_empty_claim(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The stored form of earlier versions when nothing went unvouched."""
        data: dict[str, Any] = handler(self)
        if data.get("unvouched") is None:
            data.pop("unvouched", None)
        return data

    def __str__(self) -> str:
        return f"{self.name} ({self.source})"

    @property
    def vouched(self) -> bool:
        return self.source in VOUCHED_SOURCES

    def person(self) -> str:
        """Who this is, for counting distinct people: the platform's account when it vouched,
        else the OS user (two names typed by one OS user are one person)."""
        if self.vouched:
            return f"{self.source}:{self.name}"
        return f"os:{self.os_user or self.name}"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def _platform_environment() -> tuple[tuple[str, str], ...]:
    names = (*(variable for variable, _ in PLATFORM_IDENTITIES), *_VOUCHING_VARIABLES)
    return tuple((name, os.environ[name]) for name in names if os.environ.get(name))


@lru_cache(maxsize=8)
def _vouched(environment: tuple[tuple[str, str], ...]) -> tuple[str, str, str | None] | None:
    """(claimed name, source, the confirmed name or None) for this environment, asked once."""
    from workbench.vouching import vouch

    found = vouch(dict(environment))
    if found is None:
        return None
    claimed, answer = found
    return claimed, answer.source, answer.name if answer.name else answer.why_not


def _answer() -> tuple[str, str, str | None, bool] | None:
    """(claimed, source, name-or-reason, confirmed) of the platform claim, if any."""
    found = _vouched(_platform_environment())
    if found is None:
        return None
    claimed, source, detail = found
    return claimed, source, detail, detail == claimed


def platform_identity() -> Identity | None:
    """The identity a JupyterHub or CI system gives this process, once it vouched for it."""
    answer = _answer()
    if answer is None or not answer[3]:
        return None
    claimed, source, _, _ = answer
    return Identity(name=claimed, source=source, os_user=_os_user())


def reviewer(claimed: str | None, environment: str) -> Identity:
    """The identity deciding a gate for ``environment``: :func:`current`, or, in a GitHub
    Actions job, a reviewer GitHub says approved this run's deployment to the GitHub
    environment of that name (the generated workflows record those approvals)."""
    who = current(claimed)
    if who.vouched or os.environ.get("GITHUB_ACTIONS") != "true":
        return who
    from workbench.vouching import github_reviewer

    answer = github_reviewer(dict(os.environ), who.name, environment)
    if answer.name is None:
        return who
    return Identity(name=answer.name, source="github", os_user=who.os_user)


def current(claimed: str | None = None) -> Identity:
    """The acting identity: the platform's (when it vouches), else a typed name (``claimed``,
    or the name a platform variable claims unconfirmed), else the OS user.

    A typed name that differs from the platform's identity is refused: in CI or on JupyterHub
    nobody approves in someone else's name.
    """
    answer = _answer()
    claimed = claimed.strip() if claimed else None
    user = _os_user()
    if answer is not None and answer[3]:
        name, source = answer[0], answer[1]
        if claimed and claimed != name:
            raise IdentityError(f"you are {name!r} according to {source}; cannot act as "
                                f"{claimed!r}")
        return Identity(name=name, source=source, os_user=user)
    unvouched = f"{answer[1]}: {answer[2]}" if answer is not None else None
    if claimed:
        return Identity(name=claimed, source="typed", os_user=user, unvouched=unvouched)
    if answer is not None:  # e.g. GITHUB_ACTOR set by hand outside GitHub Actions
        return Identity(name=answer[0], source="typed", os_user=user, unvouched=unvouched)
    return Identity(name=user, source="os", os_user=user)
