"""Cut documents into chunks that follow their structure, and render what gets embedded.

A document is parsed into sections (Markdown with markdown-it-py, HTML with
BeautifulSoup, plain text by blank lines); each section is a list of blocks
(paragraphs, lists, tables, code). Blocks are packed into chunks of at most
``max_chars`` characters of ``text``; a block is only split when it alone is too long
(paragraphs at sentence, then word boundaries; code, tables and lists at lines).
A chunk after the first of its section starts with up to ``overlap_chars`` from the
end of the previous one (cut at a word); ``max_chars`` bounds the text, overlap
included. Section paths join the heading trail with " › ", leaving out a first
heading that merely repeats the title. Sections are chunked independently, so
editing one section leaves the chunks (and hashes) of every other section unchanged,
except that a section shorter than ``min_chars`` is carried into the next chunk of
the document (or, at the end, appended to the previous one) instead of standing alone.

``embed_text`` is ``header_template`` filled in (:meth:`ChunkerConfig.render`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from bs4 import BeautifulSoup
from bs4.element import NavigableString, PreformattedString, Tag
from markdown_it import MarkdownIt

from kbrefresh.build.code_blocks import product_version, split_code
from kbrefresh.build.html_text import HTML_DROPPED, inline_text, list_lines, table_text
from kbrefresh.errors import ConfigError
from kbrefresh.models import TEMPLATE_FIELDS, Chunk, ChunkerConfig, Document, sha256_text

__all__ = ["TEMPLATE_FIELDS", "chunk_document", "chunk_documents"]

logger = logging.getLogger(__name__)

SECTION_SEPARATOR = " › "
_BLOCK_SEP = "\n\n"
_PARAGRAPHS = (re.compile(r"\n[ \t]*\n\s*"), "\n\n")
_SENTENCES = (re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+"), " ")
_LINES = (re.compile(r"\n"), "\n")
_WORDS = (re.compile(r"\s+"), " ")
_SPLITTERS = {
    "para": (_PARAGRAPHS, _SENTENCES, _WORDS),
    "lines": (_LINES, _WORDS),
    "code": (_LINES, _WORDS),  # kept whole instead with code_max_chars (code_blocks.py)
}
_HTML_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_HTML_PARAGRAPHS = frozenset({"p", "address", "figcaption", "caption", "summary"})
_HTML_CONTAINERS = frozenset(
    {"html", "body", "main", "article", "section", "div", "blockquote", "figure"}
    | {"form", "fieldset", "details", "center", "dl", "dd", "dt", "li", "picture"}
)
_HTML_BLOCKS = _HTML_PARAGRAPHS | _HTML_CONTAINERS | set(_HTML_HEADINGS)
_HTML_BLOCKS |= {"pre", "ul", "ol", "table", "hr"}


def chunk_document(doc: Document, config: ChunkerConfig) -> list[Chunk]:
    """Return the chunks of ``doc``, numbered from 0, identical for identical input.

    Raises:
        ConfigError: ``doc.format`` is not markdown, html or text (a bad ``config``
            is refused when it is constructed).
    """
    sections = _parse(doc)
    pieces = _section_texts(sections, config)
    version = product_version(doc.metadata)
    chunks = []
    for index, (section, text) in enumerate(pieces):
        embed_text = config.render(text, title=doc.title.strip(), section=section,
                                   category=doc.category, version=version)
        if config.aliases:
            embed_text = _with_aliases(embed_text, config.aliases)
        chunks.append(
            Chunk(
                doc_id=doc.doc_id,
                chunk_index=index,
                text=text,
                embed_text=embed_text,
                content_hash=sha256_text(embed_text),
                section=section,
                metadata={"section": section},
            )
        )
    return chunks


def chunk_documents(docs: Iterable[Document], config: ChunkerConfig) -> Iterator[Chunk]:
    """Yield the chunks of every document in order (lazily, one document at a time)."""
    for doc in docs:
        yield from chunk_document(doc, config)


# -- rebrand aliases ----------------------------------------------------------------


def _with_aliases(embed_text: str, aliases: tuple[tuple[str, str], ...]) -> str:
    """Put "New, formerly Old" for each new name the text mentions above the text."""
    found = [f"{new}, formerly {old}" for old, new in aliases if _mentions(embed_text, new)]
    return f"({'; '.join(found)})\n{embed_text}" if found else embed_text


@lru_cache(maxsize=256)
def _word_pattern(name: str) -> re.Pattern[str]:
    start = r"(?<!\w)" if re.match(r"\w", name) else ""
    end = r"(?!\w)" if re.search(r"\w$", name) else ""
    return re.compile(start + re.escape(name) + end, re.IGNORECASE)


def _mentions(text: str, name: str) -> bool:
    return _word_pattern(name).search(text) is not None


# -- parsing into sections ---------------------------------------------------------


@dataclass(frozen=True)
class _Block:
    text: str
    kind: str  # "para", "lines" or "code": how to split it when it alone exceeds max_chars


@dataclass
class _Section:
    path: str
    blocks: list[_Block] = field(default_factory=list)


class _Sections:
    """Collect blocks under the heading path they appear in."""

    def __init__(self, title: str) -> None:
        # The first heading usually repeats the title, which the header already shows.
        self._title = title.strip().casefold()
        self._stack: list[tuple[int, str]] = []
        self.sections = [_Section("")]

    def heading(self, level: int, text: str) -> None:
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, " ".join(text.split())))
        names = [name for _, name in self._stack if name]
        if names and names[0].casefold() == self._title:
            names = names[1:]
        self.sections.append(_Section(SECTION_SEPARATOR.join(names)))

    def block(self, text: str, kind: str) -> None:
        text = text.strip("\n").rstrip()
        if text.strip():
            self.sections[-1].blocks.append(_Block(text, kind))


def _parse(doc: Document) -> list[_Section]:
    if doc.format == "markdown":
        return _markdown_sections(doc.content, doc.title)
    if doc.format == "html":
        return _html_sections(doc.content, doc.title)
    if doc.format == "text":
        sections = _Sections(doc.title)
        for paragraph in _PARAGRAPHS[0].split(doc.content):
            sections.block(paragraph, "para")
        return sections.sections
    raise ConfigError(
        f"document {doc.doc_id!r} has format {doc.format!r}; expected 'markdown', 'html' or 'text'"
    )


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    parser = MarkdownIt("commonmark").enable("table")
    # Blocks are sliced from the source by line map; inline parsing would only cost time.
    parser.core.ruler.disable(["inline"])
    return parser


def _markdown_sections(content: str, title: str) -> list[_Section]:
    sections = _Sections(title)
    lines = content.split("\n")
    tokens = _markdown().parse(content)
    for index, token in enumerate(tokens):
        if token.level != 0 or token.nesting == -1 or token.map is None:
            continue
        if token.type == "heading_open":
            sections.heading(int(token.tag[1]), tokens[index + 1].content)
        elif token.type == "paragraph_open" or token.type == "blockquote_open":
            sections.block("\n".join(lines[token.map[0] : token.map[1]]), "para")
        elif token.type != "hr":
            kind = "code" if token.type in ("fence", "code_block") else "lines"
            sections.block("\n".join(lines[token.map[0] : token.map[1]]), kind)
    return sections.sections


def _html_sections(content: str, title: str) -> list[_Section]:
    soup = BeautifulSoup(content, "html.parser")
    sections = _Sections(title)
    _HtmlWalker(sections).walk(soup.body or soup)
    return sections.sections


class _HtmlWalker:
    """Walk HTML in document order, turning block elements into section blocks."""

    def __init__(self, sections: _Sections) -> None:
        self._sections = sections
        self._inline: list[str] = []

    def walk(self, node: Tag) -> None:
        for child in node.children:
            if isinstance(child, PreformattedString):
                continue
            if isinstance(child, NavigableString):
                self._inline.append(str(child))
            elif isinstance(child, Tag):
                self._element(child)
        self._flush()

    def _element(self, tag: Tag) -> None:
        name = tag.name
        if name in HTML_DROPPED:
            return
        if name == "br":
            self._inline.append("\n")
            return
        if name not in _HTML_BLOCKS:
            self._inline.append(inline_text(tag))
            return
        self._flush()
        if name in _HTML_HEADINGS:
            self._sections.heading(_HTML_HEADINGS[name], inline_text(tag))
        elif name in _HTML_PARAGRAPHS:
            self._sections.block(inline_text(tag), "para")
        elif name == "pre":
            self._sections.block(tag.get_text(), "code")
        elif name in {"ul", "ol"}:
            self._sections.block("\n".join(list_lines(tag, 0)), "lines")
        elif name == "table":
            self._sections.block(table_text(tag), "lines")
        elif name != "hr":
            self.walk(tag)

    def _flush(self) -> None:
        text = " ".join("".join(self._inline).split())
        self._inline.clear()
        self._sections.block(text, "para")


# -- packing -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    text: str
    sep: str  # joins it to the piece before it in the same chunk
    whole: bool = False  # a code block: no overlap taken from it or put before it


def _section_texts(sections: list[_Section], config: ChunkerConfig) -> list[tuple[str, str]]:
    """Return (section path, chunk text) pairs for a whole document."""
    out: list[tuple[str, str]] = []
    carried: list[_Piece] = []
    carried_path = ""
    for section in sections:
        pieces = [piece for block in section.blocks for piece in _pieces(block, config)]
        if not pieces:
            continue
        if _joined_length(pieces) < config.min_chars:
            carried_path = carried_path if carried else section.path
            carried.extend(pieces)
            continue
        out.extend((section.path, text) for text in _pack(carried + pieces, config))
        carried = []
    if carried:
        tail = _join(carried)
        if out and len(out[-1][1]) + len(_BLOCK_SEP) + len(tail) <= config.max_chars:
            out[-1] = (out[-1][0], out[-1][1] + _BLOCK_SEP + tail)
        else:
            out.append((carried_path, tail))
    return out


def _pieces(block: _Block, config: ChunkerConfig) -> list[_Piece]:
    if block.kind == "code" and config.code_max_chars:
        return [_Piece(part, _BLOCK_SEP, whole=True)
                for part in split_code(block.text, config.code_max_chars)]
    return list(_split(block.text, _SPLITTERS[block.kind], config.max_chars, _BLOCK_SEP))


def _split(
    text: str, splitters: tuple[tuple[re.Pattern[str], str], ...], limit: int, sep: str
) -> Iterator[_Piece]:
    if len(text) <= limit:
        yield _Piece(text, sep)
        return
    if not splitters:
        for start in range(0, len(text), limit):
            yield _Piece(text[start : start + limit], sep if start == 0 else "")
        return
    (pattern, joiner), rest = splitters[0], splitters[1:]
    parts = [part for part in pattern.split(text) if part.strip()]
    if len(parts) <= 1:
        yield from _split(text, rest, limit, sep)
        return
    for number, part in enumerate(parts):
        yield from _split(part, rest, limit, sep if number == 0 else joiner)


def _pack(pieces: list[_Piece], config: ChunkerConfig) -> list[str]:
    """Greedily fill chunks; each new chunk starts with the tail of the previous one."""
    chunks: list[str] = []
    current: list[str] = []
    length = 0
    after_whole = False
    for piece in pieces:
        if current and length + len(piece.sep) + len(piece.text) <= config.max_chars:
            current += [piece.sep, piece.text]
            length += len(piece.sep) + len(piece.text)
            after_whole = piece.whole
            continue
        if current:
            previous = "".join(current)
            chunks.append(previous)
            joiner = piece.sep or " "
            budget = min(config.overlap_chars, config.max_chars - len(joiner) - len(piece.text))
            seed = "" if piece.whole or after_whole else _tail(previous, budget)
            current = [seed, joiner, piece.text] if seed else [piece.text]
        else:
            current = [piece.text]
        length = sum(len(part) for part in current)
        after_whole = piece.whole
    if current:
        chunks.append("".join(current))
    return chunks


def _tail(text: str, limit: int) -> str:
    """Return at most ``limit`` trailing characters of ``text``, starting at a word."""
    if limit <= 0:
        return ""
    tail = text[-limit:]
    if len(tail) < len(text) and not text[-limit - 1].isspace():
        match = re.search(r"\s", tail)
        tail = tail[match.end() :] if match else ""
    return tail.strip()


def _joined_length(pieces: list[_Piece]) -> int:
    return sum(len(piece.text) + len(piece.sep) for piece in pieces) - len(pieces[0].sep)


def _join(pieces: list[_Piece]) -> str:
    return "".join(piece.sep + piece.text for piece in pieces)[len(pieces[0].sep) :]
