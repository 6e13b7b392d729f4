"""Build a FAISS index for an :class:`~indexer.faiss.choose.IndexChoice` (train, add batches, remove),
and the GPU side (:func:`gpu_available`, :func:`to_gpu`, :func:`to_cpu`, :class:`GpuIndex`).

Every index uses the inner-product metric over L2-normalised float32 vectors and is keyed by the
store's int64 item ids. FAISS is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import logging
from typing import Iterable

import numpy as np

from retrieval.errors import UsageError

from .choose import HNSW_EF_CONSTRUCTION, PQ_TRAIN_POINTS_PER_CENTROID, IndexChoice

log = logging.getLogger(__name__)


def as_f32(x, dim: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous float32 [n, dim] array (one vector becomes one row), copied only if needed."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous):
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"expected float32 vectors of shape [n, {dim}], got {x.shape}")
    return x


def gpu_available() -> bool:
    """True when faiss was built with GPU support and sees at least one GPU."""
    try:
        import faiss

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
        import faiss

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
        import faiss

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
    import faiss

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


def new_index(choice: IndexChoice, dim: int):
    """An empty (untrained) CPU index for ``choice``, inner-product metric."""
    import faiss

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
    import faiss

    if train_sample is None or len(train_sample) == 0:
        raise ValueError(f"{choice.kind} index needs a non-empty train_sample")
    x = as_f32(train_sample, index.d)
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
        vecs = as_f32(vecs, index.d)
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
    import faiss

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
    import faiss

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
