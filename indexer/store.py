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
import stat
import struct
import threading
import weakref
from contextlib import nullcontext
from typing import Any, Callable, Iterator

import numpy as np

from retrieval.atomic import disk_full, refuse_link
from retrieval.errors import IndexCorrupt, IndexLocked, IndexNotFound

from .lock import LOCK_FILE, WriteLock  # noqa: F401 - re-exported: callers import the lock from here

DBS = ("meta", "items", "paths", "hashes", "vecs", "capvecs", "fails")
OPTIONAL_DBS = ("profiles",)  # added later: a read-only open of an older store finds them missing (None)
DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB to start (sparse on disk); doubled whenever full
STORE_DIR = "store.lmdb"
LMDB_FILES = ("data.mdb", "lock.mdb")


def _is_access_error(e: Exception) -> bool:
    return any(w in str(e) for w in ("Permission denied", "Operation not permitted", "Read-only file system"))


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


_OPEN: dict[str, dict] = {}  # realpath of store.lmdb -> the environment shared by this process's Stores
_OPEN_LOCK = threading.Lock()


class Store:
    """An open LMDB store. ``readonly=True`` for searchers (safe alongside one writer).

    A writer refuses a ``store.lmdb``, ``data.mdb`` or ``lock.mdb`` that is a symbolic link
    (:class:`UnsafePath`). A reader opens the environment read-only and writes nothing but its slot in
    the LMDB lock table, and that only when ``lock.mdb`` is a regular file it may write; otherwise
    (missing, a link, a read-only folder or mount) it reads without the lock table (``lock=False``,
    :attr:`nolock`): such a reader refuses to start while a writer holds ``write.lock`` and checks that
    no writer took it at every read transaction, since a writer cannot see it and could recycle pages
    under it (``docs/reliability.md``).
    """

    def __init__(self, index_dir: str, readonly: bool = False, map_size: int | None = None, create: bool = False):
        import lmdb

        self.lmdb = lmdb
        self.index_dir = index_dir
        self.path = os.path.join(index_dir, STORE_DIR)
        self.nolock = False
        if not readonly:  # LMDB opens these by name (O_CREAT, no O_NOFOLLOW): check them first
            refuse_link(self.path, want="dir")
            for name in LMDB_FILES:
                refuse_link(os.path.join(self.path, name))
        if not os.path.isdir(self.path):
            if not create:
                raise IndexNotFound(f"{index_dir}: not a kgclip index (no {STORE_DIR}/ inside)")
            os.makedirs(self.path, exist_ok=True)
        self.readonly = readonly
        # LMDB forbids opening one environment twice in a process (py-lmdb refuses; closing one copy
        # would drop the other's locks), so Stores on the same folder share one environment; a writer
        # after readers in the same process reopens it writable and hands it to them.
        self._key = os.path.realpath(self.path)
        with _OPEN_LOCK:
            shared = _OPEN.get(self._key)
            if shared is not None:
                if not readonly and not shared["writable"]:
                    self._reopen_writable(shared, map_size)
                shared["refs"] += 1
                shared["stores"].add(self)
                self.env, self.db, self.nolock = shared["env"], shared["db"], shared["nolock"]
                if not readonly:
                    self._open_optional(create=True)  # a reader of an older store opened it without them
                return
            if readonly:
                self._check_data_file()
            use_lock = not readonly or self._may_lock()
            try:
                try:
                    self._open_env(readonly, use_lock, map_size)
                except lmdb.Error as e:
                    if not (readonly and use_lock and _is_access_error(e)):
                        raise
                    use_lock = False  # lock.mdb looked writable but is not (an immutable file, root-squash)
                    self._open_env(readonly, use_lock, map_size)
            except lmdb.Error as e:
                full = None if readonly else disk_full(e, os.path.join(self.path, "data.mdb"))
                if full is not None:
                    raise full from None
                raise IndexCorrupt(f"{self.path}: cannot open the LMDB store: {e}") from None
            self.nolock = not use_lock
            if self.nolock:
                try:
                    self.check_no_writer()
                except IndexLocked:
                    self.env.close()
                    self.env = None
                    raise
            # a truncated data file (a partial copy, a full disk) would crash the process with SIGBUS
            # on the first read of a missing page: refuse it with a clear error instead
            need = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
            have = os.path.getsize(os.path.join(self.path, "data.mdb"))
            if have < need:
                self.env.close()
                self.env = None
                raise IndexCorrupt(f"{self.path}: the store is truncated ({have} of {need} bytes); restore it "
                                   "or rebuild the index with `kgclip build --restart`")
            _OPEN[self._key] = {"env": self.env, "db": self.db, "refs": 1, "writable": not readonly,
                                "nolock": self.nolock, "stores": weakref.WeakSet([self])}

    def _reopen_writable(self, shared: dict, map_size: int | None) -> None:
        """A writer in a process whose readers opened the environment read-only: LMDB allows one
        environment per process, so it is reopened writable and handed to those readers too (a read
        transaction they hold right now ends; between reads they notice nothing)."""
        shared["env"].close()  # py-lmdb refuses a second open of the same folder
        try:
            self._open_env(False, True, map_size)
            shared.update(env=self.env, db=self.db, writable=True, nolock=False)
        except self.lmdb.Error as e:
            self._open_env(True, not shared["nolock"], None)  # the readers carry on read-only
            shared.update(env=self.env, db=self.db)
            raise IndexCorrupt(f"{self.path}: cannot open the LMDB store for writing: {e}") from None
        finally:
            for st in list(shared["stores"]):
                st.env, st.db, st.nolock = shared["env"], shared["db"], shared["nolock"]

    def _open_env(self, readonly: bool, lock: bool, map_size: int | None) -> None:
        lmdb = self.lmdb
        try:
            self.env = lmdb.open(
                self.path, max_dbs=len(DBS) + len(OPTIONAL_DBS) + 1, map_size=map_size or DEFAULT_MAP_SIZE,
                readonly=readonly, lock=lock, subdir=True, max_readers=256, metasync=True, sync=True,
                create=not readonly,
            )
            self.db = {n: self.env.open_db(n.encode(), create=not readonly) for n in DBS}
            self._open_optional(create=not readonly)
        except lmdb.Error:
            if getattr(self, "env", None) is not None:
                self.env.close()
                self.env = None
            raise

    def _check_data_file(self) -> None:
        """A reader's data.mdb must be a regular file (a FIFO would hang LMDB's open)."""
        p = os.path.join(self.path, "data.mdb")
        try:
            st = os.stat(p)
        except OSError as e:
            raise IndexCorrupt(f"{p}: cannot open the LMDB store: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise IndexCorrupt(f"{p}: the LMDB data file is not a regular file")

    def _may_lock(self) -> bool:
        """Whether a reader may use the LMDB lock table: ``lock.mdb`` is a regular file (not a link) in a
        real ``store.lmdb`` folder and this process may write it. Nothing is created."""
        try:
            if stat.S_ISLNK(os.lstat(self.path).st_mode):
                return False
            st = os.lstat(os.path.join(self.path, "lock.mdb"))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and os.access(os.path.join(self.path, "lock.mdb"), os.W_OK)

    def check_no_writer(self) -> None:
        """For a reader without the lock table (:attr:`nolock`): :class:`IndexLocked` while a writer
        holds ``write.lock`` (it cannot see this reader, so it could reuse pages the reader reads)."""
        pid = WriteLock(self.index_dir).holder()
        if pid is not None:
            raise IndexLocked(f"index {self.index_dir} is being written by pid {pid} and its lock table "
                              f"{os.path.join(self.path, 'lock.mdb')} cannot be used from here (a read-only "
                              "folder or file): try again when the update has finished")

    def _open_optional(self, create: bool) -> None:
        for n in OPTIONAL_DBS:
            if self.db.get(n) is None:
                try:
                    self.db[n] = self.env.open_db(n.encode(), create=create)
                except self.lmdb.NotFoundError:
                    self.db[n] = None

    def close(self) -> None:
        if getattr(self, "env", None) is not None:
            with _OPEN_LOCK:
                shared = _OPEN.get(self._key)
                if shared is not None and shared["env"] is self.env:
                    shared["refs"] -= 1
                    if shared["refs"] <= 0:
                        del _OPEN[self._key]
                        self.env.close()
                else:
                    self.env.close()
            self.env = None

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
        return _CheckedRead(self, t, start) if self.nolock else t

    def check_snapshot(self, start: int | None) -> None:
        """After a read without the lock table that began at LMDB transaction ``start``: a writer could
        have reused its pages only if it committed twice since, or holds the lock now."""
        now = self.last_txnid()
        if start is not None and now is not None and now - start >= 2:
            raise IndexLocked(f"index {self.index_dir} changed while it was read without a lock table "
                              f"({os.path.join(self.path, 'lock.mdb')} cannot be used from here): try again")
        self.check_no_writer()

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
            v = loads(t.get(key.encode(), db=self.db["meta"]))
        return default if v is None else v

    def all_meta(self) -> dict:
        with self.read() as t:
            return {bytes(k).decode(): loads(v) for k, v in t.cursor(db=self.db["meta"])}

    def last_txnid(self) -> int | None:
        """The id of the last committed write transaction (any process): changes with every commit."""
        try:
            return int(self.env.info()["last_txnid"])
        except Exception:  # noqa: BLE001 - a closed or odd environment: callers fall back to a read
            return None

    @property
    def generation(self) -> int:
        return int(self.meta("generation", 0))

    def count(self, db: str) -> int:
        with self.read() as t:
            return t.stat(self.db[db])["entries"]

    def get_path(self, key: str) -> dict | None:
        with self.read() as t:
            return loads(t.get(key.encode(), db=self.db["paths"]))

    def get_failure(self, key: str) -> dict | None:
        with self.read() as t:
            return loads(t.get(key.encode(), db=self.db["fails"]))

    def has_hash(self, sha: str) -> bool:
        with self.read() as t:
            return t.get(sha.encode(), db=self.db["hashes"]) is not None

    def get_items(self, ids) -> list[dict | None]:
        out = []
        with self.read() as t:
            for i in ids:
                i = int(i)
                rec = loads(t.get(ikey(i), db=self.db["items"])) if i >= 0 else None
                out.append(self._hydrate(t, rec) if rec else None)
        return out

    def _hydrate(self, t, rec: dict) -> dict:
        prim = loads(t.get(rec["path"].encode(), db=self.db["paths"])) or {}
        caps = list(prim.get("captions", []))
        for a in rec.get("aliases", []):
            for c in (loads(t.get(a.encode(), db=self.db["paths"])) or {}).get("captions", []):
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
                    b = bytes(b)
                    out[r] = np.frombuffer(b if kind == "image" else b[8:], np.float32)
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
                    rec = loads(cur.value())
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
                raise IndexCorrupt(f"{self.path}: concept profiles of different sizes near item {ids[0]}")
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
        for ids, vals in self._id_chunks(self.db["vecs" if kind == "image" else "capvecs"], batch, txn):
            if kind == "image":
                owners = None
                vecs = [np.frombuffer(b, np.float32) for b in vals] if with_vectors else None
            else:
                owners = np.asarray([unikey(b[:8]) for b in vals], np.int64)
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
            yield [k.decode() for k in keys]
            last = keys[-1]

    def iter_paths(self) -> Iterator[tuple[str, dict]]:
        with self.read() as t:
            for k, v in t.cursor(db=self.db["paths"]):
                yield bytes(k).decode(), loads(v)

    def iter_failures(self) -> Iterator[tuple[str, dict]]:
        with self.read() as t:
            for k, v in t.cursor(db=self.db["fails"]):
                yield bytes(k).decode(), loads(v)

    def path_keys(self) -> list[str]:
        with self.read() as t:
            return [bytes(k).decode() for k in t.cursor(db=self.db["paths"]).iternext(values=False)]

    def failure_keys(self) -> list[str]:
        with self.read() as t:
            return [bytes(k).decode() for k in t.cursor(db=self.db["fails"]).iternext(values=False)]


class _CheckedRead:
    """A read transaction of a store opened without the lock table: used like one, and on its end
    :meth:`Store.check_snapshot` says whether what was read can be trusted (IndexLocked if not)."""

    def __init__(self, store: Store, t, start: int | None):
        self._store, self._t, self._start = store, t, start

    def __getattr__(self, name):
        return getattr(self._t, name)

    def __enter__(self):
        self._t.__enter__()
        return self

    def __exit__(self, *exc):
        out = self._t.__exit__(*exc)
        if exc[0] is None:
            self._store.check_snapshot(self._start)
        return out

    def abort(self) -> None:
        self._t.abort()
        self._store.check_snapshot(self._start)


class Txn:
    """Write operations inside one transaction (see :meth:`Store.write`)."""

    def __init__(self, store: Store, t):
        self.s, self.t, self.db = store, t, store.db

    def meta(self, key: str, default=None):
        v = loads(self.t.get(key.encode(), db=self.db["meta"]))
        return default if v is None else v

    def set_meta(self, key: str, value) -> None:
        self.t.put(key.encode(), dumps(value), db=self.db["meta"])

    def _next(self, counter: str) -> int:
        n = int(self.meta(counter, 0))
        self.set_meta(counter, n + 1)
        return n

    def get_path(self, key: str) -> dict | None:
        return loads(self.t.get(key.encode(), db=self.db["paths"]))

    def hash_id(self, sha: str) -> int | None:
        b = self.t.get(sha.encode(), db=self.db["hashes"])
        return None if b is None else unikey(b)

    def _item(self, i: int) -> dict:
        rec = loads(self.t.get(ikey(i), db=self.db["items"]))
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
        rec = loads(self.t.get(ikey(i), db=self.db["items"]))
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
