"""Fusion and filters: pure functions, exact expectations."""

from __future__ import annotations

import pytest

from retrieval.query import fusion
from retrieval.errors import UsageError
from retrieval.query.filters import FilterError, matches, parse_filter, parse_filters


def test_minmax_and_z():
    assert fusion.normalise([(1, 3.0), (2, 1.0), (3, 2.0)]) == [(1, 1.0), (2, 0.0), (3, 0.5)]
    assert fusion.normalise([(1, 5.0), (2, 5.0)]) == [(1, 1.0), (2, 1.0)]
    z = dict(fusion.normalise([(1, 1.0), (2, 2.0), (3, 3.0)], "z"))
    assert z[2] == pytest.approx(0.0) and z[3] == pytest.approx(-z[1]) and z[3] == pytest.approx(1.2247, abs=1e-4)
    assert fusion.normalise([], "z") == []
    with pytest.raises(ValueError):
        fusion.normalise([(1, 1.0)], "bogus")


def test_weighted_sum_normalises_scales():
    # list a on a cosine scale, list b on a scale 100x larger: raw sums would let b decide alone
    a = [(1, 0.30), (2, 0.29), (3, 0.10)]
    b = [(3, 90.0), (2, 80.0), (1, 10.0)]
    fused = fusion.weighted_sum([a, b], [0.5, 0.5])
    s = dict(fused)
    assert s[2] == pytest.approx(0.5 * 0.95 + 0.5 * 0.875)
    assert [i for i, _ in fused] == [2, 1, 3] or [i for i, _ in fused] == [2, 3, 1]
    assert fused[0][0] == 2
    # weights matter
    assert fusion.weighted_sum([a, b], [1.0, 0.0])[0][0] == 1
    assert fusion.weighted_sum([a, b], [0.0, 1.0])[0][0] == 3


def test_weighted_sum_missing_ids_get_the_list_floor():
    a = [(1, 1.0), (2, 0.0)]
    b = [(3, 1.0), (1, 0.0)]
    s = dict(fusion.weighted_sum([a, b]))
    assert s == {1: 1.0, 2: 0.0, 3: 1.0}
    s = dict(fusion.weighted_sum([a, b], missing=-1.0))
    assert s[2] == -1.0 and s[3] == 0.0


def test_rrf_uses_ranks_only():
    a = [(1, 100.0), (2, 99.0)]
    b = [(2, 0.001), (3, 0.0005)]
    fused = fusion.rrf([a, b], k=60)
    s = dict(fused)
    assert s[2] == pytest.approx(1 / 62 + 1 / 61)
    assert s[1] == pytest.approx(1 / 61)
    assert fused[0][0] == 2
    assert dict(fusion.rrf([a, b], [2.0, 0.0]))[1] == pytest.approx(2 / 61)
    with pytest.raises(ValueError):
        fusion.rrf([a], [1.0, 2.0])


def _max_fuse(lists, weights):
    """The reference: each id's best weighted raw score over the lists, score down then id up."""
    out = {}
    for w, lst in zip(weights, lists):
        for i, s in lst:
            v = w * float(s)
            if i not in out or v > out[i]:
                out[i] = v
    return sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))


def _argbest(lists, weights):
    """The reference: for each id, the first list that gave its best weighted score."""
    best = {}
    for li, (w, lst) in enumerate(zip(weights, lists)):
        for i, s in lst:
            v = w * float(s)
            if i not in best or v > best[i][0]:
                best[i] = (v, li)
    return {i: li for i, (_, li) in best.items()}


def test_max_fuse_arrays_small_example():
    import numpy as np

    scores = np.array([[0.5, 0.4], [0.9, 0.3]])
    ids = np.array([[1, 2], [2, 3]])
    fused, best, raw = fusion.max_fuse_arrays(scores, ids, [1.0, 0.5])
    assert fused == [(1, 0.5), (2, 0.45), (3, 0.15)]
    assert best == {1: 0, 2: 1, 3: 1} and raw == {1: 0.5, 2: 0.9, 3: 0.3}


def test_fuse_hybrid_dispatches_to_sum_and_rrf():
    a = [(1, 0.9), (2, 0.5)]
    b = [(2, 0.8), (3, 0.1)]
    assert fusion.fuse_hybrid("sum", a, b, 0.7, norm="minmax") == fusion.weighted_sum([a, b], [1.0 - 0.7, 0.7])
    assert fusion.fuse_hybrid("rrf", a, b, 0.7, rrf_k=10) == fusion.rrf([a, b], [1.0 - 0.7, 0.7], k=10)
    with pytest.raises(ValueError, match="unknown hybrid fusion"):
        fusion.fuse_hybrid("max", a, b, 0.5)


