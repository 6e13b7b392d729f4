"""Captioned image datasets: (image, caption) pairs read in place from CSV/JSONL manifests, COCO captions
JSON or a Flickr ``image#n<TAB>caption`` file, into a :class:`CaptionDataset`.

The readers ``kgclip bench`` and ``kgclip train`` share (benchmarks.datasets re-exports them). Standard
split files beside the captions (``train.txt``, ``dev.txt``, ``test.txt``: one image name a line, as
Flickr8k ships them) are read by :func:`named_split`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SourceError, UsageError
from ..text import read_jsonl_rows

SPLIT_FILES = ("train", "dev", "test")


@dataclass
class CaptionDataset:
    """Images with one or more captions each. ``caption_image[j]`` is the image index of caption j."""

    name: str
    images: list[Path]
    captions: list[str]
    caption_image: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.caption_image = np.asarray(self.caption_image, dtype=np.int64)
        if len(self.captions) != len(self.caption_image):
            raise ValueError("captions and caption_image differ in length")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, image_indices, name: str | None = None) -> "CaptionDataset":
        """The images at ``image_indices`` (in that order) with their captions."""
        image_indices = [int(i) for i in image_indices]
        remap = {old: new for new, old in enumerate(image_indices)}
        keep = [j for j, i in enumerate(self.caption_image) if int(i) in remap]
        return CaptionDataset(
            name or self.name,
            [self.images[i] for i in image_indices],
            [self.captions[j] for j in keep],
            np.array([remap[int(self.caption_image[j])] for j in keep], dtype=np.int64),
            dict(self.meta),
        )

    def split(self, part: str) -> "CaptionDataset":
        """``train`` or ``test`` half of the split protocol (see :func:`split_names`)."""
        if part not in ("train", "test", "all"):
            raise UsageError(f"unknown split {part!r}: use train, test or all")
        if part == "all":
            return self
        parts = split_names([p.name for p in self.images])
        idx = [i for i, p in enumerate(self.images) if parts[p.name] == part]
        return self.subset(idx, f"{self.name}-{part}")

    def image_captions(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.images]
        for j, i in enumerate(self.caption_image):
            out[int(i)].append(j)
        return out


def stable_hash(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8")).hexdigest()


def split_names(names: list[str], test_fraction: float = 0.2) -> dict[str, str]:
    """Exact-size split: the ``round(test_fraction*n)`` names with the smallest SHA-1 are ``test``."""
    order = sorted(names, key=stable_hash)
    n_test = int(round(test_fraction * len(names)))
    return {n: ("test" if r < n_test else "train") for r, n in enumerate(order)}


def _resolve(root: Path, name: str, where: str) -> Path:
    p = Path(name)
    if not p.is_absolute():
        for cand in (root / p, root / "images" / p):
            if cand.exists():
                return cand
        p = root / p
    return p


def _group(pairs: list[tuple[str, str]], root: Path, where: str, name: str) -> CaptionDataset:
    if not pairs:
        raise SourceError(f"{where}: no captions found")
    order: dict[str, int] = {}
    caps, cap_img = [], []
    for img, cap in pairs:
        i = order.setdefault(img, len(order))
        caps.append(cap.strip())
        cap_img.append(i)
    images = [_resolve(root, n, where) for n in order]
    return CaptionDataset(name, images, caps, np.array(cap_img, dtype=np.int64), {"source": str(where)})


IMAGE_COLUMNS = ("image", "path", "file", "filepath", "file_name", "filename", "image_path")
CAPTION_COLUMNS = ("caption", "captions", "text", "sentence", "raw")


def _pick(cols, wanted, where, what):
    low = {c.lower().strip(): c for c in cols if c}
    for w in wanted:
        if w in low:
            return low[w]
    raise SourceError(f"{where}: no {what} column (looked for {', '.join(wanted)}; found {', '.join(cols)})")


def _caption_list(value) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value if str(v).strip()]
    s = str(value)
    if s.startswith("[") and s.endswith("]"):
        try:
            v = json.loads(s)
            if isinstance(v, list):
                return [str(x) for x in v if str(x).strip()]
        except json.JSONDecodeError:
            pass
    return [s] if s.strip() else []


def load_csv(path, image_root=None) -> CaptionDataset:
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    pairs = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise SourceError(f"{path}: empty CSV (expected a header with image and caption columns)")
        ic = _pick(reader.fieldnames, IMAGE_COLUMNS, path, "image")
        cc = _pick(reader.fieldnames, CAPTION_COLUMNS, path, "caption")
        for line, row in enumerate(reader, start=2):
            if not row.get(ic):
                raise SourceError(f"{path}:{line}: empty image column {ic!r}")
            for c in _caption_list(row.get(cc) or ""):
                pairs.append((row[ic], c))
    return _group(pairs, root, str(path), path.parent.name)


def load_jsonl(path, image_root=None) -> CaptionDataset:
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    pairs = []
    for line, row in read_jsonl_rows(path):
        ic = _pick(list(row), IMAGE_COLUMNS, f"{path}:{line}", "image")
        cc = _pick(list(row), CAPTION_COLUMNS, f"{path}:{line}", "caption")
        for c in _caption_list(row[cc]):
            pairs.append((row[ic], c))
    return _group(pairs, root, str(path), path.parent.name)


def load_coco(path, image_root=None) -> CaptionDataset:
    """COCO captions JSON: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``."""
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise SourceError(f"{path}: not a COCO captions file (needs 'images' and 'annotations')")
    files = {im["id"]: im["file_name"] for im in data["images"]}
    pairs = []
    for k, ann in enumerate(data["annotations"]):
        if ann.get("image_id") not in files:
            raise SourceError(f"{path}: annotation {k} refers to unknown image_id {ann.get('image_id')!r}")
        pairs.append((files[ann["image_id"]], ann["caption"]))
    # images without captions are kept out: recall needs at least one caption per image
    return _group(pairs, root, str(path), path.parent.name)


def load_flickr(path, image_root=None) -> CaptionDataset:
    """Flickr captions file: one ``image.jpg#n<TAB>caption`` per line (Flickr8k.token.txt, results_20130124.token)."""
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    pairs = []
    with open(path, encoding="utf-8") as fh:
        for line, text in enumerate(fh, start=1):
            text = text.rstrip("\n")
            if not text.strip():
                continue
            if "\t" not in text:
                raise SourceError(f"{path}:{line}: expected 'image#n<TAB>caption'")
            key, cap = text.split("\t", 1)
            pairs.append((key.rsplit("#", 1)[0], cap))
    return _group(pairs, root, str(path), path.parent.name)


