"""``info`` and ``verify``: what an index holds, and whether store, FAISS and manifest agree."""

from __future__ import annotations

import os

import numpy as np

from retrieval.errors import KgclipError

from . import faiss as V
from .derive import FAISS_FILES, derive_faiss
from .manifest import read_manifest, write_manifest
from .store import Store, WriteLock, ikey, loads, unikey

PROBLEM_LIMIT = 50


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


def verify_index(index_dir: str, repair: bool = False) -> dict:
    """Check every cross-reference in the store, and FAISS/manifest against it.

    With ``repair``: drop dangling records (paths whose item is gone are forgotten,
    so the next update re-reads them), re-derive FAISS and rewrite the manifest.
    """
    index_dir = os.path.abspath(os.fspath(index_dir))
    problems: list[str] = []
    fixes: list[tuple[str, str, bytes]] = []  # (db, action, key)

    def bad(msg, fix=None):
        if len(problems) < PROBLEM_LIMIT:
            problems.append(msg)
        elif len(problems) == PROBLEM_LIMIT:
            problems.append("... (more problems not listed)")
        if fix:
            fixes.append(fix)

    m = read_manifest(index_dir)
    dim = int(m["model"]["dim"])
    tdim = int(m["text_model"]["dim"]) if m.get("text_model") else None
    lock = WriteLock(index_dir)
    if repair:
        lock.acquire()
    store = Store(index_dir, readonly=not repair)
    counts = {}
    try:
        with store.read() as t:
            db = store.db
            items = {}
            for k, v in t.cursor(db=db["items"]):
                rec = loads(v)
                items[unikey(k)] = rec
            for i, rec in items.items():
                vb = t.get(ikey(i), db=db["vecs"])
                if vb is None:
                    bad(f"item {i} ({rec['path']}) has no vector", ("items", "delete", ikey(i)))
                    continue
                v = np.frombuffer(bytes(vb), np.float32)
                if v.shape[0] != dim:
                    bad(f"item {i} vector has {v.shape[0]} dims, manifest says {dim}", ("items", "delete", ikey(i)))
                elif not np.isfinite(v).all() or abs(float(np.linalg.norm(v)) - 1.0) > 1e-3:
                    bad(f"item {i} vector is not a finite unit vector", ("items", "delete", ikey(i)))
                h = t.get(rec["sha256"].encode(), db=db["hashes"])
                if h is None or unikey(h) != i:
                    bad(f"item {i}: hash map does not point back to it", ("hashes", "put", rec["sha256"].encode(), i))
                for p in [rec["path"], *rec.get("aliases", [])]:
                    pr = loads(t.get(p.encode(), db=db["paths"]))
                    if pr is None or pr["id"] != i:
                        bad(f"item {i}: path {p} has no record pointing to it")
            for name, what in (("vecs", "vector"), ("profiles", "concept profile")):  # id-keyed, per item
                if db.get(name) is None:  # an older store has no profiles
                    continue
                for k in t.cursor(db=db[name]).iternext(values=False):
                    if unikey(k) not in items:
                        bad(f"{what} {unikey(k)} has no item", (name, "delete", bytes(k)))
            for k, v in t.cursor(db=db["hashes"]):
                if unikey(v) not in items:
                    bad(f"hash {bytes(k).decode()[:12]}.. points to missing item {unikey(v)}",
                        ("hashes", "delete", bytes(k)))
            cap_owner = {}
            for k, v in t.cursor(db=db["capvecs"]):
                b = bytes(v)
                cap_owner[unikey(k)] = unikey(b[:8])
                if tdim is not None and (len(b) - 8) // 4 != tdim:
                    bad(f"caption vector {unikey(k)} has the wrong size", ("capvecs", "delete", bytes(k)))
                if unikey(b[:8]) not in items:
                    bad(f"caption vector {unikey(k)} belongs to missing item {unikey(b[:8])}",
                        ("capvecs", "delete", bytes(k)))
            npaths = 0
            for k, v in t.cursor(db=db["paths"]):
                npaths += 1
                pr = loads(v)
                key = bytes(k).decode()
                rec = items.get(pr["id"])
                if rec is None or (key != rec["path"] and key not in rec.get("aliases", [])):
                    bad(f"path {key} points to item {pr['id']}, which does not list it", ("paths", "delete", bytes(k)))
                for c in pr.get("cap_ids", []):
                    if cap_owner.get(c) != pr["id"]:
                        bad(f"path {key}: caption {c} is missing or belongs to another item")
            gen = int(loads(t.get(b"generation", db=db["meta"])) or 0)
            counts = {"items": len(items), "paths": npaths, "captions": len(cap_owner),
                      "failures": t.stat(db["fails"])["entries"], "generation": gen}
            nxt = int(loads(t.get(b"next_id", db=db["meta"])) or 0)
            if items and max(items) >= nxt:
                bad(f"id counter {nxt} is not above the largest id {max(items)}", ("meta", "next_id", b"", max(items) + 1))
        stale = []
        kinds = ["image"] + (["caption"] if tdim else [])
        for kind in kinds:
            p = os.path.join(index_dir, FAISS_FILES[kind])
            want = counts["items"] if kind == "image" else counts["captions"]
            try:
                index, fgen = V.load(p)
            except Exception as e:  # noqa: BLE001
                bad(f"{FAISS_FILES[kind]}: missing or unreadable ({type(e).__name__}); it is derived again on open")
                stale.append(kind)
                continue
            if fgen != counts["generation"]:
                bad(f"{FAISS_FILES[kind]} covers store generation {fgen}, the store is at {counts['generation']}")
                stale.append(kind)
            elif int(index.ntotal) != want:
                bad(f"{FAISS_FILES[kind]} holds {int(index.ntotal)} vectors, the store has {want}")
                stale.append(kind)
        repaired = []
        if repair and (fixes or stale or problems):
            def fn(txn):
                for f in fixes:
                    dbn, action, key = f[0], f[1], f[2]
                    if dbn == "meta":
                        txn.set_meta("next_id", f[3])
                    elif action == "delete":
                        txn.t.delete(key, db=txn.db[dbn])
                    elif action == "put":
                        txn.t.put(key, ikey(f[3]), db=txn.db[dbn])
            store.write(fn)
            repaired.append(f"{len(fixes)} store records fixed")
            info = dict(m.get("faiss") or {})
            opts = m.get("options") or {}
            for kind in kinds:
                d = dim if kind == "image" else tdim
                _, info[kind] = derive_faiss(store, index_dir, kind, d, opts.get("index_type") or "auto",
                                             opts.get("max_memory"))
                repaired.append(f"{FAISS_FILES[kind]} derived again from the store")
            m["faiss"] = info
            m["generation"] = store.generation
            m["counts"] = {"items": store.count("items"), "paths": store.count("paths"),
                           "captions": store.count("capvecs"), "failures": store.count("fails")}
            write_manifest(index_dir, m)
            repaired.append("manifest rewritten")
    except KgclipError:
        raise
    finally:
        store.close()
        if repair:
            lock.release()
    return {"path": index_dir, "ok": not problems, "problems": problems, "repaired": repaired if repair else [],
            "counts": counts}
