"""The build budget: admitted batches, exact limits, the time forecast, request fallbacks."""

from __future__ import annotations

import pytest

from kbrefresh.build.budget import AdmittedBatches, BudgetGuard, BuildBudget
from kbrefresh.build.embedding import EmbedBatch
from kbrefresh.errors import BudgetExceeded, ConfigError
from kbrefresh.refresh.request import parse_request
from kbrefresh.settings import Settings


def batches(*chars: int) -> list[EmbedBatch]:
    return [EmbedBatch(i, f"{i:02d}", f"{i:02d}", 4, c) for i, c in enumerate(chars)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_that_lands_exactly_on_the_token_limit_is_admitted() -> None:
    guard = BudgetGuard(BuildBudget(max_tokens=250), kb="kb", started=0.0, plan_tokens=375)
    admitted = []
    with pytest.raises(BudgetExceeded) as caught:
        for batch in AdmittedBatches(batches(400, 600, 4), guard):  # 100, 150, 1 tokens
            admitted.append(batch.number)
    assert admitted == [0, 1]
    assert str(caught.value) == (
        "refresh of 'kb' stopped before embedding batch 3 of 3: token budget max_tokens=250 "
        "would be exceeded: the next batch (~1 tokens) would bring this run to ~251 tokens "
        "(plan: ~375); nothing was published, the 2 batches sent are kept and the next run "
        "reuses them; raise --max-tokens / KBREFRESH_BUILD_MAX_TOKENS, or rerun to continue")


def test_time_stops_when_the_mean_batch_would_pass_the_limit() -> None:
    clock = Clock()
    guard = BudgetGuard(BuildBudget(max_seconds=10.0), kb="kb", started=97.0, clock=clock)
    items = iter(AdmittedBatches(batches(4, 4, 4, 4), guard))
    next(items)  # 3 s spent, no batch finished: no forecast yet
    clock.now += 2.0
    guard.batch_finished()
    next(items)  # 5 s spent + 2 s per batch = 7 <= 10
    clock.now += 2.0
    guard.batch_finished()
    clock.now += 0.5
    next(items)  # 7.5 + 2.25 = 9.75 <= 10
    clock.now += 1.0
    guard.batch_finished()
    with pytest.raises(BudgetExceeded, match=r"stopped before embedding batch 4 of 4: time "
                       r"budget max_seconds=10\.0 would be exceeded: 8\.5s spent and the next "
                       r"batch takes ~1\.8s"):
        next(items)


def test_no_limits_admit_everything() -> None:
    guard = BudgetGuard(BuildBudget(), kb="kb", started=0.0)
    assert not BuildBudget().active
    assert [b.number for b in AdmittedBatches(batches(10**9, 10**9), guard)] == [0, 1]


def test_the_request_limit_wins_and_the_setting_is_the_fallback() -> None:
    settings = Settings(build_max_tokens=500, build_max_seconds=60)
    assert parse_request(kb="kb", source="x").budget(settings) == BuildBudget(500, 60.0)
    request = parse_request(kb="kb", source="x", max_tokens=9, max_seconds=1.5)
    assert request.budget(settings) == BuildBudget(9, 1.5)


@pytest.mark.parametrize(("field", "value", "words"), [
    ("max_tokens", 0, "max_tokens=0 is invalid: input should be greater than or equal to 1"),
    ("max_seconds", 0, "max_seconds=0 is invalid: input should be greater than 0"),
])
def test_bad_budgets_are_refused_before_anything_is_built(field: str, value: int, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_request(kb="kb", source="x", **{field: value})
    assert str(caught.value) == words
