"""`kgclip bench recall --split-file`: only the named images, unknown names counted with one warning."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import benchmarks.fakes  # noqa: F401  (registers fake:v1)
from cli import main
from tests.corpus import write_captions_csv

CAPTIONS = [("red", "red"), ("red", "a red thing"), ("green", "green"), ("blue", "blue"), ("yellow", "yellow")]


@pytest.fixture
def dataset(tmp_path, colour_images, monkeypatch):
    monkeypatch.setenv("KGCLIP_BENCH_CACHE", str(tmp_path / "bench-cache"))
    return write_captions_csv(tmp_path / "captions.csv", [(f"colours/{img}.png", cap) for img, cap in CAPTIONS])


def test_split_file_keeps_named_images_and_warns_once(dataset, tmp_path):
    split = tmp_path / "test.txt"
    split.write_text("red.png\n\nblue.png\nnot-there.jpg\ncolours/red.png\n")
    out = tmp_path / "r.json"
    r = CliRunner().invoke(main, ["-q", "bench", "recall", str(dataset), "--model", "fake:v1", "--expand", "none",
                                  "--split-file", str(split), "--format", "json", "-o", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert (res["n_images"], res["n_captions"], res["split_missing"]) == (2, 3, 1)
    assert res["split"] == "file:test.txt"
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "1 name(s)" in warn[0] and "not-there.jpg" in warn[0]
    assert res["runs"][0]["expand"]["none"]["exact"]["image_retrieval_recall@1"] == pytest.approx(1.0)


@pytest.mark.parametrize("text, msg", [("nope.jpg\n", "none of its 1 names"), ("\n# c\n", "no image names")])
def test_split_file_with_nothing_usable_is_one_line_error(dataset, tmp_path, text, msg):
    split = tmp_path / "s.txt"
    split.write_text(text)
    r = CliRunner().invoke(main, ["-q", "bench", "recall", str(dataset), "--model", "fake:v1", "--expand", "none",
                                  "--split-file", str(split)])
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and msg in r.stderr and "Traceback" not in r.stderr


def test_split_file_and_split_together_is_a_usage_error(dataset, tmp_path):
    split = tmp_path / "s.txt"
    split.write_text("red.png\n")
    r = CliRunner().invoke(main, ["-q", "bench", "recall", str(dataset), "--model", "fake:v1", "--split", "test",
                                  "--split-file", str(split)])
    assert r.exit_code == 2 and "--split-file" in r.stderr
