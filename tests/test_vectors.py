"""indexer.faiss: index choice, tuned recall, search/rerank, removals, atomic save/load.

Seeded synthetic clustered vectors with exact ground truth (indexer.synthetic);
small n so the whole file runs in seconds.
"""

import json
import os

import numpy as np
import pytest

from indexer import synthetic as S
from indexer import faiss as V
from retrieval.errors import IndexCorrupt, IndexNotFound, UsageError

G = 1 << 30
DIM = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # deterministic and no OpenMP spinning on a shared CPU
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    n = 3000
    x = S.clustered(n, DIM, n_clusters=30, seed=1)
    ids = np.arange(n, dtype=np.int64) * 5 + 7  # store ids, not row numbers
    return x, ids


def _rerank_fn(x, ids):
    return lambda sel: x[np.searchsorted(ids, sel)]


def _build(x, ids, index_type, **kw):
    return V.build_and_tune(len(x), x.shape[1], lambda: S.batches(ids, x, 700), lambda rows: x[rows],
                            index_type=index_type, rerank_fn=_rerank_fn(x, ids), use_gpu=False, **kw)


# ------------------------------------------------------------------ choice


@pytest.mark.parametrize("n,dim,budget,kind", [
    (0, 512, 16 * G, "flat"),
    (1, 512, 16 * G, "flat"),
    (V.FLAT_MAX_N, 512, 16 * G, "flat"),
    (V.FLAT_MAX_N + 1, 512, 16 * G, "hnsw"),
    (1_000_000, 512, 16 * G, "hnsw"),
    (V.HNSW_MAX_N + 1, 512, 64 * G, "ivf"),        # too many for an HNSW build
    (100_000, 512, 215 * (1 << 20), "ivf"),        # vectors fit, the HNSW graph does not
    (1_000_000, 512, 1 * G, "ivfpq"),              # raw vectors (2 GB) do not fit
    (100_000, 512, 20 * (1 << 20), "ivfpq"),
])
def test_auto_choice_by_n_dim_memory(n, dim, budget, kind):
    c = V.choose_index(n, dim, budget)
    assert c.kind == kind
    assert c.rerank == (kind == "ivfpq")
    assert c.params["memory_bytes"] <= budget or c.params.get("over_budget")


def test_ivfpq_code_size_follows_budget():
    big = V.choose_index(1_000_000, 512, 1 * G)
    small = V.choose_index(1_000_000, 512, 50 * (1 << 20))
    assert big.params["pq_m"] == V.PQ_MAX_M and big.factory == "IVF4096,PQ64x8"
    assert small.params["pq_m"] < big.params["pq_m"]
    assert 512 % small.params["pq_m"] == 0
    assert small.params["memory_bytes"] <= 50 * (1 << 20)


def test_forced_types_and_tiny_fallbacks():
    assert V.choose_index(10, 64, index_type="hnsw").kind == "hnsw"
    assert V.choose_index(10, 64, index_type="ivf").params["nlist"] == 1
    c = V.choose_index(10, 64, index_type="ivfpq")
    assert c.kind == "ivf" and c.params["fallback_from"] == "ivfpq"
    assert V.choose_index(0, 64, index_type="ivf").kind == "flat"
    assert V.choose_index(0, 64, index_type="ivfpq").kind == "flat"
    with pytest.raises(UsageError, match="index-type"):
        V.choose_index(10, 64, index_type="lsh")
    with pytest.raises(UsageError):
        V.choose_index(-1, 64)


def test_nlist_and_memory_parsing():
    assert V.nlist_for(1_000_000) == 4096
    assert V.nlist_for(100) == 2  # bounded by 39 training points per list
    assert V.nlist_for(1) == 1 and V.nlist_for(0) == 1
    assert V.parse_memory("4G") == 4 * G and V.parse_memory("512MB") == 512 << 20
    assert V.parse_memory(None) is None and V.parse_memory(123) == 123
    with pytest.raises(UsageError, match="max-memory"):
        V.parse_memory("lots")


