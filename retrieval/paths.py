"""Where kgclip keeps things and every ``KGCLIP_*`` environment variable it reads, in one place.

Variables (all optional):

- ``KGCLIP_CACHE``: cache folder (default ``$XDG_CACHE_HOME/kgclip`` or ``~/.cache/kgclip``)
- ``KGCLIP_INDEX``: the default INDEX of the CLI commands
- ``KGCLIP_DEVICE``: auto, cpu or cuda
- ``KGCLIP_OFFLINE`` (or ``HF_HUB_OFFLINE``): never reach a model hub
- ``KGCLIP_BACKEND``: auto, onnx or torch (the lite CNN and MiniLM on ONNX Runtime or torch)
- ``KGCLIP_SBERT_BACKEND``: auto or sentence-transformers
- ``KGCLIP_THREADS``, ``KGCLIP_ORT_STREAMS``, ``KGCLIP_ORT_CHUNKS``, ``KGCLIP_ONNX_CACHE_MB``: ONNX Runtime
- ``KGCLIP_NO_JIT``: no TorchScript freezing of the lite CNN
- ``KGCLIP_PLUGINS``: modules to import that register encoder families
- ``KGCLIP_DECODE_NICE``, ``KGCLIP_MP_START``: the build's decode workers
"""

from __future__ import annotations

import os
from pathlib import Path


def env(name: str, default: str = "") -> str:
    """``KGCLIP_<name>`` (``name`` given without the prefix), stripped; ``default`` when unset."""
    return os.environ.get(f"KGCLIP_{name}", default).strip()


def env_flag(name: str) -> bool:
    """A ``KGCLIP_<name>`` switch: set to anything but "" or "0"."""
    return env(name) not in ("", "0")


def env_int(name: str) -> int | None:
    """``KGCLIP_<name>`` as a non-negative integer (None when unset or not one)."""
    v = env(name)
    return int(v) if v.isdigit() else None


def cache_dir() -> Path:
    """kgclip's cache folder: exported ONNX graphs, class tables, KG embeddings, unpacked models."""
    root = os.environ.get("KGCLIP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kgclip"
    )
    return Path(root)


def offline() -> bool:
    """Whether model hubs are off limits (KGCLIP_OFFLINE or HF_HUB_OFFLINE)."""
    return env_flag("OFFLINE") or os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0")


def default_device() -> str:
    """KGCLIP_DEVICE, else auto."""
    return env("DEVICE").lower() or "auto"
