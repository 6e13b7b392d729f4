"""Open an index folder for reading: :class:`Index`, :func:`open_index`, :func:`open_searcher`.

``INDEX/store.lmdb`` is the source of truth; ``INDEX/image.faiss`` and ``INDEX/caption.faiss`` are
derived from it and record the store generation they cover. :func:`open_index` derives a stale or
missing FAISS file again from the stored vectors (never re-encoding images). Building and updating
are :mod:`indexer.build`'s; ``verify`` is :mod:`indexer.admin`'s.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Iterator

import numpy as np

from retrieval.errors import DiskFull, IndexCorrupt, KgclipError, QueryError, UnsafePath, UsageError
from retrieval.query import Searcher

from . import faiss as V
from .faiss import check
from .derive import FAISS_FILES, derive_faiss, faiss_generation, store_meta
from .manifest import read_manifest, rebuild_command, write_manifest
from .store import Store, WriteLock

log = logging.getLogger(__name__)

MAX_K = 1 << 20  # most results one Index.search call returns per query


class Index:
    """An opened index: FAISS search over store ids, metadata and vectors from LMDB.

    What a Searcher reads (``retrieval.types.IndexReader``): ``path``, ``model_spec``,
    ``model_fingerprint``, ``text_model_spec``, ``manifest``, ``counts``, ``len()``, :meth:`search`,
    :meth:`get`, :meth:`get_vectors`, :meth:`iter_items`, :meth:`iter_profiles`,
    :meth:`refresh_if_updated` and :meth:`close`.
    """

    def __init__(self, path: str, manifest: dict, store: Store):
        self.path = path
        self.manifest = manifest
        self.store = store
        self.model_spec = manifest["model"]["spec"]
        self.model_fingerprint = manifest["model"].get("fingerprint")
        # lite indexes since concept profiles: {"top", "temperature", "classes"}; None before them
        self.concept_profile = manifest["model"].get("profile")
        tm = manifest.get("text_model") or None
        self.text_model_spec = tm["spec"] if tm else None
        self.text_dim = int(tm["dim"]) if tm else None
        self.dim = int(manifest["model"]["dim"])
        self._faiss: dict[str, object] = {}
        self._info: dict[str, dict] = {}
        self.generation = -1
        self._seen_txnid: int | None = None  # LMDB txn id when the store was last seen at self.generation
        self.rebuilt: list[str] = []

    # -- FAISS loading / deriving ------------------------------------------------------
    def _load(self, rebuild: bool = True) -> None:
        gen = self.store.generation
        kinds = ["image"] + (["caption"] if self.text_model_spec else [])
        loaded: dict[str, tuple] = {}
        for kind in kinds:
            dim = self.dim if kind == "image" else self.text_dim
            try:  # its dimension is checked before faiss reads it (the count: _trusted, at its generation)
                loaded[kind] = V.load(os.path.join(self.path, FAISS_FILES[kind]), dim=dim)
            except Exception:  # noqa: BLE001 - missing or unreadable: derive it again
                loaded[kind] = (None, None)
        infos = {k: dict((self.manifest.get("faiss") or {}).get(k) or {}) for k in kinds}
        for kind in kinds:  # an untrusted file (another metric, permuted ids...) is derived again
            index, fgen = loaded[kind]
            if index is not None and not self._trusted(index, kind, infos[kind], current=fgen == gen):
                loaded[kind] = (None, None)
        stale = [k for k in kinds if loaded[k][0] is None or loaded[k][1] != gen]
        if stale:
            published = self._published_generation(loaded)
            if published is not None and WriteLock(self.path).holder() is not None:
                # a writer is at work and publishes its FAISS files when it finishes: until then serve
                # the last complete generation it published (what a long-lived searcher keeps serving)
                # instead of deriving and tuning FAISS again in every cold process
                gen, stale = published, []
        for kind in kinds:
            if kind not in stale:
                info = infos[kind]
                where = f"{os.path.join(self.path, 'index.json')}: faiss.{kind}.params"
                info["params"] = check.safe_params(loaded[kind][0], info.get("params") or {}, where=where, warn=True)
                self._faiss[kind] = loaded[kind][0]
                self._info[kind] = info
        if stale:
            if not rebuild:
                raise IndexCorrupt(f"{self.path}: FAISS files {', '.join(stale)} are stale or missing")
            self._rederive(stale, loaded_gen=gen)
        self.generation = gen if not stale else self.generation

    def _trusted(self, index, kind: str, info: dict, current: bool = True) -> bool:
        """The loaded file is kgclip's index of this store: inner product, the right dimension, an id
        map, and sampled rows hold the stored vectors of their labels (a file with permuted ids or
        another metric, even with a matching sidecar, is derived again from the store). A file of an
        earlier generation (``current=False``, served while a writer works) gets the structural checks
        only: the store has moved on, so its count and rows may differ."""
        dim = self.dim if kind == "image" else self.text_dim
        n = self.store.count("vecs" if kind == "image" else "capvecs") if current else None
        if check.problems(index, dim, n):
            return False
        if not current:
            return True
        if kind != "image":
            return True  # caption rows share their item's label: the metric and shape checks only
        params = check.safe_params(index, info.get("params") or {})
        return check.agrees(index, lambda _rows, ids: self.store.get_vectors(ids, dim), params)

    def _published_generation(self, loaded: dict[str, tuple]) -> int | None:
        """The generation every FAISS file and the manifest's record of it cover (one complete, published
        generation), or None when they disagree or a file is missing or unreadable."""
        gens = {g for _, g in loaded.values()}
        if None in gens or len(gens) != 1 or any(ix is None for ix, _ in loaded.values()):
            return None
        g = gens.pop()
        recorded = self.manifest.get("faiss") or {}
        if any(not isinstance(recorded.get(k), dict) or recorded[k].get("generation") != g for k in loaded):
            return None  # the search parameters in the manifest belong to another file
        return g

    def _rederive(self, kinds: list[str], loaded_gen: int | None = None) -> None:
        """Derive FAISS from the store; saved (and the manifest updated) when no writer holds the lock.

        All kinds come from ONE store snapshot; kinds loaded fresh at ``loaded_gen`` are derived
        again too when the store has moved on since, so image and caption search one generation.
        The derive runs without the write lock (it can take minutes on a large index, and an update
        started meanwhile must not be refused); the lock is taken only to save, and only if the
        store is still at the derived generation.
        """
        gen = self.store.generation
        opts = self.manifest.get("options") or {}
        with self.store.read() as txn:
            if loaded_gen is not None and int(store_meta(txn, self.store, "generation", 0)) != loaded_gen:
                kinds = ["image"] + (["caption"] if self.text_model_spec else [])
            for kind in kinds:
                dim = self.dim if kind == "image" else self.text_dim
                index, info = derive_faiss(self.store, self.path, kind, dim, opts.get("index_type") or "auto",
                                           opts.get("max_memory"), save=False, txn=txn)
                self._faiss[kind], self._info[kind] = index, info
                gen = info["generation"]
                self.rebuilt.append(kind)
        self.generation = gen
        self._save_derived(kinds, gen)

    def _save_derived(self, kinds: list[str], gen: int) -> None:
        """Save FAISS files this reader derived, when it may write: never through a link, never without
        the write lock, never on a store it reads without the lock table. Otherwise (or when the save
        fails: a full disk, read-only files) the derived index is served from memory."""
        if self.store.nolock or not os.access(self.path, os.W_OK):
            return  # a read-only folder or mount: a reader does not write there
        lock = WriteLock(self.path)
        try:
            if not lock.try_acquire():
                return  # a writer is at work: it writes its own FAISS files when it finishes
        except UnsafePath as e:
            log.warning("warning: %s; searching without saving the FAISS files derived again", e)
            return
        except (KgclipError, OSError):  # a read-only index folder: keep the derived index in memory only
            return
        try:
            if self.store.generation != gen:
                return  # the store moved on while this reader derived: the next open derives again
            for kind in kinds:
                V.save_atomic(self._faiss[kind], os.path.join(self.path, FAISS_FILES[kind]), gen)
            try:
                m = read_manifest(self.path)
                m.setdefault("faiss", {}).update({k: self._info[k] for k in kinds})
                m["generation"] = gen
                write_manifest(self.path, m)
                self.manifest = m
            except (KgclipError, OSError):
                pass
        except (OSError, RuntimeError) as e:  # a full disk, read-only files: served from memory all the same
            if not (isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
                why = (f"no space left on device writing {e.filename}" if isinstance(e, DiskFull)
                       else e.strerror if isinstance(e, OSError) and e.strerror
                       else str(e).splitlines()[0] if str(e) else type(e).__name__)
                log.warning("warning: could not save the FAISS files derived again (%s); searching from memory", why)
        finally:
            lock.release()

    def is_stale(self) -> bool:
        return self.store.generation != self.generation

    def refresh_if_updated(self) -> bool:
        """Adopt a newer generation once its writer has finished (the FAISS files on disk cover it).

        Cheap enough before every query (one LMDB read while nothing changed). While an update is
        still running, the current snapshot keeps serving: no per-query re-derive.
        """
        txnid = self.store.last_txnid()
        if txnid is not None and txnid == self._seen_txnid:
            return False  # no write committed since the last check (LMDB's transaction id; ~1 us)
        gen = self.store.generation
        if gen == self.generation:
            self._seen_txnid = txnid
            return False
        kinds = ["image"] + (["caption"] if self.text_model_spec else [])
        if any(faiss_generation(self.path, k) != gen for k in kinds):
            return False
        try:
            if read_manifest(self.path).get("generation") != gen:
                return False  # the writer has not written its manifest yet
        except KgclipError:
            return False
        return self.refresh()

    def refresh(self) -> bool:
        """Reload the FAISS files if the store moved on (a long-lived searcher during an update)."""
        if not self.is_stale():
            return False
        self.manifest = read_manifest(self.path)
        self._faiss, self._info = {}, {}
        self._load()
        return True

    # -- queries -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.store.count("items")

    @property
    def counts(self) -> dict:
        """The manifest's counts as of the last build (items, paths, captions, failures)."""
        return dict(self.manifest.get("counts") or {})

    def search(self, queries, k: int = 10, kind: str = "image"):
        """Top-k (scores float32 [n,k], ids int64 [n,k]); -1 ids pad missing results.

        ``kind="caption"`` searches caption vectors and returns ITEM ids (best caption per item).
        """
        if kind not in ("image", "caption"):
            raise UsageError(f"search kind must be 'image' or 'caption', not {kind!r}")
        if kind == "caption" and not self.text_model_spec:
            raise UsageError(f"{self.path} has no caption index (it was built without a text model)")
        q = np.asarray(queries, np.float32)
        if q.ndim == 1:
            q = q[None, :]
        dim = self.dim if kind == "image" else self.text_dim
        if q.ndim != 2 or q.shape[1] != dim:
            raise QueryError(f"query vectors must have {dim} columns for the {kind} index (got shape {q.shape})")
        k = int(k)
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if k > MAX_K:  # FAISS allocates [n, k] results up front: a huge k would exhaust memory
            raise QueryError(f"k={k} is more results than one search can return (at most {MAX_K})")
        index = self._faiss[kind]
        info = self._info.get(kind, {})
        params = info.get("params") or {}
        if kind == "image":
            rerank = (lambda ids: self.get_vectors(ids)) if info.get("rerank") else None
            return V.search(index, q, k, params, rerank_fn=rerank)  # float32 scores, int64 ids
        fetch = min(max(k * 8, k + 16), max(int(index.ntotal), 1))
        s, i = V.search(index, q, fetch, params)
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        for r in range(len(q)):
            seen: set[int] = set()
            c = 0
            for sc, ii in zip(s[r], i[r]):
                if ii < 0 or ii in seen:
                    continue
                seen.add(int(ii))
                out_s[r, c], out_i[r, c] = sc, ii
                c += 1
                if c == k:
                    break
        out_s[out_i < 0] = -np.inf
        return out_s, out_i

    def get(self, ids) -> list[dict | None]:
        return self.store.get_items([int(i) for i in np.asarray(ids, np.int64).ravel()])

    def get_vectors(self, ids, kind: str = "image") -> np.ndarray:
        ids = [int(i) for i in np.asarray(ids, np.int64).ravel()]
        if kind == "image":
            return self.store.get_vectors(ids, self.dim)
        # caption: the mean of each item's caption vectors (normalised), zeros when it has none
        out = np.zeros((len(ids), self.text_dim or 0), np.float32)
        for r, it in enumerate(self.store.get_items(ids)):
            if not it:
                continue
            cap_ids = []
            for p in [it["path"], *it["aliases"]]:
                cap_ids += (self.store.get_path(p) or {}).get("cap_ids", [])
            if cap_ids:
                v = self.store.get_vectors(cap_ids, self.text_dim, kind="caption").mean(axis=0)
                out[r] = v / (np.linalg.norm(v) or 1.0)
        return out

    def iter_items(self) -> Iterator[tuple[int, dict]]:
        return self.store.iter_items()

    def iter_profiles(self):
        """(item ids, class indexes, probabilities) chunks in id order (lite indexes with profiles;
        :meth:`indexer.store.Store.iter_profiles`)."""
        return self.store.iter_profiles()

    def close(self) -> None:
        self._faiss = {}
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"Index({self.path!r}, model={self.model_spec!r}, items={len(self)}, generation={self.generation})"


