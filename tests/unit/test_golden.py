from __future__ import annotations

from pathlib import Path

import pytest

from kbrefresh.errors import ConfigError, SourceError
from kbrefresh.gate.golden import GoldenQuery, load_golden_file, unknown_doc_ids

EXPECTED = [
    GoldenQuery("How do I reset 2FA?", ("account/two-factor-auth",), "general", "smoke"),
    GoldenQuery(
        "API rate limits",
        ("technical/api/limits", "technical/api/errors"),
        "technical",
        "technical",
    ),
    GoldenQuery("Refund policy", ("billing/refunds",)),
]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "golden.jsonl",
        '{"query": "How do I reset 2FA?", "relevant": ["account/two-factor-auth"],'
        ' "slice": "general", "set": "smoke"}\n'
        "\n"
        '{"query": "API rate limits", "relevant": ["technical/api/limits", '
        '"technical/api/errors"], "slice": "technical", "set": "technical"}\n'
        '{"query": "Refund policy", "relevant": ["billing/refunds"]}\n',
    )
    assert load_golden_file(path) == EXPECTED


def test_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "golden.csv",
        "query,relevant,slice,set\n"
        "How do I reset 2FA?,account/two-factor-auth,general,smoke\n"
        "API rate limits,technical/api/limits | technical/api/errors,technical,technical\n"
        "Refund policy,billing/refunds,,\n",
    )
    assert load_golden_file(path) == EXPECTED


def test_csv_with_byte_order_mark_and_only_required_columns(tmp_path: Path) -> None:
    path = tmp_path / "golden.csv"
    path.write_bytes("query,relevant\nRefund policy,billing/refunds\n".encode("utf-8-sig"))
    assert load_golden_file(path) == [EXPECTED[2]]


@pytest.mark.parametrize("name", ["golden.yaml", "golden.yml"])
def test_yaml_list(tmp_path: Path, name: str) -> None:
    path = write(
        tmp_path,
        name,
        """\
- query: How do I reset 2FA?
  relevant: [account/two-factor-auth]
  slice: general
  set: smoke
- query: API rate limits
  relevant:
    - technical/api/limits
    - technical/api/errors
  slice: technical
  set: technical
- {query: Refund policy, relevant: [billing/refunds]}
""",
    )
    assert load_golden_file(path) == EXPECTED


def test_yaml_queries_mapping(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "golden.yaml",
        "queries:\n  - query: Refund policy\n    relevant: [billing/refunds]\n",
    )
    assert load_golden_file(path) == [EXPECTED[2]]


def test_repeated_relevant_ids_are_kept_once(tmp_path: Path) -> None:
    path = write(tmp_path, "g.jsonl", '{"query": "q", "relevant": ["b", "a", "b"]}\n')
    assert load_golden_file(path)[0].relevant == ("b", "a")


def test_unknown_suffix_lists_valid_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "golden.json", "[]")
    with pytest.raises(ConfigError) as info:
        load_golden_file(path)
    assert str(info.value) == (
        "unsupported golden query file 'golden.json'; expected one of: .csv, .jsonl, .yaml, .yml"
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"golden query file '.*nope\.jsonl' does not exist$"):
        load_golden_file(tmp_path / "nope.jsonl")


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_bytes(b'{"query": "caf\xe9"}\n')
    with pytest.raises(SourceError, match=r"^g\.jsonl: not valid UTF-8 \(invalid "):
        load_golden_file(path)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "g.jsonl",
            '{"query": "q", "relevant": ["a"]}\n{"query": "q2", "relevant": ["a"],}\n',
            (
                "g.jsonl line 2: invalid JSON (Expecting property name enclosed in double quotes"
                " at column 35)"
            ),
        ),
        (
            "g.jsonl",
            '\n{"relevant": ["a"]}\n',
            "g.jsonl line 2: missing 'query'",
        ),
        (
            "g.jsonl",
            '{"query": "  ", "relevant": ["a"]}\n',
            "g.jsonl line 1: 'query' must be a non-empty string, got '  '",
        ),
        (
            "g.jsonl",
            '{"query": "q", "relevant": []}\n',
            "g.jsonl line 1: 'relevant' is empty; list at least one doc id",
        ),
        (
            "g.jsonl",
            '{"query": "q"}\n',
            "g.jsonl line 1: missing 'relevant'",
        ),
        (
            "g.jsonl",
            '{"query": "q", "relevant": "a"}\n',
            "g.jsonl line 1: 'relevant' must be a list of doc ids, got 'a'",
        ),
        (
            "g.jsonl",
            '{"query": "q", "relevant": ["a", 12]}\n',
            "g.jsonl line 1: doc ids in 'relevant' must be non-empty strings, got 12",
        ),
        (
            "g.jsonl",
            '{"query": "q", "relevant": ["a"], "slcie": "x"}\n',
            "g.jsonl line 1: unknown key 'slcie'; expected query, relevant, slice, set",
        ),
        (
            "g.jsonl",
            '["q", ["a"]]\n',
            "g.jsonl line 1: expected a mapping with keys query, relevant, got list",
        ),
        ("g.jsonl", "\n\n", "g.jsonl: no golden queries found"),
        (
            "g.csv",
            "query,relevant\nq,a\nq2,\n",
            "g.csv line 3: 'relevant' is empty; list at least one doc id",
        ),
        (
            "g.csv",
            "query,relevant\nq,a||b\n",
            "g.csv line 2: doc ids in 'relevant' must be non-empty strings, got ''",
        ),
        (
            "g.csv",
            "query,relevant\n,a\n",
            "g.csv line 2: missing 'query'",
        ),
        (
            "g.csv",
            "query,relevant\nq,a,extra\n",
            "g.csv line 2: more cells than header columns",
        ),
        (
            "g.csv",
            "question,relevant\nq,a\n",
            (
                "g.csv line 1: bad header ['question', 'relevant']; expected columns query, relevant"
                " and optionally slice, set"
            ),
        ),
        (
            "g.yaml",
            "- query: q\n  relevant: [a]\n- query: q2\n  relevant: [a, 7]\n",
            "g.yaml line 3: doc ids in 'relevant' must be non-empty strings, got 7",
        ),
        (
            "g.yaml",
            "- query: q\n  relevant: [a\n- query: q2\n",
            "g.yaml line 3: invalid YAML (expected ',' or ']', but got ':')",
        ),
        (
            "g.yaml",
            "query: q\nrelevant: [a]\n",
            "g.yaml: expected a list of queries or a mapping {queries: [...]}, got dict",
        ),
    ],
)
def test_bad_files_name_file_and_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(SourceError) as info:
        load_golden_file(path)
    assert str(info.value) == message


def test_unknown_doc_ids_maps_ids_to_query_indexes() -> None:
    queries = [
        GoldenQuery("a", ("known", "gone")),
        GoldenQuery("b", ("known",)),
        GoldenQuery("c", ("gone", "typo")),
    ]
    assert unknown_doc_ids(queries, {"known"}) == {"gone": [0, 2], "typo": [2]}
    assert unknown_doc_ids(queries, ["known", "gone", "typo"]) == {}
