"""The LMDB store: the index's source of truth.

Databases (all in ``INDEX/store.lmdb``):

``meta``     settings and counters (JSON): model, dims, next ids, generation, sources, state
``items``    item id (8-byte big-endian) -> {id, path, sha256, width, height, aliases, concepts}
``paths``    path key -> {id, size, mtime_ns, sha256, captions, cap_ids, meta}
``hashes``   sha256 hex -> item id (identical content is one item; its other paths are aliases)
``vecs``     item id -> float32 image vector
``capvecs``  caption id -> item id (8 bytes) + float32 caption vector
``fails``    path key -> {reason, size, mtime_ns}
``profiles`` item id -> lite's soft concept profile: uint16 class indexes then float16 probabilities
             (raw bytes, so a searcher reads 100k of them in a fraction of a second; stores from
             before profiles have no such database until a writer opens them)

Every change goes through :meth:`Store.write`, one LMDB transaction that bumps
the ``generation`` counter; a batch of the build is one such transaction, so a
crash leaves the store at the last committed batch. The map grows when full.
"""

from __future__ import annotations

import json
import os
import struct
from contextlib import nullcontext
from typing import Any, Callable, Iterator

import numpy as np

from retrieval.atomic import disk_full
from retrieval.errors import IndexCorrupt

from . import records
# re-exported: callers import these from here
from .lmdb_env import DBS, DEFAULT_MAP_SIZE, OPTIONAL_DBS, STORE_DIR, CheckedRead, SharedEnv  # noqa: F401
from .lock import LOCK_FILE, WriteLock  # noqa: F401


def ikey(i: int) -> bytes:
    return struct.pack(">Q", int(i))


def unikey(b: bytes) -> int:
    return struct.unpack(">Q", bytes(b))[0]


def pack_profile(profile) -> bytes:
    """(class indexes, probabilities) -> the raw value kept in ``profiles`` (4 bytes a class)."""
    idx, p = profile
    return np.asarray(idx, "<u2").tobytes() + np.asarray(p, "<f2").tobytes()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def loads(b: bytes | None) -> Any:
    return None if b is None else json.loads(bytes(b).decode("utf-8"))


