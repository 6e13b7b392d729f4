"""FAISS vector indexes: choose, build, tune, search, save atomically, load.

Pure numpy in and out; FAISS stays inside this module (imported lazily, so
importing :mod:`indexer.vectors` is cheap). Every index uses the inner-product
metric over L2-normalised float32 vectors and is keyed by the store's int64
item ids.

Index choice (:func:`choose_index`, in the spirit of autofaiss):

============  =====================================================  =====================
kind          picked by ``index_type="auto"`` when                    factory
============  =====================================================  =====================
``flat``      ``n <= FLAT_MAX_N`` (20 000) and the vectors fit        ``IDMap,Flat``
``hnsw``      vectors + graph fit the budget and ``n <= HNSW_MAX_N``  ``IDMap,HNSW32``
``ivf``       vectors fit the budget but HNSW does not (or n large)   ``IVF{nlist},Flat``
``ivfpq``     raw vectors do not fit the budget                       ``IVF{nlist},PQ{m}x8``
============  =====================================================  =====================

* Exact search over 20 000 x 512-d vectors costs about a millisecond per query
  on one core; below that an ANN index only costs recall.
* HNSW gives the best single-query speed at high recall when memory allows
  (autofaiss makes the same call); above 5M vectors its build time grows too
  long for one machine and IVF-Flat (k-means on a sample, fast adds, cheap
  removals) takes over.
* IVF-PQ keeps ``m`` bytes per vector (the largest ``m`` <= 64 dividing ``dim``
  that fits the budget) and searches ``k * k_factor`` candidates, re-ranked
  exactly with the stored float vectors (``rerank_fn``), so PQ only has to find
  candidates, not order them.
* ``nlist`` is the power of two nearest ``4 * sqrt(n)``, at most ``n // 39``
  (faiss wants >= 39 training points per list) and at least 1.
* The memory budget defaults to half the machine's RAM.
* Tiny sets: an explicit ``ivf`` with ``n == 0`` and an explicit ``ivfpq``
  with ``n < PQ_MIN_N`` fall back (ivfpq -> ivf -> flat); the fallback is
  recorded in ``IndexChoice.params["fallback_from"]``.

The search parameter (``nprobe`` / ``efSearch``, plus ``k_factor`` for
IVF-PQ) is tuned by :func:`tune` so recall@k reaches the target (default
0.95) against exact search on a held-out sample of the indexed vectors.

Files are written by :func:`save_atomic` (temp file in the same folder, fsync,
``os.replace``, fsync of the folder) next to a sidecar ``<file>.json`` that
records the store generation the file covers plus its size and CRC32;
:func:`load` returns ``generation=None`` when the sidecar is missing or does
not match the file (the caller then rebuilds the index from the store).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from retrieval.errors import IndexCorrupt, IndexNotFound, UsageError

log = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")

FLAT_MAX_N = 20_000
HNSW_MAX_N = 5_000_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
IVF_MIN_POINTS_PER_LIST = 39
IVF_MAX_NLIST = 65_536
IVF_TRAIN_POINTS_PER_LIST = 50
PQ_MIN_N = 1_000
PQ_MAX_M = 64
PQ_MIN_DSUB = 4
PQ_TRAIN_POINTS_PER_CENTROID = 64
PQ_NBITS = 8
DEFAULT_MEMORY_FRACTION = 0.5
SIDECAR_FORMAT = 1

# search-parameter grids walked by tune(), cheapest first
EF_SEARCH_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
NPROBE_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
               1536, 2048, 3072, 4096, 8192, 16384, 32768, 65536)
K_FACTOR_GRID = (4, 8, 16)
REFINE_STEPS = 3  # bisections between two grid points: the parameter lands within ~1/8 of their gap
# Tuning asks that the target hold for the queries users send, not just for the tuning sample: the
# one-sided 95% lower confidence bound of the sample's mean recall must reach it. Per-query recall is
# nearly all-or-nothing on HNSW (a walk reaches the query's cluster or not: sd about 0.2 at mean 0.95),
# so with 500 queries the bound sits about 0.015 under the mean. At 1M clustered vectors efSearch tuned on
# the sample mean gave 0.955 on the sample and 0.942 on fresh queries (benchmarks/results/faiss_1000000.json).
TUNE_CONFIDENCE = 0.95


def _faiss():
    import faiss  # heavy import on first use only

    return faiss


# --------------------------------------------------------------------------- choice


@dataclass
class IndexChoice:
    """What to build: ``kind`` in flat|hnsw|ivf|ivfpq, a faiss factory string,
    build/search parameters and whether search re-ranks exactly."""

    kind: str
    factory: str
    params: dict = field(default_factory=dict)
    rerank: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IndexChoice":
        return cls(kind=d["kind"], factory=d["factory"], params=dict(d.get("params", {})),
                   rerank=bool(d.get("rerank", False)))


def default_memory_budget() -> int:
    """Half of the machine's physical memory, in bytes."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = 8 << 30
    return int(total * DEFAULT_MEMORY_FRACTION)


