"""Build, resume, update, duplicates, hostile corpora, manifests, model mismatch, every source kind, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from click.testing import CliRunner

from indexer import BuildInterrupted, build_index, open_index, open_searcher, update_index, verify_index
from indexer.manifest import read_manifest
from indexer.store import WriteLock
from retrieval.encoders import get_encoder
from retrieval.errors import IndexCorrupt, IndexLocked, IndexNotFound, ModelMismatch, SourceError, UsageError
from tests.corpus import jpeg_bytes, make_hostile_corpus, png_bytes
from benchmarks.fakes import COLOURS

FAKE = dict(model="fake:v1", text_model=None, workers=0, quiet=True, log=lambda s: None)


def _colours(d, n_noise=0):
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        arr = np.clip(np.array(rgb)[None, None] + rng.integers(-8, 8, (24, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"{name}.png")
    for i in range(n_noise):
        (d / f"noise{i:03d}.png").write_bytes(png_bytes(100 + i, 16, 16))
    return d


def snapshot(index_dir):
    """Everything a build decides: ids -> (path, aliases, captions, meta, concepts, vector bytes)."""
    with open_index(index_dir) as ix:
        out = {}
        for i, it in ix.iter_items():
            v = ix.get_vectors([i])[0]
            out[i] = (it["path"], tuple(it["aliases"]), tuple(it["captions"]), json.dumps(it["meta"]),
                      json.dumps(it["concepts"]), it["sha256"], v.tobytes())
        return out


def by_path(snap):
    return {v[0]: (k,) + v[1:] for k, v in snap.items()}


def test_build_open_search_get(tmp_path):
    src = _colours(tmp_path / "imgs")
    r = build_index([src], tmp_path / "idx", **FAKE, batch_size=3)
    assert (r.items, r.added, r.failed, r.batches) == (8, 8, 0, 3)
    enc = get_encoder("fake:v1")
    with open_index(tmp_path / "idx") as ix:
        assert len(ix) == 8 and ix.dim == 32 and ix.model_spec == "fake:v1" and ix.text_model_spec is None
        assert ix.model_fingerprint.startswith("fake:v1#")
        s, ids = ix.search(enc.encode_queries(["red", "blue", "yellow"]), k=3)
        assert s.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (3, 3)
        names = [os.path.basename(x["path"]) for x in ix.get(ids[:, 0])]
        assert names == ["red.png", "blue.png", "yellow.png"]
        it = ix.get([ids[0, 0]])[0]
        assert set(it) == {"id", "path", "size", "mtime", "sha256", "width", "height", "captions", "concepts",
                           "aliases", "meta"}
        assert (it["width"], it["height"]) == (24, 24) and it["concepts"] == [["red", 1.0]]
        assert ix.get([-1, 999]) == [None, None]
        s, ids = ix.search(enc.encode_queries(["red"]), k=20)  # more than there are: padded with -1
        assert (ids[0, 8:] == -1).all() and (ids[0, :8] >= 0).all()
        assert ix.search(enc.encode_queries(["red"]), k=0)[1].shape == (1, 0)
        np.testing.assert_allclose(np.linalg.norm(ix.get_vectors(ids[0, :8]), axis=1), 1, atol=1e-5)
    m = read_manifest(tmp_path / "idx")
    assert m["format_version"] == 2 and m["metric"] == "inner_product" and m["state"] == "complete"
    assert m["model"]["spec"] == "fake:v1" and m["model"]["dim"] == 32 and m["text_model"] is None
    assert m["counts"]["items"] == 8 and m["faiss"]["image"]["n"] == 8 and "factory" in m["faiss"]["image"]
    assert m["faiss"]["image"]["recall_at_10"] >= 0.95 and m["timings"]["total"] > 0 and m["kgclip_version"]


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    src = _colours(tmp_path / "imgs", n_noise=12)
    (src / "dup.png").write_bytes((src / "red.png").read_bytes())
    (src / "bad.jpg").write_text("nope")
    build_index([src], tmp_path / "ref", **FAKE, batch_size=3)
    with pytest.raises(BuildInterrupted):
        build_index([src], tmp_path / "cut", **FAKE, batch_size=3, stop_after_batches=2)
    r = build_index([src], tmp_path / "cut", **FAKE, batch_size=3)
    assert r.added == 20 - 6 and r.unchanged >= 6  # the committed batches were not encoded again
    with pytest.raises(BuildInterrupted):  # interrupted again, later
        build_index([src], tmp_path / "cut2", **FAKE, batch_size=4, stop_after_batches=1)
    with pytest.raises(BuildInterrupted):
        build_index([src], tmp_path / "cut2", **FAKE, batch_size=3, stop_after_batches=3)
    build_index([src], tmp_path / "cut2", **FAKE, batch_size=3)
    ref = snapshot(tmp_path / "ref")
    assert snapshot(tmp_path / "cut") == ref
    assert by_path(snapshot(tmp_path / "cut2")).keys() == by_path(ref).keys()
    assert verify_index(tmp_path / "cut")["ok"]


def test_sigkill_mid_build_then_resume(tmp_path):
    src = _colours(tmp_path / "imgs", n_noise=40)
    build_index([src], tmp_path / "ref", **FAKE, batch_size=2)
    code = (
        "import signal, sys, time; import benchmarks.fakes as f; from indexer import build_index\n"
        # as in a terminal: a parent started in the background (nohup, `cmd &`) passes SIGINT on ignored
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "orig = f.FakeEncoder.encode_image_arrays\n"
        "calls = []\n"
        "def slow(self, *a, **k):\n"
        "    calls.append(1); time.sleep(0.15 if len(calls) <= 3 else 2.0); return orig(self, *a, **k)\n"
        "f.FakeEncoder.encode_image_arrays = slow\n"
        "build_index([sys.argv[1]], sys.argv[2], model='fake:v1', text_model=None, workers=0, batch_size=2, "
        "quiet=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.Popen([sys.executable, "-c", code, str(src), str(tmp_path / "cut")], env=env)
    from indexer.store import Store

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            s = Store(str(tmp_path / "cut"), readonly=True)
            n = s.count("items")
            s.close()
        except Exception:  # noqa: BLE001 - not created yet
            n = 0
        if n >= 10:
            break
    p.kill()
    p.wait()
    r = build_index([src], tmp_path / "cut", **FAKE, batch_size=2)
    assert r.unchanged >= 10 and r.added <= 48 - 10
    assert snapshot(tmp_path / "cut") == snapshot(tmp_path / "ref")
    assert verify_index(tmp_path / "cut")["ok"]


def test_update_add_modify_delete_rename_equals_fresh_build(tmp_path):
    src = _colours(tmp_path / "imgs", n_noise=4)
    build_index([src], tmp_path / "idx", **FAKE, batch_size=4)
    before = by_path(snapshot(tmp_path / "idx"))
    os.unlink(src / "noise000.png")  # delete
    os.rename(src / "noise001.png", src / "renamed.png")  # rename
    (src / "new.png").write_bytes(png_bytes(999, 16, 16))  # add
    (src / "blue.png").write_bytes(png_bytes(998, 16, 16))  # modify content
    os.utime(src / "green.png", ns=(1, 1))  # touch: new mtime, same bytes
    r = update_index(tmp_path / "idx", workers=0, quiet=True, log=lambda s: None, prune=True)
    # new + modified blue are encoded; the renamed file is its old content (kept, not re-encoded); touch = re-read
    assert (r.added, r.duplicates, r.removed, r.changed) == (2, 1, 2, 1)
    after = by_path(snapshot(tmp_path / "idx"))
    build_index([src], tmp_path / "fresh", **FAKE, batch_size=4)
    fresh = by_path(snapshot(tmp_path / "fresh"))
    assert after.keys() == fresh.keys()
    for path in after:
        assert after[path][1:] == fresh[path][1:]  # same vectors, metadata, captions
        if path in before and not path.endswith(("blue.png", "renamed.png")):
            assert after[path][0] == before[path][0]  # unchanged files keep their ids
    assert after[str(src / "green.png")][0] == before[str(src / "green.png")][0]
    assert after[str(src / "blue.png")][0] != before[str(src / "blue.png")][0]
    assert after[str(src / "renamed.png")][0] == before[str(src / "noise001.png")][0]  # a rename keeps the id
    r = update_index(tmp_path / "idx", workers=0, quiet=True, log=lambda s: None)
    assert (r.added, r.changed, r.removed, r.failed) == (0, 0, 0, 0)
    assert verify_index(tmp_path / "idx")["ok"]


def test_duplicates_stored_once_with_aliases(tmp_path):
    src = _colours(tmp_path / "imgs")
    shutil.copy(src / "red.png", src / "red copy.png")
    (src / "sub").mkdir()
    shutil.copy(src / "red.png", src / "sub" / "red.png")
    r = build_index([src], tmp_path / "idx", **FAKE)
    assert (r.items, r.paths, r.added, r.duplicates) == (8, 10, 8, 2)
    with open_index(tmp_path / "idx") as ix:
        red = [it for _, it in ix.iter_items() if it["path"].endswith("red copy.png")][0]
        assert sorted(os.path.basename(a) for a in red["aliases"]) == ["red.png", "red.png"]
        rid = red["id"]
    os.unlink(src / "red copy.png")
    update_index(tmp_path / "idx", workers=0, quiet=True, log=lambda s: None, prune=True)
    with open_index(tmp_path / "idx") as ix:
        it = ix.get([rid])[0]
        assert it["path"] == str(src / "red.png") and it["aliases"] == [str(src / "sub" / "red.png")]


def test_hostile_corpus_indexes_valid_reports_rest(tmp_path):
    valid, invalid = make_hostile_corpus(tmp_path / "c", bomb_pixels=4_000_000)
    msgs = []
    r = build_index([tmp_path / "c"], tmp_path / "idx", model="fake:v1", text_model=None, workers=1, batch_size=4,
                    max_pixels=4_000_000, timeout_per_file=20, quiet=True, log=msgs.append)
    assert r.items == len(valid) and r.failed == len(invalid) == r.failures_total
    skipped = {m.split(": ", 1)[0][len("skipping ") :] for m in msgs if m.startswith("skipping ")}
    assert skipped == {str(tmp_path / "c" / n) for n in invalid}
    with open_index(tmp_path / "idx") as ix:
        paths = {os.path.relpath(it["path"], tmp_path / "c") for _, it in ix.iter_items()}
    assert paths == set(valid)
    m = read_manifest(tmp_path / "idx")
    assert m["failures"]["total"] == len(invalid) and sum(m["failures"]["by_reason"].values()) == len(invalid)
    # nothing to do the second time: failures are remembered, not retried while unchanged
    r2 = build_index([tmp_path / "c"], tmp_path / "idx", model="fake:v1", text_model=None, workers=0,
                     max_pixels=4_000_000, quiet=True, log=msgs.append)
    assert (r2.added, r2.failed, r2.failures_total) == (0, 0, len(invalid))


def test_model_mismatch_and_manifest_errors(tmp_path):
    src = _colours(tmp_path / "imgs")
    build_index([src], tmp_path / "idx", **FAKE)
    with pytest.raises(ModelMismatch, match="built with model fake:v1"):
        build_index([src], tmp_path / "idx", **dict(FAKE, model="fake:v2"))
    with pytest.raises(ModelMismatch, match="text model"):
        build_index([src], tmp_path / "idx", **dict(FAKE, text_model="fake:v1"))
    with pytest.raises(ModelMismatch, match="fake:v2"):  # the Searcher's check
        open_searcher(tmp_path / "idx", model="fake:v2", expand="none", hybrid="none")
    open_searcher(tmp_path / "idx", model="fake:v1", expand="none", hybrid="none").close()
    r = build_index([src], tmp_path / "idx", **dict(FAKE, model="fake:v2"), resume=False)  # --restart
    assert r.added == 8 and read_manifest(tmp_path / "idx")["model"]["spec"] == "fake:v2"
    mpath = tmp_path / "idx" / "index.json"
    m = json.loads(mpath.read_text())
    mpath.write_text(json.dumps(dict(m, format_version=99)))
    with pytest.raises(IndexCorrupt, match="format version 99 is newer"):
        open_index(tmp_path / "idx")
    mpath.write_text("{ not json")
    with pytest.raises(IndexCorrupt, match="malformed manifest"):
        open_index(tmp_path / "idx")
    with pytest.raises(IndexNotFound):
        open_index(tmp_path / "nope")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "mine.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a kgclip index"):
        build_index([src], tmp_path / "stuff", **FAKE, resume=False)
    assert (tmp_path / "stuff" / "mine.txt").exists()
    with pytest.raises(SourceError, match="no such file"):
        build_index([tmp_path / "missing"], tmp_path / "idx2", **FAKE)


def test_manifest_round_trip(tmp_path):
    from indexer.manifest import new_manifest, write_manifest

    m = new_manifest({"spec": "fake:v1", "fingerprint": "fake:v1#x", "dim": 32}, None, ["/s"], {"a": 1})
    m["faiss"] = {"image": {"factory": "Flat", "params": {"nprobe": 8}}}
    write_manifest(str(tmp_path), m)
    assert read_manifest(str(tmp_path)) == m
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]  # no temp files left


def test_stale_or_missing_faiss_is_derived_again(tmp_path):
    src = _colours(tmp_path / "imgs")
    build_index([src], tmp_path / "idx", **FAKE)
    q = get_encoder("fake:v1").encode_queries(["green"])
    with open_index(tmp_path / "idx") as ix:
        ref = ix.search(q, 3)
        assert ix.rebuilt == []
    os.unlink(tmp_path / "idx" / "image.faiss")
    with open_index(tmp_path / "idx") as ix:
        assert ix.rebuilt == ["image"]
        np.testing.assert_array_equal(ix.search(q, 3)[1], ref[1])
    assert (tmp_path / "idx" / "image.faiss").exists()
    # a store that moved on (as after a crash between the last batch and the FAISS write)
    from indexer.store import Store

    s = Store(str(tmp_path / "idx"))
    s.write(lambda t: t.remove_path(str(src / "green.png")))
    s.close()
    assert not verify_index(tmp_path / "idx")["ok"]
    with open_index(tmp_path / "idx") as ix:
        assert ix.rebuilt == ["image"] and len(ix) == 7
        assert str(src / "green.png") not in [x["path"] for x in ix.get(ix.search(q, 7)[1][0])]
    assert verify_index(tmp_path / "idx")["ok"]
    # a writer holds the lock: derived in memory, nothing written
    os.unlink(tmp_path / "idx" / "image.faiss")
    with WriteLock(str(tmp_path / "idx")):
        with open_index(tmp_path / "idx") as ix:
            assert ix.rebuilt == ["image"] and len(ix) == 7
        assert not (tmp_path / "idx" / "image.faiss").exists()
    r = verify_index(tmp_path / "idx", repair=True)
    assert r["repaired"] and verify_index(tmp_path / "idx")["ok"]


def test_reader_derives_without_the_write_lock(tmp_path, monkeypatch):
    """An update started while a reader re-derives a stale FAISS file is not refused; the reader
    saves its result only if the store is still at the generation it derived."""
    import indexer.index as index_mod

    src = _colours(tmp_path / "imgs")
    idx = tmp_path / "idx"
    build_index([src], idx, **FAKE)
    os.unlink(idx / "image.faiss")
    real = index_mod.derive_faiss
    seen = []

    def derive_while_a_writer_starts(*a, **kw):
        with WriteLock(str(idx)):  # what an update does first: not refused during the derive
            seen.append(True)
        return real(*a, **kw)

    monkeypatch.setattr(index_mod, "derive_faiss", derive_while_a_writer_starts)
    with open_index(idx) as ix:
        assert ix.rebuilt == ["image"] and seen == [True]
    assert (idx / "image.faiss").exists() and verify_index(idx)["ok"]

    # the store moves on during the derive: the stale generation is not saved over it
    os.unlink(idx / "image.faiss")
    from indexer.store import Store

    def derive_then_store_moves(*a, **kw):
        out = real(*a, **kw)
        s = Store(str(idx))
        s.write(lambda t: t.remove_path(str(src / "green.png")))
        s.close()
        return out

    monkeypatch.setattr(index_mod, "derive_faiss", derive_then_store_moves)
    with open_index(idx) as ix:
        assert ix.rebuilt == ["image"]
    assert not (idx / "image.faiss").exists()
    monkeypatch.setattr(index_mod, "derive_faiss", real)
    with open_index(idx) as ix:
        assert len(ix) == 7
    assert verify_index(idx)["ok"]


def test_second_writer_is_refused(tmp_path):
    src = _colours(tmp_path / "imgs")
    (tmp_path / "idx").mkdir()
    with WriteLock(str(tmp_path / "idx")):
        with pytest.raises(IndexLocked, match=f"locked by pid {os.getpid()}"):
            build_index([src], tmp_path / "idx", **FAKE)


def _tar_add(tf, name, data):
    import io

    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 1_700_000_000
    tf.addfile(ti, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet", "webdataset"])
def test_caption_sources_build_caption_index(tmp_path, kind):
    src = _colours(tmp_path / "imgs")
    rows = [{"path": f"imgs/{c}.png", "caption": f"a {c} square", "label": c} for c in COLOURS]
    rows.append({"path": "imgs/red.png", "caption": "scarlet tile", "label": "red"})
    if kind == "csv":
        import csv

        p = tmp_path / "m.csv"
        with open(p, "w", newline="") as fh:
            w = csv.DictWriter(fh, ["path", "caption", "label"])
            w.writeheader()
            w.writerows(rows)
    elif kind == "jsonl":
        p = tmp_path / "m.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = tmp_path / "m.parquet"
        pq.write_table(pa.Table.from_pylist(rows), p)
    else:
        p = tmp_path / "shard.tar"
        with tarfile.open(p, "w") as tf:
            for c in COLOURS:
                _tar_add(tf, f"{c}.png", (src / f"{c}.png").read_bytes())
                caps = [f"a {c} square"] + (["scarlet tile"] if c == "red" else [])
                _tar_add(tf, f"{c}.json", json.dumps({"captions": caps, "label": c}).encode())
    r = build_index([p], tmp_path / "idx", **dict(FAKE, text_model="fake:v1"))
    assert r.items == 8 and r.captions == 9
    enc = get_encoder("fake:v1")
    with open_index(tmp_path / "idx") as ix:
        assert ix.text_model_spec == "fake:v1"
        s, ids = ix.search(enc.encode_queries(["scarlet tile"]), k=3, kind="caption")
        top = ix.get(ids[0])[0]
        assert top["meta"] == {"label": "red"} and top["captions"] == ["a red square", "scarlet tile"]
        assert len(set(ids[0].tolist())) == 3  # one hit per item, not per caption
        s, ids = ix.search(enc.encode_queries(["purple"]), k=20, kind="caption")
        assert (ids[0, :8] >= 0).all() and (ids[0, 8:] == -1).all()
        cv = ix.get_vectors([top["id"]], kind="caption")
        assert cv.shape == (1, 32) and abs(np.linalg.norm(cv) - 1) < 1e-5
    # a caption edited in the manifest: re-embedded, same item id
    if kind == "jsonl":
        rows[0]["caption"] = "a crimson square"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        r = update_index(tmp_path / "idx", workers=0, quiet=True, log=lambda s: None)
        assert (r.added, r.changed) == (0, 1)
        with open_index(tmp_path / "idx") as ix:
            s, ids = ix.search(enc.encode_queries(["crimson"]), k=1, kind="caption")
            assert ix.get(ids[0])[0]["path"].endswith("red.png")


def test_cli_build_info_verify_update(tmp_path, monkeypatch):
    from cli import main

    src = _colours(tmp_path / "imgs")
    (src / "broken.jpg").write_bytes(jpeg_bytes(1)[:200])
    monkeypatch.setenv("KGCLIP_PLUGINS", "benchmarks.fakes")
    idx = str(tmp_path / "idx")
    runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    res = runner.invoke(main, ["-q", "build", str(src), "-i", idx, "--model", "fake:v1", "--no-captions",
                               "--workers", "0", "--format", "json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["items"] == 8 and rep["failed"] == 1
    assert f"skipping {src / 'broken.jpg'}: cannot decode image" in res.stderr
    res = runner.invoke(main, ["info", idx, "--format", "json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["live_counts"]["items"] == 8
    res = runner.invoke(main, ["info", idx])
    assert "fake:v1" in res.stdout and "skip reasons" in res.stdout
    monkeypatch.setenv("KGCLIP_INDEX", idx)
    res = runner.invoke(main, ["verify"])
    assert res.exit_code == 0 and res.stdout.startswith("ok: 8 items")
    res = runner.invoke(main, ["-q", "update", "--workers", "0"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["build", str(src), "-i", idx, "--model", "fake:v2", "--workers", "0",
                               "--no-captions"])
    assert res.exit_code == 1 and "built with model fake:v1" in res.stderr and "Traceback" not in res.stderr
    res = runner.invoke(main, ["info", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "no such index" in res.stderr


def test_ctrl_c_mid_build_then_resume(tmp_path):
    """Ctrl-C after some committed batches (batches slow down after the third, so a busy machine's
    slow polling cannot miss the moment), then the same command resumes."""
    import signal

    src = _colours(tmp_path / "imgs", n_noise=30)
    code = (
        "import signal, sys, time; import benchmarks.fakes as f; from indexer import build_index\n"
        # as in a terminal: a parent started in the background (nohup, `cmd &`) passes SIGINT on ignored
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "orig = f.FakeEncoder.encode_image_arrays\n"
        "calls = []\n"
        "def slow(self, *a, **k):\n"
        "    calls.append(1); time.sleep(0.15 if len(calls) <= 3 else 2.0); return orig(self, *a, **k)\n"
        "f.FakeEncoder.encode_image_arrays = slow\n"
        "build_index([sys.argv[1]], sys.argv[2], model='fake:v1', text_model=None, workers=1, batch_size=2, "
        "quiet=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.Popen([sys.executable, "-c", code, str(src), str(tmp_path / "idx")], env=env,
                         stderr=subprocess.PIPE, text=True)
    from indexer.store import Store

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            s = Store(str(tmp_path / "idx"), readonly=True)
            n = s.count("items")
            s.close()
        except Exception:  # noqa: BLE001 - not created yet
            n = 0
        if n >= 6:
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "interrupted after" in err and "run the same command again" in err
    r = build_index([src], tmp_path / "idx", **FAKE, batch_size=2)
    assert r.unchanged >= 6 and r.items == 38
    assert verify_index(tmp_path / "idx")["ok"]


def test_lite_build_stores_wordnet_concepts(tmp_path, photos_dir, lite_encoder):
    import re

    r = build_index([photos_dir], tmp_path / "idx", model="lite", text_model=None, workers=0, quiet=True,
                    device="cpu", log=lambda s: None)
    assert r.items == 9
    with open_index(tmp_path / "idx") as ix:
        items = {os.path.basename(it["path"]): it for _, it in ix.iter_items()}
        for it in items.values():
            assert it["concepts"] and all(re.fullmatch(r"n\d{8}", c) and 0 < p <= 1 for c, p in it["concepts"])
        ids = ix.search(lite_encoder.encode_queries(["a photo of a cat"]), k=1)[1]
        assert ix.get(ids[0])[0]["path"].endswith("chelsea.jpg")


def test_building_into_an_index_adds_sources(tmp_path):
    a = _colours(tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()
    (b / "x.png").write_bytes(png_bytes(5, 16, 16))
    build_index([a], tmp_path / "idx", **FAKE)
    r = build_index([b], tmp_path / "idx", **FAKE)
    assert (r.items, r.added, r.removed) == (9, 1, 0)
    assert read_manifest(tmp_path / "idx")["sources"] == [str(a), str(b)]
    r = build_index([b], tmp_path / "idx", **FAKE, resume=False)  # --restart: only what is named now
    assert r.items == 1


@pytest.mark.parametrize("index_type", ["hnsw", "ivf", "ivfpq"])
def test_index_type_through_build_and_reopen(tmp_path, index_type):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(400):
        (src / f"{i:04d}.png").write_bytes(png_bytes(i, 12, 12))
    build_index([src], tmp_path / "idx", **FAKE, batch_size=64, index_type=index_type)
    m = read_manifest(tmp_path / "idx")["faiss"]["image"]
    assert m["n"] == 400 and 0 <= m["recall_at_10"] <= 1 and m["factory"]
    with open_index(tmp_path / "idx") as ix:
        ids = np.array([i for i, _ in ix.iter_items()][:50])
        got = ix.search(ix.get_vectors(ids), 10)[1]
        assert np.mean([i in row for i, row in zip(ids, got)]) >= 0.9
        assert ix.rebuilt == []
    os.unlink(tmp_path / "idx" / "image.faiss")
    with open_index(tmp_path / "idx") as ix:  # derived again with the same choice
        assert ix.rebuilt == ["image"] and ix._info["image"]["kind"] == m["kind"]


def test_failed_first_build_leaves_no_folder_and_failed_rebuild_keeps_items(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"path": "imgs/red.png"}\n{oops\n')
    idx = tmp_path / "idx"
    with pytest.raises(SourceError, match=r"m.jsonl:2: malformed JSON line"):
        build_index([str(bad)], str(idx), **FAKE)
    assert not idx.exists()  # nothing half-made to confuse the next command

    idx.mkdir()  # an empty folder the user made stays, still empty
    with pytest.raises(SourceError):
        build_index([str(bad)], str(idx), **FAKE)
    assert idx.is_dir() and not list(idx.iterdir())

    good = _colours(tmp_path / "imgs")
    build_index([str(good)], str(idx), **FAKE)
    before = snapshot(idx)
    with pytest.raises(SourceError):
        build_index([str(bad)], str(idx), **FAKE)
    assert snapshot(idx) == before  # the indexed data is untouched


def test_a_source_without_images_is_an_error_naming_it_but_update_of_an_emptied_source_is_not(tmp_path, monkeypatch):
    """An empty source is almost always a wrong path: one line naming it and the extensions looked for,
    exit 1, and no index folder left behind. ``update`` of a source that has become empty empties the index."""
    from cli import main

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(SourceError, match=r"source .*empty: no images under it \(looked for .*\.jpg .*\.png"):
        build_index([empty], tmp_path / "idx", **FAKE)
    assert not (tmp_path / "idx").exists()
    src = _colours(tmp_path / "imgs")
    build_index([src], tmp_path / "idx", **FAKE)
    with pytest.raises(SourceError, match="empty: no images"):  # adding an empty source to an index
        build_index([empty], tmp_path / "idx", **FAKE)
    assert read_manifest(tmp_path / "idx")["sources"] == [str(src)]

    monkeypatch.setenv("KGCLIP_PLUGINS", "benchmarks.fakes")
    runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    res = runner.invoke(main, ["build", str(empty), "-i", str(tmp_path / "idx2"), "--model", "fake:v1",
                               "--no-captions", "--workers", "0"])
    assert res.exit_code == 1 and "no images under it" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr

    for p in src.iterdir():
        p.unlink()
    r = update_index(tmp_path / "idx", workers=0, quiet=True, log=lambda s: None)
    assert r.removed == 0 and r.kept == 8 and r.items == 8  # an emptied source (an unmounted drive?) is kept
    r = update_index(tmp_path / "idx", workers=0, quiet=True, log=lambda s: None, prune=True, yes=True)
    assert r.removed == 8 and r.items == 0
    r = build_index([src], tmp_path / "idx", **FAKE)  # re-running the build of a source it holds: an update
    assert r.items == 0
    from indexer import BuildOptions

    _colours(src)
    r = build_index([src], tmp_path / "idx", BuildOptions(**FAKE))  # the options as one object
    assert r.items == 8


def test_the_indexing_bar_is_drawn_only_on_a_terminal(tmp_path, monkeypatch):
    """With stderr redirected (a file, a pipe), ``progress=True`` writes no "indexing: ..." lines."""
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    src = _colours(tmp_path / "imgs")
    for stream, drawn in ((io.StringIO(), False), (Tty(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        build_index([src], tmp_path / f"idx-{drawn}", **dict(FAKE, quiet=False), progress=True)
        monkeypatch.undo()
        assert ("indexing" in stream.getvalue()) is drawn, stream.getvalue()


def test_an_older_index_format_names_the_rebuild_command(tmp_path):
    """Format 1 (lite indexes from before concept profiles, the top-5 grounding): opening, searching,
    updating or building into it is one line naming the command that rebuilds it."""
    src = _colours(tmp_path / "imgs")
    idx = tmp_path / "idx"
    build_index([src], idx, **FAKE)
    mpath = idx / "index.json"
    m = json.loads(mpath.read_text())
    assert m["format_version"] == 2
    mpath.write_text(json.dumps(dict(m, format_version=1)))
    cmd = f"kgclip build SOURCES -i {idx} --restart"
    for call in (lambda: open_index(idx), lambda: update_index(idx, workers=0, quiet=True)):
        with pytest.raises(IndexCorrupt, match="older") as e:
            call()
        assert cmd in str(e.value) and "\n" not in str(e.value)
    # a lite manifest without its concept profile record
    mpath.write_text(json.dumps(dict(m, model=dict(m["model"], spec="lite"))))
    with pytest.raises(IndexCorrupt, match="without concept profiles") as e:
        open_index(idx)
    assert cmd in str(e.value)
    # the store's own format record: building into the old index asks for --restart
    from indexer.store import Store

    mpath.write_text(json.dumps(m))
    s = Store(str(idx))
    try:
        s.write(lambda txn: txn.set_meta("format_version", 1), bump=False)
    finally:
        s.close()
    with pytest.raises(IndexCorrupt, match="index format 1") as e:
        build_index([src], idx, **FAKE)
    assert cmd in str(e.value)
    assert build_index([src], idx, **FAKE, resume=False).items == 8  # --restart rebuilds it
