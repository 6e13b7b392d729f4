"""What a hostile-index trial works on: the trial folder, the commands it runs, and the mutation helpers.

A :class:`Trial` is one temp folder holding a copy of the base index (``idx/``) and everything a hostile
index may point at: a victim file, a path that must not come to exist, a copy of a small user KG, a
spare folder. Only ``idx/`` may change; :func:`benchmarks.hostile_index.run_trial` checks the rest.
A :class:`Step` is one ``kgclip`` command line (``{idx}``, ``{root}``, ``{kg}``, ``{src}`` are filled in)
with the exit codes that count as handled. The kinds themselves are in
:mod:`benchmarks.hostile_index_kinds`.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from retrieval.kg.graphfile import write_graph

VICTIM_BYTES = b"precious data outside the index\n" * 64
DIM = 32  # benchmarks.fakes.DIM: every vector in the base index has this length


@dataclass
class Trial:
    root: Path  # the trial's temp folder: nothing in it but idx/ may change
    idx: Path
    src: Path  # the sources the index was built from
    kg: Path  # a small user KG (a copy owned by this trial)
    bomb_bytes: int = 1 << 30  # how far the gzip bomb inflates

    @property
    def victim(self) -> Path:
        return self.root / "victim.txt"

    @property
    def absent(self) -> Path:
        """A path outside the index that no command may create (the target of dangling symlinks)."""
        return self.root / "must-not-exist"

    @property
    def store(self) -> Path:
        return self.idx / "store.lmdb"


@dataclass
class Step:
    args: list  # str (with {idx} {root} {kg} {src} placeholders) or bytes (passed as is)
    ok_exit: tuple = (0, 1, 2)
    stdin: str | None = None  # a file in the trial folder fed to stdin
    keeps_items: bool = True  # False for `verify --repair`: it may drop an item it names
    hits: int | None = None  # with --format json and exit 0: this many hits
    label: str = ""

    def name(self) -> str:
        if self.label:
            return self.label
        words = [a if isinstance(a, str) else repr(a) for a in self.args]
        words = [w.replace("{idx}", "IDX").replace("{kg}", "KG").replace("{root}", "TRIAL").replace("{src}", "SRC")
                 for w in words]
        return " ".join(words)


@dataclass
class Kind:
    name: str
    family: str  # writes | dataloss | resources | output (the issue-22 families)
    what: str
    setup: Callable[[Trial], None]
    steps: list[Step]
    fresh: bool = False  # build its own index inside the trial (the kind changes the sources)
    unprivileged: bool = False  # run without CAP_DAC_OVERRIDE/READ_SEARCH/FOWNER so modes are enforced
    offline: bool = True  # False: do not set KGCLIP_OFFLINE (the kind tests that the index alone stays off the net)
    extra: dict = field(default_factory=dict)


# -- the registry: benchmarks.hostile_index_kinds (index folders) and hostile_index_inputs (KGs, queries) --
KINDS: dict[str, Kind] = {}


def kind(name: str, family: str, steps, **kw):
    def register(fn):
        if name in KINDS:
            raise ValueError(f"hostile kind {name!r} registered twice")
        KINDS[name] = Kind(name, family, " ".join((fn.__doc__ or name).split()), fn, list(steps), **kw)
        return fn

    return register


# -- the standard commands -----------------------------------------------------------------------------
def S(*args, ok=(0, 1, 2), stdin=None, keeps=True, hits=None, label=""):
    return Step(list(args), tuple(ok), stdin, keeps, hits, label)


INFO = S("info", "{idx}")
SEARCH = S("search", "{idx}", "red", "-k", "3", "--format", "json")
SEARCH_OK = S("search", "{idx}", "red", "-k", "3", "--format", "json", ok=(0,), hits=3, label="search (must work)")
VERIFY = S("verify", "{idx}")
VERIFY_BAD = S("verify", "{idx}", ok=(1,), label="verify (must report)")
VERIFY_OK = S("verify", "{idx}", ok=(0,), label="verify after repair")
REPAIR = S("verify", "--repair", "{idx}", keeps=False, label="verify --repair")
UPDATE = S("update", "{idx}")
BUILD = S("build", "{src}/imgs", "{src}/cap.jsonl", "-i", "{idx}", "--model", "fake:v1", "--text-model", "fake:v1")
READERS = [INFO, SEARCH, VERIFY]
REPAIRED = [REPAIR, VERIFY_OK, SEARCH_OK]


# -- mutation helpers ----------------------------------------------------------------------------------
def replace_with_symlink(path: Path, target: Path) -> None:
    """``path`` becomes a symlink to ``target`` (the old file, if any, is removed)."""
    if path.is_symlink() or path.exists():
        path.unlink()
    os.symlink(target, path)


def move_out(path: Path, outside: Path) -> None:
    """Move ``path`` outside the index and leave a symlink to it in its place."""
    os.rename(path, outside)
    os.symlink(outside, path)


def make_fifo(path: Path) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    os.mkfifo(path)


def read_manifest(t: Trial) -> dict:
    return json.loads((t.idx / "index.json").read_text())


def write_manifest(t: Trial, m: dict) -> None:
    (t.idx / "index.json").write_text(json.dumps(m, indent=2))


def stale_sidecar(t: Trial, name: str = "image.faiss") -> None:
    """Mark a FAISS file as covering generation 0, so readers and writers re-derive it from the store."""
    p = t.idx / f"{name}.json"
    sc = json.loads(p.read_text())
    sc["generation"] = 0
    p.write_text(json.dumps(sc))


def write_matching_sidecar(t: Trial, name: str, ntotal: int, dim: int = DIM) -> None:
    """A sidecar whose size and CRC match the (hostile) FAISS file: the file looks intact."""
    data = (t.idx / name).read_bytes()
    p = t.idx / f"{name}.json"
    sc = json.loads(p.read_text())
    sc.update(size=len(data), crc32=zlib.crc32(data) & 0xFFFFFFFF, ntotal=int(ntotal), dim=int(dim))
    p.write_text(json.dumps(sc))


def ikey(i: int) -> bytes:
    return struct.pack(">Q", int(i))


def lmdb_env(t: Trial):
    import lmdb

    return lmdb.open(str(t.store), max_dbs=16, subdir=True)


def lmdb_put(t: Trial, db: str, key: bytes | None, value: bytes) -> None:
    """Overwrite one value in one store database (the first key when ``key`` is None)."""
    env = lmdb_env(t)
    try:
        with env.begin(write=True) as txn:
            d = env.open_db(db.encode(), txn=txn, create=True)
            if key is None:
                cur = txn.cursor(db=d)
                key = bytes(cur.key()) if cur.first() else ikey(0)
            txn.put(key, value, db=d)
    finally:
        env.close()


def lmdb_items(t: Trial, db: str) -> list[tuple[bytes, bytes]]:
    env = lmdb_env(t)
    try:
        with env.begin() as txn:
            d = env.open_db(db.encode(), txn=txn, create=False)
            return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=d)]
    finally:
        env.close()


def store_vectors(t: Trial) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the store's image vectors."""
    rows = lmdb_items(t, "vecs")
    ids = np.array([struct.unpack(">Q", k)[0] for k, _ in rows], np.int64)
    return ids, np.stack([np.frombuffer(v, np.float32) for _, v in rows])


