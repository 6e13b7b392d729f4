"""Encoder throughput: images/s and texts/s through the Encoder contract next to the raw model forward.

For each model the raw forward (the bare torch module on a ready tensor) and the
contract call (``encode_image_arrays`` on the same preprocessed numpy batch,
``encode_texts`` on the same captions) are timed alternately in the same run, so
the ratio holds even when the machine is busy. Preprocessing (decode, resize) is
timed on its own: the index build runs it in worker processes.

    python -m benchmarks.encoders                   # lite (ONNX Runtime and torch) + random-init ViT-B-32, batch 32
    python -m benchmarks.encoders --reps 2 --batches 2 --no-write   # a quick smoke run

Writes benchmarks/results/encoders.json. Targets on a 2-core machine: ViT-B-32 images through
the contract within 10% of the raw forward; lite >= 70 images/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import write_result

RESULTS = Path(__file__).resolve().parent / "results" / "encoders.json"
# "lite[torch]": the same lite encoder with its towers on torch instead of ONNX Runtime, side by side
MODELS = ("lite", "lite[torch]", "open_clip:ViT-B-32")


def _images(n: int, seed: int = 0):
    """Seeded synthetic RGB photos of Flickr size (500x375): smooth gradients plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500]
    out = []
    for _ in range(n):
        base = np.stack([(xx * rng.uniform(0.1, 0.5) + yy * rng.uniform(0.1, 0.5) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], axis=-1)
        img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(img))
    return out


def _captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    subj = ["a dog", "two children", "a man in a red shirt", "a woman", "a black and white dog", "a group of people"]
    verb = ["runs across", "is playing in", "sits on", "jumps over", "walks along", "stands next to"]
    obj = ["the grass", "a sandy beach", "a busy city street", "the snow", "a wooden fence", "the water"]
    return [f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)} ." for _ in range(n)]


def _raw_image_fn(enc):
    """The bare forward on a ready batch (what the contract wraps): the torch module on a tensor,
    or the ONNX Runtime session on the numpy batch."""
    import torch

    from retrieval.encoders.onnx import OrtModel

    if enc.family == "lite":  # lite:tiles stacks its views on the channel axis: one forward per view
        views = len(enc.config.views)
        unstack = lambda b: b.reshape(len(b) * views, 3, *b.shape[2:])  # noqa: E731
    if enc.family == "lite" and isinstance(enc.cnn, OrtModel):  # the graph takes the transform's uint8 bytes
        return (lambda x: enc.cnn.run(x=x)), (lambda batch: np.ascontiguousarray(unstack(batch)))
    if enc.family == "lite":
        module = enc.cnn
    else:
        module = enc.model.encode_image

    def run(x):
        with torch.inference_mode():
            return module(x)

    def to_tensor(batch):
        t = torch.from_numpy(unstack(batch) if enc.family == "lite" else batch).to(enc.device)
        if t.dtype == torch.uint8:  # lite's pixel bytes: normalised as LiteEncoder.logits does
            t = (t.float() - 127.0) / 128.0
        if enc.device.startswith("cuda"):
            return t.half()
        return t.contiguous(memory_format=torch.channels_last)

    return run, to_tensor


def _raw_text_fn(enc):
    import torch

    from retrieval.encoders.minibert import MiniBert

    if enc.family == "lite" and isinstance(enc.text.model, MiniBert) and enc.text.model.ort is not None:
        mb = enc.text.model

        def run(texts):
            return mb.ort.run(**mb._inputs(texts))
    elif enc.family == "lite" and isinstance(enc.text.model, MiniBert):
        mb = enc.text.model

        def run(texts):
            with torch.inference_mode():
                e = mb.tok.encode_batch(texts)
                ids, mask, types = (torch.tensor([getattr(x, a) for x in e], device=enc.device)
                                    for a in ("ids", "attention_mask", "type_ids"))
                return mb.forward(ids, mask, types)
    elif enc.family == "lite":
        st = enc.text.model

        def run(texts):
            with torch.inference_mode():
                feats = st.tokenize(texts)
                feats = {k: (v.to(enc.device) if hasattr(v, "to") else v) for k, v in feats.items()}
                return st(feats)["sentence_embedding"]
    else:
        def run(texts):
            with torch.inference_mode():
                return enc.model.encode_text(enc.tokenizer(texts).to(enc.device))
    return run


