"""``train_adapter``: a caption dataset in, an adapter model file out (what ``kgclip train adapter`` calls).

Steps: the base towers' features of every image and caption (cached), images that cannot be read
skipped and counted, the split (the dataset's ``train.txt`` / ``dev.txt`` when it has them, else a
seeded 90/10 split of image names by SHA-1), the heads trained with early stopping on dev, the gate's
score scales and caption bank from the training pairs, and the model file with its card.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from ..encoders.base import resolve_device
from ..errors import UsageError
from .captions import CaptionDataset, named_split, split_file, split_names
from .features import image_features, text_features
from .gate import Gate, caption_bank, score_spread
from .heads import ensemble_image, ensemble_text
from .model import AdapterModel
from .towers import towers_for
from .train import PairSet, TrainConfig, t2i_recall, train_heads

Log = Callable[[str], None]


@dataclass
class Prepared:
    """A dataset's features, split into train and dev pair sets (zero-shot vectors kept beside them)."""

    train: PairSet
    dev: PairSet
    train_zs: tuple[np.ndarray, np.ndarray]  # (text, image) zero-shot vectors of the training split
    dev_zs: tuple[np.ndarray, np.ndarray]
    split: str
    skipped: list[str]
    n_pairs: int
    feature_seconds: float
    data_key: str


def split_indices(ds: CaptionDataset) -> tuple[list[int], list[int], str]:
    """(train image indexes, dev image indexes, how the split was made)."""
    if split_file(ds, "train") and split_file(ds, "dev"):
        pos = {p: i for i, p in enumerate(ds.images)}
        tr = [pos[p] for p in named_split(ds, "train").images]
        dv = [pos[p] for p in named_split(ds, "dev").images]
        return tr, dv, "train.txt / dev.txt"
    parts = split_names([str(p) for p in ds.images], test_fraction=0.1)
    tr = [i for i, p in enumerate(ds.images) if parts[str(p)] == "train"]
    dv = [i for i, p in enumerate(ds.images) if parts[str(p)] == "test"]
    return tr, dv, "90/10 by SHA-1 of the image path"


def prepare(ds: CaptionDataset, towers, cache=None, progress: bool = False, log: Log | None = None) -> Prepared:
    log = log or (lambda m: print(m, file=sys.stderr))
    where = ds.meta.get("source", ds.name)
    if not ds.captions:
        raise UsageError(f"{where}: no usable (image, caption) pairs")
    t0 = time.perf_counter()
    tf, tz = text_features(towers, ds.captions, cache, progress)
    im = image_features(towers, ds.images, cache, progress=progress, log=log)
    secs = time.perf_counter() - t0
    if im.skipped:
        log(f"skipped {len(im.skipped)} of {len(ds.images)} images that could not be read")
    tr, dv, how = split_indices(ds)

    def pairs(idx):
        idx = [i for i in idx if im.ok[i]]
        remap = {old: new for new, old in enumerate(idx)}
        caps = [j for j, i in enumerate(ds.caption_image) if int(i) in remap]
        ci = np.array([remap[int(ds.caption_image[j])] for j in caps], np.int64)
        return PairSet(im.features[idx], tf[caps], ci), (tz[caps], im.zero_shot[idx])

    train, train_zs = pairs(tr)
    dev, dev_zs = pairs(dv)
    n = len(train.text) + len(dev.text)
    if len(train.text) < 2 or len(dev.text) < 1:
        raise UsageError(f"{where}: no usable (image, caption) pairs to train on ({len(train.text)} for training, "
                         f"{len(dev.text)} for dev, {len(im.skipped)} images unreadable)")
    key = hashlib.sha256(f"{towers.feature_key}|{where}|{len(ds.images)}|{len(ds.captions)}|{how}".encode())
    return Prepared(train, dev, train_zs, dev_zs, how, im.skipped, n, secs, key.hexdigest()[:16])


