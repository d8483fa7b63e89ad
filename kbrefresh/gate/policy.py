"""Acceptance policy for the validation gate, read from YAML or TOML.

Shaped like TFMA metric thresholds: each rule names a metric and a slice and sets
*value* bounds (always checked) and/or a *change* threshold (the regression
tolerated against the live baseline; skipped for a first version). Metrics
other than latency are on a 0–1 scale, so "2 points" is ``absolute: 0.02``.

A change threshold with both ``absolute`` and ``relative`` must meet both:

- ``higher_is_better``: candidate ≥ live − absolute and ≥ live × (1 − relative);
- ``lower_is_better``: candidate ≤ live + absolute and ≤ live × (1 + relative) + slack.

``slack`` (default 0; 3 ms on the default latency rule) widens a relative threshold
by an absolute amount, so noise on tiny values cannot fail it.

``slice: null`` (or absent) is the overall value, ``"*"`` every slice, any other
string that one slice.

Change thresholds on quality metrics (means of per-query scores) are judged on the
paired difference candidate − live and its ``confidence`` interval: a rule fails
only when the whole interval lies below the tolerated drop, i.e. the drop is beyond
the tolerance with that confidence. Per-slice rules share that confidence among
the slices that can fail (Bonferroni: 13 such slices are judged at 99.6% each), so a
harmless refresh fails by luck at most 5% of the time in all. A slice under ``min_slice_size`` queries is
reported but cannot fail alone, unless it has at least ``catastrophic_min_queries``
queries and the interval shows a loss of ``catastrophic_drop`` or more (the whole
interval beyond it): that fails any slice, whatever its size and the tolerance.

Disparity rules compare the gap between the best and worst slice (slices of at
least ``min_slice_size`` queries): ``max_increase`` fails when the candidate's gap
exceeds live's by more than it, with the same confidence; ``max`` is an opt-in
absolute cap on the candidate's gap (off by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from kbrefresh._text import load_settings_file
from kbrefresh.errors import ConfigError
from kbrefresh.gate.metrics import LATENCY_P95, MRR, metric_names, score_names

ALL_SLICES = "*"
# p95 differences below this are scheduler and cache noise at millisecond latencies.
LATENCY_SLACK_MS = 3.0
POLICY_SUFFIXES = (".toml", ".yaml", ".yml")
_SCORE_PREFIXES = ("hit@", "recall@", "ndcg@", "precision@", "f1@", MRR)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChangeThreshold(_Strict):
    """The regression tolerated against the live value of the same metric."""

    direction: Literal["higher_is_better", "lower_is_better"]
    absolute: float | None = Field(default=None, ge=0)
    relative: float | None = Field(default=None, ge=0)
    # Added to a relative threshold: below it a difference is measurement noise
    # (a 1.7 ms vs 3.7 ms p95 on a small KB is not a 2x regression).
    slack: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _some_threshold(self) -> ChangeThreshold:
        if self.absolute is None and self.relative is None:
            raise ValueError("set 'absolute', 'relative' or both")
        return self


class MetricRule(_Strict):
    """Bounds and/or a change threshold on one metric, overall or per slice."""

    metric: str
    slice: str | None = Field(default=None, min_length=1)
    lower_bound: float | None = Field(default=None, ge=0)
    upper_bound: float | None = Field(default=None, ge=0)
    change: ChangeThreshold | None = None

    @model_validator(mode="after")
    def _consistent(self) -> MetricRule:
        if self.lower_bound is None and self.upper_bound is None and self.change is None:
            raise ValueError("set 'lower_bound', 'upper_bound' or 'change'")
        if (
            self.lower_bound is not None
            and self.upper_bound is not None
            and self.lower_bound > self.upper_bound
        ):
            raise ValueError(
                f"lower_bound {self.lower_bound!r} is above upper_bound {self.upper_bound!r}"
            )
        return self


class DisparityRule(_Strict):
    """How much the gap (max − min across slices) of one metric may grow, or may be."""

    metric: str
    max_increase: float | None = Field(default=0.02, ge=0)
    max: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _some_limit(self) -> DisparityRule:
        if self.max_increase is None and self.max is None:
            raise ValueError("set 'max_increase', 'max' or both")
        return self


def default_rules(k: int = 5, ndcg_k: int = 10) -> tuple[MetricRule, ...]:
    """Return the playbook rules: quality ≥ live − 0.02 overall and per slice, p95 ≤ 2× live."""
    tolerance = ChangeThreshold(direction="higher_is_better", absolute=0.02)
    rules = [MetricRule(metric=f"hit@{k}", lower_bound=0.5)]
    for metric in score_names(k, ndcg_k):
        rules.append(MetricRule(metric=metric, change=tolerance))
        rules.append(MetricRule(metric=metric, slice=ALL_SLICES, change=tolerance))
    latency = ChangeThreshold(direction="lower_is_better", relative=1.0, slack=LATENCY_SLACK_MS)
    rules.append(MetricRule(metric=LATENCY_P95, change=latency))
    return tuple(rules)


class AcceptancePolicy(_Strict):
    """What a candidate version must meet before it may replace the live one."""

    k: int = Field(default=5, ge=1, le=1000)
    ndcg_k: int = Field(default=10, ge=1, le=1000)
    rules: tuple[MetricRule, ...] = Field(
        default_factory=lambda data: default_rules(data["k"], data["ndcg_k"])
    )
    max_slice_disparity: tuple[DisparityRule, ...] = Field(
        default_factory=lambda data: (DisparityRule(metric=f"hit@{data['k']}"),)
    )
    max_size_ratio: float | None = Field(default=2.0, gt=0)
    require_smoke: bool = True
    # Noise handling of change and disparity rules (see the module docstring).
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    min_slice_size: int = Field(default=30, ge=1)
    catastrophic_drop: float | None = Field(default=0.10, gt=0, le=1)
    catastrophic_min_queries: int = Field(default=10, ge=1)
    resamples: int = Field(default=2000, ge=100, le=100_000)
    seed: int = Field(default=0, ge=0)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return metric_names(self.k, self.ndcg_k)

    @model_validator(mode="after")
    def _known_metrics(self) -> AcceptancePolicy:
        problems: list[str] = []
        for index, rule in enumerate(self.rules):
            absolute = rule.change.absolute if rule.change else None
            limits = (rule.lower_bound, rule.upper_bound, absolute)
            problems += self._check_metric(f"rules[{index}]", rule.metric, limits)
        for index, disparity in enumerate(self.max_slice_disparity):
            problems += self._check_metric(
                f"max_slice_disparity[{index}]", disparity.metric,
                (disparity.max, disparity.max_increase),
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _check_metric(self, where: str, metric: str, limits: tuple[float | None, ...]) -> list[str]:
        if metric not in self.metric_names:
            valid = ", ".join(self.metric_names)
            return [f"{where}.metric: unknown metric {metric!r}; valid metrics: {valid}"]
        if metric.startswith(_SCORE_PREFIXES) and any(v is not None and v > 1 for v in limits):
            # Catches "2 points" written as 2 instead of 0.02.
            return [f"{where}: {metric!r} is on a 0–1 scale; thresholds must be ≤ 1"]
        return []


def default_policy() -> AcceptancePolicy:
    """Return the playbook policy (k=5, 2 points at 95% confidence, p95 and size ≤ 2× live)."""
    return AcceptancePolicy()


def parse_policy(data: Any, source: str = "policy") -> AcceptancePolicy:
    """Validate a policy mapping; ``source`` names it in error messages.

    Raises:
        ConfigError: naming the offending key path and what was expected.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of policy keys, got {type(data).__name__}")
    try:
        return AcceptancePolicy.model_validate(data)
    except ValidationError as exc:
        problems = [
            _describe(error)
            for error in exc.errors()
            if error["type"] != "default_factory_not_called"
        ]
        raise ConfigError(f"{source}: invalid acceptance policy: " + "; ".join(problems)) from exc


def load_policy(path: str | Path) -> AcceptancePolicy:
    """Read an acceptance policy from a ``.yaml``, ``.yml`` or ``.toml`` file.

    Raises:
        ConfigError: the file is missing, has another suffix, does not parse, or
            holds an invalid policy.
    """
    path = Path(path)
    return parse_policy(load_settings_file(path), source=path.name)


_REWORDING = (
    ("Input should be", "expected"),
    ("String should have", "expected"),
    ("a valid tuple", "a list"),
)


def _describe(error: ErrorDetails) -> str:
    loc = error["loc"]
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    path = path.lstrip(".")
    kind = error["type"]
    if kind == "extra_forbidden":
        expected = ", ".join(_keys_at(loc[:-1]))
        return f"{path}: unknown key; expected one of: {expected}"
    if kind == "missing":
        return f"{path}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"{path}: {message}" if path else message
    for pydantic_words, ours in _REWORDING:
        message = message.replace(pydantic_words, ours)
    return f"{path}: {message}, got {error.get('input')!r}"


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] = AcceptancePolicy
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        nested = [
            arg
            for arg in (annotation, *get_args(annotation))
            if isinstance(arg, type) and issubclass(arg, BaseModel)
        ]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)
