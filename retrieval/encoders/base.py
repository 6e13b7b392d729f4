"""The one Encoder contract every model family implements.

Vectors are L2-normalised float32 numpy arrays compared by inner product.
Nothing here imports torch at module level: weights load on first use.
"""

from __future__ import annotations

import hashlib
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import KgclipError, ModelError, UsageError, WeightsNotFound
from ..paths import allow_download, default_device, hub_offline
from ..safefile import open_regular

DEVICES = ("auto", "cpu", "cuda")

# the text model the knowledge graph's linker chooses word senses with (see Encoder.sense_text_encoder)
SENSE_TEXT_MODEL = "sbert:minilm"

# (WordNet synset id such as "n02123045", probability)
Concept = tuple[str, float]

# one-time model preparation (lite's class table) may show a progress bar on a terminal's stderr; the
# CLI turns it off with -q
_PROGRESS = {"on": True}


def set_progress(on: bool) -> None:
    """Allow (the default) or forbid progress bars for one-time model preparation."""
    _PROGRESS["on"] = bool(on)


def progress_bar(total: int, desc: str):
    """A tqdm bar on stderr, shown only on a terminal and when :func:`set_progress` allows it."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="text", leave=False, disable=None if _PROGRESS["on"] else True)


@dataclass
class ImageBatch:
    """Vectors of a batch of images, plus the image tower's top concepts where it has them."""

    vectors: np.ndarray
    concepts: list[list[Concept]] | None = None
    # per image (class indexes into the encoder's ``concept_classes``, probabilities) of its soft concept
    # profile (lite: retrieval.encoders.lite.concept_profiles); None where the encoder has none
    profiles: list[tuple[np.ndarray, np.ndarray]] | None = None


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def image_batch_tensor(batch: np.ndarray, device: str):
    """A stacked float32 CHW batch as the tensor an image tower wants: fp16 on CUDA, channels_last on CPU."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
    return x.half() if device.startswith("cuda") else x.contiguous(memory_format=torch.channels_last)


def resolve_device(device: str | None) -> str:
    """Map ``auto|cpu|cuda`` (or ``cuda:N``) to a torch device string."""
    device = (device or default_device()).strip().lower()
    if device not in DEVICES and not device.startswith("cuda:"):
        raise UsageError(f"unknown device {device!r}: use one of auto, cpu, cuda")
    if device == "cpu" or (device == "auto" and not _may_have_cuda()):
        return "cpu"  # without importing torch (about 3 s of a cold query)
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but torch sees no CUDA GPU on this machine")
    return device


DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: larger images are skipped (builds) or refused (queries)


def _may_have_cuda() -> bool:
    """False only where no NVIDIA driver can exist: a Linux host without its device nodes."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg"))


