"""Knowledge-grounded matching for `lite`: a query's hyponym closure scores images through their concepts."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.kg import Expander, load_graph
from retrieval.query.grounding import ConceptArrays

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
    """Per image: (its concept mass under the query's targets, capped at 1; its best concept's path
    and p), through the Searcher's grounding arrays over the images' stored concepts."""
    targets = expander.concept_targets(query)
    names = sorted(concepts)
    vocab = sorted({c for cs in concepts.values() for c, _p in cs})
    slot = {c: j for j, c in enumerate(vocab)}
    arr = ConceptArrays.from_profiles([(np.arange(len(names)),
                                        np.array([[slot[c] for c, _p in concepts[n]] for n in names]),
                                        np.array([[p for _c, p in concepts[n]] for n in names], np.float32))], vocab)
    out = {n: (0.0, None) for n in names}
    g = arr.ground(targets)
    if g is not None:
        for r, m in zip(*g[:2]):
            wnid, p = arr.best(int(r), targets, g[2])
            out[names[int(arr.ids[r])]] = (float(m), f"{' -> '.join(targets[wnid][1])} (p={p:.2f})")
    return out


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


def _softmax(z, t):
    z = (z - z.max(axis=1, keepdims=True)) / t
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def test_a_new_lite_index_stores_each_images_concept_profile(tmp_path, photos_dir, lite_encoder):
    """Every image keeps its 100 most likely ImageNet classes at temperature 2 (class-table order, float16),
    the manifest says so, and a category query is grounded on them (log shape, weight 2.5)."""
    from indexer import build_index, open_index
    from retrieval.encoders.lite import PROFILE, imagenet_ancestors
    from indexer import open_searcher

    assert list(lite_encoder.concept_classes) == sorted(imagenet_ancestors())  # the order search assumes
    build_index([photos_dir], tmp_path / "idx", model="lite", text_model=None, workers=0, quiet=True,
                device="cpu")
    idx = open_index(str(tmp_path / "idx"))
    try:
        assert idx.concept_profile == {"top": PROFILE[0], "temperature": PROFILE[1], "classes": "imagenet-1k"}
        ids, profs = zip(*[(i, (c, p)) for chunk_ids, cs, ps in idx.iter_profiles()
                           for i, c, p in zip(chunk_ids, cs, ps)])
        paths = {int(i): it["path"] for i, it in zip(ids, idx.get(list(ids)))}
    finally:
        idx.close()
    assert len(ids) == len(list(photos_dir.iterdir()))
    tf = lite_encoder.image_transform()
    from retrieval.encoders.base import load_image

    logits = lite_encoder.logits(np.stack([tf(load_image(paths[int(i)])) for i in ids]))
    p = _softmax(logits, PROFILE[1])
    for r, (cls, prob) in enumerate(profs):
        assert len(cls) == PROFILE[0] and prob.dtype == np.float16
        assert cls.tolist() == np.argsort(-p[r], kind="stable")[: PROFILE[0]].tolist()
        assert np.allclose(prob, p[r, cls], rtol=2e-3, atol=1e-6)
    from click.testing import CliRunner

    from cli import main

    info = CliRunner().invoke(main, ["info", str(tmp_path / "idx")])
    assert info.exit_code == 0 and "concepts       profiles: 100 classes per image at temperature 2" in info.output
    # verify: a profile whose item is gone is reported and removed by --repair
    from indexer import verify_index
    from indexer.store import Store, ikey

    assert verify_index(str(tmp_path / "idx"))["ok"]
    st = Store(str(tmp_path / "idx"))
    try:
        st.write(lambda txn: txn.t.put(ikey(999), bytes(400), db=txn.db["profiles"]))
    finally:
        st.close()
    bad = verify_index(str(tmp_path / "idx"))
    assert not bad["ok"] and any("concept profile 999 has no item" in p for p in bad["problems"]), bad
    verify_index(str(tmp_path / "idx"), repair=True)
    assert verify_index(str(tmp_path / "idx"))["ok"]
    with open_searcher(str(tmp_path / "idx"), expand="multi", device="cpu") as s:
        assert s.options.concept_weight == 2.5 and len(s.concept_arrays().cls[0]) == PROFILE[0]
        res = s.search("an animal", k=3, explain=True)
        assert {"chelsea.jpg", "horse.jpg"} <= {h.path.rsplit("/", 1)[-1] for h in res.hits}
        lines = [e for h in res.hits for e in h.explanation]
        assert any(e.startswith("concept: animal -> ") for e in lines)
        # each grounded hit's score is its cosine plus the concept bonus its explanation shows
        for h in res.hits:
            cos = [float(e.split()[2]) for e in h.explanation if e.startswith("vector: cos")]
            bonus = [float(e.rsplit("+", 1)[1].rstrip(")")) for e in h.explanation if e.startswith("concept:")]
            if bonus:
                assert h.score == pytest.approx(cos[0] + bonus[0], abs=2e-3), h.explanation


def test_update_keeps_one_profile_per_item(tmp_path, photos_dir, lite_encoder):
    """Removing a file removes its item's profile, a changed file gets a new one, a duplicate none."""
    import shutil

    from PIL import Image

    from indexer import build_index, open_index, verify_index

    src = tmp_path / "photos"
    shutil.copytree(photos_dir, src)
    d = tmp_path / "idx"
    build_index([src], d, model="lite", text_model=None, workers=0, quiet=True, device="cpu")
    names = sorted(p.name for p in src.iterdir())
    (src / names[0]).unlink()  # removed
    shutil.copy(src / names[1], src / "copy.jpg")  # a duplicate: an alias, no new item
    Image.open(src / names[2]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(src / names[2])  # changed
    rep = build_index([src], d, model="lite", text_model=None, workers=0, quiet=True, device="cpu", prune=True)
    assert (rep.removed, rep.duplicates, rep.added) == (1, 1, 1), rep  # changed content is a new item
    idx = open_index(str(d))
    try:
        items = {i for i, _ in idx.iter_items()}
        profiled = [int(i) for chunk, _, _ in idx.iter_profiles() for i in chunk]
    finally:
        idx.close()
    assert sorted(profiled) == sorted(items) and len(items) == len(names) - 1
    assert verify_index(str(d))["ok"]
