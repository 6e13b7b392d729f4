"""What lite grounding costs per warm query: the concept-mix term, or concept profiles.

One warm Searcher on a synthetic lite index (benchmarks.query.synthetic_index: clustered vectors,
5 random ImageNet concepts and a 100-class concept profile per item), ``--expand auto``, k=10. Every
query runs with both settings back to back, alternating which goes first, so the paired difference
holds on a busy machine; reported: p50 of each total and the p50 of the paired differences, plus
the p50 of each timing part.

``--compare mix``: the top-5 grounding with the concept-mix term off and on (the default of indexes
without profiles). ``--compare profile``: that grounding (``off``) against the profile grounding of
indexes built now (``on``; SearchOptions.concept_source).

    python -m benchmarks.concept_mix_latency --n 100000   # -> benchmarks/results/concept_mix_latency.json
    python -m benchmarks.concept_mix_latency --compare profile --n 100000   # -> .../grounding_latency.json
    python -m benchmarks.concept_mix_latency --n 2000 --repeats 1 --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

from benchmarks import write_result
from benchmarks.recall import RESULTS


def run(n: int, repeats: int = 3, workdir: str | None = None, compare: str = "mix") -> dict:
    from benchmarks.query import QUERIES, synthetic_index
    from retrieval.search import GROUNDING, SearchOptions, Searcher

    if compare == "mix":
        on = GROUNDING["top5"][2]
        settings = {0.0: SearchOptions(concept_source="top5", concept_mix=0.0),
                    on: SearchOptions(concept_source="top5", concept_mix=on)}
    else:
        on = 1.0
        settings = {0.0: SearchOptions(concept_source="top5"), on: SearchOptions()}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        d = synthetic_index(os.path.join(tmp, "index"), n, "lite", concepts=True)
        with Searcher(d, expand="auto", device="cpu", query_cache=0) as s:
            s.warm()
            for q in QUERIES:  # first pass: lazy tables, entity embeddings
                s.search(q, k=10)
            totals: dict[float, list[float]] = {0.0: [], on: []}
            parts: dict[float, dict[str, list[float]]] = {0.0: {}, on: {}}
            for rep in range(repeats):
                for q in QUERIES:
                    for cm in ((0.0, on) if rep % 2 == 0 else (on, 0.0)):
                        s.options = settings[cm]
                        t = s.search(q, k=10).timings_ms
                        totals[cm].append(t["total"])
                        for k, v in t.items():
                            parts[cm].setdefault(k, []).append(v)

    def p50(xs):
        return round(statistics.median(xs), 3)

    return {
        "benchmark": "concept_mix_latency" if compare == "mix" else "grounding_latency", "compare": compare,
        "off": "top-5 grounding, concept_mix 0" if compare == "mix" else "top-5 grounding (indexes before profiles)",
        "on": f"top-5 grounding, concept_mix {on}" if compare == "mix" else "concept-profile grounding (the default now)",
        "n_items": n, "n_queries": len(QUERIES), "repeats": repeats, "cpus": os.cpu_count(),
        "total_ms_p50": {"off": p50(totals[0.0]), "on": p50(totals[on])},
        "paired_diff_ms_p50": p50([b - a for a, b in zip(totals[0.0], totals[on])]),
        "parts_ms_p50": {"off": {k: p50(v) for k, v in parts[0.0].items()},
                         "on": {k: p50(v) for k, v in parts[on].items()}},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where the synthetic index is written (a temp folder)")
    ap.add_argument("--compare", choices=("mix", "profile"), default="mix")
    ap.add_argument("--out", default=None, help="default: results/concept_mix_latency.json or grounding_latency.json")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("KGCLIP_OFFLINE", "1")
    res = run(a.n, a.repeats, a.workdir, a.compare)
    res["command"] = "python -m benchmarks.concept_mix_latency " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"total p50 off {res['total_ms_p50']['off']} ms, on {res['total_ms_p50']['on']} ms, "
          f"paired difference p50 {res['paired_diff_ms_p50']} ms", file=sys.stderr)
    if not a.no_write:
        write_result(a.out or str(RESULTS / ("concept_mix_latency.json" if a.compare == "mix"
                                             else "grounding_latency.json")), res)


if __name__ == "__main__":
    main()
