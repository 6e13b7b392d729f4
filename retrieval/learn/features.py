"""The feature cache: frozen-tower features of a dataset's images and captions, computed once.

Image features cost a CNN forward per image (Flickr8k: a few minutes on 2 cores); text features cost a
MiniLM forward per caption. Both are stored under ``<cache>/learn/`` as ``.npz`` files (loaded without
pickle) keyed by a fingerprint of the towers (base model fingerprint, feature kind) and of the inputs
(each image's resolved path, size and mtime; the caption texts), so a second run skips the CNN and a
changed image or model recomputes. Broken or missing images are skipped, counted and reported.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..atomic import atomic_write
from ..encoders.base import load_image
from ..errors import KgclipError
from ..paths import cache_dir
from .towers import EncoderTowers

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


@dataclass
class ImageFeatures:
    """Per image: features (zeros where ``ok`` is False), zero-shot vectors, and skipped images' reasons."""

    features: np.ndarray
    zero_shot: np.ndarray
    ok: np.ndarray
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False


def learn_cache(root: str | os.PathLike | None = None) -> Path:
    return Path(root) if root else cache_dir() / "learn"


def _file_key(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        try:
            st = p.stat()
            h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}:missing\n".encode())
    return h.hexdigest()[:20]


def _load_npz(path: Path, names: Sequence[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {n: z[n] for n in names}
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache file is recomputed


def _save_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue(), durable=False)  # a cache: recomputed if a crash loses it


def image_features(towers: EncoderTowers, paths: Sequence[str | os.PathLike], cache: Path | None = None,
                   batch_size: int = 64, progress: bool = False, log: Log = _stderr) -> ImageFeatures:
    """Features and zero-shot vectors of every image in ``paths`` (cached; see the module docstring)."""
    paths = [Path(p) for p in paths]
    key = hashlib.sha256(f"{towers.feature_key}|{_file_key(paths)}".encode()).hexdigest()[:24]
    path = learn_cache(cache) / f"img-{key}.npz"
    got = _load_npz(path, ("features", "zero_shot", "ok", "skipped"))
    if got is not None and len(got["ok"]) == len(paths):
        return ImageFeatures(got["features"], got["zero_shot"], got["ok"], [str(s) for s in got["skipped"]],
                             cached=True)
    towers.load()
    t0 = time.perf_counter()
    tf = towers.image_transform()
    feats = np.zeros((len(paths), towers.image_dim), np.float32)
    zs = np.zeros((len(paths), towers.zero_shot_dim), np.float32)
    ok = np.zeros(len(paths), bool)
    skipped: list[str] = []
    bar = _bar(len(paths), "image features", progress)
    for start in range(0, len(paths), batch_size):
        arrs, rows = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                arrs.append(tf(load_image(paths[i])))
                rows.append(i)
            except (KgclipError, OSError, ValueError) as e:
                skipped.append(f"{paths[i]}: {e}")
                log(f"skipping {paths[i]}: {e}")
        if arrs:
            f, b = towers.image_features(np.stack(arrs))
            feats[rows], zs[rows], ok[rows] = f, b.vectors, True
        if bar is not None:
            bar.update(min(batch_size, len(paths) - start))
    if bar is not None:
        bar.close()
    secs = time.perf_counter() - t0
    _save_npz(path, features=feats, zero_shot=zs, ok=ok, skipped=np.array(skipped, dtype=str))
    return ImageFeatures(feats, zs, ok, skipped, seconds=secs)


def text_features(towers: EncoderTowers, texts: Sequence[str], cache: Path | None = None,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(raw text features, zero-shot query vectors) of ``texts`` (cached like the images)."""
    texts = [str(t) for t in texts]
    h = hashlib.sha256(towers.feature_key.encode())
    for t in texts:
        h.update(t.encode("utf-8", "replace") + b"\0")
    path = learn_cache(cache) / f"txt-{h.hexdigest()[:24]}.npz"
    got = _load_npz(path, ("features", "zero_shot"))
    if got is not None and len(got["features"]) == len(texts):
        return got["features"], got["zero_shot"]
    towers.load()
    parts = []
    bar = _bar(len(texts), "text features", progress)
    for i in range(0, len(texts), 1024):
        parts.append(towers.text_features(texts[i : i + 1024]))
        if bar is not None:
            bar.update(len(parts[-1]))
    if bar is not None:
        bar.close()
    feats = np.concatenate(parts) if parts else np.zeros((0, towers.text_dim), np.float32)
    zs = towers.zero_shot_texts(feats) if len(feats) else np.zeros((0, towers.zero_shot_dim), np.float32)
    _save_npz(path, features=feats, zero_shot=zs)
    return feats, zs


def _bar(total: int, desc: str, on: bool):
    if not on:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, disable=None)
