"""Hostile index kinds (issue 22), the inputs half: user KGs, a model named by the index, and queries.

Registered in :data:`benchmarks.hostile_index_kit.KINDS` like :mod:`benchmarks.hostile_index_kinds`.
"""

from __future__ import annotations

import gzip
import json

import numpy as np

from benchmarks.hostile import png_header_bomb
from benchmarks.hostile_index_kit import DIM, S, Trial, gzip_bomb, kind, lmdb_items, lmdb_put, nested_json, \
    read_manifest, write_manifest

KG_STEPS = [S("search", "{idx}", "cat", "--kg", "{kg}", "--expand", "multi", "-k", "3"),
            S("kg", "expand", "cat", "--kg", "{kg}", "--sense-model", "none")]


@kind("kg-gzip-bomb", "resources", [*KG_STEPS, S("kg", "info", "{kg}")])
def _kg_bomb(t: Trial):
    """A user KG whose entities.json.gz (about 1 MB) inflates to 1 GiB."""
    gzip_bomb(t.kg / "entities.json.gz", t.bomb_bytes, b'{"extra":{},"glosses":"","ids":"',
              b'","lemma_keys":"","names":""}')


def _kg_arrays(t: Trial, **change):
    p = t.kg / "graph.npz"
    with np.load(p) as z:
        arrs = {k: z[k] for k in z.files}
    arrs.update(change)
    with open(p, "wb") as fh:
        np.savez(fh, **arrs)


@kind("kg-graph-out-of-range", "resources", KG_STEPS)
def _kg_range(t: Trial):
    """A user KG whose graph.npz edge targets point far past the last entity."""
    with np.load(t.kg / "graph.npz") as z:
        n = len(z["is_a.indices"])
    _kg_arrays(t, **{"is_a.indices": np.full(n, 1_000_000_000, np.int32)})


@kind("kg-graph-bad-indptr", "resources", KG_STEPS)
def _kg_indptr(t: Trial):
    """A user KG whose CSR row pointers decrease and overrun the edge array (lemmas and is_a)."""
    with np.load(t.kg / "graph.npz") as z:
        n = len(z["is_a.indptr"])
    bad = np.arange(n, dtype=np.int32)[::-1] * 100_000_000
    _kg_arrays(t, **{"is_a.indptr": bad, "lemmas.indptr": bad})


@kind("kg-meta-nested", "resources", [S("kg", "info", "{kg}"), *KG_STEPS])
def _kg_meta(t: Trial):
    """A user KG whose kg.json nests 100,000 lists deep."""
    (t.kg / "kg.json").write_text('{"format": "kgclip-kg", "format_version": 1, "x": ' + nested_json(100_000) + "}")


@kind("hub-model-in-manifest", "resources", [S("search", "{idx}", "red", "-k", "3")], offline=False)
def _hub(t: Trial):
    """The index names a hub model it does not ship ("sbert:someone/model") as its text model."""
    spec = {"spec": "sbert:someone/model", "fingerprint": "sbert:someone/model#0", "dim": DIM}
    m = read_manifest(t)
    m["text_model"] = spec
    write_manifest(t, m)
    lmdb_put(t, "meta", b"text_model", json.dumps(spec).encode())


# -- family 11, 12 and queries: output hygiene and unbounded work -----------------------------------------
@kind("query-1mb", "output", [S("search", "{idx}", "--expand", "multi", "--explain", "-k", "3", stdin="query.txt")])
def _query_big(t: Trial):
    """A 1 MB query (on stdin: one argument cannot be that long) with --expand multi --explain."""
    words = " ".join(["red", "cat", "dog", "animal", "rocket"] * 40_000)
    (t.root / "query.txt").write_text(words[: 1 << 20] + "\n")


@kind("query-non-utf8", "output", [S("search", "{idx}", b"caf\xe9 \xff\xfe red", "-k", "3"),
                                   S("kg", "link", b"caf\xe9 \xff", "--sense-model", "none")])
def _query_bytes(t: Trial):
    """A query argument holding bytes that are not UTF-8."""


@kind("kg-terminal-escapes", "output", [
    S("search", "{idx}", "cat", "--kg", "{kg}", "--expand", "multi", "--explain", "-k", "3"),
    S("kg", "link", "cat", "--kg", "{kg}", "--sense-model", "none"),
    S("kg", "expand", "cat", "--kg", "{kg}", "--sense-model", "none")])
def _kg_escapes(t: Trial):
    """A user KG whose entity names carry terminal escapes (OSC title, clear screen, BEL, C1 CSI)."""
    p = t.kg / "entities.json.gz"
    with gzip.open(p) as fh:
        ent = json.loads(fh.read())
    evil = "\x1b]0;pwned\x07\x1b[2J\x9b31m"
    ent["names"] = "\n".join(f"{n}{evil}" if n in ("cat", "animal") else n for n in ent["names"].split("\n"))
    p.write_bytes(gzip.compress(json.dumps(ent).encode(), mtime=0))


@kind("nan-metadata", "output", [S("search", "{idx}", "red", "-k", "20", "--format", "json"),
                                 S("search", "{idx}", "red", "-k", "20", "--format", "jsonl")])
def _nan_meta(t: Trial):
    """Every path's metadata holds NaN and Infinity (as Parquet metadata can); --format json/jsonl must stay
    strict JSON."""
    env_rows = lmdb_items(t, "paths")
    for k, v in env_rows:
        rec = json.loads(v)
        rec.setdefault("meta", {}).update(score=float("nan"), ratio=float("inf"))
        lmdb_put(t, "paths", k, json.dumps(rec).encode())


@kind("image-query-144mp", "output", [S("search", "{idx}", "--image", "{root}/big.png", "-k", "3")])
def _query_bomb(t: Trial):
    """`search --image` on a tiny PNG declaring 12000 x 12000 pixels (144 MP)."""
    (t.root / "big.png").write_bytes(png_header_bomb(12000, 12000))


@kind("image-query-gigapixel", "output", [S("search", "{idx}", "--image", "{root}/bomb.png", "-k", "3")])
def _query_gigabomb(t: Trial):
    """`search --image` on a tiny PNG declaring 100000 x 100000 pixels."""
    (t.root / "bomb.png").write_bytes(png_header_bomb(100_000, 100_000))

