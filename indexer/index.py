"""Build, update, open, inspect and verify an index directory.

``INDEX/store.lmdb`` is the source of truth; ``INDEX/image.faiss`` and
``INDEX/caption.faiss`` are derived from it and record the store generation
they cover. :func:`open_index` rebuilds a stale or missing FAISS file from the
stored vectors (never re-encoding images).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Callable, Iterator, Sequence

import numpy as np

from retrieval.errors import IndexCorrupt, IndexNotFound, KgclipError, ModelMismatch, QueryError, UsageError

from . import pipeline
from . import vectors as V
from .decode import DEFAULT_MAX_PIXELS, DEFAULT_TIMEOUT
from .manifest import MANIFEST, new_manifest, read_manifest, write_manifest
from .pipeline import BuildReport
from .sources import source_kind
from .store import LOCK_FILE, STORE_DIR, Store, WriteLock

FAISS_FILES = {"image": "image.faiss", "caption": "caption.faiss"}
TUNE_QUERIES = 500
MAX_K = 1 << 20  # most results one Index.search call returns per query
SEED = 0


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _model_info(enc) -> dict:
    return {"spec": enc.spec, "fingerprint": enc.fingerprint, "dim": int(enc.dim)}


def _same_model(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.get("fingerprint") == b.get("fingerprint") and a.get("dim") == b.get("dim")


def _is_index_dir(d: str) -> bool:
    return os.path.isfile(os.path.join(d, MANIFEST)) or os.path.isdir(os.path.join(d, STORE_DIR))


def _wipe(index_dir: str) -> None:
    for name in os.listdir(index_dir):
        if name == LOCK_FILE:
            continue
        p = os.path.join(index_dir, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


# -- FAISS, derived from the store -------------------------------------------------------
def _iter_vectors(store: Store, kind: str, txn):
    """The store's vectors as ``(ids, vectors)`` chunks in key order, as FAISS indexes them (a caption
    vector under its item's id)."""
    for keys, vecs, owners in store.iter_vectors(kind, txn=txn):
        if len(keys):
            yield (keys if owners is None else owners), vecs


