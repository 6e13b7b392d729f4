"""``lite`` image views (``LiteConfig.views``, the ``lite:tiles`` specs): geometry, layout, mixing, keys."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from retrieval.encoders.base import l2_normalize
from retrieval.encoders.lite import (
    PRESETS,
    ImagePreprocess,
    LiteConfig,
    conse_mix,
    conse_views,
    normalise_pixels,
    to_chw,
    view_box,
)


@pytest.mark.parametrize("w,h,view,box", [
    (500, 375, "start", (0, 0, 375, 375)), (500, 375, "middle", (62, 0, 437, 375)),
    (500, 375, "end", (125, 0, 500, 375)), (375, 500, "end", (0, 125, 375, 500)),
    (500, 375, "tl", (0, 0, 250, 187)), (500, 375, "br", (250, 187, 500, 374)),
    (500, 375, "tr", (250, 0, 500, 187)), (375, 500, "bl", (0, 250, 187, 500)),
])
def test_view_boxes(w, h, view, box):
    assert view_box(view, w, h) == box


def test_unknown_view_is_refused():
    with pytest.raises(ValueError, match="unknown view 'left'"):
        ImagePreprocess(mode="squash", views=("whole", "left"))


def test_views_stack_on_the_channel_axis():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))
    whole = ImagePreprocess(mode="squash")(img)
    multi = ImagePreprocess(mode="squash", views=("whole", "end", "tl"))(img)
    assert whole.shape == (3, 224, 224) and multi.shape == (9, 224, 224) and multi.dtype == np.uint8
    np.testing.assert_array_equal(multi[:3], whole)
    np.testing.assert_array_equal(multi[3:6], ImagePreprocess(mode="squash")(img.crop((50, 0, 200, 150))))
    assert not np.array_equal(multi[3:6], multi[6:])


@pytest.mark.parametrize("mode,views", [("squash", ("whole",)), ("crop", ("whole",)),
                                        ("squash", PRESETS["tiles8"].views)])
def test_transform_gives_the_pixel_bytes_of_the_float_input(mode, views):
    """The transform returns uint8 CHW; (v - 127) / 128 of it is, bit for bit, the float32 input the
    weights take (what the transform returned before, computed here the old way)."""
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (180, 260, 3), dtype=np.uint8))
    out = ImagePreprocess(mode=mode, views=views)(img)
    assert out.dtype == np.uint8 and out.shape == (3 * len(views), 224, 224) and out.flags.c_contiguous
    frame = img.resize((224, 224), Image.BICUBIC) if mode == "squash" else \
        img.resize((370, 256), Image.BICUBIC).crop((73, 16, 297, 240))  # shorter side 256, centre 224
    old = np.ascontiguousarray(((np.asarray(frame, dtype=np.float32) - 127.0) / 128.0).transpose(2, 0, 1))
    np.testing.assert_array_equal(out[:3], np.asarray(frame).transpose(2, 0, 1))
    assert normalise_pixels(out[:3]).dtype == np.float32 and normalise_pixels(out[:3]).tobytes() == old.tobytes()
    assert to_chw(frame).tobytes() == old.tobytes()


def _table_and_logits(seed=0, n=6, views=3):
    rng = np.random.default_rng(seed)
    table = l2_normalize(rng.normal(size=(1000, 16))).astype(np.float32)
    return table, rng.normal(0, 3, (n * views, 1000))


def test_one_view_is_plain_conse():
    table, logits = _table_and_logits(views=1)
    np.testing.assert_array_equal(conse_views(logits, table, LiteConfig()), conse_mix(logits, table, LiteConfig())[0])


def test_views_average_their_conse_vectors():
    cfg = LiteConfig(views=("whole", "start", "end"))
    table, logits = _table_and_logits()
    per = conse_mix(logits, table, cfg)[0].reshape(6, 3, -1)
    out = conse_views(logits, table, cfg)
    assert out.shape == (6, 16)
    np.testing.assert_allclose(out, l2_normalize(per.mean(axis=1)), atol=1e-6)
    # identical views give exactly the one-view vector
    same = np.repeat(logits[::3], 3, axis=0)
    np.testing.assert_allclose(conse_views(same, table, cfg), conse_mix(logits[::3], table, cfg)[0], atol=1e-6)


def test_default_key_ignores_views_left_at_default():
    # views and text were added after lite indexes existed: the default config must keep its old fingerprint
    old_repr = repr(LiteConfig()).replace(", views=('whole',)", "").replace(", text='minilm'", "")
    assert "views" not in old_repr and "text=" not in old_repr
    assert LiteConfig().key() == hashlib.sha256(old_repr.encode()).hexdigest()[:10]
    keys = {p.key() for p in PRESETS.values()}
    assert len(keys) == len(PRESETS)


def test_lite_specs():
    from retrieval.encoders import get_encoder
    from retrieval.errors import ModelError

    enc = get_encoder("lite:tiles", device="cpu", cache=False)
    assert enc.config.views == ("whole", "start", "middle", "end")
    assert get_encoder("lite", device="cpu", cache=False).config == LiteConfig()
    with pytest.raises(ModelError, match="unknown lite setting 'tile'.*lite:tiles"):
        get_encoder("lite:tile", device="cpu", cache=False)


def test_lite_tiles_encoder_on_real_photos(lite_encoder, photos_dir):
    from retrieval.encoders.lite import LiteEncoder

    enc = LiteEncoder("lite:tiles", "tiles", device="cpu").load()
    paths = sorted(photos_dir.glob("*.jpg"))
    out = enc.encode_images(paths, with_concepts=True)
    vec = out.vectors
    assert vec.shape == (len(paths), lite_encoder.dim)
    assert np.allclose(np.linalg.norm(vec, axis=1), 1, atol=1e-5)
    assert enc.fingerprint != lite_encoder.fingerprint
    q = enc.encode_queries(["a cat", "a rocket"])
    assert [paths[int(i)].stem for i in np.argmax(q @ vec.T, axis=1)] == ["chelsea", "rocket"]
    # concepts come from the whole frame: the same as plain lite's
    plain = lite_encoder.encode_images(paths[:2], with_concepts=True).concepts
    assert [[c for c, _ in cs] for cs in out.concepts[:2]] == [[c for c, _ in cs] for cs in plain]
