"""Benchmark datasets: captioned image sets and category/hypernym relevance sets.

Captioned sets load from a CSV/JSONL manifest, a COCO-style captions JSON or a
Flickr-style captions file (``image#n<TAB>caption``) into a
:class:`CaptionDataset` (image paths, captions, caption -> image index).
Datasets are read in place; nothing is copied into the repository. Derived
files (PNG renders of Fashion-MNIST, the emoji npm package) go to the bench
cache, ``$KGCLIP_BENCH_CACHE`` or ``~/.cache/kgclip-bench``.

Category sets (:class:`CategorySet`) pair items with label queries such as
"footwear" or "an animal" and a boolean relevance matrix, so KG expansion can
be scored with mAP / nDCG.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.errors import SourceError, UsageError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FLICKR8K_1K = Path(os.environ.get("KGCLIP_FLICKR8K_1K", SHARED / "flickr8k-1k"))
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def bench_cache() -> Path:
    root = os.environ.get("KGCLIP_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kgclip-bench"
    )
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


# -- captioned datasets -------------------------------------------------------------------------


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
    from indexer.sources import read_jsonl_rows

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


def flickr8k_1k(split: str = "all", root: Path | None = None) -> CaptionDataset:
    """The 1000-image Flickr8k subset read in place; ``split`` is all|train|test (800/200 by SHA-1 rank)."""
    root = Path(root or FLICKR8K_1K)
    if not (root / "captions.csv").is_file():
        raise SourceError(f"{root}/captions.csv: flickr8k-1k not found (set KGCLIP_FLICKR8K_1K)")
    ds = load_csv(root / "captions.csv", root / "images")
    ds.name = "flickr8k-1k"
    return ds.split(split)


# -- category / hypernym relevance sets ---------------------------------------------------------


@dataclass
class CategorySet:
    """Items with label queries: ``relevant[q, i]`` says whether item i answers query q.

    ``kind[q]`` is ``class`` (the query names the item's own label) or ``hypernym``
    (the query names a broader concept: where knowledge-graph expansion should help).
    """

    name: str
    items: list[Path]
    labels: list[str]
    queries: list[str]
    kind: list[str]
    relevant: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def select(self, kind: str) -> "CategorySet":
        q = [i for i, k in enumerate(self.kind) if k == kind]
        return CategorySet(f"{self.name}-{kind}", self.items, self.labels, [self.queries[i] for i in q],
                           [kind] * len(q), self.relevant[q], dict(self.meta))


def _wordnet():
    from benchmarks.wordnet import load

    return load()


def _hyper_relevance(wn, item_synsets: list[set[str]], query_words: list[str]) -> np.ndarray:
    """relevant[q, i]: some synset of item i is a sense of query word q or one of its hyponyms."""
    closure = [set().union(*({s} | wn.ancestors(s) for s in syns)) if syns else set() for syns in item_synsets]
    rel = np.zeros((len(query_words), len(item_synsets)), dtype=bool)
    for q, w in enumerate(query_words):
        senses = set(wn.lemma_synsets(w))
        if not senses:
            raise SourceError(f"query word {w!r} is not a WordNet noun")
        for i, c in enumerate(closure):
            rel[q, i] = bool(senses & c)
    return rel


# Fashion-MNIST: label -> (query text, WordNet noun for the label)
FASHION_CLASSES = [
    ("a T-shirt", "t-shirt"), ("trousers", "trouser"), ("a pullover", "pullover"), ("a dress", "dress"),
    ("a coat", "coat"), ("a sandal", "sandal"), ("a shirt", "shirt"), ("a sneaker", "sneaker"),
    ("a bag", "bag"), ("an ankle boot", "boot"),
]
FASHION_HYPERNYMS = [("footwear", "footwear"), ("a shoe", "shoe"), ("clothing", "clothing"),
                     ("a garment", "garment"), ("a container", "container")]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(per_class: int = 100, seed: int = 0, root: Path = FASHION_MNIST, size: int = 112) -> CategorySet:
    """A seeded sample of the Fashion-MNIST test set rendered as PNGs in the bench cache.

    Class queries ("a sneaker") and hypernym queries ("footwear", "clothing"), relevance from
    the labels through WordNet (a label is relevant to a hypernym when its synset lies below it).
    """
    from PIL import Image

    images, labels = root / "t10k-images-idx3-ubyte.gz", root / "t10k-labels-idx1-ubyte.gz"
    if not images.is_file():
        raise SourceError(f"{images}: Fashion-MNIST not found (apt install dataset-fashion-mnist)")
    x, y = _read_idx(images), _read_idx(labels)
    rng = np.random.default_rng(seed)
    pick = np.concatenate([np.sort(rng.choice(np.flatnonzero(y == c), per_class, replace=False)) for c in range(10)])
    out = bench_cache() / "fashion-mnist" / f"test-{size}"
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for i in pick:
        p = out / f"{i:05d}.png"
        if not p.is_file():
            # white background like a product photo; upscaled so the encoders see more than 28 px
            img = Image.fromarray(255 - x[i]).resize((size, size), Image.BICUBIC).convert("RGB")
            img.save(p)
        items.append(p)
    item_labels = [FASHION_CLASSES[int(y[i])][0] for i in pick]
    wn = _wordnet()
    class_syn = [set(wn.lemma_synsets(w)[:1]) for _, w in FASHION_CLASSES]
    item_syn = [class_syn[int(y[i])] for i in pick]
    cls_rel = np.stack([y[pick] == c for c in range(10)])
    hyp_rel = _hyper_relevance(wn, item_syn, [w for _, w in FASHION_HYPERNYMS])
    return CategorySet(
        "fashion-mnist",
        items,
        item_labels,
        [q for q, _ in FASHION_CLASSES] + [q for q, _ in FASHION_HYPERNYMS],
        ["class"] * 10 + ["hypernym"] * len(FASHION_HYPERNYMS),
        np.concatenate([cls_rel, hyp_rel]),
        {"per_class": per_class, "seed": seed, "source": str(root)},
    )


# -- emoji (npm emoji-datasource-twitter) ----------------------------------------------------------

EMOJI_PACKAGE = "emoji-datasource-twitter"
# subcategory -> query text (a noun phrase naming the broader concept)
EMOJI_SUBCATEGORIES = {
    "animal-mammal": "a mammal", "animal-bird": "a bird", "animal-marine": "a sea animal",
    "animal-bug": "an insect", "animal-reptile": "a reptile", "animal-amphibian": "an amphibian",
    "plant-flower": "a flower", "plant-other": "a plant", "food-fruit": "a fruit",
    "food-vegetable": "a vegetable", "food-prepared": "prepared food", "food-asian": "Asian food",
    "food-sweet": "a dessert", "drink": "a drink", "dishware": "dishware", "transport-ground": "a land vehicle",
    "transport-water": "a boat", "transport-air": "an aircraft", "sky & weather": "the weather",
    "sport": "sports equipment", "musical-instrument": "a musical instrument", "clothing": "clothing",
    "household": "a household object", "tool": "a tool", "office": "office supplies", "money": "money",
    "light & video": "a light or a camera", "book-paper": "a book or paper", "mail": "mail",
    "science": "a science instrument", "medical": "a medical item", "game": "a game",
    "place-building": "a building", "place-geographic": "a landscape", "hotel": "a hotel",
    "time": "a clock", "music": "music", "phone": "a phone", "computer": "a computer", "sound": "a sound",
    "lock": "a lock", "writing": "a writing instrument", "event": "a celebration", "award-medal": "an award",
    "face-smiling": "a smiling face", "face-affection": "an affectionate face", "face-negative": "an angry face",
    "heart": "a heart", "flag": "a flag", "country-flag": "a national flag", "zodiac": "a zodiac sign",
    "arrow": "an arrow", "keycap": "a keycap", "geometric": "a geometric shape", "hand-fingers-open": "a hand",
    "person-sport": "a person doing sport", "person-activity": "a person doing something",
    "person-role": "a person at work", "family": "a family", "body-parts": "a body part",
}
EMOJI_CATEGORIES = {
    "Animals & Nature": "an animal or a plant", "Food & Drink": "food or drink",
    "Travel & Places": "a place or a vehicle", "Activities": "an activity", "Objects": "an object",
    "Smileys & Emotion": "a face or an emotion", "People & Body": "a person or a body part",
    "Symbols": "a symbol", "Flags": "a flag",
}


def emoji_package(install: bool = True) -> Path:
    """Folder of the npm package in the bench cache, installed with npm on first use."""
    prefix = bench_cache() / "npm"
    pkg = prefix / "node_modules" / EMOJI_PACKAGE
    if (pkg / "emoji.json").is_file():
        return pkg
    if not install:
        raise SourceError(f"{pkg}: {EMOJI_PACKAGE} is not installed (npm install --prefix {prefix} {EMOJI_PACKAGE})")
    npm = shutil.which("npm")
    if not npm:
        raise SourceError(f"the emoji benchmark needs npm to fetch {EMOJI_PACKAGE} (apt install npm), or install "
                          f"it yourself: npm install --prefix {prefix} {EMOJI_PACKAGE}")
    prefix.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), EMOJI_PACKAGE],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not (pkg / "emoji.json").is_file():
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SourceError(f"npm install {EMOJI_PACKAGE} failed: {tail[0]}")
    return pkg


def emoji(size: int = 64, min_per_query: int = 5, install: bool = True) -> CategorySet:
    """Twitter emoji PNGs with category and subcategory queries (relevance from emoji.json labels)."""
    pkg = emoji_package(install)
    data = json.loads((pkg / "emoji.json").read_text(encoding="utf-8"))
    img_dir = pkg / "img" / "twitter" / str(size)
    items, labels, cats, subs = [], [], [], []
    for e in sorted(data, key=lambda e: e.get("sort_order", 0)):
        p = img_dir / e["image"]
        if not e.get("has_img_twitter", True) or not p.is_file() or e.get("category") == "Component":
            continue
        items.append(p)
        labels.append((e.get("name") or e.get("short_name") or "").lower())
        cats.append(e["category"])
        subs.append(e["subcategory"])
    if not items:
        raise SourceError(f"{img_dir}: no emoji images found")
    queries, kind, rel = [], [], []
    cats_a, subs_a = np.array(cats), np.array(subs)
    for sub, text in EMOJI_SUBCATEGORIES.items():
        r = subs_a == sub
        if r.sum() >= min_per_query:
            queries.append(text), kind.append("subcategory"), rel.append(r)
    for cat, text in EMOJI_CATEGORIES.items():
        r = cats_a == cat
        if r.sum() >= min_per_query:
            queries.append(text), kind.append("category"), rel.append(r)
    return CategorySet("emoji", items, labels, queries, kind, np.stack(rel),
                       {"package": str(pkg), "size": size})


# -- Flickr caption nouns -> WordNet hypernyms ------------------------------------------------------

FLICKR_HYPERNYMS = [
    ("an animal", "animal"), ("a dog", "dog"), ("a bird", "bird"), ("a vehicle", "vehicle"),
    ("a boat", "boat"), ("a body of water", "body_of_water"), ("a building", "building"),
    ("a musical instrument", "musical_instrument"), ("a ball", "ball"), ("headwear", "headdress"),
    ("footwear", "footwear"), ("sports equipment", "sports_equipment"), ("a plant", "vascular_plant"),
    ("food", "food"), ("clothing", "clothing"), ("a toy", "plaything"),
]
_STOP = set("a an the in on at of to is are and with for by from his her their its it as this that into "
            "out up down over while near two three four five one some other".split())
# nouns whose first WordNet sense is not what Flickr captions mean by them (colour, gender, rock climber)
_STOP |= {"orange", "female", "male", "climber", "climbers", "bat"}


def caption_nouns(caption: str, wn=None) -> set[str]:
    """First-sense noun synsets named in a caption (greedy longest WordNet match, bigrams first).

    Words more often used as verbs or adjectives (SemCor counts: "young", "male", "fly") are skipped,
    and so are two-word matches that start with one ("small white" the butterfly)."""
    wn = wn or _wordnet()
    toks = [t for t in re.findall(r"[a-z]+(?:-[a-z]+)*", caption.lower())]
    out, i = set(), 0
    while i < len(toks):
        if i + 1 < len(toks) and toks[i] not in _STOP and wn.mostly_noun(toks[i]):
            syn = wn.lemma_synsets(f"{toks[i]}_{toks[i + 1]}")
            if syn:
                out.add(syn[0])
                i += 2
                continue
        if toks[i] not in _STOP and wn.mostly_noun(toks[i]):
            syn = wn.lemma_synsets(toks[i])
            if syn:
                out.add(syn[0])
        i += 1
    return out


def flickr_hypernyms(ds: CaptionDataset | None = None, min_relevant: int = 10, max_share: float = 0.5) -> CategorySet:
    """Hypernym queries over flickr8k-1k: an image is relevant to "an animal" when one of its captions
    names a hyponym of animal (dog, horse, ...). Queries with fewer than ``min_relevant`` images or
    more than ``max_share`` of all images are dropped."""
    ds = ds or flickr8k_1k()
    wn = _wordnet()
    item_syn = [set() for _ in ds.images]
    for cap, i in zip(ds.captions, ds.caption_image):
        item_syn[int(i)] |= caption_nouns(cap, wn)
    rel = _hyper_relevance(wn, item_syn, [w for _, w in FLICKR_HYPERNYMS])
    keep = [q for q in range(len(FLICKR_HYPERNYMS))
            if min_relevant <= rel[q].sum() <= max_share * len(ds.images)]
    labels = [", ".join(sorted(wn.synsets[s].lemmas[0] for s in syn)) for syn in item_syn]
    return CategorySet(f"{ds.name}-hypernyms", list(ds.images), labels,
                       [FLICKR_HYPERNYMS[q][0] for q in keep], ["hypernym"] * len(keep), rel[keep],
                       {"counts": {FLICKR_HYPERNYMS[q][0]: int(rel[q].sum()) for q in range(len(FLICKR_HYPERNYMS))}})
