"""The query side: from a query to ranked, explained hits over an opened index.

    from indexer import open_searcher
    with open_searcher("pics.kgc") as s:
        s.search("a dog on a beach", k=5)

One job per module, in the order a query flows through them: ``options`` (knobs and mode lists),
``plan`` (k, text, modes), ``vectors`` (query vectors and their cache), ``candidates`` (FAISS lists,
several vectors max-fused), ``grounding`` (concept profiles), ``fusion`` (rank fusion), ``filters``,
``hydrate`` (hits from items), ``explain`` (``--explain`` lines), ``captions`` (image -> text), and
``searcher`` (the warm :class:`Searcher` that calls them).
"""

from .filters import Filter, FilterError, parse_filters
from .options import AUTO_EXPAND, AUTO_EXPAND_MAX_WORDS, AUTO_HYBRID, EXPAND_MODES, HYBRID_MODES, SearchOptions
from .plan import is_short_query
from .searcher import Searcher

# What a score is, for --help and the README (cli.py may reuse it as it is).
SCORE_HELP = (
    "Scores: with one query vector a hit's score is its cosine with the query (at most 1). "
    "--expand multi keeps each image's best weighted cosine over the query and its KG expansions. "
    "Where the index stores concept profiles (lite), an expanded query also adds a concept bonus of up "
    "to 2.5 for images whose concepts fall under the query's concepts, so scores above 1 (e.g. 2.19) "
    "mean a concept match. --hybrid sum replaces the score by a fused score in [0, 1] (normalised "
    "image and caption scores); --hybrid rrf by a reciprocal-rank score (at most 1/61, about 0.016, at the default rrf_k 60). "
    "Compare scores within one query and mode only."
)

__all__ = [
    "Searcher", "SearchOptions", "SCORE_HELP", "EXPAND_MODES", "HYBRID_MODES", "AUTO_EXPAND",
    "AUTO_EXPAND_MAX_WORDS", "AUTO_HYBRID", "is_short_query", "Filter", "FilterError", "parse_filters",
]
