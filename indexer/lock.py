"""The index's writer lock: ``INDEX/write.lock`` (:class:`WriteLock`).

One writer at a time (build, update, ``verify --repair``, a reader saving FAISS files it derived);
readers only ask who holds it (:meth:`WriteLock.holder`), which neither creates nor writes the file.
The lock file is never followed through a symbolic link.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from retrieval.atomic import open_nofollow
from retrieval.errors import IndexError_, IndexLocked, KgclipError

LOCK_FILE = "write.lock"
LOCK_TRIES = 5  # attempts 10 ms apart before "locked by pid N"


class WriteLock:
    """An exclusive, non-blocking writer lock (fcntl) on ``INDEX/write.lock`` holding the writer's pid.

    The kernel drops the lock when the process dies, so a SIGKILLed build never
    leaves a stale lock behind.
    """

    def __init__(self, index_dir: str):
        self.path = os.path.join(index_dir, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> "WriteLock":
        """Take the lock (:class:`IndexLocked` when a writer holds it). A symbolic link (dangling or
        not) or a non-regular file at ``write.lock`` is refused (:class:`UnsafePath`), never followed."""
        try:
            fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            if isinstance(e, KgclipError) or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise IndexError_(f"{self.path}: cannot open the index for writing ({e.strerror}): the folder is "
                              "read-only to you (readers such as search and info still work)") from None
        for attempt in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                if attempt + 1 < LOCK_TRIES:  # a reader's holder() probe holds it for microseconds
                    time.sleep(0.01)
        else:
            pid = _read_pid(fd)
            os.close(fd)
            raise IndexLocked(
                f"index {os.path.dirname(self.path)} is locked by pid {pid} (another build or update is running)"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as e:  # the pid is only for the "locked by" message; a full disk shows up later
            if e.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                os.close(fd)
                raise
        self.fd = fd
        return self

    def holder(self) -> str | None:
        """Without writing or creating anything: the pid (or "?") of the writer holding the lock, or
        None when no writer does (a missing lock file; one that cannot be opened read-only without
        following a link counts as free)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    return None
                return _read_pid(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def try_acquire(self) -> bool:
        try:
            self.acquire()
            return True
        except IndexLocked:
            return False

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_pid(fd: int) -> str:
    """The pid a lock file holds, or "?" (its bytes come from the folder: digits only are shown)."""
    try:
        raw = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return "?"
    return raw if raw.isdigit() else "?"
