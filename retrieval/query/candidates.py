"""Candidates from the vector index: FAISS lists per query vector, several vectors max-fused."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import IndexReader
from .fusion import max_fuse_arrays
from .options import SearchOptions

Why = dict[int, dict[str, Any]]  # per id, where its score came from (for explanations)


def fetch_size(k: int, n_rows: int, grounded: bool, hybrid: str, filtered: bool, options: SearchOptions) -> int:
    """Candidates fetched per list: exactly k for one plain vector list (the same FAISS work as a
    bare search at the tuned parameters); more where fusion, grounding or filters reorder or drop
    candidates."""
    if n_rows <= 1 and not grounded and hybrid == "none" and not filtered:
        return k
    fetch = max(options.min_fetch, k * options.fetch_factor)
    return max(fetch, k * 10) if filtered else fetch


def vector_lists(index: IndexReader, rows: np.ndarray, fetch: int, kind: str = "image") -> list[list[tuple[int, float]]]:
    """One (id, score) list per query row, best first."""
    scores, ids = index.search(rows, fetch, kind=kind)
    out = []
    for srow, irow in zip(np.asarray(scores).tolist(), np.asarray(ids).tolist()):
        out.append([(i, s) for s, i in zip(srow, irow) if i >= 0])
    return out


def image_candidates(index: IndexReader, rows: np.ndarray, row_w: np.ndarray, fetch: int,
                     provenance: bool) -> tuple[list[tuple[int, float]], Why | None]:
    """(id, score) best first over the image vectors, and (when ``provenance``, or always for several
    rows) ``why[id]["vector"] = (row, cosine)``. One row: its cosines; several: each id's best
    weighted cosine over the rows."""
    if len(rows) == 1:
        vec = vector_lists(index, rows, fetch)[0]
        if not provenance:
            return vec, None  # the plain case: provenance is built only if --explain asks
        return vec, {i: {"vector": (0, s)} for i, s in vec}
    scores, ids = index.search(rows, fetch, kind="image")
    vec, best, raw = max_fuse_arrays(scores, ids, [float(x) for x in row_w], limit=fetch)
    return vec, {i: {"vector": (best[i], raw[i])} for i, _ in vec}
