"""Segment profiles: per-segment chunking and context, from a knowledge base's config file.

A segment is a document category (``category: technical``) or a doc-id glob
(``doc_glob: "technical/api/*"``). Its profile says how its documents are chunked and
which header is embedded with each chunk. One table holds one embedding space
(provider, model, dimensions); the chunking is recorded per document: a profiled
document's manifest hash folds in its chunking key, so changing one segment's profile
re-chunks and re-embeds that segment's documents only, and every other vector is reused.

Example ``kb.yaml``::

    segments:
      technical:
        category: technical
        max_chars: 600
        overlap_chars: 60
        header_template: "{category} › {title} › {section}\\n\\n{text}"
        code_max_chars: 2400            # fenced code kept whole up to this (0: split)

``header_template`` may name ``{version}``: the product version from the document's
front matter (``product_version:`` or ``version:``), left out when it has none.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kbrefresh._text import load_settings_file
from kbrefresh.build.code_blocks import product_version
from kbrefresh.errors import ConfigError
from kbrefresh.models import ChunkerConfig, Document, sha256_text


class SegmentProfile(BaseModel):
    """Which documents form the segment, and how they are chunked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    category: str | None = Field(default=None, min_length=1)
    doc_glob: str | None = Field(default=None, min_length=1)
    max_chars: int = Field(default=ChunkerConfig.max_chars, ge=100, le=20000)
    overlap_chars: int = Field(default=ChunkerConfig.overlap_chars, ge=0, le=5000)
    min_chars: int = Field(default=ChunkerConfig.min_chars, ge=0, le=5000)
    header_template: str = Field(default=ChunkerConfig.header_template, min_length=6)
    code_max_chars: int = Field(default=0, ge=0, le=100_000)

    @model_validator(mode="after")
    def _one_selector(self) -> SegmentProfile:
        if (self.category is None) == (self.doc_glob is None):
            raise ValueError("expected exactly one of 'category' or 'doc_glob'")
        try:
            self.chunker()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def chunker(self) -> ChunkerConfig:
        return ChunkerConfig(max_chars=self.max_chars, overlap_chars=self.overlap_chars,
                             min_chars=self.min_chars, header_template=self.header_template,
                             code_max_chars=self.code_max_chars)

    def matches(self, doc_id: str, category: str) -> bool:
        if self.category is not None:
            return category == self.category
        assert self.doc_glob is not None
        return fnmatch.fnmatchcase(doc_id, self.doc_glob)

    def chunking_key(self) -> str:
        return sha256_text(json.dumps(self.chunker().as_dict(), sort_keys=True))[:12]


class KbProfiles(BaseModel):
    """The ``segments`` section of a knowledge base's config file (first match wins)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    segments: dict[str, SegmentProfile] = Field(default_factory=dict)

    def segment_of(self, doc_id: str, category: str) -> str | None:
        return next((name for name, p in self.segments.items() if p.matches(doc_id, category)),
                    None)

    def require(self, segment: str) -> SegmentProfile:
        if segment not in self.segments:
            raise ConfigError(f"segment {segment!r} has no profile; expected one of: "
                              f"{', '.join(sorted(self.segments)) or '(none configured)'}")
        return self.segments[segment]

    def key(self) -> str:
        return sha256_text(self.model_dump_json())[:12]


def parse_profiles(data: Any, *, source: str = "profile") -> KbProfiles:
    """Validate a ``{"segments": {...}}`` mapping.

    Raises:
        ConfigError: one line naming each bad key and what was expected.
    """
    try:
        return KbProfiles.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            msg = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                problems.append(f"{where}: unknown key")
            elif error["type"] == "value_error":
                problems.append(f"{where}: {msg}" if where else msg)
            else:
                problems.append(f"{where}={error['input']!r}: {msg}" if where else msg)
        raise ConfigError(f"{source}: {'; '.join(problems)}") from exc


def load_profiles(path: str | Path) -> KbProfiles:
    """Read segment profiles from a ``.yaml``, ``.yml`` or ``.toml`` KB config file.

    Raises:
        ConfigError: the file is missing, does not parse, or holds an invalid profile.
    """
    path = Path(path)
    return parse_profiles(load_settings_file(path, what="profile"), source=path.name)


@dataclass(frozen=True)
class ProfiledDocument:
    document: Document
    chunker: ChunkerConfig
    segment: str | None


def apply_profiles(
    docs: Iterable[Document], profiles: KbProfiles | None, default: ChunkerConfig,
) -> list[ProfiledDocument]:
    """Give each document its chunker; profiled documents first (the segment is embedded first).

    A profiled document's hash folds in its chunking key and its metadata records the
    chunking, so the manifest sees a profile change as a change of that document only.
    """
    out: list[ProfiledDocument] = []
    for doc in docs:
        segment = profiles.segment_of(doc.doc_id, doc.category) if profiles else None
        if segment is None or profiles is None:
            out.append(ProfiledDocument(doc, default, None))
            continue
        profile = profiles.segments[segment]
        key = profile.chunking_key()
        recorded = dict(doc.metadata) | {"chunking": {"segment": segment, "key": key}}
        # The version may be in every chunk's header: a new version re-chunks the document.
        version = f":{v}" if (v := product_version(doc.metadata)) else ""
        out.append(ProfiledDocument(
            replace(doc, content_hash=sha256_text(f"{doc.content_hash}:{key}{version}"),
                    metadata=recorded),
            profile.chunker(), segment))
    return sorted(out, key=lambda p: p.segment is None)


def segment_doc_ids(
    docs: Sequence[tuple[str, str]], profile: SegmentProfile
) -> list[str]:
    """Return the ids of ``(doc_id, category)`` pairs that belong to ``profile``'s segment."""
    return [doc_id for doc_id, category in docs if profile.matches(doc_id, category)]


def describe(profiles: KbProfiles) -> Mapping[str, dict[str, Any]]:
    return {name: p.model_dump(exclude_none=True) for name, p in profiles.segments.items()}
