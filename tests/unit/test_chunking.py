from __future__ import annotations

import re
from typing import Any

import pytest

from kbrefresh.build.chunking import chunk_document, chunk_documents
from kbrefresh.errors import ConfigError
from kbrefresh.models import Chunk, ChunkerConfig, Document, sha256_text

PLAIN = "{text}"  # template that embeds the bare text, for exact assertions


def make_doc(
    content: str,
    fmt: str = "markdown",
    *,
    doc_id: str = "doc",
    title: str = "Guide",
    category: str = "general",
) -> Document:
    return Document(
        doc_id=doc_id,
        uri=f"file:///{doc_id}",
        title=title,
        category=category,
        content=content,
        format=fmt,
        content_hash=sha256_text(content),
    )


def sentence(n: int, words: int = 8) -> str:
    return " ".join(f"w{n}x{i}" for i in range(words)) + "."


def paragraph(n: int, sentences: int = 5) -> str:
    return " ".join(sentence(n * 100 + i) for i in range(sentences))


def texts(chunks: list[Chunk]) -> list[str]:
    return [chunk.text for chunk in chunks]


# ---- markdown structure -----------------------------------------------------------------

GUIDE = """# Guide

Intro paragraph that is long enough to stand alone.

## Install

Install the package with the installer of your platform.

### Linux

Use the distribution package manager to install it.

## Use

Run the command and read the output carefully.
"""


def test_markdown_sections_follow_headings() -> None:
    chunks = chunk_document(make_doc(GUIDE), ChunkerConfig(min_chars=10))
    assert [(c.chunk_index, c.section, c.text) for c in chunks] == [
        (0, "", "Intro paragraph that is long enough to stand alone."),
        (1, "Install", "Install the package with the installer of your platform."),
        (2, "Install › Linux", "Use the distribution package manager to install it."),
        (3, "Use", "Run the command and read the output carefully."),
    ]
    assert [c.metadata for c in chunks] == [
        {"section": ""},
        {"section": "Install"},
        {"section": "Install › Linux"},
        {"section": "Use"},
    ]
    assert chunks[2].embed_text == (
        "Guide › Install › Linux\n\nUse the distribution package manager to install it."
    )
    assert chunks[2].content_hash == sha256_text(chunks[2].embed_text)
    assert {c.doc_id for c in chunks} == {"doc"}


def test_empty_section_leaves_no_dangling_separator() -> None:
    (first, *_) = chunk_document(make_doc(GUIDE), ChunkerConfig(min_chars=10))
    assert first.embed_text == "Guide\n\nIntro paragraph that is long enough to stand alone."


def test_first_heading_is_kept_when_it_differs_from_the_title() -> None:
    doc = make_doc("# Other\n\n## Part\n\nSome words in a part of the doc.\n", title="Guide")
    (chunk,) = chunk_document(doc, ChunkerConfig(min_chars=0))
    assert chunk.section == "Other › Part"
    assert chunk.embed_text == "Guide › Other › Part\n\nSome words in a part of the doc."


def test_code_blocks_and_tables_are_never_split() -> None:
    code = "```python\n" + "\n".join(f"value_{i} = {i}  # set" for i in range(20)) + "\n```"
    table = "| a | b |\n|---|---|\n" + "\n".join(f"| row {i} | cell {i} |" for i in range(15))
    content = f"# Guide\n\n{paragraph(1)}\n\n{code}\n\n{paragraph(2)}\n\n{table}\n"
    config = ChunkerConfig(max_chars=500, overlap_chars=0, min_chars=0)
    chunks = texts(chunk_document(make_doc(content), config))
    assert len(code) < 500 and len(table) < 500
    assert sum(code in chunk for chunk in chunks) == 1
    assert sum(table in chunk for chunk in chunks) == 1
    assert all(len(chunk) <= 500 for chunk in chunks)


