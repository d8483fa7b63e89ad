"""Segment profile fields on real Markdown: the product version in each chunk's header,
fenced code kept whole (and the rule for a block over the hard limit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbrefresh.build.chunking import chunk_document
from kbrefresh.build.code_blocks import split_code
from kbrefresh.build.sources import load_source
from kbrefresh.errors import ConfigError
from kbrefresh.models import ChunkerConfig
from kbrefresh.retraining.profiles import apply_profiles, parse_profiles

LOOP = "\n".join(f"    total += item.price * {i}  # line {i}" for i in range(14))
GUIDE = f"""---
title: Exporting tickets with the SDK
category: technical
product_version: "4.2"
---
# Exporting tickets with the SDK

The SDK pages through every ticket of a view and writes them to a CSV file. Install it
with pip first, then create a client with an API key that has the tickets:read scope.

## Paging

Each page holds at most 100 tickets. The client follows the next cursor until the last
page, sleeping when the API answers 429 with a Retry-After header.

```python
from nimbus import Client

client = Client(api_key="nd_live_...")
total = 0
for item in client.tickets.iter(view="open"):
{LOOP}
print(total)
```

The loop above is safe to interrupt: a cursor is saved after every page and the next run
resumes from it, so no ticket is written twice.
"""
PROFILE = {"segments": {"technical": {
    "category": "technical", "max_chars": 300, "overlap_chars": 60,
    "header_template": "{category} › {version} › {title} › {section}\n\n{text}",
    "code_max_chars": 1200}}}


def _guide(tmp_path: Path, text: str = GUIDE) -> list[str]:
    (tmp_path / "technical").mkdir(parents=True, exist_ok=True)
    (tmp_path / "technical" / "export.md").write_text(text, encoding="utf-8")
    [doc] = load_source(str(tmp_path)).documents
    [profiled] = apply_profiles([doc], parse_profiles(PROFILE), ChunkerConfig())
    return [c.embed_text for c in chunk_document(profiled.document, profiled.chunker)]


def _fence() -> str:
    start = GUIDE.index("```python")
    return GUIDE[start:GUIDE.index("```\n", start + 3) + 3]


def test_the_fenced_block_is_one_chunk_and_the_version_heads_every_chunk(tmp_path: Path) -> None:
    chunks = _guide(tmp_path)
    fence = _fence()
    assert len(fence) > 300  # longer than max_chars: it would have been cut at lines

    assert [c.count("```") for c in chunks].count(2) == 1
    assert all(c.count("```") in (0, 2) for c in chunks)
    [with_code] = [c for c in chunks if "```" in c]
    assert with_code == (f"technical › 4.2 › Exporting tickets with the SDK › Paging\n\n{fence}")
    after = chunks[chunks.index(with_code) + 1]
    assert after.split("\n\n", 1)[1].startswith("The loop above is safe")  # no code overlap
    assert all(c.startswith("technical › 4.2 › Exporting tickets with the SDK") for c in chunks)


def test_without_code_max_chars_the_block_is_cut_at_lines(tmp_path: Path) -> None:
    PROFILE["segments"]["technical"]["code_max_chars"] = 0
    try:
        chunks = _guide(tmp_path)
    finally:
        PROFILE["segments"]["technical"]["code_max_chars"] = 1200
    assert any(c.count("```") == 1 for c in chunks)


def test_a_block_over_the_hard_limit_is_refenced_in_parts_of_at_most_the_limit() -> None:
    body = [f"SELECT {i} AS n, '{'x' * 30}' AS pad FROM tickets;" for i in range(60)]
    block = "~~~sql\n" + "\n".join(body) + "\n~~~"
    parts = split_code(block, 1000)

    assert len(parts) == -(-len("\n".join(body)) // (1000 - len("~~~sql\n\n~~~")))
    assert all(len(p) <= 1000 and p.startswith("~~~sql\n") and p.endswith("\n~~~")
               for p in parts)
    assert [line for p in parts for line in p.split("\n")[1:-1]] == body
    assert split_code(block, len(block)) == [block]


def test_an_unfenced_block_over_the_limit_is_cut_at_lines_and_a_giant_line_at_the_limit() -> None:
    block = "a" * 25 + "\nshort\n" + "b" * 5
    assert split_code(block, 10) == ["a" * 10, "a" * 10, "a" * 5, "short", "bbbbb"]
    assert split_code("ab\ncd\nef", 6) == ["ab\ncd", "ef"]


def test_a_new_product_version_rechunks_the_document(tmp_path: Path) -> None:
    before = _guide(tmp_path / "a")
    after = _guide(tmp_path / "b", GUIDE.replace('product_version: "4.2"', "version: 5.0"))
    assert [c.replace("› 4.2 ›", "› 5.0 ›") for c in before] == after
    docs = [load_source(str(tmp_path / d)).documents[0] for d in ("a", "b")]
    profiled = apply_profiles(docs, parse_profiles(PROFILE), ChunkerConfig())
    assert docs[0].content_hash == docs[1].content_hash  # the body did not change
    assert profiled[0].document.content_hash != profiled[1].document.content_hash


def test_a_document_without_a_version_drops_the_placeholder_and_its_separator(
    tmp_path: Path,
) -> None:
    chunks = _guide(tmp_path, GUIDE.replace('product_version: "4.2"\n', ""))
    assert chunks[0].startswith("technical › Exporting tickets with the SDK\n\n")


@pytest.mark.parametrize(("code_max_chars", "message"), [
    (100, ("segments.technical: code_max_chars must be 0 (code split like any block) or "
          "between max_chars (300) and 100000, got 100")),
    (-1, "segments.technical.code_max_chars=-1: Input should be greater than or equal to 0"),
])
def test_a_bad_code_max_chars_is_refused(code_max_chars: int, message: str) -> None:
    bad = {"segments": {"technical": PROFILE["segments"]["technical"]  # type: ignore[index]
                        | {"code_max_chars": code_max_chars}}}
    with pytest.raises(ConfigError) as err:
        parse_profiles(bad, source="kb.yaml")
    assert str(err.value) == f"kb.yaml: {message}"
