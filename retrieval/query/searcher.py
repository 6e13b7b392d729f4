"""The Searcher: a warm object over one opened index that runs the query flow, step by step

    plan -> link + expand (KG) -> encode -> candidates (FAISS) -> ground + fuse -> filter/hydrate
    -> explain

Each step is a function in its own module of this package; this class holds what is loaded once
(the encoders, the KG expander, the concept profiles, the query-vector cache) and calls them.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..encoders import canonical_spec, get_encoder
from ..errors import KGError, KgclipError, ModelMismatch, QueryError, UsageError
from ..text import clean_text
from ..types import IndexReader, QueryPlan, Results
from . import captions as caps
from . import plan as qplan
from .candidates import fetch_size, image_candidates, vector_lists
from .expand import make_expander
from .explain import explain_hits, image_name, mix_similarities
from .filters import Filter, parse_filters
from .fusion import fuse_hybrid
from .grounding import ConceptArrays, ground, query_targets
from .hydrate import hydrate
from .options import SearchOptions, query_weights
from .vectors import QueryVectorCache, blend, encode_image

_UNSET = object()


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


class Searcher:
    """A warm searcher over one opened index (:class:`~retrieval.types.IndexReader`).

    ``with indexer.open_searcher("pics.kgc") as s: s.search("a dog on a beach", k=5)`` ->
    :class:`Results`.

    Parameters: ``index`` an opened IndexReader (``owns_index=True``: :meth:`close` closes it);
    ``expand`` the KG mode (``auto`` = ``multi`` for short queries when a KG can be loaded, else
    ``none``); ``kg`` a KG path (None = shipped WordNet); ``hybrid`` the default caption fusion;
    ``model`` (optional) the model spec the caller expects: a different one than the index's raises
    :class:`ModelMismatch` (as does a model whose weights' fingerprint differs from the index's, unless
    ``check_fingerprint`` is off); ``expander`` an already built KG Expander to reuse;
    ``query_cache`` how many distinct query texts' vectors to keep (LRU; 0 turns it off).

    Scores (:data:`retrieval.query.SCORE_HELP`): the cosine with the query; with ``multi`` expansion
    each item's best weighted cosine over the query vectors; concept grounding adds up to
    ``options.concept_weight`` (2.5) x the concept bonus, so scores above 1 happen; hybrid caption
    fusion replaces the score by the fused one (in [0, 1] for ``sum``; RRF's scale for ``rrf``), so
    ``min_score`` means a different scale there.
    """

    def __init__(
        self,
        index: IndexReader,
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
        if isinstance(index, (str, bytes, os.PathLike)):
            raise TypeError(f"Searcher takes an opened index, not the path {index!r}: "
                            "use indexer.open_searcher(path, ...)")
        self.index = index
        self._owned = owns_index
        try:
            self._setup(expand, kg, device, hybrid, model, options, check_fingerprint, expander, query_cache)
        except BaseException:
            self.close()
            raise

    def _setup(self, expand, kg, device, hybrid, model, options, check_fingerprint, expander, query_cache) -> None:
        self.expand = qplan.check_mode(expand, "expand")
        self.hybrid = qplan.check_mode(hybrid, "hybrid")
        self.kg_path = os.fspath(kg) if kg is not None else None
        self.device = device or os.environ.get("KGCLIP_DEVICE") or "auto"
        self.options = options or SearchOptions()
        self._vectors = QueryVectorCache(query_cache)
        spec = self.index.model_spec
        if model is not None and canonical_spec(model) != canonical_spec(spec):
            raise ModelMismatch(
                f"index {self._name()} was built with model {spec!r}, not {model!r}: "
                "search it without --model, or build another index with that model"
            )
        self.encoder = get_encoder(spec, device=self.device)
        if model is None:  # named by the index, not by the user: local or shipped files only
            self.encoder.named_by = self._manifest_name()
        want = self.index.model_fingerprint
        if check_fingerprint and want and self.encoder.fingerprint != want:
            raise ModelMismatch(
                f"index {self._name()} was built with {want}, but this machine's {spec} is "
                f"{self.encoder.fingerprint}: its vectors would not match; rebuild the index (kgclip build) "
                "with this model"
            )
        self._text_encoder = None
        self._expander: Any = expander  # an Expander to use instead of loading the KG (tests, reuse)
        self._expander_error: str | None = None
        self._forget_generation()

    def _forget_generation(self) -> None:
        """Drop what was read from the index's current generation (after an update)."""
        self._concepts: Any = _UNSET  # ConceptArrays | None once read
        self._vocab_size = -1  # size of the concept vocabulary last handed to the expander
        self._caption_table: tuple[np.ndarray, list[tuple[int, str]]] | None = None
        self._n = len(self.index)

    @property
    def query_cache(self) -> int:
        """How many distinct query texts' vectors are kept (0 = none); settable."""
        return self._vectors.size

    @query_cache.setter
    def query_cache(self, size: int) -> None:
        self._vectors.resize(size)

    # -- lazily loaded parts -------------------------------------------------------
    def _name(self) -> str:
        return str(self.index.path)

    def _manifest_name(self) -> str:
        return f"the index manifest {os.path.join(str(self.index.path), 'index.json')}"

    @property
    def has_captions(self) -> bool:
        if not self.index.text_model_spec:
            return False
        counts = (self.index.manifest or {}).get("counts") or {}
        n = counts.get("captions", counts.get("caption_vectors"))
        return n is None or n > 0

    @property
    def text_encoder(self):
        """The caption side's model (the index's text model) applied to queries."""
        if self._text_encoder is None:
            if not self.index.text_model_spec:
                raise UsageError(f"index {self._name()} has no caption index (it was built without --text-model)")
            self._text_encoder = get_encoder(self.index.text_model_spec, device=self.device)
            self._text_encoder.named_by = self._manifest_name()
        return self._text_encoder

    def expander(self, required: bool = True):
        """The KG Expander (loaded once); None when the KG is unavailable and not required."""
        if self._expander is None and self._expander_error is None:
            try:
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

    def resolve_expand(self, expand: str | None = None, text: str | None = None) -> str:
        """The expansion mode a query gets (see :func:`retrieval.query.plan.resolve_expand`)."""
        return qplan.resolve_expand(expand or self.expand, text, self.expander)

    def resolve_hybrid(self, hybrid: str | None = None, text: str | None = None) -> str:
        return qplan.resolve_hybrid(hybrid or self.hybrid, text, self.has_captions, self._name())

    def concept_arrays(self) -> ConceptArrays | None:
        """The items' concept profiles as arrays, read once per index generation; None when the
        index model stores no concepts or the index holds no profiles."""
        if self._concepts is _UNSET:
            classes = self.encoder.concept_classes
            self._concepts = (ConceptArrays.from_profiles(self.index.iter_profiles(), classes)
                              if classes is not None else None)
        return self._concepts

    def _set_vocabulary(self) -> None:
        """Tell the expander which concepts this index's images carry: it then expands to the
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
        whose final score is lower (see the class docstring for what a score is).
        """
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        k = qplan.validate_k(k)
        text = clean_text(text)
        if self.index.refresh_if_updated():  # an update finished since: serve its generation
            self._forget_generation()
        if text is None and image is None:
            raise QueryError("no query: give a text query, an image (--image PATH), or both")
        filt = parse_filters(filters)
        w = query_weights(self.options, weights)
        mode = self.resolve_expand(expand, text) if text else "none"
        hyb = self.resolve_hybrid(hybrid, text)

        plan, rows, row_w = self._query_rows(text, image, mode, w, timings)
        targets = self._targets(text, plan, mode, w, timings)

        # fetch more candidates until k hits pass the filters (or all were seen)
        fetch = fetch_size(k, len(rows), bool(targets), hyb, bool(filt) or min_score is not None, self.options)
        while True:
            t = time.perf_counter()
            ranked, why = self._candidates(text, image, rows, row_w, targets, hyb, w, min(fetch, max(self._n, 1)))
            timings["search"] = timings.get("search", 0.0) + _ms(t)
            t = time.perf_counter()
            hits = hydrate(self.index, ranked, k, filt, min_score)
            timings["hydrate"] = timings.get("hydrate", 0.0) + _ms(t)
            if len(hits) >= k or fetch >= self._n:
                break
            if min_score is not None and ranked and ranked[-1][1] < min_score:
                break  # the rest scores lower still
            fetch *= 4
        if explain:
            if why is None:
                why = {i: {"vector": (0, sc)} for i, sc in ranked}
            per_exp = None
            if text is not None and plan.mode == "mix" and plan.expansions and hits:
                per_exp = mix_similarities(self.expander(), self.encoder, self.index, text, plan, hits)
            explain_hits(hits, why, plan, text, image, hyb, self.concept_arrays() if targets else None, per_exp)
        timings["total"] = _ms(t0)
        return Results(query=text if text is not None else image_name(image), hits=hits, plan=plan,
                       timings_ms=timings)

    def search_many(self, texts: Iterable[str], k: int = 10, **kw) -> list[Results]:
        """Several text queries on the warm path: their vectors are encoded as one batch first."""
        texts = [clean_text(t) for t in texts]
        k = qplan.validate_k(k)
        return list(self.search_chunks([texts], k=k, **kw))

    def search_chunks(self, chunks: Iterable[Sequence[str]], k: int = 10, **kw) -> Iterator[Results]:
        """Results for each query of each chunk, yielded as soon as its chunk is searched: a stream of
        queries (stdin) gets its first answers before it ends, in memory bounded by the chunk size.
        Each chunk's vectors are encoded as one batch (in pieces the query cache can hold)."""
        k = qplan.validate_k(k)
        for texts in chunks:
            texts = [clean_text(t) for t in texts]
            if not texts:
                continue
            hyb = self.resolve_hybrid(kw.get("hybrid"), texts[0])
            sides = 2 if hyb != "none" else 1
            # a piece's vectors (one per model side) must all fit in the query cache until searched: a
            # chunk primed whole would evict its first queries and encode them again one by one
            step = max(1, self.query_cache // sides) if self.query_cache > 0 else len(texts)
            for s in range(0, len(texts), step):
                piece = texts[s : s + step]
                t0 = time.perf_counter()
                self.prime(piece, captions=sides == 2)
                per = round((time.perf_counter() - t0) * 1000 / len(piece), 3)
                for t in piece:
                    r = self.search(t, k=k, **kw)
                    r.timings_ms["encode_batch_share"] = per
                    yield r

    def prime(self, texts: Sequence[str], captions: bool = False) -> None:
        """Encode ``texts`` in one batch per model into the query cache (no-op when it is disabled)."""
        if self.query_cache <= 0:
            return
        jobs = [("image", self.encoder)] + ([("caption", self.text_encoder)] if captions else [])
        self._vectors.prime(texts, jobs)

    def _query_vector(self, text: str, side: str = "image") -> np.ndarray:
        return self._vectors.get(text, side, self.encoder if side == "image" else self.text_encoder)

    def _query_rows(self, text, image, mode, w, timings) -> tuple[QueryPlan, np.ndarray, np.ndarray]:
        """The plan and the query vectors (row 0 = the plain query) with their weights."""
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
            ivec = encode_image(self.encoder, image, self.options.max_pixels)
            timings["encode_image"] = _ms(t)
            if text is None:
                rows, row_w = ivec, np.ones(1, np.float32)
            else:
                rows = blend(rows, ivec, w["image"])
        return plan, np.ascontiguousarray(rows, np.float32), row_w

    def _targets(self, text, plan, mode, w, timings) -> dict[str, tuple[float, list[str]]]:
        """The KG targets concept grounding scores against (empty: no grounding); scales ``w["concept"]``."""
        if text is None or mode == "none" or w["concept"] <= 0:
            return {}
        arr = self.concept_arrays() if getattr(self.expander(), "concept_targets", None) else None
        if arr is None:
            return {}
        t = time.perf_counter()
        targets, focus = query_targets(self.expander(), plan, text, arr)
        w["concept"] *= focus
        timings["ground"] = _ms(t)
        return targets

    def _candidates(self, text, image, rows, row_w, targets, hyb, w, fetch):
        """Fused (id, score) list, best first, and per-id provenance for explanations (None in the
        plain case: one vector, no grounding, no fusion)."""
        vec, why = image_candidates(self.index, rows, row_w, fetch, provenance=bool(targets) or hyb != "none")
        if targets:
            vec = ground(vec, rows[0], targets, w["concept"], fetch, why, self.concept_arrays(),
                         self.index.get_vectors)
        if hyb == "none":
            return vec, why
        cap = vector_lists(self.index, self._query_vector(text, "caption"), fetch, kind="caption")[0]
        for r, (i, s) in enumerate(cap, 1):
            why.setdefault(i, {})["caption"] = (r, s)
        cw = w["caption"]
        if image is not None:  # the caption side matches the text part only
            cw *= 1.0 - w["image"]
        fused = fuse_hybrid(hyb, vec, cap, cw, norm=self.options.norm, rrf_k=self.options.rrf_k)
        for i, s in vec:
            why.setdefault(i, {})["image_score"] = s
        return fused, why

    # -- image -> text -------------------------------------------------------------
    def search_captions(self, image: Any, k: int = 10) -> list[dict[str, Any]]:
        """Image -> text: the captions in the index nearest to an image query, as dicts
        ``{rank, score, caption, id, path}`` (see :mod:`retrieval.query.captions`)."""
        k = qplan.validate_k(k)
        q = encode_image(self.encoder, image, self.options.max_pixels)[0]
        table = self.caption_table()
        if not table[1]:
            raise UsageError(f"index {self._name()} has no captions")
        return caps.nearest_captions(self.index, table, q, k)

    def caption_table(self):
        if self._caption_table is None:
            self._caption_table = caps.caption_table(self.index, self.encoder)
        return self._caption_table

    def close(self) -> None:
        if self._owned:
            self.index.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
