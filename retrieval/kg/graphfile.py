"""The graph directory's files: the compact on-disk form shared by the shipped WordNet and imported
user graphs.

A graph is a directory holding three files:

``kg.json``
    metadata: format version, name, source, licence, counts, relation names
    and their inverses, and a content fingerprint (used to key caches).
``entities.json.gz``
    columnar JSON: ``ids``, ``names`` (display names, first is the main one),
    ``glosses`` (each one newline-joined string: parsing a few long strings is
    far faster than 100k small ones) and ``lemma_keys`` (normalised names).
``graph.npz``
    numpy arrays: one CSR pair (``R.indptr``, ``R.indices``) per stored
    relation, the lemma index (``lemmas.indptr/rows/counts``: entity rows per
    lemma key in sense order with tag counts) and optional per-entity arrays
    (``counts``, ``depth``, ``lexfile``,
    ``size``). Inverse relations are derived when the graph loads.

Files are written byte-for-byte deterministically (gzip and zip timestamps are
fixed) into a temporary sibling directory that is renamed into place
(:func:`retrieval.atomic.atomic_dir`), so a failed write never leaves a
half-written graph behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..atomic import atomic_dir
from ..errors import KGError
from ..safefile import (MB, gunzip_capped, load_npz_capped, parse_json_capped, read_bytes_capped,
                        read_json_capped)
from ..text import fold_space

FORMAT_VERSION = 1
META_FILE = "kg.json"
ENTITIES_FILE = "entities.json.gz"
ARRAYS_FILE = "graph.npz"
# Graphs are shared files: what kgclip reads from one is capped (a gzip or zip bomb, a 3 GB "kg.json"):
# kg.json at 4 MB; entities.json.gz unpacked to 8x its size (text packs about 3x) with a 64 MB floor;
# graph.npz unpacked to 16x its size (WordNet's packs 5x) with a 128 MB floor; the compressed files at 2 GB.
MAX_META_BYTES = 4 * MB
MAX_FILE_BYTES = 2048 * MB
UNPACK_RATIO = {ENTITIES_FILE: 8, ARRAYS_FILE: 16}
UNPACK_FLOOR = {ENTITIES_FILE: 64 * MB, ARRAYS_FILE: 128 * MB}
MAX_ENTITY_VALUES = 1_000_000  # the entity table is a few long strings (plus small "extra" lists)
MIN_ENTITY_CAP = 100_000  # entities (and lemma keys) any table may hold; more need BYTES_PER_ENTITY each
BYTES_PER_ENTITY = 10


def norm_key(text: str) -> str:
    """The lookup key of a name: lower case, ``_`` and ``-`` as spaces, single spaces."""
    return " ".join(text.lower().replace("_", " ").replace("-", " ").split())


def csr_from_edges(n: int, heads: np.ndarray, tails: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of the edges head -> tail, duplicates dropped, tails sorted per head."""
    heads = np.asarray(heads, dtype=np.int64)
    tails = np.asarray(tails, dtype=np.int64)
    if len(heads):
        key = np.unique(heads * n + tails)
        heads, tails = key // n, key % n
    indptr = np.zeros(n + 1, dtype=np.int32)
    np.add.at(indptr, heads + 1, 1)
    np.cumsum(indptr, out=indptr)
    return indptr, tails.astype(np.int32)


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def write_graph(
    out_dir: str | os.PathLike,
    *,
    name: str,
    ids: list[str],
    names: list[list[str]],
    glosses: list[str],
    relations: Mapping[str, tuple[np.ndarray, np.ndarray]],
    inverses: Mapping[str, str] | None = None,
    lemmas: Mapping[str, list[tuple[int, int]]] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    extra: Mapping[str, object] | None = None,
    meta: Mapping[str, object] | None = None,
    overwrite: bool = True,
    extra_files: Iterable[tuple[str, str]] = (),
) -> Path:
    """Write a graph directory atomically; returns its path.

    ``relations`` maps a relation name to (head rows, tail rows); ``lemmas``
    maps a normalised name to [(row, count)] in sense order (derived from
    ``names`` when omitted); ``extra`` is stored inside entities.json.gz
    (e.g. morphological exception lists); ``extra_files`` are (file name, text).
    """
    out = Path(out_dir)
    n = len(ids)
    if not (len(names) == len(glosses) == n):
        raise ValueError("ids, names and glosses must have the same length")
    if lemmas is None:
        lemmas = {}
        for i, ns in enumerate(names):
            for nm in ns:
                lst = lemmas.setdefault(norm_key(nm), [])
                if all(j != i for j, _ in lst):
                    lst.append((i, 0))
    if out.exists() and not overwrite:
        raise KGError(f"{out} already exists (choose another output directory)")
    with atomic_dir(out) as tmp:
        keys = sorted(lemmas)
        ent = {
            "ids": "\n".join(fold_space(x) for x in ids),
            "names": "\n".join("\t".join(fold_space(nm) for nm in ns) for ns in names),
            "glosses": "\n".join(fold_space(g) for g in glosses),
            "lemma_keys": "\n".join(keys),
            "extra": dict(extra or {}),
        }
        raw = json.dumps(ent, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
        with open(tmp / ENTITIES_FILE, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="",
                                                                   compresslevel=9) as gz:
            gz.write(raw)
        arrs: dict[str, np.ndarray] = {}
        lens = np.array([len(lemmas[k]) for k in keys], np.int64)
        arrs["lemmas.indptr"] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        arrs["lemmas.rows"] = np.array([i for k in keys for i, _ in lemmas[k]], np.int32)
        arrs["lemmas.counts"] = np.array([c for k in keys for _, c in lemmas[k]], np.int32)
        rel_names = []
        for rel in sorted(relations):
            heads, tails = relations[rel]
            indptr, indices = csr_from_edges(n, heads, tails)
            arrs[f"{rel}.indptr"], arrs[f"{rel}.indices"] = indptr, indices
            rel_names.append(rel)
        for k, v in (arrays or {}).items():
            v = np.asarray(v)
            if len(v) != n:
                raise ValueError(f"array {k} has {len(v)} rows, expected {n}")
            arrs[k] = v
        _write_npz(tmp / ARRAYS_FILE, arrs)
        h = hashlib.sha256()
        for f in (ENTITIES_FILE, ARRAYS_FILE):
            h.update((tmp / f).read_bytes())
        md = {
            "format": "kgclip-kg",
            "format_version": FORMAT_VERSION,
            "name": name,
            "entities": n,
            "edges": {r: int(len(arrs[f"{r}.indices"])) for r in rel_names},
            "relations": rel_names,
            "inverses": {k: v for k, v in sorted((inverses or {}).items()) if k in rel_names},
            "fingerprint": h.hexdigest()[:16],
            **dict(meta or {}),
        }
        (tmp / META_FILE).write_text(json.dumps(md, indent=2, ensure_ascii=False) + "\n")
        for fname, text in extra_files:
            (tmp / fname).write_text(text)
    return out


def read_meta(path: str | os.PathLike) -> dict:
    p = Path(path)
    mf = p / META_FILE if p.is_dir() else p
    if not os.path.lexists(mf):
        if not p.exists():
            raise KGError(f"{p}: no such knowledge graph (expected a directory made by `kgclip kg import`)")
        raise KGError(f"{p}: not a kgclip knowledge graph ({META_FILE} missing; "
                      "convert triples with `kgclip kg import`)")
    md = read_json_capped(mf, MAX_META_BYTES, "graph metadata", max_depth=16, max_values=100_000,
                          error=KGError)
    if not isinstance(md, dict) or md.get("format") != "kgclip-kg":
        raise KGError(f"{mf}: not a kgclip knowledge graph")
    v = md.get("format_version", 0)
    if not isinstance(v, int) or isinstance(v, bool):
        raise KGError(f"{mf}: graph metadata has no integer format_version")
    if v > FORMAT_VERSION:
        raise KGError(f"{mf}: graph format {md.get('format_version')} is newer than this kgclip supports "
                      f"({FORMAT_VERSION}); upgrade kgclip")
    rels, inv = md.get("relations", []), md.get("inverses", {})
    if not isinstance(rels, list) or not all(isinstance(r, str) for r in rels) or not isinstance(inv, dict) \
            or not all(isinstance(k, str) and isinstance(x, str) for k, x in inv.items()):
        raise KGError(f"{mf}: graph metadata 'relations' must be a list of names and 'inverses' an object "
                      "of names")
    for key in ("name", "fingerprint"):
        if md.get(key) is not None and not isinstance(md[key], str):
            raise KGError(f"{mf}: graph metadata {key!r} must be a string")
    return md


def _unpack_cap(f: Path, name: str) -> int:
    try:
        size = f.stat().st_size
    except OSError:
        size = 0
    return max(UNPACK_FLOOR[name], UNPACK_RATIO[name] * size)


def read_entities(path: Path) -> dict:
    f = path / ENTITIES_FILE
    raw = read_bytes_capped(f, MAX_FILE_BYTES, "entity table", error=KGError)
    size = len(raw)
    text = gunzip_capped(raw, max(UNPACK_FLOOR[ENTITIES_FILE], UNPACK_RATIO[ENTITIES_FILE] * size), f,
                         "entity table", error=KGError)
    del raw
    ent = parse_json_capped(text, f, "entity table", max_depth=8, max_values=MAX_ENTITY_VALUES, error=KGError)
    if not isinstance(ent, dict) or not all(isinstance(ent.get(k), str) for k in ("ids", "names", "glosses",
                                                                                  "lemma_keys")) \
            or not isinstance(ent.get("extra", {}), dict):
        raise KGError(f"{f}: unreadable entity table (expected the strings ids, names, glosses and "
                      "lemma_keys)")
    # each entity becomes a few Python objects (~380 bytes): a real one packs into 10+ bytes (WordNet's 40),
    # so a table of millions of empty lines in a few KB is refused before it is split into lists
    cap = max(MIN_ENTITY_CAP, size // BYTES_PER_ENTITY)
    for key in ("ids", "names", "glosses", "lemma_keys"):
        lines = ent[key].count("\n") + 1
        if lines > cap:
            raise KGError(f"{f}: the entity table's {key} has {lines:,} lines in a {size:,}-byte file "
                          "(a damaged or hostile file)")
    return ent


def content_fingerprint(path: Path) -> str:
    """The fingerprint :func:`write_graph` records, computed from the files themselves: caches are keyed
    by it, so a shared graph cannot claim another graph's (e.g. WordNet's) cached entity vectors."""
    h = hashlib.sha256()
    for name in (ENTITIES_FILE, ARRAYS_FILE):
        h.update(read_bytes_capped(path / name, MAX_FILE_BYTES, "graph file", error=KGError))
    return h.hexdigest()[:16]


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    f = path / ARRAYS_FILE
    return load_npz_capped(f, _unpack_cap(f, ARRAYS_FILE), "graph arrays", error=KGError)
