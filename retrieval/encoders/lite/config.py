"""lite's settings: :class:`LiteConfig` (ConSE, image views, text tower) and the ``lite:NAME`` presets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

@dataclass(frozen=True)
class LiteConfig:
    """ConSE settings; chosen by measurement on flickr8k-1k (benchmarks/results/lite_tuning.json).

    Class descriptions are the ``prompts`` templates filled per ImageNet class with
    ``{name}`` (first lemma), ``{names}`` (all lemmas), ``{definition}`` (WordNet gloss) and
    ``{kinds}`` (up to ``kinds`` everyday hypernyms: WordNet ancestors whose SemCor
    frequency is at least ``kind_min_freq`` and that lie at least ``kind_min_depth`` below
    the root, e.g. Border collie -> "dog, animal"; the name itself where there are none) or
    ``{a_kind_of}`` (", a kind of dog, animal", empty where there are none); the templates'
    embeddings are averaged.

    ``sharpen`` then subtracts that share of the mean of each class's ``sharpen_k`` nearest
    class descriptions (local contrast): the 118 dog breeds, say, stop being one "dog"
    direction and keep what tells them apart, and a mix of many classes stops collapsing
    onto its common neighbourhood (hub images that rank high for every query).
    """

    resize: str = "squash"  # image preprocessing: "squash" (whole frame) or "crop" (ImageNet centre crop)
    top_k: int = 50  # classes mixed per image
    temperature: float = 2.5  # softmax temperature on the classifier logits (> 1 spreads weight)
    concepts: int = 5  # top classes reported per image
    prompts: tuple[str, ...] = ("a photo of a {name}.", "{definition}", "{names}: {definition}")
    kinds: int = 0
    kind_min_freq: int = 1
    kind_min_depth: int = 5
    sharpen: float = 0.7  # remove this share of the mean of each class's nearest class descriptions
    sharpen_k: int = 30  # ... over this many neighbours
    center: float = 0.3  # remove this share of the class-table mean from image vectors (hubness)
    text_center: float = 0.0  # ... and from query vectors
    # query-side ConSE: a query also embeds as the softmax(sim / text_temperature)-weighted mix of its
    # text_top_k most similar class descriptions, blended in with weight text_mix (0 = off)
    text_mix: float = 0.0
    text_top_k: int = 10
    text_temperature: float = 0.05
    # image views per image, each one more forward; their ConSE vectors are averaged (see ImagePreprocess):
    # "whole" (the ``resize`` frame), "start"/"middle"/"end" (squares of the short side along the long
    # side), "tl"/"tr"/"bl"/"br" (quadrants). The ``lite:tiles`` spec turns them on.
    views: tuple[str, ...] = ("whole",)
    # the text tower (an sbert name: "minilm", the shipped default, or "mpnet"): it embeds the class
    # descriptions and the queries, so the two share one space
    text: str = "minilm"

    def key(self) -> str:
        # options added after lite indexes were first built (``LATE_FIELDS``) enter the hash only when set
        # away from their default, so adding one keeps every existing index's fingerprint
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                 if f.name not in LATE_FIELDS or getattr(self, f.name) != f.default]
        return hashlib.sha256(f"LiteConfig({', '.join(parts)})".encode()).hexdigest()[:10]


LATE_FIELDS = frozenset({"views", "text"})
VIEWS = ("whole", "start", "middle", "end", "tl", "tr", "bl", "br")
# named settings selectable as ``lite:NAME``; "" is plain ``lite``
PRESETS = {
    "": LiteConfig(),
    # whole frame + 3 squares along the long side: 4 forwards per image (multi-object scenes)
    "tiles": LiteConfig(views=("whole", "start", "middle", "end")),
    # ... + the 4 quadrants: 8 forwards per image
    "tiles8": LiteConfig(views=("whole", "start", "middle", "end", "tl", "tr", "bl", "br")),
    # one forward, as plain lite; the class descriptions and queries embedded by all-mpnet-base-v2
    "mpnet": LiteConfig(text="mpnet"),
}


