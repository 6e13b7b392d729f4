"""Robust decode: every image kind to RGB model input, hostile files to reasons, a bounded time per file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.decode import decode_item, to_rgb
from indexer.decode_pool import DecodePool
from indexer.sources import Item, Skip, iter_folder
from tests.corpus import make_hostile_corpus, png_bytes
from benchmarks.fakes import SmallPreprocess

REPO = Path(__file__).resolve().parents[1]


class SizeTransform:
    """Records the decoded RGB image's size and mean (picklable)."""

    def __call__(self, img):
        assert img.mode == "RGB"
        a = np.asarray(img, np.float32)
        return np.array([img.size[0], img.size[1], a.mean()], np.float32)


class SleepyTransform:
    """Hangs on images of one width: stands in for a decoder stuck on a hostile file."""

    def __init__(self, width: int):
        self.width = width

    def trap(self):
        time.sleep(3600)

    def __call__(self, img):
        if img.size[0] == self.width:
            self.trap()
        return SmallPreprocess()(img)


class CrashingTransform(SleepyTransform):
    """Kills its process on images of one width instead: a native decoder that segfaults."""

    def trap(self):
        os._exit(139)


class NiceTransform:
    """Reports the niceness of the process it runs in (picklable)."""

    def __call__(self, img):
        import os

        return np.array([os.nice(0)], np.float32)


@pytest.mark.parametrize("env, added", [(None, 0), ("0", 0), ("3", 3), ("x", 0)])
def test_decode_workers_priority(tmp_path, monkeypatch, env, added):
    """Workers add KGCLIP_DECODE_NICE (default DECODE_NICE, 0) to the build's niceness."""
    import os

    from PIL import Image

    if env is None:
        monkeypatch.delenv("KGCLIP_DECODE_NICE", raising=False)
    else:
        monkeypatch.setenv("KGCLIP_DECODE_NICE", env)
    p = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(p)
    with DecodePool(NiceTransform(), workers=1) as pool:
        (out,) = list(pool.imap([Item(str(p), str(p))]))
    assert out.ok and int(out.array[0]) == min(19, os.nice(0) + added)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    valid, invalid = make_hostile_corpus(d, bomb_pixels=4_000_000)
    return d, valid, invalid


def test_hostile_corpus_valid_decode_and_invalid_reported(corpus):
    d, valid, invalid = corpus
    seen_ok, seen_bad = set(), {}
    for it in iter_folder(str(d)):
        rel = it.key[len(str(d)) + 1 :]
        if isinstance(it, Skip):
            seen_bad[rel] = it.reason
            continue
        r = decode_item(it, SmallPreprocess(), max_pixels=4_000_000)
        if r.ok:
            assert r.array.shape == (3, 8, 8) and r.array.dtype == np.float32 and np.isfinite(r.array).all()
            assert len(r.sha256) == 64 and r.width >= 1 and r.height >= 1
            seen_ok.add(rel)
        else:
            seen_bad[rel] = r.reason
    assert seen_ok == set(valid)
    assert set(seen_bad) == set(invalid)
    for name, fragment in invalid.items():
        assert fragment in seen_bad[name], (name, seen_bad[name])


def test_exif_orientation_and_sizes(corpus):
    d, _, _ = corpus
    r = decode_item(Item(str(d / "exif_rotated.jpg"), str(d / "exif_rotated.jpg")), SizeTransform())
    assert (r.width, r.height) == (20, 60)
    assert tuple(r.array[:2]) == (20, 60)  # the model sees the upright image
    thin = decode_item(Item(str(d / "thin.png"), str(d / "thin.png")), SizeTransform())
    assert (thin.width, thin.height) == (4000, 1)
    assert thin.array[0] == 4000 and thin.array[1] == 500  # padded to an 8:1 aspect before the transform


def test_pixel_bytes_stay_bytes_and_other_outputs_become_float32(tmp_path):
    """A uint8 transform output (lite's) reaches the encoder as uint8; anything else as float32,
    with non-finite values refused."""
    from PIL import Image

    p = tmp_path / "x.png"
    Image.new("RGB", (8, 6), (10, 200, 30)).save(p)
    item = Item(str(p), str(p))
    u8 = decode_item(item, lambda img: np.asarray(img).transpose(2, 0, 1))
    assert u8.array.dtype == np.uint8 and u8.array.shape == (3, 6, 8) and u8.array[1, 0, 0] == 200
    f64 = decode_item(item, lambda img: np.asarray(img, np.float64))
    assert f64.array.dtype == np.float32 and f64.array[0, 0, 1] == 200
    bad = decode_item(item, lambda img: np.full((2,), np.nan))
    assert bad.array is None and bad.reason == "decoded image has non-finite values"


