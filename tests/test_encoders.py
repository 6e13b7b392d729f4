"""The Encoder contract, run over every family, plus family-specific checks."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from retrieval.encoders import get_encoder, list_encoders, parse_spec
from retrieval.encoders.base import SENSE_TEXT_MODEL
from retrieval.errors import ModelError, WeightsNotFound


def test_importing_encoders_does_not_import_torch():
    code = "import retrieval.encoders, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_list_encoders_lists_every_family():
    fams = {r["family"] for r in list_encoders()}
    assert {"lite", "open_clip", "sbert"} <= fams


@pytest.mark.parametrize(
    "spec,family,rest",
    [("lite", "lite", ""), ("clip:ViT-B-32/openai", "open_clip", "ViT-B-32/openai"), ("st:minilm", "sbert", "minilm")],
)
def test_parse_spec_aliases(spec, family, rest):
    assert parse_spec(spec) == (family, rest)


def test_unknown_family_is_clear():
    with pytest.raises(ModelError, match="unknown model spec 'nope:x'"):
        parse_spec("nope:x")


# -- the shared contract ---------------------------------------------------------------------------


@pytest.fixture(params=["fake", "tiny_clip", "lite"])
def any_encoder(request, tiny_clip):
    if request.param == "fake":
        return get_encoder("fake:v1")
    if request.param == "tiny_clip":
        import torch

        torch.manual_seed(0)
        return get_encoder(f"open_clip:{tiny_clip}", device="cpu", cache=False)
    return request.getfixturevalue("lite_encoder")


def test_contract(any_encoder, photos_dir):
    enc = any_encoder
    paths = sorted(photos_dir.glob("*.jpg"))[:3]
    img = enc.encode_images(paths)
    txt = enc.encode_texts(["a cat", "a cup of coffee", "x" * 500])
    for v in (img, txt):
        assert v.dtype == np.float32 and v.ndim == 2 and v.shape[1] == enc.dim
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert img.shape[0] == 3 and txt.shape[0] == 3
    assert enc.encode_texts([]).shape == (0, enc.dim)
    # batching does not change results
    again = enc.encode_texts(["a cup of coffee"])
    np.testing.assert_allclose(again[0], txt[1], atol=1e-5)
    assert enc.fingerprint.startswith(enc.spec + "#")
    # what the index and query sides ask instead of looking inside (see Encoder's docstring)
    classes = enc.concept_classes
    assert classes is None or (isinstance(classes, tuple) and list(classes) == sorted(set(classes)))
    assert (enc.profile_record() is None) == (classes is None)
    sense = enc.sense_text_encoder()
    assert sense is None or (sense.spec == SENSE_TEXT_MODEL and sense.has_texts)
    if classes is not None:  # profiles index into concept_classes, for every image
        b = enc.encode_images(paths[:2], with_concepts=True)
        assert len(b.profiles) == 2
        idx, p = b.profiles[0]
        assert idx.max() < len(classes) and len(idx) == len(p) == enc.profile_record()["top"]
        assert classes[int(idx[0])] == b.concepts[0][0][0]  # the top class, the same in both


# -- open_clip --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_files(tiny_clip, tmp_path_factory):
    """A seeded random tiny CLIP saved as .pt, .safetensors and a local-dir folder."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from tests.conftest import TINY_CLIP

    torch.manual_seed(1234)
    model = open_clip.create_model(tiny_clip, pretrained=None)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    d = tmp_path_factory.mktemp("tiny-weights")
    torch.save(sd, d / "tiny.pt")
    save_file(sd, str(d / "tiny.safetensors"))
    local = d / "local"
    local.mkdir()
    save_file(sd, str(local / "open_clip_model.safetensors"))
    (local / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    return d


def test_open_clip_local_forms_give_identical_embeddings(tiny_clip, tiny_model_files, photos_dir):
    d = tiny_model_files
    specs = [
        f"open_clip:{tiny_clip}@{d / 'tiny.pt'}",
        f"open_clip:{tiny_clip}@{d / 'tiny.safetensors'}",
        f"open_clip:local-dir:{d / 'local'}",
    ]
    paths = sorted(photos_dir.glob("*.jpg"))[:2]
    outs = []
    for s in specs:
        enc = get_encoder(s, device="cpu", cache=False)
        outs.append((enc.encode_images(paths), enc.encode_texts(["a dog", "two cats on a sofa"])))
    for img, txt in outs[1:]:
        np.testing.assert_allclose(img, outs[0][0], atol=1e-5)
        np.testing.assert_allclose(txt, outs[0][1], atol=1e-5)
    # fingerprints tell different files apart but are stable for one file
    fp = get_encoder(specs[1], device="cpu", cache=False).fingerprint
    assert fp == get_encoder(specs[1], device="cpu", cache=False).fingerprint


def test_open_clip_fast_text_path_equals_padded(tiny_clip, tiny_model_files):
    import torch

    enc = get_encoder(f"open_clip:{tiny_clip}@{tiny_model_files / 'tiny.pt'}", device="cpu", cache=False).load()
    assert enc.fast_text, "fast path should be verified and enabled for a standard CLIP"
    texts = ["a", "a dog catching a frisbee in the park on a sunny day", "two cats", "x " * 60]
    tokens = enc.tokenizer(texts)
    with torch.inference_mode():
        padded = enc.model.encode_text(tokens).numpy()
        fast = enc._encode_tokens_fast(tokens).numpy()
    np.testing.assert_allclose(fast, padded, atol=1e-5)
    # and the public path (sorted batches; on CPU through the ONNX export) matches the padded one per text
    assert enc._ort_text is not None, "a standard CLIP text tower should run on ONNX Runtime on CPU"
    enc.batch_size = 2
    pub = enc.encode_texts(texts)
    ref = padded / np.linalg.norm(padded, axis=1, keepdims=True)
    np.testing.assert_allclose(pub, ref, atol=1e-5)


def test_open_clip_text_on_torch_when_asked(tiny_clip, tiny_model_files, monkeypatch):
    monkeypatch.setenv("KGCLIP_BACKEND", "torch")
    spec = f"open_clip:{tiny_clip}@{tiny_model_files / 'tiny.pt'}"
    enc = get_encoder(spec, device="cpu", cache=False).load()
    assert enc._ort_text is None and enc.fast_text
    monkeypatch.setenv("KGCLIP_BACKEND", "auto")
    texts = ["a dog", "two cats on a sofa"]
    np.testing.assert_allclose(enc.encode_texts(texts), get_encoder(spec, device="cpu", cache=False).encode_texts(texts),
                               atol=1e-5)


def test_missing_weights_fail_fast_with_instructions(monkeypatch):
    monkeypatch.delenv("KGCLIP_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    enc = get_encoder("open_clip:ViT-B-32/laion2b_s34b_b79k", device="cpu", cache=False)
    t = time.monotonic()
    with pytest.raises(WeightsNotFound, match=r"ViT-B-32/laion2b_s34b_b79k.*(unreachable|download failed)"):
        enc.load()
    assert time.monotonic() - t < 30  # bounded probe, never a long network wait


def test_missing_checkpoint_file_is_clear(tmp_path):
    with pytest.raises(WeightsNotFound, match="does not exist"):
        get_encoder(f"open_clip:ViT-B-32@{tmp_path / 'nope.pt'}", cache=False)


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ModelError, match="known tags:.*laion2b_s34b_b79k"):
        get_encoder("open_clip:ViT-B-32/no-such-tag", device="cpu", cache=False).load()


def test_sbert_has_no_image_tower():
    enc = get_encoder("sbert:minilm", device="cpu")
    assert enc.dim == 384
    with pytest.raises(ModelError, match="no image tower"):
        enc.encode_images(["x.jpg"])


# -- lite -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query,expected", [("a cat", "chelsea"), ("a cup of coffee", "coffee"),
                                            ("a rocket", "rocket")])
