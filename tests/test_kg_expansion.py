"""Expansion policy: determinism, weights, caps, vectors (mix/multi), user relations, grounding paths."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.encoders import get_encoder
from retrieval.errors import UsageError
from retrieval.kg import Expander, ExpansionPolicy, load_graph
from retrieval.render import plan_text_lines
from retrieval.kg.triples import import_triples

DOG, PUPPY, TABBY = "n02084071", "n01322604", "n02123045"


@pytest.fixture(scope="module")
def wn():
    return load_graph()


def expander(wn, **policy):
    return Expander(wn, sense_encoder=None, policy=ExpansionPolicy(**policy))


def test_plan_is_deterministic_and_explained(wn):
    a = expander(wn).plan("a dog in the snow").to_dict()
    b = expander(wn).plan("a dog in the snow").to_dict()
    assert a == b
    ids = [e["entity_id"] for e in a["expansions"]]
    assert DOG in ids and PUPPY in ids and len(ids) == len(set(ids))
    puppy = next(e for e in a["expansions"] if e["entity_id"] == PUPPY)
    assert puppy["relation"] == "hyponym" and puppy["path"] == ["dog", "hyponym", "puppy"]
    lines = plan_text_lines(expander(wn).plan("a dog"))
    assert lines[0].startswith("linked 'dog' -> n02084071 dog")
    assert any("dog -> hyponym -> puppy" in x for x in lines)


def test_relation_weights_order_and_decay(wn):
    p = expander(wn, hyponym_depth=2, decay=0.5, hyponym=0.4, hypernym=0.2, synonym=0.6,
                 max_per_relation=100, max_expansions=1000).plan("a dog")
    by_id = {e.entity_id: e for e in p.expansions}
    conf = p.linked[0]["score"]
    assert by_id[DOG].weight == pytest.approx(0.6 * conf, abs=1e-5)
    assert by_id[PUPPY].weight == pytest.approx(0.4 * conf, abs=1e-5)
    assert by_id["n02083346"].relation == "hypernym"  # canine
    assert by_id["n02083346"].weight == pytest.approx(0.2 * conf, abs=1e-5)
    level2 = [e for e in p.expansions if e.relation == "hyponym" and len(e.path) == 5]
    assert level2 and all(e.weight == pytest.approx(0.2 * conf, abs=1e-5) for e in level2)
    assert [e.weight for e in p.expansions] == sorted((e.weight for e in p.expansions), reverse=True)


def test_caps_and_zero_weights(wn):
    p = expander(wn, max_per_relation=3, max_expansions=5).plan("a dog")
    assert len(p.expansions) == 5
    assert sum(e.relation == "hyponym" for e in p.expansions) <= 3
    p = expander(wn, hyponym=0.0, hypernym=0.0, meronym=0.0).plan("a dog")
    assert [e.entity_id for e in p.expansions] == [DOG]
    p = expander(wn, relation_weights={"hypernym": 0.9}).plan("a dog")
    assert p.expansions[0].relation == "hypernym"


def test_nothing_linked_leaves_the_query_unchanged(wn):
    enc = get_encoder("fake:v1")
    ex = expander(wn)
    q = enc.encode_queries(["of the with"])
    for mode in ("mix", "multi", "none"):
        v, w, plan = ex.query_vectors("of the with", enc, mode=mode)
        assert plan.expansions == [] and v.shape == (1, enc.dim) and w.tolist() == [1.0]
        np.testing.assert_array_equal(v, q)


def test_mix_and_multi_vectors(wn):
    enc = get_encoder("fake:v1")
    ex = expander(wn, max_expansions=4, expansion_mass=1.0)
    vm, wm, plan = ex.query_vectors("a dog", enc, mode="multi")
    assert vm.shape == (5, enc.dim) and wm.shape == (5,) and wm[0] == 1.0
    assert wm[1:].sum() <= 1.0 + 1e-6  # expansions together never outweigh the query
    np.testing.assert_allclose(vm[0], enc.encode_queries(["a dog"])[0], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vm, axis=1), 1.0, rtol=1e-5)
    vx, wx, _ = ex.query_vectors("a dog", enc, mode="mix")
    expected = (wm[:, None] * vm).sum(0)
    np.testing.assert_allclose(vx[0], expected / np.linalg.norm(expected), rtol=1e-5)
    assert vx.shape == (1, enc.dim) and wx.tolist() == [1.0]
    # the mix moved toward the entities but stays closest to the query
    assert float(vx[0] @ vm[0]) > 0.5
    with pytest.raises(UsageError):
        ex.plan("a dog", mode="sideways")


def test_policy_round_trip_and_unknown_fields():
    p = ExpansionPolicy(hyponym=0.3, relation_weights={"is_a": 0.5})
    assert ExpansionPolicy.from_dict(p.to_dict()) == p
    with pytest.raises(UsageError, match="unknown expansion policy"):
        ExpansionPolicy.from_dict({"hyponyms": 1})


def test_user_graph_relations_expand(tmp_path):
    (tmp_path / "pets.tsv").write_text(
        "ex:rex\tis_a\tex:dog\nex:fido\tis_a\tex:dog\nex:dog\tis_a\tex:animal\n"
        "ex:rex\tlabel\tRex\nex:dog\tlabel\tdog\nex:dog\talias\thound\nex:animal\tlabel\tanimal\n")
    import_triples(tmp_path / "pets.tsv", tmp_path / "g")
    g = load_graph(tmp_path / "g")
    ex = Expander(g, sense_encoder=None, policy=ExpansionPolicy(user_relation=0.4, user_inverse=0.3))
    p = ex.plan("hounds playing")
    assert [lk["entity_id"] for lk in p.linked] == ["ex:dog"]
    rel = {e.entity_id: (e.relation, e.weight) for e in p.expansions}
    assert rel["ex:animal"] == ("is_a", pytest.approx(0.4))
    assert rel["ex:rex"] == ("~is_a", pytest.approx(0.3)) and rel["ex:fido"][0] == "~is_a"
    ex2 = Expander(g, sense_encoder=None, policy=ExpansionPolicy(relation_weights={"~is_a": 0.0}))
    assert "ex:rex" not in {e.entity_id for e in ex2.plan("a hound").expansions}


def test_concept_targets_reach_hyponym_closure(wn):
    ex = expander(wn)
    t = ex.concept_targets("an animal")
    w, path = t[TABBY]
    assert path[0] == "animal" and path[-1] == "tabby" and "domestic cat" in path
    assert 0 < w < t["n00015388"][0] == 1.0
    assert "n04037443" not in t  # racer (a car) is no animal
    only = ex.concept_targets("an animal", within={TABBY, "n04037443"})
    assert set(only) == {TABBY}
    assert expander(wn).concept_targets("of the") == {}


def test_sense_vector_is_shared_when_the_index_model_is_the_sense_model(wn):
    enc = get_encoder("fake:v1")
    calls = []

    class Spy:
        spec, fingerprint, dim = enc.spec, enc.fingerprint, enc.dim

        def encode_queries(self, texts):
            calls.append(list(texts))
            return enc.encode_queries(texts)

        def encode_texts(self, texts):
            return enc.encode_texts(texts)

    spy = Spy()
    ex = Expander(wn, sense_encoder=spy)
    _v, _w, plan = ex.query_vectors("money in the bank", spy, mode="mix")
    assert calls == [["money in the bank"]]  # encoded once, used for senses and search
    assert any(lk["span"] == "bank" for lk in plan.linked)


def test_hyponyms_follow_the_concept_vocabulary(wn):
    female, male, young = "n01320872", "n01321230", "n01321579"
    chordate, invertebrate = "n01466257", "n01905661"
    vocab = {TABBY, "n02099712", "n01530575", "n02206856"}  # tabby, Labrador, brambling, bee (ImageNet ids)
    plain = expander(wn).plan("an animal")
    assert {female, male, young} <= {e.entity_id for e in plain.expansions}  # the graph alone ranks them high

    ex = expander(wn)
    ex.set_concept_vocabulary(vocab)
    p = ex.plan("an animal")
    hyp = [e.entity_id for e in p.expansions if e.relation == "hyponym"]
    assert hyp and not {female, male, young} & set(hyp)
    assert hyp.index(chordate) < hyp.index(invertebrate)  # 3 vocabulary concepts below it against 1
    assert ex._coverage[wn.row(chordate)] == 3 and ex._coverage[wn.row("n00015388")] == 4
    # a word with no vocabulary concept below it keeps the graph's own ranking
    assert ex.plan("a flag").to_dict() == expander(wn).plan("a flag").to_dict()
    off = expander(wn, hyponym_coverage=False)
    off.set_concept_vocabulary(vocab)
    assert off.plan("an animal").to_dict() == plain.to_dict()
    ex.set_concept_vocabulary(None)
    assert ex.plan("an animal").to_dict() == plain.to_dict()


def test_long_queries_expand_less(wn):
    p = ExpansionPolicy()
    long = "a dog runs across the green grass in the park"  # 7 content words
    assert p.focus("a photo of a dog") == 1.0 and p.focus("an ankle boot") == 1.0
    assert p.focus(long) == pytest.approx(3 / 7)
    assert ExpansionPolicy(focus_words=0).focus(long) == 1.0
    ex = expander(wn)
    short_w = {e.entity_id: e.weight for e in ex.plan("a dog").expansions}
    long_w = {e.entity_id: e.weight for e in ex.plan(long).expansions}
    assert long_w[DOG] == pytest.approx(short_w[DOG] * 3 / 7, abs=1e-5)
    assert long_w[PUPPY] == pytest.approx(short_w[PUPPY] * 3 / 7, abs=1e-5)


def test_coverage_weight_scales_hyponyms_by_their_concepts(wn):
    chordate, invertebrate = "n01466257", "n01905661"
    ex = Expander(wn, sense_encoder=None, policy=ExpansionPolicy(coverage_weight=1.0))
    ex.set_concept_vocabulary({TABBY, "n02099712", "n01530575", "n02206856"})
    w = {e.entity_id: e.weight for e in ex.plan("an animal").expansions}
    assert w[invertebrate] == pytest.approx(w[chordate] / 3, abs=1e-5)  # 1 concept below it against 3


def test_grounding_alternatives_reach_the_other_senses(wn):
    from retrieval.types import QueryPlan

    clothing, covering, sandal = "n03381126", "n03380867", "n04133789"  # footwear (2 senses), sandal
    link = {"span": "footwear", "entity_id": clothing, "name": "footwear", "gloss": "", "score": 0.95,
            "alternatives": [{"entity_id": covering, "name": "footwear", "gloss": "", "score": 0.05}]}
    plan = QueryPlan(text="footwear", linked=[link])
    assert sandal not in expander(wn, grounding_alternatives=0.0).concept_targets(plan)
    t = expander(wn, grounding_alternatives=1.0).concept_targets(plan)
    assert sandal in t and t[sandal][1][0] == "footwear" and 0 < t[sandal][0] < 0.95
    low = expander(wn, grounding_alternatives=0.01).concept_targets(plan)
    assert low[sandal][0] < t[sandal][0]  # the alternative's own confidence, 0.05, wins over 0.01 x 0.95
