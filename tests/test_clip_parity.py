"""CLIP_benchmark's own metric code on kgclip's encoder gives the numbers `kgclip bench recall` and
`kgclip bench zeroshot` give, on a small seeded set (skipped when clip_benchmark is not installed:
`pip install --no-deps clip-benchmark`, part of the bench extra)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import benchmarks.fakes  # noqa: F401  (registers fake:v1)
from cli import main

pytest.importorskip("torch")
pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "purple", "orange"]
# distinct caption texts (no two caption vectors tie); some name another image's colour
CAPTIONS = [("red", "red"), ("red", "a red one"), ("green", "green"), ("green", "a blue thing"),
            ("blue", "blue"), ("blue", "purple and blue"), ("yellow", "yellow"), ("yellow", "orange"),
            ("black", "black"), ("black", "white or black"), ("white", "white"), ("white", "snow"),
            ("purple", "purple"), ("purple", "violet"), ("orange", "orange fruit"), ("orange", "red orange")]


def _images(root, names, per=1, seed=0):
    """``names``: folder names, or folder name -> the colour of its images."""
    from PIL import Image

    from benchmarks.fakes import COLOURS as RGB

    rng = np.random.default_rng(seed)
    out = []
    for n in names:
        colour = names[n] if isinstance(names, dict) else n
        (root / n).mkdir(parents=True, exist_ok=True)
        for i in range(per):
            arr = np.array(RGB[colour])[None, None, :] + rng.integers(-40, 40, (16, 16, 3))
            p = root / n / f"{i}.png"
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p)
            out.append(p)
    return out


def test_recall_matches_clip_benchmark(tmp_path, monkeypatch):
    from benchmarks import clip_parity
    from benchmarks.datasets import load_captions
    from retrieval.encoders import get_encoder

    monkeypatch.setenv("KGCLIP_BENCH_CACHE", str(tmp_path / "cache"))
    _images(tmp_path / "img", COLOURS)
    cap = tmp_path / "captions.csv"
    with open(cap, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        w.writerows((f"img/{c}/0.png", t) for c, t in CAPTIONS)
    out = tmp_path / "r.json"
    r = CliRunner().invoke(main, ["-q", "bench", "recall", str(cap), "--model", "fake:v1", "--expand", "none",
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    ours = json.loads(out.read_text())["runs"][0]["expand"]["none"]["exact"]
    ds = load_captions(cap)
    theirs = clip_parity.retrieval(get_encoder("fake:v1"), ds.images, ds.captions, ds.caption_image, ks=(1, 5))
    assert set(theirs) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5)}
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v, abs=1e-9), k
    assert 0 < ours["image_retrieval_recall@1"] < 1  # not a trivial set


def test_zeroshot_matches_clip_benchmark(tmp_path, monkeypatch):
    from benchmarks import clip_parity
    from retrieval.encoders import get_encoder

    monkeypatch.setenv("KGCLIP_BENCH_CACHE", str(tmp_path / "cache"))
    # half the class names are not colour words, so the fake encoder gets some images wrong
    classes = {"red": "red", "grass": "green", "sky": "blue", "yellow": "yellow", "violet": "purple",
               "orange": "orange", "coal": "black"}
    paths = _images(tmp_path / "folder", classes, per=3, seed=1)
    templates = ["a photo of a {c}.", "a {c} thing"]
    out = tmp_path / "z.json"
    r = CliRunner().invoke(main, ["-q", "bench", "zeroshot", str(tmp_path / "folder"), "--model", "fake:v1",
                                  *(a for t in templates for a in ("--template", t)), "-o", str(out)])
    assert r.exit_code == 0, r.output
    ours = json.loads(out.read_text())["metrics"]
    names = sorted(classes)  # ImageFolder order
    labels = [names.index(p.parent.name) for p in paths]
    theirs = clip_parity.classification(get_encoder("fake:v1"), paths, labels, names, templates)
    for k in ("acc1", "acc5", "mean_per_class_recall"):
        assert ours[k] == pytest.approx(theirs[k], abs=1e-9), k
    assert 0 < ours["acc1"] < ours["acc5"] < 1


def test_ties_are_where_the_two_differ():
    """Constant scores: CLIP_benchmark's torch.topk credits some hits by chance, kgclip none (pessimistic)."""
    import torch
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k

    from benchmarks.metrics import caption_retrieval_metrics

    cap_img = [0, 0, 1, 1, 2, 2]
    pos = torch.zeros(6, 3, dtype=torch.bool)
    pos[torch.arange(6), torch.tensor(cap_img)] = True
    theirs = (recall_at_k(torch.zeros(6, 3), pos, 1) > 0).float().mean().item()
    ours = caption_retrieval_metrics(np.zeros((6, 3)), cap_img)["image_retrieval_recall@1"]
    assert ours == 0.0 and theirs > 0
