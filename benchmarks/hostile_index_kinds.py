"""Hostile index kinds (issue 22), the index-folder half: each a small function that mutates a copy of a
good index (the KG and query half is :mod:`benchmarks.hostile_index_inputs`).

``KINDS`` (in :mod:`benchmarks.hostile_index_kit`) maps a kind's name to a ``Kind``: its family (``writes``,
``dataloss``, ``resources``, ``output``), the mutation, and the ``kgclip`` commands the trial runs on the
result. A kind is registered with ``@kind(name, family, steps)`` over its mutation; the docstring says
what a hostile user did.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from benchmarks.hostile_index_kit import (BUILD, DIM, INFO, READERS, REPAIR, REPAIRED, SEARCH, SEARCH_OK, UPDATE,
                                          VERIFY, VERIFY_BAD, VERIFY_OK, S, Trial, faiss_header_bomb, ikey, kind,
                                          lmdb_put, make_fifo, move_out, nested_json, read_manifest,
                                          replace_with_symlink, stale_sidecar, store_vectors, write_faiss,
                                          write_manifest, write_matching_sidecar)

# -- family 1, 2: writes outside the index ----------------------------------------------------------------
@kind("lock-symlink-victim", "writes", [*READERS, REPAIR, UPDATE, BUILD])
def _lock_victim(t: Trial):
    """write.lock is a symlink to a file outside the index."""
    replace_with_symlink(t.idx / "write.lock", t.victim)


@kind("lock-symlink-absent", "writes", [INFO, SEARCH, UPDATE])
def _lock_absent(t: Trial):
    """write.lock is a symlink to a path outside the index that does not exist (O_CREAT would make it)."""
    replace_with_symlink(t.idx / "write.lock", t.absent)


@kind("lock-symlink-stale-faiss", "writes", [SEARCH, VERIFY])
def _lock_stale(t: Trial):
    """write.lock points outside and image.faiss is stale, so a search wants to re-derive and save it."""
    replace_with_symlink(t.idx / "write.lock", t.victim)
    stale_sidecar(t)


@kind("lockmdb-symlink-victim", "writes", [*READERS, UPDATE])
def _lockmdb_victim(t: Trial):
    """store.lmdb/lock.mdb is a symlink to a file outside the index."""
    replace_with_symlink(t.store / "lock.mdb", t.victim)


@kind("lockmdb-symlink-absent", "writes", READERS)
def _lockmdb_absent(t: Trial):
    """store.lmdb/lock.mdb is a dangling symlink to a path outside the index."""
    replace_with_symlink(t.store / "lock.mdb", t.absent)


@kind("datamdb-symlink-outside", "writes", [*READERS, REPAIR, UPDATE])
def _datamdb_out(t: Trial):
    """store.lmdb/data.mdb is moved outside the index and symlinked back: writers must not write through it."""
    move_out(t.store / "data.mdb", t.root / "outside-data.mdb")


@kind("store-dir-symlink-outside", "writes", [*READERS, UPDATE])
def _store_out(t: Trial):
    """The whole store.lmdb folder is a symlink to a folder outside the index."""
    move_out(t.store, t.root / "outside-store.lmdb")


@kind("faiss-symlink-victim", "writes", [SEARCH, VERIFY, REPAIR, UPDATE])
def _faiss_victim(t: Trial):
    """image.faiss is a symlink to a file outside the index (re-deriving it must replace the link)."""
    replace_with_symlink(t.idx / "image.faiss", t.victim)


@kind("sidecar-symlink-victim", "writes", [SEARCH, REPAIR, UPDATE])
def _sidecar_victim(t: Trial):
    """image.faiss.json (the FAISS sidecar) is a symlink to a file outside the index."""
    replace_with_symlink(t.idx / "image.faiss.json", t.victim)


@kind("manifest-symlink-outside", "writes", [INFO, SEARCH, REPAIR, UPDATE])
def _manifest_out(t: Trial):
    """index.json is moved outside the index and symlinked back."""
    move_out(t.idx / "index.json", t.root / "outside-index.json")


@kind("temp-name-symlinks", "writes", [SEARCH, REPAIR, UPDATE])
def _temps(t: Trial):
    """Symlinks to the victim planted under the temp names atomic writes use and clean up
    (.image.faiss.<hex>.tmp, .index.json.<hex>.tmp), with a stale FAISS so writers run."""
    for base in ("image.faiss", "image.faiss.json", "caption.faiss", "index.json"):
        os.symlink(t.victim, t.idx / f".{base}.000000000000.tmp")
    stale_sidecar(t)


@kind("readonly-folder", "writes", [S("info", "{idx}", ok=(0,), label="info (must work)"), SEARCH_OK,
                                    S("verify", "{idx}", ok=(0,), label="verify (must work)"),
                                    S("update", "{idx}", ok=(1,), label="update (must refuse)")], unprivileged=True)
def _readonly(t: Trial):
    """The index folder is read-only (chmod -R a-w; the commands run without permission overrides)."""
    for d, _, files in os.walk(t.idx):
        for f in files:
            os.chmod(os.path.join(d, f), 0o444)
    for d, _, _ in os.walk(t.idx, topdown=False):
        os.chmod(d, 0o555)


@kind("readonly-folder-stale-faiss", "writes", [SEARCH_OK], unprivileged=True)
def _readonly_stale(t: Trial):
    """A read-only index whose image.faiss is stale: search must answer from a FAISS built in memory."""
    stale_sidecar(t)
    _readonly(t)


# -- family 3, 4, 8: data loss and verify -----------------------------------------------------------------
KEEPS = [S("update", "{idx}", label="update"), INFO]


@kind("source-emptied", "dataloss", KEEPS, fresh=True)
def _src_empty(t: Trial):
    """The image folder is empty (an unmounted drive's mount point), then `update`."""
    for e in (t.src / "imgs").iterdir():
        shutil.rmtree(e) if e.is_dir() else e.unlink()


@kind("source-missing", "dataloss", KEEPS, fresh=True)
def _src_missing(t: Trial):
    """The image folder is gone, then `update`."""
    shutil.rmtree(t.src / "imgs")


@kind("source-root-unreadable", "dataloss", KEEPS, fresh=True, unprivileged=True)
def _src_root_unreadable(t: Trial):
    """The image folder is unreadable (chmod 000), then `update`."""
    os.chmod(t.src / "imgs", 0)


@kind("source-subfolder-unreadable", "dataloss", KEEPS, fresh=True, unprivileged=True)
def _src_sub_unreadable(t: Trial):
    """A subfolder of the sources is briefly unreadable (chmod 000), then `update`."""
    os.chmod(t.src / "imgs" / "sub", 0)


@kind("source-manifest-emptied", "dataloss", KEEPS, fresh=True)
def _src_manifest_empty(t: Trial):
    """The captioned JSONL manifest is emptied to 0 bytes, then `update`."""
    (t.src / "cap.jsonl").write_bytes(b"")


@kind("source-row-nested-json", "dataloss", [S("update", "{idx}", ok=(0,), label="update (must skip the row)"), INFO],
      fresh=True)
def _src_nested(t: Trial):
    """One JSONL manifest row nests 100,000 lists deep: that row is skipped with a reason, the rest indexed."""
    with open(t.src / "cap.jsonl", "a") as fh:
        fh.write('{"path": "cap/c0.png", "caption": "deep", "x": ' + nested_json(100_000) + "}\n")


@kind("nan-vector", "dataloss", [VERIFY_BAD, *REPAIRED])
def _nan_vec(t: Trial):
    """One stored image vector is all NaN."""
    lmdb_put(t, "vecs", None, np.full(DIM, np.nan, np.float32).tobytes())


@kind("wrong-length-vector", "dataloss", [VERIFY_BAD, *REPAIRED])
def _short_vec(t: Trial):
    """One stored image vector has half the index's dimension."""
    lmdb_put(t, "vecs", None, np.ones(DIM // 2, np.float32).tobytes())


@kind("faiss-permuted-ids", "dataloss", [VERIFY_BAD, *REPAIRED])
def _permuted(t: Trial):
    """image.faiss's ids are permuted and its sidecar matches (size, CRC): every hit names the wrong item."""
    import faiss

    ix = faiss.read_index(str(t.idx / "image.faiss"))
    ids = faiss.vector_to_array(ix.id_map)
    faiss.copy_array_to_vector(np.roll(ids, 1).astype(ids.dtype), ix.id_map)
    write_faiss(t, ix)
    write_matching_sidecar(t, "image.faiss", ix.ntotal)


@kind("faiss-l2-metric", "dataloss", [VERIFY_BAD, *REPAIRED])
def _l2(t: Trial):
    """image.faiss is an L2 index over the right ids and vectors, with a matching sidecar and manifest."""
    import faiss

    ids, vecs = store_vectors(t)
    ix = faiss.IndexIDMap(faiss.IndexFlatL2(DIM))
    ix.add_with_ids(vecs, ids)
    write_faiss(t, ix)
    write_matching_sidecar(t, "image.faiss", ix.ntotal)
    m = read_manifest(t)
    m["faiss"]["image"].update(kind="flat", factory="IDMap,Flat", params={})
    write_manifest(t, m)


@kind("ef-search-negative", "dataloss", [S("search", "{idx}", "red", "-k", "3", "--format", "json", hits=3),
                                         VERIFY])
def _ef_neg(t: Trial):
    """index.json sets efSearch to -1 (search must still return k hits or refuse)."""
    m = read_manifest(t)
    m["faiss"]["image"]["params"]["efSearch"] = -1
    write_manifest(t, m)


def _junk(db: str, key=None, value=b"\xff\x00 junk \x80"):
    def setup(t: Trial):
        lmdb_put(t, db, key, value)

    setup.__doc__ = f"A junk value in the store's {db} database."
    return setup


for _db, _key in (("items", None), ("paths", None), ("hashes", None), ("vecs", None), ("capvecs", None),
                  ("profiles", ikey(0)), ("fails", None), ("meta", b"generation")):
    _label = "generation" if _db == "meta" else _db
    kind(f"lmdb-junk-{_label}", "dataloss", [SEARCH, VERIFY, *REPAIRED])(_junk(_db, _key))


# -- family 5, 6, 7: hangs and unbounded resources --------------------------------------------------------
@kind("fifo-faiss", "resources", [SEARCH, VERIFY, REPAIR])
def _fifo_faiss(t: Trial):
    """image.faiss is a FIFO (opening it for reading blocks forever)."""
    make_fifo(t.idx / "image.faiss")


@kind("fifo-sidecar", "resources", [SEARCH, VERIFY])
def _fifo_sidecar(t: Trial):
    """image.faiss.json is a FIFO."""
    make_fifo(t.idx / "image.faiss.json")


@kind("fifo-manifest", "resources", READERS)
def _fifo_manifest(t: Trial):
    """index.json is a FIFO."""
    make_fifo(t.idx / "index.json")


@kind("fifo-data-mdb", "resources", [INFO, SEARCH])
def _fifo_data(t: Trial):
    """store.lmdb/data.mdb is a FIFO."""
    make_fifo(t.store / "data.mdb")


@kind("symlink-to-fifo-faiss", "resources", [SEARCH, VERIFY])
def _fifo_link(t: Trial):
    """image.faiss is a symlink to a FIFO outside the index."""
    os.mkfifo(t.root / "outside.fifo")
    replace_with_symlink(t.idx / "image.faiss", t.root / "outside.fifo")


@kind("fifo-image-query", "resources", [S("search", "{idx}", "--image", "{root}/query.jpg", "-k", "3")])
def _fifo_query(t: Trial):
    """`search --image` names a FIFO."""
    os.mkfifo(t.root / "query.jpg")


@kind("dev-zero-image-query", "resources", [S("search", "{idx}", "--image", "{root}/zero.jpg", "-k", "3")])
def _zero_query(t: Trial):
    """`search --image` names a symlink to /dev/zero (endless bytes)."""
    os.symlink("/dev/zero", t.root / "zero.jpg")


@kind("fifo-kg-entities", "resources", [S("search", "{idx}", "cat", "--kg", "{kg}", "--expand", "multi", "-k", "3")])
def _fifo_kg(t: Trial):
    """A user KG whose entities.json.gz is a FIFO."""
    make_fifo(t.kg / "entities.json.gz")


@kind("dangling-symlinks", "resources", [SEARCH, VERIFY, REPAIR, VERIFY_OK])
def _dangling(t: Trial):
    """image.faiss and caption.faiss.json are dangling symlinks to a path outside the index."""
    replace_with_symlink(t.idx / "image.faiss", t.absent)
    replace_with_symlink(t.idx / "caption.faiss.json", t.absent)


@kind("faiss-header-4gib", "resources", [SEARCH, VERIFY])
def _faiss_bomb(t: Trial):
    """A 90-byte image.faiss whose header declares 4 GiB of vectors (its sidecar does not match)."""
    (t.idx / "image.faiss").write_bytes(faiss_header_bomb())


@kind("faiss-header-4gib-sidecar", "resources", [SEARCH, VERIFY])
def _faiss_bomb_sidecar(t: Trial):
    """The same 4 GiB header, with a sidecar whose size and CRC match it (only n and dim can tell)."""
    (t.idx / "image.faiss").write_bytes(faiss_header_bomb())
    write_matching_sidecar(t, "image.faiss", 1 << 25)


@kind("faiss-truncated", "resources", [SEARCH, VERIFY, *REPAIRED])
def _faiss_trunc(t: Trial):
    """image.faiss cut to half its length."""
    p = t.idx / "image.faiss"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


@kind("faiss-random", "resources", [SEARCH, VERIFY, *REPAIRED])
def _faiss_random(t: Trial):
    """image.faiss replaced by random bytes of the same length."""
    p = t.idx / "image.faiss"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, p.stat().st_size, dtype=np.uint8).tobytes())


@kind("ef-search-2e9", "resources", [SEARCH, VERIFY])
def _ef_huge(t: Trial):
    """index.json sets efSearch to 2,000,000,000."""
    m = read_manifest(t)
    m["faiss"]["image"]["params"]["efSearch"] = 2_000_000_000
    write_manifest(t, m)


@kind("manifest-sparse-3gb", "resources", READERS)
def _manifest_sparse(t: Trial):
    """index.json declares 3 GB: the real manifest followed by a sparse hole (a few KB on disk)."""
    with open(t.idx / "index.json", "r+b") as fh:
        fh.truncate(3 << 30)


@kind("manifest-9mb", "resources", READERS)
def _manifest_big(t: Trial):
    """A valid 9 MB index.json whose failure examples are 2 million empty lists."""
    m = read_manifest(t)
    m["failures"]["examples"] = [[] for _ in range(2_000_000)]
    (t.idx / "index.json").write_text(json.dumps(m, separators=(",", ":")))


@kind("manifest-nested", "resources", READERS)
def _manifest_nested(t: Trial):
    """index.json holds 100,000 nested lists (deeper than Python's recursion limit)."""
    m = read_manifest(t)
    text = json.dumps(m)
    (t.idx / "index.json").write_text(text[:-1] + ', "x": ' + nested_json(100_000) + "}")


@kind("manifest-bad-types", "resources", READERS)
def _manifest_types(t: Trial):
    """index.json fields of the wrong type and range: generation "x", dim -1, faiss a string."""
    m = read_manifest(t)
    m.update(generation="x", faiss="oops")
    m["model"]["dim"] = -1
    write_manifest(t, m)


@kind("manifest-dim-huge", "resources", [SEARCH, VERIFY])
def _manifest_dim(t: Trial):
    """index.json declares a 2**31-dimensional model (the store and FAISS say 32)."""
    m = read_manifest(t)
    m["model"]["dim"] = 1 << 31
    write_manifest(t, m)
