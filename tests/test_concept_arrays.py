"""Vectorised concept grounding equals the plain per-posting loop it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import IndexCorrupt
from retrieval.query.grounding import ConceptArrays, ground, shape


def _reference(rows, ids, targets):
    """The original loop: mass per item (capped at 1) and its best (weight x p) concept, first target on ties."""
    table: dict[str, list[tuple[int, float]]] = {}
    for i, concepts in zip(ids, rows):
        for wnid, p in concepts:
            table.setdefault(wnid, []).append((i, p))
    mass, best = {}, {}
    for wnid, (w, _path) in targets.items():
        for i, p in table.get(wnid, ()):
            b = w * p
            mass[i] = mass.get(i, 0.0) + b
            if i not in best or b > best[i][0]:
                best[i] = (b, wnid, p)
    return {i: min(m, 1.0) for i, m in mass.items()}, {i: (b[1], b[2]) for i, b in best.items()}


def _profiles(rng, n_items=400, n_classes=60, top=5):
    classes = [f"n{j:08d}" for j in range(n_classes)]
    ids = np.array(sorted(rng.choice(10_000, n_items, replace=False).tolist()), np.int64)
    cls = np.stack([rng.choice(n_classes, top, replace=False) for _ in ids]).astype(np.int32)
    prob = np.round(rng.dirichlet(np.ones(top), len(ids)), 4).astype(np.float32)
    return classes, ids, cls, prob


def test_ground_and_best_match_the_loop():
    rng = np.random.default_rng(0)
    classes, ids, cls, prob = _profiles(rng)
    # two chunks, as an index hands them over
    arr = ConceptArrays.from_profiles([(ids[:150], cls[:150], prob[:150]), (ids[150:], cls[150:], prob[150:])],
                                      classes)
    rows = [[(classes[c], float(p)) for c, p in zip(cr, pr)] for cr, pr in zip(cls.tolist(), prob.tolist())]
    assert set(arr.vocab) == {classes[c] for c in np.unique(cls)}
    for trial in range(20):
        chosen = rng.choice(len(classes), int(rng.integers(1, 25)), replace=False)
        # equal weights on purpose (ties), plus a target no item carries
        targets = {classes[j]: (float(rng.choice([0.5, 1.0, rng.uniform(0.1, 2)])), ["path"]) for j in chosen}
        targets["n99999999"] = (1.0, ["path"])
        ref_mass, ref_best = _reference(rows, ids.tolist(), targets)
        g = arr.ground(targets)
        if not ref_mass:
            assert g is None
            continue
        got_rows, mass, order = g
        got = {int(arr.ids[r]): float(b) for r, b in zip(got_rows, mass)}
        assert got.keys() == ref_mass.keys()
        for i in got:
            assert abs(got[i] - ref_mass[i]) < 1e-5  # float32 profiles
        for r in got_rows.tolist():
            assert arr.best(r, targets, order) == ref_best[int(arr.ids[r])]


def test_no_profiles_and_a_class_out_of_range():
    assert ConceptArrays.from_profiles([], ["a"]) is None
    assert ConceptArrays.from_profiles([(np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, 2)))], ["a"]) is None
    with pytest.raises(IndexCorrupt, match="names class 3 of 2"):
        ConceptArrays.from_profiles([(np.array([1]), np.array([[0, 3]]), np.array([[0.5, 0.5]]))], ["a", "b"])


def test_ground_adds_the_log_bonus_and_brings_in_concept_only_items():
    """An item in the vector list gains weight x shape(mass); the best-bonus items outside it join
    with their exact cosine read from the stored vectors."""
    classes = ["cat", "dog", "car"]
    ids = np.array([1, 2, 3], np.int64)
    cls = np.array([[0, 2], [1, 2], [2, 0]], np.int32)
    prob = np.array([[0.9, 0.1], [0.6, 0.4], [0.99, 0.01]], np.float32)
    arr = ConceptArrays.from_profiles([(ids, cls, prob)], classes)
    stored = {1: np.array([1.0, 0.0], np.float32), 2: np.array([0.0, 1.0], np.float32),
              3: np.array([0.6, 0.8], np.float32)}
    q0 = np.array([0.0, 1.0], np.float32)
    why: dict = {}
    out = ground([(3, 0.8)], q0, {"cat": (1.0, ["animal", "hyponym", "cat"])}, 2.5, 10, why, arr,
                 lambda i, kind="image": np.stack([stored[int(x)] for x in i]))
    got = dict(out)
    assert got[3] == pytest.approx(0.8 + 2.5 * float(shape(np.float32(0.01))), abs=1e-6)
    assert got[1] == pytest.approx(0.0 + 2.5 * float(shape(np.float32(0.9))), abs=1e-6)
    assert 2 not in got  # no cat in it, and not a vector candidate
    assert [i for i, _ in out] == [1, 3] and why[1]["vector"] == (0, 0.0)
    assert shape(np.array([0.0, 1.0])).tolist() == [0.0, 1.0]
