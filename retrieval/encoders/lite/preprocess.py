"""lite's image side before the network: views, resizing, uint8 CHW pixel bytes, and the pixel
normalisation the Lite0 weights expect (:func:`normalise_pixels`)."""

from __future__ import annotations

import numpy as np

from .config import VIEWS


def view_box(view: str, w: int, h: int) -> tuple[int, int, int, int]:
    """Crop box (left, top, right, bottom) of a non-whole view of a ``w`` x ``h`` image (see ``VIEWS``)."""
    if view in ("start", "middle", "end"):
        s = min(w, h)
        off = int(round({"start": 0.0, "middle": 0.5, "end": 1.0}[view] * (max(w, h) - s)))
        return (off, 0, off + s, s) if w >= h else (0, off, s, off + s)
    if view in ("tl", "tr", "bl", "br"):
        x0 = w // 2 if view[1] == "r" else 0
        y0 = h // 2 if view[0] == "b" else 0
        return x0, y0, x0 + w // 2, y0 + h // 2
    raise ValueError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")


class ImagePreprocess:
    """PIL RGB -> uint8 CHW: the pixel bytes the Lite0 input is made of (see :func:`normalise_pixels`).

    The conversion to the weights' float input happens in the encoder (in the ONNX graph, or in
    torch): a decode worker then spends no CPU on it and pickles a quarter of the bytes.

    ``mode="squash"`` resizes the whole image to 224x224 (bicubic), keeping everything in
    the frame (better for retrieval of whole scenes, see benchmarks/results/lite_tuning.json);
    ``mode="crop"`` is ImageNet's evaluation transform: shorter side to 256, centre crop 224.
    With more than one of ``views`` (``"whole"`` is the frame above; the others, see :func:`view_box`,
    are squashed to 224x224) the views are stacked on the channel axis: ``[3 * len(views), 224, 224]``.
    Numpy only, picklable. ``normalise_pixels(ImagePreprocess()(img))`` is the float32 input of before.
    """

    def __init__(self, size: int = 224, crop_pct: float = 0.875, mode: str = "crop",
                 views: tuple[str, ...] = ("whole",)):
        if mode not in ("crop", "squash"):
            raise ValueError(f"unknown resize mode {mode!r}: use crop or squash")
        for v in views:
            if v not in VIEWS:
                raise ValueError(f"unknown view {v!r}: use one of {', '.join(VIEWS)}")
        if not views:
            raise ValueError("at least one view is needed")
        self.size = size
        self.mode = mode
        self.views = tuple(views)
        self.resize = int(round(size / crop_pct))

    def __call__(self, img) -> np.ndarray:
        if self.views == ("whole",):
            return self._whole(img)
        if hasattr(img, "draft") and img.format == "JPEG":  # quadrants need twice the resolution
            big = 2 if any(v in ("tl", "tr", "bl", "br") for v in self.views) else 1
            img.draft("RGB", (big * self.size, big * self.size))
        out = [self._whole(img) if v == "whole" else self._squash(img.crop(view_box(v, *img.size)))
               for v in self.views]
        return np.ascontiguousarray(np.concatenate(out, axis=0))

    def _squash(self, img) -> np.ndarray:
        from PIL import Image

        return to_chw_u8(img.resize((self.size, self.size), Image.BICUBIC))

    def _whole(self, img) -> np.ndarray:
        from PIL import Image

        if self.mode == "squash":
            if hasattr(img, "draft") and img.format == "JPEG":
                img.draft("RGB", (self.size, self.size))
            return self._squash(img)
        w, h = img.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        if hasattr(img, "draft") and img.format == "JPEG":
            img.draft("RGB", (nw, nh))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = int(round((nw - self.size) / 2.0)), int(round((nh - self.size) / 2.0))
        return to_chw_u8(img.crop((left, top, left + self.size, top + self.size)))


def to_chw_u8(img) -> np.ndarray:
    """A PIL RGB image as contiguous uint8 CHW: 0.08 ms at 224x224, 0.05 ms of it the layout change
    (keeping HWC for a Transpose in the graph would save only that, and move it onto the encode cores)."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def normalise_pixels(x: np.ndarray) -> np.ndarray:
    """Pixel bytes v (uint8, any shape) -> the Lite0 weights' float32 input (v - 127) / 128.

    Exact in float32 (v - 127 is a small integer, 128 a power of two): the same bits as the
    ``Cast -> Sub 127 -> Mul 1/128`` the exported graph starts with, and as ``to_chw`` gave before
    the transform returned bytes.
    """
    return (np.asarray(x, dtype=np.float32) - 127.0) / 128.0


def to_chw(img) -> np.ndarray:
    """A PIL RGB image as the Lite0 weights' float input: float32 CHW, (v - 127) / 128 per byte v."""
    return normalise_pixels(to_chw_u8(img))


