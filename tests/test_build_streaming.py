"""The end of a build streams the store: exact search, tuning sample and sweep hold bounded batches."""

from __future__ import annotations

import functools
import importlib

import numpy as np
import pytest

from indexer import derive as I
from indexer import pipeline as P
from indexer import faiss as V
from indexer.store import Store


def _store(tmp_path, n=40, dim=6, dup_every=5):
    """``n`` items whose vectors repeat (ties) every ``dup_every`` ids; item i has i % 3 captions."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((dup_every, dim)).astype(np.float32)
    s = Store(str(tmp_path), create=True)

    def fill(t):
        for i in range(n):
            v = base[i % dup_every] if i % 2 else rng.standard_normal(dim).astype(np.float32)
            caps = [f"c{i}-{j}" for j in range(i % 3)]
            cv = rng.standard_normal((len(caps), dim)).astype(np.float32) if caps else None
            t.add_path(f"/img/{i:03d}.png", sha256=f"h{i}", size=1, mtime_ns=1, width=1, height=1, vector=v,
                       captions=caps, cap_vecs=cv)

    s.write(fill)
    return s


def _brute_force(store, kind, q, k):
    ids, vecs, owners = next(store.iter_vectors(kind, batch=10**6))
    ids = ids if owners is None else owners
    s = q @ vecs.T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]  # a tie goes to the earlier stored vector
    return np.take_along_axis(s, top, 1), ids[top]


@pytest.mark.parametrize("kind", ["image", "caption"])
def test_exact_search_merges_small_batches_like_one_sort(tmp_path, monkeypatch, kind):
    s = _store(tmp_path)
    # batches of 7 stored vectors and 3 queries at a time: many merges, ties across batch boundaries
    monkeypatch.setattr(Store, "iter_vectors", functools.partialmethod(Store.iter_vectors, batch=7))
    monkeypatch.setattr(V.exact, "EXACT_QUERY_ROWS", 3)
    try:
        with s.read() as txn:
            _, vecs, _ = next(s.iter_vectors(kind, batch=10**6))
            rand = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
            q = np.concatenate([vecs[:6], rand])
            for k in (1, 4, 200):  # 200 > stored vectors: the rest pads with -1 / -inf
                got_s, got_i = V.exact_search(q, I.iter_vectors(s, kind, txn), k)
                want_s, want_i = _brute_force(s, kind, q, min(k, len(vecs)))
                np.testing.assert_allclose(got_s[:, : want_s.shape[1]], want_s, rtol=1e-6)
                np.testing.assert_array_equal(got_i[:, : want_i.shape[1]], want_i)
                w = want_i.shape[1]
                assert (got_i[:, w:] == -1).all() and np.isneginf(got_s[:, w:]).all()
    finally:
        s.close()


@pytest.mark.parametrize("kind", ["image", "caption"])
def test_sample_rows_read_keys_then_only_those_vectors(tmp_path, monkeypatch, kind):
    """The training sample and tuning queries are read by position without a pass over the vectors:
    the keys are walked, then only the sampled vectors read; they equal the streamed walk's rows."""
    s = _store(tmp_path, n=30)
    try:
        with s.read() as txn:
            walk = list(I.iter_vectors(s, kind, txn))
            vecs = np.concatenate([v for _ids, v in walk])
            rows = np.array([0, 3, 4, len(vecs) - 1])
            read = I.rows_reader(s, kind, 6, txn)

            def no_vectors(*a, **kw):
                raise AssertionError("reading sample rows must not walk the stored vectors")

            monkeypatch.setattr(Store, "iter_vectors", no_vectors)
            got = read(rows)
            monkeypatch.undo()
            np.testing.assert_array_equal(got, vecs[rows])
            assert read(np.zeros(0, np.int64)).shape == (0, 6)
    finally:
        s.close()


def test_seen_keys_is_exact_on_added_keys():
    seen = P.SeenKeys()
    keys = [f"/data/{i}/photo é {i}.jpg" for i in range(3000)] + ["/odd/\udcff.png", ""]
    for k in keys[::2]:
        seen.add(k)
    assert seen.contains(keys).tolist() == [i % 2 == 0 for i in range(len(keys))]
    seen.add(keys[1])  # added after a lookup: still found
    seen.add(keys[0])  # twice: harmless
    assert keys[1] in seen and keys[0] in seen and keys[3] not in seen
    assert P.SeenKeys().contains(["/x"]).tolist() == [False]


