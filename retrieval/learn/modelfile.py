"""Adapter model files: one safetensors file holding the heads, the gate's caption bank and a JSON card.

The card (in the safetensors header's metadata, key ``kgclip``) says what the model is: format, base
model spec and fingerprint, feature kind and dimensions, head and gate settings, training data, split,
seed, metrics, and a SHA-256 over the tensors. Loading checks all of it and fails with one line naming
the file: not a safetensors file, damaged (the checksum differs), not a kgclip adapter, another format
version. Nothing is ever unpickled. Training checkpoints use the same format (:func:`save_tensors`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import ModelError

FORMAT = "kgclip-adapter/1"
CHECKPOINT_FORMAT = "kgclip-adapter-checkpoint/1"


def tensors_digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict[str, np.ndarray], card: dict, fmt: str = FORMAT) -> dict:
    """Write ``tensors`` and ``card`` (plus format and checksum) atomically; returns the card written."""
    from safetensors.numpy import save

    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    card = {**card, "format": fmt, "sha256": tensors_digest(tensors)}
    data = save(tensors, metadata={"kgclip": json.dumps(card, sort_keys=True)})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    return card


def read_card(path: str | os.PathLike, fmt: str = FORMAT) -> dict:
    """The card of a model file without reading its tensors (one-line errors as :func:`load_tensors`)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such adapter model file")
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > 100 << 20 or n > path.stat().st_size - 8:
                raise ValueError("bad header length")
            header = json.loads(fh.read(n))
        card = json.loads(header["__metadata__"]["kgclip"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError):
        raise ModelError(f"{path}: not a kgclip adapter model file (damaged, truncated or another format)") from None
    if card.get("format") != fmt:
        raise ModelError(f"{path}: format {card.get('format')!r}, expected {fmt!r} (made by another kgclip version?)")
    return card


def load_tensors(path: str | os.PathLike, fmt: str = FORMAT) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, card), verified against the card's checksum."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path)
    card = read_card(path, fmt)
    try:
        tensors = load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise ModelError(f"{path}: damaged adapter model file ({e})") from None
    if tensors_digest(tensors) != card.get("sha256"):
        raise ModelError(f"{path}: damaged adapter model file (its tensors do not match the card's checksum)")
    return tensors, card


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a whole model file (the adapter part of an index's model fingerprint)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
