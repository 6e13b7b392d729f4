"""The FAISS files of an index folder, derived from its store: ``INDEX/image.faiss`` and
``INDEX/caption.faiss`` record the store generation they cover (:func:`derive_faiss` builds them from
one store snapshot; :func:`faiss_generation` reads the generation a saved file covers).

Shared by the build (:mod:`indexer.build`), the reader that re-derives stale files
(:mod:`indexer.index`) and ``verify`` (:mod:`indexer.verify`).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Callable

import numpy as np

from . import faiss as V
from . import records
from .store import Store

FAISS_FILES = {"image": "image.faiss", "caption": "caption.faiss"}
TUNE_QUERIES = 500
SEED = 0


def iter_vectors(store: Store, kind: str, txn):
    """The store's vectors as ``(ids, vectors)`` chunks in key order, as FAISS indexes them (a caption
    vector under its item's id)."""
    for keys, vecs, owners in store.iter_vectors(kind, txn=txn):
        if len(keys):
            yield (keys if owners is None else owners), vecs


def rows_reader(store: Store, kind: str, dim: int, txn) -> Callable[[np.ndarray], np.ndarray]:
    """``rows -> vectors``: the stored vectors at (sorted) positions of :func:`_iter_vectors`' order.

    It walks the keys only (16 bytes a vector) and reads just the vectors asked for, so a training
    sample or the tuning queries never need a pass over every stored vector.
    """

    def read(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        keys, start = [], 0
        for ids, _owners in store.iter_vector_keys(kind, txn=txn):
            keys.append(ids[rows[(rows >= start) & (rows < start + len(ids))] - start])
            start += len(ids)
        keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        return store.get_vectors(keys, dim, kind=kind, txn=txn)

    return read


def derive_faiss(store: Store, index_dir: str, kind: str, dim: int, index_type: str = "auto",
                 max_memory: int | None = None, save: bool = True, use_gpu="auto", txn=None):
    """Build the FAISS index of ``kind`` from one snapshot of the store; returns (faiss index, info).

    The choice, training, held-out tuning and recall measurement are
    :func:`indexer.faiss.tune.build_and_tune`'s, the flow the FAISS benchmarks measure. Caption
    vectors take the auto choice and, sharing their item's id, are tuned without leave-one-out.
    ``txn``: a read transaction to take the snapshot from (several kinds derived from one generation).
    """
    with (nullcontext(txn) if txn is not None else store.read()) as txn:
        gen = int(store_meta(txn, store, "generation", 0))
        n = txn.stat(store.db["vecs" if kind == "image" else "capvecs"])["entries"]
        rerank = (lambda ids: store.get_vectors(ids, dim, kind="image")) if kind == "image" else None
        index, tuned = V.build_and_tune(
            n, dim, lambda: iter_vectors(store, kind, txn), rows_reader(store, kind, dim, txn),
            max_memory=max_memory, index_type=index_type if kind == "image" else "auto",
            n_queries=TUNE_QUERIES, rerank_fn=rerank, use_gpu=use_gpu, seed=SEED, leave_one_out=kind == "image")
    info = {
        "file": FAISS_FILES[kind], "kind": tuned["kind"], "factory": tuned["factory"], "params": tuned["params"],
        "choice": dict(tuned["choice"]["params"]), "rerank": bool(tuned["rerank"]),
        "recall_at_10": round(float(tuned["recall_at_k"]), 4),
        "recall_at_10_low": round(float(tuned["recall_low"]), 4),
        "generation": gen, "n": int(n), "dim": int(dim),
    }
    if tuned["kind"] != "flat" and n:
        info["tuned_on"] = {"held-out": "held-out sample", "leave-one-out": "indexed sample, leave-one-out",
                            "indexed": "indexed sample"}[tuned["tuned_on"]]
        info.update(n_queries=tuned["n_queries"], build_s=tuned["build_s"], tune_s=tuned["tune_s"])
    if save:
        V.save_atomic(index, os.path.join(index_dir, FAISS_FILES[kind]), gen)
    return index, info


def faiss_generation(index_dir: str, kind: str) -> int | None:
    p = os.path.join(index_dir, FAISS_FILES[kind])
    meta = V.read_meta(p) if os.path.exists(p) else None  # the sidecar alone: no need to read the index
    return None if meta is None else meta.get("generation")


def store_meta(txn, store: Store, key: str, default=None):
    v = records.json_value("meta", key.encode(), txn.get(key.encode(), db=store.db["meta"]))
    return default if v is None else v
