"""``verify`` and ``verify --repair``: does the store agree with itself, and FAISS and the manifest with it?

:func:`verify_index` reads every record through :mod:`indexer.records` (junk bytes in any database are a
problem naming the database and key, never a crash), checks every cross-reference, and checks each FAISS
file against the store (:mod:`indexer.faiss.check`: metric, dimension, count, id map, sampled vectors).

``--repair`` applies one plan in one transaction: an item that cannot be kept (a NaN, wrong-length or
junk vector or concept profile, a junk record) is removed with all its records -- vector, profile, hash,
paths and captions -- and named with the reason (the next ``kgclip update`` reads its files again);
dangling records are dropped; a path record an item lacks is written again (with an unknown size, so
the next update re-reads the file without encoding it again). FAISS is then derived again from the store,
the manifest rewritten, and the index checked once more: what remains is reported, and ``ok`` is true
only when nothing does.
"""

from __future__ import annotations

import os

import numpy as np

from retrieval.errors import KgclipError

from . import faiss as V
from . import records as R
from .derive import FAISS_FILES, derive_faiss
from .faiss import check
from .manifest import FORMAT_VERSION, read_manifest, write_manifest
from .store import Store, WriteLock, dumps, ikey

PROBLEM_LIMIT = 50
N_CLASSES = {"imagenet-1k": 1000}  # the class sets concept profiles index into
COUNTERS = ("generation", "next_id", "next_cap_id")
VERIFY_SAMPLE = 1024  # FAISS rows compared with the stored vectors (all of them in a small index)


class Plan:
    """What a repair changes, gathered while checking (nothing is written until :meth:`apply`)."""

    def __init__(self):
        self.problems: list[str] = []
        self.n_problems = 0
        self.drop: dict[int, str] = {}  # item id -> why it cannot be kept
        self.deletes: set[tuple[str, bytes]] = set()
        self.puts: dict[tuple[str, bytes], tuple[bytes, int | None]] = {}  # -> (value, item it serves)
        self.meta: dict[str, object] = {}
        self.refs: dict[int, set[tuple[str, bytes]]] = {}  # item id -> every record that names it

    def bad(self, msg: str) -> None:
        self.n_problems += 1
        if len(self.problems) < PROBLEM_LIMIT:
            self.problems.append(msg)
        elif len(self.problems) == PROBLEM_LIMIT:
            self.problems.append("... (more problems not listed)")

    def ref(self, i: int, db: str, key: bytes) -> None:
        self.refs.setdefault(i, set()).add((db, bytes(key)))

    def drop_item(self, i: int, why: str, path: str | None = None) -> None:
        if i not in self.drop:
            self.drop[i] = f"item {i}" + (f" ({path})" if path else "") + f": {why}"

    def apply(self, store: Store, gen: int) -> list[str]:
        """One write transaction; returns what was done, one line each."""
        done = [f"removed {why}; `kgclip update` reads its files again" for why in self.drop.values()]
        n = len(self.deletes) + len(self.puts) + len(self.meta) + sum(len(self.refs.get(i, ())) for i in self.drop)

        def fn(txn):
            db = txn.db
            for i in self.drop:
                for name, key in self.refs.get(i, ()) | {("items", ikey(i)), ("vecs", ikey(i)), ("profiles", ikey(i))}:
                    if db.get(name) is not None:
                        txn.t.delete(key, db=db[name])
            for name, key in self.deletes:
                if db.get(name) is not None:
                    txn.t.delete(key, db=db[name])
            for (name, key), (value, owner) in self.puts.items():
                if owner not in self.drop:
                    txn.t.put(key, value, db=db[name])
            for key, value in self.meta.items():
                txn.set_meta(key, value)
            txn.set_meta("generation", gen + 1)  # the counter itself may be junk: set, not bumped

        store.write(fn, bump=False)
        return done + [f"{n} store records fixed"]


