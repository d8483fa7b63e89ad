"""A rebrand: the rename map, rewriting text through it, and what it touches in the live KB.

A rename map says old name → new name (``{"Nimbus Desk": "Stratus Desk"}``). Names
match whole words only, case-insensitively, longest name first, so ``nimbus``
renames ``nimbus.yaml`` but not ``nimbusdesk.com`` or ``nimbus_desk``. The case of
each occurrence decides the case of its replacement: as written in the map → the
new name as written; all lowercase → lowercase; all uppercase → uppercase; a
capital first letter → the new name with a capital first letter.

The impact query finds, inside PostgreSQL, the live version's chunks and documents
that mention an old name (PostgreSQL ARE ``~*`` with ``\\m … \\M`` word boundaries,
the same rule as :meth:`RenameMap.rewrite`), counted per segment (document
category) and per name, with distinct totals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql
from pydantic import RootModel, StrictStr, ValidationError

from kbrefresh import store
from kbrefresh._text import load_settings_file
from kbrefresh.errors import ConfigError, VersionError
from kbrefresh.serving import routing

__all__ = [
    "ImpactReport",
    "RenameMap",
    "find_impact",
    "load_rename_map",
    "parse_rename_map",
    "pg_word_pattern",
]

RENAME_SUFFIXES = (".json", ".yaml", ".yml")


class _RenameFile(RootModel[dict[StrictStr, StrictStr]]):
    """The edge model of a rename file: a mapping of strings to strings."""


@dataclass(frozen=True)
class RenameMap:
    """Old name → new name pairs, longest old name first."""

    pairs: tuple[tuple[str, str], ...]
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = [f"(?P<n{i}>{_py_word_pattern(old)})" for i, (old, _) in enumerate(self.pairs)]
        object.__setattr__(self, "_pattern", re.compile("|".join(parts), re.IGNORECASE))

    @property
    def old_names(self) -> tuple[str, ...]:
        return tuple(old for old, _ in self.pairs)

    def as_dict(self) -> dict[str, str]:
        return dict(self.pairs)

    def rewrite(self, text: str) -> str:
        """Return ``text`` with every whole-word old name replaced by its new name."""

        def replace(match: re.Match[str]) -> str:
            old, new = self.pairs[int(str(match.lastgroup)[1:])]
            return _recase(match.group(0), old, new)

        return self._pattern.sub(replace, text)

    def mentions(self, text: str) -> dict[str, int]:
        """Count whole-word mentions of each old name in ``text`` (names absent: left out)."""
        counts: dict[str, int] = {}
        for match in self._pattern.finditer(text):
            old = self.pairs[int(str(match.lastgroup)[1:])][0]
            counts[old] = counts.get(old, 0) + 1
        return counts

    def aliases_in(self, text: str) -> list[str]:
        """Return "New, formerly Old" for each new name ``text`` mentions (rewritten text)."""
        found = []
        for old, new in self.pairs:
            if re.search(_py_word_pattern(new), text, re.IGNORECASE):
                found.append(f"{new}, formerly {old}")
        return found

    def expand_query(self, query: str) -> str:
        """Return ``query`` with old names replaced by new ones, unchanged if it names none."""
        return self.rewrite(query)


def parse_rename_map(data: Any, source: str = "rename map") -> RenameMap:
    """Validate a mapping old name → new name; ``source`` names it in error messages.

    Raises:
        ConfigError: not a mapping of strings, empty, an empty name, an identical
            pair, two old names equal ignoring case, or a new name that is also an old one.
    """
    try:
        mapping = _RenameFile.model_validate(data).root
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [part for part in error["loc"] if part != "[key]"]
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{source}: expected a mapping of old name to new name, got {type(data).__name__}"
            ) from exc
        what = f"value of {loc[0]!r}" if loc else "a name"
        raise ConfigError(
            f"{source}: {what} is {error['input']!r}; expected a string"
        ) from exc
    if not mapping:
        raise ConfigError(f"{source}: no renames; expected at least one old name → new name")
    seen: dict[str, str] = {}
    for old, new in mapping.items():
        for name in (old, new):
            if not name.strip():
                raise ConfigError(f"{source}: name {name!r} is empty; expected some text")
        if old == new:
            raise ConfigError(f"{source}: {old!r} is renamed to itself; remove the pair")
        if old.casefold() in seen:
            raise ConfigError(
                f"{source}: old names {seen[old.casefold()]!r} and {old!r} differ only in case; "
                "names match case-insensitively, keep one"
            )
        seen[old.casefold()] = old
    olds = {old.casefold(): old for old in mapping}
    for old, new in mapping.items():
        if new.casefold() in olds:
            raise ConfigError(
                f"{source}: new name {new!r} (for {old!r}) is also an old name "
                f"({olds[new.casefold()]!r}); chained or swapped renames are ambiguous"
            )
    pairs = sorted(((o.strip(), n.strip()) for o, n in mapping.items()), key=lambda p: -len(p[0]))
    return RenameMap(tuple(pairs))


def load_rename_map(path: str | Path) -> RenameMap:
    """Read a rename map from a ``.json``, ``.yaml`` or ``.yml`` file.

    Raises:
        ConfigError: the file is missing, has another suffix, does not parse or is invalid.
    """
    path = Path(path)
    data = load_settings_file(path, what="rename", suffixes=RENAME_SUFFIXES)
    return parse_rename_map(data, source=path.name)


def _py_word_pattern(name: str) -> str:
    # Boundaries only where the name itself starts or ends with a word character,
    # the way PostgreSQL's \m and \M behave.
    start = r"(?<!\w)" if re.match(r"\w", name) else ""
    end = r"(?!\w)" if re.search(r"\w$", name) else ""
    return start + re.escape(name) + end


def pg_word_pattern(name: str) -> str:
    r"""Return a PostgreSQL ARE matching ``name`` as a whole word (``\m``/``\M``, escaped)."""
    escaped = "".join(ch if ch.isalnum() else "\\" + ch for ch in name)
    start = r"\m" if re.match(r"\w", name) else ""
    end = r"\M" if re.search(r"\w$", name) else ""
    return start + escaped + end


def _recase(found: str, old: str, new: str) -> str:
    if found == old:
        return new
    if found == found.lower():
        return new.lower()
    if found == found.upper() and sum(ch.isalpha() for ch in found) > 1:
        return new.upper()
    if found[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


# -- impact ------------------------------------------------------------------------


@dataclass(frozen=True)
class ImpactCount:
    chunks: int
    documents: int


@dataclass(frozen=True)
class ImpactReport:
    """What a rename touches in one version: distinct chunks and documents mentioning old names."""

    kb: str
    version: int
    total: ImpactCount
    live_total: ImpactCount
    by_segment: dict[str, ImpactCount]
    by_name: dict[str, ImpactCount]
    by_segment_name: dict[tuple[str, str], ImpactCount]
    documents: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        def pair(count: ImpactCount) -> dict[str, int]:
            return {"chunks": count.chunks, "documents": count.documents}

        return {
            "kb": self.kb, "version": self.version, "total": pair(self.total),
            "live_total": pair(self.live_total),
            "by_segment": {k: pair(v) for k, v in self.by_segment.items()},
            "by_name": {k: pair(v) for k, v in self.by_name.items()},
            "by_segment_name": [
                {"segment": s, "name": n} | pair(v) for (s, n), v in self.by_segment_name.items()
            ],
            "documents": list(self.documents),
        }

    def to_markdown(self) -> str:
        lines = [
            f"### Rebrand impact on {self.kb!r} v{self.version}",
            "",
            (f"{self.total.chunks} of {self.live_total.chunks} chunks and "
            f"{self.total.documents} of {self.live_total.documents} documents mention an old name."),
            "",
            "| segment | name | chunks | documents |",
            "|---|---|---:|---:|",
        ]
        for (segment, name), count in sorted(self.by_segment_name.items()):
            lines.append(f"| {segment} | {name} | {count.chunks} | {count.documents} |")
        for segment, count in sorted(self.by_segment.items()):
            lines.append(f"| {segment} | (any) | {count.chunks} | {count.documents} |")
        return "\n".join(lines)


_IMPACT_SQL = """
WITH names (name, pattern, mask) AS (
    SELECT * FROM unnest(%(names)s::text[], %(patterns)s::text[], %(masks)s::text[])),