def check_pixels(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """The decompression-bomb rule builds and image queries share: ValueError (the reason) when an
    image's header declares more than ``max_pixels`` pixels (checked before it is decoded)."""
    if width * height > max_pixels:
        raise ValueError(f"image too large: {width}x{height} is over the {max_pixels} pixel limit "
                         "(decompression bomb guard)")


def load_image(item: Any, max_pixels: int | None = None):
    """Open a path (or pass a PIL image through) as an RGB PIL image, EXIF-rotated. With ``max_pixels``
    a larger image is refused (:func:`check_pixels`, one clear line) before it is decoded; PIL's own
    bomb check and its multi-line warning are left out then."""
    from PIL import Image, ImageOps

    if isinstance(item, Image.Image):
        img = item
    else:
        path = Path(item)
        saved = Image.MAX_IMAGE_PIXELS
        try:  # a FIFO or a device would block or never end: regular files only (retrieval.safefile)
            with open_regular(path, "image file") as fh:
                if max_pixels is not None:
                    Image.MAX_IMAGE_PIXELS = None  # our guard below applies, with a clear reason
                img = Image.open(fh)
                if max_pixels is not None:
                    try:
                        check_pixels(*img.size, max_pixels)
                    except ValueError as e:
                        raise KgclipError(f"{path}: {e}; --max-pixels raises the limit") from None
                img.load()
                img = ImageOps.exif_transpose(img)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise KgclipError(f"{path}: cannot read image ({str(e).splitlines()[0] if str(e) else e!r})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
            img = img.convert("RGBA")
            bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(bg, img)
        img = img.convert("RGB")
    return img


def weights_signature(paths: Sequence[str | os.PathLike], extra: str = "") -> str:
    """A cheap, stable hash of weight files: size plus the first and last MiB of each.

    Full hashes of hundreds of MB would cost seconds on every cold query; size
    plus head and tail changes whenever a checkpoint does in practice.
    """
    h = hashlib.sha256(extra.encode())
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
        else:
            files = [p]
        for f in files:
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                if size > (2 << 20):
                    fh.seek(-(1 << 20), os.SEEK_END)
                    h.update(fh.read())
    return h.hexdigest()[:16]


class Encoder(ABC):
    """A dual (or text-only) encoder named by a spec string.

    Construction is cheap and never loads weights; :meth:`load` (called by the
    first encode) does. ``encode_*`` return L2-normalised float32 arrays.

    Besides encoding, an encoder answers what the index and the query side need to know without
    looking inside it (each has a default for encoders without the feature):

    - :attr:`concept_classes`: the class ids that the concept profiles of :meth:`encode_image_arrays`
      (``ImageBatch.profiles``) index into, or None for an encoder that reports no concepts;
    - :meth:`profile_record`: what an index records about those profiles in its manifest (None: none);
    - :meth:`sense_text_encoder`: a loaded text encoder of the KG linker's sense model
      (:data:`SENSE_TEXT_MODEL`) that the linker may reuse instead of loading its own, or None.

    An encoder instance is shared process-wide (``get_encoder`` caches it): it holds no per-index
    state, so nothing sets attributes on it.
    """

    family: str = ""
    has_images: bool = True
    has_texts: bool = True

    def __init__(self, spec: str, device: str | None = "auto", batch_size: int = 32):
        self.spec = spec
        self.requested_device = device or "auto"
        self.batch_size = int(batch_size)
        self._loaded = False
        self._fingerprint: str | None = None

    # -- lifecycle -------------------------------------------------------------
    def load(self) -> "Encoder":
        if not self._loaded:
            self.device = resolve_device(self.requested_device)
            if self.named_by and not allow_download():
                self._load_local_only()
            else:
                self._load()
            self._loaded = True
        return self

    #: what named this model when the user did not (an index's manifest): such a model is loaded from
    #: local or shipped files only, unless KGCLIP_ALLOW_DOWNLOAD=1 (an index must not reach the network)
    named_by: str | None = None

    def _load_local_only(self) -> None:
        with hub_offline():
            try:
                self._load()
            except ModelError as e:
                why = str(e).splitlines()[0].rstrip(". ") if str(e) else type(e).__name__
                raise WeightsNotFound(
                    f"{self.named_by} names the model {self.spec}, which is not on this machine ({why}); kgclip "
                    "downloads no model that an index names unless you trust it: KGCLIP_ALLOW_DOWNLOAD=1 "
                    "(or `kgclip search --allow-download`)") from None

    @abstractmethod
    def _load(self) -> None:
        """Load weights; set ``self._dim``."""

    @property
    def dim(self) -> int:
        self.load()
        return self._dim

    @property
    def fingerprint(self) -> str:
        """``spec`` plus a hash of weights or config; stored in index manifests."""
        if self._fingerprint is None:
            self._fingerprint = f"{self.spec}#{self._weights_hash()}"
        return self._fingerprint

    @abstractmethod
    def _weights_hash(self) -> str: ...

    # -- concepts and sharing --------------------------------------------------
    @property
    def concept_classes(self) -> tuple[str, ...] | None:
        """Class ids (lite: the sorted ImageNet wnids) in the order the stored concept profiles' class
        indexes refer to; None for an encoder that stores no concepts. Never loads weights."""
        return None

    def profile_record(self) -> dict | None:
        """The concept-profile settings an index built now records in its manifest's model info
        (lite: ``{"top", "temperature", "classes"}``); None for an encoder without profiles."""
        return None

    def sense_text_encoder(self) -> "Encoder | None":
        """A loaded :data:`SENSE_TEXT_MODEL` text encoder this encoder holds (lite's MiniLM tower), for
        the KG linker to share; None (the default) when it holds none. May load the encoder."""
        return None

    # -- images ----------------------------------------------------------------
    def image_transform(self) -> Callable[[Any], np.ndarray]:
        """A picklable callable: RGB PIL image -> a numpy array :meth:`encode_image_arrays` accepts
        (runs in decode workers): float32 CHW, normalised as the model wants (open_clip), or uint8
        CHW pixel bytes that the encoder normalises itself (lite: less decode CPU, a quarter of the
        bytes to pickle). Build pipelines keep uint8 as uint8 and turn anything else to float32."""
        raise ModelError(f"{self.spec} has no image tower")

    def encode_image_arrays(self, batch: np.ndarray, with_concepts: bool = False) -> ImageBatch:
        """Encode a stacked batch of :meth:`image_transform` outputs (an encoder whose transform gives
        uint8 also accepts the equivalent normalised float32 batch, and dispatches on the dtype)."""
        raise ModelError(f"{self.spec} has no image tower")

    def encode_images(self, images: Sequence[Any], with_concepts: bool = False) -> np.ndarray | ImageBatch:
        """Encode paths or PIL images. Returns vectors, or an :class:`ImageBatch` with concepts."""
        if not self.has_images:
            raise ModelError(f"{self.spec} has no image tower: it encodes text only")
        self.load()
        tf = self.image_transform()
        out_v, out_c, out_p = [], [], []
        for i in range(0, len(images), self.batch_size):
            arr = np.stack([tf(load_image(x)) for x in images[i : i + self.batch_size]])
            b = self.encode_image_arrays(arr, with_concepts=with_concepts)
            out_v.append(b.vectors)
            if with_concepts:
                out_c.extend(b.concepts or [[] for _ in range(len(arr))])
                if b.profiles is None:
                    out_p = None  # profiles for every image or for none
                elif out_p is not None:
                    out_p.extend(b.profiles)
        vecs = np.concatenate(out_v) if out_v else np.zeros((0, self.dim), np.float32)
        return ImageBatch(vecs, out_c, out_p or None) if with_concepts else vecs

    # -- texts -----------------------------------------------------------------
    @abstractmethod
    def _encode_text_batch(self, texts: list[str]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode documents (captions, entity names/glosses)."""
        if not self.has_texts:
            raise ModelError(f"{self.spec} has no text tower")
        self.load()
        texts = [str(t) for t in texts]
        out = [
            self._encode_text_batch(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)
        ]
        return l2_normalize(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Encode search queries; the same as documents unless a model says otherwise."""
        return self.encode_texts(texts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"