def verify_index(index_dir: str, repair: bool = False) -> dict:
    """Check every record and cross-reference in the store, and FAISS/manifest against it.

    Returns ``{path, ok, problems, repaired, remaining, counts}``; with ``repair``, ``problems``
    are those found before the repair and ``remaining`` those found after it.
    """
    index_dir = os.path.abspath(os.fspath(index_dir))
    m = read_manifest(index_dir)
    lock = WriteLock(index_dir)
    if repair:
        lock.acquire()
    store = Store(index_dir, readonly=not repair)
    try:
        plan, counts, gen = _check_store(store, m)
        _check_faiss(store, index_dir, m, plan, counts)
        found = list(plan.problems)
        if not repair or not plan.n_problems:
            return {"path": index_dir, "ok": not plan.n_problems, "problems": found, "repaired": [],
                    "remaining": found, "counts": _public(counts)}
        repaired = plan.apply(store, gen)
        after = None
        try:
            repaired += _rederive(store, index_dir, m)
        except KgclipError as e:  # what the plan could not fix: reported as remaining, never a crash
            after = Plan()
            after.bad(f"FAISS could not be derived again: {str(e).splitlines()[0]}")
        checked, counts, _ = _check_store(store, m)
        _check_faiss(store, index_dir, m, checked, counts)
        if after is not None:
            checked.problems[:0] = after.problems
            checked.n_problems += after.n_problems
        after = checked
        return {"path": index_dir, "ok": not after.n_problems, "problems": found, "repaired": repaired,
                "remaining": list(after.problems), "counts": _public(counts)}
    finally:
        store.close()
        if repair:
            lock.release()


def _public(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if not isinstance(v, list)}


# -- the store ----------------------------------------------------------------------------------
def _check_store(store: Store, m: dict) -> tuple[Plan, dict, int]:
    """Every record of every database decoded and cross-checked; returns (plan, counts, generation)."""
    p = Plan()
    dim = int(m["model"]["dim"])
    tdim = int(m["text_model"]["dim"]) if m.get("text_model") else None
    prof = m["model"].get("profile") if isinstance(m["model"].get("profile"), dict) else {}
    top = prof.get("top") if isinstance(prof.get("top"), int) else None
    n_classes = N_CLASSES.get(prof.get("classes"))
    db = store.db
    with store.read() as t:
        counters = _check_meta(t, db, m, p)
        items: dict[int, dict] = {}
        for k, v in t.cursor(db=db["items"]):
            try:
                items[R.id_of("items", k)] = R.item(k, v)
            except R.BadRecord as e:
                p.bad(str(e).split("; ")[0])
                _drop_or_delete(p, "items", k, e.why)
        vec_ids = []  # what the image index is derived from: every vector record
        for name in ("vecs", "profiles"):
            if db.get(name) is None:
                continue
            for k, v in t.cursor(db=db[name]):
                try:
                    i = R.id_of(name, k)
                    if name == "vecs":
                        vec_ids.append(i)
                    if i not in items and i not in p.drop:
                        p.bad(f"{'vector' if name == 'vecs' else 'concept profile'} {i} has no item")
                        p.deletes.add((name, bytes(k)))
                    elif name == "vecs":
                        R.vector("vecs", k, v, dim)
                    else:
                        R.profile(k, v, top, n_classes)
                except R.BadRecord as e:
                    p.bad(str(e).split("; ")[0])
                    _drop_or_delete(p, name, k, e.why, items)
        has_vec = {i for i in items if t.get(ikey(i), db=db["vecs"]) is not None}
        hashed: dict[str, int] = {}
        for k, v in t.cursor(db=db["hashes"]):
            key = bytes(k).decode("utf-8", "replace")
            try:
                i = R.item_ref("hashes", k, v)
            except R.BadRecord as e:
                p.bad(str(e).split("; ")[0])
                p.deletes.add(("hashes", bytes(k)))
                continue
            p.ref(i, "hashes", k)
            if i not in items or items[i]["sha256"] != key:
                p.bad(f"hash {key[:12]}.. points to item {i}, which does not hold that content")
                p.deletes.add(("hashes", bytes(k)))
            else:
                hashed[key] = i
        cap_owner = _check_captions(t, db, tdim, items, p)
        path_of = _check_paths(t, db, items, cap_owner, p)
        for i, rec in items.items():
            if i not in has_vec:
                p.bad(f"item {i} ({rec['path']}) has no vector")
                p.drop_item(i, "it has no vector", rec["path"])
            if hashed.get(rec["sha256"]) != i:
                if rec["sha256"] in hashed:
                    p.bad(f"item {i} ({rec['path']}) holds the same content as item {hashed[rec['sha256']]}")
                    p.drop_item(i, f"it duplicates item {hashed[rec['sha256']]}", rec["path"])
                else:
                    p.bad(f"item {i}: hash map does not point back to it")
                    p.puts[("hashes", rec["sha256"].encode())] = (ikey(i), i)
            for path in [rec["path"], *rec["aliases"]]:
                if path_of.get(path) != i:
                    p.bad(f"item {i}: path {path} has no record pointing to it")
                    if path in path_of:  # the record names another item: this one cannot keep the path
                        p.drop_item(i, f"its path {path} belongs to item {path_of[path]}", rec["path"])
                    else:  # unknown size: the next update reads the file again (no new encode)
                        p.puts[("paths", path.encode())] = (dumps({
                            "id": i, "size": -1, "mtime_ns": -1, "sha256": rec["sha256"], "captions": [],
                            "cap_ids": [], "meta": {}}), i)
        for k, v in t.cursor(db=db["fails"]):
            try:
                R.text_key("fails", k)
                R.failure(k, v)
            except R.BadRecord as e:
                p.bad(str(e).split("; ")[0])
                p.deletes.add(("fails", bytes(k)))
        nxt, nxt_cap = counters["next_id"], counters["next_cap_id"]
        if items and max(items) >= nxt:
            p.bad(f"id counter {nxt} is not above the largest id {max(items)}")
            p.meta["next_id"] = max(items) + 1
        if cap_owner and max(cap_owner) >= nxt_cap:
            p.bad(f"caption id counter {nxt_cap} is not above the largest caption id {max(cap_owner)}")
            p.meta["next_cap_id"] = max(cap_owner) + 1
        counts = {"items": len(items), "paths": len(path_of), "captions": len(cap_owner),
                  "failures": t.stat(db["fails"])["entries"], "generation": counters["generation"]}
    counts["vector_ids"] = vec_ids
    counts["caption_owners"] = [cap_owner[c] for c in sorted(cap_owner)]
    counts["caption_ids"] = sorted(cap_owner)
    return p, counts, counters["generation"]


