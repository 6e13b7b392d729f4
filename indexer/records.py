"""Decode and check one LMDB record: junk bytes become a :class:`BadRecord` naming the database and key.

An index folder may come from anyone, so no value in ``store.lmdb`` is trusted: each decoder here
checks the type and shape the readers rely on and raises one clear line (``store.lmdb items[12]: not
JSON``) instead of a ``JSONDecodeError`` or ``struct.error`` deep in a search. ``verify --repair``
catches them per record and drops what is bad; readers turn them into
:class:`retrieval.errors.IndexCorrupt` that names ``kgclip verify --repair``.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from retrieval.errors import IndexCorrupt

REPAIR_HINT = "run `kgclip verify --repair`"


class BadRecord(IndexCorrupt):
    """One record of one database cannot be used."""

    def __init__(self, db: str, key, why: str):
        self.db, self.key, self.why = db, show_key(db, key), why
        super().__init__(f"store.lmdb {db}[{self.key}]: {why}; {REPAIR_HINT}")


def show_key(db: str, key) -> str:
    """A key as a person reads it: an id for id-keyed databases, else its text (cut short)."""
    b = bytes(key) if not isinstance(key, (str, int)) else key
    if isinstance(b, bytes):
        if db in ("items", "vecs", "capvecs", "profiles") and len(b) == 8:
            return str(struct.unpack(">Q", b)[0])
        b = b.decode("utf-8", "backslashreplace")
    s = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(b))
    return s if len(s) <= 80 else s[:77] + "..."


def id_of(db: str, key) -> int:
    """The id an id-keyed database's key holds (8 bytes, big-endian)."""
    b = bytes(key)
    if len(b) != 8:
        raise BadRecord(db, b, f"key is {len(b)} bytes, not an 8-byte id")
    return struct.unpack(">Q", b)[0]


def text_key(db: str, key) -> str:
    """A path or failure key: UTF-8 text."""
    try:
        return bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRecord(db, key, "key is not UTF-8") from None


def json_value(db: str, key, raw) -> object:
    """A JSON value (``None`` for a missing record)."""
    if raw is None:
        return None
    try:
        return json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRecord(db, key, f"value is not JSON ({len(bytes(raw))} bytes of junk)") from None


def item(key, raw) -> dict | None:
    """An ``items`` record: {id, path, sha256, aliases, ...} whose id matches its key."""
    rec = json_value("items", key, raw)
    if rec is None:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("path"), str) or not isinstance(rec.get("sha256"), str) \
            or not isinstance(rec.get("aliases", []), list) or not all(isinstance(a, str) for a in rec.get("aliases", [])):
        raise BadRecord("items", key, "not an item record (path, sha256 and aliases)")
    try:
        for text in [rec["path"], rec["sha256"], *rec.get("aliases", [])]:
            text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRecord("items", key, "a path in the record is not valid UTF-8") from None
    if rec.get("id") != id_of("items", key):
        raise BadRecord("items", key, f"record says id {str(rec.get('id'))[:20]}")
    rec.setdefault("aliases", [])
    return rec


def path(key, raw) -> dict | None:
    """A ``paths`` record: {id, size, mtime_ns, sha256, captions, cap_ids, meta}."""
    rec = json_value("paths", key, raw)
    if rec is None:
        return None
    ok = isinstance(rec, dict) and _is_id(rec.get("id")) and _int_list(rec.get("cap_ids", [])) \
        and isinstance(rec.get("captions", []), list) and isinstance(rec.get("meta", {}), dict) \
        and _is_int(rec.get("size", 0)) and _is_int(rec.get("mtime_ns", 0))
    if not ok:
        raise BadRecord("paths", key, "not a path record (id, size, mtime_ns, captions, cap_ids)")
    return rec


def failure(key, raw) -> dict | None:
    rec = json_value("fails", key, raw)
    if rec is not None and not (isinstance(rec, dict) and isinstance(rec.get("reason"), str)):
        raise BadRecord("fails", key, "not a failure record")
    return rec


def item_ref(db: str, key, raw) -> int:
    """An 8-byte item id stored as a value (``hashes``)."""
    b = bytes(raw)
    if len(b) != 8:
        raise BadRecord(db, key, f"value is {len(b)} bytes, not an 8-byte item id")
    return struct.unpack(">Q", b)[0]


def vector(db: str, key, raw, dim: int, unit: bool = True) -> np.ndarray:
    """A float32 vector of ``dim`` values, finite (and of unit length, with ``unit``)."""
    b = bytes(raw)
    if len(b) != 4 * dim:
        raise BadRecord(db, key, f"vector is {len(b)} bytes, the model's {dim} dims need {4 * dim}")
    v = np.frombuffer(b, np.float32)
    if not np.isfinite(v).all():
        raise BadRecord(db, key, "vector holds NaN or infinite values")
    if unit and abs(float(np.linalg.norm(v)) - 1.0) > 1e-3:
        raise BadRecord(db, key, f"vector has length {float(np.linalg.norm(v)):.3g}, not 1")
    return v


def caption_vector(key, raw, dim: int | None) -> tuple[int, np.ndarray | None]:
    """A ``capvecs`` value: (owner item id, vector) -- 8 bytes of item id, then float32 values."""
    b = bytes(raw)
    if len(b) < 8 or (len(b) - 8) % 4:
        raise BadRecord("capvecs", key, f"value is {len(b)} bytes: not an item id and a float32 vector")
    owner = struct.unpack(">Q", b[:8])[0]
    if dim is None:
        return owner, None
    return owner, vector("capvecs", key, b[8:], dim)


def profile(key, raw, top: int | None, n_classes: int | None) -> None:
    """A ``profiles`` value: ``top`` uint16 class indexes then ``top`` float16 probabilities."""
    b = bytes(raw)
    if len(b) % 4 or not b or (top is not None and len(b) != 4 * top):
        want = f"{4 * top}" if top is not None else "a multiple of 4"
        raise BadRecord("profiles", key, f"concept profile is {len(b)} bytes, not {want}")
    k = len(b) // 4
    cls = np.frombuffer(b[: 2 * k], "<u2")
    p = np.frombuffer(b[2 * k :], "<f2").astype(np.float32)
    if n_classes is not None and int(cls.max()) >= n_classes:
        raise BadRecord("profiles", key, f"concept profile names class {int(cls.max())} of {n_classes}")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1.001:
        raise BadRecord("profiles", key, "concept profile probabilities are not in [0, 1]")


def meta_int(key: str, raw) -> int:
    """An integer counter in ``meta`` (generation, next_id, next_cap_id); missing is 0."""
    v = json_value("meta", key.encode(), raw)
    if v is None:
        return 0
    if not _is_int(v) or v < 0:
        raise BadRecord("meta", key.encode(), f"{key} is not a non-negative integer")
    return v


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_list(v) -> bool:
    return isinstance(v, list) and all(_is_id(x) for x in v)


def _is_id(v) -> bool:
    return _is_int(v) and 0 <= v < 1 << 63
