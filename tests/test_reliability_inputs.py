"""Hostile queries and inputs, and safety: one clear line each, documented exit codes, nothing written or lost.

Exit codes (cli.py / retrieval/errors.py): 0 success, 1 a failure (KgclipError), 2 a usage error
(UsageError, QueryError; click's own usage errors).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from indexer import build_index, open_index, verify_index
from benchmarks.hostile import encode, noise
from benchmarks.reliability_kit import CLI, REPO, env_for, snapshot_store, compare

FAKE = dict(model="fake:v1", text_model="fake:v1", workers=0, quiet=True, log=lambda s: None)


def runner() -> CliRunner:
    return CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()


def one_line_error(res, code: int, usage: bool = False) -> str:
    """The error line; click's own usage errors (exit 2) put their usage hint above it."""
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    if usage and lines and lines[0].startswith("Usage:"):
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def dir_digest(d: Path) -> dict:
    """Every file's bytes under d, except LMDB's reader table and the writer lock (readers touch those)."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            if f in ("lock.mdb", "write.lock"):
                continue
            p = os.path.join(root, f)
            out[os.path.relpath(p, d)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """An index over every source kind (folder, JSONL, CSV, Parquet, file list), captions included."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("inputs")
    imgs = root / "imgs"
    imgs.mkdir()
    for i in range(12):
        (imgs / f"i{i:02d}.png").write_bytes(encode(noise(500 + i, 12, 12), "PNG"))
    (imgs / "evil\x1b[2J\x1b[31mname\nx.png").write_bytes(encode(noise(599, 12, 12), "PNG"))
    other = root / "other"
    other.mkdir()
    rows = []
    for i in range(8):
        (other / f"o{i}.png").write_bytes(encode(noise(600 + i, 12, 12), "PNG"))
        rows.append({"path": f"other/o{i}.png", "caption": f"other picture {i}", "n": i})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    with open(root / "m.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["path", "caption", "n"])
        w.writeheader()
        w.writerows(rows[2:4])
    pq.write_table(pa.Table.from_pylist(rows[4:6]), root / "m.parquet")
    (root / "list.txt").write_text("other/o6.png\nother/o7.png\n")
    sources = [imgs, root / "m.jsonl", root / "m.csv", root / "m.parquet", root / "list.txt"]
    idx = root / "idx"
    build_index(sources, idx, **FAKE)
    os.environ["KGCLIP_PLUGINS"] = "benchmarks.fakes"
    return root, idx


def search(idx, *args):
    return runner().invoke(main, ["search", str(idx), *args, "--expand", "none"], color=True)


# -- queries ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("query", ["x" * 900 + " red" * 25, "red\x00\x1b[31m\x07\r\x7f", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u202eRTL 🐱 e\u0301",
                                   "'; DROP TABLE items; --", "*?[", "-k"])
def test_hostile_queries_are_searched(corpus, query):
    root, idx = corpus
    res = runner().invoke(main, ["search", "--expand", "none", str(idx), "--", query], color=True)
    assert res.exit_code == 0, res.stderr
    assert "\x1b" not in res.stdout  # no terminal escapes from queries or file names reach the terminal
    assert len(res.stdout.strip().splitlines()) >= 5
    res = search(idx, query, "--format", "jsonl") if not query.startswith("-") else res
    if not query.startswith("-"):
        hits = [json.loads(x) for x in res.stdout.splitlines()]
        assert len(hits) == 10 and len({h["query"] for h in hits}) == 1 and hits[0]["query"].split() == query.split()


def test_overlong_query_is_one_clear_usage_error(corpus):
    root, idx = corpus
    line = one_line_error(search(idx, "x" * 100_000 + " red" * 200), 2)
    assert "query too long: 100800 characters, the limit is 1000" in line


@pytest.mark.parametrize("query", ["", "   ", "\t \n", "\u3000"])
def test_empty_queries_are_usage_errors(corpus, query):
    root, idx = corpus
    assert "empty query" in one_line_error(search(idx, query), 2)


@pytest.mark.parametrize("k,code", [("0", 2), ("-3", 2), ("abc", 2), ("1e3", 2), (str(10**12), 0), (str(2**70), 0)])
def test_k_values(corpus, k, code):
    root, idx = corpus
    res = search(idx, "red", "-k", k, "--format", "paths")
    if code == 0:
        assert res.exit_code == 0, res.stderr
        with open_index(idx) as ix:
            n = len(ix)
        assert 0 < len(res.stdout.strip().split("\n")) <= n + 1  # every item once (one name holds a newline)
    else:
        one_line_error(res, code, usage=True)


