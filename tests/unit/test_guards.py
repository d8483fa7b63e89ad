"""The source guards: unsafe ids, binary content, YAML aliases and depth (no database)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kbrefresh._text import MAX_YAML_DEPTH, load_yaml
from kbrefresh.build.sources.guards import (
    MAX_DOCUMENT_BYTES,
    binary_reason,
    doc_id_reason,
    file_reason,
    nul_column,
)

PLAIN = "is not a relative path of plain segments (no leading '/', no empty, '.' or '..' segment)"


@pytest.mark.parametrize("doc_id", ["faq", "general/billing/refunds", "Ünïcødé/知识", "a-b_c.d"])
def test_plain_ids_pass(doc_id: str) -> None:
    assert doc_id_reason(doc_id) is None


@pytest.mark.parametrize(
    ("doc_id", "reason"),
    [
        ("../../etc/passwd", f"has id '../../etc/passwd' that {PLAIN}"),
        ("/etc/shadow", f"has id '/etc/shadow' that {PLAIN}"),
        ("a/./b", f"has id 'a/./b' that {PLAIN}"),
        ("a//b", f"has id 'a//b' that {PLAIN}"),
        ("a\\..\\b", f"has id 'a\\\\..\\\\b' that {PLAIN}"),
        ("a\x00b", "has id 'a\\x00b' that contains control characters"),
        ("a\nb", "has id 'a\\nb' that contains control characters"),
    ],
)
def test_unsafe_ids_are_refused(doc_id: str, reason: str) -> None:
    assert doc_id_reason(doc_id) == reason


def test_binary_and_nul() -> None:
    assert binary_reason(b"plain text") is None
    assert binary_reason(b"ab\x00") == "is a binary file (NUL byte at offset 2); expected UTF-8 text"
    assert nul_column({"id": "1", "text": "fine", "title": "bad\x00"}) == "title"
    assert nul_column({"id": 1, "text": "fine"}) is None


def test_file_limits_and_links(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    big = root / "big.txt"
    with big.open("wb") as f:
        f.truncate(MAX_DOCUMENT_BYTES + 1)  # sparse: no 16 MiB written
    assert file_reason(root, big) == (f"is {MAX_DOCUMENT_BYTES + 1} bytes; expected at most "
                                      f"{MAX_DOCUMENT_BYTES} bytes per document (split it into "
                                      "smaller files)")
    (tmp_path / "outside.md").write_text("x", "utf-8")
    (root / "inside.md").write_text("x", "utf-8")
    (root / "out.md").symlink_to(tmp_path / "outside.md")
    (root / "in.md").symlink_to(root / "inside.md")
    (root / "loop.md").symlink_to(root / "loop.md")
    (root / "dangling.md").symlink_to(root / "nothing.md")
    assert file_reason(root, root / "inside.md") is None
    assert file_reason(root, root / "in.md") is None
    assert file_reason(root, root / "out.md") == (
        "is a symbolic link to outside the source directory; copy the file in or make it part "
        "of the source another way")
    assert file_reason(root, root / "loop.md") == "is a symbolic link that loops"
    assert file_reason(root, root / "dangling.md") == "cannot be read: No such file or directory"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: &a [1, 2]\nb: [*a, *a]\n", "found alias '*a'; YAML aliases are not accepted"),
        ("x: " + "[" * 2000 + "]" * 2000, f"nested more than {MAX_YAML_DEPTH} levels deep"),
        ("x:\n" + "".join(" " * i + "- \n" for i in range(1, 2000)),
         f"nested more than {MAX_YAML_DEPTH} levels deep"),
    ],
)
def test_yaml_aliases_and_depth_are_refused(text: str, problem: str) -> None:
    with pytest.raises(yaml.YAMLError) as info:
        load_yaml(text)
    assert getattr(info.value, "problem", None) == problem


def test_yaml_without_aliases_loads_fast_or_strict_alike() -> None:
    text = "title: Rates * and & signs\nnested: {a: [1, {b: 2}]}\nanchor: &x plain\n"
    assert load_yaml(text) == yaml.safe_load(text)
    assert load_yaml("note: '*not an alias*'\n") == {"note": "*not an alias*"}


def test_reader_refuses_each_bad_file_once_and_reads_the_rest(tmp_path: Path) -> None:
    import os

    from kbrefresh.build.sources import LoadProblem
    from kbrefresh.build.sources.directory import DirectoryReader

    root = tmp_path / "src"
    (root / "b" / "c").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "locked").mkdir()
    for rel in ("z.md", "a.md", "b/c/deep.md", "b/x.txt", ".hidden/h.md", "locked/l.md"):
        (root / rel).write_text("# T\n\nbody\n", "utf-8")
    with (root / "big.md").open("wb") as f:
        f.truncate(MAX_DOCUMENT_BYTES + 1)
    os.mkfifo(root / "pipe.md")  # reading it would block forever
    (tmp_path / "outside.md").write_text("x", "utf-8")
    (root / "out.md").symlink_to(tmp_path / "outside.md")
    (root / "in.md").symlink_to(root / "a.md")
    (root / "linked").symlink_to(root / "b", target_is_directory=True)  # not followed
    (root / "locked").chmod(0)
    try:
        reader = DirectoryReader(root)
        got = [reader.read(entry) for entry in reader.entries()]
        read = [f.doc_id for f in got if not isinstance(f, LoadProblem)]
        problems = {p.path: p.reason for p in reader.take_problems()
                    + [f for f in got if isinstance(f, LoadProblem)]}
    finally:
        (root / "locked").chmod(0o755)
    assert read == ["a", "in", "z", "b/x", "b/c/deep"] + (["locked/l"] if os.geteuid() == 0 else [])
    assert problems.pop("big.md").startswith(f"is {MAX_DOCUMENT_BYTES + 1} bytes")
    assert problems.pop("pipe.md") == "is not a regular file (a device, socket or pipe); remove it"
    assert problems.pop("out.md").startswith("is a symbolic link to outside the source")
    if os.geteuid() != 0:  # root lists any folder
        assert problems.pop("locked") == "cannot be listed: Permission denied"
    assert problems == {}

