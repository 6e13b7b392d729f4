"""Hits from ranked ids: read the items, apply filters and the minimum score, number the ranks."""

from __future__ import annotations

from ..types import Hit, IndexReader
from .filters import Filter, matches


def make_hit(i: int, score: float, item: dict, rank: int) -> Hit:
    meta = {k: item.get(k) for k in ("width", "height", "size", "mtime", "sha256") if item.get(k) is not None}
    if item.get("meta"):
        meta["meta"] = dict(item["meta"])
    if item.get("concepts"):
        meta["concepts"] = [[c, float(p)] for c, p in item["concepts"]]
    if item.get("aliases"):
        meta["aliases"] = list(item["aliases"])
    caps = item.get("captions") or []
    return Hit(id=int(i), score=float(score), path=item.get("path"), caption=caps[0] if caps else None,
               metadata=meta, rank=rank)


def hydrate(index: IndexReader, ranked: list[tuple[int, float]], k: int, filters: list[Filter],
            min_score: float | None) -> list[Hit]:
    """The first ``k`` of ``ranked`` (best first) that exist, pass ``filters`` and score at least
    ``min_score``, read from the index in chunks."""
    hits: list[Hit] = []
    chunk = max(k, 16) if filters else k
    pos = 0
    while len(hits) < k and pos < len(ranked):
        part = ranked[pos : pos + chunk]
        pos += len(part)
        if min_score is not None:
            part = [(i, s) for i, s in part if s >= min_score]
            if not part:
                break  # ranked is sorted: nothing further can pass
        items = index.get([i for i, _ in part])
        for (i, s), item in zip(part, items):
            if item is None or (filters and not matches(item, filters)):
                continue
            hits.append(make_hit(i, s, item, len(hits) + 1))
            if len(hits) >= k:
                break
        chunk = max(chunk, k * 4)
    return hits
