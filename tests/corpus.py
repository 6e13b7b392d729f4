"""Generated test corpora (no binary fixtures): valid images of many kinds plus hostile files.

``make_hostile_corpus(dir)`` returns ``(valid, invalid)``: the file names that
must be indexed, and a dict name -> expected reason fragment for the ones that
must be reported. Every valid image has distinct content (no accidental
duplicates) so tests can compare item counts exactly.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np


def _noise(seed: int, w: int, h: int, mode: str = "RGB"):
    from PIL import Image

    rng = np.random.default_rng(seed)
    ch = {"RGB": 3, "RGBA": 4, "CMYK": 4}.get(mode)
    shape = (h, w, ch) if ch else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def jpeg_bytes(seed: int = 0, w: int = 64, h: int = 48, **kw) -> bytes:
    buf = io.BytesIO()
    _noise(seed, w, h).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def png_bytes(seed: int = 0, w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    _noise(seed, w, h).save(buf, "PNG")
    return buf.getvalue()


def make_hostile_corpus(d: Path, bomb_pixels: int = 4_000_000) -> tuple[list[str], dict[str, str]]:
    from PIL import Image

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    valid: list[str] = []
    invalid: dict[str, str] = {}

    def ok(name, writer):
        writer(d / name)
        valid.append(name)

    def bad(name, reason, writer):
        writer(d / name)
        invalid[name] = reason

    ok("plain.jpg", lambda p: p.write_bytes(jpeg_bytes(1)))
    ok("plain.png", lambda p: p.write_bytes(png_bytes(2)))
    ok("café photo ü.png", lambda p: p.write_bytes(png_bytes(3)))
    ok("new\nline.png", lambda p: p.write_bytes(png_bytes(4)))
    ok("cmyk.jpg", lambda p: _noise(5, 40, 30, "CMYK").save(p, "JPEG"))
    ok("sixteen.png", lambda p: Image.fromarray(
        np.random.default_rng(6).integers(0, 65535, (30, 40), dtype=np.uint16)).save(p))
    ok("gray.png", lambda p: _noise(7, 33, 21, "L").save(p))

    def palette_alpha(p):
        im = _noise(8, 32, 32).convert("P", palette=Image.ADAPTIVE, colors=16)
        im.info["transparency"] = 0
        im.save(p, transparency=0)

    ok("palette_alpha.png", palette_alpha)
    ok("rgba.png", lambda p: _noise(9, 30, 30, "RGBA").save(p))

    def gif(p):
        frames = [_noise(10 + i, 24, 24).convert("P") for i in range(3)]
        frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)

    ok("animated.gif", gif)

    def webp(p):
        frames = [_noise(20 + i, 24, 24) for i in range(2)]
        frames[0].save(p, "WEBP", save_all=True, append_images=frames[1:], duration=50)

    ok("animated.webp", webp)

    def exif_rotated(p):
        ex = Image.Exif()
        ex[0x0112] = 6  # rotate 90 degrees clockwise on display
        _noise(30, 60, 20).save(p, "JPEG", exif=ex.tobytes())

    ok("exif_rotated.jpg", exif_rotated)
    ok("one_pixel.png", lambda p: Image.new("RGB", (1, 1), (200, 10, 10)).save(p))
    ok("thin.png", lambda p: _noise(31, 4000, 1).save(p))
    ok("tall.png", lambda p: _noise(32, 1, 3000).save(p))
    ok("png_named.jpg", lambda p: p.write_bytes(png_bytes(33)))
    ok("bitmap.bmp", lambda p: _noise(34, 20, 20).save(p, "BMP"))
    ok("scan.tiff", lambda p: _noise(35, 20, 20).save(p, "TIFF"))

    bad("empty.jpg", "empty file", lambda p: p.write_bytes(b""))
    bad("truncated.jpg", "truncated", lambda p: p.write_bytes(jpeg_bytes(40, 256, 256)[:1500]))
    bad("truncated.png", "", lambda p: p.write_bytes(png_bytes(41, 128, 128)[:600]))
    bad("notes.jpg", "text file", lambda p: p.write_text("these are my holiday notes\n" * 10))
    bad("page.jpg", "HTML", lambda p: p.write_text("<!DOCTYPE html><html><body>404</body></html>"))
    bad("random.png", "not a recognised image", lambda p: p.write_bytes(
        np.random.default_rng(42).integers(0, 256, 4096, dtype=np.uint8).tobytes()))
    side = int(np.sqrt(bomb_pixels)) + 64
    bad("bomb.png", "decompression bomb", lambda p: Image.new("1", (side, side)).save(p))
    bad("broken_link.jpg", "broken symlink", lambda p: os.symlink(d / "does-not-exist.jpg", p))
    bad("loop_link.jpg", "symlink loop", lambda p: os.symlink(p, p))
    if os.geteuid() != 0:
        def unreadable(p):
            p.write_bytes(jpeg_bytes(43))
            p.chmod(0)

        bad("unreadable.jpg", "permission denied", unreadable)
    # a folder named like an image, and a folder symlink loop: walked, never indexed or looped
    (d / "folder.jpg").mkdir()
    (d / "folder.jpg" / "inner.png").write_bytes(png_bytes(44))
    valid.append("folder.jpg/inner.png")
    (d / "sub").mkdir()
    (d / "sub" / "deep.png").write_bytes(png_bytes(45))
    valid.append("sub/deep.png")
    os.symlink(d, d / "sub" / "up")  # sub/up -> the corpus root: a loop
    return valid, invalid


def write_captions_csv(path: Path, rows) -> Path:
    """A captions manifest (``image,caption`` header) with one row per ``(image path, caption)``."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    return path
