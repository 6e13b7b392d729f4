"""Caption recall@k benchmark: text->image and image->text, exact search vs the built ANN index.

For each model: build (or reuse, ``index=``) an index of the dataset's images, then
for each expansion mode (``none`` / ``mix`` / ``multi``) score every caption query
through the real :class:`retrieval.query.Searcher` twice:

- **exact**: the Searcher over :class:`ExactIndex` (the same index, brute force over
  every stored vector) with ``k = n``, giving the full [captions x images] score
  matrix; R@1/5/10, mean and median rank in both directions come from it with
  :func:`benchmarks.metrics.caption_retrieval_metrics` (CLIP_benchmark names:
  ``image_retrieval_*`` = text->image, ``text_retrieval_*`` = image->text).
- **ann**: the Searcher over the built FAISS index with ``k = 10`` -> text->image R@k
  (``recall_from_ids``). Image->text over ANN (expand ``none`` only) searches an index
  of the same kind built over the caption query vectors.

Hybrid caption fusion is off: the index has no caption side (the captions are the queries).

    python -m benchmarks.recall --split all --expand none,mix,multi   # -> benchmarks/results/recall.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import write_result

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("none", "mix", "multi")
EXPAND_CHOICES = (*MODES, "auto")  # auto: what `kgclip search` does by default (expands short queries only)


class ExactIndex:
    """An opened Index whose ``search(kind="image")`` is brute force over every stored vector."""

    def __init__(self, index):
        self._index = index
        self._items = {int(i): it for i, it in index.iter_items()}  # hydration without a store read per query
        self.ids = np.asarray(sorted(self._items), np.int64)
        self.vectors = np.asarray(index.get_vectors(self.ids, kind="image"), np.float32)

    def __getattr__(self, name):
        return getattr(self._index, name)

    def __len__(self) -> int:
        return len(self.ids)

    def refresh_if_updated(self) -> bool:
        return False

    def get(self, ids) -> list[dict | None]:
        return [self._items.get(int(i)) for i in np.asarray(ids, np.int64).ravel()]

    def iter_items(self):
        return iter(self._items.items())

    def search(self, queries, k: int = 10, kind: str = "image"):
        if kind != "image":
            return self._index.search(queries, k, kind=kind)
        q = np.atleast_2d(np.asarray(queries, np.float32))
        s = q @ self.vectors.T
        k = min(int(k), len(self.ids))
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(s, order, 1).astype(np.float32), self.ids[order]


def parse_list(value, allowed=None, what="value") -> list[str]:
    from retrieval.errors import UsageError

    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = [v.strip() for v in items if v.strip()]
    if not out:
        raise UsageError(f"empty {what} list")
    if allowed is not None:
        for v in out:
            if v not in allowed:
                raise UsageError(f"unknown {what} {v!r}: use one of {', '.join(allowed)}")
    return out


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in s)


def ensure_index(images, name: str, model: str, cache: Path, index_type: str = "auto",
                 index: str | None = None, device: str = "cpu", progress: bool = False) -> str:
    """An index of ``images`` (paths) for ``model``: ``index`` if given (reused as is), else built
    once into ``cache/<name>-<model>-<index_type>`` (resumed/reused when complete)."""
    if index:
        return str(index)
    from indexer import build_index

    cache.mkdir(parents=True, exist_ok=True)
    d = cache / _slug(f"{name}-{len(images)}-{model}-{index_type}")
    man = cache / _slug(f"{name}-{len(images)}-images.csv")
    with open(man, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path"])
        for p in images:
            w.writerow([str(Path(p).resolve())])
    mf = d / "index.json"
    complete = mf.is_file() and json.loads(mf.read_text()).get("state") == "complete"
    # a cached index made by other weights or another lite configuration measures the old model; one
    # made before lite's concept profiles measures the old grounding
    stale = complete and (_built_fingerprint(d) != _current_fingerprint(model, device)
                          or _lacks_profile(d, model, device))
    if not complete or stale:
        build_index([str(man)], str(d), model=model, text_model=None, device=device,
                    index_type=index_type, progress=progress, resume=not stale)
    return str(d)


def _built_fingerprint(index_dir) -> str | None:
    from indexer import open_index

    idx = open_index(str(index_dir))
    try:
        return idx.model_fingerprint
    finally:
        idx.close()


def _lacks_profile(index_dir, model: str, device: str) -> bool:
    """Whether a fresh build would store other concept profiles (lite) than this index has."""
    from indexer import open_index
    from retrieval.encoders import get_encoder
    from retrieval.encoders.lite import profile_record

    if not hasattr(get_encoder(model, device=device), "profile"):
        return False
    idx = open_index(str(index_dir))
    try:
        return idx.concept_profile != profile_record()
    finally:
        idx.close()


def _current_fingerprint(model: str, device: str) -> str:
    from retrieval.encoders import get_encoder

    return get_encoder(model, device=device).fingerprint


class IdCols(dict):
    """Store id -> its first dataset column; ``extra[id]``: further columns (identical files stored once)."""

    def __init__(self):
        super().__init__()
        self.extra: dict[int, list[int]] = {}

    def copy_duplicates(self, out: np.ndarray) -> np.ndarray:
        for i, cols in self.extra.items():
            if i in self:
                out[:, cols] = out[:, [self[i]]]
        return out


def _rows(index, images) -> tuple[IdCols, list[int]]:
    """Store id -> dataset column(s), and dataset columns missing from the index."""
    col = {str(Path(p).resolve()): c for c, p in enumerate(images)}
    id_col = IdCols()
    seen: set[int] = set()
    for i, it in index.iter_items():
        for p in [it.get("path"), *(it.get("aliases") or [])]:
            c = col.get(str(Path(p).resolve())) if p else None
            if c is None or c in seen:
                continue
            seen.add(c)
            if int(i) in id_col:
                id_col.extra.setdefault(int(i), []).append(c)
            else:
                id_col[int(i)] = c
    missing = sorted(set(range(len(images))) - seen)
    return id_col, missing


def score_matrix(searcher, queries, id_col: dict[int, int], n_cols: int, expand: str,
                 log_every: int = 0, weights: dict | None = None, query_vectors: np.ndarray | None = None
                 ) -> np.ndarray:
    """[len(queries), n_cols] final Searcher scores over an :class:`ExactIndex` (-inf: not returned).
    ``query_vectors``: the plain queries' vectors when already encoded (``expand="none"`` only)."""
    out = np.full((len(queries), n_cols), -np.inf, np.float32)
    k = len(searcher.index)
    t0 = time.perf_counter()
    idx = searcher.index
    if expand == "none" and isinstance(idx, ExactIndex):
        # the Searcher's plain path is one query vector against the image vectors (no grounding, no fusion
        # with hybrid="none"): the same scores as one matrix product (tests check it against the Searcher)
        cols = np.array([id_col.get(int(i), -1) for i in idx.ids])
        ok = cols >= 0
        for start in range(0, len(queries), 256):
            q = (query_vectors[start : start + 256] if query_vectors is not None else
                 np.asarray(searcher.encoder.encode_queries(list(queries[start : start + 256])), np.float32))
            out[start : start + len(q)][:, cols[ok]] = q @ idx.vectors[ok].T
        return id_col.copy_duplicates(out) if isinstance(id_col, IdCols) else out
    step = 100
    for start in range(0, len(queries), step):  # search_many: the plain query vectors encode as one batch
        for qi, res in enumerate(searcher.search_many(queries[start : start + step], k=k, expand=expand,
                                                      hybrid="none", weights=weights), start):
            for h in res:
                c = id_col.get(int(h.id))
                if c is not None:
                    out[qi, c] = h.score
        done = min(start + step, len(queries))
        if log_every and (done % log_every == 0 or done == len(queries)):
            print(f"  {expand}: {done}/{len(queries)} queries ({time.perf_counter() - t0:.0f}s)",
                  file=sys.stderr)
    return id_col.copy_duplicates(out) if isinstance(id_col, IdCols) else out


