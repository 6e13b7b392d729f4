"""Entity linking: find graph entities in a query and choose their senses.

1. Tokenise; slide left to right taking the longest n-gram that names an
   entity after morphological normalisation ("fire engines" -> fire engine,
   "mice" -> mouse). Single stop-words, query boilerplate ("photo of"), words
   used mostly as verbs or adjectives ("running", "white") and very abstract
   senses (WordNet depth < ``min_depth``: entity, object, whole, thing ...)
   are not linked.
2. Choose the sense: cosine between the query and each candidate sense's gloss
   (both embedded by the sense encoder, ``sbert:minilm`` by default) plus
   ``prior_weight`` x log of the sense-frequency prior (WordNet tag counts and
   sense order). Gloss vectors are cached (memory and disk), and the query
   vector once per text, so a warm link costs a dictionary walk and one small
   matrix product.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..encoders import get_encoder
from ..encoders.base import SENSE_TEXT_MODEL
from .embeddings import EntityEmbeddings
from .graph import Graph
from .morphology import Morphology

STOP_WORDS = frozenset("""
a an the and or but nor of in on at to for from by with without within into onto over under above below
between among through during before after about against along across around behind beside besides near
off out up down upon than then there here this that these those it its it's is are was were be been being
am do does did doing have has had having i me my we us our you your he him his she her they them their
who whom whose which what when where why how all any both each few more most other some such no not only
own same so too very can will just should would could may might must shall one two three four five six
seven eight nine ten first second let lets get gets got also yet via per vs etc
""".split())

DETERMINERS = frozenset("a an the this that these those my your his her its our their some any no every each "
                        "another two three four five six seven eight nine ten several many".split())

# words that describe the query rather than its content
SKIP_WORDS = frozenset("photo photos photograph photographs picture pictures image images pic pics snapshot "
                       "shot closeup close-up view scene thing things object objects stuff something".split())

# very general WordNet senses deeper than min_depth that expansion would only blur
ABSTRACT_IDS = frozenset({
    "n00003553",  # whole, unit
    "n00004258",  # living thing, animate thing
    "n00021939",  # artifact
    "n00019128",  # natural object
    "n00020827",  # matter (substance)
    "n00027807",  # shape, form
    "n00033020",  # communication
    "n00031921",  # relation
    "n00024264",  # attribute
    "n00023100",  # psychological feature
})

TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)*")


@dataclass
class Link:
    """A span of the query tied to one entity (the chosen sense)."""

    span: str
    start: int
    end: int
    entity_id: str
    name: str
    gloss: str
    score: float  # confidence of the chosen sense among the candidates, 0..1
    alternatives: list[dict[str, Any]] = field(default_factory=list)  # other senses: id, name, gloss, score
    row: int = field(default=-1, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("row")
        return d


@dataclass
class LinkerConfig:
    """Linking knobs; defaults checked on WordNet (tests/test_kg_linking.py)."""

    max_ngram: int = 5
    min_depth: int = 3  # WordNet senses nearer the root are too abstract to link (entity, object, thing ...)
    abstract_ids: frozenset = ABSTRACT_IDS  # and these few (whole, living thing ...) at depth 3-4
    prior_weight: float = 0.07  # weight of log sense prior against gloss cosine
    temperature: float = 0.05  # softmax temperature turning scores into confidences
    max_senses: int = 8  # candidate senses scored per span (in WordNet's frequency order)
    skip_other_pos: bool = True  # leave single words used mostly as verbs/adjectives alone
    gloss_template: str = "{names}: {gloss}"
    stop_words: frozenset = STOP_WORDS
    skip_words: frozenset = SKIP_WORDS
    query_cache: int = 2048


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """(normalised token, start, end): lower case, possessive 's dropped."""
    out = []
    for m in TOKEN_RE.finditer(text):
        tok = m.group(0).lower()
        if tok.endswith("'s"):
            tok = tok[:-2]
        out.append((tok, m.start(), m.end()))
    return out


