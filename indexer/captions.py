"""The captions already in an index as a caption dataset: what ``kgclip train adapter INDEX`` adapts to."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.errors import UsageError
from retrieval.learn.captions import CaptionDataset

from .index import open_index


def index_caption_dataset(index_dir: str) -> tuple[CaptionDataset, str]:
    """(each item that has captions, with them; the index's model spec)."""
    idx = open_index(str(index_dir))
    try:
        images, caps, cap_img = [], [], []
        for _i, it in idx.iter_items():
            c = [str(x).strip() for x in (it.get("captions") or []) if str(x).strip()]
            if c and it.get("path"):
                caps += c
                cap_img += [len(images)] * len(c)
                images.append(Path(it["path"]))
        model = idx.model_spec
    finally:
        idx.close()
    if not caps:
        raise UsageError(f"{index_dir}: the index holds no captions to train on (build it from a manifest "
                         f"with a caption column)")
    return CaptionDataset(Path(index_dir).name, images, caps, np.array(cap_img, np.int64),
                          {"source": str(Path(index_dir) / "index.json")}), model