def ann_ids(searcher, queries, id_col: dict[int, int], expand: str, k: int = 10) -> np.ndarray:
    ids = np.full((len(queries), k), -1, np.int64)
    for qi, res in enumerate(searcher.search_many(queries, k=k, expand=expand, hybrid="none")):
        for j, h in enumerate(res):
            ids[qi, j] = id_col.get(int(h.id), -1)
    return ids


def i2t_ann(index_kind: str, caption_vecs: np.ndarray, image_vecs: np.ndarray, caption_image, ks=(1, 5, 10)):
    """Image->text recall over an ANN index of ``index_kind`` built (and tuned) over caption vectors."""
    from benchmarks.metrics import recall_from_ids
    from indexer import faiss as V

    n, dim = caption_vecs.shape
    choice = V.choose_index(n, dim, index_type=index_kind)
    ids = np.arange(n, dtype=np.int64)
    train = caption_vecs if choice.kind in ("ivf", "ivfpq") else None
    idx = V.build_vectors_index(choice, dim, train, [(ids, caption_vecs)], use_gpu=False)
    rr = (lambda i: caption_vecs[np.clip(np.asarray(i), 0, None)]) if choice.rerank else None
    gt = V.exact_search(image_vecs, [(ids, caption_vecs)], 10)
    params, _, _ = V.tune(idx, choice, image_vecs, gt, k=10, rerank_fn=rr)
    _, got = V.search(idx, image_vecs, 10, params, rerank_fn=rr)
    caps: list[set[int]] = [set() for _ in range(len(image_vecs))]
    for j, i in enumerate(caption_image):
        caps[int(i)].add(j)
    r = recall_from_ids(got, caps, ks)
    return {f"text_retrieval_recall@{k}": v for k, v in r.items()}, choice.kind


