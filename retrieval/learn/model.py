"""A trained adapter in memory: its heads (numpy), its gate and its card; vectors from tower features."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .gate import Gate
from .heads import ensemble_image, ensemble_text
from .modelfile import load_tensors, save_tensors


@dataclass
class AdapterModel:
    """``weights``: one member's head weights, or a list of members (an ensemble of seeds, scored by their
    mean cosine)."""

    weights: dict | list
    gate: Gate
    card: dict

    def __post_init__(self):
        self.members: list[dict] = list(self.weights) if isinstance(self.weights, list) else [self.weights]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AdapterModel":
        tensors, card = load_tensors(path)
        members: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("heads."):
                i, name = k[6:].split(".", 1)
                members.setdefault(int(i), {})[name] = v
        try:
            gate = Gate(**card["gate"], bank=tensors.get("gate.bank"))
            need = ("image.0.weight", "image.3.weight", "text_proj.weight", "text_mlp.0.weight", "text_mlp.3.weight")
            if not members:
                raise KeyError("heads")
            for w in members.values():
                missing = [n for n in need if n not in w]
                if missing or w["image.0.weight"].shape[1] != card["image_dim"]:
                    raise KeyError(missing[0] if missing else "image_dim")
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{path}: incomplete adapter model file (missing {e})") from None
        return cls([members[i] for i in sorted(members)], gate, card)

    def save(self, path: str | os.PathLike) -> dict:
        tensors = {f"heads.{i}.{k}": np.asarray(v, np.float32) for i, w in enumerate(self.members)
                   for k, v in w.items()}
        if self.gate.bank is not None:
            tensors["gate.bank"] = np.asarray(self.gate.bank, np.float16)
        self.card = save_tensors(path, tensors, {**self.card, "gate": self.gate.params()})
        return self.card

    def with_gate(self, **changes) -> "AdapterModel":
        """The same heads with other gate settings (ablations, tuning)."""
        return AdapterModel(self.members, replace(self.gate, **changes), self.card)

    @property
    def dim(self) -> int:
        return sum(int(w["image.3.weight"].shape[0]) for w in self.members) + int(self.card["zero_shot_dim"])

    def image_vectors(self, feats: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
        return self.gate.image_vectors(ensemble_image(self.members, feats), zero_shot)

    def query_vectors(self, text_feats: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
        return self.gate.query_vectors(ensemble_text(self.members, text_feats), zero_shot, text_feats)

    def scores(self, text_feats, text_zs, image_feats, image_zs) -> np.ndarray:
        """[texts, images] mixed scores (what an index of :meth:`image_vectors` ranks by)."""
        return self.query_vectors(text_feats, text_zs) @ self.image_vectors(image_feats, image_zs).T


def model_path(rest: str) -> Path:
    if not rest:
        raise ModelError("adapter spec needs a model file: adapter:PATH (made by `kgclip train adapter`)")
    return Path(rest).expanduser()
