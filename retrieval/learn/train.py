"""The training loop: symmetric InfoNCE on cached features, early stopping on dev, resumable.

Each epoch visits every training image once in a seeded random order, with one of its captions drawn at
random (so the five Flickr captions all serve over the epochs and no batch holds two captions of one
image: no false negatives). AdamW, cosine learning rate with a short warm-up, learned temperature.
After each epoch the dev text->image R@10 of the adapter alone is measured; the best epoch's weights are
kept and training stops after ``patience`` epochs without a gain. The randomness of epoch ``e`` is
seeded by (seed, e), so a run resumed from its checkpoint (written after every epoch, safetensors)
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UsageError
from .heads import DEFAULTS, build_heads, numpy_image, numpy_text, numpy_weights
from .modelfile import CHECKPOINT_FORMAT, load_tensors, read_card, save_tensors

Log = Callable[[str], None]


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 1  # epochs of linear warm-up
    patience: int = 5
    ema: float = 0.99  # > 0: evaluate and keep an exponential moving average of the weights (per step)
    seed: int = 0
    heads: dict = field(default_factory=lambda: dict(DEFAULTS))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PairSet:
    """Features of one split: ``image[i]``, ``text[j]``, and ``caption_image[j]`` = the image of caption j."""

    image: np.ndarray
    text: np.ndarray
    caption_image: np.ndarray

    def __post_init__(self):
        self.caption_image = np.asarray(self.caption_image, np.int64)


@dataclass
class TrainResult:
    weights: dict
    history: list
    best_epoch: int
    dev: dict
    seconds: float
    resumed_from: int = 0


def t2i_recall(queries: np.ndarray, images: np.ndarray, caption_image, ks=(1, 5, 10)) -> dict:
    """Text->image R@k of unit vectors (ties pessimistic, as benchmarks.metrics counts them)."""
    s = np.asarray(queries, np.float32) @ np.asarray(images, np.float32).T
    own = s[np.arange(len(s)), np.asarray(caption_image)][:, None]
    rank = (s >= own).sum(axis=1)  # itself included: ties count against it
    return {f"R@{k}": float(np.mean(rank <= k)) for k in ks}


def evaluate(weights: dict, data: PairSet) -> dict:
    return t2i_recall(numpy_text(weights, data.text), numpy_image(weights, data.image), data.caption_image)


def _check(data: PairSet, what: str) -> None:
    if len(data.image) == 0 or len(data.text) == 0:
        raise UsageError(f"no usable (image, caption) pairs in the {what} split")


def _state_tensors(model, opt, best: dict | None, ema: dict | None) -> dict[str, np.ndarray]:
    out = {f"model.{k}": v for k, v in numpy_weights(model).items()}
    if ema is not None:
        out.update({f"ema.{k}": v.detach().cpu().numpy() for k, v in ema.items()})
    if best is not None:
        out.update({f"best.{k}": v for k, v in best.items()})
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"opt.{i}.{k}"] = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32)
    return out


def _restore(model, opt, tensors: dict) -> dict | None:
    import torch

    # shapes come from the live module: a 0-d tensor (the temperature) may come back as shape [1]
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict({k[6:]: torch.from_numpy(v.copy()).reshape(shapes[k[6:]])
                           for k, v in tensors.items() if k.startswith("model.")})
    params = list(model.parameters())
    sd = opt.state_dict()
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            t = torch.from_numpy(v.copy())
            shape = () if name == "step" else params[int(i)].shape
            state.setdefault(int(i), {})[name] = t.reshape(shape)
    sd["state"] = state
    opt.load_state_dict(sd)
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    ema = {k[4:]: torch.from_numpy(v.copy()).reshape(shapes[k[4:]])
           for k, v in tensors.items() if k.startswith("ema.")}
    return best or None, ema or None


def train_heads(train: PairSet, dev: PairSet, config: TrainConfig, device: str = "cpu",
                checkpoint: str | Path | None = None, resume: bool = False, data_key: str = "",
                progress: bool = False, log: Log | None = None) -> TrainResult:
    """Train the heads (see the module docstring); ``checkpoint`` is rewritten after every epoch."""
    import torch

    _check(train, "training")
    _check(dev, "dev")
    log = log or (lambda m: print(m, file=sys.stderr))
    torch.manual_seed(config.seed)
    model = build_heads(train.image.shape[1], train.text.shape[1], config.heads).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n_img = len(train.image)
    steps = max(1, math.ceil(n_img / config.batch_size))
    caps_of = [[] for _ in range(n_img)]
    for j, i in enumerate(train.caption_image):
        caps_of[int(i)].append(j)
    has_cap = np.array([bool(c) for c in caps_of])
    img_t = torch.from_numpy(np.ascontiguousarray(train.image, np.float32)).to(device)
    txt_t = torch.from_numpy(np.ascontiguousarray(train.text, np.float32)).to(device)
    history: list[dict] = []
    best, best_epoch, best_r10, start = None, 0, -1.0, 0
    ckpt_card = {"config": config.to_dict(), "data": data_key}
    ema_saved = None
    if resume and checkpoint and Path(checkpoint).is_file():
        card = read_card(checkpoint, CHECKPOINT_FORMAT)
        if card.get("config") != ckpt_card["config"] or card.get("data") != data_key:
            raise UsageError(f"{checkpoint}: a checkpoint of another training run (other data or settings): "
                             f"delete it or train without --resume")
        tensors, card = load_tensors(checkpoint, CHECKPOINT_FORMAT)
        best, ema_saved = _restore(model, opt, tensors)
        history, best_epoch, best_r10 = card["history"], card["best_epoch"], card["best_r10"]
        start = card["epoch"]
        log(f"resuming from {checkpoint} after epoch {start}")
    ema = None
    if config.ema > 0:
        ema = ema_saved or {k: v.detach().clone() for k, v in model.state_dict().items()}
        ema = {k: v.to(device) for k, v in ema.items()}
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.epochs * steps, initial=start * steps, desc="training", unit="step",
                   file=sys.stderr, disable=None)
    total = config.epochs * steps
    for epoch in range(start, config.epochs):
        if epoch - best_epoch >= config.patience and best is not None:
            break
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 100_003 + epoch)
        order = rng.permutation(np.flatnonzero(has_cap))
        pick = np.array([caps_of[i][rng.integers(len(caps_of[i]))] for i in order])
        model.train()
        losses = []
        for s in range(steps):
            sl = slice(s * config.batch_size, (s + 1) * config.batch_size)
            bi, bt = order[sl], pick[sl]
            if len(bi) < 2:
                continue
            step = epoch * steps + s
            warm = config.warmup * steps
            lr = config.lr * (step + 1) / warm if step < warm else \
                config.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
            for g in opt.param_groups:
                g["lr"] = lr
            iv, tv, scale = model(img_t[torch.from_numpy(bi)], txt_t[torch.from_numpy(bt)])
            logits = scale * tv @ iv.T
            target = torch.arange(len(bi), device=logits.device)
            loss = (torch.nn.functional.cross_entropy(logits, target)
                    + torch.nn.functional.cross_entropy(logits.T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    for k, v in model.state_dict().items():
                        ema[k].mul_(config.ema).add_(v, alpha=1 - config.ema)
            losses.append(loss.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=epoch + 1)
        model.eval()
        weights = numpy_weights(model) if ema is None else \
            {k: v.detach().float().cpu().numpy().copy() for k, v in ema.items()}
        m = evaluate(weights, dev)
        row = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), "temperature":
               round(1 / model.logit_scale.exp().item(), 4), **{f"dev_{k}": round(v, 4) for k, v in m.items()}}
        history.append(row)
        if m["R@10"] > best_r10:
            best, best_epoch, best_r10 = weights, epoch + 1, m["R@10"]
        if bar is None or bar.disable:  # no bar off a terminal: one line per epoch
            log(f"epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.3f}, dev R@10 {m['R@10']:.3f}")
        if checkpoint:
            save_tensors(checkpoint, _state_tensors(model, opt, best, ema),
                         {**ckpt_card, "epoch": epoch + 1, "history": history, "best_epoch": best_epoch,
                          "best_r10": best_r10}, fmt=CHECKPOINT_FORMAT)
    if bar is not None:
        bar.close()
    if best is None:
        best = numpy_weights(model)
    return TrainResult(best, history, best_epoch, evaluate(best, dev), time.perf_counter() - t0, start)
