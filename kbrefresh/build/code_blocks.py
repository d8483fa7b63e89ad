"""Code blocks kept whole: the rule for a block longer than the hard limit, and the version.

With ``ChunkerConfig.code_max_chars`` set, a code block (a Markdown fence or indented
block, an HTML ``<pre>``) of up to that many characters is one piece: it is never split
across chunks and never followed into the next chunk by an overlap of its tail. It may
exceed ``max_chars`` (it then stands alone in its chunk). A longer block is cut at line
boundaries into the fewest parts of at most ``code_max_chars`` characters; for a fenced
block each part is closed and reopened with the block's own fence line, so every chunk
holds valid Markdown with the language tag. A single line longer than the room left
inside the fences is cut at that room.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})[^\n]*$")
# Front-matter keys that name the product version a document is about, first found wins.
VERSION_KEYS = ("product_version", "version")


def product_version(metadata: Mapping[str, Any]) -> str:
    """The document's product version from its front matter (``product_version:`` or
    ``version:``), or "" when it has none."""
    for key in VERSION_KEYS:
        value = metadata.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return ""


def split_code(text: str, limit: int) -> list[str]:
    """Return ``text`` whole if it fits in ``limit``, else its parts by the rule above."""
    if len(text) <= limit:
        return [text]
    lines = text.split("\n")
    opened = _FENCE.match(lines[0])
    closing = ""
    if opened and len(lines) > 1 and lines[-1].strip().startswith(opened["fence"]):
        closing = opened["indent"] + opened["fence"]
        head, body = lines[0], lines[1:-1]
    else:
        head, body = "", lines
    frame = (len(head) + 1 + 1 + len(closing)) if closing else 0
    room = max(1, limit - frame)
    parts: list[list[str]] = [[]]
    size = 0
    for line in (piece for whole in body for piece in _cut(whole, room)):
        if parts[-1] and size + 1 + len(line) > room:
            parts.append([])
            size = 0
        size += len(line) + (1 if parts[-1] else 0)
        parts[-1].append(line)
    if closing:
        return [f"{head}\n" + "\n".join(part) + f"\n{closing}" for part in parts]
    return ["\n".join(part) for part in parts]


def _cut(line: str, room: int) -> list[str]:
    return [line[i:i + room] for i in range(0, len(line), room)] or [""]
