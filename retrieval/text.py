"""Plain-text helpers shared by the query side, the knowledge graph and every text output: white-space
folding, query cleaning (a length cap, undecodable bytes), the content words of a query (articles and
"a photo of" filler left out), and :func:`safe_text`, the one sanitiser for strings shown to people."""

from __future__ import annotations

import re
from typing import Any

from .errors import QueryError

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
