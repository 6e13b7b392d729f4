"""Opening ``INDEX/store.lmdb``'s LMDB environment (:class:`SharedEnv`, the base of
:class:`indexer.store.Store`): one environment per folder and process, read-only for readers, the lock
table only where a reader may write it, never through a symbolic link.

A writer refuses a ``store.lmdb``, ``data.mdb`` or ``lock.mdb`` that is a symbolic link
(:class:`UnsafePath`). A reader opens the environment read-only and writes nothing but its slot in
the LMDB lock table, and that only when ``lock.mdb`` is a regular file it may write; otherwise
(missing, a link, a read-only folder or mount) it reads without the lock table (``lock=False``,
``nolock``): a writer cannot see such a reader and could recycle the pages it reads, so it refuses to
start while a writer holds ``write.lock``, and each of its read transactions ends with a check
(:class:`CheckedRead`) that no writer holds the lock and that fewer than two commits happened since
it began (``docs/reliability.md``).
"""

from __future__ import annotations

import os
import stat
import threading
import weakref

from retrieval.atomic import disk_full, refuse_link
from retrieval.errors import IndexCorrupt, IndexLocked, IndexNotFound

from .lock import WriteLock

DBS = ("meta", "items", "paths", "hashes", "vecs", "capvecs", "fails")
OPTIONAL_DBS = ("profiles",)  # added later: a read-only open of an older store finds them missing (None)
DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB to start (sparse on disk); doubled whenever full
STORE_DIR = "store.lmdb"
LMDB_FILES = ("data.mdb", "lock.mdb")

_OPEN: dict[str, dict] = {}  # realpath of store.lmdb -> the environment shared by this process's Stores
_OPEN_LOCK = threading.Lock()


def _is_access_error(e: Exception) -> bool:
    return any(w in str(e) for w in ("Permission denied", "Operation not permitted", "Read-only file system"))


class SharedEnv:
    """The environment part of a Store: ``env``, ``db`` (name -> database handle), ``nolock``."""

    def _attach(self, index_dir: str, readonly: bool, map_size: int | None, create: bool) -> None:
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
                raise IndexNotFound(f"{self.index_dir}: not a kgclip index (no {STORE_DIR}/ inside)")
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
                except self.lmdb.Error as e:
                    if not (readonly and use_lock and _is_access_error(e)):
                        raise
                    use_lock = False  # lock.mdb looked writable but is not (an immutable file, root-squash)
                    self._open_env(readonly, use_lock, map_size)
            except self.lmdb.Error as e:
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

    def last_txnid(self) -> int | None:
        """The id of the last committed write transaction (any process): changes with every commit."""
        try:
            return int(self.env.info()["last_txnid"])
        except Exception:  # noqa: BLE001 - a closed or odd environment: callers fall back to a read
            return None

    def check_snapshot(self, start: int | None) -> None:
        """After a read without the lock table that began at LMDB transaction ``start``: a writer could
        have reused its pages only if it committed twice since, or holds the lock now."""
        now = self.last_txnid()
        if start is not None and now is not None and now - start >= 2:
            raise IndexLocked(f"index {self.index_dir} changed while it was read without a lock table "
                              f"({os.path.join(self.path, 'lock.mdb')} cannot be used from here): try again")
        self.check_no_writer()

class CheckedRead:
    """A read transaction of a store opened without the lock table: used like one, and on its end
    :meth:`Store.check_snapshot` says whether what was read can be trusted (IndexLocked if not)."""

    def __init__(self, store: SharedEnv, t, start: int | None):
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
