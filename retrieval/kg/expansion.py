"""Query expansion over a knowledge graph: policy, plans, query vectors and concept-grounding targets.

``Expander.plan(text)`` links the query and walks typed relations under an
:class:`ExpansionPolicy` (per-relation weights, hyponym depth with decay,
caps); ``query_vectors(text, encoder, mode)`` turns the plan into vectors in
the encoder's space (row 0 is always the plain query): ``mix`` returns one
combined row, ``multi`` the query plus one row per expansion with weights for
the searcher to fuse (max or RRF). ``concept_targets`` grounds a plan on the
WordNet ids the ``lite`` image tower predicts. A query with nothing linked is
returned unchanged. :mod:`retrieval.render` shows plans to people.

Measured levers (benchmarks/results/kg_tuning.json): with a concept vocabulary
(:meth:`Expander.set_concept_vocabulary`; the Searcher hands over the concepts its
index holds) hyponyms are chosen and ranked by how many recognisable concepts lie
below them; long queries are expanded less (``ExpansionPolicy.focus_words``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from ..choices import EXPANSIONS
from ..encoders.base import SENSE_TEXT_MODEL
from ..errors import UsageError
from ..text import content_words
from ..types import Expansion, QueryPlan
from .embeddings import EntityEmbeddings
from .graph import Graph
from .linking import Link, Linker

WORDNET_RELATIONS = {
    "hyponym": ("hyponym", "instance_hyponym"),
    "hypernym": ("hypernym", "instance_hypernym"),
    "meronym": ("part_meronym", "member_meronym", "substance_meronym"),
    "holonym": ("part_holonym", "member_holonym", "substance_holonym"),
}
KNOWN = {r for rs in WORDNET_RELATIONS.values() for r in rs}


@dataclass
class ExpansionPolicy:
    """Every expansion knob in one place. The defaults are the tuned ones
    (benchmarks/results/kg_tuning.json); :meth:`from_dict` builds one with some of them changed."""

    query_weight: float = 1.0  # weight of the plain query vector
    synonym: float = 0.6  # the linked entity itself (its prompt carries its synonyms)
    hyponym: float = 0.4  # direct hyponyms; deeper ones decay
    hyponym_depth: int = 2
    decay: float = 0.5  # weight factor per extra level
    hypernym: float = 0.2
    hypernym_depth: int = 1
    meronym: float = 0.1  # parts, members, substances
    holonym: float = 0.0  # wholes the entity is part of
    user_relation: float = 0.4  # any relation of a user graph, walked forward
    user_inverse: float = 0.2  # ... and backward ("~rel")
    relation_weights: dict[str, float] = field(default_factory=dict)  # overrides by relation name
    max_per_relation: int = 8  # per linked entity and relation group
    max_expansions: int = 16  # over the whole query (linked entities included)
    min_weight: float = 0.02
    expansion_mass: float = 1.0  # total expansion weight, relative to the query, is scaled down to this
    # a query with more content words than this (a caption, not a category word) gets its expansion
    # weights and mass (and, in the Searcher, its concept-grounding weight) scaled by focus_words /
    # content words (0 = off): full-caption recall stays within a point (benchmarks/results/recall_kg.json)
    # while "a mammal" expands fully
    focus_words: int = 3
    scale_by_confidence: bool = True  # multiply by the link's sense confidence
    min_link_score: float = 0.0  # links less confident than this are not expanded
    entity_template: str = "a photo of a {name}."  # prompt of entity vectors in the retrieval space
    grounding_depth: int = 16  # hyponym levels walked for lite concept targets
    grounding_decay: float = 0.95
    # with a concept vocabulary (Expander.set_concept_vocabulary, e.g. lite's 1000 ImageNet ids): hyponyms
    # with none of its concepts below them are dropped (animal -> female/male/young) and the rest are
    # ranked by how many lie below them (animal -> chordate before invertebrate)
    hyponym_coverage: bool = True
    # ... and weighted by (coverage / the best sibling's coverage) ** this (0 = equal weights)
    coverage_weight: float = 0.0
    # ground the link's other candidate senses too, each at max(its confidence, this x the chosen
    # sense's) (0 = the chosen sense only): "footwear" the clothing and "footwear" the covering;
    # 0.5 from benchmarks/results/kg_tuning.json (fashion-mnist and emoji up, flickr-nouns level)
    grounding_alternatives: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExpansionPolicy":
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise UsageError(f"unknown expansion policy field(s): {', '.join(bad)}")
        return cls(**d)

    def focus(self, text: str) -> float:
        """1 for short queries; focus_words / content words for longer ones (see ``focus_words``)."""
        n = len(content_words(text))
        if self.focus_words <= 0 or n <= self.focus_words:
            return 1.0
        return self.focus_words / n

    def weight_of(self, group: str) -> float:
        if group in self.relation_weights:
            return float(self.relation_weights[group])
        if group in ("synonym", "hyponym", "hypernym", "meronym", "holonym"):
            return float(getattr(self, group))
        if group in KNOWN:
            for g, rs in WORDNET_RELATIONS.items():
                if group in rs:
                    return self.weight_of(g)
        return float(self.user_inverse if group.startswith("~") else self.user_relation)


class Expander:
    """Plans and query vectors for one graph; keeps its linker and entity-embedding tables warm."""

    def __init__(self, graph: Graph, linker: Linker | None = None, policy: ExpansionPolicy | None = None,
                 sense_encoder: Any = SENSE_TEXT_MODEL, device: str | None = "cpu"):
        self.graph = graph
        self.linker = linker or Linker(graph, sense_encoder, device=device)
        self.policy = policy or ExpansionPolicy()
        self._tables: dict[tuple[str, str], EntityEmbeddings] = {}
        self._rank_arr: list[float] | None = None
        self._closures: OrderedDict[int, list[tuple[str, int, list[str]]]] = OrderedDict()
        self._coverage: np.ndarray | None = None  # per row: vocabulary concepts in its hyponym closure
        self._vocab_key: frozenset | None = None

    def set_concept_vocabulary(self, ids: Iterable[str] | None) -> None:
        """Concepts an image model can recognise (lite: ImageNet wnids); None forgets them.

        With ``policy.hyponym_coverage`` the hyponyms a plan expands to are those with such concepts
        below them, most first: the visual part of the graph.
        """
        key = frozenset(ids) if ids is not None else None
        if key == self._vocab_key:
            return
        self._vocab_key = key
        self._coverage = None if not key else self._count_coverage(key)

    def _count_coverage(self, vocab: frozenset) -> np.ndarray:
        """Per row, how many vocabulary entities lie in its hyponym closure (itself included)."""
        g = self.graph
        up = [r for r in WORDNET_RELATIONS["hypernym"] if r in g.relations]
        cov = np.zeros(len(g), np.int32)
        for eid in vocab:
            try:
                start = g.row(eid)
            except Exception:  # an id this graph does not hold
                continue
            seen, frontier = {start}, [start]
            while frontier:
                nxt = []
                for r in frontier:
                    for rel in up:
                        for j in g.neighbour_rows(r, rel).tolist():
                            if j not in seen:
                                seen.add(j)
                                nxt.append(j)
                frontier = nxt
            cov[list(seen)] += 1
        return cov

    # -- walking ---------------------------------------------------------------
    def _groups(self) -> list[tuple[str, tuple[str, ...]]]:
        g = self.graph
        rels = set(g.relations)
        groups = [(name, tuple(r for r in rs if r in rels)) for name, rs in WORDNET_RELATIONS.items()]
        groups = [(n, rs) for n, rs in groups if rs]
        for r in g.stored_relations:
            if r not in KNOWN:
                groups.append((r, (r,)))
                groups.append((g.inverse_of[r], (g.inverse_of[r],)))
        return groups

    def _walk(self, start: int, relations: tuple[str, ...], depth: int, limit: int | None = None,
              keep=None) -> list[tuple[int, int, list[int]]]:
        """(row, level, path rows) reachable within ``depth`` steps, breadth first, deterministic.

        With ``limit``, stops after the first level that brings the (non-abstract) count to ``limit``:
        deeper levels rank after shallower ones, so they could not make the cut. ``keep(row)``: only
        such rows are returned (and counted), though the walk goes on through the others.
        """
        g = self.graph
        seen = {start}
        frontier = [(start, [start])]
        out = []
        for level in range(1, depth + 1):
            nxt = []
            for row, path in frontier:
                for rel in relations:
                    for j in g.neighbour_rows(row, rel).tolist():
                        if j not in seen:
                            seen.add(j)
                            nxt.append((j, path + [j]))
                            if not self._abstract(j) and (keep is None or keep(j)):
                                out.append((j, level, path + [j]))
            frontier = nxt
            if not frontier or (limit is not None and len(out) >= limit):
                break
        return out

    @property
    def _rank(self) -> np.ndarray:
        """Per-entity usefulness: frequent in text (tag count) and general (large hyponym subtree)."""
        if self._rank_arr is None:
            g = self.graph
            size = g.size if g.size is not None else np.zeros(len(g), np.int32)
            score = np.log1p(g.counts.astype(np.float64)) + np.log1p(size.astype(np.float64))
            self._rank_arr = np.round(score, 6).tolist()
        return self._rank_arr

    def _abstract(self, row: int) -> bool:
        g = self.graph
        cfg = self.linker.config
        return (g.depth is not None and 0 <= g.depth[row] < cfg.min_depth) or g.ids[row] in cfg.abstract_ids

    def _path(self, span: str, rel: str, rows: list[int]) -> list[str]:
        out = [span]
        for r in rows[1:]:
            out += [rel, self.graph.display_name(r)]
        return out

    # -- plans -----------------------------------------------------------------
    def link(self, text: str, query_vector: np.ndarray | None = None) -> list[Link]:
        return self.linker.link(text, query_vector=query_vector)

    def plan(self, text: str, mode: str = "mix", links: list[Link] | None = None,
             query_vector: np.ndarray | None = None) -> QueryPlan:
        """Linked entities and weighted expansions of ``text`` (no vectors are computed)."""
        if mode not in EXPANSIONS:
            raise UsageError(f"unknown expansion mode {mode!r}: use one of {', '.join(EXPANSIONS)}")
        p = self.policy
        links = self.link(text, query_vector) if links is None else links
        plan = QueryPlan(text=text, mode=mode, linked=[lk.to_dict() for lk in links])
        if mode == "none":
            return plan
        best: dict[int, Expansion] = {}

        def offer(row: int, rel: str, w: float, path: list[str]) -> None:
            if w < p.min_weight:
                return
            e = best.get(row)
            if e is None or w > e.weight:
                g = self.graph
                best[row] = Expansion(g.ids[row], g.display_name(row), rel, round(w, 6), path)

        groups = self._groups()
        focus = p.focus(text)
        for lk in links:
            if lk.score < p.min_link_score:
                continue
            conf = (lk.score if p.scale_by_confidence else 1.0) * focus
            offer(lk.row, "synonym", p.weight_of("synonym") * conf, [lk.span, "synonym", lk.name])
            for group, rels in groups:
                base = p.weight_of(group) * conf
                if base <= 0:
                    continue
                depth = {"hyponym": p.hyponym_depth, "hypernym": p.hypernym_depth}.get(group, 1)
                cov = self._coverage if (group == "hyponym" and p.hyponym_coverage) else None
                if cov is not None and cov[lk.row] > 0:
                    # the visual part of the subtree: hyponyms with recognisable concepts below, most first
                    found = self._walk(lk.row, rels, depth, limit=p.max_per_relation, keep=lambda j: cov[j] > 0)
                    found.sort(key=lambda x: (x[1], -int(cov[x[0]]), -self._rank[x[0]], self.graph.ids[x[0]]))
                else:
                    found = self._walk(lk.row, rels, depth, limit=p.max_per_relation)
                    found.sort(key=lambda x: (x[1], -self._rank[x[0]], self.graph.ids[x[0]]))
                label = "hyponym" if group == "hyponym" else group
                found = found[: p.max_per_relation]
                top = max((int(cov[x[0]]) for x in found), default=0) if cov is not None else 0
                for r, lvl, path in found:
                    w = base * p.decay ** (lvl - 1)
                    if top and p.coverage_weight:
                        w *= (int(cov[r]) / top) ** p.coverage_weight
                    offer(r, label, w, self._path(lk.span, label, path))
        exps = sorted(best.values(), key=lambda e: (-e.weight, e.entity_id))[: p.max_expansions]
        plan.expansions = exps
        return plan

    # -- vectors ---------------------------------------------------------------
    def embeddings(self, encoder) -> EntityEmbeddings:
        key = (encoder.fingerprint, self.policy.entity_template)
        t = self._tables.get(key)
        if t is None:
            t = EntityEmbeddings(self.graph, encoder, template=self.policy.entity_template)
            self._tables[key] = t
        return t

    def query_vectors(self, text: str, encoder, mode: str = "mix", plan: QueryPlan | None = None,
                      query_vector: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, QueryPlan]:
        """(vectors float32 [m, d], weights float32 [m], plan). Row 0 is the plain query.

        ``mix``: one row, the L2-normalised weighted sum of query and entity vectors.
        ``multi``: the query and one row per expansion; weights for the caller's fusion.
        ``none`` or nothing linked: the plain query alone.
        """
        q = query_vector if query_vector is not None else encoder.encode_queries([text])[0]
        q = np.asarray(q, np.float32).reshape(1, -1)
        if plan is None:
            # lite's text tower is the sense encoder (MiniLM): reuse the vector instead of encoding twice
            shared = q[0] if mode != "none" and self._same_space(encoder) else None
            plan = self.plan(text, mode=mode, query_vector=shared)
        if mode == "none" or not plan.expansions:
            return q, np.ones(1, np.float32), plan
        rows = [self.graph.row(e.entity_id) for e in plan.expansions]
        ev = self.embeddings(encoder).get_rows(rows)
        w = np.array([e.weight for e in plan.expansions], np.float64)
        cap = self.policy.expansion_mass * self.policy.query_weight * self.policy.focus(plan.text)
        if w.sum() > cap:
            w *= cap / w.sum()
        weights = np.concatenate([[self.policy.query_weight], w]).astype(np.float32)
        vecs = np.concatenate([q, ev]).astype(np.float32)
        if mode == "multi":
            return vecs, weights, plan
        mixed = (weights[:, None] * vecs).sum(axis=0, keepdims=True)
        mixed /= max(float(np.linalg.norm(mixed)), 1e-12)
        return mixed.astype(np.float32), np.ones(1, np.float32), plan

    def _same_space(self, encoder) -> bool:
        sense = self.linker._encoder
        if sense is None:
            return False
        if encoder is sense:
            return True
        shared = getattr(encoder, "sense_text_encoder", None)  # lite's MiniLM tower, when it is the sense model
        if shared is not None and shared() is sense:
            return True
        try:
            return encoder.fingerprint == sense.fingerprint
        except Exception:  # an encoder without a fingerprint: do not guess
            return False

    # -- lite grounding --------------------------------------------------------
    def _closure(self, row: int) -> list[tuple[str, int, list[str]]]:
        """(entity id, level, path) over the hyponym closure of ``row``, breadth first (cached)."""
        c = self._closures.get(row)
        if c is not None:
            self._closures.move_to_end(row)
            return c
        g = self.graph
        rels = [r for r in WORDNET_RELATIONS["hyponym"] if r in g.relations]
        c = {row: (0, -1)}
        frontier = [row]
        for level in range(1, self.policy.grounding_depth + 1):
            nxt = []
            for r in frontier:
                for rel in rels:
                    for j in g.neighbour_rows(r, rel).tolist():
                        if j not in c:
                            c[j] = (level, r)
                            nxt.append(j)
            frontier = nxt
            if not frontier:
                break
        out = []
        for r, (level, _parent) in c.items():
            chain, x = [], r
            while x != -1:
                chain.append(g.display_name(x))
                x = c[x][1]
            chain.reverse()
            path = [chain[0]] if len(chain) > 1 else [chain[0], "synonym", chain[0]]
            for name in chain[1:]:
                path += ["hyponym", name]
            out.append((g.ids[r], level, path))
        self._closures[row] = out
        if len(self._closures) > 256:
            self._closures.popitem(last=False)
        return out

    def concept_targets(self, plan_or_text: QueryPlan | str,
                        within: Iterable[str] | None = None) -> dict[str, tuple[float, list[str]]]:
        """{entity id: (weight, path)} for the linked entities and their hyponym closure.

        An indexed image whose ``lite`` concept is one of these ids can be scored
        directly: weight x the concept's probability. ``within`` restricts the
        answer to the ids an index actually holds (e.g. the 1000 ImageNet wnids).
        """
        plan = plan_or_text if isinstance(plan_or_text, QueryPlan) else self.plan(plan_or_text)
        keep = set(within) if within is not None else None
        g, p = self.graph, self.policy
        out: dict[str, tuple[float, list[str]]] = {}
        for lk in plan.linked:
            if lk["score"] < p.min_link_score:
                continue
            conf = lk["score"] if p.scale_by_confidence else 1.0
            senses = [(lk["entity_id"], conf)]
            if p.grounding_alternatives > 0:
                senses += [(a["entity_id"], max(a["score"] if p.scale_by_confidence else 1.0,
                                                p.grounding_alternatives * conf))
                           for a in lk.get("alternatives") or []]
            for sense, sconf in senses:
                wtab = [round(sconf * p.grounding_decay ** lv, 6) for lv in range(p.grounding_depth + 1)]
                for eid, level, path in self._closure(g.row(sense)):  # paths are shared with the cache: read-only
                    if keep is not None and eid not in keep:
                        continue
                    w = wtab[level]
                    if eid not in out or out[eid][0] < w:
                        out[eid] = (w, path)
        return out
