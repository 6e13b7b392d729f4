"""Rendering for people (table) and pipes (json, jsonl, paths): pure functions from result objects to
text; the CLI prints what they return.

- search results (:func:`render`) and image -> caption rows (:func:`render_captions`): ``FORMATS``;
  with ``--explain`` the linked entities, the expansions with their weights, and under each hit the
  lines :mod:`retrieval.query.explain` built;
- KG links, expansion plans and graph info (``kgclip kg link|expand|info``): table or json;
- an index's info (``kgclip info``): table or json.

Every string an index, a KG or a file name supplies goes through :func:`retrieval.text.safe_text` in
text output (no terminal escapes reach the terminal, even through a pipe), and every JSON output goes
through :func:`to_json` (strict JSON: NaN and infinities become null). Explanations are capped
(:data:`EXPLAIN_LINE_CHARS` per line, :data:`EXPLAIN_HIT_LINES` per hit, :data:`EXPLAIN_LINES` per query)
and say where they were cut.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Iterable, Iterator, Sequence

from .choices import RESULT_FORMATS
from .text import clip, safe_text
from .types import QueryPlan, Results

FORMATS = RESULT_FORMATS  # search and caption output (--format)
TABLE_OR_JSON = ("table", "json")  # kg link/expand/info, info
EXPLAIN_LINE_CHARS = 200  # one explanation line (KG names can be any length)
EXPLAIN_HIT_LINES = 12  # explanation lines under one hit
EXPLAIN_LINES = 400  # explanation lines for one query (its plan and all its hits)
EXPLAIN_LINKS = 20  # linked entities listed for one query

_safe = safe_text  # the one sanitiser (retrieval.text); short name for this module's many uses
# characters a strict JSON writer may leave raw but a terminal or a strict parser must not get: DEL and
# the C1 controls (0x9b is CSI), bidi overrides and isolates, lone surrogates (written as \u escapes)
_JSON_RAW = re.compile("[\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (numpy's too) replaced by None, containers walked."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if type(obj).__module__ == "numpy":
        return _finite(obj.tolist()) if hasattr(obj, "tolist") else obj
    return obj


def to_json(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON for every ``--format json``/``jsonl`` output: NaN and infinities (from Parquet
    metadata, say) become null, numpy values become numbers, anything else unknown its ``str``; DEL,
    C1 controls, bidi controls and lone surrogates are written as ``\\u`` escapes."""
    text = json.dumps(_finite(obj), ensure_ascii=False, indent=indent, default=str, allow_nan=False)
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


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
    s = _safe(" ".join(str(s).split()))
    return s if len(s) <= width else s[: width - 3] + "..."


def _linked_line(link: Any) -> str:
    if not isinstance(link, dict):
        return clip(link, EXPLAIN_LINE_CHARS)
    span = clip(link.get("span") or link.get("text") or "", 60)
    name = clip(link.get("name") or link.get("entity") or "", 60)
    eid = clip(link.get("entity_id") or link.get("id") or "", 60)
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
        lines += [f"  {_linked_line(link)}" for link in plan.linked[:EXPLAIN_LINKS]]
        if len(plan.linked) > EXPLAIN_LINKS:
            lines.append(f"  ... {len(plan.linked) - EXPLAIN_LINKS} more (truncated)")
    else:
        lines.append("linked: (no KG entity found in the query)")
    exps = list(plan.expansions or [])
    if exps:
        lines.append(f"expanded with {len(exps)} concept{'s' if len(exps) != 1 else ''}:")
        for e in exps[:max_expansions]:
            path = " -> ".join(e.path) if e.path else f"{e.relation} {e.name}"
            lines.append(f"  {clip(path, EXPLAIN_LINE_CHARS)}  (w={e.weight:.2f})")
        if len(exps) > max_expansions:
            lines.append(f"  ... {len(exps) - max_expansions} more")
    return lines


def explanation_lines(lines: Sequence[str], budget: int = EXPLAIN_HIT_LINES) -> list[str]:
    """One hit's explanation for a terminal: sanitised, each line cut to :data:`EXPLAIN_LINE_CHARS`,
    at most ``budget`` lines (the last one then says how many were left out)."""
    lines = list(lines)
    budget = max(budget, 1)
    out = [clip(e, EXPLAIN_LINE_CHARS) for e in lines[:budget]]
    if len(lines) > budget:
        out[-1] = f"... {len(lines) - budget + 1} more explanation lines (truncated)"
    return out


