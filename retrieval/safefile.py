"""Read untrusted files without hanging or over-allocating: the one place kgclip opens a file it reads
from an index folder, a knowledge-graph folder or a query image.

Shared indexes and graphs come from other people, so a file there can be a FIFO (reading it blocks
forever), a device, a symbolic link out of the folder, a 3 GB "JSON" file or a gzip bomb.
:func:`open_regular` opens with ``O_NONBLOCK`` (a FIFO without a writer opens at once instead of
blocking), checks with ``fstat`` that it is a regular file, and with ``nofollow`` refuses a symbolic
link (``O_NOFOLLOW``: for files inside an index, which kgclip itself writes). The readers below cap
what they read and decompress and refuse nesting deeper than asked. Every refusal is a ``KgclipError``
of the caller's class whose message names the file: one line for the user.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import stat
import zipfile
import zlib
from typing import Any, BinaryIO

import numpy as np

from .errors import KgclipError
from .text import TooDeep, json_depth, loads_bounded  # noqa: F401 - re-exported

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

MB = 1 << 20

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISDIR, "a folder"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def human(n: int) -> str:
    """A byte count for messages: 3.0 GB, 146 bytes."""
    for unit, size in (("GB", 1 << 30), ("MB", MB), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def open_regular(path, what: str = "file", *, nofollow: bool = False, max_bytes: int | None = None,
                 error: type[KgclipError] = KgclipError) -> BinaryIO:
    """Open ``path`` for binary reading, refusing anything but a regular file (without blocking).

    ``what`` names the file in messages ("FAISS index", "manifest"); ``nofollow``: refuse a symbolic
    link (files inside an index); ``max_bytes``: refuse a larger file before reading any of it.
    Raises ``error`` (a :class:`KgclipError` class) with one line naming the file.
    """
    p = os.fspath(path)
    flags = os.O_RDONLY | _NONBLOCK | _CLOEXEC | (_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise error(f"{p}: no such {what}") from None
    except OSError as e:
        if nofollow and e.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(p):
            raise error(f"{p}: the {what} is a symbolic link; kgclip does not follow links inside an index "
                        "(replace it with the file itself)") from None
        raise error(f"{p}: cannot open the {what} ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{p}: the {what} is {_kind(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{p}: the {what} is {human(st.st_size)}, more than the {human(max_bytes)} "
                        f"kgclip reads from such a file")
        if _NONBLOCK:
            try:  # a regular file never blocks, but leave the descriptor in its ordinary mode
                import fcntl

                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_NONBLOCK)
            except (ImportError, OSError):
                pass
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(paths, what: str = "file", error: type[KgclipError] = KgclipError) -> None:
    """Refuse any of ``paths`` that exists and is not a regular file or is a symbolic link (``lstat``: for
    files inside an index that a library opens itself, e.g. LMDB's data.mdb, which would block on a FIFO)."""
    for path in paths:
        p = os.fspath(path)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise error(f"{p}: cannot read the {what} ({e.strerror or e})") from None
        if stat.S_ISLNK(st.st_mode):
            raise error(f"{p}: the {what} is a symbolic link; kgclip does not follow links inside an index "
                        "(replace it with the file itself)")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{p}: the {what} is {_kind(st.st_mode)}, not a regular file")


def read_bytes_capped(path, max_bytes: int, what: str = "file", *, nofollow: bool = False,
                      error: type[KgclipError] = KgclipError) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked before reading and while reading:
    a file that grows meanwhile is refused too)."""
    with open_regular(path, what, nofollow=nofollow, max_bytes=max_bytes, error=error) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{os.fspath(path)}: the {what} is more than the {human(max_bytes)} kgclip reads from "
                    "such a file")
    return data


def gunzip_capped(data: bytes, max_bytes: int, path, what: str = "file",
                  error: type[KgclipError] = KgclipError) -> bytes:
    """Decompress gzip ``data`` to at most ``max_bytes`` (a gzip bomb is refused after ``max_bytes``, not
    after filling memory)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as gz:
            out = gz.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise error(f"{os.fspath(path)}: unreadable {what} ({e})") from None
    if len(out) > max_bytes:
        raise error(f"{os.fspath(path)}: the {what} decompresses to more than {human(max_bytes)} "
                    "(a damaged or hostile file)")
    return out


