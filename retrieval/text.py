"""Plain-text helpers shared by the query side, the knowledge graph and every text output: white-space
folding, query cleaning (a length cap, undecodable bytes), the content words of a query (articles and
"a photo of" filler left out), :func:`safe_text`, the one sanitiser for strings shown to people, and the
one JSONL row reader (build manifests, caption datasets)."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator

from .errors import QueryError, SourceError

# words that say nothing about what is in a picture ("a photo of a dog" has one content word)
FILLER = frozenset("a an the some any of photo photos picture pictures image images".split())
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters: digits and "_" split words
# the longest query accepted (after white space is folded): CLIP-style text towers read 77 tokens, so
# longer text only costs time (a 1 MB query with --expand multi took 55 s before this cap)
MAX_QUERY_CHARS = 1000
_SURROGATE = re.compile("[\ud800-\udfff]")


def safe_text(s: object) -> str:
    """``s`` for a terminal: every non-printable character (C0/C1 controls such as ESC, CSI and BEL,
    newlines, bidi overrides and other format characters, lone surrogates) shown as its Python escape,
    so no string from an index, a KG or a file name can move the cursor, retitle or recolour the
    terminal or reorder what is shown. Plain spaces stay."""
    s = str(s)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in s)


def cut(s: object, width: int) -> str:
    """``s`` cut to ``width`` characters (an ellipsis marks the cut)."""
    s = str(s)
    return s if len(s) <= width else s[: max(width - 1, 0)] + "…"


def clip(s: object, width: int) -> str:
    """:func:`safe_text` of ``s`` cut to ``width`` characters (an ellipsis marks the cut)."""
    return cut(safe_text(s), width)


def decodable(text: str) -> str:
    """``text`` with the lone surrogates that stand for undecodable bytes (``sys.argv`` holds a
    non-UTF-8 argument that way) replaced by U+FFFD, so it can be printed and encoded."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes
        return _SURROGATE.sub("\ufffd", text)


def fold_space(text: object) -> str:
    """``text`` with every run of white space (newlines, tabs) folded to one space, trimmed."""
    return " ".join(str(text).split())


def clean_text(text: Any) -> str | None:
    """A text query with its white space folded and undecodable bytes replaced; None stays None; an
    empty, non-string or too long (over :data:`MAX_QUERY_CHARS`) query is a :class:`QueryError`."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise QueryError(f"a text query must be a string, not {type(text).__name__}")
    t = fold_space(decodable(text))
    if not t:
        raise QueryError("empty query: give some words to search for (or --image PATH)")
    if len(t) > MAX_QUERY_CHARS:
        raise QueryError(f"query too long: {len(t)} characters, the limit is {MAX_QUERY_CHARS}")
    return t


def content_words(text: str | None) -> list[str]:
    """The lower-cased words of ``text`` that are not :data:`FILLER` ("a photo of a dog" -> ["dog"])."""
    return [w for w in _WORD.findall((text or "").lower()) if w not in FILLER]


def is_short_query(text: str | None, max_words: int) -> bool:
    """Whether ``text`` has 1 to ``max_words`` content words: a category-like query ("a mammal")
    rather than a caption."""
    return 0 < len(content_words(text)) <= max_words


def json_depth(obj: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = list(o.values())
        if isinstance(o, list):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return depth


class TooDeep(ValueError):
    """JSON nested deeper than allowed."""


def loads_bounded(text: str | bytes, max_depth: int) -> Any:
    """``json.loads`` that raises :class:`TooDeep` for nesting past ``max_depth`` (json's own
    RecursionError included), e.g. for one row of a manifest: that row is skipped, the build goes on."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise TooDeep(f"JSON nested more than {max_depth} levels deep") from None
    if json_depth(obj) > max_depth:
        raise TooDeep(f"JSON nested more than {max_depth} levels deep")
    return obj


MAX_ROW_DEPTH = 32  # nesting of one manifest row or webdataset .json member (deeper: that item is skipped)


def read_jsonl_rows(path: str | os.PathLike, skip_deep: bool = False) -> Iterator[tuple[int, dict | TooDeep]]:
    """(line number, object) for each non-blank line of a JSONL file; one-line SourceErrors
    naming file:line for malformed JSON, non-object lines and non-UTF-8 bytes. A line nested deeper
    than :data:`MAX_ROW_DEPTH` is a SourceError too, or with ``skip_deep`` a :class:`TooDeep` in the
    object's place (a build skips that row and goes on)."""
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = loads_bounded(line, MAX_ROW_DEPTH)
                except json.JSONDecodeError as e:
                    raise SourceError(f"{path}:{lineno}: malformed JSON line: {e.msg}") from None
                except TooDeep as e:
                    if not skip_deep:
                        raise SourceError(f"{path}:{lineno}: {e}") from None
                    yield lineno, e
                    continue
                if not isinstance(row, dict):
                    raise SourceError(f"{path}:{lineno}: each line must be a JSON object")
                yield lineno, row
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 JSONL ({e.reason} at byte {e.start})") from None
