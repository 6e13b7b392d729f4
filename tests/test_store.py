"""The LMDB store: ids, aliases, removal, captions, map growth, the writer lock."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from indexer.store import Store, WriteLock
from retrieval.errors import IndexLocked, IndexNotFound


def _vec(seed, d=8):
    v = np.random.default_rng(seed).standard_normal(d).astype(np.float32)
    return v / np.linalg.norm(v)


def _add(txn, key, sha, seed, captions=(), cap_vecs=None):
    return txn.add_path(key, sha256=sha, size=1, mtime_ns=1, width=2, height=3, vector=_vec(seed),
                        captions=list(captions), cap_vecs=cap_vecs, meta={"k": key})


def test_ids_aliases_and_promotion(tmp_path):
    s = Store(str(tmp_path), create=True)
    ids = s.write(lambda t: [_add(t, "/a", "h1", 1), _add(t, "/b", "h2", 2), _add(t, "/c", "h1", 3)])
    assert ids == [0, 1, 0]  # /c has /a's content: an alias, not a new item
    assert s.count("items") == 2 and s.count("paths") == 3 and s.generation == 1
    a = s.get_items([0])[0]
    assert a["path"] == "/a" and a["aliases"] == ["/c"] and a["meta"] == {"k": "/a"}
    np.testing.assert_array_equal(s.get_vectors([0], 8)[0], _vec(1))  # the first content's vector is kept
    s.write(lambda t: t.remove_path("/a"))
    a = s.get_items([0])[0]
    assert a["path"] == "/c" and a["aliases"] == []  # the alias is promoted
    s.write(lambda t: t.remove_path("/c"))
    assert s.get_items([0]) == [None] and not s.has_hash("h1") and s.count("vecs") == 1
    nid = s.write(lambda t: _add(t, "/d", "h3", 4))
    assert nid == 2  # ids are never reused
    assert s.generation == 4
    s.close()


def test_captions_belong_to_items_and_go_with_their_path(tmp_path):
    s = Store(str(tmp_path), create=True)
    cv = np.stack([_vec(10), _vec(11)])
    s.write(lambda t: [_add(t, "/a", "h1", 1, ["x", "y"], cv), _add(t, "/b", "h1", 2, ["z"], cv[:1])])
    it = s.get_items([0])[0]
    assert it["captions"] == ["x", "y", "z"]
    ids, vecs, owners = next(s.iter_vectors("caption"))
    assert list(ids) == [0, 1, 2] and list(owners) == [0, 0, 0]
    s.write(lambda t: t.remove_path("/b"))
    assert s.count("capvecs") == 2 and s.get_items([0])[0]["captions"] == ["x", "y"]
    s.write(lambda t: t.update_path("/a", size=5, mtime_ns=6, captions=["w"], cap_vecs=cv[1:]))
    it = s.get_items([0])[0]
    assert it["captions"] == ["w"] and it["size"] == 5 and s.count("capvecs") == 1
    s.close()


def test_failures_replace_paths(tmp_path):
    s = Store(str(tmp_path), create=True)
    s.write(lambda t: _add(t, "/a", "h1", 1))
    s.write(lambda t: t.set_failure("/a", "truncated", 3, 4))
    assert s.get_path("/a") is None and s.count("items") == 0
    assert s.get_failure("/a") == {"reason": "truncated", "size": 3, "mtime_ns": 4}
    s.write(lambda t: _add(t, "/a", "h1", 1))
    assert s.get_failure("/a") is None
    s.close()


def test_map_grows_when_full(tmp_path):
    s = Store(str(tmp_path), create=True, map_size=64 << 10)
    big = np.ones(20_000, np.float32)

    def fn(t):
        for i in range(20):
            t.add_path(f"/p{i}", sha256=f"h{i}", size=1, mtime_ns=1, width=1, height=1, vector=big / 141.42)

    s.write(fn)
    assert s.count("items") == 20
    assert s.env.info()["map_size"] > 64 << 10
    s.close()


def test_iteration_streams_in_id_order(tmp_path):
    s = Store(str(tmp_path), create=True)
    s.write(lambda t: [_add(t, f"/{i:05d}", f"h{i}", i) for i in range(2500)])
    got = [i for ids, _, _ in s.iter_vectors("image", batch=1000) for i in ids]
    assert got == list(range(2500))
    assert [i for i, _ in s.iter_items()] == list(range(2500))
    s.close()


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(IndexNotFound, match="not a kgclip index"):
        Store(str(tmp_path))


def test_writer_lock_names_the_holder(tmp_path):
    code = (
        "import sys, time; from indexer.store import WriteLock; l = WriteLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(IndexLocked, match=f"locked by pid {p.pid}"):
            WriteLock(str(tmp_path)).acquire()
    finally:
        p.kill()
        p.wait()
    # the kernel released the dead writer's lock
    with WriteLock(str(tmp_path)):
        assert open(os.path.join(tmp_path, "write.lock")).read() == str(os.getpid())
