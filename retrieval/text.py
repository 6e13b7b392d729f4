"""Query text: cleaning and content words (shared by the searcher and the KG's expansion policy)."""

from __future__ import annotations

import re
from typing import Any

from .errors import QueryError

# articles and "a photo of" filler: not content ("a photo of a dog" has one content word)
FILLER = frozenset("a an the some any of photo photos picture pictures image images".split())
_WORD = re.compile(r"[^\W\d_]+")


def clean_text(text: Any) -> str | None:
    """``text`` with its whitespace collapsed; None stays None; an empty or non-string query is a
    :class:`QueryError`."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise QueryError(f"a text query must be a string, not {type(text).__name__}")
    t = " ".join(text.split())
    if not t:
        raise QueryError("empty query: give some words to search for (or --image PATH)")
    return t


def content_words(text: str | None) -> list[str]:
    """The lower-cased words of ``text`` that are not filler ("a photo of a dog" -> ["dog"])."""
    return [w for w in _WORD.findall((text or "").lower()) if w not in FILLER]
