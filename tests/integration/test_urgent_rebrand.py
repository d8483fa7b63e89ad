"""The urgent rebrand: the core sequence, the flow (swap at once, notify) and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.gate.evaluation import load_golden
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.retraining.rebrand import write_rebranded_copy
from kbrefresh.retraining.rebrand_run import pending_rename_map, run_rebrand
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from tests.integration.test_rebrand_gate import ANYTHING, RENAMES, write_golden, write_products
from tests.support.webhook_server import webhook_receiver

pytestmark = pytest.mark.integration


class RecordingEmbedder(OfflineEmbedder):
    """The offline embedder, remembering every batch of texts it was given."""

    def __init__(self, dims: int) -> None:
        super().__init__(dims=dims)
        self.batches: list[list[str]] = []

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        self.batches.append(list(texts))
        return super().embed(texts)


def live_kb(settings: Settings, root: Path, kb: str = "prod") -> Path:
    """v1 live from the products corpus with its golden set; return the rebranded copy."""
    write_products(root / "v1")
    write_rebranded_copy(root / "v1", root / "v2", RENAMES)
    run_refresh(settings, RefreshRequest(kb=kb, source=str(root / "v1")),
                embedder=OfflineEmbedder(dims=64), policy=ANYTHING)
    write_golden(root / "golden.jsonl")
    load_golden(settings, kb, root / "golden.jsonl")
    return root / "v2"


def test_rebrand_swaps_at_once_with_affected_documents_embedded_first(
    settings: Settings, tmp_path: Path
) -> None:
    rebranded = live_kb(settings, tmp_path)
    edited = sorted(p for p in rebranded.rglob("*.md") if "setup" not in p.name)[:10]
    for path in edited:  # unrelated edits: embedded too, but after the rebranded documents
        path.write_text(path.read_text("utf-8") + "\nUpdated this month.\n", "utf-8")
    embedder = RecordingEmbedder(64)
    small = settings.model_copy(update={"embed_batch_size": 2})
    report = run_rebrand(small, RefreshRequest(kb="prod", source=str(rebranded),
                                               reason="rebrand"), RENAMES, embedder=embedder)
    assert report.refresh.published and report.refresh.version == 2
    assert report.impact.total.documents == 3
    assert sorted(report.impact.documents) == [
        "general/halcyon-setup", "general/zephyr-setup", "technical/quasar-setup"]
    # The three rebranded documents (one chunk each) are embedded first.
    embedded = [t for batch in embedder.batches for t in batch]
    rebranded_texts = [any(n in t for n in ("Boreas", "Pulsar", "Serene")) for t in embedded]
    assert len(embedded) >= 3 + len(edited) and rebranded_texts.count(True) == 3
    # Batches are hash ranges: the batches holding a rebranded text go first (they may
    # carry an unrelated text of the same range along).
    has_rebranded = [any(any(n in t for n in ("Boreas", "Pulsar", "Serene")) for t in batch)
                     for batch in embedder.batches if batch]
    assert has_rebranded == sorted(has_rebranded, reverse=True) and has_rebranded[0], embedded[:4]
    figures = report.figures()
    assert figures["rebrand after"] == 1.0
    assert figures["legacy after"] is not None and figures["legacy before"] is not None
    assert figures["legacy after"] >= figures["legacy before"] - 0.02
    assert report.headline().startswith("rebrand queries ")
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "prod")
        assert routing.live_version(conn, kb_id) == 2
        assert pending_rename_map(conn, kb_id) is None  # applied by v2
    notice = report.notice()
    assert notice.kind == "published" and notice.versions == {"live": 2, "previous": 1}
    assert "Zephyr → Boreas" in notice.reason and "legacy names" in notice.reason


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_swaps_immediately_and_notifies(
    env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.urgent_rebrand import RebrandParameters, urgent_rebrand

    rebranded = live_kb(env, tmp_path, kb="brand")
    renames = tmp_path / "renames.json"
    renames.write_text('{"Zephyr": "Boreas", "Quasar": "Pulsar", "Halcyon": "Serene"}', "utf-8")
    with webhook_receiver() as hook:
        monkeypatch.setenv("KBREFRESH_NOTIFY_WEBHOOK_URL", hook.url)
        result: dict[str, Any] = urgent_rebrand(RebrandParameters(
            kb="brand", source=str(rebranded), renames_file=str(renames)))
    assert result["refresh"]["version"] == 2 and result["refresh"]["published"]
    assert result["figures"]["rebrand after"] == 1.0
    with connect(env) as conn:
        assert routing.live_version(conn, store.get_kb_id(conn, "brand")) == 2
    [body] = hook.received
    assert body["kind"] == "published" and body["versions"] == {"live": 2, "previous": 1}
    assert body["metrics"]["rebrand after"] == 1.0
    assert "rebrand queries" in body["text"] and "legacy names" in body["text"]
