"""The one atomic file write: every file kgclip creates goes through :func:`atomic_write`.

A temp file beside the target (created with ``O_EXCL | O_NOFOLLOW``, so a planted symlink is never
followed), written, chmod 0644, fsynced, renamed over the target (``os.replace`` replaces a symlink
itself, never what it points to) and the folder fsynced. A crash at any point leaves the previous
file whole; :func:`remove_stale_temps` clears what a killed earlier write left. A folder written as
one piece (a knowledge graph) goes through :func:`atomic_dir`.

Files written in place (a lock file) are opened with :func:`open_nofollow`; :func:`refuse_link` checks
a path before a library opens it by name (LMDB); :func:`disk_full` turns an out-of-space failure into
:class:`retrieval.errors.DiskFull` naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from .errors import DiskFull, KgclipError, UnsafePath

Data = Union[bytes, str, Callable[[str], None]]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
NEARLY_FULL = 1 << 20  # bytes free under which an I/O error while writing is taken for a full disk


def _link_error(path: str) -> UnsafePath:
    return UnsafePath(errno.ELOOP, f"{path} is a symbolic link: kgclip never writes through a link inside an "
                                   "index (remove it and run again)", path)


def refuse_link(path: str | os.PathLike, want: str = "file") -> bool:
    """Before a library opens ``path`` by name for writing: False when it does not exist, True when it
    is a plain ``want`` ("file" or "dir"); :class:`UnsafePath` for a symbolic link (dangling or not) or
    anything else. Never follows a link."""
    path = os.fspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise _link_error(path)
    if not (stat.S_ISDIR(st.st_mode) if want == "dir" else stat.S_ISREG(st.st_mode)):
        raise UnsafePath(errno.EINVAL, f"{path} is not a regular {'folder' if want == 'dir' else 'file'}: "
                                       "kgclip will not write to it (remove it and run again)", path)
    return True


def open_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a symbolic link at ``path`` (``O_NOFOLLOW``, so a link is never
    created through either) and accepts only a regular file (opened non-blocking, so a FIFO cannot
    hang it); :class:`UnsafePath` otherwise."""
    path = os.fspath(path)
    try:
        fd = os.open(path, flags | _NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as e:
        if e.errno == errno.ELOOP or (e.errno in (errno.EEXIST, errno.EMLINK) and os.path.islink(path)):
            raise _link_error(path) from None
        if e.errno in (errno.EISDIR, errno.ENXIO):  # a folder, a socket
            raise UnsafePath(e.errno, f"{path} is not a regular file: kgclip will not write to it "
                                      "(remove it and run again)", path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(errno.EINVAL, f"{path} is not a regular file: kgclip will not write to it "
                                       "(remove it and run again)", path)
    return fd


def disk_full(exc: BaseException, path: str | os.PathLike) -> DiskFull | None:
    """:class:`DiskFull` naming ``path`` when ``exc`` (an OSError, or a library's error such as faiss's
    RuntimeError or LMDB's short-write EIO) means the device ran out of space; else None."""
    if isinstance(exc, DiskFull):
        return exc
    path = os.fspath(path)
    full = getattr(exc, "errno", None) in _FULL_ERRNOS or "no space left" in str(exc).lower()
    if not full and (getattr(exc, "errno", None) == errno.EIO or "input/output error" in str(exc).lower()):
        try:  # LMDB reports a short write on a full disk as EIO
            sv = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
            full = sv.f_bavail * sv.f_frsize < NEARLY_FULL
        except OSError:
            pass
    if not full:
        return None
    return DiskFull(errno.ENOSPC, f"no space left on device writing {path}: free some space and run the "
                                  "command again (what was written before is kept)", path)


def temp_name(path: str | os.PathLike) -> str:
    """A fresh temp name beside ``path``: ``.<name>.<random>.tmp`` (what remove_stale_temps clears)."""
    path = os.fspath(path)
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.{secrets.token_hex(6)}.tmp")


def fsync_dir(d: str | os.PathLike) -> None:
    """fsync a folder so a rename in it survives a crash (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(os.fspath(d), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def remove_stale_temps(d: str | os.PathLike, base: str) -> None:
    """Delete the temp files a killed earlier write of ``base`` left in ``d`` (callers hold a lock
    or own the folder, so no other write of ``base`` is in flight)."""
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        if n.startswith(f".{base}.") and n.endswith(".tmp"):
            try:
                os.unlink(os.path.join(d, n))
            except OSError:
                pass


def atomic_write(path: str | os.PathLike, data: Data, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically.

    ``data`` is bytes, text (UTF-8) or a function that writes the file at the temp path it is given
    (``faiss.write_index``, ``np.save``, an ONNX export). ``durable`` fsyncs the file and the folder
    (caches that can be rebuilt may skip it).
    """
    path = os.fspath(path)
    try:
        _atomic_write(path, data, mode, durable)
    except OSError as e:
        full = None if isinstance(e, KgclipError) else disk_full(e, path)
        if full is None:
            raise
        raise full from None


def _atomic_write(path: str, data: Data, mode: int, durable: bool) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode)
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
            fd = os.open(tmp, os.O_RDWR | _NOFOLLOW)
        else:
            buf = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view):]
        os.fchmod(fd, mode)  # a writer function may have made the file 0600
        if durable:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        tmp = None
        if durable:
            fsync_dir(d)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write_json(path: str | os.PathLike, obj: Any, *, durable: bool = True, **dump_kw) -> None:
    """:func:`atomic_write` of ``obj`` as JSON (UTF-8, a final newline)."""
    dump_kw.setdefault("ensure_ascii", False)
    dump_kw.setdefault("indent", 1)
    atomic_write(path, json.dumps(obj, **dump_kw) + "\n", durable=durable)



@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A folder that appears at ``path`` whole or not at all.

    Yields a fresh temp folder beside ``path`` (``.<name>.tmp-*``, with the umask's permissions) to
    fill. When the block ends without an error its files are fsynced and it is renamed to ``path``; a
    folder already there is moved aside first and then deleted. On an error it is deleted.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; these folders are shared data
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