def drop_i2t_if_sampled(metrics: dict, res: dict) -> dict:
    """Image->text over a caption subsample would count images left without a caption as misses: drop it."""
    if res.get("sampled_queries"):
        metrics = {k: v for k, v in metrics.items() if not k.startswith("text_retrieval_")}
    return metrics


def open_checked(idir: str, items: list[str], device: str, check_fingerprint: bool, what: str):
    """(a Searcher on ``idir``, each item's store id); one clear error when the index lacks some of
    the ``what``'s (dataset's, set's) images."""
    from indexer import open_searcher
    from retrieval.errors import UsageError

    s = open_searcher(idir, expand="none", device=device, check_fingerprint=check_fingerprint)
    id_col, missing = _rows(s.index, items)
    if missing:
        s.close()
        raise UsageError(f"index {idir} lacks {len(missing)} of the {what}'s images "
                         f"(e.g. {items[missing[0]]}): build it from this {what}")
    return s, id_col


def run_recall(dataset: str = "flickr8k-1k", models=("lite",), expands=MODES, split: str = "all",
               index: str | None = None, index_type: str = "auto", max_queries: int | None = None,
               device: str = "cpu", check_fingerprint: bool = True, progress: bool = False,
               split_file: str | None = None) -> dict:
    """The recall benchmark as a JSON-able dict (see module docstring). ``split_file``: keep the images
    named in it (one a line, e.g. Flickr8k's ``test.txt``) instead of ``split``."""
    from benchmarks.datasets import bench_cache, flickr8k_1k, load_captions
    from benchmarks.metrics import caption_retrieval_metrics, recall_from_ids
    from retrieval.errors import UsageError
    from retrieval.query import Searcher

    if split_file and split != "all":
        raise UsageError("--split-file replaces --split: give one of them")
    ds = flickr8k_1k(split) if dataset == "flickr8k-1k" else load_captions(dataset).split(split)
    split_missing: list[str] = []
    if split_file:
        from benchmarks.splits import apply_split_file

        n_all = len(ds)
        ds, split_missing = apply_split_file(ds, split_file)
        if split_missing:
            print(f"warning: {len(split_missing)} name(s) in {split_file} are not images of the dataset's "
                  f"{n_all} (e.g. {split_missing[0]!r}); using the {len(ds)} that are", file=sys.stderr)
    models = list(models)
    if index and len(models) > 1:
        raise UsageError("--index reuses one index: give a single --model with it")
    caps, cap_img = list(ds.captions), np.asarray(ds.caption_image)
    if max_queries and max_queries < len(caps):
        step = len(caps) / max_queries
        sel = sorted({int(j * step) for j in range(max_queries)})
        caps, cap_img = [caps[j] for j in sel], cap_img[sel]
    out = {"benchmark": "recall", "dataset": ds.name, "split": split, "n_images": len(ds),
           "n_captions": len(caps), "ties": "pessimistic", "runs": [],
           "sampled_queries": len(caps) < len(ds.captions)}
    if split_file:
        out.update(split=f"file:{Path(split_file).name}", split_file=str(split_file),
                   split_missing=len(split_missing))
    for model in models:
        t = time.perf_counter()
        idir = ensure_index(ds.images, ds.name, model, bench_cache() / "indexes", index_type, index, device,
                            progress)
        build_s = time.perf_counter() - t
        searcher, id_col = open_checked(idir, ds.images, device, check_fingerprint, "dataset")
        with searcher as ann:
            faiss_meta = (ann.index.manifest.get("faiss") or {}).get("image") or {}
            exact_idx = ExactIndex(ann.index)
            exp = ann.expander(required=False) if any(m != "none" for m in expands) else None
            exact = Searcher(exact_idx, expand="none", device=device, check_fingerprint=False, expander=exp)
            exact.encoder = ann.encoder
            info = {"model": model, "index": idir, "index_kind": faiss_meta.get("kind"),
                    "index_factory": faiss_meta.get("factory"),
                    "index_tuned_recall@10": faiss_meta.get("recall_at_10"),
                    "fingerprint_index": ann.index.model_fingerprint,
                    "fingerprint_encoder": ann.encoder.fingerprint,
                    "build_s": round(build_s, 1), "expand": {}}
            for mode in expands:
                t = time.perf_counter()
                # the plain queries are encoded once, for the exact scores and the image->text ANN check
                qv = np.asarray(ann.encoder.encode_queries(caps), np.float32) if mode == "none" else None
                s = score_matrix(exact, caps, id_col, len(ds), mode, log_every=500 if progress else 0,
                                 query_vectors=qv)
                m = {"exact": drop_i2t_if_sampled(caption_retrieval_metrics(s, cap_img), out)}
                ids = ann_ids(ann, caps, id_col, mode)
                r_ann = recall_from_ids(ids, cap_img)
                m["ann"] = {f"image_retrieval_recall@{k}": v for k, v in r_ann.items()}
                if mode == "none":
                    iv = np.zeros((len(ds), exact_idx.vectors.shape[1]), np.float32)
                    for r, i in enumerate(exact_idx.ids):
                        iv[[id_col[int(i)], *id_col.extra.get(int(i), [])]] = exact_idx.vectors[r]
                    r, kind = i2t_ann(faiss_meta.get("kind") or "flat", qv, iv, cap_img)
                    m["ann"].update(drop_i2t_if_sampled(r, out))
                    m["ann"]["i2t_index_kind"] = kind
                m["seconds"] = round(time.perf_counter() - t, 1)
                info["expand"][mode] = m
                print(f"{model} expand={mode}: " + json.dumps(
                    {k: round(v, 4) for k, v in m["exact"].items() if "recall" in k}), file=sys.stderr)
            out["runs"].append(info)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="flickr8k-1k")
    ap.add_argument("--models", default="lite")
    ap.add_argument("--expand", default="none,mix,multi", help="any of none,mix,multi,auto")
    ap.add_argument("--split", default="all")
    ap.add_argument("--index", default=None)
    ap.add_argument("--index-type", default="auto")
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--out", default=str(RESULTS / "recall.json"))
    a = ap.parse_args(argv)
    os.environ.setdefault("KGCLIP_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res = run_recall(a.dataset, parse_list(a.models), parse_list(a.expand, EXPAND_CHOICES, "--expand"), a.split,
                     a.index, a.index_type, a.max_queries, progress=True)
    res["command"] = "python -m benchmarks.recall " + " ".join(argv if argv is not None else sys.argv[1:])
    write_result(a.out, res)


if __name__ == "__main__":
    main()
