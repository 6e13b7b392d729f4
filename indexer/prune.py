"""What a build or update may forget: stored paths whose files are verifiably gone, and only with ``--prune``.

An unmounted drive, an emptied or unreadable source root, or a folder that is briefly unreadable
(``chmod 000``) looks like "every file was deleted" to a naive sweep. Here a stored path the scan
did not see is one of:

- **protected**: it lies under a source that is missing, unreadable or empty, or under a folder the
  scan could not read, or its folder is missing (a manifest's or list's images), unreadable or
  empty now (a mount point with nothing in it). It is kept, and one warning names the source or
  folder (:meth:`Pruner.warnings`);
- **missing**: its file is verifiably gone from a folder that was read. Without ``prune`` it is
  kept and counted ("N missing (kept; use --prune to remove)"); with ``prune`` it is removed.

An emptied source root or folder (a mount point with nothing in it) is removed only with ``prune``
and ``yes`` together. Like rsync's ``--max-delete``, :meth:`Pruner.check_guard` refuses to remove more than half
of the index (and more than :data:`GUARD_MIN` paths) without ``yes``: a :class:`PruneRefused`, raised
before anything is written.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from retrieval.errors import KgclipError

from .sources import Item, iter_source, source_kind
from .store import Store, Txn

UNREADABLE_FOLDER = "cannot read folder"  # the reason :func:`indexer.sources.iter_folder` gives
GUARD_SHARE = 0.5  # refuse to remove more than this share of the index without --yes ...
GUARD_MIN = 10  # ... when that is more than this many paths


class PruneRefused(KgclipError):
    """A build or update would remove a large share of the index; ``--yes`` confirms it."""


@dataclass
class Pruner:
    """The state of the sources in one scan, and the rule that decides which unseen keys go."""

    prune: bool = False
    yes: bool = False
    status: dict = field(default_factory=dict)  # source -> "ok" | "missing" | "unreadable: why" | "empty"
    kinds: dict = field(default_factory=dict)  # source -> source_kind (readable sources)
    folders: dict = field(default_factory=dict)  # unreadable folder -> reason (seen during the scan)
    kept: dict = field(default_factory=dict)  # what protected unseen keys: source or folder -> count
    missing: int = 0  # unseen keys verifiably gone but kept (no --prune)
    _full: set = field(default_factory=set)  # folders found to hold something (not emptied)

    # -- the sources, before the scan ----------------------------------------------------------
    def check_sources(self, sources: list[str]) -> list[str]:
        """Classify each source; returns those the scan should walk (the readable, non-empty ones)."""
        usable = []
        for s in sources:
            self.status[s] = st = _source_status(s)
            if st in ("ok", "empty"):
                self.kinds[s] = source_kind(s)
            if st == "ok":
                usable.append(s)
        return usable

    def saw(self, skip_key: str, reason: str) -> None:
        """Note a Skip from the scan: a folder that could not be read protects what lies under it."""
        if reason.startswith(UNREADABLE_FOLDER):
            self.folders[skip_key] = reason[len(UNREADABLE_FOLDER):].lstrip(": ") or "unreadable"

    # -- one unseen key ------------------------------------------------------------------------
    def protector(self, key: str) -> str | None:
        """The source or folder that keeps ``key`` (an unseen stored key), or None when it may go."""
        d = os.path.dirname(key)
        while d and self.folders:  # each folder above the key (not each unreadable folder: there may be many)
            if d in self.folders:
                return d
            up = os.path.dirname(d)
            d = up if up != d else ""
        owner = None
        for s, st in self.status.items():
            if key == s or key.startswith(s.rstrip(os.sep) + os.sep) or key.startswith(s + "#"):
                owner = s
                if st != "ok" and not (st == "empty" and self.prune and self.yes):
                    return s
        if owner is not None and self.kinds.get(owner) == "folder":
            return self._emptied(key, owner)  # walked in full: gone, unless its folder was emptied
        if "#" in key and owner is not None:
            return None  # a tar member its readable shard no longer holds
        if owner is None and any(st != "ok" for st in self.status.values()):
            # a key from a file list or manifest while one of them cannot be read: it may be its
            return next(s for s, st in self.status.items() if st != "ok")
        gone_from = _folder_of_gone_file(key)
        if gone_from is None:
            return self._emptied(key, os.path.dirname(key))
        self.folders[gone_from[0]] = gone_from[1]  # also protects its other files, without a stat each
        return gone_from[0]

    def _emptied(self, key: str, top: str) -> str | None:
        """The nearest existing folder above ``key`` (up to ``top``) when it is empty: a mount point
        with nothing in it keeps its items unless ``prune`` and ``yes``. None when the key may go."""
        if self.prune and self.yes:
            return None
        d = os.path.dirname(key)
        while d not in self._full:
            try:
                names = os.listdir(d)
            except FileNotFoundError:  # a deleted folder: look at the one above it
                if len(d) <= len(top.rstrip(os.sep)) or os.path.dirname(d) == d:
                    return None
                d = os.path.dirname(d)
                continue
            except OSError as e:
                self.folders[d] = e.strerror or str(e)
                return d
            if names:
                self._full.add(d)
                return None
            self.folders[d] = "empty"
            return d
        return None

    def is_gone(self, key: str) -> bool:
        """True when ``key`` may be removed now; otherwise counted as kept or missing."""
        who = self.protector(key)
        if who is not None:
            self.kept[who] = self.kept.get(who, 0) + 1
            return False
        if not self.prune:
            self.missing += 1
            return False
        return True

    # -- before anything is written ------------------------------------------------------------
    def check_guard(self, store: Store, seen) -> int:
        """Count what a sweep would remove; refuse (PruneRefused) a large share without ``yes``."""
        n_gone = 0
        probe = Pruner(self.prune, self.yes, self.status, self.kinds, dict(self.folders))
        for keys in store.iter_key_chunks("paths", 1000):
            n_gone += sum(probe.is_gone(k) for k, ok in zip(keys, seen.contains(keys)) if not ok)
        total = store.count("paths")
        if n_gone > GUARD_MIN and n_gone > GUARD_SHARE * total and not self.yes:
            raise PruneRefused(
                f"refusing to remove {n_gone} of {total} indexed files (more than {GUARD_SHARE:.0%} of the "
                f"index): check that the sources are mounted, or rerun with --yes to remove them")
        return n_gone

    def warnings(self) -> list[str]:
        """One line per source or folder whose items were kept, then the count of missing files."""
        out = []
        for who, n in self.kept.items():
            st = self.status.get(who)
            if st == "missing":
                why = "is missing (an unmounted drive?)"
            elif st == "empty":
                why = "is empty (an unmounted drive?); to remove them, run with --prune --yes"
            elif st and st.startswith("unreadable"):
                why = f"cannot be read ({st.split(': ', 1)[-1]})"
            elif self.folders.get(who) == "missing":
                why = "is missing (an unmounted drive?)"
            elif self.folders.get(who) == "empty":
                why = "is empty (an unmounted drive?); to remove them, run with --prune --yes"
            elif who in self.folders:
                why = f"cannot be read ({self.folders[who]})"
            else:
                why = "cannot be read"
            what = "source" if who in self.status else "folder"
            out.append(f"kept {n} indexed files: {what} {who} {why}")
        if self.missing:
            out.append(f"{self.missing} missing (kept; use --prune to remove)")
        return out


def _source_status(s: str) -> str:
    if not os.path.lexists(s):
        return "missing"
    try:
        if os.path.isdir(s):
            with os.scandir(s):
                pass
        else:  # without blocking: a FIFO named as a source must not hang the update
            fd = os.open(s, os.O_RDONLY | os.O_NONBLOCK)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return "unreadable: not a regular file"
            finally:
                os.close(fd)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if not os.path.exists(s):
        return "missing"  # a broken symlink
    if not os.path.isdir(s):  # a list, manifest or shard: reading it twice would double the scan
        # an emptied list or JSONL names nothing (a CSV, Parquet or tar reader refuses an empty file)
        silent = source_kind(s) == "list" or s.lower().endswith((".jsonl", ".ndjson"))
        return "empty" if silent and os.path.getsize(s) == 0 else "ok"
    try:
        for it in iter_source(s):
            if isinstance(it, Item):
                return "ok"  # the walk stops at the first image
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    return "empty"


def _folder_of_gone_file(key: str) -> tuple[str, str] | None:
    """None when ``key``'s file is gone from a folder that can be listed (or still exists but its
    source no longer names it); else (that folder, why): missing or unreadable, an unmounted drive."""
    try:
        os.lstat(key)
        return None
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.ENOENT:
            return os.path.dirname(key), e.strerror or str(e)
    parent = os.path.dirname(key)
    try:
        os.listdir(parent)
        return None
    except FileNotFoundError:
        return parent, "missing"
    except OSError as e:
        return parent, e.strerror or str(e)


def sweep(store: Store, seen, chunk: int = 1000, pruner: Pruner | None = None) -> int:
    """Forget stored paths and failures whose keys are not in ``seen``; returns the paths removed.

    With ``pruner``, a path goes only when :meth:`Pruner.is_gone` says so, and a failure record (no
    item) whenever no source or folder protects it. Streams the store's keys ``chunk`` at a time and
    removes gone keys ``chunk`` per transaction (paths first, then failures), so memory holds two
    chunks, not the store's key lists.
    """
    pending: list[str] = []

    def flush():
        def fn(txn: Txn, drop=list(pending)):
            for k in drop:
                txn.remove_path(k)
                txn.clear_failure(k)

        store.write(fn)
        pending.clear()

    removed = 0
    for db in ("paths", "fails"):
        for keys in store.iter_key_chunks(db, chunk):
            drop = [k for k, ok in zip(keys, seen.contains(keys)) if not ok]
            if pruner is not None:
                drop = [k for k in drop if (pruner.is_gone(k) if db == "paths" else pruner.protector(k) is None)]
            removed += len(drop) if db == "paths" else 0
            pending.extend(drop)
            while len(pending) >= chunk:
                rest = pending[chunk:]
                del pending[chunk:]
                flush()
                pending.extend(rest)
    if pending:
        flush()
    return removed
