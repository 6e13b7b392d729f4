"""Entity embeddings: a vector per entity in an encoder's space, cached on disk.

The vector of an entity is ``encoder.encode_texts([prompt])`` where the prompt
is built from its names (and optionally gloss), e.g. ``"a photo of a {name}."``.
Vectors are computed lazily for the entities a query touches (or in bulk with
:meth:`EntityEmbeddings.precompute`) and kept under
``$KGCLIP_CACHE/kg/<graph>-<graph fingerprint>/<key>/`` where ``key`` hashes the
encoder fingerprint and the prompt template. Each write is a new chunk file
(:func:`retrieval.atomic.atomic_write`), so concurrent processes and crashes never corrupt the
cache; chunks are merged when they pile up. When an encoder's fingerprint
changes (same spec, new weights), the cache directories of its old
fingerprint are deleted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..atomic import atomic_write
from ..paths import cache_dir
from .graph import Graph

MAX_CHUNKS = 32


def render_prompt(template: str, names: Sequence[str], gloss: str, entity_id: str) -> str:
    name = names[0] if names else entity_id
    return template.format(name=name, names=", ".join(names[:3]) or name, gloss=gloss, id=entity_id).strip()


class EntityEmbeddings:
    """Vectors of a graph's entities in one encoder's space; rows are graph rows."""

    def __init__(self, graph: Graph, encoder, template: str = "a photo of a {name}.",
                 root: str | os.PathLike | None = None, persist: bool = True):
        self.graph = graph
        self.encoder = encoder
        self.template = template
        self.persist = persist
        fp = encoder.fingerprint
        self.key = hashlib.sha256(f"{fp}\n{template}".encode()).hexdigest()[:16]
        base = Path(root) if root is not None else cache_dir() / "kg"
        self.graph_dir = base / f"{_safe(graph.name)}-{_safe(graph.fingerprint)}"
        self.dir = self.graph_dir / self.key
        self._lock = threading.Lock()
        self._slot: dict[int, int] = {}
        self._vecs: np.ndarray | None = None
        self._n = 0
        self._chunks = 0
        if persist:
            self._invalidate_stale()
            self._read()

    # -- disk ------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"graph": self.graph.fingerprint, "graph_name": self.graph.name,
                "encoder": self.encoder.fingerprint,
                "spec": self.encoder.spec, "template": self.template}

    def _invalidate_stale(self) -> None:
        """Delete caches of the same encoder spec made with another fingerprint (the model changed)."""
        if not self.graph_dir.is_dir():
            return
        for d in self.graph_dir.iterdir():
            mf = d / "meta.json"
            try:
                m = json.loads(mf.read_text())
            except (OSError, ValueError):
                continue
            same_spec = m.get("spec") == self.encoder.spec
            if (same_spec and m.get("encoder") != self.encoder.fingerprint) or (
                d == self.dir and m != self._meta()
            ):
                shutil.rmtree(d, ignore_errors=True)

    def _read(self) -> None:
        if not self.dir.is_dir():
            return
        files = sorted(self.dir.glob("chunk-*.npz"))
        for f in files:
            try:
                with np.load(f, allow_pickle=False) as z:
                    rows, vecs = z["rows"], z["vectors"]
            except (OSError, ValueError, KeyError, EOFError, Exception):  # a torn or foreign file: ignore it
                continue
            if vecs.ndim != 2 or len(rows) != len(vecs):
                continue
            self._store(rows, vecs)
        self._chunks = len(files)

    def _write_chunk(self, rows: np.ndarray, vecs: np.ndarray) -> None:
        if not self.persist:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            mf = self.dir / "meta.json"
            if not mf.is_file():
                atomic_write(mf, json.dumps(self._meta(), indent=2), durable=False)
            self._new_chunk(rows, vecs)
            self._chunks += 1
            if self._chunks > MAX_CHUNKS:
                self._compact()
        except OSError:
            pass  # a read-only or full cache only costs recomputation

    def _new_chunk(self, rows: np.ndarray, vecs: np.ndarray) -> None:
        """One more chunk file, written whole or not at all (a cache: no fsync)."""
        buf = io.BytesIO()
        np.savez(buf, rows=rows.astype(np.int32), vectors=vecs.astype(np.float32))
        atomic_write(self.dir / f"chunk-{time.time_ns():020d}-{os.getpid()}.npz", buf.getvalue(), durable=False)

    def _compact(self) -> None:
        old = sorted(self.dir.glob("chunk-*.npz"))
        rows = np.array(sorted(self._slot), np.int32)
        self._new_chunk(rows, self.vectors_for_rows_cached(rows))
        for f in old:
            try:
                f.unlink()
            except OSError:
                pass
        self._chunks = 1

    # -- memory ----------------------------------------------------------------
    def _store(self, rows: np.ndarray, vecs: np.ndarray) -> None:
        vecs = np.asarray(vecs, np.float32)
        if self._vecs is None:
            self._vecs = np.zeros((max(256, len(rows)), vecs.shape[1]), np.float32)
        if vecs.shape[1] != self._vecs.shape[1]:
            return
        need = self._n + len(rows)
        if need > len(self._vecs):
            grown = np.zeros((max(need, 2 * len(self._vecs)), self._vecs.shape[1]), np.float32)
            grown[: self._n] = self._vecs[: self._n]
            self._vecs = grown
        for r, v in zip(rows.tolist(), vecs):
            s = self._slot.get(r)
            if s is None:
                s = self._n
                self._slot[r] = s
                self._n += 1
            self._vecs[s] = v

    def vectors_for_rows_cached(self, rows: np.ndarray) -> np.ndarray:
        return self._vecs[[self._slot[int(r)] for r in rows]].copy()

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, row: int) -> bool:
        return int(row) in self._slot

    # -- public ----------------------------------------------------------------
    def prompt(self, row: int) -> str:
        g = self.graph
        return render_prompt(self.template, g.names[row], g.glosses[row], g.ids[row])

    def get_rows(self, rows: Iterable[int]) -> np.ndarray:
        """float32 [len(rows), dim] L2-normalised vectors; missing ones are encoded and cached."""
        rows = [int(r) for r in rows]
        with self._lock:
            missing = list(dict.fromkeys(r for r in rows if r not in self._slot))
            if missing:
                vecs = self.encoder.encode_texts([self.prompt(r) for r in missing])
                arr = np.array(missing, np.int32)
                self._store(arr, vecs)
                self._write_chunk(arr, vecs)
            if not rows:
                return np.zeros((0, self.encoder.dim), np.float32)
            return self._vecs[[self._slot[r] for r in rows]]

    def get(self, entity_ids: Sequence[str]) -> np.ndarray:
        return self.get_rows([self.graph.row(e) for e in entity_ids])

    def precompute(self, rows: Iterable[int] | None = None, batch: int = 1024, progress: bool = True) -> int:
        """Encode (in bulk, with a progress bar on stderr) every entity not cached yet; returns how many."""
        rows = range(len(self.graph)) if rows is None else rows
        todo = [int(r) for r in rows if int(r) not in self._slot]
        bar = None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=f"entity embeddings ({self.encoder.spec})", unit="ent")
        for i in range(0, len(todo), batch):
            part = todo[i : i + batch]
            self.get_rows(part)
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()
        return len(todo)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40] or "kg"
