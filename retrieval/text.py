"""Plain-text helpers shared by the query side and the knowledge graph: whitespace folding and the
content words of a query (articles and "a photo of" filler left out)."""

from __future__ import annotations

import re

# words that say nothing about what is in a picture ("a photo of a dog" has one content word)
FILLER = frozenset("a an the some any of photo photos picture pictures image images".split())
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters: digits and "_" split words


def clean_text(text: object) -> str:
    """``text`` with every run of white space (newlines, tabs) folded to one space, trimmed."""
    return " ".join(str(text).split())


def content_words(text: str | None) -> list[str]:
    """The lower-cased words of ``text`` that are not :data:`FILLER` ("a photo of a dog" -> ["dog"])."""
    return [w for w in _WORD.findall((text or "").lower()) if w not in FILLER]


def is_short_query(text: str | None, max_words: int) -> bool:
    """Whether ``text`` has 1 to ``max_words`` content words: a category-like query ("a mammal")
    rather than a caption."""
    return 0 < len(content_words(text)) <= max_words
