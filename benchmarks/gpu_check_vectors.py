"""GPU vs CPU check for indexer.faiss (flat / ivf / ivfpq training + search).

Runs on any machine: without a GPU build of faiss (or without a GPU) it runs
the CPU side, reports ``"gpu": "skipped"`` and exits 0. With a GPU it checks,
per kind, on seeded clustered vectors:

* the same CPU-trained index searched on the GPU returns the CPU's results
  (tie-tolerant top-10 agreement >= 0.99, scores within 1e-4);
* an index trained and filled on the GPU (k-means on the GPU, adds through a
  GPU clone, converted back to CPU for saving) has the same recall@10 against
  exact search as the CPU-built one (within 0.02), and saves/loads.

    python -m benchmarks.gpu_check_vectors [--n 200000] [--dim 512] [--out benchmarks/results/faiss_gpu_check.json]

Exit code 1 when a GPU check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from indexer import synthetic as S
from indexer import faiss as V


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "faiss_gpu_check.json"))
    a = ap.parse_args(argv)
    import faiss

    gpu = V.gpu_available()
    x = S.clustered(a.n, a.dim, seed=0)
    ids = np.arange(a.n, dtype=np.int64) * 2 + 11
    q = S.queries_like(a.queries, a.dim, a.n, seed=0)
    gt = S.exact_topk(q, x, ids, 10)
    rr = lambda sel: x[np.searchsorted(ids, sel)]  # noqa: E731
    out = {"faiss": faiss.__version__, "num_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
           "gpu": "checked" if gpu else "skipped", "n": a.n, "dim": a.dim, "kinds": {}}
    ok = True
    for kind in ("flat", "ivf", "ivfpq"):
        choice = V.choose_index(a.n, a.dim, index_type=kind)
        row = {"factory": choice.factory}
        train = x[V.sample_rows(a.n, int(choice.params.get("train_size", a.n)))] if kind != "flat" else None
        t = time.perf_counter()
        cpu = V.build_vectors_index(choice, a.dim, train, S.batches(ids, x), use_gpu=False)
        row["cpu_build_s"] = round(time.perf_counter() - t, 2)
        params = {"nprobe": 32, "k_factor": 8} if kind != "flat" else {}
        use_rr = rr if choice.rerank else None
        t = time.perf_counter()
        c = V.search(cpu, q, 10, params, rerank_fn=use_rr)
        row["cpu_search_s"] = round(time.perf_counter() - t, 3)
        row["cpu_recall_at_10"] = round(V.recall_at_k(c[1], gt[1], 10), 4)
        if gpu:
            try:
                g_index = V.to_gpu(cpu)
                row["searched_on_gpu"] = isinstance(g_index, V.GpuIndex)
                t = time.perf_counter()
                g = V.search(g_index, q, 10, params, rerank_fn=use_rr)
                row["gpu_search_s"] = round(time.perf_counter() - t, 3)
                agree = V.recall_at_k(g[1], c[1], 10, g[0], c[0], eps=1e-4)
                both = (g[1] == c[1]) & (c[1] >= 0)
                row["same_index_topk_agreement"] = round(agree, 4)
                row["same_index_max_score_diff"] = float(np.abs(g[0][both] - c[0][both]).max()) if both.any() else 0.0
                t = time.perf_counter()
                gb = V.build_vectors_index(choice, a.dim, train, S.batches(ids, x), use_gpu=True)
                row["gpu_build_s"] = round(time.perf_counter() - t, 2)
                gr = V.search(gb, q, 10, params, rerank_fn=use_rr)
                row["gpu_built_recall_at_10"] = round(V.recall_at_k(gr[1], gt[1], 10), 4)
                with tempfile.TemporaryDirectory() as tmp:
                    p = os.path.join(tmp, "g.faiss")
                    V.save_atomic(gb, p, generation=1)
                    back, gen = V.load(p)
                    row["gpu_built_save_load"] = bool(gen == 1 and back.ntotal == a.n)
                row["pass"] = bool(agree >= 0.99 and row["same_index_max_score_diff"] <= 1e-4
                                   and abs(row["gpu_built_recall_at_10"] - row["cpu_recall_at_10"]) <= 0.02
                                   and row["gpu_built_save_load"])
            except Exception as exc:  # report, do not hide
                row["pass"] = False
                row["error"] = f"{type(exc).__name__}: {exc}"
            ok = ok and row["pass"]
        out["kinds"][kind] = row
        print(kind, json.dumps(row), file=sys.stderr)
    out["pass"] = ok if gpu else None
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({"gpu": out["gpu"], "pass": out["pass"], "out": a.out}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
