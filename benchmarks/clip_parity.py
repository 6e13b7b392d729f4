"""Parity with CLIP_benchmark: run **its own** ``zeroshot_retrieval.evaluate`` and
``zeroshot_classification.evaluate`` on a kgclip encoder, to set beside ``kgclip bench recall`` /
``kgclip bench zeroshot`` on the same images.

CLIP_benchmark (``pip install --no-deps clip-benchmark``: its metric modules need only torch, tqdm and
scikit-learn, which kgclip's bench extra has) calls a model's ``encode_image`` on a batch from a torch
DataLoader and ``encode_text`` on a tokenizer's output. :class:`KgclipCLIP` is that thin wrapper: images
go through the encoder's own ``image_transform`` and ``encode_image_arrays`` (what ``kgclip build`` runs),
texts through ``encode_queries`` (what ``kgclip search`` runs); the "tokenizer" passes the strings on.
``amp`` is off: on CPU, CLIP_benchmark's default autocast computes the score matrix in bfloat16, which
rounds near scores together (see docs/measurements.md).

    python -m benchmarks.clip_parity        # -> benchmarks/results/clip_benchmark_parity.json
"""

from __future__ import annotations

import argparse
import builtins
import os
import sys

import numpy as np

from benchmarks import write_result
from benchmarks.recall import RESULTS


class KgclipCLIP:
    """``encode_image`` / ``encode_text`` over a kgclip :class:`retrieval.encoders.base.Encoder`."""

    def __init__(self, encoder):
        self.encoder = encoder

    def encode_image(self, images):
        import torch

        vecs = self.encoder.encode_image_arrays(images.cpu().numpy()).vectors
        return torch.from_numpy(np.asarray(vecs, np.float32))

    def encode_text(self, texts):
        import torch

        return torch.from_numpy(np.asarray(self.encoder.encode_queries(list(texts)), np.float32))


class Texts(list):
    """A "tokenized" batch: the strings themselves (``.to(device)`` is a no-op)."""

    def to(self, device):
        return self


def tokenizer(texts) -> Texts:
    return Texts(texts)


class Images:
    """A map-style dataset: (the encoder's transform of image i, target i); ``classes`` for classification."""

    def __init__(self, paths, targets, transform, classes=None):
        self.paths, self.targets, self.transform, self.classes = list(paths), list(targets), transform, classes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        import torch

        from retrieval.encoders.base import load_image

        return torch.from_numpy(np.asarray(self.transform(load_image(self.paths[i])))), self.targets[i]


def _loader(ds: Images, batch_size: int, texts: bool):
    import torch

    def collate(batch):
        x = torch.stack([b[0] for b in batch])
        t = [b[1] for b in batch]
        return x, (t if texts else torch.tensor(t, dtype=torch.int64))

    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)


def _quiet_tqdm():
    os.environ.setdefault("TQDM_DISABLE", "1")


def retrieval(encoder, images, captions, caption_image, ks=(1, 5, 10), batch_size: int = 64) -> dict:
    """CLIP_benchmark's ``zeroshot_retrieval.evaluate``: images with their captions (CLIP_benchmark
    needs at least max(ks) images and captions)."""
    _quiet_tqdm()
    from clip_benchmark.metrics import zeroshot_retrieval

    per_image: list[list[str]] = [[] for _ in images]
    for cap, i in zip(captions, caption_image):
        per_image[int(i)].append(cap)
    if any(not c for c in per_image):
        raise ValueError("CLIP_benchmark's retrieval needs a caption for every image")
    ds = Images(images, per_image, encoder.image_transform())
    return zeroshot_retrieval.evaluate(KgclipCLIP(encoder), _loader(ds, batch_size, texts=True), tokenizer,
                                       "cpu", amp=False, recall_k_list=list(ks))


def _float(x):
    """``float()`` that also takes a one-element array (NumPy 2.4 refuses ``float(array([v]))``)."""
    return builtins.float(np.asarray(x).reshape(-1)[0]) if isinstance(x, np.ndarray) else builtins.float(x)