def parse_memory(value: str | int | None) -> int | None:
    """'4G', '512M', '100k', '123' -> bytes (None stays None)."""
    if value is None or isinstance(value, int):
        return value
    s = str(value).strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if s and s[-1] in mult:
            return int(float(s[:-1]) * mult[s[-1]])
        return int(float(s))
    except ValueError:
        raise UsageError(f"--max-memory: cannot read {value!r} as a size (e.g. 4G, 512M)") from None


def nlist_for(n: int) -> int:
    """Number of IVF lists: power of two nearest 4*sqrt(n), within [1, n // 39]."""
    if n <= 0:
        return 1
    target = 4.0 * math.sqrt(n)
    nlist = 2 ** int(round(math.log2(max(target, 1.0))))
    nlist = min(nlist, IVF_MAX_NLIST, max(1, n // IVF_MIN_POINTS_PER_LIST))
    return max(1, nlist)


def pq_m_options(dim: int) -> list[int]:
    """Sub-quantizer counts that divide dim, largest first: at most PQ_MAX_M and
    at least PQ_MIN_DSUB dimensions per sub-quantizer (1-d k-means is slow and
    useless)."""
    top = max(1, min(PQ_MAX_M, dim // PQ_MIN_DSUB))
    return [m for m in range(top, 0, -1) if dim % m == 0]


def estimate_memory(kind: str, n: int, dim: int, *, nlist: int = 1, m: int = 0,
                    hnsw_m: int = HNSW_M) -> int:
    """Approximate resident bytes of an index (ids included)."""
    ids = 8 * n
    if kind == "flat":
        return n * 4 * dim + ids
    if kind == "hnsw":
        # level 0 keeps 2*M int32 neighbours, upper levels add ~1/M of that
        return n * 4 * dim + int(n * 2 * hnsw_m * 4 * 1.1) + ids
    if kind == "ivf":
        return n * 4 * dim + ids + nlist * 4 * dim
    if kind == "ivfpq":
        return n * m + ids + nlist * 4 * dim + (2 ** PQ_NBITS) * 4 * dim
    raise ValueError(kind)


def _flat(n, dim, budget, extra: dict) -> IndexChoice:
    return IndexChoice("flat", "IDMap,Flat",
                       {"memory_bytes": estimate_memory("flat", n, dim), **extra})


def _hnsw(n, dim, budget, extra: dict) -> IndexChoice:
    return IndexChoice("hnsw", f"IDMap,HNSW{HNSW_M}",
                       {"hnsw_m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "efSearch": 64,
                        "memory_bytes": estimate_memory("hnsw", n, dim), **extra})


def _train_size(n: int, nlist: int, minimum: int = 0) -> int:
    return int(min(n, max(nlist * IVF_TRAIN_POINTS_PER_LIST, minimum)))


def _ivf(n, dim, budget, extra: dict) -> IndexChoice:
    nlist = nlist_for(n)
    return IndexChoice("ivf", f"IVF{nlist},Flat",
                       {"nlist": nlist, "nprobe": min(nlist, 16), "train_size": _train_size(n, nlist),
                        "memory_bytes": estimate_memory("ivf", n, dim, nlist=nlist), **extra})


def _ivfpq(n, dim, budget, extra: dict) -> IndexChoice:
    nlist = nlist_for(n)
    options = pq_m_options(dim)
    m = options[-1]
    for cand in options:
        if estimate_memory("ivfpq", n, dim, nlist=nlist, m=cand) <= budget:
            m = cand
            break
    mem = estimate_memory("ivfpq", n, dim, nlist=nlist, m=m)
    if mem > budget:
        extra = {**extra, "over_budget": True}
    return IndexChoice("ivfpq", f"IVF{nlist},PQ{m}x{PQ_NBITS}",
                       {"nlist": nlist, "pq_m": m, "pq_nbits": PQ_NBITS, "nprobe": min(nlist, 16),
                        "k_factor": K_FACTOR_GRID[0],
                        "train_size": _train_size(n, nlist, minimum=(2 ** PQ_NBITS) * 64),
                        "memory_bytes": mem, **extra}, rerank=True)


def choose_index(n: int, dim: int, max_memory_bytes: int | str | None = None,
                 index_type: str = "auto") -> IndexChoice:
    """Pick the FAISS index for ``n`` vectors of ``dim`` under a memory budget.

    See the module docstring for the thresholds. ``index_type`` forces a kind
    (tiny sets still fall back to what can be trained).
    """
    if index_type not in INDEX_TYPES:
        raise UsageError(f"--index-type: {index_type!r} is not one of {', '.join(INDEX_TYPES)}")
    if n < 0 or dim <= 0:
        raise UsageError(f"cannot index n={n} vectors of dim={dim}")
    budget = parse_memory(max_memory_bytes)
    budget = default_memory_budget() if budget is None else budget
    base = {"n": int(n), "dim": int(dim), "budget_bytes": int(budget), "requested": index_type}

    if index_type == "flat":
        return _flat(n, dim, budget, base)
    if index_type == "hnsw":
        return _hnsw(n, dim, budget, base)
    if index_type == "ivf":
        if n == 0:
            return _flat(n, dim, budget, {**base, "fallback_from": "ivf"})
        return _ivf(n, dim, budget, base)
    if index_type == "ivfpq":
        if n < PQ_MIN_N:
            if n == 0:
                return _flat(n, dim, budget, {**base, "fallback_from": "ivfpq"})
            return _ivf(n, dim, budget, {**base, "fallback_from": "ivfpq"})
        return _ivfpq(n, dim, budget, base)

    # auto
    if n <= FLAT_MAX_N and estimate_memory("flat", n, dim) <= budget:
        return _flat(n, dim, budget, base)
    if n <= HNSW_MAX_N and estimate_memory("hnsw", n, dim) <= budget:
        return _hnsw(n, dim, budget, base)
    if estimate_memory("ivf", n, dim, nlist=nlist_for(n)) <= budget:
        return _ivf(n, dim, budget, base)
    if n < PQ_MIN_N:  # a tiny budget and a tiny set: nothing smaller to build
        return _flat(n, dim, budget, {**base, "over_budget": True})
    return _ivfpq(n, dim, budget, base)


# --------------------------------------------------------------------------- GPU


def gpu_available() -> bool:
    """True when faiss was built with GPU support and sees at least one GPU."""
    try:
        faiss = _faiss()
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover - broken faiss install
        return False


def _want_gpu(use_gpu) -> bool:
    if use_gpu in (False, None, "no", "cpu", "off"):
        return False
    avail = gpu_available()
    if use_gpu in (True, "yes", "gpu", "on") and not avail:
        raise UsageError("GPU FAISS requested but faiss sees no GPU (install faiss-gpu and check CUDA)")
    return avail


class GpuIndex:
    """A GPU clone of a CPU index for search; ``.cpu`` keeps the CPU original.

    ``IDMap`` wrappers are unwrapped (the inner index goes to the GPU, labels
    are mapped back through the id map), so every kind the GPU supports is
    searched there; HNSW has no GPU version and stays on the CPU.
    """

    def __init__(self, cpu_index):
        faiss = _faiss()
        self.cpu = cpu_index
        self.ntotal = cpu_index.ntotal
        self.d = cpu_index.d
        inner = cpu_index
        self.id_map = None
        if isinstance(cpu_index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            inner = faiss.downcast_index(cpu_index.index)
            self.id_map = faiss.vector_to_array(cpu_index.id_map).astype(np.int64)
        co = faiss.GpuMultipleClonerOptions()
        co.useFloat16 = False  # exact same arithmetic class as the CPU index
        co.useFloat16LookupTables = True
        self.gpu = faiss.index_cpu_to_all_gpus(inner, co=co)

    def search(self, queries, k, params: dict):
        faiss = _faiss()
        if "nprobe" in params:
            faiss.GpuParameterSpace().set_index_parameter(self.gpu, "nprobe", int(params["nprobe"]))
        scores, labels = self.gpu.search(queries, k)
        if self.id_map is not None:
            labels = np.where(labels >= 0, self.id_map[np.clip(labels, 0, None)], -1)
        return scores, labels


def to_gpu(index):
    """A :class:`GpuIndex` for search when a GPU is usable and the kind is
    supported there; otherwise the index itself."""
    if isinstance(index, GpuIndex) or not gpu_available():
        return index
    faiss = _faiss()
    inner = index
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW) or index.ntotal == 0:
        return index
    try:
        return GpuIndex(index)
    except Exception as exc:  # unsupported on this GPU build: search on CPU
        log.warning("GPU search unavailable for %s (%s); using the CPU", type(inner).__name__, exc)
        return index


def to_cpu(index):
    return index.cpu if isinstance(index, GpuIndex) else index


# --------------------------------------------------------------------------- build


def _as_f32(x, dim: int | None = None) -> np.ndarray:
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous):
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"expected float32 vectors of shape [n, {dim}], got {x.shape}")
    return x


def new_index(choice: IndexChoice, dim: int):
    """An empty (untrained) CPU index for ``choice``, inner-product metric."""
    faiss = _faiss()
    index = faiss.index_factory(int(dim), choice.factory, faiss.METRIC_INNER_PRODUCT)
    if choice.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = int(
            choice.params.get("ef_construction", HNSW_EF_CONSTRUCTION))
    if choice.kind == "ivfpq":
        # the factory turns on polysemous training (simulated annealing over the
        # codes, minutes of CPU) that only Hamming-filtered search uses: off
        ivfpq = faiss.downcast_index(index)
        ivfpq.do_polysemous_training = False
        # 64 points per code word (16k vectors) train a sub-quantizer well; more only costs time
        ivfpq.pq.cp.max_points_per_centroid = PQ_TRAIN_POINTS_PER_CENTROID
    return index


def _train(index, choice: IndexChoice, train_sample, gpu: bool) -> None:
    faiss = _faiss()
    if train_sample is None or len(train_sample) == 0:
        raise ValueError(f"{choice.kind} index needs a non-empty train_sample")
    x = _as_f32(train_sample, index.d)
    ivf = faiss.extract_index_ivf(index)
    if gpu:
        # k-means assignment on the GPU; the result is an ordinary CPU index
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(index.d))
    index.train(x)
    if gpu:
        ivf.clustering_index = None


def add_batches(index, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> int:
    """Add ``(ids int64 [b], vectors float32 [b, d])`` batches; returns the count added."""
    added = 0
    for ids, vecs in batches:
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if len(ids) == 0:
            continue
        vecs = _as_f32(vecs, index.d)
        if len(vecs) != len(ids):
            raise ValueError(f"batch has {len(ids)} ids but {len(vecs)} vectors")
        index.add_with_ids(vecs, ids)
        added += len(ids)
    return added


def build_vectors_index(choice: IndexChoice, dim: int, train_sample: np.ndarray | None,
                        batches: Iterable[tuple[np.ndarray, np.ndarray]], use_gpu="auto"):
    """Build a CPU faiss index for ``choice``: train on ``train_sample`` (IVF
    kinds), then add the ``(ids, vectors)`` batches streamed from the store.

    With ``use_gpu="auto"`` and a GPU build of faiss, IVF k-means runs on the
    GPU and IVF adds go through a GPU clone; the returned index is always a CPU
    index (ready to save; wrap with :func:`to_gpu` to search on the GPU).
    """
    faiss = _faiss()
    gpu = _want_gpu(use_gpu)
    index = new_index(choice, dim)
    if choice.kind in ("ivf", "ivfpq"):
        _train(index, choice, train_sample, gpu)
        if gpu:
            try:
                co = faiss.GpuMultipleClonerOptions()
                co.useFloat16 = False
                co.useFloat16LookupTables = True
                gindex = faiss.index_cpu_to_all_gpus(index, co=co)
                add_batches(gindex, batches)
                return faiss.index_gpu_to_cpu(gindex)
            except Exception as exc:  # e.g. a PQ size the GPU does not support
                log.warning("GPU add unavailable (%s); adding on the CPU", exc)
                index.reset()
    add_batches(index, batches)
    return index


def remove_ids(index, ids) -> int | None:
    """Remove store ids in place; returns how many were removed, or None when
    the index kind cannot remove (HNSW): the caller rebuilds it from the store."""
    faiss = _faiss()
    index = to_cpu(index)
    inner = index
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        return None
    ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
    if len(ids) == 0:
        return 0
    return int(index.remove_ids(faiss.IDSelectorBatch(ids)))


# --------------------------------------------------------------------------- search


def search_parameters(index, params: dict):
    """The faiss ``SearchParameters`` object for tuned ``params`` (efSearch / nprobe), or None."""
    if "efSearch" in params:
        return _params_object("hnsw", int(params["efSearch"]))
    if "nprobe" in params and _faiss().try_extract_index_ivf(index) is not None:
        return _params_object("ivf", int(params["nprobe"]))
    return None


@functools.lru_cache(maxsize=64)
def _params_object(kind: str, value: int):
    """One faiss SearchParameters object per setting (building one costs more than a small search's
    Python overhead; faiss only reads them)."""
    faiss = _faiss()
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=value)
    return faiss.SearchParametersIVF(nprobe=value)


SMALL_BATCH = 8


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
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k) if sp is None else index.search(queries, k, params=sp)
    finally:
        faiss.omp_set_num_threads(before)


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
    vecs = _as_f32(rerank_fn(uniq), queries.shape[1])
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
    q = _as_f32(queries, index.d)
    k = int(k)
    if k <= 0:
        raise UsageError(f"k must be positive, got {k}")
    ntotal = index.ntotal  # (a SWIG attribute: about 1 us a read)
    if ntotal == 0 or len(q) == 0:
        return (np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64))
    k_factor = int(params.get("k_factor", 1)) if rerank_fn is not None else 1
    kk = min(k * max(1, k_factor), int(ntotal)) if rerank_fn is not None else k
    scores, ids = _raw_search(index, q, kk, params)
    ids = ids.astype(np.int64, copy=False)
    if rerank_fn is not None:
        return rerank(q, ids, k, rerank_fn)
    scores = scores.astype(np.float32, copy=False)  # faiss hands back a fresh array: ours to change
    # faiss pads a row's missing results (-1) at its end: one look at the last column, not a scan
    last = ids[:, -1]
    if (last[0] < 0) if len(last) == 1 else (last.min() < 0):
        scores[ids < 0] = -np.inf
    return scores, ids