class Linker:
    """Link(text) -> [Link]; sense choice by gloss similarity and frequency."""

    def __init__(self, graph: Graph, sense_encoder: Any = SENSE_TEXT_MODEL, config: LinkerConfig | None = None,
                 morphology: Morphology | None = None, device: str | None = "cpu"):
        self.graph = graph
        self.config = config or LinkerConfig()
        self.morph = morphology or Morphology.shipped()
        self._sense_spec = sense_encoder
        self._device = device
        self._encoder = None if isinstance(sense_encoder, (str, type(None))) else sense_encoder
        self._gloss = None
        self._qcache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    # -- encoders --------------------------------------------------------------
    @property
    def sense_encoder(self):
        if self._encoder is None and self._sense_spec:
            self._encoder = get_encoder(self._sense_spec, device=self._device)
        return self._encoder

    def _gloss_table(self):
        if self._gloss is None:
            self._gloss = EntityEmbeddings(self.graph, self.sense_encoder,
                                           template=self.config.gloss_template)
        return self._gloss

    def query_vector(self, text: str, given: np.ndarray | None = None) -> np.ndarray:
        """The sense encoder's vector of ``text`` (cached); ``given`` is remembered as that vector."""
        with self._lock:
            v = self._qcache.get(text) if given is None else None
            if v is not None:
                self._qcache.move_to_end(text)
                return v
        if given is not None:
            v = np.asarray(given, np.float32)
        else:
            v = self.sense_encoder.encode_queries([text])[0]
        with self._lock:
            self._qcache[text] = v
            while len(self._qcache) > self.config.query_cache:
                self._qcache.popitem(last=False)
        return v

    # -- candidates ------------------------------------------------------------
    def _keys(self, words: list[str]) -> list[str]:
        """Name keys to look up for a span: itself, then morphological bases present in the graph."""
        g = self.graph
        form = " ".join(words)
        keys = [form] if g.has_key(form) else []
        for b in self.morph.noun_bases(form):
            if not g.has_key(b) or b in keys:
                continue
            # with the form itself known, add a base only when it is a real, used word
            # ("glasses" -> glass yes; "gas" -> ga no)
            if keys and (len(b) < 3 or sum(c for _, c in g.senses(b)) == 0):
                continue
            keys.append(b)
        return keys

    def _senses(self, keys: list[str]) -> list[tuple[int, int, int]]:
        """(row, tag count, sense rank) of the eligible senses of the keys."""
        g, cfg = self.graph, self.config
        seen: dict[int, tuple[int, int, int]] = {}
        for key in keys:
            for rank, (row, count) in enumerate(g.senses(key)):
                too_deep = g.depth is not None and 0 <= g.depth[row] < cfg.min_depth
                if too_deep or g.ids[row] in cfg.abstract_ids:
                    continue
                if row not in seen:
                    seen[row] = (row, count, rank)
        return sorted(seen.values(), key=lambda s: (s[2], -s[1], s[0]))[: cfg.max_senses]

    def _proper(self, row: int) -> bool:
        names = self.graph.names[row]
        return bool(names) and all(nm[:1].isupper() for nm in names)

    def _other_pos_dominates(self, word: str, senses, prev: str | None) -> bool:
        """True for words used mostly as adjectives ("white"), or as verbs ("running") unless a
        determiner or adjective right before makes them a noun ("a red dress")."""
        noun = sum(c for _, c, _ in senses)
        verb, adj = self.morph.verb_count(word), self.morph.adj_count(word)
        if adj > noun and adj >= verb:
            return True
        if verb > noun:
            return not (prev is not None and (prev in DETERMINERS or self.morph.adj_count(prev) > 0))
        return False

    # -- linking ---------------------------------------------------------------
    def candidates(self, text: str) -> list[tuple[str, int, int, list[tuple[int, int, int]]]]:
        """(span, start, end, senses) for each linkable span, longest match first, left to right."""
        cfg, g = self.config, self.graph
        toks = tokenize(text)
        out = []
        i, n = 0, len(toks)
        max_n = max(1, min(cfg.max_ngram, g.max_name_tokens))
        while i < n:
            found = None
            for L in range(min(max_n, n - i), 0, -1):
                words = [t for t, _, _ in toks[i : i + L]]
                if L == 1 and (words[0] in cfg.stop_words or words[0] in cfg.skip_words
                               or len(words[0]) < 2 or words[0].isdigit()):
                    continue
                keys = self._keys(words)
                if not keys:
                    continue
                senses = self._senses(keys)
                if not senses:
                    continue
                prev = toks[i - 1][0] if i > 0 else None
                if L == 1 and cfg.skip_other_pos and self._other_pos_dominates(words[0], senses, prev):
                    continue
                found = (L, senses)
                break
            if found is None:
                i += 1
                continue
            L, senses = found
            start, end = toks[i][1], toks[i + L - 1][2]
            if text[start:end].islower():  # "crane" is the bird or the machine before the writer Crane
                common = [sn for sn in senses if not self._proper(sn[0])]
                senses = common or senses
            out.append((text[start:end], start, end, senses))
            i += L
        return out

    def link(self, text: str, query_vector: np.ndarray | None = None) -> list[Link]:
        """Linked entities of ``text`` in order of appearance.

        ``query_vector``: the sense encoder's vector of ``text`` if the caller has it already.
        """
        cands = self.candidates(text or "")
        if not cands:
            return []
        g, cfg = self.graph, self.config
        need_sim = any(len(s) > 1 for _, _, _, s in cands) and self.sense_encoder is not None
        q = None
        if need_sim:
            q = self.query_vector(text, given=query_vector)
        links = []
        for span, start, end, senses in cands:
            rows = [r for r, _, _ in senses]
            w = np.array([c + 1.0 / (rank + 1) for _, c, rank in senses], np.float64)
            prior = w / w.sum()
            if len(rows) > 1 and q is not None:
                sims = self._gloss_table().get_rows(rows) @ np.asarray(q, np.float32)
                scores = sims.astype(np.float64) + cfg.prior_weight * np.log(prior)
            else:
                scores = np.log(prior)
            z = scores / cfg.temperature if q is not None else scores
            conf = np.exp(z - z.max())
            conf /= conf.sum()
            order = sorted(range(len(rows)), key=lambda k: (-scores[k], k))
            best = order[0]
            r = rows[best]
            alts = [{"entity_id": g.ids[rows[k]], "name": g.display_name(rows[k]),
                     "gloss": g.glosses[rows[k]], "score": round(float(conf[k]), 4)} for k in order[1:4]]
            links.append(Link(span, start, end, g.ids[r], g.display_name(r), g.glosses[r],
                              round(float(conf[best]), 4), alts, r))
        return links

    def warm(self, texts=("a dog",)) -> None:
        """Load the sense encoder and exercise the path once (first-call costs out of the way)."""
        for t in texts:
            self.link(t)
