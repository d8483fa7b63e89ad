"""Old names keep working after a rebrand, and the rebrand gate checks that they do."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.gate.evaluation import load_golden
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.retraining.rebrand import parse_rename_map, write_rebranded_copy
from kbrefresh.retraining.rebrand_expansion import query_expander, save_version_renames
from kbrefresh.retraining.rebrand_gate import (
    LEGACY_SLICE,
    NEW_SLICE,
    RebrandRules,
    run_rebrand_gate,
    store_rebrand_golden,
)
from kbrefresh.serving.retriever import Retriever
from kbrefresh.settings import Settings
from tests.support.corpus import paragraph, write_corpus

pytestmark = pytest.mark.integration

ANYTHING = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
PRODUCTS = ["Zephyr", "Quasar", "Halcyon", "Vortex", "Tundra", "Meridian"]
RENAMES = parse_rename_map({"Zephyr": "Boreas", "Quasar": "Pulsar", "Halcyon": "Serene"})


def write_products(root: Path) -> None:
    write_corpus(root, 30)  # other documents, so hit@5 can miss
    rng = random.Random(3)
    for i, product in enumerate(PRODUCTS):
        category = "technical" if i % 2 else "general"
        path = root / category / f"{product.lower()}-setup.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = f"{product} {product} {product}. {paragraph(rng, 30)}"
        path.write_text(f"---\ntitle: Setup guide {i}\ncategory: {category}\n---\n\n"
                        f"# Setup guide {i}\n\n{body}\n", "utf-8")


def write_golden(path: Path) -> None:
    lines = [
        f'{{"query": "{p} help", "relevant": ["{"technical" if i % 2 else "general"}/'
        f'{p.lower()}-setup"], "slice": "x", "set": "smoke"}}'
        for i, p in enumerate(PRODUCTS)
    ]
    path.write_text("\n".join(lines) + "\n", "utf-8")


@pytest.fixture
def rebranded_kb(settings: Settings, tmp_path: Path) -> str:
    write_products(tmp_path / "v1")
    write_rebranded_copy(tmp_path / "v1", tmp_path / "v2", RENAMES)
    embedder = OfflineEmbedder(dims=64)
    run_refresh(settings, RefreshRequest(kb="prod", source=str(tmp_path / "v1")),
                embedder=embedder, policy=ANYTHING)
    write_golden(tmp_path / "golden.jsonl")
    load_golden(settings, "prod", tmp_path / "golden.jsonl")
    run_refresh(settings, RefreshRequest(kb="prod", source=str(tmp_path / "v2")),
                embedder=embedder, policy=ANYTHING)
    with connect(settings) as conn:
        counts = store_rebrand_golden(conn, store.get_kb_id(conn, "prod"), RENAMES)
        conn.commit()
    assert counts == {NEW_SLICE: 3, LEGACY_SLICE: 3}
    return "prod"


def test_gate_refuses_a_rebrand_that_breaks_legacy_names(settings: Settings, rebranded_kb: str) -> None:
    outcome = run_rebrand_gate(settings, rebranded_kb, 2, against=1, policy=ANYTHING)
    rules = {r.name: r for r in outcome.verdict.rules}
    assert rules["rebrand queries"].passed
    assert rules["rebrand queries"].value == 1.0
    assert rules["legacy names"].baseline == 1.0
    assert rules["legacy names"].value is not None and rules["legacy names"].value < 0.98
    assert not rules["legacy names"].passed
    assert not outcome.verdict.passed
    assert outcome.verdict.summary.startswith("Rebrand: rebrand queries ")


def test_stored_renames_keep_old_names_working(settings: Settings, rebranded_kb: str) -> None:
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, rebranded_kb)
        save_version_renames(conn, kb_id, 2, RENAMES)
        conn.commit()
        assert query_expander(conn, kb_id, 2)("Zephyr setup") == "Boreas setup"
        assert query_expander(conn, kb_id, 1)("Zephyr setup") == "Zephyr setup"
    outcome = run_rebrand_gate(settings, rebranded_kb, 2, against=1, policy=ANYTHING,
                               rules=RebrandRules(floor=0.9, min_gain=0.5))
    rules = {r.name: r for r in outcome.verdict.rules}
    assert (rules["legacy names"].value, rules["legacy names"].passed) == (1.0, True)
    assert outcome.verdict.passed, outcome.verdict.summary
    with Retriever(rebranded_kb, settings=settings, embedder=OfflineEmbedder(dims=64)) as r:
        old = r.search("Zephyr help", k=5).hits
        new = r.search("Boreas help", k=5).hits
    assert [h.chunk_id for h in old] == [h.chunk_id for h in new]
    found = {h.doc_id: h for h in old}
    assert "Boreas" in found["general/zephyr-setup"].content
    assert "Zephyr" not in found["general/zephyr-setup"].content

