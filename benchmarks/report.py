"""Tables (text / markdown) for benchmark results and the generated BENCHMARKS.md with PNG plots.

    python -m benchmarks.report        # BENCHMARKS.md from benchmarks/results/*.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from retrieval.render import to_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

KS = (1, 5, 10)


def _f(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(header: list[str], rows: list[list], fmt: str = "table") -> str:
    """A plain aligned text table or a GitHub markdown table."""
    cells = [[_f(c) for c in r] for r in rows]
    if fmt == "markdown":
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(out)
    w = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    line = lambda r: "  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * x for x in w]), *(line(r) for r in cells)])


def recall_rows(res: dict) -> tuple[list[str], list[list]]:
    """One row per model x expansion x (exact | ann): t2i and i2t R@1/5/10, mean/median rank."""
    header = ["model", "expand", "search", *(f"t2i R@{k}" for k in KS), "t2i mean", "t2i med",
              *(f"i2t R@{k}" for k in KS), "i2t mean", "i2t med"]
    rows = []
    for run in res.get("runs", []):
        for mode, m in run["expand"].items():
            for which in ("exact", "ann"):
                d = m.get(which) or {}
                label = which if which == "exact" else f"ann ({run.get('index_kind') or '?'})"
                rows.append([run["model"], mode, label,
                             *(d.get(f"image_retrieval_recall@{k}") for k in KS),
                             d.get("image_retrieval_mean_rank"), d.get("image_retrieval_median_rank"),
                             *(d.get(f"text_retrieval_recall@{k}") for k in KS),
                             d.get("text_retrieval_mean_rank"), d.get("text_retrieval_median_rank")])
    return header, rows


def category_rows(res: dict) -> tuple[list[str], list[list]]:
    header = ["set", "queries", "expand", "mAP", "mAP vs none", "nDCG@10", "P@10", "R@10",
              "hypernym mAP", "hyp. vs none", "class mAP"]
    rows = []
    for name, s in res.get("sets", {}).items():
        for mode, m in s["expand"].items():
            rel = m.get("mAP_rel_change_vs_none") or {}
            pct = lambda v: "-" if v is None else f"{100 * v:+.1f}%"  # noqa: E731
            rows.append([name, s["n_queries"], mode, m["all"]["mAP"], pct(rel.get("all")),
                         m["all"]["ndcg@10"],
                         m["all"]["precision@10"], m["all"]["recall@10"],
                         (m.get("hypernym") or {}).get("mAP"), pct(rel.get("hypernym")),
                         (m.get("class") or {}).get("mAP")])
    return header, rows


def category_kind_rows(res: dict) -> tuple[list[str], list[list]]:
    """One row per set x expansion x query kind: mAP, nDCG@10, P@10."""
    header = ["set", "expand", "kind", "queries", "mAP", "nDCG@10", "P@10"]
    rows = []
    for name, s in res.get("sets", {}).items():
        for mode, m in s["expand"].items():
            for kd in ["all", *sorted(k for k, v in m.items() if k != "all" and isinstance(v, dict) and "mAP" in v)]:
                rows.append([name, mode, kd, m[kd]["n_queries"], m[kd]["mAP"], m[kd]["ndcg@10"],
                             m[kd]["precision@10"]])
    return header, rows


def format_result(res: dict, fmt: str = "table") -> str:
    if fmt == "json":
        return to_json(res)  # strict: a NaN metric is null
    kind = res.get("benchmark")
    if kind == "recall":
        h, r = recall_rows(res)
        head = (f"{res['dataset']} ({res['split']}): {res['n_images']} images, "
                f"{res['n_captions']} caption queries; "
                "t2i = text->image (image_retrieval_*), i2t = image->text (text_retrieval_*)")
        return head + "\n\n" + table(h, r, fmt)
    if kind == "category":
        h, r = category_rows(res)
        h2, r2 = category_kind_rows(res)
        return (f"category queries, model {res['model']}\n\n" + table(h, r, fmt) + "\n\nper query kind\n\n"
                + table(h2, r2, fmt))
    if kind == "zeroshot":
        m = res["metrics"]
        head = (f"zero-shot classification, model {res['model']}: {m['n_images']} images, {m['n_classes']} classes, "
                f"templates {res['templates']}")
        return head + "\n\n" + table(["acc1", "acc5", "mean per-class recall"],
                                      [[m["acc1"], m["acc5"], m["mean_per_class_recall"]]], fmt)
    return to_json(res)


def kg_targets(recalls: list[dict], cat: dict | None) -> tuple[list[str], list[list], str]:
    """The issue's KG targets: mAP gain >= 20% relative on >= 2 category sets, R@10 cost <= 1 point."""
    header = ["expand", "sets with mAP gain >= 20%", "mAP change per set (all / hypernym queries)",
              "t2i R@10 change (points, exact)", "meets both targets"]
    rows, verdict = [], {}
    modes = []
    for res in recalls:
        for run in res.get("runs", []):
            modes += [m for m in run["expand"] if m != "none" and m not in modes]
    for s in (cat or {}).get("sets", {}).values():
        modes += [m for m in s["expand"] if m != "none" and m not in modes]
    for mode in modes:
        per, wins = [], 0
        for name, s in (cat or {}).get("sets", {}).items():
            rel = (s["expand"].get(mode) or {}).get("mAP_rel_change_vs_none") or {}
            a, h = rel.get("all"), rel.get("hypernym")
            if a is not None and max(a, h if h is not None else -1) >= 0.20:
                wins += 1
            per.append(f"{name} {100 * a:+.1f}%" + (f" / {100 * h:+.1f}%" if h is not None else "")
                       if a is not None else f"{name} -")
        cost = []
        for res in recalls:
            for run in res.get("runs", []):
                e = run["expand"]
                if mode in e and "none" in e:
                    d = 100 * (e[mode]["exact"]["image_retrieval_recall@10"]
                               - e["none"]["exact"]["image_retrieval_recall@10"])
                    cost.append(d)
                    per_cost = f"{d:+.1f} ({res['n_captions']} captions)"
        ok = wins >= 2 and bool(cost) and min(cost) >= -1.0
        verdict[mode] = ok
        rows.append([mode, wins, "; ".join(per), per_cost if cost else "-", "yes" if ok else "no"])
    good = [m for m, ok in verdict.items() if ok]
    text = (f"Supported `--expand auto` default: {good[0]}." if good else
            "No expansion mode meets both targets on these measurements.")
    return header, rows, text


