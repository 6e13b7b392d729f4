"""Rendering search results for people (table) and pipes (json, jsonl, paths).

Pure functions from :class:`~retrieval.types.Results` to text; the CLI prints
what they return. Explanations (``--explain``) show the linked entities, the
expansions with their weights, and under each hit which query vector or KG
path matched it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

from .types import Results

FORMATS = ("table", "json", "jsonl", "paths")


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

