"""Zero-shot classification on an ImageFolder (``DIR/<class>/*.jpg``): top-1 / top-5 accuracy.

The images are encoded through a real kgclip index (built once into the bench cache, as the other
benchmarks do, or ``index=`` reused); each class's text vector is CLIP_benchmark's zero-shot
classifier: every template filled with the class name (``golden_retriever`` -> "golden retriever"),
encoded as a query, L2-normalised, averaged and normalised again. An image's class scores are inner
products; accuracy counts ties pessimistically (:func:`benchmarks.metrics.classification_metrics`).

    kgclip bench zeroshot DIR [--template "a photo of a {c}."] [--per-class N --seed S]
"""

from __future__ import annotations

import sys

import numpy as np

TEMPLATES = ("a photo of a {c}.",)


def class_vectors(encoder, classnames, templates=TEMPLATES) -> np.ndarray:
    """[classes x dim]: per class the normalised mean of its normalised template vectors."""
    from retrieval.errors import UsageError

    for t in templates:
        if "{c}" not in t:
            raise UsageError(f"template {t!r} has no {{c}} for the class name")
    texts = [t.format(c=c) for c in classnames for t in templates]
    v = np.asarray(encoder.encode_queries(texts), np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v = v.reshape(len(classnames), len(templates), -1).mean(axis=1)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def image_vectors(idir: str, items, device: str = "cpu", check_fingerprint: bool = True):
    """(the index's vector of each item, the item positions the index lacks, the opened encoder)."""
    from benchmarks.recall import _rows
    from indexer import open_searcher

    with open_searcher(idir, expand="none", device=device, check_fingerprint=check_fingerprint) as s:
        id_col, missing = _rows(s.index, items)
        ids = np.asarray(sorted(id_col), np.int64)
        vecs = np.asarray(s.index.get_vectors(ids, kind="image"), np.float32)
        out = np.zeros((len(items), vecs.shape[1]), np.float32)
        for r, i in enumerate(ids):
            out[[id_col[int(i)], *id_col.extra.get(int(i), [])]] = vecs[r]
        return out, missing, s.encoder


def run_zeroshot(root, model: str = "lite", templates=TEMPLATES, index: str | None = None,
                 index_type: str = "auto", per_class: int | None = None, seed: int = 0, device: str = "cpu",
                 check_fingerprint: bool = True, progress: bool = False) -> dict:
    """The zero-shot classification benchmark on ``root`` as a JSON-able dict."""
    from benchmarks.datasets import bench_cache, stable_hash
    from benchmarks.imagefolder import class_text, scan
    from benchmarks.metrics import classification_metrics, rank_of_targets
    from benchmarks.recall import ensure_index
    from retrieval.errors import SourceError

    folder = scan(root, per_class, seed)
    for note in folder.notes:
        print(note, file=sys.stderr)
    classes = list(folder.classes)
    items = [p for c in classes for p in folder.classes[c]]
    labels = np.array([k for k, c in enumerate(classes) for _ in folder.classes[c]], np.int64)
    name = f"imagefolder-{folder.root.name}-{stable_hash(chr(10).join(str(p.resolve()) for p in items))[:10]}"
    idir = ensure_index(items, name, model, bench_cache() / "indexes", index_type, index, device, progress)
    iv, missing, encoder = image_vectors(idir, items, device, check_fingerprint)
    if missing:
        print(f"skipping {len(missing)} image(s) the index lacks (unreadable at build time), "
              f"e.g. {items[missing[0]]}", file=sys.stderr)
        keep = np.setdiff1d(np.arange(len(items)), missing)
        if not len(keep):
            raise SourceError(f"{root}: no usable images left after skipping unreadable ones")
        iv, labels = iv[keep], labels[keep]
    tv = class_vectors(encoder, [class_text(c) for c in classes], templates)
    scores = iv @ tv.T
    m = classification_metrics(scores, labels)
    top1 = rank_of_targets(scores, labels) <= 1
    recall = {c: float(np.mean(top1[labels == k])) for k, c in enumerate(classes) if (labels == k).any()}
    return {"benchmark": "zeroshot", "model": model, "root": str(root), "index": idir, "ties": "pessimistic",
            "templates": list(templates), "classes": classes, "per_class": per_class, "seed": seed,
            "skipped": {**folder.skipped, "unindexed_images": len(missing)}, "metrics": m,
            "fingerprint_encoder": encoder.fingerprint, "class_recall@1": recall}
