"""Simulated chatbot traffic for demos and benchmarks: sessions asking golden questions.

Each session asks one to three questions through the real ``Retriever`` (so routing, the
session split and the query log are the production ones) and gives feedback drawn from
whether a relevant document came back: rating 5 when it is first, 4 when it is in the
top k, 2 otherwise; thumbs up for 4 and 5. Seeded, so a run can be repeated.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kbrefresh.errors import ConfigError, KBRefreshError
from kbrefresh.serving.retriever import Retriever


@dataclass(frozen=True)
class Question:
    query: str
    relevant: frozenset[str]


@dataclass
class TrafficReport:
    """What the simulated users did and saw, per version served."""

    searches: Counter[int] = field(default_factory=Counter)  # answered, per version
    failed: int = 0  # the Retriever logs each with the version it tried
    thumbs_up: Counter[int] = field(default_factory=Counter)
    sessions: dict[str, int] = field(default_factory=dict)  # session id -> version first served

    def line(self) -> str:
        parts = [f"v{v}: {n} answered, {self.thumbs_up[v]} thumbs up"
                 for v, n in sorted(self.searches.items())]
        return "; ".join(parts + [f"{self.failed} failed"])


def load_questions(paths: Iterable[Path]) -> list[Question]:
    """Read golden JSONL files (``query`` and ``relevant`` doc ids per line)."""
    out = []
    for path in paths:
        for n, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(Question(str(row["query"]), frozenset(row["relevant"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path.name} line {n}: expected JSON with 'query' and "
                                  f"'relevant'") from exc
    if not out:
        raise ConfigError("no questions to simulate traffic with")
    return out


def simulate_traffic(
    retriever: Retriever, questions: Sequence[Question], *, sessions: int, seed: int,
    prefix: str = "s", k: int = 5, feedback_share: float = 1.0,
) -> TrafficReport:
    """Run ``sessions`` simulated sessions; failed searches are counted, never raised."""
    rng = random.Random(seed)
    report = TrafficReport()
    for s in range(sessions):
        session = f"{prefix}-{s}"
        for _ in range(rng.randint(1, 3)):
            question = rng.choice(questions)
            try:
                result = retriever.search(question.query, k=k, session_id=session)
            except KBRefreshError:
                report.failed += 1
                continue
            report.searches[result.version] += 1
            report.sessions.setdefault(session, result.version)
            docs = [h.doc_id for h in result.hits]
            rating = 5 if docs[:1] and docs[0] in question.relevant else (
                4 if question.relevant & set(docs) else 2)
            report.thumbs_up[result.version] += rating >= 4
            if rng.random() < feedback_share:
                retriever.feedback(result.query_id, rating=rating, thumbs=rating >= 4)
    retriever.flush()
    return report