def _sync(device: str):
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _time(fn, arg, device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn(arg)
    _sync(device)
    return time.perf_counter() - t


def measure(spec: str, batch: int = 32, batches: int = 4, reps: int = 5, device: str = "cpu", log=print,
            backend: str | None = None) -> dict:
    """Rates for ``spec``; ``backend`` (torch/onnx) pins KGCLIP_BACKEND for this model's towers."""
    old = os.environ.get("KGCLIP_BACKEND")
    if backend:
        os.environ["KGCLIP_BACKEND"] = backend
    try:
        return _measure(spec, batch, batches, reps, device, log, backend)
    finally:
        if old is None:
            os.environ.pop("KGCLIP_BACKEND", None)
        else:
            os.environ["KGCLIP_BACKEND"] = old


def _measure(spec, batch, batches, reps, device, log, backend) -> dict:
    import torch

    from retrieval.encoders import get_encoder
    from retrieval.encoders.onnx import OrtModel

    torch.manual_seed(0)  # random-init open_clip models are seeded
    enc = get_encoder(spec, device=device, batch_size=batch, cache=False)
    t = time.perf_counter()
    enc.load()
    if enc.family == "lite":
        enc.cnn  # noqa: B018 - the image tower loads lazily: count it in the load time
    load_s = time.perf_counter() - t
    image_backend = "onnxruntime" if isinstance(getattr(enc, "cnn", None), OrtModel) else "torch"
    tf = enc.image_transform()
    pil = _images(batch)
    t = time.perf_counter()
    arrays = np.stack([tf(im) for im in pil])
    prep_s = time.perf_counter() - t
    run_raw, to_tensor = _raw_image_fn(enc)
    raw_text = _raw_text_fn(enc)
    caps = _captions(batch)

    def raw_images(_):
        for _ in range(batches):
            run_raw(to_tensor(arrays))

    def contract_images(_):
        for _ in range(batches):
            enc.encode_image_arrays(arrays)

    def raw_texts(_):
        for _ in range(batches):
            raw_text(caps)

    def contract_texts(_):
        for _ in range(batches):
            enc.encode_texts(caps)

    for fn in (raw_images, contract_images, raw_texts, contract_texts):  # warm-up
        fn(None)
    times: dict[str, list[float]] = {k: [] for k in ("raw_images", "contract_images", "raw_texts", "contract_texts")}
    for r in range(reps):  # alternate so both sides see the same machine load
        for name, fn in (("raw_images", raw_images), ("contract_images", contract_images),
                         ("raw_texts", raw_texts), ("contract_texts", contract_texts)):
            times[name].append(_time(fn, None, enc.device))
        log(f"{spec} rep {r + 1}/{reps}: " + ", ".join(f"{k} {batch * batches / v[-1]:.1f}/s" for k, v in times.items()))
    n = batch * batches
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    # per-rep ratios are robust to load that drifts between reps
    img_ratio = statistics.median(r / c for r, c in zip(times["raw_images"], times["contract_images"]))
    txt_ratio = statistics.median(r / c for r, c in zip(times["raw_texts"], times["contract_texts"]))
    return {
        "spec": spec + (f" [{backend}]" if backend else ""),
        "image_backend": image_backend,
        "device": enc.device,
        "batch_size": batch,
        "items_per_rep": n,
        "reps": reps,
        "load_s": round(load_s, 2),
        "preprocess_images_per_s": round(batch / prep_s, 1),
        "raw_images_per_s": round(rate["raw_images"], 1),
        "images_per_s": round(rate["contract_images"], 1),
        "contract_vs_raw_images": round(img_ratio, 3),
        "raw_texts_per_s": round(rate["raw_texts"], 1),
        "texts_per_s": round(rate["contract_texts"], 1),
        "contract_vs_raw_texts": round(txt_ratio, 3),
    }


def markdown(rows: list[dict]) -> str:
    out = ["| model | images/s (contract) | images/s (raw forward) | contract/raw | texts/s (contract) | "
           "texts/s (raw) | preprocess img/s (1 core) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['spec']} | {r['images_per_s']} | {r['raw_images_per_s']} | {r['contract_vs_raw_images']} | "
                   f"{r['texts_per_s']} | {r['raw_texts_per_s']} | {r['preprocess_images_per_s']} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Encoder throughput through the contract vs the raw forward.")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=4, help="batches per timed rep")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    import torch

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    for m in args.models:
        spec, _, backend = m.partition("[")
        rows.append(measure(spec, args.batch, args.batches, args.reps, args.device, log, backend.rstrip("]") or None))
    report = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_avg_at_end": os.getloadavg()},
        "targets": {"open_clip contract_vs_raw_images": ">= 0.90", "lite images_per_s": ">= 70 (2 cores, idle)"},
        "results": rows,
    }
    if not args.no_write:
        write_result(args.out, report, indent=1, announce=False)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