def _rows_reader(store: Store, kind: str, dim: int, txn) -> Callable[[np.ndarray], np.ndarray]:
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
    :func:`indexer.vectors.build_and_tune`'s, the flow the FAISS benchmarks measure. Caption
    vectors take the auto choice and, sharing their item's id, are tuned without leave-one-out.
    ``txn``: a read transaction to take the snapshot from (several kinds derived from one generation).
    """
    from contextlib import nullcontext

    with (nullcontext(txn) if txn is not None else store.read()) as txn:
        gen = int(store_meta(txn, store, "generation", 0))
        n = txn.stat(store.db["vecs" if kind == "image" else "capvecs"])["entries"]
        rerank = (lambda ids: store.get_vectors(ids, dim, kind="image")) if kind == "image" else None
        index, tuned = V.build_and_tune(
            n, dim, lambda: _iter_vectors(store, kind, txn), _rows_reader(store, kind, dim, txn),
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


def _faiss_generation(index_dir: str, kind: str) -> int | None:
    p = os.path.join(index_dir, FAISS_FILES[kind])
    meta = V.read_meta(p) if os.path.exists(p) else None  # the sidecar alone: no need to read the index
    return None if meta is None else meta.get("generation")


def store_meta(txn, store: Store, key: str, default=None):
    from .store import loads

    v = loads(txn.get(key.encode(), db=store.db["meta"]))
    return default if v is None else v


# -- build / update ------------------------------------------------------------------------
def build_index(
    sources: Sequence[str],
    index_dir: str,
    model: str = "lite",
    text_model: str | None = "sbert:minilm",
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    index_type: str = "auto",
    max_memory: int | None = None,
    resume: bool = True,
    progress: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout_per_file: float = DEFAULT_TIMEOUT,
    root: str | None = None,
    base: str | None = None,
    stop_after_batches: int | None = None,
    log: Callable[[str], None] | None = None,
    map_size: int | None = None,
    quiet: bool = False,
) -> BuildReport:
    """Index ``sources`` into ``index_dir``; re-running continues or updates (``resume=False`` starts over).

    The result equals a fresh build of the same files: unchanged files keep their
    ids and vectors, new or changed ones are encoded, gone ones are removed.
    """
    from retrieval.encoders import get_encoder

    t_all = time.perf_counter()
    sources = [os.path.abspath(os.fspath(s)) for s in sources]
    if not sources:
        raise UsageError("no sources given: name at least one folder, file list, manifest or .tar shard")
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1 (got {batch_size})")
    for s in sources:
        source_kind(s)  # a clear error for a missing source, before anything is written
    index_dir = os.path.abspath(os.fspath(index_dir))
    if os.path.exists(index_dir) and not os.path.isdir(index_dir):
        raise UsageError(f"{index_dir} exists and is not a folder")
    if os.path.isdir(index_dir) and os.listdir(index_dir) and not _is_index_dir(index_dir) \
            and os.listdir(index_dir) != [LOCK_FILE]:
        raise UsageError(f"{index_dir} is a non-empty folder that is not a kgclip index; choose another -i")
    created = not os.path.exists(index_dir)
    fresh = created or not [n for n in os.listdir(index_dir) if n != LOCK_FILE]
    os.makedirs(index_dir, exist_ok=True)
    say = log or (lambda s: print(s, file=sys.stderr))

    encoder = get_encoder(model, device=device, batch_size=batch_size)
    text_encoder = get_encoder(text_model, device=device, batch_size=max(batch_size, 64)) if text_model else None
    if not encoder.has_images:
        raise UsageError(f"{model} encodes text only; pick an image model for --model")

    lock = WriteLock(index_dir).acquire()
    store = None
    try:
        if not resume:
            _wipe(index_dir)
        t_load = time.perf_counter()
        store = Store(index_dir, create=True, map_size=map_size)
        stored = store.all_meta()
        old_m, old_t = stored.get("model"), stored.get("text_model", "unset")
        # a known model is not loaded just to learn its dim: loading waits until something needs encoding
        minfo = dict(old_m) if old_m and old_m.get("fingerprint") == encoder.fingerprint else _model_info(encoder)
        t_load = time.perf_counter() - t_load
        if old_m is not None and not _same_model(old_m, minfo) and old_m.get("spec") == minfo["spec"]:
            raise ModelMismatch(
                f"{index_dir} was built with {old_m.get('fingerprint')}, but {minfo['spec']} is now "
                f"{minfo['fingerprint']} (its weights or configuration changed): rebuild with --restart"
            )
        if old_m is not None and not _same_model(old_m, minfo):
            raise ModelMismatch(
                f"{index_dir} was built with model {old_m['spec']} ({old_m.get('fingerprint')}); "
                f"you asked for {minfo['spec']} ({minfo['fingerprint']}): use --restart or another index folder"
            )
        if old_m is None and encoder.profile_record() is not None:
            minfo["profile"] = encoder.profile_record()  # lite: the soft concept profiles grounding reads
        t = time.perf_counter()
        if text_encoder is None:
            tinfo = None
        elif isinstance(old_t, dict) and old_t.get("fingerprint") == text_encoder.fingerprint:
            tinfo = dict(old_t)
        else:
            tinfo = _model_info(text_encoder)  # loads it (dim)
        t_load += time.perf_counter() - t
        if old_m is not None and old_t != "unset" and not _same_model(old_t, tinfo):
            was = old_t["spec"] if old_t else "no text model"
            now = tinfo["spec"] if tinfo else "no text model"
            raise ModelMismatch(f"{index_dir} was built with text model {was}; you asked for {now}: "
                                "use --restart or another index folder")
        if resume and stored.get("sources"):
            # building into an existing index adds sources; the index keeps mirroring all of them
            sources = list(stored["sources"]) + [x for x in sources if x not in stored["sources"]]
        options = {"batch_size": batch_size, "index_type": index_type, "max_memory": max_memory,
                   "max_pixels": max_pixels, "timeout_per_file": timeout_per_file, "root": root,
                   "base": os.path.abspath(base) if base else None}

        def init(txn):
            txn.set_meta("format_version", 1)
            txn.set_meta("model", minfo)
            txn.set_meta("text_model", tinfo)
            txn.set_meta("sources", sources)
            txn.set_meta("options", options)
            txn.set_meta("state", "building")

        store.write(init, bump=False)
        try:
            manifest = read_manifest(index_dir)
        except IndexNotFound:
            manifest = new_manifest(minfo, tinfo, sources, options)
            write_manifest(index_dir, manifest)
        except IndexCorrupt:
            manifest = new_manifest(minfo, tinfo, sources, options)  # the store is the truth: rewrite it
            write_manifest(index_dir, manifest)

        report = BuildReport(index_dir)
        report.timings.model_load = t_load
        from retrieval.encoders.onnx import no_spinning

        try:
            with no_spinning():  # ONNX Runtime threads that spin would take CPU from the decode workers
                pipeline.run(
                    store, encoder, text_encoder, sources, root=root, base=base, batch_size=batch_size,
                    workers=default_workers() if workers is None else workers, timeout=timeout_per_file,
                    max_pixels=max_pixels, progress=progress and not quiet, log=say,
                    stop_after_batches=stop_after_batches, report=report,
                )
        except KeyboardInterrupt:
            say(f"interrupted after {report.batches} committed batches: run the same command again to continue")
            raise
        t = time.perf_counter()
        faiss_info = {}
        gen = store.generation
        kinds = [("image", minfo["dim"], index_type)] + ([("caption", tinfo["dim"], "auto")] if tinfo else [])
        for kind, dim, itype in kinds:
            old = (manifest.get("faiss") or {}).get(kind)
            if old and old.get("generation") == gen and _faiss_generation(index_dir, kind) == gen \
                    and (manifest.get("options") or {}).get("index_type") == index_type \
                    and (manifest.get("options") or {}).get("max_memory") == max_memory:
                faiss_info[kind] = old  # nothing changed since it was derived
                continue
            _, faiss_info[kind] = derive_faiss(store, index_dir, kind, dim, itype, max_memory)
        if tinfo is not None:
            pass
        else:
            p = os.path.join(index_dir, FAISS_FILES["caption"])
            if os.path.exists(p):
                os.unlink(p)
        report.timings.faiss += time.perf_counter() - t
        store.write(lambda txn: txn.set_meta("state", "complete"), bump=False)
        report.timings.total = time.perf_counter() - t_all
        _fill_counts(store, report)
        report.faiss = faiss_info
        manifest.update(
            model=minfo, text_model=tinfo, sources=sources, options=options, state="complete",
            generation=store.generation, faiss=faiss_info,
            counts={"items": report.items, "paths": report.paths, "captions": report.captions,
                    "failures": report.failures_total},
            failures=_failure_summary(store),
            timings=report.timings.to_dict(),
            updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            last_build={k: v for k, v in report.to_dict().items() if k not in ("timings", "faiss", "index_dir")},
        )
        write_manifest(index_dir, manifest)
        if not quiet:
            say(report.summary())
        return report
    except BaseException:
        # a first build that failed before committing anything (a malformed manifest, a model that
        # cannot load, Ctrl-C during the scan) leaves no half-made index folder behind
        if fresh and store is not None and store.count("items") == 0 and store.count("fails") == 0:
            store.close()
            store = None
            _wipe(index_dir)
            try:
                os.unlink(lock.path)  # while still holding it
            except OSError:
                pass
            lock.release()
            lock = None
            if created:
                _remove_empty_dir(index_dir)
        raise
    finally:
        if store is not None:
            store.close()
        if lock is not None:
            lock.release()


def _remove_empty_dir(path: str) -> None:
    """Remove ``path`` if it is empty (another process may have started using it meanwhile)."""
    try:
        os.rmdir(path)
    except OSError:
        pass


def _fill_counts(store: Store, report: BuildReport) -> None:
    report.items = store.count("items")
    report.paths = store.count("paths")
    report.captions = store.count("capvecs")
    report.failures_total = store.count("fails")


def _failure_summary(store: Store, examples: int = 20) -> dict:
    reasons: dict[str, int] = {}
    sample = []
    for key, f in store.iter_failures():
        r = pipeline.reason_kind(f["reason"])
        reasons[r] = reasons.get(r, 0) + 1
        if len(sample) < examples:
            sample.append({"path": key, "reason": f["reason"]})
    return {"total": sum(reasons.values()), "by_reason": reasons, "examples": sample}


def update_index(index_dir: str, **kwargs) -> BuildReport:
    """Re-scan the index's sources: encode new/changed files, drop gone ones (same models as the build)."""
    index_dir = os.path.abspath(os.fspath(index_dir))
    m = read_manifest(index_dir)
    store = Store(index_dir, readonly=True)
    try:
        sources = store.meta("sources") or m.get("sources") or []
        options = store.meta("options") or m.get("options") or {}
        model = (store.meta("model") or m["model"])["spec"]
        tm = store.all_meta().get("text_model", "unset")
        text = (tm if tm != "unset" else m.get("text_model")) or None
    finally:
        store.close()
    for k in ("index_type", "max_memory", "max_pixels", "timeout_per_file", "batch_size", "root", "base"):
        if k in options and options[k] is not None and kwargs.get(k) is None:
            kwargs[k] = options[k]
    kwargs.pop("model", None)
    kwargs.pop("text_model", None)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return build_index(sources, index_dir, model=model, text_model=text["spec"] if text else None,
                       resume=True, **kwargs)


