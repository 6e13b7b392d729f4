"""Rank fusion: pure functions over ``(id, score)`` lists.

Used by the searcher twice: several query vectors (KG ``multi``) keep each item's best weighted
cosine (:func:`max_fuse_arrays`), and hybrid search fuses the image and caption lists
(:func:`fuse_hybrid`: ``sum`` or ``rrf``).

A ranked list is a sequence of ``(id, score)`` pairs, best first. Raw scores
from different encoders live on different scales, so they are never added
as they are: :func:`weighted_sum` normalises each list first (min-max or z),
and :func:`rrf` uses ranks only. Every function returns a new list sorted by
fused score (ties broken by id, so results are deterministic).
"""

from __future__ import annotations

import math
from typing import Hashable, Sequence

import numpy as np

Ranked = Sequence[tuple[Hashable, float]]

NORMALISERS = ("minmax", "z", "none")


def _sorted(scores: dict) -> list[tuple[Hashable, float]]:
    return sorted(scores.items(), key=lambda kv: (-kv[1], _key(kv[0])))


def _key(x):
    # ids are usually ints; fall back to a string so mixed ids still sort
    return (0, x) if isinstance(x, (int, float)) else (1, str(x))


def normalise(ranked: Ranked, method: str = "minmax") -> list[tuple[Hashable, float]]:
    """Rescale one list's scores: ``minmax`` to [0, 1] (all equal -> 1.0), ``z`` to zero mean and unit
    variance (all equal -> 0.0), ``none`` unchanged. Order is kept."""
    if method not in NORMALISERS:
        raise ValueError(f"unknown normalisation {method!r}: use one of {', '.join(NORMALISERS)}")
    items = [(i, float(s)) for i, s in ranked]
    if not items or method == "none":
        return items
    vals = [s for _, s in items]
    if method == "minmax":
        lo, hi = min(vals), max(vals)
        if hi - lo <= 1e-12:
            return [(i, 1.0) for i, _ in items]
        return [(i, (s - lo) / (hi - lo)) for i, s in items]
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
    if sd <= 1e-12:
        return [(i, 0.0) for i, _ in items]
    return [(i, (s - mean) / sd) for i, s in items]


def _check_weights(lists: Sequence[Ranked], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(lists)
    if len(weights) != len(lists):
        raise ValueError(f"{len(weights)} weights for {len(lists)} ranked lists")
    return [float(w) for w in weights]


def weighted_sum(
    lists: Sequence[Ranked],
    weights: Sequence[float] | None = None,
    norm: str = "minmax",
    missing: float | None = None,
) -> list[tuple[Hashable, float]]:
    """Sum of weighted, normalised scores.

    An id absent from a list contributes ``missing`` for it: by default the
    list's lowest normalised score (the id scored at most that much there), or
    0 for ``z`` normalisation's mean.
    """
    ws = _check_weights(lists, weights)
    normed = [normalise(lst, norm) for lst in lists]
    ids: dict[Hashable, None] = {}
    for lst in normed:
        for i, _ in lst:
            ids.setdefault(i, None)
    out = {i: 0.0 for i in ids}
    for w, lst in zip(ws, normed):
        if not lst:
            continue
        floor = missing if missing is not None else (min(s for _, s in lst) if norm != "z" else 0.0)
        got = dict(lst)
        for i in out:
            out[i] += w * got.get(i, floor)
    return _sorted(out)


def rrf(lists: Sequence[Ranked], weights: Sequence[float] | None = None, k: int = 60) -> list[tuple[Hashable, float]]:
    """Reciprocal rank fusion (Cormack et al., 2009): ``sum_l w_l / (k + rank_l(id))``, rank from 1.

    Scores are ignored; only each list's order matters.
    """
    if k < 0:
        raise ValueError("rrf k must be >= 0")
    ws = _check_weights(lists, weights)
    out: dict[Hashable, float] = {}
    for w, lst in zip(ws, lists):
        for rank, (i, _) in enumerate(lst, start=1):
            out[i] = out.get(i, 0.0) + w / (k + rank)
    return _sorted(out)


def max_fuse_arrays(scores, ids, weights: Sequence[float] | None = None, limit: int | None = None):
    """Each id's best weighted raw score over ``R`` lists on one scale (several query vectors against
    the same index), given as arrays (``scores`` and int ``ids`` of shape [R, F], best first; id -1
    marks no result): ``(fused, best, raw)`` where ``fused`` is the (id, fused score) list, fused
    score down then id up (cut to ``limit``), and for each id in it ``best[id]`` is the list that
    gave its score and ``raw[id]`` that list's unweighted score (one double multiplication each; on
    equal fused scores the earlier list wins), without a Python loop over every candidate."""
    s = np.asarray(scores)
    i = np.asarray(ids, np.int64)
    ws = _check_weights([()] * len(s), weights)
    per_list = s.shape[1] if s.ndim == 2 else 0
    rows = np.repeat(np.arange(len(s)), per_list)
    flat_i, raw = i.ravel(), s.astype(np.float64).ravel()
    v = np.repeat(np.asarray(ws, np.float64), per_list) * raw
    keep = flat_i >= 0
    rows, flat_i, raw, v = rows[keep], flat_i[keep], raw[keep], v[keep]
    order = np.lexsort((rows, -v, flat_i))  # by id, then fused score down, then the earlier list
    sid = flat_i[order]
    first = order[np.concatenate([[True], sid[1:] != sid[:-1]])] if len(order) else order
    first = first[np.lexsort((flat_i[first], -v[first]))][:limit]  # fused score down, then id
    ids_out = flat_i[first].tolist()
    fused = list(zip(ids_out, v[first].tolist()))
    return fused, dict(zip(ids_out, rows[first].tolist())), dict(zip(ids_out, raw[first].tolist()))


def fuse_hybrid(method: str, images: Ranked, captions: Ranked, caption_weight: float, norm: str = "minmax",
                rrf_k: int = 60) -> list[tuple[Hashable, float]]:
    """The image and caption lists fused with shares ``1 - caption_weight`` and ``caption_weight``:
    ``sum`` (:func:`weighted_sum`, scores in [0, 1] with minmax) or ``rrf``."""
    ws = [1.0 - caption_weight, caption_weight]
    if method == "sum":
        return weighted_sum([images, captions], ws, norm=norm)
    if method == "rrf":
        return rrf([images, captions], ws, k=rrf_k)
    raise ValueError(f"unknown hybrid fusion {method!r}: use sum or rrf")


def best_first(scores: dict, n: int) -> list[tuple[Hashable, float]]:
    """The ``n`` best (id, score) pairs of a dict, score down then id up (as fusion ranks)."""
    return _sorted(scores)[:n]
