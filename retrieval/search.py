"""Search: plan -> encode -> expand -> kNN -> fuse -> filter -> hydrate -> Hits.

:class:`Searcher` is the warm object: it opens the index once, resolves the
index's own model from the manifest (and checks its fingerprint), and loads the
knowledge graph, the caption-side text model and the concept table lazily, the
first time a query needs them. A batch of queries (:meth:`Searcher.search_many`)
reuses all of it, so per query only encoding, expansion and search remain.

Scores: with one query vector and no caption fusion a hit's score is the
inner product (cosine) with the query. KG ``multi`` expansion keeps each
item's best weighted cosine over the query vectors; concept grounding (lite
indexes) adds ``concept_weight * shape(min(1, sum of weight * p))`` over an image's
stored WordNet concepts (probability ``p``) that are KG targets (the query's
linked entities and their hyponyms, ``weight`` decaying with depth). An index with concept
profiles (100 classes per image at temperature 2) uses ``shape = log1p(100 m) / log1p(100)`` and
weight 2.5; one from before them (its top 5 classes) the square root and weight 0.5, plus
``concept_mix`` times that weight x the square root of the targets' share in the image's whole
class mix, read off its stored vector (:class:`_ConceptMix`); see GROUNDING.
Hybrid caption fusion
replaces the score by the fused one (normalised weighted sum in [0, 1], or
RRF), so ``min_score`` means a different scale there: see :meth:`search`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import fusion
from .errors import IndexCorrupt, KGError, KgclipError, ModelError, ModelMismatch, QueryError, UsageError
from .filters import Filter, matches, parse_filters
from .types import Hit, QueryPlan, Results

log = logging.getLogger(__name__)

EXPAND_MODES = ("auto", "none", "mix", "multi")
HYBRID_MODES = ("auto", "none", "sum", "rrf")
# What `auto` resolves to, from benchmarks/results/kg_tuning.json (lite; fashion-mnist, flickr-nouns,
# emoji): the gain is lite concept grounding (sqrt bonus of the stored concepts, concept_weight 0.5, plus
# the class-mix term, concept_mix 2); the text-side expansion alone loses mAP on every set. With grounding,
# multi beats mix on mAP on all three sets (+0.3%, +0.3%, +2.8% relative) and on nDCG@10 on two (mix
# leads fashion-mnist by 0.003), so auto expands with multi.
# Long descriptive queries are expanded and grounded less (ExpansionPolicy.focus_words) and auto
# expands only queries of at most AUTO_EXPAND_MAX_WORDS content words, when a KG is available
# (full-caption R@10: benchmarks/results/recall_kg.json). Hybrid: normalised weighted sum when the index has captions
# (held-out caption queries R@1/R@10: images only 0.03/0.27; sum 0.56/0.86 and rrf 0.28/0.79 at
# caption weight 0.7; sum beat rrf at every weight tried).
AUTO_EXPAND = "multi"
AUTO_EXPAND_MAX_WORDS = 3
AUTO_HYBRID = "sum"
_FILLER = frozenset("a an the some any of photo photos picture pictures image images".split())


def is_short_query(text: str | None) -> bool:
    """At most AUTO_EXPAND_MAX_WORDS content words ("a photo of a dog" -> 1): a category-like query."""
    if not text:
        return False
    words = [w for w in re.findall(r"[^\W\d_]+", text.lower()) if w not in _FILLER]
    return 0 < len(words) <= AUTO_EXPAND_MAX_WORDS


@dataclass
class SearchOptions:
    """Knobs with defaults; everything a query can change without reloading anything."""

    image_weight: float = 0.5  # text+image queries: share of the image vector in the mixed query
    caption_weight: float = 0.7  # hybrid: share of the caption list (0.7 measured best of 0.3/0.5/0.7)
    # lite grounding. None = the index's kind decides (GROUNDING): a lite index with concept profiles
    # (100 classes at temperature 2 per image) or one from before them (the top 5 classes at temperature 1).
    concept_weight: float | None = None  # weight of the concept bonus
    # bonus = sqrt(mass) ("sqrt": a small mass counts more), the mass ("sum"), or
    # log1p(concept_log_scale x mass) / log1p(concept_log_scale) ("log": smaller masses count even more)
    concept_agg: str | None = None
    concept_log_scale: float = 100.0
    # a second grounding term, concept_mix x concept_weight x sqrt(the KG targets' share of the image's
    # class mix, estimated from its stored vector: _ConceptMix; 0 = off): it sees the 50 classes each vector
    # mixes, which a profile holds anyway
    concept_mix: float | None = None
    concept_mix_ridge: float = 0.1
    # which stored concepts ground: "auto" (the profiles where the index has them, else the top 5) or
    # "top5" (the top 5 even where there are profiles: the grounding of indexes from before them)
    concept_source: str = "auto"
    rrf_k: int = 60
    norm: str = "minmax"
    min_fetch: int = 50  # candidates fetched per list before fusion/filtering
    fetch_factor: int = 4


# (concept_agg, concept_weight, concept_mix) where SearchOptions leaves them None, by the index's kind;
# from benchmarks/results/kg_tuning.json (fashion-mnist, flickr-nouns, emoji category mAP vs no expansion):
# profiles: log (scale 100), 2.5, no mix term: +25.1 / +6.7 / +24.2%; the top 5 only: sqrt, 0.5, mix 2:
# +20.1 / +6.9 / +11.3% (the class-mix term was the way to see past the 5 stored classes)
GROUNDING = {"profile": ("log", 2.5, 0.0), "top5": ("sqrt", 0.5, 2.0)}


def _validate_k(k: Any) -> int:
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise UsageError(f"k must be a positive integer, not {k!r}") from None
    if k <= 0:
        raise UsageError(f"k must be a positive integer, not {k}")
    return k


def _clean_text(text: Any) -> str | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise QueryError(f"a text query must be a string, not {type(text).__name__}")
    t = " ".join(text.split())
    if not t:
        raise QueryError("empty query: give some words to search for (or --image PATH)")
    return t


def _is_index(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("search", "get", "model_spec"))


def open_any_index(index: Any):
    """An Index object as it is, or open a path with :func:`indexer.open_index`."""
    if _is_index(index):
        return index
    from indexer import open_index

    return open_index(os.fspath(index))


class Searcher:
    """A warm searcher over one index.

    ``Searcher("pics.kgc").search("a dog on a beach", k=5)`` -> :class:`Results`.

    Parameters: ``index`` is a path or an opened Index; ``expand`` is the KG
    mode (``auto`` = ``mix`` when a KG can be loaded, else ``none``); ``kg`` a
    KG path (None = shipped WordNet); ``hybrid`` the default caption fusion;
    ``model`` (optional) the model spec the caller expects: a different one
    than the index's raises :class:`ModelMismatch`; ``expander`` an already
    built KG Expander to reuse; ``query_cache`` how many distinct query texts'
    vectors to keep (LRU; 0 turns the cache off, e.g. for latency measurements).
    """

    def __init__(
        self,
        index: Any,
        expand: str = "auto",
        kg: str | os.PathLike | None = None,
        device: str | None = "auto",
        hybrid: str = "auto",
        model: str | None = None,
        options: SearchOptions | None = None,
        check_fingerprint: bool = True,
        expander: Any = None,
        query_cache: int = 256,
        owns_index: bool = False,
    ):
        if expand not in EXPAND_MODES:
            raise UsageError(f"unknown --expand {expand!r}: use one of {', '.join(EXPAND_MODES)}")
        if hybrid not in HYBRID_MODES:
            raise UsageError(f"unknown --hybrid {hybrid!r}: use one of {', '.join(HYBRID_MODES)}")
        self.query_cache = int(query_cache)  # distinct query texts whose vectors are kept (0 = off)
        self._qcache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._owned = owns_index or not _is_index(index)  # close() closes only an index handed over or opened here
        self.index = open_any_index(index)
        try:
            self._setup(expand, kg, device, hybrid, model, options, check_fingerprint, expander)
        except BaseException:
            self.close()
            raise

    def _setup(self, expand, kg, device, hybrid, model, options, check_fingerprint, expander) -> None:
        self.expand = expand
        self.kg_path = os.fspath(kg) if kg is not None else None
        self.device = device or os.environ.get("KGCLIP_DEVICE") or "auto"
        self.hybrid = hybrid
        self.options = options or SearchOptions()
        from .encoders import canonical_spec, get_encoder

        spec = self.index.model_spec
        if model is not None and canonical_spec(model) != canonical_spec(spec):
            raise ModelMismatch(
                f"index {self._name()} was built with model {spec!r}, not {model!r}: "
                "search it without --model, or build another index with that model"
            )
        self.encoder = get_encoder(spec, device=self.device)
        if check_fingerprint:
            want = getattr(self.index, "model_fingerprint", None)
            have = self.encoder.fingerprint
            if want and have != want:
                raise ModelMismatch(
                    f"index {self._name()} was built with {want}, but this machine's {spec} is {have}: "
                    "its vectors would not match; rebuild the index (kgclip build) with this model"
                )
        self._text_encoder = None
        self._expander: Any = expander  # an Expander to use instead of loading the KG (tests, reuse)
        self._expander_error: str | None = None
        # the store's concepts as arrays, read once per source: profiles (True) or the top 5 (False)
        self._concept_arrays: dict[bool, _ConceptArrays | None] = {}
        self._concept_mix: tuple[float, Any] | None = None  # (ridge, _ConceptMix or None)
        self._vocab_size = -1  # size of the concept table last handed to the expander
        self._caption_table: tuple[np.ndarray, list[tuple[int, str]]] | None = None
        self._n = len(self.index)

    # -- lazily loaded parts -------------------------------------------------------
    def _name(self) -> str:
        return str(getattr(self.index, "path", "?"))

    @property
    def has_captions(self) -> bool:
        if not getattr(self.index, "text_model_spec", None):
            return False
        counts = (getattr(self.index, "manifest", None) or {}).get("counts") or {}
        n = counts.get("captions", counts.get("caption_vectors"))
        return n is None or n > 0

    @property
    def text_encoder(self):
        """The caption side's model (the index's text model) applied to queries."""
        if self._text_encoder is None:
            if not self.index.text_model_spec:
                raise UsageError(f"index {self._name()} has no caption index (it was built without --text-model)")
            from .encoders import get_encoder

            self._text_encoder = get_encoder(self.index.text_model_spec, device=self.device)
        return self._text_encoder

    def resolve_expand(self, expand: str | None = None, text: str | None = None) -> str:
        """The expansion mode a query gets; ``auto`` depends on the KG being available and, when
        ``text`` is given, on the query being short (see AUTO_EXPAND_MAX_WORDS)."""
        mode = expand or self.expand
        if mode not in EXPAND_MODES:
            raise UsageError(f"unknown --expand {mode!r}: use one of {', '.join(EXPAND_MODES)}")
        if mode == "auto":
            if text is not None and not is_short_query(text):
                return "none"
            return AUTO_EXPAND if self.expander(required=False) is not None else "none"
        if mode != "none":
            self.expander(required=True)
        return mode

    def expander(self, required: bool = True):
        """The KG Expander (loaded once); None when the KG is unavailable and not required."""
        if self._expander is None and self._expander_error is None:
            try:
                if getattr(self.encoder, "family", "") == "lite":
                    self.encoder.load()  # its MiniLM tower doubles as the linker's sense encoder
                self._expander = make_expander(self.kg_path, self.encoder, self.device)
            except KgclipError as e:
                self._expander_error = str(e)
                if self.kg_path is not None:
                    raise
            except (ImportError, AttributeError) as e:
                self._expander_error = f"the knowledge graph module is not available ({e})"
        if self._expander is None and required:
            raise KGError(f"KG expansion is unavailable: {self._expander_error}")
        return self._expander

    def resolve_hybrid(self, hybrid: str | None = None, text: str | None = None) -> str:
        mode = hybrid or self.hybrid
        if mode not in HYBRID_MODES:
            raise UsageError(f"unknown --hybrid {mode!r}: use one of {', '.join(HYBRID_MODES)}")
        if mode == "auto":
            return AUTO_HYBRID if (self.has_captions and text) else "none"
        if mode != "none" and not self.has_captions:
            raise UsageError(f"--hybrid {mode}: index {self._name()} has no captions to fuse with")
        if mode != "none" and not text:
            raise UsageError(f"--hybrid {mode} needs a text query (the caption side matches text)")
        return mode

    def concept_arrays(self) -> "_ConceptArrays | None":
        """The items' stored WordNet concepts (lite) as arrays, read once from the store; None when
        the index stores none."""
        profiled = self._profiled()
        if profiled not in self._concept_arrays and profiled:
            from .encoders.lite import imagenet_ancestors

            # the lite classes in class-table order (sorted ImageNet ids; no timm import on a query)
            self._concept_arrays[True] = _ConceptArrays.from_profiles(self.index.iter_profiles(),
                                                                      sorted(imagenet_ancestors()))
        if profiled not in self._concept_arrays:
            ids: list[int] = []
            rows: list[list[tuple[str, float]]] = []
            for n, (item_id, item) in enumerate(self.index.iter_items()):
                concepts = (item or {}).get("concepts") or []
                if n == 0 and not concepts:
                    break  # the model stores no concepts (only lite does): skip the scan
                ids.append(int(item_id))
                rows.append(concepts)
            vocab = list(dict.fromkeys(wnid for concepts in rows for wnid, _ in concepts))
            self._concept_arrays[False] = _ConceptArrays(ids, rows, vocab) if vocab else None
        return self._concept_arrays[profiled]

    def concept_mix(self) -> "_ConceptMix | None":
        """The class-mix estimator of a lite encoder (None for other models), made once per ridge."""
        ridge = float(self.options.concept_mix_ridge)
        if self._concept_mix is None or self._concept_mix[0] != ridge:
            self._concept_mix = (ridge, _ConceptMix.from_encoder(self.encoder, ridge))
        return self._concept_mix[1]

    def _set_vocabulary(self) -> None:
        """Tell the expander which concepts this index's images carry (lite): it then expands to the
        hyponyms with such concepts below them (ExpansionPolicy.hyponym_coverage)."""
        setv = getattr(self.expander(), "set_concept_vocabulary", None)
        if setv is None or not getattr(self.expander().policy, "hyponym_coverage", False):
            return
        arr = self.concept_arrays()
        if arr is not None and self._vocab_size != len(arr.vocab):
            setv(arr.vocab)
            self._vocab_size = len(arr.vocab)

    def warm(self, text: bool = True) -> "Searcher":
        """Load models (and the KG when expansion is on) now rather than on the first query."""
        self.encoder.load()
        if text and self.resolve_expand() != "none":
            self.expander()
        return self

    # -- the query -----------------------------------------------------------------
    def search(
        self,
        text: str | None = None,
        image: Any = None,
        k: int = 10,
        weights: dict[str, float] | float | None = None,
        filters: Sequence[str | Filter] | str | None = None,
        min_score: float | None = None,
        explain: bool = False,
        hybrid: str | None = None,
        expand: str | None = None,
    ) -> Results:
        """Top-``k`` hits for a text query, an image query (path or PIL image), or both.

        ``weights``: a float (the image's share when both are given) or a dict with
        ``image``, ``caption`` and ``concept`` shares. ``filters``: ``--filter``
        strings or :class:`Filter` objects (all must hold). ``min_score``: drop hits
        whose final score is lower (cosine, or the fused score with hybrid).
        """
        return self._search(text, image, k, weights, filters, min_score, explain, hybrid, expand)

    def search_many(self, texts: Iterable[str], k: int = 10, **kw) -> list[Results]:
        """Several text queries on the warm path: their vectors are encoded as one batch first."""
        texts = [_clean_text(t) for t in texts]
        k = _validate_k(k)
        if not texts:
            return []
        hyb = self.resolve_hybrid(kw.get("hybrid"), texts[0])
        sides = 2 if hyb != "none" else 1
        # a chunk's vectors (one per model side) must all fit in the query cache until searched: a batch
        # primed whole would evict its first queries and encode them again one by one
        step = max(1, self.query_cache // sides) if self.query_cache > 0 else len(texts)
        out = []
        for s in range(0, len(texts), step):
            chunk = texts[s : s + step]
            t0 = time.perf_counter()
            self.prime(chunk, captions=sides == 2)
            per = round((time.perf_counter() - t0) * 1000 / len(chunk), 3)
            for t in chunk:
                r = self._search(t, kw.get("image"), k, kw.get("weights"), kw.get("filters"), kw.get("min_score"),
                                 kw.get("explain", False), kw.get("hybrid"), kw.get("expand"))
                r.timings_ms["encode_batch_share"] = per
                out.append(r)
        return out

    # -- query-vector cache: a warm process encodes each distinct query once -------------------
    def prime(self, texts: Sequence[str], captions: bool = False) -> None:
        """Encode ``texts`` in one batch per model into the query cache (no-op when it is disabled)."""
        if self.query_cache <= 0:
            return
        jobs = [("image", self.encoder)] + ([("caption", self.text_encoder)] if captions else [])
        for kind, enc in jobs:
            todo = list(dict.fromkeys(t for t in texts if (kind, t) not in self._qcache))
            for i in range(0, len(todo), self.query_cache):
                chunk = todo[i : i + self.query_cache]
                for t, v in zip(chunk, enc.encode_queries(chunk)):
                    self._remember((kind, t), np.asarray(v, np.float32)[None])

    def _query_vector(self, text: str, kind: str = "image") -> np.ndarray:
        """[1, d] query vector from the index model (``image`` side) or the caption model, cached."""
        key = (kind, text)
        v = self._qcache.get(key)
        if v is not None:
            self._qcache.move_to_end(key)
            return v
        enc = self.encoder if kind == "image" else self.text_encoder
        v = np.asarray(enc.encode_queries([text]), np.float32)
        self._remember(key, v)
        return v

    def _remember(self, key, v) -> None:
        if self.query_cache <= 0:
            return
        self._qcache[key] = v
        while len(self._qcache) > self.query_cache:
            self._qcache.popitem(last=False)

    def _profiled(self) -> bool:
        """Whether grounding reads concept profiles (the index has them, SearchOptions.concept_source)."""
        src = self.options.concept_source
        if src not in ("auto", "top5"):
            raise UsageError(f"unknown concept_source {src!r}: use auto or top5")
        return src == "auto" and bool(getattr(self.index, "concept_profile", None))

    def grounding(self) -> tuple[str, float, float]:
        """(concept_agg, concept_weight, concept_mix): SearchOptions' values, or where they are None the
        defaults for the kind of stored concepts grounding reads (GROUNDING)."""
        o = self.options
        agg, cw, mix = GROUNDING["profile" if self._profiled() else "top5"]
        return (agg if o.concept_agg is None else o.concept_agg,
                cw if o.concept_weight is None else float(o.concept_weight),
                mix if o.concept_mix is None else float(o.concept_mix))

    def _weights(self, weights) -> dict[str, float]:
        o = self.options
        w = {"image": o.image_weight, "caption": o.caption_weight, "concept": self.grounding()[1]}
        if isinstance(weights, (int, float)):
            w["image"] = float(weights)
        elif isinstance(weights, dict):
            unknown = set(weights) - set(w)
            if unknown:
                raise UsageError(f"unknown weight {sorted(unknown)[0]!r}: use image, caption, concept")
            w.update({k: float(v) for k, v in weights.items()})
        for name in ("image", "caption"):
            if not 0.0 <= w[name] <= 1.0:
                raise UsageError(f"{name} weight must be between 0 and 1, not {w[name]}")
        return w

    def _search(self, text, image, k, weights, filters, min_score, explain, hybrid, expand) -> Results:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        k = _validate_k(k)
        text = _clean_text(text)
        refresh = getattr(self.index, "refresh_if_updated", None)
        if refresh is not None and refresh():  # an update finished since: serve its generation
            self._concept_arrays = {}
            self._caption_table, self._n = None, len(self.index)
            self._vocab_size = -1
        if text is None and image is None:
            raise QueryError("no query: give a text query, an image (--image PATH), or both")
        filt = parse_filters(filters)
        w = self._weights(weights)
        mode = self.resolve_expand(expand, text) if text else "none"
        hyb = self.resolve_hybrid(hybrid, text)

        # 1. query vectors (row 0 = the plain query) and their weights
        plan = QueryPlan(text=text, mode=mode)
        rows = np.zeros((0, 0), np.float32)
        row_w = np.ones(0, np.float32)
        t = time.perf_counter()
        if text is not None:
            if mode != "none":
                qv = self._query_vector(text)[0]
                self._set_vocabulary()
                rows, row_w, plan = self.expander().query_vectors(text, self.encoder, mode=mode, query_vector=qv)
                rows = np.asarray(rows, np.float32)
                row_w = np.asarray(row_w, np.float32)
                plan.mode = mode
                timings["expand"] = _ms(t)
            else:
                rows = self._query_vector(text)
                row_w = np.ones(1, np.float32)
                timings["encode"] = _ms(t)
        if image is not None:
            t = time.perf_counter()
            ivec = self._encode_image(image)
            timings["encode_image"] = _ms(t)
            if text is None:
                rows, row_w = ivec, np.ones(1, np.float32)
            else:
                a = w["image"]
                rows = _l2((1.0 - a) * rows + a * ivec)
        rows = np.ascontiguousarray(rows, np.float32)

        # 2. targets for concept grounding (lite indexes with stored concepts)
        targets: dict[str, tuple[float, list[str]]] = {}
        mix_g = None  # the targets' class-mix direction (lite, SearchOptions.concept_mix)
        if text is not None and mode != "none" and w["concept"] > 0:
            ct = getattr(self.expander(), "concept_targets", None)
            arr = self.concept_arrays() if ct is not None else None
            if arr is not None:
                t = time.perf_counter()
                mix = self.concept_mix() if self.grounding()[2] > 0 else None
                targets = dict(ct(plan, within=arr.slot.keys() if mix is None else mix.within(arr)))
                # a long descriptive query is grounded less (ExpansionPolicy.focus_words), as it is expanded less
                focus = getattr(getattr(self.expander(), "policy", None), "focus", None)
                if focus is not None:
                    w["concept"] *= focus(text)
                if mix is not None and targets:
                    mix_g = mix.direction(targets)
                timings["ground"] = _ms(t)

        # 3. search, fuse, filter, hydrate: fetch more candidates until k hits pass (or all were seen)
        fetch = self._fetch_size(k, len(rows), bool(targets), hyb, bool(filt) or min_score is not None)
        while True:
            t = time.perf_counter()
            ranked, why = self._candidates(text, image, rows, row_w, targets, hyb, w,
                                           min(fetch, max(self._n, 1)), mix_g)
            timings["search"] = timings.get("search", 0.0) + _ms(t)
            t = time.perf_counter()
            hits = self._hydrate(ranked, k, filt, min_score)
            timings["hydrate"] = timings.get("hydrate", 0.0) + _ms(t)
            if len(hits) >= k or fetch >= self._n:
                break
            if min_score is not None and ranked and ranked[-1][1] < min_score:
                break  # the rest scores lower still
            fetch *= 4
        if explain:
            if why is None:
                why = {i: {"vector": (0, sc)} for i, sc in ranked}
            self._explain(hits, why, rows, row_w, plan, targets, text, image, hyb)
        timings["total"] = _ms(t0)
        return Results(query=text if text is not None else _image_name(image), hits=hits, plan=plan,
                       timings_ms=timings)

    def _fetch_size(self, k: int, n_rows: int, grounded: bool, hyb: str, filtered: bool) -> int:
        """Candidates fetched per list: exactly k for one plain vector list (the same FAISS work as a
        bare search at the tuned parameters); more where fusion, grounding or filters reorder or
        drop candidates."""
        if n_rows <= 1 and not grounded and hyb == "none" and not filtered:
            return k
        fetch = max(self.options.min_fetch, k * self.options.fetch_factor)
        return max(fetch, k * 10) if filtered else fetch

    def _encode_image(self, image) -> np.ndarray:
        if not self.encoder.has_images:
            raise ModelError(f"index model {self.encoder.spec} has no image tower: image queries need one")
        if isinstance(image, (str, os.PathLike)):
            p = Path(image)
            if not p.exists():
                raise QueryError(f"{p}: no such image file")
            if p.is_dir():
                raise QueryError(f"{p}: is a folder, not an image file")
        return self.encoder.encode_images([image])

    def _vector_lists(self, rows: np.ndarray, fetch: int, kind: str = "image") -> list[list[tuple[int, float]]]:
        scores, ids = self.index.search(rows, fetch, kind=kind)
        out = []
        for srow, irow in zip(np.asarray(scores).tolist(), np.asarray(ids).tolist()):
            out.append([(i, s) for s, i in zip(srow, irow) if i >= 0])
        return out

    def _candidates(self, text, image, rows, row_w, targets, hyb, w, fetch, mix_g=None):
        """Fused (id, score) list, best first, and per-id provenance for explanations. ``mix_g``: the
        concept-mix direction (see _ground)."""
        why: dict[int, dict[str, Any]] = {}
        if len(rows) == 1:
            vec = self._vector_lists(rows, fetch)[0]
            if not targets and hyb == "none":
                return vec, None  # the plain case: provenance is built only if --explain asks (_search)
            for i, s in vec:
                why.setdefault(i, {})["vector"] = (0, s)
        else:  # several query vectors: each id's best weighted score (fusion.max_fuse), on arrays
            scores, ids = self.index.search(rows, fetch, kind="image")
            vec, best, raw = fusion.max_fuse_arrays(scores, ids, [float(x) for x in row_w], limit=fetch)
            for i, _ in vec:
                why[i] = {"vector": (best[i], raw[i])}

        if targets:
            vec = self._ground(vec, rows[0], targets, w["concept"], fetch, why, mix_g)

        if hyb != "none":
            cq = self._query_vector(text, "caption")
            cap = self._vector_lists(cq, fetch, kind="caption")[0]
            for r, (i, s) in enumerate(cap, 1):
                why.setdefault(i, {})["caption"] = (r, s)
            cw = w["caption"]
            if image is not None:  # the caption side matches the text part only
                cw *= 1.0 - w["image"]
            if hyb == "sum":
                fused = fusion.weighted_sum([vec, cap], [1.0 - cw, cw], norm=self.options.norm)
            else:
                fused = fusion.rrf([vec, cap], [1.0 - cw, cw], k=self.options.rrf_k)
            for i, s in vec:
                why.setdefault(i, {})["image_score"] = s
            return fused, why
        return vec, why

    def _ground(self, vec, q0, targets, cw, fetch, why, mix_g=None):
        """Add the concept bonus; items found only through concepts get their exact cosine.

        An image's probability mass inside the targets (weight x p summed over its concepts, capped
        at 1; as retrieval.kg.match_concepts), square-rooted by default, explained by its best
        concept. Vectorised over all items (a category word such as "an animal" targets hundreds of
        classes: hundreds of thousands of postings on a 100k-item index). With ``mix_g`` (lite,
        SearchOptions.concept_mix) every candidate (the vector list and the items brought in by their
        stored concepts) also gets the bonus of the targets' estimated share of its class mix; it
        brings in no candidates of its own (a third FAISS list and its vectors cost about 0.5 ms more
        per query at 100k items).
        """
        arr = self.concept_arrays()
        if arr is None:
            return vec
        g = arr.ground(targets)
        if g is None:
            if mix_g is None:
                return vec
            scores = dict(vec)
            self._ground_mix(scores, cw, why, mix_g)
            return _best_first(scores, fetch)
        rows, bonus, order = g
        bonus = self._shape(bonus)
        scores = dict(vec)
        row_ids = arr.ids[rows]
        in_vec = np.isin(row_ids, np.fromiter(scores, np.int64, len(scores)))
        cand = np.flatnonzero(~in_vec)
        if len(cand) > fetch:  # only the best bonuses (and all ties with the last of them) can be picked
            kth = np.partition(bonus[cand], len(cand) - fetch)[len(cand) - fetch]
            cand = cand[bonus[cand] >= kth]
        # the best-bonus items not among the vector candidates (ties: the first target's, then scan order)
        first = order[arr.cls[rows[cand]]].min(axis=1) if len(cand) else cand
        extra_pos = cand[np.lexsort((cand, first, -bonus[cand]))[:fetch]] if len(cand) else cand
        extra = row_ids[extra_pos]
        # one read of the stored vectors: the extras' cosines and, with mix_g, every candidate's class mix
        mix_ids = extra
        if mix_g is not None:
            mix_ids = np.concatenate([np.fromiter(scores, np.int64, len(scores)), extra])
        mix_vecs = None
        if len(mix_ids):
            mix_vecs = np.asarray(self.index.get_vectors(mix_ids, kind="image"), np.float32)
        if len(extra):
            vecs = mix_vecs[len(mix_ids) - len(extra):]
            for i, sc in zip(extra.tolist(), (vecs @ q0).tolist()):
                scores[i] = float(sc)
                why.setdefault(i, {})["vector"] = (0, float(sc))
        for pos in np.concatenate([np.flatnonzero(in_vec), extra_pos]).tolist():
            i, b = int(row_ids[pos]), float(bonus[pos])
            scores[i] += cw * b
            # which concept explains it is looked up for the hits only (_explain): (row, bonus, targets, order)
            why.setdefault(i, {})["concept"] = (int(rows[pos]), cw * b, targets, order)
        if mix_g is not None:
            self._ground_mix(scores, cw, why, mix_g, mix_ids, mix_vecs)
        return _best_first(scores, fetch)

    def _shape(self, mass: np.ndarray) -> np.ndarray:
        """A grounding mass in [0, 1] -> its bonus before the weights (SearchOptions.concept_agg)."""
        agg = self.grounding()[0]
        if agg == "sqrt":
            return np.sqrt(mass)
        if agg == "sum":
            return mass
        if agg == "log":
            c = float(self.options.concept_log_scale)
            return np.log1p(c * mass) / np.log1p(c)
        raise UsageError(f"unknown concept_agg {agg!r}: use sqrt, sum or log")

    def _ground_mix(self, scores, cw, why, mix_g, ids=None, vecs=None) -> None:
        """In place: add concept_mix x cw x sqrt(share) (or the share, concept_agg "sum") to every
        candidate in ``scores`` (``ids`` and their stored ``vecs``, when already read, are those
        candidates)."""
        mix = self.concept_mix()
        if ids is None:
            ids = np.fromiter(scores, np.int64, len(scores))
        if not len(ids):
            return
        if vecs is None:
            vecs = np.asarray(self.index.get_vectors(ids, kind="image"), np.float32)
        share = np.clip(mix.share(vecs, mix_g), 0.0, 1.0)
        # the stored-concept shape, but "log" (tuned for many soft stored concepts) keeps sqrt here
        agg, _, mix_w = self.grounding()
        shaped = np.sqrt(share) if agg == "log" else self._shape(share)
        bonus = cw * mix_w * shaped
        for i, sh, b in zip(ids.tolist(), share.tolist(), bonus.tolist()):
            if b > 0:
                scores[i] += b
                why.setdefault(i, {})["concept_mix"] = (sh, b)

    def _hydrate(self, ranked, k, filt: list[Filter], min_score) -> list[Hit]:
        hits: list[Hit] = []
        chunk = max(k, 16) if filt else k
        pos = 0
        while len(hits) < k and pos < len(ranked):
            part = ranked[pos : pos + chunk]
            pos += len(part)
            if min_score is not None:
                part = [(i, s) for i, s in part if s >= min_score]
                if not part:
                    break  # ranked is sorted: nothing further can pass
            items = self.index.get([i for i, _ in part])
            for (i, s), item in zip(part, items):
                if item is None or (filt and not matches(item, filt)):
                    continue
                hits.append(_make_hit(i, s, item, len(hits) + 1))
                if len(hits) >= k:
                    break
            chunk = max(chunk, k * 4)
        return hits

    # -- explanations ----------------------------------------------------------------
    def _explain(self, hits, why, rows, row_w, plan, targets, text, image, hyb) -> None:
        exps = list(getattr(plan, "expansions", []) or [])
        # in mix mode the one row blends everything: say which expansion each hit is nearest to
        per_exp = None
        if text is not None and plan.mode == "mix" and exps and hits:
            try:
                mrows, _mw, _ = self.expander().query_vectors(text, self.encoder, mode="multi", plan=plan)
                hv = np.asarray(self.index.get_vectors(np.asarray([h.id for h in hits], np.int64)), np.float32)
                per_exp = hv @ np.asarray(mrows, np.float32).T
            except Exception as e:  # explanation is best effort; the hits stand
                log.debug("mix explanation skipped: %s", e)
        for n, h in enumerate(hits):
            lines = []
            info = why.get(h.id, {})
            if "vector" in info:
                row, s = info["vector"]
                what = _row_label(row, exps, text, image, plan.mode)
                lines.append(f"vector: cos {s:.3f} with {what}")
            if per_exp is not None:
                j = int(np.argmax(per_exp[n]))
                if j > 0 and j - 1 < len(exps):
                    lines.append(f"nearest expansion: {_exp_label(exps[j - 1])} (cos {per_exp[n, j]:.3f})")
            if "concept" in info:
                row, b, tg, order = info["concept"]
                wnid, p = self.concept_arrays().best(row, tg, order)
                path = tg[wnid][1]
                ptxt = f"{p:.2f}" if p >= 0.01 else f"{p:.1g}"  # a profile's far classes: 0.003, not 0.00
                lines.append(f"concept: {' -> '.join(path) if path else wnid} (p={ptxt}, +{b:.3f})")
            if "concept_mix" in info:
                sh, b = info["concept_mix"]
                lines.append(f"concept mix: ~{sh:.2f} of its class mix under the query's concepts (+{b:.3f})")
            if hyb != "none":
                if "caption" in info:
                    r, s = info["caption"]
                    lines.append(f"caption: rank {r}, cos {s:.3f} ({hyb} fusion)")
                else:
                    lines.append(f"caption: not among the caption matches ({hyb} fusion)")
            h.explanation = lines

    # -- image -> text -------------------------------------------------------------
    def search_captions(self, image: Any, k: int = 10) -> list[dict[str, Any]]:
        """Image -> text: the captions in the index nearest to an image query.

        Captions are embedded with the index model's own text tower (so they share
        the image vectors' space), once per Searcher, then searched exactly.
        Returns dicts ``{rank, score, caption, id, path}``.
        """
        k = _validate_k(k)
        q = self._encode_image(image)[0]
        mat, owners = self.caption_table()
        if not owners:
            raise UsageError(f"index {self._name()} has no captions")
        scores = mat @ q
        kk = min(k, len(owners))
        top = np.argpartition(-scores, kk - 1)[:kk]
        top = top[np.argsort(-scores[top], kind="stable")]
        paths = {it["id"]: it.get("path") for it in self.index.get([owners[j][0] for j in top]) if it}
        return [
            {"rank": r, "score": float(scores[j]), "caption": owners[j][1], "id": owners[j][0],
             "path": paths.get(owners[j][0])}
            for r, j in enumerate(top, 1)
        ]

    def caption_table(self):
        if self._caption_table is None:
            owners = []
            for item_id, item in self.index.iter_items():
                for c in (item or {}).get("captions") or []:
                    owners.append((int(item_id), c))
            mat = self.encoder.encode_texts([c for _, c in owners]) if owners else np.zeros((0, 1), np.float32)
            self._caption_table = (np.asarray(mat, np.float32), owners)
        return self._caption_table

    def close(self) -> None:
        close = getattr(self.index, "close", None)
        if close and self._owned:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_expander(kg_path: str | None, encoder, device: str | None = "auto"):
    """Load the KG (None = shipped WordNet) and build its Expander (linker and policy defaults).

    The linker's sense encoder is sbert:minilm; when the index model already holds a loaded
    MiniLM (lite's text tower), that instance is shared instead of loading the model twice.
    """
    from . import kg as kgmod

    sense: object = "sbert:minilm"
    tower = getattr(encoder, "text", None)
    if getattr(tower, "spec", None) == "sbert:minilm" and hasattr(tower, "encode_queries"):
        sense = tower
    return kgmod.Expander(kgmod.load_graph(kg_path), sense_encoder=sense)


def _make_hit(i: int, score: float, item: dict, rank: int) -> Hit:
    meta = {k: item.get(k) for k in ("width", "height", "size", "mtime", "sha256") if item.get(k) is not None}
    if item.get("meta"):
        meta["meta"] = dict(item["meta"])
    if item.get("concepts"):
        meta["concepts"] = [[c, float(p)] for c, p in item["concepts"]]
    if item.get("aliases"):
        meta["aliases"] = list(item["aliases"])
    caps = item.get("captions") or []
    return Hit(id=int(i), score=float(score), path=item.get("path"), caption=caps[0] if caps else None,
               metadata=meta, rank=rank)


def _best_first(scores: dict[int, float], n: int) -> list[tuple[int, float]]:
    """The ``n`` best (id, score) pairs, score down then id up (as fusion ranks)."""
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _row_label(row: int, exps, text, image, mode: str = "none") -> str:
    if row == 0 or not exps:
        if mode == "mix" and exps:
            return f"the query {text!r} mixed with its expansions"
        if text is not None and image is not None:
            return f"the query {text!r} + image {_image_name(image)}"
        return f"the query {text!r}" if text is not None else f"image {_image_name(image)}"
    return f"expansion {_exp_label(exps[row - 1])}" if row - 1 < len(exps) else f"query vector {row}"


def _exp_label(e) -> str:
    path = getattr(e, "path", None) or []
    s = " -> ".join(path) if path else f"{getattr(e, 'relation', '?')} {getattr(e, 'name', '?')}"
    return f"{s} (w={getattr(e, 'weight', 0.0):.2f})"


def _image_name(image) -> str | None:
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return f"<{type(image).__name__}>"


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1
    return x / n


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


class _ConceptArrays:
    """Items' stored concepts as dense arrays (lite: the top 5 WordNet classes per image, or its concept
    profile), for vectorised concept grounding: ids [n], class slots [n, m] (-1 pads), probabilities
    [n, m], and the same entries as a sparse (items x slots) matrix in columns (``_csc``), so a query
    reads only its target classes' postings."""

    def __init__(self, ids: list[int], rows: list[list[tuple[str, float]]], vocab: list[str]):
        slot = {w: j for j, w in enumerate(vocab)}
        m = max((len(r) for r in rows), default=0)
        cls = np.full((len(rows), m), -1, np.int32)
        prob = np.zeros((len(rows), m), np.float64)
        for r, concepts in enumerate(rows):
            for c, (wnid, p) in enumerate(concepts):
                cls[r, c] = slot[wnid]
                prob[r, c] = float(p)
        self._init_arrays(np.asarray(ids, np.int64), cls, prob, vocab)

    @classmethod
    def from_profiles(cls, chunks, class_ids: Sequence[str]) -> "_ConceptArrays | None":
        """From ``(item ids [k], class indexes [k, top], probabilities [k, top])`` chunks
        (Index.iter_profiles); the vocabulary is the classes some profile holds. About 1.4 KB an
        item at 100 classes (slots int16, probabilities float32, postings)."""
        parts = [c for c in chunks if len(c[0])]
        if not parts:
            return None
        ids = np.concatenate([p[0] for p in parts])
        cls_all = np.concatenate([p[1] for p in parts]).astype(np.int32)
        prob = np.concatenate([p[2] for p in parts]).astype(np.float32)
        if cls_all.max() >= len(class_ids):
            raise IndexCorrupt(f"a stored concept profile names class {int(cls_all.max())} of {len(class_ids)}")
        used = np.flatnonzero(np.bincount(cls_all.ravel(), minlength=len(class_ids)))
        remap = np.full(len(class_ids), -1, np.int32)  # class index -> vocabulary slot
        remap[used] = np.arange(len(used), dtype=np.int32)
        self = cls.__new__(cls)
        self._init_arrays(ids, remap[cls_all].astype(np.int16 if len(used) < 2**15 else np.int32), prob,
                          [class_ids[j] for j in used.tolist()])
        return self

    def _init_arrays(self, ids: np.ndarray, cls_slots: np.ndarray, prob: np.ndarray, vocab: list[str]) -> None:
        self.vocab = vocab
        self.slot = {w: j for j, w in enumerate(vocab)}
        self.ids = np.asarray(ids, np.int64)
        self.cls, self.prob = cls_slots, prob
        # postings by class slot (rows in order within a slot): a query reads only its targets' items.
        # The transpose of the (rows x slots) sparse matrix, by scipy's counting sort: 0.25 s for 100k
        # profiles of 100 classes, where a stable argsort took 0.7-1.0 s.
        import scipy.sparse as sparse

        valid = self.cls >= 0
        if valid.all():
            indices, data = self.cls.ravel(), self.prob.ravel()
        else:
            indices, data = self.cls[valid], self.prob[valid]
        indptr = np.concatenate([[0], np.cumsum(valid.sum(axis=1))])
        self._csc = sparse.csr_matrix((data, indices.astype(np.int32), indptr),
                                      shape=(len(self.ids), max(len(vocab), 1))).tocsc()

    def ground(self, targets: dict[str, tuple[float, Any]]):
        """(rows with mass > 0, min(mass, 1) per row, each class slot's position in ``targets``) or None."""
        weight = np.zeros(len(self.vocab) + 1)  # the last slot answers the -1 padding: weight 0
        order = np.full(len(self.vocab) + 1, np.iinfo(np.int64).max, np.int64)
        for t, (wnid, (w, _path)) in enumerate(targets.items()):
            j = self.slot.get(wnid)
            if j is not None:
                weight[j], order[j] = float(w), t
        if not weight.any():
            return None
        # only the target classes' postings are read: their columns of the (items x classes) sparse
        # matrix times the target weights. A category word over 100-class profiles at 100k items
        # (400 target classes, about 4M postings): about 13 ms, where gathering them by index took 75.
        slots = np.flatnonzero(weight[:-1] != 0)
        # weights in the matrix's own dtype: a float64 vector against float32 profiles made scipy
        # upcast the whole slice on every query (17.6 vs 6.8 ms for 400 classes)
        mass = self._csc[:, slots] @ weight[slots].astype(self._csc.dtype)
        rows = np.flatnonzero(mass > 0)
        if not len(rows):
            return None
        return rows, np.minimum(mass[rows], 1.0), order

    def best(self, row: int, targets: dict[str, tuple[float, Any]], order: np.ndarray) -> tuple[str, float]:
        """The row's concept with the largest weight x p among the targets (the earlier target on ties)."""
        cands = [(-float(targets[self.vocab[j]][0]) * p, int(order[j]), self.vocab[j], p)
                 for j, p in zip(self.cls[row].tolist(), self.prob[row].tolist())
                 if j >= 0 and self.vocab[j] in targets]
        _, _, wnid, p = min(cands)
        return wnid, p


