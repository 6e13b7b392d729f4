"""kgclip's build side: sources -> decode -> encode -> LMDB store -> FAISS, and the read API.

>>> from indexer import build_index, update_index, open_index
>>> build_index(["photos/"], "photos.kgc", model="lite")      # doctest: +SKIP
>>> index = open_index("photos.kgc")                           # doctest: +SKIP
>>> scores, ids = index.search(query_vectors, k=10)            # doctest: +SKIP

Importing this package is cheap: numpy only; lmdb, faiss and the models load on use.
"""

from __future__ import annotations

from .admin import index_info
from .build import BuildOptions, build_index, update_index
from .index import Index, open_index, open_searcher
from .pipeline import BuildInterrupted
from .report import BuildReport
from .verify import verify_index

__all__ = ["build_index", "update_index", "BuildOptions", "open_index", "open_searcher", "Index", "BuildReport", "BuildInterrupted",
           "index_info", "verify_index"]