def _result_block(res: Results, explain: bool, show_query: bool) -> list[str]:
    """One query's lines: its header, with ``explain`` its plan, its hits (and why each matched)."""
    out: list[str] = []
    if show_query:
        out.append(f"query: {_safe(str(res.query))}")
    budget = EXPLAIN_LINES
    if explain:
        plan = plan_lines(res)
        out += plan
        budget -= len(plan)
    if not res.hits:
        out.append("  (no results)")
        return out
    pw = min(60, max(len(_short(h.path)) for h in res.hits))
    cut = 0
    for h in res.hits:
        cap = _clip(h.caption, 50)
        line = f"{h.rank:>3}  {h.score:7.4f}  {_short(h.path):<{pw}}"
        if cap:
            line += f"  {cap}"
        out.append(line.rstrip())
        if explain and h.explanation:
            if budget <= 0:
                cut += 1
                continue
            lines = explanation_lines(h.explanation, min(EXPLAIN_HIT_LINES, budget))
            budget -= len(lines)
            out += [f"       {e}" for e in lines]
    if cut:
        out.append(f"  (explanation truncated: {cut} more hits not explained, over {EXPLAIN_LINES} lines)")
    return out


def render_table(results: Sequence[Results], explain: bool = False, show_query: bool | None = None) -> str:
    """Human output: one block per query, ranked hits with score, path and first caption."""
    if show_query is None:
        show_query = len(results) > 1 or explain
    out: list[str] = []
    for n, res in enumerate(results):
        if n:
            out.append("")
        out += _result_block(res, explain, show_query)
    return "\n".join(out)


def hit_records(res: Results, explain: bool = False) -> Iterable[dict[str, Any]]:
    for h in res.hits:
        rec = {"query": res.query, "rank": h.rank, "score": _round(h.score), "path": h.path,
               "id": h.id, "caption": h.caption, "metadata": h.metadata}
        if explain:
            rec["explanation"] = list(h.explanation)
        yield rec


def _round(score: Any) -> float:
    return round(float(score), 6)


def _result_dict(r: Results, explain: bool) -> dict[str, Any]:
    d = r.to_dict()
    if not explain:
        for h in d["hits"]:
            h.pop("explanation", None)
    return d


def render(results: Sequence[Results], fmt: str = "table", explain: bool = False, batch: bool = False) -> str:
    """Text for ``--format``: ``table``; ``json`` (one object, or a list for a batch); ``jsonl`` (one
    object per hit with query, rank, score, path, id, caption, metadata); ``paths`` (one per line)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if fmt == "table":
        return render_table(results, explain)
    if fmt == "paths":  # escaped too: a name holding ESC or a newline is shown as \x1b or \n (jsonl: exact)
        return "\n".join(_safe(h.path or "") for r in results for h in r.hits)
    if fmt == "jsonl":
        return "\n".join(to_json(rec, indent=None) for r in results for rec in hit_records(r, explain))
    objs = [_result_dict(r, explain) for r in results]
    return to_json(objs if batch else objs[0])


def render_stream(results: Iterable[Results], fmt: str = "table", explain: bool = False) -> Iterator[str]:
    """A batch's output piece by piece, one piece per query as its results arrive (``kgclip search <
    queries.txt`` prints while it reads), to be printed one per line. They hold what the batch's
    :func:`render` output holds, except that a table names every query even when there is only one,
    and a ``json`` list is written comma-first. A query without output (no hits in ``jsonl`` or
    ``paths``) gives no piece."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    first = True
    for r in results:
        if fmt == "json":  # a list, written comma-first so that no piece waits for the next one
            body = "\n".join("  " + ln for ln in to_json(_result_dict(r, explain)).splitlines())
            yield "[\n" + body if first else ", " + body.lstrip()
        elif fmt == "table":
            yield ("" if first else "\n") + "\n".join(_result_block(r, explain, True))
        else:
            text = render([r], fmt, explain)
            if not text:
                continue
            yield text
        first = False
    if fmt == "json":
        yield "[]" if first else "]"


