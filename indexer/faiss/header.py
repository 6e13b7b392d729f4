"""Check a FAISS file's structure before faiss reads it (:func:`check_structure`).

faiss allocates every array at the length the file declares before it reads the array, and trusts
graph links and codebook sizes at search time: a 146-byte file declaring 4 GiB of vectors costs 4 GiB,
and an HNSW link past the end crashes the process. kgclip only writes four layouts (``IDMap,Flat``,
``IDMap,HNSW32``, ``IVF{n},Flat``, ``IVF{n},PQ{m}x8``; :mod:`indexer.faiss.choose`), so this walks
those (in faiss's own order: ``faiss/impl/index_read.cpp``) and refuses any other: every declared
length must fit in the bytes left in the file, dimensions and counts must agree with each other and
with what the caller expects (the metric is :mod:`indexer.faiss.check`'s), HNSW links must point at vectors,
and the work faiss does on load (IVF-PQ's precomputed table) must be bounded. A refused file is one
kgclip did not write: the caller derives it again from the store.
"""

from __future__ import annotations

import struct

import numpy as np

MAX_NLIST = 1 << 16  # indexer.faiss.choose.IVF_MAX_NLIST
MAX_EF = 1 << 14  # the search parameter an HNSW file carries (tuning stays at or below 4096)
MAX_DIM = 1 << 16
METRIC_INNER_PRODUCT, METRIC_L2 = 0, 1
TABLE_MIN_BUDGET = 256 << 20  # IVF-PQ's precomputed table: at most this, or 8x the file's size
CHUNK = 1 << 22


class StructureError(ValueError):
    """The file is not one kgclip wrote (the message says what is wrong)."""


class _Reader:
    def __init__(self, fh, size: int):
        self.fh, self.size = fh, size

    def left(self) -> int:
        return self.size - self.fh.tell()

    def take(self, fmt: str):
        n = struct.calcsize("<" + fmt)
        b = self.fh.read(n)
        if len(b) < n:
            raise StructureError("the file ends early (truncated)")
        out = struct.unpack("<" + fmt, b)
        return out if len(out) > 1 else out[0]

    def fourcc(self) -> str:
        return self.fh.read(4).decode("latin-1")

    def vector_len(self, itemsize: int, what: str) -> int:
        """A faiss vector's declared length (in items), checked against the bytes left; not read."""
        n = self.take("Q")
        if n * itemsize > self.left():
            raise StructureError(f"{what} declares {n:,} entries ({n * itemsize:,} bytes), more than the "
                                 f"{self.left():,} bytes left in the file")
        return n

    def skip(self, nbytes: int) -> None:
        if nbytes > self.left():
            raise StructureError("the file ends early (truncated)")
        self.fh.seek(nbytes, 1)

    def array(self, n: int, dtype, what: str) -> np.ndarray:
        """Read ``n`` items (already checked to fit)."""
        dt = np.dtype(dtype).newbyteorder("<")
        b = self.fh.read(n * dt.itemsize)
        if len(b) < n * dt.itemsize:
            raise StructureError(f"{what}: the file ends early (truncated)")
        return np.frombuffer(b, dt)


def _header(r: _Reader, what: str) -> tuple[int, int]:
    d, ntotal, _, _, _trained, metric = r.take("iqqq?i")
    if metric > 1:
        r.take("f")
    if not 0 < d <= MAX_DIM or ntotal < 0:
        raise StructureError(f"{what} declares dimension {d} and {ntotal} vectors")
    if metric not in (METRIC_INNER_PRODUCT, METRIC_L2):  # which of the two: indexer.faiss.check's problems()
        raise StructureError(f"{what} uses metric {metric}")
    return d, ntotal


def _flat(r: _Reader) -> tuple[int, int]:
    d, ntotal = _header(r, "the flat index")
    n = r.vector_len(4, "the flat index's vectors")  # faiss's READXBVECTOR: a count of floats
    if n != ntotal * d:
        raise StructureError(f"the flat index holds {n} floats for {ntotal} vectors of dimension {d}")
    r.skip(n * 4)
    return d, ntotal


def _check_int_range(r: _Reader, n: int, lo: int, hi: int, what: str) -> None:
    """Read ``n`` int32 values in chunks and check each is in [lo, hi)."""
    while n:
        step = min(n, CHUNK)
        a = r.array(step, np.int32, what)
        if len(a) and (int(a.min()) < lo or int(a.max()) >= hi):
            raise StructureError(f"{what} point outside 0..{hi - 1}")
        n -= step


def _hnsw(r: _Reader) -> tuple[int, int]:
    d, ntotal = _header(r, "the HNSW index")
    r.skip(8 * r.vector_len(8, "HNSW level probabilities"))
    ncum = r.vector_len(4, "HNSW neighbours per level")
    cum = r.array(ncum, np.int32, "HNSW neighbours per level")
    nlev = r.vector_len(4, "HNSW levels")
    levels = r.array(nlev, np.int32, "HNSW levels")
    noff = r.vector_len(8, "HNSW offsets")
    offsets = r.array(noff, np.uint64, "HNSW offsets")
    nnb = r.vector_len(4, "HNSW links")
    if nlev != ntotal or noff != ntotal + 1 or (ncum and np.any(np.diff(cum.astype(np.int64)) < 0)):
        raise StructureError(f"the HNSW graph's tables do not match its {ntotal} vectors")
    if ntotal and (int(levels.min()) < 1 or int(levels.max()) >= ncum):
        raise StructureError("an HNSW level is out of range")
    if ntotal and (int(offsets[0]) != 0 or np.any(np.diff(offsets.astype(np.int64)) < 0)
                   or int(offsets[-1]) != nnb
                   or np.any(np.diff(offsets.astype(np.int64)) != cum[levels].astype(np.int64))):
        raise StructureError("the HNSW link offsets do not match its levels")
    _check_int_range(r, nnb, -1, max(ntotal, 1), "HNSW links")
    entry, max_level, _efc, ef_search, _ = r.take("iiiii")
    if not (-1 <= entry < max(ntotal, 1)) or not (-1 <= max_level < max(ncum, 1)) \
            or not 0 < ef_search <= MAX_EF:
        raise StructureError(f"the HNSW entry point {entry}, top level {max_level} or efSearch {ef_search} "
                             "is out of range")
    sd, sn = _walk(r, allowed=("IxFI",))
    if (sd, sn) != (d, ntotal):
        raise StructureError("the HNSW graph and its stored vectors disagree")
    return d, ntotal


