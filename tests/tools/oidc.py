"""A stand-in for a CI platform's OpenID Connect issuer, on 127.0.0.1.

GitHub Actions cannot run here, so its OIDC side is emulated exactly as far as workbench uses
it: ``/.well-known/openid-configuration`` names the ``jwks_uri``, ``/jwks`` publishes the RSA
key, and ``/token?audience=A`` (GitHub's ACTIONS_ID_TOKEN_REQUEST_URL) answers ``{"value":
JWT}`` for the bearer token's holder: the test gives each actor's token as the bearer, and the
JWT carries ``actor`` (GitHub) and ``user_login`` (GitLab) claims, signed RS256. ``/wrong``
mints a token with another key, for tests of a forged token. As GitHub's REST API it answers
``/repos/{repo}/actions/runs/{run}/approvals`` with :attr:`Issuer.approvals` (the environment
reviewers' decisions the test grants).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class Issuer:
    """The issuer's keys and its server; a context manager that stops it."""

    def __init__(self, repository: str = "team/project") -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.repository = repository
        self.approvals: list[dict[str, Any]] = []  # as GitHub lists a run's approvals
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlparse(self.path)
                if url.path == "/.well-known/openid-configuration":
                    self._json({"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"})
                elif url.path == "/jwks":
                    public = json.loads(RSAAlgorithm.to_jwk(issuer.key.public_key()))
                    self._json({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]})
                elif url.path.startswith(f"/repos/{issuer.repository}/actions/runs/") and \
                        url.path.endswith("/approvals"):
                    self._json(issuer.approvals)
                elif url.path in ("/token", "/wrong"):
                    bearer = self.headers.get("Authorization", "").partition(" ")[2]
                    audience = parse_qs(url.query).get("audience", ["workbench"])[0]
                    key = issuer.key if url.path == "/token" else issuer.other
                    self._json({"value": issuer.mint(bearer, audience, key)})
                else:
                    self.send_error(404)

            def _json(self, data: Any) -> None:
                body = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def mint(self, actor: str, audience: str = "workbench", key: Any = None) -> str:
        now = int(time.time())
        claims = {"iss": self.url, "aud": audience, "iat": now, "nbf": now, "exp": now + 600,
                  "actor": actor, "user_login": actor, "repository": self.repository,
                  "sub": f"repo:{self.repository}:ref:refs/heads/main"}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": "k1"})

    def approve(self, environment: str, login: str, comment: str = "") -> None:
        """A required reviewer approves this run's deployment to a GitHub environment."""
        self.approvals.append({"user": {"login": login}, "state": "approved", "comment": comment,
                               "environments": [{"name": environment}]})

    def github(self, actor: str, forged: bool = False) -> dict[str, str]:
        """The variables a GitHub Actions job with ``id-token: write`` has, for ``actor``."""
        return {"GITHUB_ACTIONS": "true", "GITHUB_ACTOR": actor,
                "GITHUB_REPOSITORY": self.repository, "GITHUB_RUN_ID": "4242",
                "GITHUB_API_URL": self.url,
                "ACTIONS_ID_TOKEN_REQUEST_URL": f"{self.url}/{'wrong' if forged else 'token'}",
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN": actor, "WORKBENCH_OIDC_ISSUER": self.url}

    def __enter__(self) -> Issuer:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