# -- the read side ---------------------------------------------------------------------------
class Index:
    """An opened index: FAISS search over store ids, metadata and vectors from LMDB."""

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
        stale = []
        for kind in kinds:
            p = os.path.join(self.path, FAISS_FILES[kind])
            info = dict((self.manifest.get("faiss") or {}).get(kind) or {})
            try:
                index, fgen = V.load(p)
            except Exception:  # noqa: BLE001 - missing or unreadable: derive it again
                index, fgen = None, None
            if index is None or fgen != gen:
                stale.append(kind)
                continue
            self._faiss[kind] = index
            self._info[kind] = info
        if stale:
            if not rebuild:
                raise IndexCorrupt(f"{self.path}: FAISS files {', '.join(stale)} are stale or missing")
            self._rederive(stale, loaded_gen=gen)
        self.generation = gen if not stale else self.generation

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
        lock = WriteLock(self.path)
        try:
            if not lock.try_acquire():
                return  # a writer is at work: it writes its own FAISS files when it finishes
        except OSError:  # a read-only index folder: keep the derived index in memory only
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
        except OSError:
            pass  # could not write (disk full, read-only files): served from memory all the same
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
        if any(_faiss_generation(self.path, k) != gen for k in kinds):
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


def open_index(index_dir: str, model: str | None = None, rebuild: bool = True) -> Index:
    """Open an index for reading; a different ``model`` is a :class:`ModelMismatch`.

    Stale or missing FAISS files are derived again from the store (and saved when
    no writer holds the index).
    """
    index_dir = os.path.abspath(os.fspath(index_dir))
    m = read_manifest(index_dir)
    if model is not None:
        from retrieval.encoders import canonical_spec

        want = canonical_spec(model)
        have = m["model"]["spec"]
        try:
            have_c = canonical_spec(have)
        except KgclipError:
            have_c = have
        if want != have_c:
            raise ModelMismatch(f"{index_dir} was built with model {have}, not {model}: search it with its own "
                                "model or rebuild the index")
    store = Store(index_dir, readonly=True)
    idx = Index(index_dir, m, store)
    try:
        idx._load(rebuild=rebuild)
    except BaseException:
        store.close()
        raise
    return idx


def open_searcher(index_dir: str, **kwargs):
    """Open ``index_dir`` and a warm :class:`retrieval.search.Searcher` over it (which closes the index
    on ``close()``); ``kwargs`` go to the Searcher (expand, kg, device, hybrid, model, ...)."""
    from retrieval.search import Searcher

    idx = open_index(index_dir)
    try:
        return Searcher(idx, owns_index=True, **kwargs)
    except BaseException:
        idx.close()
        raise
