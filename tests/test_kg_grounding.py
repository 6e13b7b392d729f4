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
