"""Test-only hooks for the reliability suite (a ``KGCLIP_PLUGINS`` module; tests only).

Loaded in a build/update subprocess with ``KGCLIP_PLUGINS=benchmarks.reliability_hooks``
(it also registers ``benchmarks.fakes``). With none of the variables below set it
patches nothing, so importing it in-process only registers encoder families.

``KGCLIP_HOOK_EVENTS=PATH``       append one JSON line per event: ``start``, ``commit`` (after every
                                  committed store transaction: generation, item count and a digest of
                                  the item ids), ``faiss-begin`` / ``faiss-renamed`` / ``faiss-end``
                                  around a FAISS file write, ``exit``
``KGCLIP_HOOK_COMMIT_DELAY=S``    sleep S seconds after every committed store transaction
``KGCLIP_HOOK_PAUSE_FILE=PATH``  after every committed transaction, wait while PATH exists
``KGCLIP_HOOK_FAISS_DELAY=S``     sleep S/2 after the FAISS temp file is written and S/2 between the
                                  index rename and its sidecar rename (the windows a kill should hit)

Families registered here: ``fakehang:v1`` — ``fake:v1`` whose image transform never
returns for a 13x7 image (a decoder that hangs, for the per-file time bound).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import time

import benchmarks.fakes as fakes
from retrieval.encoders import Family, register

HANG_SIZE = (13, 7)


class HangPreprocess(fakes.SmallPreprocess):
    def __call__(self, img):
        if img.size == HANG_SIZE:
            time.sleep(3600)
        return super().__call__(img)


class HangEncoder(fakes.FakeEncoder):
    family = "fakehang"

    def image_transform(self):
        return HangPreprocess()


register(Family("fakehang", "benchmarks.reliability_hooks:HangEncoder", "fakehang:v1",
                "fake:v1 whose decoder hangs on 13x7 images (tests only)"))

_EVENTS = os.environ.get("KGCLIP_HOOK_EVENTS")
_COMMIT_DELAY = float(os.environ.get("KGCLIP_HOOK_COMMIT_DELAY") or 0)
_FAISS_DELAY = float(os.environ.get("KGCLIP_HOOK_FAISS_DELAY") or 0)
_PAUSE = os.environ.get("KGCLIP_HOOK_PAUSE_FILE")


def event(kind: str, **kw) -> None:
    if not _EVENTS:
        return
    kw.update(event=kind, t=time.time(), pid=os.getpid())
    with open(_EVENTS, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(kw) + "\n")
        fh.flush()


def ids_digest(ids) -> str:
    return hashlib.sha1(",".join(map(str, sorted(int(i) for i in ids))).encode()).hexdigest()


def item_digest(store) -> tuple[int, str]:
    """(item count, digest of the sorted item ids) of the store's current snapshot."""
    return store_digests(store)[:2]


def store_digests(store) -> tuple[int, str, str]:
    """(item count, digest of the item ids, digest of the caption vectors' owner ids) in ONE snapshot."""
    from indexer.store import unikey

    with store.read() as t:
        ids = [unikey(k) for k in t.cursor(db=store.db["items"]).iternext(values=False)]
        owners = [unikey(bytes(v)[:8]) for _, v in t.cursor(db=store.db["capvecs"])]
    return len(ids), ids_digest(ids), ids_digest(owners)


def _install() -> None:
    import indexer.store as st
    import indexer.faiss.files as vec
    import retrieval.atomic as atomic

    orig_write = st.Store.write

    def write(self, fn, bump=True):
        out = orig_write(self, fn, bump)
        if _EVENTS:
            n, dig, cap = store_digests(self)
            event("commit", generation=self.generation, items=n, digest=dig, captions=cap)
        if _COMMIT_DELAY:
            time.sleep(_COMMIT_DELAY)
        while _PAUSE and os.path.exists(_PAUSE):
            time.sleep(0.02)
        return out

    st.Store.write = write

    orig_write_index = vec._write_index

    def write_index(index, path):
        event("faiss-begin", path=path)
        out = orig_write_index(index, path)  # (crc32, size) of what it wrote
        if _FAISS_DELAY:
            time.sleep(_FAISS_DELAY / 2)
        return out

    vec._write_index = write_index

    class _OsProxy:
        """``os`` for retrieval.atomic, with a pause after the index file's rename."""

        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            os.replace(src, dst)
            if str(dst).endswith(".faiss"):
                event("faiss-renamed", path=str(dst))
                if _FAISS_DELAY:
                    time.sleep(_FAISS_DELAY / 2)
            elif str(dst).endswith(".faiss.json"):
                event("faiss-end", path=str(dst))

    atomic.os = _OsProxy()
    event("start")
    atexit.register(lambda: event("exit"))


if _EVENTS or _COMMIT_DELAY or _FAISS_DELAY or _PAUSE:
    _install()
