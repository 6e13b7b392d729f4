"""`kgclip search` end to end: CliRunner over a real (fake:v1) index, and as a subprocess.

The index is built by the real indexer from a CSV manifest of solid-colour
images, so every output format, stdin batches, filters, hybrid caption fusion,
image queries and the error paths run through the same code users run.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from tests.conftest import REPO

EXPAND = ["--expand", "none"]  # the fake encoder has no KG entity embeddings; KG paths are tested elsewhere


def _runner():
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 always keeps stderr apart
        return CliRunner()


def run(*args, input=None):
    return _runner().invoke(cli.main, [str(a) for a in args], input=input, catch_exceptions=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A fake:v1 index with captions and a metadata column; returns (index dir, images dir)."""
    from PIL import Image

    from indexer import build_index
    from benchmarks.fakes import COLOURS

    root = tmp_path_factory.mktemp("cli-search")
    imgs = root / "imgs"
    imgs.mkdir()
    rows = []
    for n, (name, rgb) in enumerate(sorted(COLOURS.items())):
        size = (40 + 20 * n, 30)
        Image.new("RGB", size, rgb).save(imgs / f"{name}.png")
        rows.append({"path": f"imgs/{name}.png", "caption": f"a plain {name} picture",
                     "camera": "Canon" if n % 2 else "Nikon"})
    rows[2]["caption"] = "grass field"  # green.png (sorted: black blue green ...): a caption-only word
    with open(root / "photos.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "caption", "camera"])
        w.writeheader()
        w.writerows(rows)
    index = root / "idx"
    build_index([str(root / "photos.csv")], str(index), model="fake:v1", text_model="fake:v1", progress=False)
    return index, imgs


def test_table_output(built):
    index, _ = built
    r = run("search", index, "red", "-k", "3", *EXPAND, "--hybrid", "none")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "1" and "red.png" in lines[0]
    assert "a plain red picture" in lines[0]


def test_json_jsonl_paths(built):
    index, _ = built
    r = run("search", index, "blue", "-k", "2", *EXPAND, "--format", "json")
    obj = json.loads(r.stdout)
    assert obj["query"] == "blue" and obj["hits"][0]["path"].endswith("blue.png") and len(obj["hits"]) == 2
    assert obj["hits"][0]["metadata"]["meta"]["camera"] in ("Canon", "Nikon")
    r = run("search", index, "blue", "-k", "2", *EXPAND, "--format", "jsonl")
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["rank"] for x in recs] == [1, 2] and {"query", "rank", "score", "path"} <= set(recs[0])
    r = run("search", index, "blue", "-k", "2", *EXPAND, "--format", "paths")
    paths = r.stdout.splitlines()
    assert len(paths) == 2 and paths[0].endswith("blue.png") and os.path.isabs(paths[0])


def test_stdin_batch(built):
    index, _ = built
    r = run("search", index, "-k", "1", *EXPAND, "--hybrid", "none", "--format", "jsonl",
            input="red\n\n  green  \nyellow\n")
    assert r.exit_code == 0, r.stderr
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["query"] for x in recs] == ["red", "green", "yellow"]
    assert [Path(x["path"]).stem for x in recs] == ["red", "green", "yellow"]
    r = run("search", index, "-k", "1", *EXPAND, "--format", "json", input="red\nblue\n")
    assert [o["query"] for o in json.loads(r.stdout)] == ["red", "blue"]
    r = run("search", index, "-k", "1", *EXPAND, input="red\nblue\n")
    assert "query: red" in r.stdout and "query: blue" in r.stdout


def test_index_from_env(built, monkeypatch):
    index, _ = built
    monkeypatch.setenv("KGCLIP_INDEX", str(index))
    r = run("search", "purple", "-k", "1", *EXPAND, "--format", "paths")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip().endswith("purple.png")


