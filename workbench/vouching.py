"""Asking a platform to vouch for who is acting.

An environment variable is only a claim: anyone can set ``GITHUB_ACTOR=alice``. A name counts
as the platform's only when the platform itself confirms it:

- **JupyterHub**: the hub's API, asked with the session's API token (``GET
  $JUPYTERHUB_API_URL/user`` with ``JUPYTERHUB_API_TOKEN``), names the user;
- **GitHub Actions**: the job's OIDC token (``ACTIONS_ID_TOKEN_REQUEST_URL``/``_TOKEN``, which
  a workflow gets with ``permissions: id-token: write``), signed by GitHub's issuer, carries the
  ``actor`` (and ``repository``) claim;
- **GitLab CI**: an ID token the job declares (``id_tokens: WORKBENCH_ID_TOKEN: {aud:
  workbench}``), signed by the instance, carries ``user_login``;
- **Jenkins**: the build's API (``$BUILD_URL/api/json`` with ``JENKINS_USER_ID`` and
  ``JENKINS_API_TOKEN``) names who approved its ``input`` step, or who started it.

Tokens are checked with PyJWT: the signature against the issuer's published keys (found
through its OpenID configuration), the audience ``workbench``, the issuer and the expiry. A
claim that cannot be confirmed (no token, a wrong signature, the platform unreachable within a
few seconds) is no platform identity: the person counts as a typed name. The reason is kept, so
an approval record can say why a name was not vouched for.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from typing import Any

AUDIENCE = "workbench"
TIMEOUT_S = 5.0
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
ISSUER_VARIABLE = "WORKBENCH_OIDC_ISSUER"  # GitHub Enterprise Server's issuer, for instance
# the name of the variable holding the ID token, not a token
GITLAB_TOKEN_VARIABLE = "WORKBENCH_ID_TOKEN"  # nosec B105


@dataclass(frozen=True)
class Vouched:
    """A platform's answer: who it says is acting (None: it did not confirm anyone)."""

    source: str  # jupyterhub | github | gitlab | jenkins
    name: str | None
    why_not: str | None = None  # why the claim was not confirmed


def _http_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"expected an http(s) URL, got {url!r}")
    return url


def _get_json(url: str, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(_http_url(url), headers=headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # nosec B310
        return json.loads(response.read())


def _verified_claims(token: str, issuer: str) -> dict[str, Any]:
    """The token's claims once its signature (the issuer's published key), issuer, audience
    and expiry check out; raises otherwise."""
    import jwt

    configuration = _get_json(issuer.rstrip("/") + "/.well-known/openid-configuration", {})
    keys = jwt.PyJWKClient(_http_url(configuration["jwks_uri"]), timeout=int(TIMEOUT_S))
    key = keys.get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["RS256", "ES256"], audience=AUDIENCE,
                      issuer=issuer, options={"require": ["exp", "iss", "aud"]})


def jupyterhub(env: dict[str, str]) -> Vouched:
    claimed = env.get("JUPYTERHUB_USER", "")
    url, token = env.get("JUPYTERHUB_API_URL", ""), env.get("JUPYTERHUB_API_TOKEN", "")
    if not (url and token):
        return Vouched("jupyterhub", None, "no JupyterHub API token to ask the hub with")
    try:
        found = _get_json(url.rstrip("/") + "/user", {"Authorization": f"token {token}"})
    except (OSError, ValueError, KeyError) as exc:
        return Vouched("jupyterhub", None, f"the hub did not answer ({type(exc).__name__})")
    name = found.get("name") if isinstance(found, dict) else None
    if name != claimed:
        return Vouched("jupyterhub", None, f"the hub says the token is {name!r}'s")
    return Vouched("jupyterhub", name)


def github(env: dict[str, str]) -> Vouched:
    claimed = env.get("GITHUB_ACTOR", "")
    url = env.get("ACTIONS_ID_TOKEN_REQUEST_URL", "")
    bearer = env.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "")
    if env.get("GITHUB_ACTIONS") != "true" or not (url and bearer):
        return Vouched("github", None, "no GitHub Actions OIDC token (the workflow needs "
                                       "permissions: id-token: write)")
    separator = "&" if "?" in url else "?"
    try:
        token = _get_json(f"{url}{separator}audience={AUDIENCE}",
                          {"Authorization": f"bearer {bearer}"})["value"]
        claims = _verified_claims(token, env.get(ISSUER_VARIABLE) or GITHUB_ISSUER)
    except Exception as exc:  # noqa: BLE001 - any failure: the claim is not confirmed
        return Vouched("github", None, f"the OIDC token did not verify ({type(exc).__name__})")
    if claims.get("actor") != claimed:
        return Vouched("github", None, f"the OIDC token is {claims.get('actor')!r}'s")
    repository = env.get("GITHUB_REPOSITORY")
    if repository and claims.get("repository") != repository:
        return Vouched("github", None, "the OIDC token is another repository's")
    return Vouched("github", claimed)


