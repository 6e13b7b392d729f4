"""English morphological normalisation: WordNet's morphy rules plus its exception lists.

"puppies" -> puppy, "mice" -> mouse (exception list), "fire engines" -> fire
engine (the head, i.e. last, word of a collocation is inflected). Candidates
are filtered against the graph's names by the linker, as morphy does against
WordNet's index.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

NOUN_RULES = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
              ("men", "man"), ("ies", "y"))
VERB_RULES = (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
              ("ing", ""))

MORPHY_PATH = Path(__file__).resolve().parent / "data" / "morphy.json"


class Morphology:
    """Base-form candidates of nouns and verbs, and verb/adjective tag counts."""

    def __init__(self, noun_exceptions=None, verb_exceptions=None, verb_counts=None, adj_counts=None):
        self.noun_exc: dict[str, list[str]] = dict(noun_exceptions or {})
        self.verb_exc: dict[str, list[str]] = dict(verb_exceptions or {})
        self.verb_counts: dict[str, int] = dict(verb_counts or {})
        self.adj_counts: dict[str, int] = dict(adj_counts or {})

    @classmethod
    def shipped(cls) -> "Morphology":
        return _shipped()

    def noun_bases(self, word: str) -> list[str]:
        """Possible noun base forms of a (lower-case) word or phrase, most specific first, excluding it."""
        out: list[str] = list(self.noun_exc.get(word, ()))
        head, sep, last = word.rpartition(" ")
        if sep:  # collocation: inflect the head (last) word
            out += [f"{head} {b}" for b in self.noun_bases(last)]
            return [b for b in dict.fromkeys(out) if b != word]
        for suf, rep in NOUN_RULES:
            if word.endswith(suf) and len(word) > len(suf) + 1 and not word.endswith("ss"):
                out.append(word[: -len(suf)] + rep)
        return [b for b in dict.fromkeys(out) if b != word]

    def verb_count(self, word: str) -> int:
        """Tag count of the word used as a verb (any inflection: "running" counts "run")."""
        cands = [word, *self.verb_exc.get(word, ())]
        for suf, rep in VERB_RULES:
            if word.endswith(suf) and len(word) > len(suf) + 1:
                cands.append(word[: -len(suf)] + rep)
        if word.endswith("ing") and len(word) > 5 and word[-4] == word[-5]:  # running -> run
            cands.append(word[:-4])
        if word.endswith("ed") and len(word) > 4 and word[-3] == word[-4]:  # stopped -> stop
            cands.append(word[:-3])
        return max((self.verb_counts.get(c, 0) for c in dict.fromkeys(cands)), default=0)

    def adj_count(self, word: str) -> int:
        return self.adj_counts.get(word, 0)


@lru_cache(maxsize=1)
def _shipped() -> Morphology:
    if not MORPHY_PATH.is_file():
        return Morphology()
    d = json.loads(MORPHY_PATH.read_text())
    return Morphology(d.get("noun_exceptions"), d.get("verb_exceptions"), d.get("verb_counts"),
                      d.get("adj_counts"))
