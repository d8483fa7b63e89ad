"""Build a realistic documentation corpus and golden queries from Debian's python3-doc.

Reads the HTML manual of ``apt-get install python3-doc`` (downloads nothing) and writes
v1/, v2/, v2_damaged/, v2_aa/, golden.jsonl and manifest.json (see README_corpus.md).
Doc ids follow ``kbrefresh.sources.directory``: path without suffix; category = first
folder ("general" for top-level pages); title = the page's ``<title>``.
"""

from __future__ import annotations

import argparse
import html
import json
import random
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import zip_longest
from pathlib import Path, PurePosixPath
from typing import Any

from bs4 import BeautifulSoup
from bs4.element import Tag
from bs4.filter import SoupStrainer

MANUAL_CANDIDATES = (
    Path("/usr/share/doc/python3-doc/html"),
    Path("/usr/share/doc/python3/html"),
    Path("/usr/share/doc/python3.11-doc/html"),
    Path("/usr/share/doc/python3.11/html"),
)
DEFAULT_OUT = Path("/tmp/kbrefresh-pydoc")
DEFAULT_CATEGORY = "general"  # what the directory source gives top-level files
SKIPPED_TOP = {"index", "contents", "search", "py-modindex", "download"}
SKIPPED_DIRS = {"includes"}  # fragments included by other pages, not pages
ADDED, DELETED, MODIFIED, DAMAGED, AA = 0.20, 0.02, 0.04, 0.60, 0.05
QUERY_TOTAL, QUERY_MIN_SLICE, DELETED_ONLY_SHARE, MAX_TARGETS = 900, 6, 0.01, 5
AA_FOOTER = '<p class="page-footer">Last reviewed 2026-11.</p>'
SET_NAME = "index"