def gitlab(env: dict[str, str]) -> Vouched:
    claimed = env.get("GITLAB_USER_LOGIN", "")
    token, server = env.get(GITLAB_TOKEN_VARIABLE, ""), env.get("CI_SERVER_URL", "")
    if not (token and server):
        return Vouched("gitlab", None, f"no GitLab ID token ({GITLAB_TOKEN_VARIABLE}, declared "
                                       f"with id_tokens and aud: {AUDIENCE})")
    try:
        claims = _verified_claims(token, env.get(ISSUER_VARIABLE) or server)
    except Exception as exc:  # noqa: BLE001 - any failure: the claim is not confirmed
        return Vouched("gitlab", None, f"the ID token did not verify ({type(exc).__name__})")
    if claims.get("user_login") != claimed:
        return Vouched("gitlab", None, f"the ID token is {claims.get('user_login')!r}'s")
    return Vouched("gitlab", claimed)


def jenkins(env: dict[str, str]) -> Vouched:
    claimed = env.get("BUILD_USER_ID", "")
    build, user, token = (env.get("BUILD_URL", ""), env.get("JENKINS_USER_ID", ""),
                          env.get("JENKINS_API_TOKEN", ""))
    if not (build and user and token):
        return Vouched("jenkins", None, "no Jenkins API credentials (JENKINS_USER_ID, "
                                        "JENKINS_API_TOKEN) to ask the build with")
    basic = b64encode(f"{user}:{token}".encode()).decode()
    query = urllib.parse.urlencode({"tree": "actions[_class,userId,causes[userId]]"})
    try:
        found = _get_json(f"{build.rstrip('/')}/api/json?{query}",
                          {"Authorization": f"Basic {basic}"})
    except (OSError, ValueError) as exc:
        return Vouched("jenkins", None, f"Jenkins did not answer ({type(exc).__name__})")
    actions = [a for a in found.get("actions", []) if isinstance(a, dict)]
    approvers = [a.get("userId") for a in actions if str(a.get("_class", "")).endswith(
        "ApproverAction")]
    starters = [c.get("userId") for a in actions for c in a.get("causes") or []
                if isinstance(c, dict)]
    if claimed not in (approvers or starters):
        return Vouched("jenkins", None, "the build records no such approver")
    return Vouched("jenkins", claimed)


def github_reviewer(env: dict[str, str], claimed: str, environment: str) -> Vouched:
    """Whether GitHub says ``claimed`` approved the workflow run's deployment to the GitHub
    environment ``environment`` (its required reviewers: ``GET
    /repos/{repo}/actions/runs/{run}/approvals``, asked with the job's token)."""
    token = env.get("GH_TOKEN") or env.get("GITHUB_TOKEN") or ""
    repository, run = env.get("GITHUB_REPOSITORY", ""), env.get("GITHUB_RUN_ID", "")
    api = env.get("GITHUB_API_URL") or "https://api.github.com"
    if env.get("GITHUB_ACTIONS") != "true" or not (token and repository and run):
        return Vouched("github", None, "no GitHub token and run to ask for the environment's "
                                       "approvals")
    try:
        approvals = _get_json(f"{api.rstrip('/')}/repos/{repository}/actions/runs/{run}/"
                              f"approvals", {"Authorization": f"Bearer {token}",
                                             "Accept": "application/vnd.github+json"})
    except (OSError, ValueError) as exc:
        return Vouched("github", None, f"GitHub did not answer ({type(exc).__name__})")
    for approval in approvals if isinstance(approvals, list) else []:
        login = (approval.get("user") or {}).get("login")
        names = {e.get("name") for e in approval.get("environments") or []}
        if login == claimed and environment in names and approval.get("state") == "approved":
            return Vouched("github", claimed)
    return Vouched("github", None, f"GitHub records no approval by {claimed!r} of "
                                   f"environment {environment!r} in this run")


# claimed by, most specific first: (variable that claims a name, the platform to ask)
PLATFORMS = (("JUPYTERHUB_USER", jupyterhub), ("GITHUB_ACTOR", github),
             ("GITLAB_USER_LOGIN", gitlab), ("BUILD_USER_ID", jenkins))


def vouch(env: dict[str, str] | None = None) -> tuple[str, Vouched] | None:
    """``(claimed name, the platform's answer)`` for the first platform whose variable claims
    a name, or None when none does."""
    env = dict(os.environ) if env is None else env
    for variable, ask in PLATFORMS:
        claimed = env.get(variable, "").strip()
        if claimed:
            return claimed, ask({**env, variable: claimed})
    return None
