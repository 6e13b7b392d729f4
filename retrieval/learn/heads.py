"""The adapter's heads: an MLP on image features and a residual MLP on text features, into one space.

- image head: ``Linear(image_dim, hidden) -> GELU -> Dropout -> Linear(hidden, dim)``
- text head: ``Linear(text_dim, dim)(x) + MLP(x)`` with the MLP's last layer zero-initialised, so
  training starts from a linear map of the frozen text vectors and learns a correction
- a learned temperature (CLIP's ``logit_scale``, clamped at 100)

GELU is the tanh form, so :func:`numpy_forward` reproduces the torch heads exactly without importing
torch (a text query through an adapter index then costs no torch import). Tensor names are the state
dict's: they are what the model file stores.
"""

from __future__ import annotations

import math

import numpy as np

from ..encoders.base import l2_normalize

DEFAULTS = {"dim": 512, "hidden": 1024, "text_hidden": 1024, "dropout": 0.5, "in_norm": False, "in_dropout": 0.4}


def build_heads(image_dim: int, text_dim: int, config: dict | None = None):
    """The torch module (``.image``, ``.text_proj``, ``.text_mlp``, ``.logit_scale``)."""
    import torch
    from torch import nn

    c = {**DEFAULTS, **(config or {})}

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            # optional LayerNorm of the image features (the pooled CNN features are far from unit scale) and
            # dropout on the frozen features themselves (training only)
            self.image_norm = nn.LayerNorm(image_dim) if c.get("in_norm") else nn.Identity()
            self.in_drop = nn.Dropout(c.get("in_dropout", 0.0))
            self.image = nn.Sequential(nn.Linear(image_dim, c["hidden"]), nn.GELU(approximate="tanh"),
                                       nn.Dropout(c["dropout"]), nn.Linear(c["hidden"], c["dim"]))
            self.text_proj = nn.Linear(text_dim, c["dim"])
            self.text_mlp = nn.Sequential(nn.Linear(text_dim, c["text_hidden"]), nn.GELU(approximate="tanh"),
                                          nn.Dropout(c["dropout"]), nn.Linear(c["text_hidden"], c["dim"]))
            nn.init.zeros_(self.text_mlp[3].weight)
            nn.init.zeros_(self.text_mlp[3].bias)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        def encode_image(self, x):
            return nn.functional.normalize(self.image(self.in_drop(self.image_norm(x))), dim=-1)

        def encode_text(self, x):
            return nn.functional.normalize(self.text_proj(x) + self.text_mlp(x), dim=-1)

        def forward(self, img, txt):
            return self.encode_image(img), self.encode_text(txt), self.logit_scale.clamp(max=math.log(100)).exp()

    return Heads()


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _linear(x: np.ndarray, w: dict, name: str) -> np.ndarray:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def numpy_image(weights: dict, x: np.ndarray) -> np.ndarray:
    """The image head in numpy (eval mode: no dropout), L2-normalised."""
    x = np.asarray(x, np.float32)
    if "image_norm.weight" in weights:  # LayerNorm, eps 1e-5 as torch's
        mu, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
        x = (x - mu) / np.sqrt(var + 1e-5) * weights["image_norm.weight"] + weights["image_norm.bias"]
    h = _gelu(_linear(x, weights, "image.0"))
    return l2_normalize(_linear(h, weights, "image.3"))


def numpy_text(weights: dict, x: np.ndarray) -> np.ndarray:
    """The text head in numpy, L2-normalised."""
    x = np.asarray(x, np.float32)
    h = _gelu(_linear(x, weights, "text_mlp.0"))
    return l2_normalize(_linear(x, weights, "text_proj") + _linear(h, weights, "text_mlp.3"))


def numpy_weights(module) -> dict[str, np.ndarray]:
    """A torch Heads module's state dict as float32 numpy arrays."""
    return {k: v.detach().float().cpu().numpy().copy() for k, v in module.state_dict().items()}


def ensemble_image(members: list[dict], x: np.ndarray) -> np.ndarray:
    """An ensemble's image vectors: its members' unit vectors side by side over sqrt(members), so an inner
    product is the members' mean cosine (a single member: its own vector)."""
    return np.concatenate([numpy_image(w, x) for w in members], axis=1) / np.sqrt(len(members))


def ensemble_text(members: list[dict], x: np.ndarray) -> np.ndarray:
    return np.concatenate([numpy_text(w, x) for w in members], axis=1) / np.sqrt(len(members))
