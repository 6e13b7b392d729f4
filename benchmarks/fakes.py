"""Deterministic fake encoders for fast tests (registered as the ``fake`` family).

Text: each lower-cased word maps to a fixed pseudo-random unit vector (seeded by
its hash); a text is the normalised sum of its words. Image: the word of the
named colour nearest to the image's mean RGB, plus a small content-dependent
term, so "red" finds red images exactly. Import this module (or set
``KGCLIP_PLUGINS=benchmarks.fakes``) to register it.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from retrieval.encoders import Family, register
from retrieval.encoders.base import Encoder, ImageBatch, l2_normalize

DIM = 32
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 40, 220),
    "yellow": (240, 230, 40),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
    "purple": (140, 40, 160),
    "orange": (250, 140, 20),
}


def word_vector(word: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def nearest_colour(rgb) -> str:
    return min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], rgb)))


class SmallPreprocess:
    def __call__(self, img) -> np.ndarray:
        x = np.asarray(img.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0
        return np.ascontiguousarray(x.transpose(2, 0, 1))


class FakeEncoder(Encoder):
    family = "fake"

    def __init__(self, spec, rest="", device="auto", batch_size=32):
        super().__init__(spec, "cpu", batch_size)
        self.variant = rest or "v1"

    def load(self):
        if not self._loaded:
            self.device = "cpu"
            self._dim = DIM
            self._loaded = True
        return self

    def _load(self):  # pragma: no cover - load() is overridden to avoid torch
        pass

    def _weights_hash(self) -> str:
        return hashlib.sha256(self.variant.encode()).hexdigest()[:12]

    def image_transform(self):
        return SmallPreprocess()

    def encode_image_arrays(self, batch, with_concepts=False):
        out = []
        for x in batch:
            rgb = x.reshape(3, -1).mean(axis=1) * 255
            v = word_vector(nearest_colour(rgb)) + 0.05 * word_vector(np.round(x, 2).tobytes().hex()[:64])
            out.append(v)
        concepts = [[(nearest_colour(x.reshape(3, -1).mean(axis=1) * 255), 1.0)] for x in batch]
        return ImageBatch(l2_normalize(np.stack(out)) if out else np.zeros((0, DIM), np.float32),
                          concepts if with_concepts else None)

    def _encode_text_batch(self, texts):
        out = []
        for t in texts:
            words = re.findall(r"[a-z]+", t.lower()) or ["<empty>"]
            out.append(np.sum([word_vector(w) for w in words], axis=0))
        return np.stack(out)


register(Family("fake", "benchmarks.fakes:FakeEncoder", "fake:v1", "deterministic test encoder (tests and benchmarks only)"))
