"""The lite class-text table's local-contrast step (``sharpen_table``): pure numpy, no model."""

import numpy as np

from retrieval.encoders.base import l2_normalize
from retrieval.encoders.lite import LiteConfig, build_class_table, sharpen_table


def _clusters(seed=0):
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.normal(size=(3, 16)))
    rows = [c + 0.15 * rng.normal(size=16) for c in centres for _ in range(5)]
    return l2_normalize(np.array(rows)), np.repeat(np.arange(3), 5)


def test_sharpen_off_only_normalises():
    t, _ = _clusters()
    np.testing.assert_allclose(sharpen_table(t * 3.0, 0.0, 4), t, atol=1e-6)


def test_sharpen_separates_near_duplicate_classes():
    t, group = _clusters()
    s = sharpen_table(t, 0.7, 4)
    assert s.dtype == np.float32 and np.allclose(np.linalg.norm(s, axis=1), 1, atol=1e-5)
    same = group[:, None] == group[None, :]
    off = ~np.eye(len(t), dtype=bool)
    # rows within a cluster become less alike: what is shared by neighbours is removed
    assert (s @ s.T)[same & off].mean() < (t @ t.T)[same & off].mean() - 0.2
    # but each row stays closest to its own original description
    assert (np.argmax(s @ t.T, axis=1) == np.arange(len(t))).all()


def test_build_class_table_averages_templates_then_sharpens():
    t, _ = _clusters()
    emb = np.stack([t, t], axis=1)  # two identical templates
    cfg = LiteConfig(sharpen=0.5, sharpen_k=3)
    np.testing.assert_allclose(build_class_table(emb, cfg), sharpen_table(t, 0.5, 3), atol=1e-6)
    assert np.allclose(build_class_table(emb, LiteConfig(sharpen=0.0)), t, atol=1e-6)
