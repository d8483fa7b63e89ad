"""Domain values shared across the core: documents, chunks, fingerprints."""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from kbrefresh.errors import ConfigError

TEMPLATE_FIELDS = ("title", "section", "category", "version", "text")
_TEMPLATE_SEPARATOR = r"[ \t]*[›»>|/:·,–—-][ \t]*"


def sha256_text(text: str) -> str:
    """Return the hex sha256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Document:
    """One source document, as read from a directory or a table.

    ``doc_id`` is stable across runs (relative path without suffix for files, the id
    column for tables). ``content`` is the raw text in ``format`` ("markdown", "html"
    or "text"); ``content_hash`` is the sha256 of ``content`` plus title and category,
    so a retitled document counts as changed.
    """

    doc_id: str
    uri: str
    title: str
    category: str
    content: str
    format: str
    content_hash: str
    modified_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """One chunk of a document, ready to embed.

    ``text`` is the chunk body shown to users; ``embed_text`` is what the embedder
    sees (the contextual header template applied); ``content_hash`` is the sha256 of
    ``embed_text`` and is the reuse key: equal hash under one fingerprint = same vector.
    """

    doc_id: str
    chunk_index: int
    text: str
    embed_text: str
    content_hash: str
    section: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkerConfig:
    """How documents are cut into chunks and what text is embedded.

    Sizes are in characters (the offline default has no tokenizer; ~4 chars/token).
    ``header_template`` may use ``{title}``, ``{section}``, ``{category}``, ``{version}``
    (the front matter's ``product_version`` or ``version``), ``{text}``.
    ``aliases`` (old name, new name) pairs add a line "New, formerly Old" above the
    embedded text of chunks that mention a new name (a rebrand keeps old names
    findable). They are left out of ``as_dict`` and so of the fingerprint: the alias
    line is part of ``embed_text`` and its content hash, so only the chunks it changes
    are re-embedded, where a fingerprint change would rebuild every chunk.
    """

    max_chars: int = 1200
    overlap_chars: int = 150
    min_chars: int = 40
    header_template: str = "{title} › {section}\n\n{text}"
    aliases: tuple[tuple[str, str], ...] = ()
    # 0: code blocks split like any block; else kept whole up to this hard limit
    # (kbrefresh/build/code_blocks.py has the rule beyond it).
    code_max_chars: int = 0

    def __post_init__(self) -> None:
        """Refuse a config that cannot chunk, before anything is created.

        Raises:
            ConfigError: a size is out of range or the template has unknown
                placeholders, is not a format string, or lacks ``{text}``.
        """
        _check_sizes(self)
        _check_template(self.header_template)

    def render(
        self, text: str, *, title: str, section: str, category: str, version: str = ""
    ) -> str:
        """Return ``header_template`` filled in: the text that gets embedded.

        An empty title, section or category is removed together with the separator
        next to it (``"{title} › {section}"`` renders as just the title), so no
        dangling ``" › "`` is embedded.
        """
        values = {"title": title, "section": section, "category": category, "version": version}
        empty = frozenset(name for name, value in values.items() if not value)
        template = _template_without(self.header_template, empty) if empty else self.header_template
        return template.format(text=text, **values).strip()

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_chars": self.max_chars,
            "overlap_chars": self.overlap_chars,
            "min_chars": self.min_chars,
            "header_template": self.header_template,
        } | ({"code_max_chars": self.code_max_chars} if self.code_max_chars else {})


@lru_cache(maxsize=256)
def _template_without(template: str, empty: frozenset[str]) -> str:
    """Drop the placeholders in ``empty`` together with one adjacent separator."""
    for name in sorted(empty):
        placeholder = r"\{" + name + r"(?:![rsa])?(?::[^{}]*)?\}"
        before = re.compile(_TEMPLATE_SEPARATOR + placeholder)
        after = re.compile(placeholder + _TEMPLATE_SEPARATOR)
        for pattern in (before, after, re.compile(placeholder)):
            template, count = pattern.subn("", template, count=1)
            if count:
                break
    return template


def _check_sizes(config: ChunkerConfig) -> None:
    if isinstance(config.max_chars, bool) or not isinstance(config.max_chars, int) \
            or config.max_chars < 1:
        raise ConfigError(f"max_chars must be at least 1, got {config.max_chars!r}")
    if not 0 <= config.overlap_chars < config.max_chars:
        raise ConfigError(
            f"overlap_chars must be between 0 and max_chars - 1 ({config.max_chars - 1}), "
            f"got {config.overlap_chars!r}"
        )
    if not 0 <= config.min_chars <= config.max_chars:
        raise ConfigError(
            f"min_chars must be between 0 and max_chars ({config.max_chars}), "
            f"got {config.min_chars!r}"
        )
    if config.code_max_chars and not config.max_chars <= config.code_max_chars <= 100_000:
        raise ConfigError(
            f"code_max_chars must be 0 (code split like any block) or between max_chars "
            f"({config.max_chars}) and 100000, got {config.code_max_chars!r}"
        )


def _check_template(template: str) -> None:
    valid = ", ".join("{" + name + "}" for name in TEMPLATE_FIELDS)
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template)]
    except ValueError as exc:
        raise ConfigError(
            f"header_template {template!r} is not a valid format string "
            f"({exc}); valid placeholders are {valid}"
        ) from exc
    unknown = [name for name in names if name is not None and name not in TEMPLATE_FIELDS]
    if unknown:
        raise ConfigError(
            f"header_template uses unknown placeholder {unknown[0]!r}; "
            f"valid placeholders are {valid}"
        )
    if "text" not in names:
        raise ConfigError(
            f"header_template {template!r} must contain {{text}}, "
            "or the chunk itself would not be embedded"
        )


@dataclass(frozen=True)
class Fingerprint:
    """Everything that decides a vector: one version never mixes fingerprints."""

    provider: str
    model: str
    dims: int
    chunker: Mapping[str, Any]
    # How vectors are stored: "vector" (float32) or "halfvec" (float16).
    storage: str = "vector"

    def as_dict(self) -> dict[str, Any]:
        spec = {
            "provider": self.provider,
            "model": self.model,
            "dims": self.dims,
            "chunker": dict(self.chunker),
        }
        # Only a non-default storage enters the spec, so existing fingerprints keep their key.
        return spec | ({"storage": self.storage} if self.storage != "vector" else {})

    @property
    def key(self) -> str:
        """Return a short stable hash of the fingerprint."""
        return sha256_text(json.dumps(self.as_dict(), sort_keys=True))[:16]


@dataclass(frozen=True)
class BuildTicket:
    """Plain identifiers of a build in progress (what every refresh step after the first needs)."""

    kb: str
    kb_id: int
    version: int
    resumed: bool
    table: str
    dims: int
    fingerprint_key: str
    live_version: int | None
    live_fingerprint_key: str | None
    storage: str = "vector"

    @property
    def fingerprint_changed(self) -> bool:
        return self.live_fingerprint_key is not None and self.live_fingerprint_key != self.fingerprint_key
