"""Entity linking on the shipped WordNet: inflections, multi-word terms, filters, sense choice."""

from __future__ import annotations

import pytest

from retrieval.kg import Linker, LinkerConfig, Morphology, load_graph
from retrieval.kg.linking import tokenize


@pytest.fixture(scope="module")
def wn():
    return load_graph()


@pytest.fixture(scope="module")
def freq_linker(wn):
    """Sense choice by frequency only: no model, fast."""
    return Linker(wn, sense_encoder=None)


@pytest.fixture(scope="module")
def bert_linker(wn):
    return Linker(wn, sense_encoder="sbert:minilm", device="cpu")


def spans(linker, text):
    return [(lk.span, lk.name) for lk in linker.link(text)]


def test_morphology_rules_and_exceptions():
    m = Morphology.shipped()
    assert "puppy" in m.noun_bases("puppies")
    assert m.noun_bases("mice") == ["mouse"]
    assert "box" in m.noun_bases("boxes")
    assert m.noun_bases("fire engines") == ["fire engine"]
    assert m.noun_bases("glass") == []  # "ss" is not a plural
    assert m.verb_count("running") > 100 and m.adj_count("white") > 10


@pytest.mark.parametrize("text, expected", [
    ("puppies in the snow", [("puppies", "puppy"), ("snow", "snow")]),
    ("three mice", [("mice", "mouse")]),
    ("women", [("women", "woman")]),
    ("two fire engines", [("fire engines", "fire engine")]),
    ("a T-shirt", [("T-shirt", "jersey")]),  # the synset jersey, T-shirt, tee shirt
    ("the dog's bone", [("dog's", "dog"), ("bone", "bone")]),
])
def test_inflections_and_multiword(freq_linker, text, expected):
    assert spans(freq_linker, text) == expected


def test_offsets_point_into_the_text(freq_linker):
    text = "Two Fire Engines near a river"
    for lk in freq_linker.link(text):
        assert text[lk.start:lk.end] == lk.span
    assert [lk.span for lk in freq_linker.link(text)] == ["Fire Engines", "river"]


def test_longest_match_wins(freq_linker):
    assert [lk.span for lk in freq_linker.link("a hot dog on a plate")] == ["hot dog", "plate"]
    assert [lk.span for lk in freq_linker.link("a baseball bat")] == ["baseball bat"]


def test_lower_case_words_prefer_common_nouns(freq_linker):
    (lk,) = freq_linker.link("a crane")
    assert lk.name == "crane" and "writer" not in lk.gloss  # not Stephen/Hart Crane
    assert freq_linker.link("Paris")[0].name == "Paris"  # proper nouns still link when nothing else fits


def test_stop_words_boilerplate_and_abstract_senses_not_linked(freq_linker):
    assert freq_linker.link("") == []
    assert freq_linker.link("a photo of it in the") == []  # "it", "in", "a" are WordNet nouns too
    assert freq_linker.link("an entity") == []  # the root: too abstract
    assert freq_linker.link("a thing or an object") == []
    assert freq_linker.link("the whole") == []
    assert spans(freq_linker, "an animal") == [("animal", "animal")]  # depth 6: linked


def test_words_used_as_verbs_or_adjectives(freq_linker):
    assert spans(freq_linker, "a man running with white dogs") == [("man", "man"), ("dogs", "dog")]
    # a determiner or adjective before a verb-ish word makes it a noun
    assert ("dress", "dress") in spans(freq_linker, "a woman in a red dress")


def test_config_can_turn_filters_off(wn):
    lk = Linker(wn, sense_encoder=None, config=LinkerConfig(skip_other_pos=False, skip_words=frozenset()))
    names = [s for s, _ in spans(lk, "a photo of running")]
    assert names == ["photo", "running"]


def test_tokenize_drops_possessives():
    assert [t for t, _, _ in tokenize("The dog's ball, Rex's!")] == ["the", "dog", "ball", "rex"]


def test_frequency_prior_without_model(freq_linker):
    (lk,) = freq_linker.link("bank")
    assert lk.entity_id == "n09213565"  # sloping land: the most frequent sense
    assert lk.alternatives and 0 < lk.score < 1


@pytest.mark.parametrize("text, sense", [
    ("the grassy bank of the river", "n09213565"),  # sloping land
    ("money deposited in the bank", "n08420278"),  # depository financial institution
    ("a glass of water on the table", "n03438257"),  # drinking container
    ("a mouse next to the keyboard of a computer", "n03793489"),  # computer mouse
    ("a mouse eating cheese in the field", "n02330245"),  # the rodent
])
def test_sense_choice_by_context(bert_linker, text, sense):
    word = {"n09213565": "bank", "n08420278": "bank", "n03438257": "glass", "n03793489": "mouse",
            "n02330245": "mouse"}[sense]
    lk = next(lk for lk in bert_linker.link(text) if lk.span.startswith(word))
    assert lk.entity_id == sense, (lk.name, lk.gloss)


def test_linking_is_deterministic_and_cached(bert_linker):
    a = [lk.to_dict() for lk in bert_linker.link("a bat flying at night")]
    b = [lk.to_dict() for lk in bert_linker.link("a bat flying at night")]
    assert a == b and a
    assert "a bat flying at night" in bert_linker._qcache
