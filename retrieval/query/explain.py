"""Explanations (``--explain``): under each hit, which query vector, KG path, concept or caption
matched it. Built for the returned hits only, from the provenance the search recorded."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ..text import cut
from ..types import Hit, IndexReader, QueryPlan
from .grounding import ConceptArrays

log = logging.getLogger(__name__)
QUERY_CHARS = 80  # the query as quoted in an explanation line
PATH_CHARS = 160  # a KG path (entity names can be any length in a user's graph)


def image_name(image: Any) -> str | None:
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return f"<{type(image).__name__}>"


def expansion_label(e) -> str:
    path = getattr(e, "path", None) or []
    s = " -> ".join(path) if path else f"{getattr(e, 'relation', '?')} {getattr(e, 'name', '?')}"
    return f"{cut(s, PATH_CHARS)} (w={getattr(e, 'weight', 0.0):.2f})"


def row_label(row: int, exps, text, image, mode: str = "none") -> str:
    """What query vector ``row`` is: the query itself (row 0), or an expansion."""
    if text is not None:
        text = cut(text, QUERY_CHARS)
    if row == 0 or not exps:
        if mode == "mix" and exps:
            return f"the query {text!r} mixed with its expansions"
        if text is not None and image is not None:
            return f"the query {text!r} + image {image_name(image)}"
        return f"the query {text!r}" if text is not None else f"image {image_name(image)}"
    return f"expansion {expansion_label(exps[row - 1])}" if row - 1 < len(exps) else f"query vector {row}"


def mix_similarities(expander, encoder, index: IndexReader, text: str, plan: QueryPlan,
                     hits: list[Hit]) -> np.ndarray | None:
    """In mix mode one vector blends everything: each hit's cosine with the query and each expansion
    ([hits, 1 + expansions]), to say which expansion it is nearest to; None when it cannot be had."""
    try:
        mrows, _mw, _ = expander.query_vectors(text, encoder, mode="multi", plan=plan)
        hv = np.asarray(index.get_vectors(np.asarray([h.id for h in hits], np.int64)), np.float32)
        return hv @ np.asarray(mrows, np.float32).T
    except Exception as e:  # explanation is best effort; the hits stand
        log.debug("mix explanation skipped: %s", e)
        return None


def explain_hits(hits: list[Hit], why: dict[int, dict[str, Any]], plan: QueryPlan, text: str | None,
                 image: Any, hybrid: str, concepts: ConceptArrays | None = None,
                 per_expansion: np.ndarray | None = None) -> None:
    """Fill each hit's ``explanation`` lines from ``why`` (vector row and cosine, concept, caption)."""
    exps = list(getattr(plan, "expansions", []) or [])
    for n, h in enumerate(hits):
        lines = []
        info = why.get(h.id, {})
        if "vector" in info:
            row, s = info["vector"]
            lines.append(f"vector: cos {s:.3f} with {row_label(row, exps, text, image, plan.mode)}")
        if per_expansion is not None:
            j = int(np.argmax(per_expansion[n]))
            if j > 0 and j - 1 < len(exps):
                lines.append(f"nearest expansion: {expansion_label(exps[j - 1])} (cos {per_expansion[n, j]:.3f})")
        if "concept" in info and concepts is not None:
            row, b, tg, order = info["concept"]
            wnid, p = concepts.best(row, tg, order)
            path = tg[wnid][1]
            ptxt = f"{p:.2f}" if p >= 0.01 else f"{p:.1g}"  # a profile's far classes: 0.003, not 0.00
            lines.append(f"concept: {cut(' -> '.join(path) if path else wnid, PATH_CHARS)} (p={ptxt}, +{b:.3f})")
        if hybrid != "none":
            if "caption" in info:
                r, s = info["caption"]
                lines.append(f"caption: rank {r}, cos {s:.3f} ({hybrid} fusion)")
            else:
                lines.append(f"caption: not among the caption matches ({hybrid} fusion)")
        h.explanation = lines