def test_oversized_code_block_is_split_by_lines() -> None:
    lines = [f"    step_{i:02d}(argument_{i:02d})" for i in range(30)]
    content = "```\n" + "\n".join(lines) + "\n```\n"
    config = ChunkerConfig(max_chars=200, overlap_chars=0, min_chars=0)
    chunks = texts(chunk_document(make_doc(content), config))
    assert all(len(chunk) <= 200 for chunk in chunks)
    # "```" + 7 lines, then 8 lines (8 * 24 + 7 = 199 chars), 8 lines, 7 lines + "```"
    assert len(chunks) == 4
    assert chunks[0] == "```\n" + "\n".join(lines[:7])
    assert chunks[1] == "\n".join(lines[7:15])
    body = "\n".join(chunks)
    assert all(line in body.split("\n") for line in lines)
    assert chunks[0].startswith("```\n    step_00(argument_00)")
    assert chunks[-1].endswith("    step_29(argument_29)\n```")


def test_paragraphs_are_packed_whole() -> None:
    paragraphs = [f"Paragraph number {i} has exactly these words." for i in range(6)]
    content = "\n\n".join(paragraphs)
    config = ChunkerConfig(max_chars=100, overlap_chars=0, min_chars=0, header_template=PLAIN)
    chunks = texts(chunk_document(make_doc(content, "text"), config))
    assert chunks == ["\n\n".join(paragraphs[i : i + 2]) for i in (0, 2, 4)]


def test_long_paragraph_splits_at_sentences() -> None:
    sentences = [f"Sentence {i} is here." for i in range(6)]  # 21 chars each
    config = ChunkerConfig(max_chars=50, overlap_chars=0, min_chars=0)
    chunks = texts(chunk_document(make_doc(" ".join(sentences), "text"), config))
    assert chunks == [" ".join(sentences[i : i + 2]) for i in (0, 2, 4)]


def test_long_sentence_splits_at_words_and_giant_words_hard() -> None:
    words = " ".join(f"word{i:02d}" for i in range(20))  # 6-char words, no punctuation
    config = ChunkerConfig(max_chars=20, overlap_chars=0, min_chars=0)
    chunks = texts(chunk_document(make_doc(words, "text"), config))
    assert chunks[0] == "word00 word01 word02"
    assert all(len(chunk) <= 20 for chunk in chunks)
    assert " ".join(chunks) == words
    giant = "x" * 45
    assert texts(chunk_document(make_doc(giant, "text"), config)) == ["x" * 20, "x" * 20, "x" * 5]


def test_overlap_is_taken_from_the_previous_chunk_at_a_word_boundary() -> None:
    sentences = [f"Sentence {i} is here." for i in range(4)]
    config = ChunkerConfig(max_chars=45, overlap_chars=12, min_chars=0)
    chunks = texts(chunk_document(make_doc(" ".join(sentences), "text"), config))
    # 12 chars back from the end of a chunk lands mid-word ("e 1 is here."): skip to "1".
    assert chunks == [
        "Sentence 0 is here. Sentence 1 is here.",
        "1 is here. Sentence 2 is here.",
        "2 is here. Sentence 3 is here.",
    ]


def test_overlap_stays_within_a_section() -> None:
    content = f"## A\n\n{paragraph(1)}\n\n{paragraph(2)}\n\n## B\n\n{paragraph(3)}\n"
    config = ChunkerConfig(max_chars=300, overlap_chars=40, min_chars=0)
    chunks = chunk_document(make_doc(content), config)
    first_b = next(c for c in chunks if c.section == "B")
    assert first_b.text.startswith("w300x0 ")


@pytest.mark.parametrize(
    ("max_chars", "overlap_chars", "min_chars"),
    [(1200, 150, 40), (300, 60, 20), (120, 0, 0), (80, 79, 80)],
)
def test_chunks_never_exceed_max_chars(max_chars: int, overlap_chars: int, min_chars: int) -> None:
    content = "\n\n".join(
        [
            "# Guide",
            paragraph(1, 12),
            "## Code",
            "```\n" + "\n".join(f"line {i} of code" for i in range(40)) + "\n```",
            "## Tiny",
            "Short.",
            "## List",
            "\n".join(f"- item {i} " + "word " * i for i in range(12)),
            "## Last",
            paragraph(2, 3),
        ]
    )
    config = ChunkerConfig(max_chars, overlap_chars, min_chars)
    chunks = chunk_document(make_doc(content), config)
    assert all(0 < len(c.text) <= max_chars for c in chunks)
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))


# ---- tiny sections ----------------------------------------------------------------------


