"""Searcher over an in-memory index (the Index read interface) with the fake encoder.

The index here is a small stand-in that implements exactly the IndexReader protocol
(retrieval/types.py), so these tests pin the Searcher's own logic: query vectors,
expansion fusion, concept grounding, hybrid caption fusion, filters, min score,
explanations and errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import KGError, KgclipError, ModelMismatch, QueryError, UsageError
from retrieval.render import render
from retrieval.query import Searcher
from retrieval.types import Expansion, IndexReader, QueryPlan
from benchmarks.fakes import COLOURS, word_vector


class MemoryIndex:
    """Brute-force, in-memory implementation of the Index read interface."""

    def __init__(self, items, vectors, captions=True, model="fake:v1", fingerprint=None):
        from retrieval.encoders import get_encoder

        self.path = "mem://test"
        self.model_spec = model
        self.model_fingerprint = fingerprint or get_encoder(model).fingerprint
        self.text_model_spec = "fake:v1" if captions else None
        self.manifest = {"counts": {"captions": sum(len(i["captions"]) for i in items) if captions else 0}}
        self.items = {it["id"]: it for it in items}
        self.ids = np.array([it["id"] for it in items], np.int64)
        self.vecs = np.asarray(vectors, np.float32)
        self.dim = self.vecs.shape[1]
        self.gets = 0
        if captions:
            enc = get_encoder("fake:v1")
            self.cap_owner = np.array([it["id"] for it in items for _ in it["captions"]], np.int64)
            self.cap_vecs = enc.encode_texts([c for it in items for c in it["captions"]])

    def __len__(self):
        return len(self.ids)

    def search(self, q, k, kind="image"):
        q = np.asarray(q, np.float32)
        if kind == "image":
            sims, owners = q @ self.vecs.T, np.tile(self.ids, (len(q), 1))
        else:
            full = q @ self.cap_vecs.T
            sims = np.full((len(q), len(self.ids)), -np.inf, np.float32)
            pos = {int(i): j for j, i in enumerate(self.ids)}
            for c, owner in enumerate(self.cap_owner):
                j = pos[int(owner)]
                sims[:, j] = np.maximum(sims[:, j], full[:, c])
            owners = np.tile(self.ids, (len(q), 1))
        k2 = min(k, len(self.ids))
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k2]
        scores = np.take_along_axis(sims, order, 1).astype(np.float32)
        ids = np.take_along_axis(owners, order, 1)
        if k > k2:
            scores = np.pad(scores, ((0, 0), (0, k - k2)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, k - k2)), constant_values=-1)
        return scores, ids

    def get(self, ids):
        self.gets += 1
        return [dict(self.items[int(i)]) if int(i) in self.items else None for i in ids]

    def get_vectors(self, ids, kind="image"):
        pos = {int(i): j for j, i in enumerate(self.ids)}
        return self.vecs[[pos[int(i)] for i in ids]]

    def iter_items(self):
        yield from self.items.items()

    @property
    def concept_classes(self):
        """The class ids the profiles index into (the fake encoder's concept_classes in these tests)."""
        return sorted({c for it in self.items.values() for c, _p in it.get("concepts") or []})

    def iter_profiles(self):
        """One chunk: each item's stored concepts as its profile (every item holds as many)."""
        slot = {c: j for j, c in enumerate(self.concept_classes)}
        rows = [(i, it.get("concepts") or []) for i, it in self.items.items()]
        if not slot or not rows:
            return
        assert len({len(c) for _, c in rows}) == 1, "every profile holds the same number of classes"
        yield (np.array([i for i, _ in rows], np.int64),
               np.array([[slot[c] for c, _p in cs] for _, cs in rows], np.int32),
               np.array([[p for _c, p in cs] for _, cs in rows], np.float16))

    def refresh_if_updated(self):
        return False

    def close(self):
        pass


def colour_items():
    items, vecs = [], []
    for n, c in enumerate(sorted(COLOURS)):
        items.append({
            "id": n + 1, "path": f"/img/{c}.png", "width": 100 * (n + 1), "height": 50, "size": 1000 + n,
            "mtime": 1.0, "sha256": f"h{n}", "captions": [f"a {c} square", f"something {c}"],
            "concepts": [[f"c_{c}", 0.9]], "aliases": [],
            "meta": {"shade": "dark" if c in ("black", "blue") else "light"},
        })
        vecs.append(word_vector(c) + 0.01 * word_vector(c + "x"))
    vecs = np.asarray(vecs, np.float32)
    return items, vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


@pytest.fixture
def index(monkeypatch):
    """The colour index; the fake encoder stores concept profiles over its c_<colour> classes here."""
    from retrieval.encoders import get_encoder

    items, vecs = colour_items()
    idx = MemoryIndex(items, vecs)
    # concept_classes is a read-only property of the Encoder contract: patch it on the fake's class
    monkeypatch.setattr(type(get_encoder("fake:v1")), "concept_classes", idx.concept_classes)
    return idx


def log_bonus(mass):
    import math

    return math.log1p(100 * mass) / math.log1p(100)


def test_the_test_indexes_are_index_readers(index):
    assert isinstance(index, IndexReader)
    with pytest.raises(TypeError, match="open_searcher"):
        Searcher("pics.kgc")


class FakeExpander:
    """Expands 'warm' to red, orange, yellow (the KG's hyponyms), exactly as the Expander contract says."""

    WARM = [("red", 0.8), ("orange", 0.6), ("yellow", 0.4)]

    def __init__(self):
        self.calls = 0

    def plan(self, text):
        linked = []
        if "warm" in text:
            linked = [{"span": "warm", "name": "warm colour", "entity_id": "c_warm", "score": 0.9}]
        exps = [Expansion(f"c_{c}", c, "hyponym", w, ["warm colour", "hyponym", c]) for c, w in self.WARM]
        exps = exps if linked else []
        return QueryPlan(text=text, linked=linked, expansions=exps)

    def query_vectors(self, text, encoder, mode="mix", plan=None, query_vector=None):
        self.calls += 1
        plan = plan or self.plan(text)
        rows = [encoder.encode_queries([text])[0]] + [word_vector(e.name) for e in plan.expansions]
        ws = [1.0] + [e.weight for e in plan.expansions]
        rows, ws = np.asarray(rows, np.float32), np.asarray(ws, np.float32)
        if mode == "mix":
            v = (rows * ws[:, None]).sum(0)
            return (v / np.linalg.norm(v))[None], np.ones(1, np.float32), plan
        return rows, ws, plan

    def concept_targets(self, plan, within=None):
        return {e.entity_id: (e.weight, e.path) for e in plan.expansions if within is None or e.entity_id in within}


def test_text_query_ranks_the_matching_colour_first(index):
    s = Searcher(index, expand="none")
    res = s.search("red", k=3)
    assert [h.path for h in res][0] == "/img/red.png"
    assert len(res) == 3 and [h.rank for h in res] == [1, 2, 3]
    assert res[0].score > res[1].score and res[0].score == pytest.approx(0.99, abs=0.02)
    assert res[0].caption == "a red square" and res[0].metadata["width"] > 0
    assert res.plan.mode == "none" and {"encode", "search", "hydrate", "total"} <= set(res.timings_ms)


def test_image_query_and_text_plus_image(index, colour_images):
    s = Searcher(index, expand="none")
    res = s.search(image=colour_images / "blue.png", k=2)
    assert res[0].path == "/img/blue.png" and res.query.endswith("blue.png")
    from PIL import Image

    res = s.search(image=Image.open(colour_images / "green.png"), k=1)
    assert res[0].path == "/img/green.png"
    # both: the weight moves the result between the two
    assert s.search("red", image=colour_images / "blue.png", k=1, weights=0.9)[0].path == "/img/blue.png"
    assert s.search("red", image=colour_images / "blue.png", k=1, weights=0.1)[0].path == "/img/red.png"


def test_filters_and_min_score(index):
    s = Searcher(index, expand="none")
    res = s.search("red", k=3, filters=["meta.shade=dark"])
    assert {h.path for h in res} == {"/img/black.png", "/img/blue.png"}
    res = s.search("red", k=10, filters=["width>=500", "path~*/img/*"])
    assert all(h.metadata["width"] >= 500 for h in res) and len(res) == 4
    res = s.search("red", k=10, min_score=0.5)
    assert [h.path for h in res] == ["/img/red.png"]
    assert s.search("red", k=5, min_score=2.0).hits == []


def test_filter_over_fetch_finds_rare_items():
    # 300 items, only 2 pass the filter and they rank last: the searcher must keep fetching
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((300, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    q = word_vector("red")
    order = np.argsort(vecs @ q)
    items = [{"id": i + 1, "path": f"/p/{i}.jpg", "captions": [], "concepts": [], "meta": {"tag": "x"}}
             for i in range(300)]
    for j in order[:2]:
        items[j]["meta"]["tag"] = "rare"
    s = Searcher(MemoryIndex(items, vecs, captions=False), expand="none")
    res = s.search("red", k=5, filters=["meta.tag=rare"])
    assert sorted(h.id for h in res) == sorted(int(j) + 1 for j in order[:2])


def test_hybrid_sum_and_rrf_use_captions(index):
    # captions: the 'green' item also says "grass"; the image side knows nothing of grass
    index.items[3]["captions"] = ["grass field"]
    index.__init__(list(index.items.values()), index.vecs)
    assert index.items[3]["path"] == "/img/green.png"
    s = Searcher(index, expand="none")
    plain = s.search("grass", k=1, hybrid="none")
    for mode in ("sum", "rrf"):
        res = s.search("grass", k=1, hybrid=mode, weights={"caption": 0.9}, explain=True)
        assert res[0].path == "/img/green.png", mode
        assert any(e.startswith("caption: rank 1") for e in res[0].explanation)
    assert plain[0].path != "/img/green.png"
    assert s.resolve_hybrid("auto", "x") == "sum"
    assert s.search("grass", k=1, hybrid="sum")[0].score <= 1.0


def test_hybrid_without_captions_is_a_usage_error():
    items, vecs = colour_items()
    s = Searcher(MemoryIndex(items, vecs, captions=False), expand="none")
    assert s.resolve_hybrid("auto", "red") == "none"
    with pytest.raises(UsageError, match="has no captions"):
        s.search("red", hybrid="rrf")


def test_expansion_mix_multi_and_grounding(index):
    exp = FakeExpander()
    s = Searcher(index, expand="mix", expander=exp, hybrid="none")
    plain = s.search("warm", k=3, expand="none")
    mix = s.search("warm", k=3, explain=True)
    warm = {"/img/red.png", "/img/orange.png", "/img/yellow.png"}
    assert len(warm & {h.path for h in plain}) <= 1  # 'warm' alone means nothing to the fake encoder
    assert {h.path for h in mix} == warm
    assert mix.plan.mode == "mix" and len(mix.plan.expansions) == 3
    red = next(h for h in mix if h.path == "/img/red.png")
    assert any("nearest expansion: warm colour -> hyponym -> red" in e for e in red.explanation)
    assert any(e.startswith("concept: warm colour -> hyponym -> red (p=0.90") for e in red.explanation)

    multi = s.search("warm", k=3, expand="multi", explain=True, weights={"concept": 0.0})
    assert [h.path for h in multi] == ["/img/red.png", "/img/orange.png", "/img/yellow.png"]
    assert multi[0].score == pytest.approx(0.8, abs=0.02)  # best weighted cosine: 0.8 * ~1.0
    assert "expansion warm colour -> hyponym -> orange (w=0.60)" in multi[1].explanation[0]

    # grounding alone (vector rows that know nothing): concepts still bring the targets in
    grounded = s.search("warm", k=3, expand="multi", weights={"concept": 5.0})
    assert [h.path for h in grounded][:1] == ["/img/red.png"]
    out = render([mix], "table", explain=True)
    assert "linked:" in out and "'warm' -> warm colour [c_warm]" in out and "(w=0.60)" in out


def test_grounding_bonus_is_the_log_of_the_concept_mass(index):
    """bonus = concept_weight x log1p(100 m) / log1p(100), m = min(1, sum of target weight x p);
    concept_weight 2.5 by default."""
    s = Searcher(index, expand="multi", expander=FakeExpander(), hybrid="none")
    scores = {w: {h.path: h.score for h in s.search("warm", k=3, weights=None if w is None else {"concept": w})}
              for w in (None, 1.0, 0.0)}
    assert s.options.concept_weight == 2.5
    # red: target weight 0.8 x p 0.9 = mass 0.72; yellow: 0.4 x 0.9 = 0.36 (the same vector part in both runs)
    for path, m in (("/img/red.png", 0.72), ("/img/yellow.png", 0.36)):
        assert scores[1.0][path] - scores[0.0][path] == pytest.approx(log_bonus(m), abs=1e-4)
        assert scores[None][path] - scores[0.0][path] == pytest.approx(2.5 * log_bonus(m), abs=2.5e-4)


def test_long_queries_are_grounded_less(index):
    from retrieval.kg import ExpansionPolicy

    exp = FakeExpander()
    exp.policy = ExpansionPolicy()  # focus_words 3: a 7-content-word query gets 3/7 of the concept bonus
    s = Searcher(index, expand="multi", expander=exp, hybrid="none")
    for text, focus in (("warm", 1.0), ("warm colours on a big white sheet of paper", 3 / 7)):
        on = {h.path: h.score for h in s.search(text, k=5, weights={"concept": 1.0})}
        off = {h.path: h.score for h in s.search(text, k=5, weights={"concept": 0.0})}
        assert on["/img/red.png"] - off["/img/red.png"] == pytest.approx(focus * log_bonus(0.72), abs=1e-4), text


def test_expand_auto_without_kg_falls_back_to_none(index, monkeypatch):
    import retrieval.query.searcher as search_mod

    def broken(*a, **k):
        raise KGError("no graph here")

    monkeypatch.setattr(search_mod, "make_expander", broken)
    s = Searcher(index, expand="auto")
    assert s.resolve_expand() == "none"
    assert s.search("red", k=1)[0].path == "/img/red.png"
    with pytest.raises(KGError, match="unavailable: no graph here"):
        s.search("red", expand="mix")


def test_search_many_reuses_one_searcher(index):
    s = Searcher(index, expand="none")
    out = s.search_many(["red", "  blue  ", "green"], k=2)
    assert [r.query for r in out] == ["red", "blue", "green"]
    assert [r[0].path for r in out] == ["/img/red.png", "/img/blue.png", "/img/green.png"]
    with pytest.raises(QueryError):
        s.search_many(["red", "   "])


@pytest.mark.parametrize("k", [0, -3, "x"])
def test_bad_k(index, k):
    with pytest.raises(UsageError, match="k must be a positive integer"):
        Searcher(index, expand="none").search("red", k=k)


@pytest.mark.parametrize("q", ["", "   ", "\t\n"])
def test_empty_query(index, q):
    with pytest.raises(QueryError, match="empty query") as e:
        Searcher(index, expand="none").search(q)
    assert e.value.exit_code == 2


def test_no_query_and_bad_image(index, tmp_path):
    s = Searcher(index, expand="none")
    with pytest.raises(QueryError, match="no query"):
        s.search()
    with pytest.raises(QueryError, match="no such image file"):
        s.search(image=tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(KgclipError, match="cannot read image"):
        s.search(image=bad)


def test_model_mismatch(index):
    with pytest.raises(ModelMismatch, match="built with model 'fake:v1', not 'lite'"):
        Searcher(index, model="lite")
    index.model_fingerprint = "fake:v1#000000"
    with pytest.raises(ModelMismatch, match="rebuild the index"):
        Searcher(index)


def test_image_to_text_over_captions(index, colour_images):
    s = Searcher(index, expand="none")
    caps = s.search_captions(colour_images / "yellow.png", k=3)
    assert caps[0]["path"] == "/img/yellow.png" and "yellow" in caps[0]["caption"]
    assert [c["rank"] for c in caps] == [1, 2, 3] and caps[0]["score"] >= caps[1]["score"]


def test_render_formats(index):
    import json

    s = Searcher(index, expand="none")
    rs = s.search_many(["red", "blue"], k=2)
    lines = render(rs, "jsonl").splitlines()
    assert len(lines) == 4
    rec = json.loads(lines[2])
    assert rec["query"] == "blue" and rec["rank"] == 1 and rec["path"] == "/img/blue.png" and "score" in rec
    assert render(rs, "paths").splitlines()[0] == "/img/red.png"
    batch = json.loads(render(rs, "json", batch=True))
    assert [b["query"] for b in batch] == ["red", "blue"] and "explanation" not in batch[0]["hits"][0]
    one = json.loads(render(rs[:1], "json"))
    assert one["hits"][0]["path"] == "/img/red.png"
    table = render(rs, "table")
    assert "query: red" in table and "/img/red.png" in table and "a red square" in table


def test_query_cache_encodes_each_text_once(index, monkeypatch):
    s = Searcher(index, expand="none", hybrid="sum")
    calls = []
    real = s.encoder.encode_queries
    monkeypatch.setattr(s.encoder, "encode_queries", lambda texts: calls.append(list(texts)) or real(texts))
    s.search_many(["red", "blue", "red"], k=1)
    s.search("blue", k=1)
    assert calls == [["red", "blue"], ["red", "blue"]]  # one batch per model (image side, caption side)
    off = Searcher(index, expand="none", hybrid="none", query_cache=0)
    monkeypatch.setattr(off.encoder, "encode_queries", lambda texts: calls.append(list(texts)) or real(texts))
    calls.clear()
    off.search("red", k=1)
    off.search("red", k=1)
    assert calls == [["red"], ["red"]]


def test_query_cache_can_be_resized(index):
    s = Searcher(index, expand="none", hybrid="none", query_cache=4)
    s.search_many(["red", "blue", "green"], k=1)
    s.query_cache = 2
    assert s.query_cache == 2 and len(s._vectors._cache) == 2
    s.query_cache = 0
    assert s.search("red", k=1)[0].path == "/img/red.png" and len(s._vectors._cache) == 0


@pytest.mark.parametrize("hybrid", ["none", "sum"])
def test_search_many_beyond_the_cache_encodes_each_text_once(index, monkeypatch, hybrid):
    # a batch larger than the query cache used to be primed whole, its first queries evicted before
    # their search and then encoded again one by one (the stdin batch path, kgclip bench recall)
    s = Searcher(index, expand="none", hybrid=hybrid, query_cache=4)
    texts = [f"{c} {i}" for i, c in enumerate(["red", "blue", "green"] * 4)]
    seen = []
    for enc in {id(s.encoder): s.encoder, id(s.text_encoder): s.text_encoder}.values():
        real = enc.encode_queries
        monkeypatch.setattr(enc, "encode_queries", lambda t, real=real: seen.extend(t) or real(t))
    out = s.search_many(texts, k=1)
    assert len(out) == len(texts)
    assert sorted(seen) == sorted(texts * (2 if hybrid == "sum" else 1))  # each once per model side
    assert [r.query for r in out] == texts


def test_auto_expands_short_queries_only(index):
    from retrieval.query import is_short_query

    assert is_short_query("a mammal") and is_short_query("a photo of a dog") and is_short_query("red sports car")
    assert not is_short_query("a dog runs across the green grass") and not is_short_query("the a")
    from retrieval.query import AUTO_EXPAND

    assert AUTO_EXPAND == "multi"  # benchmarks/results/kg_tuning.json: multi + grounding beat mix's mAP on every set
    s = Searcher(index, expand="auto", expander=FakeExpander(), hybrid="none")
    assert s.resolve_expand() == AUTO_EXPAND and s.resolve_expand(text="warm") == AUTO_EXPAND
    assert s.search("warm", k=1).plan.mode == AUTO_EXPAND
    assert s.search("warm red squares on white paper", k=1).plan.mode == "none"
    assert s.search("warm red squares on white paper", k=1, expand="multi").plan.mode == "multi"
