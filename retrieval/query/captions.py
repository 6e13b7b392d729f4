"""Image -> text: the captions in an index nearest to an image query, searched exactly.

Captions are embedded with the index model's own text tower, so they share the image vectors'
space (the caption index, when there is one, is in the text model's space instead).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import IndexReader


def caption_table(index: IndexReader, encoder) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(caption vectors [n, d] from ``encoder``'s text side, (item id, caption) per row)."""
    owners = []
    for item_id, item in index.iter_items():
        for c in (item or {}).get("captions") or []:
            owners.append((int(item_id), c))
    mat = encoder.encode_texts([c for _, c in owners]) if owners else np.zeros((0, 1), np.float32)
    return np.asarray(mat, np.float32), owners


def nearest_captions(index: IndexReader, table: tuple[np.ndarray, list[tuple[int, str]]], q: np.ndarray,
                     k: int) -> list[dict[str, Any]]:
    """Dicts ``{rank, score, caption, id, path}`` for the ``k`` captions nearest to vector ``q``."""
    mat, owners = table
    scores = mat @ q
    kk = min(k, len(owners))
    top = np.argpartition(-scores, kk - 1)[:kk]
    top = top[np.argsort(-scores[top], kind="stable")]
    paths = {it["id"]: it.get("path") for it in index.get([owners[j][0] for j in top]) if it}
    return [
        {"rank": r, "score": float(scores[j]), "caption": owners[j][1], "id": owners[j][0],
         "path": paths.get(owners[j][0])}
        for r, j in enumerate(top, 1)
    ]
