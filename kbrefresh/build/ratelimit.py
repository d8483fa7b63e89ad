"""Provider rate limits as token buckets: how many slots, how fast they come back.

A limit of ``L`` per minute becomes a bucket of ``burst = ceil(L * BURST_SECONDS / 60)``
slots that refills at ``(L - burst) / 60`` slots a second. Whatever the order of
requests, any 60-second window then admits at most ``burst + 60 * refill = L``, so
several flow runs that share the bucket stay under the provider's per-minute limit;
in a window of ``T`` seconds at most ``burst + T * refill`` pass. The buckets live
on the Prefect server as global concurrency limits with ``slot_decay_per_second``
(``tasks.embedding`` creates and acquires them); this module only does the sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kbrefresh._text import tokens_for_chars
from kbrefresh.errors import ConfigError

if TYPE_CHECKING:
    from kbrefresh.settings import Settings

#: Seconds of traffic a bucket may let through at once (OpenAI, too, enforces
#: per-minute limits over shorter periods, so a small burst is the safe shape).
BURST_SECONDS = 6.0
REQUEST_UNIT = 100


@dataclass(frozen=True)
class Bucket:
    """One global rate limit: ``name``, ``slots`` at most in flight, refilled ``per_second``."""

    name: str
    per_minute: int
    slots: int
    per_second: float
    #: Server slots per request or token. Prefect decays ``floor(rate * seconds since the
    #: limit last changed)`` and every denied attempt counts as a change, so with many
    #: waiters a small rate rounds to 0 and stalls (measured: 27% of the configured
    #: rate). Counting a request as 100 slots keeps the rounding fine-grained.
    unit: int = 1

    @property
    def server_limit(self) -> int:
        return self.slots * self.unit

    @property
    def server_decay(self) -> float:
        return self.per_second * self.unit

    def admits_at_most(self, seconds: float) -> float:
        """Return the most a window of ``seconds`` (<= 60) can admit."""
        return self.slots + seconds * self.per_second


def bucket(name: str, per_minute: int, unit: int = 1) -> Bucket:
    """Return the bucket that keeps every 60-second window at or under ``per_minute``."""
    if per_minute < 2:
        raise ConfigError(f"a per-minute limit must be at least 2, got {per_minute!r}")
    slots = max(1, math.ceil(per_minute * BURST_SECONDS / 60))
    slots = min(slots, per_minute - 1)
    return Bucket(name, per_minute, slots, (per_minute - slots) / 60, unit)


@dataclass(frozen=True)
class RateLimits:
    """The request and token buckets of one provider; ``None`` means unlimited."""

    provider: str
    requests: Bucket | None
    tokens: Bucket | None

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None


def rate_limits(settings: Settings, provider: str) -> RateLimits:
    """Return the buckets ``settings`` ask for, named ``embed-<provider>-requests|tokens``."""
    rpm, tpm = settings.embed_requests_per_minute, settings.embed_tokens_per_minute
    return RateLimits(
        provider,
        bucket(f"embed-{provider}-requests", rpm, REQUEST_UNIT) if rpm is not None else None,
        bucket(f"embed-{provider}-tokens", tpm) if tpm is not None else None,
    )


def check_limits(settings: Settings) -> None:
    """Refuse a token limit whose bucket cannot hold one full batch (it would wait forever).

    Raises:
        ConfigError: ``embed_batch_max_chars`` asks for more tokens than the bucket holds.
    """
    limits = rate_limits(settings, settings.embedder)
    if limits.tokens is None:
        return
    largest = tokens_for_chars(settings.embed_batch_max_chars)
    if largest > limits.tokens.slots:
        most = limits.tokens.slots * 4
        raise ConfigError(
            f"embed_tokens_per_minute={limits.tokens.per_minute!r} lets at most "
            f"{limits.tokens.slots} tokens through at once, but one batch may carry "
            f"{largest} tokens (embed_batch_max_chars={settings.embed_batch_max_chars!r}); "
            f"lower KBREFRESH_EMBED_BATCH_MAX_CHARS to {most} or less, or raise the token limit"
        )
