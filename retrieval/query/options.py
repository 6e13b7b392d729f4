"""Search knobs and the one list of each set of query modes.

What ``auto`` resolves to is measured (benchmarks/BENCHMARKS.md): expansion ``multi`` with concept
grounding, only for short (category-like) queries; hybrid ``sum`` where the index has captions.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import EXPAND_MODES, HYBRID_MODES  # noqa: F401 (re-exported)
from ..encoders.base import DEFAULT_MAX_PIXELS
from ..errors import UsageError

# --expand auto = multi for queries of at most AUTO_EXPAND_MAX_WORDS content words when a KG loads,
# else none; --hybrid auto = sum when the index has captions and the query has text
AUTO_EXPAND = "multi"
AUTO_EXPAND_MAX_WORDS = 3
AUTO_HYBRID = "sum"


@dataclass
class SearchOptions:
    """Knobs with defaults; everything a query can change without reloading anything.

    Scores: see :data:`retrieval.query.SCORE_HELP` (cosine; multi = best weighted cosine; concept
    grounding adds up to ``concept_weight``; hybrid = the fused score).
    """

    image_weight: float = 0.5  # text+image queries: share of the image vector in the mixed query
    caption_weight: float = 0.7  # hybrid: share of the caption list (best of 0.3/0.5/0.7 measured)
    # concept grounding (indexes with concept profiles): the bonus weight; an item gains up to this much
    concept_weight: float = 2.5
    rrf_k: int = 60
    norm: str = "minmax"  # hybrid sum: how each list's scores are rescaled (fusion.NORMALISERS)
    min_fetch: int = 50  # candidates fetched per list before fusion/filtering
    fetch_factor: int = 4
    max_pixels: int = DEFAULT_MAX_PIXELS  # image queries: larger ones are refused, as builds skip them


def query_weights(options: SearchOptions, weights: dict[str, float] | float | None) -> dict[str, float]:
    """A query's ``image``, ``caption`` and ``concept`` weights: the options' with the query's
    ``weights`` on top (a float is the image's share)."""
    o = options
    w = {"image": o.image_weight, "caption": o.caption_weight, "concept": float(o.concept_weight)}
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