def learn_rows(res: dict) -> tuple[list[str], list[list]]:
    """Stage 1 (benchmarks/train.py): zero-shot lite and each trained configuration on Flickr8k test, with
    every out-of-domain delta (points against zero-shot lite)."""
    checks = ["tuxpaint_t2i_R@10", "tuxpaint_i2t_R@10", "fashion-mnist_mAP", "emoji_mAP", "flickr-nouns_mAP"]
    h = ["configuration", "t2i R@1", "t2i R@5", "t2i R@10", "i2t R@10", *[f"Δ {c}" for c in checks], "OOD rule"]
    z = res["zero_shot"]["test"]
    rows = [["zero-shot lite", *[_f(z[k]) for k in ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@10")],
             *["0" for _ in checks], "-"]]
    for name, r in res["test"].items():
        t, d = r["test"], r["ood_deltas"]
        rows.append([name, *[_f(t[k]) for k in ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@10")],
                     *[f"{d[c]:+.2f}" if c in d else "-" for c in checks],
                     "pass" if all(v >= -1.0 for v in d.values()) else "FAIL"])
    return h, rows


# -- BENCHMARKS.md --------------------------------------------------------------------------------


def _load(name: str):
    p = RESULTS / name
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None where matplotlib is missing (plots are optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _grouped_bars(ax, labels: list[str], series: list[tuple[str, list[float]]], **tick_kw) -> None:
    """One group of bars per label, one bar per (name, values) series in each group."""
    width = 0.8 / max(1, len(series))
    for j, (name, vals) in enumerate(series):
        ax.bar([i + j * width for i in range(len(labels))], vals, width, label=name)
    ax.set_xticks([i + width for i in range(len(labels))], labels, **tick_kw)


def _save(plt, fig, ax, path: Path) -> bool:
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plot_recall(res, path: Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels, vals = [], []
    for run in res["runs"]:
        for mode, m in run["expand"].items():
            for which in ("exact", "ann"):
                d = m.get(which) or {}
                labels.append(f"{run['model']}\n{mode}\n{which}")
                vals.append([d.get(f"image_retrieval_recall@{k}") or 0 for k in KS])
    _grouped_bars(ax, labels, [(f"R@{k}", [v[j] for v in vals]) for j, k in enumerate(KS)], fontsize=7)
    ax.set_ylabel("text->image recall")
    ax.set_title(f"{res['dataset']}: recall@k by KG expansion")
    return _save(plt, fig, ax, path)


def _plot_category(res, path: Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    sets = list(res["sets"])
    modes = list(next(iter(res["sets"].values()))["expand"]) if sets else []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    _grouped_bars(ax, sets, [(f"--expand {mode}",
                              [res["sets"][s]["expand"].get(mode, {}).get("all", {}).get("mAP", 0) for s in sets])
                             for mode in modes])
    ax.set_ylabel("mAP")
    ax.set_title("category / hypernym queries: mAP with and without KG expansion")
    return _save(plt, fig, ax, path)


def speed_table(res: dict, fmt: str = "table") -> str:
    """One row per size x index type of a :func:`benchmarks.speed.run_synthetic` result (``*`` marks
    the type ``auto`` picks): build and tuning seconds, the tuned parameter with the tuning sample's
    recall lower bound, recall@10 on fresh queries, single-query QPS and latency, batch QPS, size."""
    h = ["n", "type", "factory", "params", "build s", "tune s", "tuned recall (low)", "recall@10",
         "QPS", "p50 ms", "p95 ms", "batch QPS", "MiB", "device"]
    rows = []
    for size in res.get("sizes", []):
        for r in [*size.get("rows", []), *size.get("gpu_rows", [])]:
            if "error" in r:
                rows.append([size["n"], r["index_type"], "error: " + r["error"][:60], *[""] * 11])
                continue
            params = ",".join(f"{k}={v}" for k, v in (r.get("params") or {}).items()) or "-"
            rows.append([size["n"], r["kind"] + ("*" if r.get("is_auto") else ""), r["factory"], params,
                         r["build_s"], r["tune_s"],
                         f"{r['tune_recall_at_10']:.3f} ({r.get('tune_recall_at_10_low', 0):.3f})",
                         r["recall_at_10"], r["qps"], r["latency_ms_p50"], r["latency_ms_p95"],
                         r["batch_qps"], round(r["index_bytes"] / 2**20, 1), r["device"]])
    return table(h, rows, fmt)


def build_tables(res: dict, fmt: str = "table") -> str:
    """benchmarks/build.py: throughput next to the raw encode rate (with where the CPU went), and memory."""
    parts = []
    rows = []
    for r in res.get("throughput", []):
        cpu = r.get("cpu_ms_per_image", {})
        drift = "->".join(f"{x:.0f}" for x in r.get("raw_encode_before_after", []))
        rows.append([r["model"], r["images"], r["raw_encode_per_s"], drift, r["build_per_s"], r["ratio_build_to_raw"],
                     r.get("ratio_bound", ""), cpu.get("raw_encode", ""), cpu.get("build_main", ""),
                     cpu.get("serial_decode", ""), cpu.get("build_decode_workers", ""),
                     r.get("cores_busy", {}).get("build", "")])
    if rows:
        parts.append(table(["model", "images", "raw img/s", "raw before->after", "build img/s", "build/raw", "bound", "CPU ms raw encode",
                            "CPU ms build main", "CPU ms decode serial", "CPU ms decode workers", "cores busy"],
                           rows, fmt))
    mem = [[m["n"], m["peak_rss_main_mib"], m["peak_anon_main_mib"], m["peak_rss_tree_mib"], m["build_s"]]
           for m in res.get("memory", [])]
    if mem:
        parts.append(table(["items", "peak RSS MiB", "own (anon) MiB", "tree MiB", "build s"], mem, fmt))
    return "\n\n".join(parts)


def _plot_speed(speed, path: Path) -> bool:
    """Recall@10 vs QPS per index type, from whatever speed results carry both."""
    plt = _pyplot()
    if plt is None:
        return False
    pts: dict[str, list[tuple[float, float]]] = {}

    def walk(o, label=None):
        if isinstance(o, dict):
            q = o.get("qps") or o.get("qps_single") or o.get("qps_batch")
            r = o.get("recall@10") or o.get("recall_at_10") or o.get("recall")
            kind = o.get("kind") or o.get("index_type") or label
            if isinstance(q, (int, float)) and isinstance(r, (int, float)) and kind:
                pts.setdefault(str(kind), []).append((float(q), float(r)))
            for k, v in o.items():
                walk(v, k if isinstance(v, dict) and label is None else label)
        elif isinstance(o, list):
            for v in o:
                walk(v, label)

    if speed.get("benchmark") == "speed_synthetic":  # one point per size and type: no lines across sizes
        fig, ax = plt.subplots(figsize=(6, 3.5))
        markers = "osD^v"
        colours = {}
        for j, size in enumerate(speed.get("sizes", [])):
            for r in size.get("rows", []):
                c = colours.setdefault(r["kind"], f"C{len(colours)}")
                label = r["kind"] if r["kind"] not in ax.get_legend_handles_labels()[1] else None
                ax.plot([r["qps"]], [r["recall_at_10"]], markers[j % len(markers)], color=c, label=label)
                n = size["n"]
                ax.annotate(f"{n // 10**6}M" if n >= 10**6 else f"{n // 1000}k", (r["qps"], r["recall_at_10"]),
                            fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        if not colours:
            return False
        ax.set_xscale("log")
        ax.set_xlabel("single-query QPS at the tuned parameter")
        ax.set_ylabel("recall@10 vs exact (fresh queries)")
        return _save(plt, fig, ax, path)
    walk(speed)
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for kind, xs in sorted(pts.items()):
        xs.sort()
        ax.plot([q for q, _ in xs], [r for _, r in xs], "o-", label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("queries per second")
    ax.set_ylabel("recall@10 vs exact")
    return _save(plt, fig, ax, path)


def hostile_section(d: dict) -> list[str]:
    """BENCHMARKS.md lines for ``hostile_index.json`` (``python -m benchmarks.hostile_index``)."""
    s, t = d["summary"], d.get("targets", {})
    head = (f"{s['kinds']} hostile index kinds, {s['commands']} commands (code `{d.get('code')}`): "
            f"**{s['writes_outside']} with writes outside the index, {s['hangs']} hangs, {s['internal_errors']} "
            f"internal errors, {s['items_lost']} items lost, {s.get('memory_kills', 0)} killed past "
            f"{t.get('memory_watchdog_mb')} MB**; peak RSS {s['max_peak_mb']} MB (`{s['max_peak_kind']}`; target "
            f"{t.get('peak_mb')} MB and {t.get('seconds')} s per command, a hang is {t.get('hang_timeout_s')} s). "
            f"{s['passed']} pass; control (a pristine copy) {'passes' if s['control_ok'] else 'FAILS'}. "
            f"Permissions: {d.get('permissions')}.")
    rows = [[k["kind"], k["family"], len(k["steps"]), k["outcome"], f"{k.get('peak_mb') or 0:.0f}",
             f"{k.get('seconds') or 0:.1f}",
             (k["reasons"][0] if k["reasons"] else "").replace("|", "/")[:140]] for k in d["kinds"]]
    return [head, "", table(["kind", "family", "commands", "outcome", "peak MB", "s", "first reason"], rows,
                            "markdown"), ""]


def parity_section(par: dict) -> list[str]:
    """BENCHMARKS.md lines for ``clip_benchmark_parity.json`` (``python -m benchmarks.clip_parity``)."""
    rows = [[task, k, v["kgclip"], v["clip_benchmark"], "-" if v["abs_diff"] is None else f"{v['abs_diff']:.1e}"]
            for task, d in (("retrieval", par.get("retrieval") or {}),
                            ("classification", (par.get("classification") or {}).get("metrics") or {}))
            for k, v in d.items()]
    cls = par.get("classification") or {}
    return ["## kgclip against CLIP_benchmark's own code (`clip_benchmark_parity.json`)", "",
            f"Model `{par['model']}`, clip-benchmark {par.get('clip_benchmark')}, amp off. Retrieval: "
            f"`kgclip bench recall {par.get('dataset')}` (exact, plain queries) beside "
            "`zeroshot_retrieval.evaluate`; classification: `kgclip bench zeroshot` on "
            f"{cls.get('set', '-')} beside `zeroshot_classification.evaluate`, both on the same encoder "
            "(docs/measurements.md says why they can differ).", "",
            table(["task", "metric", "kgclip", "CLIP_benchmark", "abs diff"], rows, "markdown"), ""]


def write_benchmarks_md(out: Path = ROOT / "benchmarks" / "BENCHMARKS.md") -> Path:
    parts = ["# kgclip benchmarks", "",
             "Generated by `make bench` (`python -m benchmarks.run_all`) from `benchmarks/results/*.json`; "
             "do not edit by hand. Quality numbers (recall, mAP) do not depend on machine load; "
             "timings do.", ""]
    for p in sorted(RESULTS.glob("recall*.json")):
        rec = _load(p.name)
        if not rec or rec.get("benchmark") != "recall":
            continue
        h, r = recall_rows(rec)
        parts += [f"## Caption recall@k, exact search vs the built ANN index (`{p.name}`)", "",
                  f"{rec['dataset']}, split `{rec['split']}`: {rec['n_images']} images, "
                  f"{rec['n_captions']} caption "
                  "queries. t2i = text->image (`image_retrieval_recall@k`), i2t = image->text "
                  "(`text_retrieval_recall@k`); ranks are 1-based with pessimistic ties. ANN i2t is measured "
                  "for `--expand none` only.", "", table(h, r, "markdown"), ""]
        png = RESULTS / (p.stem + ".png")
        if _plot_recall(rec, png):
            parts += [f"![recall@k](results/{png.name})", ""]
    cat = _load("category.json")
    for p in sorted(RESULTS.glob("category*.json")):
        c = _load(p.name)
        if not c or c.get("benchmark") != "category":
            continue
        h, r = category_rows(c)
        cw = c.get("concept_weight", "default")
        parts += [f"## Category and hypernym queries, KG expansion (`{p.name}`, concept weight {cw})", "",
                  f"Model `{c['model']}`. " + (
                      "An ImageFolder (`kgclip bench category DIR`): class folders linked to KG entities, "
                      "class, prompt and KG-hypernym queries, an image relevant when its class is at or below "
                      "the query's entity." if any(v.get("root") for v in c["sets"].values()) else
                      "Relevance from labels (Fashion-MNIST classes, emoji categories, "
                      "flickr caption nouns mapped to WordNet hypernyms).") + " Exact search over the whole set.",
                  "", table(h, r, "markdown"), ""]
        png = RESULTS / (p.stem + ".png")
        if _plot_category(c, png):
            parts += [f"![category mAP](results/{png.name})", ""]
    recs = [d for d in (_load(p.name) for p in sorted(RESULTS.glob("recall*.json")))
            if d and d.get("benchmark") == "recall"]
    if recs or cat:
        h, r, text = kg_targets(recs, cat)
        parts += ["## KG expansion against the targets", "",
                  "Targets: category/hypernym mAP +20% relative on at least two sets, and at most 1 point of "
                  "text->image R@10 lost on full-caption queries.", "", table(h, r, "markdown"), "", text, ""]
    par = _load("clip_benchmark_parity.json")
    if par and par.get("benchmark") == "clip_benchmark_parity":
        parts += parity_section(par)
    hostile = _load("hostile_index.json")
    if hostile and hostile.get("benchmark") == "hostile_index":
        parts += ["## Hostile index folders (`hostile_index.json`)", "",
                  "`python -m benchmarks.hostile_index`: each kind mutates a copy of a small `fake:v1` index "
                  "(symlinks out of the folder, FIFOs, size bombs, junk store values, vanished sources, hostile "
                  "KGs and queries) and runs kgclip commands on it; see benchmarks/README.md.", "",
                  *hostile_section(hostile)]
    for p in sorted(RESULTS.glob("learn_*.json")):
        lr = _load(p.name)
        if not lr or lr.get("benchmark") != "learn":
            continue
        h, r = learn_rows(lr)
        ch = lr["chosen"]
        parts += [f"## Trained adapter on lite, stage 1 (`{p.name}`)", "",
                  "Flickr8k standard splits: trained on train.txt, heads and gate chosen on dev.txt (gate: best dev "
                  "R@10 among those losing at most 1 point on every out-of-domain check), test.txt reported once "
                  "per configuration. Δ: points against zero-shot lite on the same queries (plain, no KG "
                  "expansion); tuxpaint = Debian tuxpaint-stamps-default as a caption set, the others mAP. "
                  "flickr-nouns uses flickr8k-1k images, 753 of them in Flickr8k train.", "",
                  f"Chosen: heads `{ch['heads']}` (best epoch {ch['best_epoch']}), gate `{ch['gate']}`.", "",
                  table(h, r, "markdown"), "",
                  "Head settings on dev (adapter alone, text->image):", "",
                  table(["setting", "R@1", "R@5", "R@10", "best epoch", "train s"],
                        [[x["name"], *[_f(x["dev_adapter"][f"R@{k}"]) for k in (1, 5, 10)], x["best_epoch"],
                          f"{x['train_s']:.0f}"] for x in lr["head_search"]], "markdown"), ""]
        tt = lr.get("training_time_s") or {}
        if tt:
            parts += [f"Training time: feature extraction {tt['features_cold']} s (cold, once; cached after), heads "
                      f"{tt['heads']} s ({ch.get('members', 1)} members); {tt.get('note', '')}.", ""]
        ag = lr.get("agreement")
        if ag:
            parts += ["The same test split through `kgclip bench recall` (real indexes, exact search, expand none): "
                      + "; ".join(f"`{m}` t2i R@1/5/10 " + " / ".join(_f(v[f"image_retrieval_recall@{k}"])
                                                                   for k in (1, 5, 10))
                                  + f", i2t R@10 {_f(v['text_retrieval_recall@10'])}"
                                  for m, v in ag.items() if isinstance(v, dict)) + ".", ""]
    others = ["speed.json", *sorted(p.name for p in RESULTS.glob("faiss_*.json")), "build.json",
              "search_quality.json", "query.json", "query_mpnet.json", "kg.json", "encoders.json",
              "encoders_mpnet.json", "lite_tuning.json", "kg_tuning.json"]
    for name in others:
        d = _load(name)
        if d is None:
            continue
        parts += [f"## {name[:-5]}", "", f"Raw results: `results/{name}`.", ""]
        if name in ("lite_tuning.json", "kg_tuning.json"):
            parts += [f"A tuning record: the script that wrote it is retired, its history is in git "
                      f"(`git log -- benchmarks/{name[:-5]}.py`).", ""]
        if name == "speed.json" and d.get("benchmark") == "speed_synthetic":
            parts += [f"`kgclip bench speed` on seeded clustered {d['dim']}-d vectors, {d['queries']} fresh "
                      f"queries, faiss {d['faiss']}, {d['threads']} threads, load {d['load_avg_start']:.1f} at "
                      "the start. `*` marks the type `auto` picks.", "", speed_table(d, "markdown"), ""]
        if name == "build.json":
            parts += ["End-to-end `build_index` rate next to the raw encode rate measured in the same run "
                      "(target 0.80; raw is measured before and after the build, and a big drift between the two "
                      "makes the ratio unreliable); `bound` is what a perfect overlap could reach on this machine "
                      "(see benchmarks/build.py). Memory: a `fake:v1` build of N synthetic images.", "",
                      build_tables(d, "markdown"), ""]
        png = RESULTS / f"{name[:-5]}_recall_qps.png"
        if (name == "speed.json" or name.startswith("faiss_")) and _plot_speed(d, png):
            parts += [f"![recall vs QPS](results/{name[:-5]}_recall_qps.png)", ""]
    out.write_text("\n".join(parts).rstrip() + "\n")
    return out


if __name__ == "__main__":
    print(write_benchmarks_md(), file=sys.stderr)