def test_sweep_streams_keys_and_removes_gone_ones_in_chunks(tmp_path, monkeypatch):
    s = _store(tmp_path, n=25)
    s.write(lambda t: [t.set_failure(f"/bad/{i}.png", "cannot decode") for i in range(7)])
    for name in ("path_keys", "failure_keys"):  # no list of every stored key
        monkeypatch.setattr(Store, name, lambda self: pytest.fail("the sweep must stream the keys"))
    keep = {f"/img/{i:03d}.png" for i in range(25) if i % 3} | {"/bad/1.png", "/bad/4.png"}
    seen = P.SeenKeys()
    for k in keep:
        seen.add(k)
    gen = s.generation
    try:
        removed = P.sweep(s, seen, chunk=4)
        assert removed == 9  # paths 0, 3, ..., 24
        left = [k for chunk in s.iter_key_chunks("paths", 5) for k in chunk]
        fails = [k for chunk in s.iter_key_chunks("fails", 5) for k in chunk]
        assert set(left) | set(fails) == keep and left == sorted(left)
        assert s.count("items") == 16 and s.count("vecs") == 16
        # 9 gone paths + 5 gone failures, 4 to a transaction, paths first: 4 writes
        assert s.generation == gen + 4
        assert P.sweep(s, seen, chunk=4) == 0 and s.generation == gen + 4  # nothing gone: no write
    finally:
        s.close()


@pytest.mark.parametrize("kind", ["image", "caption"])
def test_hnsw_is_tuned_on_vectors_held_out_of_the_graph_then_holds_them_all(tmp_path, monkeypatch, kind):
    """HNSW tuning queries are kept out of the graph while it is tuned (leave-one-out on indexed
    vectors overstates HNSW recall), their ground truth leaves them out too, and they are added after."""
    s = _store(tmp_path, n=300, dim=6, dup_every=300)
    monkeypatch.setattr(I, "TUNE_QUERIES", 20)
    monkeypatch.setattr(V.choose, "FLAT_MAX_N", 10)  # captions take the auto choice: HNSW here too
    calls, held = [], []
    real_tune = V.tune

    def spy_tune(index, choice, queries, gt, **kw):
        calls.append((index.ntotal, kw.get("query_ids")))
        # the ground truth leaves the held-out queries out: no query finds itself, its own id at its own
        # score (all vectors are distinct; a caption's siblings share its id, not its score)
        gt_s, gt_i = gt
        q = np.asarray(queries)
        own = [all_ids[np.flatnonzero((all_vecs == v).all(axis=1))[0]] for v in q]
        self_s = (q * q).sum(axis=1, keepdims=True)
        held.append(not ((gt_i == np.array(own)[:, None]) & np.isclose(gt_s, self_s)).any())
        return real_tune(index, choice, queries, gt, **kw)

    monkeypatch.setattr(importlib.import_module("indexer.faiss.tune"), "tune", spy_tune)  # the module, not V.tune
    keys, all_vecs, owners = next(s.iter_vectors(kind, batch=10**6))
    all_ids = np.asarray(owners if owners is not None else keys, np.int64)
    try:
        with s.read() as txn:
            n = txn.stat(s.db["vecs" if kind == "image" else "capvecs"])["entries"]
            index, info = I.derive_faiss(s, str(tmp_path), kind, 6, index_type="hnsw", save=False, use_gpu=False)
            (ntotal_at_tune, query_ids), = calls
            assert info["kind"] == "hnsw" and info["tuned_on"] == "held-out sample"
            assert ntotal_at_tune == n - 20 and query_ids is None  # 20 held out, no self-match to drop
            assert held == [True]
            assert index.ntotal == n  # ... and added afterwards
            import faiss

            keys, vecs, owners = next(s.iter_vectors(kind, batch=10**6))
            ids = np.asarray(owners if owners is not None else keys, np.int64)
            # every stored vector is in the graph once, under its (owner) id
            assert sorted(faiss.vector_to_array(index.id_map).tolist()) == sorted(ids.tolist())
            # a small graph keeps leave-one-out on indexed vectors (too few vectors to hold 10% out)
            calls.clear()
            monkeypatch.setattr(I, "TUNE_QUERIES", 50)
            _index, info = I.derive_faiss(s, str(tmp_path), kind, 6, index_type="hnsw", save=False, use_gpu=False)
            # (caption ids are shared by an item's captions, so those cannot be left out)
            want = "indexed sample, leave-one-out" if kind == "image" else "indexed sample"
            assert info["tuned_on"] == want and calls[0][0] == n
            assert (calls[0][1] is not None) == (kind == "image")
    finally:
        s.close()
