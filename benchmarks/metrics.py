"""Retrieval metrics from a score matrix, plain numpy.

Conventions
- ``scores[q, i]``: higher is better.
- Ranks are 1-based. Ties are counted *pessimistically* by default: an item that
  scores exactly as high as the correct one is ranked ahead of it, so a model
  that scores everything alike earns no credit. ``ties="optimistic"`` and
  ``ties="mean"`` are available for comparison.
- Field names follow CLIP_benchmark: ``image_retrieval_recall@k`` is text->image
  (a caption retrieves its image), ``text_retrieval_recall@k`` is image->text
  (an image retrieves any one of its captions).
"""

from __future__ import annotations

import numpy as np

TIES = ("pessimistic", "optimistic", "mean")


def rank_of_targets(scores: np.ndarray, targets, ties: str = "pessimistic") -> np.ndarray:
    """Rank (1-based, float) of one target column per row of ``scores``."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}")
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    own = scores[np.arange(len(targets)), targets][:, None]
    above = (scores > own).sum(axis=1)
    tied = (scores == own).sum(axis=1) - 1  # other items with the same score
    if ties == "pessimistic":
        return (1 + above + tied).astype(np.float64)
    if ties == "optimistic":
        return (1 + above).astype(np.float64)
    return 1 + above + tied / 2.0


def best_rank_of_sets(scores: np.ndarray, relevant: np.ndarray, ties: str = "pessimistic") -> np.ndarray:
    """Rank of the best-ranked relevant column per row; ``relevant`` is a boolean matrix like ``scores``.

    Pessimistic ties: non-relevant items tied with the best relevant score count
    as ahead of it. Rows without a relevant item get rank ``inf``.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}")
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    best = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)
    above = (scores > best).sum(axis=1)
    tied = ((scores == best) & ~relevant).sum(axis=1)
    if ties == "pessimistic":
        r = 1.0 + above + tied
    elif ties == "optimistic":
        r = 1.0 + above
    else:
        r = 1.0 + above + tied / 2.0
    r = r.astype(np.float64)
    r[~relevant.any(axis=1)] = np.inf
    return r


def _summary(ranks: np.ndarray, prefix: str, ks) -> dict:
    out = {f"{prefix}_recall@{k}": float(np.mean(ranks <= k)) for k in ks}
    finite = ranks[np.isfinite(ranks)]
    out[f"{prefix}_mean_rank"] = float(finite.mean()) if len(finite) else float("nan")
    out[f"{prefix}_median_rank"] = float(np.median(finite)) if len(finite) else float("nan")
    return out


def caption_retrieval_metrics(
    text_image_scores: np.ndarray, caption_image, ks=(1, 5, 10), ties: str = "pessimistic"
) -> dict:
    """Both directions from one [n_captions, n_images] score matrix.

    ``caption_image[j]`` is the image of caption j (an image may have several captions).
    Returns ``image_retrieval_*`` (text->image) and ``text_retrieval_*`` (image->text) recall@k,
    mean and median rank, plus counts.
    """
    s = np.asarray(text_image_scores)
    caption_image = np.asarray(caption_image, dtype=np.int64)
    n_cap, n_img = s.shape
    if len(caption_image) != n_cap:
        raise ValueError(f"{n_cap} score rows but {len(caption_image)} caption_image entries")
    t2i = rank_of_targets(s, caption_image, ties)
    rel = np.zeros((n_img, n_cap), dtype=bool)
    rel[caption_image, np.arange(n_cap)] = True
    i2t = best_rank_of_sets(s.T, rel, ties)
    out = {"n_images": int(n_img), "n_captions": int(n_cap)}
    out.update(_summary(t2i, "image_retrieval", ks))
    out.update(_summary(i2t, "text_retrieval", ks))
    return out


