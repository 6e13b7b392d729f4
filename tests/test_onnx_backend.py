"""The ONNX Runtime backend of the CPU towers: same vectors as torch, safe fallbacks, no torch per query."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from retrieval.encoders import onnx
from retrieval.encoders.base import load_image
from retrieval.encoders.lite import normalise_pixels
from retrieval.errors import ModelError

pytest.importorskip("onnxruntime")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["a cat", "a cup of coffee", "two dogs run through the snow near a red fence"]


def test_lite_onnx_equals_torch(lite_encoder, photos_dir, monkeypatch):
    from retrieval.encoders import get_encoder
    from retrieval.encoders.minibert import MiniBert

    paths = sorted(photos_dir.glob("*.jpg"))[:4]
    assert isinstance(lite_encoder.cnn, onnx.OrtModel)
    assert isinstance(lite_encoder.text.model, MiniBert) and lite_encoder.text.model.ort is not None
    ort_img = lite_encoder.encode_images(paths, with_concepts=True)
    ort_txt = lite_encoder.encode_texts(TEXTS)

    monkeypatch.setenv("KGCLIP_BACKEND", "torch")
    torch_enc = get_encoder("lite", device="cpu", cache=False).load()
    assert not isinstance(torch_enc.cnn, onnx.OrtModel) and torch_enc.text.model.ort is None
    ref_img = torch_enc.encode_images(paths, with_concepts=True)
    np.testing.assert_allclose(ort_img.vectors, ref_img.vectors, atol=1e-5)
    np.testing.assert_allclose(ort_txt, torch_enc.encode_texts(TEXTS), atol=1e-5)
    assert [[c for c, _ in row] for row in ort_img.concepts] == [[c for c, _ in row] for row in ref_img.concepts]
    # torch takes the transform's pixel bytes too: normalised in numpy, the same bits as float input
    u8 = np.stack([torch_enc.image_transform()(load_image(p)) for p in paths])
    assert u8.dtype == np.uint8
    np.testing.assert_array_equal(torch_enc.logits(u8), torch_enc.logits(normalise_pixels(u8)))


@pytest.mark.parametrize("spec", ["lite", "lite:tiles"])
def test_lite_bytes_graph_gives_the_float_path_vectors_bit_for_bit(lite_encoder, photos_dir, spec):
    """The exported graph takes uint8 and normalises inside (Cast, Sub 127, Mul 1/128): on real
    photos its logits, vectors and concepts are exactly those of the float input the transform
    used to return, which still works (old callers) and runs the float graph, cached apart."""
    from retrieval.encoders import get_encoder

    enc = lite_encoder if spec == "lite" else get_encoder(spec, device="cpu", cache=False).load()
    tf = enc.image_transform()
    u8 = np.stack([tf(load_image(p)) for p in sorted(photos_dir.glob("*.jpg"))])
    assert u8.dtype == np.uint8 and u8.shape == (9, 3 * len(enc.config.views), 224, 224)
    f32 = normalise_pixels(u8)
    a, b = enc.encode_image_arrays(u8, with_concepts=True), enc.encode_image_arrays(f32, with_concepts=True)
    assert a.vectors.tobytes() == b.vectors.tobytes() and a.concepts == b.concepts
    flat = u8.reshape(-1, 3, 224, 224)
    assert enc.logits(flat).tobytes() == enc.logits(normalise_pixels(flat)).tobytes()
    assert enc.cnn.session.get_inputs()[0].type == "tensor(uint8)"
    assert enc.cnn_float.session.get_inputs()[0].type == "tensor(float)"
    assert enc.cnn.path != enc.cnn_float.path and enc.cnn.path.name.startswith("lite0-u8-")
    head = [n.op_type for n in _first_nodes(enc.cnn.path, 8) if n.op_type != "Constant"]
    assert head[:3] == ["Cast", "Sub", "Mul"]  # (stored pre-optimised: the convolutions after are fused)


def _first_nodes(path, n):
    import onnx as onnx_pkg

    return onnx_pkg.load(str(path), load_external_data=False).graph.node[:n]


def _tiny_linear(scale: float = 1.0):
    import torch

    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)

    def export(path):
        onnx.export_module(lin, (torch.zeros(2, 4),), path, ["x"], {"x": {0: "n"}})

    def check(model):
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        with torch.no_grad():
            ref = lin(torch.from_numpy(x)).numpy() * scale
        return float(np.abs(model.run(x=x) - ref).max())

    return export, check


def test_export_is_cached_and_a_damaged_cache_is_replaced():
    export, check = _tiny_linear()
    m = onnx.load_or_export("tiny", "sig-a", export, check, tolerance=1e-5)
    assert m is not None and m.path == onnx.model_path("tiny", "sig-a") and m.path.is_file()
    calls = []
    assert onnx.load_or_export("tiny", "sig-a", lambda p: calls.append(p), check, 1e-5) is not None
    assert calls == []  # the second process reads the cache
    m.path.write_bytes(b"not an onnx graph")
    again = onnx.load_or_export("tiny", "sig-a", export, check, tolerance=1e-5)
    assert again is not None and check(again) < 1e-5
    assert not [p for p in again.path.parent.iterdir() if ".tmp" in p.name]


def test_the_cache_keeps_the_recently_used_graphs_under_its_cap(monkeypatch, tmp_path):
    """Each new set of weights exports a graph; past KGCLIP_ONNX_CACHE_MB the least recently
    used ones go (a graph loaded again counts as used), and dead exports' temp files are swept."""
    import os

    monkeypatch.setenv("KGCLIP_CACHE", str(tmp_path))  # the session's cache holds the lite graphs
    export, check = _tiny_linear()
    paths = {}
    for i, sig in enumerate(("s0", "s1", "s2")):
        paths[sig] = onnx.load_or_export("tiny", sig, export, check, 1e-5).path
        os.utime(paths[sig], (1000 + i, 1000 + i))  # exported in this order, long ago
    assert onnx.load_or_export("tiny", "s0", export, check, 1e-5) is not None  # s0 used again now
    dead = paths["s0"].with_name("tiny-x.tmp999.onnx")
    dead.write_bytes(b"half")
    os.utime(dead, (1000, 1000))
    size = paths["s0"].stat().st_size
    monkeypatch.setenv("KGCLIP_ONNX_CACHE_MB", "0")  # 0: no cap
    assert onnx.prune_cache(keep=paths["s0"]) == [dead]
    monkeypatch.setattr(onnx, "cache_limit_bytes", lambda: 2 * size + size // 2)  # room for two
    new = onnx.load_or_export("tiny", "s3", export, check, 1e-5).path
    left = {p.name for p in new.parent.iterdir() if p.name.startswith("tiny-")}
    assert left == {new.name, paths["s0"].name}  # s1, s2: least recently used
    assert onnx.load_or_export("tiny", "s1", export, check, 1e-5) is not None  # pruned: exported again


def test_a_mismatching_export_falls_back_and_is_not_cached(monkeypatch):
    export, check = _tiny_linear(scale=2.0)  # "torch" disagrees with the graph
    assert onnx.load_or_export("tiny", "sig-b", export, check, tolerance=1e-5) is None
    assert not onnx.model_path("tiny", "sig-b").exists()
    assert not [p for p in onnx.model_path("tiny", "sig-b").parent.iterdir() if ".tmp" in p.name]
    monkeypatch.setenv("KGCLIP_BACKEND", "onnx")  # the user insisted: an error, not a silent fallback
    with pytest.raises(ModelError, match="cannot run tiny with ONNX Runtime: ONNX output differs"):
        onnx.load_or_export("tiny", "sig-b", export, check, tolerance=1e-5)


def test_large_batches_run_as_parallel_single_threaded_streams(monkeypatch):
    """A large batch is cut across single-threaded runs; the rows come back in order and equal to
    one whole-batch run, whatever the number of streams and however unevenly the rows divide."""
    import torch

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 5))
    onnx.load_or_export("tiny-mlp", "sig-s", lambda path: onnx.export_module(
        net, (torch.zeros(2, 6),), path, ["x"], {"x": {0: "n"}}), lambda m: 0.0, tolerance=1.0)
    x = np.random.default_rng(0).standard_normal((23, 6)).astype(np.float32)
    monkeypatch.setenv("KGCLIP_ORT_STREAMS", "1")
    whole = onnx.OrtModel(onnx.model_path("tiny-mlp", "sig-s"))
    ref = whole.run(x=x)
    assert whole._single is None  # one stream: never split
    for n in (2, 3):
        monkeypatch.setenv("KGCLIP_ORT_STREAMS", str(n))
        m = onnx.OrtModel(onnx.model_path("tiny-mlp", "sig-s"))
        np.testing.assert_array_equal(m.run(x=x[:n * onnx.STREAM_MIN_ROWS - 1]), ref[:n * onnx.STREAM_MIN_ROWS - 1])
        assert m._single is None  # too few rows to split: the multi-threaded session ran
        np.testing.assert_array_equal(m.run(x=x), ref)
        assert m._single is not None
        m._single = _CountingSession(m._single)
        for k in (1, 2, 5):  # slices per stream, fewer where a slice would get under STREAM_MIN_ROWS rows
            monkeypatch.setenv("KGCLIP_ORT_CHUNKS", str(k))
            m._single.sizes = []
            np.testing.assert_array_equal(m.run(x=x), ref)
            assert sum(m._single.sizes) == 23 and min(m._single.sizes) >= onnx.STREAM_MIN_ROWS
            assert len(m._single.sizes) == n * min(k, 23 // (n * onnx.STREAM_MIN_ROWS))


class _CountingSession:
    """Records the rows of each run of the wrapped session."""

    def __init__(self, session):
        self.session, self.sizes = session, []

    def run(self, out, feed):
        self.sizes.append(len(feed["x"]))
        return self.session.run(out, feed)


def test_backend_setting(monkeypatch):
    monkeypatch.setenv("KGCLIP_BACKEND", "torch")
    assert onnx.wanted("cpu") is False
    monkeypatch.setenv("KGCLIP_BACKEND", "auto")
    assert onnx.wanted("cpu") is True and onnx.wanted("cuda") is False
    monkeypatch.setenv("KGCLIP_BACKEND", "tensorrt")
    with pytest.raises(ModelError, match="KGCLIP_BACKEND='tensorrt' is not one of auto, onnx, torch"):
        onnx.wanted("cpu")


def test_cold_lite_search_does_not_import_torch(lite_encoder, photos_dir, tmp_path):
    """Once the ONNX graphs are cached, a lite text query runs without torch (its import is ~3 s)."""
    from indexer import build_index

    idx = str(tmp_path / "idx")
    build_index([str(photos_dir)], idx, model="lite", text_model=None, device="cpu", progress=False, quiet=True)
    code = (
        "import sys, cli\n"
        "try:\n    cli.main(['search', sys.argv[1], 'a cat', '-k', '1', '--format', 'paths'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, idx], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0].endswith("chelsea.jpg"), r.stdout
    assert lines[-1] == "False", "torch was imported by a cold lite search"


def test_exports_are_stored_pre_optimised_with_the_same_outputs():
    """The cached graph is ONNX Runtime's optimised form (folded constants, fused ops): loading it
    skips those passes, and it computes exactly what the plain export does."""
    import onnxruntime as ort
    import torch

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x * 2.0 - 1.0)))

    net = Net().eval()

    def export(path):
        onnx.export_module(net, (torch.zeros(2, 4),), path, ["x"], {"x": {0: "n"}})

    plain = onnx.model_path("tiny-plain", "sig").with_suffix(".plain.onnx")
    plain.parent.mkdir(parents=True, exist_ok=True)
    export(str(plain))
    m = onnx.load_or_export("tiny-preopt", "sig", export, lambda model: 0.0, tolerance=1e-6)
    stored = [n.op_type for n in _first_nodes(m.path, 50)]
    assert "Constant" in [n.op_type for n in _first_nodes(plain, 50)] and "Constant" not in stored
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    ref = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert m.run(x=x).tobytes() == ref.tobytes()
    assert not [p for p in m.path.parent.iterdir() if ".opt." in p.name or ".tmp" in p.name]
    plain.unlink()
