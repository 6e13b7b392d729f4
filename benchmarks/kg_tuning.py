"""KG expansion levers on the category sets, every variant through the real Searcher in one run.

For each category set (``fashion-mnist``, ``flickr-nouns``, ``emoji``; see benchmarks/category.py)
the set's lite index is opened once and every variant below is scored with
:func:`benchmarks.category.evaluate` (exact search, the same code path as ``kgclip search``):
mAP (all queries and per query kind), nDCG@10 and the relative mAP change against ``none``.

A variant sets ExpansionPolicy fields (``policy``) and SearchOptions fields (``options``) and
lists the expansion modes it is scored in. The levers:

- ``hyponym_coverage``: the hyponyms expanded to are those with image-model concepts below them
  (the index's lite ImageNet ids), most first; off = the older frequency/subtree-size ranking
  (which let "animal" pull in female/male/young);
- concept grounding: ``concept_weight`` and ``concept_agg`` (``sum``: bonus = weight x the image's
  probability mass in the query's hyponym closure; ``sqrt``: weight x its square root);
  ``grounding_decay``: per-level factor of a closure concept's weight (1.0 = flat);
- ``focus_words``: queries with more content words are expanded and grounded less (it only
  touches the few category queries with 4+ content words here; its purpose is full-caption
  recall, measured by ``python -m benchmarks.recall --expand none,auto,mix,multi``);
- ``coverage_weight``: hyponym weights scaled by (coverage / best sibling's) ** w;
- ``grounding_alternatives``: also ground the linker's other candidate senses of a word;
- ``mix`` (one blended query vector) vs ``multi`` (best weighted cosine over query + expansions);
- ``concept_mix`` (``mix-*`` variants): a second grounding term, concept_mix x concept_weight x
  sqrt(the targets' share of the image's whole class mix), estimated from the stored lite vector
  (retrieval.search._ConceptMix, ridge ``concept_mix_ridge``): the vector mixes the top 50 classes,
  the stored concepts are the top 5. The variants above it were measured with it off
  (``concept_mix`` 0); ``stored-concepts-only`` is the previous default.
- concept profiles (``profile-*`` variants and ``default``): lite indexes now store each image's 100
  most likely classes at temperature 2, grounded with a log-shaped bonus; every variant above it
  runs on the same index with ``concept_source="top5"`` (the top 5 classes, as indexes from before
  profiles), so the two kinds are compared on the same images.
``previous`` is the search path's defaults before the first tuning round.

Parameters were chosen on all three sets together (a setting had to win on each, not on the
mean): see the ``chosen`` field of the output.

    python -m benchmarks.kg_tuning          # -> benchmarks/results/kg_tuning.json (a few minutes)
    python -m benchmarks.kg_tuning --sets fashion-mnist --variants default --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from benchmarks import write_result
from benchmarks.recall import RESULTS, ExactIndex, ensure_index, open_checked, parse_list

SETS = ("fashion-mnist", "flickr-nouns", "emoji")
# name -> (modes, ExpansionPolicy overrides, SearchOptions overrides)
VARIANTS: dict[str, tuple[tuple[str, ...], dict, dict]] = {
    # -- before the class-mix term (concept_mix 0): the search path of the previous tuning round
    "previous": (("mix", "multi"), {"hyponym_coverage": False, "focus_words": 0, "grounding_alternatives": 0.0},
                 {"concept_source": "top5", "concept_agg": "sum", "concept_mix": 0.0}),
    "text-only": (("mix",), {"hyponym_coverage": False, "focus_words": 0}, {"concept_source": "top5", "concept_weight": 0.0}),
    "text-only-coverage": (("mix",), {}, {"concept_source": "top5", "concept_weight": 0.0}),
    "sum-cw1": (("multi",), {}, {"concept_source": "top5", "concept_agg": "sum", "concept_weight": 1.0, "concept_mix": 0.0}),
    "sum-cw2": (("multi",), {}, {"concept_source": "top5", "concept_agg": "sum", "concept_weight": 2.0, "concept_mix": 0.0}),
    "sqrt-cw0.25": (("multi",), {}, {"concept_source": "top5", "concept_weight": 0.25, "concept_mix": 0.0}),
    "sqrt-cw0.75": (("multi",), {}, {"concept_source": "top5", "concept_weight": 0.75, "concept_mix": 0.0}),
    "sqrt-cw1": (("multi",), {}, {"concept_source": "top5", "concept_weight": 1.0, "concept_mix": 0.0}),
    "sqrt-flat": (("multi",), {"grounding_decay": 1.0}, {"concept_source": "top5", "concept_mix": 0.0}),
    "no-meronyms": (("mix", "multi"), {"meronym": 0.0}, {"concept_source": "top5", "concept_mix": 0.0}),
    "coverage-weighted": (("mix",), {"coverage_weight": 0.5}, {"concept_source": "top5", "concept_mix": 0.0}),
    "coverage-weighted-1": (("mix",), {"coverage_weight": 1.0}, {"concept_source": "top5", "concept_mix": 0.0}),
    "chosen-sense-only": (("mix", "multi"), {"grounding_alternatives": 0.0}, {"concept_source": "top5", "concept_mix": 0.0}),
    "alt-senses-1": (("mix", "multi"), {"grounding_alternatives": 1.0}, {"concept_source": "top5", "concept_mix": 0.0}),
    "stored-concepts-only": (("mix", "multi"), {}, {"concept_source": "top5", "concept_mix": 0.0}),  # the previous default
    # -- the class-mix term (SearchOptions.concept_mix: x concept_weight, ridge concept_mix_ridge)
    "mix-only": (("multi",), {}, {"concept_source": "top5", "concept_weight": 0.25, "concept_mix": 4.0, "concept_agg": "sqrt"}),
    "mix-1": (("multi",), {}, {"concept_source": "top5", "concept_mix": 1.0}),
    "mix-3": (("multi",), {}, {"concept_source": "top5", "concept_mix": 3.0}),
    "mix-4": (("multi",), {}, {"concept_source": "top5", "concept_mix": 4.0}),
    "mix-ridge-0.01": (("multi",), {}, {"concept_source": "top5", "concept_mix_ridge": 0.01}),
    "mix-ridge-1": (("multi",), {}, {"concept_source": "top5", "concept_mix_ridge": 1.0}),
    "mix-cw0.75": (("multi",), {}, {"concept_source": "top5", "concept_weight": 0.75, "concept_mix": 4.0 / 3.0}),
    "mix-sum": (("multi",), {}, {"concept_source": "top5", "concept_agg": "sum", "concept_weight": 1.0, "concept_mix": 1.0}),
    "mix-flat": (("multi",), {"grounding_decay": 1.0}, {"concept_source": "top5"}),
    "mix-decay-0.8": (("multi",), {"grounding_decay": 0.8}, {"concept_source": "top5"}),
    "mix-chosen-sense-only": (("multi",), {"grounding_alternatives": 0.0}, {"concept_source": "top5"}),
    "mix-alt-senses-1": (("multi",), {"grounding_alternatives": 1.0}, {"concept_source": "top5"}),
    # -- concept profiles (lite indexes with concept profiles store 100 classes at temperature 2 per image; "default"
    # grounds on them with log shape, scale 100, weight 2.5, no class-mix term: GROUNDING["profile"])
    "top5-default": (("mix", "multi"), {}, {"concept_source": "top5"}),  # the previous default
    "profile-sqrt-cw0.5-mix2": (("multi",), {}, {"concept_agg": "sqrt", "concept_weight": 0.5, "concept_mix": 2.0}),
    "profile-sqrt-cw1": (("multi",), {}, {"concept_agg": "sqrt", "concept_weight": 1.0}),
    "profile-log30": (("multi",), {}, {"concept_log_scale": 30.0}),
    "profile-log300": (("multi",), {}, {"concept_log_scale": 300.0}),
    "profile-log1000-cw1.5": (("multi",), {}, {"concept_log_scale": 1000.0, "concept_weight": 1.5}),
    "profile-cw1.5": (("multi",), {}, {"concept_weight": 1.5}),
    "profile-cw2": (("multi",), {}, {"concept_weight": 2.0}),
    "profile-cw3": (("multi",), {}, {"concept_weight": 3.0}),
    "profile-cw3.5": (("multi",), {}, {"concept_weight": 3.5}),
    "profile-cw4": (("multi",), {}, {"concept_weight": 4.0}),
    "profile-cw3-log300": (("multi",), {}, {"concept_weight": 3.0, "concept_log_scale": 300.0}),
    "profile-cw3-log30": (("multi",), {}, {"concept_weight": 3.0, "concept_log_scale": 30.0}),
    "profile-mix0.5": (("multi",), {}, {"concept_mix": 0.5}),
    "default": (("mix", "multi"), {}, {}),
}
CHOSEN = ("default on lite indexes with concept profiles (100 classes at temperature 2 per image): "
          "concept_agg log (scale 100), concept_weight 2.5, concept_mix 0 (GROUNDING['profile']). Rule, "
          "the same as before: no set may lose more than 0.001 mAP against top5-default (only "
          "flickr-nouns is at risk), and of those the highest mean relative gain wins. An offline grid "
          "(30/50/100 classes, temperature 1/2/3, log scale 100/300/1000, weight 0.5-2, mix 0-2) gave "
          "100 classes, temperature 2, scale 100, weight 2, mix 0; its neighbours through the Searcher "
          "(the profile-* rows) moved the weight to 2.5 (+0.9 points mean, flickr-nouns -0.0006). "
          "Heavier weights go on rising slowly (mean gain 18.7% at 2.5; 19.1 / 19.3 / 19.3% at 3 / 3.5 / 4, "
          "fashion-mnist up and emoji down), which the rule would take; 2.5 is kept deliberately: at 3.5 "
          "the bonus (up to 3.5) outweighs any cosine (0.1-0.6), so a 2-3 word query mixing a category "
          "with something else (\"a dog on a beach\") would be ranked by the category alone, and no "
          "benchmark here measures that case. "
          "On indexes without profiles (top5-default, GROUNDING['top5']): "
          "hyponym_coverage on, concept_agg sqrt, concept_weight 0.5, concept_mix 2 (ridge "
          "0.1), grounding_decay 0.95, grounding_alternatives 0.5, focus_words 3, auto -> multi. Rule, "
          "fixed before the concept_mix round: a lever is kept when no set loses more than 0.001 mAP "
          "against the previous default (stored-concepts-only), the mean relative gain rises by at least "
          "1 point, and full-caption R@10 with auto stays within 1 point of none (recall_kg.json). "
          "concept_mix 2 / ridge 0.1 was picked from a coarse offline grid (mix weight 0.5-4, ridge "
          "0.01-1, sqrt/log/linear shapes) on these same three sets (no held-out set; choosing on two "
          "sets and scoring the third still beat the previous default on each); the mix-* rows are its "
          "neighbours through the Searcher. Earlier round: sqrt at 0.5 and the other senses passed; "
          "larger concept weights, flat grounding and coverage weights did not; mix vs multi: multi has "
          "the higher mAP on every set")


def run_tuning(sets=SETS, variants=None, model: str = "lite", per_class: int = 30, emoji_every: int = 3,
               device: str = "cpu", progress: bool = False, flickr_index: str | None = None,
               category_sets: dict | None = None) -> dict:
    """Every variant on every set (see the module docstring); ``category_sets``: name -> an already
    built CategorySet to use instead of loading the named set (tests)."""
    from benchmarks.category import evaluate, load_set
    from benchmarks.datasets import bench_cache
    from retrieval.errors import UsageError
    from retrieval.kg import ExpansionPolicy
    from retrieval.query import SearchOptions, Searcher

    names = list(variants or VARIANTS)
    for n in names:
        if n not in VARIANTS:
            raise UsageError(f"unknown variant {n!r}: use one of {', '.join(VARIANTS)}")
    out = {"benchmark": "kg_tuning", "model": model, "ties": "pessimistic", "per_class": per_class,
           "emoji_every": emoji_every, "chosen": CHOSEN,
           "variants": {n: {"modes": list(VARIANTS[n][0]), "policy": VARIANTS[n][1], "options": VARIANTS[n][2]}
                        for n in names},
           "sets": {}}
    for name in sets:
        cs = (category_sets or {}).get(name) or load_set(name, per_class, emoji_every)
        idx = flickr_index if name == "flickr-nouns" else None
        iname = "flickr8k-1k" if name == "flickr-nouns" else cs.name  # shares the recall benchmark's index
        idir = ensure_index(cs.items, iname, model, bench_cache() / "indexes", "auto", idx, device, progress)
        searcher, id_col = open_checked(idir, cs.items, device, True, "set")
        with searcher as base:
            exp = base.expander(required=True)
            ex = Searcher(ExactIndex(base.index), expand="none", device=device, check_fingerprint=False,
                          expander=exp)
            ex.encoder = base.encoder
            res: dict = {"index": idir, "fingerprint_index": base.index.model_fingerprint,
                         "n_items": len(cs.items), "n_queries": len(cs.queries), "variants": {}}
            none = evaluate(cs, ex, id_col, ("none",))["none"]
            res["none"] = {"mAP": none["all"]["mAP"], "ndcg@10": none["all"]["ndcg@10"],
                           **{k: v["mAP"] for k, v in none.items() if isinstance(v, dict) and "mAP" in v and k != "all"}}
            for vname in names:
                modes, pol, opts = VARIANTS[vname]
                t = time.perf_counter()
                exp.policy = dataclasses.replace(ExpansionPolicy(), **pol)
                ex.options = dataclasses.replace(SearchOptions(), **opts)
                got = evaluate(cs, ex, id_col, ("none", *modes))
                row = {}
                for m in modes:
                    r = got[m]
                    row[m] = {"mAP": round(r["all"]["mAP"], 4), "ndcg@10": round(r["all"]["ndcg@10"], 4),
                              "mAP_rel_change_vs_none": round(r["mAP_rel_change_vs_none"]["all"], 4),
                              "per_kind_mAP": {k: round(v["mAP"], 4) for k, v in r.items()
                                               if isinstance(v, dict) and "mAP" in v and k != "all"}}
                res["variants"][vname] = row
                if progress:
                    print(f"{name} {vname}: " + "  ".join(
                        f"{m} mAP {v['mAP']:.4f} ({v['mAP_rel_change_vs_none'] * 100:+.1f}%) nDCG@10 {v['ndcg@10']:.3f}"
                        for m, v in row.items()) + f"  ({time.perf_counter() - t:.0f}s)", file=sys.stderr)
            exp.policy = ExpansionPolicy()
        out["sets"][name] = res
    out["summary"] = summarize(out)
    return out


def summarize(res: dict) -> dict:
    """Per variant and mode: mAP and nDCG@10 per set, relative mAP change vs none, and the mean change."""
    out: dict = {}
    for vname in res["variants"]:
        for mode in res["variants"][vname]["modes"]:
            row = {s: res["sets"][s]["variants"][vname][mode] for s in res["sets"]}
            out[f"{vname}/{mode}"] = {
                "mAP": {s: r["mAP"] for s, r in row.items()},
                "ndcg@10": {s: r["ndcg@10"] for s, r in row.items()},
                "mAP_rel_change_vs_none": {s: r["mAP_rel_change_vs_none"] for s, r in row.items()},
                "mean_rel_change": round(sum(r["mAP_rel_change_vs_none"] for r in row.values()) / len(row), 4),
            }
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--emoji-every", type=int, default=3)
    ap.add_argument("--flickr-index", default=None, help="reuse a flickr8k-1k lite index for flickr-nouns")
    ap.add_argument("--out", default=str(RESULTS / "kg_tuning.json"))
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("KGCLIP_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res = run_tuning(parse_list(a.sets, SETS, "set"), parse_list(a.variants), per_class=a.per_class,
                     emoji_every=a.emoji_every, progress=True, flickr_index=a.flickr_index)
    res["command"] = "python -m benchmarks.kg_tuning " + " ".join(argv if argv is not None else sys.argv[1:])
    for key, v in res["summary"].items():
        print(f"{key:28s} " + "  ".join(f"{s} {v['mAP'][s]:.4f} ({v['mAP_rel_change_vs_none'][s] * 100:+.1f}%) "
                                         f"nDCG@10 {v['ndcg@10'][s]:.3f}" for s in v["mAP"])
              + f"  mean {v['mean_rel_change'] * 100:+.1f}%", file=sys.stderr)
    if not a.no_write:
        write_result(a.out, res)


if __name__ == "__main__":
    main()