def test_tiny_sections_are_merged_into_the_next_chunk() -> None:
    long_enough = "A section long enough to be a chunk on its own."
    content = (
        f"## A\n\nTiny.\n\n## B\n\nAlso tiny.\n\n## C\n\n{long_enough}\n\n## D\n\n{long_enough}\n"
    )
    chunks = chunk_document(make_doc(content), ChunkerConfig(min_chars=40))
    assert [(c.section, c.text) for c in chunks] == [
        ("C", f"Tiny.\n\nAlso tiny.\n\n{long_enough}"),
        ("D", long_enough),
    ]


def test_trailing_tiny_section_is_appended_to_the_previous_chunk() -> None:
    content = "## A\n\nA section long enough to be a chunk on its own.\n\n## B\n\nThe end.\n"
    chunks = chunk_document(make_doc(content), ChunkerConfig(min_chars=40))
    assert [(c.section, c.text) for c in chunks] == [
        ("A", "A section long enough to be a chunk on its own.\n\nThe end."),
    ]


def test_tiny_document_still_yields_one_chunk() -> None:
    chunks = chunk_document(make_doc("## Note\n\nHi.\n"), ChunkerConfig(min_chars=40))
    assert [(c.section, c.text, c.embed_text) for c in chunks] == [
        ("Note", "Hi.", "Guide › Note\n\nHi.")
    ]


@pytest.mark.parametrize("content", ["", "   \n\n  ", "# Guide\n\n## Empty\n"])
def test_document_without_body_text_yields_no_chunks(content: str) -> None:
    assert chunk_document(make_doc(content), ChunkerConfig()) == []


# ---- HTML and plain text ----------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html><head><title>Guide</title><style>p { color: red }</style></head>
<body>
<header><p>Site header</p></header>
<nav><a href="/">Home</a></nav>
<main>
<h1>Guide</h1>
<p>Intro with <b>bold</b> text and a<br>line break.</p>
<h2>Steps</h2>
<ol><li>First step</li><li>Second <em>step</em><ul><li>Nested detail</li></ul></li></ol>
<pre>def f():
    return 1</pre>
