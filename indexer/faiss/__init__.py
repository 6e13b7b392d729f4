"""FAISS vector indexes over the store's vectors, one concern per module:

- :mod:`.choose` -- which index for n vectors under a memory budget (:data:`INDEX_TYPES`, the one list)
- :mod:`.build` -- new index, train, add batches, remove ids; the GPU clone for search
- :mod:`.search` -- search with tuned parameters, exact re-rank of IVF-PQ candidates
- :mod:`.exact` -- exact top-k (ground truth) and recall@k
- :mod:`.tune` -- tune nprobe / efSearch on a sample; :func:`build_and_tune`, the one build flow
- :mod:`.files` -- save atomically with a generation/CRC sidecar, load
- :mod:`.check` -- a loaded index against the store: metric, dimension, id map, sampled rows; safe search parameters

Pure numpy in and out. ``import faiss`` (the library) happens inside functions, so importing this
package is cheap; inside it, ``import faiss`` is absolute and names the library, never this package.
The names below are the package's public API (``from indexer import faiss as V``); ``V.search`` and
``V.tune`` are the functions (their modules: ``importlib.import_module("indexer.faiss.tune")``).
"""

from __future__ import annotations

from .build import (GpuIndex, add_batches, build_vectors_index, gpu_available, new_index, remove_ids, to_cpu,
                    to_gpu)
from .choose import (FLAT_MAX_N, HNSW_MAX_N, INDEX_TYPES, PQ_MAX_M, IndexChoice, choose_index,
                     default_memory_budget, estimate_memory, nlist_for, parse_memory, pq_m_options)
from .exact import TUNE_CONFIDENCE, exact_search, merge_top, recall_at_k, recall_lower_bound
from .files import load, read_meta, save_atomic
from .search import rerank, search, search_parameters
from .tune import NPROBE_GRID, EF_SEARCH_GRID, Tuned, build_and_tune, holds_out, ids_at_rows, sample_rows, tune

__all__ = [
    "INDEX_TYPES", "FLAT_MAX_N", "HNSW_MAX_N", "PQ_MAX_M", "IndexChoice", "choose_index", "default_memory_budget",
    "estimate_memory", "nlist_for", "parse_memory", "pq_m_options",
    "GpuIndex", "add_batches", "build_vectors_index", "gpu_available", "new_index", "remove_ids", "to_cpu", "to_gpu",
    "rerank", "search", "search_parameters",
    "TUNE_CONFIDENCE", "exact_search", "merge_top", "recall_at_k", "recall_lower_bound",
    "EF_SEARCH_GRID", "NPROBE_GRID", "Tuned", "build_and_tune", "holds_out", "ids_at_rows", "sample_rows", "tune",
    "load", "read_meta", "save_atomic",
]