def test_filters_and_min_score(built):
    index, _ = built
    r = run("search", index, "red", "-k", "10", *EXPAND, "--filter", "meta.camera=Canon", "--format", "jsonl")
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(recs) == 4 and all(x["metadata"]["meta"]["camera"] == "Canon" for x in recs)
    r = run("search", index, "red", "-k", "10", *EXPAND, "--filter", "width>=140", "--filter", "path~*e*",
            "--format", "jsonl")
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert recs and all(x["metadata"]["width"] >= 140 and "e" in x["path"] for x in recs)
    r = run("search", index, "red", "-k", "10", *EXPAND, "--hybrid", "none", "--min-score", "0.5",
            "--format", "paths")
    assert [Path(p).stem for p in r.stdout.splitlines()] == ["red"]


def test_hybrid_modes(built):
    index, _ = built
    out = {}
    for mode in ("none", "sum", "rrf"):
        cw = "1.0" if mode == "rrf" else "0.9"  # rrf's 1/(60+rank) is flat: only a strong share decides at k=1
        r = run("search", index, "grass", "-k", "1", *EXPAND, "--hybrid", mode, "--caption-weight", cw,
                "--format", "jsonl", "--explain")
        assert r.exit_code == 0, r.stderr
        out[mode] = json.loads(r.stdout)
    assert Path(out["sum"]["path"]).stem == "green" and Path(out["rrf"]["path"]).stem == "green"
    assert any("caption: rank 1" in e for e in out["rrf"]["explanation"])


def test_image_query(built):
    index, imgs = built
    r = run("search", index, "--image", imgs / "orange.png", "-k", "1", *EXPAND, "--format", "paths")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip().endswith("orange.png")
    r = run("search", index, "red", "--image", imgs / "orange.png", "--image-weight", "0.9", "-k", "1",
            *EXPAND, "--format", "paths")
    assert r.stdout.strip().endswith("orange.png")


def test_image_to_captions(built):
    index, imgs = built
    r = run("search", index, "--image", imgs / "orange.png", "--captions", "-k", "2", "--format", "jsonl")
    assert r.exit_code == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["rank"] for x in recs] == [1, 2] and recs[0]["score"] >= recs[1]["score"]
    assert recs[0]["caption"] == "a plain orange picture" and recs[0]["path"].endswith("orange.png")
    assert recs[0]["query"] == "orange.png"
    r = run("search", index, "--image", imgs / "orange.png", "--captions", "-k", "1")
    assert r.exit_code == 0 and "a plain orange picture" in r.stdout and "orange.png" in r.stdout
    r = run("search", index, "--image", imgs / "orange.png", "--captions", "-k", "1", "--format", "paths")
    assert r.stdout.strip() == "a plain orange picture"
    _one_line_error(run("search", index, "red", "--captions"), 2, "--captions searches captions by image")


def test_explain_table(built):
    index, _ = built
    r = run("search", index, "red", "-k", "2", *EXPAND, "--explain")
    assert "query: red" in r.stdout and "expansion: none" in r.stdout and "vector: cos" in r.stdout


# -- error paths: one line, documented exit code, no traceback ----------------------------------
def _one_line_error(r, code, text):
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("Error: ") and text in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("q", ["", "   "])
def test_empty_query(built, q):
    _one_line_error(run("search", built[0], q), 2, "empty query")


@pytest.mark.parametrize("k", ["0", "-2"])
def test_bad_k(built, k):
    _one_line_error(run("search", built[0], "red", "-k", k), 2, "positive integer")


def test_missing_index(tmp_path):
    _one_line_error(run("search", tmp_path / "nope", "red"), 1, "no such index")


