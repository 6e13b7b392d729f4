"""A minimal exact (Flat) stand-in for :mod:`indexer.vectors` with the same function names.

Used only when ``indexer.vectors`` is absent or incomplete, so the build side can
be developed and tested on its own. faiss is imported inside functions.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np


@dataclass
class IndexChoice:
    kind: str = "flat"
    factory: str = "Flat"
    params: dict = field(default_factory=dict)
    rerank: bool = False


def choose_index(n, dim, max_memory_bytes=None, index_type="auto"):
    return IndexChoice()


def build_vectors_index(choice, dim, train_sample, batches, use_gpu="auto"):
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    for ids, vecs in batches:
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vecs, np.float32), np.ascontiguousarray(ids, np.int64))
    return index


def holds_out(choice, n, n_queries):
    return False  # flat: there is nothing to tune


def tune(index, choice, sample_queries, exact_fn=None, k=10, target=0.95):
    return dict(choice.params), 1.0, 1.0  # (params, recall, its lower bound), as vectors.tune


def search(index, queries, k, params=None, rerank_fn=None):
    q = np.ascontiguousarray(queries, np.float32)
    if index.ntotal == 0 or k <= 0:
        return np.zeros((len(q), max(k, 0)), np.float32), np.full((len(q), max(k, 0)), -1, np.int64)
    return index.search(q, k)


def save_atomic(index, path, generation):
    import faiss

    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".faiss", dir=d)
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        with open(tmp, "ab") as fh:  # trailer: the store generation this file covers
            fh.write(b"KGCGEN" + int(generation).to_bytes(8, "little"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path):
    import faiss

    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 14 or data[-14:-8] != b"KGCGEN":
        raise ValueError(f"{path}: no generation trailer")
    gen = int.from_bytes(data[-8:], "little")
    index = faiss.deserialize_index(np.frombuffer(data[:-14], np.uint8))
    return index, gen


def gpu_available():
    return False
