"""Shared, seeded, offline fixtures. Expensive ones are built once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KGCLIP_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import benchmarks.fakes  # noqa: E402,F401  registers the `fake` encoder family

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLICKR = SHARED / "datasets" / "flickr8k-1k"
WN18RR = SHARED / "datasets" / "wn18rr"

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

SKIMAGE_PHOTOS = ["chelsea", "coffee", "rocket", "astronaut", "camera", "horse", "moon", "coins", "clock"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Caches go to a per-session temp dir, never to the user's home or the source tree."""
    monkeypatch.setenv("KGCLIP_CACHE", str(tmp_path_factory.getbasetemp() / "kgclip-cache"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """Register a tiny CLIP-shaped open_clip config; returns its model name."""
    import open_clip

    d = tmp_path_factory.mktemp("oc-config")
    (d / "kgclip-tiny.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(d / "kgclip-tiny.json")
    return "kgclip-tiny"


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory) -> Path:
    """scikit-image's bundled photos saved as JPEG files (real, redistributable images)."""
    from PIL import Image
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    for name in SKIMAGE_PHOTOS:
        arr = getattr(data, name)()
        Image.fromarray(arr).convert("RGB").save(d / f"{name}.jpg", quality=92)
    return d


@pytest.fixture(scope="session")
def lite_encoder(tmp_path_factory):
    os.environ["KGCLIP_CACHE"] = str(tmp_path_factory.getbasetemp() / "kgclip-cache")
    from retrieval.encoders import get_encoder

    return get_encoder("lite", device="cpu").load()


@pytest.fixture
def colour_images(tmp_path) -> Path:
    """Solid-colour images whose ground truth the fake encoder knows exactly."""
    from PIL import Image

    from benchmarks.fakes import COLOURS

    d = tmp_path / "colours"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        arr = np.clip(np.array(rgb)[None, None, :] + rng.integers(-8, 8, (24, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"{name}.png")
    return d
