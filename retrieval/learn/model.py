"""A trained adapter in memory: its heads (numpy), its gate and its card; vectors from tower features."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .gate import Gate
from .heads import numpy_image, numpy_text
from .modelfile import load_tensors, save_tensors


@dataclass
class AdapterModel:
    weights: dict
    gate: Gate
    card: dict

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AdapterModel":
        tensors, card = load_tensors(path)
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("heads.")}
        try:
            gate = Gate(**card["gate"], bank=tensors.get("gate.bank"))
            need = ("image.0.weight", "image.3.weight", "text_proj.weight", "text_mlp.0.weight", "text_mlp.3.weight")
            missing = [n for n in need if n not in weights]
            if missing or weights["image.0.weight"].shape[1] != card["image_dim"]:
                raise KeyError(missing[0] if missing else "image_dim")
        except (KeyError, TypeError) as e:
            raise ModelError(f"{path}: incomplete adapter model file (missing {e})") from None
        return cls(weights, gate, card)

    def save(self, path: str | os.PathLike) -> dict:
        tensors = {f"heads.{k}": np.asarray(v, np.float32) for k, v in self.weights.items()}
        if self.gate.bank is not None:
            tensors["gate.bank"] = np.asarray(self.gate.bank, np.float16)
        self.card = save_tensors(path, tensors, {**self.card, "gate": self.gate.params()})
        return self.card

    def with_gate(self, **changes) -> "AdapterModel":
        """The same heads with other gate settings (ablations, tuning)."""
        return AdapterModel(self.weights, replace(self.gate, **changes), self.card)

    @property
    def dim(self) -> int:
        return int(self.weights["image.3.weight"].shape[0]) + int(self.card["zero_shot_dim"])

    def image_vectors(self, feats: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
        return self.gate.image_vectors(numpy_image(self.weights, feats), zero_shot)

    def query_vectors(self, text_feats: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
        return self.gate.query_vectors(numpy_text(self.weights, text_feats), zero_shot, text_feats)

    def scores(self, text_feats, text_zs, image_feats, image_zs) -> np.ndarray:
        """[texts, images] mixed scores (what an index of :meth:`image_vectors` ranks by)."""
        return self.query_vectors(text_feats, text_zs) @ self.image_vectors(image_feats, image_zs).T


def model_path(rest: str) -> Path:
    if not rest:
        raise ModelError("adapter spec needs a model file: adapter:PATH (made by `kgclip train adapter`)")
    return Path(rest).expanduser()