# --------------------------------------------------------------------------- exact search and tuning


EXACT_QUERY_ROWS = 16  # queries merged at a time by exact_search


def exact_search(queries: np.ndarray, batches: Iterable[tuple[np.ndarray, np.ndarray]], k: int):
    """Exact top-k by inner product over streamed ``(ids, vectors)`` batches: (scores float32 [n, k],
    ids int64 [n, k]), -inf / -1 where fewer than k vectors exist.

    Ties go to the earlier vector in the stream. Beyond the [n, k] results and one batch's scores,
    only the vectors that beat a query's current k-th best are merged (:func:`merge_top`),
    EXACT_QUERY_ROWS queries at a time: no [n, batch + k] sort (150 MiB for 500 queries and
    8192-vector batches).
    """
    q = _as_f32(queries)
    n = len(q)
    best_s = np.full((n, k), -np.inf, dtype=np.float32)
    best_i = np.full((n, k), -1, dtype=np.int64)
    if k <= 0:
        return best_s, best_i
    for ids, vecs in batches:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            continue
        s = q @ _as_f32(vecs, q.shape[1]).T
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
    from statistics import NormalDist

    r = np.asarray(per_query, np.float64)
    if len(r) == 0:
        return 1.0
    if confidence <= 0 or len(r) < 2:
        return float(r.mean())
    z = NormalDist().inv_cdf(confidence)
    return float(r.mean() - z * r.std(ddof=1) / math.sqrt(len(r)))