def test_max_fuse_arrays_equals_the_list_functions():
    """The array form the Searcher uses for several query vectors gives the reference loop's list
    (ties included: few distinct scores, shared ids, -1 padding) and best lists."""
    import numpy as np

    rng = np.random.default_rng(0)
    for trial in range(50):
        r, f = int(rng.integers(1, 6)), int(rng.integers(1, 12))
        scores = rng.choice([0.1, 0.25, 0.5, 0.7], size=(r, f)).astype(np.float32)
        ids = np.stack([rng.choice(30, f, replace=False) for _ in range(r)]).astype(np.int64)
        ids[rng.random((r, f)) < 0.1] = -1
        weights = rng.choice([1.0, 0.5, 0.8], size=r).tolist()
        lists = [[(i, s) for s, i in zip(srow, irow) if i >= 0]
                 for srow, irow in zip(scores.tolist(), ids.tolist())]
        limit = int(rng.integers(1, 40))
        fused, best, raw = fusion.max_fuse_arrays(scores, ids, weights, limit=limit)
        assert fused == _max_fuse(lists, weights)[:limit]
        ref_best = _argbest(lists, weights)
        assert best == {i: ref_best[i] for i, _ in fused}
        assert raw == {i: dict(lists[ref_best[i]])[i] for i, _ in fused}
    assert fusion.max_fuse_arrays(np.zeros((2, 0)), np.zeros((2, 0), np.int64), [1.0, 1.0]) == ([], {}, {})


def test_ties_are_deterministic():
    import numpy as np

    fused, _, _ = fusion.max_fuse_arrays(np.ones((1, 3)), np.array([[5, 3, 4]]), [1.0])
    assert fused == [(3, 1.0), (4, 1.0), (5, 1.0)]
    assert fusion.best_first({5: 1.0, 3: 1.0, 4: 2.0}, 2) == [(4, 2.0), (3, 1.0)]


ITEM = {
    "id": 7, "path": "/photos/2023/cat.jpg", "size": 12345, "mtime": 1.7e9, "width": 640, "height": 480,
    "captions": ["a cat on a sofa", "a tabby"], "concepts": [["n02123045", 0.8]], "aliases": ["/b/cat2.jpg"],
    "meta": {"camera": "Canon", "iso": 200},
}


@pytest.mark.parametrize(
    "expr,ok",
    [
        ("width>=500", True), ("width>640", False), ("width=640", True), ("height<480", False),
        ("height<=480", True), ("size!=12345", False), ("id=7", True),
        ("meta.camera=Canon", True), ("meta.camera=Nikon", False), ("meta.camera=Nikon|Canon", True),
        ("meta.camera!=Nikon", True), ("meta.iso>100", True), ("meta.lens=50mm", False), ("meta.lens!=50mm", True),
        ("path~*/2023/*", True), ("path=*.png", False), ("path=/b/cat2.jpg", True), ("path!=*/2023/*", False),
        ("caption~*sofa*", True), ("caption=a tabby", True), ("captions~*dog*", False),
        ("concept=n02123045", True), ("concept=n02084071", False),
        ("width >= 500", True), ("meta.camera == Canon", True),
    ],
)
def test_filters(expr, ok):
    assert matches(ITEM, [parse_filter(expr)]) is ok


@pytest.mark.parametrize(
    "expr,msg",
    [
        ("", "empty --filter"), ("width", "expected FIELD OP VALUE"), ("colour=red", "unknown field 'colour'"),
        ("width>=", "no value"), ("width>>5", "starts with an operator"), ("width>big", "needs a number"),
        ("meta.camera=Canon|", "empty alternative"), ("=5", "expected FIELD OP VALUE"),
    ],
)
def test_filter_errors(expr, msg):
    with pytest.raises(FilterError, match=msg) as e:
        parse_filter(expr)
    assert isinstance(e.value, UsageError) and e.value.exit_code == 2
    assert "\n" not in str(e.value)


def test_filters_are_anded_and_none_fails():
    fs = parse_filters(["width>=500", "meta.camera=Canon"])
    assert matches(ITEM, fs)
    assert not matches(ITEM, parse_filters(["width>=500", "meta.camera=Sony"]))
    assert not matches(None, fs)
    assert parse_filters(None) == [] and len(parse_filters("width>1")) == 1
