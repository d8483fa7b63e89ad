"""The gate reuses live's per-query results from live's own gate when nothing changed since."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.gate.evaluation import load_golden
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.settings import Settings

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "kbrefresh" / "samples" / "helpcenter"
# What the gate measures is under test here, not what it decides.
SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)


def refresh(settings: Settings, corpus: Path) -> int:
    return run_refresh(settings, RefreshRequest(kb="help", source=str(corpus)),
                       embedder=OfflineEmbedder(dims=64), policy=SMOKE_ONLY).version


def verdict(settings: Settings, version: int) -> dict[str, object]:
    with connect(settings) as conn:
        return dict(store.version_row(conn, 1, version).verdict or {})


def test_live_results_are_reused_until_the_golden_set_changes(
    settings: Settings, tmp_path: Path,
) -> None:
    corpus = tmp_path / "helpcenter"
    shutil.copytree(SAMPLES / "base", corpus)
    refresh(settings, corpus)
    golden = SAMPLES / "golden" / "smoke.jsonl"
    load_golden(settings, "help", golden)
    assert refresh(settings, corpus) == 2  # v1 gated on auto titles: nothing to reuse
    assert refresh(settings, corpus) == 3
    v2, v3 = verdict(settings, 2)["evaluation"], verdict(settings, 3)["evaluation"]
    # Equal to the last digit of every latency: measured once, in v2's own gate.
    assert v3["live"] == v2["candidate"]  # type: ignore[index]

    lines = golden.read_text("utf-8").splitlines()
    smaller = tmp_path / "smoke.jsonl"
    smaller.write_text("\n".join(lines[:-1]) + "\n", "utf-8")
    assert json.loads(lines[0])  # still the same set name, one query fewer
    load_golden(settings, "help", smaller)
    assert refresh(settings, corpus) == 4
    v3, v4 = verdict(settings, 3)["evaluation"], verdict(settings, 4)["evaluation"]
    assert v4["live"] != v3["candidate"]  # type: ignore[index]
    assert v4["n_queries"] == v3["n_queries"] - 1  # type: ignore[index]
