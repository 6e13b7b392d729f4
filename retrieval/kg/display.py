"""How the `kgclip kg` commands show links, expansion plans and graph info: text tables for people and
JSON-ready dicts (the CLI only calls these). Search results are rendered elsewhere (the query side)."""

from __future__ import annotations

from typing import Any

from ..types import QueryPlan


def format_path(path: list[str]) -> str:
    """["dog", "hyponym", "puppy"] -> "dog -> hyponym -> puppy"."""
    return " -> ".join(path)


def plan_lines(plan: QueryPlan) -> list[str]:
    """Human-readable lines: linked entities with sense and gloss, then expansions with weights."""
    lines = []
    for lk in plan.linked:
        lines.append(f"linked {lk['span']!r} -> {lk['entity_id']} {lk['name']} (score {lk['score']:.2f}): "
                     f"{lk['gloss']}")
    for e in plan.expansions:
        lines.append(f"  {e.weight:.3f}  {format_path(e.path)}  [{e.entity_id}]")
    if not plan.linked:
        lines.append("nothing linked: the query is searched unchanged")
    return lines


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def links_table(links: list[dict[str, Any]]) -> str:
    if not links:
        return "nothing linked"
    rows = [("span", "entity", "name", "score", "gloss")]
    rows += [(lk["span"], lk["entity_id"], lk["name"], f"{lk['score']:.2f}", _short(lk["gloss"], 60))
             for lk in links]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}  {r[4]}" for r in rows)


def plan_table(plan: QueryPlan, weights=None) -> str:
    lines = plan_lines(plan)
    if weights is not None:
        lines.append(f"query vectors: {len(weights)} (mode {plan.mode}); weights "
                     + " ".join(f"{w:.3f}" for w in weights))
    return "\n".join(lines)


def plan_dict(plan: QueryPlan, weights=None) -> dict[str, Any]:
    d = plan.to_dict()
    for e in d["expansions"]:
        e["path_text"] = format_path(e["path"])
    if weights is not None:
        d["vector_weights"] = [round(float(w), 6) for w in weights]
    return d


def info_table(info: dict[str, Any]) -> str:
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