_BODY_OPEN = '<div class="body" role="main">'
_TITLE = re.compile(r"<title>(.*?)</title>", re.DOTALL)
_TITLE_SUFFIX = re.compile(r"\s*[\u2014-]\s*Python [\d.]+\w* documentation\s*$")
_HEADERLINK = re.compile(r'<a class="headerlink"[^>]*>[^<]*</a>')
_PARAGRAPH = re.compile(r"<p>(?:(?!</p>).)*</p>", re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")
_QUALIFIED = re.compile(r"^(.*\S)\s+\(([^()]+)\)$")
_IN_MODULE = re.compile(
    r"^(?:(?:class|exception|function|data) )?in (?:module )?([A-Za-z_][\w.]*)$"
)
_MEMBER_OF = re.compile(
    r"^([A-Za-z_][\w.]*) (?:method|attribute|property|class method|static method|abstract method)$"
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][\w.]*$")


class ManualNotFoundError(RuntimeError):
    """The python3-doc HTML manual is not installed."""


def find_manual(manual: Path | None = None) -> Path:
    """Return the folder of the HTML manual (it holds ``genindex-all.html``)."""
    for root in [manual] if manual else MANUAL_CANDIDATES:
        if root is not None and (root / "genindex-all.html").is_file():
            return root.resolve()
    where = manual or MANUAL_CANDIDATES[0]
    raise ManualNotFoundError(
        f"Python HTML manual not found at {where}; install it with: apt-get install -y python3-doc"
    )


def doc_id_of(rel: str) -> str:
    """Doc id as the directory source computes it: relative path without suffix."""
    return str(PurePosixPath(rel).with_suffix(""))


def category_of(doc_id: str) -> str:
    """Category as the directory source derives it: first folder, else "general"."""
    parts = PurePosixPath(doc_id).parts
    return parts[0] if len(parts) > 1 else DEFAULT_CATEGORY


def manual_pages(root: Path) -> list[str]:
    """Relative paths of the content pages (no indexes, search or include fragments)."""
    pages = []
    for path in root.rglob("*.html"):
        rel = PurePosixPath(path.relative_to(root).as_posix())
        if rel.parts[0].startswith("_") or rel.parts[0] in SKIPPED_DIRS:
            continue
        if len(rel.parts) == 1 and (rel.stem in SKIPPED_TOP or rel.stem.startswith("genindex")):
            continue
        pages.append(str(rel))
    return sorted(pages)


def extract_page(text: str) -> tuple[str, str]:
    """Return (title, main-content div) of one Sphinx page, navigation stripped."""
    match = _TITLE.search(text)
    title = _TITLE_SUFFIX.sub("", html.unescape(match.group(1))) if match else ""
    start = text.find(_BODY_OPEN)
    if start >= 0:
        stop = text.find('class="sphinxsidebar"', start)
        end = text.rfind('<div class="clearer"></div>', start, stop if stop >= 0 else len(text))
        inner = text[start + len(_BODY_OPEN) : end if end >= 0 else stop]
    else:  # unusual layout: let BeautifulSoup find the main element
        soup = BeautifulSoup(text, "html.parser", parse_only=SoupStrainer(attrs={"role": "main"}))
        main = soup.find(True, {"role": "main"})
        inner = main.decode_contents() if isinstance(main, Tag) else ""
    return " ".join(title.split()), _HEADERLINK.sub("", inner).strip()


def render_page(title: str, body: str) -> str:
    """A minimal HTML page the directory source reads: ``<title>`` plus the body div."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title, quote=False)}</title>\n</head>\n<body>\n"
        f"{_BODY_OPEN}\n{body}\n</div>\n</body>\n</html>\n"
    )


def modify_body(body: str, rng: random.Random) -> tuple[str, str] | None:
    """Remove a real paragraph of the page or append a copy of one; None if none fits."""
    paragraphs = [m for m in _PARAGRAPH.finditer(body) if len(_TAGS.sub("", m.group())) >= 80]
    if not paragraphs:
        return None
    chosen = rng.choice(paragraphs)
    if len(paragraphs) >= 2 and rng.random() < 0.5:
        return body[: chosen.start()] + body[chosen.end() :], "paragraph removed"
    return f"{body}\n{chosen.group()}", "paragraph appended"


def _ids(rels: Iterable[str]) -> list[str]:
    return sorted(doc_id_of(rel) for rel in rels)


def _write_tree(out: Path, pages: dict[str, str]) -> None:
    if out.exists():
        shutil.rmtree(out)
    for rel, text in pages.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def make_aa(v1_dir: Path, out_dir: Path, seed: int) -> list[str]:
    """Copy ``v1_dir`` to ``out_dir`` with a harmless footer appended to 5% of pages.

    Returns the sorted doc ids of the edited pages; the same seed edits the same pages.
    """
    v1_dir, out_dir = Path(v1_dir), Path(out_dir)
    rels = sorted(p.relative_to(v1_dir).as_posix() for p in v1_dir.rglob("*.html"))
    edited = set(random.Random(seed).sample(rels, max(1, round(AA * len(rels)))))
    pages = {}
    for rel in rels:
        text = (v1_dir / rel).read_text(encoding="utf-8")
        if rel in edited:
            cut = text.rfind("</div>\n</body>")
            cut = cut if cut >= 0 else len(text)
            text = f"{text[:cut]}{AA_FOOTER}\n{text[cut:]}"
        pages[rel] = text
    _write_tree(out_dir, pages)
    return sorted(doc_id_of(rel) for rel in edited)


def _clean_term(term: str, qualifier: str | None = None) -> str:
    """Query text of an index term: qualifiers dropped, ``()`` dropped, API names qualified."""
    match = _QUALIFIED.match(term)
    if match:
        term, qualifier = match.group(1), qualifier or match.group(2)
    term = term.replace("()", "").strip()
    if qualifier and _IDENTIFIER.match(term):
        owner = _IN_MODULE.match(qualifier) or _MEMBER_OF.match(qualifier)
        if owner and not term.startswith(owner.group(1) + "."):
            term = f"{owner.group(1)}.{term}"
    return " ".join(term.split())


def index_terms(root: Path) -> list[tuple[str, list[str]]]:
    """(query text, target doc ids) for each entry and sub-entry of the general index."""
    text = (root / "genindex-all.html").read_text(encoding="utf-8")
    soup = BeautifulSoup(text, "html.parser", parse_only=SoupStrainer("table"))
    entries: list[tuple[str, list[str]]] = []

    def targets(item: Tag) -> list[str]:
        hrefs = [str(a.get("href") or "") for a in item.find_all("a", recursive=False)]
        ids = [doc_id_of(h.split("#")[0]) if "://" not in h else "" for h in hrefs]
        return list(dict.fromkeys(ids))

    for item in soup.select("table.genindextable > tr > td > ul > li"):
        links = item.find_all("a", recursive=False)
        head = links[0].get_text() if links else next(iter(item.strings), "")
        term = " ".join(head.split())
        if links:
            entries.append((_clean_term(term), targets(item)))
        sub_list = item.find("ul", recursive=False)
        for sub in sub_list.find_all("li", recursive=False) if sub_list else []:
            sub_link = sub.find("a", recursive=False)
            sub_text = " ".join((sub_link.get_text() if sub_link else "").split())
            if sub_text.startswith("(") and sub_text.endswith(")"):
                query = _clean_term(_QUALIFIED.sub(r"\1", term), sub_text[1:-1])
            else:
                parent, child = _clean_term(term), _clean_term(sub_text)
                query = child if child.startswith(parent) else f"{parent} {child}".strip()
            entries.append((query, targets(sub)))
    return entries


def golden_queries(
    entries: Iterable[tuple[str, list[str]]], v1: set[str], v2: set[str], seed: int
) -> list[dict[str, Any]]:
    """Merge same-text entries, keep those whose targets are all in v1 or all in v2, sample ~900.

    About 1% of the sample is answerable only by pages deleted in v2 (in v1, not in v2).
    """
    deleted = v1 - v2
    merged: dict[str, tuple[str, list[str]]] = {}
    for query, ids in entries:
        if len(re.findall(r"[A-Za-z]", query)) < 3 or len(query) > 100:
            continue
        targets = merged.setdefault(query.lower(), (query, []))[1]
        targets.extend(i for i in ids if i not in targets)
    pool = [
        {"query": text, "relevant": ids, "slice": category_of(ids[0]), "set": SET_NAME}
        for text, ids in merged.values()
        if 1 <= len(ids) <= MAX_TARGETS and (set(ids) <= v1 or set(ids) <= v2)
    ]
    rng = random.Random(seed)
    rng.shuffle(pool)
    available = Counter(q["slice"] for q in pool)
    weights = {s: n**0.6 for s, n in available.items()}  # sublinear: big slices big, small kept
    scale = QUERY_TOTAL / sum(weights.values())
    quota = {
        s: min(n, max(QUERY_MIN_SLICE, round(weights[s] * scale))) for s, n in available.items()
    }
    by_page: dict[str, list[dict[str, Any]]] = {}
    for q in pool:
        if set(q["relevant"]) <= deleted:
            by_page.setdefault(q["relevant"][0], []).append(q)
    gone = [q for group in zip_longest(*by_page.values()) for q in group if q]  # round-robin
    chosen = gone[: max(1, round(DELETED_ONLY_SHARE * sum(quota.values())))]
    taken = Counter(q["slice"] for q in chosen)
    for q in pool:
        if taken[q["slice"]] < quota[q["slice"]] and not set(q["relevant"]) <= deleted:
            chosen.append(q)
            taken[q["slice"]] += 1
    return sorted(chosen, key=lambda q: (q["slice"], q["query"].lower()))


def build_corpus(
    out_dir: Path, seed: int = 7, *, aa_seed: int = 1, manual: Path | None = None
) -> dict[str, Any]:
    """Write v1, v2, v2_damaged, v2_aa, golden.jsonl and manifest.json; return the manifest.

    Raises:
        ManualNotFoundError: python3-doc is not installed (or ``manual`` is wrong).
    """
    root, out_dir = find_manual(manual), Path(out_dir)
    rng = random.Random(seed)
    pages = {
        rel: extract_page((root / rel).read_text(encoding="utf-8")) for rel in manual_pages(root)
    }
    titles, bodies = {r: t for r, (t, _) in pages.items()}, {r: b for r, (_, b) in pages.items()}
    by_slice: dict[str, list[str]] = {}
    for rel in pages:
        by_slice.setdefault(category_of(doc_id_of(rel)), []).append(rel)
    added = sorted(
        r for rels in by_slice.values() for r in rng.sample(rels, round(ADDED * len(rels)))
    )
    v1 = sorted(set(pages) - set(added))
    deleted = sorted(rng.sample(v1, round(DELETED * len(v1))))
    kept = sorted(set(v1) - set(deleted))
    v2_bodies = {rel: bodies[rel] for rel in sorted(kept + added)}
    modified: dict[str, str] = {}
    for rel in rng.sample(kept, len(kept)):
        if len(modified) == round(MODIFIED * len(v1)):
            break
        change = modify_body(bodies[rel], rng)
        if change is not None:
            v2_bodies[rel], modified[rel] = change
    v1_pages = {rel: render_page(titles[rel], bodies[rel]) for rel in v1}
    v2_pages = {rel: render_page(titles[rel], body) for rel, body in v2_bodies.items()}
    sizes = Counter(category_of(doc_id_of(rel)) for rel in v2_pages)
    damaged_slice = max(sorted(sizes), key=lambda s: sizes[s])
    in_slice = [rel for rel in v2_pages if category_of(doc_id_of(rel)) == damaged_slice]
    damaged = sorted(rng.sample(in_slice, round(DAMAGED * len(in_slice))))
    damaged_pages = {**v2_pages, **{rel: render_page(titles[rel], "") for rel in damaged}}
    for name, tree in (("v1", v1_pages), ("v2", v2_pages), ("v2_damaged", damaged_pages)):
        _write_tree(out_dir / name, tree)
    aa_ids = make_aa(out_dir / "v1", out_dir / "v2_aa", aa_seed)

    v1_ids, v2_ids, gone = set(_ids(v1)), set(_ids(v2_pages)), set(_ids(deleted))
    queries = golden_queries(index_terms(root), v1_ids, v2_ids, seed)
    with (out_dir / "golden.jsonl").open("w", encoding="utf-8") as handle:
        for query in queries:
            handle.write(json.dumps(query, ensure_ascii=False) + "\n")
    manifest: dict[str, Any] = {
        "manual": str(root),
        "seed": seed,
        "aa_seed": aa_seed,
        "pages": {
            "v1": len(v1_pages),
            "v2": len(v2_pages),
            "v2_damaged": len(damaged_pages),
            "v2_aa": len(v1_pages),
            "manual_total": len(pages),
        },
        "pages_per_slice": {
            "v1": dict(sorted(Counter(map(category_of, v1_ids)).items())),
            "v2": dict(sorted(sizes.items())),
        },
        "added": _ids(added),
        "deleted": _ids(deleted),
        "modified": {doc_id_of(rel): how for rel, how in sorted(modified.items())},
        "damaged": {"slice": damaged_slice, "doc_ids": _ids(damaged)},
        "aa": {"seed": aa_seed, "footer": AA_FOOTER, "doc_ids": aa_ids},
        "queries": {
            "total": len(queries),
            "per_slice": dict(sorted(Counter(q["slice"] for q in queries).items())),
            "deleted_only": [q["query"] for q in queries if set(q["relevant"]) <= gone],
            "added_only": sum(1 for q in queries if not set(q["relevant"]) & v1_ids),
            "not_in_v2": sum(1 for q in queries if not set(q["relevant"]) & v2_ids),
        },
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _summary(manifest: dict[str, Any]) -> list[str]:
    per_v1, per_v2 = manifest["pages_per_slice"]["v1"], manifest["pages_per_slice"]["v2"]
    queries = manifest["queries"]["per_slice"]
    rows = [f"{'slice':<12} {'v1':>5} {'v2':>5} {'queries':>8}"]
    for name in sorted(set(per_v1) | set(per_v2) | set(queries)):
        rows.append(
            f"{name:<12} {per_v1.get(name, 0):>5} {per_v2.get(name, 0):>5} {queries.get(name, 0):>8}"
        )
    p, q = manifest["pages"], manifest["queries"]
    rows.append(f"{'total':<12} {p['v1']:>5} {p['v2']:>5} {q['total']:>8}")
    rows.append(
        f"v2: +{len(manifest['added'])} added, -{len(manifest['deleted'])} deleted, "
        f"~{len(manifest['modified'])} modified; damaged {len(manifest['damaged']['doc_ids'])} "
        f"of {manifest['damaged']['slice']}/; A/A edits {len(manifest['aa']['doc_ids'])}; "
        f"queries only on deleted docs {len(q['deleted_only'])}, only on added docs {q['added_only']}"
    )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    parser.add_argument("--seed", type=int, default=7, help="seed of v1->v2 and sampling")
    parser.add_argument("--aa-seed", type=int, default=1, help="seed of the A/A footer edits")
    parser.add_argument("--manual", type=Path, default=None, help="HTML manual folder (auto)")
    args = parser.parse_args(argv)
    try:
        manifest = build_corpus(args.out, args.seed, aa_seed=args.aa_seed, manual=args.manual)
    except ManualNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(_summary(manifest)))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
