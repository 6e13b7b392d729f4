"""``info``: what an index holds (``verify`` is :mod:`indexer.verify`'s)."""

from __future__ import annotations

import os

from .derive import FAISS_FILES
from .manifest import read_manifest
from .store import Store, WriteLock


def index_info(index_dir: str) -> dict:
    """The manifest plus live counts from the store and the FAISS files' freshness."""
    index_dir = os.path.abspath(os.fspath(index_dir))
    m = read_manifest(index_dir)
    store = Store(index_dir, readonly=True)
    try:
        live = {
            "items": store.count("items"), "paths": store.count("paths"), "captions": store.count("capvecs"),
            "failures": store.count("fails"),
        }
        gen = store.generation
        state = store.meta("state")
    finally:
        store.close()
    faiss = {}
    for kind, info in (m.get("faiss") or {}).items():
        p = os.path.join(index_dir, FAISS_FILES.get(kind, f"{kind}.faiss"))
        faiss[kind] = dict(info, exists=os.path.exists(p), fresh=info.get("generation") == gen,
                           bytes=os.path.getsize(p) if os.path.exists(p) else 0)
    locked = WriteLock(index_dir).holder() is not None  # asked without creating or writing the lock file
    size = 0
    for root, _, files in os.walk(index_dir):  # links are counted as links, never followed
        size += sum(_lsize(os.path.join(root, f)) for f in files)
    out = dict(m)
    out.update(path=index_dir, live_counts=live, store_generation=gen, store_state=state, faiss=faiss,
               locked=locked, disk_bytes=size)
    return out


def _lsize(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0
