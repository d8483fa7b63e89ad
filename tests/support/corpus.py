"""Small synthetic corpora written to disk for integration tests."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ["account", "billing", "invoice", "webhook", "token", "api", "key", "rotate", "limit", "retry", "export", "import", "sso", "saml", "oidc", "scim", "agent", "ticket", "inbox", "macro", "report", "dashboard", "mobile", "notification", "privacy", "region", "backup", "restore", "latency", "queue", "worker", "schedule", "cron", "template", "field", "filter", "search", "tag", "team"]


def paragraph(rng: random.Random, n: int = 40) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def markdown_doc(title: str, category: str, rng: random.Random, sections: int = 2) -> str:
    body = [f"---\ntitle: {title}\ncategory: {category}\nupdated: 2026-11-01\n---", f"# {title}"]
    for s in range(sections):
        body.append(f"## Part {s + 1}")
        body.append(paragraph(rng))
        body.append(paragraph(rng))
    return "\n\n".join(body) + "\n"


def write_corpus(root: Path, n_docs: int = 12, *, seed: int = 7) -> list[str]:
    """Write ``n_docs`` markdown docs under general/ and technical/; return their doc ids."""
    rng = random.Random(seed)
    ids = []
    for i in range(n_docs):
        category = "technical" if i % 2 else "general"
        doc_id = f"{category}/doc-{i:03d}"
        path = root / f"{doc_id}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown_doc(f"Topic {i} {rng.choice(WORDS)}", category, rng), "utf-8")
        ids.append(doc_id)
    return ids
