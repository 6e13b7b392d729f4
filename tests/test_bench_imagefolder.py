"""`kgclip bench category DIR` on a generated ImageFolder: classes linked to WordNet, queries and
relevance sets checked exactly, bad input skipped and counted, the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import benchmarks.fakes  # noqa: F401  (registers fake:v1)
from benchmarks import imagefolder as F
from cli import main

# folder -> colour (the fake encoder sees the colour); mexican_hairless is a dog breed: WordNet puts it
# directly below dog, so the "dog" queries must count its images too
CLASSES = {"cat": "red", "dog": "green", "mexican_hairless": "orange", "car": "blue", "truck": "yellow"}
IDS = {"cat": "n02121620", "dog": "n02084071", "mexican_hairless": "n02113978", "car": "n02958343",
       "truck": "n04490091"}
# KG ancestors 1-3 hypernym steps up covering >= 2 classes, by fewest steps then id (worked out from WordNet:
# cat -> feline -> carnivore -> placental; dog -> {canine, domestic animal} -> {carnivore, animal} -> placental,
# organism; mexican hairless -> dog -> {canine, domestic animal} -> {carnivore, animal}; car and truck ->
# motor vehicle -> self-propelled vehicle -> wheeled vehicle). Not "dog" (a class) nor "organism" (one class).
HYPERNYMS = {  # query -> classes relevant
    "domestic animal": {"dog", "mexican_hairless"},
    "canine": {"dog", "mexican_hairless"},
    "motor vehicle": {"car", "truck"},
    "animal": {"cat", "dog", "mexican_hairless"},  # cat: four steps up (relevant; not counted for coverage)
    "carnivore": {"cat", "dog", "mexican_hairless"},
    "self-propelled vehicle": {"car", "truck"},
    "placental": {"cat", "dog", "mexican_hairless"},
    "wheeled vehicle": {"car", "truck"},
}


def make_folder(root, per_class=2, extra=True):
    from PIL import Image

    from benchmarks.fakes import COLOURS

    rng = np.random.default_rng(0)
    for cls, col in {**CLASSES, **({"xyzzyq": "purple"} if extra else {})}.items():
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            arr = np.array(COLOURS[col])[None, None, :] + rng.integers(-8, 8, (16, 16, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / cls / f"{i}.png")
    if extra:
        (root / "empty").mkdir()
        (root / "notes.txt").write_text("a loose file")
        (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def graph():
    from retrieval.kg.graph import load_graph

    return load_graph()


def test_queries_and_relevance_are_exact(tmp_path, graph):
    from retrieval.kg.linking import Linker

    folder = F.scan(make_folder(tmp_path / "f"))
    assert folder.skipped == {"loose_files": 1, "empty_classes": 1, "unreadable_images": 1, "non_images": 0}
    assert sorted(folder.classes) == sorted([*CLASSES, "xyzzyq"])
    linked, unlinked = F.link_classes(list(folder.classes), graph, Linker(graph, None))
    assert linked == IDS and unlinked == ["xyzzyq"]
    cs = F.category_set(folder, linked, graph)
    order = sorted(CLASSES)  # scan order
    names = [F.class_text(c) for c in order]
    assert cs.queries == [*names, *(f"a photo of a {n}" for n in names), *HYPERNYMS]
    assert cs.kind == ["class"] * 5 + ["prompt"] * 5 + ["hypernym"] * len(HYPERNYMS)
    assert cs.labels == [c for c in order for _ in range(2)]
    below = {c: {c} for c in CLASSES} | {"dog": {"dog", "mexican_hairless"}}
    want = [below[c] for c in order] * 2 + list(HYPERNYMS.values())
    for q, rel_row, classes in zip(cs.queries, cs.relevant, want):
        assert {cs.labels[i] for i in np.flatnonzero(rel_row)} == classes, q
        assert rel_row.sum() == 2 * len(classes), q


def test_class_map_overrides_and_per_class_sample_is_seeded(tmp_path, graph):
    from retrieval.kg.linking import Linker

    root = make_folder(tmp_path / "f", per_class=5)
    cmap = tmp_path / "map.tsv"
    cmap.write_text("# class<TAB>entity\nxyzzyq\tbus\ncar\tn02924116\n")
    m = F.read_class_map(cmap, graph)
    assert m == {"xyzzyq": "n02924116", "car": "n02924116"}
    linked, unlinked = F.link_classes(["xyzzyq", "car", "cat"], graph, Linker(graph, None), m)
    assert linked == {"xyzzyq": "n02924116", "car": "n02924116", "cat": IDS["cat"]} and unlinked == []
    # a compound name the KG lacks links by its head noun, not its first word ("ankle")
    assert F.link_classes(["ankle_boot"], graph, Linker(graph, None))[0] == {"ankle_boot": "n02872752"}
    a, b, c = (F.scan(root, per_class=2, seed=s) for s in (1, 1, 2))
    assert a.classes == b.classes and all(len(v) == 2 for v in a.classes.values())
    assert a.classes != c.classes
    bad = tmp_path / "bad.tsv"
    bad.write_text("cat\tno-such-thing-xq\n")
    with pytest.raises(Exception, match=r"bad.tsv:1: 'no-such-thing-xq'"):
        F.read_class_map(bad, graph)


def test_nothing_usable_is_one_line_error(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"x")
    (tmp_path / "flat" / "empty").mkdir()
    r = CliRunner().invoke(main, ["-q", "bench", "category", str(tmp_path / "flat"), "--model", "fake:v1"])
    assert r.exit_code == 1, r.output
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "no class subfolder with readable images" in err[0]
    assert "Traceback" not in r.stderr


def test_cli_end_to_end(tmp_path, monkeypatch):
    from benchmarks.metrics import category_metrics
    from indexer import open_index
    from retrieval.encoders import get_encoder

    monkeypatch.setenv("KGCLIP_BENCH_CACHE", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "f")
    out = tmp_path / "c.json"
    r = CliRunner().invoke(main, ["-q", "bench", "category", str(root), "--model", "fake:v1", "--expand", "none",
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "unlinked classes (left out; map them with --class-map): xyzzyq" in r.stderr
    assert "skipping class 'empty'" in r.stderr and "broken.jpg" in r.stderr
    assert "per query kind" in r.stdout
    (s,) = json.loads(out.read_text())["sets"].values()
    assert s["classes"] == IDS and s["unlinked"] == ["xyzzyq"]
    assert s["skipped"] == {"loose_files": 1, "empty_classes": 1, "unreadable_images": 1, "non_images": 0,
                            "unindexed_images": 0}
    assert s["queries"]["hypernym"] == list(HYPERNYMS) and s["n_items"] == 10
    # the numbers: the same metric code on the score matrix worked out from the stored vectors
    with open_index(s["index"]) as idx:
        by_path = {it["path"]: idx.get_vectors([i])[0] for i, it in idx.iter_items()}
    items = [root / c / f"{i}.png" for c in sorted(CLASSES) for i in range(2)]
    iv = np.stack([by_path[str(p.resolve())] for p in items])
    queries = [q for kd in ("class", "prompt", "hypernym") for q in s["queries"][kd]]
    sc = np.asarray(get_encoder("fake:v1").encode_queries(queries)) @ iv.T
    labels = [p.parent.name for p in items]
    rel = np.array([[(q in HYPERNYMS and lab in HYPERNYMS[q]) or (q.removeprefix("a photo of a ") in
                     (F.class_text(lab), "dog" if lab == "mexican_hairless" else None)) for lab in labels]
                    for q in queries])
    m = s["expand"]["none"]
    assert m["all"]["mAP"] == pytest.approx(category_metrics(sc, rel)["mAP"], abs=1e-6)
    assert m["hypernym"]["ndcg@10"] == pytest.approx(category_metrics(sc[10:], rel[10:])["ndcg@10"], abs=1e-6)
    assert m["prompt"]["n_queries"] == 5 and m["class"]["n_queries"] == 5


def test_zeroshot_cli_end_to_end(tmp_path, monkeypatch):
    from benchmarks.metrics import classification_metrics
    from indexer import open_index
    from retrieval.encoders import get_encoder

    monkeypatch.setenv("KGCLIP_BENCH_CACHE", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "f")
    out = tmp_path / "z.json"
    r = CliRunner().invoke(main, ["-q", "bench", "zeroshot", str(root), "--model", "fake:v1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "acc1" in r.stdout and "skipping class 'empty'" in r.stderr
    res = json.loads(out.read_text())
    names = sorted([*CLASSES, "xyzzyq"])
    assert res["classes"] == names and res["metrics"]["n_images"] == 12 and res["metrics"]["n_classes"] == 6
    assert res["skipped"]["unreadable_images"] == 1
    with open_index(res["index"]) as idx:
        by_path = {it["path"]: idx.get_vectors([i])[0] for i, it in idx.iter_items()}
    iv = np.stack([by_path[str((root / c / f"{i}.png").resolve())] for c in names for i in range(2)])
    tv = get_encoder("fake:v1").encode_queries([f"a photo of a {F.class_text(c)}." for c in names])
    want = classification_metrics(iv @ np.asarray(tv).T, [k for k in range(6) for _ in range(2)])
    assert res["metrics"] == pytest.approx(want)
    bad = CliRunner().invoke(main, ["-q", "bench", "zeroshot", str(root), "--model", "fake:v1",
                                    "--template", "a photo"])
    assert bad.exit_code == 2 and "has no {c}" in bad.stderr


def test_a_hypernym_above_every_class_is_dropped(tmp_path, graph):
    from retrieval.kg.linking import Linker

    root = make_folder(tmp_path / "f", extra=False)
    for c in ("mexican_hairless", "car", "truck"):
        for p in (root / c).iterdir():
            p.unlink()
        (root / c).rmdir()
    folder = F.scan(root)
    linked, _ = F.link_classes(list(folder.classes), graph, Linker(graph, None))
    cs = F.category_set(folder, linked, graph)
    # carnivore and placental cover cat and dog, i.e. every image: no hypernym query is left
    assert cs.queries == ["cat", "dog", "a photo of a cat", "a photo of a dog"]


def test_image_the_build_cannot_decode_is_skipped_and_counted(tmp_path, monkeypatch):
    """A truncated JPEG passes the header check but fails the build's decode: left out, counted."""
    from PIL import Image

    from benchmarks.category import run_folder

    monkeypatch.setenv("KGCLIP_BENCH_CACHE", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "f", extra=False)
    jpg = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)).save(jpg)
    data = jpg.read_bytes()
    (root / "cat" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    res = run_folder(root, "fake:v1", ["none"], sense_model=None)
    (s,) = res["sets"].values()
    assert s["skipped"]["unindexed_images"] == 1 and s["n_items"] == 10
    assert s["relevant_per_query"]["cat"] == 2


def test_cli_class_map(tmp_path, monkeypatch):
    monkeypatch.setenv("KGCLIP_BENCH_CACHE", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "f")
    good, bad = tmp_path / "good.tsv", tmp_path / "bad.tsv"
    good.write_text("xyzzyq\tbus\n")
    bad.write_text("cat dog\n")
    out = tmp_path / "c.json"
    r = CliRunner().invoke(main, ["-q", "bench", "category", str(root), "--model", "fake:v1", "--expand", "none",
                                  "--class-map", str(good), "-o", str(out)])
    assert r.exit_code == 0, r.output
    (s,) = json.loads(out.read_text())["sets"].values()
    assert s["classes"]["xyzzyq"] == "n02924116" and s["unlinked"] == []
    r = CliRunner().invoke(main, ["-q", "bench", "category", str(root), "--model", "fake:v1", "--class-map", str(bad)])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "bad.tsv:1: expected 'class<TAB>entity'" in r.stderr
    r = CliRunner().invoke(main, ["-q", "bench", "category", "fashion-mnist", "--class-map", str(good)])
    assert r.exit_code == 2 and "--class-map is for a DIR" in r.stderr