def test_stdin_batches_with_bad_bytes(corpus):
    root, idx = corpus
    data = b"red\n\xff\xfe\x80 latin1 caf\xe9\n\x00\x00\n\n   \nblue\n" + b"w" * 200_000 + b"\n"
    p = subprocess.run(CLI + ["search", str(idx), "--expand", "none", "-k", "2", "--format", "jsonl"], input=data,
                       env=env_for(), cwd=str(REPO), capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    queries = [json.loads(x)["query"] for x in p.stdout.decode("utf-8").splitlines()]  # valid UTF-8 out
    assert len(set(queries)) == 4 and len(queries) == 8  # blank lines skipped; bad bytes do not stop the batch
    # the 200k-character line is skipped with one line (MAX_QUERY_CHARS), the batch goes on
    err = p.stderr.decode().splitlines()
    assert len(err) == 1 and err[0].startswith("skipping stdin line 7: query too long: ") and "limit is 1000" in err[0]
    p = subprocess.run(CLI + ["search", str(idx), "--expand", "none"], input=b"\n  \n", env=env_for(),
                       cwd=str(REPO), capture_output=True, timeout=120)
    assert p.returncode == 2 and p.stderr.decode().count("\n") == 1 and b"Traceback" not in p.stderr


# -- malformed index.json: one line, nothing written, nothing lost ----------------------------------------
def _manifest_variants(good: dict):
    def edit(**kw):
        m = json.loads(json.dumps(good))
        for k, v in kw.items():
            if "." in k:
                a, b = k.split(".")
                m[a][b] = v
            else:
                m[k] = v
        return json.dumps(m).encode()

    return {
        "empty": b"", "not json": b"{ not json", "truncated": json.dumps(good).encode()[:40], "a list": b"[]",
        "binary": b"\xff\xfe\x00\x01garbage", "no version": b'{"format": "kgclip-index"}',
        "version string": edit(format_version="1"), "newer version": edit(format_version=99),
        "no model": json.dumps({k: v for k, v in good.items() if k != "model"}).encode(),
        "model string": edit(model="fake:v1"), "dim string": edit(**{"model.dim": "abc"}),
        "dim negative": edit(**{"model.dim": -3}), "text model string": edit(text_model="x"),
        "faiss list": edit(faiss=[1, 2]), "huge number": edit(**{"model.dim": 10**400}) if False else
        b'{"format": "kgclip-index", "format_version": 1e999}',
    }


def test_malformed_index_json(corpus):
    root, idx = corpus
    mpath = idx / "index.json"
    good_bytes = mpath.read_bytes()
    before = snapshot_store(idx)
    variants = _manifest_variants(json.loads(good_bytes))
    try:
        for name, data in variants.items():
            mpath.write_bytes(data)
            digest = dir_digest(idx)
            for args in (["search", str(idx), "red", "--expand", "none"], ["info", str(idx)], ["verify", str(idx)],
                         ["update", str(idx), "--workers", "0"]):
                line = one_line_error(runner().invoke(main, args), 1)
                assert "index.json" in line, (name, args, line)
            assert dir_digest(idx) == digest, f"{name}: a failing command wrote into the index"
    finally:
        mpath.write_bytes(good_bytes)
    assert compare(snapshot_store(idx), before) == []
    assert verify_index(idx)["ok"] and search(idx, "red").exit_code == 0


def test_damaged_store_is_one_line_not_a_crash(corpus, tmp_path):
    import shutil

    root, idx = corpus
    for name, damage in (("truncated", lambda p: os.truncate(p, os.path.getsize(p) // 2)),
                         ("zero bytes", lambda p: os.truncate(p, 0)),
                         ("random bytes", lambda p: Path(p).write_bytes(os.urandom(1 << 16)))):
        d = tmp_path / name
        shutil.copytree(idx, d)
        damage(d / "store.lmdb" / "data.mdb")
        if name != "truncated":
            assert "store.lmdb" in one_line_error(search(d, "red"), 1)
            continue
        # a subprocess: if the guard regressed, SIGBUS would kill pytest itself
        p = subprocess.run(CLI + ["search", str(d), "red", "--expand", "none"], env=env_for(), cwd=str(REPO),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and p.stderr.count("\n") == 1 and "store.lmdb" in p.stderr, (name, p.stderr)


# -- malformed sources on update: the index keeps everything -----------------------------------------------
def _corrupt_sources(root: Path):
    return {
        "m.jsonl": [b'{"path": "other/o0.png"}\n{"path": \n', b'{"path": "other/o0.png"}\n[1, 2]\n',
                    b'\xff\xfe{"path": 1}\n'],
        "m.csv": [b"path,caption\nother/o2.png," + b"x" * 200_000 + b"\n", b"path,caption\n\xff\xfe,x\n", b"",
                  b"file_name,caption\nother/o2.png,x\n"],
        "m.parquet": [b"PAR1 this is not parquet", b""],
        "list.txt": [b"other/o6.png\n\xff\xfe\n"],
    }


def test_malformed_sources_fail_update_and_lose_nothing(corpus):
    root, idx = corpus
    before = snapshot_store(idx)
    for name, variants in _corrupt_sources(root).items():
        p = root / name
        good = p.read_bytes()
        try:
            for data in variants:
                p.write_bytes(data)
                line = one_line_error(runner().invoke(main, ["-q", "update", str(idx), "--workers", "0"]), 1)
                assert name in line, (name, data[:30], line)
                assert compare(snapshot_store(idx), before) == [], (name, data[:30])
        finally:
            p.write_bytes(good)
    r = verify_index(idx)
    assert r["ok"], r["problems"]
    res = runner().invoke(main, ["-q", "update", str(idx), "--workers", "0", "--format", "json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["added"] == 0


# -- knowledge graphs ---------------------------------------------------------------------------------
def test_malformed_kg_files(corpus, tmp_path):
    root, idx = corpus
    bad = {"binary.tsv": os.urandom(2048), "two columns.tsv": b"dog\tanimal\ncat\tanimal\n",
           "broken.nt": b"<a> <b> .\n<a> <b> <c\n", "empty.tsv": b""}
    for name, data in bad.items():
        p = tmp_path / name
        p.write_bytes(data)
        out = tmp_path / f"kg-{name}"
        line = one_line_error(runner().invoke(main, ["kg", "import", str(p), "-o", str(out)]), 1)
        assert name in line, line
        assert not out.exists() or not any(out.iterdir()), f"{name}: a failed import left files behind"
    good = tmp_path / "good.tsv"
    good.write_text("puppy\tis_a\tdog\nkitten\tis_a\tcat\n")
    kg = tmp_path / "kg"
    assert runner().invoke(main, ["kg", "import", str(good), "-o", str(kg)]).exit_code == 0
    damaged = {"kg.json": b"{ nope", "graph.npz": b"PK\x03\x04 truncated zip"}
    for fname, data in damaged.items():
        d = tmp_path / f"damaged-{fname}"
        import shutil

        shutil.copytree(kg, d)
        (d / fname).write_bytes(data)
        line = one_line_error(runner().invoke(main, ["kg", "info", str(d)]), 1)
        assert str(d) in line, line
    line = one_line_error(runner().invoke(main, ["kg", "info", str(tmp_path / "nothing")]), 1)
    assert "nothing" in line


# -- safety -------------------------------------------------------------------------------------------
UNSAFE = [
    (re.compile(r"^\s*import (c?pickle|dill|shelve|marshal|joblib)\b|^\s*from (c?pickle|dill|shelve|joblib) import",
                re.M), "imports a pickle-based loader"),
    (re.compile(r"\bpickle\.loads?\(|\bUnpickler\("), "unpickles"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load with allow_pickle=True"),
    (re.compile(r"\byaml\.load\((?![^)]*SafeLoader)"), "yaml.load without SafeLoader"),
    (re.compile(r"(?<![.\w])(eval|exec)\("), "eval/exec"),
]


def test_nothing_is_unpickled_grep():
    """No code path can unpickle data: torch.load only with weights_only=True, no pickle loaders at all."""
    bad = []
    files = [REPO / "cli.py"] + [p for d in ("retrieval", "indexer", "benchmarks") for p in (REPO / d).rglob("*.py")]
    for p in files:
        text = p.read_text(encoding="utf-8")
        for pat, what in UNSAFE:
            for m in pat.finditer(text):
                bad.append(f"{p.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}: {what}")
        for m in re.finditer(r"\btorch\.load\(", text):
            depth, end = 0, m.end() - 1
            for end in range(m.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            call = text[m.start(): end + 1]
            if "weights_only=True" not in call:
                bad.append(f"{p.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}: torch.load without "
                           "weights_only=True")
    assert bad == []


def test_reading_an_index_and_a_user_kg_never_unpickles(corpus, tmp_path, monkeypatch):
    import pickle

    from retrieval.kg import load_graph

    root, idx = corpus
    good = tmp_path / "t.tsv"
    good.write_text("puppy\tis_a\tdog\n")
    assert runner().invoke(main, ["kg", "import", str(good), "-o", str(tmp_path / "kg")]).exit_code == 0

    def refuse(*a, **k):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    os.unlink(idx / "image.faiss")  # the derive path too
    with open_index(idx) as ix:
        s, ids = ix.search(np.ones((1, ix.dim), np.float32) / np.sqrt(ix.dim), k=3)
        assert all(ix.get(ids[0])) and ix.rebuilt == ["image"]
    assert verify_index(idx)["ok"]
    g = load_graph(tmp_path / "kg")
    assert len(g.search_names("puppy") if hasattr(g, "search_names") else [1]) >= 1


def test_manifest_paths_cannot_escape_root(tmp_path):
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "in.png").write_bytes(encode(noise(1, 10, 10), "PNG"))
    outside = tmp_path / "secret.png"
    outside.write_bytes(encode(noise(2, 10, 10), "PNG"))
    os.symlink(outside, root / "imgs" / "sneaky.png")
    rows = ["imgs/in.png", "../secret.png", str(outside), "imgs/../../secret.png", "imgs/sneaky.png",
            "~/../../" + str(outside).lstrip("/")]
    (root / "m.jsonl").write_text("".join(json.dumps({"path": r}) + "\n" for r in rows))
    (root / "l.txt").write_text("\n".join(rows) + "\n")
    for src in ("m.jsonl", "l.txt"):
        msgs = []
        r = build_index([root / src], tmp_path / f"idx-{src}", model="fake:v1", text_model=None, workers=0,
                        root=str(root), quiet=True, log=msgs.append)
        with open_index(tmp_path / f"idx-{src}") as ix:
            paths = [it["path"] for _, it in ix.iter_items()]
        assert paths == [str(root / "imgs" / "in.png")] and r.items == 1
        # the four spellings of the outside file are one path; the symlink resolves outside too
        escapes = {m.split(": ", 1)[0][len("skipping "):] for m in msgs if "escapes the allowed root" in m}
        assert escapes == {str(outside), str(root / "imgs" / "sneaky.png")} and r.failed == 2, msgs


def test_lmdb_map_grows_under_a_reader_in_another_process(tmp_path):
    from benchmarks.reliability_kit import make_sources

    sources = make_sources(tmp_path / "src", n_folder=4, n_captioned=0)
    idx = tmp_path / "idx"
    build_index(sources, idx, map_size=1 << 16, **dict(FAKE, text_model=None))
    code = ("import sys; from indexer.store import Store; from indexer import open_index\n"
            "s = Store(sys.argv[1], readonly=True); print(s.count('items'), s.env.info()['map_size'], flush=True)\n"
            "sys.stdin.readline(); print(s.count('items'), s.env.info()['map_size'], flush=True)\n"
            "ix = open_index(sys.argv[1]); print(len(ix), flush=True)\n")
    reader = subprocess.Popen([sys.executable, "-c", code, str(idx)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env_for(), cwd=str(REPO))
    n0, map0 = map(int, reader.stdout.readline().split())
    for i in range(120):  # bigger images' vectors and records: the map must grow several times
        (tmp_path / "src" / "imgs" / f"more{i:03d}.png").write_bytes(encode(noise(900 + i, 12, 12), "PNG"))
    build_index(sources, idx, map_size=1 << 16, **dict(FAKE, text_model=None))
    reader.stdin.write("\n")
    reader.stdin.flush()
    n1, map1 = map(int, reader.stdout.readline().split())
    n2 = int(reader.stdout.readline())
    assert reader.wait(timeout=60) == 0
    assert (n1, n2) == (n0 + 120, n0 + 120)
    assert os.path.getsize(idx / "store.lmdb" / "data.mdb") > 1 << 16  # the writer grew its map past 64 KiB
    assert verify_index(idx)["ok"]
