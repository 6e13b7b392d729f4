"""Concept grounding: images whose stored concepts fall under the query's KG targets score higher.

An index built by a model with ``concept_classes`` stores a concept profile per image (lite: its
100 most likely ImageNet classes at temperature 2). A query's KG targets (its linked entities and
their hyponyms, ``weight`` decaying with depth) give each image a mass ``m = min(1, sum weight x p)``
over its profile classes that are targets, and the image gains ``concept_weight x shape(m)`` with
``shape(m) = log1p(100 m) / log1p(100)`` (a small mass counts; weight 2.5 by default). Items found
only through their concepts join the candidates with their exact cosine. The shape and weight are
measured choices (benchmarks/BENCHMARKS.md, category mAP).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..errors import IndexCorrupt
from .fusion import best_first

LOG_SCALE = 100.0  # shape(m) = log1p(LOG_SCALE m) / log1p(LOG_SCALE)
Targets = dict[str, tuple[float, Any]]  # KG target id -> (weight, path)


def shape(mass: np.ndarray) -> np.ndarray:
    """A grounding mass in [0, 1] -> its bonus before the weight (0 -> 0, 1 -> 1)."""
    c = LOG_SCALE
    return np.log1p(c * mass) / np.log1p(c)


class ConceptArrays:
    """The items' concept profiles as arrays, for vectorised grounding: ids [n], class slots [n, top]
    into ``vocab`` (the classes some profile holds), probabilities [n, top], and the same entries as
    a sparse (items x slots) matrix in columns (``_csc``), so a query reads only its target classes'
    postings. About 1.4 KB an item at 100 classes (slots int16, probabilities float32, postings)."""

    def __init__(self, ids: np.ndarray, cls_slots: np.ndarray, prob: np.ndarray, vocab: list[str]):
        self.vocab = vocab
        self.slot = {w: j for j, w in enumerate(vocab)}
        self.ids = np.asarray(ids, np.int64)
        self.cls, self.prob = cls_slots, prob
        # postings by class slot (rows in order within a slot): the transpose of the (rows x slots)
        # sparse matrix, by scipy's counting sort (0.25 s for 100k profiles of 100 classes)
        import scipy.sparse as sparse

        indptr = np.arange(len(self.ids) + 1, dtype=np.int64) * self.cls.shape[1]  # every row holds top classes
        self._csc = sparse.csr_matrix((self.prob.ravel(), self.cls.ravel().astype(np.int32), indptr),
                                      shape=(len(self.ids), max(len(vocab), 1))).tocsc()

    @classmethod
    def from_profiles(cls, chunks, class_ids: Sequence[str]) -> "ConceptArrays | None":
        """From ``(item ids [k], class indexes [k, top], probabilities [k, top])`` chunks
        (IndexReader.iter_profiles) over ``class_ids``; None when there are none."""
        parts = [c for c in chunks if len(c[0])]
        if not parts:
            return None
        ids = np.concatenate([p[0] for p in parts])
        cls_all = np.concatenate([p[1] for p in parts]).astype(np.int32)
        prob = np.concatenate([p[2] for p in parts]).astype(np.float32)
        if cls_all.min() < 0 or cls_all.max() >= len(class_ids):
            bad = int(cls_all.max()) if cls_all.max() >= len(class_ids) else int(cls_all.min())
            raise IndexCorrupt(f"a stored concept profile names class {bad} of {len(class_ids)}")
        used = np.flatnonzero(np.bincount(cls_all.ravel(), minlength=len(class_ids)))
        remap = np.full(len(class_ids), -1, np.int32)  # class index -> vocabulary slot
        remap[used] = np.arange(len(used), dtype=np.int32)
        return cls(ids, remap[cls_all].astype(np.int16 if len(used) < 2**15 else np.int32), prob,
                   [class_ids[j] for j in used.tolist()])

    def ground(self, targets: Targets):
        """(rows with mass > 0, min(mass, 1) per row, each class slot's position in ``targets``) or None."""
        weight = np.zeros(len(self.vocab))
        order = np.full(len(self.vocab), np.iinfo(np.int64).max, np.int64)
        for t, (wnid, (w, _path)) in enumerate(targets.items()):
            j = self.slot.get(wnid)
            if j is not None:
                weight[j], order[j] = float(w), t
        if not weight.any():
            return None
        # only the target classes' columns, times the target weights (a category word over 100-class
        # profiles at 100k items: about 13 ms); the weights in the matrix's own dtype, so scipy does
        # not upcast the whole slice on every query
        slots = np.flatnonzero(weight != 0)
        mass = self._csc[:, slots] @ weight[slots].astype(self._csc.dtype)
        rows = np.flatnonzero(mass > 0)
        if not len(rows):
            return None
        return rows, np.minimum(mass[rows], 1.0), order

    def best(self, row: int, targets: Targets, order: np.ndarray) -> tuple[str, float]:
        """The row's concept with the largest weight x p among the targets (the earlier target on ties)."""
        cands = [(-float(targets[self.vocab[j]][0]) * p, int(order[j]), self.vocab[j], p)
                 for j, p in zip(self.cls[row].tolist(), self.prob[row].tolist())
                 if self.vocab[j] in targets]
        _, _, wnid, p = min(cands)
        return wnid, p


def query_targets(expander, plan, text: str, arr: ConceptArrays) -> tuple[Targets, float]:
    """(the KG targets of ``plan`` among the index's concepts, the share of the concept weight the
    query gets): a long descriptive query is grounded less (ExpansionPolicy.focus), as it is
    expanded less. Empty targets where the expander offers no concept targets."""
    ct = getattr(expander, "concept_targets", None)
    if ct is None:
        return {}, 1.0
    targets = dict(ct(plan, within=arr.slot.keys()))
    focus = getattr(getattr(expander, "policy", None), "focus", None)
    return targets, (focus(text) if focus is not None else 1.0)


def ground(vec: list[tuple[int, float]], q0: np.ndarray, targets: Targets, weight: float, fetch: int,
           why: dict[int, dict[str, Any]], arr: ConceptArrays,
           get_vectors: Callable[..., np.ndarray]) -> list[tuple[int, float]]:
    """``vec`` (id, score) with the concept bonus added, plus the best-bonus items not in it (their
    exact cosine with ``q0`` read through ``get_vectors``), best first, cut to ``fetch``. Records
    ``why[id]["concept"] = (profile row, bonus, targets, order)`` for explanations."""
    g = arr.ground(targets)
    if g is None:
        return vec
    rows, mass, order = g
    bonus = shape(mass)
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
    if len(extra):
        vecs = np.asarray(get_vectors(extra, kind="image"), np.float32)
        for i, sc in zip(extra.tolist(), (vecs @ q0).tolist()):
            scores[i] = float(sc)
            why.setdefault(i, {})["vector"] = (0, float(sc))
    for pos in np.concatenate([np.flatnonzero(in_vec), extra_pos]).tolist():
        i, b = int(row_ids[pos]), float(bonus[pos])
        scores[i] += weight * b
        # which concept explains it is looked up for the hits only (explain.py)
        why.setdefault(i, {})["concept"] = (int(rows[pos]), weight * b, targets, order)
    return best_first(scores, fetch)
