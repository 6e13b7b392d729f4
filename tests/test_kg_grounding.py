"""Knowledge-grounded matching for `lite`: a query's hyponym closure scores images through their concepts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.kg import Expander, format_path, load_graph

NON_ANIMALS = ("coffee", "rocket", "camera", "coins", "clock")


@pytest.fixture(scope="module")
def concepts(lite_encoder, photos_dir):
    names = sorted(p.stem for p in photos_dir.glob("*.jpg"))
    batch = lite_encoder.encode_images([photos_dir / f"{n}.jpg" for n in names], with_concepts=True)
    return dict(zip(names, batch.concepts))


@pytest.fixture(scope="module")
def expander():
    return Expander(load_graph(), sense_encoder=None)


def match_concepts(targets, concepts):
    """(an image's probability mass inside the targets, capped at 1; its best concept's path and p)."""
    total, best, why = 0.0, 0.0, None
    for cid, prob in concepts:
        if cid in targets:
            s = targets[cid][0] * float(prob)
            total += s
            if s > best:
                best, why = s, f"{format_path(targets[cid][1])} (p={float(prob):.2f})"
    return min(total, 1.0), why


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
    concept-mix line in --explain; concept_mix=0 gives the scores without that bonus. (Off by default
    on an index with concept profiles: set here.)"""
    import dataclasses

    from indexer import build_index
    from indexer import open_searcher
    from retrieval.search import SearchOptions

    build_index([photos_dir], tmp_path / "idx", model="lite", text_model=None, workers=0, quiet=True,
                device="cpu")
    with open_searcher(str(tmp_path / "idx"), expand="multi", device="cpu",
                  options=SearchOptions(concept_mix=2.0, concept_weight=0.5)) as s:
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


def _softmax(z, t):
    z = (z - z.max(axis=1, keepdims=True)) / t
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def test_a_new_lite_index_stores_each_images_concept_profile(tmp_path, photos_dir, lite_encoder):
    """Every image keeps its 50 most likely ImageNet classes at temperature 2 (class-table order, float16),
    the manifest says so, and a category query is grounded on them (log shape, no class-mix term)."""
    import dataclasses

    from indexer import build_index, open_index
    from retrieval.encoders.lite import PROFILE, imagenet_ancestors
    from retrieval.errors import UsageError
    from indexer import open_searcher
    from retrieval.search import GROUNDING

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
    assert GROUNDING["profile"][2] == 0.0
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
        assert s.grounding() == GROUNDING["profile"]
        res = s.search("an animal", k=3, explain=True)
        assert {"chelsea.jpg", "horse.jpg"} <= {h.path.rsplit("/", 1)[-1] for h in res.hits}
        lines = [e for h in res.hits for e in h.explanation]
        assert any(e.startswith("concept: animal -> ") for e in lines)
        assert not any("concept mix" in e for e in lines)
        # the grounding of indexes from before profiles, on the same index (side-by-side benchmarks)
        s.options = dataclasses.replace(s.options, concept_source="top5")
        assert s.grounding() == GROUNDING["top5"] and len(s.concept_arrays().cls[0]) == 5
        old = s.search("an animal", k=3, explain=True)
        assert any(e.startswith("concept mix: ~") for h in old.hits for e in h.explanation)
        s.options = dataclasses.replace(s.options, concept_source="top50")
        with pytest.raises(UsageError, match="unknown concept_source 'top50'"):
            s.search("an animal", k=3)


def test_an_index_from_before_profiles_keeps_its_kind_on_update(tmp_path, photos_dir, lite_encoder):
    """A lite index built before concept profiles (top 5 concepts only) is searched as before (square
    root and the class-mix term), and an update adds no profiles: one index never mixes two kinds."""
    import shutil

    from indexer import build_index, open_index
    from indexer.store import Store
    from indexer import open_searcher
    from retrieval.search import GROUNDING

    src = tmp_path / "photos"
    src.mkdir()
    names = sorted(p.name for p in photos_dir.iterdir())
    for n in names[:-1]:
        shutil.copy(photos_dir / n, src / n)
    d = tmp_path / "idx"
    build_index([src], d, model="lite", text_model=None, workers=0, quiet=True, device="cpu")
    # make it the index an older kgclip wrote: no profile in the model record, the manifest or any item
    st = Store(str(d))
    try:
        def strip(txn):
            model = dict(txn.meta("model"))
            model.pop("profile")
            txn.set_meta("model", model)
            txn.t.drop(txn.db["profiles"], delete=True)  # an older store has no such database
        st.write(strip)
    finally:
        st.close()
    ro = Store(str(d), readonly=True)  # an older store opened read-only: the database is simply absent
    try:
        assert ro.db["profiles"] is None and list(ro.iter_profiles()) == []
    finally:
        ro.close()
    man = json.loads((d / "index.json").read_text())
    man["model"].pop("profile")
    (d / "index.json").write_text(json.dumps(man))
    shutil.copy(photos_dir / names[-1], src / names[-1])
    rep = build_index([src], d, model="lite", text_model=None, workers=0, quiet=True, device="cpu")
    assert rep.added == 1
    idx = open_index(str(d))
    try:
        assert idx.concept_profile is None
        assert list(idx.iter_profiles()) == []
        assert all(it["concepts"] for _, it in idx.iter_items())  # the top 5 are still stored
    finally:
        idx.close()
    from click.testing import CliRunner

    from cli import main

    info = CliRunner().invoke(main, ["info", str(d)])
    assert info.exit_code == 0 and "top 5 classes per image (built before profiles" in info.output
    with open_searcher(str(d), expand="multi", device="cpu") as s:
        assert s.grounding() == GROUNDING["top5"]
        res = s.search("an animal", k=3, explain=True)
    assert any(e.startswith("concept mix: ~") for h in res.hits for e in h.explanation)


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
    rep = build_index([src], d, model="lite", text_model=None, workers=0, quiet=True, device="cpu")
    assert (rep.removed, rep.duplicates, rep.added) == (1, 1, 1), rep  # changed content is a new item
    idx = open_index(str(d))
    try:
        items = {i for i, _ in idx.iter_items()}
        profiled = [int(i) for chunk, _, _ in idx.iter_profiles() for i in chunk]
    finally:
        idx.close()
    assert sorted(profiled) == sorted(items) and len(items) == len(names) - 1
    assert verify_index(str(d))["ok"]
