"""benchmarks.datasets: caption loaders in every format, the split protocol, WordNet relevance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import datasets as d
from retrieval.errors import SourceError

EXPECTED = {"a.jpg": ["a dog on grass", "a brown dog"], "b.jpg": ["a red car"]}


def _check(ds, root: Path):
    assert [p.name for p in ds.images] == ["a.jpg", "b.jpg"]
    assert all(p.parent == root for p in ds.images)
    assert ds.captions == ["a dog on grass", "a brown dog", "a red car"]
    np.testing.assert_array_equal(ds.caption_image, [0, 0, 1])
    assert ds.image_captions() == [[0, 1], [2]]


def test_csv_manifest(tmp_path):
    (tmp_path / "m.csv").write_text("image,caption\na.jpg,a dog on grass\na.jpg,a brown dog\nb.jpg,a red car\n")
    _check(d.load_captions(tmp_path / "m.csv"), tmp_path)


def test_csv_with_caption_lists_and_other_column_names(tmp_path):
    (tmp_path / "m.csv").write_text('path,text\na.jpg,"[""a dog on grass"", ""a brown dog""]"\nb.jpg,a red car\n')
    _check(d.load_captions(tmp_path / "m.csv"), tmp_path)


def test_jsonl_manifest(tmp_path):
    lines = [{"image": "a.jpg", "captions": EXPECTED["a.jpg"]}, {"image": "b.jpg", "caption": "a red car"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    _check(d.load_captions(tmp_path / "m.jsonl"), tmp_path)


def test_coco_json(tmp_path):
    coco = {"images": [{"id": 7, "file_name": "a.jpg"}, {"id": 9, "file_name": "b.jpg"}],
            "annotations": [{"image_id": 7, "caption": "a dog on grass"}, {"image_id": 7, "caption": "a brown dog"},
                            {"image_id": 9, "caption": "a red car"}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    _check(d.load_captions(tmp_path), tmp_path)


def test_flickr_token_file(tmp_path):
    (tmp_path / "Flickr8k.token.txt").write_text(
        "a.jpg#0\ta dog on grass\na.jpg#1\ta brown dog\nb.jpg#0\ta red car\n")
    _check(d.load_captions(tmp_path / "Flickr8k.token.txt"), tmp_path)


def test_images_subfolder_is_found(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    (tmp_path / "m.csv").write_text("image,caption\na.jpg,x\n")
    assert d.load_captions(tmp_path / "m.csv").images[0] == tmp_path / "images" / "a.jpg"


@pytest.mark.parametrize("name,text,match", [
    ("m.csv", "file,label\na.jpg,x\n", r"m.csv: no caption column"),
    ("m.jsonl", '{"image": "a.jpg", "caption": "x"}\n{oops\n', r"m.jsonl:2: malformed JSON line"),
    ("c.json", '{"images": []}', r"c.json: not a COCO captions file"),
    ("t.txt", "a.jpg#0 no tab here\n", r"t.txt:1: expected"),
])
def test_malformed_files_name_file_and_line(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(SourceError, match=match):
        d.load_captions(tmp_path / name)


def test_split_protocol_is_exact_and_stable():
    names = [f"{i:04d}.jpg" for i in range(1000)]
    parts = d.split_names(names)
    assert sum(v == "test" for v in parts.values()) == 200
    assert d.split_names(list(reversed(names))) == parts  # independent of order
    # the rule: the 200 smallest SHA-1 hashes of the file name are test
    first = min(names, key=d.stable_hash)
    assert parts[first] == "test"


def test_subset_and_split_keep_captions_with_their_images(tmp_path):
    caps = "\n".join(f"{i}.jpg,caption {i} {j}" for i in range(10) for j in range(2))
    (tmp_path / "m.csv").write_text("image,caption\n" + caps + "\n")
    ds = d.load_captions(tmp_path / "m.csv")
    test, train = ds.split("test"), ds.split("train")
    assert len(test) == 2 and len(train) == 8
    for part in (test, train):
        for j, i in enumerate(part.caption_image):
            assert part.captions[j].startswith(f"caption {part.images[i].stem} ")


def test_caption_nouns_and_hypernym_relevance():
    wn = pytest.importorskip("benchmarks.wordnet").load() if Path("/usr/share/wordnet/data.noun").is_file() \
        else pytest.skip("WordNet (wordnet-base) not installed")
    syn = [d.caption_nouns("Two dogs run through the grass", wn), d.caption_nouns("A young man rides a bicycle", wn),
           d.caption_nouns("A orange kayak on a lake", wn)]
    rel = d._hyper_relevance(wn, syn, ["animal", "vehicle", "body_of_water"])
    np.testing.assert_array_equal(rel, [[True, False, False], [False, True, True], [False, False, True]])
