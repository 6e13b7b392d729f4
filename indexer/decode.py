"""Robust decoding of one image: :func:`decode_item`, a pure, picklable stage function.

item -> :class:`Decoded` (the model's input array, the image size and the content hash) or a failure
reason. It never raises for a bad file. It applies EXIF orientation, converts
palette/alpha/CMYK/16-bit/grayscale images to RGB (transparency over white),
uses JPEG draft mode to decode large JPEGs at a reduced scale, refuses images
over ``max_pixels`` before decoding them (decompression bombs) and pads extreme
aspect ratios so a 4000x1 image cannot blow up a resize.

:class:`indexer.decode_pool.DecodePool` runs it in worker processes with a time limit per file.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from retrieval.encoders.base import DEFAULT_MAX_PIXELS, check_pixels

from .sources import Item, read_bytes

DEFAULT_TIMEOUT = 30.0  # seconds per file
DEFAULT_MAX_BYTES = 512 << 20  # files larger than this are skipped without being read
DRAFT_SIZE = 448  # JPEGs decode at the smallest 1/2^k scale keeping both sides >= this
MAX_ASPECT = 8.0  # wider/taller images are padded to this ratio before the model transform


@dataclass
class Decoded:
    """The outcome of decoding one item (picklable; ``array`` is None when ``reason`` is set)."""

    item: Item
    array: np.ndarray | None = None
    width: int = 0
    height: int = 0
    sha256: str = ""
    size: int = 0
    mtime_ns: int = 0
    reason: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reason is None


def to_rgb(img):
    """Any PIL mode -> RGB; transparency is composited over white, 16-bit scaled to 8-bit."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        if hi > 255:
            arr = arr / (65535.0 if hi <= 65535 else hi) * 255.0
        arr = np.nan_to_num(np.clip(arr, 0, 255)).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "P", "RGBa", "La") or "transparency" in img.info:
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")


def _pad_aspect(img):
    from PIL import Image

    w, h = img.size
    if min(w, h) * MAX_ASPECT >= max(w, h):
        return img
    nw, nh = max(w, int(np.ceil(h / MAX_ASPECT))), max(h, int(np.ceil(w / MAX_ASPECT)))
    canvas = Image.new("RGB", (nw, nh), (127, 127, 127))
    canvas.paste(img, ((nw - w) // 2, (nh - h) // 2))
    return canvas


def decode_bytes(data: bytes, transform: Callable, max_pixels: int = DEFAULT_MAX_PIXELS):
    """bytes -> (array, width, height). Raises ValueError/OSError with a reason for bad images."""
    from PIL import Image, ImageOps

    if not data:
        raise ValueError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<svg")):
            raise ValueError("not an image (HTML/XML text)") from None
        if all(32 <= b < 127 or b in (9, 10, 13) for b in data[:256]):
            raise ValueError("not an image (text file)") from None
        raise ValueError("not a recognised image format") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ValueError(f"image has no pixels ({w}x{h})")
    check_pixels(w, h, max_pixels)
    try:
        orientation = int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a reason to skip the image
        orientation = 1
    width, height = (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # full-resolution, oriented
    if img.format == "JPEG":
        img.draft("RGB", (DRAFT_SIZE, DRAFT_SIZE))
    try:
        img.seek(0)  # animated images: the first frame
    except EOFError:
        pass
    img.load()
    img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    arr = np.asarray(transform(_pad_aspect(img)))
    if arr.dtype != np.uint8:  # pixel bytes (lite) stay bytes: a quarter of the pickle to the encoder
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise ValueError("decoded image has non-finite values")
    return arr, width, height


def decode_item(item: Item, transform: Callable, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_bytes: int = DEFAULT_MAX_BYTES) -> Decoded:
    """Read, hash and decode one item. Never raises for a bad file: the reason is in the result."""
    t0 = time.perf_counter()
    out = Decoded(item)
    try:
        data, out.size, out.mtime_ns = read_bytes(item, limit=max_bytes)
        if len(data) > max_bytes:
            raise ValueError(f"file larger than {max_bytes} bytes")
        out.sha256 = hashlib.sha256(data).hexdigest()
        out.array, out.width, out.height = decode_bytes(data, transform, max_pixels)
    except PermissionError:
        out.reason = "permission denied"
    except FileNotFoundError:
        out.reason = "file vanished before it could be read"
    except IsADirectoryError:
        out.reason = "is a folder, not an image file"
    except MemoryError:
        out.reason = "out of memory while decoding"
    except Exception as e:  # noqa: BLE001 - any decoder failure is this file's problem
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, (OSError, SyntaxError)) and not isinstance(e, ValueError):
            msg = f"cannot decode image ({msg})"
        out.reason = msg
    if out.reason:
        out.array = None
    out.seconds = time.perf_counter() - t0
    return out


# -- worker pool ---------------------------------------------------------------------
