"""Build-side speed and memory: pipeline throughput next to the raw encode rate, and peak RSS vs item count.

    python -m benchmarks.build                                   # full run, writes benchmarks/results/build.json
    python -m benchmarks.build --n-images 100 --vit-images 48 --rss-n 500,2000   # quick smoke run

What it measures (side by side in one run, so the ratios hold on a busy machine):

1. Throughput on ``../shared/datasets/flickr8k-1k`` for ``lite`` and a random-init
   open_clip ``ViT-B-32``: the raw encode rate (model forward only, on arrays
   decoded beforehand, same batch size) and the end-to-end ``build_index`` rate
   (scan + decode in worker processes + encode + LMDB writes + FAISS), with the
   model already loaded. Target: build rate >= 80% of the raw encode rate, i.e.
   decoding and writing are hidden behind encoding. Each row also says where the
   CPU went (``cpu_ms_per_image``: raw encode, serial decode, the build's main
   process and decode workers; ``cores_busy``) and ``ratio_bound``, the most any
   overlap of decoding and encoding could reach on this machine.
2. Peak memory of a build over N synthetic images (distinct noise PNGs) for each
   N in ``--rss-n``: a child process builds with the ``fake:v1`` encoder (so the
   pipeline, not a model, is measured); its RSS and that of its whole process
   tree (decode workers included) are sampled every 50 ms, plus the main process's own
   (anonymous, rss - shared) memory: RSS also counts the LMDB file mapped into memory,
   which grows with the index but is page cache the kernel reclaims. Bounded = the
   anonymous part grows only by the FAISS index itself (above 20k items an HNSW graph,
   ~0.4 KiB per 32-d item) plus 16 bytes per path for the sweep of gone files; the
   exact search that tunes the index, its sample and the sweep stream the store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import write_result

REPO = Path(__file__).resolve().parents[1]
FLICKR = REPO.parent / "shared" / "datasets" / "flickr8k-1k"
RESULTS = REPO / "benchmarks" / "results" / "build.json"


def _flickr_list(n: int, tmp: Path) -> Path:
    files = sorted((FLICKR / "images").glob("*.jpg"))[:n]
    lst = tmp / f"flickr-{n}.txt"
    lst.write_text("".join(f"{f}\n" for f in files))
    return lst


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) used so far by this process and by its reaped children."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _decoded(encoder, paths: list[Path]) -> list[np.ndarray]:
    """The model inputs of ``paths``, decoded here, one after another."""
    from indexer.decode import decode_item
    from indexer.sources import Item

    tf = encoder.image_transform()
    return [decode_item(Item(str(p), str(p)), tf).array for p in paths]


def raw_encode_rate(encoder, paths: list[Path], batch_size: int, reps: int = 1, cpu: dict | None = None) -> float:
    """Images per second of encode_image_arrays alone, on arrays decoded beforehand.

    ``cpu``: filled with the CPU milliseconds per image of the serial decode (``decode_ms``) and of
    the encode (``encode_ms``, all of its threads)."""
    c0 = cpu_seconds()[0]
    arrays = _decoded(encoder, paths)
    c1 = cpu_seconds()[0]
    encoder.encode_image_arrays(np.stack(arrays[:batch_size]), with_concepts=True)  # warm-up (and lazy class ids)
    c2, t0 = cpu_seconds()[0], time.perf_counter()
    for _ in range(reps):
        for i in range(0, len(arrays), batch_size):
            encoder.encode_image_arrays(np.stack(arrays[i : i + batch_size]), with_concepts=True)
    wall = time.perf_counter() - t0
    if cpu is not None:
        cpu["decode_ms"] = 1e3 * (c1 - c0) / len(arrays)
        cpu["encode_ms"] = 1e3 * (cpu_seconds()[0] - c2) / (reps * len(arrays))
    return reps * len(arrays) / wall


def throughput(spec: str, n: int, batch_size: int, workers: int | None, device: str, tmp: Path) -> dict:
    from indexer import build_index
    from retrieval.encoders import get_encoder
    from retrieval.encoders.onnx import no_spinning

    # its own instance for the raw rate: the build loads the model as `kgclip build` does (ONNX Runtime
    # sessions created for a build do not spin, see retrieval.encoders.onnx.no_spinning)
    enc = get_encoder(spec, device=device, batch_size=batch_size, cache=False)
    t0 = time.perf_counter()
    enc.load()
    _ = enc.fingerprint
    load_s = time.perf_counter() - t0
    lst = _flickr_list(n, tmp)
    paths = [Path(p) for p in lst.read_text().split()]
    cpu_raw: dict = {}
    raw_paths = paths[: max(2 * batch_size, 64)]  # the raw rate's images, the same for each of its runs
    raw = raw_encode_rate(enc, raw_paths, batch_size, cpu=cpu_raw)
    idx = tmp / f"idx-{spec.replace(':', '_').replace('/', '_')}"
    built = get_encoder(spec, device=device, batch_size=batch_size).load()  # the instance build_index gets
    _ = built.fingerprint
    # loaded outside the timed build, as raw's was: lite's CNN (and its second ONNX session for batch
    # streams) loads on its first batch, so one warm-up batch runs here, its sessions made as a build
    # makes them (not spinning)
    with no_spinning():
        built.encode_image_arrays(np.stack(_decoded(built, paths[:batch_size])), with_concepts=True)
    c0, t0 = cpu_seconds(), time.perf_counter()
    rep = build_index([str(lst)], str(idx), model=spec, text_model=None, batch_size=batch_size, workers=workers,
                      device=device, progress=False, quiet=True, resume=False)
    wall = time.perf_counter() - t0
    c1 = cpu_seconds()  # the decode workers are reaped when the build ends: their CPU is in the children's
    rate = rep.added / wall
    raw_after = raw_encode_rate(enc, raw_paths, batch_size)
    raw_mean = (raw + raw_after) / 2  # before and after the build: drift on a shared machine shows here
    shutil.rmtree(idx, ignore_errors=True)
    out = {
        "model": spec, "images": rep.added, "batch_size": batch_size, "workers": rep.to_dict().get("workers"),
        "model_load_s": round(load_s, 2),
        "raw_encode_per_s": round(raw_mean, 2), "raw_encode_before_after": [round(raw, 2), round(raw_after, 2)],
        "build_per_s": round(rate, 2), "build_wall_s": round(wall, 2),
        "ratio_build_to_raw": round(rate / raw_mean, 3), "timings": rep.timings.to_dict(),
    }
    # Where the CPU goes. A build must at least spend the raw encode's CPU plus a serial decode's, and
    # can neither run on more cores than the machine has nor encode faster than raw: its wall time per
    # image is at least max(raw wall, (encode + decode CPU) / cores), which bounds the ratio any overlap
    # of decoding and encoding can reach on this machine (ratio_bound).
    main_ms, workers_ms = (1e3 * (c1[i] - c0[i]) / max(rep.added, 1) for i in (0, 1))
    enc_ms, dec_ms = cpu_raw["encode_ms"], cpu_raw["decode_ms"]
    out["cpu_ms_per_image"] = {
        "raw_encode": round(enc_ms, 2), "serial_decode": round(dec_ms, 2),
        "build_main": round(main_ms, 2), "build_decode_workers": round(workers_ms, 2),
        "build_overhead": round(main_ms + workers_ms - enc_ms - dec_ms, 2),
    }
    out["cores_busy"] = {"raw_encode": round(enc_ms * raw / 1e3, 2),
                         "build": round((main_ms + workers_ms) * rate / 1e3, 2)}
    raw_wall_ms = 1e3 / raw
    out["ratio_bound"] = round(raw_wall_ms / max(raw_wall_ms, (enc_ms + dec_ms) / (os.cpu_count() or 1)), 3)
    one_run = _raw_one_run(enc, raw_paths, batch_size)
    if one_run is not None:
        # the same forward as one multi-threaded run per batch (KGCLIP_ORT_STREAMS=1): the ratio is
        # taken against the faster of the two raw rates, so batch streams cannot flatter it
        out["raw_encode_one_run_per_s"] = round(one_run, 2)
        out["ratio_build_to_raw"] = round(rate / max(raw_mean, one_run), 3)
    return out


def _raw_one_run(enc, paths: list[Path], batch_size: int) -> float | None:
    """Raw rate with the ONNX model's batch streams off; None for models without them."""
    from retrieval.encoders.onnx import OrtModel

    cnn = getattr(enc, "cnn", None)
    if not isinstance(cnn, OrtModel) or cnn.streams < 2:
        return None
    saved, cnn.streams = cnn.streams, 1
    try:
        return raw_encode_rate(enc, paths, batch_size)
    finally:
        cnn.streams = saved