def write_faiss(t: Trial, index, name: str = "image.faiss") -> None:
    import faiss

    faiss.write_index(index, str(t.idx / name))


def faiss_header_bomb(ntotal: int = 1 << 25, dim: int = DIM) -> bytes:
    """An ``IDMap,Flat`` (inner product) file of 90 bytes whose header and vector array declare ``ntotal``
    vectors (4 GiB of float32 at the defaults: faiss allocates it before it finds the bytes missing) and
    hold none."""
    def header(fourcc: bytes) -> bytes:
        # d, ntotal, two dummies, is_trained, metric (0 = inner product)
        return fourcc + struct.pack("<iqqqBi", dim, ntotal, 1 << 20, 1 << 20, 1, 0)

    return header(b"IxMp") + header(b"IxFI") + struct.pack("<Q", ntotal * dim) + struct.pack("<Q", 0)


def gzip_bomb(path: Path, inflated: int, prefix: bytes, suffix: bytes) -> None:
    """A gzip file that inflates to about ``inflated`` bytes: ``prefix``, 'a' * N, ``suffix`` (one JSON
    string N long). Written as many identical members (cheap to make; gzip readers concatenate them)."""
    block = 16 << 20
    chunk = gzip.compress(b"a" * block, 9, mtime=0)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(prefix, 9, mtime=0))
        for _ in range(max(1, inflated // block)):
            fh.write(chunk)
        fh.write(gzip.compress(suffix, 9, mtime=0))


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def write_kg(path: Path) -> Path:
    """A tiny user KG: cat/dog -> animal, rocket -> vehicle, red -> colour."""
    ids = ["cat", "dog", "animal", "rocket", "vehicle", "red", "colour"]
    edges = [(0, 2), (1, 2), (3, 4), (5, 6)]
    return write_graph(path, name="hostile-bench", ids=ids, names=[[i] for i in ids], glosses=[""] * len(ids),
                       relations={"is_a": (np.array([a for a, _ in edges]), np.array([b for _, b in edges]))},
                       inverses={})
