"""Query vectors: text encoded once per distinct query (an LRU cache), images, text+image blends."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..encoders.base import DEFAULT_MAX_PIXELS, l2_normalize, load_image
from ..errors import ModelError, QueryError


class QueryVectorCache:
    """[1, d] query vectors by (side, text), side ``image`` (the index model) or ``caption`` (the
    caption model); keeps the ``size`` most recently used (0 turns the cache off)."""

    def __init__(self, size: int = 256):
        self.size = int(size)
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def resize(self, size: int) -> None:
        self.size = int(size)
        while len(self._cache) > max(self.size, 0):
            self._cache.popitem(last=False)

    def get(self, text: str, side: str, encoder) -> np.ndarray:
        key = (side, text)
        v = self._cache.get(key)
        if v is not None:
            self._cache.move_to_end(key)
            return v
        v = np.asarray(encoder.encode_queries([text]), np.float32)
        self._remember(key, v)
        return v

    def prime(self, texts: Sequence[str], jobs: Sequence[tuple[str, Any]]) -> None:
        """Encode ``texts`` in one batch per (side, encoder) job into the cache (no-op when it is off)."""
        if self.size <= 0:
            return
        for side, enc in jobs:
            todo = list(dict.fromkeys(t for t in texts if (side, t) not in self._cache))
            for i in range(0, len(todo), self.size):
                chunk = todo[i : i + self.size]
                for t, v in zip(chunk, enc.encode_queries(chunk)):
                    self._remember((side, t), np.asarray(v, np.float32)[None])

    def _remember(self, key, v) -> None:
        if self.size <= 0:
            return
        self._cache[key] = v
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)


def encode_image(encoder, image: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """[1, d] vector of an image query (a path or a PIL image); one clear error for a missing file or
    an image over ``max_pixels`` (the rule builds apply)."""
    if not encoder.has_images:
        raise ModelError(f"index model {encoder.spec} has no image tower: image queries need one")
    if isinstance(image, (str, os.PathLike)):
        p = Path(image)
        if not p.exists():
            raise QueryError(f"{p}: no such image file")
        if p.is_dir():
            raise QueryError(f"{p}: is a folder, not an image file")
        image = load_image(p, max_pixels=max_pixels)
    return encoder.encode_images([image])


def blend(text_rows: np.ndarray, image_vec: np.ndarray, image_weight: float) -> np.ndarray:
    """Text+image query: each text row moved towards the image by ``image_weight``, normalised."""
    a = image_weight
    return l2_normalize((1.0 - a) * text_rows + a * image_vec)
