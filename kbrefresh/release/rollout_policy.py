"""A knowledge base's rollout policy: steps, durations, sample minimums, thresholds, approval.

Read from YAML (like the gate's acceptance policy). Durations are seconds or text with a
unit: ``"90s"``, ``"30m"``, ``"6h"``, ``"2d"``, ``"1w"``; tests and demos scale them to
seconds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from kbrefresh._text import load_yaml
from kbrefresh.errors import ConfigError
from kbrefresh.release.analysis import CanaryLimits

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(value: Any) -> Any:
    """Return seconds for ``"2d"``-style text; numbers pass through for pydantic to check."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"duration {value!r} is invalid; expected seconds or e.g. '30m', '2d'")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class RolloutPolicy(BaseModel):
    """How a KB's candidates reach users. Defaults follow the playbook."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: tuple[float, ...] = Field(default=(5.0, 50.0, 100.0), min_length=1)
    min_step_seconds: Seconds = 3600.0
    min_samples: int = Field(default=200, ge=1, description="candidate searches per step")
    min_feedback: int = Field(default=30, ge=0, description="feedback per arm per step; 0 skips")
    ab_percent: float = Field(default=50.0, gt=0, lt=100)
    ab_seconds: Seconds = 7 * 86400.0
    ab_min_samples: int = Field(default=1000, ge=2, description="searches per arm")
    ab_primary: Literal["thumbs_up_rate", "rating", "low_similarity_rate", "error_rate"] = (
        "thumbs_up_rate")
    alpha: float = Field(default=0.05, gt=0, lt=1)
    require_approval: bool = False
    approval_timeout_seconds: Seconds = 86400.0
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    max_error_rate_increase: float = Field(default=0.02, ge=0, le=1)
    max_latency_ratio: float = Field(default=2.0, ge=1)
    latency_slack_ms: float = Field(default=20.0, ge=0)
    max_latency_ms: float = Field(default=5000.0, gt=0)
    min_latency_effect_ms: float = Field(default=5.0, ge=0)
    max_low_similarity_increase: float = Field(default=0.10, ge=0, le=1)
    low_similarity: float = Field(default=0.3, ge=-1, le=1)
    max_satisfaction_drop: float = Field(default=0.10, ge=0, le=1)
    golden_metric: str = "hit@5"
    min_golden_accuracy: float | None = Field(default=0.75, ge=0, le=1)

    @model_validator(mode="after")
    def _steps_ramp(self) -> RolloutPolicy:
        steps = list(self.steps)
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError(f"steps {steps!r} must rise strictly, each above 0 and at most 100")
        return self

    def limits(self) -> CanaryLimits:
        return CanaryLimits(
            min_samples=self.min_samples, min_feedback=self.min_feedback,
            max_error_rate=self.max_error_rate, max_error_rate_increase=self.max_error_rate_increase,
            max_latency_ratio=self.max_latency_ratio, latency_slack_ms=self.latency_slack_ms,
            max_latency_ms=self.max_latency_ms,
            max_low_similarity_increase=self.max_low_similarity_increase,
            max_satisfaction_drop=self.max_satisfaction_drop, low_similarity=self.low_similarity,
            min_golden_accuracy=self.min_golden_accuracy, alpha=self.alpha,
        )


def parse_rollout_policy(data: Any, *, source: str = "policy") -> RolloutPolicy:
    """Validate a mapping into a policy; every problem on one line."""
    try:
        return RolloutPolicy.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source}: invalid rollout policy: {problems}") from exc


def _describe(error: ErrorDetails) -> str:
    where = ".".join(str(p) for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] not in ("value_error", "extra_forbidden", "missing"):
        message += f", got {error['input']!r}"
    return f"{where}: {message}" if where else message


def load_rollout_policy(path: str | Path) -> RolloutPolicy:
    """Read a YAML rollout policy file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read rollout policy {str(path)!r}: {exc.strerror}") from exc
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: invalid YAML ({exc})") from exc
    return parse_rollout_policy(data, source=path.name)
