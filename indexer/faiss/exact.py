"""Exact top-k over streamed vectors (the ground truth tuning measures against) and recall@k."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Iterable

import numpy as np

from .build import as_f32

# Tuning asks that the target hold for the queries users send, not just for the tuning sample: the
# one-sided 95% lower confidence bound of the sample's mean recall must reach it. Per-query recall is
# nearly all-or-nothing on HNSW (a walk reaches the query's cluster or not: sd about 0.2 at mean 0.95),
# so with 500 queries the bound sits about 0.015 under the mean. At 1M clustered vectors efSearch tuned on
# the sample mean gave 0.955 on the sample and 0.942 on fresh queries (benchmarks/results/faiss_1000000.json).
TUNE_CONFIDENCE = 0.95

EXACT_QUERY_ROWS = 16  # queries merged at a time by exact_search


def exact_search(queries: np.ndarray, batches: Iterable[tuple[np.ndarray, np.ndarray]], k: int):
    """Exact top-k by inner product over streamed ``(ids, vectors)`` batches: (scores float32 [n, k],
    ids int64 [n, k]), -inf / -1 where fewer than k vectors exist.

    Ties go to the earlier vector in the stream. Beyond the [n, k] results and one batch's scores,
    only the vectors that beat a query's current k-th best are merged (:func:`merge_top`),
    EXACT_QUERY_ROWS queries at a time: no [n, batch + k] sort (150 MiB for 500 queries and
    8192-vector batches).
    """
    q = as_f32(queries)
    n = len(q)
    best_s = np.full((n, k), -np.inf, dtype=np.float32)
    best_i = np.full((n, k), -1, dtype=np.int64)
    if k <= 0:
        return best_s, best_i
    for ids, vecs in batches:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            continue
        s = q @ as_f32(vecs, q.shape[1]).T
        for r in range(0, n, EXACT_QUERY_ROWS):
            rows = slice(r, r + EXACT_QUERY_ROWS)
            merge_top(best_s[rows], best_i[rows], s[rows], ids)
    return best_s, best_i


def merge_top(best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, ids: np.ndarray) -> None:
    """Merge scores ``s`` [m, b] of stored ``ids`` [b] into each row's top-k (``best_*`` [m, k], in place).

    The same result as a stable sort of each row's [best, s] (a tie goes to the earlier entry),
    computed over the k bests plus only the entries that beat the row's k-th best: an entry
    that does not is ranked behind all k bests in that sort.
    """
    m, k = best_s.shape
    rr, cc = np.nonzero(s > best_s[:, -1:])
    if not len(rr):
        return
    row = np.concatenate([np.repeat(np.arange(m), k), rr])
    score = np.concatenate([best_s.ravel(), s[rr, cc]])
    ident = np.concatenate([best_i.ravel(), ids[cc]])
    order = np.lexsort((np.arange(len(row)), -score, row))  # by row, score down, then entry order
    starts = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=m))[:-1]])
    take = order[(starts[:, None] + np.arange(k)).ravel()]
    best_s[:] = score[take].reshape(m, k)
    best_i[:] = ident[take].reshape(m, k)


def recall_at_k(ann_ids: np.ndarray, gt_ids: np.ndarray, k: int,
                ann_scores: np.ndarray | None = None, gt_scores: np.ndarray | None = None,
                eps: float = 1e-5, per_query: bool = False):
    """Mean |ANN top-k ∩ exact top-k| / k, tie-tolerant when scores are given
    (an ANN hit whose exact score equals the k-th exact score counts). ``per_query``: the
    array of each query's recall instead of their mean."""
    ann_ids = np.asarray(ann_ids)[:, :k]
    gt_ids = np.asarray(gt_ids)[:, :k]
    out = np.ones(len(gt_ids), np.float64)
    for r in range(len(gt_ids)):
        truth = set(int(i) for i in gt_ids[r] if i >= 0)
        denom = max(1, len(truth))
        if not truth:
            continue
        hits = 0
        for j, i in enumerate(ann_ids[r]):
            if i < 0:
                continue
            if int(i) in truth:
                hits += 1
            elif ann_scores is not None and gt_scores is not None:
                kth = gt_scores[r, len(truth) - 1]
                if ann_scores[r, j] >= kth - eps:
                    hits += 1
        out[r] = min(hits, denom) / denom
    if per_query:
        return out
    return float(out.mean()) if len(out) else 1.0


def recall_lower_bound(per_query: np.ndarray, confidence: float = TUNE_CONFIDENCE) -> float:
    """One-sided lower confidence bound on the mean recall of queries like the sampled ones:
    mean - z * sd / sqrt(n) (normal approximation; ``confidence`` 0 gives the sample mean)."""
    r = np.asarray(per_query, np.float64)
    if len(r) == 0:
        return 1.0
    if confidence <= 0 or len(r) < 2:
        return float(r.mean())
    z = NormalDist().inv_cdf(confidence)
    return float(r.mean() - z * r.std(ddof=1) / math.sqrt(len(r)))
