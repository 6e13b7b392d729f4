"""Search a FAISS index with tuned parameters (``nprobe`` / ``efSearch``), re-ranking IVF-PQ
candidates exactly with the stored vectors (:func:`rerank`)."""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from retrieval.errors import UsageError

from .build import GpuIndex, as_f32


def search_parameters(index, params: dict):
    """The faiss ``SearchParameters`` object for tuned ``params`` (efSearch / nprobe), or None."""
    if "efSearch" in params:
        return _params_object("hnsw", int(params["efSearch"]))
    import faiss

    if "nprobe" in params and faiss.try_extract_index_ivf(index) is not None:
        return _params_object("ivf", int(params["nprobe"]))
    return None


@functools.lru_cache(maxsize=64)
def _params_object(kind: str, value: int):
    """One faiss SearchParameters object per setting (building one costs more than a small search's
    Python overhead; faiss only reads them)."""
    import faiss

    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=value)
    return faiss.SearchParametersIVF(nprobe=value)


SMALL_BATCH = 8
MAX_EF_SEARCH = 1 << 16  # far above any tuned value (the tuning grid ends at 4096)


def _raw_search(index, queries: np.ndarray, k: int, params: dict):
    if isinstance(index, GpuIndex):
        return index.search(queries, k, params)
    sp = search_parameters(index, params)
    if len(queries) >= SMALL_BATCH:
        return index.search(queries, k) if sp is None else index.search(queries, k, params=sp)
    # A few queries gain nothing from threads, but IDMap's label translation
    # still opens an OpenMP region per call, and on a busy machine its barrier
    # waits for a descheduled thread (~10 ms per query). omp_set_num_threads
    # only changes the calling thread's setting, so concurrent callers are safe.
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k) if sp is None else index.search(queries, k, params=sp)
    finally:
        faiss.omp_set_num_threads(before)


def _nlist(index) -> int | None:
    import faiss

    ivf = faiss.try_extract_index_ivf(index.cpu if isinstance(index, GpuIndex) else index)
    return int(ivf.nlist) if ivf is not None else None


def rerank(queries: np.ndarray, cand_ids: np.ndarray, k: int,
           rerank_fn: Callable[[np.ndarray], np.ndarray]):
    """Exact inner products of each query with its candidates' stored vectors;
    returns the top ``k`` (scores float32 [n,k], ids int64 [n,k], -1 = none)."""
    n = len(queries)
    uniq = np.unique(cand_ids[cand_ids >= 0])
    out_s = np.full((n, k), -np.inf, dtype=np.float32)
    out_i = np.full((n, k), -1, dtype=np.int64)
    if len(uniq) == 0:
        return out_s, out_i
    vecs = as_f32(rerank_fn(uniq), queries.shape[1])
    if len(vecs) != len(uniq):
        raise ValueError(f"rerank_fn returned {len(vecs)} vectors for {len(uniq)} ids")
    pos = np.searchsorted(uniq, np.clip(cand_ids, 0, None))
    pos = np.clip(pos, 0, len(uniq) - 1)
    scores = np.einsum("nd,nkd->nk", queries, vecs[pos]).astype(np.float32)
    scores[cand_ids < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_s = np.take_along_axis(scores, order, axis=1)
    top_i = np.take_along_axis(cand_ids, order, axis=1)
    kk = top_s.shape[1]
    out_s[:, :kk] = top_s
    out_i[:, :kk] = np.where(np.isfinite(top_s), top_i, -1)
    return out_s, out_i


def search(index, queries: np.ndarray, k: int, params: dict | None = None,
           rerank_fn: Callable[[np.ndarray], np.ndarray] | None = None):
    """k nearest store ids by inner product: (scores float32 [n,k], ids int64 [n,k]).

    Missing results are id -1 with score -inf. ``params`` holds the tuned
    ``nprobe`` / ``efSearch`` (and ``k_factor``); with ``rerank_fn(ids) ->
    vectors`` the top ``k * k_factor`` candidates are re-scored exactly.
    """
    params = params or {}  # read only
    q = as_f32(queries, index.d)
    k = int(k)
    if k <= 0:
        raise UsageError(f"k must be positive, got {k}")
    ntotal = index.ntotal  # (a SWIG attribute: about 1 us a read)
    if ntotal == 0 or len(q) == 0:
        return (np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64))
    k_factor = int(params.get("k_factor", 1)) if rerank_fn is not None else 1
    kk = min(k * max(1, k_factor), int(ntotal)) if rerank_fn is not None else k
    ef = params.get("efSearch")
    if ef is not None and not kk <= ef <= MAX_EF_SEARCH:  # fewer than kk would return fewer hits
        params = dict(params, efSearch=min(max(int(ef), kk), MAX_EF_SEARCH))
    scores, ids = _raw_search(index, q, kk, params)
    if "nprobe" in params and kk <= ntotal and (ids[:, -1] < 0).any():
        # the probed lists held fewer than kk vectors: probe them all (rare; never fewer hits than asked)
        nlist = _nlist(index)
        if nlist and int(params["nprobe"]) < nlist:
            scores, ids = _raw_search(index, q, kk, dict(params, nprobe=nlist))
    ids = ids.astype(np.int64, copy=False)
    if rerank_fn is not None:
        return rerank(q, ids, k, rerank_fn)
    scores = scores.astype(np.float32, copy=False)  # faiss hands back a fresh array: ours to change
    # faiss pads a row's missing results (-1) at its end: one look at the last column, not a scan
    last = ids[:, -1]
    if (last[0] < 0) if len(last) == 1 else (last.min() < 0):
        scores[ids < 0] = -np.inf
    return scores, ids
