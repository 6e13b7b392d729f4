"""Where kgclip keeps things and every ``KGCLIP_*`` environment variable it reads, in one place.

Variables (all optional):

- ``KGCLIP_CACHE``: cache folder (default ``$XDG_CACHE_HOME/kgclip`` or ``~/.cache/kgclip``)
- ``KGCLIP_INDEX``: the default INDEX of the CLI commands
- ``KGCLIP_DEVICE``: auto, cpu or cuda
- ``KGCLIP_OFFLINE`` (or ``HF_HUB_OFFLINE``): never reach a model hub
- ``KGCLIP_ALLOW_DOWNLOAD``: let a model that an index names (not the user) be downloaded
- ``KGCLIP_BACKEND``: auto, onnx or torch (the lite CNN and MiniLM on ONNX Runtime or torch)
- ``KGCLIP_SBERT_BACKEND``: auto or sentence-transformers
- ``KGCLIP_THREADS``, ``KGCLIP_ORT_STREAMS``, ``KGCLIP_ORT_CHUNKS``, ``KGCLIP_ONNX_CACHE_MB``: ONNX Runtime
- ``KGCLIP_NO_JIT``: no TorchScript freezing of the lite CNN
- ``KGCLIP_PLUGINS``: modules to import that register encoder families
- ``KGCLIP_DECODE_NICE``, ``KGCLIP_MP_START``: the build's decode workers
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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


def allow_download() -> bool:
    """Whether a model named by an index (not by the user) may be downloaded (KGCLIP_ALLOW_DOWNLOAD)."""
    return env_flag("ALLOW_DOWNLOAD")


HUB_OFFLINE_VARS = {"KGCLIP_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@contextmanager
def hub_offline() -> Iterator[None]:
    """Model hubs off limits inside the block: kgclip's :func:`offline` and the Hugging Face libraries'
    switches (read when they are imported, so an already imported ``huggingface_hub`` is switched too)."""
    saved = {k: os.environ.get(k) for k in HUB_OFFLINE_VARS}
    os.environ.update(HUB_OFFLINE_VARS)
    consts = sys.modules.get("huggingface_hub.constants")
    saved_const = getattr(consts, "HF_HUB_OFFLINE", None)
    if consts is not None:
        consts.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if consts is not None:
            consts.HF_HUB_OFFLINE = saved_const
