"""Graphs behind one contract: entities (id, names, gloss) and typed relations.

``load_graph()`` returns the shipped WordNet (nouns); ``load_graph(path)`` a
graph directory written by ``kgclip kg import``. Both are :class:`Graph`.
Internally entities are rows 0..n-1 and relations CSR arrays, so walks are
cheap; the public methods speak entity ids.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import KGError
from .graphfile import ARRAYS_FILE, content_fingerprint, norm_key, read_arrays, read_entities, read_meta

SHIPPED_DIR = Path(__file__).resolve().parent / "data"
WORDNET = "wordnet"


@dataclass
class Entity:
    """One node: id (``n02084071``), display names (first is the main one), gloss."""

    id: str
    names: list[str]
    gloss: str = ""
    count: int = 0  # corpus tag count (WordNet); 0 when unknown
    depth: int | None = None  # shortest hypernym path to the root (WordNet); None when unknown
    row: int = field(default=-1, repr=False)

    @property
    def name(self) -> str:
        return self.names[0] if self.names else self.id

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("row")
        return d


def _check_csr(f, name: str, arr: dict, rows: int, cols: int) -> None:
    """A CSR pair ``name.indptr`` / ``name.indices``: ``rows + 1`` non-decreasing offsets from 0 to the
    number of indices, each index in ``0..cols - 1``."""
    ptr, idx = arr.get(f"{name}.indptr"), arr.get(f"{name}.indices", arr.get(f"{name}.rows"))
    if ptr is None or idx is None:
        raise KGError(f"{f}: graph arrays lack {name!r}")
    if ptr.ndim != 1 or idx.ndim != 1 or ptr.dtype.kind not in "iu" or idx.dtype.kind not in "iu":
        raise KGError(f"{f}: graph array {name!r} is not a 1-d integer array")
    if len(ptr) != rows + 1 or (rows + 1 and (int(ptr[0]) != 0 or int(ptr[-1]) != len(idx))) \
            or np.any(np.diff(ptr.astype(np.int64)) < 0):
        raise KGError(f"{f}: graph array {name!r} has offsets that do not fit its {rows} rows "
                      f"and {len(idx)} entries")
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= cols):
        raise KGError(f"{f}: graph array {name!r} points outside the graph's {cols} entities")


def check_arrays(path: Path, meta: dict, ent: dict, arr: dict) -> None:
    """Every array a graph indexes with is in range (a damaged or hostile graph.npz is a clear error, not
    an IndexError or a wrong answer later)."""
    f = path / ARRAYS_FILE
    n = ent["ids"].count("\n") + 1 if ent["ids"] else 0
    keys = ent["lemma_keys"].count("\n") + 1 if ent["lemma_keys"] else 0
    if n and (ent["names"].count("\n") + 1 != n or ent["glosses"].count("\n") + 1 != n):
        raise KGError(f"{path}: the entity table's names or glosses do not match its {n} ids")
    _check_csr(f, "lemmas", arr, keys, n)
    counts = arr.get("lemmas.counts")
    if counts is None or len(counts) != len(arr["lemmas.rows"]):
        raise KGError(f"{f}: graph array 'lemmas.counts' does not match 'lemmas.rows'")
    for rel in meta.get("relations", []):
        _check_csr(f, rel, arr, n, n)
    for name in ("counts", "depth", "size", "lexfile"):
        if name in arr and (arr[name].ndim != 1 or len(arr[name]) != n):
            raise KGError(f"{f}: graph array {name!r} has {len(arr[name])} rows, the graph {n} entities")


class Graph:
    """A read-only knowledge graph loaded from a compact graph directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.meta = read_meta(self.path)
        ent = read_entities(self.path)
        arr = read_arrays(self.path)
        check_arrays(self.path, self.meta, ent, arr)
        self.name: str = self.meta.get("name", self.path.name)
        self.fingerprint: str = content_fingerprint(self.path)  # not kg.json's claim: it keys caches
        self.ids: list[str] = ent["ids"].split("\n") if ent["ids"] else []
        self.names: list[list[str]] = [ns.split("\t") if ns else [] for ns in ent["names"].split("\n")]
        self.glosses: list[str] = ent["glosses"].split("\n")
        keys = ent["lemma_keys"].split("\n") if ent["lemma_keys"] else []
        self._lemma_key_row = dict(zip(keys, range(len(keys))))
        self._lemma_ptr, self._lemma_rows, self._lemma_counts = (
            arr["lemmas.indptr"], arr["lemmas.rows"], arr["lemmas.counts"])
        if not self.ids:
            self.names, self.glosses = [], []
        self.extra: dict[str, Any] = ent.get("extra", {})
        n = len(self.ids)
        self.counts = arr.get("counts", np.zeros(n, np.int32))
        self.depth = arr.get("depth")
        self.size = arr.get("size")
        self._row: dict[str, int] | None = None
        self._row_lock = threading.Lock()
        self._csr: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.stored_relations: list[str] = list(self.meta.get("relations", []))
        for r in self.stored_relations:
            self._csr[r] = (arr[f"{r}.indptr"], arr[f"{r}.indices"])
        inv = dict(self.meta.get("inverses", {}))
        for r in self.stored_relations:
            inv.setdefault(r, "~" + r)  # user relations: "~rel" walks rel backwards
        self.inverse_of: dict[str, str] = {**inv, **{v: k for k, v in inv.items()}}
        self._inverse_pending = {inv[r]: r for r in self.stored_relations}
        self.max_name_tokens = max((k.count(" ") + 1 for k in keys), default=1)

    # -- basics ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, entity_id: str) -> bool:
        return entity_id in self._rows()

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, entities={len(self)}, relations={len(self.relations)})"

    @property
    def relations(self) -> list[str]:
        """Stored relations and their inverses (``hyponym``, ``part_holonym``, ``~rel`` ...)."""
        stored = self.stored_relations
        return list(stored) + [v for v in self._inverse_names() if v not in stored]

    def _inverse_names(self) -> list[str]:
        return [self.inverse_of[r] for r in self.stored_relations]

    def _rows(self) -> dict[str, int]:
        if self._row is None:
            with self._row_lock:
                if self._row is None:
                    self._row = {s: i for i, s in enumerate(self.ids)}
        return self._row

    def row(self, entity_id: str) -> int:
        try:
            return self._rows()[entity_id]
        except KeyError:
            raise KGError(f"{self.name}: no entity {entity_id!r}") from None

    def entity(self, entity_id: str | int) -> Entity:
        i = entity_id if isinstance(entity_id, (int, np.integer)) else self.row(entity_id)
        i = int(i)
        depth = int(self.depth[i]) if self.depth is not None else None
        return Entity(self.ids[i], list(self.names[i]), self.glosses[i], int(self.counts[i]), depth, i)

    def display_name(self, row: int) -> str:
        ns = self.names[row]
        return ns[0] if ns else self.ids[row]

    # -- relations -------------------------------------------------------------
    def adjacency(self, relation: str) -> tuple[np.ndarray, np.ndarray]:
        """CSR (indptr, indices) of a relation over rows; inverses are derived on first use."""
        csr = self._csr.get(relation)
        if csr is not None:
            return csr
        base = self._inverse_pending.get(relation)
        if base is None:
            raise KGError(f"{self.name}: unknown relation {relation!r} (known: {', '.join(self.relations)})")
        indptr, indices = self._csr[base]
        n = len(self.ids)
        heads = np.repeat(np.arange(n, dtype=np.int32), np.diff(indptr))
        order = np.lexsort((heads, indices))
        t_indices = heads[order].astype(np.int32)
        t_indptr = np.zeros(n + 1, np.int32)
        np.add.at(t_indptr, indices.astype(np.int64) + 1, 1)
        np.cumsum(t_indptr, out=t_indptr)
        self._csr[relation] = (t_indptr, t_indices)
        return self._csr[relation]

    def neighbour_rows(self, row: int, relation: str) -> np.ndarray:
        indptr, indices = self.adjacency(relation)
        return indices[indptr[row] : indptr[row + 1]]

    def neighbours(self, entity_id: str, relation: str) -> list[str]:
        """Ids of the entities ``relation`` leads to from ``entity_id`` (e.g. hyponyms of dog)."""
        return [self.ids[j] for j in self.neighbour_rows(self.row(entity_id), relation)]

    def edges(self, relation: str) -> Iterator[tuple[str, str]]:
        indptr, indices = self.adjacency(relation)
        for i in range(len(self.ids)):
            for j in indices[indptr[i] : indptr[i + 1]]:
                yield self.ids[i], self.ids[int(j)]

    # -- names -----------------------------------------------------------------
    def find(self, name: str) -> list[str]:
        """Entity ids whose names match ``name`` exactly after normalisation, most frequent sense first."""
        return [self.ids[i] for i, _ in self.senses(norm_key(name))]

    def has_key(self, key: str) -> bool:
        return key in self._lemma_key_row

    def senses(self, key: str) -> list[tuple[int, int]]:
        """[(row, tag count), ...] in sense order for a normalised name key; [] if unknown."""
        k = self._lemma_key_row.get(key)
        if k is None:
            return []
        a, b = self._lemma_ptr[k], self._lemma_ptr[k + 1]
        return list(zip(self._lemma_rows[a:b].tolist(), self._lemma_counts[a:b].tolist()))

    def info(self) -> dict[str, Any]:
        files = [f for f in self.path.iterdir() if f.is_file()]
        return {
            "name": self.name,
            "path": str(self.path),
            "entities": len(self),
            "names": len(self._lemma_key_row),
            "edges": dict(self.meta.get("edges", {})),
            "relations": self.relations,
            "fingerprint": self.fingerprint,
            "source": self.meta.get("source", ""),
            "licence": self.meta.get("licence", ""),
            "size_bytes": sum(f.stat().st_size for f in files),
        }


_LOADED: dict[tuple[str, float], Graph] = {}
_LOAD_LOCK = threading.Lock()


def resolve_graph_path(path: str | os.PathLike | None) -> Path:
    if path is None or str(path).strip().lower() in ("", WORDNET, "wn", "default"):
        return SHIPPED_DIR
    return Path(path).expanduser()


def load_graph(path: str | os.PathLike | None = None, cache: bool = True) -> Graph:
    """Load a graph: ``None`` or ``"wordnet"`` = the shipped WordNet, else a graph directory.

    Loaded graphs are shared per (path, modification time) in this process.
    """
    p = resolve_graph_path(path)
    if p.is_file() and p.name != "kg.json":
        raise KGError(f"{p} is a file, not a graph directory: convert triples first with "
                      f"`kgclip kg import {p} -o DIR`")
    if p.is_file():
        p = p.parent
    try:
        key = (str(p.resolve()), (p / "kg.json").stat().st_mtime)
    except OSError:
        read_meta(p)  # raises the clear error
        raise
    if cache and key in _LOADED:
        return _LOADED[key]
    with _LOAD_LOCK:
        if cache and key in _LOADED:
            return _LOADED[key]
        g = Graph(p)
        if cache:
            _LOADED[key] = g
    return g
