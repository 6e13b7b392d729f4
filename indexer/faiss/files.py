"""Save and load FAISS files with their sidecar.

:func:`save_atomic` writes the index with :func:`retrieval.atomic.atomic_write`, then a sidecar
``<file>.json`` that records the store generation the file covers plus its size and CRC32;
:func:`load` returns ``generation=None`` when the sidecar is missing or does not match the file
(the caller then rebuilds the index from the store).

Both files are read as untrusted (indexes are shared): regular files only, no symbolic links, the
sidecar capped in size, and the index checked against its sidecar's size and CRC and walked
(:mod:`indexer.faiss.header`) before faiss sees a byte of it.
"""

from __future__ import annotations

import errno
import os
import zlib

import numpy as np

from retrieval.atomic import atomic_write, atomic_write_json, disk_full, open_nofollow, remove_stale_temps
from retrieval.errors import IndexCorrupt, IndexNotFound, KgclipError
from retrieval.safefile import MB, open_regular, read_json_capped

from .build import to_cpu
from .choose import IndexChoice
from .header import StructureError, check_structure

SIDECAR_FORMAT = 1
MAX_SIDECAR_BYTES = 1 * MB


def _sidecar(path: str) -> str:
    return str(path) + ".json"


def _crc_file(path: str) -> tuple[int, int]:
    crc, size = 0, 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return crc, size


def _write_index(index, path: str) -> tuple[int, int]:
    """Serialise ``index`` into the (fresh, empty) temp file ``path`` -> (crc32, size).

    The bytes go through a descriptor opened with ``O_NOFOLLOW`` (faiss would ``fopen`` the name and
    follow a link swapped in meanwhile), and the CRC is taken on the way, without reading it back.
    """
    import faiss

    fd = open_nofollow(path, os.O_WRONLY | os.O_TRUNC)
    state = {"crc": 0, "size": 0}

    def put(chunk) -> int:
        view = memoryview(chunk)
        state["crc"] = zlib.crc32(view, state["crc"])
        state["size"] += len(view)
        while view:
            view = view[os.write(fd, view):]
        return len(chunk)

    try:
        writer = faiss.PyCallbackIOWriter(put)
        try:
            faiss.write_index(index, writer)
        finally:
            del writer  # flushes its buffer
    except RuntimeError as e:  # faiss's own failure (a full disk reads "No space left on device"); atomic_write
        # names the final file in its DiskFull
        if disk_full(e, path) is not None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
        raise OSError(errno.EIO, f"faiss cannot write the index: {str(e).splitlines()[0]}") from None
    finally:
        os.close(fd)
    return state["crc"], state["size"]


def save_atomic(index, path, generation: int, meta: dict | None = None) -> None:
    """Write ``index`` to ``path`` atomically and record the store generation
    (and ``meta``, e.g. the choice and tuned parameters) in ``path + '.json'``.

    A crash at any point leaves the previous file readable; a crash between the
    two renames leaves a sidecar that does not match the file, which
    :func:`load` reports as ``generation=None`` (stale: rebuild).
    """
    index = to_cpu(index)
    path = os.fspath(path)
    d, base = os.path.split(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    remove_stale_temps(d, base)  # the index file's and the sidecar's (".<base>.json.*.tmp")
    written: dict = {}

    def write(tmp: str) -> None:
        written["crc32"], written["size"] = _write_index(index, tmp)

    atomic_write(path, write)
    info = {"format": SIDECAR_FORMAT, "generation": int(generation), "ntotal": int(index.ntotal),
            "dim": int(index.d), "size": written["size"], "crc32": written["crc32"], "meta": meta or {}}
    atomic_write_json(_sidecar(path), info, default=_json_default)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, IndexChoice):
        return o.to_dict()
    raise TypeError(type(o).__name__)


def read_meta(path) -> dict | None:
    """The sidecar of a saved index (generation, ntotal, size, crc32, meta), or
    None when missing, unreadable or not a regular file. Does not read the index itself."""
    try:
        info = read_json_capped(_sidecar(os.fspath(path)), MAX_SIDECAR_BYTES, "FAISS sidecar", max_depth=16,
                                max_values=100_000, nofollow=True)
    except KgclipError:
        return None
    if not isinstance(info, dict) or info.get("format") != SIDECAR_FORMAT:
        return None
    for key in ("generation", "ntotal", "size", "crc32"):
        v = info.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return None
    return info


def load(path, verify: bool = True, dim: int | None = None, ntotal: int | None = None):
    """Read a saved index -> ``(index, generation)``.

    With ``verify``, a file whose sidecar is missing or whose size/CRC do not match is never handed to
    faiss: ``(None, None)`` (of unknown coverage: rebuild it from the store). Before faiss reads a file its
    structure is walked (:func:`indexer.faiss.header.check_structure`), so no declared length exceeds
    the file; ``dim`` and ``ntotal``, when given (the manifest's dimension, the store's count), must
    match what the file declares. A file that is not a regular file (a FIFO, a link), or fails these
    checks, raises :class:`IndexCorrupt` naming it.
    """
    path = os.fspath(path)
    if not os.path.lexists(path):
        raise IndexNotFound(f"{path}: FAISS index file is missing")
    info = read_meta(path)
    with open_regular(path, "FAISS index", nofollow=True, error=IndexCorrupt) as fh:
        size = os.fstat(fh.fileno()).st_size
        verified = not verify
        if verify and info is not None and info["size"] == size:
            crc = 0
            while True:
                chunk = fh.read(1 << 22)
                if not chunk:
                    break
                crc = zlib.crc32(chunk, crc)
            verified = crc == info["crc32"]
            fh.seek(0)
        try:
            d, n = check_structure(fh, size)
        except StructureError as e:
            raise IndexCorrupt(f"{path}: not a FAISS index kgclip wrote ({e})") from None
        if not verified:
            return None, None  # of unknown coverage: never handed to faiss
        for what, want, got in (("dimension", dim, d), ("vector count", ntotal, n)):
            if want is not None and want != got:
                raise IndexCorrupt(f"{path}: the FAISS index declares {what} {got}, the index has {want}")
        fh.seek(0)
        try:
            import faiss

            index = faiss.read_index(faiss.PyCallbackIOReader(fh.read))
        except Exception as exc:
            raise IndexCorrupt(f"{path}: not a readable FAISS index ({str(exc).splitlines()[0][:120]})") from None
    generation = None
    if info is not None and info.get("ntotal") == index.ntotal and (not verify or info.get("size") == size):
        generation = info.get("generation")
    return index, generation
