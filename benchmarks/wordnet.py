"""A small reader of the WordNet 3.0 noun database (Debian ``wordnet-base``, /usr/share/wordnet).

Enough for the benchmarks: synsets (id ``n`` + 8-digit offset, lemmas, gloss, hypernyms),
lemma -> synsets in sense-frequency order, and noun morphology (plurals).

``python -m benchmarks.wordnet imagenet-json OUT`` writes the ImageNet classes' hypernym
names that the ``lite`` encoder ships (retrieval/encoders/data/imagenet_wordnet.json).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from retrieval.errors import KGError
from retrieval.kg.build_wordnet import read_exceptions, read_sense_index, read_synsets
from retrieval.kg.morphology import NOUN_RULES

WORDNET_DIR = Path(os.environ.get("KGCLIP_WORDNET_DIR", "/usr/share/wordnet"))

# WordNet morphy's noun detachment rules, the longest suffix first (plain "s" last)
_NOUN_RULES = tuple(sorted(NOUN_RULES, key=lambda rule: -len(rule[0])))


@dataclass
class Synset:
    id: str
    lemmas: list[str]
    gloss: str
    hypernyms: list[str]  # ids, including instance hypernyms
    hyponyms: list[str]


class NounNet:
    def __init__(self, root: Path = WORDNET_DIR):
        root = Path(root)
        data, index, exc = root / "data.noun", root / "index.noun", root / "noun.exc"
        if not data.is_file():
            raise KGError(f"{data}: WordNet noun database not found (apt install wordnet-base)")
        self.synsets: dict[str, Synset] = {}
        for s in read_synsets(data, encoding="utf-8", errors="replace"):
            hyper = ["n" + t for sym, t, pos in s.pointers if pos == "n" and sym in ("@", "@i")]
            hypo = ["n" + t for sym, t, pos in s.pointers if pos == "n" and sym in ("~", "~i")]
            sid = "n" + s.offset
            self.synsets[sid] = Synset(sid, [_strip_marker(x) for x in s.words], s.gloss, hyper, hypo)
        self.index: dict[str, list[str]] = {}
        with open(index, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  "):
                    continue
                f = line.split()
                n_syn = int(f[2])
                self.index[f[0]] = ["n" + o for o in f[-n_syn:]]
        # tagged-sense frequency per synset (SemCor counts from index.sense): basic-level
        # concepts such as "dog" or "car" score high, technical ones such as "canine" low
        # and per lemma and part of speech (1 noun, 2 verb, 3 adjective, 4 adverb, 5 satellite adjective)
        self.freq: dict[str, int] = {}
        self.pos_freq: dict[str, dict[str, int]] = {}
        sense = root / "index.sense"
        if sense.is_file():
            for lemma, pos, off, n in read_sense_index(sense, encoding="utf-8", errors="replace"):
                d = self.pos_freq.setdefault(lemma, {})
                d[pos] = d.get(pos, 0) + n
                if pos == "1":
                    self.freq["n" + off] = self.freq.get("n" + off, 0) + n
        self.exceptions: dict[str, str] = {}
        if exc.is_file():
            for word, bases in read_exceptions(exc, encoding="utf-8", errors="replace"):
                self.exceptions.setdefault(word, bases[0])

    def lemma_synsets(self, word: str) -> list[str]:
        """Noun synsets of a word (any inflection), most frequent sense first."""
        w = word.lower().strip().replace(" ", "_")
        base = self.morphy(w)
        return self.index.get(base, []) if base else []

    def mostly_noun(self, word: str) -> bool:
        """Whether a word is tagged as a noun at least as often as as a verb or adjective (SemCor)."""
        w = word.lower().replace(" ", "_")
        base = self.morphy(w)
        if base is None:
            return False
        counts = self.pos_freq.get(w, {})
        noun = self.pos_freq.get(base, {}).get("1", 0)
        other = max(counts.get("2", 0), counts.get("3", 0) + counts.get("5", 0))
        return noun >= other

    def morphy(self, w: str) -> str | None:
        """Base form of a noun: irregular plural, else the word itself unless a regular singular
        has more senses ("boots" -> "boot", but "pants" stays), else a regular singular."""
        if w in self.exceptions and self.exceptions[w] in self.index:
            return self.exceptions[w]
        base = None
        for suf, rep in _NOUN_RULES:
            if w.endswith(suf) and len(w) > len(suf) + 1:
                cand = w[: -len(suf)] + rep
                if cand in self.index:
                    base = cand
                    break
        if w in self.index and (base is None or len(self.index[w]) >= len(self.index[base])):
            return w
        return base

    def hypernym_paths(self, sid: str) -> list[list[str]]:
        """Every path from ``sid`` up to a root (ids, nearest first, excluding ``sid``)."""
        out: list[list[str]] = []

        def walk(s, path):
            ups = self.synsets[s].hypernyms
            if not ups:
                out.append(path)
                return
            for u in ups:
                walk(u, path + [u])

        walk(sid, [])
        return out

    def ancestors(self, sid: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.synsets[sid].hypernyms)
        while stack:
            s = stack.pop()
            if s not in seen:
                seen.add(s)
                stack.extend(self.synsets[s].hypernyms)
        return seen

    def descendants(self, sid: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.synsets[sid].hyponyms)
        while stack:
            s = stack.pop()
            if s not in seen:
                seen.add(s)
                stack.extend(self.synsets[s].hyponyms)
        return seen


    def root_depth(self, sid: str) -> int:
        """Length of the shortest hypernym path from ``sid`` up to a root (entity = 0)."""
        return min((len(p) for p in self.hypernym_paths(sid)), default=0)


def _strip_marker(lemma: str) -> str:
    # adjective markers such as "(p)" never occur on nouns, but keep the reader robust
    return lemma.split("(")[0] if lemma.endswith(")") else lemma


@lru_cache(maxsize=2)
def load(root: str | None = None) -> NounNet:
    return NounNet(Path(root) if root else WORDNET_DIR)


def imagenet_hypernyms(max_up: int = 10) -> dict:
    """For each ImageNet class, its ancestors (on every hypernym path, up to ``max_up`` steps) as
    ``[id, lemmas, steps up from the class, depth below the root, tagged frequency]``, nearest first."""
    from retrieval.encoders.lite import imagenet_classes

    wn = load()
    out = {}
    for wnid, _names, _definition in imagenet_classes():
        steps: dict[str, int] = {}
        for path in wn.hypernym_paths(wnid):
            for i, s in enumerate(path[:max_up]):
                steps[s] = min(steps.get(s, 99), i + 1)
        out[wnid] = [
            [s, wn.synsets[s].lemmas[:3], up, wn.root_depth(s), wn.freq.get(s, 0)]
            for s, up in sorted(steps.items(), key=lambda kv: (kv[1], kv[0]))
        ]
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "imagenet-json":
        data = {
            "source": "WordNet 3.0 (c) Princeton University, see the WordNet licence. Per ImageNet class: "
                      "[ancestor id, lemmas, steps up, depth below root, SemCor tagged frequency]",
            "classes": imagenet_hypernyms(),
        }
        Path(argv[1]).write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
        print(f"wrote {argv[1]}")
        return 0
    print("usage: python -m benchmarks.wordnet imagenet-json OUT.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
