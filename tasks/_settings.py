"""Settings for flows and tasks: the environment, plus secrets from Prefect Secret blocks.

Prefect convention: a deployment keeps its secrets in Secret blocks rather than in job
environments. A secret setting left unset in the environment is read from its block:

    kbrefresh-openai-api-key      -> KBREFRESH_OPENAI_API_KEY (or OPENAI_API_KEY)
    kbrefresh-database-url        -> KBREFRESH_DATABASE_URL
    kbrefresh-notify-webhook-url  -> KBREFRESH_NOTIFY_WEBHOOK_URL

The environment wins when both are set (local runs and tests stay explicit). Only this
layer knows about blocks: the core receives plain ``Settings`` and never imports Prefect.
"""

from __future__ import annotations

import os
from typing import Any

from prefect.blocks.system import Secret
from prefect.exceptions import ObjectNotFound

from kbrefresh.errors import ConfigError
from kbrefresh.settings import Settings, load_settings

__all__ = ["SECRET_BLOCKS", "flow_settings", "secret_overrides"]

# setting -> (block name, environment variables that take precedence)
SECRET_BLOCKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "openai_api_key": ("kbrefresh-openai-api-key", ("KBREFRESH_OPENAI_API_KEY", "OPENAI_API_KEY")),
    "database_url": ("kbrefresh-database-url", ("KBREFRESH_DATABASE_URL",)),
    "notify_webhook_url": ("kbrefresh-notify-webhook-url", ("KBREFRESH_NOTIFY_WEBHOOK_URL",)),
}


def secret_overrides() -> dict[str, str]:
    """Return the secret settings found in Secret blocks and not set in the environment."""
    found: dict[str, str] = {}
    for field, (block, variables) in SECRET_BLOCKS.items():
        if any(os.environ.get(name) for name in variables):
            continue
        value = _read_secret(block)
        if value is not None:
            found[field] = value
    return found


def _read_secret(name: str) -> str | None:
    try:
        block: Any = Secret.load(name, _sync=True)  # type: ignore[call-arg]
    except ValueError as exc:
        if isinstance(exc.__cause__, ObjectNotFound):
            return None  # no such block: the setting stays unset
        raise
    value = block.get()
    if not isinstance(value, str) or not value:
        # The value is a secret: only its type is named.
        raise ConfigError(f"Prefect Secret block {name!r} must hold a non-empty string, "
                          f"got a {type(value).__name__}")
    return value


def flow_settings(**overrides: Any) -> Settings:
    """Return checked settings: environment, then Secret blocks, then ``overrides``.

    Raises:
        ConfigError: a bad setting (secrets' values hidden) or a Secret block of the wrong type.
    """
    return load_settings(**{**secret_overrides(), **overrides})
