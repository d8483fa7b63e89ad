"""Rate-limit buckets, their settings, and the throttled embedder's request slices."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kbrefresh.build.ratelimit import bucket, rate_limits
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.embedders.throttled import ThrottledEmbedder
from kbrefresh.errors import ConfigError
from kbrefresh.settings import Settings


@pytest.mark.parametrize(("per_minute", "slots", "per_second"), [
    (2, 1, 1 / 60), (60, 6, 0.9), (600, 60, 9.0), (3000, 300, 45.0),
])
def test_a_bucket_admits_at_most_its_limit_in_any_minute(
    per_minute: int, slots: int, per_second: float
) -> None:
    b = bucket("embed-openai-requests", per_minute)
    assert (b.slots, b.per_second) == (slots, pytest.approx(per_second))
    assert b.admits_at_most(60) == pytest.approx(per_minute)


def test_a_limit_below_two_is_refused() -> None:
    with pytest.raises(ConfigError, match="a per-minute limit must be at least 2, got 1"):
        bucket("x", 1)


def test_settings_name_the_provider_buckets() -> None:
    limits = rate_limits(Settings(embed_requests_per_minute=600), "openai")
    assert limits.requests is not None and limits.requests.name == "embed-openai-requests"
    assert (limits.requests.server_limit, limits.requests.server_decay) == (6000, 900.0)
    assert limits.tokens is None and limits.active
    assert not rate_limits(Settings(), "openai").active


def test_a_token_limit_too_small_for_one_batch_is_refused_up_front() -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(embed_tokens_per_minute=100_000, embed_batch_max_chars=400_000)
    assert ("embed_tokens_per_minute=100000 lets at most 10000 tokens through at once, but one "
            "batch may carry 100000 tokens (embed_batch_max_chars=400000); lower "
            "KBREFRESH_EMBED_BATCH_MAX_CHARS to 40000 or less, or raise the token limit"
            ) in str(exc.value)
    Settings(embed_tokens_per_minute=100_000, embed_batch_max_chars=40_000)


@pytest.mark.parametrize("value", ["0", "65"])
def test_parallelism_is_bounded(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBREFRESH_EMBED_PARALLELISM", value)
    with pytest.raises(ValidationError, match="embed_parallelism"):
        Settings()


def test_the_throttled_embedder_asks_once_per_request() -> None:
    asked: list[tuple[int, int]] = []
    inner = OfflineEmbedder(dims=16)
    throttled = ThrottledEmbedder(inner, lambda r, t: asked.append((r, t)),
                                  batch_size=2, max_chars=10)
    texts = ["aaaa", "bbbb", "cccccccc", "dd", "e"]
    vectors = throttled.embed(texts)
    assert asked == [(1, 2), (1, 3), (1, 1)]  # [aaaa bbbb] [cccccccc dd] [e]; ceil(chars / 4)
    assert (vectors == inner.embed(texts)).all()
    assert (throttled.calls, throttled.texts_embedded) == (1, 5)


def test_the_container_deployments_file_names_its_pools() -> None:
    path = Path(__file__).resolve().parents[2] / "deployments" / "prefect-containers.yaml"
    config = yaml.safe_load(path.read_text("utf-8"))
    pools = {d["name"]: d["work_pool"]["name"] for d in config["deployments"]}
    assert pools == {"scheduled-refresh-k8s": "kbrefresh-k8s",
                     "full-reembed-batch-api": "kbrefresh-docker"}
    env = config["definitions"]["work_pools"]["kubernetes"]["job_variables"]["env"]
    assert env["KBREFRESH_TASK_RUNNER"] == "dask"


def _default_job_variables(worker_type: str) -> set[str]:
    """The variables of a worker type's default base job template, as bundled with Prefect."""
    import json

    import prefect

    bundled = (Path(prefect.__file__).parent / "server" / "api" / "collections_data" / "views"
               / "aggregate-worker-metadata.json")
    collection = {"kubernetes": "prefect-kubernetes", "docker": "prefect-docker"}[worker_type]
    worker = json.loads(bundled.read_text("utf-8"))[collection][worker_type]
    return set(worker["default_base_job_configuration"]["variables"]["properties"])


@pytest.mark.parametrize(("pool", "address"), [
    ("kubernetes", "tcp://dask-scheduler.kbrefresh.svc:8786"),
    ("docker", "tcp://dask-scheduler:8786"),
])
def test_container_pools_set_image_env_resources_and_the_dask_address(pool: str, address: str) -> None:
    path = Path(__file__).resolve().parents[2] / "deployments" / "prefect-containers.yaml"
    variables = yaml.safe_load(path.read_text("utf-8"))["definitions"]["work_pools"][pool]["job_variables"]
    # A job variable the pool's template does not define would be dropped by the worker.
    assert set(variables) <= _default_job_variables(pool)
    resources = {"kubernetes": {"cpu_request", "cpu_limit", "memory_request", "memory_limit"},
                 "docker": {"mem_limit"}}[pool]
    assert {"image", "env"} | resources <= set(variables)
    env = variables["env"]
    assert (env["KBREFRESH_TASK_RUNNER"], env["KBREFRESH_DASK_ADDRESS"]) == ("dask", address)
    assert {name.removeprefix("KBREFRESH_").lower() for name in env} <= set(Settings.model_fields)