class Store(SharedEnv):
    """An open LMDB store. ``readonly=True`` for searchers (safe alongside one writer; they write
    nothing: how the environment is opened and shared is :mod:`indexer.lmdb_env`'s)."""

    def __init__(self, index_dir: str, readonly: bool = False, map_size: int | None = None, create: bool = False):
        self._attach(index_dir, readonly, map_size, create)

    # -- transactions ----------------------------------------------------------------
    def read(self):
        """A read transaction (adopts a map grown by a writer in another process); without the lock
        table (:attr:`nolock`) one that checks, when it ends, that its snapshot was not recycled."""
        if self.nolock:
            self.check_no_writer()
            start = self.last_txnid()
        try:
            t = self.env.begin()
        except self.lmdb.MapResizedError:
            self.env.set_mapsize(0)
            t = self.env.begin()
        return CheckedRead(self, t, start) if self.nolock else t

    def write(self, fn: Callable[["Txn"], Any], bump: bool = True) -> Any:
        """Run ``fn(Txn)`` in one write transaction; retried on a grown map when full.

        ``fn`` must read what it needs through the transaction (it may run twice).
        """
        while True:
            try:
                with self.env.begin(write=True) as t:
                    txn = Txn(self, t)
                    out = fn(txn)
                    if bump:
                        txn.set_meta("generation", txn.meta("generation", 0) + 1)
                    return out
            except self.lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except self.lmdb.Error as e:  # the commit failed: the store stays at the last one
                full = disk_full(e, os.path.join(self.path, "data.mdb"))
                if full is None:
                    raise
                raise full from None

    # -- read helpers -------------------------------------------------------------------
    def meta(self, key: str, default=None):
        with self.read() as t:
            v = records.json_value("meta", key.encode(), t.get(key.encode(), db=self.db["meta"]))
        return default if v is None else v

    def all_meta(self) -> dict:
        with self.read() as t:
            return {bytes(k).decode("utf-8", "replace"): records.json_value("meta", k, v)
                    for k, v in t.cursor(db=self.db["meta"])}

    @property
    def generation(self) -> int:
        with self.read() as t:
            return records.meta_int("generation", t.get(b"generation", db=self.db["meta"]))

    def count(self, db: str) -> int:
        with self.read() as t:
            return t.stat(self.db[db])["entries"]

    def get_path(self, key: str) -> dict | None:
        with self.read() as t:
            return records.path(key.encode(), t.get(key.encode(), db=self.db["paths"]))

    def get_failure(self, key: str) -> dict | None:
        with self.read() as t:
            return records.failure(key.encode(), t.get(key.encode(), db=self.db["fails"]))

    def has_hash(self, sha: str) -> bool:
        with self.read() as t:
            return t.get(sha.encode(), db=self.db["hashes"]) is not None

    def get_items(self, ids) -> list[dict | None]:
        out = []
        with self.read() as t:
            for i in ids:
                i = int(i)
                rec = records.item(ikey(i), t.get(ikey(i), db=self.db["items"])) if i >= 0 else None
                out.append(self._hydrate(t, rec) if rec else None)
        return out

    def _hydrate(self, t, rec: dict) -> dict:
        prim = records.path(rec["path"].encode(), t.get(rec["path"].encode(), db=self.db["paths"])) or {}
        caps = list(prim.get("captions", []))
        for a in rec.get("aliases", []):
            for c in (records.path(a.encode(), t.get(a.encode(), db=self.db["paths"])) or {}).get("captions", []):
                if c not in caps:
                    caps.append(c)
        return {
            "id": rec["id"], "path": rec["path"], "size": prim.get("size"), "mtime": prim.get("mtime_ns", 0) / 1e9,
            "sha256": rec["sha256"], "width": rec.get("width"), "height": rec.get("height"), "captions": caps,
            "concepts": rec.get("concepts", []), "aliases": list(rec.get("aliases", [])),
            "meta": prim.get("meta", {}),
        }

    def get_vectors(self, ids, dim: int, kind: str = "image", txn=None) -> np.ndarray:
        """Vectors of ``ids`` (image: item ids, caption: caption ids); zeros where missing.

        With ``txn`` (a read transaction) they come from that snapshot.
        """
        out = np.zeros((len(ids), dim), np.float32)
        db = self.db["vecs" if kind == "image" else "capvecs"]
        with (nullcontext(txn) if txn is not None else self.read()) as t:
            for r, i in enumerate(ids):
                b = t.get(ikey(int(i)), db=db) if int(i) >= 0 else None
                if b is not None:
                    b = bytes(b) if kind == "image" else bytes(b)[8:]
                    if len(b) != 4 * dim:
                        raise records.BadRecord("vecs" if kind == "image" else "capvecs", ikey(int(i)),
                                                f"vector is {len(b)} bytes, the model's {dim} dims need {4 * dim}")
                    out[r] = np.frombuffer(b, np.float32)
        return out

    def iter_items(self) -> Iterator[tuple[int, dict]]:
        """(id, record) in id order; a fresh read transaction per chunk so writers are not held up."""
        last = None
        while True:
            chunk = []
            with self.read() as t:
                cur = t.cursor(db=self.db["items"])
                ok = cur.set_range(ikey(last + 1)) if last is not None else cur.first()
                while ok and len(chunk) < 1024:
                    rec = records.item(cur.key(), cur.value())
                    chunk.append((unikey(cur.key()), self._hydrate(t, rec)))
                    ok = cur.next()
            if not chunk:
                return
            yield from chunk
            last = chunk[-1][0]

    def iter_profiles(self, chunk: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(item ids [k], class indexes [k, top] uint16, probabilities [k, top] float16) chunks in id
        order; nothing where the store keeps no profiles."""
        db = self.db.get("profiles")
        if db is None:
            return
        for ids, raw in self._id_chunks(db, chunk):
            width = len(raw[0])
            if width % 4 or any(len(r) != width for r in raw):
                raise IndexCorrupt(f"{self.path}: concept profiles of different sizes near item {ids[0]}; "
                                   f"{records.REPAIR_HINT}")
            m = np.frombuffer(b"".join(raw), np.uint8).reshape(len(raw), width)
            top = width // 4
            yield (np.asarray(ids, np.int64), m[:, : 2 * top].copy().view("<u2"),
                   m[:, 2 * top :].copy().view("<f2"))

    def _id_chunks(self, db, chunk: int, txn=None) -> Iterator[tuple[list[int], list[bytes]]]:
        """(item or caption ids, raw values) of an id-keyed database in id order, ``chunk`` at a time,
        each chunk from one read transaction (or all from ``txn``)."""
        last = None
        while True:
            ids, vals = [], []
            t = txn if txn is not None else self.read()
            try:
                cur = t.cursor(db=db)
                ok = cur.set_range(ikey(last + 1)) if last is not None else cur.first()
                while ok and len(ids) < chunk:
                    ids.append(unikey(cur.key()))
                    vals.append(bytes(cur.value()))
                    ok = cur.next()
            finally:
                if txn is None:
                    t.abort()
            if not ids:
                return
            yield ids, vals
            last = ids[-1]

    def iter_vectors(self, kind: str = "image", batch: int = 8192, txn=None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Stream (ids, vectors, item_ids) in id order; item_ids is None for image vectors.

        With ``txn`` (a read transaction) every batch comes from that one snapshot.
        """
        for ids, vecs, owners in self._vector_rows(kind, batch, txn, True):
            yield ids, np.stack(vecs), owners

    def iter_vector_keys(self, kind: str = "image", batch: int = 8192, txn=None
                         ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Stream (ids, item_ids) like :meth:`iter_vectors`, without reading the vectors themselves."""
        for ids, _, owners in self._vector_rows(kind, batch, txn, False):
            yield ids, owners

    def _vector_rows(self, kind: str, batch: int, txn, with_vectors: bool):
        """Batches of (ids, list of vectors or None, item_ids or None) in id order, each from one read
        transaction (or all from ``txn``)."""
        name = "vecs" if kind == "image" else "capvecs"
        for ids, vals in self._id_chunks(self.db[name], batch, txn):
            want = len(vals[0])
            for i, b in zip(ids, vals):  # one odd size would break the batch's stack: name its record
                if len(b) != want or (len(b) - (0 if kind == "image" else 8)) % 4 or (kind != "image" and len(b) < 8):
                    raise records.BadRecord(name, ikey(i), f"vector record of {len(b)} bytes among ones of {want}")
            if kind == "image":
                owners = None
                vecs = [np.frombuffer(b, np.float32) for b in vals] if with_vectors else None
            else:
                owners = np.asarray([records.item_ref("capvecs", ikey(i), b[:8]) for i, b in zip(ids, vals)], np.int64)
                vecs = [np.frombuffer(b[8:], np.float32) for b in vals] if with_vectors else None
            yield np.asarray(ids, np.int64), vecs, owners

    def iter_key_chunks(self, db: str, chunk: int = 1000) -> Iterator[list[str]]:
        """The keys of ``db`` ("paths" or "fails") in key order, ``chunk`` at a time.

        A fresh read transaction per chunk, so the caller may delete keys between chunks (the walk
        goes on after the last key it returned) and never holds the whole key list.
        """
        last = None
        while True:
            keys: list[bytes] = []
            with self.read() as t:
                cur = t.cursor(db=self.db[db])
                ok = cur.set_range(last) if last is not None else cur.first()
                if ok and last is not None and cur.key() == last:
                    ok = cur.next()
                while ok and len(keys) < chunk:
                    keys.append(bytes(cur.key()))
                    ok = cur.next()
            if not keys:
                return
            yield [records.text_key(db, k) for k in keys]
            last = keys[-1]

    def iter_paths(self) -> Iterator[tuple[str, dict]]:
        with self.read() as t:
            for k, v in t.cursor(db=self.db["paths"]):
                yield records.text_key("paths", k), records.path(k, v)

    def iter_failures(self) -> Iterator[tuple[str, dict]]:
        with self.read() as t:
            for k, v in t.cursor(db=self.db["fails"]):
                yield records.text_key("fails", k), records.failure(k, v)

    def path_keys(self) -> list[str]:
        with self.read() as t:
            return [records.text_key("paths", k) for k in t.cursor(db=self.db["paths"]).iternext(values=False)]

    def failure_keys(self) -> list[str]:
        with self.read() as t:
            return [records.text_key("fails", k) for k in t.cursor(db=self.db["fails"]).iternext(values=False)]


class Txn:
    """Write operations inside one transaction (see :meth:`Store.write`)."""

    def __init__(self, store: Store, t):
        self.s, self.t, self.db = store, t, store.db

    def meta(self, key: str, default=None):
        v = records.json_value("meta", key.encode(), self.t.get(key.encode(), db=self.db["meta"]))
        return default if v is None else v

    def set_meta(self, key: str, value) -> None:
        self.t.put(key.encode(), dumps(value), db=self.db["meta"])

    def _next(self, counter: str) -> int:
        n = int(self.meta(counter, 0))
        self.set_meta(counter, n + 1)
        return n

    def get_path(self, key: str) -> dict | None:
        return records.path(key.encode(), self.t.get(key.encode(), db=self.db["paths"]))

    def hash_id(self, sha: str) -> int | None:
        b = self.t.get(sha.encode(), db=self.db["hashes"])
        return None if b is None else records.item_ref("hashes", sha.encode(), b)

    def _item(self, i: int) -> dict:
        rec = records.item(ikey(i), self.t.get(ikey(i), db=self.db["items"]))
        if rec is None:
            raise IndexCorrupt(f"{self.s.path}: item {i} is referenced but missing (run `kgclip verify --repair`)")
        return rec

    def _put_item(self, rec: dict) -> None:
        self.t.put(ikey(rec["id"]), dumps(rec), db=self.db["items"])

    def _add_captions(self, item_id: int, cap_vecs: np.ndarray | None) -> list[int]:
        ids = []
        if cap_vecs is None:
            return ids
        for v in cap_vecs:
            c = self._next("next_cap_id")
            self.t.put(ikey(c), ikey(item_id) + np.asarray(v, np.float32).tobytes(), db=self.db["capvecs"])
            ids.append(c)
        return ids

    def _drop_captions(self, cap_ids) -> None:
        for c in cap_ids or []:
            self.t.delete(ikey(c), db=self.db["capvecs"])

    def add_path(self, key: str, *, sha256: str, size: int, mtime_ns: int, width: int, height: int,
                 vector: np.ndarray | None, concepts=None, captions=(), cap_vecs=None, meta=None,
                 profile=None) -> int:
        """Add a new path: a new item, or an alias of the item with the same content. Returns the item id."""
        i = self.hash_id(sha256)
        if i is None:
            if vector is None:
                raise ValueError(f"{key}: new content needs a vector")
            i = self._next("next_id")
            self._put_item({"id": i, "path": key, "sha256": sha256, "width": width, "height": height,
                            "aliases": [], "concepts": [[c, float(p)] for c, p in (concepts or [])]})
            if profile is not None:
                self.t.put(ikey(i), pack_profile(profile), db=self.db["profiles"])
            self.t.put(ikey(i), np.asarray(vector, np.float32).tobytes(), db=self.db["vecs"])
            self.t.put(sha256.encode(), ikey(i), db=self.db["hashes"])
        else:
            rec = self._item(i)
            if key != rec["path"] and key not in rec["aliases"]:
                rec["aliases"].append(key)
                self._put_item(rec)
        prec = {"id": i, "size": size, "mtime_ns": mtime_ns, "sha256": sha256, "captions": list(captions),
                "cap_ids": self._add_captions(i, cap_vecs), "meta": meta or {}}
        self.t.put(key.encode(), dumps(prec), db=self.db["paths"])
        self.t.delete(key.encode(), db=self.db["fails"])
        return i

    def update_path(self, key: str, *, size: int, mtime_ns: int, captions=None, cap_vecs=None, meta=None) -> None:
        """Same content, new stat (and maybe new captions/metadata): the item and its id are kept."""
        prec = self.get_path(key)
        prec.update(size=size, mtime_ns=mtime_ns)
        if captions is not None:
            self._drop_captions(prec.get("cap_ids"))
            prec["captions"] = list(captions)
            prec["cap_ids"] = self._add_captions(prec["id"], cap_vecs)
        if meta is not None:
            prec["meta"] = meta
        self.t.put(key.encode(), dumps(prec), db=self.db["paths"])
        self.t.delete(key.encode(), db=self.db["fails"])

    def remove_path(self, key: str) -> None:
        """Forget a path; its item goes too when no other path holds the same content."""
        prec = self.get_path(key)
        if prec is None:
            return
        self._drop_captions(prec.get("cap_ids"))
        self.t.delete(key.encode(), db=self.db["paths"])
        i = prec["id"]
        rec = records.item(ikey(i), self.t.get(ikey(i), db=self.db["items"]))
        if rec is None:
            return
        if rec["path"] == key:
            if rec["aliases"]:
                rec["path"] = rec["aliases"].pop(0)
                self._put_item(rec)
            else:
                self.t.delete(ikey(i), db=self.db["items"])
                self.t.delete(ikey(i), db=self.db["vecs"])
                if self.db.get("profiles") is not None:
                    self.t.delete(ikey(i), db=self.db["profiles"])
                self.t.delete(rec["sha256"].encode(), db=self.db["hashes"])
        elif key in rec["aliases"]:
            rec["aliases"].remove(key)
            self._put_item(rec)

    def set_failure(self, key: str, reason: str, size: int = -1, mtime_ns: int = -1) -> None:
        self.remove_path(key)
        self.t.put(key.encode(), dumps({"reason": reason, "size": size, "mtime_ns": mtime_ns}), db=self.db["fails"])

    def clear_failure(self, key: str) -> None:
        self.t.delete(key.encode(), db=self.db["fails"])