def test_lite_ranks_real_photos(lite_encoder, photos_dir, query, expected):
    paths = sorted(photos_dir.glob("*.jpg"))
    img = lite_encoder.encode_images(paths)
    q = lite_encoder.encode_queries([query])[0]
    best = paths[int(np.argmax(img @ q))].stem
    assert best == expected


def test_lite_concept_classes_are_imagenets_class_order():
    from retrieval.encoders.lite import imagenet_classes, imagenet_ids

    # the shipped sorted wnids stand in for timm's class list (no timm import on a query)
    assert list(imagenet_ids()) == [c[0] for c in imagenet_classes()]
    assert get_encoder("lite").concept_classes == imagenet_ids()


def test_lite_reports_wordnet_concepts(lite_encoder, photos_dir):
    out = lite_encoder.encode_images([photos_dir / "chelsea.jpg"], with_concepts=True)
    concepts = out.concepts[0]
    assert len(concepts) == lite_encoder.config.concepts
    ids = [c for c, _ in concepts]
    assert all(c.startswith("n") and len(c) == 9 for c in ids)
    # chelsea is a tabby/tiger cat/Egyptian cat: synsets n02123045, n02123159, n02124075
    assert set(ids[:3]) & {"n02123045", "n02123159", "n02124075"}
    probs = [p for _, p in concepts]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_lite_class_table_is_cached(lite_encoder):
    from retrieval.paths import cache_dir

    files = list((cache_dir() / "lite").glob("classes-*.npy"))
    assert files, "class-text table should be cached on disk"


def test_plain_torch_minilm_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from retrieval.encoders.minibert import MiniBert, supports
    from retrieval.encoders.sbert import shipped_minilm_path

    path = shipped_minilm_path()
    assert supports(path)
    texts = ["a cat", "A dog catching a frisbee, in the park!", "word " * 400, "", "Ünïcödé тест 漢字"]
    ours = MiniBert(path).encode(texts, batch_size=2)
    ref = SentenceTransformer(str(path), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_sbert_minilm_runs_without_sentence_transformers():
    code = (
        "import sys; from retrieval.encoders import get_encoder; "
        "v = get_encoder('sbert:minilm', device='cpu').encode_texts(['a dog']); "
        "assert v.shape == (1, 384); "
        "assert 'sentence_transformers' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
