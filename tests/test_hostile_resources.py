"""Hostile index and KG folders (issue 22, families 5, 6, 7 and 10): no hang, bounded memory, no network.

Every case is generated here (no binary fixtures) and run through the CLI in a subprocess under a
timeout and an address-space limit; each asserts the exit code, at most one clear line naming the file,
no traceback, and a peak RSS within 500 MB of the same command on an intact folder.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import tarfile
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from benchmarks.hostile import encode, noise
from benchmarks.reliability_kit import CLI, REPO
from indexer import build_index

FAKE = dict(model="fake:v1", text_model="fake:v1", workers=0, quiet=True, log=lambda s: None)
AS_LIMIT = 3 << 30  # address space: importing faiss, lmdb and numpy needs ~1.4 GB; a 4 GiB request fails
RSS_MARGIN = 500 << 20  # the issue's target: no small file costs more than 500 MB beyond the baseline
TIMEOUT_S = 60  # a hang is killed here; a case must also finish in SLOW_S
SLOW_S = 30  # the target is 10 s; the margin is for the shared 2-core test machine
_BASELINE: dict[str, int] = {}


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run(args, tmp: Path, env_extra: dict | None = None, baseline: str | None = None):
    """Run the CLI -> (exit code, stdout, stderr, seconds, peak RSS bytes); killed after TIMEOUT_S."""
    env = dict(os.environ, PYTHONPATH=str(REPO), KGCLIP_PLUGINS="benchmarks.fakes", KGCLIP_OFFLINE="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", KGCLIP_CACHE=str(tmp / "cache"))
    env.update(env_extra or {})
    env = {k: v for k, v in env.items() if v is not None}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.monotonic()
        p = subprocess.Popen([*CLI, *map(str, args)], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             env=env, cwd=str(tmp), preexec_fn=_limit)
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t > TIMEOUT_S:
                os.kill(p.pid, signal.SIGKILL)
                os.wait4(p.pid, 0)
                pytest.fail(f"kgclip {' '.join(map(str, args))} hung (killed after {TIMEOUT_S} s)")
            time.sleep(0.05)
        p.returncode = os.waitstatus_to_exitcode(status)
        secs = time.monotonic() - t
        out.seek(0)
        err.seek(0)
        o, e = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    rss = usage.ru_maxrss * 1024
    assert secs < SLOW_S, (args, secs)
    if baseline is not None:
        assert baseline in _BASELINE, baseline
        assert rss <= _BASELINE[baseline] + RSS_MARGIN, (args, rss >> 20, _BASELINE[baseline] >> 20)
    return p.returncode, o, e, secs, rss


def one_line(code: int, err: str, *fragments: str, rc: int = 1) -> str:
    assert code == rc, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile_src")
    (root / "imgs").mkdir()
    rows = []
    for i in range(8):
        (root / "imgs" / f"p{i}.png").write_bytes(encode(noise(100 + i, 12, 12), "PNG"))
        rows.append({"path": f"imgs/p{i}.png", "caption": f"picture {i}"})
    (root / "cap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def base_index(sources, tmp_path_factory) -> Path:
    idx = tmp_path_factory.mktemp("hostile_idx") / "idx"
    build_index([str(sources / "cap.jsonl")], str(idx), **FAKE)
    return idx


@pytest.fixture(scope="module")
def hnsw_index(sources, tmp_path_factory) -> Path:
    idx = tmp_path_factory.mktemp("hostile_hnsw") / "idx"
    build_index([str(sources / "cap.jsonl")], str(idx), index_type="hnsw", **FAKE)
    return idx


@pytest.fixture(scope="module")
def small_kg(tmp_path_factory) -> Path:
    from retrieval.kg.graphfile import write_graph

    out = tmp_path_factory.mktemp("hostile_kg") / "kg"
    write_graph(out, name="tiny", ids=["a", "b", "c"], names=[["dog"], ["animal"], ["cat"]],
                glosses=["a dog", "an animal", "a cat"],
                relations={"hypernym": (np.array([0, 2]), np.array([1, 1]))}, inverses={"hypernym": "hyponym"},
                arrays={"counts": np.array([3, 2, 1], np.int32)})
    return out


def _copy(src: Path, tmp: Path, name: str = "idx") -> Path:
    dst = tmp / name
    shutil.copytree(src, dst)
    return dst


def _search(idx: Path, tmp: Path, *extra, env_extra=None, baseline="search"):
    return run(["search", idx, "picture", "--expand", "none", "-k", "3", *extra], tmp, env_extra, baseline)


@pytest.fixture
def baselines(base_index, small_kg, tmp_path):
    """Peak RSS of the commands on intact folders (measured once per module)."""
    if not _BASELINE:
        idx = _copy(base_index, tmp_path, "clean")
        code, out, err, _, rss = _search(idx, tmp_path, baseline=None)
        assert code == 0 and out.strip(), err
        _BASELINE["search"] = rss
        code, out, err, _, rss = run(["kg", "info", small_kg], tmp_path)
        assert code == 0, err
        _BASELINE["kg"] = rss
    return _BASELINE


# -- family 5: FIFOs never hang kgclip ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["image.faiss", "image.faiss.json", "caption.faiss"])
@pytest.mark.parametrize("link", [False, True], ids=["fifo", "link-to-fifo"])
def test_fifo_faiss_files_are_derived_again(base_index, tmp_path, baselines, name, link):
    idx = _copy(base_index, tmp_path)
    os.unlink(idx / name)
    fifo = tmp_path / "pipe" if link else idx / name
    os.mkfifo(fifo)
    if link:
        os.symlink(fifo, idx / name)
    code, out, err, _, _ = _search(idx, tmp_path)
    assert code == 0 and len(out.strip().splitlines()) == 3 and "Traceback" not in err, (code, err)
    assert os.path.isfile(idx / name) and not os.path.islink(idx / name)  # derived and replaced
    if link:
        assert os.stat(fifo).st_mode & 0o170000 == 0o010000  # the link's target is still the FIFO


@pytest.mark.parametrize("name,frags", [("index.json", ("manifest", "FIFO")),
                                        ("store.lmdb/data.mdb", ("LMDB", "not a regular file"))])
def test_fifo_manifest_or_store_is_one_line(base_index, tmp_path, baselines, name, frags):
    idx = _copy(base_index, tmp_path)
    os.unlink(idx / name)
    os.mkfifo(idx / name)
    for args in (["search", idx, "picture", "--expand", "none"], ["info", idx], ["verify", idx]):
        code, _, err, _, _ = run(args, tmp_path, baseline="search")
        one_line(code, err, name.split("/")[-1], *frags)


def test_manifest_model_must_be_the_stores(base_index, tmp_path, baselines):
    idx = _copy(base_index, tmp_path)
    m = json.loads((idx / "index.json").read_text())
    m["model"]["dim"] = 384  # the store's vectors are 32-d: deriving FAISS would fail deep inside
    (idx / "index.json").write_text(json.dumps(m))
    code, _, err, _, _ = _search(idx, tmp_path)
    one_line(code, err, "index.json", "the store was built with")


def test_symlinked_manifest_is_refused(base_index, tmp_path, baselines):
    idx = _copy(base_index, tmp_path)
    os.rename(idx / "index.json", tmp_path / "elsewhere.json")
    os.symlink(tmp_path / "elsewhere.json", idx / "index.json")
    code, _, err, _, _ = _search(idx, tmp_path)
    one_line(code, err, "index.json", "symbolic link")


@pytest.mark.parametrize("kind", ["fifo", "dir", "device"])
def test_query_image_must_be_a_regular_file(base_index, tmp_path, baselines, kind):
    q = {"fifo": tmp_path / "q.fifo", "dir": tmp_path, "device": Path("/dev/zero")}[kind]
    if kind == "fifo":
        os.mkfifo(q)
    code, _, err, _, _ = run(["search", base_index, "--image", q, "--expand", "none"], tmp_path,
                             baseline="search")
    if kind == "dir":  # click's own usage error
        assert code == 2 and "is a directory" in err and "Traceback" not in err, err
    else:
        one_line(code, err, str(q), "not a regular file")


@pytest.mark.parametrize("name", ["kg.json", "entities.json.gz", "graph.npz"])
def test_fifo_kg_files_are_one_line(small_kg, tmp_path, baselines, name):
    kg = _copy(small_kg, tmp_path, "kg")
    os.unlink(kg / name)
    os.mkfifo(kg / name)
    code, _, err, _, _ = run(["kg", "info", kg], tmp_path, baseline="kg")
    one_line(code, err, name, "FIFO")


# -- family 6: small files never ask for huge allocations ---------------------------------------------
def _faiss_4gib_header(d: int = 32, n: int = 1 << 25) -> bytes:
    """An ``IDMap,Flat`` file whose header declares n x d floats (4 GiB) and holds none of them."""
    head = struct.pack("<iqqq?i", d, n, 0, 0, True, 0)
    return b"IxMp" + head + b"IxFI" + head + struct.pack("<Q", n * d)


def _sidecar_for(path: Path, generation: int, ntotal: int, dim: int = 32) -> None:
    data = path.read_bytes()
    Path(str(path) + ".json").write_text(json.dumps({
        "format": 1, "generation": generation, "ntotal": ntotal, "dim": dim, "size": len(data),
        "crc32": zlib.crc32(data), "meta": {}}))


@pytest.mark.parametrize("sidecar", ["matching", "stale"])
def test_faiss_header_declaring_4gib_is_not_read(base_index, tmp_path, baselines, sidecar):
    idx = _copy(base_index, tmp_path)
    (idx / "image.faiss").write_bytes(_faiss_4gib_header())
    if sidecar == "matching":  # a hostile sidecar that agrees with the file: the header walk refuses it
        _sidecar_for(idx / "image.faiss", json.loads((idx / "index.json").read_text())["generation"], 1 << 25)
    code, out, err, _, _ = _search(idx, tmp_path)
    assert code == 0 and len(out.strip().splitlines()) == 3 and "Traceback" not in err, err


def test_faiss_load_never_hands_a_bad_file_to_faiss(tmp_path, monkeypatch):
    import faiss

    from indexer import faiss as V
    from retrieval.errors import IndexCorrupt

    p = tmp_path / "image.faiss"
    p.write_bytes(_faiss_4gib_header())
    monkeypatch.setattr(faiss, "read_index", lambda *a: pytest.fail("faiss.read_index was called"))
    for sidecar in (False, True):  # without a sidecar, or with one that matches the hostile file
        if sidecar:
            _sidecar_for(p, 1, 1 << 25)
        with pytest.raises(IndexCorrupt, match="image.faiss.*4,294,967,296 bytes"):
            V.load(p)
    # an HNSW link pointing past the vectors (faiss would read out of bounds at search time)
    monkeypatch.undo()
    x = np.random.default_rng(0).standard_normal((50, 8)).astype("float32")
    index = faiss.index_factory(8, "IDMap,HNSW32", faiss.METRIC_INNER_PRODUCT)
    index.add_with_ids(x, np.arange(50, dtype=np.int64))
    V.save_atomic(index, p, generation=1)
    assert V.load(p, dim=8, ntotal=50)[1] == 1
    with pytest.raises(IndexCorrupt, match="dimension 8"):
        V.load(p, dim=16)
    raw = bytearray(p.read_bytes())
    hnsw = faiss.downcast_index(index.index).hnsw
    links = faiss.vector_to_array(hnsw.neighbors)
    at = raw.find(links[:8].astype("<i4").tobytes())
    raw[at:at + 4] = struct.pack("<i", 10_000)
    p.write_bytes(bytes(raw))
    _sidecar_for(p, 1, 50, dim=8)
    with pytest.raises(IndexCorrupt, match="HNSW links"):
        V.load(p)


@pytest.mark.parametrize("patch,frag", [("nlist", "lists"), ("list size", "more than the file holds"),
                                        ("pq centroids", "entries"), ("trailing bytes", "unexpected bytes")])
def test_ivf_declarations_are_checked_before_faiss(tmp_path, monkeypatch, patch, frag):
    """IVF files: faiss allocates nlist lists and every list's codes before reading them."""
    import faiss

    from indexer import faiss as V
    from retrieval.errors import IndexCorrupt

    x = np.random.default_rng(1).standard_normal((600, 16)).astype("float32")
    index = faiss.index_factory(16, "IVF8,PQ4x8" if patch == "pq centroids" else "IVF8,Flat",
                                faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 2
    if patch == "pq centroids":
        index.pq.cp.niter = 2
        index.do_polysemous_training = False
    index.train(x)
    index.add_with_ids(x, np.arange(600, dtype=np.int64))
    p = tmp_path / "image.faiss"
    V.save_atomic(index, p, generation=1)
    raw = bytearray(p.read_bytes())
    head = 4 + struct.calcsize("<iqqq?i")
    if patch == "nlist":
        raw[head:head + 8] = struct.pack("<Q", 1 << 40)
    elif patch == "list size":
        at = raw.find(b"full") + 4 + 8  # the sizes vector: its length, then one size per list
        raw[at:at + 8] = struct.pack("<Q", 1 << 36)
    elif patch == "pq centroids":
        at = raw.find(struct.pack("<QQQ", 16, 4, 8)) + 24
        raw[at:at + 8] = struct.pack("<Q", 1 << 36)
    else:
        raw += b"\0" * 64
    p.write_bytes(bytes(raw))
    _sidecar_for(p, 1, 600, dim=16)
    monkeypatch.setattr(faiss, "read_index", lambda *a: pytest.fail("faiss.read_index was called"))
    with pytest.raises(IndexCorrupt, match=frag):
        V.load(p)


def test_huge_ef_search_is_clamped_with_a_warning(hnsw_index, tmp_path, baselines):
    idx = _copy(hnsw_index, tmp_path)
    m = json.loads((idx / "index.json").read_text())
    assert "efSearch" in m["faiss"]["image"]["params"], m["faiss"]["image"]
    m["faiss"]["image"]["params"]["efSearch"] = 2_000_000_000
    (idx / "index.json").write_text(json.dumps(m))
    code, out, err, _, _ = _search(idx, tmp_path)
    assert code == 0 and len(out.strip().splitlines()) == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "efSearch" in lines[0] and "index.json" in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("case", ["3 GB sparse", "6 MB of values", "nested 100000 deep", "dim 2e9",
                                  "count not an integer", "params not an object", "sources not strings"])
def test_hostile_manifest_is_one_line(base_index, tmp_path, baselines, case):
    idx = _copy(base_index, tmp_path)
    p = idx / "index.json"
    m = json.loads(p.read_text())
    if case == "3 GB sparse":
        with open(p, "r+b") as fh:
            fh.truncate(3 << 30)
        frag = "3.0 GB"
    elif case == "6 MB of values":
        m["failures"]["junk"] = [[]] * (2 << 20)
        p.write_text(json.dumps(m, separators=(",", ":")))
        frag = "JSON values"
    elif case == "nested 100000 deep":
        p.write_text('{"format": "kgclip-index", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
        frag = "nested too deeply"
    else:
        field, value, frag = {"dim 2e9": (("model", "dim"), 2_000_000_000, "'model'"),
                              "count not an integer": (("counts", "items"), "12", "counts.items"),
                              "params not an object": (("faiss", "image", "params"), [64], "params"),
                              "sources not strings": (("sources",), [{"a": 1}], "sources")}[case]
        obj = m
        for k in field[:-1]:
            obj = obj.setdefault(k, {})
        obj[field[-1]] = value
        p.write_text(json.dumps(m))
    code, _, err, _, _ = _search(idx, tmp_path)
    one_line(code, err, "index.json", frag)


def _rewrite_entities(kg: Path, raw: bytes) -> None:
    with open(kg / "entities.json.gz", "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=1) as gz:
        gz.write(raw)


@pytest.mark.parametrize("case", ["gzip bomb", "many values", "empty lines", "arrays bomb", "declared shape"])
def test_kg_bombs_are_refused(small_kg, tmp_path, baselines, case):
    kg = _copy(small_kg, tmp_path, "kg")
    if case == "gzip bomb":  # ~200 KB that unpacks to 200 MB (the issue's 3 MB unpacked to 6.3 GB)
        ent = json.loads(gzip.decompress((kg / "entities.json.gz").read_bytes()))
        head = json.dumps(ent)[:-1].encode() + b', "pad": "'
        with open(kg / "entities.json.gz", "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=6) as gz:
            gz.write(head)
            for _ in range(200):
                gz.write(b" " * (1 << 20))
            gz.write(b'"}')
        frag, name = "decompresses to more than", "entities.json.gz"
    elif case == "many values":  # 6 MB of [] would take ~140 MB as Python lists; refused before parsing
        _rewrite_entities(kg, b'{"ids": "a", "names": "x", "glosses": "g", "lemma_keys": "x", "extra": {"l": ['
                          + b"[]," * (2 << 20) + b"[]]}}")
        frag, name = "JSON values", "entities.json.gz"
    elif case == "empty lines":  # 8M entities in ~8 KB: ~3 GB once split into Python lists
        lines = "\n" * (8 << 20)
        _rewrite_entities(kg, json.dumps({"ids": lines, "names": lines, "glosses": lines, "lemma_keys": "x",
                                          "extra": {}}).encode())
        frag, name = "lines in a", "entities.json.gz"
    else:
        with zipfile.ZipFile(kg / "graph.npz", "w", zipfile.ZIP_DEFLATED) as zf:
            for n, a in np.load(small_kg / "graph.npz").items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, a)
                zf.writestr(n + ".npy", buf.getvalue())
            if case == "arrays bomb":  # 1 GB of zeros in a ~1 MB member
                zi = zipfile.ZipInfo("size.npy")
                zi.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(zi, "w", force_zip64=True) as w:
                    w.write(b"\x93NUMPY\x01\x00v\x00{'descr': '<i8', 'fortran_order': False, 'shape': (134217728,), }"
                            .ljust(128 - 1) + b"\n")
                    for _ in range(1024):
                        w.write(bytes(1 << 20))
                frag = "unpacks to"
            else:  # a header declaring 10^12 elements in 200 bytes
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False,
                                                           "shape": (10 ** 12,)})
                zf.writestr("depth.npy", buf.getvalue() + bytes(64))
                frag = "declares"
        name = "graph.npz"
    code, _, err, _, _ = run(["kg", "info", kg], tmp_path, baseline="kg")
    one_line(code, err, name, frag)


def test_largest_graph_arrays_within_the_caps_stay_bounded(small_kg, tmp_path, baselines):
    """A valid graph.npz that unpacks to just under the 128 MB floor: loads, within the RSS bound."""
    kg = _copy(small_kg, tmp_path, "kg")
    arrs = dict(np.load(kg / "graph.npz"))
    n = (60 << 20) // 4  # rows and counts: 120 MB in all
    arrs["lemmas.rows"] = np.zeros(n, np.int32)
    arrs["lemmas.counts"] = np.zeros(n, np.int32)
    arrs["lemmas.indptr"] = np.array([0, 0, 0, n], np.int32)[: len(arrs["lemmas.indptr"])]
    arrs["lemmas.indptr"][-1] = n
    with zipfile.ZipFile(kg / "graph.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, a in arrs.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a)
            zf.writestr(name + ".npy", buf.getvalue())
    code, out, err, _, _ = run(["kg", "info", kg], tmp_path, baseline="kg")
    assert code == 0 and "Traceback" not in err, err


def test_forged_graph_fingerprint_cannot_key_another_cache(small_kg, tmp_path):
    """kg.json's fingerprint keys the entity-vector cache: a graph claiming WordNet's (or a path) gets
    its own, computed from its files."""
    from retrieval.kg.graph import Graph
    from retrieval.kg.graphfile import read_meta

    kg = _copy(small_kg, tmp_path, "kg")
    real = read_meta(kg)["fingerprint"]
    md = json.loads((kg / "kg.json").read_text())
    md["fingerprint"] = read_meta(REPO / "retrieval" / "kg" / "data")["fingerprint"] + "/../../evil"
    (kg / "kg.json").write_text(json.dumps(md))
    assert Graph(kg).fingerprint == real


# -- family 7: an index never reaches for the network ---------------------------------------------------
NET_GUARD = '''
import os, socket
def _refuse(*a, **k):
    with open(os.environ["KGCLIP_TEST_NETLOG"], "a") as fh:
        fh.write(repr(a[:2]) + "\\n")
    raise OSError("network disabled by the test")
socket.socket.connect = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''


@pytest.mark.parametrize("field,spec", [("text_model", "sbert:someone/model"),
                                        ("text_model", "sbert:someone-else/other-model")])
def test_index_named_model_is_not_downloaded(base_index, tmp_path, baselines, field, spec):
    idx = _copy(base_index, tmp_path)
    m = json.loads((idx / "index.json").read_text())
    m[field]["spec"] = spec
    m[field].pop("fingerprint", None)
    (idx / "index.json").write_text(json.dumps(m))
    from indexer.store import Store

    store = Store(str(idx))  # the store records the same model (else open_index refuses the manifest)
    store.write(lambda txn: txn.set_meta(field, dict(m[field])), bump=False)
    store.close()
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NET_GUARD)
    netlog = tmp_path / "net.log"
    env = {"PYTHONPATH": f"{guard}{os.pathsep}{REPO}", "KGCLIP_TEST_NETLOG": str(netlog), "KGCLIP_OFFLINE": None,
           "HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "KGCLIP_ALLOW_DOWNLOAD": None,
           "HF_HOME": str(tmp_path / "hf")}
    code, _, err, secs, _ = _search(idx, tmp_path, "--hybrid", "sum", env_extra=env)
    line = one_line(code, err, "index.json", spec, "KGCLIP_ALLOW_DOWNLOAD")
    assert secs < 10, secs
    assert not netlog.exists(), netlog.read_text()  # no connection was even tried
    assert len(line) < 600


# -- family 10: handled input instead of internal errors ------------------------------------------------
def _csr_out_of_range(kg: Path, key: str, value) -> None:
    arrs = dict(np.load(kg / "graph.npz"))
    arrs[key] = np.asarray(value, arrs[key].dtype)
    with zipfile.ZipFile(kg / "graph.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        for n, a in arrs.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a)
            zf.writestr(n + ".npy", buf.getvalue())


@pytest.mark.parametrize("key,value,frag", [("hypernym.indices", [1, 99], "points outside"),
                                            ("hypernym.indices", [1, -5], "points outside"),
                                            ("hypernym.indptr", [0, 1, 5, 2], "offsets"),
                                            ("lemmas.rows", [0, 1, 7], "points outside"),
                                            ("counts", [1], "rows")])
def test_out_of_range_graph_arrays(small_kg, tmp_path, baselines, key, value, frag):
    kg = _copy(small_kg, tmp_path, "kg")
    _csr_out_of_range(kg, key, value)
    for args in (["kg", "info", kg], ["kg", "link", "dog", "--kg", kg, "--sense-model", "none"]):
        code, _, err, _, _ = run(args, tmp_path, baseline="kg")
        one_line(code, err, "graph.npz", frag)


def test_pickled_graph_array_is_refused(small_kg, tmp_path, baselines):
    kg = _copy(small_kg, tmp_path, "kg")
    arrs = dict(np.load(kg / "graph.npz"))
    with zipfile.ZipFile(kg / "graph.npz", "w") as zf:
        for n, a in arrs.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a if n != "counts" else np.array([{"x": 1}] * 3, dtype=object))
            zf.writestr(n + ".npy", buf.getvalue())
    code, _, err, _, _ = run(["kg", "info", kg], tmp_path, baseline="kg")
    one_line(code, err, "graph.npz")


def _deep(n: int) -> object:
    obj: object = 1
    for _ in range(n):
        obj = {"a": obj}
    return obj


def test_deep_jsonl_row_and_webdataset_member_skip_one_item(sources, tmp_path):
    rows = [{"path": str(sources / "imgs" / f"p{i}.png"), "caption": f"c{i}"} for i in range(3)]
    lines = [json.dumps(r) for r in rows]
    lines.insert(1, '{"path": "imgs/p5.png", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}")  # RecursionError
    lines.insert(2, json.dumps({"path": str(sources / "imgs" / "p6.png"), "m": _deep(200)}))  # parses, too deep
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tf:
        for key, meta in (("s0", b'{"caption": "fine"}'), ("s1", b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")):
            for ext, data in (("png", encode(noise(200 + len(key) + int(key[1]), 10, 10), "PNG")), ("json", meta)):
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    code, out, err, _, _ = run(["build", tmp_path / "m.jsonl", shard, "-i", tmp_path / "idx", "--model", "fake:v1",
                                "--text-model", "fake:v1"], tmp_path)
    assert code == 0, err
    assert "Traceback" not in err and "internal error" not in err and "RecursionError" not in err, err
    skipped = [x for x in err.splitlines() if x.startswith("skipping")]
    assert any("m.jsonl:2" in x and "nested" in x for x in skipped), err
    assert any("m.jsonl:3" in x and "nested" in x for x in skipped), err
    assert any("shard.tar#s1" in x and "nested" in x for x in skipped), err
    code, out, err, _, _ = run(["info", tmp_path / "idx", "--format", "json"], tmp_path)
    assert code == 0 and json.loads(out)["counts"]["items"] == 4, (out, err)  # 3 rows + s0


def test_parquet_timestamp_ns_columns(sources, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table({"path": [str(sources / "imgs" / "p1.png"), str(sources / "imgs" / "p2.png")],
                  "taken": pa.array([1_700_000_000_123_456_789, 1_600_000_000_000_000_001], pa.timestamp("ns")),
                  "utc": pa.array([1_700_000_000_123_456_789, None], pa.timestamp("ns", tz="UTC")),
                  "exposure": pa.array([5, 7], pa.duration("ns")),
                  "exif": pa.array([{"at": 1_700_000_000_123_456_789}, {"at": None}],
                                   pa.struct([("at", pa.timestamp("ns"))])),
                  "shots": pa.array([[1_700_000_000_000_000_001], []], pa.list_(pa.timestamp("ns")))})
    pq.write_table(t, tmp_path / "m.parquet")
    code, _, err, _, _ = run(["build", tmp_path / "m.parquet", "-i", tmp_path / "idx", "--model", "fake:v1",
                              "--text-model", "fake:v1"], tmp_path)
    assert code == 0 and "Traceback" not in err and "internal error" not in err, err
    code, out, err, _, _ = run(["search", tmp_path / "idx", "x", "--expand", "none", "--format", "json"], tmp_path)
    assert code == 0, err
    metas = {h["path"].rsplit("/", 1)[-1]: h["metadata"]["meta"] for h in json.loads(out)["hits"]}
    assert metas["p1.png"]["taken"].startswith("2023-11-14") and metas["p1.png"]["taken"].endswith("123456789")
    assert metas["p1.png"]["exif"]["at"].endswith("123456789") and metas["p1.png"]["shots"][0].endswith("001")


def test_parquet_row_nested_too_deep_is_skipped(sources, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t, v = pa.int64(), 1
    for _ in range(60):
        t, v = pa.struct([("a", t)]), {"a": v}
    pq.write_table(pa.table({"path": [str(sources / "imgs" / "p1.png"), str(sources / "imgs" / "p2.png")],
                             "deep": pa.array([v, None], t)}), tmp_path / "m.parquet")
    code, _, err, _, _ = run(["build", tmp_path / "m.parquet", "-i", tmp_path / "idx", "--model", "fake:v1",
                              "--text-model", "fake:v1"], tmp_path)
    assert code == 0 and "nested more than" in err and "Traceback" not in err, err
    code, out, err, _, _ = run(["info", tmp_path / "idx", "--format", "json"], tmp_path)
    assert code == 0 and json.loads(out)["counts"]["items"] == 1, (out, err)