# ------------------------------------------------------------------ tuning and recall


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf", "ivfpq"])
def test_each_kind_reaches_target_recall_after_tuning(data, index_type):
    x, ids = data
    index, info = _build(x, ids, index_type)
    assert info["kind"] == index_type and index.ntotal == len(x)
    assert info["recall_low"] >= 0.95 and info["recall_at_k"] >= info["recall_low"]
    if index_type == "hnsw":
        assert set(info["params"]) == {"efSearch"}
    if index_type in ("ivf", "ivfpq"):
        assert 1 <= info["params"]["nprobe"] <= info["choice"]["params"]["nlist"]
    # an independent held-out sample of indexed vectors, exact ground truth
    rows = V.sample_rows(len(x), 300, seed=99)
    q = x[rows]
    gt = S.exact_topk(q, x, ids, 10)
    rr = _rerank_fn(x, ids) if info["rerank"] else None
    s, i = V.search(index, q, 10, info["params"], rerank_fn=rr)
    assert V.recall_at_k(i, gt[1], 10) >= 0.93
    assert set(i[i >= 0].tolist()) <= set(ids.tolist())  # store ids come back


def test_tune_finds_cheapest_parameter(data):
    x, ids = data
    choice = V.choose_index(len(x), DIM, index_type="ivf")
    index = V.build_vectors_index(choice, DIM, x, S.batches(ids, x), use_gpu=False)
    q = x[V.sample_rows(len(x), 200, seed=3)]
    gt = S.exact_topk(q, x, ids, 10)
    params, rec, low = V.tune(index, choice, q, gt, k=10, target=0.95)
    grid = [p for p in V.NPROBE_GRID if p < choice.params["nlist"]] + [choice.params["nlist"]]
    assert low >= 0.95 and rec >= low

    def low_at(p):
        s, i = V.search(index, q, 10, p)
        return V.recall_lower_bound(V.recall_at_k(i, gt[1], 10, s, gt[0], per_query=True))

    cheaper = [p for p in grid if p < params["nprobe"]]
    if cheaper:  # the grid's next cheaper setting misses the target (tuning bisects between the two)
        assert low_at({"nprobe": cheaper[-1]}) < 0.95
        assert low_at(params) == low
        s, i = V.search(index, q, 10, params)
        assert V.recall_at_k(i, gt[1], 10, s, gt[0]) == rec
    # on the sample mean alone (confidence 0) the target is met no later
    mean_only = V.tune(index, choice, q, gt, k=10, target=0.95, confidence=0.0)
    assert mean_only.recall >= 0.95 and mean_only.recall == mean_only.recall_low
    assert mean_only.params["nprobe"] <= params["nprobe"]
    # leave-one-out (queries are indexed vectors; their self-match is not counted): harder
    rows = V.sample_rows(len(x), 200, seed=3)
    loo, rec_loo, low_loo = V.tune(index, choice, q, lambda qq, kk: S.exact_topk(qq, x, ids, kk), k=10,
                                   target=0.95, query_ids=ids[rows])
    assert low_loo >= 0.95 and loo["nprobe"] >= params["nprobe"]
    # an unreachable target returns the most accurate setting with its recall
    params, rec, low = V.tune(index, choice, q, gt, k=10, target=1.01)
    assert params["nprobe"] == choice.params["nlist"] and low <= rec <= 1.0


def test_recall_lower_bound():
    assert V.recall_lower_bound(np.ones(50)) == 1.0
    r = np.array([1.0] * 95 + [0.0] * 5)  # mean 0.95, sd 0.219: bound = 0.95 - 1.645 * 0.0219
    assert V.recall_lower_bound(r) == pytest.approx(0.95 - 1.6449 * r.std(ddof=1) / 10, abs=1e-4)
    assert V.recall_lower_bound(r, confidence=0.0) == pytest.approx(0.95)
    # per-query recall: each query's share of its exact top-k
    per = V.recall_at_k(np.array([[1, 2, 3], [4, 5, 9]]), np.array([[1, 2, 3], [4, 5, 6]]), 3, per_query=True)
    np.testing.assert_allclose(per, [1.0, 2 / 3])


