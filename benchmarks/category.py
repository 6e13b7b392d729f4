"""Category / hypernym query benchmark: does KG expansion find "footwear" when the images are sneakers?

For a category set (:mod:`benchmarks.datasets`: ``fashion-mnist``, ``emoji``,
``flickr-nouns``) build (or reuse) an index of its images, then score every label
query with the real :class:`retrieval.query.Searcher` over an exact (brute force)
view of the index for each expansion mode, and report mAP, nDCG@10, P@k and R@k
per query kind (``class``: the item's own label, ``hypernym``: a broader concept)
and over all queries, plus the relative mAP change of each mode against ``none``.

    python -m benchmarks.category --sets fashion-mnist,flickr-nouns   # -> benchmarks/results/category.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time


from benchmarks import write_result
from benchmarks.recall import MODES, RESULTS, ExactIndex, _rows, ensure_index, open_checked, parse_list, score_matrix
from retrieval.errors import SourceError

SETS = ("fashion-mnist", "emoji", "flickr-nouns")


def every_nth(cs, n: int, min_relevant: int = 3):
    """Every ``n``-th item of a CategorySet, keeping the queries with ``min_relevant`` items."""
    from benchmarks.datasets import CategorySet

    if n <= 1:
        return cs
    keep = list(range(0, len(cs.items), n))
    rel = cs.relevant[:, keep]
    q = [i for i in range(len(cs.queries)) if rel[i].sum() >= min_relevant]
    return CategorySet(f"{cs.name}-every{n}", [cs.items[i] for i in keep], [cs.labels[i] for i in keep],
                       [cs.queries[i] for i in q], [cs.kind[i] for i in q], rel[q], dict(cs.meta))


def load_set(name: str, per_class: int = 100, emoji_every: int = 1):
    from benchmarks import datasets as D
    from retrieval.errors import UsageError

    if name == "fashion-mnist":
        return D.fashion_mnist(per_class=per_class)
    if name == "emoji":
        return every_nth(D.emoji(), emoji_every)
    if name == "flickr-nouns":
        return D.flickr_hypernyms()
    raise UsageError(f"unknown category set {name!r}: use one of {', '.join(SETS)}")


def evaluate(cs, searcher_exact, id_col, expands, progress: bool = False, concept_weight=None) -> dict:
    """Metrics per expansion mode (``all`` and per query kind) for a loaded CategorySet."""
    from benchmarks.metrics import category_metrics

    out: dict = {}
    kinds = sorted(set(cs.kind))
    for mode in expands:
        t = time.perf_counter()
        w = None if concept_weight is None else {"concept": float(concept_weight)}
        s = score_matrix(searcher_exact, cs.queries, id_col, len(cs.items), mode, weights=w)
        m = {"all": category_metrics(s, cs.relevant)}
        for kd in kinds:
            q = [i for i, k in enumerate(cs.kind) if k == kd]
            m[kd] = category_metrics(s[q], cs.relevant[q])
        m["per_query_AP"] = {}
        from benchmarks.metrics import average_precision

        for q, ap in zip(cs.queries, average_precision(s, cs.relevant)):
            m["per_query_AP"][q] = round(float(ap), 4)
        m["seconds"] = round(time.perf_counter() - t, 1)
        out[mode] = m
        if progress:
            print(f"  {cs.name} expand={mode}: mAP {m['all']['mAP']:.4f} nDCG@10 {m['all']['ndcg@10']:.4f}",
                  file=sys.stderr)
    base = out.get("none")
    if base:
        for mode, m in out.items():
            m["mAP_rel_change_vs_none"] = {
                kd: (m[kd]["mAP"] / base[kd]["mAP"] - 1.0) if base[kd]["mAP"] > 0 else None
                for kd in ["all", *kinds]
            }
    return out


def run_category(sets=("fashion-mnist", "flickr-nouns"), model: str = "lite", expands=MODES,
                 index: str | None = None, index_type: str = "auto", per_class: int = 100,
                 device: str = "cpu", check_fingerprint: bool = True, progress: bool = False,
                 category_set=None, emoji_every: int = 1, concept_weight: float | None = None) -> dict:
    """The category benchmark as a JSON-able dict. ``category_set``: an already built CategorySet
    (tests); ``index`` reuses an index (one set only)."""
    from benchmarks.datasets import bench_cache
    from retrieval.errors import UsageError
    from retrieval.query import Searcher

    sets = list(sets)
    if index and len(sets) > 1:
        raise UsageError("--index reuses one index: give a single category set with it")
    out = {"benchmark": "category", "model": model, "ties": "pessimistic", "sets": {},
           "concept_weight": concept_weight if concept_weight is not None else "default"}
    for name in sets:
        cs = category_set if category_set is not None else load_set(name, per_class, emoji_every)
        t = time.perf_counter()
        iname = "flickr8k-1k" if name == "flickr-nouns" else cs.name  # the recall benchmark's index: same images
        idir = ensure_index(cs.items, iname, model, bench_cache() / "indexes", index_type, index, device,
                            progress)
        build_s = time.perf_counter() - t
        searcher, id_col = open_checked(idir, cs.items, device, check_fingerprint, "set")
        with searcher as base:
            exp = base.expander(required=False) if any(m != "none" for m in expands) else None
            if exp is None and any(m != "none" for m in expands):
                base.expander(required=True)  # raises KGError with the reason
            ex = Searcher(ExactIndex(base.index), expand="none", device=device, check_fingerprint=False,
                          expander=exp)
            ex.encoder = base.encoder
            res = evaluate(cs, ex, id_col, expands, progress, concept_weight)
        out["sets"][name] = {
            "set": cs.name, "index": idir, "n_items": len(cs.items), "n_queries": len(cs.queries),
            "queries": {kd: [q for q, k in zip(cs.queries, cs.kind) if k == kd]
                        for kd in sorted(set(cs.kind))},
            "relevant_per_query": {q: int(r.sum()) for q, r in zip(cs.queries, cs.relevant)},
            "fingerprint_index": base.index.model_fingerprint, "build_s": round(build_s, 1), "expand": res,
        }
    return out


def _drop_missing(cs, missing: list[int]):
    """``cs`` without the items the index lacks (files the build could not read), and without the
    queries left with no relevant item."""
    from benchmarks.datasets import CategorySet

    keep = sorted(set(range(len(cs.items))) - set(missing))
    rel = cs.relevant[:, keep]
    q = [i for i in range(len(cs.queries)) if rel[i].any()]
    return CategorySet(cs.name, [cs.items[i] for i in keep], [cs.labels[i] for i in keep],
                       [cs.queries[i] for i in q], [cs.kind[i] for i in q], rel[q], dict(cs.meta))


def run_folder(root, model: str = "lite", expands=MODES, index: str | None = None, index_type: str = "auto",
               per_class: int | None = None, seed: int = 0, class_map: str | None = None, device: str = "cpu",
               check_fingerprint: bool = True, progress: bool = False, sense_model="sbert:minilm") -> dict:
    """The category benchmark on an ImageFolder (``root/<class>/*.jpg``, see :mod:`benchmarks.imagefolder`).
    Skipped files and classes, unlinked classes and images the build could not read are reported on
    stderr (one line each) and counted in the result."""
    from benchmarks import imagefolder as F
    from benchmarks.datasets import bench_cache
    from indexer import open_index
    from retrieval.kg.graph import load_graph
    from retrieval.kg.linking import Linker

    graph = load_graph()
    cmap = F.read_class_map(class_map, graph) if class_map else None  # a bad map fails before any work
    folder = F.scan(root, per_class, seed)
    for note in folder.notes:
        print(note, file=sys.stderr)
    linked, unlinked = F.link_classes(list(folder.classes), graph, Linker(graph, sense_model), cmap)
    if unlinked:
        print(f"unlinked classes (left out; map them with --class-map): {', '.join(unlinked)}", file=sys.stderr)
    cs = F.category_set(folder, linked, graph)
    idir = ensure_index(cs.items, cs.name, model, bench_cache() / "indexes", index_type, index, device, progress)
    with open_index(idir) as idx:
        _, missing = _rows(idx, cs.items)
    if missing:
        print(f"skipping {len(missing)} image(s) the index lacks (unreadable at build time), "
              f"e.g. {cs.items[missing[0]]}", file=sys.stderr)
        cs = _drop_missing(cs, missing)
        if not cs.items or not cs.queries:
            raise SourceError(f"{root}: no usable images left after skipping unreadable ones")
    res = run_category([cs.name], model, expands, idir, index_type, device=device,
                       check_fingerprint=check_fingerprint, progress=progress, category_set=cs)
    s = res["sets"][cs.name]
    s.update(root=str(root), per_class=per_class, seed=seed, classes=cs.meta["classes"], unlinked=unlinked,
             skipped={**folder.skipped, "unindexed_images": len(missing)},
             query_entities=cs.meta["query_entities"])
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="fashion-mnist,flickr-nouns")
    ap.add_argument("--model", default="lite")
    ap.add_argument("--expand", default="none,mix,multi")
    ap.add_argument("--index", default=None)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--emoji-every", type=int, default=1, help="every n-th emoji only (faster)")
    ap.add_argument("--concept-weight", type=float, default=None,
                    help="Searcher concept weight (lite grounding)")
    ap.add_argument("--out", default=str(RESULTS / "category.json"))
    a = ap.parse_args(argv)
    os.environ.setdefault("KGCLIP_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res = run_category(parse_list(a.sets, SETS, "set"), a.model, parse_list(a.expand, MODES, "--expand"),
                       a.index, per_class=a.per_class, progress=True,
                       emoji_every=a.emoji_every, concept_weight=a.concept_weight)
    res["command"] = "python -m benchmarks.category " + " ".join(argv if argv is not None else sys.argv[1:])
    write_result(a.out, res)


if __name__ == "__main__":
    main()
