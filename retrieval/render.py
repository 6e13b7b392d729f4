"""Rendering for people (table) and pipes (json, jsonl, paths): pure functions from result objects to
text; the CLI prints what they return.

- search results (:func:`render`) and image -> caption rows (:func:`render_captions`): ``FORMATS``;
  with ``--explain`` the linked entities, the expansions with their weights, and under each hit the
  lines :mod:`retrieval.query.explain` built;
- KG links, expansion plans and graph info (``kgclip kg link|expand|info``): table or json;
- an index's info (``kgclip info``): table or json.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

from .choices import RESULT_FORMATS
from .types import QueryPlan, Results

FORMATS = RESULT_FORMATS  # search and caption output (--format)
TABLE_OR_JSON = ("table", "json")  # kg link/expand/info, info


def _safe(s: str) -> str:
    """Control characters (newlines, terminal escapes) in file names or queries, shown escaped."""
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in s)


def _short(path: str | None, width: int = 60) -> str:
    if not path:
        return "-"
    path = _safe(path)
    try:
        rel = os.path.relpath(path)
        if not rel.startswith(".." + os.sep) and len(rel) < len(path):
            path = rel
    except ValueError:
        pass
    return path if len(path) <= width else "..." + path[-(width - 3):]


def _clip(s: str | None, width: int) -> str:
    if not s:
        return ""
    s = _safe(" ".join(s.split()))
    return s if len(s) <= width else s[: width - 3] + "..."


def _linked_line(link: Any) -> str:
    if not isinstance(link, dict):
        return str(link)
    span = link.get("span") or link.get("text") or ""
    name = link.get("name") or link.get("entity") or ""
    eid = link.get("entity_id") or link.get("id") or ""
    gloss = _clip(link.get("gloss"), 60)
    score = link.get("score")
    out = f"{span!r} -> {name} [{eid}]" if span else f"{name} [{eid}]"
    if score is not None:
        out += f" (score {float(score):.2f})"
    if gloss:
        out += f": {gloss}"
    return out


def plan_lines(res: Results, max_expansions: int = 8) -> list[str]:
    """How the query was read: mode, linked entities, expansions with weights."""
    plan = res.plan
    if plan is None:
        return []
    lines = [f"expansion: {plan.mode}"]
    if plan.mode == "none":
        return lines
    if plan.linked:
        lines.append("linked:")
        lines += [f"  {_linked_line(link)}" for link in plan.linked]
    else:
        lines.append("linked: (no KG entity found in the query)")
    exps = list(plan.expansions or [])
    if exps:
        lines.append(f"expanded with {len(exps)} concept{'s' if len(exps) != 1 else ''}:")
        for e in exps[:max_expansions]:
            path = " -> ".join(e.path) if e.path else f"{e.relation} {e.name}"
            lines.append(f"  {path}  (w={e.weight:.2f})")
        if len(exps) > max_expansions:
            lines.append(f"  ... {len(exps) - max_expansions} more")
    return lines


def render_table(results: Sequence[Results], explain: bool = False, show_query: bool | None = None) -> str:
    """Human output: one block per query, ranked hits with score, path and first caption."""
    if show_query is None:
        show_query = len(results) > 1 or explain
    out: list[str] = []
    for n, res in enumerate(results):
        if n:
            out.append("")
        if show_query:
            out.append(f"query: {_safe(str(res.query))}")
        if explain:
            out += plan_lines(res)
        if not res.hits:
            out.append("  (no results)")
            continue
        pw = min(60, max(len(_short(h.path)) for h in res.hits))
        for h in res.hits:
            cap = _clip(h.caption, 50)
            line = f"{h.rank:>3}  {h.score:7.4f}  {_short(h.path):<{pw}}"
            if cap:
                line += f"  {cap}"
            out.append(line.rstrip())
            if explain:
                out += [f"       {e}" for e in h.explanation]
    return "\n".join(out)


def hit_records(res: Results, explain: bool = False) -> Iterable[dict[str, Any]]:
    for h in res.hits:
        rec = {"query": res.query, "rank": h.rank, "score": round(float(h.score), 6), "path": h.path,
               "id": h.id, "caption": h.caption, "metadata": h.metadata}
        if explain:
            rec["explanation"] = list(h.explanation)
        yield rec


def render(results: Sequence[Results], fmt: str = "table", explain: bool = False, batch: bool = False) -> str:
    """Text for ``--format``: ``table``; ``json`` (one object, or a list for a batch); ``jsonl`` (one
    object per hit with query, rank, score, path, id, caption, metadata); ``paths`` (one per line)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if fmt == "table":
        return render_table(results, explain)
    if fmt == "paths":
        return "\n".join(h.path or "" for r in results for h in r.hits)
    if fmt == "jsonl":
        return "\n".join(
            json.dumps(rec, ensure_ascii=False, default=str) for r in results for rec in hit_records(r, explain)
        )
    objs = []
    for r in results:
        d = r.to_dict()
        if not explain:
            for h in d["hits"]:
                h.pop("explanation", None)
        objs.append(d)
    return json.dumps(objs if batch else objs[0], ensure_ascii=False, indent=2, default=str)


