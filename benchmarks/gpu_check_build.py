"""GPU check for the build side: the same build on cuda and on cpu gives the same index.

    python -m benchmarks.gpu_check_build [--n 64] [--model lite]

Builds ``--n`` flickr8k-1k images twice (``--device cuda`` when a GPU is
present, else ``cpu`` twice), then compares ids, paths and vectors (max
absolute difference; GPU kernels differ slightly from CPU ones) and the top-10
search results of a few stored vectors. Exits 1 when they disagree. Runs on a
CPU-only machine too (then it checks determinism of two CPU builds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.build import FLICKR


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--model", default="lite")
    ap.add_argument("--tol", type=float, default=2e-3)
    a = ap.parse_args(argv)
    import torch

    from indexer import build_index, open_index

    devices = ["cuda" if torch.cuda.is_available() else "cpu", "cpu"]
    tmp = Path(tempfile.mkdtemp(prefix="kgclip-gpucheck-"))
    lst = tmp / "list.txt"
    lst.write_text("".join(f"{p}\n" for p in sorted((FLICKR / "images").glob("*.jpg"))[: a.n]))
    snaps = []
    for i, dev in enumerate(devices):
        rep = build_index([str(lst)], str(tmp / f"idx{i}"), model=a.model, text_model=None, device=dev, quiet=True)
        with open_index(str(tmp / f"idx{i}")) as ix:
            ids = [j for j, _ in ix.iter_items()]
            paths = [it["path"] for _, it in ix.iter_items()]
            vecs = ix.get_vectors(ids)
            top = ix.search(vecs[:8], 10)[1]
        snaps.append((ids, paths, vecs, top, rep.timings.to_dict()))
    (i0, p0, v0, t0, tm0), (i1, p1, v1, t1, tm1) = snaps
    diff = float(np.abs(v0 - v1).max()) if len(v0) == len(v1) else float("inf")
    top_agree = float((t0[:, :5] == t1[:, :5]).mean()) if t0.shape == t1.shape else 0.0
    ok = i0 == i1 and p0 == p1 and diff <= a.tol and top_agree >= 0.9
    print(json.dumps({"devices": devices, "items": len(i0), "max_abs_vector_diff": diff,
                      "top5_agreement": top_agree, "timings": {devices[0]: tm0, "cpu": tm1}, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