live AS (
    SELECT c.id, c.doc_id, c.content, d.title, d.category
    FROM {table} c JOIN kb_documents d ON d.kb_id = %(kb_id)s AND d.doc_id = c.doc_id
    WHERE {in_version}
),
hits AS (
    -- Title and text, as embedded; mentions inside a longer old name are masked first.
    SELECT l.id, l.doc_id, l.category, n.name FROM live l CROSS JOIN names n
    CROSS JOIN LATERAL (SELECT l.title || E'\\n' || l.content AS text) t
    WHERE CASE WHEN n.mask = '' THEN t.text ELSE regexp_replace(t.text, n.mask, ' ', 'gi') END
          ~* n.pattern
)
SELECT category, name, count(DISTINCT id) AS chunks, count(DISTINCT doc_id) AS documents,
       GROUPING(category) AS g_category, GROUPING(name) AS g_name
FROM hits GROUP BY GROUPING SETS ((category, name), (category), (name), ())
"""


def find_impact(
    conn: store.Conn, kb: str, renames: RenameMap, *, version: int | None = None
) -> ImpactReport:
    """Count the chunks and documents of ``version`` (default: live) that mention old names.

    A chunk counts when its text or its document's title mentions a name: both are
    embedded, so both change when the documents are rebranded.

    Raises:
        VersionError: unknown KB, or no live version and none given.
    """
    kb_id = store.get_kb_id(conn, kb)
    if version is None:
        version = routing.live_version(conn, kb_id)
        if version is None:
            raise VersionError(
                f"knowledge base {kb!r} has no live version; nothing to rebrand yet "
                f"(run `kbrefresh refresh --kb {kb} --source PATH` first)"
            )
    table = store.fingerprint_for_version(conn, kb_id, version).table
    query = sql.SQL(_IMPACT_SQL).format(table=sql.Identifier(table), in_version=store.in_version())
    params = {
        "kb_id": kb_id, "version": version, "names": list(renames.old_names),
        "patterns": [pg_word_pattern(name) for name in renames.old_names],
        "masks": [_longer_names_pattern(renames, name) for name in renames.old_names],
    }
    rows = conn.execute(query, params).fetchall()
    total = ImpactCount(0, 0)
    by_segment: dict[str, ImpactCount] = {}
    by_name: dict[str, ImpactCount] = {}
    by_pair: dict[tuple[str, str], ImpactCount] = {}
    for row in rows:
        count = ImpactCount(int(row["chunks"]), int(row["documents"]))
        if row["g_category"] and row["g_name"]:
            total = count
        elif row["g_name"]:
            by_segment[row["category"]] = count
        elif row["g_category"]:
            by_name[row["name"]] = count
        else:
            by_pair[(row["category"], row["name"])] = count
    doc_rows = conn.execute(_doc_query(table), params).fetchall()
    stats = store.version_stats(conn, table, version)
    return ImpactReport(
        kb=kb, version=version, total=total,
        live_total=ImpactCount(stats["chunks"], stats["documents"]),
        by_segment=by_segment, by_name={name: by_name.get(name, ImpactCount(0, 0))
                                        for name in renames.old_names},
        by_segment_name=by_pair, documents=tuple(r["doc_id"] for r in doc_rows),
    )


def _longer_names_pattern(renames: RenameMap, name: str) -> str:
    """An ARE for the longer old names that contain ``name`` ('' when none).

    Mentions inside a longer name belong to that name, as in :meth:`RenameMap.rewrite`.
    """
    inner = re.compile(_py_word_pattern(name), re.IGNORECASE)
    longer = [old for old in renames.old_names if len(old) > len(name) and inner.search(old)]
    return "|".join(f"({pg_word_pattern(old)})" for old in longer)


def _doc_query(table: str) -> sql.Composed:
    return sql.SQL(
        "SELECT DISTINCT c.doc_id FROM {} c JOIN kb_documents d"
        " ON d.kb_id = %(kb_id)s AND d.doc_id = c.doc_id"
        " WHERE {} AND EXISTS (SELECT 1 FROM unnest(%(patterns)s::text[]) p"
        " WHERE c.content ~* p OR d.title ~* p) ORDER BY c.doc_id"
    ).format(sql.Identifier(table), store.in_version())


def write_rebranded_copy(source: str | Path, target: str | Path, renames: RenameMap) -> list[str]:
    """Copy the document tree ``source`` to ``target`` with every file's text rewritten.

    Paths (and so document ids) are kept: a rebrand changes what documents say, not
    which documents exist. Returns the relative paths whose text changed. Used by the
    demo and the benchmark to stand in for the rebranded docs a team would publish.
    """
    source, target = Path(source), Path(target)
    changed = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = path.relative_to(source)
        out = target / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text("utf-8")
        new = renames.rewrite(text)
        out.write_text(new, "utf-8")
        if new != text:
            changed.append(relative.as_posix())
    return changed