def recall_from_ids(ids: np.ndarray, targets, ks=(1, 5, 10)) -> dict:
    """Recall@k from top-k id lists (e.g. an ANN search): row q hits when ``targets[q]`` is among its first k.

    ``targets`` is an int per row, or a collection of acceptable ids per row.
    Returns ``{k: recall}``.
    """
    ids = np.asarray(ids)
    hits_at = np.full(len(ids), np.inf)
    for q, row in enumerate(ids):
        t = targets[q]
        ok = {int(x) for x in t} if isinstance(t, (set, frozenset, list, tuple, np.ndarray)) else {int(t)}
        for pos, i in enumerate(row):
            if int(i) in ok:
                hits_at[q] = pos + 1
                break
    return {k: float(np.mean(hits_at <= k)) for k in ks}


# -- category / graded relevance ---------------------------------------------------------------


def _order(scores_row: np.ndarray, rel_row: np.ndarray) -> np.ndarray:
    """Items by descending score; among equal scores non-relevant first (pessimistic)."""
    return np.lexsort((rel_row.astype(np.int8), -scores_row))


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP per query row: mean of precision@rank over every relevant item (0 when none is relevant)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    relevant = np.atleast_2d(np.asarray(relevant, dtype=bool))
    out = np.zeros(len(scores))
    for q in range(len(scores)):
        n_rel = relevant[q].sum()
        if n_rel == 0:
            continue
        r = relevant[q][_order(scores[q], relevant[q])]
        hits = np.cumsum(r)
        pos = np.flatnonzero(r) + 1
        out[q] = float(np.mean(hits[r] / pos))
    return out


def ndcg_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> np.ndarray:
    """nDCG@k per query with binary (or graded, if ``relevant`` is numeric) gains, log2 discount."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    gains = np.atleast_2d(np.asarray(relevant, dtype=np.float64))
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    out = np.zeros(len(scores))
    for q in range(len(scores)):
        g = gains[q][_order(scores[q], gains[q] > 0)][:k]
        ideal = np.sort(gains[q])[::-1][:k]
        idcg = float((ideal * disc[: len(ideal)]).sum())
        if idcg > 0:
            out[q] = float((g * disc[: len(g)]).sum()) / idcg
    return out


def precision_recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(precision@k, recall@k) per query; recall@k = relevant in top k / all relevant."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    relevant = np.atleast_2d(np.asarray(relevant, dtype=bool))
    p, r = np.zeros(len(scores)), np.zeros(len(scores))
    for q in range(len(scores)):
        top = _order(scores[q], relevant[q])[:k]
        h = relevant[q][top].sum()
        p[q] = h / k
        n = relevant[q].sum()
        r[q] = h / n if n else 0.0
    return p, r


def category_metrics(scores: np.ndarray, relevant: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Mean over queries of AP (``mAP``), ``ndcg@10``, ``precision@k`` and ``recall@k``."""
    out = {
        "n_queries": int(np.atleast_2d(scores).shape[0]),
        "mAP": float(average_precision(scores, relevant).mean()),
        "ndcg@10": float(ndcg_at_k(scores, relevant, 10).mean()),
    }
    for k in ks:
        p, r = precision_recall_at_k(scores, relevant, k)
        out[f"precision@{k}"] = float(p.mean())
        out[f"recall@{k}"] = float(r.mean())
    return out


# -- zero-shot classification ------------------------------------------------------------------


def classification_metrics(scores: np.ndarray, labels, ks=(1, 5), ties: str = "pessimistic") -> dict:
    """Top-k accuracy (``acc{k}``; null with fewer than k classes, as CLIP_benchmark's acc5 below 5
    classes) and ``mean_per_class_recall`` (top-1, averaged over the classes present) from an
    [images x classes] score matrix and each image's class index. Ranks come from
    :func:`rank_of_targets`, so a class tied with the true one counts as ahead of it."""
    s = np.atleast_2d(np.asarray(scores))
    labels = np.asarray(labels, dtype=np.int64)
    ranks = rank_of_targets(s, labels, ties)
    out: dict = {"n_images": int(len(labels)), "n_classes": int(s.shape[1])}
    for k in ks:
        out[f"acc{k}"] = float(np.mean(ranks <= k)) if s.shape[1] >= k else None
    present = np.unique(labels)
    out["mean_per_class_recall"] = float(np.mean([np.mean(ranks[labels == c] <= 1) for c in present]))
    return out
