"""Seeded synthetic clustered vectors with exact ground truth (faiss contrib style).

Used by tests and benchmarks of :mod:`indexer.faiss`: uniform random vectors
have no neighbourhood structure (every ANN index looks bad on them), real
embeddings are clustered with a low intrinsic dimension, so the generator
draws a Gaussian mixture whose within-cluster spread lives mostly in a shared
``rank``-dimensional subspace (plus a little isotropic noise), with clusters of
different spreads, and L2-normalises it.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def _mixture(seed: int, dim: int, n_clusters: int, spread: float, rank: int):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = (spread * rng.uniform(0.5, 1.5, n_clusters)).astype(np.float32)
    r = min(rank, dim)
    basis = np.linalg.qr(rng.standard_normal((dim, r)))[0].T.astype(np.float32)  # [r, dim] orthonormal
    return centres, scale, basis


def _draw(rng, centres, scale, basis, n, dim):
    lab = rng.integers(0, len(centres), n)
    r = basis.shape[0]
    z = rng.standard_normal((n, r)).astype(np.float32) / np.sqrt(r)
    iso = rng.standard_normal((n, dim)).astype(np.float32) * (0.15 / np.sqrt(dim))
    x = centres[lab] + (z @ basis + iso) * scale[lab, None]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def clustered(n: int, dim: int, n_clusters: int | None = None, seed: int = 0, spread: float = 0.8,
              rank: int = 24, chunk: int = 100_000) -> np.ndarray:
    """``n`` L2-normalised float32 vectors from a seeded mixture of ``n_clusters``
    clusters (default ``max(10, n // 1000)``); generated in chunks so 1M x 512
    needs little more than the output array."""
    n_clusters = n_clusters or max(10, n // 1000)
    centres, scale, basis = _mixture(seed, dim, n_clusters, spread, rank)
    rng = np.random.default_rng(seed + 1)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        out[s:e] = _draw(rng, centres, scale, basis, e - s, dim)
    return out


def queries_like(n: int, dim: int, n_base: int, n_clusters: int | None = None, seed: int = 0,
                 spread: float = 0.8, rank: int = 24) -> np.ndarray:
    """Held-out queries from the same mixture as ``clustered(n_base, dim, n_clusters, seed)``
    (same centres, spreads and subspace; fresh draws): not in the index."""
    n_clusters = n_clusters or max(10, n_base // 1000)
    centres, scale, basis = _mixture(seed, dim, n_clusters, spread, rank)
    return _draw(np.random.default_rng(seed + 1_000_003), centres, scale, basis, n, dim)


def batches(ids: np.ndarray, x: np.ndarray, size: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) batches in order, as a store streams them."""
    for s in range(0, len(x), size):
        yield ids[s:s + size], x[s:s + size]


def exact_topk(queries: np.ndarray, x: np.ndarray, ids: np.ndarray, k: int):
    """Exact inner-product top-k (scores, store ids) with faiss IndexFlatIP."""
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    s, i = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return s, np.where(i >= 0, ids[np.clip(i, 0, None)], -1)
