"""Which FAISS index to build for ``n`` vectors of ``dim`` under a memory budget: :func:`choose_index`.

In the spirit of autofaiss:

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
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from retrieval.choices import INDEX_TYPES  # noqa: F401 (re-exported)
from retrieval.errors import UsageError


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
K_FACTOR_GRID = (4, 8, 16)  # IVF-PQ candidates per result re-ranked exactly, tried by tune()


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
