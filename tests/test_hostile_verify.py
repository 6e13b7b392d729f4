"""Issue 22: ``verify --repair`` leaves no damage, FAISS content is checked against the store, and junk
bytes in any LMDB database give one clear line naming it and never stop the repair.

Each case damages a copy of one small index (fake encoder, captions included), then asserts exit codes,
one clear line, that ``verify`` passes after ``--repair``, and how many items are kept.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from benchmarks.hostile import encode, noise
from indexer import build_index, open_index, verify_index
from indexer.faiss.files import load, save_atomic

from .test_hostile_dataloss import FAKE, cli, count_items, lines

N = 12


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """12 items from a captioned JSONL manifest (so every database has records)."""
    root = tmp_path_factory.mktemp("verify")
    imgs = root / "imgs"
    imgs.mkdir()
    rows = []
    for i in range(N):
        (imgs / f"i{i:02d}.png").write_bytes(encode(noise(700 + i, 10, 10), "PNG"))
        rows.append({"path": f"imgs/i{i:02d}.png", "caption": f"picture number {i}"})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    idx = root / "idx"
    build_index([root / "m.jsonl"], idx, **FAKE)
    assert verify_index(idx)["ok"]
    return idx


@pytest.fixture
def idx(base, tmp_path) -> Path:
    d = tmp_path / "idx"
    shutil.copytree(base, d)
    return d


def poke(idx: Path, db: str, key: bytes, value: bytes | None) -> None:
    """Write (or delete, for None) one raw LMDB record, as a hostile or broken copy would hold it."""
    import lmdb

    env = lmdb.open(str(idx / "store.lmdb"), max_dbs=16)
    try:
        h = env.open_db(db.encode())
        with env.begin(write=True) as t:
            if value is None:
                t.delete(key, db=h)
            else:
                t.put(key, value, db=h)
    finally:
        env.close()


def ikey(i: int) -> bytes:
    return struct.pack(">Q", i)


def first_key(idx: Path, db: str) -> bytes:
    import lmdb

    env = lmdb.open(str(idx / "store.lmdb"), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as t:
            return bytes(next(iter(t.cursor(db=env.open_db(db.encode(), txn=t)).iternext(values=False))))
    finally:
        env.close()


def check_repair(idx: Path, needle: str, kept: int) -> None:
    """verify fails naming ``needle``; --repair exits 0; verify then passes with ``kept`` items."""
    res = cli("verify", idx)
    assert res.exit_code == 1 and "Traceback" not in res.stderr and res.stderr == "", (res.stdout, res.stderr)
    assert any(needle in x for x in lines(res.stdout) if x.startswith("problem: ")), res.stdout
    res = cli("verify", idx, "--repair")
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert lines(res.stdout)[-1].startswith("repaired: ") and "remaining:" not in res.stdout, res.stdout
    res = cli("verify", idx)
    assert res.exit_code == 0 and lines(res.stdout) == [lines(res.stdout)[-1]], res.stdout
    assert lines(res.stdout)[-1].startswith("ok: ") and count_items(idx) == kept


# -- family 4: verify --repair leaves no damage -----------------------------------------------------------
@pytest.mark.parametrize("bad", ["nan", "short", "not-unit"])
def test_repair_of_a_bad_vector_names_the_item_and_verify_passes(idx, bad):
    value = {"nan": np.full(32, np.nan, np.float32).tobytes(), "short": np.ones(7, np.float32).tobytes(),
             "not-unit": np.full(32, 3.0, np.float32).tobytes()}[bad]
    poke(idx, "vecs", ikey(3), value)
    res = cli("verify", idx, "--repair")
    assert res.exit_code == 0, res.stdout
    removed = [x for x in lines(res.stdout) if x.startswith("repaired: removed item 3 ")]
    assert len(removed) == 1 and "i03.png" in removed[0] and "vector" in removed[0], res.stdout
    assert cli("verify", idx).exit_code == 0 and count_items(idx) == N - 1
    res = cli("search", idx, "picture", "--format", "paths", "-k", "20", "--expand", "none")
    assert res.exit_code == 0 and len(lines(res.stdout)) == N - 1
    res = cli("-q", "update", idx, "--workers", "0", "--format", "json")  # its file is read and encoded again
    assert res.exit_code == 0 and json.loads(res.stdout)["added"] == 1 and count_items(idx) == N
    assert cli("verify", idx).exit_code == 0


def test_search_with_a_bad_vector_is_one_clear_line(idx):
    poke(idx, "vecs", ikey(3), np.ones(7, np.float32).tobytes())
    (idx / "image.faiss").unlink()  # the reader must derive it again, from the broken store
    res = cli("search", idx, "picture", "--expand", "none")
    assert res.exit_code == 1 and lines(res.stderr) == [
        "Error: store.lmdb vecs[3]: vector record of 28 bytes among ones of 128; run `kgclip verify --repair`"]


# -- family 10: junk bytes in every database ---------------------------------------------------------------
JUNK = b"\xff\x00junk!"


@pytest.mark.parametrize("db,key,needle,kept", [
    ("items", ikey(2), "store.lmdb items[2]", N - 1),
    ("paths", None, "store.lmdb paths[", N),
    ("hashes", None, "store.lmdb hashes[", N),
    ("vecs", ikey(2), "store.lmdb vecs[2]", N - 1),
    ("capvecs", ikey(2), "store.lmdb capvecs[2]", N),
    ("profiles", ikey(2), "store.lmdb profiles[2]", N - 1),
    ("meta", b"generation", "store.lmdb meta[generation]", N),
    ("meta", b"next_id", "store.lmdb meta[next_id]", N),
    ("meta", b"sources", "store.lmdb meta[sources]", N),
    ("fails", b"/x/junk.png", "store.lmdb fails[/x/junk.png]", N),
])
def test_junk_value_in_any_database(idx, db, key, needle, kept):
    poke(idx, db, key if key is not None else first_key(idx, db), JUNK)
    res = cli("search", idx, "picture", "--expand", "none")  # works, or one line naming the record
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    assert res.exit_code == 0 or (res.exit_code == 1 and len(lines(res.stderr)) == 1
                                  and "store.lmdb " in res.stderr and "verify --repair" in res.stderr), res.stderr
    check_repair(idx, needle, kept)


@pytest.mark.parametrize("db", ["paths", "fails"])
def test_junk_key_in_a_path_keyed_database(idx, db):
    poke(idx, db, b"/x/\xff\xfe.png", b'{"id": 1, "reason": "x"}')
    res = cli("-q", "update", idx, "--workers", "0")
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    assert res.exit_code == 0 or lines(res.stderr) == [
        f"Error: store.lmdb {db}[/x/\\xff\\xfe.png]: key is not UTF-8; run `kgclip verify --repair`"], res.stderr
    check_repair(idx, f"store.lmdb {db}[/x/", N)


def test_item_record_with_a_lone_surrogate_path(idx):
    poke(idx, "items", ikey(2), json.dumps({"id": 2, "path": "/x/\ud800.png", "sha256": "ab", "aliases": []}).encode())
    check_repair(idx, "store.lmdb items[2]: a path in the record is not valid UTF-8", N - 1)


def test_junk_key_in_an_id_keyed_database(idx):
    poke(idx, "vecs", b"abc", np.ones(32, np.float32).tobytes())
    check_repair(idx, "store.lmdb vecs[abc]", N)


@pytest.mark.parametrize("bad", ["nan-probability", "odd-size"])
def test_bad_concept_profile_fails_verify(idx, bad):
    value = {"nan-probability": np.arange(4, dtype="<u2").tobytes() + np.full(4, np.nan, "<f2").tobytes(),
             "odd-size": b"\x01\x02\x03"}[bad]
    poke(idx, "profiles", ikey(5), value)
    check_repair(idx, "store.lmdb profiles[5]", N - 1)


def test_dangling_records_of_a_lost_item_are_all_repaired(idx):
    """Only the item record is gone: its vector, hash, path and captions dangle."""
    poke(idx, "items", ikey(4), None)
    check_repair(idx, "vector 4 has no item", N - 1)


# -- family 8: FAISS content is checked against the store ---------------------------------------------------
def _rewrite_faiss(idx: Path, change) -> None:
    """Change image.faiss and write a sidecar that matches it (generation and CRC): only the store can tell."""
    index, gen = load(idx / "image.faiss")
    save_atomic(change(index), idx / "image.faiss", gen)


def _permute(index):
    import faiss

    ids = faiss.vector_to_array(index.id_map)
    faiss.copy_array_to_vector(np.roll(ids, 1).astype(np.int64), index.id_map)
    return index


def _swap_two(index):
    import faiss

    ids = faiss.vector_to_array(index.id_map)
    ids[[2, 9]] = ids[[9, 2]]
    faiss.copy_array_to_vector(ids.astype(np.int64), index.id_map)
    return index


def _as_l2(index):
    import faiss

    ids = faiss.vector_to_array(index.id_map)
    vecs = np.stack([index.index.reconstruct(i) for i in range(index.ntotal)])
    l2 = faiss.IndexIDMap(faiss.IndexFlatL2(index.d))
    l2.add_with_ids(vecs, ids)
    return l2


def _top_path(idx: Path, item: int) -> str:
    with open_index(idx) as ix:
        q = ix.get_vectors([item])
        _, ids = ix.search(q, 1)
        return ix.get([ids[0, 0]])[0]["path"]


@pytest.mark.parametrize("change,needle", [(_permute, "12 of 12 sampled rows do not hold their item's stored vector"),
                                           (_swap_two, "2 of 12 sampled rows"),
                                           (_as_l2, "uses the L2 metric")])
def test_hostile_faiss_file_fails_verify_and_search_stays_right(idx, change, needle):
    with open_index(idx) as ix:
        want = ix.get([7])[0]["path"]
    _rewrite_faiss(idx, change)
    res = cli("verify", idx)
    assert res.exit_code == 1 and any(x.startswith("problem: image.faiss ") and needle in x
                                      for x in lines(res.stdout)), res.stdout
    assert _top_path(idx, 7) == want  # the reader derived it again from the store
    assert cli("verify", idx).exit_code == 0  # ... and saved it


def test_hostile_faiss_file_is_repaired(idx):
    _rewrite_faiss(idx, _permute)
    check_repair(idx, "image.faiss", N)


def _index_with_param(tmp_path, n, seed, size, param, value, **build):
    """An index of ``n`` noise images whose index.json then records ``value`` for a FAISS search parameter."""
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(n):
        (src / f"{i:03d}.png").write_bytes(encode(noise(seed + i, size, size), "PNG"))
    idx = tmp_path / "idx"
    build_index([src], idx, **dict(FAKE, text_model=None), **build)
    m = json.loads((idx / "index.json").read_text())
    m["faiss"]["image"]["params"][param] = value
    (idx / "index.json").write_text(json.dumps(m))
    return idx


@pytest.mark.parametrize("value", [-1, 0, 2_000_000_000, "many", None, 1.5e300, float("nan"), True])
def test_search_parameters_out_of_range(tmp_path, value):
    idx = _index_with_param(tmp_path, 30, 900, 10, "efSearch", value, index_type="hnsw")
    res = cli("search", idx, "red", "-k", "3", "--format", "paths", "--expand", "none")
    assert res.exit_code == 0, res.stderr
    assert len(lines(res.stdout)) == 3  # never fewer hits than asked when there are enough items
    warn = lines(res.stderr)
    assert len(warn) == 1 and "index.json: faiss.image.params.efSearch=" in warn[0] and "out of range" in warn[0], warn


@pytest.mark.parametrize("value", [-1, 2_000_000_000])
def test_nprobe_out_of_range(tmp_path, value):
    idx = _index_with_param(tmp_path, 300, 1200, 8, "nprobe", value, index_type="ivf", batch_size=64)
    res = cli("search", idx, "red", "-k", "5", "--format", "paths", "--expand", "none")
    assert res.exit_code == 0 and len(lines(res.stdout)) == 5, res.stderr
    warn = lines(res.stderr)
    assert len(warn) == 1 and "faiss.image.params.nprobe=" in warn[0], warn


def _inner_l2(index):
    """An id map that claims inner product around an L2 index."""
    import faiss

    ids = faiss.vector_to_array(index.id_map)
    vecs = np.stack([index.index.reconstruct(i) for i in range(index.ntotal)])
    out = faiss.IndexIDMap(faiss.IndexFlatL2(index.d))
    out.add_with_ids(vecs, ids)
    out.metric_type = faiss.METRIC_INNER_PRODUCT
    return out


def _extra_row(index):
    v = np.ones((1, index.d), np.float32) / np.sqrt(index.d)
    index.add_with_ids(v, np.array([3], np.int64))  # a second row claiming item 3
    return index


@pytest.mark.parametrize("change,needle", [(_inner_l2, "uses the L2 metric"), (_extra_row, "holds 13 vectors")])
def test_more_hostile_faiss_files(idx, change, needle):
    with open_index(idx) as ix:
        want = ix.get([7])[0]["path"]
    _rewrite_faiss(idx, change)
    res = cli("verify", idx)
    assert res.exit_code == 1 and any(needle in x for x in lines(res.stdout)), res.stdout
    assert _top_path(idx, 7) == want
    check_repair_or_ok = cli("verify", idx)
    assert check_repair_or_ok.exit_code == 0, check_repair_or_ok.stdout