def _grid_for(index, choice: IndexChoice, k: int) -> tuple[str, list[int]]:
    if choice.kind == "hnsw":
        # never below 2k: an indexed query reaches its neighbours through its own
        # graph links, so leave-one-out recall overstates tiny efSearch values
        # (10k x 512: 0.99 on indexed vectors, 0.94 on unseen queries at efSearch=16)
        return "efSearch", sorted({max(2 * k, e) for e in EF_SEARCH_GRID})
    if choice.kind in ("ivf", "ivfpq"):
        nlist = int(_faiss().extract_index_ivf(to_cpu(index)).nlist)
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
    q = _as_f32(sample_queries, index.d)
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


# --------------------------------------------------------------------------- save / load


def _sidecar(path: str) -> str:
    return str(path) + ".json"


def _crc_file(path: str) -> tuple[int, int]:
    crc, size = 0, 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return crc, size


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(d: str, base: str) -> None:
    """Delete temp files a killed earlier save of ``base`` left behind (they can be as big as the index).

    Callers hold the index's write lock, so no other save of ``base`` is in flight.
    """
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        if n.startswith(f".{base}.") and n.endswith(".tmp"):
            try:
                os.unlink(os.path.join(d, n))
            except OSError:
                pass


def _write_index(index, path: str) -> None:
    _faiss().write_index(index, path)


