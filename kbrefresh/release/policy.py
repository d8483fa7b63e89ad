"""Per-KB release policy: when the post-deploy monitor checks, what rolls back, how long to prove.

Defaults are the playbook's: a check every 2 hours for the first 24 hours, then daily
until the 7-day validation period ends; roll back when the error rate passes 5%, p95
latency passes 5 s, golden accuracy falls more than 10 points below the value the
version was validated with (or below an absolute floor, when set), or satisfaction
drops by more than 10% (critical band; 5-10% is a warning). Durations accept seconds
or ISO 8601 (``PT2H``), so demos and tests can scale a week down to seconds.
"""

from __future__ import annotations

import json
import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kbrefresh._text import load_yaml
from kbrefresh.errors import ConfigError


class ReleasePolicy(BaseModel):
    """What the post-deploy monitor of one knowledge base does and when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    first_day_interval: timedelta = Field(default=timedelta(hours=2), gt=timedelta(0))
    first_day: timedelta = Field(default=timedelta(hours=24), gt=timedelta(0))
    daily_interval: timedelta = Field(default=timedelta(days=1), gt=timedelta(0))
    validation_period: timedelta = Field(default=timedelta(days=7), gt=timedelta(0))

    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    max_p95_latency_ms: float = Field(default=5000.0, gt=0)
    accuracy_margin: float = Field(default=0.10, ge=0, le=1)
    accuracy_floor: float | None = Field(default=None, ge=0, le=1)
    accuracy_metric: str = "hit@5"
    golden_check: bool = True
    satisfaction_warning_drop: float = Field(default=0.05, gt=0, lt=1)
    satisfaction_critical_drop: float = Field(default=0.10, gt=0, lt=1)
    min_searches: int = Field(default=20, ge=1)
    min_feedback: int = Field(default=10, ge=1)
    max_low_similarity_rate: float | None = Field(default=None, ge=0, le=1)
    low_similarity_cutoff: float = Field(default=0.3, ge=-1, le=1)
    anomaly_z: float = Field(default=3.5, gt=0)
    reference_window: timedelta = Field(default=timedelta(days=7), gt=timedelta(0))

    archive_retention: timedelta | None = Field(default=timedelta(days=365))
    notify_blocks: tuple[str, ...] = ()
    monitor_deployment: str = Field(default="post-deploy-monitor/post-deploy-monitor",
                                    pattern=r"^[^/]+/[^/]+$")

    @model_validator(mode="after")
    def _bands_in_order(self) -> ReleasePolicy:
        if self.satisfaction_warning_drop >= self.satisfaction_critical_drop:
            raise ValueError(
                f"satisfaction_warning_drop ({self.satisfaction_warning_drop}) must be below "
                f"satisfaction_critical_drop ({self.satisfaction_critical_drop})")
        if self.first_day_interval > self.first_day:
            raise ValueError(f"first_day_interval ({self.first_day_interval}) is longer than "
                             f"first_day ({self.first_day})")
        return self


def load_release_policy(path: str | Path) -> ReleasePolicy:
    """Read a policy from YAML, TOML or JSON; an optional ``release:`` table is unwrapped.

    Raises:
        ConfigError: the file is missing, unreadable or has unknown or invalid fields.
    """
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read release policy {str(path)!r}: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = load_yaml(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"release policy {str(path)!r} is not valid {path.suffix[1:] or 'YAML'}: "
                          f"{exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("release"), dict):
        data = data["release"]
    if not isinstance(data, dict):
        raise ConfigError(f"release policy {str(path)!r} must be a mapping of fields")
    try:
        return ReleasePolicy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'policy'}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"release policy {str(path)!r} is invalid: {problems}") from exc


def check_times(published_at: datetime, policy: ReleasePolicy) -> list[datetime]:
    """Return when to check a version published at ``published_at``.

    Every ``first_day_interval`` through ``first_day``, then every ``daily_interval``
    until ``validation_period`` has passed; the last check is at the period's end.
    """
    if published_at.tzinfo is None:
        raise ConfigError(f"published_at must be timezone-aware; got {published_at!r}")
    offsets: list[timedelta] = []
    step = policy.first_day_interval
    while step <= min(policy.first_day, policy.validation_period):
        offsets.append(step)
        step += policy.first_day_interval
    step = (offsets[-1] if offsets else timedelta(0)) + policy.daily_interval
    while step < policy.validation_period:
        offsets.append(step)
        step += policy.daily_interval
    if not offsets or offsets[-1] < policy.validation_period:
        offsets.append(policy.validation_period)
    return [published_at + offset for offset in offsets]
