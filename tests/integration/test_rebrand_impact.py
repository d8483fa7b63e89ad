"""The rebrand impact query on a real PostgreSQL, against a hand count."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.errors import VersionError
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.retraining.rebrand import ImpactCount, find_impact, parse_rename_map
from kbrefresh.settings import Settings

pytestmark = pytest.mark.integration

SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
RENAMES = parse_rename_map(
    {"Nimbus Desk": "Stratus Desk", "nimbus": "stratus", "Nimbus Labs": "Stratus Labs"}
)
FILLER = "Agents reply to tickets from the shared inbox and track every reply there. " * 12

# doc id → (title, body); the comments are the hand count.
DOCS = {
    # Nimbus Desk (title and text; the "Nimbus" inside it is not a 'nimbus' mention)
    "general/start": ("Getting started with Nimbus Desk", "Nimbus Desk helps teams answer."),
    # nothing: URLs, identifiers and packages only
    "general/billing": ("Billing", ("Pay at nimbusdesk.com or billing@nimbusdesk.com; "
                                   "the nimbus_desk package and @nimbuslabs/desk.")),
    # nimbus (lowercase CLI and nimbus.yaml)
    "technical/cli": ("CLI", "Install the nimbus CLI and edit nimbus.yaml."),
    # Nimbus Desk (upper case) and Nimbus Labs
    "technical/sso": ("SSO", "NIMBUS DESK supports SAML. Built by Nimbus Labs."),
    # nothing
    "technical/webhooks": ("Webhooks", "Webhooks post JSON to your endpoint."),
    # Nimbus Desk and a capitalised standalone Nimbus
    "general/mascot": ("Mascot", "Nimbus Desk has a mascot. Nimbus is a cloud."),
}
# Two sections of ~900 characters: two chunks, both mentioning Nimbus Desk.
LONG = ("technical/guide", "Admin guide",
        f"## One\n\nNimbus Desk admins. {FILLER}\n\n## Two\n\nNimbus Desk roles. {FILLER}")


def write_docs(root: Path) -> None:
    for doc_id, (title, body) in [*DOCS.items(), (LONG[0], (LONG[1], LONG[2]))]:
        path = root / f"{doc_id}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        category = doc_id.split("/")[0]
        path.write_text(
            f"---\ntitle: {title}\ncategory: {category}\nupdated: 2026-11-01\n---\n\n"
            f"# {title}\n\n{body}\n", "utf-8")


def test_impact_matches_hand_count(settings: Settings, tmp_path: Path) -> None:
    write_docs(tmp_path / "src")
    run_refresh(settings, RefreshRequest(kb="hc", source=str(tmp_path / "src")),
                embedder=OfflineEmbedder(dims=64), policy=SMOKE_ONLY)
    with connect(settings) as conn:
        report = find_impact(conn, "hc", RENAMES)
    assert report.version == 1
    assert report.live_total == ImpactCount(chunks=8, documents=7)
    assert report.total == ImpactCount(chunks=6, documents=5)
    assert report.by_segment == {
        "general": ImpactCount(2, 2), "technical": ImpactCount(4, 3)}
    assert report.by_name == {
        "Nimbus Desk": ImpactCount(5, 4), "Nimbus Labs": ImpactCount(1, 1),
        "nimbus": ImpactCount(2, 2)}
    assert report.by_segment_name == {
        ("general", "Nimbus Desk"): ImpactCount(2, 2),
        ("general", "nimbus"): ImpactCount(1, 1),
        ("technical", "Nimbus Desk"): ImpactCount(3, 2),
        ("technical", "Nimbus Labs"): ImpactCount(1, 1),
        ("technical", "nimbus"): ImpactCount(1, 1),
    }
    assert report.documents == (
        "general/mascot", "general/start", "technical/cli", "technical/guide", "technical/sso")
    assert "6 of 8 chunks and 5 of 7 documents mention an old name." in report.to_markdown()


def test_impact_without_live_version(settings: Settings) -> None:
    with connect(settings) as conn:
        from kbrefresh import store

        store.ensure_kb(conn, "empty")
        with pytest.raises(VersionError, match=r"^knowledge base 'empty' has no live version"):
            find_impact(conn, "empty", RENAMES)
