"""Secrets: read from the environment by name, never parameters, redacted before archiving.

A run knows the configured secret names (``secrets:`` in ``configs/pipeline.yaml``); their values
come from the environment, which kernels inherit. Before an executed notebook is archived every
string in it — sources, outputs, metadata, keys — has each known value replaced by
``[REDACTED:NAME]``; then the serialised file is scanned again, also for the value's JSON-escaped,
URL-quoted and base64 forms, and archiving fails if any remains.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, unquote

from workbench.errors import WorkbenchError

MIN_LENGTH = 8  # shorter values would redact ordinary text; they are refused instead
# Credentials a run may hold for the stores it writes to (a shared archive's S3 key, a team
# MLflow's password or token): known secrets whether or not ``secrets:`` names them; a value
# too short to tell apart from text is left alone rather than refused (it is not the project's).
CREDENTIAL_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class SecretError(WorkbenchError, RuntimeError):
    """A secret would be passed as a parameter, or remains in what is about to be archived."""


@dataclass(frozen=True)
class Secrets:
    """Known secret values by name (only the ones set in the environment)."""

    values: dict[str, str]

    @classmethod
    def from_environment(cls, names: Iterable[str]) -> Secrets:
        found: dict[str, str] = {}
        for name in names:
            value = os.environ.get(name)
            if not value:
                continue
            if len(value) < MIN_LENGTH:
                raise SecretError(f"secret {name} is shorter than {MIN_LENGTH} characters; it "
                                  f"cannot be told apart from ordinary text")
            found[name] = value
        for name in CREDENTIAL_VARIABLES:
            value = os.environ.get(name)
            if value and len(value) >= MIN_LENGTH and name not in found:
                found[name] = value
        return cls(found)

    def __bool__(self) -> bool:
        return bool(self.values)

    def marker(self, name: str) -> str:
        return f"[REDACTED:{name}]"

    def redact_text(self, text: str) -> str:
        for name, value in sorted(self.values.items(), key=lambda kv: -len(kv[1])):
            if value in text:
                text = text.replace(value, self.marker(name))
        return text

    def redact(self, data: Any) -> Any:
        """``data`` (JSON-like) with every occurrence of a secret value replaced."""
        if isinstance(data, str):
            return self.redact_text(data)
        if isinstance(data, list):
            return [self.redact(item) for item in data]
        if isinstance(data, dict):
            return {self.redact_text(k) if isinstance(k, str) else k: self.redact(v)
                    for k, v in data.items()}
        return data

    def forms(self, value: str) -> set[str]:
        """The ways a value can appear in a serialised file."""
        raw = value.encode()
        return {value, json.dumps(value)[1:-1], quote(value, safe=""), quote_plus(value),
                base64.b64encode(raw).decode().rstrip("="),
                base64.urlsafe_b64encode(raw).decode().rstrip("=")}

    def found_in(self, text: str) -> list[str]:
        """Names of the secrets whose value (in any known form) occurs in ``text``, also once
        HTML character references (``&#115;``, ``&amp;``) and percent escapes are decoded."""
        if not self.values:
            return []
        views = decoded_views(text)
        return sorted(name for name, value in self.values.items()
                      if any(form in view for form in self.forms(value) for view in views))

    def check_config(self, sources: dict[str, str]) -> None:
        """Refuse a secret whose value appears in a configuration file: the redacted copy of
        the configuration that every run keeps could then never be read back."""
        for file, text in sorted(sources.items()):
            leaked = self.found_in(text)
            if leaked:
                raise SecretError(f"configs/{file} contains the value of secret {leaked[0]}; a "
                                  f"secret's value must not appear in the configuration (choose "
                                  f"another value, or rename what it collides with)")

    def check_parameters(self, stage: str, parameters: dict[str, Any]) -> None:
        """Refuse to pass a secret's value as a papermill parameter."""
        leaked = self.found_in(json.dumps(parameters, default=str))
        if leaked:
            raise SecretError(f"stage {stage}: a parameter holds the value of secret "
                              f"{leaked[0]}; stages read secrets from the environment "
                              f"(os.environ[{leaked[0]!r}]), never as parameters")


def decoded_views(text: str) -> list[str]:
    """``text`` and what it says once decoded the ways a page or a URL hides characters: HTML
    character references (twice: ``&amp;#115;``) and percent escapes."""
    views = [text]
    if "&" in text:
        once = html.unescape(text)
        views += [once, html.unescape(once)]
    if "%" in text:
        views.append(unquote(text))
    return views


def redact_notebook_text(text: str, secrets: Secrets, label: str) -> str:
    """A notebook file's text with secrets redacted; raise if any form of one remains."""
    if not secrets:
        return text
    cleaned = json.dumps(secrets.redact(json.loads(text)), indent=1, ensure_ascii=False) + "\n"
    remaining = secrets.found_in(cleaned)
    if remaining:
        raise SecretError(f"{label}: the value of secret {remaining[0]} remains after "
                          f"redaction (in an encoded form); not archived")
    return cleaned