def render_captions(query: str, rows: Sequence[dict[str, Any]], fmt: str = "table") -> str:
    """Image -> text results (:meth:`Searcher.search_captions` rows): ``table`` (rank, score, caption,
    the image it belongs to), ``json``, ``jsonl`` (one object per caption) or ``paths`` (the captions,
    one per line)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    recs = [{"query": query, "rank": r["rank"], "score": round(float(r["score"]), 6), "caption": r["caption"],
             "path": r.get("path"), "id": r.get("id")} for r in rows]
    if fmt == "json":
        return json.dumps({"query": query, "captions": recs}, ensure_ascii=False, indent=2, default=str)
    if fmt == "jsonl":
        return "\n".join(json.dumps(rec, ensure_ascii=False, default=str) for rec in recs)
    if fmt == "paths":
        return "\n".join(_safe(" ".join(str(r["caption"]).split())) for r in recs)
    if not recs:
        return "  (no captions)"
    return "\n".join(f"{r['rank']:>3}  {r['score']:7.4f}  {_clip(r['caption'], 70)}  [{_short(r['path'], 40)}]"
                     for r in recs)



def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2, default=str)


# -- KG: links, expansion plans, graph info -------------------------------------------------------
def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def links_table(links: list[dict[str, Any]]) -> str:
    if not links:
        return "nothing linked"
    rows = [("span", "entity", "name", "score", "gloss")]
    rows += [(lk["span"], lk["entity_id"], lk["name"], f"{lk['score']:.2f}", _cut(lk["gloss"], 60))
             for lk in links]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}  {r[4]}" for r in rows)


def render_links(links: list[dict[str, Any]], fmt: str = "table") -> str:
    return _dumps(links) if fmt == "json" else links_table(links)


def _path_text(path: Sequence[str]) -> str:
    return " -> ".join(path)


def plan_text_lines(plan: QueryPlan) -> list[str]:
    """Linked entities with sense and gloss, then the expansions with weights (``kgclip kg expand``)."""
    lines = []
    for lk in plan.linked:
        lines.append(f"linked {lk['span']!r} -> {lk['entity_id']} {lk['name']} (score {lk['score']:.2f}): "
                     f"{lk['gloss']}")
    for e in plan.expansions:
        lines.append(f"  {e.weight:.3f}  {_path_text(e.path)}  [{e.entity_id}]")
    if not plan.linked:
        lines.append("nothing linked: the query is searched unchanged")
    return lines


def plan_table(plan: QueryPlan, weights=None) -> str:
    lines = plan_text_lines(plan)
    if weights is not None:
        lines.append(f"query vectors: {len(weights)} (mode {plan.mode}); weights "
                     + " ".join(f"{w:.3f}" for w in weights))
    return "\n".join(lines)


def plan_dict(plan: QueryPlan, weights=None) -> dict[str, Any]:
    d = plan.to_dict()
    for e in d["expansions"]:
        e["path_text"] = _path_text(e["path"])
    if weights is not None:
        d["vector_weights"] = [round(float(w), 6) for w in weights]
    return d


def render_plan(plan: QueryPlan, weights=None, fmt: str = "table") -> str:
    return _dumps(plan_dict(plan, weights)) if fmt == "json" else plan_table(plan, weights)


def kg_info_table(info: dict[str, Any]) -> str:
    lines = [f"name:        {info['name']}", f"path:        {info['path']}",
             f"entities:    {info['entities']}", f"names:       {info['names']}",
             f"size:        {info['size_bytes'] / 1e6:.2f} MB", f"fingerprint: {info['fingerprint']}"]
    if info.get("source"):
        lines.append(f"source:      {info['source']}")
    if info.get("licence"):
        lines.append(f"licence:     {info['licence']} (in the graph directory)")
    lines.append("relations (stored edges; inverses are walked too):")
    for r, n in info["edges"].items():
        lines.append(f"  {r:<20} {n:>8}")
    if "load_ms" in info:
        lines.append(f"load time:   {info['load_ms']:.0f} ms")
    return "\n".join(lines)


def render_kg_info(info: dict[str, Any], fmt: str = "table") -> str:
    return _dumps(info) if fmt == "json" else kg_info_table(info)


# -- an index's info ------------------------------------------------------------------------------
def index_info_rows(d: dict[str, Any]) -> list[tuple[str, str]]:
    """``kgclip info``'s table rows from :func:`indexer.index_info`'s dict."""
    live = d["live_counts"]
    tm = d.get("text_model")
    prof = d["model"].get("profile")
    rows = [
        ("index", d["path"]),
        ("format", f"{d['format']} v{d['format_version']} (kgclip {d.get('kgclip_version')})"),
        ("state", f"{d.get('store_state')} (generation {d['store_generation']})" + (", locked by a writer"
                                                                                 if d["locked"] else "")),
        ("model", f"{d['model']['spec']} ({d['model']['dim']}-d, {d['model'].get('fingerprint')})"),
        ("text model", f"{tm['spec']} ({tm['dim']}-d)" if tm else "none (no caption index)"),
        *([("concepts", f"profiles: {prof['top']} classes per image at temperature {prof['temperature']:g}")]
          if prof else []),
        ("items", f"{live['items']} ({live['paths']} paths, {live['captions']} captions)"),
        ("skipped files", str(live["failures"])),
    ]
    for kind, f in sorted(d.get("faiss", {}).items()):
        fresh = "fresh" if f.get("fresh") else "stale: derived again on open"
        params = " " + ", ".join(f"{k}={v}" for k, v in f["params"].items()) if f.get("params") else ""
        rows.append((f"faiss {kind}", f"{f.get('factory')}{params} n={f.get('n')} "
                                      f"recall@10={f.get('recall_at_10')} ({fresh})"))
    reasons = (d.get("failures") or {}).get("by_reason") or {}
    if reasons:
        rows.append(("skip reasons", "; ".join(f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))))
    t = d.get("timings") or {}
    if t:
        rows.append(("last build", f"{t.get('total', 0):.1f} s (encode {t.get('encode', 0):.1f} s, "
                                   f"decode wait {t.get('decode_wait', 0):.1f} s, write {t.get('write', 0):.1f} s)"))
    rows.append(("sources", ", ".join(d.get("sources") or [])))
    rows.append(("disk", f"{d['disk_bytes'] / 2**20:.1f} MiB"))
    return rows


def render_index_info(d: dict[str, Any], fmt: str = "table") -> str:
    """``kgclip info``: the dict as json, or one ``key  value`` line per row."""
    if fmt == "json":
        return _dumps(d)
    rows = index_info_rows(d)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
