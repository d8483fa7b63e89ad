"""Golden queries: questions with the doc ids that answer them, read from files.

Labels are document ids, not chunk ids, so they survive re-chunking. Supported
files (one query per record):

- ``.jsonl``: one JSON object per line, keys ``query``, ``relevant`` (list of doc
  ids), optional ``slice`` and ``set``;
- ``.csv``: columns ``query``, ``relevant`` (doc ids separated by ``|``), optional
  ``slice`` and ``set``;
- ``.yaml`` / ``.yml``: a list of such mappings, or ``{queries: [...]}``.

An unknown suffix is a :class:`ConfigError`; anything wrong with the file itself
(missing, undecodable, bad syntax, bad record) is a :class:`SourceError` naming
the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kbrefresh._text import load_yaml
from kbrefresh.errors import ConfigError, SourceError

logger = logging.getLogger(__name__)

RECORD_KEYS = ("query", "relevant", "slice", "set")
DEFAULT_SLICE = "all"
DEFAULT_SET = "smoke"

# (where, record): "where" is the human location used in messages, e.g. "line 3".
_Located = tuple[str, Any]


@dataclass(frozen=True)
class GoldenQuery:
    """A question and the ids of the documents that answer it."""

    query: str
    relevant: tuple[str, ...]
    slice: str = DEFAULT_SLICE
    set_name: str = DEFAULT_SET


def load_golden_file(path: str | Path) -> list[GoldenQuery]:
    """Read golden queries from a ``.jsonl``, ``.csv``, ``.yaml`` or ``.yml`` file.

    Raises:
        ConfigError: the suffix is not one of the supported ones.
        SourceError: the file cannot be read, does not parse, holds no queries, or
            a record is invalid; the message names the file and line.
    """
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(
            f"unsupported golden query file {path.name!r}; "
            f"expected one of: {', '.join(sorted(_READERS))}"
        )
    text = _read_text(path)
    queries = [_to_query(record, path.name, where) for where, record in reader(text, path.name)]
    if not queries:
        raise SourceError(f"{path.name}: no golden queries found")
    logger.debug("loaded %d golden queries from %s", len(queries), path)
    return queries


def unknown_doc_ids(
    queries: Sequence[GoldenQuery], known_ids: Collection[str]
) -> dict[str, list[int]]:
    """Map each relevant doc id missing from ``known_ids`` to the indexes of its queries."""
    known = set(known_ids)
    unknown: dict[str, list[int]] = {}
    for index, golden in enumerate(queries):
        for doc_id in golden.relevant:
            if doc_id not in known:
                unknown.setdefault(doc_id, []).append(index)
    return unknown


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: spreadsheets often save CSV with a byte-order mark.
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise SourceError(f"golden query file {str(path)!r} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{path.name}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from exc
    except OSError as exc:
        raise SourceError(f"cannot read golden query file {str(path)!r}: {exc}") from exc


def _read_jsonl(text: str, name: str) -> Iterator[_Located]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(
                f"{name} line {number}: invalid JSON ({exc.msg} at column {exc.colno})"
            ) from exc
        yield f"line {number}", record


def _read_csv(text: str, name: str) -> Iterator[_Located]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    unknown = [column for column in header if column not in RECORD_KEYS]
    if unknown or "query" not in header or "relevant" not in header:
        raise SourceError(
            f"{name} line 1: bad header {header!r}; expected columns query, relevant "
            "and optionally slice, set"
        )
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row:
            raise SourceError(f"{name} {where}: more cells than header columns")
        if not any((value or "").strip() for value in row.values()):
            continue
        record: dict[str, Any] = {key: value for key, value in row.items() if value}
        cell = (row.get("relevant") or "").strip()
        record["relevant"] = [part.strip() for part in cell.split("|")] if cell else []
        yield where, record


def _read_yaml(text: str, name: str) -> Iterator[_Located]:
    try:
        data = load_yaml(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SourceError(f"{name}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from exc
    if isinstance(data, Mapping) and set(data) == {"queries"}:
        data = data["queries"]
        root = _mapping_value(root, "queries")
    if data is None:
        return
    if not isinstance(data, list):
        raise SourceError(
            f"{name}: expected a list of queries or a mapping {{queries: [...]}}, "
            f"got {type(data).__name__}"
        )
    items = root.value if isinstance(root, yaml.SequenceNode) else []
    for index, record in enumerate(data):
        line = items[index].start_mark.line + 1 if index < len(items) else None
        yield (f"line {line}" if line else f"entry {index + 1}"), record


def _mapping_value(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == key:
                return value_node if isinstance(value_node, yaml.Node) else None
    return None


_READERS: dict[str, Callable[[str, str], Iterable[_Located]]] = {
    ".csv": _read_csv,
    ".jsonl": _read_jsonl,
    ".yaml": _read_yaml,
    ".yml": _read_yaml,
}


def _to_query(record: Any, name: str, where: str) -> GoldenQuery:
    prefix = f"{name} {where}"
    if not isinstance(record, Mapping):
        raise SourceError(
            f"{prefix}: expected a mapping with keys query, relevant, got {type(record).__name__}"
        )
    unknown = sorted(str(key) for key in record if key not in RECORD_KEYS)
    if unknown:
        raise SourceError(
            f"{prefix}: unknown key {unknown[0]!r}; expected {', '.join(RECORD_KEYS)}"
        )
    query = _text_field(record, "query", None, prefix)
    return GoldenQuery(
        query=query,
        relevant=_relevant_ids(record.get("relevant"), prefix),
        slice=_text_field(record, "slice", DEFAULT_SLICE, prefix),
        set_name=_text_field(record, "set", DEFAULT_SET, prefix),
    )


def _text_field(record: Mapping[str, Any], key: str, default: str | None, prefix: str) -> str:
    value = record.get(key)
    if value is None:
        if default is None:
            raise SourceError(f"{prefix}: missing {key!r}")
        return default
    if not isinstance(value, str) or not value.strip():
        raise SourceError(f"{prefix}: {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def _relevant_ids(value: Any, prefix: str) -> tuple[str, ...]:
    if value is None:
        raise SourceError(f"{prefix}: missing 'relevant'")
    if not isinstance(value, list):
        raise SourceError(f"{prefix}: 'relevant' must be a list of doc ids, got {value!r}")
    if not value:
        raise SourceError(f"{prefix}: 'relevant' is empty; list at least one doc id")
    for doc_id in value:
        if not isinstance(doc_id, str) or not doc_id.strip():
            raise SourceError(
                f"{prefix}: doc ids in 'relevant' must be non-empty strings, got {doc_id!r}"
            )
    # dict.fromkeys: drop repeated ids but keep the author's order.
    return tuple(dict.fromkeys(doc_id.strip() for doc_id in value))