<h2>Matrix</h2>
<table><tr><th>Plan</th><th>Seats</th></tr><tr><td>Team</td><td>5</td></tr></table>
<div>Loose text in a div.</div>
<!-- a comment -->
<script>track("view")</script>
<noscript>Enable JS</noscript>
<aside>Related links</aside>
</main>
<footer>Copyright</footer>
</body></html>
"""


def test_html_sections_and_blocks() -> None:
    chunks = chunk_document(make_doc(PAGE, "html"), ChunkerConfig(min_chars=0))
    assert [(c.section, c.text) for c in chunks] == [
        ("", "Intro with bold text and a line break."),
        (
            "Steps",
            "1. First step\n2. Second step\n  - Nested detail\n\ndef f():\n    return 1",
        ),
        ("Matrix", "Plan | Seats\nTeam | 5\n\nLoose text in a div."),
    ]
    everything = " ".join(c.embed_text for c in chunks)
    for dropped in ("Site header", "Home", "color", "track", "Enable JS", "Related", "Copyright"):
        assert dropped not in everything


def test_plain_text_paragraphs() -> None:
    content = "First paragraph\nwith two lines.\n\n\nSecond paragraph.\n"
    config = ChunkerConfig(max_chars=40, overlap_chars=0, min_chars=0)
    chunks = chunk_document(make_doc(content, "text"), config)
    assert [(c.section, c.text) for c in chunks] == [
        ("", "First paragraph\nwith two lines."),
        ("", "Second paragraph."),
    ]


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        chunk_document(make_doc("x", "pdf"), ChunkerConfig())
    assert str(info.value) == (
        "document 'doc' has format 'pdf'; expected 'markdown', 'html' or 'text'"
    )


# ---- templates and config ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "title", "section", "expected"),
    [
        ("{title} › {section}\n\n{text}", "Guide", "Part", "Guide › Part\n\nBody text."),
        ("{title} › {section}\n\n{text}", "Guide", "", "Guide\n\nBody text."),
        ("{title} › {section}\n\n{text}", "", "Part", "Part\n\nBody text."),
        ("{title} › {section}\n\n{text}", "", "", "Body text."),
        ("[{category}] {title}: {section}\n{text}", "Guide", "", "[general] Guide\nBody text."),
        ("{section} / {title}\n{text}", "Guide", "", "Guide\nBody text."),
        ("{text}", "Guide", "Part", "Body text."),
    ],
)
def test_header_template(template: str, title: str, section: str, expected: str) -> None:
    content = f"## {section}\n\nBody text.\n" if section else "Body text.\n"
    doc = make_doc(content, title=title)
    (chunk,) = chunk_document(doc, ChunkerConfig(min_chars=0, header_template=template))
    assert chunk.embed_text == expected


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"header_template": "{title} {heading}\n{text}"},
            (
                "header_template uses unknown placeholder 'heading'; "
                "valid placeholders are {title}, {section}, {category}, {version}, {text}"
            ),
        ),
        (
            {"header_template": "{title.upper}\n{text}"},
            (
                "header_template uses unknown placeholder 'title.upper'; "
                "valid placeholders are {title}, {section}, {category}, {version}, {text}"
            ),
        ),
        (
            {"header_template": "{title}"},
            (
                "header_template '{title}' must contain {text}, "
                "or the chunk itself would not be embedded"
            ),
        ),
        (
            {"header_template": "{title\n{text}"},
            (
                "header_template '{title\\n{text}' is not a valid format string "
                "(unexpected '{' in field name); "
                "valid placeholders are {title}, {section}, {category}, {version}, {text}"
            ),
        ),
        ({"max_chars": 0}, "max_chars must be at least 1, got 0"),
        (
            {"max_chars": 100, "overlap_chars": 100},
            "overlap_chars must be between 0 and max_chars - 1 (99), got 100",
        ),
        (
            {"overlap_chars": -1},
            "overlap_chars must be between 0 and max_chars - 1 (1199), got -1",
        ),
        (
            {"max_chars": 100, "overlap_chars": 10, "min_chars": 101},
            "min_chars must be between 0 and max_chars (100), got 101",
        ),
    ],
)
def test_invalid_config_is_rejected_when_constructed(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ChunkerConfig(**config)
    assert str(info.value) == message


# ---- determinism and locality -----------------------------------------------------------


def long_doc(changed: str | None = None) -> str:
    sections = []
    for s in range(6):
        paragraphs = [paragraph(s * 10 + p, 4) for p in range(4)]
        if changed is not None and s == 3:
            paragraphs[2] = changed
        sections.append(f"## Section {s}\n\n" + "\n\n".join(paragraphs))
    return "# Guide\n\n" + "\n\n".join(sections) + "\n"


def test_chunking_is_deterministic() -> None:
    config = ChunkerConfig(max_chars=400, overlap_chars=80)
    assert chunk_document(make_doc(long_doc()), config) == chunk_document(
        make_doc(long_doc()), config
    )


def test_editing_one_paragraph_changes_only_that_sections_chunks() -> None:
    config = ChunkerConfig(max_chars=400, overlap_chars=80)
    before = chunk_document(make_doc(long_doc()), config)
    after = chunk_document(make_doc(long_doc(changed="A rewritten paragraph. " * 5)), config)
    assert len(before) > 12

    def hashes(chunks: list[Chunk], *, in_section: bool) -> list[str]:
        return [c.content_hash for c in chunks if (c.section == "Section 3") == in_section]

    assert hashes(after, in_section=False) == hashes(before, in_section=False)
    changed = set(hashes(after, in_section=True)) - set(hashes(before, in_section=True))
    assert changed
    assert len(changed) < len(hashes(after, in_section=True))  # earlier chunks reused


def test_chunk_documents_streams_all_documents_in_order() -> None:
    docs = [
        make_doc(GUIDE, doc_id="a"),
        make_doc("Only text here, long enough.", "text", doc_id="b"),
    ]
    config = ChunkerConfig(min_chars=10)
    streamed = list(chunk_documents(docs, config))
    assert streamed == chunk_document(docs[0], config) + chunk_document(docs[1], config)
    assert [(c.doc_id, c.chunk_index) for c in streamed] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("a", 3),
        ("b", 0),
    ]


def test_a_bad_config_is_a_value_error_too() -> None:
    with pytest.raises(ValueError, match=re.escape("max_chars must be at least 1, got 0")):
        ChunkerConfig(max_chars=0)
