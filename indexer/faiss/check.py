"""Check a loaded FAISS index against what it should hold: metric, dimension, ids and vectors.

A FAISS file (and its sidecar) may come from anyone, so its content is not trusted: an L2 index,
labels permuted among the vectors, or search parameters out of range (``efSearch: -1``,
``nprobe: 2e9``) would give wrong or missing hits, or exhaust memory. :func:`problems` says what is
wrong (the caller derives the index again from the store), :func:`safe_params` clamps search
parameters into range with a warning.
"""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from .search import MAX_EF_SEARCH, search

EXACT_TOL = 1e-4  # flat and HNSW store the vectors as they are
APPROX_MISS = 0.25  # IVF/PQ: a sample query may miss itself this often (approximate search)


def labels(index) -> np.ndarray | None:
    """The store ids an index holds: an ``IDMap``'s rows in order, or an IVF index's inverted lists
    one after the other; None for an index without ids of its own."""
    import faiss

    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        n = int(index.id_map.size())
        return faiss.rev_swig_ptr(index.id_map.data(), n).view(np.int64) if n else np.zeros(0, np.int64)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    inv = ivf.invlists
    parts = [faiss.rev_swig_ptr(inv.get_ids(j), inv.list_size(j)).astype(np.int64)
             for j in range(ivf.nlist) if inv.list_size(j)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def is_id_map(index) -> bool:
    """True for an ``IDMap`` index, whose rows are in the order they were added."""
    import faiss

    return isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2))


def problems(index, dim: int, n_expected: int | None = None) -> list[str]:
    """What makes ``index`` unusable as kgclip's index: metric, dimension, count and id map."""
    import faiss

    out = []
    metrics = {int(index.metric_type)}
    if is_id_map(index):
        metrics.add(int(faiss.downcast_index(index.index).metric_type))  # the wrapper's and the inner one's
    for metric in sorted(metrics - {faiss.METRIC_INNER_PRODUCT}):
        name = "L2" if metric == faiss.METRIC_L2 else f"type {metric}"
        out.append(f"uses the {name} metric, kgclip compares by inner product")
    if int(index.d) != int(dim):
        out.append(f"holds {int(index.d)}-d vectors, the model's are {int(dim)}-d")
    if n_expected is not None and int(index.ntotal) != n_expected:
        out.append(f"holds {int(index.ntotal)} vectors, the store has {n_expected}")
    if not is_id_map(index) and faiss.try_extract_index_ivf(index) is None:
        out.append("has no ids of its own (kgclip indexes map rows to store ids)")
    return out


def sample_mismatches(index, stored: Callable[[np.ndarray, np.ndarray], np.ndarray], params: dict | None = None,
                      n: int = 32, seed: int | None = None) -> tuple[int, int]:
    """(mismatches, allowed) over ``n`` sampled rows: a row agrees when its reconstructed vector equals
    the stored vector it should hold (``stored(rows, labels)``), or (IVF/PQ, which cannot reconstruct
    exactly) a search with that stored vector finds the row's label among the top 10. The rows are
    drawn afresh each time (``seed=None``): a crafted file cannot know which rows are looked at."""
    import faiss

    lab = labels(index)
    if lab is None or not len(lab):
        return 0, 0
    rng = np.random.default_rng(seed)
    pos = np.sort(rng.choice(len(lab), min(n, len(lab)), replace=False))
    ids = np.array(lab[pos], np.int64)
    want = np.asarray(stored(pos, ids), np.float32)
    ok = np.zeros(len(pos), bool)
    exact = is_id_map(index)
    if exact:  # flat and HNSW keep the vectors as they are: row p must hold its label's vector
        try:
            inner = faiss.downcast_index(index.index)
            got = np.stack([inner.reconstruct(int(p)) for p in pos])
            ok = np.abs(got - want).max(axis=1) <= EXACT_TOL
        except RuntimeError:
            exact = False
    if not exact:  # IVF/PQ: a search with the stored vector must find its own label
        k = min(10, int(index.ntotal))
        _, found = search(index, want, k, safe_params(index, params or {}, k))
        ok = (found == ids[:, None]).any(axis=1)
    allowed = 0 if exact else int(APPROX_MISS * len(pos))
    return int((~ok).sum()), allowed


def agrees(index, stored: Callable[[np.ndarray, np.ndarray], np.ndarray], params: dict | None = None,
           n: int = 32) -> bool:
    """A cheap check for readers: ``n`` sampled rows agree with the store (see :func:`sample_mismatches`)."""
    bad, allowed = sample_mismatches(index, stored, params, n=n)
    return bad <= allowed


def safe_params(index, params: dict, k: int | None = None, where: str = "", warn: bool = False) -> dict:
    """``params`` with ``efSearch`` / ``nprobe`` / ``k_factor`` clamped into their useful range.

    efSearch: at least ``k`` (fewer would return fewer hits than asked) and at most
    :data:`MAX_EF_SEARCH`; nprobe: 1 to the index's nlist; k_factor: 1 to 64. A value that is not
    a number is dropped. With ``warn``, one line names each value replaced.
    """
    import faiss

    out = dict(params) if isinstance(params, dict) else {}
    ivf = faiss.try_extract_index_ivf(index)
    ranges = {"efSearch": (max(1, k or 1), MAX_EF_SEARCH), "k_factor": (1, 64),
              "nprobe": (1, int(ivf.nlist) if ivf is not None else 1 << 16)}
    for name, (lo, hi) in ranges.items():
        if name not in out:
            continue
        v = out[name]
        good = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
        fixed = min(max(int(v), lo), hi) if good else None
        if not good or fixed != v:
            if warn:
                print(f"{where or 'index.json: params'}.{name}={str(v)[:40]} is out of range; using "
                      f"{'the default' if fixed is None else fixed}", file=sys.stderr)
            if fixed is None:
                del out[name]
            else:
                out[name] = fixed
    return out