def test_modes_become_rgb_with_white_behind_transparency():
    from PIL import Image

    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)
    sixteen = Image.fromarray(np.full((2, 2), 65535, np.uint16))
    assert to_rgb(sixteen).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).mode == "RGB"
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_large_jpeg_decodes_in_draft_mode(tmp_path):
    from PIL import Image

    p = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(p, quality=80)
    r = decode_item(Item(str(p), str(p)), SizeTransform())
    assert (r.width, r.height) == (4000, 3000)  # reported at full resolution
    assert r.array[0] == 1000 and r.array[1] == 750  # decoded at 1/4 scale (>= 448 px kept)


def test_file_growing_or_vanishing_is_handled(tmp_path):
    p = tmp_path / "gone.png"
    r = decode_item(Item(str(p), str(p)), SmallPreprocess())
    assert not r.ok and "vanished" in r.reason
    p.write_bytes(png_bytes(1))
    r = decode_item(Item(str(p), str(p), size=10), SmallPreprocess())
    assert r.ok and r.size == len(png_bytes(1))  # the size as read, not as scanned


def test_pool_preserves_order_and_times_out_a_hanging_file(tmp_path):
    from PIL import Image

    items = []
    for w in (10, 11, 99, 12, 13):
        p = tmp_path / f"{w}.png"
        Image.new("RGB", (w, 10), (w, w, w)).save(p)
        items.append(Item(str(p), str(p)))
    with DecodePool(SleepyTransform(99), workers=1, timeout=3.0) as pool:
        t0 = time.monotonic()
        out = list(pool.imap(items))
        elapsed = time.monotonic() - t0
    assert [o.item.key for o in out] == [i.key for i in items]
    assert [o.ok for o in out] == [True, True, False, True, True]
    assert "timed out" in out[2].reason
    assert pool.restarts == 1
    assert elapsed < 60  # bounded: not the transform's hour


@pytest.mark.parametrize("workers,start", [(1, "fork"), (2, "fork"), (2, "spawn")])
def test_pool_reports_a_file_that_kills_its_decoder_at_once_and_goes_on(tmp_path, workers, start):
    """A worker that dies (a native decoder crash) is noticed when its pipe closes, not after the
    per-file timeout: that file is reported, the items queued behind it go to a new worker, in order."""
    from PIL import Image

    items = []
    for w in (10, 11, 77, 12, 13, 14, 15, 77, 16):
        p = tmp_path / f"{w}-{len(items)}.png"
        Image.new("RGB", (w, 10), (w, w, w)).save(p)
        items.append(Item(str(p), str(p)))
    with DecodePool(CrashingTransform(77), workers=workers, timeout=120.0, window=4, start_method=start) as pool:
        t0 = time.monotonic()
        out = list(pool.imap(items))
        elapsed = time.monotonic() - t0
    assert [o.item.key for o in out] == [i.key for i in items]
    assert [o.ok for o in out] == [w != 77 for w in (10, 11, 77, 12, 13, 14, 15, 77, 16)]
    assert all("crashed" in o.reason for o in out if not o.ok)
    assert [o.width for o in out if o.ok] == [10, 11, 12, 13, 14, 15, 16]
    assert pool.restarts == 2 and elapsed < 60  # not the 120 s timeout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_decoder_stuck_on_a_file_dies_with_a_killed_build(tmp_path):
    """SIGKILL of the build (no cleanup runs) must not leave its decode worker hanging on a file."""
    from PIL import Image

    p = tmp_path / "hang.png"
    Image.new("RGB", (99, 10)).save(p)
    code = (
        "import sys, threading\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from indexer.decode_pool import DecodePool\n"
        "from indexer.sources import Item\n"
        "from tests.test_decode import SleepyTransform\n"
        "pool = DecodePool(SleepyTransform(99), workers=1, timeout=600)\n"
        f"it = pool.imap([Item({str(p)!r}, {str(p)!r})])\n"
        "threading.Timer(1, lambda: print(pool._procs[0].proc.pid, flush=True)).start()\n"
        "next(it)\n"
    )
    build = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        worker = int(build.stdout.readline())
        assert _alive(worker)
    finally:
        build.kill()
        build.wait()
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
