"""Knowledge-grounded matching for `lite`: a query's hyponym closure scores images through their concepts."""

from __future__ import annotations

import pytest

from retrieval.kg import Expander, load_graph, match_concepts

NON_ANIMALS = ("coffee", "rocket", "camera", "coins", "clock")


@pytest.fixture(scope="module")
def concepts(lite_encoder, photos_dir):
    names = sorted(p.stem for p in photos_dir.glob("*.jpg"))
    batch = lite_encoder.encode_images([photos_dir / f"{n}.jpg" for n in names], with_concepts=True)
    return dict(zip(names, batch.concepts))


@pytest.fixture(scope="module")
def expander():
    return Expander(load_graph(), sense_encoder=None)


def scores(expander, concepts, query):
    targets = expander.concept_targets(query)
    return {n: match_concepts(targets, c) for n, c in concepts.items()}


def test_an_animal_reaches_chelsea_the_cat_through_hyponyms(expander, concepts):
    s = scores(expander, concepts, "an animal")
    score, why = s["chelsea"]
    assert score > 0.3
    assert why.startswith("animal -> hyponym ->") and "domestic cat" in why and "(p=" in why
    for name in NON_ANIMALS:
        assert s[name][0] == 0.0, (name, concepts[name])
    assert s["chelsea"][0] == max(v[0] for n, v in s.items() if n in ("chelsea", *NON_ANIMALS))


def test_a_cat_reaches_chelsea_only(expander, concepts):
    s = scores(expander, concepts, "a photo of cats")
    assert [n for n, (v, _) in s.items() if v > 0] == ["chelsea"]


def test_a_vehicle_reaches_the_rocket(expander, concepts):
    s = scores(expander, concepts, "a vehicle")
    assert s["rocket"][0] > 0.1 and "vehicle -> hyponym" in s["rocket"][1]
    assert s["chelsea"][0] == 0.0 and s["coffee"][0] == 0.0


def test_concept_targets_within_the_imagenet_vocabulary(expander):
    from retrieval.encoders.lite import imagenet_classes

    vocab = {c[0] for c in imagenet_classes()}
    t = expander.concept_targets("a dog", within=vocab)
    assert 100 < len(t) < 150  # ImageNet's ~120 dog breeds
    assert all(path[0] == "dog" for _w, path in t.values())


def test_class_mix_share_read_off_the_vector_follows_the_mix(lite_encoder, photos_dir, expander):
    """The Searcher's concept-mix estimate (from the stored vector alone) against what it estimates: the
    share of the query's classes among the top-k classes each lite vector mixes (conse_mix's weights)
    over the length of the un-normalised mix. Not exact with 1000 classes in 384 dimensions, but it
    follows it, and a cat query singles out the cat."""
    import numpy as np

    from retrieval.encoders import load_image
    from retrieval.encoders.lite import conse_mix, imagenet_ancestors, imagenet_classes
    from retrieval.search import _ConceptMix

    ids = [c[0] for c in imagenet_classes()]
    assert sorted(imagenet_ancestors()) == ids  # the ids _ConceptMix uses are the table's row order
    names = sorted(p.stem for p in photos_dir.glob("*.jpg"))
    tf = lite_encoder.image_transform()
    logits = lite_encoder.logits(np.stack([tf(load_image(photos_dir / f"{n}.jpg")) for n in names]))
    vecs, top, idx = conse_mix(logits, lite_encoder.class_table, lite_encoder.config)
    w = top / top.sum(axis=1, keepdims=True)
    length = np.linalg.norm(np.einsum("nk,nkd->nd", w, lite_encoder.class_table[idx]), axis=1)
    mix = _ConceptMix.from_encoder(lite_encoder, ridge=0.1)
    est = {}
    for query in ("an animal", "a vehicle", "a container", "a cat"):
        targets = expander.concept_targets(query, within=ids)
        tw = np.array([targets.get(c, (0.0, None))[0] for c in ids])
        true = (w * tw[idx]).sum(axis=1) / length
        est[query] = dict(zip(names, mix.share(vecs, mix.direction(targets))))
        assert np.corrcoef(list(est[query].values()), true)[0, 1] > 0.8, (query, est[query], true)
    cat = est["a cat"]
    assert cat["chelsea"] > 0.3 and all(v < 0.1 for n, v in cat.items() if n != "chelsea"), cat


def test_searcher_adds_the_class_mix_bonus_on_a_lite_index(tmp_path, photos_dir, lite_encoder):
    """Through the Searcher (FAISS index, k=3): "an animal" finds the cat and the horse, with a
    concept-mix line in --explain; concept_mix=0 gives the scores without that bonus."""
    import dataclasses

    from indexer import build_index
    from retrieval.search import Searcher

    build_index([photos_dir], tmp_path / "idx", model="lite", text_model=None, workers=0, quiet=True,
                device="cpu")
    with Searcher(str(tmp_path / "idx"), expand="multi", device="cpu") as s:
        on = s.search("an animal", k=3, explain=True)
        assert {"chelsea.jpg", "horse.jpg"} <= {h.path.rsplit("/", 1)[-1] for h in on.hits}
        assert any(e.startswith("concept mix: ~") for e in on.hits[0].explanation), on.hits[0].explanation
        s.options = dataclasses.replace(s.options, concept_mix=0.0)
        off = s.search("an animal", k=3, explain=True)
        assert not any(e.startswith("concept mix") for h in off.hits for e in h.explanation)
        bonus = {h.id: float(e.rsplit("+", 1)[1].rstrip(")")) for h in on.hits for e in h.explanation
                 if e.startswith("concept mix")}
        for h in off.hits:
            if h.id in bonus:
                assert next(x.score for x in on.hits if x.id == h.id) == pytest.approx(h.score + bonus[h.id],
                                                                                        abs=2e-3)
