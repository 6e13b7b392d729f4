"""Query-side speed: warm latency, overhead over raw FAISS, cold `kgclip search`.

    python -m benchmarks.query                        # full run (100k items), writes benchmarks/results/query.json
    python -m benchmarks.query --n 5000 --queries 30  # quick smoke run (CI-sized)
    python -m benchmarks.query --n 20000 --models lite,lite:mpnet --cold-models lite,lite:mpnet \
        --out benchmarks/results/query_mpnet.json     # the two lite text towers side by side

What it measures (all in one process, side by side, so ratios hold on a busy machine):

1. Warm text->image latency, p50/p95 over distinct queries, for ``lite`` (with KG
   expansion and concept grounding as `--expand auto` does) and random-init
   open_clip ``ViT-B-32`` (fast text path), on an index of ``--n`` items whose
   vectors are synthetic (seeded clustered unit vectors from indexer.synthetic, like
   real embeddings; lite items also get 5 random ImageNet concepts each). The index is a real kgclip index: the LMDB store is
   written directly and ``open_index`` derives the FAISS file from it.
   Each query's total is encode + expand + search + hydrate (Searcher timings).
2. Overhead of ``Searcher`` (search + fuse + hydrate, precomputed query vector,
   no expansion) over a raw ``faiss_index.search`` with the same k on the same
   FAISS index.
3. Cold ``kgclip search`` wall time with ``lite`` (a fresh subprocess on a small
   real index) and where the time goes (``python -X importtime`` top modules,
   plus the in-process breakdown: imports, model load, KG load, first query).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "query.json"

QUERIES = [
    "a dog catching a frisbee", "a cat sleeping on a sofa", "children playing in a park", "a red car on a street",
    "a man riding a bicycle", "a bird on a branch", "people at the beach", "a boat on a lake",
    "a horse in a field", "snow covered mountains", "a plate of food", "a woman holding an umbrella",
    "an animal", "a vehicle", "a musical instrument", "two dogs running", "a city skyline at night",
    "a child with a ball", "a surfer on a wave", "a train at a station", "flowers in a garden",
    "a person climbing a rock", "a black and white dog", "a group of people", "a building", "a fish",
    "a computer on a desk", "a cup of coffee", "a motorcycle", "a football game",
]


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    i = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return round(xs[i], 3)


def summary(xs):
    return {"p50": pct(xs, 50), "p95": pct(xs, 95), "mean": round(statistics.fmean(xs), 3) if xs else None,
            "n": len(xs)}


# -- a synthetic index written through the real store ------------------------------------------
def synthetic_index(index_dir: str, n: int, spec: str, seed: int = 0, concepts: bool = False,
                    batch: int = 5000) -> str:
    """Write an ``n``-item kgclip index whose image vectors are seeded clustered unit vectors
    (:func:`indexer.synthetic.clustered`) of ``spec``'s dimension. With ``concepts`` (lite), each item
    also gets 5 random ImageNet concepts and a concept profile of the size a lite build stores
    (its classes random, their probabilities decaying as at temperature 2): search reads what it
    would read on a real index of that size."""
    from indexer.manifest import new_manifest, write_manifest
    from indexer.store import Store
    from retrieval.encoders import get_encoder

    from indexer.synthetic import clustered

    enc = get_encoder(spec, device="cpu")
    dim = enc.dim
    rng = np.random.default_rng(seed)
    # clustered like real embeddings (uniform random vectors have no neighbourhoods, so HNSW tuning
    # to recall 0.95 on them needs efSearch ~2048 and measures a search no real index does)
    allvecs = clustered(n, dim, seed=seed)
    wnids = None
    if concepts:
        from retrieval.encoders.lite import PROFILE, imagenet_classes

        wnids = [c[0] for c in imagenet_classes()]
        top = PROFILE[0]
        decay = np.arange(1, top + 1, dtype=np.float64) ** -0.8
        decay *= 0.33 / decay.sum()  # the top 100 hold about a third at temperature 2 (flickr8k-1k)
    os.makedirs(index_dir, exist_ok=True)
    store = Store(index_dir, create=True)
    done = 0
    while done < n:
        m = min(batch, n - done)
        vecs = allvecs[done:done + m]

        def fn(txn, vecs=vecs, start=done):
            for j in range(len(vecs)):
                i = start + j
                cs = prof = None
                if wnids is not None:
                    pick = rng.choice(len(wnids), top, replace=False)
                    p = np.sort(rng.dirichlet(np.ones(5)))[::-1]
                    cs = [(wnids[c], float(round(q, 4))) for c, q in zip(pick[:5], p)]
                    prof = (pick.astype(np.uint16), decay.astype(np.float16))
                txn.add_path(f"/synthetic/{i // 1000:03d}/{i:07d}.jpg", sha256=f"{i:064x}", size=100_000 + i,
                             mtime_ns=1_700_000_000_000_000_000 + i, width=640, height=480, vector=vecs[j],
                             concepts=cs, meta={"shard": i % 10}, profile=prof)

        store.write(fn)
        done += m
    store.close()
    model = {"spec": enc.spec, "fingerprint": enc.fingerprint, "dim": dim}
    if wnids is not None:
        from retrieval.encoders.lite import profile_record

        model["profile"] = profile_record()
    man = new_manifest(model, None, ["/synthetic"], {"synthetic": True})
    man["state"] = "complete"
    man["counts"] = {"items": n, "paths": n, "captions": 0}
    write_manifest(index_dir, man)
    return index_dir


# -- 1 + 2: warm latency and overhead ----------------------------------------------------------
def warm_latency(index_dir: str, queries: list[str], expand: str, repeats: int = 1) -> dict:
    from indexer import open_searcher

    t0 = time.perf_counter()
    s = open_searcher(index_dir, expand=expand, device="cpu", query_cache=0)  # every query is encoded
    s.warm()
    s.search(queries[0], k=10)  # the first query pays for lazy tables (concept table, KG linker)
    warm_s = time.perf_counter() - t0
    # a first pass over the queries: entities they expand to are embedded on first use (then cached on
    # disk); reported apart, the steady state is measured after it
    first = [s.search(q, k=10).timings_ms["total"] for q in queries]
    parts: dict[str, list[float]] = {}
    totals = []
    for _ in range(repeats):
        for q in queries:
            r = s.search(q, k=10)
            totals.append(r.timings_ms["total"])
            for kk, v in r.timings_ms.items():
                parts.setdefault(kk, []).append(v)
    out = {"expand": s.resolve_expand(), "warmup_s": round(warm_s, 2), "first_pass_ms": summary(first),
           "total_ms": summary(totals),
           "parts_ms": {kk: summary(v) for kk, v in parts.items() if kk != "total"}}
    s.close()
    return out


def overhead_vs_faiss(index_dir: str, n_queries: int, k: int = 10, rounds: int = 5) -> dict:
    """Searcher's search stage (no encode, no expansion) vs raw FAISS search (the faiss index's own
    ``search`` with the tuned SearchParameters: no kgclip code at all), same index, same k; hydration (reading the k hits' metadata from LMDB) is timed apart, as
    the warm latency's own ``hydrate`` part, and reported with it as well."""
    from indexer import open_searcher
    from retrieval.query.hydrate import hydrate

    s = open_searcher(index_dir, expand="none", device="cpu", query_cache=0)
    idx = s.index
    faiss_index, params = faiss_handle(idx)
    from indexer import faiss as vectors
    from indexer.synthetic import queries_like

    qs = queries_like(n_queries, idx.dim, n_base=len(idx), seed=0)  # held-out draws from the index's mixture
    raw, ours, hyd = [], [], []

    sp = vectors.search_parameters(faiss_index, params)

    def time_raw(q1):
        t = time.perf_counter()
        faiss_index.search(q1, k, params=sp)
        raw.append((time.perf_counter() - t) * 1000)

    def time_ours(q1):
        t = time.perf_counter()
        ranked = _searcher_stage(s, q1, k)
        t1 = time.perf_counter()
        hydrate(s.index, ranked, k, [], None)
        ours.append((t1 - t) * 1000)
        hyd.append((time.perf_counter() - t1) * 1000)

    for r in range(rounds):  # interleaved, so load changes hit both alike; who goes first alternates
        for j, q in enumerate(qs):  # (the second search of a query finds the graph nodes in cache)
            first, second = (time_raw, time_ours) if (r + j) % 2 == 0 else (time_ours, time_raw)
            first(q[None])
            second(q[None])
    s.close()
    r50, o50, h50 = statistics.median(raw), statistics.median(ours), statistics.median(hyd)
    return {"raw_faiss_ms": summary(raw), "searcher_ms": summary(ours), "hydrate_ms": summary(hyd),
            "overhead_p50": round(o50 / r50 - 1, 4), "overhead_with_hydrate_p50": round((o50 + h50) / r50 - 1, 4),
            "k": k, "params": params}


def _searcher_stage(s, q1, k):
    """The Searcher's search stage for a precomputed vector: generation check, candidates, fusion."""
    from retrieval.query.candidates import fetch_size
    from retrieval.query.options import query_weights

    s.index.refresh_if_updated()  # the per-query generation check _search does
    fetch = fetch_size(k, len(q1), False, "none", False, s.options)
    ranked, _ = s._candidates(None, None, q1, np.ones(1, np.float32), {}, "none", query_weights(s.options, None), fetch)
    return ranked


def faiss_handle(idx):
    """The opened Index's image FAISS index and its tuned search params."""
    index = idx._faiss["image"]
    params = dict((idx._info.get("image") or {}).get("params") or {})
    return index, params


# -- 3: cold CLI -----------------------------------------------------------------------------
def cold_cli(index_dir: str, query: str = "a cat", runs: int = 3) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), KGCLIP_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "cli", "search", index_dir, query, "-k", "5", "--device", "cpu"]
    walls = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        walls.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise RuntimeError(f"cold search failed: {r.stderr.strip()}")
    # where the time goes: import times of the top-level packages, and an in-process breakdown
    it = subprocess.run([sys.executable, "-X", "importtime", "-m", "cli", "search", index_dir, query, "-k", "5",
                         "--device", "cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    tops = []
    for line in it.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cum, name = [x.strip() for x in line[len("import time:"):].split("|")]
            if cum.isdigit() and not name.startswith(" ") and "." not in name.strip():
                tops.append((int(cum) / 1e6, name.strip()))
    tops.sort(reverse=True)
    code = (
        "import time,sys\n"
        "t=time.perf_counter()\nimport cli\nt_cli=time.perf_counter()-t\n"
        "t=time.perf_counter()\nfrom indexer import open_searcher\nimport torch, faiss\n"
        "t_imp=time.perf_counter()-t\n"
        "t=time.perf_counter()\ns=open_searcher(sys.argv[1], device='cpu')\nt_open=time.perf_counter()-t\n"
        "t=time.perf_counter()\ns.encoder.load()\nt_model=time.perf_counter()-t\n"
        "t=time.perf_counter()\nmode=s.resolve_expand()\nt_kg=time.perf_counter()-t\n"
        "t=time.perf_counter()\nr=s.search(sys.argv[2], k=5)\nt_q=time.perf_counter()-t\n"
        "print({'import_cli_s':t_cli,'import_search_torch_faiss_s':t_imp,'open_index_s':t_open,"
        "'model_load_s':t_model,'kg_load_s':t_kg,'first_query_s':t_q,'expand':mode,'timings_ms':r.timings_ms})\n"
    )
    br = subprocess.run([sys.executable, "-c", code, index_dir, query], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
    breakdown = None
    if br.returncode == 0:
        import ast

        breakdown = {k: (round(v, 3) if isinstance(v, float) else v)
                     for k, v in ast.literal_eval(br.stdout.strip().splitlines()[-1]).items()}
    return {"wall_s": summary(walls), "import_top_s": [[n, round(s, 3)] for s, n in tops[:10]],
            "breakdown": breakdown}


def small_real_index(workdir: str, spec: str = "lite") -> str:
    """A ``spec`` index over the demo photos (real images, real encoder)."""
    from indexer import build_index
    from indexer.demo import demo_images

    photos = Path(workdir) / "photos"
    demo_images(photos)
    idx = str(Path(workdir) / "index")
    build_index([str(photos)], idx, model=spec, text_model=None, device="cpu", progress=False)
    return idx


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="items in the synthetic index")
    ap.add_argument("--queries", type=int, default=len(QUERIES), help="distinct queries per model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="lite,open_clip:ViT-B-32")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--cold-models", default="lite",
                    help="models whose cold `kgclip search` is timed (results: cold_lite, cold_<spec>)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--workdir", help="keep the synthetic indexes here (default: a temp dir, removed)")
    a = ap.parse_args(argv)

    os.environ.setdefault("KGCLIP_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tmp = a.workdir or tempfile.mkdtemp(prefix="kgclip-bench-query-")
    queries = (QUERIES * (1 + a.queries // len(QUERIES)))[: a.queries]
    out = {"benchmark": "query", "n_items": a.n, "n_queries": len(queries), "repeats": a.repeats,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
           "targets": {"lite_p50_ms": 15, "vit_b32_p50_ms": 25, "overhead": 0.10, "cold_lite_s": 4.0},
           "models": {}}
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        torch.manual_seed(0)  # random-init open_clip weights: the same in every run, so --workdir indexes stay valid
        for spec in [m for m in a.models.split(",") if m]:
            d = os.path.join(tmp, spec.replace(":", "_").replace("/", "_"))
            t = time.perf_counter()
            if not os.path.exists(os.path.join(d, "index.json")):
                synthetic_index(d, a.n, spec, concepts=spec == "lite" or spec.startswith("lite:"))
            built = time.perf_counter() - t
            t = time.perf_counter()
            from indexer import open_index

            open_index(d).close()  # derives the FAISS file from the store
            derive = time.perf_counter() - t
            res = {"synthetic_build_s": round(built, 1), "faiss_derive_s": round(derive, 1)}
            res["warm"] = warm_latency(d, queries, "auto", a.repeats)
            if res["warm"]["expand"] != "none":
                res["warm_no_expansion"] = warm_latency(d, queries, "none", a.repeats)
            res["overhead"] = overhead_vs_faiss(d, min(50, len(queries) * 2))
            out["models"][spec] = res
            print(json.dumps({spec: res}, indent=1), file=sys.stderr)
        if not a.skip_cold:
            for spec in [m for m in a.cold_models.split(",") if m]:
                key = "cold_lite" if spec == "lite" else f"cold_{spec}"
                out[key] = cold_cli(small_real_index(os.path.join(tmp, key.replace(":", "_")), spec))
                print(json.dumps({key: out[key]}, indent=1), file=sys.stderr)
    finally:
        if not a.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    write_result(a.out, out)
    return out


if __name__ == "__main__":
    main()
