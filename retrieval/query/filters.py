"""Metadata filters on stored item columns, parsed from ``--filter`` strings.

Syntax: ``FIELD OP VALUE``; several filters must all hold (AND); ``|`` in the
value means any of the alternatives (OR)::

    width>=500            height<1000          size<=2000000
    meta.camera=Canon     meta.camera=Canon|Nikon
    path~*/holidays/*     (glob; ``=`` with * ? [ in the value is a glob too)
    caption~*dog*         (any of the item's captions)
    concept=n02084071     (lite indexes: one of the image's WordNet concepts)
    id!=3

OP is one of ``= != < <= > >= ~``. Numbers compare as numbers when both sides
parse as numbers, otherwise as strings. An item without the field fails the
filter (except for ``!=``, which it passes).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Iterable

from ..errors import UsageError

OPS = ("!=", "<=", ">=", "=", "<", ">", "~")
FIELDS = ("id", "path", "size", "mtime", "width", "height", "sha256", "caption", "concept", "meta.<column>")
_RE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(!=|<=|>=|==|=|<|>|~)\s*(.*?)\s*$", re.S)
_GLOB = re.compile(r"[*?\[]")


class FilterError(UsageError):
    """A ``--filter`` string cannot be parsed (exit code 2)."""


def _num(x: Any) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class Filter:
    field: str
    op: str
    values: tuple[str, ...]
    text: str = ""

    def _item_values(self, item: dict) -> list[Any]:
        f = self.field
        if f.startswith("meta."):
            meta = item.get("meta") or {}
            key = f[5:]
            return [meta[key]] if key in meta and meta[key] is not None else []
        if f == "caption":
            return list(item.get("captions") or [])
        if f == "concept":
            return [c[0] for c in item.get("concepts") or []]
        if f == "path":
            return [item.get("path")] + list(item.get("aliases") or []) if item.get("path") else []
        v = item.get(f)
        return [] if v is None else [v]

    def _match_one(self, have: Any, want: str) -> bool:
        op = self.op
        if op == "~" or (op in ("=", "!=") and isinstance(have, str) and _GLOB.search(want)):
            hit = fnmatch.fnmatchcase(str(have), want)
            return hit if op != "!=" else not hit
        hn, wn = _num(have), _num(want)
        if hn is not None and wn is not None:
            a, b = hn, wn
        else:
            a, b = str(have), want
        if op == "=":
            return a == b
        if op == "!=":
            return a != b
        if type(a) is not type(b):  # pragma: no cover - both numbers or both strings above
            return False
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]

    def __call__(self, item: dict) -> bool:
        have = self._item_values(item)
        if self.op == "!=":
            return all(all(self._match_one(h, w) for w in self.values) for h in have)
        return any(self._match_one(h, w) for h in have for w in self.values)

    def __str__(self) -> str:
        return self.text or f"{self.field}{self.op}{'|'.join(self.values)}"


def parse_filter(text: str) -> Filter:
    """Parse one ``FIELD OP VALUE`` string; raises :class:`FilterError` with the reason."""
    if not isinstance(text, str) or not text.strip():
        raise FilterError("empty --filter: expected FIELD OP VALUE, e.g. width>=500 or meta.camera=Canon")
    m = _RE.match(text)
    if not m:
        raise FilterError(
            f"bad --filter {text!r}: expected FIELD OP VALUE with OP one of {' '.join(OPS)} (e.g. width>=500)"
        )
    field, op, value = m.group(1), m.group(2), m.group(3)
    op = "=" if op == "==" else op
    field_l = field.lower()
    if field_l in ("captions",):
        field_l = "caption"
    if field_l in ("concepts",):
        field_l = "concept"
    if not (field_l.startswith("meta.") and len(field_l) > 5) and field_l not in FIELDS:
        raise FilterError(f"bad --filter {text!r}: unknown field {field!r}; fields are {', '.join(FIELDS)}")
    if field_l.startswith("meta."):
        field_l = "meta." + field[5:]  # keep the user's column case
    if value == "":
        raise FilterError(f"bad --filter {text!r}: no value after {op!r}")
    if value[0] in "<>=!" and op != "~":
        raise FilterError(f"bad --filter {text!r}: value {value!r} starts with an operator")
    values = tuple(v.strip().strip("'\"") for v in value.split("|"))
    if any(v == "" for v in values):
        raise FilterError(f"bad --filter {text!r}: empty alternative in {value!r}")
    if op in ("<", "<=", ">", ">=") and field_l in ("width", "height", "size", "mtime", "id"):
        bad = [v for v in values if _num(v) is None]
        if bad:
            raise FilterError(f"bad --filter {text!r}: {field} {op} needs a number, not {bad[0]!r}")
    return Filter(field_l, op, values, text.strip())


def parse_filters(texts: Iterable[str] | str | None) -> list[Filter]:
    if texts is None:
        return []
    if isinstance(texts, str):
        texts = [texts]
    out = []
    for t in texts:
        out.append(t if isinstance(t, Filter) else parse_filter(t))
    return out


def matches(item: dict | None, filters: Iterable[Filter]) -> bool:
    """True when ``item`` (an Index.get() dict) passes every filter."""
    if item is None:
        return False
    return all(f(item) for f in filters)
