"""Vectorised concept grounding equals the plain per-posting loop it replaced."""

from __future__ import annotations

import numpy as np

from retrieval.search import _ConceptArrays


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


def test_ground_and_best_match_the_loop():
    rng = np.random.default_rng(0)
    vocab = [f"n{j:08d}" for j in range(60)]
    ids = sorted(rng.choice(10_000, 400, replace=False).tolist())
    rows = []
    for _ in ids:
        m = int(rng.integers(0, 6))  # 0..5 concepts, as lite stores (some items none)
        picks = rng.choice(len(vocab), m, replace=False)
        rows.append([(vocab[j], float(round(p, 4))) for j, p in zip(picks, rng.dirichlet(np.ones(5))[:m])])
    used = sorted({w for r in rows for w, _ in r})
    arr = _ConceptArrays(ids, rows, used)
    for trial in range(20):
        chosen = rng.choice(len(vocab), int(rng.integers(1, 25)), replace=False)
        # equal weights on purpose (ties), plus a target no item carries
        targets = {vocab[j]: (float(rng.choice([0.5, 1.0, rng.uniform(0.1, 2)])), ["path"]) for j in chosen}
        targets["n99999999"] = (1.0, ["path"])
        ref_mass, ref_best = _reference(rows, ids, targets)
        g = arr.ground(targets)
        if not ref_mass:
            assert g is None
            continue
        got_rows, bonus, order = g
        got = {int(arr.ids[r]): float(b) for r, b in zip(got_rows, bonus)}
        assert got.keys() == ref_mass.keys()
        for i in got:
            assert abs(got[i] - ref_mass[i]) < 1e-12
        for r in got_rows.tolist():
            assert arr.best(r, targets, order) == ref_best[int(arr.ids[r])]


def _conse_vectors(table, weights, center):
    """Image vectors as lite's conse_mix makes them from per-image class weights (rows summing to 1)."""
    m = weights @ table
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    v = m - center * table.mean(axis=0)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_concept_mix_recovers_the_share_of_the_classes_in_a_vector():
    """The estimate is the classes' share of the mix over the length of the un-normalised mix."""
    from retrieval.search import _ConceptMix

    rng = np.random.default_rng(1)
    n_cls, dim = 40, 64  # fewer classes than dimensions: the ridge solution is exact as ridge -> 0
    table = rng.normal(size=(n_cls, dim))
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    ids = [f"n{j:08d}" for j in range(n_cls)]
    w = np.zeros((200, n_cls))
    for r in range(200):
        picks = rng.choice(n_cls, 6, replace=False)
        w[r, picks] = rng.dirichlet(np.ones(6))
    for center in (0.0, 0.3):
        mix = _ConceptMix(table, ids, center, ridge=1e-9)
        vecs = _conse_vectors(table, w, center).astype(np.float32)
        length = np.linalg.norm(w @ table, axis=1)
        for _ in range(5):
            chosen = rng.choice(n_cls, 8, replace=False)
            targets = {ids[j]: (1.0, ["path"]) for j in chosen}
            targets["n99999999"] = (1.0, ["path"])  # not a class: ignored
            got = mix.share(vecs, mix.direction(targets))
            assert np.allclose(got, w[:, chosen].sum(axis=1) / length, atol=1e-4)
        # target weights weight the classes' shares
        targets = {ids[0]: (0.5, []), ids[1]: (1.0, [])}
        got = mix.share(vecs, mix.direction(targets))
        assert np.allclose(got, (0.5 * w[:, 0] + w[:, 1]) / length, atol=1e-4)
    assert mix.direction({"n99999999": (1.0, [])}) is None
