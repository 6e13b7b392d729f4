"""Reading a query before any model runs: its k, its text, and the expansion and hybrid modes it gets."""

from __future__ import annotations

from typing import Any, Callable

from ..errors import UsageError
from ..text import is_short_query as text_is_short
from .options import AUTO_EXPAND, AUTO_EXPAND_MAX_WORDS, AUTO_HYBRID, EXPAND_MODES, HYBRID_MODES


def validate_k(k: Any) -> int:
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise UsageError(f"k must be a positive integer, not {k!r}") from None
    if k <= 0:
        raise UsageError(f"k must be a positive integer, not {k}")
    return k


def check_mode(mode: str, flag: str) -> str:
    """``mode`` when it is one of ``--expand``'s or ``--hybrid``'s choices, else a UsageError."""
    modes = EXPAND_MODES if flag == "expand" else HYBRID_MODES
    if mode not in modes:
        raise UsageError(f"unknown --{flag} {mode!r}: use one of {', '.join(modes)}")
    return mode


def is_short_query(text: str | None) -> bool:
    """At most AUTO_EXPAND_MAX_WORDS content words ("a photo of a dog" -> 1): a category-like query."""
    return text_is_short(text, AUTO_EXPAND_MAX_WORDS)


def resolve_expand(mode: str, text: str | None, expander: Callable[[bool], Any]) -> str:
    """The expansion mode a query gets. ``expander(required)`` loads the KG expander (None when it
    cannot be loaded and is not required); ``auto`` depends on it and, when ``text`` is given, on
    the query being short."""
    check_mode(mode, "expand")
    if mode == "auto":
        if text is not None and not is_short_query(text):
            return "none"
        return AUTO_EXPAND if expander(False) is not None else "none"
    if mode != "none":
        expander(True)
    return mode


def resolve_hybrid(mode: str, text: str | None, has_captions: bool, index_name: str) -> str:
    """The caption fusion a query gets: ``auto`` = sum when there are captions and text."""
    check_mode(mode, "hybrid")
    if mode == "auto":
        return AUTO_HYBRID if (has_captions and text) else "none"
    if mode != "none" and not has_captions:
        raise UsageError(f"--hybrid {mode}: index {index_name} has no captions to fuse with")
    if mode != "none" and not text:
        raise UsageError(f"--hybrid {mode} needs a text query (the caption side matches text)")
    return mode