def test_auto_small_set_is_exact(data):
    x, ids = data
    index, info = _build(x, ids, "auto")
    assert info["kind"] == "flat" and info["recall_at_k"] == 1.0
    assert info["tuned_on"] == "exact" and info["n_queries"] == 0  # no exact search to tune an exact index
    q = x[:5]
    s, i = V.search(index, q, 3, info["params"])
    assert (i[:, 0] == ids[:5]).all()
    np.testing.assert_allclose(s[:, 0], 1.0, atol=1e-5)


# ------------------------------------------------------------------ search details


def test_exact_search_over_batches_matches_brute_force(data):
    x, ids = data
    q = S.queries_like(20, DIM, len(x), n_clusters=30, seed=1)
    s, i = V.exact_search(q, S.batches(ids, x, 333), 10)
    full = q @ x.T
    order = np.argsort(-full, axis=1)[:, :10]
    np.testing.assert_array_equal(i, ids[order])
    np.testing.assert_allclose(s, np.take_along_axis(full, order, 1), rtol=1e-5)


def test_exact_search_ties_go_to_the_earlier_vector_and_short_sets_pad():
    v = np.eye(4, dtype=np.float32)
    batches = [(np.array([10, 11]), v[[0, 1]]), (np.array([12, 13]), v[[0, 2]])]  # 12 repeats 10's vector
    s, i = V.exact_search(v[[0]], batches, 3)
    assert i[0].tolist() == [10, 12, 11] and s[0, :2].tolist() == [1.0, 1.0]
    s, i = V.exact_search(v[[0]], batches, 6)  # more than the 4 vectors there are
    assert i[0, 4:].tolist() == [-1, -1] and np.isneginf(s[0, 4:]).all()


def test_recall_is_tie_tolerant():
    gt_i = np.array([[1, 2, 3]])
    gt_s = np.array([[0.9, 0.8, 0.7]], dtype=np.float32)
    ann_i = np.array([[1, 2, 9]])  # 9 ties with 3
    assert V.recall_at_k(ann_i, gt_i, 3) == pytest.approx(2 / 3)
    assert V.recall_at_k(ann_i, gt_i, 3, np.array([[0.9, 0.8, 0.7]]), gt_s) == 1.0
    assert V.recall_at_k(ann_i, gt_i, 3, np.array([[0.9, 0.8, 0.6]]), gt_s) == pytest.approx(2 / 3)


def test_ivfpq_rerank_returns_exact_scores(data):
    x, ids = data
    index, info = _build(x, ids, "ivfpq")
    q = x[:8]
    s, i = V.search(index, q, 5, info["params"], rerank_fn=_rerank_fn(x, ids))
    exact = np.einsum("nd,nkd->nk", q, x[np.searchsorted(ids, i)])
    np.testing.assert_allclose(s, exact, rtol=1e-5, atol=1e-6)
    assert (np.diff(s, axis=1) <= 1e-6).all()
    assert (i[:, 0] == ids[:8]).all()


@pytest.mark.parametrize("n", [0, 1, 5])
@pytest.mark.parametrize("index_type", ["auto", "hnsw", "ivf", "ivfpq"])
def test_tiny_sets(n, index_type):
    x = S.clustered(max(n, 1), 16, n_clusters=2, seed=2)[:n]
    ids = np.arange(n, dtype=np.int64) + 100
    index, info = V.build_and_tune(n, 16, lambda: S.batches(ids, x), lambda rows: x[rows],
                                   index_type=index_type, rerank_fn=_rerank_fn(x, ids), use_gpu=False)
    assert index.ntotal == n
    q = S.clustered(2, 16, n_clusters=2, seed=3)
    s, i = V.search(index, q, 10, info["params"])
    assert s.shape == (2, 10) and i.dtype == np.int64 and s.dtype == np.float32
    assert (i >= 0).sum(axis=1).tolist() == [n, n]
    assert np.isneginf(s[i < 0]).all()
    if n:
        assert info["recall_at_k"] == 1.0


