"""benchmarks.metrics against hand-computed examples (multiple captions per image, ties)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.metrics import (
    average_precision,
    best_rank_of_sets,
    caption_retrieval_metrics,
    category_metrics,
    ndcg_at_k,
    precision_recall_at_k,
    rank_of_targets,
    recall_from_ids,
)

# 3 images, 5 captions: captions 0,1 -> image 0; caption 2 -> image 1; captions 3,4 -> image 2
CAPTION_IMAGE = [0, 0, 1, 2, 2]
S = np.array(
    [
        [0.9, 0.1, 0.5],  # c0 -> img0: rank 1
        [0.2, 0.8, 0.3],  # c1 -> img0: 0.8 and 0.3 above -> rank 3
        [0.5, 0.5, 0.1],  # c2 -> img1: tied with img0 -> pessimistic 2, optimistic 1, mean 1.5
        [0.7, 0.1, 0.6],  # c3 -> img2: rank 2
        [0.1, 0.2, 0.3],  # c4 -> img2: rank 1
    ]
)


def test_text_to_image_ranks_and_ties():
    np.testing.assert_array_equal(rank_of_targets(S, CAPTION_IMAGE), [1, 3, 2, 2, 1])
    np.testing.assert_array_equal(rank_of_targets(S, CAPTION_IMAGE, "optimistic"), [1, 3, 1, 2, 1])
    np.testing.assert_array_equal(rank_of_targets(S, CAPTION_IMAGE, "mean"), [1, 3, 1.5, 2, 1])


def test_image_to_text_uses_best_caption():
    rel = np.zeros((3, 5), bool)
    rel[CAPTION_IMAGE, np.arange(5)] = True
    # img0 column [.9 .2 .5 .7 .1], own captions c0 c1 -> best .9 -> rank 1
    # img1 column [.1 .8 .5 .1 .2], own caption c2 (.5), .8 above -> rank 2
    # img2 column [.5 .3 .1 .6 .3], own c3 (.6) -> rank 1
    np.testing.assert_array_equal(best_rank_of_sets(S.T, rel), [1, 2, 1])


def test_caption_retrieval_metrics_field_names_and_values():
    m = caption_retrieval_metrics(S, CAPTION_IMAGE, ks=(1, 2, 5))
    assert m["n_images"] == 3 and m["n_captions"] == 5
    # text->image ranks [1,3,2,2,1]
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 5)
    assert m["image_retrieval_recall@2"] == pytest.approx(4 / 5)
    assert m["image_retrieval_recall@5"] == pytest.approx(1.0)
    assert m["image_retrieval_mean_rank"] == pytest.approx(9 / 5)
    assert m["image_retrieval_median_rank"] == 2
    # image->text ranks [1,2,1]
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert m["text_retrieval_recall@2"] == pytest.approx(1.0)
    assert m["text_retrieval_mean_rank"] == pytest.approx(4 / 3)
    assert m["text_retrieval_median_rank"] == 1


def test_constant_scores_earn_nothing():
    m = caption_retrieval_metrics(np.zeros((5, 3)), CAPTION_IMAGE, ks=(1, 2))
    assert m["image_retrieval_recall@2"] == 0.0
    assert m["image_retrieval_mean_rank"] == 3
    assert m["text_retrieval_recall@1"] == 0.0


def test_perfect_scores():
    s = np.full((5, 3), -1.0)
    s[np.arange(5), CAPTION_IMAGE] = 1.0
    m = caption_retrieval_metrics(s, CAPTION_IMAGE)
    assert m["image_retrieval_recall@1"] == 1.0 and m["text_retrieval_recall@1"] == 1.0


def test_recall_from_ids_single_and_set_targets():
    ids = np.array([[2, 0, 1], [1, 2, 0], [-1, -1, -1]])
    r = recall_from_ids(ids, [0, {0, 2}, 1], ks=(1, 2, 3))
    assert r == {1: 0.0, 2: pytest.approx(2 / 3), 3: pytest.approx(2 / 3)}


def test_average_precision_and_ndcg_by_hand():
    s = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    rel = np.array([[1, 0, 1, 0, 0]], bool)
    assert average_precision(s, rel)[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert ndcg_at_k(s, rel, 10)[0] == pytest.approx(dcg / idcg)
    assert ndcg_at_k(s, rel, 1)[0] == pytest.approx(1.0)
    p, r = precision_recall_at_k(s, rel, 2)
    assert p[0] == pytest.approx(0.5) and r[0] == pytest.approx(0.5)


def test_category_ties_are_pessimistic_and_empty_queries_score_zero():
    s = np.array([[0.5, 0.5], [0.3, 0.1]])
    rel = np.array([[1, 0], [0, 0]], bool)
    ap = average_precision(s, rel)
    assert ap[0] == pytest.approx(0.5)  # the tied non-relevant item is placed first
    assert ap[1] == 0.0
    m = category_metrics(s, rel, ks=(1,))
    assert m["mAP"] == pytest.approx(0.25)
    assert m["precision@1"] == 0.0
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3)) / 2)


def test_bad_tie_mode_is_rejected():
    with pytest.raises(ValueError):
        rank_of_targets(S, CAPTION_IMAGE, ties="random")


def test_classification_metrics_by_hand():
    from benchmarks.metrics import classification_metrics

    s = np.array([[0.9, 0.1, 0.0],   # class 0: right
                  [0.5, 0.5, 0.2],   # class 1: tied with class 0 -> rank 2 (pessimistic)
                  [0.3, 0.2, 0.1],   # class 2: rank 3
                  [0.1, 0.0, 0.8]])  # class 2: right
    m = classification_metrics(s, [0, 1, 2, 2], ks=(1, 2, 5))
    assert m["acc1"] == pytest.approx(2 / 4) and m["acc2"] == pytest.approx(3 / 4)
    assert m["acc5"] is None  # fewer than 5 classes, as CLIP_benchmark
    assert m["mean_per_class_recall"] == pytest.approx((1 + 0 + 0.5) / 3)