def render_captions(query: str, rows: Sequence[dict[str, Any]], fmt: str = "table") -> str:
    """Image -> text results (:meth:`Searcher.search_captions` rows): ``table`` (rank, score, caption,
    the image it belongs to), ``json``, ``jsonl`` (one object per caption) or ``paths`` (the captions,
    one per line)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    recs = [{"query": query, "rank": r["rank"], "score": _round(r["score"]), "caption": r["caption"],
             "path": r.get("path"), "id": r.get("id")} for r in rows]
    if fmt == "json":
        return to_json({"query": query, "captions": recs})
    if fmt == "jsonl":
        return "\n".join(to_json(rec, indent=None) for rec in recs)
    if fmt == "paths":
        return "\n".join(_safe(" ".join(str(r["caption"]).split())) for r in recs)
    if not recs:
        return "  (no captions)"
    return "\n".join(f"{r['rank']:>3}  {r['score']:7.4f}  {_clip(r['caption'], 70)}  [{_short(r['path'], 40)}]"
                     for r in recs)



def _dumps(obj) -> str:
    return to_json(obj)


# -- KG: links, expansion plans, graph info -------------------------------------------------------
def links_table(links: list[dict[str, Any]]) -> str:
    if not links:
        return "nothing linked"
    rows = [("span", "entity", "name", "score", "gloss")]
    rows += [(clip(lk["span"], 60), clip(lk["entity_id"], 60), clip(lk["name"], 60), f"{lk['score']:.2f}",
              clip(lk["gloss"], 60)) for lk in links]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}  {r[4]}" for r in rows)


def render_links(links: list[dict[str, Any]], fmt: str = "table") -> str:
    return _dumps(links) if fmt == "json" else links_table(links)


def _path_text(path: Sequence[str]) -> str:
    return " -> ".join(path)


def plan_text_lines(plan: QueryPlan) -> list[str]:
    """Linked entities with sense and gloss, then the expansions with weights (``kgclip kg expand``);
    KG strings sanitised and cut (:data:`EXPLAIN_LINE_CHARS`)."""
    lines = []
    for lk in plan.linked:
        lines.append(f"linked {clip(lk['span'], 60)!r} -> {clip(lk['entity_id'], 60)} {clip(lk['name'], 60)} "
                     f"(score {lk['score']:.2f}): {clip(lk['gloss'], EXPLAIN_LINE_CHARS)}")
    for e in plan.expansions:
        lines.append(f"  {e.weight:.3f}  {clip(_path_text(e.path), EXPLAIN_LINE_CHARS)}  [{clip(e.entity_id, 60)}]")
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
    lines = [f"name:        {_safe(info['name'])}", f"path:        {_safe(info['path'])}",
             f"entities:    {info['entities']}", f"names:       {info['names']}",
             f"size:        {info['size_bytes'] / 1e6:.2f} MB", f"fingerprint: {info['fingerprint']}"]
    if info.get("source"):
        lines.append(f"source:      {_safe(info['source'])}")
    if info.get("licence"):
        lines.append(f"licence:     {_safe(info['licence'])} (in the graph directory)")
    lines.append("relations (stored edges; inverses are walked too):")
    for r, n in info["edges"].items():
        lines.append(f"  {clip(r, 60):<20} {n:>8}")
    if "load_ms" in info:
        lines.append(f"load time:   {info['load_ms']:.0f} ms")
    return "\n".join(lines)


def render_kg_info(info: dict[str, Any], fmt: str = "table") -> str:
    return _dumps(info) if fmt == "json" else kg_info_table(info)


# -- an index's info ------------------------------------------------------------------------------
def _concepts_row(model: dict) -> list[tuple[str, str]]:
    """The line on what lite grounding reads: concept profiles, or the top 5 of an older index."""
    prof = model.get("profile")
    if prof:
        return [("concepts", f"profiles: {prof['top']} classes per image at temperature {prof['temperature']:g}")]
    if str(model.get("spec", "")).startswith("lite"):
        return [("concepts", "top 5 classes per image (built before profiles; `kgclip build --restart` adds them)")]
    return []


def index_info_rows(d: dict[str, Any]) -> list[tuple[str, str]]:
    """``kgclip info``'s table rows from :func:`indexer.index_info`'s dict."""
    live = d["live_counts"]
    tm = d.get("text_model")
    rows = [
        ("index", d["path"]),
        ("format", f"{d['format']} v{d['format_version']} (kgclip {d.get('kgclip_version')})"),
        ("state", f"{d.get('store_state')} (generation {d['store_generation']})" + (", locked by a writer"
                                                                                 if d["locked"] else "")),
        ("model", f"{d['model']['spec']} ({d['model']['dim']}-d, {d['model'].get('fingerprint')})"),
        ("text model", f"{tm['spec']} ({tm['dim']}-d)" if tm else "none (no caption index)"),
        *_concepts_row(d["model"]),
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
    return "\n".join(f"{k:<{width}}  {_safe(v)}" for k, v in rows)
