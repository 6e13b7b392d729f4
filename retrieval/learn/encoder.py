"""``adapter:PATH``: a trained adapter model file as an encoder (the :class:`Encoder` contract).

Loading reads and verifies the model file (checksum, format) and checks that this machine's base model
is the one the adapter was trained on (its fingerprint is on the card): another base, or a damaged file,
is a one-line :class:`ModelError` naming the file. The fingerprint is the spec plus a hash of the whole
model file, so an index built with one adapter refuses another (even at the same path).

Vectors are the gate's concatenation ``[adapter, zero-shot]`` (see :mod:`.gate`): an index of them
ranks text queries by the gated mix of the adapter's and the base model's scores. Concepts and concept
profiles (the knowledge graph's grounding) are the base model's, from the same forward.
"""

from __future__ import annotations

import numpy as np

from ..encoders import get_encoder
from ..encoders.base import Encoder, ImageBatch
from ..errors import ModelError
from .model import AdapterModel, model_path
from .modelfile import file_digest, read_card
from .towers import towers_for


class AdapterEncoder(Encoder):
    family = "adapter"

    def __init__(self, spec: str, rest: str = "", device: str | None = "auto", batch_size: int = 32):
        super().__init__(spec, device, batch_size)
        self.path = model_path(rest)
        self._card: dict | None = None

    @property
    def card(self) -> dict:
        if self._card is None:
            self._card = read_card(self.path)
        return self._card

    def _base(self) -> Encoder:
        return get_encoder(self.card["base"], device=self.requested_device)

    def _load(self) -> None:
        self.model = AdapterModel.load(self.path)
        self._card = self.model.card
        self.towers = towers_for(self._card["base"], device=self.device)
        want, have = self._card["base_fingerprint"], self.towers.fingerprint
        if want != have:
            raise ModelError(f"{self.path}: trained on base model {want}, but {self._card['base']} here is {have}: "
                             f"retrain the adapter for this base model")
        if self.towers.kind != self._card["features"]:
            raise ModelError(f"{self.path}: trained on {self._card['features']} features, "
                             f"the base gives {self.towers.kind}")
        self._dim = self.model.dim

    def _weights_hash(self) -> str:
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such adapter model file")
        return file_digest(self.path)

    @property
    def concept_classes(self):
        return self._base().concept_classes

    def profile_record(self):
        return self._base().profile_record()

    def sense_text_encoder(self):
        self.load()
        return self.towers.base.sense_text_encoder()

    def image_transform(self):
        self.load()
        return self.towers.image_transform()

    def encode_image_arrays(self, batch: np.ndarray, with_concepts: bool = False) -> ImageBatch:
        self.load()
        feats, b = self.towers.image_features(batch)
        v = self.model.image_vectors(feats, b.vectors)
        return ImageBatch(v, b.concepts if with_concepts else None, b.profiles if with_concepts else None)

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        raw = self.towers.text_features(texts)
        return self.model.query_vectors(raw, self.towers.zero_shot_texts(raw))