def _check_meta(t, db, m: dict, p: Plan) -> dict:
    """The counters (junk ones reported and reset) and every other meta value's JSON."""
    out = {}
    for key in COUNTERS:
        try:
            out[key] = R.meta_int(key, t.get(key.encode(), db=db["meta"]))
        except R.BadRecord as e:
            p.bad(str(e).split("; ")[0])
            out[key] = 0
            if key != "generation":
                p.meta[key] = 0  # raised below to above the largest id in use
    restore = {"model": m.get("model"), "text_model": m.get("text_model"), "sources": m.get("sources") or [],
               "options": m.get("options") or {}, "format_version": FORMAT_VERSION, "state": "complete"}
    for k, v in t.cursor(db=db["meta"]):
        name = bytes(k).decode("utf-8", "replace")
        if name in COUNTERS:
            continue
        try:
            R.json_value("meta", k, v)
        except R.BadRecord as e:
            p.bad(str(e).split("; ")[0])
            if name in restore:
                p.meta[name] = restore[name]
            else:
                p.deletes.add(("meta", bytes(k)))
    return out


def _check_captions(t, db, tdim: int | None, items: dict, p: Plan) -> dict[int, int]:
    """Caption id -> owner item id, for the caption vectors that can be kept."""
    cap_owner = {}
    for k, v in t.cursor(db=db["capvecs"]):
        try:
            c = R.id_of("capvecs", k)
            owner, _ = R.caption_vector(k, v, tdim)
        except R.BadRecord as e:
            p.bad(str(e).split("; ")[0])
            p.deletes.add(("capvecs", bytes(k)))
            continue
        p.ref(owner, "capvecs", k)
        if owner not in items:
            p.bad(f"caption vector {c} belongs to missing item {owner}")
            p.deletes.add(("capvecs", bytes(k)))
        else:
            cap_owner[c] = owner
    return cap_owner


def _check_paths(t, db, items: dict, cap_owner: dict, p: Plan) -> dict[str, int]:
    """Path -> item id, for the path records that can be kept (a record whose captions are gone is
    written again without them, so the next update embeds them again)."""
    path_of = {}
    for k, v in t.cursor(db=db["paths"]):
        try:
            key = R.text_key("paths", k)
            pr = R.path(k, v)
        except R.BadRecord as e:
            p.bad(str(e).split("; ")[0])
            p.deletes.add(("paths", bytes(k)))
            continue
        i = pr["id"]
        p.ref(i, "paths", k)
        for c in pr.get("cap_ids", []):
            p.ref(i, "capvecs", ikey(c))
        rec = items.get(i)
        if rec is None or (key != rec["path"] and key not in rec["aliases"]):
            p.bad(f"path {key} points to item {i}, which does not list it")
            p.deletes.add(("paths", bytes(k)))
            continue
        path_of[key] = i
        caps = pr.get("cap_ids", [])
        if any(cap_owner.get(c) != i for c in caps):
            p.bad(f"path {key}: a caption of it is missing or belongs to another item")
            for c in caps:
                if cap_owner.get(c) == i:
                    p.deletes.add(("capvecs", ikey(c)))
            p.puts[("paths", bytes(k))] = (dumps(dict(pr, captions=[], cap_ids=[], size=-1, mtime_ns=-1)), i)
    return path_of


