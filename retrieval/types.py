"""The shared vocabulary: hits, result lists, query plans, and what a searcher reads from an index."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass
class Hit:
    """One retrieved item."""

    id: int
    score: float
    path: str | None = None
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    explanation: list[str] = field(default_factory=list)
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __repr__(self) -> str:
        return f"Hit(rank={self.rank}, id={self.id}, score={self.score:.4f}, path={self.path!r})"


@dataclass
class Results:
    """The hits for one query, best first, with how the query was interpreted."""

    query: str | None
    hits: list[Hit]
    plan: "QueryPlan | None" = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self):
        return iter(self.hits)

    def __getitem__(self, i):
        return self.hits[i]

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "hits": [h.to_dict() for h in self.hits],
            "plan": self.plan.to_dict() if self.plan else None,
            "timings_ms": dict(self.timings_ms),
        }

    def __repr__(self) -> str:
        head = ", ".join(f"{h.id}:{h.score:.3f}" for h in self.hits[:5])
        more = f", ... {len(self.hits) - 5} more" if len(self.hits) > 5 else ""
        return f"Results(query={self.query!r}, hits=[{head}{more}])"


@dataclass
class Expansion:
    """One vector added to a query by knowledge-graph expansion."""

    entity_id: str
    name: str
    relation: str  # "linked", "synonym", "hyponym", "hypernym", "part", user relation ...
    weight: float
    path: list[str] = field(default_factory=list)  # e.g. ["dog", "hyponym", "puppy"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QueryPlan:
    """How a query was interpreted: linked entities and the expansions searched."""

    text: str | None
    mode: str = "none"  # none | mix | multi
    linked: list[dict[str, Any]] = field(default_factory=list)
    expansions: list[Expansion] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "mode": self.mode,
            "linked": list(self.linked),
            "expansions": [e.to_dict() for e in self.expansions],
        }


@runtime_checkable
class IndexReader(Protocol):
    """Exactly what a :class:`~retrieval.query.Searcher` reads from an opened index.

    ``indexer.Index`` implements it over an index folder; tests and benchmarks have in-memory and
    brute-force ones. Ids are the store's item ids (int); ``kind`` is ``"image"`` (the index model's
    vectors) or ``"caption"`` (the text model's caption vectors, when ``text_model_spec`` is set).
    """

    path: str  # names the index in messages
    model_spec: str  # the model that built the image vectors (queries are encoded with it)
    model_fingerprint: str | None  # its weights' fingerprint then (None: not recorded)
    text_model_spec: str | None  # the caption side's model; None = no caption index
    manifest: Mapping[str, Any]  # read: ``manifest["counts"]["captions"]`` (whether captions exist)

    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray, k: int, kind: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """(scores [q, k] float32, ids [q, k] int64) best first per query row; id -1 pads."""
        ...

    def get(self, ids: Sequence[int]) -> list[dict | None]:
        """The items' metadata dicts (path, captions, concepts, meta, ...), None for an unknown id."""
        ...

    def get_vectors(self, ids: Sequence[int], kind: str = "image") -> np.ndarray:
        """The stored vectors [len(ids), d] of those items."""
        ...

    def iter_items(self) -> Iterator[tuple[int, dict]]: ...

    def iter_profiles(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Concept-profile chunks (item ids [n], class indexes [n, top], probabilities [n, top]); the
        class indexes point into the index encoder's ``concept_classes``. Empty when none are stored."""
        ...

    def refresh_if_updated(self) -> bool:
        """Serve a newer generation if a writer committed one since; True when it did."""
        ...

    def close(self) -> None: ...