def open_index(index_dir: str, rebuild: bool = True) -> Index:
    """Open an index for reading (the model check is the Searcher's: :func:`open_searcher` ``model=``).

    Stale or missing FAISS files are derived again from the store (and saved when no writer holds
    the index). An index of an older format, or a lite index without concept profiles, is an
    :class:`IndexCorrupt` naming the rebuild command.
    """
    index_dir = os.path.abspath(os.fspath(index_dir))
    m = read_manifest(index_dir)  # an older format version: the error names the rebuild command
    if str(m["model"]["spec"]).split(":")[0] == "lite" and not m["model"].get("profile"):
        raise IndexCorrupt(f"{index_dir} is a lite index without concept profiles: rebuild it with "
                           f"`{rebuild_command(index_dir)}`")
    store = Store(index_dir, readonly=True)
    try:
        _agrees_with_store(index_dir, m, store)
        idx = Index(index_dir, m, store)
        idx._load(rebuild=rebuild)
    except BaseException:
        store.close()
        raise
    return idx


def _agrees_with_store(index_dir: str, m: dict, store: Store) -> None:
    """The models the manifest names are the ones the store recorded (its vectors' dimension, and the
    models a search loads): an edited index.json is a clear error, not a crash or another model."""
    for key in ("model", "text_model"):
        mm, sm = m.get(key), store.meta(key)
        if isinstance(mm, dict) and isinstance(sm, dict) and (mm.get("spec"), mm.get("dim")) != (
                sm.get("spec"), sm.get("dim")):
            raise IndexCorrupt(
                f"{os.path.join(index_dir, 'index.json')}: {key} {mm.get('spec')} ({mm.get('dim')}-d) is not "
                f"the {sm.get('spec')} ({sm.get('dim')}-d) the store was built with: restore index.json or "
                f"rebuild with `{rebuild_command(index_dir)}`")


def open_searcher(index_dir: str, model: str | None = None, **kwargs):
    """Open ``index_dir`` and a warm :class:`retrieval.query.Searcher` over it (which closes the index
    on ``close()``). ``model``: the model the caller expects; the Searcher raises :class:`ModelMismatch`
    when the index was built with another. ``kwargs`` go to the Searcher (expand, kg, device, hybrid, ...)."""
    idx = open_index(index_dir)
    try:
        return Searcher(idx, owns_index=True, model=model, **kwargs)
    except BaseException:
        idx.close()
        raise