def _drop_or_delete(p: Plan, name: str, key, why: str, items: dict | None = None) -> None:
    """A bad id-keyed record: its item goes (named, with why), or the record alone when it has none."""
    b = bytes(key)
    if len(b) != 8:
        p.deletes.add((name, b))
        return
    i = int.from_bytes(b, "big")
    rec = (items or {}).get(i)
    what = {"items": "its item record", "vecs": "its vector", "profiles": "its concept profile"}[name]
    p.drop_item(i, f"{what} is unusable ({why})", rec["path"] if rec else None)


# -- FAISS --------------------------------------------------------------------------------------
def _check_faiss(store: Store, index_dir: str, m: dict, p: Plan, counts: dict) -> list[str]:
    """Each FAISS file against the store; returns the kinds that must be derived again."""
    dim = int(m["model"]["dim"])
    tdim = int(m["text_model"]["dim"]) if m.get("text_model") else None
    stale = []
    for kind in ["image"] + (["caption"] if tdim else []):
        name = FAISS_FILES[kind]
        want = counts["vector_ids"] if kind == "image" else counts["caption_owners"]
        try:
            index, fgen = V.load(os.path.join(index_dir, name))
        except KgclipError as e:
            p.bad(f"{name}: {str(e).split(': ', 1)[-1]}; it is derived again on open")
            stale.append(kind)
            continue
        if index is None:  # its sidecar is missing or its size/CRC differ: never handed to faiss
            p.bad(f"{name}: does not match its sidecar {name}.json (size or CRC); it is derived again on open")
            stale.append(kind)
            continue
        issues = check.problems(index, dim if kind == "image" else tdim, len(want))
        if fgen != counts["generation"]:
            issues.append(f"covers store generation {fgen}, the store is at {counts['generation']}")
        if not issues:
            labels = check.labels(index)
            if not np.array_equal(np.sort(labels), np.sort(np.asarray(want, np.int64))):
                issues.append("its ids do not match the store's")
            elif kind == "image" or check.is_id_map(index):  # caption rows: in the store's order
                info = (m.get("faiss") or {}).get(kind) or {}
                params = check.safe_params(index, info.get("params") or {})
                caps = np.asarray(counts["caption_ids"], np.int64)
                stored = ((lambda _rows, ids: store.get_vectors(ids, dim)) if kind == "image" else
                          (lambda rows, _ids: store.get_vectors(caps[rows], tdim, kind="caption")))
                try:
                    bad, allowed = check.sample_mismatches(index, stored, params, n=VERIFY_SAMPLE)
                except KgclipError:  # a stored vector is junk: reported above, repaired with the store
                    bad, allowed = 0, 0
                if bad > allowed:
                    issues.append(f"{bad} of {min(VERIFY_SAMPLE, len(want))} sampled rows do not hold their "
                                  "item's stored vector (ids permuted or vectors changed)")
        for issue in issues:
            p.bad(f"{name} {issue}")
        if issues:
            stale.append(kind)
    return stale


def _rederive(store: Store, index_dir: str, m: dict) -> list[str]:
    """Every FAISS file derived again from the store; the manifest rewritten to match."""
    done = []
    info = dict(m.get("faiss") or {})
    opts = m.get("options") or {}
    dims = {"image": int(m["model"]["dim"])}
    if m.get("text_model"):
        dims["caption"] = int(m["text_model"]["dim"])
    for kind, d in dims.items():
        _, info[kind] = derive_faiss(store, index_dir, kind, d, opts.get("index_type") or "auto",
                                     opts.get("max_memory"))
        done.append(f"{FAISS_FILES[kind]} derived again from the store")
    m["faiss"] = info
    m["generation"] = store.generation
    m["counts"] = {"items": store.count("items"), "paths": store.count("paths"),
                   "captions": store.count("capvecs"), "failures": store.count("fails")}
    write_manifest(index_dir, m)
    return done + ["manifest rewritten"]