class _ConceptMix:
    """The share of a set of classes in a lite image's class mix, estimated from its stored vector.

    A lite image vector is ``v = l2(m - a * mu)`` with ``m = l2(x)``, ``x = sum_c w_c T_c``: the class-text
    table rows ``T_c`` of its top classes mixed by weights ``w_c`` summing to 1, ``mu`` the table's mean
    and ``a`` the centring share (retrieval/encoders/lite.py, conse_mix). ``m = s v + a mu``, ``s > 0``
    making ``|m| = 1``; ``g_C = (T'T + ridge I)^-1 T' t_C`` is the ridge least-squares vector whose inner
    product with each table row is the row's KG target weight (0 off the targets), so ``m . g_C`` is
    about ``sum_c w_c t_c / |x|``: the targets' share of the mix over the length of the un-normalised
    mix (a diffuse mix of many unrelated classes is short and counts more; dividing it out by the
    all-classes estimate scored lower category mAP in an offline exploration). Exact when the table has
    full column rank and ``ridge`` -> 0; with lite's 1000 classes in 384 dimensions an estimate
    (tests/test_kg_grounding.py). For multi-view settings (the mean of several views' vectors) it
    estimates roughly the views' average. Linear in ``m``: one row of ``dual`` per class, so a query's
    direction is a weighted sum of rows.
    """

    def __init__(self, table: np.ndarray, class_ids: Sequence[str], center: float, ridge: float):
        t = np.asarray(table, np.float64)
        if t.ndim != 2 or len(class_ids) != len(t):
            raise ValueError(f"class table {t.shape} does not fit {len(class_ids)} class ids")
        self.slot = {w: j for j, w in enumerate(class_ids)}
        self.mu = t.mean(axis=0)
        self.center = float(center)
        dual = np.linalg.solve(t.T @ t + ridge * np.eye(t.shape[1]), t.T)  # [d, classes]
        self.dual = dual.T.astype(np.float32)  # [classes, d]: a query's direction is weights @ dual
        self._within: tuple[Any, frozenset] | None = None

    @classmethod
    def from_encoder(cls, encoder, ridge: float) -> "_ConceptMix | None":
        """For a lite encoder (its class table, ImageNet ids and centring share); None otherwise."""
        if getattr(encoder, "family", "") != "lite":
            return None
        from .encoders.lite import imagenet_ancestors

        encoder.load()
        table = getattr(encoder, "class_table", None)
        center = getattr(getattr(encoder, "config", None), "center", None)
        # ImageNet's 1000 class ids in table order (sorted wnids; the shipped WordNet data lists each
        # class once, so this avoids importing timm just for the ids)
        ids = sorted(imagenet_ancestors())
        if table is None or center is None or len(table) != len(ids):
            return None
        return cls(table, ids, center, ridge)

    def within(self, arr: "_ConceptArrays") -> frozenset:
        """The ids grounding looks at: these classes and the index's stored concepts (made once per arr)."""
        if self._within is None or self._within[0] is not arr:
            self._within = (arr, frozenset(self.slot) | frozenset(arr.slot))
        return self._within[1]

    def direction(self, targets: dict[str, tuple[float, Any]]) -> np.ndarray | None:
        """``g`` for the targets (id -> (weight, path)) that are classes; None when none is."""
        slot = self.slot
        pairs = [(slot[wnid], wt) for wnid, (wt, _path) in targets.items() if wnid in slot and wt > 0]
        if not pairs:
            return None
        cols, w = zip(*pairs)
        dense = np.zeros(len(self.dual), np.float32)
        dense[list(cols)] = w
        return dense @ self.dual

    def share(self, vecs: np.ndarray, g: np.ndarray) -> np.ndarray:
        """The estimate (see the class) for each of the image vectors [n, d], unclipped."""
        v = np.asarray(vecs, np.float64)
        a = self.center
        vm = v @ self.mu
        s = -a * vm + np.sqrt(np.maximum(a * a * (vm * vm - self.mu @ self.mu) + 1.0, 0.0))
        return s * (v @ g) + a * float(self.mu @ g)
