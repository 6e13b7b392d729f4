"""The one atomic file write: every file kgclip creates goes through :func:`atomic_write`.

A temp file beside the target (created with ``O_EXCL | O_NOFOLLOW``, so a planted symlink is never
followed), written, chmod 0644, fsynced, renamed over the target (``os.replace`` replaces a symlink
itself, never what it points to) and the folder fsynced. A crash at any point leaves the previous
file whole; :func:`remove_stale_temps` clears what a killed earlier write left. A folder written as
one piece (a knowledge graph) goes through :func:`atomic_dir`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Union

Data = Union[bytes, str, Callable[[str], None]]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


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
