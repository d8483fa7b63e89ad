"""Rename maps: validation at the edge and word-boundary rewriting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbrefresh.errors import ConfigError
from kbrefresh.retraining.rebrand import (
    load_rename_map,
    parse_rename_map,
    pg_word_pattern,
)

SAMPLE_MAP = Path(__file__).parents[2] / "kbrefresh/samples/helpcenter/golden/rename_map.json"


@pytest.fixture
def renames():  # type: ignore[no-untyped-def]
    return load_rename_map(SAMPLE_MAP)


def test_longest_names_first(renames) -> None:  # type: ignore[no-untyped-def]
    assert renames.old_names == ("Nimbus Desk", "Nimbus Labs", "nimbus")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Nimbus Desk is great", "Stratus Desk is great"),
        ("nimbus desk", "stratus desk"),
        ("NIMBUS DESK", "STRATUS DESK"),
        ("Nimbus CLI", "Stratus CLI"),
        ("edit nimbus.yaml", "edit stratus.yaml"),
        ("see nimbusdesk.com, nimbus_desk and @nimbuslabs/desk", "see nimbusdesk.com, nimbus_desk and @nimbuslabs/desk"),
        ("NIMBUS_TOKEN", "NIMBUS_TOKEN"),
        ("Nimbus Labs GmbH and Nimbus Desk", "Stratus Labs GmbH and Stratus Desk"),
        ("no names here", "no names here"),
    ],
)
def test_rewrite(renames, text: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    assert renames.rewrite(text) == expected


def test_mentions_count_longest_name_only(renames) -> None:  # type: ignore[no-untyped-def]
    text = "Nimbus Desk and nimbus; NIMBUS desk; nimbusdesk.com; Nimbus Labs"
    assert renames.mentions(text) == {"Nimbus Desk": 2, "nimbus": 1, "Nimbus Labs": 1}


def test_aliases_in(renames) -> None:  # type: ignore[no-untyped-def]
    assert renames.aliases_in("Stratus Desk: install the stratus CLI") == [
        "Stratus Desk, formerly Nimbus Desk", "stratus, formerly nimbus"]


def test_pg_pattern_escapes() -> None:
    assert pg_word_pattern("Nimbus Desk") == r"\mNimbus\ Desk\M"
    assert pg_word_pattern("C++") == r"\mC\+\+"
    assert pg_word_pattern(".NET") == r"\.NET\M"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "rename map: no renames; expected at least one old name → new name"),
        (["a"], "rename map: expected a mapping of old name to new name, got list"),
        ({"Nimbus": 3}, "rename map: value of 'Nimbus' is 3; expected a string"),
        ({"Nimbus": None}, "rename map: value of 'Nimbus' is None; expected a string"),
        ({" ": "Stratus"}, "rename map: name ' ' is empty; expected some text"),
        ({"Nimbus": ""}, "rename map: name '' is empty; expected some text"),
        ({"Nimbus": "Nimbus"}, "rename map: 'Nimbus' is renamed to itself; remove the pair"),
        ({"Nimbus": "Stratus", "Stratus": "Cirrus"},
         ("rename map: new name 'Stratus' (for 'Nimbus') is also an old name ('Stratus'); "
         "chained or swapped renames are ambiguous")),
        ({"Nimbus": "Stratus", "nimbus": "stratus"},
         ("rename map: old names 'Nimbus' and 'nimbus' differ only in case; "
         "names match case-insensitively, keep one")),
    ],
)
def test_bad_maps(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rename_map(data)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_yaml_file_and_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "renames.yaml"
    good.write_text("Python: Serpent\npip: coil\n", "utf-8")
    assert load_rename_map(good).as_dict() == {"Python": "Serpent", "pip": "coil"}
    bad = tmp_path / "renames.json"
    bad.write_text(json.dumps({"a": ["b"]}), "utf-8")
    with pytest.raises(ConfigError, match=r"^renames.json: value of 'a' is \['b'\]; expected a string$"):
        load_rename_map(bad)
    with pytest.raises(ConfigError, match=r"^unsupported rename file 'r.txt'; expected one of"):
        load_rename_map(tmp_path / "r.txt")
    with pytest.raises(ConfigError, match=r"^cannot read rename file .*missing.json"):
        load_rename_map(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{", "utf-8")
    with pytest.raises(ConfigError, match=r"^broken.json: invalid JSON"):
        load_rename_map(broken)


def test_alias_header_only_on_chunks_naming_a_new_name() -> None:
    from kbrefresh.build.chunking import chunk_document
    from kbrefresh.models import ChunkerConfig, Document

    doc = Document("a", "a.md", "Install", "technical",
                   "# Install\n\n## One\n\nInstall the stratus CLI.\n\n## Two\n\nNothing to see here.",
                   "markdown", "h")
    plain = ChunkerConfig(min_chars=0)
    aliased = ChunkerConfig(min_chars=0, aliases=(("Nimbus Desk", "Stratus Desk"), ("nimbus", "stratus")))
    before, after = chunk_document(doc, plain), chunk_document(doc, aliased)
    assert after[0].embed_text == "(stratus, formerly nimbus)\n" + before[0].embed_text
    assert after[0].content_hash != before[0].content_hash
    assert after[1] == before[1]
    assert aliased.as_dict() == plain.as_dict()  # same fingerprint: no full rebuild
