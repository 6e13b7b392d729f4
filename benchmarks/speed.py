"""Synthetic part of ``kgclip bench speed``: every index type on seeded clustered vectors.

For each size (default 10k, 100k, 1M) and each index type (flat, hnsw, ivf,
ivfpq; plus which one ``auto`` picks), built and tuned as a kgclip build does
(:func:`indexer.faiss.tune.build_and_tune`): build and tuning time, index size,
RSS growth, tuned search parameter with the tuning sample's recall and its lower
confidence bound, recall@10 vs exact on fresh queries, single-query QPS and latency p50/p95, and batched
QPS. A GPU section (flat / ivf / ivfpq searched through a GPU clone) runs when
faiss sees a GPU.

    python -m benchmarks.speed --sizes 10000,100000,1000000      # results/speed.json (= kgclip bench speed)
    python -m benchmarks.speed --sizes 10000 --dim 128            # quick proof

Library entry point: :func:`run_synthetic` (returns the JSON-able dict).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import numpy as np

from indexer import synthetic as S
from indexer import faiss as V

from .faiss_bench import _index_bytes, _rss, single_query

TYPES = ("flat", "hnsw", "ivf", "ivfpq")


def _one(x, ids, queries, gt, k, index_type, max_memory, gpu=False):
    """One index type through the build's own flow (:func:`indexer.faiss.tune.build_and_tune`: choose,
    build, tune on held-out / left-out stored vectors), then searched with fresh queries."""
    rr = lambda sel: x[np.searchsorted(ids, sel)]  # noqa: E731
    rss0 = _rss()
    index, info = V.build_and_tune(len(x), x.shape[1], lambda: S.batches(ids, x), lambda rows: x[rows],
                                   max_memory=max_memory, index_type=index_type, k=k, rerank_fn=rr,
                                   use_gpu=gpu)
    params = info["params"]
    use_rr = rr if info["rerank"] else None
    searched = V.to_gpu(index) if gpu else index
    stats, got = single_query(lambda q, kk, s=searched: V.search(s, q, kk, params, rerank_fn=use_rr), queries, k,
                              min_seconds=1.0)
    t0 = time.perf_counter()
    V.search(searched, queries, k, params, rerank_fn=use_rr)
    batch_qps = len(queries) / (time.perf_counter() - t0)
    row = {"index_type": index_type, "kind": info["kind"], "factory": info["factory"], "params": params,
           "rerank": info["rerank"], "build_s": info["build_s"], "tune_s": info["tune_s"],
           "index_bytes": _index_bytes(index), "rss_growth_bytes": _rss() - rss0,
           "tuned_on": info["tuned_on"], "tune_recall_at_10": round(info["recall_at_k"], 4),
           "tune_recall_at_10_low": round(info["recall_low"], 4),
           "recall_at_10": round(V.recall_at_k(got, gt[1], k), 4), **stats,
           "batch_qps": round(batch_qps, 1), "device": "gpu" if gpu else "cpu"}
    del index, searched
    gc.collect()
    return row


def run_synthetic(sizes=(10_000, 100_000, 1_000_000), dim=512, types=TYPES, queries=1000, k=10,
                  max_memory="16G", seed=0, log=None) -> dict:
    import faiss

    log = log or (lambda m: print(m, file=sys.stderr))
    out = {"benchmark": "speed_synthetic", "dim": dim, "k": k, "queries": queries, "seed": seed,
           "max_memory": max_memory, "faiss": faiss.__version__, "threads": faiss.omp_get_max_threads(),
           "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()[0],
           "gpu": V.gpu_available(), "sizes": []}
    budget = V.parse_memory(max_memory)
    for n in sizes:
        x = S.clustered(n, dim, seed=seed)
        ids = np.arange(n, dtype=np.int64) * 3 + 1
        q = S.queries_like(queries, dim, n, seed=seed)
        gt = S.exact_topk(q, x, ids, k)
        auto = V.choose_index(n, dim, budget)
        entry = {"n": n, "auto": auto.kind, "auto_factory": auto.factory, "rows": [], "gpu_rows": []}
        for t in types:
            row = _one(x, ids, q, gt, k, t, budget)
            row["is_auto"] = row["kind"] == auto.kind
            entry["rows"].append(row)
            log(f"n={n} {json.dumps(row)}")
        if out["gpu"]:
            for t in ("flat", "ivf", "ivfpq"):
                try:
                    row = _one(x, ids, q, gt, k, t, budget, gpu=True)
                except Exception as exc:  # report what failed, keep going
                    row = {"index_type": t, "error": f"{type(exc).__name__}: {exc}"}
                entry["gpu_rows"].append(row)
                log(f"n={n} gpu {json.dumps(row)}")
        out["sizes"].append(entry)
        del x, q, gt
        gc.collect()
    out["load_avg_end"] = os.getloadavg()[0]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--max-memory", default="16G")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "speed.json"))
    a = ap.parse_args(argv)
    res = run_synthetic([int(s) for s in a.sizes.split(",")], a.dim, a.types.split(","), a.queries,
                        max_memory=a.max_memory)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
