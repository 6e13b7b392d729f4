"""Regenerate benchmarks/results/*.json and BENCHMARKS.md (``make bench``).

    python -m benchmarks.run_all                      # recall (+ Flickr8k test split, CLIP_benchmark parity) +
                                                      # category (+ full sets, an ImageFolder) + report
    python -m benchmarks.run_all --speed              # also the speed sweep (long; wants a quiet machine)
    python -m benchmarks.run_all --report-only        # BENCHMARKS.md from the JSON already there
    python -m benchmarks.run_all --kg-queries 250     # fewer caption queries for the expansion comparison
    python -m benchmarks.run_all --flickr-index DIR   # reuse a lite index of flickr8k-1k

Query, cold start, build and encoder speed have their own commands (benchmarks/README.md): they want a quiet
machine or take long.

The flickr8k-1k and Fashion-MNIST indexes are built once into the bench cache
(``$KGCLIP_BENCH_CACHE``, default ~/.cache/kgclip-bench/indexes) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def run_speed(sizes="10k,100k", index_types="auto", out: Path | None = None, log=None) -> dict:
    """``kgclip bench speed``: :func:`benchmarks.speed.run_synthetic` over the sizes (``10k``, ``1M``
    ...) and index types (``auto`` and/or flat, hnsw, ivf, ivfpq; ``auto`` next to explicit kinds
    only marks which of them auto picks); adds a text ``summary`` table, writes JSON to ``out``."""
    from benchmarks.report import speed_table
    from benchmarks.speed import TYPES, run_synthetic
    from retrieval.errors import UsageError

    try:
        ns = [_size(s) for s in str(sizes).split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--sizes {sizes!r}: give comma-separated counts such as 10k,100k,1M") from None
    if not ns or min(ns) < 100:
        raise UsageError(f"--sizes {sizes!r}: every size must be at least 100 vectors")
    kinds = [t.strip() for t in str(index_types).split(",") if t.strip()]
    bad = [t for t in kinds if t not in ("auto", *TYPES)]
    if bad or not kinds:
        raise UsageError(f"--index-types: unknown type {bad[0] if bad else index_types!r}: "
                         f"use auto, {', '.join(TYPES)}")
    explicit = [t for t in kinds if t != "auto"]
    res = run_synthetic(ns, types=explicit or ["auto"], log=log or (lambda m: None))
    picks = ", ".join(f"{s['n']} -> {s['auto']} ({s['auto_factory']})" for s in res["sizes"])
    res["summary"] = speed_table(res) + f"\nauto picks: {picks}"
    if out is not None:
        Path(out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--speed", action="store_true", help="also run the speed sweep")
    ap.add_argument("--kg-queries", type=int, default=1000,
                    help="caption queries (evenly sampled) for the expansion-mode comparison")
    ap.add_argument("--flickr-index", default=None, help="reuse a lite index of flickr8k-1k's 1000 images")
    ap.add_argument("--sets", default="fashion-mnist,flickr-nouns,emoji")
    ap.add_argument("--per-class", type=int, default=30, help="Fashion-MNIST images per class")
    ap.add_argument("--emoji-every", type=int, default=3)
    a = ap.parse_args(argv)
    os.environ.setdefault("KGCLIP_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmarks.report import write_benchmarks_md

    RESULTS.mkdir(parents=True, exist_ok=True)
    if not a.report_only:
        from benchmarks.category import run_category
        from benchmarks.recall import run_recall

        t = time.perf_counter()
        # all 5000 captions, plain queries (the zero-shot protocol); then every mode on a caption sample
        rec = run_recall("flickr8k-1k", ["lite"], ("none",), "all", index=a.flickr_index, progress=True)
        (RESULTS / "recall.json").write_text(json.dumps(rec, indent=2) + "\n")
        idx = a.flickr_index or rec["runs"][0]["index"]
        rec = run_recall("flickr8k-1k", ["lite"], ("none", "auto", "mix", "multi"), "all", index=idx,
                         max_queries=a.kg_queries, progress=True)
        (RESULTS / "recall_kg.json").write_text(json.dumps(rec, indent=2) + "\n")
        # Flickr8k's standard test split (1000 images, 5000 captions), zero-shot, plain queries
        from benchmarks.splits import FLICKR8K

        try:
            rec = run_recall(str(FLICKR8K), ["lite"], ("none",), split_file=str(FLICKR8K / "test.txt"), progress=True)
            rec["command"] = f"kgclip bench recall {FLICKR8K} --split-file {FLICKR8K / 'test.txt'} --expand none"
            (RESULTS / "recall_flickr8k_test.json").write_text(json.dumps(rec, indent=2) + "\n")
        except Exception as e:  # noqa: BLE001 - Flickr8k not on this machine: keep the rest
            print(f"flickr8k test split skipped: {e}", file=sys.stderr)
        # CLIP_benchmark's own evaluate on the same encoder (the bench extra installs it)
        try:
            from benchmarks.clip_parity import run_parity

            par = run_parity("lite")
            par["command"] = "python -m benchmarks.clip_parity"
            (RESULTS / "clip_benchmark_parity.json").write_text(json.dumps(par, indent=2) + "\n")
        except Exception as e:  # noqa: BLE001 - clip-benchmark not installed: keep the rest
            print(f"CLIP_benchmark parity skipped: {e}", file=sys.stderr)
        # `kgclip bench category DIR` on an ImageFolder: Fashion-MNIST's 30 per class as folders of links
        try:
            from benchmarks.category import run_folder
            from benchmarks.imagefolder import fashion_mnist_folder

            res = run_folder(fashion_mnist_folder(30), "lite", progress=True)
            res["command"] = "kgclip bench category <bench cache>/fashion-mnist-imagefolder/30"
            (RESULTS / "category_imagefolder.json").write_text(json.dumps(res, indent=2) + "\n")
        except Exception as e:  # noqa: BLE001 - e.g. Fashion-MNIST not installed: keep the rest
            print(f"ImageFolder category run skipped: {e}", file=sys.stderr)
        sets = [s.strip() for s in a.sets.split(",") if s.strip()]

        def categories(names, out: str, label: str, model: str = "lite", flickr_index=idx, **kw) -> None:
            res = {"benchmark": "category", "model": model, "ties": "pessimistic", "sets": {}}
            for s in names:
                try:
                    own = flickr_index if s == "flickr-nouns" else None
                    res["sets"].update(run_category([s], model, index=own, progress=True, **kw)["sets"])
                except Exception as e:  # e.g. emoji without npm: keep the other sets
                    print(f"{label} {s} skipped: {e}", file=sys.stderr)
            (RESULTS / out).write_text(json.dumps(res, indent=2) + "\n")

        categories(sets, "category.json", "category set", per_class=a.per_class, emoji_every=a.emoji_every)
        # the full sets, as a check on the tuning subsets above (the same queries, more images)
        categories([s for s in sets if s in ("fashion-mnist", "emoji")], "category_full.json", "full category set",
                   per_class=100, emoji_every=1)
        # lite:mpnet (all-mpnet-base-v2 text tower; make bench installs it): the zero-shot recall protocol
        # and the category subsets, with and without expansion
        try:
            rec = run_recall("flickr8k-1k", ["lite:mpnet"], ("none",), "all", progress=True)
            (RESULTS / "recall_mpnet.json").write_text(json.dumps(rec, indent=2) + "\n")
            categories(sets, "category_mpnet.json", "lite:mpnet category set", model="lite:mpnet",
                       flickr_index=rec["runs"][0]["index"], per_class=a.per_class, emoji_every=a.emoji_every)
        except Exception as e:  # noqa: BLE001 - e.g. the mpnet parts not installed: keep the rest
            print(f"lite:mpnet runs skipped: {e}", file=sys.stderr)
        if a.speed:
            run_speed("10k,100k,1M", "flat,hnsw,ivf,ivfpq", out=RESULTS / "speed.json",
                      log=lambda m: print(m[:200], file=sys.stderr))
        print(f"benchmarks ran in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    print(f"wrote {write_benchmarks_md()}", file=sys.stderr)


if __name__ == "__main__":
    main()