def save_atomic(index, path, generation: int, meta: dict | None = None) -> None:
    """Write ``index`` to ``path`` atomically and record the store generation
    (and ``meta``, e.g. the choice and tuned parameters) in ``path + '.json'``.

    A crash at any point leaves the previous file readable; a crash between the
    two renames leaves a sidecar that does not match the file, which
    :func:`load` reports as ``generation=None`` (stale: rebuild).
    """
    index = to_cpu(index)
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    base = os.path.basename(path)
    _remove_stale_temps(d, base)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=d)
    os.close(fd)
    side_tmp = None
    try:
        _write_index(index, tmp)
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600: other users could not read the index
            os.fsync(f.fileno())
        crc, size = _crc_file(tmp)
        info = {"format": SIDECAR_FORMAT, "generation": int(generation), "ntotal": int(index.ntotal),
                "dim": int(index.d), "size": size, "crc32": crc, "meta": meta or {}}
        fd, side_tmp = tempfile.mkstemp(prefix=f".{base}.json.", suffix=".tmp", dir=d)
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=1, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        os.replace(side_tmp, _sidecar(path))
        side_tmp = None
        _fsync_dir(d)
    finally:
        for t in (tmp, side_tmp):
            if t is not None and os.path.exists(t):
                os.unlink(t)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, IndexChoice):
        return o.to_dict()
    raise TypeError(type(o).__name__)