def fit_gate(weights: dict | list, p: Prepared, gate: dict | None, seed: int) -> Gate:
    """The gate's score scales and caption bank from the training pairs, with ``gate``'s settings."""
    rng = np.random.default_rng(seed)
    members = weights if isinstance(weights, list) else [weights]
    sd_a = score_spread(ensemble_text(members, p.train.text), ensemble_image(members, p.train.image), rng)
    sd_z = score_spread(p.train_zs[0], p.train_zs[1], rng)
    return Gate(**(gate or {}), sd_adapter=sd_a, sd_zero_shot=sd_z, bank=caption_bank(p.train.text, rng))


def gated_dev(model: AdapterModel, p: Prepared) -> dict:
    q = model.query_vectors(p.dev.text, p.dev_zs[0])
    return t2i_recall(q, model.image_vectors(p.dev.image, p.dev_zs[1]), p.dev.caption_image)


def train_adapter(ds: CaptionDataset, out: str | os.PathLike, base: str = "lite", config: TrainConfig | None = None,
                  gate: dict | None = None, device: str = "cpu", resume: bool = False, cache=None,
                  progress: bool = False, log: Log | None = None, prepared: Prepared | None = None,
                  members: int = 1) -> dict:
    """Train an adapter on ``ds`` and write it to ``out``; returns its card. ``members`` > 1 trains that
    many seeds (``seed``, ``seed + 1``, ...) and stores them as one ensemble (their mean cosine)."""
    config = config or TrainConfig()
    log = log or (lambda m: print(m, file=sys.stderr))
    out = Path(out)
    towers = towers_for(base, device=device)
    p = prepared or prepare(ds, towers, cache, progress, log)
    results, ckpts = [], []
    for m in range(max(1, members)):
        cfg = replace(config, seed=config.seed + m)
        ckpts.append(out.with_name(out.name + (".ckpt" if m == 0 else f".ckpt{m}")))
        if members > 1:
            log(f"member {m + 1}/{members} (seed {cfg.seed})")
        results.append(train_heads(p.train, p.dev, cfg, device=resolve_device(device), checkpoint=ckpts[-1],
                                   resume=resume, data_key=p.data_key, progress=progress, log=log))
    res = results[0]
    card = save_adapter(ds, out, towers, p, config, res, gate,
                        members=[r.weights for r in results] if members > 1 else None)
    for c in ckpts:  # the finished model supersedes them
        c.unlink(missing_ok=True)
    return card


def save_adapter(ds: CaptionDataset, out, towers, p: Prepared, config: TrainConfig, res, gate: dict | None,
                 members: list | None = None) -> dict:
    """Fit the gate to trained heads (``res``: a TrainResult; ``members``: an ensemble's weights, ``res``
    then its first member) and write the model file with its card."""
    weights = members or res.weights
    model = AdapterModel(weights, fit_gate(weights, p, gate, config.seed), {})
    model.card = {
        "kind": "adapter", "base": towers.spec, "base_fingerprint": towers.fingerprint,
        "features": towers.kind, "image_dim": int(p.train.image.shape[1]), "text_dim": int(p.train.text.shape[1]),
        "zero_shot_dim": int(p.train_zs[0].shape[1]), "heads": config.heads, "train": config.to_dict(),
        "data": {"name": ds.name, "source": str(ds.meta.get("source", "")), "split": p.split,
                 "train_images": len(p.train.image), "train_captions": len(p.train.text),
                 "dev_images": len(p.dev.image), "dev_captions": len(p.dev.text), "skipped_images": len(p.skipped)},
        "seed": config.seed, "members": len(model.members), "best_epoch": res.best_epoch, "history": res.history,
        "metrics": {"dev_adapter": res.dev, "dev_gated": gated_dev(model, p)},
        "seconds": {"features": round(p.feature_seconds, 1), "training": round(res.seconds, 1)},
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return model.save(out)