def parse_json_capped(data: bytes | str, path, what: str = "file", *, max_depth: int = 32,
                      max_values: int | None = None, error: type[KgclipError] = KgclipError) -> Any:
    """Parse JSON text already bounded in size; refuses nesting deeper than ``max_depth`` and, with
    ``max_values``, more than about that many values (each costs ~50-70 bytes once parsed, so a small
    file of ``[[],[],...]`` cannot take gigabytes)."""
    p = os.fspath(path)
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if max_values is not None:
        approx = raw.count(b",") + raw.count(b"[") + raw.count(b"{")  # >= values - 1 (commas in strings too)
        if approx > max_values and _values_outside_strings(raw, max_values) > max_values:
            raise error(f"{p}: the {what} holds more than {max_values:,} JSON values "
                        "(a damaged or hostile file)")
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise error(f"{p}: the {what} is nested too deeply (more than {max_depth} levels)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{p}: malformed {what} ({e})") from None
    if json_depth(obj) > max_depth:
        raise error(f"{p}: the {what} is nested too deeply (more than {max_depth} levels)")
    return obj


def read_json_capped(path, max_bytes: int, what: str = "file", *, max_depth: int = 32,
                     max_values: int | None = None, nofollow: bool = False, gz: bool = False,
                     max_unpacked: int | None = None, error: type[KgclipError] = KgclipError) -> Any:
    """Read and parse a JSON file (``gz``: gzip-compressed, decompressed to at most ``max_unpacked``)."""
    data = read_bytes_capped(path, max_bytes, what, nofollow=nofollow, error=error)
    if gz:
        data = gunzip_capped(data, max_unpacked or max_bytes, path, what, error=error)
    return parse_json_capped(data, path, what, max_depth=max_depth, max_values=max_values, error=error)


MAX_QUOTES_SCANNED = 2_000_000  # past this many '"', a file is refused rather than scanned (seconds)


def _values_outside_strings(raw: bytes, limit: int) -> int:
    """About how many JSON values ``raw`` holds, not counting separators inside strings (stops past
    ``limit``). Linear in the number of quote characters, so a file with millions of them counts as
    too many values instead of taking seconds."""
    if raw.count(b'"') > MAX_QUOTES_SCANNED:
        return limit + 1
    n, pos, end = 0, 0, len(raw)
    while pos < end:
        q = raw.find(b'"', pos)
        stop = end if q < 0 else q
        n += raw.count(b",", pos, stop) + raw.count(b"[", pos, stop) + raw.count(b"{", pos, stop)
        if n > limit or q < 0:
            return n
        pos = q + 1
        while True:  # to the closing quote: one not preceded by an odd run of backslashes
            q = raw.find(b'"', pos)
            if q < 0:
                return n  # unterminated: json.loads reports it
            seg = raw[pos:q]
            pos = q + 1
            if (len(seg) - len(seg.rstrip(b"\\"))) % 2 == 0:
                break
    return n


def load_npz_capped(path, max_unpacked: int, what: str = "file", *, nofollow: bool = False,
                    error: type[KgclipError] = KgclipError) -> dict:
    """The arrays of an ``.npz`` file, never unpickled, unpacking at most ``max_unpacked`` bytes in all.

    Each member's size (from the zip directory, enforced while reading) and each array's declared shape
    are checked before anything is allocated, so a zip bomb or a header declaring 10^12 elements is
    refused with one line instead of filling memory.
    """
    p = os.fspath(path)
    out: dict = {}
    try:
        with open_regular(p, what, nofollow=nofollow, error=error) as fh, zipfile.ZipFile(fh) as zf:
            members = [m for m in zf.infolist() if m.filename.endswith(".npy")]
            total = sum(m.file_size for m in members)
            if total > max_unpacked:
                raise error(f"{p}: the {what} unpacks to {human(total)}, more than the {human(max_unpacked)} "
                            "kgclip reads from such a file")
            for m in members:
                data = zf.read(m)
                bio = io.BytesIO(data)
                version = np.lib.format.read_magic(bio)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(bio)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(bio)
                count = 1
                for s in shape:
                    count *= int(s)
                if dtype.hasobject or count * dtype.itemsize != len(data) - bio.tell():
                    raise error(f"{p}: array {m.filename[:-4]!r} in the {what} declares {count:,} "
                                f"{dtype} values, which its {human(len(data))} do not hold")
                arr = np.frombuffer(data, dtype, count, offset=bio.tell())  # read-only, no second copy
                out[m.filename[:-4]] = arr.reshape(shape, order="F" if fortran else "C")
    except KgclipError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError, zlib.error) as e:
        raise error(f"{p}: unreadable {what} ({e})") from None
    return out
