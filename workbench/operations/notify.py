"""Notifications: Slack-compatible incoming webhooks and generic JSON webhooks.

Webhook URLs come from secrets (environment variables named in ``pipeline.yaml``), never from a
file. Sending happens on a background thread, in order; a failed or slow webhook is logged as a
warning and never fails or stalls a release beyond its timeout.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from workbench.config import Notification
from workbench.deploy.local import http_url
from workbench.events import Event

log = logging.getLogger("workbench.notify")

# progress events and the notification class each belongs to
EVENT_CLASSES = {"run_started": "run", "run_finished": "run", "stage_finished": "stage",
                 "stage_skipped": "stage", "gate_awaiting": "gate", "alias_moved": "gate",
                 "deployed": "deploy", "rolled_back": "rollback"}


def slack_text(event: Event) -> str:
    """A one-line summary for Slack."""
    return f"workbench: {event.describe() or event.kind}"


def payload(notification: Notification, event: Event) -> dict[str, Any]:
    if notification.kind == "slack":
        return {"text": slack_text(event)}
    return {"source": "workbench", "class": EVENT_CLASSES.get(event.kind), **event.to_dict()}


class Notifier:
    """A run listener that queues events for the configured webhooks; ``close()`` waits for
    them (bounded)."""

    def __init__(self, notifications: list[Notification],
                 environ: Mapping[str, str] | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.warn = warn or log.warning
        self.targets: list[tuple[Notification, str]] = []
        for notification in notifications:
            url = environ.get(notification.url_secret, "")
            if not url:
                self.warn(f"notification {notification.kind}: secret "
                          f"{notification.url_secret} is not set; not sending")
                continue
            self.targets.append((notification, url))
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.sent = self.failed = 0

    def on_event(self, event: Event) -> None:
        kind = EVENT_CLASSES.get(event.kind)
        if kind is None or not event.public or not any(kind in n.events
                                                       for n, _ in self.targets):
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="workbench-notify",
                                            daemon=True)
            self._thread.start()
        self._queue.put(event)

    def _work(self) -> None:
        while (event := self._queue.get()) is not None:
            kind = EVENT_CLASSES[event.kind]
            for notification, url in self.targets:
                if kind in notification.events:
                    self._send(notification, url, event)

    def _send(self, notification: Notification, url: str, event: Event) -> None:
        body = json.dumps(payload(notification, event), default=str).encode()
        try:
            request = urllib.request.Request(http_url(url), data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=notification.timeout  # nosec B310
                                        ) as response:
                response.read()
            self.sent += 1
        except (OSError, ValueError) as exc:  # never the URL: it is a secret
            self.failed += 1
            status = f" {exc.code}" if hasattr(exc, "code") else ""  # HTTPError
            self.warn(f"notification {notification.kind} ({notification.url_secret}) for "
                      f"{event.kind} failed: {type(exc).__name__}{status}")

    def __bool__(self) -> bool:
        return bool(self.targets)

    def close(self, timeout: float = 15.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None


def notifier_for(project: Any, warn: Callable[[str], None] | None = None) -> Notifier | None:
    """The project's notifier, or None when ``pipeline.yaml`` configures no notifications
    (or cannot be read: the command itself reports that)."""
    from workbench.config import ConfigError, load_config

    try:
        notifications = load_config(project.configs).pipeline.notifications
    except (ConfigError, OSError):
        return None
    return Notifier(notifications, warn=warn) if notifications else None