def load_captions(path, image_root=None, fmt: str = "auto") -> CaptionDataset:
    """Load a captioned dataset; ``fmt`` is auto|csv|jsonl|coco|flickr (auto: by extension/content)."""
    path = Path(path)
    if path.is_dir():
        for cand in ("captions.csv", "captions.jsonl", "captions.json", "Flickr8k.token.txt"):
            if (path / cand).is_file():
                return load_captions(path / cand, image_root, fmt)
        raise SourceError(f"{path}: no captions.csv/.jsonl/.json or Flickr8k.token.txt in this folder")
    if not path.is_file():
        raise SourceError(f"{path}: no such captions file")
    if fmt == "auto":
        suf = path.suffix.lower()
        if suf == ".csv":
            fmt = "csv"
        elif suf in (".jsonl", ".ndjson"):
            fmt = "jsonl"
        elif suf == ".json":
            fmt = "coco"
        else:
            fmt = "flickr"
    loaders = {"csv": load_csv, "jsonl": load_jsonl, "coco": load_coco, "flickr": load_flickr}
    if fmt not in loaders:
        raise UsageError(f"unknown captions format {fmt!r}: use auto, csv, jsonl, coco or flickr")
    return loaders[fmt](path, image_root)


def split_file(ds: CaptionDataset, part: str) -> Path | None:
    """``<part>.txt`` beside the dataset's captions file (Flickr8k's standard splits), or None."""
    src = ds.meta.get("source")
    if not src:
        return None
    p = Path(src).parent / f"{part}.txt"
    return p if p.is_file() else None


def named_split(ds: CaptionDataset, part: str) -> CaptionDataset:
    """The images listed in ``<part>.txt`` beside the captions file (in file order), with their captions."""
    path = split_file(ds, part)
    if path is None:
        raise SourceError(f"{ds.meta.get('source', ds.name)}: no {part}.txt split file beside it")
    by_name = {p.name: i for i, p in enumerate(ds.images)}
    names = [n.strip() for n in path.read_text(encoding="utf-8").splitlines() if n.strip()]
    idx = [by_name[n] for n in names if n in by_name]
    if not idx:
        raise SourceError(f"{path}: none of its {len(names)} image names is in {ds.meta.get('source')}")
    return ds.subset(idx, f"{ds.name}-{part}")
