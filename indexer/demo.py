"""``kgclip demo`` / ``make demo``: a small, offline tour of kgclip.

It writes a handful of real, redistributable photos (scikit-image's bundled
images, plus scikit-learn's two sample photos when it is installed) as JPEG
files, builds a ``lite`` index over them (nothing is downloaded), and runs a
few searches: plain text queries, knowledge-graph expansion ("a mammal"
finds the cat and the horse through WordNet hyponyms) and one explanation.
Running it again reuses the index (unchanged files are skipped).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from retrieval.errors import KgclipError, ModelMismatch
from retrieval.render import render_table

from .build import build_index
from .index import open_searcher

# (file stem, scikit-image loader name, what it shows): all ship inside the scikit-image wheel
SKIMAGE_PHOTOS = [
    ("astronaut", "astronaut", "astronaut Eileen Collins"),
    ("cameraman", "camera", "a man with a film camera on a tripod"),
    ("chelsea", "chelsea", "Chelsea the cat"),
    ("coffee", "coffee", "a cup of coffee"),
    ("rocket", "rocket", "a rocket on the launch pad"),
    ("horse", "horse", "a horse silhouette"),
    ("motorcycle", "stereo_motorcycle", "a motorcycle"),
    ("clock", "clock", "a wall clock"),
    ("coins", "coins", "old coins"),
    ("moon", "moon", "the moon's surface"),
    ("galaxies", "hubble_deep_field", "the Hubble deep field"),
    ("brick", "brick", "a brick wall"),
    ("grass", "grass", "grass"),
    ("gravel", "gravel", "gravel"),
    ("colorwheel", "colorwheel", "a colour wheel"),
]
SKLEARN_PHOTOS = [("temple", "china.jpg", "a Chinese temple"), ("flower", "flower.jpg", "a flower")]

QUERIES = ["a cat", "a cup of coffee", "a motorbike", "a building"]
EXPAND_QUERY = "a mammal"
EXPLAIN_QUERY = "a mammal"


def demo_images(folder: str | os.PathLike) -> list[tuple[Path, str]]:
    """Write the demo photos into ``folder`` (skipping existing ones); returns (path, description)."""
    from PIL import Image

    try:
        from skimage import data
    except ImportError as e:  # pragma: no cover - scikit-image is an install requirement
        raise KgclipError(f"the demo needs scikit-image for its photos ({e}); pip install scikit-image") from None

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for stem, loader, what in SKIMAGE_PHOTOS:
        path = folder / f"{stem}.jpg"
        if not path.exists():
            try:
                arr = getattr(data, loader)()
            except Exception:  # an image that needs a download in this scikit-image version: skip it
                continue
            if isinstance(arr, tuple):  # stereo_motorcycle -> (left, right, disparity)
                arr = arr[0]
            arr = np.asarray(arr)
            if arr.dtype == bool:
                arr = np.where(arr, 0, 255).astype(np.uint8)  # the horse: black on white
            img = Image.fromarray(arr)
            img.convert("RGB").save(path, quality=90)
        out.append((path, what))
    try:
        import sklearn.datasets as skd

        img_dir = Path(skd.__file__).parent / "images"
        for stem, name, what in SKLEARN_PHOTOS:
            src, path = img_dir / name, folder / f"{stem}.jpg"
            if src.is_file():
                if not path.exists():
                    Image.open(src).convert("RGB").save(path, quality=90)
                out.append((path, what))
    except ImportError:
        pass
    return out


def run_demo(
    workdir: str | os.PathLike = ".demo",
    model: str = "lite",
    device: str | None = "auto",
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Build (or reuse) the demo index and print a tour. Returns what it ran, for tests."""
    workdir = Path(workdir)
    photos, index_dir = workdir / "photos", workdir / "index"
    images = demo_images(photos)
    echo(f"kgclip demo: {len(images)} photos (scikit-image, scikit-learn) in {_show(photos)}")
    echo(f"building a `{model}` index in {_show(index_dir)} (offline: nothing is downloaded) ...")
    t0 = time.perf_counter()
    try:
        report = build_index([str(photos)], str(index_dir), model=model, text_model=None, device=device,
                             progress=progress, quiet=True)
    except ModelMismatch:  # the demo's own index, from another model version: start it again
        echo("(the demo index was built with another model version: rebuilding it)")
        report = build_index([str(photos)], str(index_dir), model=model, text_model=None, device=device,
                             progress=progress, quiet=True, resume=False)
    build_s = time.perf_counter() - t0
    fresh = getattr(report, "added", 0)
    reused = getattr(report, "unchanged", 0)
    what = f"{fresh} new" + (f", {reused} unchanged (reused from an earlier run)" if reused else "")
    echo(f"indexed {getattr(report, 'items', len(images))} photos ({what}) in {build_s:.1f} s\n")

    ran: dict = {"index": str(index_dir), "queries": {}}
    with open_searcher(str(index_dir), expand="auto", device=device) as s:
        for q in QUERIES:
            echo(f"$ kgclip search {_show(index_dir)} {q!r} -k 3")
            res = s.search(q, k=3, expand="none")
            ran["queries"][q] = [Path(h.path).name for h in res]
            echo(render_table([res]) + "\n")

        mode = s.resolve_expand("auto")
        if mode == "none":
            echo("(the knowledge graph is not available here: skipping the expansion part)")
            return ran
        echo(f"Knowledge-graph expansion: no photo is labelled {EXPAND_QUERY!r}, but WordNet knows that")
        echo("cats and horses are mammals, and the lite model tagged each photo with ImageNet classes.")
        echo(f"Without expansion, then with it (the default, --expand auto = {mode}):\n")
        echo(f"$ kgclip search {_show(index_dir)} {EXPAND_QUERY!r} -k 3 --expand none")
        plain = s.search(EXPAND_QUERY, k=3, expand="none")
        echo(render_table([plain]) + "\n")
        echo(f"$ kgclip search {_show(index_dir)} {EXPAND_QUERY!r} -k 3 --expand {mode}")
        expanded = s.search(EXPAND_QUERY, k=3, expand=mode)
        echo(render_table([expanded]) + "\n")
        ran["expand"] = {"none": [Path(h.path).name for h in plain], mode: [Path(h.path).name for h in expanded]}

        echo("Why? --explain shows the linked entity, the expansions and what each hit matched:\n")
        echo(f"$ kgclip search {_show(index_dir)} {EXPLAIN_QUERY!r} -k 2 --explain")
        res = s.search(EXPLAIN_QUERY, k=2, explain=True)
        echo(render_table([res], explain=True) + "\n")
        ran["explain"] = [Path(h.path).name for h in res]
    echo(f"Try your own: kgclip search {_show(index_dir)} \"a clock on the wall\" --explain")
    return ran


def _show(path: Path) -> str:
    """A path as the user would type it: relative when under the current folder."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel
