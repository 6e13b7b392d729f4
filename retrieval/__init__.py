"""kgclip: cross-modal retrieval with knowledge-graph query expansion.

The query side lives in :mod:`retrieval`, the build side in :mod:`indexer`.
Importing this package is cheap: torch, open_clip and faiss load on first use.
"""

__version__ = "0.1.0"
