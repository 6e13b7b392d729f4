"""Sources: folders (symlinks, loops), file lists, CSV/JSONL/Parquet manifests, webdataset shards."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from indexer.sources import Item, Skip, iter_source, iter_sources, read_bytes
from retrieval.errors import SourceError
from tests.corpus import jpeg_bytes, png_bytes


def _items(xs):
    return [x for x in xs if isinstance(x, Item)]


def test_folder_is_recursive_sorted_and_filters_extensions(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.JPG").write_bytes(jpeg_bytes(1))
    (tmp_path / "a.png").write_bytes(png_bytes(2))
    (tmp_path / "readme.txt").write_text("not an image")
    (tmp_path / "c.webp").write_bytes(b"x")
    keys = [os.path.relpath(i.key, tmp_path) for i in iter_source(str(tmp_path))]
    assert keys == ["a.png", "b/z.JPG", "c.webp"]
    it = _items(iter_source(str(tmp_path)))[0]
    assert it.size == os.path.getsize(tmp_path / "a.png") and it.mtime_ns > 0


def test_folder_symlinks_followed_once_and_loops_reported(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "x.png").write_bytes(png_bytes(1))
    (tmp_path / "linkdir").symlink_to(real)  # a second way to the same folder: walked once
    (real / "back").symlink_to(tmp_path)  # a loop back to the top
    (tmp_path / "self.jpg").symlink_to(tmp_path / "self.jpg")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    (tmp_path / "alias.png").symlink_to(real / "x.png")  # a file symlink: indexed under its own path
    out = list(iter_source(str(tmp_path)))
    keys = {os.path.relpath(x.key, tmp_path): (x.reason if isinstance(x, Skip) else "ok") for x in out}
    assert keys == {"alias.png": "ok", "dangling.jpg": "broken symlink", "linkdir/x.png": "ok",
                    "self.jpg": "symlink loop"}


def test_file_list_relative_to_list_and_comments(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(jpeg_bytes(1))
    lst = tmp_path / "list.txt"
    lst.write_text("# my photos\n\nimgs/a.jpg\nimgs/missing.jpg\n")
    out = list(iter_source(str(lst)))
    assert [type(x).__name__ for x in out] == ["Item", "Skip"]
    assert out[0].key == str(tmp_path / "imgs" / "a.jpg")
    assert out[1].reason == "no such file"


def test_several_sources_dedupe_keys(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(1))
    lst = tmp_path / "l.lst"
    lst.write_text("a.jpg\n")
    assert len(list(iter_sources([str(tmp_path), str(lst)]))) == 1
    lst.write_text("a.jpg\n./a.jpg\na.jpg\n")  # one list naming a file three times
    assert [x.key for x in iter_sources([str(lst)])] == [str(tmp_path / "a.jpg")]


def _write_manifest(tmp_path, kind, rows):
    p = tmp_path / f"m.{kind}"
    if kind == "csv":
        import csv

        with open(p, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif kind == "jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), p)
    return p


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_manifest_paths_captions_meta(tmp_path, kind):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(jpeg_bytes(1))
    (tmp_path / "img" / "b.jpg").write_bytes(jpeg_bytes(2))
    rows = [
        {"image": "img/a.jpg", "caption": "a red car", "camera": "Canon"},
        {"image": "img/b.jpg", "caption": "a dog", "camera": "Nikon"},
        {"image": "img/a.jpg", "caption": "a car parked", "camera": "Canon"},
        {"image": "img/a.jpg", "caption": "a red car", "camera": "Canon"},
    ]
    p = _write_manifest(tmp_path, kind, rows)
    out = _items(iter_source(str(p)))
    assert [os.path.basename(i.key) for i in out] == ["a.jpg", "b.jpg"]
    assert out[0].captions == ["a red car", "a car parked"]
    assert out[0].meta == {"camera": "Canon"} and out[1].captions == ["a dog"]


def test_manifest_root_escape_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.jpg").write_bytes(jpeg_bytes(1))
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes(2))
    p = root / "m.jsonl"
    p.write_text(json.dumps({"path": "ok.jpg"}) + "\n" + json.dumps({"path": "../secret.jpg"}) + "\n"
                 + json.dumps({"path": str(tmp_path / "secret.jpg")}) + "\n")
    out = list(iter_source(str(p), root=str(root)))
    assert isinstance(out[0], Item)
    assert isinstance(out[1], Skip) and "escapes" in out[1].reason
    assert len(out) == 2  # the absolute path is the same file: merged


def test_manifest_errors_name_file_and_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"path": "a.jpg"}\n{not json\n')
    with pytest.raises(SourceError, match=r"m.jsonl:2: malformed JSON"):
        list(iter_source(str(p)))
    c = tmp_path / "m.csv"
    c.write_text("name,caption\nx,y\n")
    with pytest.raises(SourceError, match="no path column"):
        list(iter_source(str(c)))
    with pytest.raises(SourceError, match="no such file"):
        list(iter_source(str(tmp_path / "nope")))


def _add(tf, name, data):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 1_700_000_000
    tf.addfile(ti, io.BytesIO(data))


def test_webdataset_shard_groups_members(tmp_path):
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tf:
        _add(tf, "s/0001.jpg", jpeg_bytes(1))
        _add(tf, "s/0001.txt", b"a cat on a mat")
        _add(tf, "s/0002.png", png_bytes(2))
        _add(tf, "s/0002.json", json.dumps({"caption": "a bird", "source": "web"}).encode())
        _add(tf, "s/0003.txt", b"caption without an image")
    out = list(iter_source(str(shard)))
    items = _items(out)
    assert [i.captions for i in items] == [["a cat on a mat"], ["a bird"]]
    assert items[1].meta == {"source": "web"}
    assert items[0].key == f"{shard}#s/0001.jpg"
    data, size, _ = read_bytes(items[0])
    assert data == jpeg_bytes(1) and size == len(data)
    assert isinstance(out[-1], Skip) and "no image" in out[-1].reason


def test_manifest_images_subfolder_and_base(tmp_path):
    """The Flickr layout: DATASET/captions.csv names files that live in DATASET/images/."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(jpeg_bytes(1))
    p = tmp_path / "captions.csv"
    p.write_text("image,caption\na.jpg,a thing\n")
    (it,) = list(iter_source(str(p)))
    assert it.key == str(tmp_path / "images" / "a.jpg") and it.captions == ["a thing"]
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "a.jpg").write_bytes(jpeg_bytes(2))
    (it,) = list(iter_source(str(p), base=str(other)))
    assert it.key == str(other / "a.jpg")
