"""Out-of-domain protection: the adapter's score mixed with the zero-shot model's through a gate.

score(q, i) = g(q) * s_adapter(q, i) / sd_adapter + (1 - g(q)) * s_zero_shot(q, i) / sd_zero_shot

(WiSE-FT / CLIP-Adapter's alpha, made query-dependent). Each branch's cosine is divided by its score
spread on the training pairs, so the two scales are comparable. ``g(q)`` depends on how familiar the
query looks: its *familiarity* is the mean cosine of its text features to their ``k`` nearest rows of
a bank of training-caption features (stored in the model file; ``k`` = 20 by default), and

g(q) = low + (high - low) * sigmoid((familiarity - center) / width)

so a Flickr-like caption gets nearly the adapter (``high``) and a query unlike anything trained on
("an ankle boot", clip art descriptions) falls back towards zero-shot (``low``). Modes: ``query`` (the
above), ``fixed`` (g = ``alpha`` for every query), ``adapter`` (g = 1), ``zero-shot`` (g = 0).

In an index this is an inner product: an image is ``[adapter vector, zero-shot vector] / sqrt 2`` and a
query is ``[g / sd_a * adapter vector, (1 - g) / sd_z * zero-shot vector]``, normalised (a per-query
constant, so text->image rankings are exactly the mixed scores').
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..encoders.base import l2_normalize
from ..errors import UsageError

GATE_MODES = ("query", "fixed", "adapter", "zero-shot")


@dataclass
class Gate:
    mode: str = "query"
    alpha: float = 0.7  # the weight of the adapter in mode "fixed"
    # chosen on Flickr8k dev + the out-of-domain checks (benchmarks/results/learn_adapter.json)
    center: float = 0.45
    width: float = 0.06
    low: float = 0.2
    high: float = 1.0
    k: int = 20
    sd_adapter: float = 1.0
    sd_zero_shot: float = 1.0
    bank: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.mode not in GATE_MODES:
            raise UsageError(f"unknown gate mode {self.mode!r}: use one of {', '.join(GATE_MODES)}")

    def params(self) -> dict:
        """The gate's settings for the model card (the bank is stored as a tensor)."""
        d = asdict(self)
        d.pop("bank")
        return d

    def familiarity(self, text_feats: np.ndarray) -> np.ndarray:
        """Mean cosine of each query's text features to its ``k`` nearest bank rows."""
        q = l2_normalize(text_feats)
        if self.bank is None or not len(self.bank):
            return np.ones(len(q), np.float32)
        sims = q @ np.asarray(self.bank, np.float32).T
        k = min(self.k, sims.shape[1])
        top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
        return top.mean(axis=1).astype(np.float32)

    def weights(self, text_feats: np.ndarray) -> np.ndarray:
        n = len(text_feats)
        if self.mode == "adapter":
            return np.ones(n, np.float32)
        if self.mode == "zero-shot":
            return np.zeros(n, np.float32)
        if self.mode == "fixed":
            return np.full(n, self.alpha, np.float32)
        z = (self.familiarity(text_feats) - self.center) / max(self.width, 1e-6)
        return (self.low + (self.high - self.low) / (1.0 + np.exp(-z))).astype(np.float32)

    def query_vectors(self, adapter: np.ndarray, zero_shot: np.ndarray, text_feats: np.ndarray) -> np.ndarray:
        g = self.weights(text_feats)[:, None]
        return l2_normalize(np.concatenate([g / self.sd_adapter * adapter,
                                            (1 - g) / self.sd_zero_shot * zero_shot], axis=1))

    @staticmethod
    def image_vectors(adapter: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
        return l2_normalize(np.concatenate([l2_normalize(adapter), l2_normalize(zero_shot)], axis=1))


def score_spread(text: np.ndarray, images: np.ndarray, rng: np.random.Generator, n: int = 2000) -> float:
    """Standard deviation of the cosines between a sample of texts and images (a branch's score scale)."""
    ti = rng.choice(len(text), min(n, len(text)), replace=False)
    ii = rng.choice(len(images), min(n, len(images)), replace=False)
    return float(np.std(np.asarray(text[ti], np.float32) @ np.asarray(images[ii], np.float32).T)) or 1.0


def caption_bank(text_feats: np.ndarray, rng: np.random.Generator, size: int = 4096) -> np.ndarray:
    """A seeded sample of training-caption features (unit rows, float16): the gate's notion of in-domain."""
    pick = np.sort(rng.choice(len(text_feats), min(size, len(text_feats)), replace=False))
    return l2_normalize(text_feats[pick]).astype(np.float16)