def read_meta(path) -> dict | None:
    """The sidecar of a saved index (generation, ntotal, size, crc32, meta), or
    None when missing or unreadable. Does not read the index itself."""
    try:
        with open(_sidecar(os.fspath(path))) as f:
            info = json.load(f)
        return info if isinstance(info, dict) and info.get("format") == SIDECAR_FORMAT else None
    except (OSError, ValueError):
        return None


def load(path, verify: bool = True):
    """Read a saved index -> ``(index, generation)``.

    ``generation`` is None when the sidecar is missing or (with ``verify``)
    its size/CRC do not match the file: the file is then of unknown coverage
    and should be rebuilt from the store.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise IndexNotFound(f"{path}: FAISS index file is missing")
    try:
        index = _faiss().read_index(path)
    except Exception as exc:
        raise IndexCorrupt(f"{path}: not a readable FAISS index ({str(exc).splitlines()[0][:120]})") from None
    info = read_meta(path)
    generation = None
    if info is not None and info.get("ntotal") == index.ntotal:
        generation = info.get("generation")
        if verify:
            crc, size = _crc_file(path)
            if size != info.get("size") or crc != info.get("crc32"):
                generation = None
    return index, generation


# --------------------------------------------------------------------------- all in one


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

    This is the one build flow: ``kgclip build`` (:func:`indexer.index.derive_faiss`, over the store)
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