def test_removals(data):
    x, ids = data
    gone = ids[:50]
    for kind in ("flat", "ivf"):
        choice = V.choose_index(len(x), DIM, index_type=kind)
        index = V.build_vectors_index(choice, DIM, x, S.batches(ids, x), use_gpu=False)
        assert V.remove_ids(index, gone) == 50
        assert index.ntotal == len(x) - 50
        _s, i = V.search(index, x[:50], 10, {"nprobe": choice.params.get("nlist", 1)})
        assert not set(i.ravel().tolist()) & set(gone.tolist())
    hnsw = V.build_vectors_index(V.choose_index(len(x), DIM, index_type="hnsw"), DIM, None,
                                 S.batches(ids, x), use_gpu=False)
    assert V.remove_ids(hnsw, gone) is None  # caller rebuilds from the store
    assert hnsw.ntotal == len(x)


def test_bad_inputs(data):
    x, ids = data
    choice = V.choose_index(len(x), DIM, index_type="ivf")
    with pytest.raises(ValueError, match="train_sample"):
        V.build_vectors_index(choice, DIM, None, S.batches(ids, x), use_gpu=False)
    flat = V.build_vectors_index(V.choose_index(10, DIM), DIM, None, [(ids[:10], x[:10])], use_gpu=False)
    with pytest.raises(ValueError, match="shape"):
        V.search(flat, np.zeros((1, DIM + 1), np.float32), 3)
    with pytest.raises(ValueError, match="ids"):
        V.add_batches(flat, [(ids[:3], x[:4])])
    with pytest.raises(UsageError):
        V.search(flat, x[:1], 0)


# ------------------------------------------------------------------ save / load


def _flat(x, ids):
    return V.build_vectors_index(V.choose_index(len(x), x.shape[1]), x.shape[1], None, [(ids, x)],
                                 use_gpu=False)


def test_save_load_roundtrip(tmp_path, data):
    x, ids = data
    index, info = _build(x, ids, "ivf")
    p = tmp_path / "image.faiss"
    V.save_atomic(index, p, generation=7, meta=info)
    loaded, gen = V.load(p)
    assert gen == 7 and loaded.ntotal == len(x)
    meta = V.read_meta(p)
    assert meta["generation"] == 7 and meta["meta"]["params"] == info["params"]
    a = V.search(index, x[:20], 10, info["params"])
    b = V.search(loaded, x[:20], 10, meta["meta"]["params"])
    np.testing.assert_array_equal(a[1], b[1])
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_crash_mid_write_keeps_old_file(tmp_path, data, monkeypatch):
    x, ids = data
    p = tmp_path / "image.faiss"
    V.save_atomic(_flat(x[:100], ids[:100]), p, generation=1)

    def broken_write(index, path):
        with open(path, "wb") as f:
            f.write(b"half a faiss file")
        raise OSError("disk full")

    monkeypatch.setattr(V.files, "_write_index", broken_write)
    with pytest.raises(OSError, match="disk full"):
        V.save_atomic(_flat(x, ids), p, generation=2)
    monkeypatch.undo()
    old, gen = V.load(p)
    assert gen == 1 and old.ntotal == 100
    assert sorted(os.listdir(tmp_path)) == ["image.faiss", "image.faiss.json"]