def classification(encoder, images, labels, classnames, templates, batch_size: int = 64) -> dict:
    """CLIP_benchmark's ``zeroshot_classification.evaluate`` (acc1, acc5, mean_per_class_recall).

    Its ``accuracy`` ends in ``float(tensor.cpu().numpy())`` on a one-element array, which NumPy 2.4
    turned into a TypeError; for the call, the module's ``float`` name takes such an array (its code is
    otherwise run as shipped)."""
    _quiet_tqdm()
    from clip_benchmark.metrics import zeroshot_classification as zc

    ds = Images(images, [int(v) for v in labels], encoder.image_transform(), classes=list(classnames))
    had = "float" in vars(zc)
    old = vars(zc).get("float")
    zc.float = _float
    try:
        return zc.evaluate(KgclipCLIP(encoder), _loader(ds, batch_size, texts=False), tokenizer,
                           list(classnames), list(templates), "cpu", amp=False)
    finally:
        if had:
            zc.float = old
        else:
            del zc.float


def compare(ours: dict, theirs: dict) -> dict:
    """Per shared key: both values and their absolute difference (None where either is missing/NaN)."""
    out = {}
    for k in sorted(set(ours) & set(theirs)):
        a, b = ours[k], theirs[k]
        ok = all(isinstance(v, (int, float)) and v == v for v in (a, b))
        out[k] = {"kgclip": a, "clip_benchmark": b, "abs_diff": abs(float(a) - float(b)) if ok else None}
    return out


def run_parity(model: str = "lite", device: str = "cpu", progress: bool = True) -> dict:
    """flickr8k-1k: ``kgclip bench recall`` (plain queries, exact search) beside CLIP_benchmark's retrieval;
    Fashion-MNIST: ``kgclip bench zeroshot`` beside its classification."""
    from benchmarks.datasets import flickr8k_1k
    from benchmarks.recall import run_recall
    from retrieval.encoders import get_encoder

    ds = flickr8k_1k("all")
    ours = run_recall("flickr8k-1k", [model], ("none",), "all", device=device, progress=progress)
    ex = ours["runs"][0]["expand"]["none"]["exact"]
    enc = get_encoder(model, device=device)
    theirs = retrieval(enc, ds.images, ds.captions, ds.caption_image)
    from importlib.metadata import version

    return {"benchmark": "clip_benchmark_parity", "model": model, "dataset": ds.name,
            "clip_benchmark": version("clip-benchmark"), "amp": False,
            "retrieval": compare({k: v for k, v in ex.items() if "recall@" in k}, theirs),
            "classification": classification_parity(enc, model, device, progress)}


def classification_parity(enc, model: str, device: str = "cpu", progress: bool = True) -> dict:
    """Fashion-MNIST (30 per class): ``kgclip bench zeroshot`` beside CLIP_benchmark's classification."""
    from benchmarks.imagefolder import class_text, fashion_mnist_folder, scan
    from benchmarks.zeroshot import TEMPLATES, run_zeroshot

    root = fashion_mnist_folder()
    ours = run_zeroshot(root, model, TEMPLATES, device=device, progress=progress)
    folder = scan(root)
    paths = [p for c in folder.classes for p in folder.classes[c]]
    labels = [k for k, c in enumerate(folder.classes) for _ in folder.classes[c]]
    theirs = classification(enc, paths, labels, [class_text(c) for c in folder.classes], TEMPLATES)
    m = ours["metrics"]
    return {"set": "fashion-mnist-30", "n_images": m["n_images"], "templates": list(TEMPLATES),
            "metrics": compare({k: m[k] for k in ("acc1", "acc5", "mean_per_class_recall")}, theirs)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lite")
    ap.add_argument("--out", default=str(RESULTS / "clip_benchmark_parity.json"))
    a = ap.parse_args(argv)
    os.environ.setdefault("KGCLIP_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res = run_parity(a.model)
    res["command"] = "python -m benchmarks.clip_parity " + " ".join(argv if argv is not None else sys.argv[1:])
    write_result(a.out, res)


if __name__ == "__main__":
    main()
