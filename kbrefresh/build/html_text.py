"""Text of HTML elements for the chunker: inline text, list lines, table rows."""

from __future__ import annotations

from collections.abc import Iterator

from bs4.element import NavigableString, PreformattedString, Tag

# Elements whose text is never embedded (shared with the chunker's walker).
HTML_DROPPED = frozenset(
    {"script", "style", "nav", "footer", "header", "aside", "noscript", "head", "template"}
)


def inline_text(tag: Tag) -> str:
    parts: list[str] = []
    _collect_text(tag, parts)
    return " ".join("".join(parts).split())


def _collect_text(tag: Tag, parts: list[str]) -> None:
    for node in tag.children:
        if isinstance(node, Tag):
            if node.name == "br":
                parts.append(" ")
            elif node.name not in HTML_DROPPED:
                _collect_text(node, parts)
        elif isinstance(node, NavigableString) and not isinstance(node, PreformattedString):
            parts.append(node)


def _child_tags(tag: Tag, names: set[str]) -> list[Tag]:
    return [child for child in tag.children if isinstance(child, Tag) and child.name in names]


def _descendant_tags(tag: Tag, names: set[str]) -> Iterator[Tag]:
    for child in tag.children:
        if isinstance(child, Tag):
            if child.name in names:
                yield child
            else:
                yield from _descendant_tags(child, names)


def list_lines(tag: Tag, depth: int) -> list[str]:
    lines = []
    for number, item in enumerate(_child_tags(tag, {"li"}), start=1):
        nested = list(_descendant_tags(item, {"ul", "ol"}))
        for sub in nested:
            sub.extract()
        marker = f"{number}." if tag.name == "ol" else "-"
        lines.append(f"{'  ' * depth}{marker} {inline_text(item)}")
        for sub in nested:
            lines.extend(list_lines(sub, depth + 1))
    return lines


def table_text(tag: Tag) -> str:
    lines = []
    lines = [inline_text(caption) for caption in _child_tags(tag, {"caption"})]
    for row in _descendant_tags(tag, {"tr"}):
        cells = _child_tags(row, {"th", "td"})
        lines.append(" | ".join(inline_text(cell) for cell in cells))
    return "\n".join(line for line in lines if line.strip(" |"))
