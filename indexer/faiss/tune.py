"""Tune the search parameter (``nprobe`` / ``efSearch``, plus ``k_factor`` for IVF-PQ) so recall@k
reaches the target (default 0.95) against exact search on a sample of the indexed vectors, and
:func:`build_and_tune`, the one build flow (choose, build, tune) ``kgclip build`` and the benchmarks run.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from .build import add_batches, as_f32, build_vectors_index, to_cpu
from .choose import K_FACTOR_GRID, IndexChoice, choose_index
from .exact import TUNE_CONFIDENCE, exact_search, recall_at_k, recall_lower_bound
from .search import search

log = logging.getLogger(__name__)

# search-parameter grids walked by tune(), cheapest first
EF_SEARCH_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
NPROBE_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
               1536, 2048, 3072, 4096, 8192, 16384, 32768, 65536)
REFINE_STEPS = 3  # bisections between two grid points: the parameter lands within ~1/8 of their gap


def _grid_for(index, choice: IndexChoice, k: int) -> tuple[str, list[int]]:
    if choice.kind == "hnsw":
        # never below 2k: an indexed query reaches its neighbours through its own
        # graph links, so leave-one-out recall overstates tiny efSearch values
        # (10k x 512: 0.99 on indexed vectors, 0.94 on unseen queries at efSearch=16)
        return "efSearch", sorted({max(2 * k, e) for e in EF_SEARCH_GRID})
    if choice.kind in ("ivf", "ivfpq"):
        import faiss

        nlist = int(faiss.extract_index_ivf(to_cpu(index)).nlist)
        grid = [p for p in NPROBE_GRID if p < nlist] + [nlist]
        return "nprobe", grid
    return "", []


def _drop_self(ids: np.ndarray, scores: np.ndarray, self_ids: np.ndarray, k: int):
    """Remove each row's own id (a query that is an indexed vector finds itself
    for free) and keep the first k."""
    keep = ids != self_ids[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    out_i = np.take_along_axis(ids, order, 1)
    out_s = np.take_along_axis(scores, order, 1)
    gone = ~np.take_along_axis(keep, order, 1)
    out_i[gone] = -1
    out_s[gone] = -np.inf
    return out_s, out_i


class Tuned(NamedTuple):
    """What :func:`tune` found: the search parameters, the sample's mean recall@k at them, and the
    lower confidence bound of that mean (the number held against the target)."""

    params: dict
    recall: float
    recall_low: float


def tune(index, choice: IndexChoice, sample_queries: np.ndarray, ground_truth, k: int = 10,
         target: float = 0.95, rerank_fn: Callable[[np.ndarray], np.ndarray] | None = None,
         query_ids: np.ndarray | None = None, confidence: float = TUNE_CONFIDENCE) -> Tuned:
    """Smallest search parameter whose recall@k on the sample reaches ``target`` with
    ``confidence`` (:func:`recall_lower_bound`, see TUNE_CONFIDENCE; 0: the sample mean itself).

    ``ground_truth`` is exact top-k: a ``(scores, ids)`` pair, an ids array or a
    callable ``exact_fn(queries, k) -> (scores, ids)``. If no parameter on the
    grid reaches the target, the most accurate one is returned with its recall.
    Recall is assumed monotone in the parameter (binary search over the grid).

    ``query_ids``: the store ids of the sample queries when they are indexed
    vectors. Each query's own id is then left out of both result lists
    (leave-one-out, ground truth must then hold k+1 columns or come from a
    callable), so recall measures neighbours, not the trivial self-match, and
    carries over to queries that are not in the index.
    """
    q = as_f32(sample_queries, index.d)
    kq = k + 1 if query_ids is not None else k
    if callable(ground_truth):
        ground_truth = ground_truth(q, kq)
    if isinstance(ground_truth, tuple):
        gt_s, gt_i = (np.asarray(a) for a in ground_truth)
    else:
        gt_i = np.asarray(ground_truth)
        gt_s = np.zeros(gt_i.shape, np.float32)
    if query_ids is not None:
        self_ids = np.asarray(query_ids, dtype=np.int64).reshape(-1)
        gt_s, gt_i = _drop_self(gt_i, gt_s.astype(np.float32), self_ids, k)
    if not isinstance(ground_truth, tuple):
        gt_s = None
    exact_scores = choice.kind in ("flat", "hnsw", "ivf") or rerank_fn is not None

    def measure(params) -> tuple[float, float]:
        s, i = search(index, q, kq, params, rerank_fn=rerank_fn)
        if query_ids is not None:
            s, i = _drop_self(i, s, self_ids, k)
        per = recall_at_k(i, gt_i, k, s if exact_scores else None, gt_s, per_query=True)
        return (float(per.mean()) if len(per) else 1.0), recall_lower_bound(per, confidence)

    name, grid = _grid_for(index, choice, k)
    if not grid or index.ntotal == 0:
        return Tuned({}, *measure({}))
    k_factors = K_FACTOR_GRID if (choice.kind == "ivfpq" and rerank_fn is not None) else (None,)
    best = None
    for kf in k_factors:
        extra = {"k_factor": kf} if kf is not None else {}
        cache: dict[int, tuple[float, float]] = {}

        def rec(j):
            if j not in cache:
                cache[j] = measure({name: grid[j], **extra})
            return cache[j]

        lo, hi = 0, len(grid) - 1
        if rec(hi)[1] < target:
            cand = Tuned({name: grid[hi], **extra}, *rec(hi))
            if best is None or cand.recall_low > best.recall_low:
                best = cand
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            if rec(mid)[1] >= target:
                hi = mid
            else:
                lo = mid + 1
        good, rec_good = grid[lo], rec(lo)
        if lo > 0:  # the grid is ~1.5x apart: bisect between the last miss and the first hit
            bad = grid[lo - 1]
            for _ in range(REFINE_STEPS):
                if good - bad <= 1:
                    break
                mid = (good + bad) // 2
                r = measure({name: mid, **extra})
                if r[1] >= target:
                    good, rec_good = mid, r
                else:
                    bad = mid
        return Tuned({name: good, **extra}, *rec_good)
    log.warning("tuning reached recall@%d=%.3f (lower bound %.3f) < target %.2f", k, best.recall,
                best.recall_low, target)
    return best


def _rows_in_batches(batches: Iterable[tuple[np.ndarray, np.ndarray]], rows: np.ndarray):
    """Per batch of a streamed ``(ids, vectors)`` walk: ``(ids, vectors, positions)``, the positions
    within the batch of those of the (sorted) stream ``rows`` that fall in it."""
    rows = np.asarray(rows)
    start = 0
    for ids, vecs in batches:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        yield ids, vecs, rows[(rows >= start) & (rows < start + len(ids))] - start
        start += len(ids)


def ids_at_rows(batches: Iterable[tuple[np.ndarray, np.ndarray]], rows: np.ndarray) -> np.ndarray:
    """Store ids at the given row positions of a streamed ``(ids, vectors)`` walk."""
    out = [ids[sel] for ids, _vecs, sel in _rows_in_batches(batches, rows)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def sample_rows(n: int, size: int, seed: int = 0, exclude: np.ndarray | None = None) -> np.ndarray:
    """Sorted row positions of a seeded sample (held out from ``exclude``)."""
    rng = np.random.default_rng(seed)
    pool = np.arange(n)
    if exclude is not None and len(exclude):
        rest = np.setdiff1d(pool, exclude)
        pool = rest if len(rest) >= min(size, n) else pool
    size = min(size, len(pool))
    return np.sort(rng.choice(pool, size=size, replace=False))


def build_and_tune(n: int, dim: int, batches_fn: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
                   sample_fn: Callable[[np.ndarray], np.ndarray] | None = None, *,
                   max_memory: int | str | None = None, index_type: str = "auto", k: int = 10,
                   target: float = 0.95, n_queries: int = 500, rerank_fn=None, use_gpu="auto",
                   seed: int = 0, leave_one_out: bool = True):
    """Choose, build and tune an index over a store's vectors.

    ``batches_fn()`` returns a fresh iterator of ``(ids, vectors)`` in store
    order (it is walked once to add, once for exact ground truth);
    ``sample_fn(rows)`` returns the vectors at those row positions (train
    sample and held-out queries; defaults to walking ``batches_fn``).
    ``rerank_fn(ids) -> vectors`` enables exact re-ranking (IVF-PQ).
    ``leave_one_out``: when the tuning queries stay in the index (not held out), leave each one's own
    id out of both result lists. Off where ids are shared by several vectors (caption vectors carry
    their item's id): dropping an id would drop the query's sibling captions too.

    This is the one build flow: ``kgclip build`` (:func:`indexer.derive.derive_faiss`, over the store)
    and the benchmarks (over arrays) both run it.

    Returns ``(index, info)`` where info has choice, params (tuned), recall (sample mean and lower
    bound), n_queries, target and the seconds spent building (train + add) and tuning — ready for
    the manifest and :func:`save_atomic` meta.
    """
    t_start = time.perf_counter()
    choice = choose_index(n, dim, max_memory, index_type)
    if sample_fn is None:
        def sample_fn(rows):
            out = [np.asarray(vecs)[sel] for _ids, vecs, sel in _rows_in_batches(batches_fn(), rows)
                   if len(sel)]
            return np.concatenate(out) if out else np.zeros((0, dim), np.float32)
    train = None
    train_rows = None
    if choice.kind in ("ivf", "ivfpq"):
        train_rows = sample_rows(n, int(choice.params.get("train_size", n)), seed=seed)
        train = sample_fn(train_rows)
    # HNSW: the tuning queries are held out of the graph until tuning is done. Leave-one-out on indexed
    # vectors overstates an HNSW graph's recall (a query's own node is a hub among its neighbours): at 1M
    # clustered vectors efSearch tuned to 0.950 that way gave 0.920 on unseen queries (0.957 vs 0.969 at 100k)
    held_out = holds_out(choice, n, n_queries)
    q_rows = sample_rows(n, n_queries, seed=seed + 1, exclude=train_rows) if n > 0 else np.zeros(0, np.int64)
    build_batches = _without_rows(batches_fn(), q_rows) if held_out else batches_fn()
    index = build_vectors_index(choice, dim, train, build_batches, use_gpu=use_gpu)
    del train
    build_s = time.perf_counter() - t_start
    params: dict = {}
    recall = recall_low = 1.0
    nq = 0
    if n > 0 and choice.kind != "flat":  # exact: nothing to tune, recall 1 by construction
        queries = sample_fn(q_rows)
        nq = len(queries)
        # the queries' own ids: to add the held-out ones afterwards, or to leave each one out of its results
        q_ids = ids_at_rows(batches_fn(), q_rows) if held_out or leave_one_out else None
        self_ids = q_ids if leave_one_out and not held_out else None
        if held_out:
            gt = exact_search(queries, _without_rows(batches_fn(), q_rows), k)
        else:  # leave-one-out ground truth needs one more column, the query itself
            gt = exact_search(queries, batches_fn(), k + (self_ids is not None))
        params, recall, recall_low = tune(index, choice, queries, gt, k=k, target=target,
                                          rerank_fn=rerank_fn if choice.rerank else None, query_ids=self_ids)
        if held_out:
            add_batches(index, [(q_ids, queries)])  # now the graph holds every vector
    info = {"choice": choice.to_dict(), "factory": choice.factory, "kind": choice.kind,
            "params": params, "recall_at_k": float(recall), "recall_low": float(recall_low), "k": k,
            "target": target, "confidence": TUNE_CONFIDENCE,
            "n_queries": nq, "rerank": choice.rerank,
            "tuned_on": "exact" if choice.kind == "flat" else (
                "held-out" if held_out else ("leave-one-out" if leave_one_out else "indexed")),
            "build_s": round(build_s, 3), "tune_s": round(time.perf_counter() - t_start - build_s, 3)}
    return index, info


HOLD_OUT_MIN_FACTOR = 10  # hold the tuning queries out of an HNSW graph only when they are <= 10% of it


def holds_out(choice: IndexChoice, n: int, n_queries: int) -> bool:
    """Whether ``n_queries`` tuning vectors stay out of the index until it is tuned (HNSW, see
    :func:`build_and_tune`), or are searched in it leaving each one's own id out."""
    return choice.kind == "hnsw" and n_queries > 0 and n >= HOLD_OUT_MIN_FACTOR * n_queries


def _without_rows(batches: Iterable[tuple[np.ndarray, np.ndarray]], rows: np.ndarray):
    """The ``(ids, vectors)`` batches minus the vectors at the given (sorted) stream row positions."""
    for ids, vecs, drop in _rows_in_batches(batches, rows):
        if len(drop):
            keep = np.ones(len(ids), bool)
            keep[drop] = False
            ids, vecs = ids[keep], np.asarray(vecs)[keep]
        if len(ids):
            yield ids, vecs