def test_sidecar_mismatch_means_stale(tmp_path, data):
    x, ids = data
    p = tmp_path / "image.faiss"
    V.save_atomic(_flat(x[:100], ids[:100]), p, generation=3)
    side = tmp_path / "image.faiss.json"
    info = json.loads(side.read_text())
    info["crc32"] ^= 1  # e.g. a crash between the two renames
    side.write_text(json.dumps(info))
    assert V.load(p)[1] is None
    assert V.load(p, verify=False)[1] == 3
    side.unlink()
    assert V.load(p)[1] is None and V.read_meta(p) is None


def test_load_errors(tmp_path):
    with pytest.raises(IndexNotFound, match="missing"):
        V.load(tmp_path / "nope.faiss")
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"not faiss at all")
    with pytest.raises(IndexCorrupt, match="bad.faiss"):
        V.load(bad)


# ------------------------------------------------------------------ GPU


def test_gpu_requested_without_gpu_is_a_clear_error(data):
    if V.gpu_available():
        pytest.skip("a GPU is present")
    x, ids = data
    with pytest.raises(UsageError, match="GPU"):
        V.build_vectors_index(V.choose_index(10, DIM), DIM, None, [(ids[:10], x[:10])], use_gpu=True)
    assert V.to_gpu(_flat(x[:10], ids[:10])).__class__.__name__ != "GpuIndex"


@pytest.mark.gpu
@pytest.mark.skipif(not V.gpu_available(), reason="needs faiss with a GPU")
@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_gpu_matches_cpu(data, kind):
    x, ids = data
    choice = V.choose_index(len(x), DIM, index_type=kind)
    cpu = V.build_vectors_index(choice, DIM, x, S.batches(ids, x), use_gpu=False)
    gpu_built = V.build_vectors_index(choice, DIM, x, S.batches(ids, x), use_gpu=True)
    q = x[:200]
    params = {"nprobe": 8, "k_factor": 4} if kind != "flat" else {}
    rr = _rerank_fn(x, ids) if choice.rerank else None
    c = V.search(cpu, q, 10, params, rerank_fn=rr)
    g = V.search(V.to_gpu(cpu), q, 10, params, rerank_fn=rr)  # same index searched on the GPU
    assert V.recall_at_k(g[1], c[1], 10, g[0], c[0], eps=1e-4) >= 0.99
    gt = S.exact_topk(q, x, ids, 10)
    r_cpu = V.recall_at_k(c[1], gt[1], 10)
    r_gpu = V.recall_at_k(V.search(gpu_built, q, 10, params, rerank_fn=rr)[1], gt[1], 10)
    assert abs(r_cpu - r_gpu) <= 0.02  # GPU-trained index: same quality


def test_hnsw_build_and_tune_holds_the_tuning_queries_out_then_adds_them():
    n = 6000
    x = S.clustered(n, DIM, n_clusters=30, seed=2)
    ids = np.arange(n, dtype=np.int64) * 5 + 7
    index, info = V.build_and_tune(n, DIM, lambda: S.batches(ids, x, 700), lambda rows: x[rows],
                                   index_type="hnsw", use_gpu=False)
    assert info["tuned_on"] == "held-out" and info["recall_low"] >= 0.95 and index.ntotal == n
    import faiss

    assert sorted(faiss.vector_to_array(index.id_map).tolist()) == ids.tolist()
    # small sets keep leave-one-out (holding 500 of them out would tune a different graph)
    _index, info = V.build_and_tune(3000, DIM, lambda: S.batches(ids[:3000], x[:3000], 700),
                                    lambda rows: x[rows], index_type="hnsw", use_gpu=False)
    assert info["tuned_on"] == "leave-one-out"


def test_the_package_does_not_shadow_the_faiss_library():
    """indexer/faiss/ is ``indexer.faiss``: ``import faiss`` inside it (absolute) names the library."""
    import sys

    import faiss

    import indexer.faiss.build  # noqa: F401

    assert sys.modules["faiss"] is faiss and hasattr(faiss, "IndexFlatIP") and faiss is not V
    assert V.__name__ == "indexer.faiss" and V.search.__module__ == "indexer.faiss.search"
