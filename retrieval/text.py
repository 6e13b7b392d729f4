"""Plain-text helpers shared by the query side and the knowledge graph: white-space folding, query
cleaning and the content words of a query (articles and "a photo of" filler left out); and the one
JSONL row reader (build manifests, caption datasets)."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator

from .errors import QueryError, SourceError

# words that say nothing about what is in a picture ("a photo of a dog" has one content word)
FILLER = frozenset("a an the some any of photo photos picture pictures image images".split())
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters: digits and "_" split words


def fold_space(text: object) -> str:
    """``text`` with every run of white space (newlines, tabs) folded to one space, trimmed."""
    return " ".join(str(text).split())


def clean_text(text: Any) -> str | None:
    """A text query with its white space folded; None stays None; an empty or non-string query is a
    :class:`QueryError`."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise QueryError(f"a text query must be a string, not {type(text).__name__}")
    t = fold_space(text)
    if not t:
        raise QueryError("empty query: give some words to search for (or --image PATH)")
    return t


def content_words(text: str | None) -> list[str]:
    """The lower-cased words of ``text`` that are not :data:`FILLER` ("a photo of a dog" -> ["dog"])."""
    return [w for w in _WORD.findall((text or "").lower()) if w not in FILLER]


def is_short_query(text: str | None, max_words: int) -> bool:
    """Whether ``text`` has 1 to ``max_words`` content words: a category-like query ("a mammal")
    rather than a caption."""
    return 0 < len(content_words(text)) <= max_words


def read_jsonl_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; one-line SourceErrors
    naming file:line for malformed JSON, non-object lines and non-UTF-8 bytes."""
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SourceError(f"{path}:{lineno}: malformed JSON line: {e.msg}") from None
                if not isinstance(row, dict):
                    raise SourceError(f"{path}:{lineno}: each line must be a JSON object")
                yield lineno, row
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 JSONL ({e.reason} at byte {e.start})") from None
