"""Encoders by name: a registry of spec families, resolved without loading weights.

A spec is ``family:rest`` (``open_clip:ViT-B-32/laion2b_s34b_b79k``,
``sbert:minilm``) or a bare name (``lite``). Importing this package does not
import torch; the family's module is imported when a spec is resolved and the
weights load on first encode.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from ..errors import ModelError
from ..paths import env
from .base import Encoder, ImageBatch, l2_normalize, load_image

__all__ = [
    "Encoder",
    "ImageBatch",
    "get_encoder",
    "list_encoders",
    "register",
    "parse_spec",
    "l2_normalize",
    "load_image",
    "DEFAULT_MODEL",
    "DEFAULT_TEXT_MODEL",
]

DEFAULT_MODEL = "lite"
DEFAULT_TEXT_MODEL = "sbert:minilm"


@dataclass(frozen=True)
class Family:
    name: str
    target: str | Callable[..., Encoder]  # "module:Class" (imported lazily) or a factory
    example: str
    description: str
    aliases: tuple[str, ...] = ()

    def factory(self) -> Callable[..., Encoder]:
        if callable(self.target):
            return self.target
        mod, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(mod), cls)


_FAMILIES: dict[str, Family] = {}
_ALIASES: dict[str, str] = {}


def register(family: Family) -> None:
    """Register a spec family (replaces one of the same name)."""
    _FAMILIES[family.name] = family
    for a in (family.name, *family.aliases):
        _ALIASES[a.lower()] = family.name


@contextmanager
def registered(family: Family) -> Iterator[None]:
    """Register a family for the duration of a block (tests use this for fakes)."""
    saved_f, saved_a = dict(_FAMILIES), dict(_ALIASES)
    register(family)
    try:
        yield
    finally:
        _FAMILIES.clear()
        _FAMILIES.update(saved_f)
        _ALIASES.clear()
        _ALIASES.update(saved_a)


_PLUGINS_LOADED: set[str] = set()


def _load_plugins() -> None:
    """Import the modules named in ``KGCLIP_PLUGINS`` (comma-separated); each registers families."""
    for name in filter(None, (m.strip() for m in env("PLUGINS").split(","))):
        if name not in _PLUGINS_LOADED:
            _PLUGINS_LOADED.add(name)
            try:
                importlib.import_module(name)
            except ImportError as e:
                raise ModelError(f"KGCLIP_PLUGINS names {name!r}, which cannot be imported: {e}") from None


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into (family, rest); ``"lite"`` -> ("lite", "")."""
    _load_plugins()
    spec = (spec or "").strip()
    if not spec:
        raise ModelError("empty model spec: try `kgclip models` for the list")
    head, sep, rest = spec.partition(":")
    fam = _ALIASES.get(head.lower())
    if fam is None:
        known = ", ".join(sorted(_FAMILIES))
        raise ModelError(f"unknown model spec {spec!r}: families are {known} (see `kgclip models`)")
    return fam, rest if sep else ""


def canonical_spec(spec: str) -> str:
    fam, rest = parse_spec(spec)
    return f"{fam}:{rest}" if rest else fam


_CACHE: dict[tuple[str, str, int], Encoder] = {}


def get_encoder(spec: str, device: str | None = "auto", batch_size: int = 32, cache: bool = True) -> Encoder:
    """Resolve a spec to an Encoder instance (weights are not loaded yet).

    Instances are shared per (spec, device, batch size) so a warm process loads
    each model once.
    """
    fam, rest = parse_spec(spec)
    key = (canonical_spec(spec), device or "auto", batch_size)
    if cache and key in _CACHE:
        return _CACHE[key]
    enc = _FAMILIES[fam].factory()(key[0], rest, device=device, batch_size=batch_size)
    if cache:
        _CACHE[key] = enc
    return enc


def clear_cache() -> None:
    _CACHE.clear()


def list_encoders() -> list[dict[str, str]]:
    """Every spec family with an example spec and a description."""
    _load_plugins()
    return [
        {"family": f.name, "example": f.example, "description": f.description, "aliases": ", ".join(f.aliases)}
        for f in sorted(_FAMILIES.values(), key=lambda f: f.name)
    ]


register(
    Family(
        "lite",
        "retrieval.encoders.lite:LiteEncoder",
        "lite",
        "offline default: EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2, bridged through WordNet (ConSE); "
        "lite:tiles, lite:tiles8 add image views; lite:mpnet uses all-mpnet-base-v2 (make mpnet)",
    )
)
register(
    Family(
        "open_clip",
        "retrieval.encoders.openclip:OpenClipEncoder",
        "open_clip:ViT-B-32/laion2b_s34b_b79k",
        "any open_clip model: MODEL/PRETRAINED_TAG, MODEL@CHECKPOINT(.pt/.bin/.safetensors), local-dir:DIR",
        aliases=("openclip", "clip"),
    )
)
register(
    Family(
        "sbert",
        "retrieval.encoders.sbert:SbertEncoder",
        "sbert:minilm",
        "sentence-transformers text encoder (name or path); minilm = all-MiniLM-L6-v2 shipped offline, "
        "mpnet = all-mpnet-base-v2 from its PyPI parts",
        aliases=("sentence-transformers", "st"),
    )
)
register(
    Family(
        "adapter",
        "retrieval.learn.encoder:AdapterEncoder",
        "adapter:f8k.safetensors",
        "a trained adapter (kgclip train adapter) on a base model's frozen towers, gated with its "
        "zero-shot scores",
    )
)