def _invlists(r: _Reader, nlist: int, code_size: int) -> int:
    if r.fourcc() != "ilar":
        raise StructureError("the inverted lists are not stored in the file")
    n, cs = r.take("QQ")
    if n != nlist or cs != code_size:
        raise StructureError(f"the inverted lists ({n} lists, {cs}-byte codes) do not match the index "
                             f"({nlist} lists, {code_size}-byte codes)")
    kind = r.fourcc()
    if kind == "full":
        m = r.vector_len(8, "inverted list sizes")
        if m != nlist:
            raise StructureError("the inverted list sizes do not match the number of lists")
        sizes = r.array(m, np.uint64, "inverted list sizes").astype(np.int64)
    elif kind == "sprs":
        m = r.vector_len(8, "inverted list sizes")
        pairs = r.array(m, np.uint64, "inverted list sizes").astype(np.int64)
        sizes = np.zeros(nlist, np.int64)
        if m % 2 or (m and int(pairs[0::2].max()) >= nlist):
            raise StructureError("the sparse inverted list sizes are out of range")
        sizes[pairs[0::2]] = pairs[1::2]
    else:
        raise StructureError("unknown inverted list layout")
    if np.any(sizes < 0) or int(sizes.sum()) * (code_size + 8) > r.left():
        raise StructureError(f"the inverted lists declare {int(sizes.sum()):,} vectors, "
                             "more than the file holds")
    r.skip(int(sizes.sum()) * (code_size + 8))
    return int(sizes.sum())


def _ivf(r: _Reader, pq: bool) -> tuple[int, int]:
    d, ntotal = _header(r, "the IVF index")
    nlist, nprobe = r.take("QQ")
    if not 0 < nlist <= MAX_NLIST or not 0 < nprobe <= nlist:
        raise StructureError(f"the IVF index declares {nlist:,} lists (at most {MAX_NLIST:,}) and probes "
                             f"{nprobe:,} of them")
    qd, qn = _walk(r, allowed=("IxFI",))
    if qd != d or qn != nlist:
        raise StructureError("the IVF coarse quantizer does not match the index")
    if r.take("b") != 0:  # direct map: kgclip never keeps one
        raise StructureError("the IVF index keeps a direct map (kgclip never writes one)")
    r.skip(8 * r.vector_len(8, "the IVF direct map"))
    code_size = d * 4
    if pq:
        _by_residual, code_size = r.take("?Q")
        pd, m, nbits = r.take("QQQ")
        if pd != d or not 0 < m <= d or d % m or nbits != 8 or code_size != m:
            raise StructureError(f"the product quantizer (d={pd}, M={m}, nbits={nbits}) does not match "
                                 "the index")
        nc = r.vector_len(4, "the PQ centroids")
        if nc != d * (1 << nbits):
            raise StructureError("the PQ centroids do not match the quantizer")
        r.skip(4 * nc)
        table = nlist * m * (1 << nbits) * 4  # faiss precomputes this table on load (by_residual)
        if table > max(TABLE_MIN_BUDGET, 8 * r.size):
            raise StructureError(f"the IVF-PQ index would precompute a {table:,}-byte table")
    if _invlists(r, nlist, code_size) != ntotal:
        raise StructureError("the inverted lists do not hold the declared number of vectors")
    return d, ntotal


def _idmap(r: _Reader) -> tuple[int, int]:
    d, ntotal = _header(r, "the id map")
    sd, sn = _walk(r, allowed=("IxFI", "IHNf"))
    n = r.vector_len(8, "the id map")
    if (sd, sn) != (d, ntotal) or n != ntotal:
        raise StructureError("the id map does not match the index it wraps")
    r.skip(8 * n)
    return d, ntotal


_TYPES = {"IxFI": _flat, "IHNf": _hnsw, "IxMp": _idmap,
          "IwFl": lambda r: _ivf(r, pq=False), "IwPQ": lambda r: _ivf(r, pq=True)}


def _walk(r: _Reader, allowed=("IxMp", "IwFl", "IwPQ")) -> tuple[int, int]:
    h = r.fourcc()
    if h == "IxF2" and "IxFI" in allowed:  # the same layout (an L2 flat index; check.problems says so)
        h = "IxFI"
    if h not in allowed:
        raise StructureError(f"index type {h!r} is not one kgclip writes here")
    return _TYPES[h](r)


def check_structure(fh, size: int) -> tuple[int, int]:
    """Walk a FAISS file (an open binary file object of ``size`` bytes) -> (dim, ntotal); raises
    :class:`StructureError`. Leaves the file position at the end of the walk."""
    r = _Reader(fh, size)
    d, ntotal = _walk(r)
    if r.left():
        raise StructureError(f"{r.left()} unexpected bytes follow the index")
    return d, ntotal
