"""benchmarks/kg_tuning.py: every variant scored through the Searcher, numbers consistent with `none`."""

from __future__ import annotations

import numpy as np
import pytest

IMAGES = ["red", "green", "blue", "yellow"]


def test_tuning_variants_on_a_tiny_set(tmp_path, colour_images, monkeypatch):
    from benchmarks.category import run_category
    from benchmarks.datasets import CategorySet
    from benchmarks.kg_tuning import VARIANTS, run_tuning
    from retrieval.errors import UsageError

    monkeypatch.setenv("KGCLIP_BENCH_CACHE", str(tmp_path / "bench-cache"))
    items = [colour_images / f"{c}.png" for c in IMAGES]
    rel = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]], dtype=bool)
    cs = CategorySet("colours", items, IMAGES, ["red", "blue", "a warm colour"], ["class", "class", "hypernym"], rel)
    res = run_tuning(["colours"], ["previous", "default"], model="fake:v1", category_sets={"colours": cs})
    s = res["sets"]["colours"]
    none = run_category(["colours"], "fake:v1", ["none"], category_set=cs)["sets"]["colours"]["expand"]["none"]
    assert s["none"]["mAP"] == pytest.approx(none["all"]["mAP"])
    assert set(s["variants"]) == {"previous", "default"}
    for name, row in s["variants"].items():
        assert list(row) == list(VARIANTS[name][0])
        for m in row.values():
            assert 0.0 <= m["mAP"] <= 1.0 and 0.0 <= m["ndcg@10"] <= 1.0
            assert m["mAP_rel_change_vs_none"] == pytest.approx(m["mAP"] / s["none"]["mAP"] - 1, abs=1e-3)
            assert set(m["per_kind_mAP"]) == {"class", "hypernym"}
    assert set(res["summary"]) == {"previous/mix", "previous/multi", "default/mix", "default/multi"}
    assert res["summary"]["default/mix"]["mAP"]["colours"] == s["variants"]["default"]["mix"]["mAP"]
    assert res["variants"]["previous"]["policy"] == {"hyponym_coverage": False, "focus_words": 0,
                                                    "grounding_alternatives": 0.0}
    with pytest.raises(UsageError, match="unknown variant"):
        run_tuning(["colours"], ["sideways"], model="fake:v1", category_sets={"colours": cs})