def make_synthetic(d: Path, n: int) -> None:
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = d / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(sub / f"{i:07d}.png",
                                                                                 compress_level=1)


def _child_build(src: str, idx: str, workers: int, batch_size: int) -> None:
    import benchmarks.fakes  # noqa: F401  registers fake:v1
    from indexer import build_index

    rep = build_index([src], idx, model="fake:v1", text_model=None, workers=workers, batch_size=batch_size,
                      progress=False, quiet=True, resume=False)
    print(json.dumps({"items": rep.items, "timings": rep.timings.to_dict()}))


def peak_rss(n: int, tmp: Path, workers: int, batch_size: int) -> dict:
    import psutil

    src = tmp / f"synthetic-{n}"
    t0 = time.perf_counter()
    make_synthetic(src, n)
    gen_s = time.perf_counter() - t0
    idx = tmp / f"rss-idx-{n}"
    env = dict(os.environ, PYTHONPATH=str(REPO), KGCLIP_PLUGINS="benchmarks.fakes")
    p = subprocess.Popen([sys.executable, "-m", "benchmarks.build", "--child-build", str(src), str(idx),
                          str(workers), str(batch_size)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    proc = psutil.Process(p.pid)
    peak_main = peak_tree = peak_anon = 0
    samples = []
    done = threading.Event()

    def sample():
        nonlocal peak_main, peak_tree, peak_anon
        t = time.perf_counter()
        while not done.is_set():
            try:
                mi = proc.memory_info()
                main = mi.rss
                tree = main + sum(c.memory_info().rss for c in proc.children(recursive=True))
            except psutil.Error:
                break
            # rss - shared: the process's own (anonymous) memory; the shared part is mostly the LMDB
            # data file mapped into memory (page cache the kernel can reclaim)
            peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
            peak_anon = max(peak_anon, main - getattr(mi, "shared", 0))
            samples.append((round(time.perf_counter() - t, 2), round(main / 2**20, 1)))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = p.communicate()
    done.set()
    th.join()
    res = json.loads(out.strip().splitlines()[-1])
    shutil.rmtree(src, ignore_errors=True)
    disk = sum(f.stat().st_size for f in idx.rglob("*") if f.is_file())
    shutil.rmtree(idx, ignore_errors=True)
    step = max(1, len(samples) // 20)
    return {"n": n, "items": res["items"], "peak_rss_main_mib": round(peak_main / 2**20, 1),
            "peak_rss_tree_mib": round(peak_tree / 2**20, 1), "peak_anon_main_mib": round(peak_anon / 2**20, 1), "build_s": res["timings"]["total"],
            "index_disk_mib": round(disk / 2**20, 1), "generate_s": round(gen_s, 1),
            "rss_main_trace_mib": samples[::step]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=1000, help="flickr8k-1k images for the lite build")
    ap.add_argument("--vit-images", type=int, default=None, help="images for the ViT-B-32 build (default: n-images)")
    ap.add_argument("--models", default="lite,open_clip:ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: CPUs - 1)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rss-n", default="2000,10000,100000", help="comma-separated synthetic build sizes")
    ap.add_argument("--rss-workers", type=int, default=1)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--child-build", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child_build:
        src, idx, w, b = a.child_build
        _child_build(src, idx, int(w), int(b))
        return
    os.environ.setdefault("KGCLIP_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    out = {
        "command": "python -m benchmarks.build " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "cuda": torch.cuda.is_available()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "throughput": [], "memory": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="kgclip-bench-build-"))
    try:
        if not a.skip_throughput:
            for spec in [m for m in a.models.split(",") if m]:
                n = a.n_images if spec == "lite" or a.vit_images is None else a.vit_images
                r = throughput(spec, n, a.batch_size, a.workers, a.device, tmp)
                print(f"{spec}: raw encode {r['raw_encode_per_s']}/s, build {r['build_per_s']}/s "
                      f"({r['ratio_build_to_raw']:.0%} of raw) over {r['images']} images", file=sys.stderr)
                out["throughput"].append(r)
        for n in [int(x) for x in a.rss_n.split(",") if x]:
            r = peak_rss(n, tmp, a.rss_workers, a.batch_size)
            print(f"rss: {n} images -> peak main {r['peak_rss_main_mib']} MiB (own {r['peak_anon_main_mib']} MiB), "
                  f"tree {r['peak_rss_tree_mib']} MiB, "
                  f"build {r['build_s']} s", file=sys.stderr)
            out["memory"].append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_result(a.out, out)


if __name__ == "__main__":
    main()
