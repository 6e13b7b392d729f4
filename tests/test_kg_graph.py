"""The shipped WordNet graph: ids, relations, names, licence, loader errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from retrieval.errors import KGError
from retrieval.kg import load_graph
from retrieval.kg.graph import SHIPPED_DIR

DOG, PUPPY, CANINE, TABBY, CAT = "n02084071", "n01322604", "n02083346", "n02123045", "n02121808"


@pytest.fixture(scope="module")
def wn():
    return load_graph()


def test_shipped_files_and_licence():
    names = {p.name for p in SHIPPED_DIR.iterdir()}
    assert {"kg.json", "entities.json.gz", "graph.npz", "LICENSE-WordNet.txt", "morphy.json"} <= names
    text = (SHIPPED_DIR / "LICENSE-WordNet.txt").read_text()
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in text
    assert sum(p.stat().st_size for p in SHIPPED_DIR.iterdir()) < 8_000_000


def test_entities_and_names(wn):
    assert len(wn) == 82115
    dog = wn.entity(DOG)
    assert dog.names[:2] == ["dog", "domestic dog"] and "Canis" in dog.gloss
    assert dog.count > 0 and dog.depth == 8
    assert wn.find("Dog")[0] == DOG and wn.find("domestic_dog") == [DOG]
    assert wn.find("no such thing at all") == []
    assert wn.entity(TABBY).name == "tabby"


def test_imagenet_ids_are_wordnet_ids(wn):
    from retrieval.encoders.lite import imagenet_classes

    classes = imagenet_classes()
    assert all(wnid in wn for wnid, _names, _d in classes)
    tabby = next(c for c in classes if c[0] == TABBY)
    assert "tabby" in [n.lower() for n in tabby[1]] and "tabby" in wn.entity(TABBY).names


def test_relations_and_inverses(wn):
    assert PUPPY in wn.neighbours(DOG, "hyponym")
    assert CANINE in wn.neighbours(DOG, "hypernym")
    assert DOG in wn.neighbours(PUPPY, "hypernym")
    assert CAT in wn.neighbours("n02123159", "hypernym")  # tiger cat -> domestic cat
    # instance relations: Paris is an instance of national capital
    paris = wn.find("Paris")[0]
    assert wn.neighbours(paris, "instance_hypernym")
    assert paris in wn.neighbours(wn.neighbours(paris, "instance_hypernym")[0], "instance_hyponym")
    # meronyms and holonyms are inverse
    car = wn.find("car")[0]
    parts = wn.neighbours(car, "part_meronym")
    assert any(wn.entity(p).name == "car door" for p in parts)
    assert car in wn.neighbours(parts[0], "part_holonym")
    for rel in ("hypernym", "part_meronym", "member_meronym"):
        inv = wn.inverse_of[rel]
        a, b = wn.adjacency(rel), wn.adjacency(inv)
        assert len(a[1]) == len(b[1])
    with pytest.raises(KGError, match="unknown relation"):
        wn.neighbours(DOG, "likes")
    with pytest.raises(KGError, match="no entity"):
        wn.entity("n99999999")


def test_depths_mark_abstract_top(wn):
    assert wn.entity("n00001740").depth == 0  # entity
    assert all(d >= 0 for d in np.asarray(wn.depth)[:100])


def test_load_errors(tmp_path):
    with pytest.raises(KGError, match="no such knowledge graph"):
        load_graph(tmp_path / "missing")
    (tmp_path / "triples.tsv").write_text("a\tb\tc\n")
    with pytest.raises(KGError, match="kgclip kg import"):
        load_graph(tmp_path / "triples.tsv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KGError, match="not a kgclip knowledge graph"):
        load_graph(tmp_path / "empty")


def test_loaded_once_per_process():
    assert load_graph() is load_graph("wordnet")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(),
                    reason="Debian wordnet-base not installed")
def test_build_reproduces_shipped_graph(tmp_path):
    from retrieval.kg.build_wordnet import build

    out = build("/usr/share/wordnet", tmp_path / "wn")
    for f in ("entities.json.gz", "graph.npz", "kg.json", "morphy.json"):
        assert (out / f).read_bytes() == (SHIPPED_DIR / f).read_bytes(), f
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert os.stat(out).st_mode & 0o055  # readable by others (mkdtemp makes 0700)
