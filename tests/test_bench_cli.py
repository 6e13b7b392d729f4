"""`kgclip bench recall|category` on a tiny captioned colour dataset with the fake:v1 encoder.

The fake encoder maps an image to the vector of its colour word and a caption to
the normalised sum of its word vectors, so every caption that names its own
image's colour retrieves that image first, and the one mislabelled caption does
not: the expected metrics are worked out by hand below.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import benchmarks.fakes  # noqa: F401  (registers fake:v1)
from cli import main
from tests.corpus import write_captions_csv
from benchmarks.fakes import word_vector

IMAGES = ["red", "green", "blue", "yellow"]
# two captions per image; the second caption of green says "blue" (wrong on purpose)
CAPTIONS = [("red", "red"), ("red", "red"), ("green", "green"), ("green", "blue"),
            ("blue", "blue"), ("blue", "blue"), ("yellow", "yellow"), ("yellow", "yellow")]


@pytest.fixture
def dataset(tmp_path, colour_images, monkeypatch):
    monkeypatch.setenv("KGCLIP_BENCH_CACHE", str(tmp_path / "bench-cache"))
    return write_captions_csv(tmp_path / "captions.csv", [(str(colour_images / f"{img}.png"), cap) for img, cap in CAPTIONS])


def _rank_of_green_for_blue(index_dir) -> int:
    """Rank of the green image for the query "blue", by hand from the stored image vectors."""
    from indexer import open_index

    with open_index(index_dir) as idx:
        vecs = {}
        for i, it in idx.iter_items():
            name = it["path"].rsplit("/", 1)[-1][:-4]
            vecs[name] = idx.get_vectors([i])[0]
    q = word_vector("blue")
    green = float(vecs["green"] @ q)
    return 1 + sum(1 for n, v in vecs.items() if n != "green" and float(v @ q) >= green)


def test_bench_recall_matches_hand_computed(dataset, tmp_path):
    out = tmp_path / "r.json"
    r = CliRunner().invoke(main, ["-q", "bench", "recall", str(dataset), "--model", "fake:v1",
                                  "--expand", "none", "--format", "json", "-o", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["n_images"] == 4 and res["n_captions"] == 8
    run = res["runs"][0]
    ex = run["expand"]["none"]["exact"]
    rank = _rank_of_green_for_blue(run["index"])
    assert 2 <= rank <= 4  # the blue image outranks green for "blue"
    # text->image: 7 of 8 captions name their own image's colour -> rank 1; the 8th ranks `rank`
    assert ex["image_retrieval_recall@1"] == pytest.approx(7 / 8)
    assert ex["image_retrieval_recall@5"] == pytest.approx(1.0)
    assert ex["image_retrieval_mean_rank"] == pytest.approx((7 + rank) / 8)
    assert ex["image_retrieval_median_rank"] == pytest.approx(1.0)
    # image->text: every image has a caption with its own colour word, but the blue image's "blue" captions
    # tie with green's mislabelled "blue" caption, and ties count pessimistically -> rank 2 for blue
    assert ex["text_retrieval_recall@1"] == pytest.approx(3 / 4)
    assert ex["text_retrieval_recall@5"] == pytest.approx(1.0)
    assert ex["text_retrieval_mean_rank"] == pytest.approx((1 + 1 + 2 + 1) / 4)
    # 4 images: the auto choice is exact (flat), so the ANN numbers equal the exact ones
    ann = run["expand"]["none"]["ann"]
    assert ann["image_retrieval_recall@1"] == pytest.approx(7 / 8)
    assert ann["image_retrieval_recall@10"] == pytest.approx(1.0)
    assert ann["text_retrieval_recall@5"] == pytest.approx(1.0)
    assert run["index_kind"] == "flat"


def test_bench_recall_table_and_reuse(dataset, tmp_path):
    r = CliRunner().invoke(main, ["-q", "bench", "recall", str(dataset), "--model", "fake:v1",
                                  "--expand", "none"])
    assert r.exit_code == 0, r.output
    assert "t2i R@1" in r.output and "0.875" in r.output and "exact" in r.output and "ann (flat)" in r.output
    # markdown output reusing the index the first run built
    idx = next((tmp_path / "bench-cache" / "indexes").glob("*fake*"))
    r = CliRunner().invoke(main, ["-q", "bench", "recall", str(dataset), "--index", str(idx),
                                  "--model", "fake:v1", "--expand", "none", "--format", "markdown"])
    assert r.exit_code == 0, r.output
    assert "| fake:v1 | none | exact | 0.875 |" in r.output


def test_bench_recall_errors(dataset, tmp_path):
    r = CliRunner().invoke(main, ["bench", "recall", str(dataset), "--model", "fake:v1",
                                  "--expand", "sideways"])
    assert r.exit_code == 2 and "sideways" in r.output
    r = CliRunner().invoke(main, ["bench", "recall", str(tmp_path / "nope.csv"), "--model", "fake:v1"])
    assert r.exit_code != 0 and "Traceback" not in r.output and "nope.csv" in r.output


def test_category_metrics_hand_computed(dataset, tmp_path, colour_images):
    from benchmarks.category import run_category
    from benchmarks.datasets import CategorySet

    items = [colour_images / f"{c}.png" for c in IMAGES]
    rel = np.array([[1, 0, 0, 0],    # "red": the red image
                    [0, 0, 1, 1],    # "blue": blue and (wrongly) yellow
                    [0, 0, 1, 0]],   # "green" -> the blue image (wrong on purpose)
                   dtype=bool)
    cs = CategorySet("colours", items, IMAGES, ["red", "blue", "green"], ["class", "class", "hypernym"], rel)
    res = run_category(["colours"], "fake:v1", ["none"], category_set=cs)
    s = res["sets"]["colours"]
    m = s["expand"]["none"]
    from indexer import open_index

    with open_index(s["index"]) as idx:
        vecs = {it["path"].rsplit("/", 1)[-1][:-4]: idx.get_vectors([i])[0] for i, it in idx.iter_items()}

    def rank(query, name):
        q = word_vector(query)
        return 1 + sum(1 for n, v in vecs.items() if n != name and float(v @ q) >= float(vecs[name] @ q))

    # "red": AP 1. "blue": blue first (AP term 1/1), yellow at rank r -> 2/r. "green": blue at rank r' -> 1/r'
    r_y, r_b = rank("blue", "yellow"), rank("green", "blue")
    ap = [1.0, (1.0 + 2.0 / r_y) / 2, 1.0 / r_b]
    assert m["per_query_AP"]["red"] == pytest.approx(1.0)
    assert m["all"]["mAP"] == pytest.approx(np.mean(ap), abs=1e-6)
    assert m["class"]["mAP"] == pytest.approx(np.mean(ap[:2]), abs=1e-6)
    assert m["hypernym"]["mAP"] == pytest.approx(ap[2], abs=1e-6)
    assert r_b >= 2 and m["hypernym"]["mAP"] < 1.0


def test_fast_plain_scores_equal_searcher_scores(dataset, tmp_path, colour_images):
    """score_matrix's matrix-product path for --expand none gives the Searcher's own scores."""
    from benchmarks.recall import ExactIndex, _rows, ensure_index, score_matrix
    from indexer import open_searcher
    from retrieval.query import Searcher

    images = [colour_images / f"{c}.png" for c in IMAGES]
    idir = ensure_index(images, "colours", "fake:v1", tmp_path / "idx")
    queries = ["red", "a blue thing", "green yellow", "zebra"]
    with open_searcher(idir, expand="none") as base:
        id_col, missing = _rows(base.index, images)
        assert not missing
        ex = Searcher(ExactIndex(base.index), expand="none", check_fingerprint=False)
        fast = score_matrix(ex, queries, id_col, len(images), "none")
        for qi, q in enumerate(queries):
            hits = base.search(q, k=len(images), expand="none", hybrid="none")
            assert len(hits.hits) == len(images)
            for h in hits:
                assert fast[qi, id_col[h.id]] == pytest.approx(h.score, abs=1e-5)


def test_category_identical_files_stored_once(tmp_path, colour_images, monkeypatch):
    """Two identical files are one index item with an alias; both columns get its score."""
    import shutil

    from benchmarks.category import run_category
    from benchmarks.datasets import CategorySet

    monkeypatch.setenv("KGCLIP_BENCH_CACHE", str(tmp_path / "bench-cache"))
    d = tmp_path / "dups"
    d.mkdir()
    for name in ("red", "blue", "green"):
        shutil.copy(colour_images / f"{name}.png", d / f"{name}.png")
    shutil.copy(colour_images / "red.png", d / "red-copy.png")
    items = [d / "red.png", d / "blue.png", d / "red-copy.png", d / "green.png"]
    rel = np.array([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=bool)
    cs = CategorySet("dups", items, ["red", "blue", "red", "green"], ["red", "blue"], ["class", "class"], rel)
    m = run_category(["dups"], "fake:v1", ["none"], category_set=cs)["sets"]["dups"]["expand"]["none"]
    # both red files score highest for "red" (ranks 1 and 2): AP 1; "blue": AP 1
    assert m["per_query_AP"] == {"red": 1.0, "blue": 1.0}


def test_bench_speed_end_to_end(tmp_path):
    """`kgclip bench speed` builds each asked type through the build's own flow on seeded clustered
    vectors, tunes it (held-out recall bound >= 0.95 where it tunes), searches fresh queries, and
    reports a table, JSON and a file; bad sizes or types are one-line usage errors."""
    out = tmp_path / "speed.json"
    r = CliRunner().invoke(main, ["--quiet", "bench", "speed", "--sizes", "2k", "--index-types", "auto,flat,ivf",
                                  "--format", "json", "-o", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert json.loads(out.read_text())["sizes"] == res["sizes"]
    (size,) = res["sizes"]
    assert size["n"] == 2000 and size["auto"] == "flat"
    rows = {row["index_type"]: row for row in size["rows"]}
    assert set(rows) == {"flat", "ivf"}  # auto next to explicit types only marks its pick
    assert rows["flat"]["is_auto"] and not rows["ivf"]["is_auto"]
    assert rows["flat"]["recall_at_10"] == 1.0
    ivf = rows["ivf"]
    assert ivf["tune_recall_at_10_low"] >= 0.95 and ivf["params"]["nprobe"] >= 1 and ivf["qps"] > 0
    assert ivf["recall_at_10"] >= 0.9  # fresh queries, not the tuning sample
    assert "flat*" in res["summary"] and "IVF" in res["summary"]
    r = CliRunner().invoke(main, ["bench", "speed", "--sizes", "2k", "--index-types", "auto"])
    assert r.exit_code == 0 and "flat*" in r.output
    for args in (["--sizes", "lots"], ["--sizes", "10"], ["--index-types", "annoy"]):
        r = CliRunner().invoke(main, ["bench", "speed", *args])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output


def test_cold_start_times_help_for_a_checkout(tmp_path):
    from benchmarks.cold_start import REPO, parse_checkout, run_cold_start

    with pytest.raises(SystemExit, match="no cli.py"):
        parse_checkout(str(tmp_path))
    res = run_cold_start([parse_checkout(str(REPO))], runs=1, workdir=str(tmp_path), search=False)
    (row,) = res["checkouts"]
    assert row["help"]["n"] == 1 and row["help"]["median_ms"] > row["python_pass"]["median_ms"] > 0
