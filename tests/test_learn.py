"""Stage 1 adapter (retrieval.learn): toy training, model files, fingerprints, bad input, the CLI.

Everything runs on seeded synthetic features or on the ``fake:v1`` encoder's towers: a few seconds.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from retrieval.encoders import get_encoder
from retrieval.errors import ModelError, UsageError
from retrieval.learn import train as T
from retrieval.learn.adapter import train_adapter
from retrieval.learn.captions import load_captions
from retrieval.learn.heads import build_heads, numpy_image, numpy_text, numpy_weights
from retrieval.learn.model import AdapterModel

torch = pytest.importorskip("torch")
TINY = {"dim": 16, "hidden": 32, "text_hidden": 32, "dropout": 0.0}


def toy_pairs(n_img: int, seed: int) -> T.PairSet:
    """Images and two captions each, both noisy linear views of one latent per image."""
    rng = np.random.default_rng(seed)
    a, b = np.random.default_rng(99).standard_normal((2, 8, 24))
    z = rng.standard_normal((n_img, 8))
    img = z @ a + 0.3 * rng.standard_normal((n_img, 24))
    cap_img = np.repeat(np.arange(n_img), 2)
    txt = z[cap_img] @ b[:, :16] + 0.3 * rng.standard_normal((2 * n_img, 16))
    return T.PairSet(img.astype(np.float32), txt.astype(np.float32), cap_img)


def test_toy_training_lowers_loss_and_raises_recall():
    torch.set_num_threads(1)
    train, dev = toy_pairs(256, 0), toy_pairs(100, 1)
    cfg = T.TrainConfig(epochs=12, batch_size=32, lr=3e-3, patience=20, seed=3, ema=0.0, heads=TINY)
    torch.manual_seed(cfg.seed)
    before = T.evaluate(numpy_weights(build_heads(24, 16, TINY)), dev)
    res = T.train_heads(train, dev, cfg, log=lambda m: None)
    assert res.history[-1]["loss"] < 0.8 * res.history[0]["loss"]
    assert res.dev["R@1"] > before["R@1"] + 0.2 and res.dev["R@10"] > 0.8


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_after_interruption_ends_with_the_same_weights(tmp_path, monkeypatch, ema):
    torch.set_num_threads(1)
    train, dev = toy_pairs(64, 0), toy_pairs(20, 1)
    cfg = T.TrainConfig(epochs=4, batch_size=16, patience=20, seed=1, ema=ema, heads=TINY)
    full = T.train_heads(train, dev, cfg, log=lambda m: None)
    calls = {"n": 0}
    real = T.evaluate

    def dies_in_epoch_3(w, d):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(w, d)

    ckpt = tmp_path / "m.ckpt"
    monkeypatch.setattr(T, "evaluate", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        T.train_heads(train, dev, cfg, checkpoint=ckpt, log=lambda m: None)
    monkeypatch.setattr(T, "evaluate", real)
    res = T.train_heads(train, dev, cfg, checkpoint=ckpt, resume=True, log=lambda m: None)
    assert res.resumed_from == 2
    for k in full.weights:
        np.testing.assert_allclose(res.weights[k], full.weights[k], atol=1e-6)
    with pytest.raises(UsageError, match="another training run"):
        T.train_heads(train, dev, T.TrainConfig(epochs=5, heads=TINY), checkpoint=ckpt, resume=True)


def test_numpy_heads_match_torch():
    torch.manual_seed(0)
    m = build_heads(24, 16, TINY).eval()
    for p in m.text_mlp[3].parameters():  # non-zero, so the residual branch is exercised
        torch.nn.init.normal_(p)
    x, t = torch.randn(5, 24), torch.randn(5, 16)
    w = numpy_weights(m)
    with torch.no_grad():
        np.testing.assert_allclose(numpy_image(w, x.numpy()), m.encode_image(x).numpy(), atol=1e-5)
        np.testing.assert_allclose(numpy_text(w, t.numpy()), m.encode_text(t).numpy(), atol=1e-5)


@pytest.fixture
def toy_dataset(tmp_path):
    """Coloured squares with captions naming the colour (the fake encoder's towers know colours)."""
    from PIL import Image

    from benchmarks.fakes import COLOURS

    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        name = list(COLOURS)[i % len(COLOURS)]
        rgb = np.clip(np.array(COLOURS[name]) + rng.integers(-12, 12, 3), 0, 255)
        Image.new("RGB", (12, 12), tuple(int(v) for v in rgb)).save(tmp_path / f"im{i}.png")
        rows += [(f"im{i}.png", f"a {name} square"), (f"im{i}.png", f"something {name} number {i}")]
    with open(tmp_path / "captions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    return tmp_path / "captions.csv"


@pytest.fixture
def toy_model(toy_dataset, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "m.safetensors"
    train_adapter(load_captions(toy_dataset), out, base="fake:v1", log=lambda m: None,
                  config=T.TrainConfig(epochs=3, batch_size=16, heads=TINY))
    return out


def test_model_file_round_trip_gives_equal_outputs(toy_model, toy_dataset):
    m1 = AdapterModel.load(toy_model)
    assert m1.card["base"] == "fake:v1" and m1.card["seed"] == 0 and m1.card["data"]["train_images"] > 0
    copy = toy_model.with_name("copy.safetensors")
    m1.save(copy)
    m2 = AdapterModel.load(copy)
    rng = np.random.default_rng(0)
    f, z = rng.standard_normal((4, 32)).astype(np.float32), rng.standard_normal((4, 32)).astype(np.float32)
    np.testing.assert_array_equal(m1.scores(f, z, f, z), m2.scores(f, z, f, z))
    e1 = get_encoder(f"adapter:{toy_model}", cache=False)
    e2 = get_encoder(f"adapter:{copy}", cache=False)
    imgs = [toy_dataset.parent / "im0.png", toy_dataset.parent / "im1.png"]
    np.testing.assert_array_equal(e1.encode_images(imgs), e2.encode_images(imgs))
    np.testing.assert_array_equal(e1.encode_queries(["a red square"]), e2.encode_queries(["a red square"]))
    assert e1.dim == 16 + 32 and e1.encode_queries(["red"]).shape == (1, 48)
    # an ensemble (members side by side) round-trips too; its scores are the members' mean cosine
    ens = AdapterModel([m1.members[0], m1.members[0]], m1.gate, m1.card)
    ens.save(copy)
    m3 = AdapterModel.load(copy)
    assert len(m3.members) == 2 and m3.dim == 2 * 16 + 32
    np.testing.assert_allclose(m3.scores(f, z, f, z), m1.scores(f, z, f, z), atol=1e-5)


def test_base_fingerprint_mismatch_is_one_line_naming_the_file(toy_model):
    m = AdapterModel.load(toy_model)
    m.card["base_fingerprint"] = "fake:v1#0000"
    other = toy_model.with_name("other.safetensors")
    m.save(other)
    with pytest.raises(ModelError, match=r"other\.safetensors: trained on base model fake:v1#0000"):
        get_encoder(f"adapter:{other}", cache=False).load()
    # the index fingerprint covers the adapter file: another adapter at the same path is another model
    fp = get_encoder(f"adapter:{toy_model}", cache=False).fingerprint
    toy_model.write_bytes(other.read_bytes())
    assert get_encoder(f"adapter:{toy_model}", cache=False).fingerprint != fp


def test_damaged_or_foreign_model_file_is_a_one_line_error(toy_model, tmp_path):
    data = bytearray(toy_model.read_bytes())
    data[-5] ^= 0xFF  # a flipped byte in the tensors
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="flipped.safetensors: damaged adapter model file"):
        AdapterModel.load(bad)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(bytes(data[:100]))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04pickle-not-welcome")
    for p in (cut, junk):
        with pytest.raises(ModelError, match=f"{p.name}: not a kgclip adapter model file") as e:
            AdapterModel.load(p)
        assert "\n" not in str(e.value)


def test_no_usable_pairs_is_one_line(tmp_path):
    (tmp_path / "captions.csv").write_text("image,caption\nmissing1.jpg,a dog\nmissing2.jpg,a cat\n")
    r = CliRunner().invoke(cli.main, ["-q", "train", "adapter", str(tmp_path / "captions.csv"), "-o",
                                      str(tmp_path / "m.safetensors"), "--base", "fake:v1"])
    assert r.exit_code != 0
    err = r.output.strip().splitlines()
    assert len(err) == 1 and "no usable (image, caption) pairs" in err[0], r.output


def test_cli_train_build_search_end_to_end(toy_dataset, tmp_path):
    torch.set_num_threads(1)
    runner = CliRunner()
    model = tmp_path / "toy.safetensors"
    r = runner.invoke(cli.main, ["-q", "train", "adapter", str(toy_dataset), "-o", str(model), "--base", "fake:v1",
                                 "--epochs", "3", "--seed", "1", "--batch-size", "16", "--format", "json"])
    assert r.exit_code == 0, r.output
    card = json.loads(r.stdout)
    assert card["seed"] == 1 and card["base"] == "fake:v1" and card["data"]["split"].startswith("90/10")
    assert not model.with_name(model.name + ".ckpt").exists()
    idx = tmp_path / "idx"
    r = runner.invoke(cli.main, ["-q", "build", str(toy_dataset.parent), "-i", str(idx), "--model",
                                 f"adapter:{model}", "--workers", "0", "--no-captions"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli.main, ["search", str(idx), "a red square", "--format", "json", "-k", "3"])
    assert r.exit_code == 0, r.output
    # the index adapts to its own captions too: `train adapter INDEX`
    idx2 = tmp_path / "idx2"
    r = runner.invoke(cli.main, ["-q", "build", str(toy_dataset), "-i", str(idx2), "--model", "fake:v1",
                                 "--workers", "0"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli.main, ["-q", "train", "adapter", str(idx2), "-o", str(tmp_path / "own.safetensors"),
                                 "--epochs", "2", "--batch-size", "16", "--members", "2"])
    assert r.exit_code == 0, r.output
    own = AdapterModel.load(tmp_path / "own.safetensors")
    assert own.card["base"] == "fake:v1" and len(own.members) == 2
    assert not list(tmp_path.glob("own.safetensors.ckpt*"))


def test_feature_cache_skips_the_image_tower_on_a_second_run(toy_dataset, tmp_path, monkeypatch):
    from retrieval.learn.features import image_features
    from retrieval.learn.towers import towers_for

    ds = load_captions(toy_dataset)
    paths = [*ds.images[:4], tmp_path / "missing.png"]
    tw = towers_for("fake:v1")
    first = image_features(tw, paths, tmp_path / "cache", log=lambda m: None)
    assert first.ok.tolist() == [True] * 4 + [False] and len(first.skipped) == 1 and not first.cached
    monkeypatch.setattr(tw, "image_features", lambda batch: pytest.fail("the tower ran again"))
    second = image_features(tw, paths, tmp_path / "cache", log=lambda m: None)
    assert second.cached and np.array_equal(second.features, first.features) and len(second.skipped) == 1
