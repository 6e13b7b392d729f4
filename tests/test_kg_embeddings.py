"""Entity embeddings: lazily computed, cached on disk per encoder fingerprint, invalidated on model change."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.encoders import get_encoder
from retrieval.kg import EntityEmbeddings, Expander, load_graph

DOG, PUPPY = "n02084071", "n01322604"


class Counting:
    """Wraps an encoder and counts the texts it encodes."""

    def __init__(self, enc):
        self.enc, self.calls = enc, []
        self.spec, self.dim = enc.spec, enc.dim

    @property
    def fingerprint(self):
        return self.enc.fingerprint

    def encode_texts(self, texts):
        self.calls.extend(texts)
        return self.enc.encode_texts(texts)

    def encode_queries(self, texts):
        return self.enc.encode_queries(texts)


@pytest.fixture(scope="module")
def wn():
    return load_graph()


def test_vectors_are_prompts_of_names(wn, tmp_path):
    enc = get_encoder("fake:v1")
    t = EntityEmbeddings(wn, enc, template="a photo of a {name}.", root=tmp_path)
    v = t.get([DOG, PUPPY])
    np.testing.assert_allclose(v, enc.encode_texts(["a photo of a dog.", "a photo of a puppy."]), rtol=1e-6)
    assert t.prompt(wn.row(DOG)) == "a photo of a dog."
    g = EntityEmbeddings(wn, enc, template="{names}: {gloss}", root=tmp_path)
    assert g.prompt(wn.row(DOG)).startswith(
        "dog, domestic dog, Canis familiaris: a member of the genus Canis")


def test_lazy_cache_persists_across_instances(wn, tmp_path):
    enc = Counting(get_encoder("fake:v1"))
    a = EntityEmbeddings(wn, enc, root=tmp_path)
    va = a.get([DOG, PUPPY, DOG])
    assert len(enc.calls) == 2 and len(a) == 2
    a.get([DOG])
    assert len(enc.calls) == 2  # memory hit
    enc2 = Counting(get_encoder("fake:v1"))
    b = EntityEmbeddings(wn, enc2, root=tmp_path)
    np.testing.assert_array_equal(b.get([DOG, PUPPY, DOG]), va)
    assert enc2.calls == []  # disk hit: nothing re-encoded


def test_cache_is_per_model_and_invalidated_when_the_model_changes(wn, tmp_path):
    v1, v2 = Counting(get_encoder("fake:v1")), Counting(get_encoder("fake:v2"))
    assert v1.fingerprint != v2.fingerprint
    a = EntityEmbeddings(wn, v1, root=tmp_path)
    a.get([DOG])
    b = EntityEmbeddings(wn, v2, root=tmp_path)
    assert a.dir != b.dir and len(b) == 0  # v1's vectors are never served to v2
    b.get([DOG])
    assert v2.calls == ["a photo of a dog."]
    assert a.dir.is_dir() and b.dir.is_dir()  # another spec's cache is left alone

    # same spec, new weights: the old fingerprint's cache is deleted and never served
    changed = Counting(get_encoder("fake:v1"))
    type(changed).fingerprint = property(lambda self: "fake:v1#retrained")
    try:
        c = EntityEmbeddings(wn, changed, root=tmp_path)
        assert not a.dir.exists() and b.dir.is_dir()
        c.get([DOG])
        assert changed.calls == ["a photo of a dog."]
    finally:
        del type(changed).fingerprint


def test_torn_chunk_is_ignored_and_compaction_keeps_vectors(wn, tmp_path, monkeypatch):
    from retrieval.kg import embeddings as mod

    enc = get_encoder("fake:v1")
    a = EntityEmbeddings(wn, enc, root=tmp_path)
    rows = list(range(100, 140))
    monkeypatch.setattr(mod, "MAX_CHUNKS", 4)
    for r in rows:
        a.get_rows([r])  # one chunk per call, compacted every few
    assert len(list(a.dir.glob("chunk-*.npz"))) <= 5
    (a.dir / "chunk-99999999999999999999-1.npz").write_bytes(b"torn")
    b = EntityEmbeddings(wn, enc, root=tmp_path)
    assert len(b) == len(rows)
    np.testing.assert_array_equal(b.get_rows(rows), a.get_rows(rows))


def test_precompute_in_bulk(wn, tmp_path):
    enc = get_encoder("fake:v1")
    t = EntityEmbeddings(wn, enc, root=tmp_path)
    assert t.precompute(rows=range(0, 300), batch=128, progress=False) == 300
    assert t.precompute(rows=range(0, 300), progress=False) == 0
    assert len(EntityEmbeddings(wn, enc, root=tmp_path)) == 300


def test_expander_uses_the_default_cache_dir(wn, tmp_path, monkeypatch):
    monkeypatch.setenv("KGCLIP_CACHE", str(tmp_path / "cache"))
    ex = Expander(wn, sense_encoder=None)
    ex.query_vectors("a dog", get_encoder("fake:v1"), mode="multi")
    assert list((tmp_path / "cache" / "kg").glob(f"wordnet-{wn.fingerprint}/*/chunk-*.npz"))
