"""A generator of hostile files for the reliability suite (no binary fixtures are committed).

``make_hostile_tree(d)`` writes every kind into ``d`` and returns the cases:
what each file is, and whether a build must index it (``indexed``), report it
with a reason containing ``reason`` (``reported``), or may do either
(``either``: e.g. a PNG whose text chunk is a decompression bomb). Every valid
image has distinct content, so item counts can be compared exactly.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HANG_SIZE = (13, 7)  # benchmarks.reliability_hooks' fakehang encoder never returns for this image size


@dataclass
class Case:
    name: str  # path relative to the tree (str; may hold newlines and non-ASCII)
    kind: str  # what makes it hostile
    expect: str  # "indexed" | "reported" | "either" | "alias" (indexed as another path's duplicate)
    reason: str = ""  # a fragment of the reported reason
    size: tuple[int, int] | None = None  # (width, height) the index must record, oriented
    extra: dict = field(default_factory=dict)


def noise(seed: int, w: int, h: int, mode: str = "RGB"):
    from PIL import Image

    rng = np.random.default_rng(seed)
    ch = {"RGB": 3, "RGBA": 4, "CMYK": 4, "LA": 2}.get(mode)
    shape = (h, w, ch) if ch else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def encode(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_bomb(w: int = 100_000, h: int = 100_000) -> bytes:
    """A tiny PNG that declares w x h pixels (10 gigapixels by default)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def gif_screen_bomb() -> bytes:
    """A GIF whose logical screen is 65535 x 65535 around a 1x1 frame."""
    return (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
            + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def png_text_bomb(seed: int) -> bytes:
    """A valid 8x8 PNG carrying a zTXt chunk that inflates to 64 MiB."""
    raw = encode(noise(seed, 8, 8), "PNG")
    body = b"Comment\0\0" + zlib.compress(b"A" * (64 << 20), 9)
    return raw[:33] + png_chunk(b"zTXt", body) + raw[33:]


def png_bad_crc(seed: int) -> bytes:
    raw = bytearray(encode(noise(seed, 16, 16), "PNG"))
    raw[29] ^= 0xFF  # inside IHDR's CRC
    return bytes(raw)


def jpeg_bad_exif(seed: int) -> bytes:
    """A JPEG with an APP1 'Exif' segment full of garbage."""
    raw = encode(noise(seed, 20, 20), "JPEG")
    junk = b"Exif\0\0" + b"MM\0*" + bytes(np.random.default_rng(seed).integers(0, 256, 64, dtype=np.uint8))
    return raw[:2] + b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk + raw[2:]


def make_hostile_tree(d: Path, unreadable: bool = True) -> list[Case]:
    from PIL import Image

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def put(name: str, data: bytes | None, kind: str, expect: str, reason: str = "", size=None, **extra):
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            p.write_bytes(data)
        cases.append(Case(name, kind, expect, reason, size, extra))
        return p

    # -- valid, in every awkward shape ----------------------------------------------------------
    put("plain.jpg", encode(noise(1, 64, 48), "JPEG", quality=90), "plain JPEG", "indexed", size=(64, 48))
    put("png named.jpg", encode(noise(2, 30, 20), "PNG"), "wrong extension (PNG bytes, .jpg)", "indexed",
        size=(30, 20))
    put("jpeg named.png", encode(noise(3, 20, 30), "JPEG"), "wrong extension (JPEG bytes, .png)", "indexed")
    put("UPPER.JPG", encode(noise(4, 20, 20), "JPEG"), "upper-case extension", "indexed")
    put("one_pixel.png", encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "1x1 image", "indexed",
        size=(1, 1))
    put("wide.png", encode(noise(5, 4000, 1), "PNG"), "4000x1 image", "indexed", size=(4000, 1))
    put("tall.png", encode(noise(6, 1, 4000), "PNG"), "1x4000 image", "indexed", size=(1, 4000))
    put("cmyk.jpg", encode(noise(7, 40, 30, "CMYK"), "JPEG"), "CMYK JPEG", "indexed", size=(40, 30))
    put("sixteen.png", encode(Image.fromarray(np.random.default_rng(8).integers(0, 65535, (30, 40),
                                                                                  dtype=np.uint16)), "PNG"),
        "16-bit grayscale PNG", "indexed", size=(40, 30))
    put("float.tiff", encode(Image.fromarray(np.random.default_rng(9).random((12, 14), dtype=np.float32) * 1e6),
                             "TIFF"), "32-bit float TIFF", "indexed", size=(14, 12))
    pal = noise(10, 32, 32).convert("P", palette=Image.ADAPTIVE, colors=16)
    put("palette_alpha.png", encode(pal, "PNG", transparency=0), "palette with transparency", "indexed")
    put("gray_alpha.png", encode(noise(11, 16, 16, "LA"), "PNG"), "grayscale + alpha", "indexed")
    put("rgba.png", encode(noise(12, 16, 16, "RGBA"), "PNG"), "RGBA", "indexed")
    frames = [noise(13 + i, 24, 24).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    put("animated.gif", buf.getvalue(), "animated GIF", "indexed", size=(24, 24))
    frames = [noise(16 + i, 24, 24) for i in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=50)
    put("animated.webp", buf.getvalue(), "animated WebP", "indexed", size=(24, 24))
    ex = Image.Exif()
    ex[0x0112] = 6  # displayed rotated 90 degrees: 60x20 pixels stored, 20x60 shown
    put("exif_rotated.jpg", encode(noise(18, 60, 20), "JPEG", exif=ex.tobytes()), "EXIF-rotated JPEG",
        "indexed", size=(20, 60))
    put("bad_exif.jpg", jpeg_bad_exif(19), "garbage EXIF block", "indexed", size=(20, 20))
    put("progressive.jpg", encode(noise(20, 40, 40), "JPEG", progressive=True), "progressive JPEG", "indexed")
    grad = Image.fromarray(np.tile(np.linspace(0, 255, 4000, dtype=np.uint8)[None, :, None], (3000, 1, 3)))
    put("large.jpg", encode(grad, "JPEG", quality=70), "12 MP JPEG (draft-mode decode)", "indexed",
        size=(4000, 3000))
    put("café ü 写真 🐱.png", encode(noise(21, 10, 10), "PNG"), "unicode name", "indexed")
    put("name with  spaces .png", encode(noise(22, 10, 10), "PNG"), "spaces in the name", "indexed")
    put("new\nline.png", encode(noise(23, 10, 10), "PNG"), "newline in the name", "indexed")
    put("-rf.png", encode(noise(24, 10, 10), "PNG"), "name starting with a dash", "indexed")
    put(".hidden.png", encode(noise(25, 10, 10), "PNG"), "hidden file", "indexed")
    put("folder.jpg/inside.png", encode(noise(26, 10, 10), "PNG"), "image inside a folder named x.jpg",
        "indexed")
    (d / "empty_folder.png").mkdir()
    os.symlink("plain.jpg", d / "link to plain.jpg")
    cases.append(Case("link to plain.jpg", "symlink to a valid image", "alias"))

    # -- hostile: must be reported with a reason ------------------------------------------------
    put("empty.jpg", b"", "zero bytes", "reported", "empty file")
    put("truncated.jpg", encode(noise(30, 256, 256), "JPEG")[:1500], "truncated JPEG", "reported", "truncated")
    put("truncated.png", encode(noise(31, 128, 128), "PNG")[:600], "truncated PNG", "reported", "")
    put("page.jpg", b"<!DOCTYPE html><html><body>404 not found</body></html>", "HTML saved as .jpg",
        "reported", "HTML")
    put("notes.jpg", b"my holiday notes\n" * 20, "text saved as .jpg", "reported", "text file")
    put("drawing.png", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG as .png",
        "reported", "not an image")
    put("random.png", np.random.default_rng(32).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "random bytes", "reported", "not a recognised image")
    put("bomb.png", png_header_bomb(), "decompression bomb (10 gigapixel PNG header)", "reported",
        "decompression bomb")
    put("bomb.gif", gif_screen_bomb(), "decompression bomb (65535x65535 GIF screen)", "reported",
        "decompression bomb")
    put("text_bomb.png", png_text_bomb(33), "PNG text chunk inflating to 64 MiB", "either")
    put("bad_crc.png", png_bad_crc(34), "PNG with a broken CRC", "reported", "")
    put("huge.jpg", None, "sparse file over the size limit", "reported", "larger than")
    with open(d / "huge.jpg", "wb") as fh:
        fh.truncate((512 << 20) + 1)
    os.symlink(d / "does-not-exist.jpg", d / "broken_link.jpg")
    cases.append(Case("broken_link.jpg", "broken symlink", "reported", "broken symlink"))
    os.symlink("self_loop.jpg", d / "self_loop.jpg")
    cases.append(Case("self_loop.jpg", "symlink pointing at itself", "reported", "symlink loop"))
    os.symlink("loop_b.jpg", d / "loop_a.jpg")
    os.symlink("loop_a.jpg", d / "loop_b.jpg")
    cases.append(Case("loop_a.jpg", "two symlinks pointing at each other", "reported", "symlink loop"))
    cases.append(Case("loop_b.jpg", "two symlinks pointing at each other", "reported", "symlink loop"))
    (d / "sub").mkdir()
    os.symlink("..", d / "sub" / "up")  # a folder loop: walked once, never followed forever
    os.mkfifo(d / "fifo.jpg")  # opening it would block forever
    cases.append(Case("fifo.jpg", "a FIFO named .jpg (opening it blocks)", "reported", "not a regular file"))
    os.symlink("/dev/zero", d / "zero.jpg")
    cases.append(Case("zero.jpg", "symlink to /dev/zero", "reported", "not a regular file"))
    bad = os.fsencode(str(d)) + b"/latin1-caf\xe9.png"
    with open(bad, "wb") as fh:
        fh.write(encode(noise(35, 10, 10), "PNG"))
    cases.append(Case("latin1-caf\ufffd.png", "file name that is not UTF-8", "reported", "not valid UTF-8"))
    put("hang.png", encode(noise(36, *HANG_SIZE), "PNG"), "a file whose decode never returns", "reported",
        "timed out")
    if unreadable and os.geteuid() != 0:
        p = put("unreadable.jpg", encode(noise(37, 10, 10), "JPEG"), "no read permission", "reported",
                "permission denied")
        p.chmod(0)
    # mid-build: the test removes / extends these between the scan and the read
    put("vanish.png", encode(noise(38, 10, 10), "PNG"), "deleted mid-build", "reported", "vanished")
    full = encode(noise(39, 64, 64), "PNG")
    put("grow.png", full[: len(full) * 6 // 10], "still being written mid-build", "reported", "", full=full)
    return cases


def kinds(cases: list[Case]) -> int:
    return len({c.kind for c in cases})
