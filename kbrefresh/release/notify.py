"""Tell people what happened to a knowledge base: publish, rollback, skipped run, proven.

A :class:`Notice` names the KB, the versions, the reason, key metrics and links (MLflow
run, Prefect flow run). :func:`send` posts it as JSON to the configured webhook and
returns the problems it met instead of raising: a notification that cannot be
delivered must never fail the flow that had something to say. Prefect notification
blocks (Slack, Teams, email, ...) are sent by ``tasks.notify``, because this core never
imports Prefect; both use :meth:`Notice.text` for the human-readable message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from kbrefresh.settings import Settings

logger = logging.getLogger(__name__)

KINDS = ("published", "rolled_back", "rollback_manual", "skipped", "rollout_aborted",
         "rollout_promoted", "proven", "test")
_TITLES = {
    "published": "published", "rolled_back": "rolled back automatically",
    "rollback_manual": "rolled back by hand", "skipped": "refresh skipped",
    "rollout_aborted": "rollout aborted", "rollout_promoted": "rollout promoted",
    "proven": "proven", "test": "test notification",
}


@dataclass(frozen=True)
class Notice:
    """One thing worth telling on-call about a knowledge base."""

    kind: str
    kb: str
    versions: Mapping[str, int | None]
    reason: str
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    links: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown notice kind {self.kind!r}; expected one of {KINDS}")

    @property
    def title(self) -> str:
        return f"kbrefresh: {self.kb!r} {_TITLES[self.kind]}"

    def text(self) -> str:
        """A plain-text message: title, versions, reason, metrics, links, one per line."""
        lines = [self.title]
        if self.versions:
            lines.append("versions: " + ", ".join(
                f"{name} v{v}" if v is not None else f"{name} none"
                for name, v in self.versions.items()))
        lines.append(f"reason: {self.reason}")
        if self.metrics:
            lines.append("metrics: " + ", ".join(
                f"{name} {_shown(value)}" for name, value in self.metrics.items()))
        lines.extend(f"{name}: {url}" for name, url in self.links.items())
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        """The JSON body posted to the webhook (``text`` included for chat tools)."""
        return asdict(self) | {"title": self.title, "text": self.text(),
                               "sent_at": datetime.now(UTC).isoformat()}


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


class _HideSecret(logging.Filter):
    """Drop log records that would print ``secret`` (other records pass untouched)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        return self.secret not in record.getMessage()


def send(settings: Settings, notice: Notice, *,
         transport: httpx.BaseTransport | None = None) -> list[str]:
    """Post ``notice`` to ``settings.notify_webhook_url``; return problems, never raise.

    The webhook URL is a secret (chat webhooks carry their token in the path), so
    problems name only its host.
    """
    if settings.notify_webhook_url is None:
        return []
    url = settings.notify_webhook_url.get_secret_value()
    host = httpx.URL(url).host or "the webhook"
    hide = _HideSecret(url)
    # httpx logs every request's full URL at INFO ("HTTP Request: POST <url> ..."): the token.
    httpx_logger = logging.getLogger("httpx")
    httpx_logger.addFilter(hide)
    try:
        with httpx.Client(timeout=settings.notify_timeout_seconds, transport=transport) as client:
            response = client.post(url, json=notice.payload())
    except httpx.HTTPError as exc:
        problem = f"webhook at {host} unreachable: {type(exc).__name__}"
        logger.warning("notification %r not delivered: %s", notice.kind, problem)
        return [problem]
    finally:
        httpx_logger.removeFilter(hide)
    if response.is_success:
        return []
    problem = f"webhook at {host} answered {response.status_code}"
    logger.warning("notification %r not delivered: %s", notice.kind, problem)
    return [problem]


def block_names(settings: Settings, extra: tuple[str, ...] = ()) -> list[str]:
    """Prefect notification block names from settings plus a policy's, in order, once each."""
    names = [n.strip() for n in settings.notify_blocks.split(",") if n.strip()]
    return list(dict.fromkeys([*names, *extra]))