def test_corrupt_manifest(built, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(built[0], bad)
    (bad / "index.json").write_text("{not json")
    r = run("search", bad, "red", *EXPAND)
    _one_line_error(r, 1, "index.json")


def test_wrong_model(built):
    _one_line_error(run("search", built[0], "red", "--model", "lite", *EXPAND), 1, "built with model 'fake:v1'")


def test_unreadable_and_missing_image(built, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    _one_line_error(run("search", built[0], "--image", bad, *EXPAND), 1, "cannot read image")
    _one_line_error(run("search", built[0], "--image", tmp_path / "none.jpg", *EXPAND), 2, "no such image file")


def test_bad_filter_and_no_queries(built):
    _one_line_error(run("search", built[0], "red", "--filter", "colour=red"), 2, "unknown field 'colour'")
    _one_line_error(run("search", built[0], *EXPAND, input="\n  \n"), 2, "no queries on stdin")
    _one_line_error(run("search", built[0], "red", "--hybrid", "rrf", "--image", "x.png"), 2, "no such image")


def test_no_index(monkeypatch):
    monkeypatch.delenv("KGCLIP_INDEX", raising=False)
    _one_line_error(run("search"), 2, "no INDEX given")


# -- help never imports torch -------------------------------------------------------------------
def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "import cli\n"
        "names = sorted(cli.main.commands)\n"
        "bad = []\n"
        "for args in [['--help']] + [[n, '--help'] for n in names]:\n"
        "    r = CliRunner().invoke(cli.main, args)\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        "    if 'torch' in sys.modules: bad.append(args)\n"
        "print(len(names), bad)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    n, bad = out.stdout.strip().split(" ", 1)
    assert int(n) >= 2 and bad == "[]", out.stdout


# -- as a subprocess: build -> search -> update -> search -> verify ------------------------------
@pytest.fixture
def kgclip_env(tmp_path):
    env = dict(os.environ, KGCLIP_PLUGINS="benchmarks.fakes", PYTHONPATH=str(REPO), KGCLIP_CACHE=str(tmp_path / "cache"))
    env.pop("KGCLIP_INDEX", None)

    def kg(*args, input=None):
        return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=tmp_path, env=env, input=input,
                              capture_output=True, text=True, timeout=300)

    return kg


def test_subprocess_end_to_end(tmp_path, kgclip_env, colour_images):
    from PIL import Image

    kg = kgclip_env
    idx = tmp_path / "idx"
    r = kg("-q", "build", colour_images, "-i", idx, "--model", "fake:v1", "--no-captions")
    assert r.returncode == 0, r.stderr
    r = kg("search", idx, "red", "-k", "1", *EXPAND, "--format", "paths")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("red.png")
    # a new image arrives; update indexes it and search finds it
    Image.new("RGB", (30, 30), (250, 140, 20)).save(colour_images / "new-orange.png")
    (colour_images / "red.png").unlink()
    r = kg("-q", "update", idx, "--prune")
    assert r.returncode == 0, r.stderr
    r = kg("search", idx, "-k", "2", *EXPAND, "--format", "jsonl", input="orange\nred\n")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert {Path(x["path"]).name for x in recs if x["query"] == "orange"} == {"orange.png", "new-orange.png"}
    assert all(not x["path"].endswith("/red.png") for x in recs)
    r = kg("verify", idx)
    assert r.returncode == 0, r.stdout + r.stderr
    # errors from a real process: one line, exit codes, no traceback
    r = kg("search", tmp_path / "missing", "red")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = kg("search", idx, "  ")
    assert r.returncode == 2 and "empty query" in r.stderr
    r = kg("build", tmp_path / "no-such-folder", "-i", tmp_path / "i2", "--model", "fake:v1", "--no-captions")
    assert r.returncode in (1, 2) and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    # an empty folder: the build may refuse it or make an empty index; searching that must be clean too
    (tmp_path / "empty").mkdir()
    r = kg("build", tmp_path / "empty", "-i", tmp_path / "i3", "--model", "fake:v1", "--no-captions")
    assert "Traceback" not in r.stderr
    if r.returncode == 0:
        r = kg("search", tmp_path / "i3", "red", *EXPAND, "--format", "jsonl")
        assert r.returncode == 0 and r.stdout == "", r.stderr
    else:
        assert r.returncode in (1, 2) and r.stderr.startswith("Error: ")
