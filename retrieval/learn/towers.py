"""The frozen towers an adapter learns on: what features they give and what the zero-shot model scores.

A :class:`Towers` wraps a base encoder (its spec is recorded in the model card) and answers four things:
image features from a batch of the base's preprocessed images, the base's own zero-shot image vectors
from those features, raw text features, and the base's zero-shot query vectors from those.

- :class:`LiteTowers` (base ``lite`` or ``lite:mpnet``): the image features are EfficientNet-Lite0's
  pooled 1280-d pre-logits; the zero-shot image vector is lite's ConSE mix of the classifier's
  logits computed from those same features (one forward gives both), so an adapter index also keeps
  lite's concepts for the knowledge graph. Text features are the raw MiniLM (or mpnet) vectors.
- :class:`EncoderTowers` (any other encoder, e.g. ``fake:v1`` in tests or an open_clip model): the
  features are the encoder's own vectors, and the zero-shot vectors are those features unchanged.
"""

from __future__ import annotations

import numpy as np

from ..encoders import get_encoder
from ..encoders.base import Encoder, ImageBatch, l2_normalize
from ..encoders.lite import (
    PROFILE,
    LiteEncoder,
    concept_profiles,
    conse_views,
    load_lite0,
    normalise_pixels,
    project_queries,
    top_classes,
)
from ..errors import ModelError

FEATURES_VERSION = "1"  # bump when the features a tower gives change (the feature cache keys on it)


class EncoderTowers:
    """Any encoder as frozen towers: features = its vectors; zero-shot = the same vectors."""

    kind = "vectors"

    def __init__(self, encoder: Encoder):
        self.base = encoder
        self.spec = encoder.spec

    def load(self) -> "EncoderTowers":
        self.base.load()
        return self

    @property
    def fingerprint(self) -> str:
        """The base encoder's fingerprint: a model card records it and refuses another base."""
        return self.base.fingerprint

    @property
    def feature_key(self) -> str:
        return f"{self.fingerprint}|{self.kind}|{FEATURES_VERSION}"

    @property
    def image_dim(self) -> int:
        return self.base.dim

    @property
    def text_dim(self) -> int:
        return self.base.dim

    @property
    def zero_shot_dim(self) -> int:
        return self.base.dim

    @property
    def concept_classes(self):
        return self.base.concept_classes

    def image_transform(self):
        return self.base.image_transform()

    def image_features(self, batch: np.ndarray) -> tuple[np.ndarray, ImageBatch]:
        """(features [n, image_dim], the base's ImageBatch with concepts) for a preprocessed batch."""
        b = self.base.encode_image_arrays(batch, with_concepts=True)
        return np.asarray(b.vectors, np.float32), b

    def zero_shot_images(self, feats: np.ndarray) -> np.ndarray:
        return l2_normalize(feats)

    def text_features(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.base.encode_texts(texts), np.float32)

    def zero_shot_texts(self, feats: np.ndarray) -> np.ndarray:
        return l2_normalize(feats)


class LiteTowers(EncoderTowers):
    """lite's towers: Lite0 pooled features (1280-d) in, ConSE zero-shot vectors from the same forward."""

    kind = "lite0-pooled"

    def __init__(self, encoder: LiteEncoder):
        super().__init__(encoder)
        if len(encoder.config.views) != 1:
            raise ModelError(f"an adapter needs a one-view lite base, not {encoder.spec} "
                             f"({len(encoder.config.views)} views)")
        self._net = None

    @property
    def image_dim(self) -> int:
        return 1280

    @property
    def text_dim(self) -> int:
        return self.base.dim

    def net(self):
        """The eager Lite0 module (pooled features need the layer before the classifier)."""
        if self._net is None:
            self.base.load()
            net = load_lite0(self.base.device, freeze=False)
            self._net = net.half() if self.base.device.startswith("cuda") else net
            sd = {k: v.float().cpu().numpy() for k, v in net.get_classifier().state_dict().items()}
            self._w, self._b = sd["weight"].T.copy(), sd["bias"].copy()
        return self._net

    def image_features(self, batch: np.ndarray) -> tuple[np.ndarray, ImageBatch]:
        import torch

        net = self.net()
        x = normalise_pixels(batch) if np.asarray(batch).dtype == np.uint8 else np.asarray(batch, np.float32)
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x)).to(self.base.device)
            if self.base.device.startswith("cuda"):
                t = t.half()
            else:
                t = t.contiguous(memory_format=torch.channels_last)
            feats = net.forward_head(net.forward_features(t), pre_logits=True).float().cpu().numpy()
        logits = self.logits(feats)
        idx, p = top_classes(logits, self.base.config.concepts)
        classes = self.base.concept_classes
        concepts = [[(classes[j], round(float(prow[j]), 4)) for j in irow] for prow, irow in zip(p, idx)]
        return feats, ImageBatch(self.zero_shot_images(feats, logits), concepts, concept_profiles(logits, *PROFILE))

    def logits(self, feats: np.ndarray) -> np.ndarray:
        self.net()
        return np.asarray(feats, np.float32) @ self._w + self._b

    def zero_shot_images(self, feats: np.ndarray, logits: np.ndarray | None = None) -> np.ndarray:
        """lite's own image vectors (ConSE over the classifier's logits of these features)."""
        self.base.load()
        logits = self.logits(feats) if logits is None else logits
        return conse_views(logits, self.base.class_table, self.base.config)

    def text_features(self, texts: list[str]) -> np.ndarray:
        self.base.load()
        return np.asarray(self.base.text.encode_texts(texts), np.float32)

    def zero_shot_texts(self, feats: np.ndarray) -> np.ndarray:
        self.base.load()
        return project_queries(feats, self.base.class_table, self.base.config)


def towers_for(spec: str, device: str | None = "auto") -> EncoderTowers:
    """The frozen towers of a base model spec (``lite`` gets the pooled-feature towers)."""
    enc = get_encoder(spec, device=device)
    return LiteTowers(enc) if isinstance(enc, LiteEncoder) else EncoderTowers(enc)
